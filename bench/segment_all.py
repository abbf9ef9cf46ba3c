"""Segment-everything benchmark: tiles per second and peak RSS for 1 and for 16 tiles; prints one JSON object.

    .venv/bin/python bench/segment_all.py [--tile-size 256] [--points-per-side 16]

A synthetic RGB raster of 1x1 and 4x4 tiles (no overlap, so the tile count is exact) is encoded with the
seeded random SAM 2.1 tiny model, then `segment_everything` runs on it in a fresh process per case, so each
peak RSS (ru_maxrss of that process) is its own. Random weights make masks meaningless, so the thresholds
are set to keep everything (the most work per tile the merge and writer can get); the decoding cost per
point is the real one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL = "sam2.1_hiera_t"


def write_raster(path: Path, tiles_per_side: int, tile: int) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    size = tiles_per_side * tile
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:size, 0:size]
    data = np.stack([((rows // 37 + cols // 53) % 2) * 120 + 60 + rng.integers(0, 30, (size, size))
                     for _ in range(3)]).astype(np.uint8)
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=from_origin(500000, 4200000, 1.0, 1.0))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def encode(raster: Path, store: Path, tile: int) -> None:
    from quicksam.encoder.models import build_model
    from quicksam.encoder.pipeline import EncodeRequest, encode_raster

    model = build_model(MODEL, checkpoint=None, seed=0, device="cpu", image_size=tile)
    request = EncodeRequest(raster=str(raster), store=store, model=MODEL, tile_size=tile, overlap=0, device="cpu")
    encode_raster(request, model=model)


def run_case(store: Path, output: Path, points_per_side: int) -> dict:
    """In this process: segment everything, return timings and peak RSS."""
    import resource

    from quicksam.encoder.store import FeatureStore
    from quicksam.interactive.automatic import AutoMaskSettings, segment_everything

    settings = AutoMaskSettings(points_per_side=points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    started = time.perf_counter()
    result = segment_everything(FeatureStore.open(store), output, settings)
    seconds = time.perf_counter() - started
    return {"tiles": result.tiles, "objects": result.objects, "seconds": round(seconds, 3),
            "tiles_per_second": round(result.tiles / seconds, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--case", nargs=2, metavar=("STORE", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(Path(args.case[0]), Path(args.case[1]), args.points_per_side)))
        return
    work = Path(tempfile.mkdtemp(prefix="quicksam-bench-segment-all-"))
    try:
        cases = {}
        for per_side in (1, 4):
            raster = write_raster(work / f"r{per_side}.tif", per_side, args.tile_size)
            store = work / f"store{per_side}"
            encode(raster, store, args.tile_size)
            child = subprocess.run([sys.executable, __file__, "--points-per-side", str(args.points_per_side),
                                    "--case", str(store), str(work / f"out{per_side}.gpkg")],
                                   capture_output=True, text=True, check=True)
            cases[f"{per_side * per_side}_tiles"] = json.loads(child.stdout.splitlines()[-1])
        print(json.dumps({"model": MODEL, "random_weights": True, "tile_size": args.tile_size,
                          "points_per_side": args.points_per_side, **cases}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
