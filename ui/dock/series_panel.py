"""The Segment dock's "Time series" group: the frame selector, the direction and the Track button (QGIS layer).

Shown only on a series store. The frame combo lists the frames (date-times, else "frame N") and drives
`SeriesFrames` (frames.py); the Track button drives `DockTracking` (tracking.py).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, List, Optional

from qgis.PyQt.QtCore import QObject

from ...core.track_job import DIRECTIONS
from ..i18n import tr
from .frames import SeriesFrames


def direction_labels() -> dict:
    return {"forward": tr("forward (later frames)"), "backward": tr("backward (earlier frames)"),
            "both": tr("both ways")}


class SeriesPanel(QObject):
    """Keeps the dock's series widgets (`seriesGroup`, `frameCombo`, `directionCombo`, `trackButton`,
    `trackProgress`) in step with the controller's series store."""

    def __init__(self, dock: Any, frames: SeriesFrames, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.dock = dock
        self.frames = frames
        labels = direction_labels()
        for direction in DIRECTIONS:
            dock.directionCombo.addItem(labels[direction], direction)
        dock.seriesGroup.setVisible(False)
        dock.trackProgress.setVisible(False)
        self._connections: List[tuple] = [
            (frames.framesChanged, self.show_frames), (frames.frameChanged, self.show_frame),
            (dock.frameCombo.currentIndexChanged, self._frame_chosen)]
        for signal, slot in self._connections:
            signal.connect(slot)

    def connect(self, signal: Any, slot: Callable) -> None:
        """Connect `signal` to `slot` until `release`."""
        signal.connect(slot)
        self._connections.append((signal, slot))

    @property
    def direction(self) -> str:
        return self.dock.directionCombo.currentData() or "forward"

    def show_frames(self, labels: List[str], current: int) -> None:
        combo = self.dock.frameCombo
        combo.blockSignals(True)
        combo.clear()
        for index, label in enumerate(labels):
            combo.addItem(f"{index}: {label}", index)
        combo.setCurrentIndex(current if labels else -1)
        combo.blockSignals(False)
        self.dock.seriesGroup.setVisible(bool(labels))

    def show_frame(self, index: int) -> None:
        combo = self.dock.frameCombo
        if combo.currentIndex() != index:
            combo.blockSignals(True)
            combo.setCurrentIndex(index)
            combo.blockSignals(False)

    def _frame_chosen(self, position: int) -> None:
        if position >= 0:
            self.frames.set_frame(position)

    def release(self) -> None:
        for signal, slot in self._connections:
            with contextlib.suppress(TypeError):
                signal.disconnect(slot)
        self._connections = []
        self.frames.release()
