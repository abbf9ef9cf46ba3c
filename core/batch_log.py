"""A batch item's log file and its row in the run's summary (no QGIS).

`item_log(path, title, settings)` appends to the item's log file (a re-run keeps the earlier runs' lines): a
header (what is done, when, the settings), every record of the `quicksam` logger while the item runs, and a
footer (status, tiles, objects, seconds, end time, the error). `ItemResult` is the item's row: what the
`item_finished` event and the summary table carry (docs/cli-events.md, docs/batch.md).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, TextIO, Tuple

from .logger import LOGGER

DONE, FAILED, INTERRUPTED = "done", "failed", "interrupted"


@dataclass
class ItemResult:
    """One item's outcome: `status` "done" or "failed"; `tiles` of its store (every level) or segmented; `objects`
    found (segment-all; None for encode); `seconds` it took; `error` one line or None; `note` e.g. "already
    finished" (a re-run that had nothing to do)."""

    index: int
    count: int
    input: str
    output: str
    log: str
    status: str = FAILED
    tiles: Optional[int] = None
    objects: Optional[int] = None
    seconds: float = 0.0
    error: Optional[str] = None
    note: Optional[str] = None

    def row(self) -> dict:
        """The item as the `item_finished` event's fields (JSON-ready)."""
        return asdict(self)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def one_line_error(exc: BaseException) -> str:
    """An exception as one line: a QuickSAM error's own message, anything else with its type named."""
    from .errors import QuickSamError

    lines = str(exc).splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith("Traceback (most recent call last)"):
            lines = lines[:index] + lines[-1:]  # never a traceback: its last line (the exception) only
            break
    text = " ".join(" ".join(lines).split())
    return text if isinstance(exc, QuickSamError) and text else f"unexpected {type(exc).__name__}: {text}"


@dataclass
class LoggedRun:
    """One run of an item log: its header's `option <name>: <value>` lines as {name: value}, its footer's fields
    from `status:` on as {field: text} (status, note, tiles, objects, error, seconds; empty while the run has
    not reached its footer) and whether the footer was closed (`=== ended`)."""

    options: Dict[str, str]
    footer: Dict[str, str]
    ended: bool = False


def logged_runs(path: Path) -> List[LoggedRun]:
    """The runs of the item log file `path` in order (each begins with LOG_START); [] when there is no such file.
    The one reader of the log format `item_log` writes."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    runs: List[LoggedRun] = []
    for line in lines:
        if line.startswith(LOG_START):
            runs.append(LoggedRun({}, {}))
        elif not runs:
            continue
        elif line.startswith("=== ended "):
            runs[-1].ended = bool(runs[-1].footer)
        elif runs[-1].footer or line.startswith("status: "):
            if ": " in line and not line.startswith("==="):
                key, value = line.split(": ", 1)
                runs[-1].footer.setdefault(key, value)
        elif line.startswith("option ") and ": " in line:
            name, value = line[len("option "):].split(": ", 1)
            runs[-1].options[name] = value
    return runs


def last_footer(path: Path) -> Optional[Dict[str, str]]:
    """The footer of the last run in the log file `path` as {field: text} (status, note, tiles, objects, error,
    seconds), None when there is no such file or its last run has no footer (not ended, or still running)."""
    runs = logged_runs(path)
    return runs[-1].footer if runs and runs[-1].ended else None


def logged_result(result: ItemResult) -> Optional[ItemResult]:
    """`result` as the footer of the last run in its log (`result.log`) ended it: status ("interrupted ..." as
    INTERRUPTED), note, tiles, objects, error and seconds (the seconds the item ran, as its log says); None when
    that run has no footer. The row of an item that ended where this process could not see it (a worker's, or
    one stopped by Ctrl-C) says what its log says."""
    footer = last_footer(Path(result.log))
    if footer is None:
        return None
    status = INTERRUPTED if footer["status"].startswith(INTERRUPTED) else footer["status"]
    try:
        seconds = float(footer.get("seconds", "0"))
    except ValueError:
        seconds = 0.0
    return replace(result, status=status, note=footer.get("note"), tiles=_count(footer, "tiles"),
                   objects=_count(footer, "objects"), error=footer.get("error"), seconds=seconds)


def _count(footer: Mapping[str, str], key: str) -> Optional[int]:
    value = footer.get(key, "")
    return int(value) if value.isdigit() else None


#: The notes of re-runs that left their output as it was (a segment-all item found finished, or finished with other
#: settings): `last_output_run` looks past them, to the run that made the output.
ALREADY_FINISHED, OTHER_SETTINGS = "already finished", "other settings"


def last_output_run(path: Path) -> Optional[Tuple[str, Dict[str, str]]]:
    """(status, options) of the last run in the log file `path` that ended with a footer not noting
    ALREADY_FINISHED or OTHER_SETTINGS: the run that made (or last tried to make) the output; its options are
    its header's `option <name>: <value>` lines as {name: value}. None when there is none."""
    for run in reversed(logged_runs(path)):
        if "status" in run.footer and run.footer.get("note") not in (ALREADY_FINISHED, OTHER_SETTINGS):
            return run.footer["status"], run.options
    return None


