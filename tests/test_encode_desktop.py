"""quicksam:encoderaster as a desktop user meets it (issue 10, desktop findings 1, 2, 4, 6 and 10): the default
store, a missing encoder environment, the red/green/blue bands, the dialog's words, its size and the help texts.

Real Processing runs of the real encoder CLI in a separate process, with seeded random tiny SAM2.1 weights, 256 px
tiles and rasters of at most 300 px (synthetic.py: EPSG:32633, 10 m pixels).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Tuple
from unittest import mock

import pytest
from qgis.core import (
    QgsApplication,
    QgsMultiBandColorRenderer,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBand,
    QgsProcessingParameterDefinition,
    QgsProcessingUtils,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt, QUrl
from qgis.PyQt.QtWidgets import QMessageBox, QScrollArea
from synthetic import cli_command, file_states, gradient, write_raster

from quicksam.ui import PLUGIN_DIR, settings
from quicksam.ui.algorithms.encode_dialog import MINIMUM_SIZE
from quicksam.ui.algorithms.encoder_events import in_dialog_words
from quicksam.ui.layer_stores import find_layer_store

ALGORITHM_ID = "quicksam:encoderaster"
SMALL_ENCODE: Dict[str, Any] = {"RANDOM_WEIGHTS": True, "TILE_SIZE": 256, "OVERLAP": 32}
SETUP = "Raster > QuickSAM > Set up…"


class RecordingFeedback(QgsProcessingFeedback):
    """Every message pushed to the feedback, as the dialog's log shows them."""

    def __init__(self) -> None:
        super().__init__()
        self.log: List[str] = []

    def pushInfo(self, info: str) -> None:
        self.log.append(info)

    def pushWarning(self, warning: str) -> None:
        self.log.append(warning)

    def pushDebugInfo(self, info: str) -> None:
        self.log.append(info)

    def reportError(self, error: str, fatal_error: bool = False) -> None:  # noqa: N802
        self.log.append(error)


@pytest.fixture
def encoder(qgis_processing, plugin, qgis_new_project):
    """The real plugin loaded (quicksam:encoderaster registered), a new project, the store list emptied after."""
    assert QgsApplication.processingRegistry().algorithmById(ALGORITHM_ID) is not None
    yield plugin
    settings.KNOWN_STORES.reset()
    settings.STORE_FOLDER.reset()


@pytest.fixture
def browser_model(qgis_iface):
    """Processing's dialog asks the iface for the browser model, which pytest-qgis's iface lacks."""
    from qgis.gui import QgsBrowserGuiModel

    model = QgsBrowserGuiModel()
    with mock.patch.object(qgis_iface, "browserModel", create=True, return_value=model):
        yield model


def project_context() -> QgsProcessingContext:
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    return context


def run(parameters: Dict[str, Any], feedback: QgsProcessingFeedback = None,
        context: QgsProcessingContext = None) -> Dict[str, Any]:
    import processing

    return processing.run(ALGORITHM_ID, {**SMALL_ENCODE, **parameters}, context=context or project_context(),
                          feedback=feedback or RecordingFeedback())


def run_failing(parameters: Dict[str, Any], feedback: QgsProcessingFeedback) -> str:
    with pytest.raises(QgsProcessingException) as raised:
        run(parameters, feedback)
    return str(raised.value)


def dialog_exec(replacement):
    """Processing's algorithm dialog with `replacement(dialog)` instead of its modal event loop (both spellings,
    exec and PyQt5's exec_, so that no code path can block the test)."""
    from contextlib import ExitStack

    stack = ExitStack()
    for name in ("exec", "exec_"):
        stack.enter_context(mock.patch(f"processing.gui.AlgorithmDialog.AlgorithmDialog.{name}", replacement,
                                       create=True))
    return stack


def dialog_parameters(layer: QgsRasterLayer) -> Dict[str, Any]:
    """The parameters Processing's real dialog passes when only the input is chosen (every other field at its
    default: the feature store at "[Save to temporary folder]")."""
    import processing

    dialog = processing.createAlgorithmDialog(ALGORITHM_ID, {"INPUT": layer})
    try:
        return dialog.createProcessingParameters()
    finally:
        dialog.close()


def add_raster(path: Path) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(path), path.stem)
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    return layer


def manifest(store: Path) -> dict:
    return json.loads((Path(store) / "manifest.json").read_text())


# -- 1. the default store -----------------------------------------------------------------------------------------


