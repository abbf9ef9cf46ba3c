"""Run by the real QGIS desktop (`qgis --code walkthrough.py`, see walkthrough.sh): what a GIS user does
from the plugin zip to the first polygon, with nothing but QGIS's own windows.

1. Install the zip with QGIS's plugin installer (`pyplugin_installer`'s `installFromZipFile`, the code
   behind *Plugins > Manage and Install Plugins > Install from ZIP*); QGIS enables the plugin.
2. *Raster > QuickSAM > Set up…*: **Install / Repair** with "ONNX Runtime for QGIS" ticked (real pip
   against the package index, into the profile), then **Choose existing Python…** with the encoder
   Python given in QUICKSAM_WALK_ENCODER_PYTHON (building a new one is tests/test_envs_encoder.py's
   job; it takes minutes and 6 GB).
3. The raster is added, *Raster > QuickSAM > Encode raster…* opens Processing's dialog; the only field
   changed is "random weights" (no checkpoint can be downloaded here); **Run**.
4. *Segment…* opens the dock; the point tool is chosen with the dock's button and the canvas gets a real
   mouse click; **Accept**.

5. A few checks of what users of the desktop hit before (the dock's status with the Pan tool, the
   tile outlines, the segment-everything dialog's store), then QGIS quits with the dock open.

With QUICKSAM_WALK_SESSION=restart the script only reports what a second QGIS session on the same
profile restores (the dock, ONNX Runtime from the profile).

Each step saves a picture of the whole screen into QUICKSAM_WALK_IMAGES (install-N-*.png) and the
script writes what it saw to QUICKSAM_WALK_REPORT (JSON), then quits QGIS. A failing step writes its
traceback into the report and quits too.
"""

import json
import os
import sys
import time
import traceback
from pathlib import Path

from qgis.core import QgsMultiBandColorRenderer, QgsPointXY, QgsProject, QgsVectorLayer, QgsWkbTypes
from qgis.PyQt.QtCore import QPoint, Qt, QTimer
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QApplication
from qgis.utils import active_plugins, iface, plugins

ZIP = os.environ["QUICKSAM_WALK_ZIP"]
RASTER = os.environ["QUICKSAM_WALK_RASTER"]
ENCODER_PYTHON = os.environ["QUICKSAM_WALK_ENCODER_PYTHON"]
IMAGES = Path(os.environ["QUICKSAM_WALK_IMAGES"])
REPORT = Path(os.environ["QUICKSAM_WALK_REPORT"])
POLL_MS = 250
#: Where the user clicks, as fractions of the raster's extent (x from the left, y from the top).
CLICK = (0.30, 0.35)

report = {"steps": [], "timings_s": {}}


def shot(name):
    """The whole screen (dialogs included) as IMAGES/install-<name>.png."""
    QApplication.processEvents()
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / f"install-{name}.png"
    QApplication.primaryScreen().grabWindow(0).save(str(path))
    report.setdefault("images", []).append(path.name)


def action(object_name):
    return next(a for a in plugins["quicksam"].actions if a.objectName() == object_name)


