"""The dialog of Raster > QuickSAM > Encode raster…: Processing's own dialog of quicksam:encoderaster, opened large
enough for its fields, and an offer to open the set-up when a run in it failed because the encoder's Python is
missing or lacks a package (QGIS layer)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from qgis.gui import QgsMapCanvas
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtWidgets import QMessageBox, QWidget

from .. import algorithm_dialogs
from ..i18n import tr
from .encoder_events import environment_failures

ENCODE_ALGORITHM_ID = "quicksam:encoderaster"
#: Wide enough for the longest field labels beside the help panel, and short enough for a 1366 x 768 screen.
MINIMUM_SIZE = QSize(900, 640)


def open_encode_dialog(parent: QWidget, open_setup: Callable[[], None], parameters: Optional[Dict[str, Any]] = None,
                       canvas: Optional[QgsMapCanvas] = None) -> Dict[str, Any]:
    """Run the encode dialog (modal, at least MINIMUM_SIZE, `parameters` filled in) and return the results of its
    last successful run ({} if none); once it is closed, when a run in it failed for want of an encoder
    environment, offer to open the set-up (`open_setup`)."""
    failures_before = environment_failures()
    results = algorithm_dialogs.run_algorithm_dialog(ENCODE_ALGORITHM_ID, parameters or {}, canvas,
                                                     minimum_size=MINIMUM_SIZE)
    if environment_failures() > failures_before and offer_setup(parent):
        open_setup()
    return results


def offer_setup(parent: QWidget) -> bool:
    """Ask whether to open QuickSAM's set-up now; True for yes."""
    answer = QMessageBox.question(
        parent, tr("QuickSAM"),
        tr("The encoder could not run: its Python is missing or lacks a package it needs (PyTorch, SAM 2, "
           "rasterio). Open QuickSAM's set-up now to build or repair the encoder's environment?"),
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes)
    return answer == QMessageBox.StandardButton.Yes
