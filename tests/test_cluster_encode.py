"""Encoding on a real Dask cluster (encoder/cluster_encode.py, cli/encode_cluster.py; docs/scaling.md).

A fixture starts a real scheduler and two workers (`python -m distributed.cli.dask_scheduler` / `dask_worker`
with this test's Python, each worker a process of its own: --no-nanny, so that killing it kills the worker) on
127.0.0.1, in another folder than the test's, so that a relative path sent to a worker would show. Stores made on
the cluster are compared with the same raster encoded in one process.

Feature tolerance: both runs compute in float32 on the same CPU, but in other processes with other thread
counts, so sums may be taken in another order (differences of ~1e-6); the store keeps float16, where such a
difference can flip the last bit: one float16 step is at most 2^-10 of the value, hence rtol 1e-3 (plus atol 1e-3
for values near zero).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import replace as dataclasses_replace
from pathlib import Path
from typing import Iterator, List

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import (  # noqa: E402
    MODEL,
    assert_one_line_error,
    cli_command,
    encode,
    run_cli,
    write_raster,
)

from quicksam.core.store import FeatureStore  # noqa: E402

pytest.importorskip("distributed", reason="the Dask tests need the package distributed (dask[distributed])")

TILE = 128
OVERLAP = 32
#: See the module docstring: one float16 rounding step of the value, float32 noise of other thread counts.
RTOL = ATOL = 1e-3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(processes: List[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


class Cluster:
    """A scheduler's address and its worker processes (to kill one)."""

    def __init__(self, address: str, workers: List[subprocess.Popen]) -> None:
        self.address = address
        self.workers = workers


@pytest.fixture
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A real scheduler and two single-threaded workers on 127.0.0.1, killed at teardown."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    where = tmp_path_factory.mktemp("workers")   # not the test's folder: paths must reach workers absolute
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-dashboard"], cwd=where,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = [scheduler]
    try:
        workers = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                     "--no-dashboard", "--no-nanny", "--name", f"w{i}"], cwd=where,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
        started.extend(workers)
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield Cluster(address, workers)
    finally:
        _stop(started[::-1])


def _scene(folder: Path, width: int = 300, height: int = 300) -> Path:
    """A raster of several 128 px tiles: a gradient with a bright square, its top-left corner nodata (0), so the
    grid has a nodata tile and tiles with a valid-pixel mask."""
    rows, cols = np.mgrid[0:height, 0:width]
    data = np.stack([(cols + 2 * rows + 40 * b) % 200 + 20 for b in range(3)]).astype(np.uint8)
    data[:, 150:220, 160:240] = 250
    data[:, :140, :140] = 0
    return write_raster(folder / "scene.tif", data, nodata=0)


def _request(raster: Path, store: Path):
    from quicksam.encoder.pipeline import EncodeRequest

    return EncodeRequest(raster=str(raster), store=store, model=MODEL, tile_size=TILE, overlap=OVERLAP, device="cpu")


def _log_counts(store: Path) -> Counter:
    lines = (store / "tiles.jsonl").read_text().splitlines()
    return Counter(json.loads(line)["tile_id"] for line in lines)


def _manifest_without_time(store: Path) -> dict:
    manifest = json.loads((store / "manifest.json").read_text())
    manifest.pop("created", None)
    return manifest


def _decode_mask(store: FeatureStore, tile_id: str) -> np.ndarray:
    from quicksam.core.mask_decoding import Prompts
    from quicksam.interactive.decoding import OnnxDecoder

    settings = store.manifest.decoder.settings
    decoder = OnnxDecoder(store.root / "decoder.onnx", store.family, store.feature_names, store.image_size, settings,
                          feature_shapes=store.feature_shapes)
    prompts = Prompts(points=np.array([[64.5, 64.5]]), labels=np.array([1]))
    return decoder.decode(store.load_tile(tile_id), prompts).masks


