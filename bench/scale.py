"""Scaling benchmark (issue 13): encoding on a Dask cluster vs a plain process; prints one JSON object.

    .venv/bin/python bench/scale.py [--tile 512] [--tiles-per-side 3] [--workers 1,2] [--gpu-seconds-per-tile 0.08]

Measured in this run (random SAM 2.1 tiny weights, CPU, a synthetic RGB raster of tiles-per-side² tiles, no
overlap):
- plain: tiles per second of `encode_raster` in this process (model built before the clock starts), the model's
  share per tile, and the rest (read, stretch, write, log) per tile;
- for each local worker count (an embedded LocalCluster, cores // N torch threads each): tiles per second once
  every worker holds its model (a warm-up run into a throwaway store first), the overhead per tile against the
  plain process (`cluster seconds per tile - plain seconds per tile`, meaningful for 1 worker, which has the
  same threads as the plain process), and each worker's peak RSS (VmHWM) after both runs;
- coordinator_seconds_per_tile: what the coordinating process spends per tile (a record appended to the log,
  fsynced), the only serial part of a cluster run.
MODELLED, not measured: `projection` estimates a 100,000 x 100,000 px raster on N GPU workers from those
per-tile costs and an ASSUMED GPU forward time per tile (--gpu-seconds-per-tile; measure yours with
bench/encode.py on the GPU) on 1024 px tiles with a 256 px overlap, the measured read/stretch/write time per tile
scaled by tile area to 1024 px: seconds = tiles x max(coordinator, (gpu + io + overhead) / N).
On a machine with 2 cores, 2 workers share the cores the plain process already used: expect little gain.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from quicksam.core.cluster import PLUGIN_NAME, ClusterSettings, cluster_client
from quicksam.core.store import FeatureStore, TileRecord
from quicksam.core.tiling import TileGrid
from quicksam.encoder.models import build_model
from quicksam.encoder.pipeline import EncodeRequest, encode_raster

MODEL = "sam2.1_hiera_t"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode import write_test_raster  # noqa: E402  (bench/encode.py: the same synthetic raster)


def request_for(raster: Path, store: Path, tile: int) -> EncodeRequest:
    return EncodeRequest(raster=str(raster), store=store, model=MODEL, tile_size=tile, overlap=0, device="cpu")


def plain_run(raster: Path, work: Path, tile: int) -> Dict[str, float]:
    """Seconds per tile of a plain run, and its model and other shares."""
    model = build_model(MODEL, checkpoint=None, seed=0, device="cpu", image_size=tile)
    started = time.perf_counter()
    store, stats = encode_raster(request_for(raster, work / "plain.qsam", tile), model=model)
    seconds = time.perf_counter() - started
    tiles = len(store.grid)
    return {"tiles": tiles, "seconds": seconds, "tiles_per_second": tiles / seconds,
            "seconds_per_tile": seconds / tiles, "model_seconds_per_tile": stats.model_seconds / tiles,
            "io_seconds_per_tile": max(0.0, (seconds - stats.model_seconds) / tiles),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def worker_peak_rss_mib(dask_worker: object = None) -> float:
    """This worker process's peak RSS in MiB: VmHWM of /proc/self/status (Linux; reset when the worker's Python
    starts, unlike ru_maxrss, which a spawned process inherits from its parent), else its RSS now (psutil)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def worker_builds(dask_worker: object) -> int:
    return dask_worker.plugins[PLUGIN_NAME].cache.get("encoder-model-builds", 0)


def cluster_run(raster: Path, work: Path, tile: int, workers: int, plain: Dict[str, float]) -> Dict[str, object]:
    """Tiles per second on `workers` local workers once each holds its model; overhead; peak RSS per worker."""
    with cluster_client(ClusterSettings(workers=workers)) as client:
        client.wait_for_workers(workers, timeout=120)
        encode_raster(request_for(raster, work / f"warm{workers}.qsam", tile), client=client)
        started = time.perf_counter()
        store, _ = encode_raster(request_for(raster, work / f"cluster{workers}.qsam", tile), client=client)
        seconds = time.perf_counter() - started
        rss = client.run(worker_peak_rss_mib)
        builds = client.run(worker_builds)
    tiles = len(store.grid)
    return {"workers": workers, "tiles": tiles, "seconds": seconds, "tiles_per_second": tiles / seconds,
            "seconds_per_tile": seconds / tiles, "speedup_vs_plain": plain["seconds_per_tile"] / (seconds / tiles),
            "overhead_seconds_per_tile_vs_plain": seconds / tiles - plain["seconds_per_tile"],
            "worker_peak_rss_mib": sorted(rss.values()), "models_built_per_worker": sorted(builds.values())}


