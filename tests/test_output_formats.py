"""Output formats, and GeoPackages as containers (interactive/output_formats.py and its users).

1. Every format QuickSAM promises (GeoPackage, Shapefile, GeoJSON, FlatGeobuf, GeoParquet where GDAL has
   it) is written by the real commands (`quicksam segment`, `quicksam segment-all`: fresh processes) and
   read back with OGR: the same polygons and the same attribute values as the reference (SegmentEngine for
   `segment`; an in-process `segment_everything` run for `segment-all`).
2. A GeoPackage that also holds a user's `roads` layer keeps it, whoever writes into it: `segment`,
   `segment-all` (with and without --overwrite), both Processing algorithms, the dock's layer; and the
   run file of `segment-all` never deletes a user's file.
3. Refusals are one line and write nothing.

One feature store per module: a 400 x 256 px scene (EPSG:32633, 10 m pixels) with one bright square, in
two 256 px tiles of the seeded random tiny model. Masks are meaningless but deterministic.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
import shapely
import shapely.wkb
from osgeo import gdal, ogr, osr
from synthetic import (
    assert_one_line_error,
    box_at,
    file_states,
    run_cli,
    two_tile_store,
)
from synthetic import pixel_to_map_default as at

from quicksam.core.defaults import MASK_MODES
from quicksam.core.errors import QuickSamError
from quicksam.core.store import FeatureStore
from quicksam.interactive.automatic import AutoMaskSettings, partial_path, segment_everything
from quicksam.interactive.engine import MapPrompts, SegmentEngine
from quicksam.interactive.output_formats import (
    FORMATS,
    check_destination,
    format_for,
    short_field_names,
    write_layer,
)
from quicksam.ui.layers import FIELD_SPECS

#: Thresholds the random model's masks pass; 4 x 4 points per tile keep the runs fast. No box NMS and the
#: smallest of SAM's three masks: the random model's masks are near copies, so this gives some 15 objects (some
#: joined across the tile border) where test_segment_all.py's settings give one.
LOOSE = AutoMaskSettings(points_per_side=4, points_per_batch=5, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                         box_nms_thresh=1.0, min_mask_region_area=4, mask_mode="smallest")
LOOSE_ARGS = ["--points-per-side", "4", "--points-per-batch", "5", "--pred-iou-thresh", "0",
              "--stability-score-thresh", "0", "--box-nms-thresh", "1", "--min-mask-region-area", "4",
              "--mask-mode", "smallest"]
#: Coordinates are compared vertex by vertex within this many metres after normalising (ring orientation and
#: start vertex, Polygon vs one-part MultiPolygon differ between formats). Binary formats keep the doubles as
#: given; GeoJSON prints them in decimal (17 significant digits), which may change the last bit: 1e-6 m is far
#: above that and far below the 10 m pixel.
TOLERANCE_M = 1e-6
SEGMENT_FORMATS = [".gpkg", ".shp", ".geojson", ".json", ".fgb", ".parquet"]
SEGMENT_ALL_FORMATS = [".gpkg", ".shp", ".geojson", ".fgb", ".parquet"]
#: One object per group: a point on the square (a non-ASCII label, for the Shapefile's encoding), and a
#: point with a box (a text value of 60 characters) on the second tile.
#: The fields of `quicksam segment-all`'s output, in order.
SEGMENT_ALL_NAMES = ["id", "predicted_iou", "stability_score", "area", "area_m2", "tile_ids", "model", "checkpoint",
                     "level_factor", "resolution"]
OBJECTS = {"Straße": {"points": [(200, 120)], "box": None}, "B": {"points": [(330, 60)], "box": (300, 20, 380, 110)}}


def skip_without_driver(extension: str) -> None:
    fmt = next(f for f in FORMATS if extension in f.extensions)
    if not fmt.available():
        pytest.skip(f"this GDAL {gdal.__version__} has no {fmt.driver} driver (built without Apache Arrow), so "
                    f"{fmt.name} cannot be written here; the refusal is tested instead")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    return two_tile_store(tmp_path_factory.mktemp("formats-store"))


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    features = []
    for group, spec in OBJECTS.items():
        for col, row in spec["points"]:
            features.append({"type": "Feature", "properties": {"obj": group},
                             "geometry": {"type": "Point", "coordinates": list(at(col, row))}})
        if spec["box"] is not None:
            xmin, ymin, xmax, ymax = box_at(*spec["box"])
            features.append({"type": "Feature", "properties": {"obj": group}, "geometry": {
                "type": "Polygon", "coordinates": [[[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax],
                                                    [xmin, ymin]]]}})
    path = tmp_path_factory.mktemp("prompts") / "prompts.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features,
                                "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}}))
    return path


@pytest.fixture(scope="module")
def segment_reference(store) -> Dict[int, dict]:
    """The rows `quicksam segment --prompts FILE --group-field obj` must write, from SegmentEngine: by id."""
    engine = SegmentEngine(store)
    rows = {}
    for object_id, (group, spec) in enumerate(OBJECTS.items(), start=1):
        box = box_at(*spec["box"]) if spec["box"] else None
        prompts = MapPrompts(points=tuple(at(*p) for p in spec["points"]), labels=(1,) * len(spec["points"]), box=box)
        (segment,) = engine.segment(prompts)
        geometry = shapely.wkb.loads(segment.geometry.wkb)
        rows[object_id] = {"id": object_id, "label": group, "predicted_iou": segment.score, "area_m2": geometry.area,
                           "fg_points": len(spec["points"]), "bg_points": 0, "box": box, "model": store.model_name,
                           "checkpoint": store.checkpoint_sha256, "tile_id": segment.tile_id,
                           "geometry": shapely.normalize(shapely.MultiPolygon(
                               [geometry] if geometry.geom_type == "Polygon" else geometry.geoms))}
    return rows


@pytest.fixture(scope="module")
def segment_all_reference(store, tmp_path_factory) -> Dict[int, dict]:
    output = tmp_path_factory.mktemp("segment-all-reference") / "all.gpkg"
    result = segment_everything(store, output, LOOSE)
    _, names, rows = read_back(output)
    assert len(rows) == result.objects > 5 and result.merged_objects > 0
    assert names == SEGMENT_ALL_NAMES
    return rows


def with_our_names(rows: Dict[int, dict], names: List[str], ours: Sequence[str]) -> Dict[int, dict]:
    """`rows` read from a file whose fields are `names` (a Shapefile's cut to 10 characters), keyed by `ours`."""
    renamed = dict(zip(names, ours))
    return {key: {renamed.get(name, name): value for name, value in row.items()} for key, row in rows.items()}


def read_back(path: Path, layer: Optional[str] = None) -> Tuple[osr.SpatialReference, List[str], Dict[int, dict]]:
    """(CRS, field names, {id: row}) of a layer read with OGR; geometries as normalised shapely MultiPolygons.
    GeoJSON is read with DATE_AS_STRING=YES: by default GDAL's reader turns ISO 8601 text (`created`) into a
    date-time value; the file holds the text as written."""
    options = ["DATE_AS_STRING=YES"] if path.suffix in (".geojson", ".json") else []
    dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR, open_options=options)
    assert dataset is not None, path
    source = dataset.GetLayerByName(layer) if layer else dataset.GetLayer(0)
    defn = source.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    rows = {}
    for feature in source:
        row = {name: feature.GetField(name) for name in names}
        geometry = ogr.ForceToMultiPolygon(feature.GetGeometryRef().Clone())
        row["geometry"] = shapely.normalize(shapely.wkb.loads(bytes(geometry.ExportToIsoWkb())))
        rows[row["id"]] = row
    srs = source.GetSpatialRef().Clone()
    return srs, names, rows


