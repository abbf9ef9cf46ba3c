"""`quicksam track-masks JOB.json`: track objects through a series store's frames with SAM 2's video memory, in
the encoder's process (no QGIS; encoder/tracking.py). The QGIS side writes the job and reads the result files
(core/track_job.py); with --progress-json each file is announced by a `track_frame` event (docs/cli-events.md).

Ctrl-C (SIGINT) and SIGTERM (what a cancelled QGIS task sends) stop the run after the frame being tracked, with
exit status 130; the result files written so far are kept (each is written atomically). A second signal stops at
once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List

from .events import EventWriter, add_events_option, stop_signal_handler

if TYPE_CHECKING:
    from ..core.track_job import FrameResult, TrackJob


def add_track_masks_parser(commands: argparse._SubParsersAction) -> None:
    """`quicksam track-masks JOB.json [--device D] [--checkpoint C]`."""
    parser = commands.add_parser(
        "track-masks", help="track objects through a series store (a job file written by QuickSAM's QGIS side)",
        description="Track the objects of a track job (JSON, core/track_job.py) through the frames of a series "
                    "store with SAM 2's memory encoder and memory attention, on the frames' stored features (no "
                    "frame is encoded again). Writes one result file (.npz: per object its id, presence, object "
                    "score and mask in the tile's pixels) per group and frame into the job's output folder.")
    parser.add_argument("job", type=Path, help="the track job (JSON); relative mask files are read beside it")
    parser.add_argument("--checkpoint", help="the store's checkpoint file or name, when it cannot be found by "
                                             "itself (it must be the one the store was encoded with)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    add_events_option(parser)
    parser.set_defaults(handler=_cmd_track_masks)


def read_job(path: Path) -> TrackJob:
    """The job at `path`; QuickSamError (one line) when it is missing or not a track job."""
    from ..core.errors import QuickSamError
    from ..core.track_job import TrackJob

    try:
        return TrackJob.read(path)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise QuickSamError(f"track job '{path}' cannot be read ({exc}); write it with QuickSAM's TrackJob") from None


def _cmd_track_masks(args: argparse.Namespace, events: EventWriter) -> int:
    # sam2's propagation draws a tqdm bar on stderr, which belongs to the one-line error; tqdm reads this at import
    os.environ.setdefault("TQDM_DISABLE", "1")
    from ..core.errors import Cancelled
    from ..encoder.tracking import run_track_job

    job = read_job(args.job)
    written: List[str] = []
    expected = {"total": None}

    def on_start(total: int) -> None:
        expected["total"] = total
        events.start(store=job.store, job=str(args.job), output_dir=job.output_dir, groups=len(job.groups),
                     frames=list(job.tracked_order()), results=total)

    def on_result(result: FrameResult, path: Path) -> None:
        written.append(str(path))
        events.progress(len(written), expected["total"], "results")
        events.emit("track_frame", group=result.group, frame=result.frame, path=str(path),
                    objects=[int(i) for i in result.obj_ids],
                    present=[int(i) for i, seen in zip(result.obj_ids, result.present) if seen])
        events.check_open()

    with stop_signals() as stop:
        try:
            outcome = run_track_job(job, base=args.job.parent, device=args.device, checkpoint=args.checkpoint,
                                    on_result=on_result, cancelled=lambda: stop["requested"], started=on_start)
        except KeyboardInterrupt:
            raise Cancelled(f"interrupted; the {len(written)} results written so far are kept in "
                            f"'{job.output_dir}'") from None
    summary = {"store": job.store, "output_dir": job.output_dir, "groups": len(job.groups),
               "frames": list(outcome.order), "results": outcome.results, "files": written}
    events.finished(summary, indent=2, seconds=round(outcome.total_seconds, 3),
                    track_seconds=round(outcome.track_seconds, 3))
    return 0


@contextlib.contextmanager
def stop_signals() -> Iterator[dict]:
    """SIGINT and SIGTERM ask the run to stop after the frame being tracked (`stop["requested"]` turns True); a
    second one raises KeyboardInterrupt at once. The previous handlers come back afterwards."""
    stop = {"requested": False}

    def handler(signum: int, frame: object) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True

    with stop_signal_handler(handler):
        yield stop
