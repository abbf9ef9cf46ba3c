"""Edge-adaptive tile grid over a raster window (pure Python, no QGIS, no torch).

All offsets and sizes are in raster pixels (column = x, row = y) of the full raster.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

from .defaults import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE


@dataclass(frozen=True)
class PixelWindow:
    """A rectangle of raster pixels: columns [col_off, col_off+width), rows [row_off, row_off+height)."""

    col_off: int
    row_off: int
    width: int
    height: int

    @property
    def col_end(self) -> int:
        return self.col_off + self.width

    @property
    def row_end(self) -> int:
        return self.row_off + self.height


@dataclass(frozen=True)
class Tile:
    """One model input: a `size` x `size` window of the raster.

    `valid_width`/`valid_height` are the pixels that exist in the raster; the rest (right and bottom)
    is padding, which happens only when the raster is smaller than one tile.

    `extra` marks a tile added on demand (centred on prompts no grid tile holds, docs/levels.md): not part
    of the regular rows and columns; its `row` is its serial number and `col` is 0.
    """

    index: int
    row: int
    col: int
    col_off: int
    row_off: int
    size: int
    valid_width: int
    valid_height: int
    extra: bool = False

    @property
    def tile_id(self) -> str:
        return f"x{self.row:04d}" if self.extra else f"r{self.row:04d}c{self.col:04d}"

    @property
    def is_padded(self) -> bool:
        return self.valid_width < self.size or self.valid_height < self.size

    @property
    def window(self) -> PixelWindow:
        """The part of the tile that lies inside the raster."""
        return PixelWindow(self.col_off, self.row_off, self.valid_width, self.valid_height)

    def contains_pixel(self, col: float, row: float, margin: float = 0.0) -> bool:
        """True when the raster pixel coordinate lies inside the valid part, `margin` px from its edges."""
        return (
            self.col_off + margin <= col <= self.col_off + self.valid_width - margin
            and self.row_off + margin <= row <= self.row_off + self.valid_height - margin
        )

    def to_dict(self) -> dict:
        """The tile's fields; `extra` only when True (manifests before on-demand tiles have none)."""
        data = asdict(self)
        if not self.extra:
            del data["extra"]
        return data


def axis_starts(extent_start: int, extent_length: int, tile_size: int, overlap: int) -> List[int]:
    """Tile start offsets along one axis covering [extent_start, extent_start + extent_length).

    Tiles are spread evenly so that every overlap is >= `overlap` and the last tile ends exactly at the
    end of the extent (edge tiles shifted inward, never hanging over the edge).
    """
    if extent_length <= tile_size:
        return [extent_start]
    stride = tile_size - overlap
    count = math.ceil((extent_length - tile_size) / stride) + 1
    span = extent_length - tile_size
    return [extent_start + round(i * span / (count - 1)) for i in range(count)]


def _fit_window_to_tile(window: PixelWindow, raster_width: int, raster_height: int,
                        tile_size: int) -> PixelWindow:
    """Grow a window smaller than one tile to a full tile inside the raster where the raster allows.

    A small area of interest then gets real image context instead of padding.
    """

    def grow(off: int, length: int, total: int) -> Tuple[int, int]:
        if length >= tile_size or total <= length:
            return off, length
        new_length = min(tile_size, total)
        centre = off + length / 2
        new_off = int(round(centre - new_length / 2))
        new_off = max(0, min(new_off, total - new_length))
        return new_off, new_length

    col_off, width = grow(window.col_off, window.width, raster_width)
    row_off, height = grow(window.row_off, window.height, raster_height)
    return PixelWindow(col_off, row_off, width, height)


@dataclass(frozen=True)
class TileGrid:
    """The tiles covering an area of a raster."""

    raster_width: int
    raster_height: int
    tile_size: int
    overlap: int
    window: PixelWindow
    tiles: Tuple[Tile, ...]

    @classmethod
    def build(cls, raster_width: int, raster_height: int, tile_size: int = DEFAULT_TILE_SIZE,
              overlap: int = DEFAULT_OVERLAP, window: Optional[PixelWindow] = None) -> TileGrid:
        """Lay tiles over `window` (default: the whole raster)."""
        if raster_width <= 0 or raster_height <= 0:
            raise ValueError(f"raster has no pixels ({raster_width} x {raster_height})")
        if not 0 <= overlap < tile_size:
            raise ValueError(f"overlap must be between 0 and {tile_size - 1} px, got {overlap}")
        window = window or PixelWindow(0, 0, raster_width, raster_height)
        window = _fit_window_to_tile(window, raster_width, raster_height, tile_size)
        col_starts = axis_starts(window.col_off, window.width, tile_size, overlap)
        row_starts = axis_starts(window.row_off, window.height, tile_size, overlap)
        tiles = []
        for r, row_off in enumerate(row_starts):
            for c, col_off in enumerate(col_starts):
                tiles.append(Tile(
                    index=len(tiles), row=r, col=c, col_off=col_off, row_off=row_off,
                    size=tile_size,
                    valid_width=min(tile_size, raster_width - col_off),
                    valid_height=min(tile_size, raster_height - row_off),
                ))
        return cls(raster_width, raster_height, tile_size, overlap, window, tuple(tiles))

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def regular_tiles(self) -> Tuple[Tile, ...]:
        """The grid's rows and columns, without on-demand tiles (`Tile.extra`): what a run planned from the
        raster lays out, and what segment everything's cells are built from."""
        return tuple(tile for tile in self.tiles if not tile.extra)

    def by_id(self, tile_id: str) -> Tile:
        for tile in self.tiles:
            if tile.tile_id == tile_id:
                return tile
        raise KeyError(tile_id)

    def tiles_containing(self, pixels: Sequence[Tuple[float, float]]) -> List[Tuple[Tile, float]]:
        """Tiles whose valid area holds every (col, row) pixel, with the smallest distance of any of them
        to that tile's edges, farthest first."""
        found = []
        for tile in self.tiles:
            if all(tile.contains_pixel(c, r) for c, r in pixels):
                distance = min(
                    min(c - tile.col_off, tile.col_off + tile.valid_width - c,
                        r - tile.row_off, tile.row_off + tile.valid_height - r)
                    for c, r in pixels
                )
                found.append((tile, distance))
        found.sort(key=lambda item: -item[1])
        return found

    def to_dict(self) -> dict:
        return {
            "raster_width": self.raster_width,
            "raster_height": self.raster_height,
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "window": asdict(self.window),
            "tiles": [tile.to_dict() for tile in self.tiles],
        }

    @classmethod
    def from_dict(cls, data: dict) -> TileGrid:
        return cls(
            raster_width=data["raster_width"],
            raster_height=data["raster_height"],
            tile_size=data["tile_size"],
            overlap=data["overlap"],
            window=PixelWindow(**data["window"]),
            tiles=tuple(Tile(**tile) for tile in data["tiles"]),
        )
