"""The merge of segment everything's objects across the levels of a multi-scale store (GDAL/OGR's own
bindings; no QGIS, no shapely). docs/segment-everything.md (*Levels*) states the rule; in short:

1. **SAM's crop NMS.** SAM's automatic generator (segment_anything/automatic_mask_generator.py and
   sam2/automatic_mask_generator.py, `_generate_masks`) runs its point grid on the whole image (crop layer
   0) and on ever smaller crops (layers 1, 2, ...), each crop seen at the model's input size, so a smaller
   crop sees finer pixels. It then removes duplicates between crops by greedy box NMS at `crop_nms_thresh`
   with the scores `1 / box_area(crop_boxes)`: "Prefer masks from smaller crops". A QuickSAM level is the
   raster at one pixel size cut into model-sized tiles, so a finer level plays a smaller crop: of two
   objects from different levels whose boxes (map units of the raster's CRS) overlap with an IoU above
   `crop_nms_thresh`, the finer level's is kept. Within a level (SAM: crops of one layer, equal scores)
   QuickSAM's border merge has already joined what tiles saw twice, so only objects of different levels
   suppress each other, and a single level is never touched. Equal levels are ordered by predicted IoU
   (SAM's order within a crop).
2. **Pieces (QuickSAM's own).** SAM's output may nest (a whole and its parts are both masks), but an object
   that a coarse level sees whole and a fine level sees in pieces (a field several tiles wide) must come
   out once. A finer object lying at least `PIECE_INSIDE` of its area inside a kept coarser object is a
   *piece candidate* of it; when the candidates together cover at least `PIECES_COVER` of the coarser
   object, they are its pieces and are dropped (the coarser object is written). When they cover less, they
   are objects inside it (a pond in a field) and stay, as SAM keeps nested masks. Coarsest objects first.

Coordinates: boxes (xmin, ymin, xmax, ymax) and geometries in the raster's CRS, map units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Sequence, Set, Tuple

from ..core.levels import same_factor

if TYPE_CHECKING:
    from osgeo import ogr

#: SAM's default `crop_nms_thresh` (both generators).
CROP_NMS_THRESH = 0.7
#: A finer object is a piece candidate of a coarser one when this much of its area lies inside it (a coarse
#: pixel's staircase edge leaves a fine piece along the border partly outside).
PIECE_INSIDE = 0.8
#: Piece candidates are the coarser object's pieces when together they cover this much of it.
PIECES_COVER = 0.5
#: An object whose box spans more grid cells than this is kept out of the grid and checked against all.
_MAX_CELLS = 4096

Box = Tuple[float, float, float, float]


@dataclass(frozen=True)
class LevelObject:
    """An object as the merge sees it: `key` (its run file FID), `factor` its level's pixel over the raster's
    (smaller = finer), `score` its predicted IoU, `box` (xmin, ymin, xmax, ymax) in map units."""

    key: int
    factor: float
    score: float
    box: Box


@dataclass
class LevelMergeResult:
    """Keys of the objects dropped: `duplicates` by the crop NMS (step 1), `pieces` as pieces of a coarser
    object (step 2)."""

    duplicates: List[int] = field(default_factory=list)
    pieces: List[int] = field(default_factory=list)

    @property
    def dropped(self) -> List[int]:
        return self.duplicates + self.pieces


class BoxGrid:
    """Which boxes may meet a box: boxes filed in the square cells (side `cell` map units) they span."""

    def __init__(self, objects: Sequence[LevelObject], cell: float) -> None:
        self.cell = cell
        self.count = len(objects)
        self.cells: Dict[Tuple[int, int], List[int]] = {}
        self.wide: List[int] = []
        for index, item in enumerate(objects):
            cols, rows = self._span(item.box)
            if len(cols) * len(rows) > _MAX_CELLS:
                self.wide.append(index)
                continue
            for col in cols:
                for row in rows:
                    self.cells.setdefault((col, row), []).append(index)

    def _span(self, box: Box) -> Tuple[range, range]:
        xmin, ymin, xmax, ymax = box
        return (range(math.floor(xmin / self.cell), math.floor(xmax / self.cell) + 1),
                range(math.floor(ymin / self.cell), math.floor(ymax / self.cell) + 1))

    def near(self, box: Box) -> Set[int]:
        """Indices of the boxes that may meet `box` (a superset)."""
        cols, rows = self._span(box)
        if len(cols) * len(rows) > _MAX_CELLS:
            return set(range(self.count))
        found = set(self.wide)
        for col in cols:
            for row in rows:
                found.update(self.cells.get((col, row), ()))
        return found


def box_iou(a: Box, b: Box) -> float:
    """IoU of two boxes (xmin, ymin, xmax, ymax)."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _meets(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def crop_nms(objects: Sequence[LevelObject], crop_nms_thresh: float, grid: BoxGrid) -> Set[int]:
    """Indices of `objects` suppressed by SAM's crop NMS across levels (step 1 of the module's rule): greedy,
    finer level first, then higher score, then key; an object is dropped when its box IoU with a kept object
    of another level is above `crop_nms_thresh` (torchvision's `batched_nms`: IoU > threshold)."""
    order = sorted(range(len(objects)), key=lambda i: (objects[i].factor, -objects[i].score, objects[i].key))
    rank = {index: position for position, index in enumerate(order)}
    suppressed: Set[int] = set()
    for index in order:
        if index in suppressed:
            continue
        kept = objects[index]
        for other in grid.near(kept.box):
            if (rank[other] > rank[index] and other not in suppressed
                    and not same_factor(objects[other].factor, kept.factor)
                    and box_iou(kept.box, objects[other].box) > crop_nms_thresh):
                suppressed.add(other)
    return suppressed


