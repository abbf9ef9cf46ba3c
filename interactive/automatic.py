"""Segment everything: automatic masks for a whole raster from its feature store (numpy + GDAL/OGR;
no QGIS, no torch, no rasterio, no shapely: this runs inside QGIS's process).

Per encoded tile: a grid of point prompts over the tile's valid area (grid points on nodata pixels are
left out) is decoded by the store's ONNX decoder (the same `OnnxDecoder` as the dock, `points_per_batch`
prompts per call), masks are clipped to the tile's valid pixels (the store's mask), filtered
by predicted IoU and stability, small regions removed and duplicates suppressed (NMS on boxes); then
the ownership rule and the streamed cross-tile merge (`tile_merge`) decide what the tile writes now and
what waits for its neighbours. docs/segment-everything.md states the rule; tests feed it synthetic masks.

Run file: the objects are collected in the GeoPackage OUT.partial.gpkg beside the output (OUT without its
extension), which also holds the run's parameters, the finished tiles and the staged pieces. A tile's
objects, its staged pieces and the merge step it allows are committed in one transaction, so a killed run
resumes where it stopped without duplicates. When every tile is done, the objects are written to the
output in its format (`output_formats.write_layer`: into an existing GeoPackage as one layer, keeping the
others) and the run file is deleted.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Collection, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from ..core.defaults import MASK_MODES
from ..core.diskspace import DiskFull, disk_full_error, is_disk_full
from ..core.errors import Cancelled, QuickSamError
from ..core.locking import LockHolder, command_name, exclusive_lock, holder_text
from ..core.mask_decoding import choose_outputs, stability_scores, upsample_masks
from ..core.store import STATUS_DONE, STATUS_PENDING, FeatureStore
from ..core.tiling import Tile
from .decoding import OnnxDecoder
from .engine import SegmentEngine
from .gdal_errors import with_gdal_return_codes
from .output_formats import (
    COMMAND_LINE_OVERWRITE,
    PYTHON_OVERWRITE,
    Destination,
    check_crs,
    check_destination,
    layer_names,
    remove_gpkg,
    write_layer,
)
from .tile_merge import BorderMerge, TileMask, assign_masks, pixel_bounds, tile_regions, trimmed
from .vectorise import Polygons, mask_to_polygons

__all__ = ["COMMAND_LINE_OVERWRITE", "OUTPUT_LAYER", "AutoMaskSettings", "SegmentAllProgress", "SegmentAllResult",
           "lock_path", "partial_path", "run_identity", "segment_everything", "tiles_to_process"]

OUTPUT_LAYER = "segments"
RUN_TABLE = "quicksam_run"
TILE_TABLE = "quicksam_tiles"
STAGED_TABLE = "quicksam_staged"
#: Part of a run's identity: a run file staged under another rule is not resumed with this one
#: (3: masks clipped to valid pixels, so a run staged before nodata was clipped starts again).
MERGE_RULE_VERSION = 3


@dataclass(frozen=True)
class AutoMaskSettings:
    """SAM's automatic mask generator parameters, plus QuickSAM's object filters.

    points_per_side: grid points per tile side (points_per_side² prompts per tile);
    points_per_batch: prompts decoded in one call of the decoder (memory grows with it); 0 = automatic:
    the decoder's preferred batch (4 on the CPU, 64 on a GPU; see OnnxDecoder.preferred_batch);
    pred_iou_thresh: minimum predicted IoU; stability_score_thresh / stability_score_offset: minimum IoU of
    the mask thresholded at ±offset (logits); box_nms_thresh: box IoU above which the lower-scored mask of
    a tile is dropped; min_mask_region_area: islands and holes smaller than this many pixels are removed;
    mask_mode: as in the interactive stage (`all` = SAM's three candidates per point);
    min_object_area / max_object_area: in the raster CRS's map units² (0 = no limit);
    simplify_tolerance: Douglas-Peucker tolerance in map units (0 = exact pixel edges).
    """

    points_per_side: int = 32
    points_per_batch: int = 0
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
            (self.points_per_batch < 0, "points per batch must be 0 (automatic) or more"),
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


# -- masks of one tile ---------------------------------------------------------------------------------------

def point_grid(tile: Tile, points_per_side: int) -> np.ndarray:
    """(n², 2) prompt points (x = col, y = row) in tile pixels, evenly over the tile's valid area as
    SAM's `build_point_grid` (cell centres)."""
    fractions = (np.arange(points_per_side) + 0.5) / points_per_side
    xs, ys = fractions * tile.valid_width, fractions * tile.valid_height
    grid_x, grid_y = np.meshgrid(xs, ys)
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)


