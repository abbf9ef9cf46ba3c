"""Segment everything on a Dask cluster (interactive/cluster_tiles.py, core/cluster.py): tiles decoded on the
workers, merged by the coordinating process in the tiles' order, so the objects are those of one process.

A real scheduler and two real workers (`python -m distributed.cli.dask_scheduler` / `dask_worker` with this
test's interpreter, never the `dask` script, whose shebang may name another Python) on 127.0.0.1, shared by
the module. The store: a 400 x 400 px scene in 2 x 2 tiles of 256 px, 64 px overlap; with the seeded random
model and a box NMS threshold of 1 it gives about a dozen objects, most of them joined across tile borders.

Objects are compared with a tolerance, never bitwise: ONNX Runtime in another process (other threads) may
round a logit's last bits otherwise, so a pixel whose logit sits on the threshold may flip; scores then differ
in the last bits (1e-6 allowed; they are rounded to 6 decimals) and a geometry by at most such pixels (the
symmetric difference is allowed 1e-6 of the object's area: in practice it is 0).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
import shapely
import shapely.wkb
from osgeo import ogr
from synthetic import assert_one_line_error, encode, file_states, run_cli, square_scene, write_raster

from quicksam.core.cluster import ClusterSettings, cluster_client
from quicksam.core.errors import Cancelled
from quicksam.core.store import FeatureStore
from quicksam.interactive.automatic import AutoMaskSettings, partial_path, segment_everything

distributed = pytest.importorskip("distributed", reason="segment everything on a cluster needs dask[distributed]")

#: Thresholds the random model's masks pass, and no box NMS, so that there are many objects across borders.
SETTINGS = AutoMaskSettings(points_per_side=4, points_per_batch=8, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                            box_nms_thresh=1.0, min_mask_region_area=4)
CLI_SETTINGS = ["--points-per-side", "4", "--points-per-batch", "8", "--pred-iou-thresh", "0",
                "--stability-score-thresh", "0", "--box-nms-thresh", "1", "--min-mask-region-area", "4"]
#: A geometry may differ from one process's by this share of its area (see the module's docstring).
AREA_TOLERANCE = 1e-6
SCORE_TOLERANCE = 1e-6


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """The address of a real Dask scheduler with two single-thread worker processes; stopped afterwards."""
    address = f"tcp://127.0.0.1:{free_port()}"
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                   "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        processes += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                                        "1", "--no-dashboard", "--name", f"test-worker-{i}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
        with distributed.Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    folder = tmp_path_factory.mktemp("cluster-store")
    raster = write_raster(folder / "scene.tif", square_scene(400, 400, (120, 120, 160)))
    encoded, _ = encode(raster, folder / "store", overlap=64)
    assert len(encoded.grid) == 4
    return encoded


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory) -> List[dict]:
    """The objects of a run in this one process."""
    output = tmp_path_factory.mktemp("reference") / "one-process.gpkg"
    result = segment_everything(store, output, SETTINGS)
    assert result.objects >= 5 and result.merged_objects >= 3  # objects across borders: the case under test
    return read_objects(output)


def read_objects(path: Path) -> List[dict]:
    dataset = ogr.Open(str(path))
    rows = []
    for feature in dataset.GetLayerByName("segments"):
        row = {key: feature[key] for key in ("id", "tile_ids", "predicted_iou", "stability_score", "area")}
        row["geometry"] = shapely.wkb.loads(bytes(feature.GetGeometryRef().ExportToIsoWkb()))
        rows.append(row)
    return sorted(rows, key=lambda row: row["id"])


def assert_same_objects(actual: List[dict], expected: List[dict]) -> None:
    """Same count, ids, tile ids; scores within SCORE_TOLERANCE; geometries within AREA_TOLERANCE of their area."""
    assert [(r["id"], r["tile_ids"]) for r in actual] == [(r["id"], r["tile_ids"]) for r in expected]
    for got, want in zip(actual, expected):
        for key in ("predicted_iou", "stability_score"):
            assert abs(got[key] - want[key]) <= SCORE_TOLERANCE, (got["id"], key)
        assert got["geometry"].symmetric_difference(want["geometry"]).area <= AREA_TOLERANCE * want["geometry"].area
        assert got["area"] == pytest.approx(want["area"], rel=AREA_TOLERANCE)


def engines_on_workers(address: str, forget: bool = False) -> List[Tuple[str, ...]]:
    """The stores whose engine each worker of the cluster keeps (cluster_tiles.worker_engine) in the cache of
    QuickSAM's worker plugin; with `forget`, the engines are dropped (as before any run)."""
    from quicksam.core.cluster import PLUGIN_NAME

    def stores(dask_worker) -> List[str]:
        plugin = dask_worker.plugins.get(PLUGIN_NAME)
        cache = plugin.cache if plugin is not None else {}
        keys = [key for key in cache if isinstance(key, tuple) and "cluster_tiles" in str(key[0])]
        for key in keys if forget else ():
            del cache[key]
        return sorted(key[1] for key in keys)

    with distributed.Client(address, timeout="30s") as client:
        return [tuple(found) for found in client.run(stores).values()]


