"""Decoding off the GUI thread, latest request wins (Qt layer over the engine; no layers, no widgets).

Each request gets a monotonically increasing token; a request is "latest" while no newer request of the
same kind (`preview` for hover, `object` for the object being built) was made. A queued request that is
no longer latest when its turn comes is skipped without decoding; a result that is no longer latest
when it arrives is dropped. Only latest results reach `finished`, on the GUI thread; every request's
outcome (delivered, skipped or dropped) reaches `returned` there.

A preview request may be `low_res` (the hover preview while the cursor moves, interactive/preview.py: the
decoder's low-resolution mask outlined, no upsampling). The polygons' QgsGeometry (raster CRS) are built
in the worker too, so the GUI thread only hands them to a rubber band, which repaints every vertex on the
GUI thread: a full-resolution preview with more vertices than interactive/preview.MAX_VERTICES is drawn
as its own low-resolution outline (`segment_outline`); its segments (remembered for a click) stay exact.

The run touches only the engine (its feature cache is thread-safe) and immutable prompts: never a
layer, the project or a widget.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from qgis.core import QgsGeometry
from qgis.PyQt.QtCore import QCoreApplication, QElapsedTimer, QEventLoop, QObject, QRunnable, QThreadPool, pyqtSignal

from ...core.errors import QuickSamError
from ...core.logger import LOGGER
from ...interactive.engine import MapPrompts, Segment, SegmentEngine
from ...interactive.preview import MAX_VERTICES, preview_segments, segment_outline, vertex_count
from ...interactive.session import SegmentOptions, segment_prompts
from ...interactive.vectorise import Polygons

PREVIEW = "preview"
OBJECT = "object"
KINDS = (PREVIEW, OBJECT)
#: Object decodes go before queued previews: a click matters more than a hover.
_PRIORITY = {PREVIEW: 0, OBJECT: 10}


@dataclass(frozen=True)
class DecodeOutcome:
    """One finished request: the segments (raster CRS) and their QgsGeometry (raster CRS, built in the
    worker), or a one-line error, and how long it took. `low_res`: a low-resolution hover preview."""

    kind: str
    token: int
    prompts: MapPrompts
    options: SegmentOptions
    low_res: bool = False
    segments: Tuple[Segment, ...] = ()
    geometries: Tuple[QgsGeometry, ...] = ()
    error: Optional[str] = None
    skipped: bool = False
    seconds: float = 0.0


@dataclass
class WorkerStats:
    """Counters for tests and the log: requests made, decodes run, stale work skipped or dropped."""

    requests: int = 0
    #: Of the requests, low-resolution hover previews.
    low_res_requests: int = 0
    decoded: int = 0
    delivered: int = 0
    skipped_stale: int = 0
    dropped_stale: int = 0
    by_kind: Dict[str, int] = field(default_factory=dict)

    @property
    def stale(self) -> int:
        return self.skipped_stale + self.dropped_stale


class _Relay(QObject):
    """Carries outcomes from the pool thread to the GUI thread (queued: it lives in the GUI thread)."""

    done = pyqtSignal(object)


class _DecodeRun(QRunnable):
    def __init__(self, worker: DecodeWorker, engine: SegmentEngine, outcome: DecodeOutcome) -> None:
        super().__init__()
        self._worker = worker
        self._engine = engine
        self._outcome = outcome
        self._relay = worker._relay

    def _drawn(self, request: DecodeOutcome, segment: Segment) -> Polygons:
        """What is drawn of a segment: a full-resolution preview too big to draw as its low-resolution outline."""
        if request.kind == PREVIEW and not request.low_res and vertex_count(segment.geometry) > MAX_VERTICES:
            return segment_outline(self._engine, request.prompts, segment, request.options)
        return segment.geometry

    def run(self) -> None:
        request = self._outcome
        if not self._worker.is_latest(request.kind, request.token):
            self._relay.done.emit(_replace(request, skipped=True))
            return
        started = time.perf_counter()
        segments: Tuple[Segment, ...] = ()
        geometries: Tuple[QgsGeometry, ...] = ()
        error = None
        try:
            decode = preview_segments if request.low_res else segment_prompts
            segments = tuple(decode(self._engine, request.prompts, request.options))
            geometries = tuple(wkb_geometry(self._drawn(request, segment).wkb) for segment in segments)
        except QuickSamError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a worker must report every failure to the GUI thread
            LOGGER.exception("decoding failed")
            error = f"decoding failed: {exc}"
        self._relay.done.emit(_replace(request, segments=segments, geometries=geometries, error=error,
                                       seconds=time.perf_counter() - started))


def wkb_geometry(wkb: bytes) -> QgsGeometry:
    """A QgsGeometry from WKB (coordinates as they are)."""
    geometry = QgsGeometry()
    geometry.fromWkb(wkb)
    return geometry


def _replace(outcome: DecodeOutcome, **changes: object) -> DecodeOutcome:
    return DecodeOutcome(**{**outcome.__dict__, **changes})


class DecodeWorker(QObject):
    """A one-thread pool running `segment_prompts`; emits `finished(DecodeOutcome)` for latest results."""

    finished = pyqtSignal(object)
    #: Every request's outcome as it comes back to the GUI thread, delivered or not (after `finished`).
    returned = pyqtSignal(object)

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)  # decodes run one after the other; ONNX Runtime uses the cores
        self._lock = threading.Lock()
        self._counter = 0
        self._latest = {kind: 0 for kind in KINDS}
        self._in_flight = 0
        self._relay = _Relay(self)
        self._relay.done.connect(self._on_done)
        self.stats = WorkerStats()

    def request(self, kind: str, engine: SegmentEngine, prompts: MapPrompts, options: SegmentOptions,
                low_res: bool = False) -> int:
        """Queue a decode of `prompts` (raster CRS), at low resolution if `low_res` (a hover preview); returns
        its token. Supersedes older requests of `kind`."""
        with self._lock:
            self._counter += 1
            token = self._counter
            self._latest[kind] = token
        self._in_flight += 1
        self.stats.requests += 1
        self.stats.low_res_requests += int(low_res)
        self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
        self._pool.start(_DecodeRun(self, engine, DecodeOutcome(kind, token, prompts, options, low_res)),
                         _PRIORITY[kind])
        return token

    def is_latest(self, kind: str, token: int) -> bool:
        with self._lock:
            return self._latest[kind] == token

    def cancel(self, kind: Optional[str] = None) -> None:
        """Make every pending request (of `kind`, or all) stale: its result will never be delivered."""
        with self._lock:
            for name in KINDS if kind is None else (kind,):
                self._counter += 1
                self._latest[name] = self._counter

    def is_busy(self) -> bool:
        """True while a request has not come back to the GUI thread."""
        return self._in_flight > 0

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Process events until every request came back (tests, shutdown); False on timeout (seconds)."""
        timer = QElapsedTimer()
        timer.start()
        while self._in_flight > 0 and timer.elapsed() < timeout * 1000:
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
            if self._in_flight > 0:
                self._pool.waitForDone(5)
        return self._in_flight == 0

    def shutdown(self, timeout: float = 5.0) -> None:
        """Drop everything pending and wait for a running decode to end (before the worker is deleted)."""
        self.cancel()
        self._pool.clear()
        self._pool.waitForDone(int(timeout * 1000))
        with contextlib.suppress(TypeError):  # shut down before
            self._relay.done.disconnect(self._on_done)
        self._in_flight = 0

    def _on_done(self, outcome: DecodeOutcome) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        try:
            if outcome.skipped:
                self.stats.skipped_stale += 1
                return
            self.stats.decoded += 1
            if not self.is_latest(outcome.kind, outcome.token):
                self.stats.dropped_stale += 1
                return
            self.stats.delivered += 1
            self.finished.emit(outcome)
        finally:
            self.returned.emit(outcome)  # after delivery: a request made from here must not make it stale
