"""Encode a raster into a feature store: windowed reads, one stretch, batches, resume (no QGIS).

Three stages overlap: a reader thread reads and normalises the next tiles while the model encodes the
current batch, and a writer thread converts and stores the previous batch. Queues are bounded, so
memory depends on the batch size, never on the raster size.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..core.catalogue import model_spec
from ..core.defaults import DEFAULT_MODEL, DEFAULT_OVERLAP, DEFAULT_TILE_SIZE
from ..core.diskspace import disk_full_error, is_disk_full, is_quota, unwritable_reason
from ..core.errors import Cancelled, QuickSamError
from ..core.locking import READ_ONLY_ERRNOS, STORE_LOCK, LockHolder, command_name, exclusive_lock, holder_text
from ..core.logger import LOGGER
from ..core.store import (
    DECODER_ONNX,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    TILE_INDEX,
    TILE_LOG,
    FeatureStore,
    feature_layout,
    temporary_path,
)
from ..core.tiling import PixelWindow, Tile, TileGrid
from . import __version__ as quicksam_version
from .normalise import Stretch, compute_stretch, sample_windows
from .raster import RasterInfo, WindowReader, choose_bands, describe_raster, extent_to_window, raster_fingerprint
from .tile_index import write_tile_index

_END = object()
#: Bumped when the decoder export changes, so cached exports of an older form are not reused
#: (2: a batch axis for objects).
DECODER_EXPORT_VERSION = 2
#: For "needs about N MB more": the header of a tile's .npy file, a tile index's size (GeoPackage
#: overhead, then per tile), and the block files take space in (4 KiB on ext4, XFS, NTFS, APFS, tmpfs).
NPY_HEADER_BYTES = 128
TILE_INDEX_BYTES = 120_000
TILE_INDEX_BYTES_PER_TILE = 1_000
DISK_BLOCK = 4096


@dataclass
class EncodeRequest:
    """Everything one encoding needs. `extent` is (xmin, ymin, xmax, ymax) in the raster's CRS.

    `checkpoint` is a resolved checkpoint (path + sha256 + name) or None for seeded random weights.
    """

    raster: str
    store: Path
    model: str = DEFAULT_MODEL
    checkpoint: Optional[object] = None
    seed: int = 0
    bands: Optional[Sequence[int]] = None
    overlap: int = DEFAULT_OVERLAP
    extent: Optional[Tuple[float, float, float, float]] = None
    batch_size: int = 1
    device: str = "auto"
    tile_size: int = DEFAULT_TILE_SIZE
    stretch: str = "percentile"
    feature_dtype: str = "float16"


@dataclass
class ProgressEvent:
    """One tile finished. `status` is 'done' or 'nodata'."""

    done: int
    total: int
    tile_id: str
    status: str

    @property
    def percent(self) -> float:
        return 100.0 * self.done / max(1, self.total)


@dataclass
class EncodeStats:
    """Timings of one run, for benchmarks (seconds)."""

    tiles_encoded: int = 0
    tiles_nodata: int = 0
    model_seconds: float = 0.0
    total_seconds: float = 0.0
    model_build_seconds: float = 0.0
    batch_model_seconds: List[float] = field(default_factory=list)


ProgressCallback = Callable[[ProgressEvent], None]
CancelCheck = Callable[[], bool]


def _never() -> bool:
    return False


def plan_grid(info: RasterInfo, request: EncodeRequest) -> TileGrid:
    window = extent_to_window(info, request.extent) if request.extent else None
    return TileGrid.build(info.width, info.height, request.tile_size, request.overlap, window)


def sample_stretch(path: str, bands: Sequence[int], area: PixelWindow, mode: str) -> Stretch:
    """The stretch of the whole encoded area, from evenly spread sample windows."""
    with WindowReader(path, bands) as reader:
        samples = [reader.read(window) for window in sample_windows(area)]
    return compute_stretch(samples, mode)


def random_weights_identity(model: object) -> str:
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
                   stretch: Stretch, fingerprint: str) -> dict:
    """Manifest of a new store, without the fields known only once the model is built."""
    spec = model_spec(request.model)
    checkpoint = request.checkpoint
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "quicksam_version": quicksam_version,
        "model": {"name": spec.name, "family": spec.family, "config": spec.config,
                  "image_size": request.tile_size, "random_weights": checkpoint is None,
                  "seed": request.seed if checkpoint is None else None},
        "checkpoint": ({"sha256": checkpoint.sha256, "name": checkpoint.name, "source": checkpoint.source}
                       if checkpoint is not None else
                       {"sha256": None, "name": f"random weights (seed {request.seed}): NOT a trained model",
                        "source": None}),
        "preprocessing": {"bands": bands, "stretch_mode": request.stretch, "stretch": stretch.to_dict(),
                          "nodata_fill": 0},
        "raster": {"path": str(Path(info.path).resolve()) if Path(info.path).exists() else info.path,
                   "fingerprint": fingerprint, "width": info.width, "height": info.height,
                   "count": info.count, "dtypes": list(info.dtypes), "nodata": info.nodata,
                   "crs_wkt": info.crs_wkt, "crs_name": info.crs_name,
                   "geotransform": list(info.geotransform)},
        "grid": grid.to_dict(),
        "features": {"dtype": request.feature_dtype, "arrays": []},
        "decoder": {"onnx": DECODER_ONNX},
    }


def yield_to_model() -> None:
    """Lower this helper thread's scheduling priority (Linux), so that reading and writing take the CPU
    the model leaves free instead of stalling its parallel kernels; elsewhere a no-op."""
    native_id = getattr(threading, "get_native_id", None)
    if native_id is None or not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, native_id(), 10)


class TilePipeline:
    """Runs reader -> model -> writer for the pending tiles of one store."""

    def __init__(self, store: FeatureStore, model: object, raster: str, stretch: Stretch,
                 batch_size: int, progress: ProgressCallback, cancelled: CancelCheck):
        self.store = store
        self.model = model
        self.raster = raster
        self.stretch = stretch
        self.batch_size = max(1, int(batch_size))
        self.progress = progress
        self.cancelled = cancelled
        self.stats = EncodeStats()
        self._inputs: queue.Queue = queue.Queue(maxsize=2 * self.batch_size)
        self._outputs: queue.Queue = queue.Queue(maxsize=2)
        self._errors: List[BaseException] = []
        self._stop = threading.Event()
        self._done = len(store.grid) - len(store.pending_tiles())

    def run(self, tiles: List[Tile]) -> EncodeStats:
        started = time.perf_counter()
        reader = threading.Thread(target=self._read, args=(tiles,), name="quicksam-reader", daemon=True)
        writer = threading.Thread(target=self._write, name="quicksam-writer", daemon=True)
        reader.start()
        writer.start()
        try:
            self._encode_batches()
        finally:
            self._stop.set()
            self._outputs.put(_END)
            writer.join()
            self._drain(self._inputs)
            reader.join()
        self.stats.total_seconds = time.perf_counter() - started
        if self._errors:
            raise self._errors[0]
        if self.cancelled():
            raise Cancelled("encoding cancelled; finished tiles are kept and the same command resumes")
        return self.stats

    @staticmethod
    def _drain(items: queue.Queue) -> None:
        while True:
            try:
                items.get_nowait()
            except queue.Empty:
                return

    def _put(self, items: queue.Queue, item: object) -> bool:
        while not self._stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, tiles: List[Tile]) -> None:
        yield_to_model()
        try:
            with WindowReader(self.raster, self.store.manifest["preprocessing"]["bands"]) as reader:
                for tile in tiles:
                    if self._stop.is_set() or self.cancelled():
                        break
                    data, valid = reader.read_tile(tile)
                    image = self.stretch.apply(data, valid) if valid.any() else None
                    if not self._put(self._inputs, (tile, image, valid)):
                        break
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
            self._errors.append(exc)
        finally:
            self._put(self._inputs, _END)

    def _next_batch(self) -> Tuple[List[Tuple[Tile, np.ndarray, np.ndarray]], bool]:
        """Up to batch_size (tile, (S, S, 3) uint8 image, (S, S) bool valid mask) items; nodata tiles go
        straight to the writer."""
        batch, finished = [], False
        while len(batch) < self.batch_size:
            item = self._inputs.get()
            if item is _END:
                finished = True
                break
            tile, image, _ = item
            if image is None:
                self._outputs.put(("nodata", tile, None, None))
                continue
            batch.append(item)
        return batch, finished

    def _encode_batches(self) -> None:
        finished = False
        while not finished and not self._errors:
            if self.cancelled():
                return
            batch, finished = self._next_batch()
            if not batch:
                continue
            started = time.perf_counter()
            features = self.model.encode(np.stack([image for _, image, _ in batch]))
            elapsed = time.perf_counter() - started
            self.stats.model_seconds += elapsed
            self.stats.batch_model_seconds.append(elapsed)
            for (tile, _, valid), tile_features in zip(batch, features):
                self._outputs.put(("done", tile, tile_features, valid))

    def _write(self) -> None:
        yield_to_model()
        while True:
            item = self._outputs.get()
            if item is _END:
                return
            if self._errors:
                continue
            status, tile, features, valid = item
            try:
                if status == "nodata":
                    self.store.mark_nodata(tile)
                    self.stats.tiles_nodata += 1
                else:
                    valid_crc32 = self.store.write_valid_mask(tile, valid)
                    self.store.write_tile(tile, features, float(valid.mean()), valid_crc32)
                    self.stats.tiles_encoded += 1
                self._done += 1
                self.progress(ProgressEvent(self._done, len(self.store.grid), tile.tile_id, status))
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self._errors.append(exc)
                self._stop.set()


@dataclass(frozen=True)
class StorePlan:
    """What a run will write, known before anything is written: the manifest, the raster and its bands."""

    manifest: dict
    info: RasterInfo
    bands: List[int]


def plan_store(request: EncodeRequest) -> StorePlan:
    """Check the raster and plan tiles and stretch (reads the raster, writes nothing)."""
    info = describe_raster(request.raster)
    bands = choose_bands(info, request.bands)
    grid = plan_grid(info, request)
    stretch = sample_stretch(request.raster, bands, grid.window, request.stretch)
    manifest = build_manifest(request, info, bands, grid, stretch, raster_fingerprint(request.raster, info))
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
    return store, Stretch.from_dict(store.manifest["preprocessing"]["stretch"])


def _complete_manifest(store: FeatureStore, model: object) -> None:
    """Fill in what only the built model knows (feature layout, decoder settings, random identity)."""
    manifest = dict(store.manifest)
    manifest["features"] = dict(manifest["features"], arrays=[
        item.__dict__ for item in feature_layout((s.name, s.shape) for s in model.feature_specs())])
    manifest["decoder"] = dict(manifest["decoder"], settings=model.decoder_settings.to_dict())
    if manifest["model"]["random_weights"] and not manifest["checkpoint"]["sha256"]:
        manifest["checkpoint"] = dict(manifest["checkpoint"], sha256=random_weights_identity(model))
    if manifest != store.manifest:
        store.update_manifest(manifest)


def encode_raster(request: EncodeRequest, progress: Optional[ProgressCallback] = None,
                  cancelled: Optional[CancelCheck] = None, model: Optional[object] = None,
                  started: Optional[Callable[[FeatureStore, int], None]] = None) -> Tuple[FeatureStore, EncodeStats]:
    """Encode (or finish encoding) `request.raster` into `request.store`.

    `started(store, tiles_to_do)` is called once the store is ready. A model may be passed in
    (benchmarks, tests); otherwise it is built from the request. The store is locked while this runs:
    LockBusy (naming the other process) if another run writes it. A full disk raises DiskFull and a
    store that cannot be written QuickSamError, each one line saying what to do; finished tiles are kept.
    """
    plan = plan_store(request)  # bad input is refused before anything is written, even a lock
    with store_lock(Path(request.store)), plain_write_errors(Path(request.store)):
        return _encode_into_store(request, plan, progress, cancelled, model, started)


def _encode_into_store(request: EncodeRequest, plan: StorePlan, progress: Optional[ProgressCallback],
                       cancelled: Optional[CancelCheck], model: Optional[object],
                       started: Optional[Callable[[FeatureStore, int], None]]) -> Tuple[FeatureStore, EncodeStats]:
    progress = progress or (lambda event: None)
    cancelled = cancelled or _never
    store, stretch = prepare_store(request, plan)
    needs_decoder = verify_kept_work(store)
    pending = store.pending_tiles()
    if started is not None:
        started(store, len(pending))
    stats = EncodeStats()
    if pending or needs_decoder or not store.manifest["features"]["arrays"]:
        if model is None:
            started = time.perf_counter()
            model = load_model_for(request)
            stats.model_build_seconds = time.perf_counter() - started
        _complete_manifest(store, model)
        if needs_decoder:
            install_decoder(store, model)
    if pending:
        LOGGER.info("encoding %d of %d tiles into %s", len(pending), len(store.grid), store.root)
        pipeline = TilePipeline(store, model, request.raster, stretch, request.batch_size, progress, cancelled)
        try:
            run_stats = pipeline.run(pending)
        except BaseException:
            write_tile_index_if_possible(store)
            raise
        write_tile_index(store)
        run_stats.model_build_seconds = stats.model_build_seconds
        stats = run_stats
    elif not tile_index_is_current(store):
        write_tile_index(store)
    return store, stats


def verify_kept_work(store: FeatureStore) -> bool:
    """Before a resume: check every tile logged done (file, size, type and CRC-32, `verify_tiles`) and
    decoder.onnx (loads, fits the tiles). Damaged tiles are pending again and are encoded again (their new
    log line supersedes the old); each is named in a warning. Returns whether the decoder must be
    (re)installed: missing, or damaged (also warned)."""
    for tile_id, problem in store.verify_tiles().items():
        LOGGER.warning("tile %s of store %s is damaged (%s); encoding it again", tile_id, store.root, problem)
    problem = store.decoder_problem()
    if problem is not None and (store.root / DECODER_ONNX).exists():
        LOGGER.warning("%s of store %s %s; exporting it again", DECODER_ONNX, store.root, problem)
    return problem is not None


def tile_index_is_current(store: FeatureStore) -> bool:
    """Whether STORE/tile_index.gpkg was written after the last change of the tile log and the manifest
    (a finished store resumed again writes nothing: it may be read-only)."""
    try:
        index = (store.root / TILE_INDEX).stat().st_mtime_ns
    except FileNotFoundError:
        return False
    sources = [store.root / TILE_LOG, store.root / MANIFEST]
    return all(index >= path.stat().st_mtime_ns for path in sources if path.exists())


def write_tile_index_if_possible(store: FeatureStore) -> None:
    """The tile index of a run that stopped (cancelled, a full disk, an error): written if it can be, else
    left to the next run, so that its own failure (kilobytes of GeoPackage SQL on a full disk) never hides
    why the run stopped."""
    try:
        write_tile_index(store)
    except Exception as exc:  # noqa: BLE001 - the run's own error is the one to report
        LOGGER.debug("tile index not written (the next run writes it): %s", exc)
        for leftover in store.root.glob(f"tile_index.tmp.{os.getpid()}.gpkg*"):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _store_busy_message(root: Path) -> Callable[[Optional[LockHolder]], str]:
    def message(holder: Optional[LockHolder]) -> str:
        return (f"the feature store '{root}' is being written by another QuickSAM run ({holder_text(holder)}); "
                "wait for it to finish or stop it, then run the same command again to resume")
    return message


@contextlib.contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Hold the lock of the store at `root` (STORE/.quicksam.lock, see `locking`) for the block, creating
    the folder if needed. A path that is a file or a folder of other files gets no lock file (the store
    refuses it); a read-only store gets none either (nothing can write it). LockBusy if another run holds it."""
    root = Path(root)
    if root.exists() and not _may_hold_a_store(root):
        yield
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno not in READ_ONLY_ERRNOS:
            raise
        yield  # nothing can be written there; creating the store says so
        return
    with exclusive_lock(root / STORE_LOCK, command_name(), _store_busy_message(root)):
        yield


