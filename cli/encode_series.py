"""`quicksam encode --series R1 R2 ... STORE` and `quicksam encode STACK STORE --frames-from-bands`: a time series
into a series store (encoder/series_pipeline.py; docs/time-series.md). No QGIS."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, List

from ..core.errors import QuickSamError
from .events import EventWriter

if TYPE_CHECKING:
    from ..core.series import SeriesManifest
    from ..core.store import FeatureStore
    from ..encoder.pipeline import EncodeRequest
    from ..encoder.tile_pipeline import ProgressEvent

#: The options that only a series takes.
SERIES_ONLY = ("frame_pattern", "dates", "date_pattern", "frame_resampling")


def parse_dates(text: str) -> List[str]:
    """Dates from "2024-05-01,2024-06-01" (ISO dates or date-times, one per frame)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def add_series_options(encode: argparse.ArgumentParser) -> None:
    """The options of a series: --series, --frames-from-bands, --frame-pattern, --dates, --date-pattern,
    --frame-resampling."""
    from ..encoder.frame_grid import DEFAULT_FRAME_RESAMPLING, FRAME_RESAMPLINGS

    series = encode.add_argument_group("time series (docs/time-series.md)")
    kind = series.add_mutually_exclusive_group()
    kind.add_argument("--series", action="store_true",
                      help="the rasters before STORE are the frames of a time series (or give one folder and "
                           "--frame-pattern): one series store, frames in date order, frame 0 the earliest")
    kind.add_argument("--frames-from-bands", action="store_true",
                      help="each band of the one RASTER is a frame (a band per date, e.g. an NDVI or SAR stack), fed "
                           "as grey; --bands is then not allowed")
    series.add_argument("--frame-pattern", help="with --series FOLDER: the files of FOLDER whose names match this "
                                                "glob, e.g. '*.tif', sorted by name")
    series.add_argument("--dates", type=parse_dates,
                        help="one ISO date or date-time per frame, comma-separated, in the order the frames are given "
                             "(e.g. 2024-05-01,2024-06-01T10:30)")
    series.add_argument("--date-pattern", help="a strptime format found in each frame's file name (a band frame: its "
                                               "band description), e.g. %%Y%%m%%d; default: the dates from GDAL "
                                               "metadata (TIFFTAG_DATETIME, ACQUISITIONDATETIME), else none")
    series.add_argument("--frame-resampling", choices=FRAME_RESAMPLINGS, default=None,
                        help=f"how a frame on another pixel grid than frame 0's is resampled onto it (default "
                             f"{DEFAULT_FRAME_RESAMPLING})")


def is_series(args: argparse.Namespace) -> bool:
    """Whether the command encodes a series; QuickSamError for series options without --series or
    --frames-from-bands, and for several rasters without --series."""
    if args.series or args.frames_from_bands:
        if args.frames_from_bands and len(args.rasters) != 1:
            raise QuickSamError("--frames-from-bands takes one raster (its bands are the frames): give one RASTER "
                                "and STORE, or use --series for several rasters")
        if args.extent_crs or args.zoom is not None:
            raise QuickSamError("a series is read from raster files: leave out --zoom and --extent-crs, and give "
                                "--extent in the CRS of frame 0 (the earliest)")
        return True
    given = [name for name in SERIES_ONLY if getattr(args, name) is not None]
    if given:
        option = "--" + given[0].replace("_", "-")
        raise QuickSamError(f"{option} is for a time series: add --series (or --frames-from-bands)")
    if len(args.rasters) > 1:
        raise QuickSamError(f"{len(args.rasters)} rasters given: add --series to encode them as the frames of one "
                            "series store (the last argument is the store folder), or --output-dir DIR to encode "
                            "each into its own store (docs/batch.md)")
    return False


def run_series(args: argparse.Namespace, events: EventWriter, base: EncodeRequest) -> int:
    """Encode the series of `args` with the settings of `base` (everything but the raster)."""
    from ..encoder.frame_grid import DEFAULT_FRAME_RESAMPLING
    from ..encoder.series_pipeline import SeriesStart, encode_series
    from ..encoder.series_plan import SeriesRequest, frames_from_bands, frames_from_inputs
    from .encode import levels_summary

    frames = frames_from_bands(args.rasters[0]) if args.frames_from_bands else frames_from_inputs(
        args.rasters, args.frame_pattern)
    request = SeriesRequest(base=base, frames=frames, dates=args.dates, date_pattern=args.date_pattern,
                            resampling=args.frame_resampling or DEFAULT_FRAME_RESAMPLING)

    def on_progress(event: ProgressEvent) -> None:
        events.progress(event.done, event.total, "tiles", tile=event.tile_id, status=event.status)
        events.check_open()

    def on_start(start: SeriesStart) -> None:
        events.start(store=str(start.store), frames=[frame.label for frame in start.series.frames],
                     tiles=start.tiles, todo=start.todo, levels=list(base.levels))
        if args.random_weights:
            events.warning("using seeded random weights: the masks will be meaningless; the store records this")

    store, stats, series = encode_series(request, progress=on_progress, started=on_start)
    summary = with_series_totals(levels_summary(store), store, series)
    events.finished(summary, indent=2, store=str(store.root), tile_index=str(store.root / "tile_index.gpkg"),
                    seconds=round(stats.total_seconds, 3))
    return 0


def frames_summary(store: FeatureStore, series: SeriesManifest) -> List[dict]:
    """Each frame of a series store: index, date-time and where it came from, source (and band), resampling,
    folder, tiles and tiles done over its levels and whether its store is complete (`problem` when it cannot be
    opened)."""
    from ..core.errors import StoreError
    from ..core.store_levels import level_stores
    from ..core.store_series import frame_store

    rows = []
    per_frame = sum(len(level.grid) for level in level_stores(store))   # every frame has frame 0's grids
    for frame in series.frames:
        row = {"index": frame.index, "datetime": frame.datetime, "date_source": frame.date_source,
               "source": frame.source, "band": frame.band, "resampling": frame.resampling, "folder": frame.folder}
        try:
            levels = level_stores(frame_store(store, frame))
        except StoreError as exc:   # a frame not written yet: reported, not fatal to `info`
            row.update(tiles=per_frame, tiles_done=0, complete=False, problem=str(exc))
        else:
            row["tiles"] = sum(len(level.grid) for level in levels)
            row["tiles_done"] = sum(level.status(tile) == "done" for level in levels for tile in level.grid)
            row["complete"] = all(not level.pending_tiles() for level in levels)
        rows.append(row)
    return rows


def series_info(store: FeatureStore) -> dict:
    """`quicksam info` of a store: `levels_summary`, with `frames` for a series store."""
    from ..core.series import read_series
    from .encode import levels_summary

    summary = levels_summary(store)
    series = read_series(Path(store.root))
    return summary if series is None else with_series_totals(summary, store, series)


def with_series_totals(summary: dict, store: FeatureStore, series: SeriesManifest) -> dict:
    """`summary` (frame 0's `levels_summary`: its `tiles*` count frame 0's finest level) with `frames`, and the
    series-wide `series_tiles`, `series_tiles_done` (every frame, every level) and `series_complete`; `complete`
    is the series' too (the store is finished only when every frame is)."""
    frames = frames_summary(store, series)
    complete = summary["complete"] and all(frame["complete"] for frame in frames)
    summary.update(frames=frames, complete=complete, series_complete=complete,
                   series_tiles=sum(frame["tiles"] for frame in frames),
                   series_tiles_done=sum(frame["tiles_done"] for frame in frames))
    return summary