def layers_of(path: Path) -> List[str]:
    dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR)
    return [dataset.GetLayer(i).GetName() for i in range(dataset.GetLayerCount())]


def assert_same_polygons(actual, expected) -> None:
    assert shapely.equals_exact(actual, expected, tolerance=TOLERANCE_M), (actual.wkt[:200], expected.wkt[:200])


def assert_utm33(srs: osr.SpatialReference) -> None:
    utm33 = osr.SpatialReference()
    utm33.ImportFromEPSG(32633)
    assert srs.IsSame(utm33), srs.ExportToWkt()


def text(value: Optional[str], path: Path) -> str:
    """A text value as written: a Shapefile (dBASE) cannot tell an empty text from no value and reads it as
    NULL (docs/segmenting.md); every other format keeps ''."""
    if value is None and path.suffix == ".shp":
        return ""
    return value


# -- 1. every format, written by the commands and read back -------------------------------------------------


@pytest.mark.parametrize("extension", SEGMENT_FORMATS)
def test_segment_writes_each_format_with_the_same_polygons_and_attributes(store, prompts_file, segment_reference,
                                                                         tmp_path, extension):
    skip_without_driver(extension)
    output = tmp_path / f"objects{extension}"
    result = run_cli("segment", store.root, "--prompts", prompts_file, "--group-field", "obj", "--output", output)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["output"] == str(output) and summary["objects_segmented"] == 2
    assert summary["layer"] == ("segments" if extension == ".gpkg" else None)
    srs, names, rows = read_back(output)
    assert_utm33(srs)  # the raster's CRS, not reprojected (GeoJSON included: see the test below)
    ours = [name for name, _ in FIELD_SPECS]
    assert names == short_field_names(ours, format_for(output).max_field_name)  # a Shapefile's are cut to 10
    rows = with_our_names(rows, names, ours)
    assert sorted(rows) == sorted(segment_reference)
    for object_id, expected in segment_reference.items():
        row = rows[object_id]
        assert_same_polygons(row["geometry"], expected["geometry"])
        assert row["label"] == expected["label"]  # "Straße": UTF-8 in every format (a Shapefile's .cpg)
        assert row["predicted_iou"] == pytest.approx(expected["predicted_iou"], abs=1e-6)  # rounded to 6 decimals
        # area_m2 is QGIS's planar measure of the written polygon; formats keep 15+ significant digits
        assert row["area_m2"] == pytest.approx(expected["area_m2"], rel=1e-9)
        assert (row["fg_points"], row["bg_points"], row["model"], row["checkpoint"], row["tile_id"]) == (
            expected["fg_points"], expected["bg_points"], expected["model"], expected["checkpoint"],
            expected["tile_id"])
        box = text(row["box"], output)
        if expected["box"] is None:
            assert box == ""
        else:
            assert [float(v) for v in box.split(",")] == pytest.approx(expected["box"], abs=1e-5)
        assert row["created"].endswith("+00:00")
    if extension == ".shp":
        assert {p.suffix for p in tmp_path.iterdir()} == {".shp", ".shx", ".dbf", ".prj", ".cpg"}
        assert (tmp_path / "objects.cpg").read_text().strip() == "UTF-8"


