"""All QuickSAM settings, typed and with defaults, under the QgsSettings prefix "quicksam/".

QGIS layer only: the QGIS-free core never imports this module; it gets what it needs as arguments.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, List, Optional, Type, TypeVar

from qgis.core import QgsSettings
from qgis.PyQt.QtCore import QStandardPaths

from . import PLUGIN_DIR

PREFIX = "quicksam/"
#: Environment variable naming the encoder's Python when the setting is empty.
PYTHON_ENV_VAR = "QUICKSAM_PYTHON"

T = TypeVar("T", str, int, float, bool)


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One value stored at `PREFIX + key`; reading it always returns a `kind`, never a QVariant."""

    key: str
    kind: Type[T]
    default: T
    description: str

    @property
    def full_key(self) -> str:
        return PREFIX + self.key

    def value(self) -> T:
        raw = QgsSettings().value(self.full_key, self.default)
        try:
            return self._coerce(raw)
        except (TypeError, ValueError):
            # A hand-edited or stale ini entry must not break the plugin: fall back to the default.
            return self.default

    def set_value(self, value: T) -> None:
        QgsSettings().setValue(self.full_key, self._coerce(value))

    def reset(self) -> None:
        QgsSettings().remove(self.full_key)

    def _coerce(self, raw: object) -> T:
        if raw is None:
            return self.default
        if self.kind is bool and isinstance(raw, str):
            # QSettings ini files store booleans as the strings "true" / "false".
            return raw.strip().lower() in ("true", "1", "yes", "on")  # type: ignore[return-value]
        return self.kind(raw)


PYTHON_EXECUTABLE: Setting[str] = Setting(
    "python_executable", str, "",
    "Python interpreter that runs the encoder (needs torch and sam2); empty = found automatically")
SETUP_ENCODER_PYTHON: Setting[str] = Setting(
    "setup/encoder_python", str, "",
    "The encoder's Python recorded by QuickSAM > Set up… (its environment, or an existing Python it checked)")
STORE_FOLDER: Setting[str] = Setting(
    "encode/store_folder", str, "",
    "Folder for the feature stores Encode raster writes with its default output (one per raster); empty = "
    "beside the raster, or a QuickSAM folder in the user's documents when the raster's folder is not writable "
    "or the raster is not a plain file")


# -- the Segment dock (options are remembered between sessions) --------------------------------------
KNOWN_STORES: Setting[str] = Setting(
    "stores", str, "[]", "Feature stores the Segment dock has used (JSON list of folders), searched for rasters")
MASK_MODE: Setting[str] = Setting(
    "segment/mask_mode", str, "single", "Mask output: single, or of three candidates best, largest, smallest, all")
MIN_AREA_PIXELS: Setting[int] = Setting(
    "segment/min_area_pixels", int, 0, "Parts and holes smaller than this many raster pixels are dropped")
SIMPLIFY_TOLERANCE: Setting[float] = Setting(
    "segment/simplify_tolerance", float, 0.0, "Polygon simplification tolerance, in the raster CRS's map units")
KEEP_HOLES: Setting[bool] = Setting(
    "segment/keep_holes", bool, True, "Keep holes in polygons")
KEEP_PROMPTS: Setting[bool] = Setting(
    "segment/keep_prompts", bool, False, "Save each object's prompts in a point layer (prompts.gpkg in the store)")
RANDOM_COLOURS: Setting[bool] = Setting(
    "segment/random_colours", bool, True, "Colour each object of the output layer differently (from its id)")
HOVER_PREVIEW: Setting[bool] = Setting(
    "segment/hover_preview", bool, True, "Preview the mask under the cursor while the Segment tool is active")
HOVER_DELAY_MS: Setting[int] = Setting(
    "segment/hover_delay_ms", int, 200, "Rest of the cursor before the hover preview is decoded, in milliseconds")
FULL_RESOLUTION_ONLY: Setting[bool] = Setting(
    "segment/full_resolution_only", bool, False,
    "Decode at the finest level of a multi-scale store only; prompts no tile of it holds are offered an on-demand tile")
REFINE_EDGES: Setting[bool] = Setting(
    "segment/refine_edges", bool, False,
    "Decode the edges of an object found on a coarser level again on the finest level's tiles (docs/levels.md)")
SEGMENT_DOCK_OPEN: Setting[bool] = Setting(
    "segment/dock_open", bool, False, "The Segment dock was open when QGIS closed: it opens again when QGIS starts")

ALL_SETTINGS = (PYTHON_EXECUTABLE, KNOWN_STORES, MASK_MODE, MIN_AREA_PIXELS, SIMPLIFY_TOLERANCE, KEEP_HOLES,
                KEEP_PROMPTS, RANDOM_COLOURS, HOVER_PREVIEW, HOVER_DELAY_MS, SETUP_ENCODER_PYTHON, STORE_FOLDER)
ALL_SETTINGS += (SEGMENT_DOCK_OPEN, FULL_RESOLUTION_ONLY, REFINE_EDGES)
#: How many stores the store list remembers (most recent first).
KNOWN_STORES_LIMIT = 50


def known_stores() -> List[str]:
    """The store folders of KNOWN_STORES, most recently used first (a damaged entry reads as empty)."""
    try:
        value = json.loads(KNOWN_STORES.value())
    except ValueError:
        return []
    return [str(item) for item in value if isinstance(item, str)] if isinstance(value, list) else []


def remember_store(path: str) -> None:
    """Put a store folder first in KNOWN_STORES."""
    stores = [path] + [item for item in known_stores() if item != path]
    KNOWN_STORES.set_value(json.dumps(stores[:KNOWN_STORES_LIMIT]))


def encode_store_folder() -> Path:
    """STORE_FOLDER, or when it is empty `<documents>/QuickSAM` (the home folder when the platform names no
    documents folder): where default stores go that cannot go beside their raster. Not created here."""
    configured = STORE_FOLDER.value().strip()
    if configured:
        return Path(configured).expanduser()
    documents = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    return Path(documents or Path.home()) / "QuickSAM"


def plugin_venv_python(plugin_dir: Path) -> Path:
    """Where `make` puts the encoder's interpreter inside a plugin folder."""
    if os.name == "nt":
        return plugin_dir / ".venv" / "Scripts" / "python.exe"
    return plugin_dir / ".venv" / "bin" / "python"


def encoder_python() -> str:
    """The Python interpreter that runs the encoder process ("" when none can be found).

    In this order: the `python_executable` setting; the QUICKSAM_PYTHON environment variable; the
    Python recorded by the set-up (`setup/encoder_python`) when it still exists; in a development
    checkout (a git work tree) only, its `.venv`; the running interpreter when it is a Python (inside
    QGIS it is the QGIS executable, which cannot run `-m`); `python3` on PATH. An explicit choice
    (setting or variable) is returned even if it does not exist, so that the error names it instead of
    silently using another.
    """
    configured = PYTHON_EXECUTABLE.value().strip()
    if configured:
        return configured
    from_env = os.environ.get(PYTHON_ENV_VAR, "").strip()
    if from_env:
        return from_env
    from_setup = SETUP_ENCODER_PYTHON.value().strip()
    if from_setup and Path(from_setup).exists():
        return from_setup
    venv_python = plugin_venv_python(PLUGIN_DIR)
    if (PLUGIN_DIR / ".git").exists() and venv_python.exists():  # a development checkout, never a zip install
        return str(venv_python)
    if sys.executable and Path(sys.executable).name.lower().startswith("python"):
        return sys.executable
    found: Optional[str] = shutil.which("python3")
    return found or ""