def points_with_data(points: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The (n, 2) tile-pixel points (x = col, y = row) that lie on a valid pixel of the (S, S) bool mask."""
    cols = np.clip(np.floor(points[:, 0]).astype(int), 0, valid.shape[1] - 1)
    rows = np.clip(np.floor(points[:, 1]).astype(int), 0, valid.shape[0] - 1)
    return points[valid[rows, cols]]


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

    # The padding joins the outside into one background region, at least `min_pixels` large so that the
    # sieve never takes the outside itself for a small hole (a mask's crop may be small).
    pad = max(1, int(np.ceil(np.sqrt(min_pixels) / 2)))
    padded = np.pad(mask, pad).astype(np.uint8)
    raster = gdal.GetDriverByName("MEM").Create("", padded.shape[1], padded.shape[0], 1, gdal.GDT_Byte)
    band = raster.GetRasterBand(1)
    band.WriteArray(padded)
    gdal.SieveFilter(band, None, band, int(min_pixels), 8)
    return band.ReadAsArray()[pad:-pad, pad:-pad].astype(bool)


def _pick(candidates: np.ndarray, logits: np.ndarray, scores: np.ndarray, mode: str) -> np.ndarray:
    if mode in ("single", "all"):
        return candidates
    if mode == "best":
        return candidates[[int(np.argmax(scores[candidates]))]]
    areas = (logits[candidates] > 0).reshape(len(candidates), -1).sum(axis=1)  # low-res area decides
    return candidates[[int(np.argmax(areas) if mode == "largest" else np.argmin(areas))]]


@dataclass
class _Candidate:
    """A mask that passed the score filters, waiting for NMS: its box in tile pixels (x0, y0, x1, y1,
    half-open) and its crop packed to bits (a tile can have thousands of candidates)."""

    box: Tuple[int, int, int, int]
    score: float
    stability: float
    bits: np.ndarray = field(repr=False)

    @classmethod
    def of(cls, mask: np.ndarray, score: float, stability: float) -> Optional[_Candidate]:
        box = pixel_bounds(mask)
        if box is None:
            return None
        return cls(box, score, stability, np.packbits(mask[box[1]:box[3], box[0]:box[2]]))

    def crop(self) -> np.ndarray:
        """The mask inside its box."""
        x0, y0, x1, y1 = self.box
        return np.unpackbits(self.bits, count=(y1 - y0) * (x1 - x0)).reshape(y1 - y0, x1 - x0).astype(bool)


def tile_masks(decoder: OnnxDecoder, features: Dict[str, np.ndarray], tile: Tile,
               settings: AutoMaskSettings, valid: Optional[np.ndarray] = None) -> List[TileMask]:
    """The filtered, de-duplicated masks of one tile (raster pixel coordinates). As in SAM's generator:
    score filters per batch, NMS on the boxes of all candidates, then small regions removed from the
    survivors only. `valid` ((S, S) bool, True = data; None = all valid) drops grid points on nodata and
    clips every mask before it is scored against others."""
    batch = settings.points_per_batch or decoder.preferred_batch
    points = point_grid(tile, settings.points_per_side)
    if valid is not None:
        points = points_with_data(points, valid)
    candidates = [c for start in range(0, len(points), batch)
                  for c in _batch_candidates(decoder, features, tile, settings, points[start:start + batch], valid)]
    if not candidates:
        return []
    boxes = np.array([c.box for c in candidates], dtype=float)
    kept = box_nms(boxes, np.array([c.score for c in candidates]), settings.box_nms_thresh)
    found = []
    for index in kept:
        candidate = candidates[index]
        # on the box alone: outside it there is only background, which the sieve's padding stands for
        mask = remove_small_regions(candidate.crop(), settings.min_mask_region_area)
        item = trimmed(TileMask(tile.tile_id, tile.col_off + candidate.box[0], tile.row_off + candidate.box[1], mask,
                                candidate.score, candidate.stability))
        if item is not None:
            found.append(item)
    return found


def _batch_candidates(decoder: OnnxDecoder, features: Dict[str, np.ndarray], tile: Tile,
                      settings: AutoMaskSettings, points: np.ndarray,
                      valid: Optional[np.ndarray] = None) -> List[_Candidate]:
    """Decode one batch of grid points; the masks that pass the predicted-IoU and stability filters."""
    threshold = decoder.settings.mask_threshold
    batch_logits, batch_scores = decoder.raw_points(features, points)
    logits, scores = [], []
    for all_logits, all_scores in zip(batch_logits, batch_scores):
        chosen = choose_outputs(all_logits, all_scores, settings.mask_mode != "single", decoder.settings)
        chosen = _pick(chosen, all_logits, all_scores, settings.mask_mode)
        logits.append(all_logits[chosen])
        scores.append(all_scores[chosen])
    logits, scores = np.concatenate(logits), np.concatenate(scores)
    stable = stability_scores(logits - threshold, settings.stability_score_offset)
    good = np.flatnonzero((scores >= settings.pred_iou_thresh) & (stable >= settings.stability_score_thresh))
    if good.size == 0:
        return []
    found = []
    for i in good:  # one at a time: a batch of 1024 px masks would take ~200 MB at once
        mask = upsample_masks(logits[i:i + 1], decoder.image_size, threshold)[0]
        if valid is not None:
            mask &= valid  # nodata is never part of an object
        candidate = _Candidate.of(mask[:tile.valid_height, :tile.valid_width], float(scores[i]), float(stable[i]))
        if candidate is not None:
            found.append(candidate)
    return found


# -- area of interest -------------------------------------------------------------------------------------

def tiles_to_process(store: FeatureStore, area_wkbs: Optional[Sequence[bytes]] = None) -> List[Tile]:
    """The encoded tiles, or those whose valid window meets any of `area_wkbs` (polygons as WKB in the
    raster CRS). QuickSamError when the area misses the raster, when a tile to segment is not encoded yet
    (objects there would silently be missing), or when there is nothing to segment."""
    from osgeo import ogr

    meeting = list(store.grid)
    if area_wkbs is not None:
        areas = [ogr.CreateGeometryFromWkb(bytes(wkb)) for wkb in area_wkbs]
        areas = [a for a in areas if a is not None and not a.IsEmpty()]
        meeting = [tile for tile in meeting if any(area.Intersects(_tile_footprint(store, tile)) for area in areas)]
        if not meeting:
            raise QuickSamError("the area of interest does not overlap the encoded part of the raster; check "
                                "that it covers the raster (its CRS is transformed to the raster's)")
    pending = [tile for tile in meeting if store.status(tile) == STATUS_PENDING]
    if pending:
        raise QuickSamError(
            f"the store '{store.root}' is unfinished: {len(pending)} of the {len(meeting)} tiles to segment are "
            "not encoded yet; finish it with the same 'quicksam encode' command (it resumes where it stopped), "
            "or choose an area of interest inside the encoded part")
    done = [tile for tile in meeting if store.status(tile) == STATUS_DONE]
    if not done:
        raise QuickSamError(f"the store '{store.root}' has no features there: every tile to segment is nodata")
    damaged = store.verify_tiles(done)   # checked before any work, not found at tile 80 of 90
    if damaged:
        tile_id, problem = next(iter(damaged.items()))
        raise QuickSamError(
            f"the store '{store.root}' has {len(damaged)} damaged tile(s) of the {len(done)} to segment (tile "
            f"{tile_id}: {problem}); re-run the same 'quicksam encode' command: it encodes them again")
    return done


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


def _checked_output(output: Path, layer: str, overwrite: bool, how_to_overwrite: str) -> Destination:
    """`output_formats.check_destination` in the words of segment everything's callers."""
    return check_destination(output, layer, overwrite, what="the output", how_to_overwrite=how_to_overwrite,
                             layer_hint="choose another layer name")


def lock_path(output: Path) -> Path:
    """The lock a run holds while it builds `output` (OUT.gpkg.lock; deleted when the run ends)."""
    return output.with_name(output.name + ".lock")


class GdalFailures:
    """GDAL's failure messages on this thread while active. With GDAL's exceptions off, as QGIS leaves them,
    an OGR write that fails (a full disk: "database or disk is full") only returns a code and reports
    through the error handler; unchecked, the run would go on and mark tiles done whose objects were lost."""

    def __init__(self) -> None:
        self.messages: List[str] = []

    def __call__(self, error_class: int, error_number: int, message: str) -> None:
        from osgeo import gdal

        if error_class >= gdal.CE_Failure:
            self.messages.append(str(message))

    def __enter__(self) -> GdalFailures:
        from osgeo import gdal

        gdal.PushErrorHandler(self)
        return self

    def __exit__(self, *exc_info) -> None:
        from osgeo import gdal

        gdal.PopErrorHandler()

    def raise_if_any(self, path: Path) -> None:
        """QuickSamError with GDAL's first failure, if there was one."""
        if self.messages:
            raise QuickSamError(f"cannot write '{path}': {self.messages[0]}")


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
        self.staged_layer = dataset.GetLayerByName(STAGED_TABLE)
        #: GDAL's failures while a transaction is open (see `transaction` and `_check`).
        self._failures: Optional[GdalFailures] = None

    @classmethod
    def create(cls, path: Path, crs_wkt: str, identity: dict) -> RunFile:
        """A new run file; on failure (a full disk) none is left behind and QuickSamError says why."""
        with GdalFailures() as failures:
            run = None
            try:
                run = cls._create(path, crs_wkt, identity)
                failures.raise_if_any(path)
                return run
            except Exception as exc:
                if run is not None:
                    run.close()
                with contextlib.suppress(OSError):
                    remove_gpkg(path)
                if failures.messages and not isinstance(exc, QuickSamError):
                    failures.raise_if_any(path)
                raise

    @classmethod
    def _create(cls, path: Path, crs_wkt: str, identity: dict) -> RunFile:
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
        dataset.ExecuteSQL(f"CREATE INDEX {STAGED_TABLE}_by_tile ON {STAGED_TABLE} (kind, tile_id)")
        dataset.FlushCache()
        return cls(path, dataset)

    @classmethod
    def open(cls, path: Path, identity: dict, how_to_overwrite: str = PYTHON_OVERWRITE) -> RunFile:
        from osgeo import gdal

        dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_UPDATE)
        run = dataset.GetLayerByName(RUN_TABLE) if dataset is not None else None
        if run is None or dataset.GetLayerByName(TILE_TABLE) is None:
            raise QuickSamError(_not_a_run_file(path))
        stored = json.loads([feature["identity"] for feature in run][0])  # read to the end: no open statement
        if stored != json.loads(json.dumps(identity, sort_keys=True)):
            differing = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
            raise QuickSamError(f"'{path}' holds an unfinished run with other settings ({', '.join(differing)}); "
                                f"run again with the same settings to resume it, or {how_to_overwrite} to start "
                                "again")
        return cls(path, dataset)

    def object_count(self, joined: bool = False) -> int:
        """Objects written so far (`joined`: only those put together from pieces of several tiles)."""
        self.segments.SetAttributeFilter("tile_ids LIKE '%,%'" if joined else None)
        count = self.segments.GetFeatureCount()
        self.segments.SetAttributeFilter(None)
        return count

    def finished_tiles(self) -> set:
        return {feature["tile_id"] for feature in self.tiles}

    def next_id(self) -> int:
        result = self.dataset.ExecuteSQL(f"SELECT MAX(id) FROM {OUTPUT_LAYER}")
        value = next(iter(result)).GetField(0)
        self.dataset.ReleaseResultSet(result)
        return int(value or 0) + 1

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside is committed together, or not at all: a write that GDAL reports as failed (a
        full disk) rolls it back and raises QuickSamError with GDAL's words."""
        with GdalFailures() as failures:
            self._failures = failures
            self.dataset.StartTransaction()
            try:
                yield
                failures.raise_if_any(self.path)
                committed = self.dataset.CommitTransaction() in (0, None)
                failures.raise_if_any(self.path)
                if not committed:
                    raise QuickSamError(f"cannot write '{self.path}': the transaction was not committed")
            except BaseException:
                with contextlib.suppress(RuntimeError):  # SQLite may have rolled back already
                    self.dataset.RollbackTransaction()
                raise
            finally:
                self._failures = None

    def _check(self) -> None:
        """Stop at anything GDAL reported as failed since the transaction began; called before and after
        every write. At once: on a full disk SQLite may roll the whole transaction back by itself (also in
        statements GDAL runs for its own bookkeeping while a layer is read), and every write after that would
        be committed on its own: a tile marked done whose pieces were lost."""
        if self._failures is not None:
            self._failures.raise_if_any(self.path)

    def write_objects(self, objects: Sequence[Tuple[Polygons, dict]]) -> None:
        from osgeo import ogr

        self._check()
        for polygons, attributes in objects:
            feature = ogr.Feature(self.segments.GetLayerDefn())
            feature.SetGeometry(ogr.CreateGeometryFromWkb(polygons.wkb))
            for name, value in attributes.items():
                feature[name] = value
            self.segments.CreateFeature(feature)
            self._check()

    def mark_done(self, tile_id: str) -> None:
        from osgeo import ogr

        self._check()
        marker = ogr.Feature(self.tiles.GetLayerDefn())
        marker["tile_id"] = tile_id
        self.tiles.CreateFeature(marker)
        self._check()

    # -- tile_merge.Staging: staged masks wait in a table, packed to bits --------------------------------
    def stage(self, kind: str, masks: Iterable[TileMask]) -> None:
        from osgeo import ogr

        self._check()
        for mask in masks:
            feature = ogr.Feature(self.staged_layer.GetLayerDefn())
            for name, value in (("tile_id", mask.tile_id), ("kind", kind), ("col0", mask.col0), ("row0", mask.row0),
                                ("width", mask.crop.shape[1]), ("height", mask.crop.shape[0]),
                                ("score", mask.score), ("stability", mask.stability)):
                feature[name] = value
            feature.SetFieldBinaryFromHexString("bits", np.packbits(mask.crop).tobytes().hex())
            self.staged_layer.CreateFeature(feature)
            self._check()

    def staged(self, kind: str, tile_ids: Collection[str]) -> Dict[int, TileMask]:
        found: Dict[int, TileMask] = {}
        ids = sorted(tile_ids)
        for start in range(0, len(ids), 500):
            chunk = _sql_list(ids[start:start + 500])
            self.staged_layer.SetAttributeFilter(f"kind = '{kind}' AND tile_id IN ({chunk})")
            for feature in self.staged_layer:
                found[feature.GetFID()] = _staged_mask(feature)
        self.staged_layer.SetAttributeFilter(None)
        return found

    def tiles_with(self, kind: str) -> Set[str]:
        result = self.dataset.ExecuteSQL(f"SELECT DISTINCT tile_id FROM {STAGED_TABLE} WHERE kind = '{kind}'")
        tiles = {feature.GetField(0) for feature in result}
        self.dataset.ReleaseResultSet(result)
        return tiles

    def unstage(self, keys: Iterable[int]) -> None:
        self._check()
        for key in keys:
            self.staged_layer.DeleteFeature(int(key))
            self._check()

    def unstage_tiles(self, kind: str, tile_ids: Collection[str]) -> None:
        self._check()
        ids = sorted(tile_ids)
        for start in range(0, len(ids), 500):
            self.dataset.ExecuteSQL(f"DELETE FROM {STAGED_TABLE} WHERE kind = '{kind}' AND "
                                    f"tile_id IN ({_sql_list(ids[start:start + 500])})")
            self._check()

    def staged_count(self) -> int:
        if self.staged_layer is None:  # dropped by a finish that a full disk stopped: every tile was done
            return 0
        self.staged_layer.ResetReading()
        return self.staged_layer.GetFeatureCount()

    def close(self) -> None:
        self.segments = self.tiles = self.staged_layer = None
        self.dataset = None


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join("'" + value.replace("'", "''") + "'" for value in values)


