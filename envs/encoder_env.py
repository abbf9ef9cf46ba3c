"""The encoder environment: a venv in the user data folder with torch, sam2 and segment-anything.

Built from a suitable Python (`pythons.find_torch_python`) in a staging folder, checked by importing
what the encoder needs and asking torch for its device, then swapped in; the previous environment
stays in use until then. The torch build suits the machine (`detect_machine`): an NVIDIA GPU with a
working driver gets a CUDA build from PyTorch's index for that driver; Apple Silicon the default
wheels (MPS); anything else what pip's own configuration gives (its index, mirrors, find-links are
honoured; `QUICKSAM_TORCH_INDEX_URL` adds an index, e.g. https://download.pytorch.org/whl/cpu).
"""

from __future__ import annotations

import json
import os
import platform as platform_module
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence

from .commands import Runner, tool_environment
from .failures import FailureKind, SetupError
from .folders import remove_tree, swap_in
from .locations import platform_name, staging_of, venv_python
from .pins import ENCODER_MODULES, ENCODER_REQUIREMENTS, SAM2_BUILD_ENV, TORCH_REQUIREMENTS

Progress = Callable[[float, str], None]
WHAT = "building the encoder environment"
RECORD_NAME = "quicksam-env.json"
TORCH_INDEX_ENV_VAR = "QUICKSAM_TORCH_INDEX_URL"
PYTORCH_INDEX = "https://download.pytorch.org/whl/"
#: Newest first: the CUDA build for the newest CUDA version the driver supports.
CUDA_BUILDS = (((13, 0), "cu130"), ((12, 8), "cu128"), ((12, 6), "cu126"), ((11, 8), "cu118"))
#: Free space the build needs, in bytes: a torch with CUDA libraries (any NVIDIA machine, and Linux's
#: standard wheel) is about 6 GB, pip's cache aside; the others about 1.5 GB.
NEEDED_BYTES_CUDA = 8_000_000_000
NEEDED_BYTES_OTHER = 3_000_000_000


@dataclass(frozen=True)
class Machine:
    """What the encoder can run on: accelerator "cuda", "mps" or "cpu", and what was seen."""

    accelerator: str
    detail: str = ""
    cuda_build: Optional[str] = None


