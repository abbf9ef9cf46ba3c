"""What the QGIS side asks the encoder's process to track, and what it gets back (no QGIS, no torch).

Tracking runs SAM 2's memory encoder and memory attention (torch) in the encoder's process
(`quicksam track-masks JOB.json`, encoder/tracking.py) on the cached features of a series store; the QGIS side
(interactive/tracking.py) chooses each object's level and tile, writes the job, and turns the masks it gets back
into polygons. This module is the contract between the two:

- `TrackJob` (job.json): the series store, the frames to track (series frame indices, in order), the frame the
  prompts are on, the direction, and groups of objects that share one level and one tile (one SAM 2 video state
  each). Prompt coordinates are continuous pixel coordinates of that tile at that level (x = column, y = row,
  (0, 0) the top-left corner of the tile's top-left pixel); a mask prompt is a file of (S, S) bool (S = tile size).
- `FrameResult` (one .npz per group and frame, in `output_dir`, written atomically and announced by a
  `track_frame` event): per object its id, whether SAM 2 saw it (`present`: object score logit > 0), its object
  score (sigmoid of SAM 2's object score logit, 0..1), and its mask (S, S) bool in the tile's pixels.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .tile_files import atomic_write_bytes

DIRECTIONS = ("forward", "backward", "both")
JOB_VERSION = 1


@dataclass(frozen=True)
class TrackObject:
    """One object's prompts on the prompt frame, in tile pixels (see the module). `obj_id` is the user's object id
    (kept across frames); `labels` 1 = foreground, 0 = background, one per point; `box` (x0, y0, x1, y1);
    `mask_file` a .npy of (S, S) bool, an accepted polygon rasterised on the tile."""

    obj_id: int
    points: Tuple[Tuple[float, float], ...] = ()
    labels: Tuple[int, ...] = ()
    box: Optional[Tuple[float, float, float, float]] = None
    mask_file: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", tuple(tuple(float(v) for v in p) for p in self.points))
        object.__setattr__(self, "labels", tuple(int(v) for v in self.labels))
        if self.box is not None:
            object.__setattr__(self, "box", tuple(float(v) for v in self.box))
        if len(self.points) != len(self.labels):
            raise ValueError("one label per point")
        if not self.points and self.box is None and self.mask_file is None:
            raise ValueError(f"object {self.obj_id} has no prompt")


@dataclass(frozen=True)
class TrackGroup:
    """Objects decoded on one tile of one level: `level` the level folder relative to each frame's store ("."
    the frame's finest level, `levels/x4`), `tile_id` the tile's id in that level."""

    level: str
    tile_id: str
    objects: Tuple[TrackObject, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(
            item if isinstance(item, TrackObject) else TrackObject(**item) for item in self.objects))


@dataclass(frozen=True)
class TrackJob:
    """A tracking run. `store`: the series store folder; `frames`: series frame indices tracked, ascending, the
    prompt frame among them; `prompt_frame`: the frame the prompts are on; `direction`: one of DIRECTIONS;
    `output_dir`: where the results go (created)."""

    store: str
    frames: Tuple[int, ...]
    prompt_frame: int
    direction: str
    groups: Tuple[TrackGroup, ...]
    output_dir: str
    version: int = JOB_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "frames", tuple(int(v) for v in self.frames))
        object.__setattr__(self, "groups", tuple(
            item if isinstance(item, TrackGroup) else TrackGroup(**item) for item in self.groups))
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
        if self.prompt_frame not in self.frames or list(self.frames) != sorted(set(self.frames)):
            raise ValueError("frames must be ascending and hold the prompt frame")

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> TrackJob:
        if data.get("version") != JOB_VERSION:
            raise ValueError(f"track job version {data.get('version')!r} is not {JOB_VERSION}")
        return cls(**data)

    def write(self, path: Path) -> None:
        atomic_write_bytes(Path(path), json.dumps(self.to_json(), indent=1).encode())

    @classmethod
    def read(cls, path: Path) -> TrackJob:
        return cls.from_json(json.loads(Path(path).read_text()))

    def tracked_order(self) -> Tuple[int, ...]:
        """The frames in the order SAM 2 visits them: the prompt frame, then forward, then backward."""
        after = [f for f in self.frames if f > self.prompt_frame] if self.direction != "backward" else []
        before = [f for f in reversed(self.frames) if f < self.prompt_frame] if self.direction != "forward" else []
        return (self.prompt_frame, *after, *before)


@dataclass(frozen=True)
class FrameResult:
    """One group's result on one frame: `obj_ids` (N,) int64, `present` (N,) bool, `object_score` (N,) float32 in
    0..1, `masks` (N, S, S) bool in the tile's pixels (all False where not present)."""

    group: int
    frame: int
    obj_ids: np.ndarray
    present: np.ndarray
    object_score: np.ndarray
    masks: np.ndarray


def result_path(output_dir: Path, group: int, frame: int) -> Path:
    """The file of group `group`'s result on series frame `frame`."""
    return Path(output_dir) / f"g{group:03d}_f{frame:04d}.npz"


def write_result(output_dir: Path, result: FrameResult) -> Path:
    """Write `result` atomically; returns its path."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, group=result.group, frame=result.frame, obj_ids=result.obj_ids,
                        present=result.present, object_score=result.object_score, masks=result.masks)
    path = result_path(output_dir, result.group, result.frame)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def read_result(path: Path) -> FrameResult:
    """A result file written by `write_result` (OSError/ValueError as numpy raises them)."""
    with np.load(Path(path)) as data:
        return FrameResult(group=int(data["group"]), frame=int(data["frame"]), obj_ids=data["obj_ids"],
                           present=data["present"].astype(bool), object_score=data["object_score"],
                           masks=data["masks"].astype(bool))
