"""quicksam:encoderasters (issue 13: many rasters in Processing) and the cluster parameters of both encode algorithms.

Parameter checks and the command line need no process. The event handling runs the algorithm against
tests/fake_batch_encoder.py as the encoder's Python: it prints exactly the batch events of docs/cli-events.md.
The end-to-end tests at the end run the real `quicksam encode INPUT... --output-dir` (random weights, 128 px
tiles): they need the CLI's batch options (the `batch` branch of issue 13).
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List
from unittest import mock

import pytest
from fake_batch_encoder import fake_python
from osgeo import gdal
from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterDefinition,
    QgsProject,
    QgsRasterLayer,
)
from synthetic import gradient, write_raster

from quicksam.ui import settings

ALGORITHM_ID = "quicksam:encoderasters"
SINGLE_ID = "quicksam:encoderaster"
SMALL: Dict[str, Any] = {"RANDOM_WEIGHTS": True, "TILE_SIZE": 128}


class RecordingFeedback(QgsProcessingFeedback):
    """The log as the dialog shows it (errors apart) and every progress value set."""

    def __init__(self) -> None:
        super().__init__()
        self.log: List[str] = []
        self.errors: List[str] = []
        self.progress_values: List[float] = []
        self.progressChanged.connect(self.progress_values.append)

    def pushInfo(self, info: str) -> None:  # noqa: N802 - QGIS's name
        self.log.append(info)

    def reportError(self, error: str, fatal_error: bool = False) -> None:  # noqa: N802
        self.errors.append(error)


@pytest.fixture
def registered(qgis_processing, plugin):
    assert QgsApplication.processingRegistry().algorithmById(ALGORITHM_ID) is not None
    yield plugin
    settings.KNOWN_STORES.reset()


@pytest.fixture
def rasters(tmp_path) -> Path:
    """A folder of two small GeoTIFFs, a.tif and b.tif (64 px, EPSG:32633)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        write_raster(folder / f"{name}.tif", gradient(64, 64))
    return folder


@pytest.fixture
def fake_encoder(tmp_path, monkeypatch) -> Path:
    """The fake batch encoder as the encoder's Python; returns the file its arguments are written to."""
    settings.PYTHON_EXECUTABLE.reset()  # the variable decides
    monkeypatch.setenv(settings.PYTHON_ENV_VAR, str(fake_python(tmp_path)))
    record = tmp_path / "fake-args.json"
    monkeypatch.setenv("FAKE_BATCH_ARGS", str(record))
    return record


def run(parameters: Dict[str, Any], feedback: QgsProcessingFeedback = None, algorithm: str = ALGORITHM_ID):
    import processing

    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    return processing.run(algorithm, parameters, context=context, feedback=feedback or RecordingFeedback())


def refused(parameters: Dict[str, Any], algorithm: str = ALGORITHM_ID) -> str:
    """The one line the dialog shows (checkParameterValues) for `parameters`; processing.run refuses them too."""
    instance = QgsApplication.processingRegistry().createAlgorithmById(algorithm)
    ok, message = instance.checkParameterValues(parameters, QgsProcessingContext())
    assert not ok
    assert message.strip() and "\n" not in message.strip(), message
    with pytest.raises(QgsProcessingException) as raised:
        run(parameters, algorithm=algorithm)
    assert message in str(raised.value)
    return message


def request_args(parameters: Dict[str, Any], algorithm_id: str = ALGORITHM_ID) -> List[str]:
    """The encoder arguments the algorithm builds for `parameters` (nothing is run)."""
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
    context = QgsProcessingContext()
    ok, message = algorithm.checkParameterValues(parameters, context)
    assert ok, message
    if algorithm_id == SINGLE_ID:
        return algorithm.encoder_job(parameters, context).args
    return algorithm.request(parameters, context).args()


# -- identity and parameters -------------------------------------------------------------------------------------


