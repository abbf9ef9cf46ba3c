"""Run one tool (pip, venv, a probe) in a subprocess: its output goes to the set-up's log, a cancel kills
it, and a failure becomes a SetupError with a one-line message (`failures.py`)."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from ..core.errors import Cancelled
from ..core.logger import LOGGER
from .failures import FailureKind, classify_output, failure, last_error_line

#: Seconds a cancelled tool gets to stop before it is killed.
TERMINATE_GRACE = 5.0
_EOF = object()


def tool_environment(base: Optional[Mapping[str, str]] = None,
                     extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment of a tool run for another interpreter: no PYTHONHOME/PYTHONPATH of the caller
    (QGIS sets them for its own interpreter), pip quiet and non-interactive, output as UTF-8."""
    env = dict(os.environ if base is None else base)
    for name in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PIP_REQUIRE_VIRTUALENV", "VIRTUAL_ENV"):
        env.pop(name, None)
    env.update({"PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1", "PIP_NO_INPUT": "1",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_PROGRESS_BAR": "off"})
    env.update(extra or {})
    return env


def _pump(stream: Iterable[str], out: queue.Queue) -> None:
    try:
        for line in stream:
            out.put(line)
    finally:
        out.put(_EOF)


def _stop(process: subprocess.Popen) -> None:
    """Terminate the tool and everything it started (pip runs builds in child processes)."""
    if process.poll() is not None:
        return
    try:
        if os.name == "nt":
            process.kill()
        else:
            os.killpg(process.pid, 15)
        process.wait(timeout=TERMINATE_GRACE)
    except (OSError, subprocess.TimeoutExpired):
        if os.name != "nt":
            with contextlib.suppress(OSError):
                os.killpg(process.pid, 9)
        process.kill()
        process.wait()


@dataclass
class Runner:
    """Runs tools for one set-up, appending everything they print to `log`.

    `is_cancelled` is polled every 0.1 s while a tool runs; `on_line` gets each line of output (from the
    calling thread)."""

    log: Path
    is_cancelled: Callable[[], bool] = field(default=lambda: False)
    on_line: Callable[[str], None] = field(default=lambda line: None)

    def note(self, message: str) -> None:
        """A line of QuickSAM's own in the log (time-stamped)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}\n")
        LOGGER.info("%s", message)

    def check_cancelled(self) -> None:
        if self.is_cancelled():
            raise Cancelled("the set-up was cancelled; the previous state is kept")

    def run(self, command: Sequence[str], what: str, folder: Optional[Path] = None,
            env: Optional[Mapping[str, str]] = None) -> str:
        """Run `command` to its end and return its output (stdout and stderr, merged).

        Raises Cancelled (after killing the tool) when cancelled; SetupError when the tool cannot be
        started (NO_PYTHON) or exits with an error (kind read from its output, see failures.py)."""
        self.check_cancelled()
        self.note("$ " + " ".join(str(part) for part in command))
        process = self._start(command, what, env)
        lines: List[str] = []
        out: queue.Queue = queue.Queue()
        reader = threading.Thread(target=_pump, args=(process.stdout, out), daemon=True)
        reader.start()
        with open(self.log, "a", encoding="utf-8") as handle:
            while True:
                if self.is_cancelled():
                    _stop(process)
                    self.note("cancelled")
                    raise Cancelled("the set-up was cancelled; the previous state is kept")
                try:
                    line = out.get(timeout=0.1)
                except queue.Empty:
                    continue
                if line is _EOF:
                    break
                lines.append(line)
                handle.write(line)
                handle.flush()
                self.on_line(line.rstrip("\n"))
        returncode = process.wait()
        text = "".join(lines)
        if returncode != 0:
            self.note(f"exit code {returncode}")
            raise failure(classify_output(text), what, folder, last_error_line(text), self.log)
        return text

    def _start(self, command: Sequence[str], what: str, env: Optional[Mapping[str, str]]) -> subprocess.Popen:
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            return subprocess.Popen(
                [str(part) for part in command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env=dict(env) if env is not None else tool_environment(),
                text=True, encoding="utf-8", errors="replace", bufsize=1, creationflags=flags,
                start_new_session=os.name != "nt")
        except OSError as exc:
            self.note(f"cannot start {command[0]}: {exc}")
            raise failure(FailureKind.NO_PYTHON, what, detail=(
                f"cannot start the Python '{command[0]}' ({exc.strerror or exc}): install Python or choose "
                "an existing one with 'Choose existing Python…'")) from exc