def coordinator_seconds_per_tile(work: Path, count: int = 200) -> float:
    """Seconds the coordinator spends recording one tile (a log line appended and fsynced), over `count`."""
    store = FeatureStore.open(work / "plain.qsam")
    records = [TileRecord(t.tile_id, "nodata", None, 0.0) for t in store.grid]
    started = time.perf_counter()
    for index in range(count):
        store.record(records[index % len(records)])
    return (time.perf_counter() - started) / count


def projection(tile: int, overlap: int, side_px: int, gpu_seconds: float, io_seconds: float, overhead: float,
               coordinator: float, gpu_workers: List[int]) -> Dict[str, object]:
    """MODELLED hours for a side_px x side_px raster on N GPU workers (see the module docstring)."""
    grid = TileGrid.build(side_px, side_px, tile, overlap)
    tiles = len(grid)
    per_tile = gpu_seconds + io_seconds + max(0.0, overhead)
    rows = [{"gpu_workers": n, "hours": tiles * max(coordinator, per_tile / n) / 3600,
             "tiles_per_second": 1 / max(coordinator, per_tile / n)} for n in gpu_workers]
    return {"MODELLED": "an estimate from the per-tile costs measured here and an ASSUMED GPU time per tile, "
                        "not a measurement",
            "raster_px": side_px, "tile_px": tile, "overlap_px": overlap, "tiles": tiles,
            "assumed_gpu_seconds_per_tile": gpu_seconds, "io_seconds_per_tile_measured_scaled_to_tile_area": io_seconds,
            "measured_cluster_overhead_seconds_per_tile": max(0.0, overhead),
            "measured_coordinator_seconds_per_tile": coordinator,
            "coordinator_bound_above_workers": math.floor(per_tile / coordinator) if coordinator else None,
            "by_workers": rows}


def targets(plain: Dict[str, float], runs: List[Dict[str, object]]) -> Dict[str, object]:
    """The bench's own targets (the issue sets no number; it expects little gain on 2 cores), each met or not:
    every worker builds its model once; a lone worker (the plain process's threads) costs at most 10 % more per
    tile than the plain process; per-tile time against the floor (the model's forward pass in the plain run)."""
    one = next((run for run in runs if run["workers"] == 1), None)
    floor = plain["model_seconds_per_tile"]
    result: Dict[str, object] = {
        "floor_model_seconds_per_tile": floor,
        "plain_over_floor": plain["seconds_per_tile"] / floor,
        "cluster_over_floor": {str(run["workers"]): run["seconds_per_tile"] / floor for run in runs},
        "model_built_once_per_worker": {"target": "each worker builds its model at most once",
                                        "met": all(max(run["models_built_per_worker"] or [0]) <= 1
                                                   for run in runs)}}
    if one is not None:
        ratio = one["seconds_per_tile"] / plain["seconds_per_tile"]
        result["one_worker_over_plain"] = {"target": "<= 1.10", "value": ratio, "met": ratio <= 1.10}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--tiles-per-side", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="local worker counts to measure")
    parser.add_argument("--gpu-seconds-per-tile", type=float, default=0.08,
                        help="ASSUMED GPU forward time per 1024 px tile for the projection")
    parser.add_argument("--projection-px", type=int, default=100_000)
    parser.add_argument("--gpu-workers", default="1,2,4,8,16")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quicksam-bench-scale-"))
    try:
        raster = write_test_raster(work / "scene.tif", args.tiles_per_side, args.tile)
        plain = plain_run(raster, work, args.tile)
        runs = [cluster_run(raster, work, args.tile, int(n), plain) for n in args.workers.split(",")]
        coordinator = coordinator_seconds_per_tile(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one = next((run for run in runs if run["workers"] == 1), runs[0])
    print(json.dumps({
        "model": MODEL, "tile_px": args.tile, "raster_px": args.tile * args.tiles_per_side, "device": "cpu",
        "plain": plain, "cluster": runs, "coordinator_seconds_per_tile": coordinator,
        "targets": targets(plain, runs),
        "projection": projection(1024, 256, args.projection_px, args.gpu_seconds_per_tile,
                                 plain["io_seconds_per_tile"] * (1024 / args.tile) ** 2,
                                 one["overhead_seconds_per_tile_vs_plain"],
                                 coordinator, [int(n) for n in args.gpu_workers.split(",")]),
    }, indent=2))


if __name__ == "__main__":
    sys.exit(main())
