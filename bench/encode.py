"""Encoder benchmark: prints one JSON object; every figure is measured in this run.

    .venv/bin/python bench/encode.py [--repeats 3] [--tiles-per-side 2] [--skip-qgis]

Figures (seconds per 1024 px tile, medians over --repeats runs; random SAM 2.1 tiny weights, CPU):
- model_forward: the image encoder alone on tiles already in memory;
- ours: the whole pipeline in process (read, stretch, encode, float16 store), same model object;
- baseline: the straightforward loop (read window, set_image, three float32 GeoTIFFs);
- qgis_process_ours / qgis_process_baseline: wall time of `qgis_process.bin run` per tile for
  quicksam:encoderaster and for the baseline loop run inside QGIS's process;
- bytes per tile of both stores (ours: format version 4, compressed in the writer thread), and peak RSS of the
  encoder process for a raster of one tile and one of --tiles-per-side² tiles (4x larger by default).
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

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from baseline import baseline_encode  # noqa: E402
from peak_memory import peak_rss_mib  # noqa: E402
from qgisproc import qgis_process_env, run_qgis_process  # noqa: E402

from quicksam.encoder.models import build_model  # noqa: E402
from quicksam.encoder.pipeline import EncodeRequest, encode_raster  # noqa: E402

TILE = 1024
MODEL = "sam2.1_hiera_t"


def write_test_raster(path: Path, tiles_per_side: int, tile: int = TILE) -> Path:
    """An RGB uint8 raster of tiles_per_side x tiles_per_side full tiles of `tile` px with structure and noise."""
    import rasterio
    from rasterio.transform import from_origin

    size = tile * tiles_per_side
    rng = np.random.default_rng(0)
    data = rng.integers(0, 80, (3, size, size), dtype=np.uint8)
    for _ in range(40 * tiles_per_side ** 2):
        r, c = rng.integers(0, size - 120, 2)
        data[:, r:r + rng.integers(20, 120), c:c + rng.integers(20, 120)] += rng.integers(40, 170, (3, 1, 1),
                                                                                         dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4200000, 0.5, 0.5), tiled=True) as dst:
        dst.write(data)
    return path


def median(values):
    return round(statistics.median(values), 4)


def time_model_forward(model, raster: Path, repeats: int) -> float:
    import rasterio

    with rasterio.open(raster) as src:
        image = np.moveaxis(src.read([1, 2, 3], window=((0, TILE), (0, TILE))), 0, -1)[None]
    model.encode(image)  # warm-up
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.encode(image)
        runs.append(time.perf_counter() - started)
    return median(runs)


def time_ours(model, raster: Path, work: Path, repeats: int):
    """End to end per tile (store setup included) and the tile loop alone per tile."""
    runs, loops, tiles, store = [], [], 0, None
    for i in range(repeats):
        request = EncodeRequest(raster=str(raster), store=work / f"ours{i}", model=MODEL, overlap=0,
                                checkpoint=None)
        started = time.perf_counter()
        store, stats = encode_raster(request, model=model)
        tiles = stats.tiles_encoded
        runs.append((time.perf_counter() - started) / tiles)
        loops.append(stats.total_seconds / tiles)
    tile_file = store.tile_path(next(t for t, record in store.records().items() if record.status == "done"))
    return median(runs), median(loops), tile_file.stat().st_size, tiles


def time_baseline(model, raster: Path, work: Path, repeats: int):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model.net)
    runs, written = [], []
    for i in range(repeats):
        started = time.perf_counter()
        written = baseline_encode(str(raster), work / f"baseline{i}", predictor)
        runs.append((time.perf_counter() - started) / (len(written) // 3))
    per_tile_bytes = sum(p.stat().st_size for p in written) / (len(written) // 3)
    return median(runs), int(per_tile_bytes)


def time_qgis_process(raster: Path, work: Path, repeats: int, tiles: int):
    env = qgis_process_env(work / "qgis")
    scripts = Path(env["HOME"]) / ".local/share/QGIS/QGIS3/profiles/default/processing/scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    for name in ("baseline_algorithm.py", "baseline.py"):
        shutil.copy(BENCH / name, scripts / name)
    ours, baseline = [], []
    for i in range(repeats):
        started = time.perf_counter()
        run_qgis_process(["run", "quicksam:encoderaster", "--", f"INPUT={raster}", f"OUTPUT={work / f'qp_ours{i}'}",
                          "RANDOM_WEIGHTS=true", "OVERLAP=0", "BANDS=1", "BANDS=2", "BANDS=3"], env, check=True)
        ours.append((time.perf_counter() - started) / tiles)
        started = time.perf_counter()
        run_qgis_process(["run", "script:baselineencode", "--", f"INPUT={raster}",
                          f"OUTPUT={work / f'qp_base{i}'}"], env, check=True)
        baseline.append((time.perf_counter() - started) / tiles)
    return median(ours), median(baseline)


def encoder_peak_rss_mib(raster: Path, store: Path) -> float:
    """Peak RSS of a fresh encoder process (the CLI) encoding `raster`."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from peak_memory import peak_rss_mib; "
            "from quicksam.cli import main; rc = main(sys.argv[1:]); print(peak_rss_mib(), file=sys.stderr); "
            "sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, "encode", str(raster), str(store), "--random-weights",
                             "--overlap", "0", "--progress-json"], capture_output=True, text=True, check=True)
    return float(result.stderr.strip().splitlines()[-1])


