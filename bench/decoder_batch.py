"""Decoder batch size: milliseconds per prompt and peak RSS for objects per call; prints one JSON object.

    .venv/bin/python bench/decoder_batch.py [--tile-size 1024] [--runs 3]

Exports the decoder of the seeded random SAM 2.1 tiny model (via the decoder cache, as encoding does) and
decodes single-point prompts on random features with `OnnxDecoder.raw_points`, each batch size in a fresh
process (peak RSS is that process's own, bench/peak_memory.py). Per batch size: the median over `--runs`
of the time for 64 prompts, divided by 64. Behind the automatic `points_per_batch` of segment everything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from peak_memory import peak_rss_mib  # noqa: E402

MODEL = "sam2.1_hiera_t"
BATCHES = (1, 4, 8, 16, 64)
PROMPTS = 64


def export_decoder(tile: int, folder: Path) -> Path:
    from quicksam.encoder.models import build_model

    path = folder / "decoder.onnx"
    build_model(MODEL, checkpoint=None, seed=0, device="cpu", image_size=tile).export_decoder_onnx(path)
    return path


def run_case(onnx: Path, tile: int, batch: int, runs: int) -> dict:
    """In this (fresh) process: ms per prompt at `batch` objects per call, and the peak RSS."""
    from quicksam.core.mask_decoding import DecoderSettings
    from quicksam.interactive.decoding import OnnxDecoder

    names = ["image_embed", "high_res_feats_0", "high_res_feats_1"]
    decoder = OnnxDecoder(onnx, "sam2", names, tile, DecoderSettings())
    rng = np.random.default_rng(0)
    features = {"image_embed": rng.random((256, tile // 16, tile // 16), np.float32),
                "high_res_feats_0": rng.random((32, tile // 4, tile // 4), np.float32),
                "high_res_feats_1": rng.random((64, tile // 8, tile // 8), np.float32)}
    points = rng.random((PROMPTS, 2)) * tile
    decoder.raw_points(features, points[:batch])  # warm-up
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        for start in range(0, PROMPTS, batch):
            decoder.raw_points(features, points[start:start + batch])
        seconds.append(time.perf_counter() - started)
    return {"batch": batch, "ms_per_prompt": round(1000 * statistics.median(seconds) / PROMPTS, 1),
            "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--case", nargs=2, metavar=("ONNX", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(Path(args.case[0]), args.tile_size, int(args.case[1]), args.runs)))
        return
    with tempfile.TemporaryDirectory(prefix="quicksam-bench-batch-") as work:
        onnx = export_decoder(args.tile_size, Path(work))
        cases = []
        for batch in BATCHES:
            child = subprocess.run([sys.executable, __file__, "--tile-size", str(args.tile_size), "--runs",
                                    str(args.runs), "--case", str(onnx), str(batch)], capture_output=True, text=True)
            if child.returncode:
                sys.exit(f"batch {batch} failed:\n{child.stderr}")
            cases.append(json.loads(child.stdout.splitlines()[-1]))
    fastest = min(cases, key=lambda case: case["ms_per_prompt"])
    print(json.dumps({"model": MODEL, "random_weights": True, "tile_size": args.tile_size, "runs": args.runs,
                      "prompts": PROMPTS, "batches": cases, "fastest_batch": fastest["batch"]}))


if __name__ == "__main__":
    main()
