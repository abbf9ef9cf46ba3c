"""Stores and outputs under real conditions: two runs at once, kill -9, a read-only store, a full disk,
a closed pipe, and the JSON-lines events of every command.

Every command runs as a real `python -m quicksam.cli` process. A full disk and a read-only store are real
file systems: a small tmpfs mounted for the test (we run as root) and remounted read-only. Root ignores
permission bits, so `chmod a-w` would prove nothing; a read-only mount gives EROFS to everyone, root
included, as a write-protected share or a read-only snapshot does. Where mounting is not permitted those
tests are skipped and say why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
from synthetic import (
    assert_one_line_error,
    encode,
    encode_args,
    file_states,
    pixel_to_map_default,
    run_cli,
    square_scene,
    write_raster,
)
from synthetic import cli_command as _cli

#: Settings under which the random model's masks pass (as in test_segment_all.py), 4 x 4 points per tile.
LOOSE = ["--points-per-side", "4", "--points-per-batch", "5", "--pred-iou-thresh", "0", "--stability-score-thresh",
         "0", "--box-nms-thresh", "0.9", "--min-mask-region-area", "4"]
#: The one-line message of a full disk; group 1 is how many MB more it says the run needs.
DISK_FULL = (r"^quicksam: error: no space left on \S+ while writing '[^']+' \(needs about (\d+) MB more\); "
             r"free space and run the same command again to resume$")
EVENTS = {"start", "progress", "info", "warning", "finished", "error"}
SIZE = 600  # px: a 3 x 3 grid of 256 px tiles with 32 px overlap
STORE_LOCK = ".quicksam.lock"


def _lock_holder_pid(path: Path) -> Optional[int]:
    """The pid a lock file names (its JSON content), or None."""
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- helpers ------------------------------------------------------------------------------------------------

def _raster(folder: Path) -> Path:
    return write_raster(folder / "scene.tif", square_scene(SIZE, SIZE, (200, 220, 180)))


class Background:
    """A CLI run with --progress-json in the background, read event by event; killed if still running at the
    end (a hung run fails its test, never hangs it)."""

    def __init__(self, args: List[str], timeout: float = 300):
        self.process = subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._watchdog = threading.Timer(timeout, self.process.kill)
        self._watchdog.start()
        self.events: List[Dict] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_for_progress(self, tiles: int) -> None:
        """Read events until `tiles` tiles are reported done."""
        for line in self.process.stdout:
            self.events.append(json.loads(line))
            if self.events[-1]["event"] == "progress" and self.events[-1]["done"] >= tiles:
                return
        raise AssertionError(f"the run ended before {tiles} tiles: {self.events[-3:]} {self.process.stderr.read()}")

    def finish(self) -> Tuple[int, str]:
        """(exit status, stderr) once the process has ended; the rest of its events are read."""
        out, err = self.process.communicate(timeout=300)
        self.events += [json.loads(line) for line in out.splitlines()]
        return self.process.returncode, err

    def close(self) -> None:
        self._watchdog.cancel()
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=60)


def _encode_in_background(folder: Path, tiles: int) -> Tuple[Path, Path, Background]:
    """(raster, store, run): `quicksam encode --progress-json` of `_raster(folder)` into folder/store, running in
    the background, returned once `tiles` tiles are done (the run closed if it ends before)."""
    raster, store = _raster(folder), folder / "store"
    run = Background(encode_args(raster, store, "--progress-json"))
    try:
        run.wait_for_progress(tiles)
    except BaseException:
        run.close()
        raise
    return raster, store, run


def _log_tile_ids(store: Path) -> List[str]:
    return [json.loads(line)["tile_id"] for line in (store / "tiles.jsonl").read_text().splitlines()]


def _assert_complete_once(store: Path, tiles: int = 9) -> None:
    """Every tile logged exactly once, the store complete, no lock and no temporary left behind."""
    ids = _log_tile_ids(store)
    assert len(ids) == len(set(ids)) == tiles, ids
    summary = json.loads(run_cli("info", store).stdout)
    assert summary["complete"] and summary["tiles_done"] == tiles
    assert not (store / STORE_LOCK).exists()
    assert not list(store.rglob("*.tmp"))


def _events(stdout: str) -> List[Dict]:
    """The stdout of a --progress-json run as events: every line one JSON object with "event" and "command"."""
    events = [json.loads(line) for line in stdout.splitlines()]
    for event in events:
        assert isinstance(event, dict) and event["event"] in EVENTS and isinstance(event["command"], str), event
    return events


class SmallDisk:
    """A tmpfs mounted at `path` for one test: full disks and read-only stores for real."""

    def __init__(self, path: Path):
        self.path = path
        self.mounted = False

    def mount(self, size: int) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(self.path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}); the full-disk "
                        "and read-only tests need root and permission to mount")
        self.mounted = True
        return self.path

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True, capture_output=True)

    def unmount(self) -> None:
        if self.mounted:
            if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for a real full disk / read-only store needs root on Linux")
    disk = SmallDisk(tmp_path / "disk")
    try:
        yield disk
    finally:
        disk.unmount()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Tuple[Path, Path]:
    """(raster, store): a 3 x 3 tile store made in-process as `encode_args(raster, store)` makes it."""
    folder = tmp_path_factory.mktemp("reference")
    raster = _raster(folder)
    store, _ = encode(raster, folder / "store", overlap=32)
    assert len(store.grid) == 9
    return raster, folder / "store"


# -- the lock ---------------------------------------------------------------------------------------------------

def test_lock_names_its_holder_and_goes_with_it(tmp_path: Path) -> None:
    from quicksam.core.locking import ExclusiveLock, LockBusy, LockHolder

    path = tmp_path / "x.lock"

    def busy(holder: Optional[LockHolder]) -> str:
        return f"busy: {holder.describe() if holder else 'unknown'}"

    with ExclusiveLock(path, "quicksam encode", busy):
        holder = LockHolder.parse(path.read_text())
        assert holder is not None and holder.pid == os.getpid() and holder.command == "quicksam encode"
        with pytest.raises(LockBusy, match=rf"^busy: pid {os.getpid()} on host .*quicksam encode, started 20"):
            ExclusiveLock(path, "another", busy).acquire()  # another open file, even in this process
    assert not path.exists()
    path.write_text('{"pid": 1, "host": "gone", "started": "then", "command": "killed"}')  # left by kill -9
    with ExclusiveLock(path, "quicksam encode", busy):
        assert LockHolder.parse(path.read_text()).pid == os.getpid()


@pytest.mark.slow
def test_a_second_encode_on_a_store_fails_at_once_naming_the_first(tmp_path: Path) -> None:
    raster, store, first = _encode_in_background(tmp_path, tiles=1)
    try:
        os.kill(first.pid, signal.SIGSTOP)  # holds the lock, writes nothing while the second one runs
        try:
            before = file_states(store)
            second = run_cli(*encode_args(raster, store))
            assert file_states(store) == before, "the second run must neither write nor delete anything"
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert_one_line_error(second, rf"the feature store '{re.escape(str(store))}' is being written by another "
                                      rf"QuickSAM run \(pid {first.pid} on host .+, quicksam encode, started "
                                      r"\d{4}-.+\); wait for it to finish or stop it, then run the same command again")
        status, stderr = first.finish()
        assert status == 0, stderr
    finally:
        first.close()
    _assert_complete_once(store)


@pytest.mark.slow
def test_an_encode_killed_by_kill_9_leaves_no_lock_that_blocks_the_next(tmp_path: Path) -> None:
    raster, store, first = _encode_in_background(tmp_path, tiles=2)
    try:
        os.kill(first.pid, signal.SIGKILL)
        first.process.wait(timeout=60)
    finally:
        first.close()
    # the lock file outlived its process; its lock did not
    assert _lock_holder_pid(store / STORE_LOCK) == first.pid
    again = run_cli(*encode_args(raster, store))
    assert again.returncode == 0, again.stderr
    _assert_complete_once(store)


# -- a read-only store ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_read_only_store_is_resumed_read_and_segmented_and_refused_as_output(small_disk, reference,
                                                                                tmp_path: Path) -> None:
    raster, source = reference
    disk = small_disk.mount(64 * 1024 * 1024)
    store = Path(shutil.copytree(source, disk / "store"))
    small_disk.remount("ro")
    with pytest.raises(OSError):
        (store / "probe").write_text("")  # really read-only, root included

    resumed = run_cli(*encode_args(raster, store))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["complete"] is True

    point = ",".join(map(str, pixel_to_map_default(290, 310)))
    inside = store / "o.gpkg"
    assert_one_line_error(run_cli("segment", store, "--point", point, "--output", inside),
                          rf"^quicksam: error: cannot write '{re.escape(str(inside))}' \(read-only\); choose "
                          r"another --output$")
    elsewhere = run_cli("segment", store, "--point", point, "--output", tmp_path / "o.gpkg")
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert json.loads(elsewhere.stdout)["objects_segmented"] == 1


# -- a full disk --------------------------------------------------------------------------------------------------

def _tile_bytes(store: Path) -> int:
    return max(path.stat().st_size for path in (store / "tiles").glob("*.npy"))


@pytest.mark.slow
def test_encode_on_a_full_disk_says_so_in_one_line_and_resumes_once_space_is_freed(small_disk, reference,
                                                                                  tmp_path: Path) -> None:
    raster, source = reference
    # room for the decoders, the small files and four and a half tiles: the fifth tile finds the disk full
    decoders = sum(path.stat().st_size for path in source.glob("decoder*.onnx"))
    size = decoders + 64 * 1024 + 9 * _tile_bytes(source) // 2
    store = small_disk.mount(size) / "store"
    full = run_cli(*encode_args(raster, store))
    assert full.returncode == 1
    lines = full.stderr.splitlines()  # progress counters ("\r3/9 tiles"), then the error on a line of its own
    match = re.match(DISK_FULL, lines[-1])
    assert match, lines[-1]
    assert str(small_disk.path) in lines[-1]
    assert not any(line.startswith("quicksam: error") for line in lines[:-1])
    assert not re.search(r"sqlite|INSERT|gpkg_|Traceback|unexpected", full.stderr, re.IGNORECASE), full.stderr
    assert 0 < len(_log_tile_ids(store)) < 9
    assert not list(store.rglob("*.tmp")), "a half-written tile would keep the space it took"

    more = int(match.group(1))
    assert more <= 10
    small_disk.remount(f"size={size + more * 1_000_000}")  # exactly what the message asked for
    resumed = run_cli(*encode_args(raster, store))
    assert resumed.returncode == 0, resumed.stderr
    _assert_complete_once(store)


@pytest.mark.slow
def test_a_disk_too_small_for_the_decoders_names_the_stores_disk(small_disk, reference) -> None:
    """The decoders are copied from the user cache: a full store disk during that copy is named as the store's
    disk (shutil's fast copy names the source file: the message said "no space left on /", the cache's disk)."""
    raster, source = reference
    store = small_disk.mount(64 * 1024 + (source / "decoder_tile.onnx").stat().st_size // 2) / "store"
    full = run_cli(*encode_args(raster, store))
    assert full.returncode == 1
    assert re.match(DISK_FULL, full.stderr.splitlines()[-1]), full.stderr
    assert str(small_disk.path) in full.stderr.splitlines()[-1]


@pytest.fixture(scope="module")
def segment_all_reference(reference, tmp_path_factory) -> Tuple[int, Path]:
    """(objects, output) of segment-all with LOOSE on the reference store, run by the CLI on a normal disk."""
    output = tmp_path_factory.mktemp("segment-all") / "all.gpkg"
    result = run_cli("segment-all", reference[1], "--output", output, *LOOSE)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["objects"], output


def _rows(path: Path) -> List[Tuple]:
    """(id, score, tile_ids, geometry) of every object, as test_segment_all.signature compares them: the score
    to 5 decimals (a float written and read back), the geometry normalised (a ring may start elsewhere)."""
    import shapely
    from osgeo import ogr

    dataset = ogr.Open(str(path))
    layer = dataset.GetLayerByName("segments")
    rows = sorted((f["id"], round(f["predicted_iou"], 5), f["tile_ids"],
                   shapely.normalize(shapely.from_wkb(bytes(f.GetGeometryRef().ExportToIsoWkb()))).wkt)
                  for f in layer)
    layer = None
    dataset = None
    return rows


@pytest.mark.slow
def test_segment_all_on_a_full_disk_says_so_and_resumes_once_space_is_freed(small_disk, reference,
                                                                            segment_all_reference,
                                                                            tmp_path: Path) -> None:
    objects, whole = segment_all_reference
    # a quarter of the finished output: the run file is created, some tiles are committed, then the disk is full
    size = max(160 * 1024, whole.stat().st_size // 4)
    output = small_disk.mount(size) / "all.gpkg"
    full = run_cli("segment-all", reference[1], "--output", output, "--progress-json", *LOOSE)
    assert full.returncode == 1
    [line] = full.stderr.splitlines()
    match = re.match(DISK_FULL, line)
    assert match, line
    events = _events(full.stdout)
    assert events[-1] == {"event": "error", "command": "segment-all", "message": line[len("quicksam: error: "):],
                          "exit_status": 1}
    assert (small_disk.path / "all.partial.gpkg").exists() and not output.exists()

    small_disk.remount(f"size={size + int(match.group(1)) * 1_000_000}")
    resumed = run_cli("segment-all", reference[1], "--output", output, "--progress-json", *LOOSE)
    assert resumed.returncode == 0, resumed.stderr
    finished = _events(resumed.stdout)[-1]
    assert finished["event"] == "finished" and finished["summary"]["objects"] == objects > 0
    assert _rows(output) == _rows(whole)  # nothing lost, nothing twice
    assert sorted(os.listdir(small_disk.path)) == ["all.gpkg"]


# -- pipes and events ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_progress_json_into_head_ends_quietly(tmp_path: Path) -> None:
    raster, store = _raster(tmp_path), tmp_path / "store"
    command = " ".join(_cli(*encode_args(raster, store, "--progress-json")))
    # a real shell pipe; the shell hands back the encoder's own exit status
    result = subprocess.run(["bash", "-c", f'{command} | head -3; exit "${{PIPESTATUS[0]}}"'], capture_output=True,
                            text=True, timeout=300)
    assert result.stderr == ""  # no traceback, no "Exception ignored", no error line
    assert result.returncode == 141  # 128 + SIGPIPE, as a command a closed pipe stops
    assert [e["event"] for e in _events(result.stdout)][0] == "start" and len(result.stdout.splitlines()) == 3
    # stopped like an interruption: the finished tiles are kept and the same command resumes
    again = run_cli(*encode_args(raster, store))
    assert again.returncode == 0, again.stderr
    _assert_complete_once(store)


@pytest.mark.slow
def test_segment_all_progress_json_counts_tiles(reference, segment_all_reference, tmp_path: Path) -> None:
    result = run_cli("segment-all", reference[1], "--output", tmp_path / "all.gpkg", "--progress-json", *LOOSE)
    assert result.returncode == 0, result.stderr
    events = _events(result.stdout)
    assert [e["event"] for e in events] == ["start"] + ["progress"] * 9 + ["finished"]
    progress = [e for e in events if e["event"] == "progress"]
    assert [(e["done"], e["total"], e["unit"]) for e in progress] == [(i, 9, "tiles") for i in range(1, 10)]
    assert progress[-1]["percent"] == 100.0 and progress[-1]["objects"] == segment_all_reference[0]
    assert events[-1]["summary"] == {"output": str(tmp_path / "all.gpkg"), "layer": "segments",
                                     "objects": segment_all_reference[0], "tiles": 9}


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def checkpoint_server(tmp_path: Path) -> Iterator[str]:
    """A URL on this machine serving `model.pt` (2 MB of bytes: only downloaded, never loaded)."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "model.pt").write_bytes(os.urandom(2_000_000))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/model.pt"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _command_runs(raster: Path, store: Path, tmp_path: Path, url: str) -> List[Tuple[str, List[str], int]]:
    """(command, arguments, expected exit status) of every command, each with --progress-json."""
    point = ",".join(map(str, pixel_to_map_default(290, 310)))
    return [
        ("encode", encode_args(raster, tmp_path / "new", "--progress-json"), 0),
        ("info", ["info", store, "--progress-json"], 0),
        ("info", ["info", tmp_path / "missing", "--progress-json"], 1),
        ("segment", ["segment", store, "--point", point, "--output", tmp_path / "o.gpkg", "--progress-json"], 0),
        ("segment-all", ["segment-all", store, "--output", tmp_path / "a.gpkg", "--progress-json", *LOOSE], 0),
        ("checkpoints download", ["checkpoints", "download", "served", "--progress-json"], 0),
    ]


