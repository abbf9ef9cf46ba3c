"""Masks to georeferenced polygons with holes (GDAL/OGR's own bindings + numpy; no QGIS, no torch).

Polygon vertices lie on pixel corners: the boundary of a mask pixel (col, row) of a tile runs along
tile pixel coordinates col..col+1, row..row+1, mapped through the tile's geotransform. Coordinates
out are in the raster's CRS, as ISO WKB of a MultiPolygon.

This runs inside QGIS's process, which already holds GDAL and GEOS: it uses the `osgeo` bindings
of that same GDAL, never a pip wheel that bundles another GDAL or GEOS (rasterio, shapely), whose
symbols would clash with QGIS's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class Polygons:
    """A MultiPolygon as ISO WKB, with its area (map units²) and number of parts."""

    wkb: bytes
    area: float
    parts: int

    @property
    def is_empty(self) -> bool:
        return self.parts == 0


EMPTY_WKB = bytes.fromhex("0106000000" + "00000000")  # MULTIPOLYGON EMPTY, little endian


def _bounding_window(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _polygonize(crop: np.ndarray, geotransform: Sequence[float]):
    """OGR polygons (with holes) of the 4-connected regions of non-zero pixels of `crop`."""
    from osgeo import gdal, ogr, osr

    height, width = crop.shape
    raster = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
    raster.SetGeoTransform(tuple(geotransform))
    band = raster.GetRasterBand(1)
    band.WriteArray(crop)
    vector = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = vector.CreateLayer("mask", osr.SpatialReference(), ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
    gdal.Polygonize(band, band, layer, 0, [], callback=None)
    polygons = [feature.GetGeometryRef().Clone() for feature in layer]
    return polygons, (raster, vector)


def _without_small_holes(polygon, min_area: float, keep_holes: bool):
    from osgeo import ogr

    result = ogr.Geometry(ogr.wkbPolygon)
    result.AddGeometry(polygon.GetGeometryRef(0))
    if keep_holes:
        for index in range(1, polygon.GetGeometryCount()):
            ring = polygon.GetGeometryRef(index)
            hole = ogr.Geometry(ogr.wkbPolygon)
            hole.AddGeometry(ring)
            if hole.GetArea() >= min_area:
                result.AddGeometry(ring)
    return result


def _parts(geometry) -> list:
    from osgeo import ogr

    kind = ogr.GT_Flatten(geometry.GetGeometryType())
    if kind == ogr.wkbPolygon:
        return [geometry] if not geometry.IsEmpty() else []
    if kind in (ogr.wkbMultiPolygon, ogr.wkbGeometryCollection):
        return [part.Clone() for part in (geometry.GetGeometryRef(i) for i in range(geometry.GetGeometryCount()))
                if ogr.GT_Flatten(part.GetGeometryType()) == ogr.wkbPolygon and not part.IsEmpty()]
    return []


def mask_to_polygons(mask: np.ndarray, geotransform: Sequence[float], simplify_tolerance: float = 0.0,
                     min_area_pixels: float = 0.0, keep_holes: bool = True) -> Polygons:
    """Polygons of the True pixels of a (H, W) mask whose pixel (0, 0) has GDAL `geotransform`.

    - Only the mask's bounding box is traced, so the cost follows the object, not the tile.
    - `simplify_tolerance` is in map units (Douglas-Peucker, topology preserved; 0 = exact pixel edges).
    - Parts and holes smaller than `min_area_pixels` pixels are dropped; `keep_holes=False` fills holes.
    """
    from osgeo import ogr

    window = _bounding_window(mask)
    if window is None:
        return Polygons(EMPTY_WKB, 0.0, 0)
    row0, row1, col0, col1 = window
    a, b, c, d, e, f = geotransform
    shifted = (a + col0 * b + row0 * c, b, c, d + col0 * e + row0 * f, e, f)
    pixel_area = abs(b * f - c * e)
    min_area = min_area_pixels * pixel_area
    polygons, _keep_alive = _polygonize(np.ascontiguousarray(mask[row0:row1, col0:col1], dtype=np.uint8), shifted)
    result = ogr.Geometry(ogr.wkbMultiPolygon)
    for polygon in polygons:
        cleaned = _without_small_holes(polygon, min_area, keep_holes)
        # 4-connected parts of one mask never overlap, so each part is simplified on its own
        pieces = _parts(cleaned.SimplifyPreserveTopology(simplify_tolerance)) if simplify_tolerance > 0 else [cleaned]
        for piece in pieces:
            if piece.GetArea() >= min_area and piece.GetArea() > 0:
                result.AddGeometry(piece)
    return Polygons(bytes(result.ExportToIsoWkb()), result.GetArea(), result.GetGeometryCount())