#: How every QuickSAM item log begins (`item_log`'s header): a log file not beginning so is the user's.
LOG_START = "=== quicksam "


def is_foreign_log(path: Path) -> bool:
    """Whether `path` is a file QuickSAM did not write as an item log (not empty, first line not LOG_START...):
    it must not be appended to."""
    if not path.is_file():   # nothing there (or no folder: `unwritable_log` says so for the item)
        return False
    try:
        with open(path, "rb") as stream:
            head = stream.read(len(LOG_START))
    except OSError:
        return True
    return bool(head) and head != LOG_START.encode()


def unwritable_log(result: ItemResult) -> Optional[str]:
    """None when the log file `result.log` can be opened for appending (its folder made if needed; the file is
    created), else the one line that fails the item: its log (and so its output) cannot be written there."""
    path = Path(result.log)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return (f"its log '{path}' cannot be written ({reason}), so neither can its output there: make "
                f"'{path.parent}' writable or choose a writable --output-dir")
    return None


class ItemLog:
    """The open log of one item; `result` is written in its footer when the item ends."""

    def __init__(self, stream: TextIO, result: ItemResult) -> None:
        self.stream = stream
        self.result = result
        self.started = time.monotonic()

    def line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 3)


@contextlib.contextmanager
def item_log(result: ItemResult, title: str, settings: Mapping[str, object]) -> Iterator[ItemLog]:
    """Append `title`, the start time and `settings` to the log file `result.log` (its folder made if needed),
    every `quicksam` log record (INFO and up) while the block runs, then the footer: `result`'s status, tiles,
    objects, seconds and error, and the end time. An exception leaving the block (Ctrl-C) is logged as
    "interrupted" and goes on."""
    path = Path(result.log)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as stream:
        log = ItemLog(stream, result)
        log.line(f"=== {title}: started {_now()}")
        log.line(f"input: {result.input}")
        log.line(f"output: {result.output}")
        for key, value in settings.items():
            log.line(f"{key}: {value}")
        handler = logging.StreamHandler(stream)
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        level = LOGGER.level
        LOGGER.addHandler(handler)
        if LOGGER.getEffectiveLevel() > logging.INFO:
            LOGGER.setLevel(logging.INFO)
        interrupted = True
        try:
            yield log
            interrupted = False
        finally:
            LOGGER.removeHandler(handler)
            LOGGER.setLevel(level)
            result.seconds = log.seconds()
            if interrupted:
                result.status = INTERRUPTED
            _footer(log, interrupted)


def _footer(log: ItemLog, interrupted: bool) -> None:
    result = log.result
    status = "interrupted (finished tiles are kept; run the same command to resume)" if interrupted else result.status
    log.line(f"status: {status}")
    if result.note:
        log.line(f"note: {result.note}")
    if result.tiles is not None:
        log.line(f"tiles: {result.tiles}")
    if result.objects is not None:
        log.line(f"objects: {result.objects}")
    if result.error:
        log.line(f"error: {result.error}")
    log.line(f"seconds: {result.seconds}")
    log.line(f"=== ended {_now()}")
    log.line("")


def summary(results: Sequence[ItemResult]) -> dict:
    """The run's summary: every item's row, and how many were done and failed."""
    return {"items": [result.row() for result in results],
            "done": sum(result.status == DONE for result in results),
            "failed": sum(result.status != DONE for result in results)}


def summary_table(results: Sequence[ItemResult]) -> List[str]:
    """The summary as text lines: input, output, tiles, objects, seconds, status (and the error)."""
    header = ("input", "output", "tiles", "objects", "seconds", "status")
    rows = [(r.input, r.output, "" if r.tiles is None else str(r.tiles), "" if r.objects is None else str(r.objects),
             f"{r.seconds:.1f}", r.status + (f" ({r.note})" if r.note else "") + (f": {r.error}" if r.error else ""))
            for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return ["  ".join([*(cell.ljust(width) for cell, width in zip(row[:-1], widths)), row[-1]]).rstrip()
            for row in [header, *rows]]