def test_identity_parameters_and_outputs(registered):
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
    assert (algorithm.name(), algorithm.displayName(), algorithm.groupId()) == (
        "encoderasters", "Encode many rasters", "encoding")
    assert not algorithm.icon().isNull() and algorithm.svgIconPath().endswith("encode_many.svg")
    names = [p.name() for p in algorithm.parameterDefinitions()]
    assert names == ["INPUTS", "INPUT_FOLDER", "RECURSIVE", "INCLUDE", "EXCLUDE", "EXTENSIONS", "MODEL", "CHECKPOINT",
                     "RANDOM_WEIGHTS", "RESOLUTION", "LEVELS", "OVERLAP", "BATCH_SIZE", "DEVICE", "TILE_SIZE",
                     "FEATURE_DTYPE", "WORKERS", "SCHEDULER", "SUFFIX", "DISAMBIGUATE", "OUTPUT_FOLDER"]
    advanced = QgsProcessingParameterDefinition.Flag.FlagAdvanced
    assert {n for n in names if algorithm.parameterDefinition(n).flags() & advanced} == {
        "RANDOM_WEIGHTS", "BATCH_SIZE", "DEVICE", "TILE_SIZE", "FEATURE_DTYPE", "WORKERS", "SCHEDULER"}
    assert all(algorithm.parameterDefinition(n).help() for n in names), "every parameter has help"
    assert {o.name() for o in algorithm.outputDefinitions()} == {"OUTPUT_FOLDER", "STORES", "DONE", "FAILED",
                                                                "SUMMARY"}
    # one definition of the shared parameters: the same as encoderaster's
    single = QgsApplication.processingRegistry().createAlgorithmById(SINGLE_ID)
    for name in ("MODEL", "LEVELS", "OVERLAP", "TILE_SIZE", "FEATURE_DTYPE", "WORKERS", "SCHEDULER"):
        assert algorithm.parameterDefinition(name).toVariantMap() == single.parameterDefinition(name).toVariantMap()


@pytest.mark.parametrize("algorithm_id", [SINGLE_ID, ALGORITHM_ID])
def test_dialog_shows_workers_and_scheduler_in_its_advanced_section(registered, qgis_iface, algorithm_id):
    import processing
    from qgis.gui import QgsBrowserGuiModel

    with mock.patch.object(qgis_iface, "browserModel", create=True, return_value=QgsBrowserGuiModel()):
        dialog = processing.createAlgorithmDialog(algorithm_id, {})
        try:
            panel = dialog.mainWidget()

            def in_advanced_section(name: str) -> bool:
                widget = panel.wrappers[name].wrappedWidget()
                while widget is not None and widget.objectName() != "grpAdvanced":
                    widget = widget.parentWidget()
                return widget is not None

            assert in_advanced_section("WORKERS") and in_advanced_section("SCHEDULER")
            assert not in_advanced_section("MODEL")
        finally:
            dialog.close()


# -- bad input, refused in one line before anything runs ----------------------------------------------------------


@pytest.mark.parametrize("suffix", ["v 2", "v_2", "été", "a/b"])
def test_suffix_of_anything_but_letters_digits_and_dash_is_refused(registered, rasters, suffix):
    message = refused({"INPUT_FOLDER": str(rasters), "SUFFIX": suffix, **SMALL})
    assert f"The suffix '{suffix}' may hold only letters, digits and -" in message


def test_no_inputs_is_refused(registered, tmp_path):
    message = refused({"OUTPUT_FOLDER": str(tmp_path / "out"), **SMALL})
    assert "Nothing to encode: choose raster layers in Input rasters or a folder in Input folder." in message


def test_missing_input_folder_is_refused(registered, tmp_path):
    assert "does not exist or is not a folder" in refused({"INPUT_FOLDER": str(tmp_path / "nowhere"), **SMALL})


def test_web_layer_is_refused(registered, rasters):
    layer = QgsRasterLayer("type=xyz&url=http://localhost/{z}/{x}/{y}.png&zmin=0&zmax=19", "tiles", "wms")
    assert layer.isValid()
    message = refused({"INPUTS": [str(rasters / "a.tif"), layer], **SMALL})
    assert "The layer 'tiles' is not a file-based raster" in message and "Save it to a file first" in message


def test_in_memory_layer_is_refused(registered, rasters):
    memory_path = "/vsimem/quicksam_many_memory.tif"
    gdal.Translate(memory_path, str(rasters / "a.tif"))  # QGIS's own GDAL: its /vsimem
    try:
        layer = QgsRasterLayer(memory_path, "memory raster", "gdal")
        assert layer.isValid()
        message = refused({"INPUTS": [layer], **SMALL})
    finally:
        gdal.Unlink(memory_path)
    assert "only in memory" in message