def load_average():
    """The machine's 1, 5 and 15 minute load (the ratios are from one run, the seconds are not), None off Linux."""
    path = Path("/proc/loadavg")
    return path.read_text().split()[:3] if path.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiles-per-side", type=int, default=2)
    parser.add_argument("--skip-qgis", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="quicksam-bench-"))
    try:
        raster = write_test_raster(work / "raster.tif", args.tiles_per_side)
        small = write_test_raster(work / "small.tif", 1)
        model = build_model(MODEL, seed=0)
        forward = time_model_forward(model, raster, args.repeats)
        ours, ours_loop, ours_bytes, tiles = time_ours(model, raster, work, args.repeats)
        baseline, baseline_bytes = time_baseline(model, raster, work, args.repeats)
        result = {
            "model": MODEL, "weights": "random (seeded)", "tile_px": TILE, "tiles_per_run": tiles,
            "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
            "seconds_per_tile": {"model_forward": forward, "ours": ours, "ours_tile_loop": ours_loop,
                                 "baseline": baseline},
            "ratios": {"ours_over_model_forward": round(ours / forward, 3),
                       "ours_tile_loop_over_model_forward": round(ours_loop / forward, 3),
                       "baseline_over_ours": round(baseline / ours, 3)},
            "bytes_per_tile": {"ours": ours_bytes, "baseline": baseline_bytes,
                               "ours_over_baseline": round(ours_bytes / baseline_bytes, 3)},
        }
        if not args.skip_qgis:
            qp_ours, qp_baseline = time_qgis_process(raster, work, args.repeats, tiles)
            result["seconds_per_tile"].update(qgis_process_ours=qp_ours, qgis_process_baseline=qp_baseline)
            result["ratios"]["qgis_process_baseline_over_ours"] = round(qp_baseline / qp_ours, 3)
        rss_small = encoder_peak_rss_mib(small, work / "rss_small")
        rss_large = encoder_peak_rss_mib(raster if args.tiles_per_side >= 2 else small, work / "rss_large")
        result["peak_rss_mib"] = {"raster_1x": rss_small, f"raster_{args.tiles_per_side ** 2}x": rss_large,
                                  "ratio": round(rss_large / rss_small, 3)}
        result["targets"] = {
            "ours_within_5pct_of_model_forward": result["ratios"]["ours_over_model_forward"] <= 1.05,
            "ours_tile_loop_within_5pct_of_model_forward":
                result["ratios"]["ours_tile_loop_over_model_forward"] <= 1.05,
            "bytes_per_tile_at_most_half_baseline": result["bytes_per_tile"]["ours_over_baseline"] <= 0.5,
            "peak_rss_flat_within_10pct": result["peak_rss_mib"]["ratio"] <= 1.10,
        }
        if not args.skip_qgis:
            result["targets"]["qgis_process_1_5x_faster_than_baseline"] = (
                result["ratios"]["qgis_process_baseline_over_ours"] >= 1.5)
        result.update(self_max_rss_mib=peak_rss_mib(), loadavg=load_average())
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
