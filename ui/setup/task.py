"""A set-up run as a QgsTask: off the GUI thread, with progress, a working cancel and a log file.

`run()` touches no widget, layer or setting: it only calls `envs.setup.run_setup` (subprocesses) and
stores the result; the dialog reads it in `finished`, on the main thread, through the `done` signal.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ...core.errors import Cancelled, QuickSamError
from ...core.logger import LOGGER
from ...envs.commands import Runner
from ...envs.setup import SetupRequest, SetupResult, run_setup


class SetupTask(QgsTask):
    """Runs one `SetupRequest`; emits `step(text)` while it runs (from the worker thread: queued to the
    receivers' thread) and `done(ok, message)` from `finished` (main thread)."""

    step = pyqtSignal(str)
    done = pyqtSignal(bool, str)

    def __init__(self, request: SetupRequest, log: Path, description: str) -> None:
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.request = request
        self.log = log
        self.result: Optional[SetupResult] = None
        self.error = ""
        self.was_cancelled = False
        self._lock = threading.Lock()
        self._last_line = ""

    def run(self) -> bool:
        runner = Runner(self.log, is_cancelled=self.isCanceled, on_line=self._on_line)
        runner.note(f"set-up started: {self.request}")
        try:
            self.result = run_setup(self.request, runner, self._on_progress)
            runner.note("set-up finished")
            return True
        except Cancelled as exc:
            self.was_cancelled = True
            self.error = str(exc)
        except QuickSamError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported in the dialog, never lost in a thread
            LOGGER.exception("set-up failed")
            self.error = f"unexpected {type(exc).__name__}: {exc} (details in {self.log}); please report it"
        runner.note(f"set-up stopped: {self.error}")
        return False

    def _on_progress(self, fraction: float, message: str) -> None:
        self.setProgress(max(0.0, min(100.0, 100.0 * fraction)))
        self.step.emit(message)

    def _on_line(self, line: str) -> None:
        if line.strip():
            with self._lock:
                self._last_line = line.strip()

    def last_line(self) -> str:
        """The tool's latest line of output (for the dialog to show while a long step runs)."""
        with self._lock:
            return self._last_line

    def finished(self, result: bool) -> None:
        if not result and not self.error:
            self.was_cancelled = True
            self.error = "the set-up was cancelled; the previous state is kept"
        self.done.emit(result, self.error)
