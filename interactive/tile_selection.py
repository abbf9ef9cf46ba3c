"""Which tiles a segment-everything run takes: the encoded tiles meeting an area of interest, checked before any
work (GDAL/OGR's own bindings for the geometry test; no QGIS)."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence

from ..core.errors import QuickSamError
from ..core.geo import window_outline
from ..core.store import STATUS_DONE, STATUS_PENDING, FeatureStore
from ..core.tiling import Tile

if TYPE_CHECKING:
    from osgeo import ogr


def tiles_to_process(store: FeatureStore, area_wkbs: Optional[Sequence[bytes]] = None) -> List[Tile]:
    """The encoded tiles, or those whose valid window meets any of `area_wkbs` (polygons as WKB in the
    raster CRS). QuickSamError when the area misses the raster, when a tile to segment is not encoded yet
    (objects there would silently be missing), or when there is nothing to segment."""
    from osgeo import ogr

    meeting = list(store.grid.regular_tiles)   # on-demand tiles are not part of the grid's cells
    if area_wkbs is not None:
        areas = [ogr.CreateGeometryFromWkb(bytes(wkb)) for wkb in area_wkbs]
        areas = [a for a in areas if a is not None and not a.IsEmpty()]
        meeting = [tile for tile in meeting if any(area.Intersects(_tile_outline(store, tile)) for area in areas)]
        if not meeting:
            raise QuickSamError("the area of interest does not overlap the encoded part of the raster; check "
                                "that it covers the raster (its CRS is transformed to the raster's)")
    pending = [tile for tile in meeting if store.status(tile) == STATUS_PENDING]
    if pending:
        raise QuickSamError(
            f"the store '{store.root}' is unfinished: {len(pending)} of the {len(meeting)} tiles to segment are "
            "not encoded yet; finish it with the same 'quicksam encode' command (it resumes where it stopped), "
            "or choose an area of interest inside the encoded part")
    done = [tile for tile in meeting if store.status(tile) == STATUS_DONE]
    if not done:
        raise QuickSamError(f"the store '{store.root}' has no features there: every tile to segment is nodata")
    damaged = store.verify_tiles(done)   # checked before any work, not found at tile 80 of 90
    if damaged:
        tile_id, problem = next(iter(damaged.items()))
        raise QuickSamError(
            f"the store '{store.root}' has {len(damaged)} damaged tile(s) of the {len(done)} to segment (tile "
            f"{tile_id}: {problem}); re-run the same 'quicksam encode' command: it encodes them again")
    return done


def _tile_outline(store: FeatureStore, tile: Tile) -> ogr.Geometry:
    """The tile's valid area as an OGR polygon in the raster CRS."""
    from osgeo import ogr

    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in window_outline(store.geotransform, tile.window):
        ring.AddPoint_2D(x, y)
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    return polygon
