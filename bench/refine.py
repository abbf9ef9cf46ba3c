"""Refinement benchmark (issue 11): how far a large object's edge lies from the truth, decoded on a coarse
level and refined on the finest level's tiles. Prints one JSON object; every figure is measured in this run.

    .venv/bin/python bench/refine.py [--size 1024] [--tile 256] [--radius 300]

A synthetic raster (10 m pixels) holds one bright disk of --radius pixels, wider than a tile; the store has
levels 1, 4 and 16. A box around the disk is decoded (on level 4) and refined. Random weights make SAM's
masks arbitrary, so the decoder's mask is replaced by the image the encoder read at that level,
thresholded ("image_mask_decoder"): the figures then measure QuickSAM's plumbing (level choice, prompts,
joining the pieces), the best a perfect decoder could get, not SAM's accuracy. `random_weights` gives the
same with the real random decoder, for the record: its edges are meaningless.

Figures: mean and maximum distance of the polygon's boundary vertices from the true circle, in finest
pixels, coarse and refined; seconds of the coarse decode and of the refinement (medians of 3).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

from quicksam.core.store import FeatureStore
from quicksam.encoder.levels_pipeline import encode_levels
from quicksam.encoder.models import build_model
from quicksam.encoder.pipeline import EncodeRequest
from quicksam.encoder.raster import WindowReader
from quicksam.interactive.engine import MapPrompts
from quicksam.interactive.scales import open_engine

PIXEL = 10.0
ORIGIN = (500000.0, 4200000.0)


def write_disk(path: Path, size: int, radius: float) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    rows, cols = np.mgrid[:size, :size] + 0.5
    data = np.full((3, size, size), 30, np.uint8)
    data[:, (cols - size / 2) ** 2 + (rows - size / 2) ** 2 <= radius ** 2] = 220
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(*ORIGIN, PIXEL, PIXEL)) as dataset:
        dataset.write(data)
    return path


def use_image_masks(engine: object, raster: Path) -> None:
    """Every level's decoder returns the tile image the encoder read, thresholded, as its mask."""
    for level in engine.level_engines:
        get, decode, last = level.cache.get, level.decoder.decode, []
        factor = level.store.manifest.pixel_grid.factor

        def fetch(tile_id: str, _get=get, _last=last) -> dict:
            _last[:] = [tile_id]
            return _get(tile_id)

        def fake(features: dict, prompts: object, multimask: bool = False, _decode=decode, _level=level,
                 _factor=factor, _last=last) -> object:
            result = _decode(features, prompts, multimask=multimask)
            with WindowReader(str(raster), [1, 2, 3], _factor) as reader:
                image, _ = reader.read_tile(_level.store.grid.by_id(_last[0]))
            return dataclasses.replace(result, masks=np.repeat((image[0] > 125)[None], len(result.scores), axis=0))

        level.cache.get = fetch
        level.decoder = type("Decoder", (), {"decode": staticmethod(fake), "settings": level.decoder.settings})()


def edge_error(wkb: bytes, centre: tuple, radius: float) -> dict:
    """Mean and max distance (finest pixels) of the boundary's vertices from the true circle."""
    ring = shapely.get_coordinates(shapely.boundary(shapely.from_wkb(wkb)))
    distance = np.abs(np.hypot(ring[:, 0] - centre[0], ring[:, 1] - centre[1]) - radius) / PIXEL
    return {"mean_px": float(distance.mean()), "max_px": float(distance.max())}


def measure(engine: object, prompts: MapPrompts, centre: tuple, radius: float) -> dict:
    """Coarse and refined decode of `prompts`: edge errors and median seconds of 3."""
    out = {}
    for refine in (False, True):
        engine.refine_edges = refine
        times = []
        for _ in range(3):
            started = time.perf_counter()
            segments = engine.segment(prompts)
            times.append(time.perf_counter() - started)
        key = "refined" if refine else "coarse"
        if not segments:
            out[key] = {"empty": True}
            continue
        out[key] = {**edge_error(segments[0].geometry.wkb, centre, radius), "seconds": statistics.median(times),
                    "level_factor": segments[0].level_factor}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--radius", type=float, default=300.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quicksam-bench-refine-"))
    try:
        raster = write_disk(work / "disk.tif", args.size, args.radius)
        model = build_model("sam2.1_hiera_t", checkpoint=None, seed=0, device="cpu", image_size=args.tile)
        request = EncodeRequest(raster=str(raster), store=work / "disk.qsam", model="sam2.1_hiera_t",
                                tile_size=args.tile, overlap=args.tile // 8, device="cpu", levels=(1, 4, 16))
        encode_levels(request, model=model)
        centre = (ORIGIN[0] + args.size / 2 * PIXEL, ORIGIN[1] - args.size / 2 * PIXEL)
        half = (args.radius + 20) * PIXEL
        prompts = MapPrompts(box=(centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half))
        truth_radius = args.radius * PIXEL
        random = measure(open_engine(FeatureStore.open(work / "disk.qsam")), prompts, centre, truth_radius)
        engine = open_engine(FeatureStore.open(work / "disk.qsam"))
        use_image_masks(engine, raster)
        plumbing = measure(engine, prompts, centre, truth_radius)
        print(json.dumps({"raster_px": args.size, "tile_px": args.tile, "disk_radius_px": args.radius,
                          "image_mask_decoder": plumbing, "random_weights": random,
                          "refined_edge_nearer_truth": plumbing["refined"]["mean_px"] < plumbing["coarse"]["mean_px"]},
                         indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