def assert_same_store(cluster_store: Path, reference: Path, statuses: frozenset = frozenset({"done", "nodata"})
                      ) -> None:
    """Same tiles done and nodata, the log holding each tile once, the same manifest but for its time stamp,
    features equal within RTOL/ATOL, and decoder.onnx giving the same mask."""
    ours, theirs = FeatureStore.open(cluster_store), FeatureStore.open(reference)
    assert {t.tile_id: ours.status(t) for t in ours.grid} == {t.tile_id: theirs.status(t) for t in theirs.grid}
    assert set(_log_counts(cluster_store).values()) == {1}
    assert len(_log_counts(cluster_store)) == len(ours.grid)
    assert _manifest_without_time(cluster_store) == _manifest_without_time(reference)
    assert {ours.status(t) for t in ours.grid} == statuses   # the scene has nodata tiles where said
    done = [t for t in ours.grid if ours.status(t) == "done"]
    for tile in done:
        for name, array in ours.load_tile(tile.tile_id).items():
            np.testing.assert_allclose(np.asarray(array, np.float32),
                                       np.asarray(theirs.load_tile(tile.tile_id)[name], np.float32),
                                       rtol=RTOL, atol=ATOL)
        assert np.array_equal(ours.load_valid_mask(tile), theirs.load_valid_mask(tile))
    assert ours.decoder_problem() is None
    ours_mask, their_mask = _decode_mask(ours, done[-1].tile_id), _decode_mask(theirs, done[-1].tile_id)
    assert (ours_mask != their_mask).mean() < 1e-3   # logits within float16 noise: a pixel may flip at most


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The scene encoded in this process (no cluster): what every cluster run must equal."""
    folder = tmp_path_factory.mktemp("reference")
    raster = _scene(folder)
    encode(raster, folder / "single.qsam", tile_size=TILE, overlap=OVERLAP)
    return folder


def test_cluster_store_equals_single_process_and_models_are_kept(cluster, reference, tmp_path):
    """(a) + (f): the same store as one process; each worker built its model once for all its tiles."""
    from quicksam.core.cluster import PLUGIN_NAME, ClusterSettings, cluster_client
    from quicksam.encoder.pipeline import encode_raster
    from quicksam.encoder.worker_models import BUILDS_KEY

    events = []
    with cluster_client(ClusterSettings(scheduler=cluster.address)) as client:
        store, stats = encode_raster(_request(reference / "scene.tif", tmp_path / "c.qsam"), progress=events.append,
                                     client=client)
        builds = client.run(lambda dask_worker: dask_worker.plugins[PLUGIN_NAME].cache.get(BUILDS_KEY, 0))
    assert_same_store(tmp_path / "c.qsam", reference / "single.qsam")
    assert [e.done for e in events] == list(range(1, len(store.grid) + 1))
    assert stats.tiles_encoded + stats.tiles_nodata == len(store.grid)
    assert set(builds.values()) <= {0, 1} and sum(builds.values()) >= 1, builds
    assert sum(builds.values()) < stats.tiles_encoded   # a model per task would build one per tile


def test_killed_worker_tiles_are_redone_elsewhere(cluster, reference, tmp_path):
    """(b): one worker SIGKILLed after the first tiles: the run completes on the other, every tile logged once."""
    from quicksam.core.cluster import ClusterSettings, cluster_client
    from quicksam.encoder.pipeline import encode_raster

    killed = []

    def on_progress(event) -> None:
        if event.done >= 2 and not killed:
            cluster.workers[0].send_signal(signal.SIGKILL)
            killed.append(cluster.workers[0].wait(timeout=30))

    with cluster_client(ClusterSettings(scheduler=cluster.address)) as client:
        encode_raster(_request(reference / "scene.tif", tmp_path / "k.qsam"), progress=on_progress, client=client)
    assert killed == [-signal.SIGKILL]
    assert_same_store(tmp_path / "k.qsam", reference / "single.qsam")


@pytest.mark.slow
def test_levels_go_through_the_cluster(cluster, reference, tmp_path):
    """--levels on a cluster: every level's store equals the same levels encoded in one process."""
    import dataclasses

    from synthetic import random_model

    from quicksam.core.cluster import ClusterSettings, cluster_client
    from quicksam.encoder.levels_pipeline import encode_levels

    raster = reference / "scene.tif"
    single = dataclasses.replace(_request(raster, tmp_path / "single.qsam"), levels=(1.0, 2.0))
    encode_levels(single, model=random_model(TILE))
    with cluster_client(ClusterSettings(scheduler=cluster.address)) as client:
        encode_levels(dataclasses.replace(single, store=tmp_path / "c.qsam"), client=client)
    assert_same_store(tmp_path / "c.qsam", tmp_path / "single.qsam")
    assert_same_store(tmp_path / "c.qsam" / "levels/x2", tmp_path / "single.qsam" / "levels/x2", frozenset({"done"}))


