"""Encode a time series into a series store: every frame on frame 0's grid, one stretch, one model (no QGIS).

`encode_series` is what `quicksam encode --series` / `--frames-from-bands` run (and through them the Processing
algorithm). The plan (series_plan.py) is made and bad input refused before anything is written; then frame 0's
store is created in the store folder itself and `series.json` written beside its manifest (core/series.py), and
each frame is encoded in date order with `levels_pipeline.encode_levels` into its own store (`frames/t0001/`, ...;
a resampled frame reads its warped VRT kept beside that folder, `frames/t0001.vrt`), every level of
`--levels` for each. The model is built once, when the first tile needs it. A run stopped anywhere resumes: each
frame's store keeps its finished tiles and the same command encodes only what is missing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Tuple

from ..core.logger import LOGGER
from ..core.manifest import MANIFEST
from ..core.series import SeriesManifest, read_series, write_series
from ..core.store import FeatureStore
from ..core.store_levels import level_stores
from .levels_pipeline import _add, _model_once, encode_levels, plan_levels, share_decoder
from .series_plan import FramePlan, SeriesPlan, SeriesRequest, plan_series
from .tile_pipeline import CancelCheck, EncodeStats, ProgressCallback, ProgressEvent

if TYPE_CHECKING:
    from .models import SegmentModel


@dataclass(frozen=True)
class SeriesStart:
    """What a series run is about to do: the store folder, its frames, tiles over all frames and levels, and
    how many of them are left to encode."""

    store: Path
    series: SeriesManifest
    tiles: int
    todo: int


def encode_series(request: SeriesRequest, progress: Optional[ProgressCallback] = None,
                  cancelled: Optional[CancelCheck] = None, model: Optional[SegmentModel] = None,
                  started: Optional[Callable[[SeriesStart], None]] = None
                  ) -> Tuple[FeatureStore, EncodeStats, SeriesManifest]:
    """Encode (or finish) the series `request` into `request.base.store`. Returns frame 0's store (the store
    folder), the run's totals and the series manifest.

    Progress events count tiles over every frame and level; a tile of frame k > 0 is named with its folder
    (`frames/t0001/r0000c0000`). Each frame's store is locked while it is written. Errors as
    `pipeline.encode_raster`, and series_plan.py's; a frame that cannot be read stops the run, the frames
    before it kept.
    """
    root = Path(request.base.store)
    with tempfile.TemporaryDirectory(prefix="quicksam-series-") as workdir:
        plan = plan_series(request, Path(workdir))   # bad input refused before anything is written
        per_frame = tiles_per_frame(plan)
        if started is not None:
            started(SeriesStart(root, plan.series, per_frame * len(plan.frames), tiles_to_do(plan, per_frame)))
        model_source = _model_once(request.base, model)
        stats = EncodeStats()
        for frame in plan.frames:
            offset = frame.ref.index * per_frame
            run = _encode_frame(plan, frame, Path(workdir), _frame_progress(progress, offset, per_frame * len(
                plan.frames), frame), cancelled, model_source)
            _add(stats, run)
    return FeatureStore.open(root), stats, plan.series


def _encode_frame(plan: SeriesPlan, frame: FramePlan, workdir: Path, progress: Optional[ProgressCallback],
                  cancelled: Optional[CancelCheck], model_source: Callable[[], SegmentModel]) -> EncodeStats:
    """Encode one frame's store (every level); series.json is written once frame 0's store is ready."""
    root = Path(plan.frames[0].request.store)
    request = frame.request
    if frame.vrt is not None:
        _install_vrt(workdir / frame.vrt.name, frame.vrt)
        request = dataclasses.replace(request, raster=str(frame.vrt))

    def on_ready(store: FeatureStore, todo: int) -> None:
        if frame.ref.index == 0 and read_series(root) != plan.series:
            write_series(root, plan.series)
        else:   # one decoder file for the series where the file system allows a hard link
            share_decoder(FeatureStore.open(root), store)
        if todo:
            LOGGER.info("%s: %d tiles to encode", frame.ref.named, todo)

    return encode_levels(request, progress=progress, cancelled=cancelled, started=on_ready,
                         stretch=plan.stretch, model_source=model_source, series=True)[1]


def _install_vrt(planned: Path, target: Path) -> None:
    """Put a frame's warped VRT in its place in the store (unchanged when the same XML is already there)."""
    if target.is_file() and target.read_bytes() == planned.read_bytes():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    shutil.copyfile(planned, temporary)
    os.replace(temporary, target)


def tiles_per_frame(plan: SeriesPlan) -> int:
    """Tiles of one frame over all its levels (every frame has the same grids): frame 0's planned levels."""
    return sum(len(item.plan.manifest.grid) for item in plan_levels(plan.frames[0].request, plan.stretch))


def tiles_to_do(plan: SeriesPlan, per_frame: int) -> int:
    """Tiles not yet encoded, over every frame (a frame without a store yet: all of its tiles)."""
    todo = 0
    for frame in plan.frames:
        folder = Path(frame.request.store)
        if (folder / MANIFEST).is_file():
            todo += sum(len(level.pending_tiles()) for level in level_stores(FeatureStore.open(folder)))
        else:
            todo += per_frame
    return todo


def _frame_progress(progress: Optional[ProgressCallback], offset: int, total: int, frame: FramePlan
                    ) -> Optional[ProgressCallback]:
    """A frame's progress events counted over the whole series, its tile ids prefixed with its folder."""
    if progress is None:
        return None
    prefix = "" if frame.ref.folder == "." else frame.ref.folder + "/"

    def on_progress(event: ProgressEvent) -> None:
        progress(ProgressEvent(offset + event.done, total, prefix + event.tile_id, event.status))

    return on_progress