def decoded_on_workers(store: FeatureStore, address: str) -> bool:
    """Whether a worker of the cluster has opened the store's engine (since `engines_on_workers(forget=True)`)."""
    return any(str(store.root.resolve()) in found for found in engines_on_workers(address))


@pytest.mark.slow
def test_cli_on_a_scheduler_gives_the_objects_of_one_process(store, reference, scheduler, tmp_path):
    output = tmp_path / "cluster.gpkg"
    engines_on_workers(scheduler, forget=True)
    result = run_cli("segment-all", store.root, "--output", output, "--scheduler", scheduler, *CLI_SETTINGS)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert (summary["tiles"], summary["objects"]) == (4, len(reference))
    assert_same_objects(read_objects(output), reference)
    assert decoded_on_workers(store, scheduler)  # the workers keep the store's engine for the next run


def test_processing_with_a_scheduler_gives_the_objects_of_one_process(store, reference, scheduler, tmp_path, plugin):
    import processing

    output = tmp_path / "processing.gpkg"
    engines_on_workers(scheduler, forget=True)
    results = processing.run("quicksam:segmentall", {
        "STORE": str(store.root), "POINTS_PER_SIDE": 4, "POINTS_PER_BATCH": 8, "PRED_IOU_THRESH": 0.0,
        "STABILITY_SCORE_THRESH": 0.0, "BOX_NMS_THRESH": 1.0, "MIN_MASK_REGION_AREA": 4, "SCHEDULER": scheduler,
        "OUTPUT": str(output)})
    assert (results["TILES"], results["OBJECTS"]) == (4, len(reference))
    assert_same_objects(read_objects(output), reference)
    assert decoded_on_workers(store, scheduler)


@pytest.mark.slow
def test_cli_with_two_local_workers_gives_the_objects_of_one_process(store, reference, tmp_path):
    output = tmp_path / "local.gpkg"
    result = run_cli("segment-all", store.root, "--output", output, "--workers", "2", *CLI_SETTINGS)
    assert result.returncode == 0, result.stderr
    assert_same_objects(read_objects(output), reference)


def test_workers_are_refused_where_qgis_is_not_a_python_interpreter(store, tmp_path, plugin, monkeypatch):
    import processing
    from qgis.core import QgsProcessingException

    monkeypatch.setattr(sys, "executable", "/usr/bin/qgis_process")  # as inside qgis_process or the desktop
    with pytest.raises(QgsProcessingException) as raised:
        processing.run("quicksam:segmentall", {"STORE": str(store.root), "WORKERS": 2,
                                               "OUTPUT": str(tmp_path / "never.gpkg")})
    message = str(raised.value)
    assert "\n" not in message and "qgis_process" in message
    assert "SCHEDULER" in message and "quicksam segment-all --workers" in message
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_scheduler_is_one_line_and_nothing_is_written(store, tmp_path):
    output = tmp_path / "out.gpkg"
    output.write_bytes(b"not touched")  # --overwrite: only a run that starts may replace it
    before = file_states(tmp_path)
    result = run_cli("segment-all", store.root, "--output", output, "--overwrite", "--scheduler",
                     f"tcp://127.0.0.1:{free_port()}", *CLI_SETTINGS)
    assert_one_line_error(result, "cannot reach the Dask scheduler at tcp://127.0.0.1:.*check the address")
    assert file_states(tmp_path) == before


