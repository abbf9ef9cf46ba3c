"""The levels of a multi-scale store, read from its root (core/levels.py, docs/levels.md; no QGIS).

The root store folder is its finest level; its manifest's `levels` lists every level (the root's own
first, folder "."), each other level a complete store in `levels/x<factor>/`. A store without `levels`
(single level, or written before levels existed) is one level: itself.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List

from .errors import StoreError
from .levels import LevelRef, same_factor
from .manifest import FORMAT_VERSION
from .store import FeatureStore


def level_stores(root: FeatureStore) -> List[FeatureStore]:
    """Every level of the store `root`, finest (smallest ground resolution) first; `root` itself among
    them. StoreError naming the level when a listed level folder is missing or not a store of the same
    raster, model and weights (it is then damaged: the message says how to encode it again)."""
    stores = [root]
    for ref in root.manifest.levels:
        if ref.folder == ".":
            continue
        folder = root.root / ref.folder
        try:
            level = FeatureStore.open(folder)
        except StoreError as exc:
            raise StoreError(f"level {ref.folder} of store '{root.root}' cannot be opened ({exc}); encode that "
                             "level again (quicksam encode with the same --levels)") from None
        problem = _level_mismatch(root, level)
        if problem:
            raise StoreError(f"level {ref.folder} of store '{root.root}' {problem}; delete that folder and encode "
                             "the level again (quicksam encode with the same --levels)")
        stores.append(level)
    return sorted(stores, key=lambda store: store.manifest.pixel_grid.factor)


def _level_mismatch(root: FeatureStore, level: FeatureStore) -> str:
    """What makes `level` not a level of `root` (another raster, model, weights, tile size), or ''."""
    a, b = root.manifest, level.manifest
    pairs = [("raster", a.raster.fingerprint, b.raster.fingerprint), ("model", a.model.name, b.model.name),
             ("weights", a.checkpoint.sha256, b.checkpoint.sha256), ("tile size", a.grid.tile_size, b.grid.tile_size),
             ("bands", a.preprocessing.bands, b.preprocessing.bands)]
    for label, mine, theirs in pairs:
        if mine != theirs and theirs is not None and mine is not None:
            return f"has another {label} than the store ({theirs!r}, not {mine!r})"
    return ""


def register_level(root: FeatureStore, folder: str, factor: float) -> None:
    """List the level in `folder` (relative to the root, `levels/x4`) of `factor` (its pixel over the
    raster's) in the root manifest, written atomically as format version 3 (a store of version 1 or 2 that
    gains a level becomes version 3). The caller holds the root's lock. Nothing is written when it is
    listed already."""
    manifest = root.manifest
    refs = list(manifest.levels) or [LevelRef(".", manifest.pixel_grid.factor)]
    if any(ref.folder == folder for ref in refs):
        return
    if any(same_factor(ref.factor, factor) for ref in refs):
        raise StoreError(f"store '{root.root}' already has a level of {factor:g}x the raster's pixel; "
                         "choose other --levels")
    refs.append(LevelRef(folder, factor))
    root.update_manifest(dataclasses.replace(manifest, levels=tuple(refs),
                                             format_version=max(manifest.format_version, FORMAT_VERSION)))


def level_folder_path(root: Path, folder: str) -> Path:
    """The folder of a level, `folder` relative to the store `root` ("." is the root itself)."""
    return Path(root) if folder == "." else Path(root) / folder


def level_folder_of(root: FeatureStore, level: FeatureStore) -> str:
    """The folder of `level` relative to the store `root` ("." for the root itself, `levels/x4`)."""
    return "." if level.root == root.root else level.root.relative_to(root.root).as_posix()


__all__ = ["level_folder_of", "level_folder_path", "level_stores", "register_level"]
