"""The store's tile index: tile footprints as a GeoPackage polygon layer (GDAL/OGR; no QGIS).

Footprints are the valid part of each tile, in the raster's CRS, computed from the raster's
geotransform, so a user sees exactly where each tile lies and whether it is done.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence, Tuple

from .raster import pixel_to_map
from .store import TILE_INDEX, FeatureStore
from .tiling import Tile

LAYER_NAME = "tiles"


def tile_footprint(geotransform: Sequence[float], tile: Tile) -> List[Tuple[float, float]]:
    """Closed ring of the tile's valid area in map coordinates (raster CRS), clockwise from top-left."""
    corners = [(tile.col_off, tile.row_off), (tile.col_off + tile.valid_width, tile.row_off),
               (tile.col_off + tile.valid_width, tile.row_off + tile.valid_height),
               (tile.col_off, tile.row_off + tile.valid_height)]
    ring = [pixel_to_map(geotransform, c, r) for c, r in corners]
    return ring + ring[:1]


def write_tile_index(store: FeatureStore) -> Path:
    """(Re)write STORE/tile_index.gpkg from the manifest and the tile log; returns its path."""
    from osgeo import ogr, osr

    ogr.UseExceptions()
    osr.UseExceptions()
    path = store.root / TILE_INDEX
    tmp = store.root / f"tile_index.tmp.{os.getpid()}.gpkg"
    if tmp.exists():
        tmp.unlink()
    srs = osr.SpatialReference()
    srs.ImportFromWkt(store.crs_wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    driver = ogr.GetDriverByName("GPKG")
    dataset = driver.CreateDataSource(str(tmp))
    layer = dataset.CreateLayer(LAYER_NAME, srs, ogr.wkbPolygon)
    for name, kind in (("tile_id", ogr.OFTString), ("row", ogr.OFTInteger), ("col", ogr.OFTInteger),
                       ("status", ogr.OFTString), ("padded", ogr.OFTInteger),
                       ("valid_fraction", ogr.OFTReal)):
        layer.CreateField(ogr.FieldDefn(name, kind))
    records = store.records()
    dataset.StartTransaction()
    for tile in store.grid:
        feature = ogr.Feature(layer.GetLayerDefn())
        record = records.get(tile.tile_id)
        feature.SetField("tile_id", tile.tile_id)
        feature.SetField("row", tile.row)
        feature.SetField("col", tile.col)
        feature.SetField("status", store.status(tile))
        feature.SetField("padded", int(tile.is_padded))
        if record is not None:
            feature.SetField("valid_fraction", record.valid_fraction)
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in tile_footprint(store.geotransform, tile):
            ring.AddPoint_2D(x, y)
        polygon = ogr.Geometry(ogr.wkbPolygon)
        polygon.AddGeometry(ring)
        feature.SetGeometry(polygon)
        layer.CreateFeature(feature)
    dataset.CommitTransaction()
    dataset = None  # closes the file
    os.replace(tmp, path)
    return path
