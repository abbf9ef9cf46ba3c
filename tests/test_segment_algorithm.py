"""quicksam:segmentprompts through the real Processing framework, checked against SegmentEngine directly.

One feature store (conftest's `store_path`, shared with test_cli_segment.py): the synthetic 320 x 300 scene
`synthetic.two_squares_scene()` in EPSG:32633, encoded with the seeded random tiny model in 256 px tiles
(4 tiles). Random weights make the masks meaningless but deterministic, so every test compares the algorithm's
output with `SegmentEngine.segment` on the same prompts: the algorithm must add grouping, CRS handling and
attributes, and change no polygon.

Prompt grouping rules themselves are also tested without QGIS (`prompt_input.group_records`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
import shapely
import shapely.wkb
from qgis.core import (
    NULL,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProject,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QVariant
from synthetic import CRS, PIXEL_SIZE, assert_same_geometry, box_at, write_raster
from synthetic import TWO_SQUARES_HEIGHT as HEIGHT
from synthetic import TWO_SQUARES_WIDTH as WIDTH
from synthetic import pixel_to_map_default as at
from synthetic import two_squares_scene as scene

from quicksam.core.defaults import MASK_MODES
from quicksam.core.store import FeatureStore
from quicksam.interactive.engine import MapPrompts
from quicksam.interactive.prompt_input import (
    PromptRecord,
    group_key,
    group_records,
    parse_label,
)
from quicksam.ui.algorithms.prompt_features import plain_value
from quicksam.ui.layers import FIELD_SPECS, qgis_field

ALGORITHM_ID = "quicksam:segmentprompts"


@pytest.fixture
def registered(qgis_processing, plugin):
    """Processing initialised and the real plugin's provider registered (as QGIS does it)."""
    assert QgsApplication.processingRegistry().algorithmById(ALGORITHM_ID) is not None
    return plugin


# -- helpers ------------------------------------------------------------------------------------------------


class RecordingFeedback(QgsProcessingFeedback):
    def __init__(self) -> None:
        super().__init__()
        self.errors: List[str] = []
        self.warnings: List[str] = []

    def reportError(self, error: str, fatalError: bool = False) -> None:  # noqa: N803 - Qt's name
        self.errors.append(error)

    def pushWarning(self, warning: str) -> None:
        self.warnings.append(warning)


def memory_layer(kind: str, crs: str, rows: Sequence[Tuple[object, Dict[str, object]]],
                 fields: Sequence[Tuple[str, str]] = ()) -> QgsVectorLayer:
    """A memory layer of `kind` ('Point' or 'Polygon') with features (geometry, attributes)."""
    layer = QgsVectorLayer(f"{kind}?crs={crs}", "prompts", "memory")
    layer.dataProvider().addAttributes([qgis_field(name, kind_) for name, kind_ in fields])
    layer.updateFields()
    features = []
    for geometry, attributes in rows:
        feature = QgsFeature(layer.fields())
        feature.setGeometry(geometry)
        for name, value in attributes.items():
            feature.setAttribute(name, value)
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)
    return layer


def point(x: float, y: float) -> QgsGeometry:
    return QgsGeometry.fromPointXY(QgsPointXY(x, y))


def rectangle(box: Sequence[float]) -> QgsGeometry:
    xmin, ymin, xmax, ymax = box
    return QgsGeometry.fromPolygonXY([[QgsPointXY(xmin, ymin), QgsPointXY(xmax, ymin), QgsPointXY(xmax, ymax),
                                       QgsPointXY(xmin, ymax), QgsPointXY(xmin, ymin)]])


def to_crs(geometry: QgsGeometry, source: str, target: str) -> QgsGeometry:
    geometry = QgsGeometry(geometry)
    geometry.transform(QgsCoordinateTransform(QgsCoordinateReferenceSystem(source),
                                              QgsCoordinateReferenceSystem(target), QgsProject.instance()))
    return geometry


def run(store_path: Path, prompts, feedback: Optional[QgsProcessingFeedback] = None, **parameters) -> dict:
    import processing

    parameters = {"STORE": str(store_path), "PROMPTS": prompts, "OUTPUT": "TEMPORARY_OUTPUT", **parameters}
    return processing.run(ALGORITHM_ID, parameters, feedback=feedback or QgsProcessingFeedback())


