"""Encode a raster into a feature store: windowed reads, one stretch, batches, resume (no QGIS).

A run checks the raster and plans tiles and stretch before anything is written (`plan_store`), locks the
store (store_guard.py), creates or resumes it, builds the model only when tiles are left, and runs the
tile pipeline (tile_pipeline.py); the decoder (decoder_export.py) and the tile index (tile_index.py)
are written beside the tiles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

from ..core.catalogue import model_spec
from ..core.decoder_file import store_split_files_problem
from ..core.defaults import DEFAULT_MODEL, DEFAULT_OVERLAP, DEFAULT_TILE_SIZE
from ..core.errors import QuickSamError
from ..core.levels import level_grid
from ..core.logger import LOGGER
from ..core.manifest import (
    ArrayLayout,
    CheckpointSection,
    DecoderSection,
    FeaturesSection,
    Manifest,
    ModelSection,
    PreprocessingSection,
    RasterSection,
    StretchSection,
    feature_layout,
)
from ..core.store import DECODER_ONNX, FeatureStore
from ..core.tile_codec import CODEC as TILE_CODEC
from ..core.tiling import PixelWindow, TileGrid
from . import __version__ as quicksam_version
from .decoder_export import install_decoder
from .normalise import Stretch, compute_stretch, sample_windows
from .online_sources import recorded_source, require_extent
from .raster import (
    RasterInfo,
    WindowReader,
    choose_bands,
    describe_raster,
    extent_to_window,
    raster_fingerprint_rasterio,
)
from .store_guard import plain_write_errors, refuse_series_store, store_lock
from .tile_index import tile_index_is_current, write_tile_index, write_tile_index_if_possible
from .tile_pipeline import CancelCheck, EncodeStats, ProgressCallback, TilePipeline, never_cancelled

if TYPE_CHECKING:
    from distributed import Client

    from .checkpoints import ResolvedCheckpoint
    from .models import SegmentModel


@dataclass
class EncodeRequest:
    """Everything one encoding needs. `extent` is (xmin, ymin, xmax, ymax) in the raster's CRS.

    `checkpoint` is a resolved checkpoint (path + sha256 + name) or None for seeded random weights.
    """

    raster: str
    store: Path
    model: str = DEFAULT_MODEL
    checkpoint: Optional[ResolvedCheckpoint] = None
    seed: int = 0
    bands: Optional[Sequence[int]] = None
    overlap: int = DEFAULT_OVERLAP
    extent: Optional[Tuple[float, float, float, float]] = None
    batch_size: int = 1
    device: str = "auto"
    tile_size: int = DEFAULT_TILE_SIZE
    stretch: str = "percentile"
    feature_dtype: str = "float16"
    #: This store's pixel over the raster's (core/levels.py): 1 = the raster's own pixels.
    level_factor: float = 1.0
    #: The levels to encode, as factors of the finest level's pixel (encoder/levels_pipeline.py).
    levels: Tuple[float, ...] = (1.0,)
    #: Ground resolution of the finest level in map units per pixel; None = the raster's own.
    resolution: Optional[float] = None


def plan_grid(info: RasterInfo, request: EncodeRequest) -> TileGrid:
    """The tile grid of the request's level: `extent` (raster CRS) becomes a window of level pixels."""
    level = level_grid(info.width, info.height, info.geotransform, request.level_factor)
    level_info = dataclasses.replace(info, width=level.width, height=level.height, geotransform=level.geotransform)
    window = extent_to_window(level_info, request.extent) if request.extent else None
    return TileGrid.build(level.width, level.height, request.tile_size, request.overlap, window)


def sample_stretch(path: str, bands: Sequence[int], area: PixelWindow, mode: str, factor: float = 1.0) -> Stretch:
    """The stretch of the whole encoded area (level pixels of `factor`), from evenly spread sample windows."""
    with WindowReader(path, bands, factor) as reader:
        samples = [reader.read(window) for window in sample_windows(area)]
    return compute_stretch(samples, mode)


