"""The plan of a series encoding, made before anything is written (rasterio; no QGIS, no torch).

Which frames (files, a folder's files matching a pattern, or the bands of one raster), their dates and date order
(frame_dates.py), the pixel grid every frame is brought onto (frame 0's; frame_grid.py), the one stretch of the
whole series (percentiles of samples pooled over every frame, per band), and `series.json` (core/series.py)
compared with the one already in the store: a re-run with other frames or dates is refused, nothing overwritten.

Errors: QuickSamError / RasterError / StoreError, one line saying what to do.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from ..core.errors import QuickSamError, StoreError
from ..core.manifest import MANIFEST
from ..core.series import FrameRef, SeriesManifest, frame_folder_name, read_series
from ..core.store import FeatureStore
from .frame_dates import DatedFrame, FrameSource, dated_frames
from .frame_grid import DEFAULT_FRAME_RESAMPLING, PixelGrid, check_overlap, check_resampling, on_grid
from .normalise import Stretch, compute_stretch, sample_windows
from .online_sources import recorded_source
from .pipeline import EncodeRequest, plan_grid
from .raster import RasterInfo, WindowReader, choose_bands, describe_raster

#: Where a resampled frame's warped VRT is kept, relative to the series root: beside its store folder.
FRAME_VRT_SUFFIX = ".vrt"


@dataclass
class SeriesRequest:
    """A series to encode. `base` holds everything but the raster (store, model, weights, bands, tile grid,
    levels; its `raster` is ignored); `frames` in the order given; `dates` one ISO date per frame in that order,
    or `date_pattern` (a strptime format searched in the file names), or neither (metadata, else the index);
    `resampling` brings frames on another grid onto frame 0's (frame_grid.FRAME_RESAMPLINGS)."""

    base: EncodeRequest
    frames: List[FrameSource]
    dates: Optional[List[str]] = None
    date_pattern: Optional[str] = None
    resampling: str = DEFAULT_FRAME_RESAMPLING


@dataclass(frozen=True)
class FramePlan:
    """One frame of the plan: its record in series.json, its encode request (`raster` the file read: the source,
    or the warped VRT that puts it on the grid, `store` its folder), and `vrt`, that VRT's place (None when the
    frame is read as it is)."""

    ref: FrameRef
    request: EncodeRequest
    vrt: Optional[Path] = None


@dataclass(frozen=True)
class SeriesPlan:
    """The whole plan: the series manifest, each frame's plan in date order, the shared stretch."""

    series: SeriesManifest
    frames: List[FramePlan]
    stretch: Stretch


def frames_in_folder(folder: Path, pattern: str) -> List[FrameSource]:
    """The files of `folder` whose names match the glob `pattern`, sorted by name; QuickSamError when none does."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and fnmatch.fnmatch(p.name, pattern))
    if not files:
        raise QuickSamError(f"no file in '{folder}' matches --frame-pattern {pattern!r}: give a pattern such as "
                            "'*.tif'")
    return [FrameSource(str(path)) for path in files]


def frames_from_inputs(inputs: Sequence[str], frame_pattern: Optional[str] = None) -> List[FrameSource]:
    """The frames of `--series R1 R2 ...` (files, in the order given) or of one folder with --frame-pattern.
    QuickSamError for a folder without a pattern, a pattern without a folder, or fewer than two frames."""
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        if not frame_pattern:
            raise QuickSamError(f"'{inputs[0]}' is a folder: add --frame-pattern, e.g. --frame-pattern '*.tif', to "
                                "take its files matching it as the frames")
        frames = frames_in_folder(Path(inputs[0]), frame_pattern)
    elif frame_pattern:
        raise QuickSamError("--frame-pattern picks files of one folder: give that folder as the only raster of "
                            "--series")
    else:
        frames = [FrameSource(str(path)) for path in inputs]
    if len(frames) < 2:
        raise QuickSamError(f"a series needs at least two frames, got {len(frames)}: give more rasters to --series")
    return frames


def frames_from_bands(raster: str) -> List[FrameSource]:
    """One frame per band of `raster` (a band-per-date stack); QuickSamError when it has fewer than two bands."""
    info = describe_raster(raster)
    if info.count < 2:
        raise QuickSamError(f"'{raster}' has {info.count} band: --frames-from-bands takes each band as one frame and "
                            "needs at least two")
    return [FrameSource(raster, band) for band in range(1, info.count + 1)]


def frame_request(base: EncodeRequest, root: Path, index: int, raster: str,
                  band: Optional[int]) -> EncodeRequest:
    """The encode request of frame `index`: its raster read, its folder, a band frame's band as grey."""
    store = root if index == 0 else root / frame_folder_name(index)
    bands = [band] if band else base.bands
    return dataclasses.replace(base, raster=raster, store=store, bands=bands)


