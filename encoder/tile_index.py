"""The store's tile index: tile footprints as a GeoPackage polygon layer (pyogrio; no QGIS, no osgeo).

Footprints are the valid part of each tile, in the raster's CRS, computed from the raster's
geotransform, so a user sees exactly where each tile lies and whether it is done.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..core.geo import window_outline
from ..core.logger import LOGGER
from ..core.store import MANIFEST, TILE_INDEX, TILE_LOG, FeatureStore
from ..core.store_levels import level_folder_of

LAYER_NAME = "tiles"


#: GeoPackage 1.2: the GDAL in pip's pyogrio wheel writes 1.4 by default, which older GDALs (QGIS 3.22's
#: 3.6 among them) open with a "may only be partially supported" warning each time.
GPKG_DATASET_OPTIONS = {"VERSION": "1.2"}


def write_tile_index(store: FeatureStore, levels: Optional[Sequence[FeatureStore]] = None) -> Path:
    """(Re)write STORE/tile_index.gpkg from the manifest and the tile log; returns its path.

    With `levels` (a multi-scale store's levels, `store` the root among them) the root's index holds the
    tiles of every level, each with its level's folder, factor and ground resolution. Written with pyogrio
    (a declared dependency; the headless encoder has no `osgeo`) to a temporary name and renamed into place.
    Polygons are in the raster's CRS (`store.crs_wkt`).
    """
    import shapely

    with warnings.catch_warnings():
        # pyogrio tries pyproj if installed; Debian's pyproj seen from a venv warns that it has no PROJ
        # data. We never use pyproj: the CRS goes to GDAL as WKT.
        warnings.simplefilter("ignore", UserWarning)
        import pyogrio.raw

    path = store.root / TILE_INDEX
    tmp = store.root / f"tile_index.tmp.{os.getpid()}.gpkg"
    if tmp.exists():
        tmp.unlink()
    rows = [row for level in (levels or [store]) for row in _index_rows(store, level)]
    geometry = shapely.to_wkb([shapely.Polygon(row.pop("outline")) for row in rows])
    fields = list(INDEX_FIELDS)
    field_data = [np.array([row[name] for row in rows], dtype=kind) for name, kind in INDEX_FIELDS.items()]
    pyogrio.raw.write(str(tmp), geometry, field_data, fields, layer=LAYER_NAME, driver="GPKG",
                      geometry_type="Polygon", crs=store.crs_wkt, dataset_options=GPKG_DATASET_OPTIONS)
    os.replace(tmp, path)
    return path


#: The tile index's fields and their numpy types: `level` the level's folder ("." the finest), `factor`
#: its pixel over the raster's, `resolution` its ground resolution (map units per pixel), `extra` 1 for
#: a tile encoded on demand.
INDEX_FIELDS = {"tile_id": object, "row": np.int32, "col": np.int32, "status": object, "padded": np.int32,
                "valid_fraction": np.float64, "level": object, "factor": np.float64, "resolution": np.float64,
                "extra": np.int32}


def _index_rows(root: FeatureStore, level: FeatureStore) -> List[dict]:
    """One dict of INDEX_FIELDS (and `outline`, the valid area's ring in map coordinates) per tile."""
    records = level.records()
    grid = level.manifest.pixel_grid
    folder = level_folder_of(root, level)
    return [{"tile_id": t.tile_id, "row": t.row, "col": t.col, "status": level.status(t),
             "padded": int(t.is_padded),
             "valid_fraction": records[t.tile_id].valid_fraction if t.tile_id in records else np.nan,
             "level": folder, "factor": grid.factor, "resolution": grid.resolution, "extra": int(t.extra),
             "outline": window_outline(level.geotransform, t.window)} for t in level.grid]


def write_levels_index(root: FeatureStore, levels: Sequence[FeatureStore], force: bool = False) -> None:
    """The root's index of every level of a multi-scale store, when `force` (a tile was written: the root's
    own run rewrote the index with the root's tiles only) or when it is not current (older than a level's
    tile log or manifest); a single-level store's index is `write_tile_index`'s."""
    if len(levels) < 2:
        return
    if not force and all(tile_index_is_current(level, root.root / TILE_INDEX) for level in levels):
        return
    write_tile_index(root, levels)


def tile_index_is_current(store: FeatureStore, index_path: Optional[Path] = None) -> bool:
    """Whether STORE/tile_index.gpkg (or `index_path`) was written after the last change of the store's tile
    log and manifest (a finished store resumed again writes nothing: it may be read-only)."""
    try:
        index = (index_path or store.root / TILE_INDEX).stat().st_mtime_ns
    except FileNotFoundError:
        return False
    sources = [store.root / TILE_LOG, store.root / MANIFEST]
    return all(index >= path.stat().st_mtime_ns for path in sources if path.exists())


def write_tile_index_if_possible(store: FeatureStore) -> None:
    """The tile index of a run that stopped (cancelled, a full disk, an error): written if it can be, else
    left to the next run, so that its own failure (kilobytes of GeoPackage SQL on a full disk) never hides
    why the run stopped."""
    try:
        write_tile_index(store)
    except Exception as exc:  # noqa: BLE001 - the run's own error is the one to report
        LOGGER.debug("tile index not written (the next run writes it): %s", exc)
        for leftover in store.root.glob(f"tile_index.tmp.{os.getpid()}.gpkg*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
