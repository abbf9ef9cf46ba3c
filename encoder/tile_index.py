"""The store's tile index: tile footprints as a GeoPackage polygon layer (pyogrio; no QGIS, no osgeo).

Footprints are the valid part of each tile, in the raster's CRS, computed from the raster's
geotransform, so a user sees exactly where each tile lies and whether it is done.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

from ..core.geo import window_outline
from ..core.logger import LOGGER
from ..core.store import MANIFEST, TILE_INDEX, TILE_LOG, FeatureStore

LAYER_NAME = "tiles"


#: GeoPackage 1.2: the GDAL in pip's pyogrio wheel writes 1.4 by default, which older GDALs (QGIS 3.22's
#: 3.6 among them) open with a "may only be partially supported" warning each time.
GPKG_DATASET_OPTIONS = {"VERSION": "1.2"}


def write_tile_index(store: FeatureStore) -> Path:
    """(Re)write STORE/tile_index.gpkg from the manifest and the tile log; returns its path.

    Written with pyogrio (a declared dependency; the headless encoder has no `osgeo`) to a temporary
    name and renamed into place. Polygons are in the raster's CRS (`store.crs_wkt`).
    """
    import numpy as np
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
    tiles = list(store.grid)
    records = store.records()
    valid_fraction = [records[t.tile_id].valid_fraction if t.tile_id in records else np.nan for t in tiles]
    geometry = shapely.to_wkb([shapely.Polygon(window_outline(store.geotransform, t.window)) for t in tiles])
    fields = ["tile_id", "row", "col", "status", "padded", "valid_fraction"]
    field_data = [np.array([t.tile_id for t in tiles], dtype=object),
                  np.array([t.row for t in tiles], dtype=np.int32),
                  np.array([t.col for t in tiles], dtype=np.int32),
                  np.array([store.status(t) for t in tiles], dtype=object),
                  np.array([int(t.is_padded) for t in tiles], dtype=np.int32),
                  np.array(valid_fraction, dtype=np.float64)]
    pyogrio.raw.write(str(tmp), geometry, field_data, fields, layer=LAYER_NAME, driver="GPKG",
                      geometry_type="Polygon", crs=store.crs_wkt, dataset_options=GPKG_DATASET_OPTIONS)
    os.replace(tmp, path)
    return path


def tile_index_is_current(store: FeatureStore) -> bool:
    """Whether STORE/tile_index.gpkg was written after the last change of the tile log and the manifest
    (a finished store resumed again writes nothing: it may be read-only)."""
    try:
        index = (store.root / TILE_INDEX).stat().st_mtime_ns
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
