"""QuickSAM: Segment Anything for geospatial rasters in QGIS.

QGIS calls `classFactory` when it loads the plugin. Nothing else happens at import time: the plugin's
modules (and, from them, only QGIS-free code that never imports torch) are imported on demand.
"""


def classFactory(iface):  # noqa: N802 (name required by QGIS)
    """Create the plugin for the QGIS interface `iface` (a `qgis.gui.QgisInterface`)."""
    from .plugin import QuickSamPlugin

    return QuickSamPlugin(iface)
