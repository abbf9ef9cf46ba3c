"""Run `qgis_process.bin` with QuickSAM installed as a plugin, isolated from the user's profile.

Used by the tests and the benchmarks. Debian's `/usr/bin/qgis_process` wrapper is broken on
QGIS 3.22 ("Command --noversioncheck not known!"); the `.bin` works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"


def qgis_process_env(workdir: Path) -> Dict[str, str]:
    """Environment with a private HOME/profile, the plugin folder linked as `quicksam`, and the
    venv's packages visible to QGIS's Python. Enables the plugin once."""
    plugins = workdir / "plugins"
    home = workdir / "home"
    plugins.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    link = plugins / "quicksam"
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    # never inherit another QGIS session's settings (e.g. pytest-qgis's): the profile must be private
    env = {k: v for k, v in os.environ.items() if k not in ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_OPTIONS_PATH")}
    env.update({
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home / "runtime"),
        "QGIS_PLUGINPATH": str(plugins),
        "PYTHONPATH": os.pathsep.join(filter(None, [sysconfig.get_paths()["purelib"], env.get("PYTHONPATH")])),
        "QT_QPA_PLATFORM": "offscreen",
        # the encoder process started from inside QGIS must be this venv's Python
        "QUICKSAM_PYTHON": sys.executable,
    })
    (home / "runtime").mkdir(mode=0o700, exist_ok=True)
    marker = workdir / ".quicksam-enabled"
    if not marker.exists():
        result = run_qgis_process(["plugins", "enable", "quicksam"], env)
        if result.returncode != 0 and "already enabled" not in result.stdout + result.stderr:
            raise RuntimeError(f"qgis_process plugins enable quicksam failed:\n{result.stdout}\n{result.stderr}")
        marker.touch()
    return env


def run_qgis_process(args: List[str], env: Dict[str, str], check: bool = False,
                     timeout: Optional[float] = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"qgis_process {' '.join(args)} failed ({result.returncode}):\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result
