"""The encoder process's JSON events (docs/cli-events.md) shown in a Processing feedback (QGIS layer)."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from qgis.core import QgsProcessingFeedback

from ..i18n import tr as _tr


class EncoderEventReporter:
    """Shows the encoder process's JSON events (docs/cli-events.md) in a Processing feedback. The events
    "log" and "download" of earlier versions are understood too."""

    def __init__(self, feedback: QgsProcessingFeedback, store: str) -> None:
        self.feedback = feedback
        self.store = store
        #: The "finished" event, once received.
        self.finished: Optional[Dict[str, Any]] = None

    def __call__(self, event: Dict[str, Any]) -> None:
        handler = {
            "start": self._start, "progress": self._progress, "info": self._log, "warning": self._warning,
            "log": self._log, "download": self._download, "stderr": self._stderr, "finished": self._finished,
        }.get(str(event.get("event")))
        if handler is not None:
            handler(event)

    def _start(self, event: Dict[str, Any]) -> None:
        self.feedback.setProgressText(_tr("Encoding tiles…"))
        tiles, todo = event.get("tiles"), event.get("todo")
        if isinstance(tiles, int) and isinstance(todo, int) and tiles > 0:
            # Tiles kept from an earlier run count as done, as in the encoder's progress events. Setting
            # it also restarts a feedback shared by several runs (batch rows), which ignores a repeated
            # value: without it a second run's final 100 % would not show.
            self.feedback.setProgress(100.0 * (tiles - todo) / tiles)
        self.feedback.pushInfo(_tr("{tiles} tiles, {todo} to encode, into {store}").format(
            tiles=event.get("tiles", "?"), todo=event.get("todo", "?"),
            store=event.get("store", self.store)))

    def _progress(self, event: Dict[str, Any]) -> None:
        if event.get("unit") == "bytes":  # the checkpoint's download
            self._download(event)
            return
        self.feedback.setProgress(float(event.get("percent", 0.0)))
        self.feedback.pushDebugInfo(_tr("Tile {tile}: {status} ({done}/{total})").format(
            tile=event.get("tile", "?"), status=event.get("status", "?"),
            done=event.get("done", "?"), total=event.get("total", "?")))

    def _log(self, event: Dict[str, Any]) -> None:
        message = str(event.get("message", ""))
        if event.get("level") in ("warning", "error", "critical"):
            self.feedback.pushWarning(message)
        else:
            self.feedback.pushInfo(message)

    def _warning(self, event: Dict[str, Any]) -> None:
        self.feedback.pushWarning(str(event.get("message", "")))

    def _download(self, event: Dict[str, Any]) -> None:
        percent = event.get("percent")
        percent = -1 if percent is None else percent
        if isinstance(percent, (int, float)) and percent >= 0:
            text = _tr("Downloading the checkpoint: {percent} %").format(percent=percent)
        else:
            text = _tr("Downloading the checkpoint: {mb:.0f} MB").format(
                mb=float(event.get("done") or 0) / 1e6)
        self.feedback.setProgressText(text)

    def _stderr(self, event: Dict[str, Any]) -> None:
        self.feedback.pushDebugInfo(str(event.get("message", "")))

    def _finished(self, event: Dict[str, Any]) -> None:
        self.finished = event
        self.feedback.setProgress(100.0)  # also when no tile was left to encode
        if event.get("summary"):
            self.feedback.pushInfo(_tr("Summary: {summary}").format(
                summary=json.dumps(event["summary"], default=str)))
