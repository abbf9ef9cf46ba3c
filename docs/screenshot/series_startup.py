"""Run by the real QGIS desktop (`qgis --code series_startup.py`, from series_screenshot.sh): the Landsat raster
(its bands are the frames), the tracked objects' GeoPackages (temporal from their stored style), the QuickSAM dock
on the series store, and the Temporal Controller stepped to two frames, each saved as a picture.

Environment: QUICKSAM_SHOT_RASTER, QUICKSAM_SHOT_STORE, QUICKSAM_SHOT_TRACKS (comma-separated GeoPackages),
QUICKSAM_SHOT_DATES (the frames' dates), QUICKSAM_SHOT_PNG (path prefix: <prefix><frame>.png).
"""

import os
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsDateTimeRange,
    QgsInterval,
    QgsProject,
    QgsRasterLayer,
    QgsTemporalNavigationObject,
)
from qgis.PyQt.QtCore import QDate, QDateTime, QTime, QTimer
from qgis.PyQt.QtWidgets import QApplication, QDockWidget
from qgis.utils import iface, loadPlugin, plugins, startPlugin

RASTER = os.environ["QUICKSAM_SHOT_RASTER"]
STORE = os.environ["QUICKSAM_SHOT_STORE"]
TRACKS = os.environ["QUICKSAM_SHOT_TRACKS"].split(",")
DATES = os.environ["QUICKSAM_SHOT_DATES"].split(",")
PNG = os.environ["QUICKSAM_SHOT_PNG"]
LOG = Path(STORE).parent / "shot.log"
FRAMES_SHOWN = (1, 4)


def day(text):
    return QDateTime(QDate.fromString(text, "yyyy-MM-dd"), QTime(0, 0))


def add_layers():
    raster = QgsRasterLayer(RASTER, "Landsat 7 (its 6 bands are the frames)")
    properties = raster.temporalProperties()   # the frames' dates: the dock follows the Temporal Controller
    properties.setIsActive(True)
    properties.setFixedTemporalRange(QgsDateTimeRange(day(DATES[0]), day("2001-09-01")))
    QgsProject.instance().addMapLayer(raster)
    for path in TRACKS:
        # as a user adds it (Layer > Add Layer): QGIS applies the GeoPackage's default style, temporal settings too
        layer = iface.addVectorLayer(f"{path}|layername=tracks", f"tracked object ({Path(path).stem})", "ogr")
        if layer is None or not layer.isValid() or not layer.temporalProperties().isActive():
            raise RuntimeError(f"{path}: not valid or not temporal when added as a user adds it")
        layer.renderer().symbol().setOpacity(0.6)
    iface.setActiveLayer(raster)
    canvas = iface.mapCanvas()
    canvas.setExtent(raster.extent())
    return raster


def open_dock(raster):
    if "quicksam" not in plugins:
        loadPlugin("quicksam")
        startPlugin("quicksam")
    plugin = plugins["quicksam"]
    plugin.segment_action.trigger()
    plugin.dock.controller.set_raster_layer(raster)
    plugin.dock.controller.choose_store(STORE)


def navigation():
    controller = iface.mapCanvas().temporalController()
    controller.setTemporalExtents(QgsDateTimeRange(day(DATES[0]), day("2001-09-01")))
    controller.setFrameDuration(QgsInterval(0, 1, 0, 0, 0, 0, 0))   # one month
    # QGIS 3.22 has the enum on the navigation object only
    modes = getattr(Qgis, "TemporalNavigationMode", None) or QgsTemporalNavigationObject.NavigationMode
    controller.setNavigationMode(modes.Animated)
    for dock in iface.mainWindow().findChildren(QDockWidget):
        if dock.windowTitle() == "Temporal Controller" or dock.objectName() == "Temporal Controller":
            dock.show()
            dock.raise_()
    return controller


def step(controller, frames):
    if not frames:
        QTimer.singleShot(500, QApplication.instance().quit)
        return
    frame = frames[0]
    controller.setCurrentFrameNumber(frame)
    iface.mapCanvas().refreshAllLayers()

    def save():
        QApplication.processEvents()
        iface.mainWindow().grab().save(f"{PNG}{frame}.png")
        step(controller, frames[1:])

    QTimer.singleShot(3000, save)


def run():
    raster = add_layers()
    open_dock(raster)
    step(navigation(), list(FRAMES_SHOWN))


def run_or_quit():
    try:
        run()
    except Exception:  # noqa: BLE001 - a failed screenshot must end QGIS with the reason logged
        import traceback

        with open(LOG, "w") as handle:
            traceback.print_exc(file=handle)
        QApplication.instance().quit()


QTimer.singleShot(3000, run_or_quit)
