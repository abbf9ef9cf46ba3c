"""A tracked frame's masks to records with polygons in the raster's CRS (no QGIS, no torch; GDAL's `osgeo`).

One record per object per frame: its polygon (interactive/vectorise.py, holes kept) on the tile's own
geotransform at the group's level, the frame's index and date-time, and the next frame's date-time as
`datetime_end` (so that each polygon shows until the next date in QGIS's Temporal Controller; the series' last
frame ends one step after it, the step being the previous interval). An object SAM 2 saw as absent (or whose mask
holds no valid pixel) is recorded with `present` False and no geometry, never as a garbage shape.
Masks are cut to the frame's own valid pixels (its nodata never becomes part of an object).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.series import FrameRef
from ..core.store import FeatureStore
from ..core.store_levels import level_folder_path
from ..core.store_series import frame_store
from ..core.track_job import FrameResult
from .tracking import TrackPlan
from .vectorise import mask_to_polygons


@dataclass(frozen=True)
class TrackedShape:
    """One object on one frame: `wkb` a MultiPolygon (ISO WKB, raster CRS) or None when absent; `area` in map
    units² (0 when absent); `score` SAM 2's object score (0..1); `datetime`/`datetime_end` ISO 8601 or None
    (frames without dates); `level` the level folder decoded and `resolution` its map units per pixel."""

    obj_id: int
    frame: int
    datetime: Optional[str]
    datetime_end: Optional[str]
    score: float
    area: float
    present: bool
    wkb: Optional[bytes]
    level: str
    resolution: float


def frame_periods(frames: Sequence[FrameRef], tracked: Sequence[int]
                  ) -> Dict[int, Tuple[Optional[str], Optional[str]]]:
    """{series index: (start, end)} for the `tracked` frames: start the frame's date-time, end the next series
    frame's (frames are in date order); the series' last frame ends one step after it (the step before it).
    Either is None where a date is missing."""
    dates = [frame.datetime for frame in frames]
    periods: Dict[int, Tuple[Optional[str], Optional[str]]] = {}
    for index in tracked:
        start = dates[index]
        end = dates[index + 1] if index + 1 < len(dates) else _one_step_after(dates)
        periods[index] = (start, end if start else None)
    return periods


def _one_step_after(dates: Sequence[Optional[str]]) -> Optional[str]:
    """The last date plus the interval between the last two, ISO 8601; None when one is missing or unreadable."""
    if len(dates) < 2 or not dates[-1] or not dates[-2]:
        return None
    try:
        last, before = datetime.fromisoformat(dates[-1]), datetime.fromisoformat(dates[-2])
    except ValueError:
        return None
    return (last + (last - before)).isoformat()


def track_features(plan: TrackPlan, result: FrameResult) -> List[TrackedShape]:
    """The records of `result` (one group on one frame), one per object, in the group's object order.
    StoreError when the frame's store (or its level) cannot be opened or its tile's valid-pixel mask read."""
    place = plan.places[result.group]
    valid = _valid_mask(plan, result.frame, result.group)
    start, end = frame_periods(plan.frames, plan.job.frames)[result.frame]
    tile = place.tile
    shapes = []
    for position, obj_id in enumerate(np.asarray(result.obj_ids).tolist()):
        mask = np.asarray(result.masks[position], dtype=bool)[:tile.valid_height, :tile.valid_width]
        mask = mask & valid[:tile.valid_height, :tile.valid_width]
        present = bool(result.present[position]) and bool(mask.any())
        polygons = mask_to_polygons(mask, place.geotransform, keep_holes=True) if present else None
        present = present and polygons is not None and not polygons.is_empty
        shapes.append(TrackedShape(
            obj_id=int(obj_id), frame=result.frame, datetime=start, datetime_end=end,
            score=float(result.object_score[position]), area=polygons.area if present else 0.0, present=present,
            wkb=polygons.wkb if present else None, level=place.level, resolution=place.resolution))
    return shapes


def _valid_mask(plan: TrackPlan, frame: int, group: int) -> np.ndarray:
    """(S, S) bool: the valid pixels of group `group`'s tile on series frame `frame` (read once per run)."""
    key = (frame, group)
    if key not in plan.valid_masks:
        place = plan.places[group]
        root = FeatureStore.open(plan.root)
        store = frame_store(root, plan.frames[frame])
        if place.level != ".":
            store = FeatureStore.open(level_folder_path(store.root, place.level))
        plan.valid_masks[key] = store.load_valid_mask(place.tile)
    return plan.valid_masks[key]