def features_of(layer: QgsVectorLayer) -> List[QgsFeature]:
    return sorted(layer.getFeatures(), key=lambda f: (f["id"], -f["predicted_iou"]))


def as_shapely(geometry: QgsGeometry):
    return shapely.wkb.loads(bytes(geometry.asWkb()))


def assert_matches_engine(feature: QgsFeature, segment, prompts: MapPrompts, store_path: Path,
                          object_id: int, label: str = "") -> None:
    """The output feature is the engine's segment with the documented attributes."""
    store = FeatureStore.open(store_path)
    geometry = as_shapely(feature.geometry())
    assert_same_geometry(geometry, segment.geometry)
    assert feature["id"] == object_id
    assert feature["label"] == label
    assert feature["predicted_iou"] == pytest.approx(segment.score, abs=1e-6)
    assert feature["fg_points"] == prompts.foreground_count
    assert feature["bg_points"] == prompts.background_count
    assert feature["model"] == store.model_name
    assert feature["checkpoint"] == store.checkpoint_sha256
    assert feature["tile_id"] == segment.tile_id
    assert feature["area_m2"] == pytest.approx(geometry.area, rel=1e-9)  # EPSG:32633: planar metres
    if prompts.box is None:
        assert feature["box"] == ""
    else:
        assert [float(v) for v in feature["box"].split(",")] == pytest.approx(prompts.box, abs=1e-5)
    assert feature["created"].endswith("+00:00")


# -- metadata -----------------------------------------------------------------------------------------------


def test_registered_by_the_plugin_with_its_parameters(registered):
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
    assert algorithm.name() == "segmentprompts"
    assert algorithm.groupId() == "segmentation"
    assert "prompt" in algorithm.shortHelpString().lower()
    names = [p.name() for p in algorithm.parameterDefinitions()]
    assert names == ["STORE", "PROMPTS", "GROUP_FIELD", "LABEL_FIELD", "MASK_MODE", "SIMPLIFY", "MIN_AREA",
                     "KEEP_HOLES", "REFINE", "OUTPUT"]
    param = algorithm.parameterDefinition
    assert isinstance(param("STORE"), QgsProcessingParameterFile)
    assert param("STORE").behavior() == QgsProcessingParameterFile.Behavior.Folder
    assert isinstance(param("PROMPTS"), QgsProcessingParameterFeatureSource)
    assert set(param("PROMPTS").dataTypes()) == {QgsProcessing.SourceType.TypeVectorPoint,
                                                 QgsProcessing.SourceType.TypeVectorPolygon}
    for name in ("GROUP_FIELD", "LABEL_FIELD"):
        assert isinstance(param(name), QgsProcessingParameterField)
        assert param(name).parentLayerParameterName() == "PROMPTS"
        assert param(name).flags() & QgsProcessingParameterDefinition.Flag.FlagOptional
    assert isinstance(param("MASK_MODE"), QgsProcessingParameterEnum)
    assert param("MASK_MODE").options() == list(MASK_MODES) == ["single", "best", "largest", "smallest", "all"]
    assert param("MASK_MODE").defaultValue() == 0
    assert isinstance(param("SIMPLIFY"), QgsProcessingParameterNumber)
    assert (param("SIMPLIFY").defaultValue(), param("MIN_AREA").defaultValue()) == (0.0, 0.0)
    assert isinstance(param("KEEP_HOLES"), QgsProcessingParameterBoolean)
    assert param("KEEP_HOLES").defaultValue() is True
    assert isinstance(param("OUTPUT"), QgsProcessingParameterFeatureSink)
    assert param("OUTPUT").dataType() == QgsProcessing.SourceType.TypeVectorPolygon
    assert all(param(n).help() for n in names), "every parameter has help"
    assert {o.name() for o in algorithm.outputDefinitions()} == {"OUTPUT", "SEGMENTED", "SKIPPED"}


# -- one object per point / per polygon ------------------------------------------------------------------------