def test_a_cancelled_cluster_run_keeps_its_tiles_and_resumes_to_the_same_objects(store, reference, scheduler,
                                                                                  tmp_path):
    output = tmp_path / "resumed.gpkg"
    finished: List[str] = []
    with cluster_client(ClusterSettings(scheduler=scheduler)) as client:  # as the algorithm opens it
        with pytest.raises(Cancelled, match="stopped after 1 of 4 tiles; run the same command again to resume"):
            segment_everything(store, output, SETTINGS, client=client, cancelled=lambda: bool(finished),
                               progress=lambda event: finished.append(event.tile_id))
        assert not output.exists() and partial_path(output).exists()
        waited = time.monotonic()
        while client.processing() and any(client.processing().values()) and time.monotonic() - waited < 30:
            time.sleep(0.1)  # the queued tiles were cancelled: the workers fall idle
        result = segment_everything(store, output, SETTINGS, client=client)
    assert (result.tiles, result.tiles_resumed) == (4, 1)
    assert_same_objects(read_objects(output), reference)


def test_a_multi_scale_store_on_the_cluster_gives_the_objects_of_one_process(scheduler, tmp_path):
    from synthetic import MODEL, TILE_SIZE, random_model

    from quicksam.encoder.levels_pipeline import encode_levels
    from quicksam.encoder.pipeline import EncodeRequest
    from quicksam.interactive.segment_levels import select_levels

    raster = write_raster(tmp_path / "scene.tif", square_scene(400, 400, (120, 120, 160)))
    request = EncodeRequest(raster=str(raster), store=tmp_path / "levels.qsam", model=MODEL, tile_size=TILE_SIZE,
                            overlap=64, device="cpu", levels=(1.0, 4.0))
    levels_store, _ = encode_levels(request, model=random_model())
    alone = segment_everything(levels_store, tmp_path / "one-process.gpkg", SETTINGS)
    assert (alone.tiles, alone.levels) == (5, (1.0, 4.0))
    engines_on_workers(scheduler, forget=True)
    with cluster_client(ClusterSettings(scheduler=scheduler)) as client:  # as the algorithm opens it
        spread = segment_everything(levels_store, tmp_path / "cluster.gpkg", SETTINGS, client=client)
    assert (spread.tiles, spread.levels, spread.level_duplicates) == (5, (1.0, 4.0), alone.level_duplicates)
    assert all(decoded_on_workers(level, scheduler) for level in select_levels(levels_store))  # both levels
    assert_same_objects(read_objects(tmp_path / "cluster.gpkg"), read_objects(tmp_path / "one-process.gpkg"))


def test_the_points_skipped_on_the_workers_are_reported_per_tile(store, scheduler, tmp_path):
    """With skip_covered_points, the count of each tile decoded on a worker reaches the coordinator's progress
    events (the worker's own log reaches no one), and adds up to the run's count."""
    settings = AutoMaskSettings(**{**SETTINGS.to_dict(), "skip_covered_points": True})
    events = []
    with cluster_client(ClusterSettings(scheduler=scheduler)) as client:
        result = segment_everything(store, tmp_path / "skip.gpkg", settings, client=client, progress=events.append)
    finished = [event for event in events if event.tile_finished]
    assert len(finished) == 4 and all(event.points_skipped is not None for event in finished)
    assert sum(event.points_skipped for event in finished) == result.filters.points_covered
