"""The decoder graph's variants: milliseconds per one-point prompt and agreement with the plain graph;
prints one JSON object.

    .venv/bin/python bench/decoder_graph.py [--tile-size 1024] [--rounds 5] [--runs 5]

SAM 2.1 tiny with seeded random weights, features of a synthetic scene (squares of several sizes on a
1024 px tile, encoded by the model). Each variant runs `OnnxDecoder.raw` for one foreground point; the
variants take turns (`--rounds` rounds of `--runs` calls each) so the machine's load falls on all alike,
and each variant's median is divided by the plain graph's of the same run. Agreement: over the scene's
prompts, the largest |logit difference| and the smallest mask IoU (logits > 0) against the plain graph.

Variants: `plain` (decoder.onnx, the session options of open_decoder_session: 2 threads, no spinning);
`split` (the tile part kept per tile, the prompt part per prompt; `tile_part_ms` is the tile part, paid
once per tile); `saved_optimised` (decoder.onnx optimised by ONNX Runtime, saved, and loaded with
optimisation off; `session_open_ms` compares opening it with opening the plain file and the split
decoder's two files); `int8` and
`int8_split` (onnxruntime.quantization.quantize_dynamic); `threads_1`; `spinning`. `batch_4_ms_per_prompt`:
`raw_points` with 4 points per call (segment everything on a CPU), plain and split.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

MODEL = "sam2.1_hiera_t"
NAMES = ["image_embed", "high_res_feats_0", "high_res_feats_1"]
#: Squares of the scene as (col_off, row_off, size) at 1024 px, scaled to the tile size.
SQUARES = ((80, 90, 300), (520, 160, 120), (700, 620, 240), (200, 700, 60))


def scene(tile: int) -> np.ndarray:
    """(tile, tile, 3) uint8: bright and mid-grey squares on a dark background."""
    image = np.full((tile, tile, 3), 40, np.uint8)
    for i, (col, row, size) in enumerate(SQUARES):
        c, r, s = (int(v * tile / 1024) for v in (col, row, size))
        image[r:r + s, c:c + s] = 200 if i % 2 == 0 else 120
    return image


def prompts(tile: int) -> List[np.ndarray]:
    """One point in each square's centre and one on the background, tile pixels (x, y)."""
    points = [((col + size / 2) * tile / 1024, (row + size / 2) * tile / 1024) for col, row, size in SQUARES]
    return [np.array(p) for p in points + [(tile * 0.55, tile * 0.05)]]


