"""Segment everything: automatic masks for a whole raster from its feature store, merged across tile borders
(numpy + GDAL/OGR; no QGIS, no torch, no rasterio, no shapely: this runs inside QGIS's process).

The run, in one place; each step has its own module:
- which tiles: `tile_selection.tiles_to_process` (the encoded tiles meeting an area of interest);
- each tile's masks: `mask_generator.tile_masks` (SAM's automatic mask generator on the cached features), in
  this process or on a Dask cluster's workers (`cluster_tiles`), merged here in the same order either way;
- tile borders: `tile_merge.assign_masks` (the ownership rule) and `border_merge.BorderMerge` (the
  streamed cross-tile merge) decide what the tile writes now and what waits for its neighbours
  (docs/segment-everything.md states the rule);
- objects: `MaskVectoriser` (polygons, filters, ids and the attributes of object_fields);
- progress: `run_file.RunFile`, the GeoPackage OUT.partial.gpkg beside the output that holds the objects,
  the run's identity, the finished tiles and the staged pieces. A tile's objects, its staged pieces and the
  merge step it allows are committed in one transaction, so a killed run resumes where it stopped without
  duplicates.
- levels: on a multi-scale store, `segment_levels` picks the levels (all, or those asked for) and each is
  segmented as above, finest first, its tiles named with the level's prefix in the run file; then
  `level_merge` merges objects across levels, in one transaction with its done mark.
When every tile is done, the objects are written to the output in its format (`output_formats.write_layer`:
into an existing GeoPackage as one layer, keeping the others) and the run file is deleted.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from ..core.diskspace import DiskFull, disk_full_error, is_disk_full
from ..core.errors import Cancelled, QuickSamError
from ..core.geo import window_geotransform
from ..core.locking import LockHolder, command_name, exclusive_lock, holder_text
from ..core.store import FeatureStore
from ..core.tiling import Tile
from .border_merge import BorderMerge
from .cluster_tiles import cluster_tile_masks
from .engine import SegmentEngine
from .filter_counts import FilterCounts
from .gdal_errors import with_gdal_return_codes
from .mask_generator import AutoMaskSettings, tile_masks
from .object_fields import (
    AREA,
    AREA_M2,
    LEVEL_FACTOR,
    PREDICTED_IOU,
    RESOLUTION,
    STABILITY_SCORE,
    crs_srs,
    square_metres,
)
from .output_formats import (
    COMMAND_LINE_OVERWRITE,
    DEFAULT_LAYER,
    PYTHON_OVERWRITE,
    Destination,
    check_crs,
    check_destination,
    remove_gpkg,
    write_layer,
)
from .run_file import OBJECTS_LAYER, TILE_TABLE, RunFile, partial_path, remove_run_file
from .segment_levels import LevelRunFile, SegmentLevel, merge_levels_in_run, plan_levels
from .segment_progress import SegmentAllProgress
from .tile_merge import TileMask, assign_masks, tile_regions
from .tile_selection import tiles_to_process
from .vectorise import Polygons, mask_to_polygons

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["COMMAND_LINE_OVERWRITE", "OUTPUT_LAYER", "AutoMaskSettings", "MaskVectoriser", "SegmentAllProgress",
           "SegmentAllResult", "lock_path", "partial_path", "run_identity", "segment_everything",
           "tiles_to_process"]

#: The layer written into a multi-layer output (a GeoPackage) unless the caller names another.
OUTPUT_LAYER = DEFAULT_LAYER
#: Part of a run's identity: a run file staged under another rule is not resumed with this one
#: (3: masks clipped to valid pixels, so a run staged before nodata was clipped starts again; 4: "largest" and
#: "smallest" chosen by the area of the mask that becomes the polygon, and SAM's field names; 5: levels, their
#: fields and prefixed tile ids).
MERGE_RULE_VERSION = 5


def lock_path(output: Path) -> Path:
    """The lock a run holds while it builds `output` (OUT.gpkg.lock; deleted when the run ends)."""
    return output.with_name(output.name + ".lock")


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
    filters: FilterCounts = field(default_factory=FilterCounts)
    #: The levels segmented (factors of the store's finest level's pixel) and the objects the merge across
    #: them dropped (found at another level too; 0 for one level, or when an earlier run merged them).
    levels: Tuple[float, ...] = (1.0,)
    level_duplicates: int = 0


@dataclass
class _Tally:
    """Tiles finished (resumed ones included) of `total`, over all levels of a run."""

    done: int
    total: int

    def stop_if_cancelled(self, cancelled: Optional[Callable[[], bool]]) -> None:
        _stop_if_cancelled(cancelled, self.done, self.total)


def run_identity(levels: Sequence[SegmentLevel], settings: AutoMaskSettings) -> dict:
    """What must be equal for a run to resume: the store's content, the settings, the levels and their tiles."""
    store = levels[0].store
    return {"store_fingerprint": store.manifest.raster.fingerprint, "model": store.model_name,
            "checkpoint": store.checkpoint_sha256, "grid": [store.grid.tile_size, store.grid.overlap],
            "levels": [level.relative for level in levels], "settings": settings.to_dict(),
            "tiles": sorted(tile_id for level in levels for tile_id in level.tile_ids()),
            "merge_rule": MERGE_RULE_VERSION}


