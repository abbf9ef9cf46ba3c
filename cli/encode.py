"""`quicksam encode`: encode a raster into a feature store (no QGIS: a headless GPU box runs it)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Tuple

from ..core.catalogue import MODELS, default_checkpoint_for
from ..core.defaults import DEFAULT_MODEL, DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, default_overlap
from ..core.errors import QuickSamError
from ..core.store_url import is_object_store_url
from ..core.tile_codec import FEATURE_DTYPES
from .batch import add_batch_options, is_batch
from .encode_cluster import cluster_fields, encode_cluster, refuse_series_on_cluster
from .encode_series import add_series_options, is_series, run_series
from .events import EventWriter, add_events_option, download_progress
from .object_store import add_store_arguments, encode_remote, refuse_series_into_url
from .options import add_cluster_options, parse_extent, parse_factors, parse_ints

if TYPE_CHECKING:
    from distributed import Client

    from ..core.store import FeatureStore
    from ..encoder.checkpoints import ResolvedCheckpoint
    from ..encoder.pipeline import EncodeRequest
    from ..encoder.tile_pipeline import ProgressEvent

#: RASTER's help.
RASTER_HELP = ("the raster: a file (any GDAL format); a URL of a raster file such as a COG (read with HTTP range "
               "requests); an XYZ tile URL with {z}, {x} and {y} (with --zoom); a QGIS XYZ layer source "
               "(type=xyz&url=...); GDAL's WMS:, WMTS: or /vsi... strings (docs/online-layers.md). Quote it in the "
               "shell. With --series: several rasters, the frames of a time series; with --output-dir or "
               "--next-to-inputs: the inputs (docs/batch.md)")


def add_encode_parser(commands: argparse._SubParsersAction) -> None:
    """`quicksam encode RASTER STORE [options]`."""
    encode = commands.add_parser("encode", help="encode a raster into a feature store",
                                 description="Encode a raster once into a feature store for interactive "
                                             "segmentation. Re-running the same command resumes.")
    encode.add_argument("rasters", nargs="*", metavar="RASTER", help=RASTER_HELP)
    add_store_arguments(encode)
    encode.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS), help="model (default %(default)s)")
    weights = encode.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help="checkpoint file or checkpoint name (default: the model's "
                                              "official checkpoint, downloaded into the user cache if missing)")
    weights.add_argument("--random-weights", action="store_true",
                         help="seeded random weights: for tests and offline demos; the store says so")
    encode.add_argument("--seed", type=int, default=0, help="seed of --random-weights (default 0)")
    encode.add_argument("--bands", type=parse_ints, help="1 to 3 band numbers fed as R,G,B, e.g. 3,2,1")
    encode.add_argument("--overlap", type=int, default=None,
                        help=f"overlap of neighbouring tiles in pixels (default {DEFAULT_OVERLAP}, a quarter of the "
                             "tile size)")
    encode.add_argument("--extent", type=parse_extent,
                        help="xmin,ymin,xmax,ymax in the raster's CRS (or --extent-crs); required for XYZ, WMS and "
                             "WMTS services")
    encode.add_argument("--extent-crs", help="CRS of --extent, e.g. EPSG:4326 for degrees (default: the raster's)")
    encode.add_argument("--zoom", type=int, help="XYZ and WMTS services: the zoom level read at full resolution "
                                                 "(default: the layer's zmax or the service's finest; required for a "
                                                 "bare XYZ URL). For WMTS, GDAL's zoom_level: the index of the tile "
                                                 "matrix, 0 = the coarsest")
    encode.add_argument("--resolution", type=float, default=None,
                        help="ground resolution of the finest level in map units per pixel (of the raster's CRS; "
                             "default: the raster's own pixels); coarser than the raster's is read with averaging")
    encode.add_argument("--levels", type=parse_factors, default=(1.0,),
                        help="levels to encode as factors of the finest level's pixel size, e.g. 1,4,16 (default "
                             "1: one level); run again with more factors to add levels to a store")
    encode.add_argument("--batch-size", type=int, default=1, help="tiles per model call (default 1)")
    encode.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    encode.add_argument("--tile-size", type=int, default=DEFAULT_TILE_SIZE,
                        help="model input size in pixels (default %(default)s, the models' native size; smaller "
                             "sizes are for tests and quick demos)")
    encode.add_argument("--stretch", default="percentile", choices=["percentile", "none"],
                        help="percentile: 2-98 %% of the whole raster per band (default); none: values as 0-255")
    encode.add_argument("--feature-dtype", default="float16", choices=list(FEATURE_DTYPES),
                        help="stored feature precision, compressed losslessly (default float16: ~1e-4 logit change; "
                             "int8: per-channel 8-bit codes, about half float16's bytes, masks within IoU 0.99 of "
                             "float32's on the test scenes: docs/store-format.md)")
    _add_option_groups(encode)
    encode.set_defaults(handler=_cmd_encode)


def _add_option_groups(encode: argparse.ArgumentParser) -> None:
    """A time series, many inputs (docs/batch.md), a cluster (docs/scaling.md), --progress-json."""
    add_series_options(encode)
    add_batch_options(encode, "store")
    add_cluster_options(encode, "tiles are encoded")
    add_events_option(encode)


def _resolve_weights(args: argparse.Namespace, events: EventWriter) -> Optional[ResolvedCheckpoint]:
    """The checkpoint of --checkpoint or the model's official one (downloaded if missing); None with
    --random-weights."""
    from ..encoder.checkpoints import resolve_checkpoint

    if args.random_weights:
        return None
    name = args.checkpoint or default_checkpoint_for(args.model).name
    return resolve_checkpoint(name, model=args.model, progress=download_progress(events, name))


def _overlap(args: argparse.Namespace) -> int:
    """--overlap, else the default for the tile size (`default_overlap`: a quarter of the tile)."""
    return default_overlap(args.tile_size) if args.overlap is None else args.overlap


def _source_and_extent(args: argparse.Namespace) -> Tuple[str, Optional[tuple]]:
    """The canonical source of RASTER (encoder/online_sources.py) and --extent in its CRS."""
    from ..encoder.online_sources import extent_in_raster_crs, resolve_source

    source = resolve_source(args.raster, args.zoom)
    if args.extent is not None and args.extent_crs:
        return source, extent_in_raster_crs(source, args.extent, args.extent_crs)
    return source, args.extent


def encode_request(args: argparse.Namespace, source: str, store: Path, extent: Optional[tuple],
                   checkpoint: Optional[ResolvedCheckpoint]) -> EncodeRequest:
    """The EncodeRequest of the command's options for one raster `source` into `store`."""
    from ..encoder.pipeline import EncodeRequest

    return EncodeRequest(
        raster=source, store=store, model=args.model, checkpoint=checkpoint, seed=args.seed,
        bands=args.bands, overlap=_overlap(args), extent=extent, batch_size=args.batch_size,
        device=args.device, tile_size=args.tile_size, stretch=args.stretch, feature_dtype=args.feature_dtype,
        resolution=args.resolution, levels=tuple(args.levels))


