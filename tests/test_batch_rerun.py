"""Re-running a batch (docs/batch.md): inputs of one folder that would write the same output get advice that
helps."""

from __future__ import annotations

import pytest
from batch_data import FAST_ENCODE
from synthetic import assert_one_line_error, file_states, run_cli, square_scene, write_raster

from quicksam.core.batch import ENCODE, SEGMENT_ALL, NamingRule, plan_outputs
from quicksam.core.errors import QuickSamError


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
