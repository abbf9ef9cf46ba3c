"""Levels benchmark (issue 11): prints one JSON object; every figure is measured in this run.

    .venv/bin/python bench/levels.py [--size 4096] [--tile 1024] [--levels 1,4,16] [--repeats 3]

Figures (random SAM 2.1 tiny weights, CPU, a synthetic RGB raster of --size x --size pixels):
- per level: tiles, seconds per tile of the whole pipeline (read, resample, stretch, encode, store;
  the level encoded alone, added to the store level by level), store bytes of the level (its folder,
  without the coarser levels inside the root), and seconds per tile of the resampled read alone
  (median of --repeats reads of every tile), with and without the file's overviews;
- model_forward_seconds: the image encoder alone on one tile already in memory (median of --repeats), the
  floor every level's seconds per tile is held against (`ratio_to_model_forward`).
The issue sets no speed target for levels; `read_uses_overviews` says whether the coarsest level's read
got faster with overviews (GDAL picks them for averaged reads).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from encode import write_test_raster  # noqa: E402

from quicksam.core.levels import level_folder, parse_factors  # noqa: E402
from quicksam.core.store import FeatureStore  # noqa: E402
from quicksam.core.store_levels import level_stores  # noqa: E402
from quicksam.encoder.levels_pipeline import encode_levels  # noqa: E402
from quicksam.encoder.models import build_model  # noqa: E402
from quicksam.encoder.pipeline import EncodeRequest  # noqa: E402
from quicksam.encoder.raster import WindowReader  # noqa: E402

MODEL = "sam2.1_hiera_t"


def folder_bytes(folder: Path, skip: Path) -> int:
    """Bytes of the files under `folder`, leaving out those under `skip` (the root's coarser levels)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and skip not in p.parents)


def read_seconds_per_tile(raster: Path, store: FeatureStore, repeats: int) -> float:
    """Median over `repeats` of the seconds to read every tile of the level (resampled), per tile."""
    factor = store.manifest.pixel_grid.factor
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        with WindowReader(str(raster), [1, 2, 3], factor) as reader:
            for tile in store.grid:
                reader.read_tile(tile)
        runs.append((time.perf_counter() - started) / len(store.grid))
    return statistics.median(runs)


def model_forward_seconds(model: object, tile: int, repeats: int) -> float:
    """Median seconds of the image encoder on one (1, tile, tile, 3) uint8 tile already in memory."""
    batch = np.random.default_rng(0).integers(0, 255, (1, tile, tile, 3), dtype=np.uint8)
    model.encode(batch)   # warm-up
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.encode(batch)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def with_overviews(raster: Path, copy: Path) -> Path:
    """A copy of `raster` with averaged overviews 2, 4, 8, 16 (GDAL's, through rasterio)."""
    import rasterio
    from rasterio.enums import Resampling

    shutil.copy(raster, copy)
    with rasterio.open(copy, "r+") as dataset:
        dataset.build_overviews([2, 4, 8, 16], Resampling.average)
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    factors = parse_factors(args.levels)
    work = Path(tempfile.mkdtemp(prefix="quicksam-bench-levels-"))
    try:
        raster = write_test_raster(work / "scene.tif", max(1, args.size // 1024))
        model = build_model(MODEL, checkpoint=None, seed=0, device="cpu", image_size=args.tile)
        forward = model_forward_seconds(model, args.tile, args.repeats)
        store_path = work / "scene.qsam"
        levels = []
        for count in range(1, len(factors) + 1):
            request = EncodeRequest(raster=str(raster), store=store_path, model=MODEL, tile_size=args.tile,
                                    overlap=args.tile // 4, device="cpu", levels=factors[:count])
            started = time.perf_counter()
            root, _ = encode_levels(request, model=model)
            seconds = time.perf_counter() - started
            store = level_stores(root)[count - 1]
            levels.append({"factor": factors[count - 1], "resolution": store.manifest.pixel_grid.resolution,
                           "tiles": len(store.grid), "seconds_per_tile": seconds / len(store.grid),
                           "ratio_to_model_forward": seconds / len(store.grid) / forward,
                           "store_bytes": folder_bytes(store.root, store_path / "levels")
                           if store.root == store_path else folder_bytes(store.root, work / "none")})
        stores = level_stores(FeatureStore.open(store_path))
        overviews = with_overviews(raster, work / "scene_ovr.tif")
        for entry, store in zip(levels, stores):
            entry["read_seconds_per_tile"] = read_seconds_per_tile(raster, store, args.repeats)
            entry["read_seconds_per_tile_with_overviews"] = read_seconds_per_tile(overviews, store, args.repeats)
        coarsest = levels[-1]
        print(json.dumps({
            "raster_px": args.size, "tile_px": args.tile, "model": MODEL, "repeats": args.repeats,
            "model_forward_seconds": forward, "levels": levels,
            "read_uses_overviews": coarsest["read_seconds_per_tile_with_overviews"]
            < coarsest["read_seconds_per_tile"],
            "level_folders": [level_folder(f) for f in factors[1:]],
        }, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