def test_dialog_default_store_goes_beside_the_raster_is_registered_and_its_tiles_load(encoder, browser_model,
                                                                                      tmp_path):
    from processing.gui.Postprocessing import handleAlgorithmResults

    raster = write_raster(tmp_path / "ortho.tif", gradient(300, 260))
    layer = add_raster(raster)
    parameters = dialog_parameters(layer)
    assert parameters["OUTPUT"] == QgsProcessing.TEMPORARY_OUTPUT  # what the dialog passes by default
    context = project_context()
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)

    results = run({**parameters, **SMALL_ENCODE}, context=context)

    store = tmp_path / "ortho.qsam"
    assert results["OUTPUT"] == str(store)
    assert not str(store).startswith(QgsProcessingUtils.tempFolder())
    assert manifest(store)["raster"]["path"] == str(raster.resolve())
    # registered for the layer and in the store list: the Segment dock finds it by the layer property
    assert layer.customProperty("quicksam/store") == str(store)
    assert str(store) in settings.known_stores()
    lookup = find_layer_store(layer)
    assert lookup.store is not None and lookup.store.root == store and lookup.found_by == "layer property"
    # what the dialog does once the run is over: the tile index joins the project, outlined (no fill)
    handleAlgorithmResults(algorithm, context, RecordingFeedback(), parameters=parameters)
    [tiles] = [candidate for candidate in QgsProject.instance().mapLayers().values()
               if isinstance(candidate, QgsVectorLayer)]
    assert tiles.source().startswith(str(store / "tile_index.gpkg"))
    assert tiles.featureCount() == 4
    [fill] = tiles.renderer().symbol().symbolLayers()
    assert fill.brushStyle() == Qt.BrushStyle.NoBrush or fill.fillColor().alpha() == 0
    assert tiles.labelsEnabled()  # the same style as the dock's Show tiles: tile ids on the outlines


def test_no_output_given_also_goes_beside_the_raster(encoder, tmp_path):
    """processing.run, batch rows, models and qgis_process that leave OUTPUT out."""
    raster = write_raster(tmp_path / "scene.tif", gradient(200, 200))

    results = run({"INPUT": str(raster)})

    assert results["OUTPUT"] == str(tmp_path / "scene.qsam")
    assert str(tmp_path / "scene.qsam") in settings.known_stores()


def test_a_store_folder_chosen_in_the_options_takes_every_default_store(encoder, tmp_path):
    (tmp_path / "rasters").mkdir()
    raster = write_raster(tmp_path / "rasters" / "scene.tif", gradient(200, 200))
    settings.STORE_FOLDER.set_value(str(tmp_path / "my stores"))
    try:
        results = run({"INPUT": str(raster)})
    finally:
        settings.STORE_FOLDER.reset()

    assert results["OUTPUT"] == str(tmp_path / "my stores" / "scene.qsam")
    assert not (tmp_path / "rasters" / "scene.qsam").exists()


def test_model_builder_model_left_at_the_temporary_folder_also_goes_beside_the_raster(encoder, tmp_path):
    import processing
    from test_processing_e2e import encode_model

    raster = write_raster(tmp_path / "modelled.tif", gradient(200, 200))
    layer = add_raster(raster)
    model = encode_model()
    store_parameter = [p.name() for p in model.parameterDefinitions()][1]

    results = processing.run(model, {"raster": str(raster), store_parameter: QgsProcessing.TEMPORARY_OUTPUT},
                             context=project_context(), feedback=RecordingFeedback())

    assert results[store_parameter] == str(tmp_path / "modelled.qsam")
    assert str(tmp_path / "modelled.qsam") in settings.known_stores()
    assert layer.customProperty("quicksam/store") == str(tmp_path / "modelled.qsam")


def test_default_store_never_touches_another_rasters_store(encoder, tmp_path):
    raster = write_raster(tmp_path / "scene.tif", gradient(200, 200))
    (tmp_path / "elsewhere").mkdir()
    other = write_raster(tmp_path / "elsewhere" / "other.tif", gradient(220, 200))
    taken = tmp_path / "scene.qsam"
    run({"INPUT": str(other), "OUTPUT": str(taken)})  # the name the default would take holds another raster's store
    before = file_states(taken)

    results = run({"INPUT": str(raster)})
    again = run({"INPUT": str(raster)})

    assert results["OUTPUT"] == again["OUTPUT"] == str(tmp_path / "scene-2.qsam")  # the second run resumes it
    assert manifest(tmp_path / "scene-2.qsam")["raster"]["path"] == str(raster.resolve())
    assert file_states(taken) == before


def test_raster_that_is_not_a_plain_file_goes_to_the_store_folder_setting(encoder, tmp_path):
    raster = write_raster(tmp_path / "zipped.tif", gradient(200, 200))
    archive = tmp_path / "rasters.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(raster, "zipped.tif")
    raster.unlink()
    settings.STORE_FOLDER.set_value(str(tmp_path / "my stores"))

    layer = QgsRasterLayer(f"/vsizip/{archive}/zipped.tif", "zipped", "gdal")
    assert layer.isValid()

    results = run({"INPUT": layer})

    assert results["OUTPUT"] == str(tmp_path / "my stores" / "zipped.qsam")
    assert (tmp_path / "my stores" / "zipped.qsam" / "manifest.json").is_file()