def test_points_are_one_object_each_and_equal_the_engine(registered, store_path, engine):
    clicks = [at(75, 75), at(240, 210), at(170, 130)]
    layer = memory_layer("Point", CRS, [(point(*xy), {}) for xy in clicks])
    results = run(store_path, layer)
    output = results["OUTPUT"]
    assert output.crs() == QgsCoordinateReferenceSystem(CRS)
    assert output.fields().names() == [name for name, _ in FIELD_SPECS]
    features = features_of(output)
    assert [f["id"] for f in features] == [1, 2, 3]
    assert (results["SEGMENTED"], results["SKIPPED"]) == (3, 0)
    for object_id, (feature, xy) in enumerate(zip(features, clicks), start=1):
        prompts = MapPrompts(points=(xy,), labels=(1,))
        (segment,) = engine.segment(prompts)
        assert_matches_engine(feature, segment, prompts, store_path, object_id)
    # the objects differ: a test that passed the same prompts three times would fail here
    assert len({round(f.geometry().area()) for f in features}) == 3


def test_polygons_become_box_prompts(registered, store_path, engine):
    boxes = [box_at(30, 30, 120, 120), box_at(190, 160, 290, 260)]
    layer = memory_layer("Polygon", CRS, [(rectangle(b), {}) for b in boxes])
    features = features_of(run(store_path, layer)["OUTPUT"])
    assert len(features) == 2
    for object_id, (feature, box) in enumerate(zip(features, boxes), start=1):
        prompts = MapPrompts(box=box)
        (segment,) = engine.segment(prompts)
        assert_matches_engine(feature, segment, prompts, store_path, object_id)


def test_a_self_intersecting_polygon_still_gives_its_box(registered, store_path, engine):
    """Only the extent is used, so Processing's invalid-geometry check must not drop or refuse the feature."""
    import processing
    from qgis.core import QgsFeatureRequest, QgsProcessingContext

    xmin, ymin, xmax, ymax = box_at(30, 30, 120, 120)
    bow_tie = QgsGeometry.fromWkt(f"POLYGON(({xmin} {ymin}, {xmax} {ymax}, {xmax} {ymin}, {xmin} {ymax}, "
                                  f"{xmin} {ymin}))")
    assert not bow_tie.isGeosValid()
    context = QgsProcessingContext()
    context.setInvalidGeometryCheck(QgsFeatureRequest.InvalidGeometryCheck.GeometryAbortOnInvalid)
    results = processing.run(ALGORITHM_ID, {"STORE": str(store_path), "OUTPUT": "TEMPORARY_OUTPUT",
                                            "PROMPTS": memory_layer("Polygon", CRS, [(bow_tie, {})])},
                             context=context, feedback=QgsProcessingFeedback())
    (feature,) = features_of(results["OUTPUT"])
    (segment,) = engine.segment(MapPrompts(box=(xmin, ymin, xmax, ymax)))
    assert_same_geometry(as_shapely(feature.geometry()), segment.geometry)


def test_prompts_in_another_crs_give_the_same_polygons(registered, store_path, engine):
    clicks = [at(75, 75), at(240, 210)]
    box = box_at(30, 30, 120, 120)
    native_points = memory_layer("Point", CRS, [(point(*xy), {}) for xy in clicks])
    wgs84_points = memory_layer("Point", "EPSG:4326",
                                [(to_crs(point(*xy), CRS, "EPSG:4326"), {}) for xy in clicks])
    wgs84_box = memory_layer("Polygon", "EPSG:4326", [(to_crs(rectangle(box), CRS, "EPSG:4326"), {})])
    assert wgs84_points.getFeature(1).geometry().asPoint().x() < 20  # really degrees
    native = features_of(run(store_path, native_points)["OUTPUT"])
    projected = features_of(run(store_path, wgs84_points)["OUTPUT"])
    assert len(native) == len(projected) == 2
    for a, b, xy in zip(native, projected, clicks):
        assert_same_geometry(as_shapely(b.geometry()), as_shapely(a.geometry()))
        assert b["predicted_iou"] == pytest.approx(a["predicted_iou"], abs=1e-6)
        (segment,) = engine.segment(MapPrompts(points=(xy,), labels=(1,)))
        assert_same_geometry(as_shapely(b.geometry()), segment.geometry)
    (boxed,) = features_of(run(store_path, wgs84_box)["OUTPUT"])
    (segment,) = engine.segment(MapPrompts(box=box))
    assert_same_geometry(as_shapely(boxed.geometry()), segment.geometry)
    assert [float(v) for v in boxed["box"].split(",")] == pytest.approx(box, abs=1e-5)


