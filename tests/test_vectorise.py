"""Mask -> polygons, exactly: known masks land at known map coordinates, on pixel corners, with holes.

Geotransforms are GDAL's (x0, pixel width, row rotation, y0, column rotation, pixel height).
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely.wkb
from shapely.geometry import MultiPolygon, Polygon, box

from quicksam.core.geo import window_geotransform
from quicksam.core.tiling import Tile
from quicksam.interactive.vectorise import mask_to_polygons

NORTH_UP = (500000.0, 10.0, 0.0, 4200000.0, 0.0, -10.0)


def polygons(mask, geotransform=NORTH_UP, **options):
    result = mask_to_polygons(mask, geotransform, **options)
    geometry = shapely.wkb.loads(result.wkb)
    assert geometry.geom_type == "MultiPolygon"
    assert result.parts == len(geometry.geoms)
    assert result.area == pytest.approx(geometry.area)
    return geometry


def same(actual, expected) -> bool:
    return actual.symmetric_difference(expected).area == 0 and actual.is_valid


def test_square_lands_on_its_pixel_corners():
    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:16] = True  # rows 5..8, columns 10..15
    expected = box(500000 + 10 * 10, 4200000 - 9 * 10, 500000 + 16 * 10, 4200000 - 5 * 10)
    geometry = polygons(mask)
    assert same(geometry, MultiPolygon([expected]))
    assert sorted(set(geometry.geoms[0].exterior.coords)) == sorted(set(expected.exterior.coords))


def test_holes_are_kept_or_filled():
    mask = np.zeros((12, 12), bool)
    mask[1:11, 1:11] = True
    mask[4:7, 4:7] = False  # a 3 x 3 hole
    kept = polygons(mask)
    assert len(kept.geoms[0].interiors) == 1
    assert kept.area == pytest.approx((100 - 9) * 100)
    filled = polygons(mask, keep_holes=False)
    assert len(filled.geoms[0].interiors) == 0
    assert filled.area == pytest.approx(100 * 100)
    small_holes_dropped = polygons(mask, min_area_pixels=10)
    assert len(small_holes_dropped.geoms[0].interiors) == 0


def test_multipart_and_minimum_area():
    mask = np.zeros((20, 20), bool)
    mask[0:5, 0:5] = True  # 25 px
    mask[10:12, 10:12] = True  # 4 px
    mask[15, 15] = True  # 1 px
    assert len(polygons(mask).geoms) == 3
    assert len(polygons(mask, min_area_pixels=4).geoms) == 2
    assert len(polygons(mask, min_area_pixels=5).geoms) == 1
    diagonal = np.eye(3, dtype=bool)  # 4-connected: corners touching are separate parts
    assert len(polygons(diagonal).geoms) == 3


def test_tile_offset_and_non_square_rotated_pixels():
    raster = (1000.0, 2.0, 0.5, 5000.0, 0.25, -3.0)
    tile = Tile(index=0, row=1, col=2, col_off=40, row_off=30, size=64, valid_width=64, valid_height=64)
    mask = np.zeros((64, 64), bool)
    mask[3, 7] = True  # raster pixel (col 47, row 33)
    geometry = polygons(mask, window_geotransform(raster, tile.col_off, tile.row_off))

    def corner(col, row):
        a, b, c, d, e, f = raster
        return a + col * b + row * c, d + col * e + row * f

    expected = Polygon([corner(47, 33), corner(48, 33), corner(48, 34), corner(47, 34)])
    assert same(geometry, MultiPolygon([expected]))


def test_simplification_reduces_vertices_and_stays_valid():
    yy, xx = np.mgrid[0:200, 0:200]
    disc = (xx - 100) ** 2 + (yy - 100) ** 2 < 80 ** 2
    exact = polygons(disc)
    simple = polygons(disc, simplify_tolerance=15.0)  # 1.5 px
    assert len(simple.geoms[0].exterior.coords) < len(exact.geoms[0].exterior.coords) / 3
    assert simple.is_valid
    assert simple.symmetric_difference(exact).area < 0.02 * exact.area


def test_empty_mask_gives_no_polygon():
    result = mask_to_polygons(np.zeros((8, 8), bool), NORTH_UP)
    assert result.is_empty and result.area == 0
    assert shapely.wkb.loads(result.wkb).is_empty