def _staged_mask(feature) -> TileMask:
    height, width = feature["height"], feature["width"]
    bits = np.frombuffer(feature.GetFieldAsBinary("bits"), np.uint8)
    crop = np.unpackbits(bits)[:height * width].reshape(height, width).astype(bool)
    return TileMask(feature["tile_id"], feature["col0"], feature["row0"], crop, feature["score"], feature["stability"])


# -- the whole run -----------------------------------------------------------------------------------------

@dataclass
class SegmentAllProgress:
    done: int
    total: int
    tile_id: str
    objects: int


@dataclass
class SegmentAllResult:
    """`layer`: the layer written in a multi-layer file (None: the file is the layer); `kept_layers`: the
    file's other layers, kept as they were."""

    output: Path
    tiles: int
    tiles_resumed: int
    objects: int
    merged_objects: int
    layer: Optional[str] = None
    kept_layers: Tuple[str, ...] = ()


def run_identity(store: FeatureStore, settings: AutoMaskSettings, tiles: Sequence[Tile]) -> dict:
    """What must be equal for a run to resume: the store's content, the settings and the tiles."""
    return {"store_fingerprint": store.manifest["raster"].get("fingerprint"), "model": store.model_name,
            "checkpoint": store.checkpoint_sha256, "grid": [store.grid.tile_size, store.grid.overlap],
            "settings": settings.to_dict(), "tiles": sorted(tile.tile_id for tile in tiles),
            "merge_rule": MERGE_RULE_VERSION}


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