class MaskVectoriser:
    """Turns a run's masks into numbered objects: polygons with the run's simplification and minimum region,
    the object area filters, and the output's attributes (object_fields; areas in the raster CRS; the level
    of `store`, its tile ids written with `tile_prefix`). What the filters drop is added to `counts`."""

    def __init__(self, store: FeatureStore, settings: AutoMaskSettings, first_id: int,
                 counts: Optional[FilterCounts] = None, tile_prefix: str = "") -> None:
        self.store = store
        self.settings = settings
        self.next_id = first_id
        self.counts = counts if counts is not None else FilterCounts()
        self.tile_prefix = tile_prefix
        self._srs = crs_srs(store.crs_wkt)

    def polygons(self, mask: TileMask) -> Optional[Polygons]:
        """The mask's polygons in the raster CRS, or None when empty or outside the object area limits."""
        transform = window_geotransform(self.store.geotransform, mask.col0, mask.row0)
        polygons = mask_to_polygons(mask.crop, transform, self.settings.simplify_tolerance,
                                    self.settings.min_mask_region_area)
        if polygons.is_empty:
            self.counts.small_regions += 1
            return None
        if not self.counts.count_area(polygons.area, self.settings.min_object_area, self.settings.max_object_area):
            return None
        return polygons

    def objects(self, masks: Iterable[Tuple[TileMask, Tuple[str, ...]]]) -> List[Tuple[Polygons, dict]]:
        """(polygons, attributes) of each (mask, its tiles) that gives an object, numbered in order."""
        result = []
        for mask, tile_ids in masks:
            polygons = self.polygons(mask)
            if polygons is None:
                continue
            result.append((polygons, self._attributes(mask, polygons, tile_ids)))
            self.next_id += 1
        return result

    def _attributes(self, mask: TileMask, polygons: Polygons, tile_ids: Tuple[str, ...]) -> dict:
        from osgeo import ogr

        geometry = ogr.CreateGeometryFromWkb(polygons.wkb)
        level = self.store.manifest.pixel_grid
        return {"id": self.next_id, PREDICTED_IOU: round(mask.score, 6), STABILITY_SCORE: round(mask.stability, 6),
                AREA: polygons.area, AREA_M2: square_metres(geometry, self._srs),
                "tile_ids": ",".join(self.tile_prefix + tile_id for tile_id in tile_ids),
                "model": self.store.model_name, "checkpoint": self.store.checkpoint_sha256,
                LEVEL_FACTOR: level.factor, RESOLUTION: level.resolution}


