"""Masks to georeferenced polygons with holes (rasterio + shapely; no QGIS, no torch).

Polygon vertices lie on pixel corners: the boundary of a mask pixel (col, row) of a tile runs along
tile pixel coordinates col..col+1, row..row+1, mapped through the tile's geotransform. Coordinates
out are in the raster's CRS.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from shapely.geometry import MultiPolygon, Polygon, shape


def _bounding_window(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _as_polygons(geometry) -> list:
    if geometry.is_empty:
        return []
    if isinstance(geometry, Polygon):
        return [geometry]
    return [g for g in getattr(geometry, "geoms", []) if isinstance(g, Polygon)]


def mask_to_polygons(mask: np.ndarray, geotransform: Sequence[float], simplify_tolerance: float = 0.0,
                     min_area_pixels: float = 0.0, keep_holes: bool = True) -> MultiPolygon:
    """Polygons of the True pixels of a (H, W) mask whose pixel (0, 0) has GDAL `geotransform`.

    - Only the mask's bounding box is traced, so cost follows the object, not the tile.
    - `simplify_tolerance` is in map units (Douglas-Peucker, topology preserved; 0 = exact pixel edges).
    - Parts (and holes) smaller than `min_area_pixels` pixels are dropped.
    - `keep_holes=False` fills holes.
    """
    from affine import Affine
    from rasterio.features import shapes

    window = _bounding_window(mask)
    if window is None:
        return MultiPolygon()
    row0, row1, col0, col1 = window
    crop = np.ascontiguousarray(mask[row0:row1, col0:col1], dtype=np.uint8)
    transform = Affine.from_gdal(*geotransform) @ Affine.translation(col0, row0)
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    min_area = min_area_pixels * pixel_area
    parts = []
    for geojson, value in shapes(crop, mask=crop.astype(bool), connectivity=4, transform=transform):
        if value != 1:
            continue
        polygon = shape(geojson)
        holes = [] if not keep_holes else [
            ring for ring in polygon.interiors if Polygon(ring).area >= min_area]
        polygon = Polygon(polygon.exterior, holes)
        if polygon.area >= min_area and polygon.area > 0:
            parts.append(polygon)
    if simplify_tolerance > 0:
        # 4-connected parts of one mask never overlap, so simplifying part by part stays valid
        parts = [part for polygon in parts
                 for part in _as_polygons(polygon.simplify(simplify_tolerance, preserve_topology=True))]
    return MultiPolygon([p for p in parts if p.area >= min_area and p.area > 0])