# -- grouping and labels -----------------------------------------------------------------------------------------


def write_grouped_geojson(path: Path) -> Path:
    """Mixed points and a polygon in EPSG:32633: group 'a' = fg + bg point, group 'b' = a polygon's box plus a
    fg point, and a point with no group (its own object)."""
    def feature(geometry: dict, **properties) -> dict:
        return {"type": "Feature", "properties": properties, "geometry": geometry}

    def pt(col: float, row: float) -> dict:
        return {"type": "Point", "coordinates": list(at(col, row))}

    xmin, ymin, xmax, ymax = box_at(190, 160, 290, 260)
    ring = [[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax], [xmin, ymin]]
    collection = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
        "features": [
            feature(pt(75, 75), obj="a", lab=1),
            feature({"type": "Polygon", "coordinates": [ring]}, obj="b", lab=None),
            feature(pt(170, 130), obj=None, lab=1),
            feature(pt(20, 20), obj="a", lab=0),
            feature(pt(240, 210), obj="b", lab=1),
        ],
    }
    path.write_text(json.dumps(collection))
    return path


GROUPED_PROMPTS = [
    (1, "a", MapPrompts(points=(at(75, 75), at(20, 20)), labels=(1, 0))),
    (2, "b", MapPrompts(points=(at(240, 210),), labels=(1,), box=box_at(190, 160, 290, 260))),
    (3, "", MapPrompts(points=(at(170, 130),), labels=(1,))),
]


def test_group_field_joins_points_and_a_polygon_box_with_labels(registered, store_path, engine, tmp_path):
    path = write_grouped_geojson(tmp_path / "prompts.geojson")
    results = run(store_path, str(path), GROUP_FIELD="obj", LABEL_FIELD="lab")
    features = features_of(results["OUTPUT"])
    assert len(features) == 3
    for feature, (object_id, label, prompts) in zip(features, GROUPED_PROMPTS):
        (segment,) = engine.segment(prompts)
        assert_matches_engine(feature, segment, prompts, store_path, object_id, label)
    assert [(f["fg_points"], f["bg_points"]) for f in features] == [(1, 1), (1, 0), (1, 0)]
    # without the group field the five features are five objects; the lone background point is skipped
    assert len(features_of(run(store_path, str(path), LABEL_FIELD="lab")["OUTPUT"])) == 4  # bg-only one skipped


def test_background_label_changes_the_mask(registered, store_path, engine):
    """A label field is read: the fg + bg object differs from the same two points both foreground."""
    rows = [(point(*at(75, 75)), {"g": 1, "l": 1}), (point(*at(20, 20)), {"g": 1, "l": 0})]
    layer = memory_layer("Point", CRS, rows, [("g", "int"), ("l", "int")])
    (labelled,) = features_of(run(store_path, layer, GROUP_FIELD="g", LABEL_FIELD="l")["OUTPUT"])
    (unlabelled,) = features_of(run(store_path, layer, GROUP_FIELD="g")["OUTPUT"])
    assert (labelled["fg_points"], labelled["bg_points"]) == (1, 1)
    assert (unlabelled["fg_points"], unlabelled["bg_points"]) == (2, 0)
    (both_fg,) = engine.segment(MapPrompts(points=(at(75, 75), at(20, 20)), labels=(1, 1)))
    assert_same_geometry(as_shapely(unlabelled.geometry()), both_fg.geometry)
    assert labelled["predicted_iou"] != pytest.approx(unlabelled["predicted_iou"], abs=1e-6)


# -- mask modes and vectorising options --------------------------------------------------------------------------


