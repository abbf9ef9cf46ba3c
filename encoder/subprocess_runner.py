"""Run the encoder CLI in a separate Python process and stream its progress (no QGIS, no torch).

QGIS's own Python never imports torch: inside QGIS executables torch runs about twice as slowly, and
the encoder's interpreter (a venv with torch and sam2) need not be QGIS's. The child runs
`python -m quicksam.cli ... --progress-json`, which prints one JSON object per line on stdout and, on
bad input, exactly one line "quicksam: error: <what to do>" on stderr.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import IO, Callable, Deque, Dict, List, Optional, Tuple

from ..core.errors import Cancelled, EncoderEnvironmentError, QuickSamError
from ..core.logger import LOGGER

#: The plugin folder (the repository root), which is the package `quicksam` when installed.
PLUGIN_DIR = Path(__file__).resolve().parent.parent
PACKAGE_NAME = "quicksam"
DEFAULT_MODULE = "quicksam.cli"
EXIT_OK = 0
EXIT_CANCELLED = 130
#: The CLI's exit status when its Python lacks (or cannot import) a package (cli.events.EXIT_ENVIRONMENT).
EXIT_ENVIRONMENT = 3
#: Seconds a cancelled encoder gets to stop cleanly (finish writing its tile) before it is killed.
TERMINATE_GRACE = 5.0
_STDERR_LINES_KEPT = 200
_EOF = object()

SETUP_HINT = ("run Raster > QuickSAM > Set up… to build the encoder's environment (or choose there an "
              "existing Python that has torch and sam2; the setting quicksam/python_executable and the "
              "variable QUICKSAM_PYTHON also name one)")


def encoder_command(args: List[str], python: str, module: str = DEFAULT_MODULE) -> List[str]:
    """The full command line of the encoder process."""
    return [python, "-m", module, *args, "--progress-json"]


def encoder_environment(base: Optional[Dict[str, str]] = None,
                        plugin_dir: Path = PLUGIN_DIR) -> Dict[str, str]:
    """Environment of the encoder process: `base` (default os.environ) made safe for another Python.

    An installed plugin lives in `.../python/plugins/quicksam`, so putting `.../python/plugins` first
    on PYTHONPATH makes `import quicksam` find it (a development checkout relies on `pip install -e`).
    PYTHONHOME set by QGIS would point the child at QGIS's bundled Python and break its venv.
    """
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONHOME", None)
    if plugin_dir.name == PACKAGE_NAME:
        parent = str(plugin_dir.parent)
        existing = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = parent + (os.pathsep + existing if existing else "")
    # Progress must reach us line by line, not when a pipe buffer fills; and JSON is UTF-8.
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def parse_event_line(line: str) -> Optional[dict]:
    """One stdout line as an event dict; any other text as a "log" event; None for blank lines."""
    text = line.strip()
    if not text:
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return {"event": "log", "message": text}
    if isinstance(event, dict) and isinstance(event.get("event"), str):
        return event
    return {"event": "log", "message": text}


def _pump(stream: IO[str], name: str, out: queue.Queue[Tuple[str, object]]) -> None:
    """Copy a pipe's lines into `out` as (name, line), then (name, _EOF)."""
    try:
        for line in stream:
            out.put((name, line))
    finally:
        out.put((name, _EOF))


def _last_error_line(stderr_lines: Deque[str]) -> str:
    for line in reversed(stderr_lines):
        if line.strip():
            return line.strip()
    return ""


def _missing_module(stderr_text: str) -> str:
    """What the process could not import, as "the package 'NAME'" or the import error's line; "" if none."""
    match = re.search(r"No module named '([^']+)'", stderr_text)
    if match:
        return f"the package '{match.group(1).split('.')[0]}'"
    lines = [line.strip() for line in stderr_text.splitlines()]
    return next((line for line in reversed(lines) if line.startswith(("ImportError", "ModuleNotFoundError"))), "")


def _environment_problem(returncode: int, stderr_lines: Deque[str], python: str, module: str) -> Optional[str]:
    """The message when the encoder's Python cannot run it for want of a package (or of QuickSAM itself), else
    None: the CLI's own EXIT_ENVIRONMENT, or an import that failed before the CLI could say anything."""
    stderr_text = "\n".join(stderr_lines)
    package = module.split(".", 1)[0]
    if (f"No module named '{package}" in stderr_text or f"No module named {package}" in stderr_text
            or "Error while finding module specification" in stderr_text):
        return f"the Python '{python}' cannot import QuickSAM ({_last_error_line(stderr_lines)}); {SETUP_HINT}"
    last = _last_error_line(stderr_lines)
    if returncode == EXIT_ENVIRONMENT or last.startswith(("ModuleNotFoundError", "ImportError")):
        missing = _missing_module(stderr_text) or "a package"
        return f"the encoder's Python '{python}' cannot import {missing} it needs; {SETUP_HINT}"
    return None


