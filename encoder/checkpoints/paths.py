"""Where checkpoints, their hashes and the registry live, and the small JSON files written there."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, Optional

#: Serialises read-modify-write of the small JSON files within one process.
JSON_LOCK = threading.Lock()


def _env_dir(variable: str) -> Optional[Path]:
    """The directory named by an environment variable, if set to an absolute path."""
    value = os.environ.get(variable, "")
    if value and Path(value).expanduser().is_absolute():
        return Path(value).expanduser()
    return None


def cache_dir() -> Path:
    """The per-user cache directory of QuickSAM (`QUICKSAM_CACHE_DIR` overrides it)."""
    override = os.environ.get("QUICKSAM_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = _env_dir("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
        return base / "quicksam" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "quicksam"
    return (_env_dir("XDG_CACHE_HOME") or Path.home() / ".cache") / "quicksam"


def config_dir() -> Path:
    """The per-user configuration directory of QuickSAM (`QUICKSAM_CONFIG_DIR` overrides it)."""
    override = os.environ.get("QUICKSAM_CONFIG_DIR")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        return (_env_dir("APPDATA") or Path.home() / "AppData" / "Roaming") / "quicksam"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "quicksam"
    return (_env_dir("XDG_CONFIG_HOME") or Path.home() / ".config") / "quicksam"


def checkpoints_dir() -> Path:
    """Where downloaded checkpoints are kept: `cache_dir() / "checkpoints"`."""
    return cache_dir() / "checkpoints"


def registry_path() -> Path:
    """The JSON file listing custom checkpoints: `config_dir() / "checkpoints.json"`."""
    return config_dir() / "checkpoints.json"


def hash_memo_path() -> Path:
    return checkpoints_dir() / "hashes.json"

def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def load_json(path: Path) -> Any:
    """The JSON value in the file at `path`, or None when there is no such file. OSError when it cannot be
    read, ValueError when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
