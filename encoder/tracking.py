"""Track objects through the frames of a series store with SAM 2's video memory (torch; the encoder's process).

`run_track_job` is what `quicksam track-masks JOB.json` runs (the QGIS side writes the job and reads the results;
core/track_job.py is the contract). The model is the store's own (its name, image size, and its checkpoint or the
seeded random weights it was encoded with, checked against the store's SHA-256), built once for every group, and
handed to sam2's stock `SAM2VideoPredictor` (encoder/models.build_video_predictor: the same weights). Each group
is one video: frame i is series frame `job.frames[i]`, its image features read from the group's tile on that
frame's level store (encoder/tracking_state.py), never encoded again. The predictor's own `add_new_points_or_box`,
`add_new_mask` and `propagate_in_video` run unchanged: forward from the prompt frame, backward (`reverse=True`),
or both (forward first); the prompt frame is written once, first (`TrackJob.tracked_order`).

Per frame and group, one FrameResult file (core/track_job.write_result): per object its id, `present` (SAM 2's
object score logit > 0: the object is visible; SAM 2 marks an occluded or vanished object with a logit <= 0),
`object_score` (the logit's sigmoid) and its mask (`video_res_masks > 0`, all False where not present).

Prompt coordinates: a job's are continuous tile pixels ((0, 0) the top-left corner of the tile's top-left pixel);
SAM's packages add 0.5 to what they are given (pixel indices), so they get `coordinate - 0.5`, as the interactive
decoder does (core/mask_decoding.Prompts.sam_points / sam_box). The video is the tile (video height = width =
tile size = the model's image size), so the predictor's normalisation of coordinates leaves them unchanged.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..core.errors import Cancelled, QuickSamError
from ..core.logger import LOGGER
from ..core.mask_decoding import Prompts
from ..core.store import FeatureStore
from ..core.track_job import FrameResult, TrackJob, TrackObject, write_result
from .on_demand import check_weights, check_weights_source, load_store_model
from .track_inputs import GroupFrames, open_group, open_series
from .tracking_state import stored_inference_state

if TYPE_CHECKING:
    import torch

    from .models import SegmentModel

#: sam2 warns on every frame when its compiled extension (hole filling) is missing; the masks are then not
#: hole-filled, exactly as the stock predictor gives them on this machine.
_HOLE_FILLING_WARNING = r"(?s).*Skipping the post-processing step"

ResultCallback = Callable[[FrameResult, Path], None]


@dataclass(frozen=True)
class TrackOutcome:
    """What `run_track_job` did: `results` files written (groups x frames), the frames in the order visited,
    and the seconds spent tracking (`track_seconds`, the model already built) and in all (`total_seconds`)."""

    results: int
    order: Tuple[int, ...]
    track_seconds: float
    total_seconds: float


def run_track_job(job: TrackJob, base: Optional[Path] = None, device: str = "auto",
                  checkpoint: Optional[str] = None, on_result: Optional[ResultCallback] = None,
                  cancelled: Optional[Callable[[], bool]] = None,
                  started: Optional[Callable[[int], None]] = None, predictor: Optional[Any] = None) -> TrackOutcome:
    """Track every group of `job` and write one result file per group and frame into `job.output_dir`.

    `base`: the folder relative mask files are in (the job file's); `predictor`: one `build_store_predictor` made
    for this series (default: built here). `started(total)` once the job is checked and
    the model built; `on_result(result, path)` after each file; `cancelled()` is asked between frames: Cancelled
    then, the files written so far kept. StoreError/QuickSamError (one line) for a bad job (see
    encoder/track_inputs.py), CheckpointError for weights that are not the store's."""
    began = time.perf_counter()
    root, frames = open_series(job)
    groups = [open_group(root, frames, job, index, base) for index in range(len(job.groups))]
    output_dir = Path(job.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QuickSamError(f"cannot create the track job's output folder '{output_dir}' ({exc}); choose a folder "
                            "you can write") from None
    if predictor is None:
        predictor = build_store_predictor(groups[0].stores[0], device, checkpoint)
    total = len(groups) * len(job.tracked_order())
    if started is not None:
        started(total)
    tracking = time.perf_counter()
    written = 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_HOLE_FILLING_WARNING, category=UserWarning)
        for index, group in enumerate(groups):
            _stop_if_cancelled(cancelled, written, output_dir)
            for result in track_group(predictor, job, index, group):
                path = write_result(output_dir, result)
                written += 1
                if on_result is not None:
                    on_result(result, path)
                if written < total:
                    _stop_if_cancelled(cancelled, written, output_dir)
    now = time.perf_counter()
    LOGGER.info("tracked %d groups over %d frames in %.1f s", len(groups), len(job.frames), now - tracking)
    return TrackOutcome(written, job.tracked_order(), now - tracking, now - began)


def _stop_if_cancelled(cancelled: Optional[Callable[[], bool]], written: int, output_dir: Path) -> None:
    if cancelled is not None and cancelled():
        raise Cancelled(f"tracking cancelled; the {written} results written so far are kept in '{output_dir}'")


def build_store_predictor(store: FeatureStore, device: str = "auto", checkpoint: Optional[str] = None) -> Any:
    """sam2's SAM2VideoPredictor with the store's model and weights (see encoder/on_demand.load_store_model:
    the checkpoint it records, or its seeded random weights, checked against its SHA-256)."""
    from .models import build_video_predictor

    weights = check_weights_source(store, checkpoint)
    model: SegmentModel = load_store_model(store, "", weights, device)
    check_weights(store, model, weights)
    return build_video_predictor(model)


def track_group(predictor: Any, job: TrackJob, index: int, group: GroupFrames) -> Iterator[FrameResult]:
    """Group `index`'s results, frame after frame in `job.tracked_order()` (see the module)."""
    for video_index, obj_ids, masks, logits in tracked_frames(predictor, job, group):
        yield frame_result(index, job.frames[video_index], obj_ids, masks, logits)


def tracked_frames(predictor: Any, job: TrackJob, group: GroupFrames
                   ) -> Iterator[Tuple[int, List[int], torch.Tensor, np.ndarray]]:
    """SAM 2's raw output on each frame of `group`'s video, in `job.tracked_order()`: (video index, object ids,
    video_res_masks (N, 1, S, S) float32 mask logits, (N,) object score logits)."""
    state = stored_inference_state(predictor, len(group.stores), group.read_features, group.tile_size)
    prompt_index = job.frames.index(job.prompt_frame)
    for obj in group.group.objects:
        add_prompts(predictor, state, prompt_index, obj, group.masks.get(obj.obj_id))
    done = set()
    for start, reverse, limit in propagation_passes(job.direction, prompt_index):
        for video_index, obj_ids, masks in predictor.propagate_in_video(
                state, start_frame_idx=start, max_frame_num_to_track=limit, reverse=reverse):
            if video_index in done:
                continue   # "both": the prompt frame comes again first in the backward pass
            done.add(video_index)
            yield video_index, list(obj_ids), masks, object_score_logits(state, video_index)


def propagation_passes(direction: str, prompt_index: int) -> List[Tuple[int, bool, Optional[int]]]:
    """(start video index, reverse, max frames to track) of each `propagate_in_video` call. sam2 skips a
    backward pass that starts at video index 0 altogether, prompt frame included: that pass becomes a forward
    pass of that one frame."""
    forward = (prompt_index, False, None)
    backward = (prompt_index, True, None) if prompt_index > 0 else (prompt_index, False, 0)
    return {"forward": [forward], "backward": [backward], "both": [forward, backward]}[direction]


def sam_point_prompts(obj: TrackObject) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """(points (N, 2) float32, labels (N,) int32, box (4,) float32) of `obj` as the sam2 package takes them (see
    the module: tile pixel coordinates - 0.5); None for what the object lacks."""
    if not obj.points and obj.box is None:
        return None, None, None
    prompts = Prompts(points=np.asarray(obj.points, np.float64).reshape(-1, 2), labels=np.asarray(obj.labels),
                      box=obj.box)
    points = prompts.sam_points().astype(np.float32) if obj.points else None
    labels = prompts.labels.astype(np.int32) if obj.points else None
    box = np.asarray(prompts.sam_box(), np.float32) if obj.box is not None else None
    return points, labels, box


def add_prompts(predictor: Any, state: dict, video_index: int, obj: TrackObject, mask: Optional[np.ndarray]) -> None:
    """Give SAM 2 object `obj`'s prompts on video frame `video_index`: its mask (`add_new_mask`, (S, S) bool) or
    its points and box (`add_new_points_or_box`): SAM 2 takes one or the other on a frame (a job with both is
    refused by encoder/track_inputs.open_group)."""
    if mask is not None:
        predictor.add_new_mask(state, frame_idx=video_index, obj_id=obj.obj_id, mask=mask)
        return
    points, labels, box = sam_point_prompts(obj)
    predictor.add_new_points_or_box(state, frame_idx=video_index, obj_id=obj.obj_id, points=points, labels=labels,
                                    box=box, normalize_coords=True)


def object_score_logits(state: dict, video_index: int) -> np.ndarray:
    """(N,) float32: each object's object score logit on video frame `video_index`, read from the predictor's
    per-object outputs (a prompt frame's are its conditioning outputs)."""
    logits = []
    for obj_idx in range(len(state["obj_ids"])):
        outputs = state["output_dict_per_obj"][obj_idx]
        out = outputs["cond_frame_outputs"].get(video_index) or outputs["non_cond_frame_outputs"][video_index]
        logits.append(float(out["object_score_logits"].reshape(-1)[0]))
    return np.asarray(logits, np.float32)


def frame_result(group: int, frame: int, obj_ids: Sequence[int], video_res_masks: torch.Tensor,
                 logits: np.ndarray) -> FrameResult:
    """One FrameResult from the predictor's output on a frame: `video_res_masks` (N, 1, S, S) float logits,
    `logits` (N,) object score logits. An object is present when its logit > 0; its mask (logit > 0) is emptied
    where it is not, as the contract says (SAM 2 already gives such an object a mask of -1024)."""
    present = np.asarray(logits, np.float32) > 0
    masks = video_res_masks[:, 0].detach().float().cpu().numpy() > 0
    masks &= present[:, None, None]
    scores = (1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))).astype(np.float32)
    return FrameResult(group=group, frame=frame, obj_ids=np.asarray(obj_ids, np.int64), present=present,
                       object_score=scores, masks=masks)
