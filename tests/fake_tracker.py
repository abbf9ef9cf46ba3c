"""A stand-in for the encoder's `quicksam track-masks JOB.json --progress-json` (the torch side), for testing the
QGIS side of tracking without torch: it reads the job, writes FrameResult files with known masks and prints the
same JSON-line events (`track_frame` per group and frame, then `finished`).

Run as the encoder's Python: `fake_python(folder)` writes an executable that takes the runner's command line
(`-m quicksam.cli track-masks JOB --progress-json`) and runs this file with the test's interpreter.

The known masks, in the tile's pixels: object k's anchor (ax, ay) is the floor of its first point, else of its
box's centre, else of its mask prompt's centroid; on frame f its mask is the square of columns
ax - 5 + 2 (f - prompt frame) .. ax + 5 + 2 (f - prompt frame) (exclusive end) and rows ay - 5 .. ay + 5, with
a 2 x 2 hole at (ax + 2 (f - p), ay) (holes must survive). Object id 2 is absent on frame 2 (present False,
its mask kept as a garbage shape that must not be drawn). The object score is 0.5 + 0.01 f (float32).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Tuple

import numpy as np

ABSENT = (2, 2)  # (object id, frame)
HOLD_ENV = "QUICKSAM_FAKE_TRACKER_HOLD"


def fake_python(folder: Path) -> Path:
    """An executable in `folder` that runs this fake with the test's Python, whatever arguments it gets."""
    path = Path(folder) / "fake-encoder-python"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def anchor(obj) -> Tuple[int, int]:
    """(ax, ay) tile pixels of a TrackObject (see the module)."""
    if obj.points:
        x, y = obj.points[0]
    elif obj.box is not None:
        x, y = (obj.box[0] + obj.box[2]) / 2, (obj.box[1] + obj.box[3]) / 2
    else:
        rows, cols = np.nonzero(np.load(obj.mask_file))
        x, y = cols.mean() + 0.5, rows.mean() + 0.5
    return int(np.floor(x)), int(np.floor(y))


def known_mask(ax: int, ay: int, shift: int, size: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[max(ay - 5, 0):ay + 5, max(ax - 5 + shift, 0):max(ax + 5 + shift, 0)] = True
    mask[ay:ay + 2, ax + shift:ax + shift + 2] = False
    return mask


def _hold() -> None:
    """With HOLD_ENV set to a file path: write that file and wait (up to a minute) to be stopped, so that a test
    can interrupt a run that has sent one frame."""
    marker = os.environ.get(HOLD_ENV)
    if marker:
        Path(marker).write_text("holding")
        for _ in range(600):
            time.sleep(0.1)


def main(argv) -> int:
    from quicksam.core.store import FeatureStore
    from quicksam.core.track_job import FrameResult, TrackJob, write_result

    args = [arg for arg in argv if arg not in ("-m", "quicksam.cli", "--progress-json")]
    if not args or args[0] != "track-masks":
        print(f"quicksam: error: the fake tracker takes track-masks JOB, not {args}", file=sys.stderr)
        return 1
    job = TrackJob.read(Path(args[1]))
    size = FeatureStore.open(Path(job.store)).grid.tile_size
    print(json.dumps({"event": "start", "command": "track-masks", "pid": os.getpid()}), flush=True)
    for group_index, group in enumerate(job.groups):
        for frame in job.tracked_order():
            ids = np.array([obj.obj_id for obj in group.objects], np.int64)
            present = np.array([(obj.obj_id, frame) != ABSENT for obj in group.objects])
            # an absent object keeps a (garbage) mask: the QGIS side must go by `present`, not by the mask
            masks = np.stack([known_mask(*anchor(obj), 2 * (frame - job.prompt_frame), size)
                              for obj in group.objects])
            scores = np.full(len(ids), 0.5 + 0.01 * frame, np.float32)
            path = write_result(Path(job.output_dir), FrameResult(group_index, frame, ids, present, scores, masks))
            print(json.dumps({"event": "track_frame", "group": group_index, "frame": frame, "path": str(path)}),
                  flush=True)
            _hold()
    print(json.dumps({"event": "finished", "summary": {"groups": len(job.groups)}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