def plan_frame(request: SeriesRequest, item: DatedFrame, index: int, grid: PixelGrid, grid_name: str,
               workdir: Path) -> FramePlan:
    """One frame's plan; a frame off the grid gets its warped VRT in `workdir` (moved into the store when the
    frame is encoded). QuickSamError naming a frame that does not overlap the grid."""
    from .frame_grid import write_warped_vrt

    root = Path(request.base.store)
    source = item.frame.source
    info = describe_raster(source)
    raster, resampling, vrt = source, None, None
    if not item.frame.band and not on_grid(info, grid):
        check_overlap(info, grid, item.frame.name, grid_name)
        resampling = request.resampling
        vrt = root / (frame_folder_name(index) + FRAME_VRT_SUFFIX)
        raster = str(write_warped_vrt(source, grid, resampling, workdir / vrt.name))
    frame_req = frame_request(request.base, root, index, raster, item.frame.band)
    # the source's bands, chosen on the source (a VRT adds an alpha band); bands that do not exist: refused now
    bands = choose_bands(info, frame_req.bands)
    if vrt is not None:
        frame_req = dataclasses.replace(frame_req, bands=bands)
    ref = FrameRef(index=index, folder=frame_folder_name(index), source=recorded_source(source),
                   band=item.frame.band, datetime=item.datetime, date_source=item.date_source, resampling=resampling)
    return FramePlan(ref, frame_req, vrt)


def pooled_stretch(frames: Sequence[FramePlan], info: RasterInfo, mode: str) -> Stretch:
    """One stretch of every frame: per band, the percentiles of samples of the encoded area pooled over all
    frames (the same windows of each), nodata left out."""
    first = frames[0].request
    area = plan_grid(info, first).window
    samples = []
    for frame in frames:
        bands = choose_bands(describe_raster(frame.request.raster), frame.request.bands)
        with WindowReader(frame.request.raster, bands, frame.request.level_factor) as reader:
            samples.extend(reader.read(window) for window in sample_windows(area))
    return compute_stretch(samples, mode)


def stored_stretch(store: FeatureStore) -> Stretch:
    """The stretch a store was encoded with."""
    return Stretch(**dataclasses.asdict(store.manifest.preprocessing.stretch))


def check_against_store(root: Path, series: SeriesManifest, stretch: Stretch) -> Stretch:
    """The stretch to encode with: the store's own when `root` already holds this series (or frame 0 of it, written
    before an interruption), else `stretch`. StoreError (one line, nothing written) when `root` holds another
    series, or a store of one raster."""
    if not (root / MANIFEST).is_file():
        return stretch
    existing = read_series(root)
    store = FeatureStore.open(root)
    if existing is None:
        if stored_stretch(store) != stretch or (root / "frames").exists():
            raise StoreError(f"'{root}' already holds a store of one raster, not this series; choose a new folder for "
                             "the series")
        return stretch
    difference = series_difference(existing, series)
    if difference:
        raise StoreError(f"'{root}' already holds a series made differently ({difference}); choose another output "
                         "folder, or delete that store yourself to redo it")
    return stored_stretch(store)


def series_difference(old: SeriesManifest, new: SeriesManifest) -> str:
    """The first difference between a stored series and a run's, said plainly, or ''."""
    if len(old.frames) != len(new.frames):
        return f"store has {len(old.frames)} frames, this run {len(new.frames)}"
    for before, after in zip(old.frames, new.frames):
        for field in ("source", "band", "datetime", "resampling"):
            if getattr(before, field) != getattr(after, field):
                return (f"frame {before.index} {field}: store has {getattr(before, field)!r}, this run "
                        f"{getattr(after, field)!r}")
    return ""


def plan_series(request: SeriesRequest, workdir: Path) -> SeriesPlan:
    """The series' plan (reads every frame; writes only warped VRTs into `workdir`). Frame 0, the earliest,
    gives the grid. Errors as the module says."""
    check_resampling(request.resampling)
    if request.base.bands and any(frame.band for frame in request.frames):
        raise QuickSamError("--bands cannot be given with --frames-from-bands: each band is one frame, fed as grey")
    dated = dated_frames(request.frames, request.dates, request.date_pattern)
    first = describe_raster(dated[0].frame.source)
    grid = PixelGrid.of(first)
    grid_name = f"frame 0 ({dated[0].frame.name})"
    frames = [plan_frame(request, item, index, grid, grid_name, workdir) for index, item in enumerate(dated)]
    series = SeriesManifest(frames=tuple(frame.ref for frame in frames), grid_source=frames[0].ref.source)
    root = Path(request.base.store)
    if root.exists() and not root.is_dir():
        raise StoreError(f"'{root}' exists and is not a folder; choose a new folder for the store")
    factor = _base_factor(request.base, first, root)
    frames = [dataclasses.replace(frame, request=dataclasses.replace(frame.request, level_factor=factor))
              for frame in frames]
    stretch = pooled_stretch(frames, first, request.base.stretch)
    stretch = check_against_store(root, series, stretch)
    return SeriesPlan(series, frames, stretch)


def _base_factor(base: EncodeRequest, info: RasterInfo, root: Path) -> float:
    """The finest level's pixel over the grid's (levels_pipeline.base_factor): where the stretch is sampled."""
    from .levels_pipeline import base_factor

    existing = FeatureStore.open(root) if (root / MANIFEST).is_file() else None
    return base_factor(base, info, existing)
