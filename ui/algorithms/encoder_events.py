"""The encoder process's JSON events (docs/cli-events.md) shown in a Processing feedback, and its messages in the
words of the Processing dialog (QGIS layer)."""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Callable, Dict, List, Match, Optional, Pattern, Tuple

from qgis.core import QgsProcessingFeedback

from ...core.errors import Cancelled, EncoderEnvironmentError, QuickSamError
from ...core.logger import LOGGER
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
        message = str(event.get("message", ""))
        if CLI_ERROR_LINE.match(message):
            return  # the CLI's one-line error becomes the algorithm's error: shown once, not here as well
        self.feedback.pushDebugInfo(message)

    def _finished(self, event: Dict[str, Any]) -> None:
        self.finished = event
        self.feedback.setProgress(100.0)  # also when no tile was left to encode
        summary = event.get("summary")
        if summary:
            self.feedback.pushInfo(summary_line(summary))
            self.feedback.pushDebugInfo(_tr("Summary: {summary}").format(summary=json.dumps(summary, default=str)))


def summary_line(summary: Dict[str, Any]) -> str:
    """The store's summary (`FeatureStore.summary`) as one sentence for the Processing log."""
    line = _tr("Feature store {store}: {done} of {tiles} tiles encoded ({nodata} all nodata), model {model}, bands "
               "{bands}, {mb:.0f} MB.").format(
        store=summary.get("store"), done=summary.get("tiles_done"), tiles=summary.get("tiles"),
        nodata=summary.get("tiles_nodata", 0), model=summary.get("model"),
        bands=", ".join(str(band) for band in summary.get("bands", [])),
        mb=float(summary.get("bytes_on_disk") or 0) / 1e6)
    if not summary.get("complete"):
        line += " " + _tr("Not complete yet: run it again to resume.")
    return line


#: The CLI's one-line error on stderr ("quicksam: error: ...", "quicksam: cancelled: ...").
CLI_ERROR_LINE = re.compile(r"^quicksam: (?:error|cancelled): ")
_BAND_FIELDS = "the Red, Green and Blue band fields"
_Rewrite = Tuple[Pattern[str], Callable[[Match[str]], str]]