def build(tile: int, folder: Path) -> Dict[str, np.ndarray]:
    """Export decoder.onnx, the split decoder and their int8 forms into `folder`/{plain,int8}; the scene's
    features."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from quicksam.encoder.decoder_split import export_split_decoder
    from quicksam.encoder.models import build_model

    model = build_model(MODEL, checkpoint=None, seed=0, device="cpu", image_size=tile)
    plain, int8 = folder / "plain", folder / "int8"
    plain.mkdir()
    int8.mkdir()
    model.export_decoder_onnx(plain / "decoder.onnx")
    export_split_decoder(model.net, tile, plain / "decoder_tile.onnx", plain / "decoder_prompt.onnx")
    for name in ("decoder.onnx", "decoder_tile.onnx", "decoder_prompt.onnx"):
        quantize_dynamic(str(plain / name), str(int8 / name), weight_type=QuantType.QInt8)
    return model.encode(scene(tile)[None])[0]


def session(path: Path, threads: int = 2, spinning: bool = False, optimise: bool = True, save: Path = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if save is not None:
        options.optimized_model_filepath = str(save)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def opening_ms(open_: Callable[[], object], times: int = 3) -> float:
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        open_()
        seconds.append(time.perf_counter() - started)
    return round(1000 * statistics.median(seconds), 1)


def variants(folder: Path, tile: int) -> Dict[str, object]:
    """name -> OnnxDecoder; the session opening figures under the key `_session_ms`."""
    from quicksam.core.mask_decoding import DecoderSettings
    from quicksam.interactive.decoding import OnnxDecoder

    def decoder(sub: str, split: bool, threads: int = 2):
        return OnnxDecoder(folder / sub / "decoder.onnx", "sam2", NAMES, tile, DecoderSettings(), threads=threads,
                           split=split)

    found = {"plain": decoder("plain", False), "split": decoder("plain", True), "int8": decoder("int8", False),
             "int8_split": decoder("int8", True), "threads_1": decoder("plain", False, threads=1),
             "spinning": decoder("plain", False), "saved_optimised": decoder("plain", False)}
    found["spinning"]._session = session(folder / "plain" / "decoder.onnx", spinning=True)
    optimised = folder / "decoder.optimised.onnx"
    session(folder / "plain" / "decoder.onnx", save=optimised)
    found["saved_optimised"]._session = session(optimised, optimise=False)
    found["_session_ms"] = {
        "plain": opening_ms(lambda: session(folder / "plain" / "decoder.onnx")),
        "saved_optimised": opening_ms(lambda: session(optimised, optimise=False)),
        "split_parts": opening_ms(lambda: [session(folder / "plain" / name)
                                           for name in ("decoder_tile.onnx", "decoder_prompt.onnx")])}
    return found


def agreement(decoders: Dict[str, object], features: Dict[str, np.ndarray], tile: int) -> Dict[str, dict]:
    from quicksam.core.mask_decoding import Prompts

    reference = [decoders["plain"].raw(features, Prompts(points=[p], labels=[1]))[0] for p in prompts(tile)]
    result = {}
    for name, decoder in decoders.items():
        diffs, ious = [], []
        for point, ref in zip(prompts(tile), reference):
            logits = decoder.raw(features, Prompts(points=[point], labels=[1]))[0]
            diffs.append(float(np.abs(logits - ref).max()))
            ours, theirs = logits > 0, ref > 0
            ious.extend(float((o & t).sum() / max((o | t).sum(), 1)) for o, t in zip(ours, theirs))
        result[name] = {"max_abs_logit_diff": round(max(diffs), 6), "min_mask_iou": round(min(ious), 4)}
    return result


def timings(decoders: Dict[str, object], features: Dict[str, np.ndarray], tile: int, rounds: int,
            runs: int) -> Dict[str, float]:
    from quicksam.core.mask_decoding import Prompts

    prompt = Prompts(points=[prompts(tile)[0]], labels=[1])
    seconds: Dict[str, List[float]] = {name: [] for name in decoders}
    for _ in range(rounds):
        for name, decoder in decoders.items():
            decoder.raw(features, prompt)  # warm-up (and the split decoder's tile part)
            for _ in range(runs):
                started = time.perf_counter()
                decoder.raw(features, prompt)
                seconds[name].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(values) for name, values in seconds.items()}


def batch_ms_per_prompt(decoders: Dict[str, object], features: Dict[str, np.ndarray], tile: int, rounds: int,
                        batch: int = 4) -> Dict[str, float]:
    """ms per prompt of `raw_points` with `batch` points per call (segment everything's CPU batch), for the
    plain and the split graph, taking turns."""
    points = np.array(prompts(tile)[:batch])
    seconds: Dict[str, List[float]] = {"plain": [], "split": []}
    for _ in range(rounds):
        for name in seconds:
            decoders[name].raw_points(features, points)
            started = time.perf_counter()
            decoders[name].raw_points(features, points)
            seconds[name].append((time.perf_counter() - started) / batch)
    return {name: round(1000 * statistics.median(values), 1) for name, values in seconds.items()}


def tile_part_ms(decoder, features: Dict[str, np.ndarray], runs: int) -> float:
    seconds = []
    for _ in range(runs):
        fresh = dict(features, image_embed=features["image_embed"].copy())  # a tile not seen yet
        started = time.perf_counter()
        decoder.tile_side.tile_side(fresh)
        seconds.append(time.perf_counter() - started)
    return round(1000 * statistics.median(seconds), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quicksam-bench-graph-") as work:
        features = build(args.tile_size, Path(work))
        decoders = variants(Path(work), args.tile_size)
        session_ms = decoders.pop("_session_ms")
        agree = agreement(decoders, features, args.tile_size)
        medians = timings(decoders, features, args.tile_size, args.rounds, args.runs)
        tile_ms = tile_part_ms(decoders["split"], features, args.runs)
        batched = batch_ms_per_prompt(decoders, features, args.tile_size, args.rounds)
    plain = medians["plain"]
    report = {name: {"median_ms": round(ms, 1), "ratio_to_plain": round(ms / plain, 3), **agree[name]}
              for name, ms in medians.items()}
    report["split"]["tile_part_ms"] = tile_ms
    with open("/proc/loadavg") as loadavg:
        load = loadavg.read().split()[:3]
    print(json.dumps({"model": MODEL, "random_weights": True, "tile_size": args.tile_size,
                      "calls_per_variant": args.rounds * args.runs, "loadavg": load,
                      "session_open_ms": session_ms, "variants": report,
                      "batch_4_ms_per_prompt": dict(batched, ratio=round(batched["split"] / batched["plain"], 3))},
                     indent=1))


if __name__ == "__main__":
    main()
