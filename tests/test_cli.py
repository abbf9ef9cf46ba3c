"""The `quicksam` command as a user meets it: bad input, refusing to clobber, resuming after a kill.

Every run is a fresh `python -m quicksam.cli` process. Bad input must end with exit status 1 and a
single stderr line "quicksam: error: ..." that says what to do, never a traceback, and must leave
existing files alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
from synthetic import (
    assert_one_line_error,
    cli_command,
    encode,
    encode_args,
    file_states,
    gradient,
    run_cli,
    write_raster,
)

Case = Callable[[Path], Tuple[List[str], str]]




def _rgb(tmp_path: Path, name: str = "scene.tif", **kwargs) -> Path:
    return write_raster(tmp_path / name, gradient(300, 280, 3), **kwargs)


# -- bad input that never gets as far as a store --------------------------------------------------

def _missing_file(tmp_path: Path):
    return encode_args(tmp_path / "no_such.tif", tmp_path / "store"), r"Check the path"


def _no_georeference(tmp_path: Path):
    return encode_args(_rgb(tmp_path, georeferenced=False), tmp_path / "store"), r"Georeference it first"


def _no_crs(tmp_path: Path):
    return encode_args(_rgb(tmp_path, crs=None), tmp_path / "store"), r"geotransform but no CRS.*Assign"


def _band_out_of_range(tmp_path: Path):
    return (encode_args(_rgb(tmp_path), tmp_path / "store", "--bands", "3,2,5"),
            r"band 5 does not exist.*3 band.*--bands 1,2,3")


def _four_bands(tmp_path: Path):
    raster = write_raster(tmp_path / "six.tif", gradient(300, 280, 6))
    return encode_args(raster, tmp_path / "store", "--bands", "1,2,3,4"), r"choose one to three bands"


def _extent_elsewhere(tmp_path: Path):
    return (encode_args(_rgb(tmp_path), tmp_path / "store", "--extent", "0,0,1000,1000"),
            r"does not overlap the raster.*500000, 4\.1972e\+06, 503000, 4\.2e\+06.*give the extent in the "
            r"raster's CRS")


def _extent_words(tmp_path: Path):
    return (encode_args(_rgb(tmp_path), tmp_path / "store", "--extent", "500000,4199000,east,4200000"),
            r"expected xmin,ymin,xmax,ymax")


def _extent_three_numbers(tmp_path: Path):
    return (encode_args(_rgb(tmp_path), tmp_path / "store", "--extent", "500000,4199000,501000"),
            r"expected xmin,ymin,xmax,ymax")


def _extent_reversed(tmp_path: Path):
    return (encode_args(_rgb(tmp_path), tmp_path / "store", "--extent", "501000,4199000,500000,4200000"),
            r"xmin < xmax")


def _extent_infinite(tmp_path: Path):
    return (encode_args(_rgb(tmp_path), tmp_path / "store", "--extent=-inf,-inf,inf,inf"),
            r"finite numbers.*xmin,ymin,xmax,ymax")


def _complex_pixels(tmp_path: Path):
    data = (gradient(300, 280, 3) + 1j).astype(np.complex64)
    return encode_args(write_raster(tmp_path / "c.tif", data), tmp_path / "store"), r"complex64.*convert it"


def _overlap_too_big(tmp_path: Path):
    return encode_args(_rgb(tmp_path), tmp_path / "store", overlap=256), r"overlap must be between 0 and 255"


@pytest.mark.parametrize("case", [
    _missing_file, _no_georeference, _no_crs, _band_out_of_range, _four_bands, _extent_elsewhere,
    _extent_words, _extent_three_numbers, _extent_reversed, _extent_infinite, _complex_pixels,
    _overlap_too_big,
], ids=lambda case: case.__name__.strip("_"))
def test_bad_input_is_one_line_saying_what_to_do(tmp_path: Path, case: Case) -> None:
    args, hint = case(tmp_path)
    assert_one_line_error(run_cli(*args), hint)
    assert not (tmp_path / "store").exists(), "nothing may be written for bad input"


# -- output folders that are not ours ----------------------------------------------------------------

def test_folder_with_other_files_is_refused_and_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "documents"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "sub" / "data.bin").write_bytes(bytes(range(256)) * 10)
    before = file_states(folder)
    result = run_cli(*encode_args(_rgb(tmp_path), folder))
    assert_one_line_error(result, r"not empty and is not a QuickSAM store.*choose an empty or new folder")
    assert file_states(folder) == before
    assert sorted(p.name for p in folder.rglob("*")) == ["data.bin", "notes.txt", "sub"]


def test_output_path_that_is_a_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    raster = _rgb(tmp_path)
    target = tmp_path / "report.pdf"
    target.write_bytes(b"%PDF-1.4 not really")
    before = file_states(tmp_path)
    assert_one_line_error(run_cli(*encode_args(raster, target)), r"is not a folder; choose a new folder")
    assert file_states(tmp_path) == before


# -- resuming: only the very same settings -------------------------------------------------------------

@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Tuple[Path, Path]:
    """(raster, store) made in-process with the settings `encode_args(raster, store)` gives the CLI."""
    folder = tmp_path_factory.mktemp("base")
    raster = _rgb(folder)
    encode(raster, folder / "store", overlap=32)
    return raster, folder / "store"


def _copy(store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(store, tmp_path / "store"))


def test_same_command_on_a_finished_store_changes_no_tile(base_store, tmp_path: Path) -> None:
    raster, store = base_store[0], _copy(base_store[1], tmp_path)
    before = file_states(store / "tiles")
    result = run_cli(*encode_args(raster, store, "--progress-json"))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e for e in events if e["event"] == "start"][0]["todo"] == 0
    assert not [e for e in events if e["event"] == "progress"]
    assert file_states(store / "tiles") == before


@pytest.mark.parametrize("change,hint", [
    (["--model", "sam2.1_hiera_s"], r"model: store has 'sam2.1_hiera_t', this run has 'sam2.1_hiera_s'"),
    (["--overlap", "64"], r"tile grid \(overlap, extent or tile size\) differs"),
    (["--seed", "1"], r"seed"),
    (["--bands", "3,2,1"], r"bands"),
])
def test_resume_with_other_settings_is_refused_and_store_untouched(base_store, tmp_path: Path, change: List[str],
                                                                   hint: str) -> None:
    raster, store = base_store[0], _copy(base_store[1], tmp_path)
    before = file_states(store)
    args = encode_args(raster, store, *change)   # a later option wins over encode_args' own
    assert_one_line_error(run_cli(*args), hint + r".*choose another output folder")
    assert file_states(store) == before


def test_resume_after_the_raster_pixels_changed_is_refused(base_store, tmp_path: Path) -> None:
    store = _copy(base_store[1], tmp_path)
    before = file_states(store)
    data = gradient(300, 280, 3)
    data[0, 140, 150] ^= 1
    edited = write_raster(tmp_path / "scene.tif", data)
    assert_one_line_error(run_cli(*encode_args(edited, store)), r"raster contents.*choose another output folder")
    assert file_states(store) == before


# -- quicksam info on things that are not stores --------------------------------------------------------

def test_info_on_a_raster_says_to_encode_it(base_store) -> None:
    assert_one_line_error(run_cli("info", base_store[0]), r"is a file, not a QuickSAM feature store.*encode it first")


def test_info_on_an_empty_folder(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("info", tmp_path), r"not a QuickSAM feature store \(no manifest.json\)")


def test_info_on_a_store_from_a_future_version(base_store, tmp_path: Path) -> None:
    store = _copy(base_store[1], tmp_path)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["format_version"] = 99
    (store / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(run_cli("info", store), r"format version 99, written by a newer QuickSAM.*update QuickSAM")


def test_info_summarises_a_store(base_store) -> None:
    result = run_cli("info", base_store[1])
    assert result.returncode == 0 and result.stderr == ""
    summary = json.loads(result.stdout)
    assert summary["raster_size"] == [300, 280] and summary["crs"] == "EPSG:32633"
    assert (summary["tiles"], summary["tiles_done"], summary["complete"]) == (4, 4, True)
    assert summary["random_weights"] is True and summary["overlap"] == 32


# -- kill -9 in the middle, then the same command ---------------------------------------------------------

def _run_until_tiles_done(args: List[str], tiles: int, timeout: float = 180) -> List[Dict]:
    """Start the CLI with --progress-json and SIGKILL it once `tiles` tiles are reported done."""
    process = subprocess.Popen(cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(timeout, process.kill)   # a hung encoder fails the test, never hangs it
    watchdog.start()
    events: List[Dict] = []
    try:
        for line in process.stdout:
            events.append(json.loads(line))
            if events[-1]["event"] == "progress" and events[-1]["done"] >= tiles:
                os.kill(process.pid, signal.SIGKILL)
                break
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    assert events and events[-1]["event"] == "progress", f"the run ended before {tiles} tiles: {events[-3:]}"
    return events


def test_killed_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    raster = write_raster(tmp_path / "big.tif", gradient(1100, 1100, 3))
    store = tmp_path / "store"
    args = encode_args(raster, store, "--progress-json", overlap=32)
    events = _run_until_tiles_done(args, tiles=3)
    assert [e for e in events if e["event"] == "start"][0]["tiles"] == 25

    log_lines = (store / "tiles.jsonl").read_text().splitlines()
    done = [json.loads(line)["tile_id"] for line in log_lines]
    assert 3 <= len(done) < 25
    before = {f"{tile_id}.npy": file_states(store / "tiles")[f"{tile_id}.npy"] for tile_id in done}
    # What a crash can leave behind: a half-written tile and a half-written log line.
    (store / "tiles" / "r0004c0004.npy.tmp").write_bytes(b"\x93NUMPY half a tile")
    with open(store / "tiles.jsonl", "a") as handle:
        handle.write('{"tile_id": "r0004c00')

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    rerun = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e for e in rerun if e["event"] == "start"][0]["todo"] == 25 - len(done)
    progress = [e for e in rerun if e["event"] == "progress"]
    assert len(progress) == 25 - len(done) and not set(done) & {e["tile"] for e in progress}
    assert progress[-1]["done"] == 25
    assert not list(store.rglob("*.tmp"))
    after = file_states(store / "tiles")
    assert len(after) == 25
    assert {name: after[name] for name in before} == before
    records = [json.loads(line) for line in (store / "tiles.jsonl").read_text().splitlines()]
    assert sorted(r["tile_id"] for r in records) == sorted(f"r{r:04d}c{c:04d}" for r in range(5) for c in range(5))
    summary = json.loads(run_cli("info", store).stdout)
    assert (summary["tiles_done"], summary["tiles_pending"], summary["complete"]) == (25, 0, True)


# -- what `quicksam encode` loads ---------------------------------------------------------------------

#: What an encode must never import: QGIS, the decoding stage (ONNX decoder, engine, vectoriser) and the
#: QGIS layer; `segment` and `segment-all` import them, lazily, when they run.
DECODING_SIDE = ("qgis", "processing", "quicksam.interactive", "quicksam.ui")

LOADED_BY_ENCODE = """
import json, sys
from quicksam import cli
status = cli.main(sys.argv[1:])
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""


def test_encode_imports_neither_qgis_nor_the_decoding_stage(tmp_path: Path) -> None:
    """A headless encoder box has no QGIS, and an encode has no use for the decoder or the vectoriser:
    building the parser (including segment-all's options) and encoding load none of them."""
    raster = write_raster(tmp_path / "scene.tif", gradient(300, 260, 3))
    run = subprocess.run([sys.executable, "-c", LOADED_BY_ENCODE, *encode_args(raster, tmp_path / "store")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["status"] == 0, run.stderr
    loaded = [name for name in result["modules"]
              if any(name == side or name.startswith(side + ".") for side in DECODING_SIDE)]
    assert loaded == []
