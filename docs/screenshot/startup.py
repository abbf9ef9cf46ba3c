"""Run by the real QGIS desktop (`qgis --code startup.py`): open a raster, the QuickSAM dock, segment
a few objects with the dock's own controller, and save a picture of the main window.

Environment: QUICKSAM_SHOT_RASTER, QUICKSAM_SHOT_STORE, QUICKSAM_SHOT_PNG (see make_screenshot.sh);
QUICKSAM_SHOT_TILE_INDEX=1 also shows the store's tile index (every level of a multi-scale store).
"""

import os

from qgis.core import QgsMultiBandColorRenderer, QgsPointXY, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication
from qgis.utils import iface, loadPlugin, plugins, startPlugin

RASTER = os.environ["QUICKSAM_SHOT_RASTER"]
STORE = os.environ["QUICKSAM_SHOT_STORE"]
PNG = os.environ["QUICKSAM_SHOT_PNG"]
#: Prompts as fractions of the raster extent: accepted objects, then one object left in progress.
ACCEPTED = [[(0.30, 0.35, 1)], [(0.62, 0.55, 1), (0.70, 0.60, 0)]]
IN_PROGRESS = [(0.45, 0.80, 1)]


def at(layer, fx, fy):
    """A point of the raster at fractions of its extent, in the canvas CRS (the dock's input)."""
    extent = layer.extent()
    point = QgsPointXY(extent.xMinimum() + fx * extent.width(), extent.yMaximum() - fy * extent.height())
    return iface.mapCanvas().mapSettings().layerToMapCoordinates(layer, point)


def segment(controller, layer, prompts):
    for fx, fy, label in prompts:
        if not controller.add_point(at(layer, fx, fy), label):
            raise RuntimeError("prompt refused")
        if not controller.wait_idle(60):
            raise RuntimeError("decoding did not finish")


def run():
    layer = QgsRasterLayer(RASTER, "Landsat 7 (bands 3,2,1)")
    layer.setRenderer(QgsMultiBandColorRenderer(layer.dataProvider(), 3, 2, 1))
    QgsProject.instance().addMapLayer(layer)
    iface.setActiveLayer(layer)
    canvas = iface.mapCanvas()
    canvas.setExtent(canvas.mapSettings().layerExtentToOutputExtent(layer, layer.extent()))
    if "quicksam" not in plugins:  # a fresh profile may not have started it yet
        loadPlugin("quicksam")
        startPlugin("quicksam")
    plugin = plugins["quicksam"]
    missing = {"QuickSamSetupAction", "QuickSamSegmentAction"} - {action.objectName() for action in plugin.actions}
    if missing:  # initGui stopped half-way (QGIS shows the error in a dialog nobody reads here)
        raise RuntimeError(f"the plugin did not start completely; missing actions: {sorted(missing)}")
    plugin.segment_action.trigger()
    controller = plugin.dock.controller
    controller.set_raster_layer(layer)
    controller.choose_store(STORE)
    if os.environ.get("QUICKSAM_SHOT_TILE_INDEX"):
        from quicksam.core.store import FeatureStore
        from quicksam.ui.layers import open_tile_index_layer

        QgsProject.instance().addMapLayer(open_tile_index_layer(FeatureStore.open(STORE)))
    controller.activate_tool()
    for prompts in ACCEPTED:
        segment(controller, layer, prompts)
        if controller.accept() is None:
            raise RuntimeError(f"accept failed; segments: {len(controller.session.segments)}")
    segment(controller, layer, IN_PROGRESS)
    iface.mapCanvas().refreshAllLayers()
    QTimer.singleShot(4000, save_and_quit)


def save_and_quit():
    QApplication.processEvents()
    iface.mainWindow().grab().save(PNG)
    QTimer.singleShot(500, QApplication.instance().quit)


def run_or_quit():
    try:
        run()
    except Exception:  # noqa: BLE001 - a failed screenshot must end QGIS with the reason logged
        import traceback

        with open(PNG + ".log", "w") as handle:
            traceback.print_exc(file=handle)
        QApplication.instance().quit()


QTimer.singleShot(3000, run_or_quit)