def _may_hold_a_store(root: Path) -> bool:
    """A folder that is a store, is becoming one (only a lock file), or is empty."""
    return root.is_dir() and ((root / MANIFEST).is_file() or (root / STORE_LOCK).exists() or not any(root.iterdir()))


@contextlib.contextmanager
def plain_write_errors(root: Path) -> Iterator[None]:
    """Turn a full disk (DiskFull, with about how much more room the run needs) and a store that cannot be
    written (QuickSamError) raised in the block into one line that says what to do."""
    try:
        yield
    except QuickSamError:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            path = Path(exc.filename) if isinstance(exc, OSError) and exc.filename else root
            raise disk_full_error(path, bytes_to_finish(root), quota=is_quota(exc)) from exc
        reason = unwritable_reason(exc)
        if reason is not None:
            path = exc.filename or root
            raise QuickSamError(f"cannot write '{path}' ({reason}); make the feature store writable, or encode "
                                "into another folder") from exc
        raise


def bytes_to_finish(root: Path) -> int:
    """About how many bytes the store at `root` still needs: its pending tiles, its decoder if missing and
    its tile index (0 when the store cannot be read)."""
    try:
        store = FeatureStore.open(root)
        pending = len(store.pending_tiles())
    except (QuickSamError, OSError, ValueError, KeyError, TypeError):
        return 0
    tile_bytes = NPY_HEADER_BYTES + store.dtype.itemsize * sum(item.size for item in store.layout)
    tile_bytes = -(-tile_bytes // DISK_BLOCK) * DISK_BLOCK
    # the index is rewritten beside the old one, then renamed over it: room for two
    needed = pending * tile_bytes + 2 * (TILE_INDEX_BYTES + TILE_INDEX_BYTES_PER_TILE * len(store.grid))
    if not (root / DECODER_ONNX).is_file():
        cached = _cached_decoder(store)
        needed += cached.stat().st_size if cached is not None and cached.is_file() else 0
    return needed


def install_decoder(store: FeatureStore, model: object) -> None:
    """Put the ONNX decoder of these weights into the store, exporting it once per checkpoint and tile
    size into the user cache (an export takes seconds; a copy takes milliseconds). A cached export that
    does not load or fit is exported again."""
    from ..core.decoder_file import decoder_file_problem

    cached = _cached_decoder(store)
    if not cached.is_file() or decoder_file_problem(cached, store.feature_shapes, store.image_size) is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        model.export_decoder_onnx(cached)
    tmp = temporary_path(store.root / DECODER_ONNX)
    try:
        shutil.copyfile(cached, tmp)
        os.replace(tmp, store.root / DECODER_ONNX)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()  # a partial copy would hold the space a full disk needs back
        raise


def _cached_decoder(store: FeatureStore) -> Path:
    """Where the user cache keeps the exported decoder of this store's weights and tile size."""
    from .checkpoints import cache_dir

    name = f"{store.model_name}-{store.checkpoint_sha256}-{store.image_size}-v{DECODER_EXPORT_VERSION}.onnx"
    return cache_dir() / "decoders" / name


def load_model_for(request: EncodeRequest) -> object:
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