@pytest.mark.slow
@pytest.mark.parametrize("extension", SEGMENT_ALL_FORMATS)
def test_segment_all_writes_each_format_with_the_same_polygons_and_attributes(store, segment_all_reference,
                                                                             tmp_path, extension):
    skip_without_driver(extension)
    output = tmp_path / f"all{extension}"
    result = run_cli("segment-all", store.root, "--output", output, *LOOSE_ARGS)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert (summary["output"], summary["tiles"], summary["objects"]) == (str(output), 2, len(segment_all_reference))
    assert summary["layer"] == ("segments" if extension == ".gpkg" else None)
    assert not partial_path(output).exists()  # the run file is gone once the output is written
    srs, names, rows = read_back(output)
    assert_utm33(srs)
    assert names == short_field_names(SEGMENT_ALL_NAMES, format_for(output).max_field_name)
    rows = with_our_names(rows, names, SEGMENT_ALL_NAMES)
    assert sorted(rows) == sorted(segment_all_reference)
    for object_id, expected in segment_all_reference.items():
        row = rows[object_id]
        assert_same_polygons(row["geometry"], expected["geometry"])
        for name in ("predicted_iou", "stability_score", "area", "area_m2"):  # a Shapefile: text, 15 decimals
            assert row[name] == pytest.approx(expected[name], rel=1e-12), name
        for name in ("tile_ids", "model", "checkpoint"):
            assert row[name] == expected[name], name


