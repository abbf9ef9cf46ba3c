"""Tile borders in segment everything: which tile writes which object (numpy only: no QGIS, no GDAL, no
torch). The merge of objects cut by tile borders, streamed tile by tile, is border_merge.py.

Ownership: the encoded grid is cut into **cells**, one per tile, by splitting each overlap of two
neighbouring tiles in its middle; cells partition the raster, whichever tiles a run processes. A tile
*writes* a mask it sees whole when the mask's centroid lies in its cell; a mask it sees cut by a side
facing another processed tile is *staged* as a **piece** (its part inside the cell), and pieces of
neighbouring cells are joined across their common border (border_merge.py). docs/segment-everything.md
states the rule.

Coordinates: raster pixels (col, row), half-open boxes (col0, row0, col1, row1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..core.tiling import Tile

Box = Tuple[int, int, int, int]

#: A complete mask within this many pixels of a border with a processed tile waits for that tile's view.
BORDER_MARGIN = 8


@dataclass
class TileMask:
    """One mask: `crop` (H, W) bool whose pixel (0, 0) is raster pixel (col0, row0); where it came from."""

    tile_id: str
    col0: int
    row0: int
    crop: np.ndarray = field(repr=False)
    score: float = 1.0
    stability: float = 1.0

    @property
    def col1(self) -> int:
        return self.col0 + self.crop.shape[1]

    @property
    def row1(self) -> int:
        return self.row0 + self.crop.shape[0]

    @property
    def pixels(self) -> int:
        return int(self.crop.sum())

    def centroid(self) -> Tuple[float, float]:
        """Mean (col, row) of the mask's pixel centres, raster pixels."""
        rows, cols = np.nonzero(self.crop)
        return self.col0 + float(cols.mean()) + 0.5, self.row0 + float(rows.mean()) + 0.5


@dataclass(frozen=True)
class TileRegion:
    """A processed tile: its valid `window` and its `cell`; `sides` are the processed tiles across the
    cell's left, top, right and bottom borders (None: the raster's edge or an unprocessed tile);
    `neighbours` are the processed tiles whose windows meet this one; `unprocessed_cells` are the cells
    of unprocessed tiles that meet this window (objects centred there belong to another run)."""

    tile_id: str
    window: Box
    cell: Box
    sides: Tuple[Optional[str], Optional[str], Optional[str], Optional[str]]
    neighbours: Tuple[str, ...]
    unprocessed_cells: Tuple[Box, ...] = ()

    @property
    def inner(self) -> Tuple[bool, bool, bool, bool]:
        """Which sides face a processed tile (one that sees past this tile's edge)."""
        return tuple(side is not None for side in self.sides)


@dataclass
class Assignment:
    """What one tile does with its masks: writes `complete` ones now; stages `pieces` (its cell's part of
    masks it cannot vouch for) and `spills` (its complete masks reaching past or near a border with a
    processed tile, written when the tile settles)."""

    complete: List[TileMask] = field(default_factory=list)
    pieces: List[TileMask] = field(default_factory=list)
    spills: List[TileMask] = field(default_factory=list)


# -- cells ----------------------------------------------------------------------------------------------------

