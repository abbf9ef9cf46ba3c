"""Time series from end to end as a user runs it (issue 12): `quicksam encode --series` on a folder of dated
rasters, then `quicksam track` with the real tracker in the encoder's process (this venv's Python), the output
GeoPackage read back with OGR.

The series (tests/series_data.py): 8 frames of a disk that moves and grows on a 400 x 256 px raster (two 256 px
tiles), EPSG:32633, 10 m pixels; the files listed by name are out of date order; frame 5 is on a shifted grid
(resampled), frame 3 has nodata over the right half of its disk. Random weights: the masks are arbitrary, so the
test checks the plumbing exactly: frames, dates, ids, places, the nodata cut, the temporal style.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from osgeo import ogr, osr
from series_data import PIXEL_SIZE, disk_at, disk_series, nodata_box
from synthetic import ORIGIN, run_cli

FRAMES = 8
SHIFTED, WITH_NODATA = 5, 3

pytestmark = pytest.mark.slow


def map_xy(col: float, row: float) -> tuple:
    return ORIGIN[0] + col * PIXEL_SIZE, ORIGIN[1] - row * PIXEL_SIZE


def pixel_box_wkt(col0: float, row0: float, col1: float, row1: float) -> str:
    (x0, y0), (x1, y1) = map_xy(col0, row0), map_xy(col1, row1)
    return f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> Path:
    """The series encoded and one object tracked both ways from frame 3 (a point on the valid half of its disk)."""
    folder = tmp_path_factory.mktemp("e2e")
    disk_series(folder / "scenes", FRAMES, shifted_frame=SHIFTED, nodata_frame=WITH_NODATA)
    store = folder / "series.qsam"
    encoded = run_cli("encode", "--series", folder / "scenes", store, "--frame-pattern", "*.tif", "--date-pattern",
                      "%Y%m%d", "--random-weights", "--tile-size", 256, "--overlap", 64, timeout=900)
    assert encoded.returncode == 0, encoded.stderr
    truth = disk_at(WITH_NODATA, FRAMES)
    x, y = map_xy(truth.centre[0] - truth.radius / 2, truth.centre[1])
    os.environ.setdefault("QUICKSAM_PYTHON", sys.executable)
    result = run_cli("track", store, "--frame", WITH_NODATA, f"--point={x},{y}", "--object-id", 7, "--direction",
                     "both", "--output", folder / "tracks.gpkg", timeout=900)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["features"] == FRAMES
    return folder


def features(path: Path) -> list:
    source = ogr.Open(str(path))
    layer = source.GetLayerByName("tracks")
    rows = [(item.GetField("obj_id"), item.GetField("frame"), item.GetField("datetime"), item.GetField("present"),
             item.GetGeometryRef().Clone() if item.GetGeometryRef() else None) for item in layer]
    srs = layer.GetSpatialRef()
    return sorted(rows, key=lambda row: row[1]), srs


def test_one_feature_per_frame_in_date_order_with_the_object_id(tracked: Path) -> None:
    rows, _ = features(tracked / "tracks.gpkg")
    assert [(obj_id, frame) for obj_id, frame, *_ in rows] == [(7, k) for k in range(FRAMES)]
    assert [date[:10].replace("/", "-") for _, _, date, *_ in rows] == \
        [disk_at(k, FRAMES).date.isoformat() for k in range(FRAMES)]


def test_polygons_are_in_the_raster_crs_inside_the_tile_decoded(tracked: Path) -> None:
    rows, srs = features(tracked / "tracks.gpkg")
    expected = osr.SpatialReference()
    expected.ImportFromEPSG(32633)
    assert srs.IsSame(expected)
    shapes = [shape for *_, shape in rows if shape is not None]
    assert shapes, "no frame has a polygon"
    tiles = [ogr.CreateGeometryFromWkt(pixel_box_wkt(0, 0, 256, 256)),     # r0000c0000
             ogr.CreateGeometryFromWkt(pixel_box_wkt(144, 0, 400, 256))]   # r0000c0001
    # Every frame's polygon lies in one and the same tile (all frames share one grid), to the metre's millionth.
    holding = [tile for tile in tiles if all(tile.Buffer(1e-6).Contains(shape) for shape in shapes)]
    assert holding, [shape.GetEnvelope() for shape in shapes]


def test_the_nodata_of_a_frame_is_never_part_of_its_polygon(tracked: Path) -> None:
    rows, _ = features(tracked / "tracks.gpkg")
    [shape] = [shape for _, frame, _, present, shape in rows if frame == WITH_NODATA]
    assert shape is not None, "the prompt frame has the object"
    nodata = ogr.CreateGeometryFromWkt(pixel_box_wkt(*nodata_box(WITH_NODATA, FRAMES)))
    assert shape.Intersection(nodata).GetArea() == pytest.approx(0.0, abs=1e-6)


def test_the_geopackage_keeps_the_temporal_settings_for_qgis(tracked: Path) -> None:
    source = ogr.Open(str(tracked / "tracks.gpkg"))
    styles = source.GetLayerByName("layer_styles")
    [style] = [item.GetField("styleQML") for item in styles if item.GetField("f_table_name") == "tracks"]
    assert 'startField="datetime"' in style and 'endField="datetime_end"' in style and 'enabled="1"' in style