@with_gdal_return_codes
def segment_everything(store: FeatureStore, output: Path, settings: AutoMaskSettings,
                       area_wkbs: Optional[Sequence[bytes]] = None, overwrite: bool = False,
                       progress: Optional[Callable[[SegmentAllProgress], None]] = None,
                       cancelled: Optional[Callable[[], bool]] = None,
                       engine: Optional[SegmentEngine] = None, layer: str = OUTPUT_LAYER,
                       how_to_overwrite: str = PYTHON_OVERWRITE,
                       levels: Optional[Sequence[float]] = None, client: Optional[Client] = None) -> SegmentAllResult:
    """Automatic masks for every encoded tile (or those meeting `area_wkbs`), merged across tile borders,
    written to `output` (any vector format by its extension, raster CRS; in a GeoPackage the layer
    `layer`, next to the file's other layers, which are kept). Resumes an unfinished run with the same
    settings; Cancelled (keeping finished tiles) when `cancelled()` turns true. Messages that call for
    `overwrite` say `how_to_overwrite` (the caller's own wording of it).

    On a multi-scale store every level is segmented (or those of `levels`: factors of the finest level's
    pixel, as `quicksam encode --levels`; QuickSamError for a level the store has not), then objects are
    merged across levels (level_merge.py). `engine` (optional) decodes the level of `store` itself; the
    other levels get engines sharing its decoder. With `client` (a `distributed.Client`, core/cluster.py) the
    tiles are decoded on its cluster's workers and merged here in the same order: the same objects.

    One run at a time builds `output`: LockBusy names the other. A full disk stops the run with DiskFull
    (about how much more room it needs); its finished tiles are kept and the same call resumes."""
    settings.check()
    output = _checked_output(output, layer, overwrite, how_to_overwrite).path
    busy = _run_busy_message(output)
    with exclusive_lock(lock_path(output), command_name(), busy):
        try:
            return _segment_everything(store, output, settings, area_wkbs, overwrite, progress, cancelled, engine,
                                       layer, how_to_overwrite, levels, client)
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
                        engine: Optional[SegmentEngine], layer: str, how_to_overwrite: str,
                        levels: Optional[Sequence[float]], client: Optional[Client]) -> SegmentAllResult:
    """`segment_everything` once its lock is held: the output is checked again (another run may have
    finished it meanwhile)."""
    destination = _checked_output(output, layer, overwrite, how_to_overwrite)
    check_crs(destination.format, store.crs_wkt, destination.path)
    plan = plan_levels(store, levels, settings, area_wkbs)
    work = partial_path(destination.path)
    if work.exists() and overwrite:
        remove_run_file(work)
    identity = run_identity(plan, settings)
    run = (RunFile.open(work, identity, how_to_overwrite) if work.exists()
           else RunFile.create(work, store.crs_wkt, identity))
    counts = FilterCounts()
    try:
        resumed = _segment_levels(run, plan, engine, progress, cancelled, counts, client)
        duplicates = merge_levels_in_run(run, plan, settings.crop_nms_thresh)
        objects, merged_objects = run.object_count(), run.object_count(joined=True)
    finally:
        run.close()
    # The run file stays until the output is written: a failed write is resumed (at once) by the same command.
    written = write_layer(work, OBJECTS_LAYER, destination, overwrite)
    remove_gpkg(work)
    return SegmentAllResult(destination.path, sum(len(level.tiles) for level in plan), resumed, objects,
                            merged_objects, written.layer, written.kept_layers, counts,
                            tuple(level.relative for level in plan), duplicates)


def _checked_output(output: Path, layer: str, overwrite: bool, how_to_overwrite: str) -> Destination:
    """`output_formats.check_destination` in the words of segment everything's callers."""
    return check_destination(output, layer, overwrite, what="the output", how_to_overwrite=how_to_overwrite,
                             layer_hint="choose another layer name")


def _segment_levels(run: RunFile, plan: Sequence[SegmentLevel], engine: Optional[SegmentEngine],
                    progress: Optional[Callable[[SegmentAllProgress], None]],
                    cancelled: Optional[Callable[[], bool]], counts: FilterCounts,
                    client: Optional[Client] = None) -> int:
    """Segment each level's tiles that `run` has not finished, finest level first; the number of tiles it had
    finished before (resumed). `engine` (if given) decodes its own store's level; the others share its
    decoder (one ONNX session: every level was encoded by the same model). With `client`, the tiles are decoded
    on its Dask cluster (cluster_tiles.py) and no engine is opened here."""
    finished = run.finished_tiles()
    tally = _Tally(sum(1 for level in plan for tile_id in level.tile_ids() if tile_id in finished),
                   sum(len(level.tiles) for level in plan))
    resumed = tally.done
    decoder = engine.decoder if engine is not None else None
    for level in plan:
        if all(tile_id in finished for tile_id in level.tile_ids()):
            continue
        level_run = LevelRunFile(run, level.prefix)
        if client is not None:
            stop = functools.partial(tally.stop_if_cancelled, cancelled)
            source = functools.partial(cluster_tile_masks, client, level.store, settings=level.settings,
                                       counts=counts, cancelled=cancelled, stop=stop)
            _segment_tiles(level_run, level, source, progress, counts, tally)
            continue
        if engine is not None and engine.store.root == level.store.root:
            level_engine = engine
        else:
            level_engine = SegmentEngine(level.store, cache_tiles=1, decoder=decoder)
        decoder = level_engine.decoder
        source = _process_source(level_run, level, level_engine, progress, cancelled, counts, tally)
        _segment_tiles(level_run, level, source, progress, counts, tally)
    return resumed


