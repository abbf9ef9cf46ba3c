"""Tracking objects through a series store, the QGIS side (no QGIS, no torch; GDAL's `osgeo` for mask prompts).

`plan_track` turns objects prompted on one frame (points, a box, or an accepted polygon as a mask prompt, all in
the raster's CRS) into a `core.track_job.TrackJob`: each object's level and tile are chosen on the prompt frame's
store exactly as the dock and quicksam:segmentprompts choose them (`interactive.scales.open_engine`: the finest
level whose tile holds the prompts with a margin, else a coarser one, so an object larger than a tile goes to a
coarser level where the store has one); objects sharing a level and tile form one group (one SAM 2 video state);
prompts are converted to that tile's pixels. The torch side (`quicksam track-masks`, run in the encoder's
process) tracks them and writes one `FrameResult` per group and frame; `track_features` (interactive/
track_features.py) turns each into polygons in the raster's CRS.

Frame indices are series indices (core/series.py: 0 = the first frame in date order).
Errors: QuickSamError / StoreError / engine.PromptError, one line saying what to do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.errors import QuickSamError, StoreError
from ..core.geo import window_geotransform
from ..core.series import FrameRef
from ..core.store import FeatureStore
from ..core.store_levels import level_folder_of
from ..core.store_series import frame_store, series_frames
from ..core.tiling import Tile
from ..core.track_job import DIRECTIONS, TrackGroup, TrackJob, TrackObject
from .engine import MapPrompts, SegmentEngine
from .scales import MultiScaleEngine, open_engine

if TYPE_CHECKING:
    from osgeo import ogr

NOT_A_SERIES = ("store '{root}' is not a series store (it has no series.json); encode the frames as a series "
                "(quicksam encode --series A.tif B.tif ... STORE, or --frames-from-bands) to track objects")


@dataclass(frozen=True)
class ObjectPrompts:
    """One object to track: `obj_id` its id (kept across frames), `prompts` its points (with labels) and box in
    the raster's CRS, `polygon_wkb` an accepted polygon (WKB, raster CRS) used as a mask prompt, or None."""

    obj_id: int
    prompts: MapPrompts = MapPrompts()
    polygon_wkb: Optional[bytes] = None

    def describe(self) -> str:
        what = self.prompts.describe() if not self.prompts.is_empty() else ""
        polygon = "a polygon" if self.polygon_wkb is not None else ""
        return " and ".join(part for part in (what, polygon) if part) or "no prompt"


@dataclass(frozen=True)
class GroupPlace:
    """Where a group's masks lie: `level` its folder ("." or `levels/x4`), `tile` the tile in that level's grid,
    `geotransform` the tile's own GDAL geotransform (tile pixel (0, 0) at its top-left; raster CRS), `factor`
    the level's pixel over the raster's, `resolution` its ground resolution (map units per pixel)."""

    level: str
    tile: Tile
    geotransform: Tuple[float, ...]
    factor: float
    resolution: float


