"""What the set-up has installed, where, how big; and removing all of it. Reads files only (fast
enough for a dialog to call on the main thread: no interpreter is started)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .encoder_env import read_record
from .folders import folder_size, human_size, remove_tree
from .locations import Locations, old_of, staging_of, venv_python
from .runtime import installed_version

LOG_NAME = "setup.log"
#: A log grown past this is started afresh by the next set-up.
LOG_LIMIT_BYTES = 5_000_000


def log_path(locations: Locations) -> Path:
    return locations.logs / LOG_NAME


def start_log(locations: Locations) -> Path:
    """The set-up's log file, emptied when it grew too big."""
    path = log_path(locations)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > LOG_LIMIT_BYTES:
        path.unlink()
    return path


@dataclass(frozen=True)
class SetupStatus:
    runtime_dir: Path
    runtime_version: Optional[str]
    runtime_bytes: int
    encoder_dir: Path
    encoder_python: Optional[Path]
    encoder_bytes: int
    encoder_torch: Optional[str]
    encoder_device: Optional[str]
    encoder_device_name: str
    log: Path


def collect_status(locations: Locations) -> SetupStatus:
    runtime = locations.runtime
    env = locations.encoder_env
    python = venv_python(env)
    check = read_record(env).get("check", {}) if python.exists() else {}
    return SetupStatus(runtime, installed_version(runtime), folder_size(locations.runtime_root), env,
                       python if python.exists() else None, folder_size(env), check.get("torch"),
                       check.get("device"), check.get("device_name", ""), log_path(locations))


def describe(status: SetupStatus) -> List[str]:
    """Plain lines for the status view."""
    if status.runtime_version:
        runtime = (f"ONNX Runtime {status.runtime_version} for QGIS: {status.runtime_dir} "
                   f"({human_size(status.runtime_bytes)})")
    else:
        runtime = f"ONNX Runtime for QGIS: not installed by the set-up (would go to {status.runtime_dir})"
    if status.encoder_python is not None:
        device = status.encoder_device or "unknown device"
        if status.encoder_device_name:
            device += f", {status.encoder_device_name}"
        encoder = (f"Encoder environment: {status.encoder_dir} ({human_size(status.encoder_bytes)}), "
                   f"torch {status.encoder_torch or '?'} on {device}")
    else:
        encoder = f"Encoder environment: not built (would go to {status.encoder_dir})"
    return [runtime, encoder, f"Log: {status.log}"]


def remove_all(locations: Locations) -> List[str]:
    """Delete the runtimes (every Python version), the encoder environment, their staging leftovers and the
    logs. Returns the problems (one line each) of what could not be removed, e.g. a library still loaded."""
    problems = []
    for folder in (locations.runtime_root, locations.encoder_env, staging_of(locations.encoder_env),
                   old_of(locations.encoder_env), locations.logs):
        try:
            remove_tree(folder)
        except OSError as exc:
            problems.append(f"cannot remove {folder} ({exc.strerror or exc}): restart QGIS and remove it again")
            continue
        if folder.exists():
            problems.append(f"cannot remove all of {folder} (a file is in use): restart QGIS and remove it again")
    return problems
