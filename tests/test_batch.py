"""Many rasters in one run (issue 13, docs/batch.md): which inputs a batch takes, how its outputs are named, and
`quicksam encode` / `quicksam segment-all` over the test folder of tests/batch_data.py (real CLI processes).

The unit tests of core/batch.py need no QGIS and no model. One batch encode of the test folder is shared by
the module (`encoded_batch`); tests that change what they run on make their own folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List

import pytest
from batch_data import FAST_ENCODE, KOELN, RASTERS, TOP_LEVEL, build_batch_folder, relative
from synthetic import assert_one_line_error, file_states, run_cli

from quicksam.core.batch import (
    ENCODE,
    SEGMENT_ALL,
    NamingRule,
    check_name_lengths,
    check_suffix,
    find_inputs,
    name_pattern,
    plan_outputs,
)
from quicksam.core.batch_log import DONE, FAILED, ItemResult, item_log, one_line_error, summary, summary_table
from quicksam.core.errors import QuickSamError
from quicksam.core.logger import LOGGER
from quicksam.encoder.raster_formats import raster_extensions

EXTENSIONS = raster_extensions()


@pytest.fixture(scope="module")
def batch_root(tmp_path_factory) -> Path:
    return build_batch_folder(tmp_path_factory.mktemp("batch") / "data")


def events_of(stdout: str) -> List[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def named(events: List[dict], name: str) -> List[dict]:
    return [event for event in events if event["event"] == name]


# -- discovery -------------------------------------------------------------------------------------------

def test_folder_without_recursive_takes_its_own_raster_files(batch_root):
    found = find_inputs([str(batch_root)], extensions=EXTENSIONS)
    assert relative(found, batch_root) == sorted(TOP_LEVEL)   # notes.txt left out, upper.TIF taken


def test_recursive_adds_sub_folders(batch_root):
    found = find_inputs([str(batch_root)], recursive=True, extensions=EXTENSIONS)
    assert relative(found, batch_root) == sorted([*TOP_LEVEL, "north/scene.tif", "south/scene.tif"])


def test_include_exclude_and_extensions_filter_names(batch_root):
    assert relative(find_inputs([str(batch_root)], True, include=["_bf"], extensions=EXTENSIONS),
                    batch_root) == ["field_BF.tif"]   # a plain word: "name contains", any case
    assert relative(find_inputs([str(batch_root)], True, include=["scene*", "*KÖLN*"], exclude=["south"]),
                    batch_root) == [KOELN, "north/scene.tif", "south/scene.tif"]   # names only, not folders
    assert relative(find_inputs([str(batch_root)], False, exclude=["fake"], extensions=["TIF"]),
                    batch_root) == sorted([KOELN, "field_BF.tif", "upper.TIF"])
    assert name_pattern("_BF") == "*_bf*" and name_pattern("a?.tif") == "a?.tif"


def test_files_named_explicitly_are_taken_whatever_their_extension(batch_root):
    found = find_inputs([str(batch_root / "notes.txt"), str(batch_root / "upper.TIF")], extensions=["tif"],
                        include=["nothing-matches"])
    assert relative(found, batch_root) == ["notes.txt", "upper.TIF"]


def test_glob_patterns_and_duplicates(batch_root):
    specs = [str(batch_root / "*" / "scene.tif"), str(batch_root / "north" / "scene.tif"),
             str(batch_root / "north" / ".." / "north" / "scene.tif")]
    assert relative(find_inputs(specs, extensions=EXTENSIONS), batch_root) == ["north/scene.tif", "south/scene.tif"]
    deep = find_inputs([str(batch_root / "**" / "*.tif")], recursive=True, extensions=EXTENSIONS)
    assert "south/scene.tif" in relative(deep, batch_root) and KOELN in relative(deep, batch_root)


@pytest.mark.parametrize("spec, hint", [("missing.tif", "does not exist"), ("*.nothing", "matches no file"),
                                        ("north", "add --recursive")])
def test_inputs_giving_nothing_are_one_line_errors(batch_root, spec, hint, tmp_path):
    (tmp_path / "north").mkdir()
    (tmp_path / "north" / "sub").mkdir()
    with pytest.raises(QuickSamError, match=hint) as caught:
        find_inputs([str(tmp_path / spec)], extensions=EXTENSIONS)
    assert "\n" not in str(caught.value)


def test_a_store_folder_is_an_input_never_scanned(tmp_path):
    store = tmp_path / "scene_quicksam"
    (store / "tiles").mkdir(parents=True)
    (store / "manifest.json").write_text("{}")
    (store / "tiles" / "inner.tif").write_text("")
    (tmp_path / "scene.tif").write_text("")
    assert relative(find_inputs([str(tmp_path)], recursive=True, extensions=["tif"]), tmp_path) == ["scene.tif"]
    assert relative(find_inputs([str(tmp_path)], recursive=True, extensions=["tif"], stores=True),
                    tmp_path) == ["scene.tif", "scene_quicksam"]
    assert find_inputs([str(store)]) == [store]


def test_hidden_files_in_folders_are_left_out(tmp_path):
    for name in ("scene.tif", "._scene.tif", ".git/x.tif"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    assert relative(find_inputs([str(tmp_path)], recursive=True, extensions=["tif"]), tmp_path) == ["scene.tif"]


# -- naming ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["", "v2", "run-3", "A1"])
def test_safe_suffixes_are_accepted(suffix):
    assert check_suffix(suffix) == suffix
    assert NamingRule(suffix=suffix).store_name("scene") == "scene_quicksam" + (f"_{suffix}" if suffix else "")


@pytest.mark.parametrize("suffix", ["a b", "v_2", "x/y", "ä", "a.b"])
def test_unsafe_suffixes_are_refused(suffix):
    with pytest.raises(QuickSamError, match=r"ASCII letters \(a-z, A-Z\), digits and '-'"):
        NamingRule(suffix=suffix)


def test_a_too_long_suffix_or_name_is_refused_up_front(tmp_path):
    with pytest.raises(QuickSamError, match="at most 64"):
        check_suffix("x" * 300)
    long_stem = tmp_path / ("s" * 240 + ".tif")   # a name the file system takes; its store's log name it does not
    with pytest.raises(QuickSamError, match="longer than 250 bytes.*shorter --suffix"):
        check_name_lengths(plan_outputs([long_stem], NamingRule(output_dir=tmp_path), ENCODE))


def test_an_unwritable_output_dir_is_refused_before_anything_is_written(batch_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n", encoding="utf-8")
    before = file_states(tmp_path)
    result = run_cli("encode", batch_root / "upper.TIF", "--output-dir", blocker / "out", *FAST_ENCODE)
    assert_one_line_error(result, "cannot be written.*choose a folder you can write to")
    assert file_states(tmp_path) == before


def test_an_item_whose_log_cannot_be_written_fails_alone(tmp_path):
    from synthetic import square_scene, write_raster

    for name in ("a", "b"):
        write_raster(tmp_path / f"{name}.tif", square_scene(150, 150, (20, 20, 40)))
    (tmp_path / "a_quicksam.log").mkdir()   # the log's path cannot be opened as a file (root ignores chmod)
    result = run_cli("encode", tmp_path / "a.tif", tmp_path / "b.tif", "--next-to-inputs", *FAST_ENCODE,
                     "--progress-json")
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    rows = events_of(result.stdout)[-1]["summary"]["items"]
    assert [row["status"] for row in rows] == ["failed", "done"]
    assert "its log" in rows[0]["error"] and "cannot be written" in rows[0]["error"]


def test_outputs_next_to_inputs_and_in_one_folder(batch_root, tmp_path):
    inputs = find_inputs([str(batch_root)], True, extensions=EXTENSIONS)
    items = plan_outputs(inputs, NamingRule(suffix="v2"), ENCODE)
    north = next(item for item in items if item.input.parent.name == "north")
    assert north.output == batch_root / "north" / "scene_quicksam_v2"
    assert north.log == batch_root / "north" / "scene_quicksam_v2.log" and north.store == north.output
    köln = plan_outputs([batch_root / KOELN], NamingRule(output_dir=tmp_path), ENCODE)[0]
    assert köln.output == tmp_path / "Orthofoto Köln 2024_quicksam"


def test_a_clash_is_refused_naming_both_inputs_and_the_option(batch_root, tmp_path):
    inputs = [batch_root / "north" / "scene.tif", batch_root / "south" / "scene.tif"]
    with pytest.raises(QuickSamError, match="--disambiguate") as caught:
        plan_outputs(inputs, NamingRule(output_dir=tmp_path), ENCODE)
    assert "north" in str(caught.value) and "south" in str(caught.value)


def test_names_differing_only_in_case_clash(tmp_path):
    inputs = [tmp_path / "a" / "Scene.tif", tmp_path / "b" / "scene.TIF"]
    with pytest.raises(QuickSamError, match="would all write"):
        plan_outputs(inputs, NamingRule(output_dir=tmp_path / "out"), ENCODE)


def test_disambiguate_puts_parent_folders_in_front(batch_root, tmp_path):
    inputs = find_inputs([str(batch_root)], True, extensions=EXTENSIONS)
    items = plan_outputs(inputs, NamingRule(output_dir=tmp_path, disambiguate=True), ENCODE)
    names = {item.input.relative_to(batch_root).as_posix(): item.output.name for item in items}
    assert names["north/scene.tif"] == "north_scene_quicksam"
    assert names["south/scene.tif"] == "south_scene_quicksam"
    assert names["field_BF.tif"] == "field_BF_quicksam"   # no clash: no prefix


def test_segment_all_outputs_follow_the_store_names(batch_root, tmp_path):
    stores, out = tmp_path / "stores", tmp_path / "out"
    rule = NamingRule(output_dir=out, disambiguate=True, stores_dir=stores)
    items = plan_outputs(find_inputs([str(batch_root)], True, extensions=EXTENSIONS), rule, SEGMENT_ALL)
    north = next(item for item in items if item.input.parent.name == "north")
    assert north.store == stores / "north_scene_quicksam"
    assert north.output == out / "north_scene_quicksam_objects.gpkg"
    assert north.log == out / "north_scene_quicksam_objects.log"


def test_segment_all_takes_a_raster_and_its_store_once(tmp_path):
    (tmp_path / "scene.tif").write_text("")
    (tmp_path / "scene_quicksam").mkdir()
    (tmp_path / "scene_quicksam" / "manifest.json").write_text("{}")
    items = plan_outputs(find_inputs([str(tmp_path)], extensions=["tif"], stores=True), NamingRule(), SEGMENT_ALL)
    assert [(item.input.name, item.output.name) for item in items] == [("scene_quicksam",
                                                                        "scene_quicksam_objects.gpkg")]


def test_default_extensions_are_gdal_rasters_without_side_cars():
    assert {"tif", "tiff", "jp2", "vrt", "img"} <= set(EXTENSIONS)
    assert not {"xml", "ovr", "aux", "txt", "gpkg"} & set(EXTENSIONS)


# -- logs and summary ------------------------------------------------------------------------------------

def test_item_log_appends_header_records_and_footer(tmp_path):
    result = ItemResult(0, 1, "in.tif", "out", str(tmp_path / "out.log"))
    for run in range(2):
        with item_log(result, "quicksam encode in.tif -> out", {"command line": "quicksam encode x"}):
            LOGGER.warning("something to know %d", run)
            result.status, result.tiles = DONE, 4
    text = (tmp_path / "out.log").read_text(encoding="utf-8")
    assert text.count("=== quicksam encode in.tif -> out: started") == 2   # appended, the first run kept
    assert "command line: quicksam encode x" in text and "WARNING something to know 1" in text
    assert "status: done" in text and "tiles: 4" in text and "=== ended" in text


def test_an_item_error_is_never_a_traceback():
    error = QuickSamError("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    g()\n"
                          "KeyboardInterrupt")
    assert one_line_error(error) == "KeyboardInterrupt"
    assert one_line_error(ValueError("bad\nvalue")) == "unexpected ValueError: bad value"


def test_summary_table_and_counts():
    rows = [ItemResult(0, 2, "a.tif", "a_quicksam", "a.log", DONE, 4, None, 1.5),
            ItemResult(1, 2, "b.tif", "b_quicksam", "b.log", FAILED, None, None, 0.1, "cannot open raster")]
    lines = summary_table(rows)
    assert lines[0].split() == ["input", "output", "tiles", "objects", "seconds", "status"]
    assert lines[1].split() == ["a.tif", "a_quicksam", "4", "1.5", "done"]
    assert lines[2].endswith("failed: cannot open raster")
    assert summary(rows)["done"] == 1 and summary(rows)["failed"] == 1


# -- quicksam encode over the test folder ----------------------------------------------------------------

def _encode_batch(root: Path, out: Path, *extra: str):
    return run_cli("encode", root, "--output-dir", out, "--recursive", "--disambiguate", *FAST_ENCODE,
                   "--progress-json", *extra)


def _tile_times(out: Path) -> Dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("tiles/*")) if p.is_file()}


@pytest.fixture(scope="module")
def encoded_batch(batch_root, tmp_path_factory):
    """The test folder encoded once into OUT: the run, its events, and the stores' tiles' mtimes after it."""
    out = tmp_path_factory.mktemp("encoded") / "out"
    result = _encode_batch(batch_root, out)
    return {"root": batch_root, "out": out, "result": result, "events": events_of(result.stdout),
            "tiles": _tile_times(out)}


def test_a_corrupt_raster_fails_alone_and_the_exit_status_says_so(encoded_batch):
    result, events = encoded_batch["result"], encoded_batch["events"]
    assert result.returncode == 4, result.stderr
    final = events[-1]
    assert final["event"] == "finished"
    rows = {Path(row["input"]).relative_to(encoded_batch["root"]).as_posix(): row for row in final["summary"]["items"]}
    assert final["summary"]["done"] == len(RASTERS) and final["summary"]["failed"] == 1
    assert rows["fake.tif"]["status"] == "failed" and "cannot open raster" in rows["fake.tif"]["error"]
    for name in RASTERS:
        assert rows[name]["status"] == "done" and rows[name]["tiles"] == 4 and rows[name]["error"] is None
        assert rows[name]["objects"] is None
        assert json.loads(run_cli("info", rows[name]["output"]).stdout)["complete"] is True


def test_the_list_comes_first_then_each_item_in_turn(encoded_batch):
    events = encoded_batch["events"]
    assert events[0]["event"] == "batch" and events[0]["dry_run"] is False
    listed = events[0]["items"]
    assert len(listed) == len(RASTERS) + 1 and set(listed[0]) == {"input", "output", "log"}
    starts, finishes = named(events, "item_start"), named(events, "item_finished")
    assert [e["index"] for e in starts] == [e["index"] for e in finishes] == list(range(len(listed)))
    assert all(e["count"] == len(listed) for e in starts + finishes)
    assert finishes == [dict(row, event="item_finished", command="encode") for row in events[-1]["summary"]["items"]]
    progress = named(events, "progress")
    assert progress and all("item" in e for e in progress)
    assert {e["item"] for e in progress} == {row["index"] for row in finishes if row["status"] == "done"}


def test_the_model_is_built_once_for_every_raster(encoded_batch):
    messages = [e["message"] for e in named(encoded_batch["events"], "info")]
    assert sum("model sam2.1_hiera_t built" in m for m in messages) == 1
    assert sum(m.startswith("encoding 4 of 4 tiles") for m in messages) == len(RASTERS)


def test_each_output_has_its_log(encoded_batch):
    rows = {Path(row["input"]).name: row for row in encoded_batch["events"][-1]["summary"]["items"]}
    fake = Path(rows["fake.tif"]["log"]).read_text(encoding="utf-8")
    assert "status: failed" in fake and "error: cannot open raster" in fake
    assert not Path(rows["fake.tif"]["output"]).exists()
    köln = Path(rows[KOELN]["log"])
    assert köln.name == "Orthofoto Köln 2024_quicksam.log" and köln.parent == encoded_batch["out"]
    text = köln.read_text(encoding="utf-8")
    assert text.startswith(f"=== quicksam encode {encoded_batch['root'] / KOELN} -> ")
    assert "command line: quicksam encode " in text and "option tile_size: 128" in text
    assert "INFO encoding 4 of 4 tiles" in text and "status: done" in text and "seconds: " in text
    assert f"input: {encoded_batch['root'] / KOELN}\n" in text and f"output: {rows[KOELN]['output']}\n" in text
    assert "option store:" not in text and "option rasters:" not in text   # the parser's fields, not the item's


def test_the_summary_table_is_shown_to_people(batch_root, tmp_path):
    result = run_cli("encode", batch_root / "upper.TIF", batch_root / "notes.txt", "--output-dir", tmp_path,
                     *FAST_ENCODE)
    assert result.returncode == 4
    assert "upper.TIF -> " in result.stderr   # the list first
    table = result.stderr[result.stderr.index("input  "):].splitlines()
    assert table[0].split() == ["input", "output", "tiles", "objects", "seconds", "status"]
    assert table[1].split()[-1] == "failed:" or "failed: " in table[1]
    assert json.loads(result.stdout)["done"] == 1


def test_a_collision_is_refused_before_anything_is_written(batch_root, tmp_path):
    before = file_states(batch_root)
    result = run_cli("encode", batch_root, "--output-dir", tmp_path / "out", "--recursive", *FAST_ENCODE)
    assert_one_line_error(result, r"north.*south.*would all write.*--disambiguate")
    assert file_states(batch_root) == before and not (tmp_path / "out").exists()


def test_dry_run_lists_and_writes_nothing(batch_root, tmp_path):
    before = file_states(batch_root)
    result = run_cli("encode", batch_root, "--next-to-inputs", "--recursive", "--suffix", "v2", "--dry-run",
                     "--progress-json", *FAST_ENCODE)
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    assert events[0]["event"] == "batch" and events[0]["dry_run"] is True
    assert str(batch_root / "north" / "scene_quicksam_v2") in [item["output"] for item in events[0]["items"]]
    assert events[-1]["event"] == "finished" and len(events[-1]["summary"]["planned"]) == len(RASTERS) + 1
    assert file_states(batch_root) == before


@pytest.mark.parametrize("options, hint", [
    (["--suffix", "a b"], r"ASCII letters \(a-z, A-Z\), digits and '-'"),
    (["--series"], "--series and --frames-from-bands make one series store"),
])
def test_bad_batch_options_are_one_line_errors(batch_root, tmp_path, options, hint):
    result = run_cli("encode", batch_root, "--output-dir", tmp_path, *options, *FAST_ENCODE)
    assert_one_line_error(result, hint)


def test_several_rasters_without_series_or_output_dir_stay_refused(batch_root, tmp_path):
    result = run_cli("encode", batch_root / "upper.TIF", batch_root / KOELN, tmp_path / "store", *FAST_ENCODE)
    assert_one_line_error(result, r"2 rasters given: add --series.*--output-dir DIR")
    assert_one_line_error(run_cli("encode", batch_root / "upper.TIF", tmp_path / "s", "--recursive"),
                          "--recursive is for many inputs: add --output-dir DIR or --next-to-inputs")


def test_a_finished_batch_resumes_without_encoding_again(encoded_batch):
    """Runs the module's batch again (kept last among the tests that read its logs)."""
    again = _encode_batch(encoded_batch["root"], encoded_batch["out"])
    assert again.returncode == 4, again.stderr
    assert _tile_times(encoded_batch["out"]) == encoded_batch["tiles"]   # nothing encoded again
    rows = events_of(again.stdout)[-1]["summary"]["items"]
    assert [row["status"] for row in rows].count("done") == len(RASTERS)
    log = Path(next(row["log"] for row in rows if Path(row["input"]).name == KOELN)).read_text(encoding="utf-8")
    assert log.count("=== quicksam encode ") == 2 and log.count("status: done") == 2   # appended