def test_geojson_is_in_the_rasters_crs_and_says_so(store, tmp_path, segment_reference):
    """The choice (docs): the raster's CRS named by its EPSG code (GeoJSON 2008 `crs` member), coordinates as
    written, not reprojected to EPSG:4326."""
    source = tmp_path / "source.gpkg"
    _write_reference_layer(source, segment_reference)
    output = tmp_path / "out.geojson"
    write_layer(source, "segments", check_destination(output, "segments", False), False)
    document = json.loads(output.read_text())
    assert document["crs"] == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    x, y = document["features"][0]["geometry"]["coordinates"][0][0][0]
    assert 500000 <= x <= 504000 and 4197000 <= y <= 4200000  # metres of UTM 33N, not degrees


def test_geojson_refuses_a_crs_without_an_epsg_code(tmp_path):
    source = tmp_path / "custom.gpkg"
    custom = ("PROJCS[\"custom\",GEOGCS[\"GRS 1980\",DATUM[\"unknown\",SPHEROID[\"GRS80\",6378137,298.257222101]],"
              "PRIMEM[\"Greenwich\",0],UNIT[\"degree\",0.0174532925199433]],PROJECTION[\"Transverse_Mercator\"],"
              "PARAMETER[\"latitude_of_origin\",12.3],PARAMETER[\"central_meridian\",45.6],"
              "PARAMETER[\"scale_factor\",0.9999],PARAMETER[\"false_easting\",100000],"
              "PARAMETER[\"false_northing\",0],UNIT[\"metre\",1]]")
    _write_layer(source, custom, [("MULTIPOLYGON (((0 0,10 0,10 10,0 0)))", {"id": 1})])
    with pytest.raises(QuickSamError, match=r"has no EPSG code, so a GeoJSON file cannot state it; write out\.gpkg"):
        write_layer(source, "segments", check_destination(tmp_path / "out.geojson", "segments", False), False)
    assert not (tmp_path / "out.geojson").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["custom.gpkg"]  # nor a half-written file


def ogr_fields(path: Path) -> Dict[str, str]:
    """{name: OGR type name} of the first layer of a vector file, in order."""
    dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR)
    defn = dataset.GetLayer(0).GetLayerDefn()
    return {defn.GetFieldDefn(i).GetName(): defn.GetFieldDefn(i).GetTypeName() for i in range(defn.GetFieldCount())}


def test_segment_and_segment_all_write_the_same_measures(store, tmp_path, qgis_app, plugin):
    """One name per measure in both outputs, SAM's where SAM has one (interactive/object_fields.py), with the
    same types and units: in EPSG:32633 `area` (map units²) and `area_m2` are the same number."""
    import processing
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorLayer

    prompts = QgsVectorLayer("Point?crs=EPSG:32633", "prompts", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(*at(200, 120))))
    prompts.dataProvider().addFeatures([feature])
    processing.run("quicksam:segmentprompts", {"STORE": str(store.root), "PROMPTS": prompts,
                                               "OUTPUT": str(tmp_path / "segment.gpkg")})
    segment_everything(store, tmp_path / "all.gpkg", LOOSE)
    segment, segment_all = ogr_fields(tmp_path / "segment.gpkg"), ogr_fields(tmp_path / "all.gpkg")
    shared = ["id", "predicted_iou", "stability_score", "area", "area_m2", "model", "checkpoint"]
    assert [name for name in segment if name in shared] == [name for name in segment_all if name in shared] == shared
    assert all(segment[name] == segment_all[name] for name in shared)
    assert set(segment_all) - set(segment) == {"tile_ids"}  # an object of several tiles; segment's is in one
    for path in (tmp_path / "segment.gpkg", tmp_path / "all.gpkg"):
        _, _, rows = read_back(path)
        for row in rows.values():
            assert row["predicted_iou"] is not None and 0 <= row["stability_score"] <= 1
            assert row["area"] == pytest.approx(row["geometry"].area, rel=1e-9)  # m² in EPSG:32633
            assert row["area_m2"] == pytest.approx(row["area"], rel=1e-9)


