"""What a track job (core/track_job.py) needs before SAM 2 runs, checked first (no torch, no QGIS).

Each group's level store on every tracked frame (`frame_path(root, frame) / group.level`), its tile encoded on
each, and its objects' mask prompts, so that a bad job fails in one line before the model is built. Video index
i of a group is series frame `job.frames[i]`.

Errors: QuickSamError / StoreError, one line saying which store, frame, level, tile or object and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..core.errors import QuickSamError, StoreError
from ..core.series import FrameRef
from ..core.store import FeatureStore
from ..core.store_levels import level_folder_path
from ..core.store_series import frame_store, series_frames
from ..core.tile_log import STATUS_DONE, STATUS_NODATA
from ..core.track_job import TrackGroup, TrackJob


@dataclass(frozen=True)
class GroupFrames:
    """One group ready to track: `stores[i]` its level's store on series frame `job.frames[i]` (video index i),
    every one holding the encoded tile `tile_id`; `masks` the (S, S) bool mask prompts by object id."""

    group: TrackGroup
    stores: Tuple[FeatureStore, ...]
    masks: Dict[int, np.ndarray]

    @property
    def tile_size(self) -> int:
        return self.stores[0].grid.tile_size

    def read_features(self, video_index: int) -> Dict[str, np.ndarray]:
        """The stored (C, H, W) feature maps of the group's tile on video frame `video_index`."""
        return self.stores[video_index].load_tile(self.group.tile_id)


def open_series(job: TrackJob) -> Tuple[FeatureStore, List[FrameRef]]:
    """The series store of `job` and its frames in date order. StoreError when it is missing, damaged or not a
    series; QuickSamError when it was encoded with SAM v1 (no video memory)."""
    root = FeatureStore.open(Path(job.store))
    frames = series_frames(root)
    if not frames:
        raise StoreError(f"store '{root.root}' is not a series store (no series.json); encode the frames into a "
                         "series store to track objects through them")
    if root.family != "sam2":
        raise QuickSamError(f"tracking needs SAM 2 or SAM 2.1; store '{root.root}' was encoded with {root.model_name}: "
                            "encode the series again with a SAM 2 model")
    for frame in job.frames:
        if not 0 <= frame < len(frames):
            raise QuickSamError(f"frame {frame} is not in series '{root.root}' (its frames are 0 to "
                                f"{len(frames) - 1}); track frames of the series")
    return root, frames


def open_group(root: FeatureStore, frames: List[FrameRef], job: TrackJob, index: int,
               base: Optional[Path] = None) -> GroupFrames:
    """Group `index` of `job` with its level store on each tracked frame and its mask prompts (relative mask
    files are taken from `base`). StoreError/QuickSamError naming the frame, level, tile or file that is wrong."""
    group = job.groups[index]
    ids = [obj.obj_id for obj in group.objects]
    if not ids or len(set(ids)) != len(ids):
        raise QuickSamError(f"group {index} of the track job must have objects with distinct ids (it has {ids})")
    for obj in group.objects:
        if obj.mask_file is not None and (obj.points or obj.box is not None):
            raise QuickSamError(f"object {obj.obj_id} has a mask prompt and points or a box; SAM 2 takes one or the "
                                "other on a frame: give the mask alone")
    stores = tuple(_level_on_frame(root, frames[frame], group) for frame in job.frames)
    tile_size = stores[0].grid.tile_size
    masks = {obj.obj_id: read_mask_prompt(_resolved(obj.mask_file, base), tile_size, obj.obj_id)
             for obj in group.objects if obj.mask_file is not None}
    return GroupFrames(group, stores, masks)


def _level_on_frame(root: FeatureStore, frame: FrameRef, group: TrackGroup) -> FeatureStore:
    """The store of `group.level` on `frame`, checked to hold `group.tile_id` encoded, with the series' model."""
    store = frame_store(root, frame)
    folder = level_folder_path(store.root, group.level)
    try:
        level = FeatureStore.open(folder)
    except StoreError as exc:
        raise StoreError(f"{frame.named} of series '{root.root}' has no level "
                         f"'{group.level}' ({exc}); track on a level every frame has") from None
    if (level.model_name, level.checkpoint_sha256) != (root.model_name, root.checkpoint_sha256):
        raise StoreError(f"level '{group.level}' of {frame.named} was encoded with another "
                         "model or weights than the series; encode the series again into a new folder")
    tiles = {tile.tile_id: tile for tile in level.grid}
    tile = tiles.get(group.tile_id)
    if tile is None:
        raise QuickSamError(f"level '{group.level}' of {frame.named} has no tile "
                            f"{group.tile_id}; choose a tile of the series' grid")
    status = level.status(tile)
    if status == STATUS_NODATA:
        raise QuickSamError(f"tile {group.tile_id} of level '{group.level}' is not encoded on {frame.named}: "
                            "it has no valid pixel there (all nodata); track over frames where "
                            "the tile has data")
    if status != STATUS_DONE:
        raise QuickSamError(f"tile {group.tile_id} of level '{group.level}' is not encoded on {frame.named} "
                            f"(it is {status}); run the same quicksam encode again to finish the "
                            "series")
    return level


def _resolved(path: str, base: Optional[Path]) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() or base is None else Path(base) / candidate


def read_mask_prompt(path: Path, size: int, obj_id: int) -> np.ndarray:
    """The mask prompt of object `obj_id`: a .npy of (size, size) bool (any 0/1 dtype) in the tile's pixels.
    QuickSamError when it cannot be read (no pickles are loaded) or has another shape."""
    try:
        mask = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise QuickSamError(f"the mask prompt of object {obj_id} ('{path}') cannot be read ({exc}); write it as a "
                            ".npy of the tile's size") from None
    if mask.shape != (size, size):
        raise QuickSamError(f"the mask prompt of object {obj_id} ('{path}') is {mask.shape}, not the tile's "
                            f"({size}, {size}); rasterise it on the group's tile")
    return mask.astype(bool)
