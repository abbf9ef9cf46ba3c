"""Segment everything: automatic masks for a whole raster from its feature store (numpy + GDAL/OGR;
no QGIS, no torch, no rasterio, no shapely: this runs inside QGIS's process).

Per encoded tile: a grid of point prompts over the tile's valid area is decoded by the store's ONNX
decoder (the same `OnnxDecoder` as the dock), masks are filtered by predicted IoU and stability, small
regions removed, duplicates suppressed (NMS on boxes), and every surviving mask is handed to the
ownership rule (`assign_masks`), which decides whether the tile writes it now (`complete`), or stages
the part of it that lies in the tile's owned region (`piece`) for the cross-tile merge
(`merge_staged`). docs/segment-everything.md states the rule; tests feed it synthetic masks.

Coordinates: `TileMask` and `TileRegion` are in raster pixels (col, row), half-open; polygons out are
in the raster's CRS.

Run file: the output GeoPackage is built under OUT.partial.gpkg, which also holds the run's parameters,
the finished tiles and the staged pieces; each tile is committed in one transaction, so a killed run
resumes where it stopped without duplicates. When every tile is done, pieces are merged, staging tables
dropped and the file renamed to OUT.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..encoder.errors import Cancelled, QuickSamError
from ..encoder.store import STATUS_DONE, FeatureStore
from ..encoder.tiling import Tile
from .decoding import OnnxDecoder, Prompts, choose_outputs, stability_scores, upsample_masks
from .engine import MASK_MODES, SegmentEngine
from .vectorise import Polygons, mask_to_polygons

OUTPUT_LAYER = "segments"
RUN_TABLE = "quicksam_run"
TILE_TABLE = "quicksam_tiles"
STAGED_TABLE = "quicksam_staged"
MERGED_MARKER = "__merged__"
#: A staged piece covered this much by a mask another tile kept whole is a copy of it, not an object.
COVERED_FRACTION = 0.5
#: Pieces on two sides of a border are one object when their footprints on the border overlap this much.
BORDER_MATCH_IOU = 0.5


@dataclass(frozen=True)
class AutoMaskSettings:
    """SAM's automatic mask generator parameters, plus QuickSAM's object filters.

    points_per_side: grid points per tile side (points_per_side² prompts per tile);
    points_per_batch: prompts decoded before filtering (bounds memory; the graph decodes one at a time);
    pred_iou_thresh: minimum predicted IoU; stability_score_thresh / stability_score_offset: minimum IoU of
    the mask thresholded at ±offset (logits); box_nms_thresh: box IoU above which the lower-scored mask of
    a tile is dropped; min_mask_region_area: islands and holes smaller than this many pixels are removed;
    mask_mode: as in the interactive stage (`all` = SAM's three candidates per point);
    min_object_area / max_object_area: in the raster CRS's map units² (0 = no limit);
    simplify_tolerance: Douglas-Peucker tolerance in map units (0 = exact pixel edges).
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 100
    mask_mode: str = "all"
    min_object_area: float = 0.0
    max_object_area: float = 0.0
    simplify_tolerance: float = 0.0

    def check(self) -> None:
        """QuickSamError naming the first unusable value."""
        problems = [
            (self.points_per_side < 1, "points per side must be at least 1"),
            (self.points_per_batch < 1, "points per batch must be at least 1"),
            (not 0 <= self.pred_iou_thresh <= 1, "the predicted IoU threshold must be between 0 and 1"),
            (not 0 <= self.stability_score_thresh <= 1, "the stability threshold must be between 0 and 1"),
            (self.stability_score_offset < 0, "the stability offset must not be negative"),
            (not 0 < self.box_nms_thresh <= 1, "the box NMS threshold must be above 0 and at most 1"),
            (self.min_mask_region_area < 0, "the minimum mask region area must not be negative"),
            (self.mask_mode not in MASK_MODES, f"the mask mode must be one of {', '.join(MASK_MODES)}"),
            (self.min_object_area < 0 or self.max_object_area < 0, "object areas must not be negative"),
            (0 < self.max_object_area < self.min_object_area,
             "the maximum object area is smaller than the minimum"),
            (self.simplify_tolerance < 0, "the simplification tolerance must not be negative"),
        ]
        for bad, message in problems:
            if bad:
                raise QuickSamError(message)

    def to_dict(self) -> dict:
        return asdict(self)


# -- records -------------------------------------------------------------------------------------------

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
    """A tile's valid window and owned region (raster pixels, half-open col0..col1, row0..row1), and which
    of its sides (left, top, right, bottom) face a processed neighbour ("inner" sides)."""

    tile_id: str
    window: Tuple[int, int, int, int]
    owned: Tuple[int, int, int, int]
    inner: Tuple[bool, bool, bool, bool]


@dataclass
class Assignment:
    """What one tile does with its masks: writes `complete` ones now; stages `pieces` (its owned part of
    masks it cannot vouch for) and `spills` (complete masks reaching past its owned region)."""

    complete: List[TileMask] = field(default_factory=list)
    pieces: List[TileMask] = field(default_factory=list)
    spills: List[TileMask] = field(default_factory=list)


@dataclass
class MergedObject:
    """An object put together from staged pieces of one or more tiles."""

    mask: TileMask
    tile_ids: Tuple[str, ...]


# -- ownership (pure) -------------------------------------------------------------------------------------

def _midpoint(end_of_first: int, start_of_second: int) -> int:
    """Where two overlapping tiles split their overlap [start_of_second, end_of_first)."""
    return (start_of_second + end_of_first) // 2


def tile_regions(tiles: Sequence[Tile]) -> Dict[str, TileRegion]:
    """Owned regions of the processed `tiles`: each tile owns its window up to the middle of its overlap
    with each processed neighbour (same grid row/column, next index). Owned regions of a full grid
    partition its area."""
    by_position = {(tile.row, tile.col): tile for tile in tiles}
    regions = {}
    for tile in tiles:
        c0, r0 = tile.col_off, tile.row_off
        c1, r1 = c0 + tile.valid_width, r0 + tile.valid_height
        left, top = by_position.get((tile.row, tile.col - 1)), by_position.get((tile.row - 1, tile.col))
        right, bottom = by_position.get((tile.row, tile.col + 1)), by_position.get((tile.row + 1, tile.col))
        owned = (
            _midpoint(left.col_off + left.valid_width, c0) if left else c0,
            _midpoint(top.row_off + top.valid_height, r0) if top else r0,
            _midpoint(c1, right.col_off) if right else c1,
            _midpoint(r1, bottom.row_off) if bottom else r1,
        )
        regions[tile.tile_id] = TileRegion(tile.tile_id, (c0, r0, c1, r1), owned,
                                           (left is not None, top is not None, right is not None,
                                            bottom is not None))
    return regions


def touches_inner_edge(mask: TileMask, region: TileRegion) -> bool:
    """Whether the mask reaches a side of its tile beyond which a processed neighbour sees more."""
    c0, r0, c1, r1 = region.window
    left, top, right, bottom = region.inner
    return ((left and mask.col0 <= c0) or (top and mask.row0 <= r0) or (right and mask.col1 >= c1)
            or (bottom and mask.row1 >= r1))


def _inside(point: Tuple[float, float], box: Tuple[int, int, int, int]) -> bool:
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


def clip_mask(mask: TileMask, box: Tuple[int, int, int, int]) -> Optional[TileMask]:
    """The part of `mask` inside `box` (raster pixels, half-open), trimmed to its bounds, or None."""
    c0, r0 = max(mask.col0, box[0]), max(mask.row0, box[1])
    c1, r1 = min(mask.col1, box[2]), min(mask.row1, box[3])
    if c0 >= c1 or r0 >= r1:
        return None
    crop = mask.crop[r0 - mask.row0:r1 - mask.row0, c0 - mask.col0:c1 - mask.col0]
    return trimmed(TileMask(mask.tile_id, c0, r0, crop, mask.score, mask.stability))


def trimmed(mask: TileMask) -> Optional[TileMask]:
    """The mask with its crop cut to the bounding box of its pixels, or None if it has none."""
    rows, cols = np.flatnonzero(mask.crop.any(axis=1)), np.flatnonzero(mask.crop.any(axis=0))
    if rows.size == 0:
        return None
    crop = mask.crop[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return TileMask(mask.tile_id, mask.col0 + int(cols[0]), mask.row0 + int(rows[0]), np.ascontiguousarray(crop),
                    mask.score, mask.stability)


def assign_masks(region: TileRegion, masks: Iterable[TileMask]) -> Assignment:
    """The ownership rule for one tile's masks (docs/segment-everything.md):

    - complete (touches no inner side) and centroid in the owned region: written whole by this tile; if
      it reaches past the owned region it is also staged as a spill, to cancel other tiles' pieces of it;
    - otherwise its part inside the owned region, if any, is staged as a piece for the merge.
    """
    result = Assignment()
    for mask in masks:
        if not touches_inner_edge(mask, region) and _inside(mask.centroid(), region.owned):
            result.complete.append(mask)
            c0, r0, c1, r1 = region.owned
            if mask.col0 < c0 or mask.row0 < r0 or mask.col1 > c1 or mask.row1 > r1:
                result.spills.append(mask)
            continue
        piece = clip_mask(mask, region.owned)
        if piece is not None:
            result.pieces.append(piece)
    return result


# -- merging (pure) ----------------------------------------------------------------------------------------

def _overlap_pixels(a: TileMask, b: TileMask) -> int:
    c0, r0, c1, r1 = max(a.col0, b.col0), max(a.row0, b.row0), min(a.col1, b.col1), min(a.row1, b.row1)
    if c0 >= c1 or r0 >= r1:
        return 0
    return int((a.crop[r0 - a.row0:r1 - a.row0, c0 - a.col0:c1 - a.col0]
                & b.crop[r0 - b.row0:r1 - b.row0, c0 - b.col0:c1 - b.col0]).sum())


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


def _footprints(piece: TileMask, region: TileRegion) -> Iterator[Tuple[Tuple[str, int], str, np.ndarray]]:
    """(border key, side, positions along the border) for each inner owned side the piece reaches."""
    c0, r0, c1, r1 = region.owned
    left, top, right, bottom = region.inner
    if left and piece.col0 == c0:
        yield ("v", c0), "after", piece.row0 + np.flatnonzero(piece.crop[:, 0])
    if right and piece.col1 == c1:
        yield ("v", c1), "before", piece.row0 + np.flatnonzero(piece.crop[:, -1])
    if top and piece.row0 == r0:
        yield ("h", r0), "after", piece.col0 + np.flatnonzero(piece.crop[0, :])
    if bottom and piece.row1 == r1:
        yield ("h", r1), "before", piece.col0 + np.flatnonzero(piece.crop[-1, :])


def _find(parent: List[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def merge_staged(pieces: Sequence[TileMask], spills: Sequence[TileMask],
                 regions: Dict[str, TileRegion]) -> List[MergedObject]:
    """Objects from staged pieces: drop pieces mostly covered by another tile's complete mask (a copy of
    an object that tile wrote), then join pieces of different tiles across each owned-region border when
    their footprints on the border overlap (1-D IoU >= BORDER_MATCH_IOU; best pairs first, one partner
    per piece and border), and union each joined group into one mask."""
    kept = [p for p in pieces if not _covered(p, spills)]
    borders: Dict[Tuple[str, int], Dict[str, List[Tuple[int, set]]]] = {}
    for index, piece in enumerate(kept):
        for key, side, positions in _footprints(piece, regions[piece.tile_id]):
            if positions.size:
                borders.setdefault(key, {"before": [], "after": []})[side].append((index, set(positions.tolist())))
    parent = list(range(len(kept)))
    for sides in borders.values():
        pairs = []
        for i, before in sides["before"]:
            for j, after in sides["after"]:
                if kept[i].tile_id == kept[j].tile_id:
                    continue
                iou = len(before & after) / len(before | after)
                if iou >= BORDER_MATCH_IOU:
                    pairs.append((iou, i, j))
        used_before, used_after = set(), set()
        for _, i, j in sorted(pairs, reverse=True):
            if i in used_before or j in used_after:
                continue
            used_before.add(i)
            used_after.add(j)
            parent[_find(parent, i)] = _find(parent, j)
    groups: Dict[int, List[int]] = {}
    for index in range(len(kept)):
        groups.setdefault(_find(parent, index), []).append(index)
    return [_union([kept[i] for i in members]) for members in groups.values()]


def _union(parts: Sequence[TileMask]) -> MergedObject:
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


# -- masks of one tile ---------------------------------------------------------------------------------------

def point_grid(tile: Tile, points_per_side: int) -> np.ndarray:
    """(n², 2) prompt points (x = col, y = row) in tile pixels, evenly over the tile's valid area as
    SAM's `build_point_grid` (cell centres)."""
    fractions = (np.arange(points_per_side) + 0.5) / points_per_side
    xs, ys = fractions * tile.valid_width, fractions * tile.valid_height
    grid_x, grid_y = np.meshgrid(xs, ys)
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)


def box_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> List[int]:
    """Indices kept by greedy non-maximum suppression on (N, 4) boxes x0, y0, x1, y1 (half-open)."""
    order = list(np.argsort(-scores, kind="stable"))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: List[int] = []
    while order:
        best = order.pop(0)
        keep.append(int(best))
        if not order:
            break
        rest = np.array(order)
        x0 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1)
        order = [int(i) for i, o in zip(rest, iou) if o <= threshold]
    return keep


def remove_small_regions(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """The mask with 8-connected islands and holes smaller than `min_pixels` removed (GDAL's sieve, like
    SAM's `remove_small_regions` in both modes)."""
    if min_pixels <= 0 or not mask.any():
        return mask
    from osgeo import gdal

    padded = np.pad(mask, 1).astype(np.uint8)  # the padding joins the outside into one background region
    raster = gdal.GetDriverByName("MEM").Create("", padded.shape[1], padded.shape[0], 1, gdal.GDT_Byte)
    band = raster.GetRasterBand(1)
    band.WriteArray(padded)
    gdal.SieveFilter(band, None, band, int(min_pixels), 8)
    return band.ReadAsArray()[1:-1, 1:-1].astype(bool)


def _pick(candidates: np.ndarray, logits: np.ndarray, scores: np.ndarray, mode: str) -> np.ndarray:
    if mode in ("single", "all"):
        return candidates
    if mode == "best":
        return candidates[[int(np.argmax(scores[candidates]))]]
    areas = (logits[candidates] > 0).reshape(len(candidates), -1).sum(axis=1)  # low-res area decides
    return candidates[[int(np.argmax(areas) if mode == "largest" else np.argmin(areas))]]


def tile_masks(decoder: OnnxDecoder, features: Dict[str, np.ndarray], tile: Tile,
               settings: AutoMaskSettings) -> List[TileMask]:
    """The filtered, de-duplicated masks of one tile (raster pixel coordinates)."""
    threshold = decoder.settings.mask_threshold
    found: List[TileMask] = []
    points = point_grid(tile, settings.points_per_side)
    for start in range(0, len(points), settings.points_per_batch):
        logits, scores = [], []
        for x, y in points[start:start + settings.points_per_batch]:
            all_logits, all_scores = decoder.raw(features, Prompts(points=[[x, y]], labels=[1]))
            chosen = choose_outputs(all_logits, all_scores, settings.mask_mode != "single", decoder.settings)
            chosen = _pick(chosen, all_logits, all_scores, settings.mask_mode)
            logits.append(all_logits[chosen])
            scores.append(all_scores[chosen])
        logits, scores = np.concatenate(logits), np.concatenate(scores)
        stable = stability_scores(logits - threshold, settings.stability_score_offset)
        good = np.flatnonzero((scores >= settings.pred_iou_thresh) & (stable >= settings.stability_score_thresh))
        if good.size == 0:
            continue
        masks = upsample_masks(logits[good], decoder.image_size, threshold)
        for index, mask in zip(good, masks):
            mask = remove_small_regions(mask[:tile.valid_height, :tile.valid_width], settings.min_mask_region_area)
            item = trimmed(TileMask(tile.tile_id, tile.col_off, tile.row_off, mask, float(scores[index]),
                                    float(stable[index])))
            if item is not None:
                found.append(item)
    if not found:
        return []
    boxes = np.array([[m.col0, m.row0, m.col1, m.row1] for m in found], dtype=float)
    return [found[i] for i in box_nms(boxes, np.array([m.score for m in found]), settings.box_nms_thresh)]


# -- area of interest -------------------------------------------------------------------------------------

def tiles_to_process(store: FeatureStore, area_wkbs: Optional[Sequence[bytes]] = None) -> List[Tile]:
    """Encoded tiles, or those whose valid window intersects any of `area_wkbs` (polygons as WKB in the
    raster CRS). QuickSamError when there is none."""
    from osgeo import ogr

    done = [tile for tile in store.grid if store.status(tile) == STATUS_DONE]
    if not done:
        raise QuickSamError(f"the store '{store.root}' has no encoded tile; finish the encoding first")
    if area_wkbs is None:
        return done
    areas = [ogr.CreateGeometryFromWkb(bytes(wkb)) for wkb in area_wkbs]
    areas = [a for a in areas if a is not None and not a.IsEmpty()]
    chosen = [tile for tile in done if any(area.Intersects(_tile_footprint(store, tile)) for area in areas)]
    if not chosen:
        raise QuickSamError("the area of interest does not overlap the encoded part of the raster; check that "
                            "it covers the raster (its CRS is transformed to the raster's)")
    return chosen


def _tile_footprint(store: FeatureStore, tile: Tile):
    from osgeo import ogr

    a, b, c, d, e, f = store.geotransform
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for col, row in ((0, 0), (tile.valid_width, 0), (tile.valid_width, tile.valid_height), (0, tile.valid_height),
                     (0, 0)):
        col, row = col + tile.col_off, row + tile.row_off
        ring.AddPoint_2D(a + col * b + row * c, d + col * e + row * f)
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    return polygon


# -- the run file ------------------------------------------------------------------------------------------

def partial_path(output: Path) -> Path:
    """Where the run builds `output` (and keeps what it needs to resume)."""
    return output.with_name(output.stem + ".partial.gpkg")


def check_output(output: Path, overwrite: bool) -> Path:
    """The absolute output path; QuickSamError before any work if it cannot be written."""
    output = Path(output).expanduser().absolute()
    if output.suffix.lower() != ".gpkg":
        raise QuickSamError(f"the output '{output}' must be a GeoPackage (.gpkg): it also records progress so "
                            "that a stopped run can resume")
    if output.is_dir():
        raise QuickSamError(f"the output '{output}' is a folder; give a file name ending in .gpkg")
    if output.exists() and not overwrite:
        raise QuickSamError(f"'{output}' exists; choose another name or delete it (or ask to overwrite it)")
    if not output.parent.is_dir():
        raise QuickSamError(f"the folder of the output '{output.parent}' does not exist; create it first")
    if not os.access(output.parent, os.W_OK):
        raise QuickSamError(f"the folder '{output.parent}' is not writable; choose another output location")
    return output


FIELDS = (("id", "int64"), ("score", "real"), ("stability", "real"), ("area", "real"), ("tile_ids", "str"),
          ("model", "str"), ("checkpoint", "str"))


def _ogr_type(kind: str):
    from osgeo import ogr

    return {"int64": ogr.OFTInteger64, "real": ogr.OFTReal, "str": ogr.OFTString, "int": ogr.OFTInteger,
            "bin": ogr.OFTBinary}[kind]


class RunFile:
    """The partial GeoPackage: output layer, run parameters, finished tiles and staged masks."""

    def __init__(self, path: Path, dataset):
        self.path = path
        self.dataset = dataset
        self.segments = dataset.GetLayerByName(OUTPUT_LAYER)
        self.tiles = dataset.GetLayerByName(TILE_TABLE)
        self.staged = dataset.GetLayerByName(STAGED_TABLE)

    @classmethod
    def create(cls, path: Path, crs_wkt: str, identity: dict) -> RunFile:
        from osgeo import ogr, osr

        dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
        if dataset is None:
            raise QuickSamError(f"cannot create '{path}'; check that the folder is writable")
        srs = osr.SpatialReference()
        srs.ImportFromWkt(crs_wkt)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        layer = dataset.CreateLayer(OUTPUT_LAYER, srs, ogr.wkbMultiPolygon, ["FID=fid", "GEOMETRY_NAME=geom"])
        for name, kind in FIELDS:
            layer.CreateField(ogr.FieldDefn(name, _ogr_type(kind)))
        run = dataset.CreateLayer(RUN_TABLE, None, ogr.wkbNone)
        run.CreateField(ogr.FieldDefn("identity", ogr.OFTString))
        feature = ogr.Feature(run.GetLayerDefn())
        feature["identity"] = json.dumps(identity, sort_keys=True)
        run.CreateFeature(feature)
        tiles = dataset.CreateLayer(TILE_TABLE, None, ogr.wkbNone)
        tiles.CreateField(ogr.FieldDefn("tile_id", ogr.OFTString))
        staged = dataset.CreateLayer(STAGED_TABLE, None, ogr.wkbNone)
        for name, kind in (("tile_id", "str"), ("kind", "str"), ("col0", "int"), ("row0", "int"), ("width", "int"),
                           ("height", "int"), ("score", "real"), ("stability", "real"), ("bits", "bin")):
            staged.CreateField(ogr.FieldDefn(name, _ogr_type(kind)))
        dataset.FlushCache()
        return cls(path, dataset)

    @classmethod
    def open(cls, path: Path, identity: dict) -> RunFile:
        from osgeo import gdal

        dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_UPDATE)
        run = dataset.GetLayerByName(RUN_TABLE) if dataset is not None else None
        if run is None or dataset.GetLayerByName(TILE_TABLE) is None:
            raise QuickSamError(f"'{path}' is not a QuickSAM run in progress; delete it to start again")
        stored = json.loads([feature["identity"] for feature in run][0])  # read to the end: no open statement
        if stored != json.loads(json.dumps(identity, sort_keys=True)):
            differing = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
            raise QuickSamError(f"'{path}' holds an unfinished run with other settings ({', '.join(differing)}); "
                                "run again with the same settings to resume it, or ask to overwrite to start "
                                "again")
        return cls(path, dataset)

    def finished_tiles(self) -> set:
        return {feature["tile_id"] for feature in self.tiles}

    def next_id(self) -> int:
        result = self.dataset.ExecuteSQL(f"SELECT MAX(id) FROM {OUTPUT_LAYER}")
        value = next(iter(result)).GetField(0)
        self.dataset.ReleaseResultSet(result)
        return int(value or 0) + 1

    def commit_tile(self, tile_id: str, objects: Sequence[Tuple[Polygons, dict]],
                    staged: Sequence[Tuple[str, TileMask]]) -> None:
        """One transaction: a tile's objects, its staged masks, and its line in the finished tiles."""
        from osgeo import ogr

        self.dataset.StartTransaction()
        for polygons, attributes in objects:
            feature = ogr.Feature(self.segments.GetLayerDefn())
            feature.SetGeometry(ogr.CreateGeometryFromWkb(polygons.wkb))
            for name, value in attributes.items():
                feature[name] = value
            self.segments.CreateFeature(feature)
        for kind, mask in staged:
            feature = ogr.Feature(self.staged.GetLayerDefn())
            for name, value in (("tile_id", mask.tile_id), ("kind", kind), ("col0", mask.col0), ("row0", mask.row0),
                                ("width", mask.crop.shape[1]), ("height", mask.crop.shape[0]),
                                ("score", mask.score), ("stability", mask.stability)):
                feature[name] = value
            feature.SetFieldBinaryFromHexString("bits", np.packbits(mask.crop).tobytes().hex())
            self.staged.CreateFeature(feature)
        marker = ogr.Feature(self.tiles.GetLayerDefn())
        marker["tile_id"] = tile_id
        self.tiles.CreateFeature(marker)
        self.dataset.CommitTransaction()

    def staged_masks(self) -> Tuple[List[TileMask], List[TileMask]]:
        pieces, spills = [], []
        for feature in self.staged:
            height, width = feature["height"], feature["width"]
            bits = np.frombuffer(bytes.fromhex(feature.GetFieldAsBinary("bits").hex()), np.uint8)
            crop = np.unpackbits(bits)[:height * width].reshape(height, width).astype(bool)
            mask = TileMask(feature["tile_id"], feature["col0"], feature["row0"], crop, feature["score"],
                            feature["stability"])
            (pieces if feature["kind"] == "piece" else spills).append(mask)
        return pieces, spills

    def finish(self) -> None:
        """Drop the bookkeeping tables and close (the caller renames the file)."""
        self.segments = self.tiles = self.staged = None
        for name in (STAGED_TABLE, TILE_TABLE, RUN_TABLE):
            names = [self.dataset.GetLayerByIndex(i).GetName() for i in range(self.dataset.GetLayerCount())]
            if name in names and self.dataset.DeleteLayer(names.index(name)) != 0:
                raise QuickSamError(f"cannot remove the table {name} from '{self.path}'")
        self.close()

    def close(self) -> None:
        self.segments = self.tiles = self.staged = None
        self.dataset = None


# -- the whole run -----------------------------------------------------------------------------------------

@dataclass
class SegmentAllProgress:
    done: int
    total: int
    tile_id: str
    objects: int


@dataclass
class SegmentAllResult:
    output: Path
    tiles: int
    tiles_resumed: int
    objects: int
    merged_objects: int


def run_identity(store: FeatureStore, settings: AutoMaskSettings, tiles: Sequence[Tile]) -> dict:
    """What must be equal for a run to resume: the store's content, the settings and the tiles."""
    return {"store_fingerprint": store.manifest["raster"].get("fingerprint"), "model": store.model_name,
            "checkpoint": store.checkpoint_sha256, "grid": [store.grid.tile_size, store.grid.overlap],
            "settings": settings.to_dict(), "tiles": sorted(tile.tile_id for tile in tiles)}


class ObjectWriter:
    """Vectorises masks with the run's settings and numbers them."""

    def __init__(self, store: FeatureStore, settings: AutoMaskSettings, first_id: int):
        self.store = store
        self.settings = settings
        self.next_id = first_id

    def polygons(self, mask: TileMask) -> Optional[Polygons]:
        a, b, c, d, e, f = self.store.geotransform
        transform = (a + mask.col0 * b + mask.row0 * c, b, c, d + mask.col0 * e + mask.row0 * f, e, f)
        polygons = mask_to_polygons(mask.crop, transform, self.settings.simplify_tolerance,
                                    self.settings.min_mask_region_area)
        if polygons.is_empty or polygons.area < self.settings.min_object_area:
            return None
        if self.settings.max_object_area and polygons.area > self.settings.max_object_area:
            return None
        return polygons

    def objects(self, masks: Iterable[Tuple[TileMask, Tuple[str, ...]]]) -> List[Tuple[Polygons, dict]]:
        result = []
        for mask, tile_ids in masks:
            polygons = self.polygons(mask)
            if polygons is None:
                continue
            result.append((polygons, {"id": self.next_id, "score": round(mask.score, 6),
                                      "stability": round(mask.stability, 6), "area": polygons.area,
                                      "tile_ids": ",".join(tile_ids), "model": self.store.model_name,
                                      "checkpoint": self.store.checkpoint_sha256}))
            self.next_id += 1
        return result


def segment_everything(store: FeatureStore, output: Path, settings: AutoMaskSettings,
                       area_wkbs: Optional[Sequence[bytes]] = None, overwrite: bool = False,
                       progress: Optional[Callable[[SegmentAllProgress], None]] = None,
                       cancelled: Optional[Callable[[], bool]] = None,
                       engine: Optional[SegmentEngine] = None) -> SegmentAllResult:
    """Automatic masks for every encoded tile (or those meeting `area_wkbs`), merged across tile borders,
    written to the GeoPackage `output` (layer `segments`, raster CRS). Resumes an unfinished run with the
    same settings; Cancelled (keeping finished tiles) when `cancelled()` turns true."""
    settings.check()
    output = check_output(output, overwrite)
    tiles = tiles_to_process(store, area_wkbs)
    engine = engine or SegmentEngine(store, cache_tiles=1)
    identity = run_identity(store, settings, tiles)
    work = partial_path(output)
    if work.exists() and overwrite:
        _remove_gpkg(work)
    run = RunFile.open(work, identity) if work.exists() else RunFile.create(work, store.crs_wkt, identity)
    try:
        finished = run.finished_tiles()
        resumed = len(finished - {MERGED_MARKER})
        regions = tile_regions(tiles)
        writer = ObjectWriter(store, settings, run.next_id())
        objects = run.segments.GetFeatureCount()
        for done, tile in enumerate(tiles, start=1):
            if tile.tile_id in finished:
                continue
            if cancelled is not None and cancelled():
                raise Cancelled(f"stopped after {len(run.finished_tiles())} of {len(tiles)} tiles; run the same "
                                "command again to resume")
            masks = tile_masks(engine.decoder, engine.cache.get(tile.tile_id), tile, settings)
            assignment = assign_masks(regions[tile.tile_id], masks)
            written = writer.objects((mask, (tile.tile_id,)) for mask in assignment.complete)
            staged = [("piece", m) for m in assignment.pieces] + [("spill", m) for m in assignment.spills]
            run.commit_tile(tile.tile_id, written, staged)
            objects += len(written)
            if progress is not None:
                progress(SegmentAllProgress(done, len(tiles), tile.tile_id, objects))
        merged = 0
        if MERGED_MARKER not in finished:
            pieces, spills = run.staged_masks()
            merged_objects = writer.objects((item.mask, item.tile_ids)
                                            for item in merge_staged(pieces, spills, regions))
            run.commit_tile(MERGED_MARKER, merged_objects, [])
            merged = len(merged_objects)
            objects += merged
        run.finish()
    finally:
        run.close()
    if output.exists():
        _remove_gpkg(output)
    os.replace(work, output)
    return SegmentAllResult(output, len(tiles), resumed, objects, merged)


def _remove_gpkg(path: Path) -> None:
    for item in (path, *(path.with_name(path.name + end) for end in ("-wal", "-shm", "-journal"))):
        if item.exists():
            item.unlink()