def _rewrites() -> List[_Rewrite]:
    """The CLI's advice (encoder/ and core/ messages name `quicksam encode` options) as the dialog's fields; the
    phrases first, then any option left."""
    fields = {"checkpoint": _tr("the Checkpoint field"), "model": _tr("the Model field"),
              "bands": _tr(_BAND_FIELDS), "overlap": _tr("the Tile overlap field"),
              "extent": _tr("the Extent to encode field"), "batch-size": _tr("the Batch size field"),
              "device": _tr("the Device field"), "tile-size": _tr("the Tile size field"),
              "random-weights": _tr("the random weights option"), "seed": _tr("the random weights option"),
              "extent-crs": _tr("the Extent to encode field (any CRS)"),
              "zoom": _tr("the layer's zoom levels (the zmax of its connection)"),
              "resolution": _tr("the Ground resolution field"), "levels": _tr("the Levels field"),
              "series": _tr("the Time series frames field"), "frames-from-bands": _tr("the frames from bands option"),
              "frame-pattern": _tr("the Time series frames field"), "dates": _tr("the Frame dates field"),
              "date-pattern": _tr("the Date pattern field"), "frame-resampling": _tr("the frames' resampling"),
              "workers": _tr("the Worker processes field"), "scheduler": _tr("the Dask scheduler field"),
              "devices": _tr("the Device field"), "output-dir": _tr("the Output folder field"),
              "next-to-inputs": _tr("an empty Output folder"), "recursive": _tr("the Include sub-folders option"),
              "include": _tr("the Include field"), "exclude": _tr("the Exclude field"),
              "extensions": _tr("the Extensions field"), "suffix": _tr("the Suffix field"),
              "disambiguate": _tr("the Disambiguate option"),
              "feature-dtype": _tr("the Stored feature precision field")}
    return [
        (re.compile(r"run the same quicksam encode --series \.\.\. \(or --frames-from-bands\) with the new options"),
         lambda m: _tr("encode the series again (Time series frames, or each band a frame) with the new settings")),
        (re.compile(r"with --dates or a finer --date-pattern"),
         lambda m: _tr("in the Frame dates field, or a finer format in the Date pattern field")),
        (re.compile(r"pass (?:its new place|the original) with --raster"),  # an on-demand tile (encode-tile)
         lambda m: _tr("put the raster back where the store says it was")),
        (re.compile(r"quicksam encode --series A\.tif B\.tif \.\.\. STORE, or --frames-from-bands"),  # tracking
         lambda m: _tr("Encode raster for SAM with its Time series frames, or each band of the input raster as "
                       "a frame")),
        (re.compile(r"choose a coarser --level"), lambda m: _tr("untick Full resolution only")),
        (re.compile(r"pass --checkpoint PATH"),
         lambda m: _tr("set the Checkpoint field to the downloaded .pt file")),
        (re.compile(r"use --model ([\w.]+[\w])"),
         lambda m: _tr("choose {model} in the Model field").format(model=m.group(1))),
        (re.compile(r"use --device ([\w:]+)"),
         lambda m: _tr("choose {device} in the Device field").format(device=m.group(1))),
        (re.compile(r"pass e\.g\. --bands [\d,]+"),
         lambda m: _tr("choose bands that exist in the Red, Green and Blue band fields")),
        (re.compile(r"with --feature-dtype (\S+)"),
         lambda m: _tr("with {dtype} in the Stored feature precision field").format(dtype=m.group(1))),
        (re.compile(r"--levels ([\d.,]+)"), lambda m: _tr("Levels {levels}").format(levels=m.group(1))),
        (re.compile(r"with --(model|bands)"), lambda m: _tr("in {field}").format(field=fields[m.group(1)])),
        (re.compile(r"--(" + "|".join(re.escape(name) for name in sorted(fields, key=len, reverse=True))
                    + r")\b(?:=\S+)?"),
         lambda m: fields[m.group(1)]),
    ]


def in_dialog_words(message: str) -> str:
    """`message` from the encoder process, for the Processing dialog: without the CLI's "quicksam: error: "
    prefix, and with the `quicksam encode` options it advises ("pass --checkpoint PATH") named as the dialog's
    fields ("set the Checkpoint field to the downloaded .pt file")."""
    text = CLI_ERROR_LINE.sub("", message.strip())
    for pattern, replacement in _rewrites():
        text = pattern.sub(replacement, text)
    return text


def words_for(message: str, command_line: bool) -> str:
    """The encoder's message as the dialog's words (`in_dialog_words`), or as is without its prefix for the
    `quicksam` command (`command_line`), which names its own options."""
    if command_line:
        return CLI_ERROR_LINE.sub("", message)
    return in_dialog_words(message)


_environment_failures = 0
_environment_failures_lock = threading.Lock()


def record_environment_failure() -> None:
    """Count a run that failed because the encoder's Python is missing or lacks a package (any thread)."""
    global _environment_failures
    with _environment_failures_lock:
        _environment_failures += 1


def environment_failures() -> int:
    """How many runs failed for want of an encoder environment since QGIS started: the menu's dialog compares it
    before and after to offer the set-up."""
    with _environment_failures_lock:
        return _environment_failures


def run_encoder_task(call: Callable[[], Any], stopped: str, failed: str) -> Optional[str]:
    """Run `call` (work in the encoder's process, from a QgsTask's `run`) and return None, or the one line the
    task reports to the GUI thread: `stopped` when it was cancelled, the encoder's message in the dialog's words
    (an environment failure counted, see `record_environment_failure`), or `failed` with the unexpected error
    (logged with its traceback)."""
    try:
        call()
    except Cancelled:
        return stopped
    except EncoderEnvironmentError as exc:
        record_environment_failure()
        return in_dialog_words(str(exc))
    except QuickSamError as exc:
        return in_dialog_words(str(exc))
    except Exception as exc:  # noqa: BLE001 - a task reports every failure to the GUI thread
        LOGGER.exception("%s", failed)
        return f"{failed}: {exc}"
    return None
