"""Tracking in the encoder's process (`quicksam track-masks JOB.json`, the torch side), for the Segment dock and
quicksam:trackobjects (QGIS's own Python never imports torch).

`run_tracker` writes the plan's job, runs the encoder's Python on it through
encoder/subprocess_runner.run_encoder_process, and hands the records of each `track_frame` event (polygons in
the raster's CRS, interactive/track_features.py) to a callback as they arrive, so that a layer can grow while
the tracker works. It blocks: call it off the GUI thread (a QgsTask, a Processing algorithm).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ..core.errors import Cancelled, EncoderEnvironmentError, QuickSamError
from ..core.logger import LOGGER
from ..core.track_job import read_result
from ..encoder.subprocess_runner import DEFAULT_MODULE, run_encoder_process
from ..interactive.track_features import TrackedShape, track_features
from ..interactive.tracking import TrackPlan
from .algorithms.encoder_events import CLI_ERROR_LINE
from .settings import encoder_python

TRACK_COMMAND = "track-masks"
JOB_FILE = "job.json"
#: What the encoder's Python says when its QuickSAM predates tracking (argparse's refusal of the command).
_NO_TRACK_COMMAND = "invalid choice: 'track-masks'"


@dataclass
class TrackProgress:
    """How far a run is: `done` (group, frame) results received of `total`; `finished` the tracker's summary."""

    total: int
    done: Set[Tuple[int, int]] = field(default_factory=set)
    finished: Dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return len(self.done) / max(self.total, 1)


def track_args(job_path: Path) -> List[str]:
    """The arguments of `quicksam.cli` that track the job in `job_path`."""
    return [TRACK_COMMAND, str(job_path)]


def run_tracker(plan: TrackPlan, on_records: Callable[[List[TrackedShape], TrackProgress], None],
                is_cancelled: Callable[[], bool], python: Optional[str] = None,
                on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
                module: str = DEFAULT_MODULE) -> TrackProgress:
    """Track `plan` in the encoder's process (`python -m module track-masks JOB --progress-json`; `python`
    defaults to the settings' `encoder_python()`). `on_records(records, progress)` gets each frame's records in
    the calling thread as the tracker writes them; `on_event` every other event. Returns the progress (all
    results, the `finished` summary). Cancelled when `is_cancelled()` (the process is stopped);
    EncoderEnvironmentError when the encoder's Python is missing or lacks a package; QuickSamError (one line)
    when the tracker fails, sends no result, or a result cannot be read."""
    job_path = Path(plan.job.output_dir) / JOB_FILE
    plan.job.write(job_path)
    progress = TrackProgress(total=len(plan.job.groups) * len(plan.job.frames))

    def relay(event: Dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "track_frame":
            on_records(_frame_records(plan, event), _received(progress, event))
        elif kind == "finished" and isinstance(event.get("summary"), dict):
            progress.finished.update(event["summary"])
        elif on_event is not None:
            on_event(event)

    try:
        run_encoder_process(track_args(job_path), python or encoder_python(), relay, is_cancelled, module=module)
    except (Cancelled, EncoderEnvironmentError):
        raise
    except QuickSamError as exc:
        raise QuickSamError(_tracker_failure(str(exc))) from None
    if not progress.done:
        raise QuickSamError("the tracker ended without sending any frame; see the QuickSAM log")
    return progress


def _received(progress: TrackProgress, event: Dict[str, Any]) -> TrackProgress:
    progress.done.add((int(event["group"]), int(event["frame"])))
    return progress


def _frame_records(plan: TrackPlan, event: Dict[str, Any]) -> List[TrackedShape]:
    """The records of a `track_frame` event's result file; QuickSamError (one line) when it cannot be read or is
    not the group and frame the event names."""
    try:
        result = read_result(Path(str(event.get("path"))))
        group, frame = int(event["group"]), int(event["frame"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QuickSamError(f"the tracker's result {event.get('path')!r} cannot be read ({exc}); track again") \
            from None
    if (result.group, result.frame) != (group, frame) or not 0 <= group < len(plan.places):
        raise QuickSamError(f"the tracker's result {event.get('path')!r} is not group {group} on frame {frame}; "
                            "track again")
    LOGGER.debug("tracked group %s on frame %s", group, frame)
    return track_features(plan, result)


def _tracker_failure(message: str) -> str:
    """The tracker's one line without "quicksam: error: ", or what to do when its QuickSAM cannot track."""
    text = CLI_ERROR_LINE.sub("", message.strip())
    if _NO_TRACK_COMMAND in text:
        return ("the encoder's QuickSAM has no track-masks command (it is older than this plugin); run Raster > "
                "QuickSAM > Set up… again to update it")
    return text
