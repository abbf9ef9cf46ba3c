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
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..core.geo import window_geotransform
from ..core.logger import LOGGER

if TYPE_CHECKING:
    from osgeo import gdal, ogr


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


def _polygonize(crop: np.ndarray, geotransform: Sequence[float]
                ) -> Tuple[List[ogr.Geometry], Tuple[gdal.Dataset, ogr.DataSource]]:
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


def _filled(polygon: ogr.Geometry, min_area: float, keep_holes: bool) -> Tuple[ogr.Geometry, list]:
    """`polygon` with its holes smaller than `min_area` (map units², all when not `keep_holes`) filled,
    and the filled holes as polygons (their rings' whole area, islands included)."""
    if keep_holes and min_area <= 0:
        return polygon, []
    from osgeo import ogr

    result = ogr.Geometry(ogr.wkbPolygon)
    result.AddGeometry(polygon.GetGeometryRef(0))
    filled = []
    for index in range(1, polygon.GetGeometryCount()):
        ring = polygon.GetGeometryRef(index)
        hole = ogr.Geometry(ogr.wkbPolygon)
        hole.AddGeometry(ring)
        if keep_holes and hole.GetArea() >= min_area:
            result.AddGeometry(ring)
        else:
            filled.append(hole)
    return result, filled


def _rasterized(polygons: Sequence, shape: Tuple[int, int], geotransform: Sequence[float]) -> np.ndarray:
    """(H, W) bool: the pixels whose centre lies in one of `polygons` (map coordinates of `geotransform`).
    Polygons traced along pixel edges take exactly the pixels they enclose."""
    from osgeo import gdal, ogr, osr

    height, width = shape
    raster = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
    raster.SetGeoTransform(tuple(geotransform))
    vector = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = vector.CreateLayer("holes", osr.SpatialReference(), ogr.wkbPolygon)
    for polygon in polygons:
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(polygon)
        layer.CreateFeature(feature)
    gdal.RasterizeLayer(raster, [1], layer, burn_values=[1])
    return raster.GetRasterBand(1).ReadAsArray().astype(bool)


#: `_rasterized` for other modules (interactive/refine.py): the pixels of polygons in map coordinates.
rasterize_polygons = _rasterized


def _may_hold_parts(holes: Sequence, parts: Sequence, pixel_area: float) -> list:
    """The `holes` whose envelope holds a part's envelope (cheap: a hole holding a part holds its 4
    neighbours too, so holes under 5 pixels are skipped, and envelopes are compared in numpy)."""
    containers = [hole for hole in holes if hole.GetArea() > 4.5 * pixel_area]
    if not containers or len(parts) < 2:
        return []
    envelopes = np.array([part.GetEnvelope() for part in parts])  # (N, 4): xmin, xmax, ymin, ymax
    holding = []
    for hole in containers:
        xmin, xmax, ymin, ymax = hole.GetEnvelope()
        if np.any((envelopes[:, 0] >= xmin) & (envelopes[:, 1] <= xmax)
                  & (envelopes[:, 2] >= ymin) & (envelopes[:, 3] <= ymax)):
            holding.append(hole)
    return holding


def _exact_parts(crop: np.ndarray, geotransform: Sequence[float], pixel_area: float, min_area: float,
                 keep_holes: bool) -> list:
    """The polygons of the (H, W) uint8 `crop` with holes filled as asked and the parts smaller than
    `min_area` (map units², holes filled) dropped; `pixel_area` in map units².

    A part lying in a filled hole is inside its filled shell now: the crop is traced again with those
    holes filled in pixels, so it is not a second, nested shell (invalid, and its area counted twice).
    Valid by GEOS's rules, as traced parts are: 4-connected parts meet at most at pixel corners, and
    so do holes."""
    polygons, _keep_alive = _polygonize(crop, geotransform)
    cleaned, filled_holes = [], []
    for polygon in polygons:
        part, holes = _filled(polygon, min_area, keep_holes)
        cleaned.append(part)
        filled_holes.extend(holes)
    holding = _may_hold_parts(filled_holes, cleaned, pixel_area)
    if holding:
        filled_crop = (crop.astype(bool) | _rasterized(holding, crop.shape, geotransform)).astype(np.uint8)
        polygons, _keep_alive = _polygonize(filled_crop, geotransform)
        cleaned = [_filled(polygon, min_area, keep_holes)[0] for polygon in polygons]
    return [part for part in cleaned if part.GetArea() >= min_area and part.GetArea() > 0]


def _parts(geometry: ogr.Geometry) -> list:
    """The non-empty polygons of a Polygon, MultiPolygon or GeometryCollection (none for other types)."""
    from osgeo import ogr

    kind = ogr.GT_Flatten(geometry.GetGeometryType())
    if kind == ogr.wkbPolygon:
        return [geometry] if not geometry.IsEmpty() and geometry.GetArea() > 0 else []
    if kind in (ogr.wkbMultiPolygon, ogr.wkbGeometryCollection):
        return [part for index in range(geometry.GetGeometryCount())
                for part in _parts(geometry.GetGeometryRef(index).Clone())]
    return []


def _multipolygon(parts: Sequence) -> ogr.Geometry:
    from osgeo import ogr

    result = ogr.Geometry(ogr.wkbMultiPolygon)
    for part in parts:
        result.AddGeometry(part)
    return result


