"""What a command says while it runs (`EventWriter`), and how it ends (its exit status).

docs/cli-events.md describes the JSON lines of --progress-json; the Processing algorithm reads encode's.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import threading
from typing import Callable, Iterator, List, Optional, TextIO

EXIT_BAD_INPUT = 1
EXIT_INTERNAL = 2
#: The Python running the command lacks (or cannot import) a package it needs: an environment to build or repair.
EXIT_ENVIRONMENT = 3
#: A run over many inputs (docs/batch.md) in which some failed: the others are done, the summary says which.
EXIT_SOME_FAILED = 4
EXIT_CANCELLED = 130
#: The reader of stdout has gone (a closed pipe): 128 + SIGPIPE, what a shell shows for `yes | head -1`.
EXIT_OUTPUT_CLOSED = 141


class OutputClosed(Exception):
    """Whoever read the command's output has closed it (`quicksam ... | head -3`): the command stops."""


class EventWriter:
    """What a command says while it runs: JSON lines for programs (--progress-json), or lines for people.

    JSON lines (docs/cli-events.md): every stdout line is one event `{"event": NAME, "command": COMMAND,
    ...}`: `start`, `progress` (done, total, unit, percent), `info` and `warning` (message), `finished`
    (summary: what the command prints without --progress-json) and `error` (message, exit_status; the
    one-line error is on stderr as well). For people: progress as a counter and messages on stderr, the
    summary as JSON on stdout.

    Events are written to a private duplicate of the process's stdout (stderr for people's lines) taken
    when the writer is made: QGIS's output capture (`_captured_process_output`) redirects the file
    descriptors themselves and would swallow them. When the reader has gone (a closed pipe) `closed` turns
    true, nothing more is written, and the command ends quietly (see `main`).
    """

    def __init__(self, as_json: bool, command: str = "", stream: Optional[TextIO] = None) -> None:
        self.as_json = as_json
        self.command = command
        self.closed = False
        self._owned: List[TextIO] = []
        self.stream = stream or self._duplicate(sys.stdout if as_json else sys.stderr)
        self.result_stream = stream or sys.stdout
        self._lock = threading.Lock()
        self._line_open = False  # a "\r3/9 tiles" counter not yet ended by a newline

    def _duplicate(self, original: Optional[TextIO]) -> Optional[TextIO]:
        """A text stream on a duplicate of `original`'s file descriptor, or `original` itself when it has
        none (pytest's capture, a GUI console)."""
        try:
            fd = os.dup(original.fileno())
        except (AttributeError, OSError, ValueError):
            return original
        duplicate = os.fdopen(fd, "w", encoding=getattr(original, "encoding", None) or "utf-8",
                              errors="backslashreplace", buffering=1)
        self._owned.append(duplicate)
        return duplicate

    def close(self) -> None:
        """Close the duplicated streams (main does, when the command has ended)."""
        for stream in self._owned:
            with contextlib.suppress(OSError):
                stream.close()
        self._owned = []

    # -- the events ------------------------------------------------------------------------------------
    def start(self, **fields: object) -> None:
        self.emit("start", **fields)

    def progress(self, done: float, total: Optional[float], unit: str, **fields: object) -> None:
        percent = round(100.0 * done / total, 2) if total else None
        self.emit("progress", done=done, total=total, unit=unit, percent=percent, **fields)

    def info(self, message: str) -> None:
        self.emit("info", message=message)

    def warning(self, message: str) -> None:
        self.emit("warning", message=message)

    def finished(self, summary: object, indent: Optional[int] = None, **fields: object) -> None:
        """The command's result: a `finished` event, or for people `summary` as JSON on stdout."""
        if self.as_json:
            self.emit("finished", summary=summary, **fields)
        else:
            self._write(self.result_stream, json.dumps(summary, indent=indent) + "\n")

    def error(self, message: str, exit_status: int, kind: str = "error") -> None:
        """The one stderr line "quicksam: KIND: MESSAGE", and with --progress-json an `error` event too."""
        if self.as_json:
            self.emit("error", message=message, exit_status=exit_status)
        line = f"quicksam: {kind}: {message}\n" if kind else f"quicksam: {message}\n"
        if not self.as_json:
            self._end_counter()
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(line)
            sys.stderr.flush()

    def emit(self, event: str, **fields: object) -> None:
        """One event: a JSON line, or for people the counter or message it stands for."""
        with self._lock:
            if self.as_json:
                self._write(self.stream, json.dumps({"event": event, "command": self.command, **fields}) + "\n")
            elif event == "progress":
                self._write_counter(fields)
            elif event in ("info", "warning"):
                self._end_counter()
                prefix = "quicksam: warning: " if event == "warning" else ""
                self._write(self.stream, prefix + fields["message"] + "\n")

    # -- for people ------------------------------------------------------------------------------------
    def _write_counter(self, fields: dict) -> None:
        done, total, unit = fields["done"], fields["total"], fields["unit"]
        if unit == "bytes":
            text = f"downloading: {done / 1e6:.0f}" + (f"/{total / 1e6:.0f} MB" if total else " MB")
        else:
            text = f"{done}/{total} {unit}"
        if fields.get("percent") is not None:
            text += f" ({fields['percent']:.0f}%)"
        finished = total is not None and done >= total
        self._write(self.stream, "\r" + text + ("\n" if finished else ""))
        self._line_open = not finished

    def _end_counter(self) -> None:
        if self._line_open:
            self._line_open = False
            self._write(self.stream, "\n")

    def _write(self, stream: Optional[TextIO], text: str) -> None:
        if self.closed or stream is None:
            return
        try:
            stream.write(text)
            stream.flush()
        except (BrokenPipeError, ConnectionResetError, ValueError):
            self._reader_gone(stream)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EINVAL):  # EINVAL: a closed pipe on Windows
                raise
            self._reader_gone(stream)

    def _reader_gone(self, stream: TextIO) -> None:
        """Nothing more is written; the stream's descriptor now leads nowhere, so that the data still in
        its buffer cannot fail again when Python flushes it at exit."""
        self.closed = True
        with contextlib.suppress(AttributeError, OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)

    def check_open(self) -> None:
        """OutputClosed once the reader has gone: long work stops instead of running for no one."""
        if self.closed:
            raise OutputClosed("the output was closed")


class EventLogHandler(logging.Handler):
    """The `quicksam` logger's records as `info` and `warning` events."""

    def __init__(self, events: EventWriter) -> None:
        super().__init__(logging.INFO)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.events.warning(record.getMessage())
        else:
            self.events.info(record.getMessage())


def add_events_option(parser: argparse.ArgumentParser) -> None:
    """The --progress-json option every command has."""
    parser.add_argument("--progress-json", action="store_true",
                        help="write events as JSON lines on stdout: start, progress, info, warning, finished (the "
                             "result), error (docs/cli-events.md)")


def download_progress(events: EventWriter, name: str) -> Callable[[int, Optional[int]], None]:
    """`progress` events in bytes (unit "bytes", stage "download") at most once per percent (per MB when the
    size is unknown)."""
    state = {"last": -1}

    def report(done: int, total: Optional[int]) -> None:
        step = int(100 * done / total) if total else done // 1_000_000
        if step != state["last"]:
            state["last"] = step
            events.progress(done, total, "bytes", stage="download", checkpoint=name)
            events.check_open()
    return report


@contextlib.contextmanager
def stop_signal_handler(handler: Callable[[int, object], None]) -> Iterator[None]:
    """`handler` answers SIGINT (Ctrl-C) and SIGTERM (a cancelled QGIS task) inside the block; the previous
    handlers come back afterwards. Off the main thread (where Python sets no handler) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
