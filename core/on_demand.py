"""On-demand tiles: one extra tile of a level, centred on prompts that no tile holds (docs/levels.md; no QGIS).

Where the store has no tile that holds a prompt set (prompts across a border of the finest level's tiles,
or an area never encoded), one tile centred on the prompts is added to a level's grid as an extra tile
(`Tile.extra`, id `x<serial>`), clipped to the level's raster the way edge tiles are (shifted inward, never
hanging over the edge). Everything here is in level pixels (column = x, row = y) of the level's grid; the
encoder (encoder/on_demand.py) turns map coordinates into them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence, Tuple

from .tiling import Tile, TileGrid

#: The margin a tile must leave around the prompts, as a fraction of the tile size (a sixteenth: 64 px at
#: 1024 px): the decoding chooses a level by it (interactive/scales.py) and an on-demand tile is reused
#: when it holds the prompts that far inside.
MARGIN_FRACTION = 1 / 16

Pixels = Sequence[Tuple[float, float]]


def prompt_margin(tile_size: int) -> float:
    """The margin (level pixels) a tile of `tile_size` px should leave around the prompts."""
    return MARGIN_FRACTION * tile_size


def pixel_span(pixels: Pixels) -> Tuple[float, float, float, float]:
    """(col0, row0, col1, row1): the bounding box of (col, row) positions. ValueError when there are none."""
    if not pixels:
        raise ValueError("no prompt position given")
    cols, rows = [c for c, _ in pixels], [r for _, r in pixels]
    return min(cols), min(rows), max(cols), max(rows)


def fits_one_tile(pixels: Pixels, tile_size: int, margin: float = 0.0) -> bool:
    """Whether one tile of `tile_size` px can hold every position `margin` px inside its edges."""
    col0, row0, col1, row1 = pixel_span(pixels)
    room = tile_size - 2 * margin
    return col1 - col0 <= room and row1 - row0 <= room


def _centred_offset(centre: float, size: int, total: int) -> int:
    """The offset of a `size` px tile centred on `centre`, shifted inward to lie inside [0, total)."""
    if total <= size:
        return 0
    return max(0, min(int(round(centre - size / 2)), total - size))


def centred_tile(grid: TileGrid, pixels: Pixels) -> Tile:
    """A new extra tile of `grid` centred on the bounding box of `pixels` (level pixels), clipped to the
    level's raster like edge tiles; its serial number follows the grid's extra tiles, its index is the
    next in the grid. Its valid size is the part inside the raster (padding only where the raster is
    smaller than one tile)."""
    col0, row0, col1, row1 = pixel_span(pixels)
    size = grid.tile_size
    col_off = _centred_offset((col0 + col1) / 2, size, grid.raster_width)
    row_off = _centred_offset((row0 + row1) / 2, size, grid.raster_height)
    serial = 1 + max((tile.row for tile in grid.tiles if tile.extra), default=-1)
    return Tile(index=len(grid.tiles), row=serial, col=0, col_off=col_off, row_off=row_off, size=size,
                valid_width=min(size, grid.raster_width - col_off),
                valid_height=min(size, grid.raster_height - row_off), extra=True)


def depth_inside(tile: Tile, pixels: Pixels) -> Optional[float]:
    """How far (pixels) the positions lie inside the tile's valid area (the least distance of any to its
    edges), or None when one of them is outside it."""
    if not all(tile.contains_pixel(c, r) for c, r in pixels):
        return None
    return min(min(c - tile.col_off, tile.col_off + tile.valid_width - c,
                   r - tile.row_off, tile.row_off + tile.valid_height - r) for c, r in pixels)


def tile_for_prompts(grid: TileGrid, pixels: Pixels, usable: Callable[[Tile], bool] = lambda tile: True
                     ) -> Tuple[Tile, bool]:
    """The tile that should serve the prompts at `pixels`: (tile, True) a new extra tile centred on them,
    or (tile, False) an existing `usable` tile (grid or extra) that holds them as deep as the margin (or as
    deep as a new centred tile would, where the raster's edge is nearer), the deepest of them. So a tile
    is never added twice for the same prompts, and nearby prompts reuse it."""
    candidate = centred_tile(grid, pixels)
    wanted = min(prompt_margin(grid.tile_size), depth_inside(candidate, pixels) or 0.0)
    best: Optional[Tuple[float, Tile]] = None
    for tile in grid.tiles:
        depth = depth_inside(tile, pixels)
        if depth is not None and depth >= wanted and usable(tile) and (best is None or depth > best[0]):
            best = (depth, tile)
    return (best[1], False) if best is not None else (candidate, True)


def with_tile(grid: TileGrid, tile: Tile) -> TileGrid:
    """`grid` with `tile` appended (its index must be the next one)."""
    if tile.index != len(grid.tiles):
        raise ValueError(f"tile {tile.tile_id} has index {tile.index}, not the grid's next ({len(grid.tiles)})")
    return dataclasses.replace(grid, tiles=grid.tiles + (tile,))


def in_encoded_area(grid: TileGrid, col: float, row: float) -> bool:
    """Whether the pixel position lies in the area the grid was laid over (`grid.window`) or in one of its
    extra tiles."""
    window = grid.window
    return ((window.col_off <= col <= window.col_end and window.row_off <= row <= window.row_end)
            or any(tile.extra and tile.contains_pixel(col, row) for tile in grid.tiles))


__all__ = ["MARGIN_FRACTION", "centred_tile", "depth_inside", "fits_one_tile", "in_encoded_area", "pixel_span",
           "prompt_margin", "tile_for_prompts", "with_tile"]
