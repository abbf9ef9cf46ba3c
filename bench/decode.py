"""Click-path benchmark: the decoder's floor, the decoder alone, click to committed polygon; prints one JSON object.

    .venv/bin/python bench/decode.py [--clicks 12] [--warm-repeats 3] [--tiles-per-side 2] [--threads 2]

Everything runs in this process, on the 1024 px tiles of a synthetic scene with objects of known masks
(bench/scene.py: houses of a few hundred px, fields of tens of thousands, lakes of a few hundred thousand),
encoded with a random SAM 2.1 tiny model (seeded). Every click is at an object's centre. Figures:
- floor: the decoder graph's FLOPs per prompt (counted once, bench/floor.py) over a float32 GEMM rate measured
  with the same thread count in rounds interleaved with the timed runs below (after each, untimed), so the
  rate and the figures held against it share the machine's load; `floor_ms` = FLOPs / median rate;
- decoder_alone: the store's decoder.onnx through `OnnxDecoder.raw` (the graph run only) on cached features;
- click_random_masks: prompt in map coordinates -> `SegmentEngine.segment` (tile choice, features, decoder,
  upsampling, vectorising) -> the dock's commit (`ObjectOutput.write`: FeatureBuilder + object_writer into a
  GeoPackage layer, on disk), on the masks the random model gives (they cover most of the tile);
- click_object_masks: the same, except that the decoder's low-resolution logits are replaced, after its graph
  ran, by the true object's mask under the click (+10 inside, -10 outside, area-weighted at the boundary), so
  upsampling, vectorising and committing work on a real object's size;
- baseline (Geo-SAM2-style, bench/click_baseline.py) on both kinds of masks, committed through the same path.
"warm" = the tile was used by the previous click; "cold" = first click on a tile (the engine's feature cache is
replaced and the store's checksum memory cleared, like a fresh session). Milliseconds; p50 = median.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from click_baseline import baseline_click, baseline_predictor  # noqa: E402
from floor import GemmMeter, decoder_flops_per_prompt, floor_ms  # noqa: E402
from scene import KINDS, TILE, Scene, mask_to_low_res_logits, write_object_scene  # noqa: E402

MODEL = "sam2.1_hiera_t"
OBJECT_PATH_LABEL = ("object-sized masks: the decoder graph runs as usual, then its low-res logits are replaced "
                     "by the scene's true object mask under the click before upsampling, vectorising, committing")
RANDOM_PATH_LABEL = "masks the random-weight model gives (most of the tile): post-processing of unrealistic shapes"


@dataclass(frozen=True)
class Click:
    """A click at an object's centre: map (x, y) in the raster CRS; the tile (col_off, row_off) holding it."""

    kind: str
    object_id: int
    tile: Tuple[int, int]
    x: float
    y: float


