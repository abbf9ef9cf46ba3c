"""The merge of objects cut by tile borders in segment everything, streamed tile by tile (numpy only: no QGIS,
no GDAL, no torch). tile_merge.py decides what each tile writes and stages; this joins the staged pieces.

Streaming: pieces wait in a `Staging` area (the run file on disk, or memory in tests). After each tile
`BorderMerge.tile_done` drops pieces that copy an object another tile wrote, and writes every group of
joined pieces that can no longer grow; so what waits is about two rows of tiles' worth of pieces, not
the raster's. docs/segment-everything.md states the rule.

Coordinates: raster pixels (col, row), half-open boxes (col0, row0, col1, row1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Dict, Iterable, Iterator, List, Protocol, Sequence, Set, Tuple

import numpy as np

from .tile_merge import Assignment, TileMask, TileRegion

#: A staged piece covered this much by a mask another tile wrote whole is a copy of it, not an object.
COVERED_FRACTION = 0.5
#: Pieces on two sides of a border are one object when their footprints on the border overlap this much.
BORDER_MATCH_IOU = 0.5
#: Masks of two neighbouring tiles that overlap this much (mask IoU) are one object seen twice.
DUPLICATE_IOU = 0.7
PIECE = "piece"
SPILL = "spill"


@dataclass
class MergedObject:
    """An object put together from staged pieces of one or more tiles."""

    mask: TileMask
    tile_ids: Tuple[str, ...]


# -- staging ------------------------------------------------------------------------------------------------

class Staging(Protocol):
    """Where staged masks wait: the run file (run_file.RunFile) or memory (MemoryStaging)."""

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

    def __init__(self, regions: Dict[str, TileRegion]) -> None:
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