def _failure_message(returncode: int, stderr_lines: Deque[str]) -> str:
    """The user-facing message for a failed encoder process (other than a missing package)."""
    last = _last_error_line(stderr_lines)
    if last:
        return last
    if returncode < 0:
        return (f"the encoder process was killed by signal {-returncode} (out of memory? try a "
                "smaller batch size or model)")
    return f"the encoder process failed with exit code {returncode} and no message"


def _stop(process: subprocess.Popen, grace: float) -> None:
    """Terminate the process, and kill it if it has not exited after `grace` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_encoder_process(args: List[str], python: str, on_event: Callable[[dict], None],
                        is_cancelled: Callable[[], bool], poll_interval: float = 0.1,
                        module: str = DEFAULT_MODULE, terminate_grace: float = TERMINATE_GRACE) -> int:
    """Run `python -m module *args --progress-json` and report its events until it exits.

    `on_event` is called in the calling thread with each stdout event (see `parse_event_line`) and with
    {"event": "stderr", "message": line} for each stderr line. `is_cancelled` is polled every
    `poll_interval` seconds; when it returns True the process is terminated (killed after
    `terminate_grace` s) and Cancelled is raised. Returns the exit code (0). Raises QuickSamError
    with the process's last stderr line when it fails, and EncoderEnvironmentError (a QuickSamError saying to run
    the set-up) when `python` is missing or lacks a package the encoder needs.
    """
    if not python:
        raise EncoderEnvironmentError(f"no Python interpreter found to run the encoder; {SETUP_HINT}")
    process = _start_process(encoder_command(args, python, module), python)
    lines: queue.Queue[Tuple[str, object]] = queue.Queue()
    readers = _start_readers(process, lines)
    stderr_lines: Deque[str] = deque(maxlen=_STDERR_LINES_KEPT)
    try:
        _relay_lines(process, lines, len(readers), on_event, stderr_lines, is_cancelled, poll_interval,
                     terminate_grace)
        returncode = process.returncode
    finally:
        # On any exception (cancel, a failing callback) the child must not outlive us.
        _stop(process, terminate_grace)
        for reader in readers:
            reader.join(timeout=terminate_grace)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    if returncode == EXIT_OK:
        return returncode
    if returncode == EXIT_CANCELLED:
        raise Cancelled("the encoder was interrupted; the tiles encoded so far are kept and the next "
                        "run resumes from there")
    environment_problem = _environment_problem(returncode, stderr_lines, python, module)
    if environment_problem:
        raise EncoderEnvironmentError(environment_problem)
    raise QuickSamError(_failure_message(returncode, stderr_lines))


def _start_process(command: List[str], python: str) -> subprocess.Popen:
    """The encoder process, its stdout and stderr piped as text; QuickSamError with a setup hint when
    `python` cannot be started."""
    LOGGER.debug("starting encoder: %s", command)
    creationflags = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # no console window on Windows
    try:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=encoder_environment(), text=True, encoding="utf-8", errors="replace", bufsize=1,
            creationflags=creationflags)
    except OSError as exc:
        raise EncoderEnvironmentError(f"cannot start the Python '{python}' ({exc.strerror or exc}); "
                                      f"{SETUP_HINT}") from exc


def _start_readers(process: subprocess.Popen, lines: queue.Queue[Tuple[str, object]]) -> List[threading.Thread]:
    """One thread per pipe copying its lines into `lines` (see `_pump`), started."""
    readers = [threading.Thread(target=_pump, args=(stream, name, lines), daemon=True,
                                name=f"quicksam-encoder-{name}")
               for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr"))]
    for reader in readers:
        reader.start()
    return readers


def _relay_lines(process: subprocess.Popen, lines: queue.Queue[Tuple[str, object]], open_streams: int,
                 on_event: Callable[[dict], None], stderr_lines: Deque[str], is_cancelled: Callable[[], bool],
                 poll_interval: float, terminate_grace: float) -> None:
    """Hand the pipes' lines to `on_event` (stderr lines also kept in `stderr_lines`) until both pipes are
    closed and the process has exited; Cancelled (the process stopped) once `is_cancelled()`."""
    while open_streams or process.poll() is None:
        if is_cancelled():
            _stop(process, terminate_grace)
            raise Cancelled("encoding cancelled; the tiles encoded so far are kept and the next "
                            "run resumes from there")
        try:
            name, line = lines.get(timeout=poll_interval)
        except queue.Empty:
            continue
        if line is _EOF:
            open_streams -= 1
        elif name == "stderr":
            stderr_lines.append(str(line).rstrip("\r\n"))
            if str(line).strip():
                on_event({"event": "stderr", "message": str(line).rstrip()})
        else:
            event = parse_event_line(str(line))
            if event is not None:
                on_event(event)
