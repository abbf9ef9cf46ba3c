"""The events of `quicksam encode INPUT... --output-dir DIR | --next-to-inputs --progress-json` (docs/cli-events.md,
docs/batch.md) in a Processing feedback, and the run's summary table as a CSV file (QGIS layer).

The run's progress is (items finished + the fractions of the items running) / items: an item's `progress`
events carry its index (`item`), so items encoded side by side on a cluster are counted each for its part.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from qgis.core import QgsProcessingFeedback

from ..i18n import tr as _tr
from .encoder_events import EncoderEventReporter

DONE = "done"
#: The columns of the summary CSV, in order: an `item_finished` event's fields.
SUMMARY_COLUMNS = ("input", "output", "log", "status", "tiles", "objects", "seconds", "error")
#: The summary's file name (before an optional `_<suffix>`), written in the output folder.
SUMMARY_STEM = "quicksam_summary"


class BatchEventReporter(EncoderEventReporter):
    """Shows a run over many rasters in a Processing feedback: the list, each item's start, progress and end (a
    failed item as an error line: the run goes on), the overall progress. `summary` is the final summary
    ({items: [rows], done, failed}) once received; every other event as `EncoderEventReporter` shows it."""

    def __init__(self, feedback: QgsProcessingFeedback) -> None:
        super().__init__(feedback, "")
        self.count = 0
        #: Each item's part done (0 to 1), by index; 1 once it has finished, done or failed.
        self.fractions: Dict[int, float] = {}
        self.summary: Optional[Dict[str, Any]] = None

    def __call__(self, event: Dict[str, Any]) -> None:
        name = str(event.get("event"))
        handler = {"batch": self._batch, "item_start": self._item_start, "item_finished": self._item_finished,
                   "start": self._item_encoding, "finished": self._batch_finished}.get(name)
        if name == "progress" and isinstance(event.get("item"), int) and event.get("unit") != "bytes":
            handler = self._item_progress
        if handler is None:
            super().__call__(event)
        else:
            handler(event)

    def overall_percent(self) -> float:
        """The run's progress in percent: (items finished + the running items' fractions) / items."""
        if self.count <= 0:
            return 0.0
        return 100.0 * min(1.0, sum(self.fractions.values()) / self.count)

    def _batch(self, event: Dict[str, Any]) -> None:
        items: List[Dict[str, Any]] = list(event.get("items") or [])
        self.count = len(items)
        self.feedback.pushInfo(_tr("{count} rasters to encode:").format(count=self.count))
        for item in items:
            self.feedback.pushInfo(_tr("{input} → {output}").format(input=item.get("input"), output=item.get("output")))

    def _item_start(self, event: Dict[str, Any]) -> None:
        self.count = int(event.get("count") or self.count)
        self.feedback.setProgressText(_tr("Encoding {number} of {count}…").format(
            number=int(event.get("index", 0)) + 1, count=self.count))
        self.feedback.pushInfo(_tr("[{number}/{count}] {input}: encoding into {output}").format(
            number=int(event.get("index", 0)) + 1, count=self.count, input=event.get("input"),
            output=event.get("output")))

    def _item_encoding(self, event: Dict[str, Any]) -> None:
        self.feedback.pushDebugInfo(_tr("{tiles} tiles, {todo} to encode, into {store}").format(
            tiles=event.get("tiles", "?"), todo=event.get("todo", "?"), store=event.get("store", "?")))

    def _item_progress(self, event: Dict[str, Any]) -> None:
        percent = event.get("percent")
        if isinstance(percent, (int, float)):
            index = int(event["item"])
            self.fractions[index] = max(0.0, min(1.0, float(percent) / 100.0))
            self.feedback.setProgress(self.overall_percent())

    def _item_finished(self, event: Dict[str, Any]) -> None:
        self.fractions[int(event.get("index", len(self.fractions)))] = 1.0
        self.feedback.setProgress(self.overall_percent())
        number, count = int(event.get("index", 0)) + 1, int(event.get("count") or self.count)
        if event.get("status") == DONE:
            self.feedback.pushInfo(_tr("[{number}/{count}] {input}: done, {tiles} tiles in {seconds:.1f} s, store "
                                       "{output}").format(
                number=number, count=count, input=event.get("input"), tiles=event.get("tiles", "?"),
                seconds=float(event.get("seconds") or 0.0), output=event.get("output")))
        else:
            self.feedback.reportError(_tr("[{number}/{count}] {input} failed: {error} (log: {log})").format(
                number=number, count=count, input=event.get("input"), error=event.get("error"),
                log=event.get("log")), False)

    def _batch_finished(self, event: Dict[str, Any]) -> None:
        self.finished = event
        summary = event.get("summary")
        self.summary = summary if isinstance(summary, dict) else None
        self.feedback.setProgress(100.0)


def summary_rows(summary: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The summary's item rows (each a dict of SUMMARY_COLUMNS)."""
    return [row for row in summary.get("items") or [] if isinstance(row, dict)]


def summary_file(output_dir: Optional[str], input_folder: str, rows: Sequence[Dict[str, Any]], suffix: str) -> Path:
    """Where the summary CSV goes: `quicksam_summary[_<suffix>].csv` in the output folder, else (outputs next to
    their inputs) in the input folder, else beside the first output."""
    name = SUMMARY_STEM + (f"_{suffix}" if suffix else "") + ".csv"
    if output_dir:
        return Path(output_dir) / name
    if input_folder:
        return Path(input_folder) / name
    first = next((row.get("output") for row in rows if row.get("output")), "")
    return Path(str(first)).parent / name


def write_summary_csv(path: Path, rows: Sequence[Dict[str, Any]]) -> Path:
    """Write the summary table (a header of SUMMARY_COLUMNS, a row per item; UTF-8, empty cells for None) to
    `path`, replacing the summary of an earlier run there; OSError when it cannot be written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in SUMMARY_COLUMNS})
    return path
