"""QuickSAM: Segment Anything for geospatial rasters in QGIS.

QGIS calls `classFactory` when it loads the plugin. Nothing else happens at import time: the plugin's
modules (and, from them, only QGIS-free code that never imports torch) are imported on demand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qgis.gui import QgisInterface

    from .plugin import QuickSamPlugin


def classFactory(iface: QgisInterface) -> QuickSamPlugin:  # noqa: N802 (name required by QGIS)
    """Create the plugin for the QGIS interface `iface` (a `qgis.gui.QgisInterface`)."""
    from .plugin import QuickSamPlugin

    return QuickSamPlugin(iface)
