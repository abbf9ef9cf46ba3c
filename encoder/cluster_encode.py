"""Encode a store's pending tiles on a Dask cluster (core/cluster.py; no QGIS; `distributed` only when used).

The coordinating process (the one that runs `quicksam encode`) owns the store: it holds the lock, plans the
tiles, writes the manifest, appends each tile's record to the tile log once, emits progress and writes the
tile index. The workers do the rest: each task reads a batch of tiles' windows of the raster (the path the
coordinator resolved: every worker must see it, and the store, at the same path), normalises them with the
store's stretch, encodes them with the worker's model (`worker_models.cached_model`: built once per worker,
kept between tasks) and writes their files into the store (core/tile_writer.py), returning their records.
What only the model knows (feature layout, decoder settings, random-weights identity) and the decoder export
come from tasks too, so the coordinator never builds a model (it may have no GPU).

At most two tasks per worker are in flight (`results_as_completed`), so memory does not grow with the
raster. A cancelled run cancels the queued tasks and keeps every recorded tile; the same command resumes. Dask
runs a killed worker's tasks again elsewhere: a tile written twice is the same file replaced atomically, and
the coordinator records each tile once, when its task's result arrives.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Sequence, Tuple, Union

import numpy as np

from ..core.cluster import results_as_completed, results_in_order
from ..core.errors import QuickSamError
from ..core.logger import LOGGER
from ..core.manifest import Manifest
from ..core.remote_store import RemoteTileWriter, bound_url
from ..core.store import DECODER_ONNX, STATUS_DONE, FeatureStore, TileRecord
from ..core.tile_files import atomic_write_bytes, first_line
from ..core.tile_writer import TileWriter, nodata_record
from ..core.tiling import Tile
from .normalise import Stretch
from .pipeline import EncodeRequest, ModelFacts, complete_manifest, model_facts, run_writing_index
from .tile_pipeline import CancelCheck, EncodeStats, ProgressCallback, ProgressEvent
from .worker_models import cached_model

if TYPE_CHECKING:
    from distributed import Client

#: Tasks in flight per worker: one running, one queued, so a worker never waits for the coordinator.
TASKS_PER_WORKER = 2


@dataclass(frozen=True)
class TileJob:
    """What every tile task of one store needs (small, picklable): the request (its model), the raster as the
    coordinator resolved it, the bands read, the level's pixel factor, the store's stretch and its writer."""

    request: EncodeRequest
    raster: str
    bands: Tuple[int, ...]
    factor: float
    stretch: Stretch
    writer: Union[TileWriter, RemoteTileWriter]


@dataclass(frozen=True)
class BatchResult:
    """A task's answer: each tile's record (in the batch's order) and the seconds its model took."""

    records: Tuple[TileRecord, ...]
    model_seconds: float


def encode_batch(job: TileJob, tiles: Sequence[Tile]) -> BatchResult:
    """On a worker: read, normalise and encode `tiles` ((S, S, 3) uint8 images in one model call) and write
    their files into the store; nodata tiles are only recorded. Never touches the log or the manifest."""
    from .raster import WindowReader

    records: List[TileRecord] = []
    images, encoded = [], []
    with WindowReader(job.raster, list(job.bands), job.factor) as reader:
        for tile in tiles:
            data, valid = reader.read_tile(tile)
            if valid.any():
                images.append(job.stretch.apply(data, valid))
                encoded.append((tile, valid))
    started = time.perf_counter()
    features = cached_model(job.request).encode(np.stack(images)) if images else []
    model_seconds = time.perf_counter() - started
    written = {tile.tile_id: job.writer.write(tile, tile_features, valid)
               for (tile, valid), tile_features in zip(encoded, features)}
    for tile in tiles:
        records.append(written.get(tile.tile_id) or nodata_record(tile))
    return BatchResult(tuple(records), model_seconds)


def worker_model_facts(request: EncodeRequest) -> ModelFacts:
    """On a worker: the facts of its model for `request` (built now if it is not held yet)."""
    return model_facts(cached_model(request), request.checkpoint is None)


def worker_install_decoder(request: EncodeRequest, root: Path, manifest: Manifest) -> None:
    """On a worker: export (or take from the worker's user cache) the decoder of its model and put it into the
    store at `root` (whose completed manifest the coordinator wrote)."""
    from .decoder_export import install_decoder

    install_decoder(FeatureStore(root, manifest), cached_model(request))


def worker_decoder_bytes(request: EncodeRequest, manifest: Manifest) -> bytes:
    """On a worker: the decoder.onnx of its model for a store with `manifest`, as bytes, for a coordinator whose
    store folder the worker cannot see (the working copy of a store on an object store, encoder/remote_encode.py)."""
    import tempfile

    from .decoder_export import install_decoder

    with tempfile.TemporaryDirectory(prefix="quicksam-decoder-") as folder:
        install_decoder(FeatureStore(Path(folder), manifest), cached_model(request))
        return (Path(folder) / DECODER_ONNX).read_bytes()


def worker_path(raster: str) -> str:
    """The raster as workers open it: a local file's absolute path (workers may run in another folder); URLs,
    GDAL strings and /vsi paths as they are."""
    path = Path(raster)
    return str(path.resolve()) if path.exists() else raster


def cluster_workers(client: Client) -> int:
    """How many workers the cluster has now (at least 1, so a cluster still starting gets tasks)."""
    return max(1, len(client.scheduler_info().get("workers", {})))


def _on_a_worker(client: Client, function: functools.partial, cancelled: CancelCheck) -> object:
    """The result of one task on the cluster, waiting cancellably."""
    return next(iter(results_in_order(client, function, [None], 1, cancelled)))[1]


def _call(function: Callable[..., Any], *args: Any) -> functools.partial:
    """A task of one item (ignored) that calls `function(*args)`: for `results_in_order`."""
    return functools.partial(_call_ignoring_item, function, *args)


def _call_ignoring_item(function: Callable[..., Any], *args_then_item: Any) -> Any:
    return function(*args_then_item[:-1])


def complete_on_cluster(client: Client, request: EncodeRequest, store: FeatureStore, needs_decoder: bool,
                        cancelled: CancelCheck) -> float:
    """Fill in the manifest from a worker's model and, when `needs_decoder`, have a worker install decoder.onnx;
    the seconds it took (the first worker's model build, mostly)."""
    started = time.perf_counter()
    facts = _on_a_worker(client, _call(worker_model_facts, request), cancelled)
    complete_manifest(store, facts)
    if needs_decoder and bound_url(store.root) is not None:   # an object store's working copy: here only
        data = _on_a_worker(client, _call(worker_decoder_bytes, request, store.manifest), cancelled)
        atomic_write_bytes(store.root / DECODER_ONNX, data)
    elif needs_decoder:
        _on_a_worker(client, _call(worker_install_decoder, request, store.root.resolve(), store.manifest), cancelled)
    return time.perf_counter() - started


def encode_on_cluster(client: Client, request: EncodeRequest, store: FeatureStore, stretch: Stretch,
                      pending: List[Tile], needs_decoder: bool, progress: ProgressCallback,
                      cancelled: CancelCheck) -> EncodeStats:
    """Encode `pending` tiles of `store` (created or resumed, locked by the caller) on the cluster; the tile
    index is written at the end (and, as far as it can be, when the run fails or is cancelled). Errors of a
    task (a raster a worker cannot read, a full disk) are raised here; Cancelled when `cancelled()` turns true."""
    stats = EncodeStats()
    if pending or needs_decoder or not store.manifest.features.arrays:
        stats.model_build_seconds = complete_on_cluster(client, request, store, needs_decoder, cancelled)
    if not pending:
        from .tile_index import tile_index_is_current, write_tile_index

        if not tile_index_is_current(store):
            write_tile_index(store)
        return stats
    workers = cluster_workers(client)
    LOGGER.info("encoding %d of %d tiles into %s on %d Dask workers", len(pending), len(store.grid), store.root,
                workers)
    writer = store.tile_writer()   # an object store's working copy: a RemoteTileWriter, workers write to its URL
    if isinstance(writer, TileWriter):   # workers open the store's folder by its absolute path
        writer = dataclasses.replace(writer, root=store.root.resolve())
    job = TileJob(request, worker_path(request.raster), tuple(store.manifest.preprocessing.bands),
                  store.manifest.pixel_grid.factor, stretch, writer)
    batches = [tuple(pending[i:i + max(1, request.batch_size)])
               for i in range(0, len(pending), max(1, request.batch_size))]
    run = functools.partial(_record_results, client, job, batches, store, stats, progress, cancelled,
                            TASKS_PER_WORKER * workers)
    try:
        return run_writing_index(store, run)
    except Exception as exc:
        if type(exc).__name__ != "KilledWorker":
            raise
        raise QuickSamError(f"the Dask workers running a tile task died one after another ({first_line(exc)}): out "
                            "of memory? give a smaller --batch-size or fewer workers per machine; finished tiles "
                            "are kept and the same command resumes") from exc


def _record_results(client: Client, job: TileJob, batches: List[Tuple[Tile, ...]], store: FeatureStore,
                    stats: EncodeStats, progress: ProgressCallback, cancelled: CancelCheck, window: int
                    ) -> EncodeStats:
    """Submit the batches, record each result's tiles once as it arrives, and count them."""
    started = time.perf_counter()
    done = len(store.grid) - sum(len(batch) for batch in batches)
    for _, result in results_as_completed(client, functools.partial(encode_batch, job), batches, window,
                                          cancelled):
        stats.model_seconds += result.model_seconds
        stats.batch_model_seconds.append(result.model_seconds)
        for record in result.records:
            store.record(record)
            done += 1
            if record.status == STATUS_DONE:
                stats.tiles_encoded += 1
            else:
                stats.tiles_nodata += 1
            progress(ProgressEvent(done, len(store.grid), record.tile_id, record.status))
    stats.total_seconds = time.perf_counter() - started
    return stats
