"""The tile grid: full-size tiles inside the raster, complete coverage, guaranteed overlap.

Pure geometry (no model, no files). Sizes are in raster pixels.
"""

from __future__ import annotations

import itertools
from typing import List, Tuple

import numpy as np
import pytest

from quicksam.core.defaults import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE
from quicksam.core.tiling import PixelWindow, TileGrid

SIZES = [1, 50, 255, 256, 257, 300, 511, 512, 700, 1000, 1023, 1024, 1025, 1500, 2047, 2600]
OVERLAPS = [0, 1, 32, 64, 100, 128, 200]


def _axis_spans(grid: TileGrid, axis: str) -> List[Tuple[int, int]]:
    """Distinct (start, end) of the tiles' valid parts along 'col' or 'row'."""
    if axis == "col":
        spans = {(t.col_off, t.col_off + t.valid_width) for t in grid}
    else:
        spans = {(t.row_off, t.row_off + t.valid_height) for t in grid}
    return sorted(spans)


def _check_grid(grid: TileGrid, width: int, height: int, tile: int, overlap: int,
                window: PixelWindow) -> None:
    for t in grid:
        assert t.size == tile
        assert t.col_off >= 0 and t.row_off >= 0
        assert t.col_off + t.valid_width <= width and t.row_off + t.valid_height <= height
        # Padding only where the raster itself is smaller than a tile.
        assert t.valid_width == (tile if width >= tile else width)
        assert t.valid_height == (tile if height >= tile else height)
        assert t.is_padded == (width < tile or height < tile)
    covered = np.zeros((height, width), dtype=bool)
    for t in grid:
        covered[t.row_off:t.row_off + t.valid_height, t.col_off:t.col_off + t.valid_width] = True
    assert covered[window.row_off:window.row_end, window.col_off:window.col_end].all()
    for axis, extent_start, extent_end in (("col", window.col_off, window.col_end),
                                           ("row", window.row_off, window.row_end)):
        spans = _axis_spans(grid, axis)
        assert spans[0][0] <= extent_start and spans[-1][1] >= extent_end
        for (_, end), (next_start, _) in zip(spans, spans[1:]):
            assert end - next_start >= overlap, f"{axis} overlap {end - next_start} < {overlap}"
    ids = [t.tile_id for t in grid]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("tile", [128, 256])
def test_whole_raster_tiles_are_full_inside_cover_and_overlap(tile: int) -> None:
    for width, height in itertools.product(SIZES, [1, 200, 256, 700, 1300]):
        for overlap in (o for o in OVERLAPS if o < tile):
            grid = TileGrid.build(width, height, tile, overlap)
            _check_grid(grid, width, height, tile, overlap, PixelWindow(0, 0, width, height))
            # Edge tiles end exactly at the raster edge (never hanging over it).
            assert max(t.col_off + t.valid_width for t in grid) == width
            assert max(t.row_off + t.valid_height for t in grid) == height
            if width >= tile:
                assert max(t.col_off for t in grid) == width - tile
            if height >= tile:
                assert max(t.row_off for t in grid) == height - tile


def test_tile_count_is_the_fewest_that_keeps_the_overlap() -> None:
    # 1100 px with 256 px tiles and 32 px overlap: a stride of at most 224 px needs 5 tiles per axis.
    grid = TileGrid.build(1100, 1100, 256, 32)
    assert len(grid) == 25
    assert sorted({t.col_off for t in grid}) == [0, 211, 422, 633, 844]
    assert len(TileGrid.build(1024, 1024, 1024, 256)) == 1
    assert len(TileGrid.build(1025, 1024, 1024, 256)) == 2


