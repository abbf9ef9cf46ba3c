"""The frames of a series store, opened as feature stores (core/series.py, docs/time-series.md; no QGIS)."""

from __future__ import annotations

from typing import List

from .errors import StoreError
from .series import FrameRef, frame_path, read_series
from .store import FeatureStore


def series_frames(root: FeatureStore) -> List[FrameRef]:
    """The frames of the store `root` in date order; [] for a store that is not a series. StoreError (one line)
    when its series.json is damaged."""
    series = read_series(root.root)
    return list(series.frames) if series else []


def frame_store(root: FeatureStore, frame: FrameRef) -> FeatureStore:
    """The store of `frame` of the series `root` (`root` itself for frame 0). StoreError naming the frame when
    its folder is missing or is not a store of the same pixel grid, tile grid and model as frame 0's."""
    if frame.folder == ".":
        return root
    try:
        store = FeatureStore.open(frame_path(root.root, frame))
    except StoreError as exc:
        raise StoreError(f"{frame.named} of series '{root.root}' cannot be opened ({exc}); "
                         "run the same quicksam encode again to finish the series") from None
    problem = _frame_mismatch(root, store)
    if problem:
        raise StoreError(f"{frame.named} of series '{root.root}' {problem}; encode the "
                         "series again into a new folder")
    return store


def _frame_mismatch(root: FeatureStore, frame: FeatureStore) -> str:
    """What makes `frame` not a frame of the series `root` (another grid, tile grid, model, weights), or ''."""
    a, b = root.manifest, frame.manifest
    pairs = [("pixel grid", a.pixel_grid, b.pixel_grid), ("CRS", a.raster.crs_wkt, b.raster.crs_wkt),
             ("tile grid", a.grid.tiles, b.grid.tiles), ("model", a.model.name, b.model.name),
             ("weights", a.checkpoint.sha256, b.checkpoint.sha256)]
    for label, mine, theirs in pairs:
        if mine != theirs:
            return f"has another {label} than frame 0"
    return ""