def _axis_cells(spans: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Cells along one axis from the tiles' (start, end) spans in order: each overlap split at its
    (integer) middle."""
    cuts = [(end + next_start) // 2 for (_, end), (next_start, _) in zip(spans, spans[1:])]
    starts = [spans[0][0], *cuts]
    ends = [*cuts, spans[-1][1]]
    return list(zip(starts, ends))


def _meeting(spans: Sequence[Tuple[int, int]], index: int) -> List[int]:
    start, end = spans[index]
    return [i for i, (other_start, other_end) in enumerate(spans) if other_start < end and start < other_end]


def tile_regions(grid: Sequence[Tile], processed: Optional[Collection[str]] = None) -> Dict[str, TileRegion]:
    """Regions of the `processed` tiles (all by default) of the encoded `grid` (every tile of the store,
    processed or not: the cells do not depend on which tiles a run takes)."""
    tiles = {(tile.row, tile.col): tile for tile in grid}
    chosen = set(processed) if processed is not None else {tile.tile_id for tile in grid}
    col_spans = {t.col: (t.col_off, t.col_off + t.valid_width) for t in grid}
    row_spans = {t.row: (t.row_off, t.row_off + t.valid_height) for t in grid}
    cols, rows = sorted(col_spans), sorted(row_spans)
    col_spans_ordered, row_spans_ordered = [col_spans[c] for c in cols], [row_spans[r] for r in rows]
    col_cells, row_cells = _axis_cells(col_spans_ordered), _axis_cells(row_spans_ordered)

    def cell(tile: Tile) -> Box:
        (c0, c1), (r0, r1) = col_cells[cols.index(tile.col)], row_cells[rows.index(tile.row)]
        return c0, r0, c1, r1

    def processed_at(row: int, col: int) -> Optional[str]:
        tile = tiles.get((row, col))
        return tile.tile_id if tile is not None and tile.tile_id in chosen else None

    regions = {}
    for tile in grid:
        if tile.tile_id not in chosen:
            continue
        meeting = [tiles[(rows[r], cols[c])]
                   for r in _meeting(row_spans_ordered, rows.index(tile.row))
                   for c in _meeting(col_spans_ordered, cols.index(tile.col))
                   if (rows[r], cols[c]) in tiles and (rows[r], cols[c]) != (tile.row, tile.col)]
        row_i, col_i = rows.index(tile.row), cols.index(tile.col)
        sides = (processed_at(tile.row, cols[col_i - 1]) if col_i > 0 else None,
                 processed_at(rows[row_i - 1], tile.col) if row_i > 0 else None,
                 processed_at(tile.row, cols[col_i + 1]) if col_i + 1 < len(cols) else None,
                 processed_at(rows[row_i + 1], tile.col) if row_i + 1 < len(rows) else None)
        regions[tile.tile_id] = TileRegion(
            tile_id=tile.tile_id,
            window=(tile.col_off, tile.row_off, tile.col_off + tile.valid_width, tile.row_off + tile.valid_height),
            cell=cell(tile), sides=sides,
            neighbours=tuple(t.tile_id for t in meeting if t.tile_id in chosen),
            unprocessed_cells=tuple(cell(t) for t in meeting if t.tile_id not in chosen))
    return regions


# -- one tile's masks -------------------------------------------------------------------------------------

def touches_inner_edge(mask: TileMask, region: TileRegion) -> bool:
    """Whether the mask reaches a side of its tile beyond which a processed neighbour sees more."""
    c0, r0, c1, r1 = region.window
    left, top, right, bottom = region.inner
    return ((left and mask.col0 <= c0) or (top and mask.row0 <= r0) or (right and mask.col1 >= c1)
            or (bottom and mask.row1 >= r1))


def _inside(point: Tuple[float, float], box: Box) -> bool:
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


def pixel_bounds(crop: np.ndarray) -> Optional[Box]:
    """The half-open box (col0, row0, col1, row1) of a bool array's true pixels, or None if it has none."""
    rows, cols = np.flatnonzero(crop.any(axis=1)), np.flatnonzero(crop.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def trimmed(mask: TileMask) -> Optional[TileMask]:
    """The mask with its crop cut to the bounding box of its pixels, or None if it has none."""
    bounds = pixel_bounds(mask.crop)
    if bounds is None:
        return None
    c0, r0, c1, r1 = bounds
    return TileMask(mask.tile_id, mask.col0 + c0, mask.row0 + r0, np.ascontiguousarray(mask.crop[r0:r1, c0:c1]),
                    mask.score, mask.stability)


def clip_mask(mask: TileMask, box: Box) -> Optional[TileMask]:
    """The part of `mask` inside `box`, trimmed to its pixels, or None."""
    c0, r0 = max(mask.col0, box[0]), max(mask.row0, box[1])
    c1, r1 = min(mask.col1, box[2]), min(mask.row1, box[3])
    if c0 >= c1 or r0 >= r1:
        return None
    crop = mask.crop[r0 - mask.row0:r1 - mask.row0, c0 - mask.col0:c1 - mask.col0]
    return trimmed(TileMask(mask.tile_id, c0, r0, crop, mask.score, mask.stability))


def _near_inner_border(mask: TileMask, region: TileRegion) -> bool:
    c0, r0, c1, r1 = region.cell
    left, top, right, bottom = region.inner
    return ((left and mask.col0 < c0 + BORDER_MARGIN) or (top and mask.row0 < r0 + BORDER_MARGIN)
            or (right and mask.col1 > c1 - BORDER_MARGIN) or (bottom and mask.row1 > r1 - BORDER_MARGIN))


def assign_masks(region: TileRegion, masks: Iterable[TileMask]) -> Assignment:
    """The ownership rule for one tile's masks (docs/segment-everything.md):

    - seen whole (touches no inner side) with its centroid in the cell: written whole by this tile; at
      once, or, if it reaches past or near a border with a processed tile, as a spill: it then cancels
      other tiles' pieces of it and is written when the tile settles, unless a neighbour's view of the
      same object ranks higher (two tiles' masks of one object differ a little, so both centroids can
      fall on their own side of the split);
    - seen whole with its centroid in an unprocessed tile's cell: left to a run that processes that tile;
    - otherwise its part inside the cell, if any, is staged as a piece for the merge.
    """
    result = Assignment()
    for mask in masks:
        whole = not touches_inner_edge(mask, region)
        centroid = mask.centroid() if whole else None
        if whole and _inside(centroid, region.cell):
            (result.spills if _near_inner_border(mask, region) else result.complete).append(mask)
            continue
        if whole and any(_inside(centroid, cell) for cell in region.unprocessed_cells):
            continue
        piece = clip_mask(mask, region.cell)
        if piece is not None:
            result.pieces.append(piece)
    return result