def test_shapefile_field_names_fit_ten_characters_uniquely_and_stably():
    ours = [name for name, _ in FIELD_SPECS] + ["tile_ids"]
    # SAM's names and the level's factor are longer than 10 characters
    cut = {"predicted_iou": "predicted_", "stability_score": "stability_", "level_factor": "level_fact"}
    assert short_field_names(ours, 10) == [cut.get(name, name) for name in ours]  # the others fit as they are
    long = ["stability_score", "stability_offset", "stability_", "predicted_iou", "stability_1"]
    first = short_field_names(long, 10)
    # "stability_" fits and keeps its name; the others are cut and numbered in order
    assert first == ["stabilit_1", "stabilit_2", "stability_", "predicted_", "stabilit_3"]
    assert all(len(name) <= 10 for name in first) and len({n.lower() for n in first}) == len(first)
    assert short_field_names(long, 10) == first  # the same names give the same result
    assert short_field_names(long, None) == long


def test_shapefile_keeps_large_and_small_real_numbers_and_long_text(tmp_path):
    """dBASE stores numbers and text in columns of a fixed width: a large area must keep its digits, a tiny one
    (degrees²) its decimals, and tile_ids of an object over 20 tiles its 219 characters (OGR's default text
    column holds 80)."""
    source = tmp_path / "source.gpkg"
    values = [{"id": 1, "area": 3.5e11, "score": 0.123456, "tile_ids": ",".join(["r0000c0000"] * 20)},
              {"id": 2, "area": 8.1e-9, "score": 1.0, "tile_ids": "r0001c0002"}]
    _write_layer(source, "EPSG:32633", [("MULTIPOLYGON (((0 0,10 0,10 10,0 0)))", v) for v in values])
    output = tmp_path / "out.shp"
    write_layer(source, "segments", check_destination(output, "segments", False), False)
    _, _, rows = read_back(output)
    for expected in values:
        row = rows[expected["id"]]
        assert row["area"] == pytest.approx(expected["area"], rel=1e-6, abs=1e-15)  # 15 decimals: 8.1e-9 keeps 7 digits
        assert row["score"] == expected["score"] and row["tile_ids"] == expected["tile_ids"]


def test_another_ogr_format_by_its_extension_and_one_that_cannot_hold_polygons(store, tmp_path, segment_reference):
    source = tmp_path / "source.gpkg"
    _write_reference_layer(source, segment_reference)
    output = tmp_path / "out.gml"  # not in QuickSAM's own list: OGR's GML driver, after a trial write
    assert format_for(output).driver == "GML"
    write_layer(source, "segments", check_destination(output, "segments", False), False)
    srs, _, rows = read_back(output)
    assert_utm33(srs)
    for object_id, expected in segment_reference.items():
        assert_same_polygons(rows[object_id]["geometry"], expected["geometry"])
        assert rows[object_id]["label"] == expected["label"]
    with pytest.raises(QuickSamError, match=r"GDAL's GPX driver \(\.gpx\) cannot create a polygon layer.*write one "
                                            r"of \.gpkg \(GeoPackage\)"):
        check_destination(tmp_path / "out.gpx", "segments", False)


# -- 2. a GeoPackage keeps its other layers ----------------------------------------------------------------


def write_roads(path: Path) -> Path:
    """A user's GeoPackage with one layer, `roads` (two lines with a name)."""
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    layer = dataset.CreateLayer("roads", srs, ogr.wkbLineString)
    layer.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    for name, wkt in (("A1", "LINESTRING (500000 4199000,503000 4198000)"),
                      ("B2", "LINESTRING (501000 4200000,501000 4197500)")):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature["name"] = name
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        layer.CreateFeature(feature)
    dataset = None
    return path


def roads_of(path: Path) -> List[Tuple[str, str]]:
    dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR)
    layer = dataset.GetLayerByName("roads")
    assert layer is not None, f"the roads layer of {path} is gone"
    return sorted((feature["name"], feature.GetGeometryRef().ExportToWkt()) for feature in layer)


ROADS = [("A1", "LINESTRING (500000 4199000,503000 4198000)"), ("B2", "LINESTRING (501000 4200000,501000 4197500)")]


