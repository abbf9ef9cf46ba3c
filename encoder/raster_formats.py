"""The file extensions of the raster formats GDAL reads: the default filter of a batch (core/batch.py).

GDAL's own list (its drivers' DMD_EXTENSIONS, through rasterio) with the side-car and mostly-vector extensions
left out (`.aux.xml`, `.ovr`, `.hdr`, `.gpkg`, ...: found beside rasters in a folder, they are not rasters to
encode), plus common ones a GDAL build may lack a driver for (ECW, MrSID). No QGIS.
"""

from __future__ import annotations

from typing import Iterable, List, Optional

#: Extensions of files that sit beside rasters, or hold vectors more often than rasters.
NOT_RASTERS = frozenset({"xml", "aux", "ovr", "msk", "hdr", "lbl", "err", "dat", "map", "gen", "cal", "rda",
                         "kml", "kmz", "gpkg", "gpkg.zip", "sqlite", "pdf", "xyz", "txt", "json", "log"})
#: Taken whatever the GDAL build says.
COMMON_RASTERS = ("tif", "tiff", "vrt", "jp2", "j2k", "img", "png", "jpg", "jpeg", "webp", "ecw", "sid", "nc",
                  "asc", "dem", "hgt", "bil", "mrf", "ntf", "bmp", "gif")


def raster_extensions(driver_extensions: Optional[Iterable[str]] = None) -> List[str]:
    """Lower-case extensions without the dot, sorted: `driver_extensions` (default: GDAL's raster drivers' through
    rasterio; a QGIS-side caller gives them from `osgeo`, which must not meet rasterio's GDAL) and
    `COMMON_RASTERS`, less `NOT_RASTERS`."""
    if driver_extensions is None:
        try:
            from rasterio.drivers import raster_driver_extensions

            driver_extensions = raster_driver_extensions()
        except ImportError:   # an old rasterio: the common ones
            driver_extensions = ()
    known = {ext.lower().lstrip(".") for ext in driver_extensions}
    return sorted((known | set(COMMON_RASTERS)) - NOT_RASTERS)
