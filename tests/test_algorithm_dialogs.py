"""Processing's real algorithm dialog as QuickSAM's menu and dock open it: run, then closed by the user.

pytest-qgis's interface has no browser model, which Processing's dialog asks for; a real
QgsBrowserGuiModel stands in. The deferred delete the desktop's event loop processes when the dialog
is closed after a run is forced here with `sendPostedEvents`, so the test does what the desktop does.
"""

from __future__ import annotations

import pytest
from qgis.core import QgsFeature, QgsGeometry, QgsProject, QgsVectorLayer
from qgis.gui import QgsBrowserGuiModel, QgsMapToolPan
from qgis.PyQt.QtCore import QCoreApplication, QEvent, QSize, QTimer
from qgis.PyQt.QtWidgets import QApplication


@pytest.fixture
def points(qgis_app, qgis_iface, qgis_processing, monkeypatch):
    model = QgsBrowserGuiModel()
    monkeypatch.setattr(qgis_iface, "browserModel", lambda: model, raising=False)
    layer = QgsVectorLayer("Point?crs=EPSG:3857", "points", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromWkt("POINT(0 0)"))
    layer.dataProvider().addFeatures([feature])
    QgsProject.instance().addMapLayer(layer)
    yield layer
    QgsProject.instance().removeMapLayer(layer.id())


def visible_dialog():
    return next(w for w in QApplication.topLevelWidgets() if type(w).__name__ == "AlgorithmDialog" and w.isVisible())


def user_runs_then_closes(runs: int = 1) -> list:
    """Click Run `runs` times, then Close, as a user does; what the dialog looked like."""
    seen = []

    def run(left: int) -> None:
        dialog = visible_dialog()
        seen.append(dialog.minimumSize())
        dialog.runButton().click()
        QTimer.singleShot(800, (lambda: run(left - 1)) if left > 1 else close)

    def close() -> None:
        visible_dialog().close()
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)  # as the desktop's loop does

    QTimer.singleShot(100, lambda: run(runs))
    return seen


def test_closing_the_dialog_after_a_run_returns_the_results_instead_of_an_error(points, qgis_iface):
    from quicksam.ui.algorithm_dialogs import run_algorithm_dialog

    seen = user_runs_then_closes(runs=2)
    results = run_algorithm_dialog("native:buffer", {"INPUT": points, "DISTANCE": 1}, qgis_iface.mapCanvas(),
                                   minimum_size=QSize(700, 640))
    assert seen == [QSize(700, 640)] * 2
    assert set(results) == {"OUTPUT"}  # the last run's results (processing.execAlgorithmDialog raised here)


def test_closing_without_running_returns_nothing_and_keeps_the_map_tool(points, qgis_iface):
    from quicksam.ui.algorithm_dialogs import run_algorithm_dialog

    canvas = qgis_iface.mapCanvas()
    pan = QgsMapToolPan(canvas)
    canvas.setMapTool(pan)
    QTimer.singleShot(100, lambda: visible_dialog().close())
    assert run_algorithm_dialog("native:buffer", {"INPUT": points}, canvas) == {}
    assert canvas.mapTool() is pan