@pytest.mark.parametrize("width,height", [(1024, 1024), (1500, 1100), (2600, 1800), (4000, 3333)])
def test_default_overlap_puts_every_inner_pixel_half_an_overlap_inside_a_tile(width: int, height: int) -> None:
    """The documented reason for the default: away from the raster edge, every pixel lies at least
    overlap/2 px inside some tile, so an object there has context on every side."""
    grid = TileGrid.build(width, height)
    half = DEFAULT_OVERLAP / 2
    assert grid.tile_size == DEFAULT_TILE_SIZE and grid.overlap == DEFAULT_OVERLAP

    def depth_along(axis_spans: List[Tuple[int, int]], length: int) -> np.ndarray:
        # Best depth of pixel [p, p + 1) inside any tile span, per pixel.
        p = np.arange(length)
        return np.max([np.minimum(p - start, end - (p + 1)) for start, end in axis_spans], axis=0)

    col_depth = depth_along(_axis_spans(grid, "col"), width)
    row_depth = depth_along(_axis_spans(grid, "row"), height)
    inner_cols = (np.arange(width) >= half) & (width - np.arange(width) - 1 >= half)
    inner_rows = (np.arange(height) >= half) & (height - np.arange(height) - 1 >= half)
    # Tiles form a full grid of column spans x row spans, so the axes can be checked one by one.
    assert len(grid) == len(_axis_spans(grid, "col")) * len(_axis_spans(grid, "row"))
    assert (col_depth[inner_cols] >= half).all()
    assert (row_depth[inner_rows] >= half).all()
    # And the same through the public per-tile check, for a sample of pixels.
    rng = np.random.default_rng(3)
    for col, row in zip(rng.integers(half, width - half, 200), rng.integers(half, height - half, 200)):
        assert any(t.contains_pixel(col + 0.5, row + 0.5, margin=half - 0.5) for t in grid)


@pytest.mark.parametrize("window", [
    PixelWindow(400, 300, 30, 20),       # small AOI in the middle
    PixelWindow(0, 0, 10, 10),           # at the top-left corner
    PixelWindow(990, 690, 10, 10),       # at the bottom-right corner
    PixelWindow(100, 650, 700, 50),      # wide and flat
])
def test_small_area_of_interest_grows_to_full_tiles_inside_the_raster(window: PixelWindow) -> None:
    width, height, tile = 1000, 700, 256
    grid = TileGrid.build(width, height, tile, 32, window)
    _check_grid(grid, width, height, tile, 32, window)
    assert not any(t.is_padded for t in grid)
    if window.width <= tile and window.height <= tile:
        assert len(grid) == 1
    only = grid.tiles[0]
    assert only.valid_width == tile and only.valid_height == tile


def test_area_of_interest_on_a_raster_smaller_than_a_tile_is_one_padded_tile() -> None:
    grid = TileGrid.build(50, 40, 256, 32, PixelWindow(10, 10, 5, 5))
    assert len(grid) == 1
    tile = grid.tiles[0]
    assert (tile.col_off, tile.row_off, tile.valid_width, tile.valid_height) == (0, 0, 50, 40)
    assert tile.is_padded


def test_tiles_containing_prefers_the_tile_where_points_are_farthest_from_edges() -> None:
    grid = TileGrid.build(600, 256, 256, 128)   # column starts 0, 115, 229, 344
    assert sorted({t.col_off for t in grid}) == [0, 115, 229, 344]
    found = grid.tiles_containing([(240.0, 128.0)])
    assert [t.col_off for t, _ in found] == [115, 0, 229]
    assert [d for _, d in found] == pytest.approx([125.0, 16.0, 11.0])
    found = grid.tiles_containing([(240.0, 128.0), (300.0, 100.0)])
    assert found[0][0].col_off == 115 and found[0][1] == pytest.approx(71.0)   # (300, 100): 371 - 300
    assert grid.tiles_containing([(10.0, 10.0), (590.0, 10.0)]) == []
    assert grid.tiles_containing([(700.0, 10.0)]) == []


def test_grid_round_trips_through_dict() -> None:
    grid = TileGrid.build(1000, 700, 256, 48, PixelWindow(100, 100, 500, 300))
    again = TileGrid.from_dict(grid.to_dict())
    assert again == grid
    assert again.by_id(grid.tiles[-1].tile_id) == grid.tiles[-1]
    small = TileGrid.build(50, 40, 256, 32)
    assert TileGrid.from_dict(small.to_dict()) == small


@pytest.mark.parametrize("width,height,tile,overlap", [(0, 10, 256, 32), (10, 0, 256, 32),
                                                       (100, 100, 256, 256), (100, 100, 256, -1)])
def test_impossible_grids_are_refused(width: int, height: int, tile: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        TileGrid.build(width, height, tile, overlap)
