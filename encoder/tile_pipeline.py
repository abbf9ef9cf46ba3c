"""The tile pipeline of one encoding run: reader -> model -> writer (no QGIS).

Three stages overlap: a reader thread reads and normalises the next tiles while the model encodes the
current batch, and a writer thread converts and stores the previous batch. Queues are bounded, so
memory depends on the batch size, never on the raster size.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, List, Tuple

import numpy as np

from ..core.errors import Cancelled
from ..core.store import FeatureStore
from ..core.tiling import Tile
from .normalise import Stretch
from .raster import WindowReader

if TYPE_CHECKING:
    from .models import SegmentModel

_END = object()


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


def never_cancelled() -> bool:
    """A CancelCheck for runs nobody cancels."""
    return False


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

    def __init__(self, store: FeatureStore, model: SegmentModel, raster: str, stretch: Stretch,
                 batch_size: int, progress: ProgressCallback, cancelled: CancelCheck) -> None:
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
            with WindowReader(self.raster, list(self.store.manifest.preprocessing.bands),
                              self.store.manifest.pixel_grid.factor) as reader:
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