def plan_clicks(scene: Scene, geotransform, count: int) -> List[Click]:
    """`count` clicks cycling over tiles and kinds (with 4 tiles and 3 kinds, 12 clicks cover every pair)."""
    from quicksam.core.geo import pixel_to_map

    tiles = sorted({obj.tile for obj in scene.objects})
    clicks = []
    for i in range(count):
        tile, kind = tiles[i % len(tiles)], KINDS[i % len(KINDS)]
        candidates = [obj for obj in scene.objects if obj.tile == tile and obj.kind == kind]
        obj = candidates[(i // (len(tiles) * len(KINDS))) % len(candidates)]
        clicks.append(Click(kind, obj.object_id, tile, *pixel_to_map(geotransform, obj.col, obj.row)))
    return clicks


class ObjectMaskSubstitution:
    """Makes an OnnxDecoder's `decode` see `target` logits: its `raw` (the graph run) is wrapped so that the
    graph runs as usual and its (M, L, L) logits are then replaced by `target` (L, L) for every output; the
    scores are the graph's. `calls` counts substitutions, so a decode that no longer goes through `raw`
    is caught (`check`) instead of measuring the random masks under the object-sized label."""

    def __init__(self, decoder) -> None:
        self.decoder = decoder
        self._graph = decoder.raw
        self.target: Optional[np.ndarray] = None
        self.calls = 0
        decoder.raw = self._raw

    def _raw(self, features, prompts):
        logits, scores = self._graph(features, prompts)
        if self.target is None:
            return logits, scores
        self.calls += 1
        return np.broadcast_to(self.target, logits.shape), scores

    def check(self, calls_before: int) -> None:
        if self.calls == calls_before:
            raise RuntimeError("the engine's decode no longer goes through OnnxDecoder.raw, so the object-sized path "
                               "cannot replace its masks: update ObjectMaskSubstitution in bench/decode.py")

    def remove(self) -> None:
        del self.decoder.raw  # the class's method again


def dock_output(store, path: Path, project):
    """The dock's ObjectOutput bound to `store`, writing to a new GeoPackage layer at `path` chosen as output."""
    from quicksam.ui.dock.object_output import ObjectOutput
    from quicksam.ui.layers import open_or_create_output_layer, raster_crs

    output = ObjectOutput(project)
    output.bind(store, raster_crs(store))
    layer = open_or_create_output_layer(path, raster_crs(store), project.transformContext())
    project.addMapLayer(layer)
    output.choose(layer)
    return output


def forget_tiles(engine) -> None:
    """Make the next click cold: a new feature cache, and the store re-checks each tile's checksum."""
    from quicksam.interactive.engine import FeatureCache

    engine.cache = FeatureCache(engine.store)
    engine.store._verified.clear()  # noqa: SLF001 - like a fresh session


def _one_click(engine, output, prompts) -> Tuple[float, Dict[str, float], int]:
    """Segment and commit through the dock's path; (seconds, seconds per step, mask pixels)."""
    from quicksam.interactive.session import AcceptedObject

    started = time.perf_counter()
    segments = engine.segment(prompts)
    decoded = time.perf_counter()
    output.write(AcceptedObject(prompts, tuple(segments)))
    done = time.perf_counter()
    steps = {**engine.last_timings, "commit": done - decoded}
    return done - started, steps, segments[0].mask_pixels if segments else 0


def run_clicks(engine, output, clicks: List[Click], warm_repeats: int, meter: GemmMeter, scene: Optional[Scene] = None,
               substitution: Optional[ObjectMaskSubstitution] = None) -> Dict[str, list]:
    """Each click cold, then `warm_repeats` warm clicks a pixel further each, a GEMM round after each; with
    `substitution`, the masks are the scene's objects. Returns lists of seconds (cold, warm), steps per click,
    mask pixels, kinds."""
    from quicksam.interactive.engine import MapPrompts

    low_res = engine.store.image_size // 4
    pixel = abs(engine.store.geotransform[1])
    runs: Dict[str, list] = {"cold": [], "warm": [], "cold_steps": [], "warm_steps": [], "mask_pixels": [],
                             "warm_kind": [], "true_pixels": []}
    for click in clicks:
        forget_tiles(engine)
        if substitution is not None:
            mask = scene.object_mask(click.object_id, *click.tile, size=engine.store.image_size)
            substitution.target = mask_to_low_res_logits(mask, low_res)
        for attempt in range(1 + warm_repeats):
            calls = substitution.calls if substitution else 0
            prompts = MapPrompts().with_point(click.x + attempt * pixel, click.y - attempt * pixel, 1)
            seconds, steps, mask_pixels = _one_click(engine, output, prompts)
            meter.round()
            if substitution is not None:
                substitution.check(calls)
                runs["true_pixels"].append(int(mask.sum()))
            which = "warm" if attempt else "cold"
            runs[which].append(seconds)
            runs[f"{which}_steps"].append(steps)
            runs["mask_pixels"].append(mask_pixels)
            if attempt:
                runs["warm_kind"].append(click.kind)
    return runs


def time_decoder_alone(engine, clicks: List[Click], repeats: int, meter: GemmMeter) -> List[float]:
    """Seconds of `engine.decoder.raw` (the graph run only) on features already in memory, cycling over the
    clicks' tiles and points, after one warm-up per click; a GEMM round after each."""
    from quicksam.interactive.engine import MapPrompts

    jobs = []
    for click in clicks:
        prompts = MapPrompts().with_point(click.x, click.y, 1)
        tile = engine.choose_tile(prompts)
        features = engine.cache.get(tile.tile_id)
        jobs.append((features, engine.tile_prompts(prompts, tile)))
        engine.decoder.raw(*jobs[-1])
    seconds = []
    for i in range(repeats):
        features, prompts = jobs[i % len(jobs)]
        started = time.perf_counter()
        engine.decoder.raw(features, prompts)
        seconds.append(time.perf_counter() - started)
        meter.round()
    return seconds


def run_baseline(predictor, feature_dir: Path, output, clicks: List[Click], geotransform, meter: GemmMeter,
                 scene: Optional[Scene] = None) -> List[float]:
    """Seconds per Geo-SAM2-style click, committed through the dock's path, a GEMM round after each; with
    `scene`, on the true objects."""
    from quicksam.interactive.engine import MapPrompts
    from quicksam.interactive.session import AcceptedObject

    seconds = []
    for click in clicks:
        true_mask = None if scene is None else scene.object_mask(click.object_id, *click.tile)
        prompts = MapPrompts().with_point(click.x, click.y, 1)
        started = time.perf_counter()
        segment = baseline_click(predictor, feature_dir, click.tile, geotransform, click.x, click.y, TILE, true_mask)
        output.write(AcceptedObject(prompts, (segment,)))
        seconds.append(time.perf_counter() - started)
        meter.round()
    return seconds


def ms(values, q: float = 50) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2)


def summary(values) -> dict:
    return {"p50_ms": ms(values), "p95_ms": ms(values, 95), "n": len(values)}


def step_medians(steps: List[Dict[str, float]]) -> Dict[str, float]:
    """Median ms per step over clicks (every step any click reported)."""
    names = list(dict.fromkeys(name for click in steps for name in click))
    return {name: ms([click[name] for click in steps if name in click]) for name in names}


def path_report(runs: Dict[str, list], label: str) -> dict:
    report = {"label": label, "warm": summary(runs["warm"]), "cold": summary(runs["cold"]),
              "warm_p50_ms_by_step": step_medians(runs["warm_steps"]),
              "cold_p50_ms_by_step": step_medians(runs["cold_steps"]),
              "mask_pixels_p50": int(np.median(runs["mask_pixels"])),
              "mask_fraction_of_tile_p50": round(float(np.median(runs["mask_pixels"])) / TILE ** 2, 4)}
    if runs["true_pixels"]:
        report["true_object_pixels_p50"] = int(np.median(runs["true_pixels"]))
        report["warm_p50_ms_by_kind"] = {kind: ms([s for s, k in zip(runs["warm"], runs["warm_kind"]) if k == kind])
                                         for kind in KINDS if kind in runs["warm_kind"]}
    return report


def floor_report(flops: dict, meter: GemmMeter) -> dict:
    rates = meter.rates()
    return {
        "decoder_gflop_per_prompt": round(flops["total_flops"] / 1e9, 4),
        "tile_only_gflop": round(flops["tile_only_flops"] / 1e9, 4),
        "tile_only_fraction": flops["tile_only_fraction"],
        "constant_gflop": round(flops["constant_flops"] / 1e9, 4),
        "cacheable_fraction": flops["cacheable_fraction"],
        "dependence_split_adds_up": flops["dependence_total_matches"],
        "by_module_gflop": {name: round(f / 1e9, 4) for name, f in flops["by_module_flops"].items()},
        "prompt": flops["prompt"],
        "gemm": rates,
        "floor_ms": round(floor_ms(flops["total_flops"], rates["median_gflops"]), 2),
        "floor_ms_at_best_gemm_round": round(floor_ms(flops["total_flops"], rates["best_gflops"]), 2),
        "floor_ms_prompt_part_only": round(floor_ms(flops["per_prompt_flops"], rates["median_gflops"]), 2),
        "gemm_best_over_median_round": round(rates["best_gflops"] / rates["median_gflops"], 2),
        "shared_machine_warning": rates["best_gflops"] > 1.5 * rates["median_gflops"],
        "method": "FlopCounterMode on the exported decoder graph (2 FLOPs per multiply-add) / median float32 "
                  "torch.mm rate on the decoder's GEMM shapes, same threads, in rounds interleaved with this "
                  "run's timed runs (bench/floor.py)",
    }


def targets(result: dict) -> dict:
    """The issue's targets on the object-sized path (medians, ratios of this run), each met or not; a target
    against the floor is neither (`met` null, `not_judged` saying why) when the floor is unreliable."""
    floor = result["floor"]["floor_ms"]
    objects = result["click_object_masks"]
    ratios = result["ratios"]
    shared = result["floor"]["shared_machine_warning"]

    def target(met: bool, **numbers) -> dict:
        return {"met": bool(met), **numbers}

    def floor_target(met: bool, **numbers) -> dict:
        # a GEMM rate that varied > 1.5x over the run: the floor moved with the load, the ratio is not to be trusted
        if not shared:
            return {**target(met, **numbers), "floor_reliable": True}
        return {"met": None, **numbers, "floor_reliable": False,
                "not_judged": "the GEMM rate varied more than 1.5x over the run (a shared machine): the floor, and "
                              "this ratio to it, moved with the load; run again on a quiet machine"}

    return {
        "decoder_alone_at_most_1_5x_floor": floor_target(ratios["decoder_alone_over_floor"] <= 1.5,
                                                         ratio=ratios["decoder_alone_over_floor"]),
        "click_warm_at_most_2x_floor": floor_target(ratios["object_warm_over_floor"] <= 2,
                                                    ratio=ratios["object_warm_over_floor"],
                                                    click_warm_p50_ms=objects["warm"]["p50_ms"], floor_ms=floor),
        "click_at_least_4x_faster_than_baseline": target(ratios["baseline_over_object_warm"] >= 4,
                                                         ratio=ratios["baseline_over_object_warm"]),
        "cold_p50_at_most_2x_warm_p50": target(ratios["object_cold_over_warm"] <= 2,
                                               ratio=ratios["object_cold_over_warm"]),
    }


def ratios(result: dict) -> dict:
    floor = result["floor"]["floor_ms"]
    random_path, objects = result["click_random_masks"], result["click_object_masks"]
    base = result["baseline"]

    def ratio(a: float, b: float) -> float:
        return round(a / b, 2)

    return {
        "decoder_alone_over_floor": ratio(result["decoder_alone"]["p50_ms"], floor),
        "decoder_alone_over_floor_at_best_gemm_round": ratio(result["decoder_alone"]["p50_ms"],
                                                             result["floor"]["floor_ms_at_best_gemm_round"]),
        "object_warm_over_floor": ratio(objects["warm"]["p50_ms"], floor),
        "object_cold_over_warm": ratio(objects["cold"]["p50_ms"], objects["warm"]["p50_ms"]),
        "baseline_over_object_warm": ratio(base["object_masks"]["p50_ms"], objects["warm"]["p50_ms"]),
        "baseline_over_object_cold": ratio(base["object_masks"]["p50_ms"], objects["cold"]["p50_ms"]),
        "random_warm_over_floor": ratio(random_path["warm"]["p50_ms"], floor),
        "random_cold_over_warm": ratio(random_path["cold"]["p50_ms"], random_path["warm"]["p50_ms"]),
        "baseline_over_random_warm": ratio(base["random_masks"]["p50_ms"], random_path["warm"]["p50_ms"]),
    }


def measure(args, work: Path, project) -> dict:
    from quicksam.core.store import FeatureStore
    from quicksam.encoder.models import build_model
    from quicksam.encoder.pipeline import EncodeRequest, encode_raster
    from quicksam.interactive.engine import SegmentEngine

    scene = write_object_scene(work / "scene.tif", args.tiles_per_side)
    model = build_model(MODEL, seed=0)
    store, _ = encode_raster(EncodeRequest(raster=str(scene.raster), store=work / "store", overlap=0,
                                           stretch="none"), model=model)
    clicks = plan_clicks(scene, store.geotransform, args.clicks)
    result = {"model": MODEL, "weights": "random (seeded)", "tile_px": TILE, "threads": args.threads}
    flops, meter = decoder_flops_per_prompt(model), GemmMeter(args.threads)
    engine = SegmentEngine(FeatureStore.open(store.root), threads=args.threads)
    result["decoder_alone"] = summary(time_decoder_alone(engine, clicks, args.decoder_repeats, meter))
    random_runs = run_clicks(engine, dock_output(store, work / "random.gpkg", project), clicks, args.warm_repeats,
                             meter)
    result["click_random_masks"] = path_report(random_runs, RANDOM_PATH_LABEL)
    substitution = ObjectMaskSubstitution(engine.decoder)
    object_runs = run_clicks(engine, dock_output(store, work / "objects.gpkg", project), clicks, args.warm_repeats,
                             meter, scene, substitution)
    substitution.remove()
    result["click_object_masks"] = path_report(object_runs, OBJECT_PATH_LABEL)
    predictor = baseline_predictor(model, scene.raster, work / "baseline_features")
    baseline_clicks = clicks[:args.baseline_clicks]
    result["baseline"] = {
        "label": "Geo-SAM2-style: read float32 GeoTIFF features, torch SAM2ImagePredictor.predict, "
                 "rasterio shapes on the whole mask, same commit; every click reads from disk (no warm/cold)",
        "random_masks": summary(run_baseline(predictor, work / "baseline_features",
                                             dock_output(store, work / "base_random.gpkg", project),
                                             baseline_clicks, store.geotransform, meter)),
        "object_masks": summary(run_baseline(predictor, work / "baseline_features",
                                             dock_output(store, work / "base_objects.gpkg", project),
                                             baseline_clicks, store.geotransform, meter, scene))}
    result["floor"] = floor_report(flops, meter)
    result = {key: result[key] for key in ("model", "weights", "tile_px", "threads", "floor", "decoder_alone",
                                           "click_random_masks", "click_object_masks", "baseline")}
    result["ratios"] = ratios(result)
    result["targets"] = targets(result)
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=12, help="cold clicks per path (each followed by warm ones)")
    parser.add_argument("--warm-repeats", type=int, default=3, help="warm clicks after each cold one")
    parser.add_argument("--baseline-clicks", type=int, default=12, help="baseline clicks per kind of mask")
    parser.add_argument("--decoder-repeats", type=int, default=30, help="timed runs of the decoder alone")
    parser.add_argument("--tiles-per-side", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="ONNX Runtime intra-op threads, torch threads and the GEMM rate's threads")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch
    from qgis.core import QgsApplication, QgsProject

    torch.set_num_threads(args.threads)
    app = QgsApplication([], False)
    app.initQgis()
    work = Path(tempfile.mkdtemp(prefix="quicksam-bench-decode-"))
    project = QgsProject()
    try:
        load_before = os.getloadavg()
        result = measure(args, work, project)
        result["load_average"] = {"before": [round(v, 2) for v in load_before],
                                  "after": [round(v, 2) for v in os.getloadavg()]}
        print(json.dumps(result, indent=2))
    finally:
        project.clear()
        shutil.rmtree(work, ignore_errors=True)
        app.exitQgis()


if __name__ == "__main__":
    main()
