"""Tile borders in segment everything: which tile writes which object, and the merge of objects cut by
tile borders, streamed tile by tile (numpy only: no QGIS, no GDAL, no torch).

Ownership: the encoded grid is cut into **cells**, one per tile, by splitting each overlap of two
neighbouring tiles in its middle; cells partition the raster, whichever tiles a run processes. A tile
*writes* a mask it sees whole when the mask's centroid lies in its cell; a mask it sees cut by a side
facing another processed tile is *staged* as a **piece** (its part inside the cell), and pieces of
neighbouring cells are joined across their common border. docs/segment-everything.md states the rule.

Streaming: pieces wait in a `Staging` area (the run file on disk, or memory in tests). After each tile
`BorderMerge.tile_done` drops pieces that copy an object another tile wrote, and writes every group of
joined pieces that can no longer grow; so what waits is about two rows of tiles' worth of pieces, not
the raster's.

Coordinates: raster pixels (col, row), half-open boxes (col0, row0, col1, row1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Dict, Iterable, Iterator, List, Optional, Protocol, Sequence, Set, Tuple

import numpy as np

from ..core.tiling import Tile

Box = Tuple[int, int, int, int]

#: A staged piece covered this much by a mask another tile wrote whole is a copy of it, not an object.
COVERED_FRACTION = 0.5
#: Pieces on two sides of a border are one object when their footprints on the border overlap this much.
BORDER_MATCH_IOU = 0.5
#: Masks of two neighbouring tiles that overlap this much (mask IoU) are one object seen twice.
DUPLICATE_IOU = 0.7
#: A complete mask within this many pixels of a border with a processed tile waits for that tile's view.
BORDER_MARGIN = 8
PIECE = "piece"
SPILL = "spill"


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


@dataclass
class MergedObject:
    """An object put together from staged pieces of one or more tiles."""

    mask: TileMask
    tile_ids: Tuple[str, ...]


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


# -- staging ------------------------------------------------------------------------------------------------

class Staging(Protocol):
    """Where staged masks wait: the run file (automatic.RunFile) or memory (MemoryStaging)."""

    def stage(self, kind: str, masks: Iterable[TileMask]) -> None: ...

    def staged(self, kind: str, tile_ids: Collection[str]) -> Dict[int, TileMask]: ...

    def tiles_with(self, kind: str) -> Set[str]: ...

    def unstage(self, keys: Iterable[int]) -> None: ...

    def unstage_tiles(self, kind: str, tile_ids: Collection[str]) -> None: ...


class MemoryStaging:
    """Staging in a dict; `most_loaded` is the largest number of masks one `staged` call returned."""

    def __init__(self) -> None:
        self._masks: Dict[int, Tuple[str, TileMask]] = {}
        self._next = 1
        self.most_loaded = 0

    def stage(self, kind: str, masks: Iterable[TileMask]) -> None:
        for mask in masks:
            self._masks[self._next] = (kind, mask)
            self._next += 1

    def staged(self, kind: str, tile_ids: Collection[str]) -> Dict[int, TileMask]:
        found = {key: mask for key, (k, mask) in self._masks.items() if k == kind and mask.tile_id in tile_ids}
        self.most_loaded = max(self.most_loaded, len(found))
        return found

    def tiles_with(self, kind: str) -> Set[str]:
        return {mask.tile_id for k, mask in self._masks.values() if k == kind}

    def unstage(self, keys: Iterable[int]) -> None:
        for key in keys:
            del self._masks[key]

    def unstage_tiles(self, kind: str, tile_ids: Collection[str]) -> None:
        self.unstage([key for key, (k, mask) in self._masks.items() if k == kind and mask.tile_id in tile_ids])

    def __len__(self) -> int:
        return len(self._masks)


# -- the streamed merge ---------------------------------------------------------------------------------------

class BorderMerge:
    """The cross-tile merge, advanced after each finished tile.

    A tile is *settled* when it and every processed tile whose window meets it are done: every mask that
    could cover one of its pieces is staged, so its copies can be dropped. It is *closed* when it and the
    tiles across its cell's borders are settled: no piece can join its pieces any more. A group of joined
    pieces is written when all its tiles are closed.
    """

    def __init__(self, regions: Dict[str, TileRegion]):
        self.regions = regions

    def settled(self, done: Collection[str], tile_id: str) -> bool:
        return tile_id in done and all(n in done for n in self.regions[tile_id].neighbours)

    def closed(self, done: Collection[str], tile_id: str) -> bool:
        return self.settled(done, tile_id) and all(
            self.settled(done, side) for side in self.regions[tile_id].sides if side is not None)

    def tile_done(self, staging: Staging, done: Set[str], tile_id: str, assignment: Assignment) -> List[MergedObject]:
        """Stage a finished tile's pieces and spills (`done` already includes it) and return the objects
        that are now complete."""
        staging.stage(PIECE, assignment.pieces)
        staging.stage(SPILL, assignment.spills)
        nearby = (tile_id, *self.regions[tile_id].neighbours)
        released = []
        for other in nearby:  # tiles that this one's completion settles
            if self.settled(done, other):
                released += self._settle(staging, other)
        before = done - {tile_id}
        spent = [t for t in staging.tiles_with(SPILL)
                 if all(self.settled(done, n) for n in (t, *self.regions[t].neighbours))]
        staging.unstage_tiles(SPILL, spent)
        newly_closed = {t for n in nearby for t in (n, *self.regions[n].neighbours)
                        if self.closed(done, t) and not self.closed(before, t)}
        if not newly_closed:
            return released
        return released + self._complete_groups(staging, done)

    def _settle(self, staging: Staging, tile_id: str) -> List[MergedObject]:
        """For a tile that just settled: unstage its pieces mostly covered by other tiles' spills (copies of
        objects those tiles write), and return its spills to write: those no neighbour saw as a
        higher-ranked copy. (Spills stay staged to cancel pieces until every tile they could cover is
        settled.)"""
        pieces = staging.staged(PIECE, [tile_id])
        own = staging.staged(SPILL, [tile_id]).values()
        if not pieces and not own:
            return []
        others = list(staging.staged(SPILL, self.regions[tile_id].neighbours).values())
        staging.unstage([key for key, piece in pieces.items() if _covered(piece, others)])
        return [MergedObject(spill, (tile_id,)) for spill in own
                if not any(_rank(other) > _rank(spill) and _mask_iou(spill, other) >= DUPLICATE_IOU
                           for other in others)]

    def _complete_groups(self, staging: Staging, done: Collection[str]) -> List[MergedObject]:
        settled = [t for t in staging.tiles_with(PIECE) if self.settled(done, t)]
        pieces = staging.staged(PIECE, settled)
        groups = join_pieces(pieces, self.regions)
        complete = [keys for keys in groups if all(self.closed(done, pieces[k].tile_id) for k in keys)]
        staging.unstage(key for keys in complete for key in keys)
        return [union_of([pieces[k] for k in keys]) for keys in complete]


def _rank(mask: TileMask) -> Tuple[float, int, str]:
    """Which of two views of one object is written: higher score, then more pixels, then tile id."""
    return mask.score, mask.pixels, mask.tile_id


def _mask_iou(a: TileMask, b: TileMask) -> float:
    c0, r0, c1, r1 = max(a.col0, b.col0), max(a.row0, b.row0), min(a.col1, b.col1), min(a.row1, b.row1)
    if c0 >= c1 or r0 >= r1:
        return 0.0
    inter = int((a.crop[r0 - a.row0:r1 - a.row0, c0 - a.col0:c1 - a.col0]
                 & b.crop[r0 - b.row0:r1 - b.row0, c0 - b.col0:c1 - b.col0]).sum())
    return inter / (a.pixels + b.pixels - inter)


def _covered(piece: TileMask, spills: Sequence[TileMask]) -> bool:
    others = [s for s in spills if s.tile_id != piece.tile_id]
    if not others:
        return False
    union = np.zeros_like(piece.crop)
    for spill in others:
        c0, r0 = max(piece.col0, spill.col0), max(piece.row0, spill.row0)
        c1, r1 = min(piece.col1, spill.col1), min(piece.row1, spill.row1)
        if c0 < c1 and r0 < r1:
            union[r0 - piece.row0:r1 - piece.row0, c0 - piece.col0:c1 - piece.col0] |= \
                spill.crop[r0 - spill.row0:r1 - spill.row0, c0 - spill.col0:c1 - spill.col0]
    return int((union & piece.crop).sum()) >= COVERED_FRACTION * piece.pixels


def _footprints(piece: TileMask, region: TileRegion) -> Iterator[Tuple[Tuple[str, str], str, np.ndarray]]:
    """(border, side of it, positions along it) for each border with a processed tile the piece reaches;
    a border is named by its two tiles, left/top first."""
    c0, r0, c1, r1 = region.cell
    left, top, right, bottom = region.sides
    if left and piece.col0 == c0:
        yield (left, region.tile_id), "after", piece.row0 + np.flatnonzero(piece.crop[:, 0])
    if right and piece.col1 == c1:
        yield (region.tile_id, right), "before", piece.row0 + np.flatnonzero(piece.crop[:, -1])
    if top and piece.row0 == r0:
        yield (top, region.tile_id), "after", piece.col0 + np.flatnonzero(piece.crop[0, :])
    if bottom and piece.row1 == r1:
        yield (region.tile_id, bottom), "before", piece.col0 + np.flatnonzero(piece.crop[-1, :])


def _find(parent: Dict[int, int], key: int) -> int:
    while parent[key] != key:
        parent[key] = parent[parent[key]]
        key = parent[key]
    return key


def join_pieces(pieces: Dict[int, TileMask], regions: Dict[str, TileRegion]) -> List[List[int]]:
    """Groups of piece keys that are one object: pieces on the two sides of a border are joined when
    their footprints on it overlap (1-D IoU >= BORDER_MATCH_IOU), best pairs first, each piece with at
    most one partner per border (so a roof is not chained to the building around it); joins are
    transitive (an object over a four-tile corner joins through its side neighbours)."""
    borders: Dict[Tuple[str, str], Dict[str, List[Tuple[int, set]]]] = {}
    for key, piece in pieces.items():
        for border, side, positions in _footprints(piece, regions[piece.tile_id]):
            if positions.size:
                borders.setdefault(border, {"before": [], "after": []})[side].append((key, set(positions.tolist())))
    parent = {key: key for key in pieces}
    for sides in borders.values():
        pairs = []
        for i, before in sides["before"]:
            for j, after in sides["after"]:
                iou = len(before & after) / len(before | after)
                if iou >= BORDER_MATCH_IOU:
                    pairs.append((-iou, i, j))
        used_before, used_after = set(), set()
        for _, i, j in sorted(pairs):
            if i in used_before or j in used_after:
                continue
            used_before.add(i)
            used_after.add(j)
            parent[_find(parent, i)] = _find(parent, j)
    groups: Dict[int, List[int]] = {}
    for key in pieces:
        groups.setdefault(_find(parent, key), []).append(key)
    return list(groups.values())


def union_of(parts: Sequence[TileMask]) -> MergedObject:
    """One mask from joined pieces; score and stability are their area-weighted means."""
    c0, r0 = min(p.col0 for p in parts), min(p.row0 for p in parts)
    c1, r1 = max(p.col1 for p in parts), max(p.row1 for p in parts)
    canvas = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    for part in parts:
        canvas[part.row0 - r0:part.row1 - r0, part.col0 - c0:part.col1 - c0] |= part.crop
    weights = np.array([p.pixels for p in parts], dtype=float)
    score = float(np.average([p.score for p in parts], weights=weights))
    stability = float(np.average([p.stability for p in parts], weights=weights))
    tile_ids = tuple(sorted({p.tile_id for p in parts}))
    return MergedObject(TileMask(",".join(tile_ids), c0, r0, canvas, score, stability), tile_ids)