#: Where a level's masks come from: given the tiles to do, (tile, its masks) for each, in their order.
MaskSource = Callable[[Sequence[Tile]], Iterator[Tuple[Tile, List[TileMask]]]]


def _process_source(run: LevelRunFile, level: SegmentLevel, engine: SegmentEngine,
                    progress: Optional[Callable[[SegmentAllProgress], None]], cancelled: Optional[Callable[[], bool]],
                    counts: FilterCounts, tally: _Tally) -> MaskSource:
    """Masks decoded in this process by `engine`, one tile at a time when its turn comes; Cancelled before a
    tile and between its batches of points; progress after each batch."""
    def masks(tiles: Sequence[Tile]) -> Iterator[Tuple[Tile, List[TileMask]]]:
        for tile in tiles:
            _stop_if_cancelled(cancelled, tally.done, tally.total)
            batch_done = _batch_reporter(run, level.prefix + tile.tile_id, tally, progress, cancelled)
            yield tile, tile_masks(engine.decoder, engine.cache.get(tile.tile_id), tile, level.settings,
                                   engine.valid_masks.get(tile), counts, batch_done)
    return masks


def _segment_tiles(run: LevelRunFile, level: SegmentLevel, source: MaskSource,
                   progress: Optional[Callable[[SegmentAllProgress], None]], counts: FilterCounts,
                   tally: _Tally) -> None:
    """Segment the `level`'s tiles that `run` (the level's view of the run file) has not finished, in the
    level's order, their masks from `source`; each committed on its own, counted in `tally`. QuickSamError if
    pieces are left. What the filters drop goes to `counts`."""
    done = run.finished_tiles()
    merge = BorderMerge(tile_regions(list(level.store.grid.regular_tiles), {tile.tile_id for tile in level.tiles}))
    vectoriser = MaskVectoriser(level.store, level.settings, run.next_id(), counts, level.prefix)
    covered = counts.points_covered  # tile_masks adds each tile's skipped points, in this process or from a worker
    for tile, masks in source([tile for tile in level.tiles if tile.tile_id not in done]):
        _commit_tile(run, merge, vectoriser, tile, masks, done)
        done.add(tile.tile_id)
        tally.done += 1
        skipped, covered = counts.points_covered - covered, counts.points_covered
        if progress is not None:
            progress(SegmentAllProgress(tally.done, tally.total, level.prefix + tile.tile_id, run.object_count(),
                                        points_skipped=skipped if level.settings.skip_covered_points else None))
    if run.staged_count():
        raise QuickSamError(f"'{run.path}' still holds staged pieces after the last tile; delete it and run again")


def _batch_reporter(run: LevelRunFile, tile_id: str, tally: _Tally,
                    progress: Optional[Callable[[SegmentAllProgress], None]],
                    cancelled: Optional[Callable[[], bool]]) -> Callable[[int, int], None]:
    """The `batch_done(batch, batches)` of one tile (`tile_id` as the run names it; `tally` the tiles finished
    before it): Cancelled when `cancelled()` turns true, else a progress event."""
    objects = run.object_count()
    done, total = tally.done, tally.total

    def batch_done(batch: int, batches: int) -> None:
        _stop_if_cancelled(cancelled, done, total)
        if progress is not None:
            progress(SegmentAllProgress(done, total, tile_id, objects, batch, batches))
    return batch_done


def _stop_if_cancelled(cancelled: Optional[Callable[[], bool]], done: int, total: int) -> None:
    """Cancelled (saying how to resume) when `cancelled()` is true; `done` of `total` tiles are finished."""
    if cancelled is not None and cancelled():
        raise Cancelled(f"stopped after {done} of {total} tiles; run the same command again to resume")


def _commit_tile(run: LevelRunFile, merge: BorderMerge, vectoriser: MaskVectoriser, tile: Tile,
                 masks: List[TileMask], done: Set[str]) -> None:
    """One tile's objects and the merge step it allows, committed together (`done`: the tiles finished before
    it; `masks` its masks as `tile_masks` gives them)."""
    assignment = assign_masks(merge.regions[tile.tile_id], masks)
    with run.transaction():
        run.write_objects(vectoriser.objects((mask, (tile.tile_id,)) for mask in assignment.complete))
        merged = merge.tile_done(run, done | {tile.tile_id}, tile.tile_id, assignment)
        run.write_objects(vectoriser.objects((item.mask, item.tile_ids) for item in merged))
        run.mark_done(tile.tile_id)
