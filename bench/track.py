"""Tracking benchmark (issue 12): prints one JSON object; every figure is measured in this run.

    .venv/bin/python bench/track.py [--tile 1024] [--frames 8] [--repeats 3]

A series of --frames rasters of one --tile px tile (rectangles on noise, three of them moving from frame to frame)
is encoded once with the random SAM 2.1 tiny model (CPU, float16 features, the default). Then, for 1 and 3
objects (points on the moving rectangles, prompt frame 0, forward):
- cached: `encoder.tracking.run_track_job` on the store (the model already built; reading the stored features,
  SAM 2's memory encoder, memory attention and mask decoder, the result files written);
- stock: sam2's `SAM2VideoPredictor` with the same weights on the same frames as JPEG images (its only input
  format): `init_state`, the same prompts, `propagate_in_video`; it encodes every frame.
Each is timed --repeats times (median). Seconds per frame per object = seconds / (frames x objects); `ratio` =
stock / cached: what the cache buys. The floor, measured in the same run: the image encoder alone on one tile in
memory (`encode_floor_s`), which the stock predictor pays on every frame and tracking from the store never does.
Targets (the issue names none in seconds): the cached run is faster than the stock one, and a cached frame costs
less than encoding it.
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
import warnings
from pathlib import Path
from typing import List, Tuple

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")   # sam2's progress bars
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

MODEL = "sam2.1_hiera_t"
#: The moving rectangles: (col, row, size) on frame 0 as fractions of the tile, and their step per frame.
RECTANGLES = ((0.1, 0.1, 0.2), (0.5, 0.2, 0.15), (0.3, 0.6, 0.25))
STEP = 0.02


def frame_image(tile: int, index: int) -> np.ndarray:
    """(tile, tile, 3) uint8 of frame `index`: noise, with RECTANGLES moved by index x STEP."""
    rng = np.random.default_rng(index)
    image = rng.integers(0, 70, (tile, tile, 3), dtype=np.uint8)
    for number, (col, row, size) in enumerate(RECTANGLES):
        c, r, s = (int(v * tile) for v in (col + index * STEP, row + index * STEP / 2, size))
        image[r:r + s, c:c + s] = (180 + 20 * number, 120, 60 + 50 * number)
    return image


def write_series(folder: Path, tile: int, frames: int, model) -> Tuple[Path, Path]:
    """The frames as GeoTIFFs encoded into a series store, and as JPEGs (00000.jpg, ...) for the stock predictor."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    from quicksam.core.series import FrameRef, SeriesManifest, frame_folder_name
    from quicksam.core.series import write_series as write_manifest
    from quicksam.encoder.pipeline import EncodeRequest, encode_raster

    store, jpegs = folder / "series.qsam", folder / "jpeg"
    jpegs.mkdir()
    refs = []
    for index in range(frames):
        image = frame_image(tile, index)
        raster = folder / f"frame_{index}.tif"
        with rasterio.open(raster, "w", driver="GTiff", width=tile, height=tile, count=3, dtype="uint8",
                           crs="EPSG:32633", transform=from_origin(500000, 4200000, 1.0, 1.0)) as dst:
            dst.write(image.transpose(2, 0, 1))
        Image.fromarray(image).save(jpegs / f"{index:05d}.jpg", quality=95)
        target = store if index == 0 else store / frame_folder_name(index)
        encode_raster(EncodeRequest(raster=str(raster), store=target, model=MODEL, tile_size=tile, device="cpu",
                                    overlap=tile // 4, stretch="none"), model=model)
        refs.append(FrameRef(index=index, folder=frame_folder_name(index), source=str(raster)))
    write_manifest(store, SeriesManifest(frames=tuple(refs), grid_source=refs[0].source))
    return store, jpegs


def prompts(tile: int, count: int) -> List[Tuple[float, float]]:
    """One point in the middle of each of the first `count` rectangles on frame 0 (tile pixels)."""
    return [((col + size / 2) * tile, (row + size / 2) * tile) for col, row, size in RECTANGLES[:count]]


def time_cached(store: Path, work: Path, tile: int, frames: int, count: int, predictor) -> float:
    from quicksam.core.track_job import TrackGroup, TrackJob, TrackObject
    from quicksam.encoder.tracking import run_track_job

    objects = tuple(TrackObject(number + 1, points=(point,), labels=(1,))
                    for number, point in enumerate(prompts(tile, count)))
    job = TrackJob(store=str(store), frames=tuple(range(frames)), prompt_frame=0, direction="forward",
                   groups=(TrackGroup(".", "r0000c0000", objects),), output_dir=str(work / f"out{count}"))
    started = time.perf_counter()
    run_track_job(job, predictor=predictor)
    return time.perf_counter() - started


def time_stock(stock, jpegs: Path, tile: int, count: int) -> float:
    started = time.perf_counter()
    state = stock.init_state(str(jpegs))
    for number, (x, y) in enumerate(prompts(tile, count)):
        stock.add_new_points_or_box(state, frame_idx=0, obj_id=number + 1, points=[[x - 0.5, y - 0.5]], labels=[1])
    for _ in stock.propagate_in_video(state, start_frame_idx=0):
        pass
    return time.perf_counter() - started


def encode_floor(model, tile: int, repeats: int) -> float:
    image = frame_image(tile, 0)[np.newaxis]
    model.encode(image)   # warm-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.encode(image)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure(args: argparse.Namespace, work: Path) -> dict:
    from quicksam.encoder.models import build_model, build_video_predictor

    model = build_model(MODEL, checkpoint=None, seed=0, device="cpu", image_size=args.tile)
    started = time.perf_counter()
    store, jpegs = write_series(work, args.tile, args.frames, model)
    encode_seconds = time.perf_counter() - started
    predictor, stock = build_video_predictor(model), build_video_predictor(model)
    figures = {}
    for count in (1, 3):
        cached = [time_cached(store, work, args.tile, args.frames, count, predictor) for _ in range(args.repeats)]
        direct = [time_stock(stock, jpegs, args.tile, count) for _ in range(args.repeats)]
        per = args.frames * count
        figures[f"{count}_objects"] = {
            "cached_s": round(statistics.median(cached), 3), "stock_s": round(statistics.median(direct), 3),
            "cached_s_per_frame_per_object": round(statistics.median(cached) / per, 3),
            "stock_s_per_frame_per_object": round(statistics.median(direct) / per, 3),
            "ratio_stock_over_cached": round(statistics.median(direct) / statistics.median(cached), 2),
            "cached_s_each": [round(v, 3) for v in cached], "stock_s_each": [round(v, 3) for v in direct]}
    floor = encode_floor(model, args.tile, args.repeats)
    return {"figures": figures, "encode_floor_s": round(floor, 3),
            "series_encode_s_per_frame": round(encode_seconds / args.frames, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quicksam-track-"))
    # sam2 warns on every frame when its compiled extension (hole filling) is missing, in both runs alike
    warnings.filterwarnings("ignore", message=r"(?s).*Skipping the post-processing step")
    try:
        result = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = result["figures"]
    one = figures["1_objects"]
    result.update({
        "tile_size": args.tile, "frames": args.frames, "model": MODEL, "weights": "random (seed 0)",
        "device": "cpu", "repeats": args.repeats, "feature_dtype": "float16",
        "targets": {"cached_faster_than_stock": all(f["ratio_stock_over_cached"] > 1 for f in figures.values()),
                    "cached_frame_cheaper_than_encoding_it":
                        one["cached_s_per_frame_per_object"] < result["encode_floor_s"]},
        "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)})
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