@dataclass(frozen=True)
class TrackPlan:
    """A track job and what turns its results into polygons: `places[g]` of group g, `frames` every frame of
    the series (date order), `crs_wkt` the raster's CRS, `root` the series store's folder."""

    job: TrackJob
    places: Tuple[GroupPlace, ...]
    frames: Tuple[FrameRef, ...]
    crs_wkt: str
    root: Path
    #: Valid-pixel masks already read, by (frame, group) (interactive/track_features.py).
    valid_masks: Dict[Tuple[int, int], np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @property
    def dated(self) -> bool:
        """True when every tracked frame has a date-time (the output layer can then be temporal)."""
        return all(self.frames[index].datetime for index in self.job.frames)


def series_of(store: FeatureStore) -> List[FrameRef]:
    """The frames of the series store `store`; QuickSamError when it is not a series."""
    frames = series_frames(store)
    if not frames:
        raise QuickSamError(NOT_A_SERIES.format(root=store.root))
    return frames


def parse_frame_range(text: Optional[str], count: int) -> Tuple[int, int]:
    """The inclusive range (A, B) of series indices from "A:B" ("A:" and ":B" leave an end open; None or "" is
    every frame) in a series of `count` frames. QuickSamError for anything else or a range outside 0..count-1."""
    if not text or not text.strip():
        return 0, count - 1
    parts = text.strip().split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        first = int(parts[0]) if parts[0].strip() else 0
        last = int(parts[1]) if parts[1].strip() else count - 1
    except ValueError:
        raise QuickSamError(f"frames '{text}' is not a range A:B of frame indices (e.g. 0:{count - 1})") from None
    if not 0 <= first <= last < count:
        raise QuickSamError(f"frames '{text}' is not within the series' frames 0 to {count - 1} (A <= B)")
    return first, last


def tracked_frames(count: int, prompt_frame: int, direction: str, frame_range: Tuple[int, int]) -> Tuple[int, ...]:
    """The series indices a run tracks, ascending: the range, cut to the prompt frame's side by `direction`.
    QuickSamError when the prompt frame is not a frame of the series or lies outside the range."""
    if direction not in DIRECTIONS:
        raise QuickSamError(f"direction '{direction}' is not one of {', '.join(DIRECTIONS)}")
    if not 0 <= prompt_frame < count:
        raise QuickSamError(f"frame {prompt_frame} is not a frame of the series (frames 0 to {count - 1}); give "
                            "the frame the prompts are on")
    first, last = frame_range
    if not first <= prompt_frame <= last:
        raise QuickSamError(f"the prompts' frame {prompt_frame} is outside the frames {first}:{last}; choose a "
                            "range that holds it")
    first = prompt_frame if direction == "forward" else first
    last = prompt_frame if direction == "backward" else last
    return tuple(range(first, last + 1))


def plan_track(store: FeatureStore, objects: Sequence[ObjectPrompts], prompt_frame: int, direction: str,
               output_dir: Path, frame_range: Optional[Tuple[int, int]] = None,
               engine: Optional[SegmentEngine] = None) -> TrackPlan:
    """The plan of tracking `objects` (prompts in the raster's CRS, on series frame `prompt_frame`) through the
    series store `store` (its root, frame 0) in `direction` over `frame_range` (inclusive series indices; None:
    every frame). `engine` is an engine of the prompt frame's store (e.g. the dock's), else one is opened.
    Mask prompts are written into `output_dir` (created), which also receives the results. QuickSamError /
    PromptError / StoreError, one line, for a store that is not a series, bad frames or ids, or prompts no
    tile of the prompt frame holds."""
    frames = series_of(store)
    frame_list = tracked_frames(len(frames), prompt_frame, direction, frame_range or (0, len(frames) - 1))
    _check_ids(objects)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    prompt_store = frame_store(store, frames[prompt_frame])
    engine = engine or open_engine(prompt_store)
    groups: Dict[Tuple[str, str], List[TrackObject]] = {}
    places: Dict[Tuple[str, str], GroupPlace] = {}
    for item in objects:
        level_engine, tile = _level_and_tile(engine, _choice_prompts(item), item.obj_id)
        place = _place(prompt_store, level_engine, tile)
        key = (place.level, tile.tile_id)
        places.setdefault(key, place)
        groups.setdefault(key, []).append(_track_object(item, level_engine, place, output_dir))
    job = TrackJob(store=str(store.root), frames=frame_list, prompt_frame=prompt_frame, direction=direction,
                   groups=tuple(TrackGroup(level, tile_id, tuple(members))
                                for (level, tile_id), members in groups.items()),
                   output_dir=str(output_dir))
    return TrackPlan(job, tuple(places[key] for key in groups), tuple(frames), store.crs_wkt, store.root)


def _check_ids(objects: Sequence[ObjectPrompts]) -> None:
    if not objects:
        raise QuickSamError("there is no object to track; give prompts (points, a box or a polygon) for one")
    ids = [item.obj_id for item in objects]
    repeated = sorted({obj_id for obj_id in ids if ids.count(obj_id) > 1})
    if repeated:
        raise QuickSamError(f"object id {repeated[0]} is given to two objects; give each object its own id")


def _choice_prompts(item: ObjectPrompts) -> MapPrompts:
    """The prompts the tile is chosen for: the object's points and box, and a polygon's extent as a box."""
    if item.polygon_wkb is None:
        return item.prompts
    xmin, xmax, ymin, ymax = _polygon(item).GetEnvelope()
    if item.prompts.box is not None:
        bx0, by0, bx1, by1 = item.prompts.box
        xmin, ymin, xmax, ymax = min(xmin, bx0), min(ymin, by0), max(xmax, bx1), max(ymax, by1)
    return dataclasses.replace(item.prompts, box=(xmin, ymin, xmax, ymax))


def _level_and_tile(engine: SegmentEngine, prompts: MapPrompts, obj_id: int) -> Tuple[SegmentEngine, Tile]:
    """The level engine and tile that decode `prompts`, chosen by the engine (PromptError naming the object)."""
    from .engine import PromptError

    try:
        if isinstance(engine, MultiScaleEngine):
            return engine.choose_level(prompts)
        return engine, engine.choose_tile(prompts)
    except PromptError as exc:
        raise type(exc)(f"object {obj_id}: {exc}") from None


def _place(prompt_store: FeatureStore, level_engine: SegmentEngine, tile: Tile) -> GroupPlace:
    level = level_engine.store
    return GroupPlace(level=level_folder_of(prompt_store, level), tile=tile,
                      geotransform=tuple(window_geotransform(level.geotransform, tile.col_off, tile.row_off)),
                      factor=level.manifest.pixel_grid.factor, resolution=level.manifest.pixel_grid.resolution)


def _track_object(item: ObjectPrompts, level_engine: SegmentEngine, place: GroupPlace, output_dir: Path
                  ) -> TrackObject:
    """The object's prompts in the pixels of `place`'s tile; a polygon rasterised into a mask file."""
    points: Tuple[Tuple[float, float], ...] = ()
    labels: Tuple[int, ...] = ()
    box = None
    if not item.prompts.is_empty():
        tile_prompts = level_engine.tile_prompts(item.prompts, place.tile)
        points, labels, box = tuple(map(tuple, tile_prompts.points)), tuple(tile_prompts.labels), tile_prompts.box
    mask_file = None
    if item.polygon_wkb is not None:
        mask = rasterise_polygon(item.polygon_wkb, place.geotransform, place.tile.size)
        if not mask.any():
            raise QuickSamError(f"object {item.obj_id}: its polygon covers no pixel centre of the tile it is "
                                "decoded on; draw a larger polygon")
        mask_file = str(output_dir / f"mask_o{item.obj_id}.npy")
        np.save(mask_file, mask)
    return TrackObject(obj_id=item.obj_id, points=points, labels=labels, box=box, mask_file=mask_file)


def _polygon(item: ObjectPrompts) -> ogr.Geometry:
    from osgeo import ogr

    geometry = ogr.CreateGeometryFromWkb(bytes(item.polygon_wkb))
    if geometry is None or geometry.IsEmpty():
        raise QuickSamError(f"object {item.obj_id}: its polygon is empty or unreadable; give a polygon")
    return geometry


def rasterise_polygon(polygon_wkb: bytes, geotransform: Sequence[float], size: int) -> np.ndarray:
    """(size, size) bool: the pixels of a tile (GDAL `geotransform`, raster CRS) whose centre lies in the
    polygon (WKB, raster CRS), as SAM's mask prompt. StoreError when GDAL cannot rasterise it."""
    from osgeo import gdal, ogr, osr

    raster = gdal.GetDriverByName("MEM").Create("", size, size, 1, gdal.GDT_Byte)
    raster.SetGeoTransform(tuple(geotransform))
    vector = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = vector.CreateLayer("prompt", osr.SpatialReference(), ogr.wkbUnknown)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(ogr.CreateGeometryFromWkb(bytes(polygon_wkb)))
    layer.CreateFeature(feature)
    if gdal.RasterizeLayer(raster, [1], layer, burn_values=[1]) != 0:
        raise StoreError("the polygon prompt cannot be rasterised on its tile; check that it is a valid polygon")
    return raster.GetRasterBand(1).ReadAsArray().astype(bool)