def test_mask_mode_all_gives_three_features_per_object(registered, store_path, engine):
    clicks = [at(75, 75), at(240, 210)]
    layer = memory_layer("Point", CRS, [(point(*xy), {}) for xy in clicks])
    features = features_of(run(store_path, layer, MASK_MODE=MASK_MODES.index("all"))["OUTPUT"])
    for object_id, xy in enumerate(clicks, start=1):
        expected = engine.segment(MapPrompts(points=(xy,), labels=(1,)), mode="all")
        assert len(expected) == 3, "the chosen prompts give three non-empty masks"
        mine = [f for f in features if f["id"] == object_id]
        assert len(mine) == 3
        for segment in expected:
            match = [f for f in mine if f["predicted_iou"] == pytest.approx(segment.score, abs=1e-6)]
            assert len(match) == 1
            assert_same_geometry(as_shapely(match[0].geometry()), segment.geometry)


def test_largest_is_at_least_smallest_and_both_equal_the_engine(registered, store_path, engine):
    xy = at(75, 75)
    layer = memory_layer("Point", CRS, [(point(*xy), {})])
    areas = {}
    for mode in ("largest", "smallest", "best"):
        (feature,) = features_of(run(store_path, layer, MASK_MODE=MASK_MODES.index(mode))["OUTPUT"])
        (segment,) = engine.segment(MapPrompts(points=(xy,), labels=(1,)), mode=mode)
        assert_same_geometry(as_shapely(feature.geometry()), segment.geometry)
        areas[mode] = feature["area_m2"]
    assert areas["largest"] >= areas["smallest"]
    assert areas["largest"] > areas["smallest"], "random masks of different sizes, so the modes are told apart"


def test_simplify_min_area_and_holes_are_passed_to_the_engine(registered, store_path, engine):
    xy = at(240, 210)
    layer = memory_layer("Point", CRS, [(point(*xy), {})])
    (exact,) = features_of(run(store_path, layer)["OUTPUT"])
    options = dict(simplify_tolerance=25.0, min_area_pixels=4.0, keep_holes=False)
    (simplified,) = features_of(run(store_path, layer, SIMPLIFY=25.0, MIN_AREA=4.0, KEEP_HOLES=False)["OUTPUT"])
    (segment,) = engine.segment(MapPrompts(points=(xy,), labels=(1,)), **options)
    assert_same_geometry(as_shapely(simplified.geometry()), segment.geometry)
    assert simplified.geometry().constGet().nCoordinates() < exact.geometry().constGet().nCoordinates()


# -- prompts that cannot be segmented ----------------------------------------------------------------------------


def test_objects_outside_the_raster_are_reported_and_skipped(registered, store_path, engine):
    outside = (at(-50, 10), at(100, HEIGHT + 40))
    rows = [(point(*outside[0]), {}), (point(*at(75, 75)), {}), (point(*outside[1]), {})]
    feedback = RecordingFeedback()
    results = run(store_path, memory_layer("Point", CRS, rows), feedback)
    features = features_of(results["OUTPUT"])
    assert [f["id"] for f in features] == [2]
    assert (results["SEGMENTED"], results["SKIPPED"]) == (1, 2)
    skipped = [e for e in feedback.errors if "skipped" in e]
    assert len(skipped) == 2
    assert skipped[0].startswith("object 1 (feature 1) skipped:") and "outside the raster" in skipped[0]
    assert skipped[1].startswith("object 3 (feature 3) skipped:")


def test_the_run_fails_and_writes_nothing_when_no_object_can_be_segmented(registered, store_path, tmp_path):
    import processing

    layer = memory_layer("Point", CRS, [(point(*at(-50, 10)), {}), (point(*at(-80, 10)), {})])
    output = tmp_path / "out.gpkg"
    with pytest.raises(QgsProcessingException) as raised:
        processing.run(ALGORITHM_ID, {"STORE": str(store_path), "PROMPTS": layer, "OUTPUT": str(output)},
                       feedback=QgsProcessingFeedback())
    assert "None of the 2 objects could be segmented" in str(raised.value)
    assert "outside the raster" in str(raised.value)
    assert not output.exists()