def plugin_folder_files():
    """Files of the installed plugin folder with size and mtime (Python's own __pycache__ left out)."""
    folder = Path(sys.modules["quicksam"].__file__).parent
    return {str(p.relative_to(folder)): [p.stat().st_size, p.stat().st_mtime_ns]
            for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


# -- the steps: each returns True when done (polled every POLL_MS), or raises -----------------------

def install_zip():
    import pyplugin_installer

    iface.mainWindow().setGeometry(0, 0, 1440, 900)  # no window manager under Xvfb to maximise it
    report["loaded_before_install"] = "quicksam" in plugins
    started = time.monotonic()
    pyplugin_installer.instance().installFromZipFile(ZIP)
    report["timings_s"]["install_zip"] = round(time.monotonic() - started, 2)
    report["zip_bytes"] = os.path.getsize(ZIP)
    report["active_after_install"] = "quicksam" in active_plugins
    report["module_file"] = __import__("quicksam").__file__
    report["plugin_files_after_install"] = plugin_folder_files()
    return True


def open_setup():
    action("QuickSamSetupAction").trigger()
    dialog = plugins["quicksam"].setup_dialog
    dialog.move(20, 40)
    report["setup_status_before"] = dialog.statusView.toPlainText()
    shot("1-setup")
    dialog.encoderCheck.setChecked(False)
    dialog.runtimeCheck.setChecked(True)
    dialog.installButton.click()
    report["t_runtime"] = time.monotonic()
    return True


def setup_finished(key):
    def wait():
        dialog = plugins["quicksam"].setup_dialog
        if dialog.task is not None:
            return False
        report["timings_s"][key] = round(time.monotonic() - report.pop("t_" + key), 1)
        report["setup_message_" + key] = dialog.messageLabel.text()
        return True
    return wait


def choose_encoder_python():
    from quicksam.ui.setup.context import setup_request

    dialog = plugins["quicksam"].setup_dialog
    report["t_encoder"] = time.monotonic()
    dialog.start(setup_request(runtime=False, encoder=True, existing_python=ENCODER_PYTHON,
                               locations=dialog.locations))
    return True


def close_setup():
    dialog = plugins["quicksam"].setup_dialog
    report["setup_status_after"] = dialog.statusView.toPlainText()
    shot("2-setup-done")
    dialog.close()
    return True


def add_raster():
    layer = iface.addRasterLayer(RASTER, Path(RASTER).stem)
    layer.setRenderer(QgsMultiBandColorRenderer(layer.dataProvider(), 3, 2, 1))  # natural colour, as a user sets it
    layer.triggerRepaint()
    iface.setActiveLayer(layer)
    report["raster_crs"] = layer.crs().authid()
    QTimer.singleShot(0, lambda: open_modal("QuickSamEncodeRasterAction"))
    return True


def open_modal(action_name):
    """Trigger an action whose dialog runs modally; returns (and records it) once the user closed it. These
    steps are polled from inside that dialog's event loop: the next ones wait for this."""
    state["modal"] = action_name
    action(action_name).trigger()
    state["modal"] = None


def algorithm_dialog():
    for widget in QApplication.topLevelWidgets():
        if widget.isVisible() and type(widget).__name__ == "AlgorithmDialog":
            return widget
    return None


def run_encode():
    dialog = algorithm_dialog()
    if dialog is None:
        return False
    dialog.move(20, 40)
    report["encode_dialog_size"] = [dialog.width(), dialog.height()]
    report["encode_defaults"] = {key: str(value) for key, value in dialog.createProcessingParameters().items()}
    dialog.setParameters({"RANDOM_WEIGHTS": True})
    shot("3-encode")
    report["t_encode"] = time.monotonic()
    dialog.runButton().click()
    return True


def encode_finished():
    dialog = algorithm_dialog()
    if dialog is None or not dialog.results():
        return False
    report["timings_s"]["encode"] = round(time.monotonic() - report.pop("t_encode"), 1)
    report["encode_results"] = {key: str(value) for key, value in dialog.results().items()}
    manifest = json.loads((Path(report["encode_results"]["OUTPUT"]) / "manifest.json").read_text())
    report["store_bands"] = manifest["preprocessing"]["bands"]
    shot("4-encoded")
    dialog.close()
    return True


def open_dock():
    if state.get("modal"):
        return False
    action("QuickSamSegmentAction").trigger()
    dock = plugins["quicksam"].dock
    QApplication.processEvents()
    report["dock_store"] = str(dock.controller.store.root) if dock.controller.store is not None else None
    return True


def click_object():
    dock = plugins["quicksam"].dock
    controller = dock.controller
    if controller.store is None:
        raise RuntimeError("the dock found no store for the raster")
    if not dock.toolButton.isEnabled():
        return False
    canvas = iface.mapCanvas()
    if not dock.toolButton.isChecked():
        dock.toolButton.click()  # the dock's Segment tool button, as the user chooses it
        QApplication.processEvents()
    report["map_tool"] = type(canvas.mapTool()).__name__

    layer = iface.activeLayer()
    extent = layer.extent()
    point = QgsPointXY(extent.xMinimum() + CLICK[0] * extent.width(), extent.yMaximum() - CLICK[1] * extent.height())
    point = canvas.mapSettings().layerToMapCoordinates(layer, point)
    pixel = canvas.getCoordinateTransform().transform(point)
    where = QPoint(int(pixel.x()), int(pixel.y()))
    QTest.mouseMove(canvas.viewport(), where)
    QTest.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, where)
    report["t_click"] = time.monotonic()
    return True


def decoded():
    controller = plugins["quicksam"].dock.controller
    if not controller.session.prompts.points or not controller.wait_idle(0.05) or \
            not controller.session.has_result():
        return False
    report["timings_s"]["click_to_mask"] = round(time.monotonic() - report.pop("t_click"), 2)
    shot("5-click")
    report["tool_before_accept"] = [controller.tool_active, controller.tool is iface.mapCanvas().mapTool()]
    plugins["quicksam"].dock.acceptButton.click()
    report["tool_after_accept"] = [controller.tool_active, controller.tool is iface.mapCanvas().mapTool(),
                                   type(iface.mapCanvas().mapTool()).__name__]
    return True


def accepted():
    report.setdefault("status_after_accept", plugins["quicksam"].dock.statusLabel.text())
    layers = [layer for layer in QgsProject.instance().mapLayers().values()
              if isinstance(layer, QgsVectorLayer) and layer.featureCount() > 0 and "tiles" not in layer.name()]
    if not layers:
        return False
    report["output_layers"] = [{"name": layer.name(), "features": layer.featureCount(),
                                "provider": layer.providerType(), "source": layer.source(),
                                "crs": layer.crs().authid(),
                                "geometry": QgsWkbTypes.geometryDisplayString(layer.geometryType()),
                                "area": sum(f.geometry().area() for f in layer.getFeatures())}
                               for layer in layers]
    iface.mapCanvas().refreshAllLayers()
    return True


