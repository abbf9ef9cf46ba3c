"""Where the set-up puts things: folder paths only (nothing is created here).

- the interactive runtime: `<QGIS profile>/QuickSAM/runtime/py<major><minor>` (one folder per Python
  version, so that a QGIS upgraded to a new Python never loads binaries built for the old one);
- the encoder environment and the set-up's logs: the user data folder
  (Windows `%LOCALAPPDATA%\\QuickSAM`, macOS `~/Library/Application Support/QuickSAM`, Linux
  `$XDG_DATA_HOME/quicksam` or `~/.local/share/quicksam`; `QUICKSAM_DATA_DIR` overrides all).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Tuple

DATA_DIR_ENV_VAR = "QUICKSAM_DATA_DIR"
RUNTIME_PARENT = Path("QuickSAM") / "runtime"
ENCODER_ENV_NAME = "encoder-env"
LOGS_NAME = "logs"
#: Suffixes of the folders a running install builds in and moves aside; removed when it ends.
STAGING_SUFFIX = ".staging"
OLD_SUFFIX = ".old"


def platform_name(os_name: Optional[str] = None, sys_platform: Optional[str] = None) -> str:
    """"windows", "macos" or "linux" (any other POSIX counts as linux)."""
    os_name = os.name if os_name is None else os_name
    sys_platform = sys.platform if sys_platform is None else sys_platform
    if os_name == "nt":
        return "windows"
    return "macos" if sys_platform == "darwin" else "linux"


def data_dir(environ: Optional[Mapping[str, str]] = None, home: Optional[Path] = None,
             platform: Optional[str] = None) -> Path:
    """The user data folder of QuickSAM (see the module docstring); not created."""
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else home
    platform = platform_name() if platform is None else platform
    override = environ.get(DATA_DIR_ENV_VAR, "").strip()
    if override:
        return Path(override).expanduser()
    if platform == "windows":
        base = environ.get("LOCALAPPDATA", "").strip()
        return (Path(base) if base else home / "AppData" / "Local") / "QuickSAM"
    if platform == "macos":
        return home / "Library" / "Application Support" / "QuickSAM"
    xdg = environ.get("XDG_DATA_HOME", "").strip()
    return (Path(xdg) if xdg else home / ".local" / "share") / "quicksam"


def python_tag(version: Tuple[int, int]) -> str:
    """"py311" for (3, 11)."""
    return f"py{version[0]}{version[1]}"


def runtime_dir(profile_dir: Path, version: Tuple[int, int] = sys.version_info[:2]) -> Path:
    """The interactive runtime folder for QGIS's Python `version`, inside the QGIS profile folder
    `profile_dir` (`QgsApplication.qgisSettingsDirPath()`)."""
    return Path(profile_dir) / RUNTIME_PARENT / python_tag(version)


def venv_python(env_dir: Path, platform: Optional[str] = None) -> Path:
    """The interpreter of the venv `env_dir`."""
    platform = platform_name() if platform is None else platform
    if platform == "windows":
        return Path(env_dir) / "Scripts" / "python.exe"
    return Path(env_dir) / "bin" / "python"


@dataclass(frozen=True)
class Locations:
    """Every folder the set-up uses, for one QGIS profile and one data folder."""

    profile_dir: Path
    data: Path
    qgis_version: Tuple[int, int] = sys.version_info[:2]

    @classmethod
    def for_profile(cls, profile_dir: Path, qgis_version: Tuple[int, int] = sys.version_info[:2]) -> Locations:
        return cls(Path(profile_dir), data_dir(), qgis_version)

    @property
    def runtime(self) -> Path:
        return runtime_dir(self.profile_dir, self.qgis_version)

    @property
    def runtime_root(self) -> Path:
        """The folder holding the runtimes of every Python version (what "remove all" deletes)."""
        return self.profile_dir / RUNTIME_PARENT

    @property
    def encoder_env(self) -> Path:
        return self.data / ENCODER_ENV_NAME

    @property
    def logs(self) -> Path:
        return self.data / LOGS_NAME


def staging_of(folder: Path) -> Path:
    return folder.with_name(folder.name + STAGING_SUFFIX)


def old_of(folder: Path) -> Path:
    return folder.with_name(folder.name + OLD_SUFFIX)