def test_store_folder_setting_defaults_to_a_quicksam_folder_of_the_user():
    settings.STORE_FOLDER.reset()
    folder = settings.encode_store_folder()
    assert folder.name == "QuickSAM" and folder.is_absolute()
    assert PLUGIN_DIR not in folder.parents


# -- 2. no encoder environment ------------------------------------------------------------------------------------

HIDE_RASTERIO = """
import importlib.abc, sys

class HideRasterio(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "rasterio" or name.startswith("rasterio."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, HideRasterio())
"""


@pytest.fixture
def python_without_rasterio(tmp_path, monkeypatch):
    """Encoder processes started by the test cannot import rasterio (a sitecustomize hides it), as in a Python
    that lacks the encoder's packages."""
    folder = tmp_path / "hide-rasterio"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(HIDE_RASTERIO)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    return folder


def test_cli_names_the_missing_package_and_the_setup_in_one_line(python_without_rasterio, tmp_path):
    raster = write_raster(tmp_path / "rgb.tif", gradient(64, 64))
    result = subprocess.run(cli_command("encode", raster, tmp_path / "store", "--random-weights"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("quicksam: error: ") and "rasterio" in line and SETUP in line
    assert "unexpected" not in line and "report" not in line
    assert sys.executable in line


def test_algorithm_says_to_run_the_setup_when_a_package_is_missing(encoder, python_without_rasterio, tmp_path):
    raster = write_raster(tmp_path / "rgb.tif", gradient(64, 64))
    feedback = RecordingFeedback()

    message = run_failing({"INPUT": str(raster), "OUTPUT": str(tmp_path / "store")}, feedback)

    assert "\n" not in message
    assert "'rasterio'" in message and SETUP in message
    assert not re.search(r"unexpected|report it|ModuleNotFoundError|quicksam: error", message), message


def test_menu_dialog_offers_the_setup_after_such_a_failure(encoder, python_without_rasterio, browser_model,
                                                           tmp_path):
    """Raster > QuickSAM > Encode raster…: a run in the dialog fails for want of rasterio; once the dialog is
    closed the user is asked, and answering yes opens the set-up dialog."""
    raster = write_raster(tmp_path / "rgb.tif", gradient(64, 64))
    layer = add_raster(raster)

    def exec_runs_the_algorithm(dialog):
        with pytest.raises(QgsProcessingException):
            run({"INPUT": layer, "OUTPUT": str(tmp_path / "store")})
        return 0

    with dialog_exec(exec_runs_the_algorithm), \
            mock.patch.object(QMessageBox, "question", return_value=QMessageBox.StandardButton.Yes) as asked, \
            mock.patch.object(encoder, "open_setup_dialog") as open_setup:
        encoder.open_encode_dialog()
    asked.assert_called_once()
    assert "set-up" in asked.call_args.args[2]
    open_setup.assert_called_once_with()


def test_menu_dialog_does_not_offer_the_setup_after_a_good_run(encoder, browser_model, tmp_path):
    raster = write_raster(tmp_path / "rgb.tif", gradient(64, 64))

    def exec_runs_the_algorithm(dialog):
        run({"INPUT": str(raster), "OUTPUT": str(tmp_path / "store")})
        return 0

    with dialog_exec(exec_runs_the_algorithm), \
            mock.patch.object(QMessageBox, "question") as asked:
        encoder.open_encode_dialog()
    asked.assert_not_called()


# -- 4. red, green and blue bands ----------------------------------------------------------------------------------


def test_red_green_blue_are_three_single_band_fields(encoder):
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
    for name in ("RED_BAND", "GREEN_BAND", "BLUE_BAND"):
        band = algorithm.parameterDefinition(name)
        assert isinstance(band, QgsProcessingParameterBand)
        assert not band.allowMultiple() and band.parentLayerParameterName() == "INPUT"
    old = algorithm.parameterDefinition("BANDS")
    assert old.flags() & QgsProcessingParameterDefinition.Flag.FlagHidden  # old scripts still run


def test_bands_chosen_3_2_1_are_fed_in_that_order(encoder, tmp_path):
    raster = write_raster(tmp_path / "four.tif", gradient(64, 64, bands=4))
    store = tmp_path / "store"

    run({"INPUT": str(raster), "RED_BAND": 3, "GREEN_BAND": 2, "BLUE_BAND": 1, "OUTPUT": str(store)})

    assert manifest(store)["preprocessing"]["bands"] == [3, 2, 1]


def test_bands_default_to_the_layers_renderer(encoder, tmp_path):
    raster = write_raster(tmp_path / "landsat_like.tif", gradient(64, 64, bands=4))
    layer = add_raster(raster)
    layer.setRenderer(QgsMultiBandColorRenderer(layer.dataProvider(), 4, 3, 2))
    store = tmp_path / "store"

    run({"INPUT": layer, "GREEN_BAND": 1, "OUTPUT": str(store)})

    assert manifest(store)["preprocessing"]["bands"] == [4, 1, 2]


def test_single_band_raster_keeps_the_encoders_grey(encoder, tmp_path):
    raster = write_raster(tmp_path / "grey.tif", gradient(64, 64, bands=1))
    by_cli = tmp_path / "by_cli"
    result = subprocess.run(cli_command("encode", raster, by_cli, "--random-weights", "--tile-size=256",
                                        "--overlap=32"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

    run({"INPUT": str(raster), "OUTPUT": str(tmp_path / "store")})

    assert manifest(tmp_path / "store")["preprocessing"] == manifest(by_cli)["preprocessing"]


# -- 6. the dialog's words ----------------------------------------------------------------------------------------


def test_offline_checkpoint_error_names_the_checkpoint_field_once(encoder, tmp_path, monkeypatch):
    config = tmp_path / "config"
    config.mkdir()
    (config / "checkpoints.json").write_text(json.dumps({"format_version": 1, "checkpoints": {
        "offline": {"model": "sam2.1_hiera_t", "url": "http://127.0.0.1:9/offline.pt"}}}))
    monkeypatch.setenv("QUICKSAM_CONFIG_DIR", str(config))
    raster = write_raster(tmp_path / "rgb.tif", gradient(64, 64))
    feedback = RecordingFeedback()

    message = run_failing({"INPUT": str(raster), "OUTPUT": str(tmp_path / "store"), "RANDOM_WEIGHTS": False,
                           "CHECKPOINT": "offline"}, feedback)

    assert "Checkpoint field" in message and "--checkpoint" not in message
    assert not message.startswith("quicksam:")
    assert not [line for line in feedback.log if "cannot download" in line], "the error is shown twice"


def cli_options_in_messages() -> List[Tuple[str, str]]:
    """(file, text) of every string in encoder/ and core/ that names a `quicksam encode` option."""
    found = []
    for path in sorted((PLUGIN_DIR / "encoder").rglob("*.py")) + sorted((PLUGIN_DIR / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr):
                text = "".join(part.value if isinstance(part, ast.Constant) else "{x}" for part in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            if re.search(r"--[a-z]", text) and "--progress-json" not in text:
                found.append((path.name, text))
    return found


def test_every_cli_option_in_encoder_messages_is_worded_as_a_dialog_field(qgis_app):
    messages = cli_options_in_messages()
    assert any("--checkpoint PATH" in text for _, text in messages)  # the scan sees them
    for name, text in messages:
        assert not re.search(r"--[a-z]", in_dialog_words(text)), (name, text, in_dialog_words(text))


# -- 10. the dialog's size and the help texts ------------------------------------------------------------------------


def test_menu_dialog_is_large_enough_for_its_fields(encoder, browser_model, tmp_path):
    raster = write_raster(tmp_path / "rgb.tif", gradient(64, 64))
    add_raster(raster)
    shown = {}

    def exec_shows(dialog):
        dialog.show()
        QgsApplication.processEvents()
        shown["size"] = dialog.size()
        shown["panels"] = [area for area in dialog.mainWidget().findChildren(QScrollArea) if area.widget()]
        shown["clipped"] = [area.horizontalScrollBar().isVisible() for area in shown["panels"]]
        return 0

    with dialog_exec(exec_shows):
        encoder.open_encode_dialog()
    assert shown["size"].width() >= MINIMUM_SIZE.width() and shown["size"].height() >= MINIMUM_SIZE.height()
    assert shown["panels"] and not any(shown["clipped"]), "the parameter fields are cut off"


def user_visible_help(algorithm) -> List[str]:
    texts = [algorithm.shortHelpString(), algorithm.shortDescription(), algorithm.displayName()]
    texts += [text for parameter in algorithm.parameterDefinitions()
              for text in (parameter.description(), parameter.help())]
    return texts


def test_no_help_text_points_at_repository_paths(encoder):
    algorithms = QgsApplication.processingRegistry().providerById("quicksam").algorithms()
    assert {algorithm.name() for algorithm in algorithms} >= {"encoderaster", "segmentprompts", "segmentall"}
    for algorithm in algorithms:
        for text in user_visible_help(algorithm):
            assert not re.search(r"(?<![\w/.])docs/", text or ""), (algorithm.id(), text)
        url = QUrl(algorithm.helpUrl())
        assert url.isLocalFile(), (algorithm.id(), algorithm.helpUrl())
        guide = Path(url.toLocalFile())
        assert guide.is_file() and guide.parent == PLUGIN_DIR / "docs", guide