def _nvidia_smi(run: Callable[..., subprocess.CompletedProcess]) -> Optional[str]:
    try:
        result = run(["nvidia-smi"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def cuda_build_for(cuda_version: Optional[tuple]) -> Optional[str]:
    """The PyTorch CUDA build ("cu128") for a driver supporting `cuda_version` (12, 8); None if too old."""
    if cuda_version is None:
        return None
    return next((build for minimum, build in CUDA_BUILDS if tuple(cuda_version) >= minimum), None)


def detect_machine(platform: str, machine: Optional[str] = None,
                   run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Machine:
    """The accelerator of this machine: "cuda" when `nvidia-smi` runs (a working driver) and reports a
    CUDA version PyTorch builds exist for; "mps" on Apple Silicon; otherwise "cpu"."""
    machine = platform_module.machine() if machine is None else machine
    if platform != "macos":
        output = _nvidia_smi(run)
        if output is not None:
            match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", output)
            version = (int(match.group(1)), int(match.group(2))) if match else None
            build = cuda_build_for(version)
            gpu = re.search(r"\|\s+\d+\s+(NVIDIA[^|]*?)\s{2,}", output)
            detail = (gpu.group(1).strip() if gpu else "NVIDIA GPU") + (
                f", CUDA {version[0]}.{version[1]}" if version else "")
            if build:
                return Machine("cuda", detail, build)
            return Machine("cpu", f"{detail} (driver too old for PyTorch's CUDA builds)")
    if platform == "macos" and machine.lower() in ("arm64", "aarch64"):
        return Machine("mps", "Apple Silicon")
    return Machine("cpu", machine)


def torch_index_args(machine: Machine, environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """pip options choosing the torch build: an extra index (never replacing pip's configured ones)."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(TORCH_INDEX_ENV_VAR, "").strip()
    if chosen:
        return ["--extra-index-url", chosen]
    if machine.accelerator == "cuda" and machine.cuda_build:
        return ["--extra-index-url", PYTORCH_INDEX + machine.cuda_build]
    return []


_VERIFY = """
import importlib, json, sys
missing = []
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception as exc:
        missing.append(f"{name} ({type(exc).__name__}: {exc})"[:200])
info = {"python": sys.executable, "version": "%d.%d.%d" % sys.version_info[:3], "missing": missing,
        "torch": None, "device": None, "device_name": ""}
try:
    import torch
    info["torch"] = torch.__version__
    if torch.cuda.is_available():
        info["device"], info["device_name"] = "cuda", torch.cuda.get_device_name(0)
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        info["device"], info["device_name"] = "mps", "Apple GPU"
    else:
        info["device"] = "cpu"
except Exception:
    pass
print(json.dumps(info))
"""


@dataclass(frozen=True)
class EnvCheck:
    """What an encoder Python imports: its torch version and the device torch will use."""

    python: str
    version: str
    torch: Optional[str]
    device: Optional[str]
    device_name: str = ""
    missing: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and self.torch is not None


def check_python(runner: Runner, python: str) -> EnvCheck:
    """Run `python`, import every module the encoder needs, and report torch's device. Raises
    SetupError(NO_PYTHON) when it does not run."""
    output = runner.run([python, "-c", _VERIFY, json.dumps(list(ENCODER_MODULES))], "checking the encoder's Python",
                        env=tool_environment())
    return EnvCheck(**json.loads(output.strip().splitlines()[-1]))


def require_working(check: EnvCheck, what: str) -> EnvCheck:
    """`check` if the Python has everything; SetupError(VERIFY) naming what it lacks otherwise."""
    if not check.ok:
        lacking = "; ".join(check.missing) or "torch"
        raise SetupError(FailureKind.VERIFY, f"{what}: the Python {check.python} cannot import {lacking}: "
                                             "install them in it, or let the set-up build an environment")
    return check


def _check_space(folder: Path, machine: Machine) -> None:
    probe = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if probe is None:
        return
    free = shutil.disk_usage(probe).free
    needed = NEEDED_BYTES_CUDA if machine.accelerator == "cuda" or platform_name() == "linux" else NEEDED_BYTES_OTHER
    if free < needed:
        raise SetupError(FailureKind.NO_SPACE, (
            f"{WHAT}: only {free / 1e9:.1f} GB free on the disk of {folder}, about {needed / 1e9:.0f} GB are "
            "needed: free some space (or set QUICKSAM_DATA_DIR to a folder on another disk) and run the "
            "set-up again"))


def read_record(env_dir: Path) -> dict:
    """What the set-up recorded about the environment it built (empty when none)."""
    try:
        return json.loads((env_dir / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_record(env_dir: Path, check: EnvCheck, machine: Machine, base: Sequence[str]) -> None:
    record = {"requirements": list(TORCH_REQUIREMENTS + ENCODER_REQUIREMENTS), "machine": asdict(machine),
              "base_python": list(base), "check": asdict(check), "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    (env_dir / RECORD_NAME).write_text(json.dumps(record, indent=2), encoding="utf-8")


def is_up_to_date(runner: Runner, env_dir: Path) -> Optional[EnvCheck]:
    """The check of the environment at `env_dir` when it was built with today's pins and still works."""
    python = venv_python(env_dir)
    if read_record(env_dir).get("requirements") != list(TORCH_REQUIREMENTS + ENCODER_REQUIREMENTS) \
            or not python.exists():
        return None
    try:
        check = check_python(runner, str(python))
    except SetupError:
        return None
    return check if check.ok else None


def _install_packages(runner: Runner, python: str, machine: Machine, staging: Path, progress: Progress) -> None:
    pip = [python, "-m", "pip", "install", "--no-warn-script-location"]
    progress(0.08, "Updating pip in the new environment")
    runner.run([*pip, "--upgrade", "pip"], WHAT, staging.parent)
    progress(0.12, f"Installing PyTorch ({machine.accelerator}); this is the long step")
    runner.run([*pip, *torch_index_args(machine), *TORCH_REQUIREMENTS], WHAT, staging.parent)
    progress(0.65, "Installing SAM 2, Segment Anything, rasterio, shapely, pyogrio and ONNX")
    runner.run([*pip, "--no-build-isolation", *ENCODER_REQUIREMENTS], WHAT, staging.parent,
               env=tool_environment(extra=SAM2_BUILD_ENV))


def build_encoder_env(runner: Runner, base: Sequence[str], env_dir: Path, machine: Machine,
                      progress: Progress) -> EnvCheck:
    """Build (or rebuild) the encoder environment at `env_dir` from the Python command `base`.

    The previous environment stays in use until the new one works; a cancel (Cancelled) or a failure
    (SetupError) removes the staging folder and changes nothing else."""
    staging = staging_of(env_dir)
    try:
        remove_tree(staging)
        env_dir.parent.mkdir(parents=True, exist_ok=True)
        _check_space(env_dir.parent, machine)
        progress(0.02, "Creating the environment")
        runner.run([*base, "-m", "venv", str(staging)], WHAT, staging.parent)
        _install_packages(runner, str(venv_python(staging)), machine, staging, progress)
        progress(0.9, "Checking the environment")
        require_working(check_python(runner, str(venv_python(staging))), WHAT)
        runner.check_cancelled()
        swap_in(staging, env_dir)
        check = require_working(check_python(runner, str(venv_python(env_dir))), WHAT)
        _write_record(env_dir, check, machine, base)
        progress(1.0, f"Encoder environment ready (torch {check.torch}, {check.device})")
        return check
    except OSError as exc:
        kind = FailureKind.READ_ONLY if isinstance(exc, PermissionError) or exc.errno in (13, 30) else \
            FailureKind.NO_SPACE if exc.errno == 28 else FailureKind.OTHER
        raise SetupError(kind, f"{WHAT}: cannot write to {env_dir.parent} ({exc.strerror or exc}): make it "
                               "writable (or set QUICKSAM_DATA_DIR) and run the set-up again") from exc
    finally:
        remove_tree(staging)