#: The raster's extent as every "outside the raster" message gives it (320 x 300 px of 10 m from 500000,4200000).
EXTENT_TEXT = "(x 500000 to 503200, y 4197000 to 4200000 in EPSG:32633)"


def one_line(text: str) -> str:
    assert "\n" not in text, text
    return text


def test_a_skipped_object_says_which_prompt_and_where(registered, store_path):
    feedback = RecordingFeedback()
    run(store_path, memory_layer("Point", CRS, [(point(*at(-50, 10)), {}), (point(*at(75, 75)), {})]), feedback)
    assert [one_line(e) for e in feedback.errors] == [
        f"object 1 (feature 1) skipped: the point at 499500,4199900 is outside the raster {EXTENT_TEXT}; place "
        "prompts inside the raster"]
    with pytest.raises(QgsProcessingException) as raised:
        run(store_path, memory_layer("Polygon", CRS, [(rectangle(box_at(-100, 10, -50, 60)), {})]))
    assert one_line(str(raised.value)) == (
        f"Nothing was segmented: object 1 (feature 1) skipped: the box 499000,4199400,499500,4199900 is outside the "
        f"raster {EXTENT_TEXT}; place prompts inside the raster")


def test_an_empty_mask_names_the_prompt(registered, store_path):
    layer = memory_layer("Point", CRS, [(point(*at(75, 75)), {})])
    with pytest.raises(QgsProcessingException) as raised:
        run(store_path, layer, MIN_AREA=1e9)  # every part is smaller: nothing is left of the mask
    assert one_line(str(raised.value)) == (
        "Nothing was segmented: object 1 (feature 1) skipped: no object found under the point at 500750,4199250 "
        "(the mask was empty, or smaller than the minimum area); move or add prompts")


@pytest.mark.parametrize("crs, advice", [
    (CRS, "if they are, the prompt layer's CRS (EPSG:32633) is wrong: set it to EPSG:4326"),
    ("", "the prompt layer has no CRS, so they were read in the raster's CRS: if they are longitude/latitude, set "
         "the layer's CRS to EPSG:4326"),
    ("EPSG:32632", "check the prompts' CRS (EPSG:32632)"),  # transformed: their own CRS is what to check
], ids=["layer-crs-is-the-rasters", "layer-without-crs", "layer-in-another-crs"])
def test_prompts_in_degrees_on_a_projected_raster_say_so(registered, store_path, crs, advice):
    positions = [(15.2, 37.9), at(75, 75)]  # in the raster's CRS once read (and transformed)
    rows = [(point(x, y) if crs in (CRS, "") else to_crs(point(x, y), CRS, crs), {}) for x, y in positions]
    layer = memory_layer("Point", crs, rows)
    assert layer.crs().isValid() == bool(crs)
    feedback = RecordingFeedback()
    results = run(store_path, layer, feedback)
    assert (results["SEGMENTED"], results["SKIPPED"]) == (1, 1)
    assert [one_line(e) for e in feedback.errors] == [
        f"object 1 (feature 1) skipped: the point at 15.2,37.9 is outside the raster {EXTENT_TEXT}; its numbers look "
        f"like longitude/latitude degrees, not EPSG:32633 coordinates; {advice}"]


def test_a_polygon_over_the_raster_edge_gives_its_box_clipped_to_the_raster(registered, store_path, engine):
    box = box_at(250.2, -30.7, 400.1, 90.3)  # past the top and right edges of the 320 x 300 px raster
    features = features_of(run(store_path, memory_layer("Polygon", CRS, [(rectangle(box), {})]))["OUTPUT"])
    (feature,) = features
    (segment,) = engine.segment(MapPrompts(box=box))
    assert_matches_engine(feature, segment, MapPrompts(box=box), store_path, 1)
    geometry = as_shapely(feature.geometry())
    # Pixels count when their centre is in the box: up to half a pixel past a box edge that cuts pixels
    # (col 250.2, row 90.3); the raster's edges are pixel edges, so only float noise past them.
    raster = shapely.box(*box_at(0, 0, WIDTH, HEIGHT)).buffer(1e-6, join_style="mitre")
    assert geometry.area > 0
    assert geometry.within(shapely.box(*box).buffer(0.5 * PIXEL_SIZE + 1e-6, join_style="mitre").intersection(raster))