@with_gdal_return_codes
def segment_everything(store: FeatureStore, output: Path, settings: AutoMaskSettings,
                       area_wkbs: Optional[Sequence[bytes]] = None, overwrite: bool = False,
                       progress: Optional[Callable[[SegmentAllProgress], None]] = None,
                       cancelled: Optional[Callable[[], bool]] = None,
                       engine: Optional[SegmentEngine] = None, layer: str = OUTPUT_LAYER,
                       how_to_overwrite: str = PYTHON_OVERWRITE) -> SegmentAllResult:
    """Automatic masks for every encoded tile (or those meeting `area_wkbs`), merged across tile borders,
    written to `output` (any vector format by its extension, raster CRS; in a GeoPackage the layer
    `layer`, next to the file's other layers, which are kept). Resumes an unfinished run with the same
    settings; Cancelled (keeping finished tiles) when `cancelled()` turns true. Messages that call for
    `overwrite` say `how_to_overwrite` (the caller's own wording of it).

    One run at a time builds `output`: LockBusy names the other. A full disk stops the run with DiskFull
    (about how much more room it needs); its finished tiles are kept and the same call resumes."""
    settings.check()
    output = _checked_output(output, layer, overwrite, how_to_overwrite).path
    busy = _run_busy_message(output)
    with exclusive_lock(lock_path(output), command_name(), busy):
        try:
            return _segment_everything(store, output, settings, area_wkbs, overwrite, progress, cancelled, engine,
                                       layer, how_to_overwrite)
        except Exception as exc:
            if isinstance(exc, DiskFull) or not is_disk_full(exc):
                raise
            work = partial_path(output)
            raise disk_full_error(work, _bytes_to_finish(work, len(store.grid))) from exc


