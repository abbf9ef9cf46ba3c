"""The dialog of Raster > QuickSAM > Encode raster…: Processing's own dialog of quicksam:encoderaster, opened large
enough for its fields, and an offer to open the set-up when a run in it failed because the encoder's Python is
missing or lacks a package (QGIS layer)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtWidgets import QDialog, QMessageBox, QWidget

from ..i18n import tr
from .encoder_events import environment_failures

ENCODE_ALGORITHM_ID = "quicksam:encoderaster"
#: Wide enough for the longest field labels beside the help panel, and short enough for a 1366 x 768 screen.
MINIMUM_SIZE = QSize(900, 640)


def create_encode_dialog(parameters: Optional[Dict[str, Any]] = None) -> Optional[QDialog]:
    """Processing's dialog of quicksam:encoderaster with `parameters` filled in, at least MINIMUM_SIZE; None when
    Processing does not know the algorithm."""
    import processing  # QGIS's Processing plugin; imported on use, it is not needed to load the plugin

    dialog = processing.createAlgorithmDialog(ENCODE_ALGORITHM_ID, parameters or {})
    if dialog is None:
        return None
    dialog.setMinimumSize(MINIMUM_SIZE)
    dialog.resize(dialog.size().expandedTo(MINIMUM_SIZE))
    return dialog


def open_encode_dialog(parent: QWidget, open_setup: Callable[[], None],
                       parameters: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run the encode dialog (modal) and return its results; once it is closed, when a run in it failed for want
    of an encoder environment, offer to open the set-up (`open_setup`)."""
    dialog = create_encode_dialog(parameters)
    if dialog is None:
        return {}
    failures_before = environment_failures()
    dialog.exec()
    results = dialog.results() or {}
    dialog.close()
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