@pytest.mark.slow
def test_cli_local_cluster_of_two_workers(reference, tmp_path):
    """(c): `quicksam encode --workers 2` runs an embedded LocalCluster; its start event says so."""
    store = tmp_path / "local.qsam"
    result = run_cli("encode", reference / "scene.tif", store, "--random-weights", "--tile-size", TILE, "--overlap",
                     OVERLAP, "--device", "cpu", "--workers", 2, "--progress-json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert start["workers"] == 2 and start["scheduler"].startswith("tcp://127.0.0.1:")
    assert events[-1]["event"] == "finished" and events[-1]["summary"]["complete"]
    assert_same_store(store, reference / "single.qsam")


def test_unreachable_scheduler_is_one_line(reference, tmp_path):
    """(d): nothing listens at the address: one line saying what to do, exit 1, nothing written."""
    store = tmp_path / "never.qsam"
    result = run_cli("encode", reference / "scene.tif", store, "--random-weights", "--tile-size", TILE,
                     "--scheduler", "tcp://127.0.0.1:1")
    assert_one_line_error(result, r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:1 .*dask scheduler")
    assert not store.exists()


class _NotAScheduler:
    """A TCP server on 127.0.0.1 that is no Dask scheduler: it accepts and then says nothing (`reply` None: an
    HTTP server waiting for its request line, or a firewall that swallows the connection) or answers `reply`
    (e.g. an HTTP error page: Dask reads its first bytes as a frame length of exabytes)."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections: List[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:   # closed
                return
            self.connections.append(connection)
            if self.reply is not None:
                connection.sendall(self.reply)

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self.server.close()


@pytest.mark.parametrize("reply", [None, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4],
                         ids=["silent", "http"])
def test_an_address_that_is_no_scheduler_is_one_line(reply, tmp_path):
    """Something answers at the address but it is no Dask scheduler (a dashboard or web port given by mistake):
    one line, exit 1, nothing written; never a hang (the subprocess' timeout) nor a MemoryError."""
    raster = _scene(tmp_path)
    store = tmp_path / "never.qsam"
    server = _NotAScheduler(reply)
    try:
        result = run_cli("encode", raster, store, "--random-weights", "--tile-size", TILE, "--scheduler",
                         server.address, timeout=120)
    finally:
        server.close()
    assert_one_line_error(result, "is no Dask scheduler .*check the address")
    assert not store.exists()


def test_series_on_a_cluster_is_refused(reference, tmp_path):
    """--series with cluster options: one line, nothing written (not supported yet)."""
    store = tmp_path / "series.qsam"
    raster = reference / "scene.tif"
    result = run_cli("encode", "--series", raster, raster, store, "--random-weights", "--workers", 2)
    assert_one_line_error(result, "does not run on a Dask cluster yet")
    assert not store.exists()


@pytest.mark.slow
def test_cancel_keeps_recorded_tiles_and_resumes(cluster, tmp_path):
    """(e): SIGINT to the command mid-run: exit 130, the tiles recorded so far kept (each once); the same command
    resumes and completes, the log holding every tile once."""
    raster = _scene(tmp_path, 500, 400)   # 20 tiles: the signal comes before the last
    store = tmp_path / "cancel.qsam"
    command = cli_command("encode", raster, store, "--random-weights", "--tile-size", TILE, "--overlap", OVERLAP,
                          "--device", "cpu", "--scheduler", cluster.address, "--progress-json")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    total = None
    for line in process.stdout:
        event = json.loads(line)
        if event["event"] == "progress":
            total = event["total"]
            process.send_signal(signal.SIGINT)
            break
    process.stdout.read()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 130, stderr
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr, stderr
    kept = _log_counts(store)
    assert kept and set(kept.values()) == {1} and sum(kept.values()) < total
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    finished = json.loads(result.stdout.splitlines()[-1])
    assert finished["summary"]["complete"] and finished["summary"]["tiles"] == total
    assert set(_log_counts(store).values()) == {1} and len(_log_counts(store)) == total


def test_no_cluster_option_keeps_the_plain_run(reference, tmp_path):
    """Without cluster options the start event has no cluster fields (the run stays in its process)."""
    result = run_cli("encode", reference / "scene.tif", tmp_path / "plain.qsam", "--random-weights", "--tile-size",
                     TILE, "--overlap", OVERLAP, "--device", "cpu", "--progress-json")
    assert result.returncode == 0, result.stderr
    start = json.loads(result.stdout.splitlines()[0])
    assert start["event"] == "start" and "workers" not in start and "scheduler" not in start
    assert os.path.isfile(tmp_path / "plain.qsam" / "decoder.onnx")


def _tile_counts(out: Path) -> dict:
    """Lines of each store's tile log under `out` (0 for a store without one yet)."""
    return {log.parent.name: len(log.read_text().splitlines()) for log in sorted(out.glob("*/tiles.jsonl"))}


@pytest.mark.slow
def test_ctrl_c_stops_file_level_tasks_running_on_workers(cluster, tmp_path):
    """File-level (3 files, 2 workers: each file one task): SIGINT once a worker has logged a tile -> exit 130;
    the tasks running on the workers stop (client.cancel alone does not stop a running task): no tile is added
    to any store afterwards, no store stays locked, and the same command resumes to completion."""
    import time

    from synthetic import square_scene

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b", "c"):   # 7 x 7 tiles each: seconds of work left on each worker when the signal comes
        write_raster(inputs / f"{name}.tif", square_scene(700, 700, (200, 200, 300)))
    out = tmp_path / "out"
    command = cli_command("encode", *sorted(inputs.glob("*.tif")), "--output-dir", out, "--random-weights",
                          "--tile-size", TILE, "--overlap", OVERLAP, "--device", "cpu", "--scheduler",
                          cluster.address)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while process.poll() is None and not any(_tile_counts(out).values()):
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        stderr = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr
    stopped = _tile_counts(out)
    assert sum(stopped.values()) < 3 * 49   # stopped before the end
    time.sleep(5)   # a task still running on a worker would log more tiles meanwhile
    assert _tile_counts(out) == stopped
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for name in ("a", "b", "c"):
        assert json.loads(run_cli("info", out / f"{name}_quicksam").stdout)["complete"] is True


def test_devices_with_a_scheduler_are_refused(reference, tmp_path):
    """--devices sets local workers' devices: with --scheduler it is refused in one line (it was ignored), nothing
    written; the address is never contacted (nothing listens there)."""
    store = tmp_path / "devices.qsam"
    result = run_cli("encode", reference / "scene.tif", store, "--random-weights", "--tile-size", TILE,
                     "--scheduler", "tcp://127.0.0.1:1", "--devices", "cpu,cpu")
    assert_one_line_error(result, r"--devices .* not of an existing cluster.*CUDA_VISIBLE_DEVICES")
    assert not store.exists()


@pytest.mark.parametrize("names, stop", [(("a", "b", "c"), signal.SIGINT), (("a", "b"), signal.SIGTERM)],
                         ids=["file-level-ctrl-c", "tile-level-sigterm"])
def test_ctrl_c_on_a_cluster_batch_gives_the_summary_so_far(cluster, tmp_path, names, stop):
    """docs/batch.md, exit 130 for Ctrl-C or SIGTERM (QGIS's cancel): "the current item's log and row say
    interrupted, the summary so far is shown" - on a cluster too (file-level: 3 files, 2 workers; tile-level: 2
    files): the `finished` event says interrupted, the unfinished started items "interrupted", as their logs."""
    import time

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in names:
        _scene(inputs).rename(inputs / f"{name}.tif")
    out = tmp_path / "out"
    command = cli_command("encode", inputs, "--output-dir", out, "--random-weights", "--tile-size", TILE,
                          "--overlap", OVERLAP, "--device", "cpu", "--scheduler", cluster.address, "--progress-json")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while process.poll() is None and not any(_tile_counts(out).values()):
            time.sleep(0.1)
        process.send_signal(stop)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    finished = [event for event in map(json.loads, stdout.splitlines()) if event["event"] == "finished"]
    assert len(finished) == 1, stdout
    summary = finished[0]["summary"]
    assert summary["interrupted"] is True
    statuses = [row["status"] for row in summary["items"]]
    assert "interrupted" in statuses and set(statuses) <= {"done", "interrupted"}, statuses
    assert [row["index"] for row in summary["items"]] == sorted(row["index"] for row in summary["items"])
    for row in summary["items"]:
        if row["status"] == "interrupted":
            assert "status: interrupted" in Path(row["log"]).read_text(encoding="utf-8")


def test_a_file_a_worker_finished_after_the_cancel_is_in_the_summary(tmp_path):
    """break13 F7: a file-level run stopped by Ctrl-C reports every file whose log a worker ended during the run,
    as the log says: one finished after the cancel (the coordinator no longer collects results) is "done" with
    its tiles, not left out. Tested on the function building the rows, with the logs a worker writes
    (core/batch_log.item_log), since when a worker ends a file relative to the cancel is a timing race in a real
    run. A log last ended before the run, or begun and not ended, gives no row."""
    from types import SimpleNamespace

    from quicksam.cli.encode_batch import interrupted_rows
    from quicksam.core.batch_log import DONE, INTERRUPTED, ItemResult, item_log

    names = ("a", "b", "c", "d", "e")
    rows = [ItemResult(index, len(names), f"{name}.tif", str(tmp_path / f"{name}_quicksam"),
                       str(tmp_path / f"{name}_quicksam.log")) for index, name in enumerate(names)]
    began = 1_000_000.0   # the run's start (time.time()); the logs' times are set around it: no clock race
    for row, status in zip(rows[1:4], (INTERRUPTED, DONE, DONE)):
        try:
            with item_log(ItemResult(**row.row()), f"quicksam encode {row.input}", {}) as log:
                log.result.status, log.result.tiles = status, 25
                if status == INTERRUPTED:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            pass
        os.utime(row.log, (began + 10, began + 10) if row.input != "d.tif" else (began - 10, began - 10))
    Path(rows[4].log).write_text("=== quicksam encode e.tif: started 2026-12-01T00:00:00+00:00\n", encoding="utf-8")
    os.utime(rows[4].log, (began + 10, began + 10))   # a worker began it and has not ended it
    finished = [dataclasses_replace(rows[0], status=DONE, tiles=25, seconds=3.0)]
    summary = interrupted_rows([SimpleNamespace(result=row) for row in rows], finished, True, began)
    assert [(row.input, row.status) for row in summary] == [("a.tif", DONE), ("b.tif", INTERRUPTED),
                                                             ("c.tif", DONE)]
    assert summary[2].tiles == 25 and summary[2].error is None
    for row in summary[1:]:   # the seconds each log's footer gives (written rounded to 3 decimals)
        logged = Path(row.log).read_text(encoding="utf-8").split("seconds: ")[-1].split()[0]
        assert row.seconds == pytest.approx(float(logged), abs=1e-3)


def _processes_in_session(session: int) -> List[int]:
    """Ids of the live processes of a session (Linux /proc; zombies left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and int(fields[3]) == session and fields[0] != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the processes of a session from /proc")
def test_ctrl_c_to_the_process_group_of_local_workers_is_one_line(reference, tmp_path):
    """A terminal's Ctrl-C reaches the whole process group, the LocalCluster's worker processes too: only the
    command answers it (its workers ignore SIGINT), so stderr is the one line of the cancel (no Dask
    tracebacks of workers losing their scheduler), exit 130, and no worker process is left behind."""
    raster = _scene(tmp_path, 600, 500)
    command = cli_command("encode", raster, tmp_path / "local.qsam", "--random-weights", "--tile-size", TILE,
                          "--overlap", OVERLAP, "--device", "cpu", "--workers", 2, "--progress-json")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        for line in process.stdout:
            if json.loads(line)["event"] == "progress":
                os.killpg(process.pid, signal.SIGINT)
                break
        stderr = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert len(stderr.splitlines()) == 1 and "resume" in stderr and "Traceback" not in stderr, stderr
    _wait_for_no_process_in_session(process.pid)


def _wait_for_no_process_in_session(session: int, seconds: float = 30) -> None:
    """Wait (at most `seconds`: helpers such as multiprocessing's resource tracker end just after their parent)
    until no process of `session` is alive; fail naming those left."""
    import time

    deadline = time.monotonic() + seconds
    while _processes_in_session(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: _command_line(pid) for pid in _processes_in_session(session)}
    assert not left, left


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


@pytest.mark.parametrize("ordered", [True, False])
def test_a_task_the_cluster_cancels_is_one_line_not_a_crash(cluster, ordered):
    """The CI fault: a future cancelled while the run waited on it (`Future.result(timeout=...)`) crashed the
    command with "unexpected UnboundLocalError" from distributed's `sync` (dask/distributed#8514). Now a task the
    cluster cancels is a one-line QuickSamError (or Cancelled, when we asked for the stop)."""
    import threading
    import time

    from distributed import Client, Future

    from quicksam.core.cluster import results_as_completed, results_in_order
    from quicksam.core.errors import Cancelled, QuickSamError

    run = results_in_order if ordered else results_as_completed
    with Client(cluster.address, timeout="60s") as client:
        def cancel_everything() -> None:
            client.cancel([Future(key, client) for key in list(client.futures)])

        timer = threading.Timer(1.0, cancel_everything)
        timer.start()
        with pytest.raises(QuickSamError, match="cancelled a task of this run.*run the same command again"):
            list(run(client, time.sleep, [20, 20], 2))   # a module workers import
        timer.join()
        stop = threading.Event()
        threading.Timer(1.0, lambda: (stop.set(), cancel_everything())).start()
        with pytest.raises(Cancelled):
            list(run(client, time.sleep, [20, 21], 2, stop.is_set))