def _run_busy_message(output: Path) -> Callable[[Optional[LockHolder]], str]:
    def message(holder: Optional[LockHolder]) -> str:
        return (f"'{output}' is being made by another QuickSAM run ({holder_text(holder)}); wait for it to finish "
                "or stop it, or choose another output")
    return message


def _bytes_to_finish(work: Path, tiles: int) -> int:
    """About how much more the run file `work` grows: its size per finished tile times the tiles left, with
    room for the final step (0 when it cannot be read)."""
    from osgeo import ogr

    try:
        size = work.stat().st_size
        dataset = ogr.Open(str(work))
        table = dataset.GetLayerByName(TILE_TABLE) if dataset is not None else None
        done = table.GetFeatureCount() if table is not None else 0
        dataset = None
    except (OSError, RuntimeError):
        return 0
    return int(1.5 * size / max(done, 1) * max(tiles - done, 1))


def _segment_everything(store: FeatureStore, output: Path, settings: AutoMaskSettings,
                        area_wkbs: Optional[Sequence[bytes]], overwrite: bool,
                        progress: Optional[Callable[[SegmentAllProgress], None]],
                        cancelled: Optional[Callable[[], bool]],
                        engine: Optional[SegmentEngine], layer: str, how_to_overwrite: str) -> SegmentAllResult:
    """`segment_everything` once its lock is held: the output is checked again (another run may have
    finished it meanwhile)."""
    destination = _checked_output(output, layer, overwrite, how_to_overwrite)
    output = destination.path
    check_crs(destination.format, store.crs_wkt, output)
    tiles = tiles_to_process(store, area_wkbs)
    engine = engine or SegmentEngine(store, cache_tiles=1)
    identity = run_identity(store, settings, tiles)
    work = partial_path(output)
    if work.exists() and overwrite:
        _remove_run_file(work)
    run = (RunFile.open(work, identity, how_to_overwrite) if work.exists()
           else RunFile.create(work, store.crs_wkt, identity))
    try:
        done = run.finished_tiles()
        resumed = len(done)
        merge = BorderMerge(tile_regions(list(store.grid), {tile.tile_id for tile in tiles}))
        writer = ObjectWriter(store, settings, run.next_id())
        for tile in tiles:
            if tile.tile_id in done:
                continue
            if cancelled is not None and cancelled():
                raise Cancelled(f"stopped after {len(done)} of {len(tiles)} tiles; run the same command again "
                                "to resume")
            masks = tile_masks(engine.decoder, engine.cache.get(tile.tile_id), tile, settings,
                               engine.valid_masks.get(tile))
            assignment = assign_masks(merge.regions[tile.tile_id], masks)
            with run.transaction():
                run.write_objects(writer.objects((mask, (tile.tile_id,)) for mask in assignment.complete))
                merged = merge.tile_done(run, done | {tile.tile_id}, tile.tile_id, assignment)
                run.write_objects(writer.objects((item.mask, item.tile_ids) for item in merged))
                run.mark_done(tile.tile_id)
            done.add(tile.tile_id)
            if progress is not None:
                progress(SegmentAllProgress(len(done), len(tiles), tile.tile_id, run.object_count()))
        if run.staged_count():
            raise QuickSamError(f"'{work}' still holds staged pieces after the last tile; delete it and run again")
        objects, merged_objects = run.object_count(), run.object_count(joined=True)
    finally:
        run.close()
    # The run file stays until the output is written: a failed write is resumed (at once) by the same command.
    written = write_layer(work, OUTPUT_LAYER, destination, overwrite)
    remove_gpkg(work)
    return SegmentAllResult(output, len(tiles), resumed, objects, merged_objects, written.layer, written.kept_layers)


def _not_a_run_file(path: Path) -> str:
    return (f"'{path}' is not a QuickSAM run in progress, but a stopped run would be kept under that name; move or "
            "rename that file, or choose another output name")


@with_gdal_return_codes
def _remove_run_file(path: Path) -> None:
    """Delete the run file `path` to start again; QuickSamError, deleting nothing, when it holds anything
    but a run's own tables (a user's file that happens to have the name)."""
    names = layer_names(path)
    if names is None or not set(names) <= {OUTPUT_LAYER, RUN_TABLE, TILE_TABLE, STAGED_TABLE} \
            or RUN_TABLE not in names:
        raise QuickSamError(_not_a_run_file(path))
    remove_gpkg(path)
