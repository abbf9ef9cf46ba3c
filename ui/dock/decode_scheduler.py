"""When and what the Segment dock decodes: the hover previews, the decode worker (latest wins), the results
remembered by prompts and options, and an accept waiting for its object's decode (QGIS layer; one piece of
the Segment dock's controller).

Hover: while the cursor moves, `moved` reports its newest position whenever no low-resolution preview is
on its way (at most one is: a position that arrives meanwhile waits, replaced by any newer one, and is
reported when it comes back), so previews follow the cursor as fast as they decode and no stale position
queues behind the newest. When the cursor rests for the delay, `rested` reports it once (the
full-resolution preview, remembered, so a click there is at once).

It knows no session, layer or drawing: it is handed an engine, prompts (raster CRS) and options, and reports
through its signals (on the GUI thread) or, for a remembered result, by returning it at once.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Optional, Tuple

from qgis.core import QgsPointXY
from qgis.PyQt.QtCore import QCoreApplication, QElapsedTimer, QEventLoop, QObject, QTimer, pyqtSignal

from ...interactive.engine import MapPrompts, Segment, SegmentEngine
from ...interactive.session import SegmentOptions
from .decode_worker import OBJECT, PREVIEW, DecodeOutcome, DecodeWorker

#: How many decode results are remembered (a click after a preview, an undo, an option switched back).
RESULT_MEMO_SIZE = 32

Segments = Tuple[Segment, ...]


class ResultMemo:
    """The most recently used decode results, by (prompts, options); the oldest is forgotten first."""

    def __init__(self, size: int = RESULT_MEMO_SIZE) -> None:
        self.size = size
        self._results: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._results)

    def get(self, prompts: MapPrompts, options: SegmentOptions) -> Optional[Segments]:
        """The segments (raster CRS) decoded from `prompts` with `options`, or None if not remembered."""
        key = (prompts, options)
        if key not in self._results:
            return None
        self._results.move_to_end(key)
        return self._results[key]

    def put(self, prompts: MapPrompts, options: SegmentOptions, segments: Segments) -> None:
        self._results[(prompts, options)] = segments
        while len(self._results) > self.size:
            self._results.popitem(last=False)

    def clear(self) -> None:
        self._results.clear()


class DecodeScheduler(QObject):
    """Decodes for the hover preview and for the object being built, each latest-wins, from memory when it can.

    `moved(QgsPointXY)`: the cursor's newest canvas-CRS position, for a low-resolution preview (see the
    module docstring). `rested(QgsPointXY)`: the cursor rested `delay_ms` at this canvas-CRS position (each
    `rest_at` restarts the wait). `previewReady(segments or None, geometries)`: a preview's segments and
    their QgsGeometry (raster CRS, built in the worker), to draw; None when its decode failed.
    `previewDecoded(segments or None)`: a preview's segments (raster CRS), None when its decode
    failed. `objectDecoded(prompts, options, segments)`: the object's decode came back. `objectFailed(str)`:
    it failed, with a one-line message (a pending accept is dropped).
    """

    moved = pyqtSignal(QgsPointXY)
    rested = pyqtSignal(QgsPointXY)
    previewReady = pyqtSignal(object, object)  # noqa: N815 (Qt naming)
    previewDecoded = pyqtSignal(object)  # noqa: N815 (Qt naming)
    objectDecoded = pyqtSignal(object, object, object)  # noqa: N815 (Qt naming)
    objectFailed = pyqtSignal(str)  # noqa: N815 (Qt naming)

    def __init__(self, delay_ms: int, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.worker = DecodeWorker(self)
        self.hover_timer = QTimer(self)
        self.hover_timer.setSingleShot(True)
        self.hover_timer.setInterval(delay_ms)
        self.memo = ResultMemo()
        #: An object decode was requested and has not come back.
        self.object_pending = False
        #: The user accepted an object still being decoded: accept it when its result arrives.
        self.accept_pending = False
        self._rest_point: Optional[QgsPointXY] = None
        #: The token of the low-resolution preview on its way (None: none is), and the newest position
        #: (canvas CRS) waiting for it to come back.
        self._moving_token: Optional[int] = None
        self._moving_point: Optional[QgsPointXY] = None
        self.worker.finished.connect(self._on_decoded)
        self.worker.returned.connect(self._on_returned)
        self.hover_timer.timeout.connect(self._on_rest)

    # -- hover ------------------------------------------------------------------------------------------
    def rest_at(self, point: QgsPointXY) -> None:
        """The cursor is at `point` (canvas CRS): report it as `moved` now or when the low-resolution preview
        on its way comes back, and as `rested` once it rests there for the delay."""
        self._rest_point = QgsPointXY(point)
        self.hover_timer.start()
        if self._moving_token is None:
            self.moved.emit(QgsPointXY(point))
        else:
            self._moving_point = QgsPointXY(point)

    def stop_hover(self) -> None:
        self.hover_timer.stop()
        self._moving_point = None

    def _on_rest(self) -> None:
        self._moving_point = None  # the rest's full-resolution preview supersedes it
        if self._rest_point is not None:
            self.rested.emit(QgsPointXY(self._rest_point))

    def _on_returned(self, outcome: DecodeOutcome) -> None:
        if outcome.token != self._moving_token:
            return
        self._moving_token = None
        waiting, self._moving_point = self._moving_point, None
        if waiting is not None:
            self.moved.emit(waiting)

    # -- decoding ---------------------------------------------------------------------------------------
    def preview(self, engine: SegmentEngine, prompts: MapPrompts, options: SegmentOptions, low_res: bool = False
                ) -> Optional[Segments]:
        """The remembered preview of `prompts` (raster CRS), or None: then the worker decodes it and
        `previewReady` and `previewDecoded` follow unless a newer preview supersedes it. `low_res` (the cursor
        moves): at low resolution (interactive/preview.py), never remembered."""
        if low_res:
            self._moving_token = self.worker.request(PREVIEW, engine, prompts, options, low_res=True)
            return None
        remembered = self.memo.get(prompts, options)
        if remembered is not None:
            self.worker.cancel(PREVIEW)
            return remembered
        self.worker.request(PREVIEW, engine, prompts, options)
        return None

    def decode_object(self, engine: SegmentEngine, prompts: MapPrompts, options: SegmentOptions
                      ) -> Optional[Segments]:
        """The remembered segments of the object's `prompts` (raster CRS), or None: then the worker decodes
        them and `objectDecoded` or `objectFailed` follows unless a newer object decode supersedes it."""
        remembered = self.memo.get(prompts, options)
        if remembered is not None:
            self.worker.cancel(OBJECT)
            self.object_pending = False
            return remembered
        self.object_pending = True
        self.worker.request(OBJECT, engine, prompts, options)
        return None

    def cancel_preview(self) -> None:
        """No pending preview will be delivered."""
        self.worker.cancel(PREVIEW)

    def cancel_object(self) -> None:
        """No pending object decode will be delivered."""
        self.worker.cancel(OBJECT)
        self.object_pending = False

    def take_accept(self) -> bool:
        """Whether an accept was waiting for this decode (it is no longer waiting)."""
        waiting, self.accept_pending = self.accept_pending, False
        return waiting

    def reset(self) -> None:
        """Another store (or none): nothing pending, nothing remembered."""
        self.worker.cancel()
        self.stop_hover()
        self.memo.clear()
        self.accept_pending = False
        self.object_pending = False

    def _on_decoded(self, outcome: DecodeOutcome) -> None:
        if outcome.error is None and not outcome.low_res:
            self.memo.put(outcome.prompts, outcome.options, outcome.segments)
        if outcome.kind == PREVIEW:
            self.previewReady.emit(outcome.segments if outcome.error is None else None, outcome.geometries)
            self.previewDecoded.emit(outcome.segments if outcome.error is None else None)
            return
        self.object_pending = False
        if outcome.error is not None:
            self.accept_pending = False
            self.objectFailed.emit(outcome.error)
            return
        self.objectDecoded.emit(outcome.prompts, outcome.options, outcome.segments)

    # -- life cycle -------------------------------------------------------------------------------------
    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Process events until no hover rest is pending and every decode came back (tests; seconds)."""
        timer = QElapsedTimer()
        timer.start()
        while self.hover_timer.isActive() and timer.elapsed() < timeout * 1000:
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        return self.worker.wait_idle(max(0.0, timeout - timer.elapsed() / 1000))

    def shutdown(self) -> None:
        """Stop the timer and the worker and disconnect them (before the scheduler is deleted)."""
        self.hover_timer.stop()
        self.worker.shutdown()
        with contextlib.suppress(TypeError):  # shut down before
            self.worker.finished.disconnect(self._on_decoded)
        with contextlib.suppress(TypeError):
            self.worker.returned.disconnect(self._on_returned)
        with contextlib.suppress(TypeError):
            self.hover_timer.timeout.disconnect(self._on_rest)