def test_lonlat_and_prompt_wording_without_qgis():
    from quicksam.interactive.engine import looks_like_lonlat
    from quicksam.interactive.prompt_input import SkippedObject

    utm = (500000.0, 4197000.0, 503200.0, 4200000.0)
    assert looks_like_lonlat([(15.2, 37.9)], utm)
    assert looks_like_lonlat([(-180.0, -90.0), (180.0, 90.0)], utm)
    assert not looks_like_lonlat([(15.2, 37.9), (500100.0, 4199000.0)], utm)  # one real coordinate: no
    assert not looks_like_lonlat([(181.0, 37.9)], utm)
    assert not looks_like_lonlat([(15.2, 37.9)], (14.0, 37.0, 16.0, 39.0))  # a raster in degrees itself
    assert not looks_like_lonlat([(15.2, 37.9)], (-1000.0, -1000.0, 1000.0, 1000.0))  # near 0 in metres: unsure
    assert MapPrompts(points=((1.5, 2.0),), labels=(1,)).describe() == "the point at 1.5,2"
    assert MapPrompts(points=((1.0, 2.0), (3.0, 4.0)), labels=(1, 0), box=(0.0, 0.0, 5.0, 5.0)).describe() == (
        "the box 0,0,5,5 and the 2 points at 1,2 and 3,4")
    skipped = SkippedObject(3, "group 'a) b'", "the point at 1,2 is outside the raster; place prompts inside it")
    assert SkippedObject.from_message(skipped.message()) == skipped
    assert SkippedObject.from_message("Nothing was segmented") is None


def test_unusable_groups_are_skipped_with_their_reason(registered, store_path):
    rows = [(rectangle(box_at(30, 30, 120, 120)), {"g": "two"}), (rectangle(box_at(40, 40, 90, 90)), {"g": "two"}),
            (rectangle(box_at(190, 160, 290, 260)), {"g": "one"})]
    feedback = RecordingFeedback()
    layer = memory_layer("Polygon", CRS, rows, [("g", "string")])
    features = features_of(run(store_path, layer, feedback, GROUP_FIELD="g")["OUTPUT"])
    assert [(f["id"], f["label"]) for f in features] == [(2, "one")]
    assert any(e.startswith("object 1 (group 'two') skipped:") and "2 polygons" in e for e in feedback.errors)


@pytest.mark.parametrize("store_kind, expected", [
    ("raster", "is a file, not a QuickSAM feature store"),
    ("missing", "does not exist"),
    ("no_decoder", "has no decoder.onnx"),
])
def test_bad_stores_are_refused_with_a_helpful_message(registered, store_path, tmp_path, store_kind, expected):
    import shutil

    if store_kind == "raster":
        store = write_raster(tmp_path / "scene.tif", scene())
    elif store_kind == "missing":
        store = tmp_path / "no-such-store"
    else:
        store = Path(shutil.copytree(store_path, tmp_path / "store"))
        (store / "decoder.onnx").unlink()
    layer = memory_layer("Point", CRS, [(point(*at(75, 75)), {})])
    with pytest.raises(QgsProcessingException) as raised:
        run(store, layer)
    assert expected in str(raised.value)


def test_cancel_stops_the_run(registered, store_path):
    feedback = QgsProcessingFeedback()
    feedback.cancel()
    with pytest.raises(QgsProcessingException, match="cancelled"):
        run(store_path, memory_layer("Point", CRS, [(point(*at(75, 75)), {})]), feedback)


def test_unknown_field_is_refused(registered, store_path):
    layer = memory_layer("Point", CRS, [(point(*at(75, 75)), {})], [("g", "int")])
    with pytest.raises(QgsProcessingException):
        run(store_path, layer, GROUP_FIELD="nope")


# -- grouping rules without QGIS ---------------------------------------------------------------------------------


