"""Processing's algorithm dialog opened from QuickSAM's menu and dock: modal, pre-filled, its results kept.

`processing.execAlgorithmDialog` reads `dialog.results()` after the dialog closed; once a run has
finished in it, closing the dialog deletes it (a deferred delete that the desktop's event loop may
process before `exec` returns), and the user then sees "wrapped C/C++ object of type AlgorithmDialog
has been deleted". Here the results are taken from the dialog's `algorithmFinished` signal as each
run ends, and the dialog is never touched after it may have gone.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from qgis.gui import QgsMapCanvas
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QSize


def run_algorithm_dialog(algorithm_id: str, parameters: Dict[str, Any], canvas: Optional[QgsMapCanvas] = None,
                         minimum_size: Optional[QSize] = None) -> Dict[str, Any]:
    """Show Processing's dialog of `algorithm_id` pre-filled with `parameters` (name -> value, as
    `processing.run` takes them) and wait until the user closes it.

    Returns the results of the last successful run in it ({} when nothing ran or every run failed).
    The map tool of `canvas` is put back if the dialog changed it (a point or extent picked on the
    map), as `processing.execAlgorithmDialog` does. `minimum_size` (pixels) keeps the dialog's
    fields readable on a small default size.
    """
    import processing  # QGIS's Processing plugin, imported on use

    dialog = processing.createAlgorithmDialog(algorithm_id, parameters)
    if dialog is None:
        return {}
    results: Dict[str, Any] = {}

    def finished(successful: bool, values: Dict[str, Any]) -> None:
        if successful:
            results.clear()
            results.update(values)

    dialog.algorithmFinished.connect(finished)
    if minimum_size is not None:
        dialog.setMinimumSize(minimum_size)
        dialog.resize(dialog.size().expandedTo(minimum_size))
    previous_tool = canvas.mapTool() if canvas is not None else None
    dialog.exec()
    if canvas is not None and previous_tool is not None and canvas.mapTool() is not previous_tool:
        canvas.setMapTool(previous_tool)
    if not sip.isdeleted(dialog):
        dialog.deleteLater()  # as processing.execAlgorithmDialog closes it: gone, not only hidden
    return results