def _cmd_encode(args: argparse.Namespace, events: EventWriter) -> int:
    from ..encoder.store_guard import refuse_series_store

    if is_batch(args):
        from .encode_batch import run_encode_batch

        return run_encode_batch(args, events)
    if not args.rasters:
        raise QuickSamError("give the raster and the store folder (quicksam encode RASTER STORE), or inputs and "
                            "--output-dir DIR (docs/batch.md)")
    series = is_series(args)
    refuse_series_on_cluster(args, series)
    refuse_series_into_url(args, series)
    if not series and not is_object_store_url(args.store):   # before a checkpoint is downloaded
        refuse_series_store(args.store)
    args.raster = args.rasters[0]
    source, extent = (args.raster, args.extent) if series else _source_and_extent(args)
    checkpoint = _resolve_weights(args, events)
    request = encode_request(args, source, args.store, extent, checkpoint)
    if series:
        return run_series(args, events, request)
    with encode_cluster(args) as (client, cancelled):
        return _encode_one(args, events, request, client, cancelled)


def _encode_one(args: argparse.Namespace, events: EventWriter, request: EncodeRequest, client: Optional[Client],
                cancelled: Callable[[], bool]) -> int:
    """Encode one raster at its levels, here or on the cluster of `client`; its events."""
    from ..core.store_levels import level_stores
    from ..encoder.levels_pipeline import encode_levels

    source = request.raster

    def on_progress(event: ProgressEvent) -> None:
        events.progress(event.done, event.total, "tiles", tile=event.tile_id, status=event.status)
        events.check_open()  # in the writer thread: the encoding stops, its tiles kept

    def on_start(store: FeatureStore, todo: int) -> None:
        # Warned only once the inputs are checked, so bad input still gets its single error line.
        levels = level_stores(store)
        events.start(store=str(request.store), raster=source, tiles=sum(len(level.grid) for level in levels),
                     todo=todo, levels=[level.manifest.pixel_grid.factor for level in levels], **cluster_fields(client))
        if args.random_weights:
            events.warning("using seeded random weights: the masks will be meaningless; the store records this")

    if is_object_store_url(request.store):
        return encode_remote(args, events, request, on_progress, on_start, cancelled, client)
    store, stats = encode_levels(request, progress=on_progress, started=on_start, cancelled=cancelled, client=client)
    events.finished(levels_summary(store), indent=2, store=str(store.root),
                    tile_index=str(store.root / "tile_index.gpkg"), seconds=round(stats.total_seconds, 3))
    return 0


def levels_summary(store: FeatureStore) -> dict:
    """`FeatureStore.summary` of the finest level, with `levels`: each level's folder, factor, resolution,
    tiles, tiles done and bytes (only when the store has more than one level)."""
    from ..core.store_levels import level_folder_of, level_stores

    summary = store.summary()
    levels = level_stores(store)
    if len(levels) > 1:
        summary["levels"] = [{"folder": level_folder_of(store, level), "factor": level.manifest.pixel_grid.factor,
                              "resolution": level.manifest.pixel_grid.resolution, "tiles": len(level.grid),
                              "tiles_done": sum(level.status(t) == "done" for t in level.grid)}
                             for level in levels]
        summary["complete"] = summary["complete"] and all(not level.pending_tiles() for level in levels)
    return summary