def _is_valid(geometry: ogr.Geometry) -> bool:
    """GEOS's IsValid, without GEOS's reason reaching GDAL's (or QGIS's) message log."""
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        return bool(geometry.IsValid())
    finally:
        gdal.PopErrorHandler()


def _geos(operation: Callable[..., ogr.Geometry], *arguments: object) -> Optional[ogr.Geometry]:
    """`operation(*arguments)` (an OGR method backed by GEOS), or None where GEOS fails (a topology
    exception: raised with ogr.UseExceptions(), None without)."""
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        return operation(*arguments)
    except RuntimeError:
        return None
    finally:
        gdal.PopErrorHandler()


def _union(regions: list) -> Optional[ogr.Geometry]:
    """Union of polygonal geometries, pairwise in a balanced tree (GDAL < 3.7 has no UnaryUnion); None
    where GEOS fails."""
    while len(regions) > 1:
        merged = [_geos(first.Union, second) for first, second in zip(regions[0::2], regions[1::2])]
        if any(region is None for region in merged):
            return None
        regions = merged + regions[len(merged) * 2:]
    return regions[0] if regions else None


def _region(piece: ogr.Geometry) -> Optional[ogr.Geometry]:
    """The area a simplified polygon means, valid: its shell's area minus its holes' (a ring that
    crossed itself is made valid first; a hole that moved out of its shell removes nothing). None
    where GEOS fails."""
    from osgeo import ogr

    rings = []
    for index in range(piece.GetGeometryCount()):
        ring = ogr.Geometry(ogr.wkbPolygon)
        ring.AddGeometry(piece.GetGeometryRef(index))
        if not _is_valid(ring):
            made_valid = _geos(ring.MakeValid)
            if made_valid is None:
                return None
            ring = _multipolygon(_parts(made_valid))  # without the lines and points of a collapsed ring
        rings.append(ring)
    region = rings[0]
    for hole in rings[1:]:
        region = _geos(region.Difference, hole)
        if region is None:
            return None
    return region


def _repaired(pieces: Sequence) -> Optional[list]:
    """Simplified parts that touch, overlap or nest, merged into valid parts (the union of what each
    part means); None if GEOS cannot."""
    regions = [_region(piece) for piece in pieces]
    if any(region is None for region in regions):
        return None
    union = _union(regions)
    if union is None:
        return None
    parts = _parts(union)
    return parts if parts and _is_valid(_multipolygon(parts)) else None


def _simplified(parts: Sequence, tolerance: float) -> list:
    """`parts` (valid polygons) simplified together, so that no part jumps over another
    (Douglas-Peucker, GEOS's topology-preserving variant on the whole MultiPolygon, `tolerance` in map
    units). Where that still leaves parts touching along an edge, overlapping or nested (a hole that
    collapsed onto an island, large tolerances), they are merged by a union; if even that is not
    valid, the exact parts are kept."""
    simplified = _geos(_multipolygon(parts).SimplifyPreserveTopology, tolerance)
    pieces = _parts(simplified) if simplified is not None else []
    if pieces and _is_valid(_multipolygon(pieces)):
        return pieces
    repaired = _repaired(pieces) if pieces else None
    if repaired is not None:
        return repaired
    LOGGER.debug("simplification with tolerance %s gave no valid polygons: kept the pixel edges", tolerance)
    return list(parts)


def mask_to_polygons(mask: np.ndarray, geotransform: Sequence[float], simplify_tolerance: float = 0.0,
                     min_area_pixels: float = 0.0, keep_holes: bool = True,
                     offset: Tuple[int, int] = (0, 0)) -> Polygons:
    """Polygons of the True pixels of a (H, W) mask whose pixel (0, 0) is pixel `offset` (col, row) of GDAL
    `geotransform`'s grid (a crop of a tile's mask gives the same coordinates as the whole mask).

    - Parts are the 4-connected regions of the mask; holes are the regions of False pixels a part
      encloses (4-connected too, as GDAL traces them: a hole may touch its shell or another hole at a
      pixel corner, parts may touch each other at pixel corners, both valid by GEOS's rules).
    - Only the mask's bounding box is traced, so the cost follows the object, not the tile.
    - Parts and holes smaller than `min_area_pixels` pixels are dropped (a hole's area includes the
      parts inside it: they go with it); `keep_holes=False` fills every hole, and a part lying in a
      filled hole becomes part of the filled shell. Both are decided on the exact pixel polygons.
    - `simplify_tolerance` is in map units (Douglas-Peucker; 0 = exact pixel edges, whose area is the
      pixel count times the pixel area). All parts are simplified together so none crosses another;
      parts that then touch along an edge or overlap are merged.
    - The result is always valid by GEOS's rules (OGR IsValid), a MultiPolygon.
    """
    window = _bounding_window(mask)
    if window is None:
        return Polygons(EMPTY_WKB, 0.0, 0)
    row0, row1, col0, col1 = window
    shifted = window_geotransform(geotransform, offset[0] + col0, offset[1] + row0)
    _, b, c, _, e, f = geotransform
    pixel_area = abs(b * f - c * e)
    min_area = min_area_pixels * pixel_area
    parts = _exact_parts(np.ascontiguousarray(mask[row0:row1, col0:col1], dtype=np.uint8), shifted, pixel_area,
                         min_area, keep_holes)
    if simplify_tolerance > 0 and parts:
        parts = _simplified(parts, simplify_tolerance)
    result = _multipolygon(parts)
    return Polygons(bytes(result.ExportToIsoWkb()), result.GetArea(), result.GetGeometryCount())