@pytest.mark.parametrize("algorithm_id", [SINGLE_ID, ALGORITHM_ID])
@pytest.mark.parametrize(("cluster", "expected"), [
    ({"SCHEDULER": "localhost:8786"}, "'localhost:8786' is not a Dask scheduler address; give it as tcp://HOST:8786"),
    ({"SCHEDULER": "tcp://127.0.0.1:8786", "WORKERS": 2}, "not both"),
])
def test_bad_cluster_settings_are_refused(registered, rasters, algorithm_id, cluster, expected):
    inputs = {"INPUT": str(rasters / "a.tif")} if algorithm_id == SINGLE_ID else {"INPUT_FOLDER": str(rasters)}
    message = refused({**inputs, **SMALL, **cluster}, algorithm=algorithm_id)
    assert expected in message
    assert "--scheduler" not in message and "--workers" not in message  # the dialog's words


def test_extensions_that_are_not_extensions_are_refused(registered, rasters):
    assert "'*.tif' is not a file extension" in refused({"INPUT_FOLDER": str(rasters), "EXTENSIONS": "*.tif"})


# -- the command line -------------------------------------------------------------------------------------------------


def test_command_line_from_parameters(registered, rasters, tmp_path):
    out = tmp_path / "stores"
    args = request_args({
        "INPUTS": [str(rasters / "b.tif")], "INPUT_FOLDER": str(rasters), "RECURSIVE": True,
        "INCLUDE": "_BF, *2024*", "EXCLUDE": "draft", "EXTENSIONS": "tif, .JP2", "SUFFIX": "v-2",
        "DISAMBIGUATE": True, "OUTPUT_FOLDER": str(out), "MODEL": 0, "RANDOM_WEIGHTS": True, "TILE_SIZE": 128,
        "LEVELS": "1,4", "BATCH_SIZE": 2, "DEVICE": 1, "WORKERS": 2})
    from quicksam.core.catalogue import MODELS

    assert args == ["encode", str(rasters / "b.tif"), str(rasters), f"--output-dir={out}", "--recursive",
                    "--include=_BF", "--include=*2024*", "--exclude=draft", "--extensions=tif,JP2", "--suffix=v-2",
                    "--disambiguate", f"--model={list(MODELS)[0]}", "--random-weights", "--overlap=32",
                    "--batch-size=2", "--device=cpu", "--tile-size=128", "--levels=1,4", "--workers=2"]


def test_no_output_folder_means_next_to_the_inputs(registered, rasters):
    for output in ({}, {"OUTPUT_FOLDER": None}, {"OUTPUT_FOLDER": "TEMPORARY_OUTPUT"}):
        args = request_args({"INPUT_FOLDER": str(rasters), **SMALL, **output})
        assert args[:3] == ["encode", str(rasters), "--next-to-inputs"]
        assert not any(arg.startswith("--output-dir") for arg in args)


def test_inputs_are_absolute_paths_never_taken_for_options(registered, rasters, monkeypatch):
    odd = rasters / "-odd.tif"
    write_raster(odd, gradient(16, 16))
    monkeypatch.chdir(rasters)
    args = request_args({"INPUTS": ["-odd.tif"], "SCHEDULER": "tcp://10.0.0.5:8786", **SMALL})
    assert args[1] == str(odd)
    assert "--scheduler=tcp://10.0.0.5:8786" in args and not any(a.startswith("--workers") for a in args)


def test_encoderaster_passes_workers_and_scheduler_through(registered, rasters, tmp_path):
    base = {"INPUT": str(rasters / "a.tif"), "OUTPUT": str(tmp_path / "store"), **SMALL}
    assert "--workers=3" in request_args({**base, "WORKERS": 3}, SINGLE_ID)
    args = request_args({**base, "SCHEDULER": " tcp://gpu-box:8786 "}, SINGLE_ID)
    assert "--scheduler=tcp://gpu-box:8786" in args and not any(a.startswith("--workers") for a in args)
    assert not any(a.startswith(("--workers", "--scheduler")) for a in request_args(base, SINGLE_ID))


# -- the events of a run (the fake encoder) ----------------------------------------------------------------------------


