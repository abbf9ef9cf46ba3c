"""Segment everything's tiles decoded on a Dask cluster (core/cluster.py; no QGIS, no torch, no shapely).

The coordinating process (automatic.py) keeps the run: which tiles, the border merge, the run file. Only the
pure part of a tile, `mask_generator.tile_masks` on its cached features, runs on a worker: `decode_tile` opens
the store's `SegmentEngine` once per worker (kept in `worker_cache()`, so the ONNX session is made once, not per
task) and returns the tile's masks with what the filters dropped. `cluster_tile_masks` yields them in the
order of the tiles, so the coordinator merges and writes exactly as a run in one process does.

Workers must see the store at the same path as the coordinator, and have onnxruntime and GDAL's `osgeo`.
A worker's ONNX Runtime may round the last bits of a float otherwise than the coordinator's process would (other
threads, another CPU), so a mask pixel whose logit sits on the threshold may flip; nothing else differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..core.cluster import results_in_order, worker_cache, worker_threads
from ..core.errors import Cancelled
from ..core.store import DECODER_ONNX, FeatureStore
from ..core.tiling import Tile
from .engine import SegmentEngine
from .filter_counts import FilterCounts
from .mask_generator import AutoMaskSettings, tile_masks
from .tile_merge import TileMask

if TYPE_CHECKING:
    from distributed import Client

#: Tasks in flight per worker: one decoding, one queued, so a worker never waits for the coordinator.
TASKS_PER_WORKER = 2
#: Engines a worker keeps (one per store level it has decoded): each holds an ONNX session.
ENGINES_PER_WORKER = 4
_ENGINE_KEY = "quicksam.interactive.cluster_tiles.engine"


@dataclass(frozen=True)
class TileTask:
    """One tile to decode on a worker: the store (level) folder `store_root`, as the worker sees it (the same
    path as the coordinator), the `tile`, and the level's AutoMaskSettings as a dict."""

    store_root: str
    tile: Tile
    settings: dict


@dataclass
class PackedMask:
    """A TileMask as it crosses the network: its crop's (H, W) bits packed 8 to a byte (uint8)."""

    tile_id: str
    col0: int
    row0: int
    shape: Tuple[int, int]
    bits: np.ndarray
    score: float
    stability: float

    @classmethod
    def of(cls, mask: TileMask) -> PackedMask:
        return cls(mask.tile_id, mask.col0, mask.row0, mask.crop.shape, np.packbits(mask.crop, axis=None),
                   mask.score, mask.stability)

    def unpacked(self) -> TileMask:
        height, width = self.shape
        crop = np.unpackbits(self.bits, count=height * width).reshape(height, width).astype(bool)
        return TileMask(self.tile_id, self.col0, self.row0, crop, self.score, self.stability)


@dataclass
class TileResult:
    """A decoded tile: its masks (raster pixel offsets) and what the filters dropped in it."""

    masks: List[PackedMask]
    counts: FilterCounts


def decode_tile(task: TileTask) -> TileResult:
    """`tile_masks` of one tile, run on a worker (the engine of its store opened once per worker). StoreError
    for a tile the store cannot read; QuickSamError for a store without its decoder."""
    engine = worker_engine(Path(task.store_root))
    counts = FilterCounts()
    settings = AutoMaskSettings(**task.settings)
    masks = tile_masks(engine.decoder, engine.cache.get(task.tile.tile_id), task.tile, settings,
                       engine.valid_masks.get(task.tile), counts)
    return TileResult([PackedMask.of(mask) for mask in masks], counts)


def worker_engine(root: Path) -> SegmentEngine:
    """This worker's engine of the store at `root`, opened on first use; keyed by the store and its decoder
    file (a store encoded again gets a new one). ONNX Runtime uses the worker's share of the CPU threads."""
    decoder = root / DECODER_ONNX
    stat = decoder.stat() if decoder.is_file() else None
    key = (_ENGINE_KEY, str(root.resolve()), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
    cache = worker_cache()
    if key not in cache:
        engines = [name for name in cache if isinstance(name, tuple) and name[:1] == (_ENGINE_KEY,)]
        for old in engines[:max(0, len(engines) - ENGINES_PER_WORKER + 1)]:
            del cache[old]
        cache[key] = SegmentEngine(FeatureStore.open(root), cache_tiles=1, threads=worker_threads())
    return cache[key]


def cluster_workers(client: Client) -> int:
    """The workers the cluster has now (at least 1)."""
    return max(1, len(client.scheduler_info().get("workers", {})))


def cluster_tile_masks(client: Client, store: FeatureStore, tiles: Sequence[Tile], settings: AutoMaskSettings,
                       counts: FilterCounts, cancelled: Optional[Callable[[], bool]] = None,
                       stop: Optional[Callable[[], None]] = None) -> Iterator[Tuple[Tile, List[TileMask]]]:
    """(tile, its masks) for each of `tiles` of `store` (one level), decoded on the cluster and yielded in the
    order of `tiles`, about two tasks per worker in flight; what the filters dropped is added to `counts` in that
    order. Cancelled (the queued tasks cancelled) once `cancelled()` turns true, checked while waiting; `stop()`
    (the caller's own Cancelled, in its words) is called before each tile is yielded and when cancelled. A task's
    error is raised when its tile's turn comes."""
    tasks = [TileTask(str(store.root), tile, settings.to_dict()) for tile in tiles]
    window = TASKS_PER_WORKER * cluster_workers(client)
    results: Generator[Tuple[Any, Any], None, None] = results_in_order(client, decode_tile, tasks, window, cancelled)
    try:
        for task, result in results:
            counts.add(result.counts, settings.pred_iou_thresh, settings.stability_score_thresh)
            if stop is not None:
                stop()
            yield task.tile, [packed.unpacked() for packed in result.masks]
    except Cancelled:
        if stop is not None:
            stop()
        raise
    finally:
        results.close()  # at once, not when collected: the queued tasks are cancelled
