"""Which feature store belongs to a raster, and plain words when a chosen one does not.

A store belongs to a raster when the raster fingerprint recorded in its manifest equals the raster's
own (content-based: a moved, renamed or copied raster still matches, a rewritten one does not).

Where a raster layer's store is looked for, in order:
  1. the layer custom property `quicksam/store` (saved with the project);
  2. `<raster stem>*.qsam` folders next to the raster, then any other store folder next to it;
  3. the user's store list (settings.KNOWN_STORES: every store the dock has used).

No QGIS here: the layer side (the layer property, the user's store list) is ui/layer_stores.py.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

from ..core.errors import QuickSamError, StoreError
from ..core.store import MANIFEST, FeatureStore
from .raster_files import gdal_open_quietly, raster_fingerprint_gdal

STORE_PROPERTY = "quicksam/store"
STORE_SUFFIX = ".qsam"

FOUND_BY_PROPERTY = "layer property"
FOUND_NEXT_TO_RASTER = "next to the raster"
FOUND_IN_STORE_LIST = "store list"
FOUND_CHOSEN = "chosen"

_fingerprints: Dict[Tuple[str, int, int], str] = {}
_fingerprints_lock = threading.Lock()


@dataclass(frozen=True)
class StoreLookup:
    """The store found for a raster (and how), or why there is none: `problem` is a plain sentence."""

    store: Optional[FeatureStore] = None
    found_by: str = ""
    problem: Optional[str] = None


def raster_fingerprint_cached(raster_path: Union[str, Path]) -> str:
    """The raster's content fingerprint (as the encoder records it), remembered per file version."""
    path = Path(raster_path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _fingerprints_lock:
        if key in _fingerprints:
            return _fingerprints[key]
    fingerprint = raster_fingerprint_gdal(str(path))
    with _fingerprints_lock:
        _fingerprints[key] = fingerprint
    return fingerprint


def _is_raster_file(path: Path) -> bool:
    """True when GDAL opens `path` as a raster (whether or not it could be encoded as is)."""
    return gdal_open_quietly(str(path)) is not None


def _stored_raster_fingerprint(store: FeatureStore) -> Optional[str]:
    return store.manifest.raster.fingerprint


def check_store_matches_layer(store: Union[FeatureStore, str, Path], raster_path: Union[str, Path]
                              ) -> Optional[str]:
    """None when `store` (a FeatureStore or a path) holds features of the raster at `raster_path`;
    otherwise one plain sentence saying what is wrong and what to do."""
    raster_path = Path(raster_path)
    if not isinstance(store, FeatureStore):
        path = Path(store)
        if path.is_file() and _is_raster_file(path):
            same = path.exists() and raster_path.exists() and path.resolve() == raster_path.resolve()
            what = "this layer's raster" if same else "a raster"
            return (f"'{path.name}' is {what}, not a feature store: encode it first (Encode…), then choose "
                    "the folder the encoder wrote")
        try:
            store = FeatureStore.open(path)
        except StoreError as exc:
            return str(exc)
    try:
        fingerprint = raster_fingerprint_cached(raster_path)
    except (OSError, QuickSamError) as exc:
        return f"cannot read the raster '{raster_path}' to check the store ({exc})"
    if _stored_raster_fingerprint(store) == fingerprint:
        return None
    source = Path(store.manifest.raster.path).name
    return (f"the store '{store.root.name}' was made from '{source}', not from '{raster_path.name}' (the pixels "
            "or the georeference differ): choose this raster's store, or encode the raster (Encode…)")


def _store_folders_next_to(raster_path: Path) -> Iterator[Path]:
    folder = raster_path.parent
    if not folder.is_dir():
        return
    named = sorted(folder.glob(f"{raster_path.stem}*{STORE_SUFFIX}"))
    yield from named
    for child in sorted(folder.iterdir()):
        if child not in named and child.is_dir() and (child / MANIFEST).is_file():
            yield child


def candidate_stores(raster_path: Union[str, Path], property_value: Optional[str] = None,
                     known_stores: Sequence[str] = ()) -> Iterator[Tuple[Path, str]]:
    """Store folders worth checking for `raster_path`, in search order, with how each was found."""
    seen = set()

    def fresh(path: Path) -> bool:
        key = str(path.resolve()) if path.exists() else str(path)
        if key in seen:
            return False
        seen.add(key)
        return True

    if property_value and fresh(Path(property_value)):
        yield Path(property_value), FOUND_BY_PROPERTY
    for path in _store_folders_next_to(Path(raster_path)):
        if fresh(path):
            yield path, FOUND_NEXT_TO_RASTER
    for known in known_stores:
        if known and fresh(Path(known)):
            yield Path(known), FOUND_IN_STORE_LIST


def find_store(raster_path: Union[str, Path], property_value: Optional[str] = None,
               known_stores: Sequence[str] = ()) -> StoreLookup:
    """The first store matching the raster (see the module docstring), or a StoreLookup with a problem."""
    raster_path = Path(raster_path)
    try:
        fingerprint = raster_fingerprint_cached(raster_path)
    except (OSError, QuickSamError) as exc:
        return StoreLookup(problem=f"cannot read the raster '{raster_path}' ({exc})")
    property_problem = None
    for path, found_by in candidate_stores(raster_path, property_value, known_stores):
        try:
            store = FeatureStore.open(path)
        except StoreError as exc:
            if found_by == FOUND_BY_PROPERTY:
                property_problem = str(exc)
            continue
        if _stored_raster_fingerprint(store) == fingerprint:
            return StoreLookup(store, found_by)
        if found_by == FOUND_BY_PROPERTY:
            property_problem = check_store_matches_layer(store, raster_path)
    if property_problem:
        return StoreLookup(problem=f"this layer's saved store no longer fits: {property_problem}")
    return StoreLookup(problem=f"no feature store found for '{raster_path.name}': encode it (Encode…), or "
                               "choose its store folder")