def test_group_records_rules():
    records = [
        PromptRecord(1, points=((1.0, 1.0),), group="a"),
        PromptRecord(2, points=((2.0, 2.0),)),
        PromptRecord(3, points=((3.0, 3.0),), label=0, group="a"),
        PromptRecord(4, box=(0.0, 0.0, 5.0, 5.0), group=7),
        PromptRecord(5, points=((4.0, 4.0),), label=0),
        PromptRecord(6, box=(0.0, 0.0, 1.0, 1.0), group=7.0),  # 7 and 7.0 are one group
        PromptRecord(7, points=((5.0, 5.0),), group="bad", problem="feature 7: label 2 is neither"),
        PromptRecord(8, box=(1.0, 1.0, 2.0, 2.0), label=1, group="c"),
        PromptRecord(9, points=((6.0, 6.0),), label=0, group="c"),
    ]
    objects, skipped = group_records(records)
    assert [(o.object_id, o.name, o.label) for o in objects] == [(1, "group 'a'", "a"), (2, "feature 2", ""),
                                                                   (6, "group 'c'", "c")]
    assert objects[0].prompts == MapPrompts(points=((1.0, 1.0), (3.0, 3.0)), labels=(1, 0))
    assert objects[2].prompts == MapPrompts(points=((6.0, 6.0),), labels=(0,), box=(1.0, 1.0, 2.0, 2.0))
    reasons = {s.object_id: s.reason for s in skipped}
    assert set(reasons) == {3, 4, 5}
    assert "2 polygons" in reasons[3]
    assert "only background points" in reasons[4]
    assert reasons[5].startswith("feature 7: label 2")


@pytest.mark.parametrize("value, expected", [
    (None, 1), (1, 1), (0, 0), (1.0, 1), (True, 1), (False, 0), ("1", 1), (" 0 ", 0), ("", 1), (NULL, 1),
])
def test_parse_label_accepts(value, expected):
    """Values as the QGIS layer hands them on: QGIS's NULL (a null QVariant) becomes None first."""
    assert parse_label(plain_value(value)) == expected


@pytest.mark.parametrize("value", [2, -1, 0.5, "yes", "fg"])
def test_parse_label_refuses(value):
    with pytest.raises(ValueError, match="neither 1"):
        parse_label(value)


def test_group_key_normalises_empty_values():
    assert group_key(None) is None and group_key("  ") is None and group_key(plain_value(NULL)) is None
    assert group_key(3) == 3 and group_key("x") == "x"


def test_plain_value_turns_qgis_null_into_none():
    """The QGIS layer's conversion: NULL (null QVariant) -> None; a set QVariant -> its value; others as-is."""
    assert plain_value(NULL) is None
    assert plain_value(QVariant(5)) == 5
    assert plain_value("x") == "x" and plain_value(0) == 0


def test_loaded_outputs_are_named_after_the_raster_and_the_log_has_a_plain_summary(registered, store_path, tmp_path):
    """Two runs (a temporary layer and a file) do not both come out as the output's description, and the
    log says what was done in a sentence."""
    import processing

    class Infos(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.infos: List[str] = []

        def pushInfo(self, info: str) -> None:  # noqa: N802 - Qt's name
            self.infos.append(info)

    layer = memory_layer("Point", CRS, [(point(*at(75, 75)), {}), (point(*at(240, 210)), {})])
    feedback = Infos()
    file_output = tmp_path / "objects.gpkg"
    added = []
    try:
        for output, log in (("TEMPORARY_OUTPUT", feedback), (str(file_output), QgsProcessingFeedback())):
            results = processing.runAndLoadResults(ALGORITHM_ID, {"STORE": str(store_path), "PROMPTS": layer,
                                                                  "OUTPUT": output}, feedback=log)
            added.append(QgsProject.instance().mapLayer(results["OUTPUT"])
                         or QgsProject.instance().mapLayersByName("scene — segments")[-1])
        assert [a.name() for a in added] == ["scene — segments", "scene — segments"]  # the raster is scene.tif
        assert added[1].source().startswith(str(file_output))
        [summary] = [line for line in feedback.infos if "objects segmented" in line]
        assert re.fullmatch(r"2 of 2 objects segmented, 0 skipped, in \d+\.\d s; written to a temporary layer\.",
                            summary), summary
    finally:
        QgsProject.instance().removeMapLayers([a.id() for a in added])
