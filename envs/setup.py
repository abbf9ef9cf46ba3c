"""One set-up run: the interactive runtime, then the encoder environment (each skipped when it already
works with today's pins), or an existing Python checked and chosen instead of building one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from .commands import Runner
from .encoder_env import (
    EnvCheck,
    Machine,
    build_encoder_env,
    check_python,
    detect_machine,
    is_up_to_date,
    require_working,
)
from .failures import SetupError
from .locations import Locations, platform_name, venv_python
from .pythons import PythonInfo, find_qgis_python, find_torch_python, suits_torch
from .runtime import RuntimeCheck, install_runtime, installed_version, qgis_has_onnxruntime, verify_runtime

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class SetupRequest:
    """What to set up, and what the QGIS layer knows about the running QGIS."""

    locations: Locations
    qgis_prefix: str  #: QgsApplication.prefixPath()
    qgis_executable: str  #: sys.executable inside QGIS
    qgis_version: Tuple[int, int]  #: sys.version_info[:2] inside QGIS
    runtime: bool = True
    encoder: bool = True
    #: A Python the user chose: checked and used as the encoder's Python instead of building one.
    existing_python: Optional[str] = None
    platform: str = field(default_factory=platform_name)


@dataclass
class SetupResult:
    runtime: Optional[RuntimeCheck] = None
    runtime_note: str = ""
    encoder: Optional[EnvCheck] = None
    encoder_python: Optional[str] = None  #: to record as the encoder's Python
    notes: List[str] = field(default_factory=list)


def _scaled(progress: Progress, start: float, end: float) -> Progress:
    return lambda fraction, message: progress(start + (end - start) * fraction, message)


def setup_runtime(request: SetupRequest, runner: Runner, qgis_python: PythonInfo, progress: Progress) -> RuntimeCheck:
    folder = request.locations.runtime
    progress(0.0, "Looking for ONNX Runtime")
    if installed_version(folder) is not None:
        try:
            check = verify_runtime(runner, qgis_python.path, folder)
            runner.note(f"runtime up to date: {check}")
            return check
        except Exception as exc:  # noqa: BLE001 - any failure of the old runtime means: reinstall it
            runner.note(f"the runtime needs a repair: {exc}")
    return install_runtime(runner, qgis_python.path, folder, progress)


def setup_encoder(request: SetupRequest, runner: Runner, qgis_python: Optional[PythonInfo],
                  progress: Progress) -> EnvCheck:
    env_dir = request.locations.encoder_env
    if request.existing_python:
        progress(0.5, "Checking the chosen Python")
        return require_working(check_python(runner, request.existing_python), "checking the chosen Python")
    progress(0.0, "Looking at the encoder environment")
    current = is_up_to_date(runner, env_dir)
    if current is not None:
        runner.note(f"encoder environment up to date: {current}")
        return current
    machine: Machine = detect_machine(request.platform)
    runner.note(f"machine: {machine}")
    preferred: Sequence[str] = [qgis_python.path] if suits_torch(qgis_python) else []
    base = find_torch_python(preferred, request.platform)
    runner.note(f"building from {base.path} (Python {base.version[0]}.{base.version[1]})")
    return build_encoder_env(runner, [base.path], env_dir, machine, progress)


def run_setup(request: SetupRequest, runner: Runner, progress: Progress) -> SetupResult:
    """Set up what `request` asks for. Raises SetupError (one line, says what to do) or Cancelled."""
    result = SetupResult()
    qgis_python: Optional[PythonInfo] = None
    if request.runtime or (request.encoder and not request.existing_python):
        qgis_python = _qgis_python(request, runner)
    if request.runtime and qgis_python is not None:
        provided = qgis_has_onnxruntime(runner, qgis_python.path)
        if provided:
            result.runtime_note = f"QGIS's Python already has ONNX Runtime {provided}: nothing to install"
        else:
            result.runtime = setup_runtime(request, runner, qgis_python, _scaled(progress, 0.0, 0.15))
    if request.encoder:
        result.encoder = setup_encoder(request, runner, qgis_python, _scaled(progress, 0.15, 1.0))
        result.encoder_python = request.existing_python or str(venv_python(request.locations.encoder_env,
                                                                           request.platform))
    progress(1.0, "Done")
    return result


def _qgis_python(request: SetupRequest, runner: Runner) -> Optional[PythonInfo]:
    try:
        info = find_qgis_python(request.qgis_prefix, request.qgis_executable, request.qgis_version,
                                request.platform)
    except SetupError:
        if request.runtime:
            raise
        return None  # the encoder can be built from another Python
    runner.note(f"QGIS's Python: {info.path} ({info.version[0]}.{info.version[1]})")
    return info


def encoder_python_of(locations: Locations) -> Optional[Path]:
    """The encoder environment's interpreter, if the set-up built one."""
    python = venv_python(locations.encoder_env)
    return python if python.exists() else None
