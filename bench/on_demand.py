"""On-demand tile benchmark: the time from a click no tile holds to its polygon; prints one JSON object.

    .venv/bin/python bench/on_demand.py [--runs 3] [--tile 1024]

A raster of 1.75 x 1 tiles (1792 x 1024 px at 1024 px tiles) is encoded once with the random SAM 2.1 tiny
model: two tiles, overlapping by a quarter of a tile. Each run takes a fresh copy of that store and two points
across the tiles' border (columns 0.68 and 1.07 tiles, so no tile holds both), and times what the dock does
after the user accepts the offer: the refusal (NoTilePromptError), `quicksam encode-tile` in a separate encoder
process (ui/tile_encoder.run_tile_encoder, the dock's own call: Python and torch start, the model is built, the
tile read, encoded, written, the tile indexes rewritten), the engine opened again and the prompts decoded into a
polygon. The floor, measured in the same run: the model encoding one tile in this process, model already built
(`encode_floor_s`), and the encoder process's own pipeline time for its tile (`tile_pipeline_s`). Seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

MODEL = "sam2.1_hiera_t"


def write_raster(path: Path, tile: int) -> Path:
    """An RGB uint8 raster of 1.75 x 1 tiles with rectangles on noise (EPSG:32633, 1 m pixels)."""
    import rasterio
    from rasterio.transform import from_origin

    width, height = tile * 7 // 4, tile
    rng = np.random.default_rng(0)
    data = rng.integers(0, 80, (3, height, width), dtype=np.uint8)
    for _ in range(60):
        r, c = rng.integers(0, height - 120), rng.integers(0, width - 120)
        data[:, r:r + rng.integers(20, 120), c:c + rng.integers(20, 120)] += rng.integers(40, 170, (3, 1, 1),
                                                                                         dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4200000, 1.0, 1.0)) as dst:
        dst.write(data)
    return path


def encode_base(folder: Path, tile: int, model) -> Path:
    from quicksam.encoder.pipeline import EncodeRequest, encode_raster

    raster = write_raster(folder / "scene.tif", tile)
    request = EncodeRequest(raster=str(raster), store=folder / "base", model=MODEL, tile_size=tile, device="cpu",
                            overlap=tile // 4)
    store, _ = encode_raster(request, model=model)
    assert len(store.grid) == 2, [t.tile_id for t in store.grid]
    return store.root


def one_click(base: Path, work: Path, tile: int) -> Dict[str, float]:
    """A fresh copy of the store, the click no tile holds, and its polygon: the seconds of each step."""
    from quicksam.core.geo import pixel_to_map
    from quicksam.core.store import FeatureStore
    from quicksam.interactive.engine import MapPrompts, NoTilePromptError
    from quicksam.interactive.scales import open_engine
    from quicksam.ui.tile_encoder import run_tile_encoder

    store_path = work / "store"
    if store_path.exists():
        shutil.rmtree(store_path)
    shutil.copytree(base, store_path)
    engine = open_engine(FeatureStore.open(store_path))
    geotransform = engine.store.geotransform
    prompts = MapPrompts((pixel_to_map(geotransform, 0.68 * tile, 0.5 * tile),
                          pixel_to_map(geotransform, 1.07 * tile, 0.5 * tile)), (1, 1))
    events: List[dict] = []
    started = time.perf_counter()
    try:
        engine.segment(prompts)
        raise RuntimeError("a tile already holds the prompts: the bench's scene is wrong")
    except NoTilePromptError:
        pass
    refused = time.perf_counter()
    summary = run_tile_encoder(str(store_path), prompts, False, events.append, lambda: False, python=sys.executable)
    encoded = time.perf_counter()
    engine = open_engine(FeatureStore.open(store_path))
    segments = engine.segment(prompts)
    done = time.perf_counter()
    assert segments and segments[0].tile_id == summary["tile_id"] == "x0000", (segments, summary)
    finished = next(event for event in events if event.get("event") == "finished")
    return {"click_to_polygon_s": done - started, "refusal_s": refused - started,
            "encoder_process_s": encoded - refused, "reopen_and_decode_s": done - encoded,
            "tile_pipeline_s": float(finished.get("seconds") or 0.0)}


def encode_floor(base: Path, model, repeats: int) -> List[float]:
    """The model encoding the on-demand tile's image in this process, model built: seconds per run."""
    from quicksam.core.store import FeatureStore
    from quicksam.core.tiling import Tile
    from quicksam.encoder.normalise import Stretch
    from quicksam.encoder.raster import WindowReader

    store = FeatureStore.open(base)
    size = store.grid.tile_size
    tile = Tile(index=0, row=0, col=0, col_off=size * 7 // 16, row_off=0, size=size, valid_width=size,
                valid_height=size)
    with WindowReader(store.manifest.raster.path, list(store.manifest.preprocessing.bands)) as reader:
        data, valid = reader.read_tile(tile)
    image = Stretch(**store.manifest.preprocessing.stretch.__dict__).apply(data, valid)[np.newaxis]
    model.encode(image)   # warm-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.encode(image)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tile", type=int, default=1024)
    args = parser.parse_args()
    from quicksam.encoder.models import build_model

    work = Path(tempfile.mkdtemp(prefix="quicksam-on-demand-"))
    try:
        started = time.perf_counter()
        model = build_model(MODEL, checkpoint=None, seed=0, device="cpu", image_size=args.tile)
        build_seconds = time.perf_counter() - started
        base = encode_base(work, args.tile, model)
        runs = [one_click(base, work, args.tile) for _ in range(args.runs)]
        floor = encode_floor(base, model, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]}
    print(json.dumps({
        "tile_size": args.tile, "model": MODEL, "weights": "random (seed 0)", "runs": args.runs,
        "median": medians, "click_to_polygon_s_each": [round(run["click_to_polygon_s"], 3) for run in runs],
        "encode_floor_s": round(statistics.median(floor), 3), "model_build_in_process_s": round(build_seconds, 3),
        "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
