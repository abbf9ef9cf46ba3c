"""Rasters opened with GDAL's own Python bindings (`osgeo`), as QGIS's process needs: pip wheels that bundle
another GDAL (rasterio) must not be loaded there. No QGIS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ..core.errors import RasterError
from ..core.geo import raster_fingerprint

if TYPE_CHECKING:
    from osgeo import gdal


def gdal_open_quietly(path: str) -> Optional[gdal.Dataset]:
    """A GDAL dataset or None, without printing GDAL errors or changing GDAL's global exception mode
    (QGIS and other plugins in the same process rely on it)."""
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        return gdal.Open(str(path))
    except RuntimeError:
        return None
    finally:
        gdal.PopErrorHandler()


def raster_fingerprint_gdal(path: str) -> str:
    """`core.geo.raster_fingerprint` of a raster opened with GDAL's own Python bindings: safe inside QGIS,
    whose process already holds GDAL (pip wheels bundling another GDAL must not be loaded there)."""
    dataset = gdal_open_quietly(path)
    if dataset is None:
        raise RasterError(f"cannot open raster '{path}'; check the path and that GDAL can read the file")
    return raster_fingerprint(path, dataset.RasterXSize, dataset.RasterYSize, dataset.RasterCount,
                              dataset.GetGeoTransform())
