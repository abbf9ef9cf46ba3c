"""Finding interpreters: the Python that belongs to the running QGIS, and one that suits torch.

`qgis_python_candidates` is pure path logic (tested with fake folder layouts of each platform); the
callers check which candidate exists and, where the name does not say it, ask it for its version.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import PurePath, PurePosixPath, PureWindowsPath
from typing import Callable, List, Optional, Sequence, Tuple

from .commands import tool_environment
from .failures import FailureKind, SetupError

Version = Tuple[int, int]
#: Python versions the pinned torch (requirements-torch.txt) ships wheels for.
TORCH_PYTHONS: Tuple[Version, ...] = ((3, 13), (3, 12), (3, 11), (3, 10))


def _path(text: str, platform: str) -> PurePath:
    return PureWindowsPath(text) if platform == "windows" else PurePosixPath(text)


def _windows_candidates(prefix: PurePath, exe: PurePath, version: Version) -> List[PurePath]:
    """OSGeo4W (`C:/OSGeo4W/apps/qgis`, Python in `apps/Python312`), the standalone installer (the same
    layout under `C:/Program Files/QGIS 3.x`) and conda (`<env>/Library` prefix, `<env>/python.exe`)."""
    folder = f"Python{version[0]}{version[1]}"
    found: List[PurePath] = []
    for root in (prefix.parent.parent, exe.parent.parent):  # .../apps/qgis -> root; .../bin/qgis-bin.exe -> root
        found += [root / "apps" / folder / "python.exe", root / "bin" / "python.exe"]
    found += [prefix.parent / "python.exe", prefix / "python.exe"]  # conda: <env>/Library is the prefix
    return found


def _macos_candidates(prefix: PurePath, exe: PurePath, version: Version) -> List[PurePath]:
    """QGIS.app bundles: `Contents/MacOS/bin/python3` (older builds) or the bundled framework."""
    found: List[PurePath] = []
    for start in (exe, prefix):
        contents = next((p for p in (start, *start.parents) if p.name == "Contents"), None)
        if contents is None:
            continue
        dotted = f"{version[0]}.{version[1]}"
        found += [contents / "MacOS" / "bin" / f"python{dotted}", contents / "MacOS" / "bin" / "python3",
                  contents / "Frameworks" / "Python.framework" / "Versions" / dotted / "bin" / f"python{dotted}",
                  contents / "Frameworks" / "Python.framework" / "Versions" / dotted / "bin" / "python3",
                  contents / "Frameworks" / "bin" / "python3"]
    found += [prefix / "bin" / f"python{version[0]}.{version[1]}", prefix / "bin" / "python3"]  # conda
    return found


def _linux_candidates(prefix: PurePath, version: Version) -> List[PurePath]:
    """Distribution packages (`/usr`), conda (`<env>`) and Flatpak (`/app`): `<prefix>/bin/python3.X`."""
    dotted = f"{version[0]}.{version[1]}"
    found = [prefix / "bin" / f"python{dotted}", prefix / "bin" / "python3", prefix / "bin" / "python"]
    if str(prefix) != "/usr":
        found += [PurePosixPath("/usr/bin") / f"python{dotted}", PurePosixPath("/usr/bin/python3")]
    return found


def qgis_python_candidates(prefix: str, executable: str, version: Version, platform: str) -> List[PurePath]:
    """Where the Python of a QGIS installed at `prefix` (`QgsApplication.prefixPath()`), run from
    `executable` (`sys.executable`), may be, most likely first. When `executable` is itself a Python
    (QGIS's Python running a script, or a test) it comes first."""
    exe = _path(executable, platform)
    base = _path(prefix or str(exe.parent.parent), platform)
    found: List[PurePath] = [exe] if exe.name.lower().startswith("python") else []
    if platform == "windows":
        found += _windows_candidates(base, exe, version)
    elif platform == "macos":
        found += _macos_candidates(base, exe, version)
    else:
        found += _linux_candidates(base, version)
    unique: List[PurePath] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


_PROBE = ("import json, sys, importlib.util as u; print(json.dumps({'version': list(sys.version_info[:2]), "
          "'executable': sys.executable, 'pip': u.find_spec('pip') is not None, "
          "'venv': u.find_spec('venv') is not None and u.find_spec('ensurepip') is not None}))")


@dataclass(frozen=True)
class PythonInfo:
    """What a probe of an interpreter found."""

    path: str
    version: Version
    has_pip: bool
    has_venv: bool


def probe_python(command: Sequence[str], timeout: float = 60.0) -> Optional[PythonInfo]:
    """Ask an interpreter (a path, or a launcher command like `py -3.12`) what it is; None when it does
    not run."""
    try:
        result = subprocess.run([*command, "-c", _PROBE], capture_output=True, text=True, timeout=timeout,
                                env=tool_environment(), stdin=subprocess.DEVNULL,
                                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        info = json.loads(result.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return PythonInfo(str(info["executable"]), tuple(info["version"]), bool(info["pip"]), bool(info["venv"]))


def find_qgis_python(prefix: str, executable: str, version: Version, platform: str,
                     probe: Callable[[Sequence[str]], Optional[PythonInfo]] = probe_python) -> PythonInfo:
    """The interpreter of the running QGIS: the first candidate that runs and has QGIS's Python
    `version`. Raises SetupError(NO_PYTHON) when none does."""
    for candidate in qgis_python_candidates(prefix, executable, version, platform):
        info = probe([str(candidate)])
        if info is not None and info.version == tuple(version):
            return info
    raise SetupError(FailureKind.NO_PYTHON, (
        f"finding QGIS's Python: no Python {version[0]}.{version[1]} found beside QGIS (prefix {prefix}): "
        "reinstall QGIS with its Python, or report your QGIS installation to QuickSAM"))


def torch_python_commands(platform: str, which: Callable[[str], Optional[str]] = shutil.which) -> List[List[str]]:
    """Interpreters on this machine that may suit torch, newest first: `py -3.X` (Windows launcher),
    then `python3.X` and `python3` on PATH."""
    commands: List[List[str]] = []
    if platform == "windows" and which("py"):
        commands += [["py", f"-{major}.{minor}"] for major, minor in TORCH_PYTHONS]
    for name in [f"python{major}.{minor}" for major, minor in TORCH_PYTHONS] + ["python3", "python"]:
        found = which(name)
        if found and [found] not in commands:
            commands.append([found])
    return commands


def suits_torch(info: Optional[PythonInfo]) -> bool:
    return info is not None and tuple(info.version) in TORCH_PYTHONS and info.has_venv


def find_torch_python(preferred: Sequence[str], platform: str,
                      probe: Callable[[Sequence[str]], Optional[PythonInfo]] = probe_python,
                      which: Callable[[str], Optional[str]] = shutil.which) -> PythonInfo:
    """A Python to build the encoder environment from: `preferred` (QGIS's Python, or one the user chose)
    when its version suits torch and it has venv, else the newest suitable one found on this machine.
    Raises SetupError(NO_PYTHON) when there is none."""
    tried: List[str] = []
    for command in ([list(preferred)] if preferred else []) + torch_python_commands(platform, which):
        info = probe(command)
        tried.append(" ".join(command) + (f" ({info.version[0]}.{info.version[1]})" if info else ""))
        if suits_torch(info):
            return info
    versions = ", ".join(f"{a}.{b}" for a, b in reversed(TORCH_PYTHONS))
    raise SetupError(FailureKind.NO_PYTHON, (
        f"creating the encoder environment: no suitable Python found (needs {versions} with venv; tried "
        f"{'; '.join(tried) or 'nothing'}): install Python 3.12 (python.org, or your package manager's "
        "python3-venv) and run the set-up again, or choose an existing Python"))

