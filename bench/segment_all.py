"""Segment-everything benchmark: tiles per second and peak RSS for 1 and for 16 tiles, and per level of a
multi-scale store; prints one JSON object.

    .venv/bin/python bench/segment_all.py [--tile-size 256] [--points-per-side 16] [--runs 3]
                                          [--part all|tiles|levels|amg] [--levels 1,4,16] [--levels-tiles-per-side 6]
                                          [--amg-points-per-side 32]

Synthetic RGB rasters of 1 x 1 and 4 x 4 tiles (the encoder's overlap of a quarter tile, so the merge has
borders to work on) are encoded with the seeded random SAM 2.1 tiny model. Each case then runs in a fresh
process: `segment_everything` `--runs` times (median seconds), then the peak RSS of that process
(VmHWM, bench/peak_memory.py) is read, so the two cases' memory can be compared.

In the 1-tile process, after that, two comparisons on the same tile:
- `points_per_batch` 1 and 64 against the default (0 = automatic: 4 on the CPU);
- the baseline: the sam2 package's `SAM2AutomaticMaskGenerator` on the tile's pixels, as the SAM2 GeoTIFF
  tutorials run it (it encodes the tile again each time; QuickSAM decodes from the store).

Levels: a raster of `--levels-tiles-per-side`² finest tiles is encoded with `--levels` (one store, a level
per factor). Each level is segmented alone (`levels=[factor]`) in a fresh process, `--runs` times: median
seconds, tiles per second, that process's peak RSS, and the level's bytes on disk (all its files, and its
tiles alone); then all levels in one run, with the merge across levels. Targets: every level's peak RSS
within 10 % of the finest level's (one level at a time, one decoder), the all-levels run's within 10 % of
the largest level's, and its median seconds within 10 % of the levels' sum (the merge is cheap).

AMG (`--part amg`, not in `all`: it takes minutes): one 1024 px tile of a synthetic scene with known objects,
seconds per tile at `--amg-points-per-side` (SAM's 32) for QuickSAM's `tile_masks` and for the sam2 package's
`SAM2AutomaticMaskGenerator` (its decoding after `set_image`, and its whole `generate`) in the same fresh
process, their ratio (target >= 5x), and the masks of both matched by IoU (bench/segment_all_amg.py).

The tiles part (1 and 16 tiles) has no target: the issue's per-tile target for segment everything is the amg
part's. Random weights make masks meaningless, so thresholds are set to keep everything (the most work for the
filters, the merge and the writer); the decoding cost per point is the real one.
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def raster_size(tiles_per_side: int, tile: int) -> int:
    stride = tile - tile // 4
    return stride * (tiles_per_side - 1) + tile


def write_raster(path: Path, size: int) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:size, 0:size]
    data = np.stack([((rows // 37 + cols // 53) % 2) * 120 + 60 + rng.integers(0, 30, (size, size))
                     for _ in range(3)]).astype(np.uint8)
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=from_origin(500000, 4200000, 1.0, 1.0))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def encode(raster: Path, store: Path, tile: int) -> int:
    from quicksam.encoder.models import build_model
    from quicksam.encoder.pipeline import EncodeRequest, encode_raster

    model = build_model(MODEL, checkpoint=None, seed=0, device="cpu", image_size=tile)
    request = EncodeRequest(raster=str(raster), store=store, model=MODEL, tile_size=tile, overlap=tile // 4,
                            device="cpu")
    stored, _ = encode_raster(request, model=model)
    return len(stored.grid)


def encode_levels(raster: Path, store: Path, tile: int, factors: list) -> dict:
    """Encode `raster` with a level per factor; {factor: tiles}."""
    from quicksam.core.store_levels import level_stores
    from quicksam.encoder.levels_pipeline import encode_levels as encode_all
    from quicksam.encoder.models import build_model
    from quicksam.encoder.pipeline import EncodeRequest

    model = build_model(MODEL, checkpoint=None, seed=0, device="cpu", image_size=tile)
    request = EncodeRequest(raster=str(raster), store=store, model=MODEL, tile_size=tile, overlap=tile // 4,
                            device="cpu", levels=tuple(factors))
    stored, _ = encode_all(request, model=model)
    return {level.manifest.pixel_grid.factor: len(level.grid) for level in level_stores(stored)}


def level_bytes(store: Path, factor: float) -> dict:
    """Bytes on disk of one level of `store`: all its files (the root level without `levels/`), its tiles."""
    from quicksam.core.levels import level_folder

    folder = store if factor == 1 else store / level_folder(factor)
    files = [path for path in folder.rglob("*") if path.is_file()
             and not (factor == 1 and (store / "levels") in path.parents)]
    tiles = [path for path in files if (folder / "tiles") in path.parents]
    return {"store_bytes": sum(path.stat().st_size for path in files),
            "tile_bytes": sum(path.stat().st_size for path in tiles)}


def _settings(points_per_side: int, points_per_batch: int = 0):
    from quicksam.interactive.automatic import AutoMaskSettings

    return AutoMaskSettings(points_per_side=points_per_side, points_per_batch=points_per_batch,
                            pred_iou_thresh=0.0, stability_score_thresh=0.0)


def _median_seconds(store: Path, work: Path, settings, runs: int, label: str, levels=None) -> tuple:
    from quicksam.core.store import FeatureStore
    from quicksam.interactive.automatic import segment_everything

    seconds, result = [], None
    for run in range(runs):
        started = time.perf_counter()
        result = segment_everything(FeatureStore.open(store), work / f"{label}-{run}.gpkg", settings, levels=levels)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def baseline_seconds(raster: Path, tile: int, points_per_side: int, runs: int) -> float:
    """Median seconds of SAM2AutomaticMaskGenerator.generate on the raster's first tile (same thresholds)."""
    import rasterio
    import torch
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    from quicksam.encoder.models import build_model

    torch.set_num_threads(2)
    with rasterio.open(raster) as src:
        image = np.moveaxis(src.read([1, 2, 3], window=((0, tile), (0, tile))), 0, -1)
    model = build_model(MODEL, checkpoint=None, seed=0, device="cpu", image_size=tile)
    generator = SAM2AutomaticMaskGenerator(model.net, points_per_side=points_per_side, points_per_batch=64,
                                           pred_iou_thresh=0.0, stability_score_thresh=0.0)
    # the predictor's feature sizes are written for 1024 px images
    generator.predictor._bb_feat_sizes = [(tile // 4, tile // 4), (tile // 8, tile // 8), (tile // 16, tile // 16)]
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        with torch.inference_mode():
            generator.generate(image)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def run_case(store: Path, work: Path, raster: Path, tile: int, points_per_side: int, runs: int,
             compare: bool) -> dict:
    """In this (fresh) process: segment everything `runs` times; with `compare`, also the batch-size and
    baseline comparisons, after the peak RSS is read."""
    median, result = _median_seconds(store, work, _settings(points_per_side), runs, "ours")
    figures = {"tiles": result.tiles, "objects": result.objects, "joined_objects": result.merged_objects,
               "median_seconds": round(median, 3), "tiles_per_second": round(result.tiles / median, 3),
               "peak_rss_mib": peak_rss_mib()}
    if compare:
        one_by_one, _ = _median_seconds(store, work, _settings(points_per_side, 1), runs, "batch1")
        sixty_four, _ = _median_seconds(store, work, _settings(points_per_side, 64), runs, "batch64")
        baseline = baseline_seconds(raster, tile, points_per_side, runs)
        figures.update({
            "points_per_batch_1_median_seconds": round(one_by_one, 3),
            "points_per_batch_64_median_seconds": round(sixty_four, 3),
            "default_vs_batch_1_speedup": round(one_by_one / median, 3),
            "default_vs_batch_64_speedup": round(sixty_four / median, 3),
            "baseline_sam2_generator_median_seconds": round(baseline, 3),
            "ours_vs_baseline_speedup": round(baseline / median, 3)})
    return figures


def run_levels_case(store: Path, work: Path, points_per_side: int, runs: int, levels) -> dict:
    """In this (fresh) process: segment everything on `levels` of `store` (None: all) `runs` times."""
    median, result = _median_seconds(store, work, _settings(points_per_side), runs, "levels", levels)
    return {"tiles": result.tiles, "objects": result.objects, "level_duplicates": result.level_duplicates,
            "median_seconds": round(median, 3), "tiles_per_second": round(result.tiles / median, 3),
            "peak_rss_mib": peak_rss_mib()}


def amg_part(args: argparse.Namespace, work: Path) -> dict:
    """One 1024 px tile of the synthetic scene, ours against SAM2AutomaticMaskGenerator (segment_all_amg.py)."""
    from segment_all_amg import SCENE, write_scene

    raster = write_scene(work / "scene.tif", 1024)
    store = work / "scene_store"
    assert encode(raster, store, 1024) == 1
    case_dir = work / "amg"
    case_dir.mkdir()
    command = [sys.executable, __file__, "--amg-points-per-side", str(args.amg_points_per_side), "--runs",
               str(args.runs), "--amg-thresholds", args.amg_thresholds, "--amg-case", str(store), str(raster),
               str(case_dir)]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode:
        sys.exit(f"the amg case failed:\n{child.stderr}")
    return {"tile_size": 1024, "points_per_side": args.amg_points_per_side, "scene_objects": len(SCENE),
            **json.loads(child.stdout.splitlines()[-1])}


def _child(args: argparse.Namespace, case: list) -> dict:
    """Run this script on one case in a fresh process (its own peak RSS); its JSON."""
    command = [sys.executable, __file__, "--tile-size", str(args.tile_size), "--points-per-side",
               str(args.points_per_side), "--runs", str(args.runs), *case]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode:
        sys.exit(f"the case {case} failed:\n{child.stderr}")
    return json.loads(child.stdout.splitlines()[-1])


def levels_part(args: argparse.Namespace, work: Path) -> dict:
    """Per level: tiles per second, peak RSS and bytes; then all levels in one run, with the targets."""
    factors = sorted(float(f) for f in args.levels.split(","))
    raster = write_raster(work / "levels.tif", raster_size(args.levels_tiles_per_side, args.tile_size))
    store = work / "levels_store"
    tiles = encode_levels(raster, store, args.tile_size, factors)
    per_level = {}
    for factor in factors:
        case_dir = work / f"level{factor:g}"
        case_dir.mkdir()
        figures = _child(args, ["--levels-case", str(store), str(case_dir), f"{factor:g}"])
        figures.pop("level_duplicates")
        per_level[f"x{factor:g}"] = {**figures, **level_bytes(store, factor)}
        assert figures["tiles"] == tiles[factor], (figures, tiles)
    (work / "all_levels").mkdir()
    together = _child(args, ["--levels-case", str(store), str(work / "all_levels"), ""])
    finest = per_level[f"x{factors[0]:g}"]["peak_rss_mib"]
    largest = max(level["peak_rss_mib"] for level in per_level.values())
    seconds = sum(level["median_seconds"] for level in per_level.values())
    return {"raster_px": raster_size(args.levels_tiles_per_side, args.tile_size), "per_level": per_level,
            "all_levels": together,
            "all_levels_seconds_over_sum_of_levels": round(together["median_seconds"] / seconds, 3),
            "targets": {
                "peak_rss_per_level_within_10pct_of_finest": all(
                    level["peak_rss_mib"] <= 1.1 * finest for level in per_level.values()),
                "all_levels_peak_rss_within_10pct_of_largest_level": together["peak_rss_mib"] <= 1.1 * largest,
                "all_levels_seconds_within_10pct_of_sum_of_levels": together["median_seconds"] <= 1.1 * seconds}}


def tiles_part(args: argparse.Namespace, work: Path) -> dict:
    """1 and 16 tiles of one level, each in a fresh process (the 1-tile one with the comparisons)."""
    cases = {}
    for per_side in (1, 4):
        raster = write_raster(work / f"r{per_side}.tif", raster_size(per_side, args.tile_size))
        store = work / f"store{per_side}"
        tiles = encode(raster, store, args.tile_size)
        assert tiles == per_side * per_side, tiles
        case_dir = work / f"case{per_side}"
        case_dir.mkdir()
        cases[f"{tiles}_tiles"] = _child(args, ["--case", str(store), str(case_dir), str(raster)]
                                         + (["--compare"] if per_side == 1 else []))
    rss_ratio = cases["16_tiles"]["peak_rss_mib"] / cases["1_tiles"]["peak_rss_mib"]
    return {**cases, "peak_rss_16_vs_1": round(rss_ratio, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--part", choices=("all", "tiles", "levels", "amg"), default="all")
    parser.add_argument("--amg-points-per-side", type=int, default=32, help="grid points per side in --part amg")
    parser.add_argument("--levels", default="1,4,16", help="level factors of the multi-scale store")
    parser.add_argument("--levels-tiles-per-side", type=int, default=6, help="finest tiles per side of its raster")
    parser.add_argument("--case", nargs=3, metavar=("STORE", "WORK", "RASTER"), help=argparse.SUPPRESS)
    parser.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--levels-case", nargs=3, metavar=("STORE", "WORK", "FACTORS"), help=argparse.SUPPRESS)
    parser.add_argument("--amg-thresholds", default="sam_defaults,keep_everything",
                        help="threshold sets of --part amg (sam_defaults, keep_everything)")
    parser.add_argument("--amg-case", nargs=3, metavar=("STORE", "RASTER", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.amg_case:
        from segment_all_amg import amg_case

        store, raster, work = map(Path, args.amg_case)
        print(json.dumps(amg_case(store, raster, work, args.amg_points_per_side, args.runs,
                                  tuple(args.amg_thresholds.split(",")))))
        return
    if args.case:
        store, work, raster = map(Path, args.case)
        print(json.dumps(run_case(store, work, raster, args.tile_size, args.points_per_side, args.runs,
                                  args.compare)))
        return
    if args.levels_case:
        store, work, factors = args.levels_case
        levels = [float(f) for f in factors.split(",")] if factors else None
        print(json.dumps(run_levels_case(Path(store), Path(work), args.points_per_side, args.runs, levels)))
        return
    work = Path(tempfile.mkdtemp(prefix="quicksam-bench-segment-all-"))
    try:
        result = {"model": MODEL, "random_weights": True, "runs": args.runs}
        if args.part != "amg":  # the amg part gives its own tile size and grid
            result.update({"tile_size": args.tile_size, "overlap": args.tile_size // 4,
                           "points_per_side": args.points_per_side, "points_per_batch": "0 (automatic: 4 on the CPU)"})
        if args.part in ("all", "tiles"):
            result.update(tiles_part(args, work))
        if args.part in ("all", "levels"):
            result["levels"] = levels_part(args, work)
        if args.part == "amg":
            result["amg"] = amg_part(args, work)
            result["loadavg"] = Path("/proc/loadavg").read_text().strip()
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
