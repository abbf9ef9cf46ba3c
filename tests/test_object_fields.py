"""The measures written with every object (interactive/object_fields.py): `area_m2` in square metres for a
geographic CRS, the same in the core (segment everything) and in the QGIS layer (segment, the dock).

The known value: the area on the WGS 84 ellipsoid of a region bounded by meridians and parallels, as the
pixels of a longitude/latitude raster are, from the authalic latitude function q (Green's theorem: only the
edges along parallels contribute, Δλ · b²/2 · q(φ)). The measured polygons have those pixel edges, while the
code treats an edge as a geodesic (OGR ≥ 3.9) or as a straight line of an equal-area projection (older GDAL)
or of longitude/latitude (QGIS): these differ from the parallel by about L³ tan φ / (12 R) in area per edge
of length L, relative 1e-8 for a 0.01° cell (whose top and bottom edges nearly cancel) and under 1e-5 for
the few-hundred-metre objects of the raster below; the tolerances are set above that.
"""

from __future__ import annotations

import math

import pytest
import shapely
import shapely.wkb
from osgeo import ogr
from synthetic import default_transform, encode, square_scene, write_raster

from quicksam.interactive.automatic import AutoMaskSettings, segment_everything
from quicksam.interactive.object_fields import crs_srs, square_metres

WGS84_A = 6378137.0
WGS84_F = 1 / 298.257223563
WGS84_WKT = ('GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],'
             'UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]')
#: A 0.01° x 0.01° cell at 45° N, 10° E, and its area on WGS 84 (m²), from `parallel_bounded_area`.
CELL = "POLYGON ((10 45,10.01 45,10.01 45.01,10 45.01,10 45))"
CELL_M2 = 876_163.449


def _authalic(latitude_degrees: float) -> float:
    """b²/2 · q(φ): the area (m²) per radian of longitude between the equator and latitude φ on WGS 84."""
    e2 = WGS84_F * (2 - WGS84_F)
    e, b = math.sqrt(e2), WGS84_A * (1 - WGS84_F)
    s = math.sin(math.radians(latitude_degrees))
    q = s / (1 - e2 * s * s) + math.log((1 + e * s) / (1 - e * s)) / (2 * e)
    return b * b / 2 * q


def _ring_area(coords) -> float:
    """Signed area (m²) enclosed by a lon/lat ring whose edges run along meridians and parallels."""
    total = 0.0
    for (lon0, lat0), (lon1, lat1) in zip(coords, coords[1:]):
        if lon0 != lon1:
            assert lat0 == lat1, "an edge that is neither a meridian nor a parallel"
            total += math.radians(lon1 - lon0) * _authalic(lat0)
    return total


def parallel_bounded_area(geometry) -> float:
    """The WGS 84 area (m²) of a shapely (Multi)Polygon in lon/lat whose edges follow meridians and parallels."""
    polygons = getattr(geometry, "geoms", [geometry])
    return sum(abs(_ring_area(list(p.exterior.coords))) - sum(abs(_ring_area(list(r.coords))) for r in p.interiors)
               for p in polygons)


def test_the_known_value():
    assert parallel_bounded_area(shapely.from_wkt(CELL)) == pytest.approx(CELL_M2, rel=1e-9)


def test_area_m2_of_a_lonlat_cell_is_its_ellipsoidal_area():
    assert square_metres(ogr.CreateGeometryFromWkt(CELL), crs_srs(WGS84_WKT)) == pytest.approx(CELL_M2, rel=1e-6)


def test_area_m2_of_a_projected_crs_is_its_planar_area_in_metres():
    square = ogr.CreateGeometryFromWkt("POLYGON ((0 0,100 0,100 100,0 100,0 0))")
    utm = crs_srs(_wkt_of("EPSG:32633"))
    feet = crs_srs(_wkt_of("EPSG:2227"))  # California zone 3, US survey feet
    assert square_metres(square, utm) == pytest.approx(10_000.0, rel=1e-12)  # exact: metres
    assert square_metres(square, feet) == pytest.approx(10_000.0 * (1200 / 3937) ** 2, rel=1e-12)


def _wkt_of(code: str) -> str:
    """The WKT of a CRS given as "EPSG:n"."""
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.SetFromUserInput(code)
    return srs.ExportToWkt()


def test_the_qgis_layer_measures_a_lonlat_cell_the_same(qgis_app):
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransformContext, QgsGeometry

    from quicksam.ui.layers import area_square_metres

    area = area_square_metres(QgsGeometry.fromWkt(CELL), QgsCoordinateReferenceSystem("EPSG:4326"),
                              QgsCoordinateTransformContext())
    assert area == pytest.approx(CELL_M2, rel=1e-6)


def test_segment_all_on_a_lonlat_raster_writes_area_m2_in_square_metres(tmp_path):
    # 256 x 256 px of 1e-5 degrees (about 1.1 m x 0.8 m at 45° N) with a bright square
    raster = write_raster(tmp_path / "lonlat.tif", square_scene(256, 256, (60, 70, 90)), crs="EPSG:4326",
                          transform=default_transform(1e-5, 1e-5, origin=(10.0, 45.0)))
    store, _ = encode(raster, tmp_path / "store")
    settings = AutoMaskSettings(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                min_mask_region_area=4)
    result = segment_everything(store, tmp_path / "all.gpkg", settings)
    assert result.objects > 0
    dataset = ogr.Open(str(tmp_path / "all.gpkg"))
    for feature in dataset.GetLayer(0):
        geometry = shapely.wkb.loads(bytes(feature.GetGeometryRef().ExportToIsoWkb()))
        assert feature["area"] == pytest.approx(geometry.area, rel=1e-12)  # degrees², the CRS's units
        assert feature["area_m2"] == pytest.approx(parallel_bounded_area(geometry), rel=1e-4)
    dataset = None