def last_picture():
    shot("6-polygon")
    return True


def desktop_checks():
    """What the desktop findings of issue 10 were about, as the user sees it after the first polygon."""
    dock = plugins["quicksam"].dock
    iface.actionPan().trigger()  # another map tool: the dock must not say "ready: click"
    QApplication.processEvents()
    report["map_tool_after_pan"] = type(iface.mapCanvas().mapTool()).__name__
    report["status_right_after_pan"] = dock.statusLabel.text()
    report["controller_after_pan"] = [dock.controller.tool_active, dock.controller.status,
                                      dock.controller.tool is iface.mapCanvas().mapTool()]
    report["status_with_pan_tool"] = dock.statusLabel.text()
    dock.showTilesButton.click()
    QApplication.processEvents()
    tiles = [layer for layer in QgsProject.instance().mapLayers().values()
             if isinstance(layer, QgsVectorLayer) and layer.geometryType() == QgsWkbTypes.GeometryType.PolygonGeometry
             and layer.featureCount() > 0 and "tile" in layer.name().lower()]
    report["tile_layers"] = [{"name": layer.name(), "labels": layer.labelsEnabled(),
                              "fill_visible": [symbol_layer.brushStyle() != Qt.BrushStyle.NoBrush
                                               and symbol_layer.fillColor().alpha() > 0
                                               for symbol_layer in layer.renderer().symbol().symbolLayers()]}
                             for layer in tiles]
    QTimer.singleShot(0, lambda: open_modal("QuickSamSegmentAllAction"))
    return True


def segment_all_prefilled():
    dialog = algorithm_dialog()
    if dialog is None:
        return False
    from processing.gui.AlgorithmDialogBase import AlgorithmDialogBase

    try:
        values = dialog.createProcessingParameters()
        report["segment_all_defaults"] = {key: str(value) for key, value in values.items()}
    except AlgorithmDialogBase.InvalidParameterValue as exc:  # a required field left empty
        report["segment_all_defaults"] = {"invalid": exc.args[0].name()}
    dialog.close()
    return True


def quit_with_the_dock_open():
    if state.get("modal"):
        return False
    report["dock_visible_at_quit"] = plugins["quicksam"].dock.isVisible()
    report["plugin_files_at_end"] = plugin_folder_files()
    return True


def after_restart():
    """The second session on the same profile: what QGIS restores and what the plugin finds at start."""
    import importlib.util

    report["active"] = "quicksam" in active_plugins
    dock = plugins["quicksam"].dock if "quicksam" in plugins else None
    report["dock_visible"] = bool(dock is not None and dock.isVisible())
    spec = importlib.util.find_spec("onnxruntime")
    report["onnxruntime"] = spec.origin if spec is not None else None
    shot("7-restarted")
    return True


STEPS = [install_zip, open_setup, setup_finished("runtime"), choose_encoder_python, setup_finished("encoder"),
         close_setup, add_raster, run_encode, encode_finished, open_dock, click_object, decoded, accepted,
         last_picture, desktop_checks, segment_all_prefilled, quit_with_the_dock_open]
if os.environ.get("QUICKSAM_WALK_SESSION") == "restart":
    STEPS = [after_restart]
DEADLINE_S = float(os.environ.get("QUICKSAM_WALK_TIMEOUT", "600"))
state = {"step": 0, "started": time.monotonic()}


def finish(error=None):
    report["error"] = error
    REPORT.write_text(json.dumps(report, indent=1))
    if error is None:  # File > Exit, as a user quits: QGIS saves its window state (the docks) on the way
        QgsProject.instance().removeAllMapLayers()  # no "temporary layers will be lost?" question on the way out
        QgsProject.instance().setDirty(False)
        QTimer.singleShot(500, iface.actionExit().trigger)
    else:
        QTimer.singleShot(500, QApplication.instance().quit)


def poll():
    try:
        if time.monotonic() - state["started"] > DEADLINE_S:
            raise TimeoutError(f"step {STEPS[state['step']].__name__} did not finish in time")
        while state["step"] < len(STEPS) and STEPS[state["step"]]():
            report["steps"].append(STEPS[state["step"]].__qualname__.split(".")[0])
            state["step"] += 1
        if state["step"] == len(STEPS):
            finish()
            return
    except Exception:  # noqa: BLE001 - the walkthrough must end QGIS with the reason recorded
        finish(traceback.format_exc())
        return
    QTimer.singleShot(POLL_MS, poll)


QTimer.singleShot(3000, poll)