@pytest.mark.slow
def test_every_command_writes_the_same_json_lines(reference, checkpoint_server, tmp_path: Path) -> None:
    env = dict(os.environ, QUICKSAM_CACHE_DIR=str(tmp_path / "cache"), QUICKSAM_CONFIG_DIR=str(tmp_path / "config"))
    registered = subprocess.run(_cli("checkpoints", "register", "served", "--model", "sam2.1_hiera_t", "--url",
                                     checkpoint_server), capture_output=True, text=True, env=env, timeout=120)
    assert registered.returncode == 0, registered.stderr
    small = write_raster(tmp_path / "small.tif", square_scene(200, 200, (50, 50, 80)))
    for command, args, status in _command_runs(small, reference[1], tmp_path, checkpoint_server):
        result = subprocess.run(_cli(*args), capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == status, (command, result.stderr)
        events = _events(result.stdout)
        assert {e["command"] for e in events} == {command}
        names = [e["event"] for e in events]
        if status == 0:
            assert names[0] == "start" and names[-1] == "finished" and names.count("finished") == 1, names
            assert isinstance(events[-1]["summary"], (dict, list)), events[-1]
        else:
            [line] = result.stderr.splitlines()
            assert names[-1] == "error" and events[-1]["exit_status"] == status
            assert line == f"quicksam: error: {events[-1]['message']}"
        for event in events:
            if event["event"] == "progress":
                assert {"done", "total", "unit", "percent"} <= set(event) and event["done"] <= event["total"]
            if event["event"] in ("info", "warning"):
                assert isinstance(event["message"], str)
        if command in ("encode", "segment-all", "checkpoints download"):
            assert "progress" in names, (command, names)
