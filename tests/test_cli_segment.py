"""`quicksam segment` as a user meets it: each run is a fresh `python -m quicksam.cli segment` process, which
starts a headless QGIS and runs quicksam:segmentprompts. Its output is checked against SegmentEngine on the
same prompts; bad input must end with exit status 1, exactly one stderr line "quicksam: error: ...", and no
output file (nor a half-written one) left behind.

One feature store (conftest's `store_path`, shared with test_segment_algorithm.py): the synthetic two-squares
scene `synthetic.two_squares_scene()` (EPSG:32633, 10 m pixels), encoded with the seeded random tiny model in
256 px tiles.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Sequence

import pytest
import shapely
import shapely.wkb
from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsPointXY, QgsProject, QgsVectorLayer
from synthetic import (
    CRS,
    PIXEL_SIZE,
    assert_one_line_error,
    assert_same_geometry,
    box_at,
    file_states,
    run_cli,
    write_raster,
)
from synthetic import TWO_SQUARES_HEIGHT as HEIGHT
from synthetic import TWO_SQUARES_WIDTH as WIDTH
from synthetic import pixel_to_map_default as at
from synthetic import two_squares_scene as scene

from quicksam.interactive.engine import MapPrompts, SegmentEngine


def csv(*values: float) -> str:
    return ",".join(repr(float(v)) for v in values)


def segment(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli("segment", *args, timeout=timeout)


def read_output(path: Path, qgis_app) -> List[dict]:
    """The features of the 'segments' layer (GeoPackage) as dicts with a shapely 'geometry', by id and score."""
    uri = f"{path}|layername=segments" if path.suffix == ".gpkg" else str(path)
    layer = QgsVectorLayer(uri, "out", "ogr")
    assert layer.isValid(), uri
    assert layer.crs() == QgsCoordinateReferenceSystem(CRS)
    rows = []
    for feature in layer.getFeatures():
        row = {name: feature[name] for name in layer.fields().names()}
        row["geometry"] = shapely.wkb.loads(bytes(feature.geometry().asWkb()))
        rows.append(row)
    return sorted(rows, key=lambda r: (r["id"], -r["predicted_iou"]))


def assert_equals_engine(row: dict, engine: SegmentEngine, prompts: MapPrompts, mode: str = "single") -> None:
    (expected,) = engine.segment(prompts, mode=mode)
    assert_same_geometry(row["geometry"], expected.geometry)
    assert row["predicted_iou"] == pytest.approx(expected.score, abs=1e-6)
    assert (row["fg_points"], row["bg_points"]) == (prompts.foreground_count, prompts.background_count)
    assert row["tile_id"] == expected.tile_id
    assert row["model"] == engine.store.model_name
    assert row["checkpoint"] == engine.store.checkpoint_sha256


def assert_ok(result: subprocess.CompletedProcess, output: Path) -> dict:
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["output"] == str(output)
    assert output.is_file()
    assert [p.name for p in output.parent.iterdir() if ".partial-" in p.name] == []
    return summary




# -- prompts on the command line: one object ----------------------------------------------------------------


def test_points_with_labels_are_one_object(store_path, engine, tmp_path, qgis_app):
    output = tmp_path / "out.gpkg"
    fg, bg = at(75, 75), at(20, 20)
    summary = assert_ok(segment(store_path, "--point", csv(*fg), "--point", csv(*bg, 0), "--output", output),
                        output)
    assert (summary["objects_segmented"], summary["objects_skipped"], summary["layer"]) == (1, 0, "segments")
    (row,) = read_output(output, qgis_app)
    assert_equals_engine(row, engine, MapPrompts(points=(fg, bg), labels=(1, 0)))


def test_box_and_box_with_point(store_path, engine, tmp_path, qgis_app):
    box = box_at(190, 160, 290, 260)
    output = tmp_path / "box.gpkg"
    assert_ok(segment(store_path, "--box", csv(*box), "--output", output), output)
    (row,) = read_output(output, qgis_app)
    assert_equals_engine(row, engine, MapPrompts(box=box))
    assert [float(v) for v in row["box"].split(",")] == pytest.approx(box, abs=1e-5)

    both = tmp_path / "both.gpkg"
    assert_ok(segment(store_path, "--box", csv(*box), "--point", csv(*at(240, 210)), "--mask-mode", "best",
                      "--output", both), both)
    (row,) = read_output(both, qgis_app)
    assert_equals_engine(row, engine, MapPrompts(points=(at(240, 210),), labels=(1,), box=box), mode="best")


def test_prompts_crs_gives_the_same_polygon_as_raster_crs(store_path, engine, tmp_path, qgis_app):
    xy = at(240, 210)
    to_wgs84 = QgsCoordinateTransform(QgsCoordinateReferenceSystem(CRS), QgsCoordinateReferenceSystem("EPSG:4326"),
                                      QgsProject.instance())
    lonlat = to_wgs84.transform(QgsPointXY(*xy))
    assert 14 < lonlat.x() < 16 and 37 < lonlat.y() < 39  # really degrees (UTM 33N)
    native, wgs84 = tmp_path / "native.gpkg", tmp_path / "wgs84.gpkg"
    assert_ok(segment(store_path, "--point", csv(*xy), "--output", native), native)
    assert_ok(segment(store_path, "--point", csv(lonlat.x(), lonlat.y()), "--prompts-crs", "EPSG:4326",
                      "--output", wgs84), wgs84)
    (a,), (b,) = read_output(native, qgis_app), read_output(wgs84, qgis_app)
    assert_same_geometry(b["geometry"], a["geometry"])
    assert b["predicted_iou"] == pytest.approx(a["predicted_iou"], abs=1e-6)
    assert_equals_engine(b, engine, MapPrompts(points=(xy,), labels=(1,)))


# -- a prompts file: many objects ----------------------------------------------------------------------------


def write_prompts_geojson(path: Path, with_outside: bool = True) -> Path:
    def feature(geometry: dict, **properties) -> dict:
        return {"type": "Feature", "properties": properties, "geometry": geometry}

    def pt(xy: Sequence[float]) -> dict:
        return {"type": "Point", "coordinates": list(xy)}

    xmin, ymin, xmax, ymax = box_at(190, 160, 290, 260)
    features = [
        feature(pt(at(75, 75)), obj=1, lab=1),
        feature(pt(at(20, 20)), obj=1, lab=0),
        feature({"type": "Polygon", "coordinates": [[[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax],
                                                     [xmin, ymin]]]}, obj=2, lab=None),
        feature(pt(at(240, 210)), obj=2, lab=1),
    ]
    if with_outside:
        features.append(feature(pt(at(-60, 10)), obj=3, lab=1))
    path.write_text(json.dumps({
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
        "features": features}))
    return path


def test_prompts_file_with_groups_labels_and_a_skipped_object(store_path, engine, tmp_path, qgis_app):
    prompts = write_prompts_geojson(tmp_path / "prompts.geojson")
    output = tmp_path / "objects.gpkg"
    result = segment(store_path, "--prompts", prompts, "--group-field", "obj", "--label-field", "lab",
                     "--output", output)
    summary = assert_ok(result, output)
    assert (summary["objects_segmented"], summary["objects_skipped"]) == (2, 1)
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("quicksam: warning: object 3 (group 3) skipped:")
    assert "outside the raster" in warnings[0]
    rows = read_output(output, qgis_app)
    assert [(r["id"], r["label"]) for r in rows] == [(1, "1"), (2, "2")]
    assert_equals_engine(rows[0], engine, MapPrompts(points=(at(75, 75), at(20, 20)), labels=(1, 0)))
    assert_equals_engine(rows[1], engine, MapPrompts(points=(at(240, 210),), labels=(1,),
                                                     box=box_at(190, 160, 290, 260)))


def test_mask_mode_all_and_geojson_output(store_path, engine, tmp_path, qgis_app):
    output = tmp_path / "all.geojson"
    assert_ok(segment(store_path, "--point", csv(*at(75, 75)), "--mask-mode", "all", "--output", output), output)
    rows = read_output(output, qgis_app)
    expected = engine.segment(MapPrompts(points=(at(75, 75),), labels=(1,)), mode="all")
    assert len(rows) == len(expected) == 3
    for row, segment_ in zip(rows, sorted(expected, key=lambda s: -s.score)):
        assert_same_geometry(row["geometry"], segment_.geometry)


def test_overwrite_replaces_an_existing_output(store_path, tmp_path, qgis_app):
    output = tmp_path / "out.gpkg"
    output.write_bytes(b"old")
    assert_ok(segment(store_path, "--point", csv(*at(75, 75)), "--output", output, "--overwrite"), output)
    assert len(read_output(output, qgis_app)) == 1


# -- bad input: exit 1, one line, nothing written ------------------------------------------------------------


def _store_is_a_raster(store_path: Path, tmp_path: Path):
    raster = write_raster(tmp_path / "scene.tif", scene())
    return [raster, "--point", csv(*at(75, 75))], r"is a file, not a QuickSAM feature store.*encode it first"


def _store_missing(store_path: Path, tmp_path: Path):
    return [tmp_path / "no-store", "--point", csv(*at(75, 75))], r"does not exist; encode the raster first"


def _point_outside(store_path: Path, tmp_path: Path):
    return [store_path, "--point", csv(*at(-60, 10))], r"nothing was segmented: .*outside the raster"


def _malformed_point(store_path: Path, tmp_path: Path):
    return [store_path, "--point", "500100,abc"], r"--point: expected X,Y or X,Y,LABEL"


def _bad_label(store_path: Path, tmp_path: Path):
    return [store_path, "--point", csv(*at(75, 75), 2)], r"--point: expected X,Y or X,Y,LABEL"


def _unknown_crs(store_path: Path, tmp_path: Path):
    return [store_path, "--point", csv(*at(75, 75)), "--prompts-crs", "EPSG:999999"], \
        r"--prompts-crs 'EPSG:999999' is not a CRS"


def _two_boxes(store_path: Path, tmp_path: Path):
    box = csv(*box_at(30, 30, 120, 120))
    return [store_path, "--box", box, "--box", box], r"more than once.*--prompts file"


def _no_prompts(store_path: Path, tmp_path: Path):
    return [store_path], r"give the object's prompts"


def _prompts_and_points(store_path: Path, tmp_path: Path):
    prompts = write_prompts_geojson(tmp_path / "p.geojson")
    return [store_path, "--prompts", prompts, "--point", csv(*at(75, 75))], r"not both"


def _unreadable_prompts(store_path: Path, tmp_path: Path):
    bad = tmp_path / "p.geojson"
    bad.write_text("not json")
    return [store_path, "--prompts", bad], r"cannot be opened as a vector layer"


def _unknown_group_field(store_path: Path, tmp_path: Path):
    prompts = write_prompts_geojson(tmp_path / "p.geojson")
    return [store_path, "--prompts", prompts, "--group-field", "nope"], r"no field 'nope'"


def _unknown_output_format(store_path: Path, tmp_path: Path):
    return [store_path, "--point", csv(*at(75, 75)), "--output", tmp_path / "out.xyz"], \
        r"unknown extension '\.xyz'; end it in one of \.gpkg \(GeoPackage\), \.shp \(Shapefile\)"


@pytest.mark.parametrize("case", [
    _store_is_a_raster, _store_missing, _point_outside, _malformed_point, _bad_label, _unknown_crs, _two_boxes,
    _no_prompts, _prompts_and_points, _unreadable_prompts, _unknown_group_field, _unknown_output_format,
], ids=lambda case: case.__name__.strip("_"))
def test_bad_input_is_one_line_and_writes_nothing(store_path, tmp_path, case):
    args, hint = case(store_path, tmp_path)
    if "--output" not in map(str, args):
        args += ["--output", tmp_path / "out.gpkg"]
    before = set(tmp_path.iterdir())
    result = segment(*args)
    assert_one_line_error(result, hint)
    assert result.stdout == ""
    assert set(tmp_path.iterdir()) == before, "no output and no partial file"


def test_existing_output_is_refused_and_left_untouched(store_path, tmp_path):
    output = tmp_path / "out.gpkg"
    output.write_bytes(b"precious")
    before = file_states(tmp_path)
    result = segment(store_path, "--point", csv(*at(75, 75)), "--output", output)
    assert_one_line_error(result, r"out\.gpkg' exists; choose another name or delete it")
    assert file_states(tmp_path) == before


def test_failed_overwrite_keeps_the_old_output(store_path, tmp_path):
    output = tmp_path / "out.gpkg"
    output.write_bytes(b"precious")
    before = file_states(tmp_path)
    result = segment(store_path, "--point", csv(*at(-60, 10)), "--output", output, "--overwrite")
    assert_one_line_error(result, r"outside the raster")
    assert file_states(tmp_path) == before


# -- messages that point at the fix ---------------------------------------------------------------------------

#: The raster's extent as every "outside the raster" message gives it (320 x 300 px of 10 m from 500000,4200000).
EXTENT_TEXT = "(x 500000 to 503200, y 4197000 to 4200000 in EPSG:32633)"


@pytest.mark.parametrize("args, says", [
    (["--point", csv(*at(-60, 10))],
     f"the point at 499400,4199900 is outside the raster {EXTENT_TEXT}; place prompts inside the raster"),
    (["--box", csv(*box_at(-100, 10, -50, 60))],
     f"the box 499000,4199400,499500,4199900 is outside the raster {EXTENT_TEXT}; place prompts inside the raster"),
    (["--point", "15.2,37.9"],
     f"the point at 15.2,37.9 is outside the raster {EXTENT_TEXT}; its numbers look like longitude/latitude "
     "degrees, not EPSG:32633 coordinates; if they are, pass --prompts-crs EPSG:4326"),
    (["--box", "15.1,37.8,15.2,37.9"],
     f"the box 15.1,37.8,15.2,37.9 is outside the raster {EXTENT_TEXT}; its numbers look like longitude/latitude "
     "degrees, not EPSG:32633 coordinates; if they are, pass --prompts-crs EPSG:4326"),
    (["--point", csv(*at(75, 75)), "--min-area", "1e9"],
     "no object found under the point at 500750,4199250 (the mask was empty, or smaller than the minimum area); "
     "move or add prompts"),
], ids=["point-outside", "box-outside", "lonlat-point", "lonlat-box", "empty-mask"])
def test_a_command_line_object_that_fails_says_what_happened_to_its_prompt(store_path, tmp_path, args, says):
    """--point/--box make one object of the command's own: the message names the prompt and its coordinates,
    not "object 1 (group 1)", which the user never made."""
    result = segment(store_path, *args, "--output", tmp_path / "out.gpkg")
    assert_one_line_error(result, "^quicksam: error: nothing was segmented: " + re.escape(says) + "$")
    assert list(tmp_path.iterdir()) == []


def test_a_prompts_file_without_crs_in_degrees_says_so_and_names_the_feature(store_path, tmp_path, qgis_app):
    from osgeo import ogr

    path = tmp_path / "clicks.shp"  # a shapefile without .prj: no CRS, read in the raster's CRS
    dataset = ogr.GetDriverByName("ESRI Shapefile").CreateDataSource(str(path))
    layer = dataset.CreateLayer("clicks", None, ogr.wkbPoint)
    for x, y in (at(75, 75), (15.2, 37.9)):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT ({x!r} {y!r})"))
        layer.CreateFeature(feature)
    dataset = None
    output = tmp_path / "out.gpkg"
    result = segment(store_path, "--prompts", path, "--output", output)
    summary = assert_ok(result, output)
    assert (summary["objects_segmented"], summary["objects_skipped"]) == (1, 1)
    assert result.stderr.splitlines() == [
        f"quicksam: warning: object 2 (feature 1) skipped: the point at 15.2,37.9 is outside the raster {EXTENT_TEXT}; "
        "its numbers look like longitude/latitude degrees, not EPSG:32633 coordinates; the prompts file has no CRS: "
        "if they are longitude/latitude, pass --prompts-crs EPSG:4326"]


def test_a_box_over_the_raster_edge_is_clipped_to_the_raster(store_path, engine, tmp_path, qgis_app):
    box = box_at(-40.3, 150.4, 60.6, 330.2)  # past the left and bottom edges of the 320 x 300 px raster
    output = tmp_path / "edge.gpkg"
    assert_ok(segment(store_path, "--box", csv(*box), "--output", output), output)
    (row,) = read_output(output, qgis_app)
    assert_equals_engine(row, engine, MapPrompts(box=box))
    assert [float(v) for v in row["box"].split(",")] == pytest.approx(box, abs=1e-5)  # the box as given
    raster = shapely.box(*box_at(0, 0, WIDTH, HEIGHT))
    # Mask pixels are kept when their centre lies in the box, so where a box edge cuts a pixel (col 60.6,
    # row 150.4) the polygon may reach up to half a pixel past it; the raster's edges are pixel edges, so
    # only float noise (1e-6 m) is allowed past them.
    within_box = shapely.box(*box).buffer(0.5 * PIXEL_SIZE + 1e-6, join_style="mitre")
    assert row["geometry"].within(within_box.intersection(raster.buffer(1e-6, join_style="mitre")))
    assert row["geometry"].area > 0


def test_segment_and_segment_all_word_overwrite_alike(store_path, tmp_path):
    output = tmp_path / "out.gpkg"
    output.write_bytes(b"precious")
    says = re.escape(f"quicksam: error: '{output}' exists; choose another name or delete it (or pass --overwrite)")
    for command in (["segment", store_path, "--point", csv(*at(75, 75))], ["segment-all", store_path]):
        assert_one_line_error(run_cli(*command, "--output", output), f"^{says}$")
    assert output.read_bytes() == b"precious"


# -- QGIS only where needed ----------------------------------------------------------------------------------


def test_cli_imports_and_runs_info_without_qgis(store_path):
    """`encode`/`info` must work on a machine without QGIS: block `qgis` and run `info` and `segment --help`."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["qgis"] = None  # any 'import qgis...' now fails
        from quicksam import cli
        assert cli.main(["info", {str(store_path)!r}]) == 0
        try:
            cli.main(["segment", "--help"])
        except SystemExit as exc:
            assert exc.code == 0
        print("qgis" in sys.modules and sys.modules["qgis"] is None)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"tiles_done": 4' in result.stdout and "--prompts-crs" in result.stdout
    assert result.stdout.rstrip().endswith("True")