def test_an_existing_store_of_other_settings_fails_only_its_item(batch_root, tmp_path):
    root = tmp_path / "two"
    root.mkdir()
    for name in ("north", "south"):
        shutil.copy(batch_root / name / "scene.tif", root / f"{name}.tif")
    made = run_cli("encode", root / "north.tif", tmp_path / "out" / "north_quicksam", "--random-weights",
                   "--tile-size", "128", "--overlap", "32", "--device", "cpu")
    assert made.returncode == 0, made.stderr
    result = run_cli("encode", root, "--output-dir", tmp_path / "out", *FAST_ENCODE, "--progress-json")
    assert result.returncode == 4, result.stderr
    rows = {Path(row["input"]).name: row for row in events_of(result.stdout)[-1]["summary"]["items"]}
    assert rows["south.tif"]["status"] == "done"
    assert rows["north.tif"]["status"] == "failed" and "\n" not in rows["north.tif"]["error"]
    assert "overlap" in rows["north.tif"]["error"] or "different" in rows["north.tif"]["error"]


# -- quicksam segment-all over the stores ----------------------------------------------------------------

LOOSE = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


def test_segment_all_over_the_batch_in_one_qgis(encoded_batch, tmp_path):
    """Raster inputs find their stores (--stores-dir) by encode's names; fake.tif has none and fails alone."""
    out = tmp_path / "objects"
    result = run_cli("segment-all", encoded_batch["root"], "--recursive", "--disambiguate", "--stores-dir",
                     encoded_batch["out"], "--output-dir", out, *LOOSE, "--progress-json")
    assert result.returncode == 4, result.stderr
    events = events_of(result.stdout)
    assert sum(e.get("message", "").startswith("QGIS started once") for e in events) == 1
    rows = {Path(row["input"]).relative_to(encoded_batch["root"]).as_posix(): row
            for row in events[-1]["summary"]["items"]}
    assert rows["fake.tif"]["status"] == "failed" and "quicksam encode" in rows["fake.tif"]["error"]
    assert rows["north/scene.tif"]["output"] == str(out / "north_scene_quicksam_objects.gpkg")
    for name in RASTERS:
        row = rows[name]
        assert row["status"] == "done" and row["tiles"] == 4 and row["objects"] > 0, row
        assert Path(row["output"]).is_file() and "objects: " in Path(row["log"]).read_text(encoding="utf-8")
    assert all("item" in e for e in named(events, "progress"))


