"""The Segment dock's frame of a series store (QGIS layer; one piece beside the controller).

On a series store (core/series.py, docs/time-series.md) the dock decodes one frame at a time: `SeriesFrames`
lists the frames (their date-times, else "frame 3"), switches the controller's engine to the chosen frame's store
keeping the object's prompts (the object is decoded again on that frame's features), and follows QGIS's Temporal
Controller: when the map is temporal and a raster layer of the project has active temporal properties, the frame
whose date-time lies in the canvas's temporal range is chosen (the first such frame; none in range: unchanged).
"""

from __future__ import annotations

import contextlib
from typing import List, Optional

from qgis.core import Qgis, QgsDateTimeRange, QgsRasterLayer
from qgis.PyQt.QtCore import QDateTime, QObject, pyqtSignal

from ...core.errors import QuickSamError
from ...core.series import FrameRef
from ..i18n import tr
from ..track_layer import qdatetime
from .controller import SegmentController


def frame_datetime(frame: FrameRef) -> Optional[QDateTime]:
    """The frame's date-time as a QDateTime (without a time zone: UTC, see track_layer.qdatetime), or None."""
    return qdatetime(frame.datetime)


def frame_in_range(frames: List[FrameRef], time_range: QgsDateTimeRange) -> Optional[int]:
    """The index of the first frame whose date-time lies in `time_range` (QGIS's rule: begin and end included
    as the range says), or None."""
    for frame in frames:
        moment = frame_datetime(frame)
        if moment is not None and time_range.contains(moment):
            return frame.index
    return None


class SeriesFrames(QObject):
    """The frame the dock decodes; `framesChanged(labels, current)` when another store is bound,
    `frameChanged(index)` when the frame changes, `statusChanged(message, level)` to say so."""

    framesChanged = pyqtSignal(list, int)  # noqa: N815 (Qt naming)
    frameChanged = pyqtSignal(int)  # noqa: N815 (Qt naming)
    statusChanged = pyqtSignal(str, int)  # noqa: N815 (Qt naming)

    def __init__(self, controller: SegmentController, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.controller = controller
        canvas = controller.canvas
        self._connections = [(controller.storeChanged, self._store_changed),
                             (canvas.temporalRangeChanged, self.follow_temporal_controller)]
        for signal, slot in self._connections:
            signal.connect(slot)

    @property
    def frames(self) -> List[FrameRef]:
        return self.controller.binding.frames if self.controller.store is not None else []

    @property
    def current(self) -> int:
        return self.controller.binding.frame_index

    def _store_changed(self) -> None:
        self.framesChanged.emit([frame.label for frame in self.frames], self.current)

    def set_frame(self, index: int) -> bool:
        """Decode frame `index` from now on; the current object's prompts are kept and decoded again on it.
        False (and the reason on the status line) when the frame cannot be opened."""
        controller = self.controller
        if index == self.current or controller.store is None or not self.frames:
            return index == self.current
        controller.scheduler.reset()   # remembered results belong to the other frame
        try:
            controller.binding.open_frame(index)
        except QuickSamError as exc:
            self.statusChanged.emit(str(exc), int(Qgis.MessageLevel.Warning))
            self.frameChanged.emit(self.current)
            return False
        if controller.session is not None:
            controller.session.engine = controller.binding.engine
            controller.set_options(controller.options)   # decodes the object again, on this frame
        self.frameChanged.emit(index)
        self.statusChanged.emit(tr("decoding {}").format(self.frames[index].label), int(Qgis.MessageLevel.Info))
        return True

    def time_is_followed(self) -> bool:
        """Whether the Temporal Controller drives the frame: the map is temporal and a raster layer of the
        project has active temporal properties."""
        if not self.frames or not self.controller.canvas.mapSettings().isTemporal():
            return False
        layers = self.controller.project.mapLayers().values()
        return any(isinstance(layer, QgsRasterLayer) and layer.temporalProperties().isActive() for layer in layers)

    def follow_temporal_controller(self) -> None:
        """The canvas's temporal range changed: choose the frame in it (see the module)."""
        if not self.time_is_followed():
            return
        index = frame_in_range(self.frames, self.controller.canvas.temporalRange())
        if index is not None:
            self.set_frame(index)

    def release(self) -> None:
        for signal, slot in self._connections:
            with contextlib.suppress(TypeError):
                signal.disconnect(slot)
        self._connections = []
