"""Encode a raster at chosen resolutions: one level or several in one store (core/levels.py; no QGIS).

`encode_levels` is what `quicksam encode` and the Processing algorithm run. The finest level (the store
folder itself) is encoded at `request.resolution` (map units per pixel) or at the raster's own pixels;
each factor of `request.levels` above 1 is a coarser level in `levels/x<factor>/`, a store of its own with
the same tile size, overlap rule, bands and stretch (the finest level's, so brightness is the same at every
level). Levels are added to an existing store by running again with more factors: levels already encoded
are resumed (nothing to do when finished), never encoded again. Every level's plan is made, and bad input
refused, before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

from ..core.errors import QuickSamError
from ..core.levels import MAX_LEVEL_FACTOR, level_folder, same_factor
from ..core.store import DECODER_ONNX, MANIFEST, TILE_INDEX, FeatureStore, temporary_path
from ..core.store_layout import DECODER_PROMPT_ONNX, DECODER_TILE_ONNX
from ..core.store_levels import level_stores, register_level
from .normalise import Stretch
from .pipeline import EncodeRequest, StorePlan, encode_planned, load_model_for, plan_store, prepare_store
from .raster import RasterInfo, describe_raster
from .store_guard import plain_write_errors, refuse_series_store, store_lock
from .tile_index import write_levels_index
from .tile_pipeline import CancelCheck, EncodeStats, ProgressCallback, ProgressEvent

if TYPE_CHECKING:
    from distributed import Client

    from .models import SegmentModel


@dataclasses.dataclass
class LevelPlan:
    """One level of a run: its request (store folder, factor over the raster's pixel), its plan, and its
    folder relative to the store ("." for the finest)."""

    request: EncodeRequest
    plan: StorePlan
    folder: str


def check_factors(levels: Sequence[float]) -> List[float]:
    """The distinct level factors, smallest first. QuickSamError for a factor below 1 or above
    MAX_LEVEL_FACTOR, or not a number."""
    factors: List[float] = []
    for value in levels:
        factor = float(value)
        if not (math.isfinite(factor) and 1 <= factor <= MAX_LEVEL_FACTOR):
            raise QuickSamError(f"level factor {value:g} is not between 1 and {MAX_LEVEL_FACTOR:g}: give factors of "
                                "the finest level's pixel size, e.g. --levels 1,4,16")
        if not any(same_factor(factor, f) for f in factors):
            factors.append(factor)
    return sorted(factors)


def native_resolution(info: RasterInfo) -> float:
    """The raster's own ground resolution: the length of a pixel's top edge in map units."""
    return math.hypot(info.geotransform[1], info.geotransform[4])


def base_factor(request: EncodeRequest, info: RasterInfo, existing: Optional[FeatureStore]) -> float:
    """The finest level's pixel over the raster's: an existing store's, else --resolution over the raster's
    own resolution, else 1. QuickSamError for a resolution that is not a positive number, or one finer than
    the raster's pixels, or one that differs from an existing store's."""
    if request.resolution is None:
        return existing.manifest.pixel_grid.factor if existing else 1.0
    resolution = float(request.resolution)
    native = native_resolution(info)
    if not (math.isfinite(resolution) and resolution > 0):
        raise QuickSamError(f"--resolution {request.resolution} is not a positive number of map units per pixel")
    if resolution < native * (1 - 1e-9):
        raise QuickSamError(f"--resolution {resolution:g} is finer than the raster's own pixels ({native:g} map units "
                            "per pixel): QuickSAM does not invent detail; give a resolution of at least that")
    factor = resolution / native
    if factor > MAX_LEVEL_FACTOR:
        raise QuickSamError(f"--resolution {resolution:g} is {factor:g} times the raster's own pixels ({native:g} map "
                            f"units per pixel, the units of its CRS {info.crs_name}); give at most "
                            f"{native * MAX_LEVEL_FACTOR:g}, in those units")
    if existing and not same_factor(existing.manifest.pixel_grid.factor, factor):
        raise QuickSamError(f"store '{existing.root}' was encoded at {existing.manifest.pixel_grid.resolution:g} map "
                            f"units per pixel, not {resolution:g}; leave --resolution out to add levels to it, or "
                            "choose a new store folder")
    return factor


def plan_levels(request: EncodeRequest, stretch: Optional[Stretch] = None) -> List[LevelPlan]:
    """Every level's plan, finest first, before anything is written (the finest level's stretch used by
    all: an existing store's, else `stretch` when given (a series' shared one), else sampled). QuickSamError/
    RasterError for bad input."""
    root = Path(request.store)
    existing = FeatureStore.open(root) if (root / MANIFEST).is_file() else None
    factors = check_factors(request.levels)
    if existing is None and not same_factor(factors[0], 1.0):
        listed = ",".join(f"{f:g}" for f in factors)
        raise QuickSamError(f"a new store starts with its finest level, factor 1: add 1 to --levels (e.g. --levels "
                            f"1,{listed}), or give --resolution for a coarser finest level")
    info = describe_raster(request.raster)
    base = base_factor(request, info, existing)
    finest = dataclasses.replace(request, level_factor=base)
    if existing:
        stretch = Stretch(**dataclasses.asdict(existing.manifest.preprocessing.stretch))
    plans = [LevelPlan(finest, plan_store(finest, stretch), ".")]
    stretch = stretch or Stretch(**dataclasses.asdict(plans[0].plan.manifest.preprocessing.stretch))
    for factor in (f for f in factors if not same_factor(f, 1.0)):
        folder = level_folder(factor)
        level = dataclasses.replace(request, store=root / folder, level_factor=base * factor)
        plans.append(LevelPlan(level, plan_store(level, stretch), folder))
    return plans


def encode_levels(request: EncodeRequest, progress: Optional[ProgressCallback] = None,
                  cancelled: Optional[CancelCheck] = None, model: Optional[SegmentModel] = None,
                  started: Optional[Callable[[FeatureStore, int], None]] = None, stretch: Optional[Stretch] = None,
                  model_source: Optional[Callable[[], SegmentModel]] = None, series: bool = False,
                  client: Optional[Client] = None) -> Tuple[FeatureStore, EncodeStats]:
    """Encode (or finish, or add levels to) the store `request.store` at every level of `request.levels`.

    Returns the root store (the finest level) and the run's totals. `started(root, tiles_to_do)` is called
    once, when every level's store is ready; progress events count tiles over all levels (a coarser level's
    tile ids are prefixed with its folder). The root store is locked for the whole run, each level while it
    is written. A series (encoder/series_pipeline.py) gives its shared `stretch` and `model_source` (the model
    built once for all frames) and `series=True`; any other run into a series store is refused (QuickSamError,
    nothing written: it would change one frame only). With a Dask `client` every level's tiles are encoded on
    its workers (encoder/cluster_encode.py; a series is refused there). Errors as `pipeline.encode_raster`.
    """
    if series and client is not None:
        raise QuickSamError("a time series does not run on a Dask cluster yet; leave out --workers and --scheduler")
    if not series:
        refuse_series_store(Path(request.store))
    plans = plan_levels(request, stretch)   # bad input refused before anything is written
    root = Path(request.store)
    with store_lock(root), plain_write_errors(root):
        stores = _prepare_levels(plans)
        if started is not None:
            started(stores[0], sum(len(store.pending_tiles()) for store in stores))
        index_before = _mtime(root / TILE_INDEX)
        stats = _encode_each(plans, stores, progress, cancelled, model_source or _model_once(request, model), client)
        encoded = FeatureStore.open(root)   # read again: each level was written through its own handle
        # the finest level's own run may rewrite the index with its tiles only: the root's lists every level again
        write_levels_index(encoded, level_stores(encoded), force=_mtime(root / TILE_INDEX) != index_before)
    return encoded, stats


def _prepare_levels(plans: List[LevelPlan]) -> List[FeatureStore]:
    """Create or resume every level's store and list it in the root manifest; the root's first."""
    stores: List[FeatureStore] = []
    for item in plans:
        if item.folder == ".":   # the caller holds the root's lock
            stores.append(prepare_store(item.request, item.plan)[0])
            continue
        with store_lock(Path(item.request.store)):
            stores.append(prepare_store(item.request, item.plan)[0])
        register_level(stores[0], item.folder, item.request.level_factor)
    return stores


def _encode_each(plans: List[LevelPlan], stores: List[FeatureStore], progress: Optional[ProgressCallback],
                 cancelled: Optional[CancelCheck], model_source: Callable[[], SegmentModel],
                 client: Optional[Client] = None) -> EncodeStats:
    """Encode every level in turn (finest first), here or on the cluster of `client`; totals of the runs."""
    total = sum(len(store.grid) for store in stores)
    stats, offset = EncodeStats(), 0
    for item, store in zip(plans, stores):
        level_progress = _offset_progress(progress, offset, total, item.folder)
        if item.folder == ".":
            run = encode_planned(item.request, item.plan, level_progress, cancelled, model_source, None,
                                 client)[1]
        else:
            with store_lock(Path(item.request.store)), plain_write_errors(Path(item.request.store)):
                share_decoder(stores[0], store)
                run = encode_planned(item.request, item.plan, level_progress, cancelled, model_source, None,
                                 client)[1]
        _add(stats, run)
        offset += len(store.grid)
    return stats


def _mtime(path: Path) -> Optional[int]:
    """The file's modification time in ns, or None when it does not exist."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def share_decoder(root: FeatureStore, level: FeatureStore) -> None:
    """Give a level without a decoder the root's decoder.onnx (the same weights and tile size): a hard link
    where the file system allows one (no second copy on disk; decoder files are only ever replaced whole,
    never written in place), else a copy. Nothing is done when the root's decoder is missing or damaged
    (the level's run then installs its own). The split decoder (decoder_tile.onnx, decoder_prompt.onnx)
    comes along when the root has it, before decoder.onnx."""
    if (level.root / DECODER_ONNX).exists() or root.decoder_problem() is not None:
        return
    for name in (DECODER_TILE_ONNX, DECODER_PROMPT_ONNX, DECODER_ONNX):
        source, target = root.root / name, level.root / name
        if not source.is_file():
            continue
        tmp = temporary_path(target)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)


def _offset_progress(progress: Optional[ProgressCallback], offset: int, total: int, folder: str
                     ) -> Optional[ProgressCallback]:
    """A level's progress events counted over all levels, its tile ids prefixed with its folder."""
    if progress is None:
        return None

    def on_progress(event: ProgressEvent) -> None:
        tile_id = event.tile_id if folder == "." else f"{folder}/{event.tile_id}"
        progress(ProgressEvent(offset + event.done, total, tile_id, event.status))

    return on_progress


def _model_once(request: EncodeRequest, model: Optional[SegmentModel]) -> Callable[[], SegmentModel]:
    """The model, built (once, on first use) from the request unless given."""
    built: List[SegmentModel] = [model] if model is not None else []

    def source() -> SegmentModel:
        if not built:
            built.append(load_model_for(request))
        return built[0]

    return source


def _add(total: EncodeStats, run: EncodeStats) -> None:
    """Add one level's run to the totals."""
    total.tiles_encoded += run.tiles_encoded
    total.tiles_nodata += run.tiles_nodata
    total.model_seconds += run.model_seconds
    total.total_seconds += run.total_seconds
    total.model_build_seconds += run.model_build_seconds
    total.batch_model_seconds.extend(run.batch_model_seconds)