def read_summary(path: str) -> List[Dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


def test_progress_items_and_outputs_of_a_run(registered, rasters, fake_encoder, tmp_path):
    feedback = RecordingFeedback()
    out = tmp_path / "out"
    result = run({"INPUT_FOLDER": str(rasters), "OUTPUT_FOLDER": str(out), **SMALL}, feedback)
    stores = [str(out / "a_quicksam"), str(out / "b_quicksam")]
    assert result["DONE"] == 2 and result["FAILED"] == 0
    assert result["STORES"] == ";".join(stores)
    assert result["OUTPUT_FOLDER"] == str(out)
    assert result["SUMMARY"] == str(out / "quicksam_summary.csv")
    assert [row["output"] for row in read_summary(result["SUMMARY"])] == stores
    assert [row["status"] for row in read_summary(result["SUMMARY"])] == ["done", "done"]
    # overall = (items finished + the current item's fraction) / items: 25 % is half of the first raster
    # (values set from fractions of 2: compared with a tolerance, not bitwise)
    for expected in (25.0, 50.0, 75.0, 100.0):
        assert any(abs(value - expected) < 1e-6 for value in feedback.progress_values), (expected,
                                                                                         feedback.progress_values)
    assert feedback.progress_values == sorted(feedback.progress_values)
    assert any("[1/2]" in line and "a.tif: encoding into" in line for line in feedback.log)
    assert any("[2/2]" in line and "b.tif: done, 2 tiles" in line for line in feedback.log)
    assert not feedback.errors
    assert json.loads(fake_encoder.read_text())[-1] == "--progress-json"


def test_a_failed_raster_is_an_error_line_not_an_algorithm_error(registered, rasters, fake_encoder, monkeypatch):
    monkeypatch.setenv("FAKE_BATCH_FAIL", "1")
    feedback = RecordingFeedback()
    result = run({"INPUT_FOLDER": str(rasters), **SMALL}, feedback)  # outputs next to the inputs
    assert (result["DONE"], result["FAILED"]) == (1, 1)
    assert result["STORES"] == str(rasters / "a_quicksam")
    assert len(feedback.errors) == 1
    assert "[2/2]" in feedback.errors[0] and "b.tif failed: cannot read b.tif: not a raster" in feedback.errors[0]
    assert str(rasters / "b_quicksam.log") in feedback.errors[0]
    assert result["SUMMARY"] == str(rasters / "quicksam_summary.csv")  # the input folder
    rows = read_summary(result["SUMMARY"])
    assert [(row["status"], row["error"]) for row in rows] == [("done", ""), ("failed", "cannot read b.tif: not a "
                                                                                        "raster")]


def test_every_raster_failing_is_an_algorithm_error(registered, rasters, fake_encoder, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_BATCH_FAIL", "all")
    feedback = RecordingFeedback()
    with pytest.raises(QgsProcessingException) as raised:
        run({"INPUT_FOLDER": str(rasters), "OUTPUT_FOLDER": str(tmp_path / "out"), "SUFFIX": "x", **SMALL},
            feedback)
    assert "None of the 2 rasters was encoded; the first error: cannot read a.tif: not a raster" in str(raised.value)
    assert len(feedback.errors) >= 2
    assert [row["status"] for row in read_summary(str(tmp_path / "out" / "quicksam_summary_x.csv"))] == [
        "failed", "failed"]


def test_a_run_the_cli_refuses_is_an_error_in_the_dialogs_words(registered, rasters, fake_encoder, monkeypatch):
    refusal = ("'a/scene.tif', 'b/scene.tif' would all write 'out/scene_quicksam'; nothing was written: add "
               "--disambiguate to put their folder names in front")
    monkeypatch.setenv("FAKE_BATCH_REFUSE", refusal)
    feedback = RecordingFeedback()
    with pytest.raises(QgsProcessingException) as raised:
        run({"INPUT_FOLDER": str(rasters), **SMALL}, feedback)
    message = str(raised.value)
    assert "nothing was written: add the Disambiguate option to put their folder names in front" in message
    assert not message.startswith("quicksam:") and "--" not in message


def test_cancel_stops_the_encoder_process(registered, rasters, fake_encoder, monkeypatch, tmp_path):
    hold = tmp_path / "holding.pid"
    monkeypatch.setenv("FAKE_BATCH_HOLD", str(hold))
    feedback = RecordingFeedback()

    def cancel_once_holding() -> None:  # as the dialog's Cancel button, from another thread than the run's
        deadline = time.monotonic() + 60
        while not (hold.exists() and hold.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        feedback.cancel()

    canceller = threading.Thread(target=cancel_once_holding, daemon=True)
    canceller.start()
    with pytest.raises(QgsProcessingException) as raised:
        run({"INPUT_FOLDER": str(rasters), **SMALL}, feedback)
    assert "Encoding cancelled: the stores and tiles finished so far are kept" in str(raised.value)
    pid = int(hold.read_text())
    with pytest.raises(OSError):  # the process is gone (reaped by the runner)
        os.kill(pid, 0)
    canceller.join()


# -- end to end with the real CLI (needs the batch options of `quicksam encode`: the `batch` branch) -----------------


def scene_folder(root: Path) -> Path:
    """Two small rasters (200 px: 4 tiles of 128 px with a 32 px overlap) and a file that is no raster."""
    root.mkdir()
    write_raster(root / "north.tif", gradient(200, 200))
    write_raster(root / "south.tif", gradient(200, 160))
    (root / "broken.tif").write_bytes(b"not a GeoTIFF")
    return root


@pytest.mark.slow
def test_real_run_encodes_each_raster_reports_the_broken_one_and_writes_logs(registered, tmp_path):
    folder = scene_folder(tmp_path / "scenes")
    out = tmp_path / "stores"
    feedback = RecordingFeedback()
    result = run({"INPUT_FOLDER": str(folder), "OUTPUT_FOLDER": str(out), "SUFFIX": "v2", **SMALL}, feedback)
    assert (result["DONE"], result["FAILED"]) == (2, 1)
    stores = result["STORES"].split(";")
    assert sorted(Path(store).name for store in stores) == ["north_quicksam_v2", "south_quicksam_v2"]
    for store in stores:
        assert (Path(store) / "manifest.json").is_file()
        assert Path(store + ".log").is_file()
    assert any("broken.tif failed" in line for line in feedback.errors)
    rows = read_summary(result["SUMMARY"])
    assert {Path(row["input"]).name: row["status"] for row in rows} == {
        "broken.tif": "failed", "north.tif": "done", "south.tif": "done"}
    assert abs(feedback.progress_values[-1] - 100.0) < 1e-6


@pytest.mark.slow
def test_real_run_refuses_a_collision_before_writing_unless_disambiguated(registered, tmp_path):
    for name in ("east", "west"):
        (tmp_path / name).mkdir()
        write_raster(tmp_path / name / "scene.tif", gradient(100, 100))
    inputs = [str(tmp_path / "east" / "scene.tif"), str(tmp_path / "west" / "scene.tif")]
    out = tmp_path / "stores"
    with pytest.raises(QgsProcessingException) as raised:  # refused by the CLI (core/batch.py), in one line
        run({"INPUTS": inputs, "OUTPUT_FOLDER": str(out), **SMALL})
    message = str(raised.value)
    assert "scene" in message and "\n" not in message.strip(), message
    assert "Disambiguate option" in message  # the CLI's --disambiguate in the dialog's words
    assert not out.exists() or not any(out.iterdir())
    result = run({"INPUTS": inputs, "OUTPUT_FOLDER": str(out), "DISAMBIGUATE": True, **SMALL})
    assert (result["DONE"], result["FAILED"]) == (2, 0)
    assert len({Path(store).name for store in result["STORES"].split(";")}) == 2


@pytest.mark.slow
def test_real_run_on_a_local_cluster_encodes_every_raster_once(registered, tmp_path):
    """WORKERS=2: a Dask LocalCluster of two processes (the CLI's file-level tasks, more rasters than workers)."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    for name in ("one", "two", "three"):
        write_raster(folder / f"{name}.tif", gradient(120, 120))
    feedback = RecordingFeedback()
    result = run({"INPUT_FOLDER": str(folder), "OUTPUT_FOLDER": str(tmp_path / "stores"), "WORKERS": 2, **SMALL},
                 feedback)
    assert (result["DONE"], result["FAILED"]) == (3, 0)
    assert sorted(Path(store).name for store in result["STORES"].split(";")) == [
        "one_quicksam", "three_quicksam", "two_quicksam"]
    assert all((Path(store) / "manifest.json").is_file() for store in result["STORES"].split(";"))
    assert abs(feedback.progress_values[-1] - 100.0) < 1e-6