def random_weights_identity(model: SegmentModel) -> str:
    """SHA-256 of a random model's weights: the identity of 'checkpoint' when there is none
    (computed once per model object)."""
    cached = getattr(model, "weights_sha256", None)
    if cached:
        return cached
    digest = hashlib.sha256()
    for name, tensor in sorted(model.net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    model.weights_sha256 = digest.hexdigest()
    return model.weights_sha256


def build_manifest(request: EncodeRequest, info: RasterInfo, bands: List[int], grid: TileGrid,
                   stretch: Stretch, fingerprint: str) -> Manifest:
    """Manifest of a new store, without the fields known only once the model is built."""
    spec = model_spec(request.model)
    checkpoint = request.checkpoint
    return Manifest(
        quicksam_version=quicksam_version,
        model=ModelSection(name=spec.name, family=spec.family, config=spec.config, image_size=request.tile_size,
                           random_weights=checkpoint is None, seed=request.seed if checkpoint is None else None),
        checkpoint=(CheckpointSection(checkpoint.sha256, checkpoint.name, checkpoint.source)
                    if checkpoint is not None else
                    CheckpointSection(None, f"random weights (seed {request.seed}): NOT a trained model")),
        preprocessing=PreprocessingSection(bands=tuple(bands), stretch=StretchSection(**stretch.to_dict()),
                                           nodata_fill=0),
        raster=RasterSection(path=recorded_source(info.path),
                             fingerprint=fingerprint, width=info.width, height=info.height, count=info.count,
                             dtypes=info.dtypes, nodata=info.nodata, crs_wkt=info.crs_wkt,
                             crs_name=info.crs_name, geotransform=info.geotransform),
        grid=grid,
        features=FeaturesSection(dtype=request.feature_dtype, codec=TILE_CODEC),
        decoder=DecoderSection(onnx=DECODER_ONNX),
        level=level_grid(info.width, info.height, info.geotransform, request.level_factor),
    )


@dataclass(frozen=True)
class StorePlan:
    """What a run will write, known before anything is written: the manifest, the raster and its bands."""

    manifest: dict
    info: RasterInfo
    bands: List[int]


def plan_store(request: EncodeRequest, stretch: Optional[Stretch] = None) -> StorePlan:
    """Check the raster and plan tiles and stretch (reads the raster, writes nothing). `stretch` given (a
    level of a multi-scale store takes its root level's) is used as is."""
    info = describe_raster(request.raster)
    require_extent(request.raster, (info.width, info.height), info.crs_name, request.extent)
    bands = choose_bands(info, request.bands)
    grid = plan_grid(info, request)
    stretch = stretch or sample_stretch(request.raster, bands, grid.window, request.stretch, request.level_factor)
    fingerprint = raster_fingerprint_rasterio(request.raster, info)
    manifest = build_manifest(request, info, bands, grid, stretch, fingerprint)
    return StorePlan(manifest, info, bands)


def prepare_store(request: EncodeRequest, plan: Optional[StorePlan] = None) -> Tuple[FeatureStore, Stretch]:
    """Check the raster, plan tiles and stretch, and create or resume the store (no model yet).
    The caller holds the store's lock (`store_lock`) if another process may write it."""
    plan = plan or plan_store(request)
    info, bands = plan.info, plan.bands
    store = FeatureStore.create_or_resume(request.store, plan.manifest)
    if info.count > 3 and not request.bands:  # said once the input is accepted, not before an error
        LOGGER.info("%s has %d bands; using bands %s (choose others with --bands)", request.raster,
                    info.count, ",".join(map(str, bands)))
    return store, Stretch(**dataclasses.asdict(store.manifest.preprocessing.stretch))


@dataclass(frozen=True)
class ModelFacts:
    """What only the built model knows, for the manifest: the feature arrays of a tile file, the decoder's
    settings, and the SHA-256 of random weights (None for a checkpoint). Small and picklable: a Dask worker
    that holds the model sends it to the coordinator (encoder/cluster_encode.py)."""

    arrays: Tuple[ArrayLayout, ...]
    decoder_settings: object
    random_identity: Optional[str]


def model_facts(model: SegmentModel, random_weights: bool) -> ModelFacts:
    """The facts of a built model; its weights hashed only when they are random (`random_weights`)."""
    arrays = tuple(feature_layout((s.name, s.shape) for s in model.feature_specs()))
    return ModelFacts(arrays, model.decoder_settings, random_weights_identity(model) if random_weights else None)


def complete_manifest(store: FeatureStore, facts: ModelFacts) -> None:
    """Fill in what only the built model knows (feature layout, decoder settings, random identity)."""
    old = store.manifest
    manifest = dataclasses.replace(
        old, features=dataclasses.replace(old.features, arrays=list(facts.arrays)),
        decoder=dataclasses.replace(old.decoder, settings=facts.decoder_settings))
    if old.model.random_weights and not old.checkpoint.sha256 and facts.random_identity:
        manifest = dataclasses.replace(manifest, checkpoint=dataclasses.replace(
            old.checkpoint, sha256=facts.random_identity))
    if manifest != store.manifest:
        store.update_manifest(manifest)


def _complete_manifest(store: FeatureStore, model: SegmentModel) -> None:
    """`complete_manifest` with the facts of a model built in this process."""
    complete_manifest(store, model_facts(model, store.manifest.model.random_weights
                                         and not store.manifest.checkpoint.sha256))


def encode_raster(request: EncodeRequest, progress: Optional[ProgressCallback] = None,
                  cancelled: Optional[CancelCheck] = None, model: Optional[SegmentModel] = None,
                  started: Optional[Callable[[FeatureStore, int], None]] = None, client: Optional[Client] = None
                  ) -> Tuple[FeatureStore, EncodeStats]:
    """Encode (or finish encoding) `request.raster` into `request.store`; with a Dask `client`, the tiles are
    encoded on its workers (encoder/cluster_encode.py).

    `started(store, tiles_to_do)` is called once the store is ready. A model may be passed in
    (benchmarks, tests); otherwise it is built from the request. The store is locked while this runs:
    LockBusy (naming the other process) if another run writes it. A full disk raises DiskFull and a
    store that cannot be written QuickSamError, each one line saying what to do; finished tiles are kept. A
    series store is refused (QuickSamError: it would change frame 0 only).
    """
    refuse_series_store(Path(request.store))
    plan = plan_store(request)  # bad input is refused before anything is written, even a lock
    with store_lock(Path(request.store)), plain_write_errors(Path(request.store)):
        return encode_planned(request, plan, progress, cancelled, (lambda: model) if model else None, started,
                              client)


def encode_planned(request: EncodeRequest, plan: StorePlan, progress: Optional[ProgressCallback],
                   cancelled: Optional[CancelCheck], model_source: Optional[Callable[[], SegmentModel]],
                   started: Optional[Callable[[FeatureStore, int], None]], client: Optional[Client] = None
                   ) -> Tuple[FeatureStore, EncodeStats]:
    """`encode_raster` of a planned store whose lock the caller holds; `model_source()` gives the model
    when one is needed (None: built from the request). With a Dask `client` the pending tiles are encoded
    on its workers and no model is built here (`cluster_encode.encode_on_cluster`)."""
    progress = progress or (lambda event: None)
    cancelled = cancelled or never_cancelled
    store, stretch = prepare_store(request, plan)
    needs_decoder = verify_kept_work(store)
    pending = store.pending_tiles()
    if started is not None:
        started(store, len(pending))
    if client is not None:
        from .cluster_encode import encode_on_cluster

        stats = encode_on_cluster(client, request, store, stretch, pending, needs_decoder, progress, cancelled)
        return store, stats
    stats = EncodeStats()
    if pending or needs_decoder or not store.manifest.features.arrays:
        build_started = time.perf_counter()
        model = model_source() if model_source is not None else load_model_for(request)
        stats.model_build_seconds = time.perf_counter() - build_started
        _complete_manifest(store, model)
        if needs_decoder:
            install_decoder(store, model)
    if pending:
        LOGGER.info("encoding %d of %d tiles into %s", len(pending), len(store.grid), store.root)
        pipeline = TilePipeline(store, model, request.raster, stretch, request.batch_size, progress, cancelled)
        run_stats = run_writing_index(store, lambda: pipeline.run(pending))
        run_stats.model_build_seconds = stats.model_build_seconds
        stats = run_stats
    elif not tile_index_is_current(store):
        write_tile_index(store)
    return store, stats


def run_writing_index(store: FeatureStore, run: Callable[[], EncodeStats]) -> EncodeStats:
    """`run()` (encoding the pending tiles), then the tile index; the index is written also when the run
    fails or is cancelled (as far as it can be), before the error goes on."""
    try:
        stats = run()
    except BaseException:
        write_tile_index_if_possible(store)
        raise
    write_tile_index(store)
    return stats


def verify_kept_work(store: FeatureStore) -> bool:
    """Before a resume: check every tile logged done (file, size, type and CRC-32, `verify_tiles`) and
    decoder.onnx (loads, fits the tiles). Damaged tiles are pending again and are encoded again (their new
    log line supersedes the old); each is named in a warning. Returns whether the decoder must be
    (re)installed: decoder.onnx missing or damaged, or a split decoder part missing or damaged (warned)."""
    for tile_id, problem in store.verify_tiles().items():
        LOGGER.warning("tile %s of store %s is damaged (%s); encoding it again", tile_id, store.root, problem)
    problem = store.decoder_problem()
    if problem is not None and (store.root / DECODER_ONNX).exists():
        LOGGER.warning("%s of store %s %s; exporting it again", DECODER_ONNX, store.root, problem)
    # a store written before the split decoder (or SAM 1's) has neither file: nothing to repair
    split = store_split_files_problem(store.root, store.feature_shapes) if store.family == "sam2" else None
    if split is not None:
        LOGGER.warning("the split decoder of store %s: %s; exporting it again", store.root, split)
    return problem is not None or split is not None


def load_model_for(request: EncodeRequest) -> SegmentModel:
    """Build the request's model on its device (torch is imported here, not before)."""
    # Apple MPS lacks a few operators; let torch run those on the CPU instead of failing.
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    from .models import build_model, select_device

    try:
        device = select_device(request.device)
    except ValueError as exc:
        raise QuickSamError(str(exc)) from exc
    checkpoint_path = request.checkpoint.path if request.checkpoint is not None else None
    return build_model(request.model, checkpoint=checkpoint_path, seed=request.seed, device=device,
                       image_size=request.tile_size)