# -- on a Dask cluster -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_more_files_than_workers_run_one_file_per_task(batch_root, tmp_path):
    result = run_cli("encode", batch_root / "north" / "scene.tif", batch_root / KOELN, "--output-dir", tmp_path,
                     "--workers", "1", *FAST_ENCODE, "--progress-json")
    assert result.returncode == 0, result.stderr
    rows = events_of(result.stdout)[-1]["summary"]["items"]
    assert [row["status"] for row in rows] == ["done", "done"]
    for row in rows:   # the log written on the worker
        assert "status: done" in Path(row["log"]).read_text(encoding="utf-8")


@pytest.mark.slow
def test_as_many_workers_as_files_spread_each_files_tiles(batch_root, tmp_path):
    result = run_cli("encode", batch_root / "north" / "scene.tif", "--output-dir", tmp_path, "--workers", "2",
                     *FAST_ENCODE, "--progress-json")
    assert result.returncode == 0, result.stderr
    rows = events_of(result.stdout)[-1]["summary"]["items"]
    assert rows[0]["status"] == "done" and rows[0]["tiles"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])   # Ctrl-C; QGIS's cancel of the encoder process
def test_ctrl_c_stops_the_whole_run_and_keeps_finished_tiles(tmp_path, stop):
    import signal
    import subprocess

    from synthetic import cli_command, square_scene, write_raster

    write_raster(tmp_path / "a_small.tif", square_scene(200, 200, (50, 50, 60)))
    write_raster(tmp_path / "b_large.tif", square_scene(1400, 1400, (300, 300, 400)))
    write_raster(tmp_path / "c_never.tif", square_scene(200, 200, (50, 50, 60)))
    out = tmp_path / "out"
    process = subprocess.Popen(cli_command("encode", *sorted(tmp_path.glob("*.tif")), "--output-dir", out,
                                           *FAST_ENCODE, "--progress-json"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:   # the second raster has written a tile: stop there
            event = json.loads(line)
            if event["event"] == "progress" and event.get("item") == 1:
                process.send_signal(getattr(signal, stop))
                break
        rest, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert json.loads(run_cli("info", out / "a_small_quicksam").stdout)["complete"] is True
    large = json.loads(run_cli("info", out / "b_large_quicksam").stdout)
    assert large["tiles_done"] >= 1 and large["complete"] is False   # finished tiles kept
    assert "status: interrupted" in (out / "b_large_quicksam.log").read_text(encoding="utf-8")
    assert not (out / "c_never_quicksam").exists()
    finished = [json.loads(line) for line in rest.splitlines() if '"finished"' in line][-1]["summary"]
    assert finished["interrupted"] is True   # the summary so far
    assert [row["status"] for row in finished["items"]] == ["done", "interrupted"]
    assert_row_seconds_are_the_logs(finished["items"][1])


def assert_row_seconds_are_the_logs(row: dict) -> None:
    """An interrupted row gives the seconds its item ran, as its log's last footer says (break13 F5: the row said
    0.0, the log 8.7). The log writes the value rounded to 3 decimals, hence the tolerance."""
    logged = [line for line in Path(row["log"]).read_text(encoding="utf-8").splitlines()
              if line.startswith("seconds: ")]
    assert float(logged[-1][len("seconds: "):]) > 0   # it ran: it wrote a tile before the signal
    assert row["seconds"] == pytest.approx(float(logged[-1][len("seconds: "):]), abs=1e-3)


@pytest.mark.slow
def test_ctrl_c_stops_a_segment_all_batch_with_its_summary_so_far(tmp_path):
    import signal
    import subprocess

    from synthetic import cli_command, square_scene, write_raster

    for name in ("a", "b"):
        write_raster(tmp_path / f"{name}.tif", square_scene(200, 200, (50, 50, 60)))
    stores = tmp_path / "stores"
    assert run_cli("encode", tmp_path / "a.tif", tmp_path / "b.tif", "--output-dir", stores,
                   *FAST_ENCODE).returncode == 0
    out = tmp_path / "out"
    process = subprocess.Popen(cli_command("segment-all", stores / "a_quicksam", stores / "b_quicksam", "--output-dir",
                                           out, "--points-per-side", "16", "--progress-json"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:   # the second store has one of its 4 tiles segmented: stop there
            event = json.loads(line)
            if event["event"] == "progress" and event.get("item") == 1:
                process.send_signal(signal.SIGINT)
                break
        rest, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    finished = [json.loads(line) for line in rest.splitlines() if '"finished"' in line][-1]["summary"]
    assert finished["interrupted"] is True
    assert [row["status"] for row in finished["items"]] == ["done", "interrupted"]
    assert "status: interrupted" in (out / "b_quicksam_objects.log").read_text(encoding="utf-8")
    assert_row_seconds_are_the_logs(finished["items"][1])


def test_a_finished_segment_all_batch_is_done_on_a_re_run(tmp_path):
    from synthetic import square_scene, write_raster

    write_raster(tmp_path / "a.tif", square_scene(150, 150, (20, 20, 40)))
    stores, out = tmp_path / "stores", tmp_path / "out"
    assert run_cli("encode", tmp_path / "a.tif", "--output-dir", stores, *FAST_ENCODE).returncode == 0
    command = ("segment-all", stores / "a_quicksam", "--output-dir", out, "--points-per-side", "4", "--progress-json")
    assert run_cli(*command).returncode == 0
    again = run_cli(*command)
    assert again.returncode == 0, again.stderr
    row = events_of(again.stdout)[-1]["summary"]["items"][0]
    assert (row["status"], row["note"]) == ("done", "already finished")
    assert "already finished, nothing segmented" in (out / "a_quicksam_objects.log").read_text(encoding="utf-8")
    redo = run_cli(*command, "--overwrite")   # --overwrite still segments it again
    assert redo.returncode == 0 and events_of(redo.stdout)[-1]["summary"]["items"][0]["note"] is None


def test_a_log_file_the_user_made_is_never_appended_to(tmp_path):
    from synthetic import square_scene, write_raster

    write_raster(tmp_path / "a.tif", square_scene(150, 150, (20, 20, 40)))
    mine = tmp_path / "a_quicksam.log"
    mine.write_text("my field notes\n", encoding="utf-8")
    before = file_states(tmp_path)
    result = run_cli("encode", tmp_path / "a.tif", "--next-to-inputs", *FAST_ENCODE)
    assert_one_line_error(result, "a_quicksam.log.*not a QuickSAM log.*move it away, or choose another --suffix")
    assert file_states(tmp_path) == before


def test_an_unreachable_scheduler_is_refused_before_any_item(tmp_path):
    import socket

    from synthetic import square_scene, write_raster

    write_raster(tmp_path / "a.tif", square_scene(150, 150, (20, 20, 40)))
    stores, out = tmp_path / "stores", tmp_path / "out"
    assert run_cli("encode", tmp_path / "a.tif", "--output-dir", stores, *FAST_ENCODE).returncode == 0
    with socket.socket() as free:   # a port nobody listens on: refused at once
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    result = run_cli("segment-all", stores / "a_quicksam", "--output-dir", out, "--scheduler",
                     f"tcp://127.0.0.1:{port}")
    assert result.returncode == 1, result.stderr
    assert "cannot reach the Dask scheduler" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_a_segment_all_items_warnings_are_on_the_terminal_and_in_its_log(tmp_path):
    from synthetic import square_scene, write_raster

    write_raster(tmp_path / "a.tif", square_scene(150, 150, (20, 20, 40)))
    stores, out = tmp_path / "stores", tmp_path / "out"
    assert run_cli("encode", tmp_path / "a.tif", "--output-dir", stores, *FAST_ENCODE).returncode == 0
    result = run_cli("segment-all", stores / "a_quicksam", "--output-dir", out, "--points-per-side", "4",
                     "--pred-iou-thresh", "1.0", "--stability-score-thresh", "1.0")   # nothing passes: 0 objects
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "warning" in line and "0 objects" in line]
    assert warning, result.stderr
    assert "0 objects" in (out / "a_quicksam_objects.log").read_text(encoding="utf-8")


def test_segment_all_finds_a_disambiguated_store_by_its_manifest(tmp_path):
    from synthetic import square_scene, write_raster

    for sub in ("north", "south"):
        (tmp_path / "data" / sub).mkdir(parents=True)
        write_raster(tmp_path / "data" / sub / "scene.tif", square_scene(150, 150, (20, 20, 40)))
    stores = tmp_path / "stores"
    assert run_cli("encode", tmp_path / "data", "--recursive", "--disambiguate", "--output-dir", stores,
                   *FAST_ENCODE).returncode == 0
    assert (stores / "north_scene_quicksam").is_dir()
    result = run_cli("segment-all", tmp_path / "data" / "north" / "scene.tif", "--stores-dir", stores,
                     "--disambiguate", "--output-dir", tmp_path / "out", "--points-per-side", "4", "--progress-json")
    assert result.returncode == 0, result.stdout[-800:]
    assert events_of(result.stdout)[-1]["summary"]["items"][0]["status"] == "done"


def test_messages_about_inputs_are_short_and_well_formed(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuickSamError) as caught:
        find_inputs([str(tmp_path / "empty")], True, extensions=EXTENSIONS)
    message = str(caught.value)
    assert "; or change" not in message and ": change --include" in message and "sub-folders" in message
    assert f"({len(EXTENSIONS)} in all)" in message and len(message) < 300
    clash = [tmp_path / "n" / "scene.tif", tmp_path / "s" / "scene.tif"]
    with pytest.raises(QuickSamError, match="--disambiguate.*--next-to-inputs"):
        plan_outputs(clash, NamingRule(output_dir=tmp_path / "out"), ENCODE)


@pytest.mark.parametrize("command", ["encode", "segment-all"])
def test_no_inputs_at_all_is_a_message_about_inputs(command, tmp_path):
    assert_one_line_error(run_cli(command, "--output-dir", tmp_path / "out"), "no inputs: give the files, folders")
    assert not (tmp_path / "out").exists()


def test_segment_all_says_a_suffix_does_not_name_a_store_folders_objects(tmp_path):
    """`--suffix` names the stores of raster inputs (and so their objects); a store folder given as input keeps
    its name (`S_objects.gpkg`, docs/batch.md): said once, instead of silently ignoring the suffix (a re-run
    meant to write new objects under another suffix would else find the old ones "already finished")."""
    store = tmp_path / "scene_quicksam"
    store.mkdir()
    (store / "manifest.json").write_text("{}")
    result = run_cli("segment-all", store, "--output-dir", tmp_path / "out", "--suffix", "v2", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "scene_quicksam_objects.gpkg" in result.stderr
    assert "--suffix v2 does not apply to a store folder given as input" in result.stderr, result.stderr
    plain = run_cli("segment-all", store, "--output-dir", tmp_path / "out", "--dry-run")
    assert "--suffix" not in plain.stderr, plain.stderr
