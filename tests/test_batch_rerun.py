"""Re-running a batch (docs/batch.md): a finished output made with other settings is refused, not "already
finished"; inputs of one folder that would write the same output get advice that helps."""

from __future__ import annotations

import json
from typing import List

import pytest
from batch_data import FAST_ENCODE
from synthetic import assert_one_line_error, file_states, run_cli, square_scene, write_raster

from quicksam.core.batch import ENCODE, SEGMENT_ALL, NamingRule, plan_outputs
from quicksam.core.batch_log import (
    ALREADY_FINISHED,
    DONE,
    FAILED,
    OTHER_SETTINGS,
    ItemResult,
    item_log,
    last_output_run,
)
from quicksam.core.errors import QuickSamError
from quicksam.core.logger import LOGGER
from quicksam.interactive.run_file import differing_settings


def _rows(stdout: str) -> List[dict]:
    return [json.loads(line) for line in stdout.splitlines()][-1]["summary"]["items"]


def test_a_finished_segment_all_output_of_other_settings_is_refused_not_already_finished(tmp_path):
    """F3: a re-run with `--points-per-side 2` after 4 used to exit 0 "already finished", keeping the objects of
    4 silently. Now that item fails in one line naming the setting and --overwrite; nothing is rewritten."""
    write_raster(tmp_path / "a.tif", square_scene(150, 150, (20, 20, 40)))
    stores, out = tmp_path / "stores", tmp_path / "out"
    assert run_cli("encode", tmp_path / "a.tif", "--output-dir", stores, *FAST_ENCODE).returncode == 0
    command = ("segment-all", stores / "a_quicksam", "--output-dir", out, "--progress-json")
    assert run_cli(*command, "--points-per-side", "4").returncode == 0
    objects = out / "a_quicksam_objects.gpkg"
    before = file_states(tmp_path / "out")
    other = run_cli(*command, "--points-per-side", "2", "--skip-covered-points")
    assert other.returncode == 4, other.stderr
    row = _rows(other.stdout)[0]
    assert (row["status"], row["note"]) == ("failed", "other settings"), row
    assert "--points-per-side was 4, now 2" in row["error"] and "--skip-covered-points" in row["error"], row["error"]
    assert "--overwrite" in row["error"] and "\n" not in row["error"]
    assert {name: state for name, state in file_states(tmp_path / "out").items() if not name.endswith(".log")} \
        == {name: state for name, state in before.items() if not name.endswith(".log")}
    same = run_cli(*command, "--points-per-side", "4")
    assert same.returncode == 0, same.stderr
    assert _rows(same.stdout)[0]["note"] == "already finished"
    # The single-output form never takes an existing output as finished: it is refused, whatever its settings.
    single = run_cli("segment-all", stores / "a_quicksam", "--output", objects, "--points-per-side", "2")
    assert_one_line_error(single, "--overwrite")


def test_inputs_of_one_folder_with_one_stem_get_advice_that_helps(tmp_path):
    """F4: `x/a.tif`, `x/a.png`, `x/A.TIFF` would write one store: --disambiguate and --next-to-inputs cannot tell
    them apart (one folder), so the message says what can; --disambiguate refuses them the same way instead of
    naming outputs after every folder up to the root."""
    inputs = [tmp_path / "x" / "a.tif", tmp_path / "x" / "a.png", tmp_path / "x" / "A.TIFF", tmp_path / "y" / "a.tif"]
    for disambiguate in (False, True):
        for kind in (ENCODE, SEGMENT_ALL):
            with pytest.raises(QuickSamError) as caught:
                plan_outputs(inputs, NamingRule(output_dir=tmp_path / "out", disambiguate=disambiguate), kind)
            message = str(caught.value)
            assert "'" + str(inputs[0]) + "'" in message and "'" + str(inputs[1]) + "'" in message, message
            assert "--include" in message and "--extensions" in message, message
            assert "add --disambiguate" not in message and "with --next-to-inputs" not in message, message
    # Next to the inputs the same: one folder, one store name.
    with pytest.raises(QuickSamError, match="--include"):
        plan_outputs(inputs[:2], NamingRule(), ENCODE)
    # Different folders are still told to use --disambiguate, which names them by folder.
    other = [tmp_path / "x" / "a.tif", tmp_path / "y" / "a.tif"]
    with pytest.raises(QuickSamError, match="add --disambiguate"):
        plan_outputs(other, NamingRule(output_dir=tmp_path / "out"), ENCODE)
    named = plan_outputs(other, NamingRule(output_dir=tmp_path / "out", disambiguate=True), ENCODE)
    assert [item.output.name for item in named] == ["x_a_quicksam", "y_a_quicksam"]


def test_the_same_folder_clash_is_one_line_on_the_command_line(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("a.tif", "a.png"):
        write_raster(tmp_path / "in" / name, square_scene(64, 64, (10, 10, 20)))
    before = file_states(tmp_path)
    result = run_cli("encode", tmp_path / "in", "--output-dir", tmp_path / "out", "--disambiguate", *FAST_ENCODE)
    assert_one_line_error(result, "--include")
    assert file_states(tmp_path) == before and not (tmp_path / "out").exists()


def test_the_run_that_made_an_output_is_found_past_re_runs_that_left_it(tmp_path):
    """`last_output_run` skips the re-runs that wrote nothing (already finished, other settings): a refused re-run
    must not make the next one with the first settings forget that the output is finished."""
    log = tmp_path / "a_quicksam_objects.log"
    for status, note, side in ((DONE, None, "4"), (FAILED, OTHER_SETTINGS, "2"), (DONE, ALREADY_FINISHED, "4")):
        result = ItemResult(0, 1, "a", "a.gpkg", str(log), status=status, note=note)
        with item_log(result, "quicksam segment-all a -> a.gpkg", {"option points_per_side": side, "x": "y"}):
            LOGGER.info("option points_per_side: 99 (a message, not the header)")
    assert last_output_run(log) == (DONE, {"points_per_side": "4"})
    assert last_output_run(tmp_path / "none.log") is None


def test_one_comparison_names_the_settings_that_differ():
    """RunFile.open (an unfinished run) and the segment-all batch (a finished output) compare with it; a run
    identity's nested settings are named one by one."""
    stored = {"grid": [256, 32], "settings": {"points_per_side": 16, "mask_mode": "all"}}
    assert differing_settings(stored, {**stored, "settings": {"points_per_side": 8, "mask_mode": "all"}}) \
        == ["settings.points_per_side"]
    assert differing_settings({"aoi": None, "levels": "[1.0]"}, {"aoi": "a.gpkg", "levels": "[1.0]"}) == ["aoi"]
    assert differing_settings(stored, dict(stored)) == []