def _union_area_inside(pieces: Iterable[ogr.Geometry], whole: ogr.Geometry) -> float:
    """Area of the union of `pieces` inside `whole` (map units²)."""
    from osgeo import ogr

    collection = ogr.Geometry(ogr.wkbMultiPolygon)
    for piece in pieces:
        if ogr.GT_Flatten(piece.GetGeometryType()) == ogr.wkbPolygon:
            collection.AddGeometry(piece)
        else:
            for part in range(piece.GetGeometryCount()):
                collection.AddGeometry(piece.GetGeometryRef(part))
    union = collection.UnionCascaded()
    return union.Intersection(whole).GetArea() if union is not None else 0.0


def drop_pieces(objects: Sequence[LevelObject], geometry: Callable[[int], ogr.Geometry], dropped: Set[int],
                grid: BoxGrid) -> Set[int]:
    """Indices of `objects` (those not in `dropped`) that are pieces of a coarser object (step 2 of the
    module's rule); `geometry(key)` gives an object's polygons in map units."""
    pieces: Set[int] = set()
    order = sorted(range(len(objects)), key=lambda i: (-objects[i].factor, -objects[i].score, objects[i].key))
    for index in order:
        whole = objects[index]
        if index in dropped or index in pieces:
            continue
        finer = [i for i in grid.near(whole.box) if i not in dropped and i not in pieces
                 and objects[i].factor < whole.factor and not same_factor(objects[i].factor, whole.factor)
                 and _meets(objects[i].box, whole.box)]
        if not finer:
            continue
        outline = geometry(whole.key)
        inside = []
        for i in sorted(finer):
            shape = geometry(objects[i].key)
            area = shape.GetArea()
            if area > 0 and shape.Intersection(outline).GetArea() >= PIECE_INSIDE * area:
                inside.append(i)
        if inside and _union_area_inside((geometry(objects[i].key) for i in inside), outline) \
                >= PIECES_COVER * outline.GetArea():
            pieces.update(inside)
    return pieces


def merge_levels(objects: Sequence[LevelObject], geometry: Callable[[int], ogr.Geometry],
                 crop_nms_thresh: float = CROP_NMS_THRESH, cell: float = 0.0) -> LevelMergeResult:
    """The objects of several levels to drop so that each comes out once (the module's rule): the keys
    dropped by SAM's crop NMS at `crop_nms_thresh`, and those dropped as pieces of a coarser object.
    `geometry(key)` gives an object's polygons (ogr.Geometry, map units; called only for objects in step 2,
    possibly more than once: cache it if it reads a file). `cell`: side in map units of the grid that finds
    boxes that meet (about a tile of the finest level; 0 = from the boxes)."""
    if not objects:
        return LevelMergeResult()
    grid = BoxGrid(objects, cell if cell > 0 else _cell_from(objects))
    duplicates = crop_nms(objects, crop_nms_thresh, grid)
    pieces = drop_pieces(objects, geometry, duplicates, grid)
    return LevelMergeResult(sorted(objects[i].key for i in duplicates), sorted(objects[i].key for i in pieces))


def _cell_from(objects: Sequence[LevelObject]) -> float:
    """A grid cell about the size of the median object's box (at least a millionth of the extent)."""
    sides = sorted(max(o.box[2] - o.box[0], o.box[3] - o.box[1]) for o in objects)
    extent = max(max(o.box[2] for o in objects) - min(o.box[0] for o in objects),
                 max(o.box[3] for o in objects) - min(o.box[1] for o in objects))
    return max(sides[len(sides) // 2], extent * 1e-6, 1e-12)


__all__ = ["CROP_NMS_THRESH", "PIECES_COVER", "PIECE_INSIDE", "BoxGrid", "LevelMergeResult", "LevelObject", "box_iou",
           "crop_nms", "drop_pieces", "merge_levels"]