def segment_cli(store: FeatureStore, output: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("segment", store.root, "--point", ",".join(map(repr, at(200, 120))), "--output", output, *extra)


def test_segment_adds_and_overwrites_only_its_layer_in_a_geopackage(store, tmp_path):
    output = write_roads(tmp_path / "city.gpkg")
    added = segment_cli(store, output)  # no --overwrite needed: the file has no layer 'segments'
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["layer"] == "segments"
    assert added.stderr.strip() == f"wrote layer 'segments' into '{output}'; its other layers (roads) are kept"
    assert layers_of(output) == ["roads", "segments"] and roads_of(output) == ROADS

    before = file_states(tmp_path)
    refused = segment_cli(store, output)
    assert_one_line_error(refused, r"city\.gpkg' already has a layer 'segments'; choose another --layer, or delete "
                                   r"that layer \(or pass --overwrite\)")
    assert file_states(tmp_path) == before

    replaced = segment_cli(store, output, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert layers_of(output) == ["roads", "segments"] and roads_of(output) == ROADS
    assert len(read_back(output, "segments")[2]) == 1  # replaced, not appended

    named = segment_cli(store, output, "--layer", "buildings")
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["layer"] == "buildings"
    assert layers_of(output) == ["roads", "segments", "buildings"] and roads_of(output) == ROADS


@pytest.mark.slow
def test_segment_all_overwrite_keeps_the_other_layers_of_a_geopackage(store, tmp_path, segment_all_reference):
    output = write_roads(tmp_path / "city.gpkg")
    first = run_cli("segment-all", store.root, "--output", output, *LOOSE_ARGS)  # adds its layer, no overwrite
    assert first.returncode == 0, first.stderr
    assert layers_of(output) == ["roads", "segments"] and roads_of(output) == ROADS
    again = run_cli("segment-all", store.root, "--output", output, "--overwrite", *LOOSE_ARGS)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["layer"] == "segments"
    assert f"wrote layer 'segments' into '{output}'; its other layers (roads) are kept" in again.stderr
    assert layers_of(output) == ["roads", "segments"] and roads_of(output) == ROADS
    rows = read_back(output, "segments")[2]
    assert sorted(rows) == sorted(segment_all_reference)  # replaced, not appended
    assert not partial_path(output).exists()


def test_segment_everything_into_a_geopackage_layer_in_process(store, tmp_path, segment_all_reference):
    output = write_roads(tmp_path / "city.gpkg")
    result = segment_everything(store, output, LOOSE, overwrite=True, layer="objects")
    assert (result.layer, result.kept_layers) == ("objects", ("roads",))
    assert layers_of(output) == ["roads", "objects"] and roads_of(output) == ROADS
    assert sorted(read_back(output, "objects")[2]) == sorted(segment_all_reference)


def test_a_user_file_with_the_run_files_name_is_never_deleted(store, tmp_path):
    output = tmp_path / "city.gpkg"
    users = write_roads(partial_path(output))  # the user's own file happens to have the run file's name
    before = file_states(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(QuickSamError, match=r"city\.partial\.gpkg' is not a QuickSAM run in progress.*move or "
                                                r"rename that file, or choose another output name"):
            segment_everything(store, output, LOOSE, overwrite=overwrite)
        assert file_states(tmp_path) == before and roads_of(users) == ROADS


def test_processing_segmentprompts_into_an_existing_geopackage_keeps_its_layers(store, tmp_path, qgis_app, plugin):
    import processing
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsProcessingFeedback, QgsVectorLayer

    prompts = QgsVectorLayer("Point?crs=EPSG:32633", "prompts", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(*at(200, 120))))
    prompts.dataProvider().addFeatures([feature])
    output = write_roads(tmp_path / "city.gpkg")
    class Recording(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.messages: List[str] = []

        def pushInfo(self, info: str) -> None:  # noqa: N802 - Qt's name
            self.messages.append(info)
            super().pushInfo(info)

    for _ in range(2):  # the second run replaces the layer (Processing overwrites its outputs), roads stay
        feedback = Recording()
        results = processing.run("quicksam:segmentprompts", {"STORE": str(store.root), "PROMPTS": prompts,
                                                             "OUTPUT": str(output)}, feedback=feedback)
        assert results["OUTPUT"] == f"{output}|layername=segments"
        assert layers_of(output) == ["roads", "segments"] and roads_of(output) == ROADS
        assert len(read_back(output, "segments")[2]) == 1
    assert any("its layer 'segments' is replaced; its other layers (roads) are kept" in message
               for message in feedback.messages)
    # QGIS's own destination for a layer in a GeoPackage works too
    processing.run("quicksam:segmentprompts", {"STORE": str(store.root), "PROMPTS": prompts,
                                               "OUTPUT": f"ogr:dbname='{output}' table=\"mine\" (geom)"})
    assert layers_of(output) == ["roads", "segments", "mine"] and roads_of(output) == ROADS


def test_processing_segmentall_into_an_existing_geopackage_keeps_its_layers(store, tmp_path, qgis_app, plugin,
                                                                           segment_all_reference):
    import processing

    output = write_roads(tmp_path / "city.gpkg")
    params = {"STORE": str(store.root), "POINTS_PER_SIDE": 4, "POINTS_PER_BATCH": 5, "PRED_IOU_THRESH": 0.0,
              "STABILITY_SCORE_THRESH": 0.0, "BOX_NMS_THRESH": 1.0, "MIN_MASK_REGION_AREA": 4,
              "MASK_MODE": MASK_MODES.index("smallest"), "OUTPUT": str(output)}
    for overwrite in (False, True):
        results = processing.run("quicksam:segmentall", {**params, "OVERWRITE": overwrite})
        assert results["OBJECTS"] == len(segment_all_reference)
        assert layers_of(output) == ["roads", "segments"] and roads_of(output) == ROADS
        assert sorted(read_back(output, "segments")[2]) == sorted(segment_all_reference)
    processing.run("quicksam:segmentall", {**params, "LAYER_NAME": "second"})
    assert layers_of(output) == ["roads", "segments", "second"]


def test_the_docks_layer_is_added_to_an_existing_geopackage_keeping_its_layers(store, tmp_path, qgis_app):
    from qgis.core import QgsCoordinateTransformContext

    from quicksam.interactive.session import AcceptedObject
    from quicksam.ui.dock.object_writer import commit_object, open_or_create_prompts_layer
    from quicksam.ui.layers import FeatureBuilder, open_or_create_output_layer, raster_crs

    output = write_roads(tmp_path / "segments.gpkg")  # e.g. the store's segments.gpkg, where a user put roads
    crs, context = raster_crs(store), QgsCoordinateTransformContext()
    layer = open_or_create_output_layer(output, crs, context)
    prompts = MapPrompts(points=(at(200, 120),), labels=(1,))
    accepted = AcceptedObject(prompts, tuple(SegmentEngine(store).segment(prompts)))
    result = commit_object(layer, accepted, FeatureBuilder(store, crs, context))
    assert result.saved and result.object_ids == [1]
    del layer
    assert layers_of(output) == ["roads", "segments"] and roads_of(output) == ROADS
    assert len(read_back(output, "segments")[2]) == 1
    # the prompts layer of the store (STORE/prompts.gpkg) follows the same rule
    prompts_file = write_roads(store.root / "prompts.gpkg")
    try:
        assert open_or_create_prompts_layer(store, crs, context).isValid()
        assert layers_of(prompts_file) == ["roads", "prompts"] and roads_of(prompts_file) == ROADS
    finally:
        prompts_file.unlink()
    # a file of that name that is no GeoPackage is refused, not replaced
    other = tmp_path / "notes.gpkg"
    other.write_bytes(b"my notes")
    with pytest.raises(OSError, match="is not a GeoPackage QuickSAM can open"):
        open_or_create_output_layer(other, crs, context)
    assert other.read_bytes() == b"my notes"


# -- 3. refusals: one line, nothing written -------------------------------------------------------------------


def _existing_shapefile(tmp_path: Path) -> Tuple[Path, str]:
    output = tmp_path / "old.shp"
    for end in (".shp", ".shx", ".dbf"):
        output.with_suffix(end).write_bytes(b"user data")
    return output, r"old\.shp' exists; choose another name or delete it \(or pass --overwrite\)"


def _stale_dbf_only(tmp_path: Path) -> Tuple[Path, str]:
    output = tmp_path / "old.shp"
    output.with_suffix(".dbf").write_bytes(b"user data")  # a Shapefile's part without its .shp is still the user's
    return output, r"old\.shp' exists"


def _existing_geojson(tmp_path: Path) -> Tuple[Path, str]:
    output = tmp_path / "old.geojson"
    output.write_text('{"type": "FeatureCollection", "features": []}')
    return output, r"old\.geojson' exists; choose another name or delete it \(or pass --overwrite\)"


def _unknown_extension(tmp_path: Path) -> Tuple[Path, str]:
    return tmp_path / "out.xyz", (r"unknown extension '\.xyz'; end it in one of \.gpkg \(GeoPackage\), \.shp "
                                  r"\(Shapefile\), \.geojson/\.json \(GeoJSON\), \.fgb \(FlatGeobuf\)")


def _no_polygons(tmp_path: Path) -> Tuple[Path, str]:
    return tmp_path / "out.gpx", r"GDAL's GPX driver \(\.gpx\) cannot create a polygon layer"


@pytest.mark.parametrize("case", [_existing_shapefile, _stale_dbf_only, _existing_geojson, _unknown_extension,
                                  _no_polygons], ids=lambda case: case.__name__.strip("_"))
@pytest.mark.parametrize("command", ["segment", "segment-all"])
def test_refusals_are_one_line_and_write_nothing(store, tmp_path, case, command):
    output, hint = case(tmp_path)  # both commands word the overwrite option alike: "(or pass --overwrite)"
    before = file_states(tmp_path)
    result = (segment_cli(store, output) if command == "segment"
              else run_cli("segment-all", store.root, "--output", output, *LOOSE_ARGS))
    assert_one_line_error(result, hint)
    assert file_states(tmp_path) == before


def test_geoparquet_without_the_driver_is_refused_in_one_line(store, tmp_path):
    fmt = next(f for f in FORMATS if f.name == "GeoParquet")
    if fmt.available():
        pytest.skip(f"this GDAL {gdal.__version__} has the Parquet driver: GeoParquet is written and tested above")
    result = segment_cli(store, tmp_path / "out.parquet")
    assert_one_line_error(result, rf"GeoParquet \(\.parquet\) needs GDAL's Parquet driver, which this GDAL "
                                  rf"{gdal.__version__} does not have; write one of \.gpkg \(GeoPackage\), \.shp")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_a_single_layer_file_whole(store, tmp_path):
    output, _ = _existing_shapefile(tmp_path)
    output.with_suffix(".qix").write_bytes(b"an old spatial index")  # parts of the old dataset go too
    result = segment_cli(store, output, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.cpg", "old.dbf", "old.prj", "old.shp", "old.shx"]
    assert len(read_back(output)[2]) == 1


@pytest.mark.parametrize("layer, hint", [("gpkg_contents", r"starts with gpkg_, rtree_, sqlite_"),
                                         (" spaced", r"spaces at its ends")])
def test_unusable_layer_names_are_refused(tmp_path, layer, hint):
    with pytest.raises(QuickSamError, match=hint):
        check_destination(tmp_path / "out.gpkg", layer, False)


# -- helpers writing source layers ------------------------------------------------------------------------------


def _write_layer(path: Path, crs: str, features: Sequence[Tuple[str, dict]]) -> None:
    """A GeoPackage layer 'segments' (MultiPolygon) with the features' fields (int, real or text by value)."""
    srs = osr.SpatialReference()
    srs.SetFromUserInput(crs)
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = dataset.CreateLayer("segments", srs, ogr.wkbMultiPolygon)
    kinds = {int: ogr.OFTInteger64, float: ogr.OFTReal, str: ogr.OFTString}
    for name, value in features[0][1].items():
        layer.CreateField(ogr.FieldDefn(name, kinds[type(value)]))
    for wkt, values in features:
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        for name, value in values.items():
            feature[name] = value
        layer.CreateFeature(feature)
    dataset = None


def _write_reference_layer(path: Path, reference: Dict[int, dict]) -> None:
    _write_layer(path, "EPSG:32633", [(row["geometry"].wkt, {"id": row["id"], "label": row["label"]})
                                      for row in reference.values()])
