"""The pieces behind the Segment dock, each alone with real QGIS objects (no dock, no controller):
StoreBinding (which store, canvas <-> raster CRS), DecodeScheduler (hover rest, worker, remembered results,
pending accept), SegmentDrawing (rubber bands) and ObjectOutput (output and prompts layers).

The scene (tests/synthetic.py): 300 x 300 px, EPSG:32633, 10 m pixels, a bright 60 px square at pixel
(110, 110); encoded once per module (random weights, 256 px tiles). Each test gets its own copy, its own
QgsProject and its own canvas.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from osgeo import ogr
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.gui import QgsMapCanvas
from synthetic import CRS, encoded_square_scene, fresh_copy, pixel_to_map_default

from quicksam.core.errors import QuickSamError
from quicksam.interactive.engine import MapPrompts, Segment, SegmentEngine
from quicksam.interactive.session import AcceptedObject, SegmentOptions
from quicksam.interactive.store_lookup import FOUND_CHOSEN, FOUND_NEXT_TO_RASTER, STORE_PROPERTY
from quicksam.interactive.vectorise import Polygons
from quicksam.ui import settings
from quicksam.ui.dock.decode_scheduler import DecodeScheduler, ResultMemo
from quicksam.ui.dock.drawing import SegmentDrawing, segment_geometry
from quicksam.ui.dock.map_tool import SegmentMapTool
from quicksam.ui.dock.object_output import ObjectOutput, accepted_message
from quicksam.ui.dock.object_writer import PROMPTS_FILE, CommitResult
from quicksam.ui.dock.store_binding import StoreBinding
from quicksam.ui.layers import OUTPUT_FILE, output_fields

SQUARE = (110, 110, 60)
WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")
UTM = QgsCoordinateReferenceSystem(CRS)


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> Path:
    """A folder with scene.tif and its store scene.qsam (random weights, 256 px tiles)."""
    return encoded_square_scene(tmp_path_factory.mktemp("pieces"), SQUARE)


@pytest.fixture
def scene(encoded, tmp_path) -> Path:
    return fresh_copy(encoded, tmp_path)


@pytest.fixture
def project(qgis_app):
    """A project of its own (not QgsProject.instance()), cleared afterwards."""
    own = QgsProject()
    yield own
    own.clear()


@pytest.fixture
def canvas(qgis_app):
    """A canvas of its own in the raster's CRS (never shown)."""
    own = QgsMapCanvas()
    own.setDestinationCrs(UTM)
    yield own
    own.deleteLater()


@pytest.fixture
def raster_layer(scene, project) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(scene / "scene.tif"), "scene")
    assert layer.isValid()
    project.addMapLayer(layer)
    return layer


@pytest.fixture
def binding(canvas, project):
    piece = StoreBinding(canvas, project)
    yield piece
    piece.release()


@pytest.fixture
def engine(scene) -> SegmentEngine:
    return SegmentEngine.open(scene / "scene.qsam")


@pytest.fixture
def clean_store_list():
    settings.KNOWN_STORES.reset()
    yield
    settings.KNOWN_STORES.reset()


def square_centre() -> tuple:
    col, row, size = SQUARE
    return pixel_to_map_default(col + size / 2, row + size / 2)


def accepted_square(engine: SegmentEngine) -> AcceptedObject:
    prompts = MapPrompts().with_point(*square_centre(), 1)
    return AcceptedObject(prompts, tuple(engine.segment(prompts)))


def ogr_rows(path: Path, layer: str) -> list:
    """Features read through a separate GDAL connection: what is really on disk."""
    dataset = ogr.Open(str(path))
    rows = [(feature.items(), feature.GetGeometryRef().ExportToWkt()) for feature in dataset.GetLayerByName(layer)]
    dataset = None
    return rows


def assert_same_area(actual: QgsGeometry, expected: QgsGeometry, tolerance: float) -> None:
    """Equal up to `tolerance` of the area: geometries reprojected by QGIS and by the test may differ by the
    float noise of the two PROJ round trips."""
    assert not actual.isEmpty() and not expected.isEmpty()
    assert actual.symDifference(expected).area() <= tolerance * expected.area()


# -- StoreBinding: which store, and canvas <-> raster CRS ----------------------------------------------------


def test_binding_finds_the_store_next_to_the_raster_and_maps_canvas_positions(binding, canvas, raster_layer,
                                                                             scene, project):
    canvas.setDestinationCrs(WGS84)
    binding.bind(binding.lookup_layer(raster_layer))
    assert binding.store.root == scene / "scene.qsam" and binding.found_by == FOUND_NEXT_TO_RASTER
    assert binding.engine is not None and binding.problem is None
    assert binding.raster_crs == UTM

    x, y = square_centre()
    to_wgs84 = QgsCoordinateTransform(UTM, WGS84, project.transformContext())
    clicked = to_wgs84.transform(QgsPointXY(x, y))  # where the user clicks on a WGS 84 canvas
    # Two PROJ transforms (there and back): equal to a millimetre, not bitwise.
    assert binding.to_raster_xy(clicked) == pytest.approx((x, y), abs=1e-3)
    corner = to_wgs84.transformBoundingBox(raster_layer.extent())
    xmin, ymin, xmax, ymax = binding.box_to_raster(corner)
    assert xmin <= 500000 + 1e-3 and ymin <= 4197000 + 1e-3 and xmax >= 503000 - 1e-3 and ymax >= 4200000 - 1e-3


def test_binding_follows_the_canvas_crs_while_a_store_is_bound(binding, canvas, raster_layer):
    changes = []
    binding.transformChanged.connect(lambda: changes.append(True))
    canvas.setDestinationCrs(WGS84)
    assert changes == [] and binding.to_raster is None  # no store yet: nothing to follow

    binding.bind(binding.lookup_layer(raster_layer))
    assert binding.to_raster.sourceCrs() == WGS84
    canvas.setDestinationCrs(UTM)
    assert changes == [True] and binding.to_raster.sourceCrs() == UTM
    assert binding.to_raster_xy(QgsPointXY(*square_centre())) == pytest.approx(square_centre())


def test_binding_refuses_what_is_not_the_layers_store_and_remembers_a_chosen_one(
        binding, raster_layer, scene, tmp_path, clean_store_list):
    assert "choose a raster layer" in binding.lookup_chosen(str(scene / "scene.qsam")).problem  # no layer yet
    binding.lookup_layer(raster_layer)
    refused = binding.lookup_chosen(str(scene / "scene.tif"))
    binding.bind(refused)
    assert "is this layer's raster, not a feature store: encode it first" in binding.problem
    assert binding.store is None and binding.engine is None and binding.to_raster is None
    assert raster_layer.customProperty(STORE_PROPERTY) is None and settings.known_stores() == []

    mine = tmp_path / "my_store"
    shutil.copytree(scene / "scene.qsam", mine)
    binding.bind(binding.lookup_chosen(str(mine)))
    assert binding.store.root == mine and binding.found_by == FOUND_CHOSEN and binding.problem is None
    assert raster_layer.customProperty(STORE_PROPERTY) == str(mine) and settings.known_stores() == [str(mine)]

    binding.bind(binding.forget_layer())
    assert binding.raster_layer is None and binding.store is None and "removed" in binding.problem


def test_binding_says_what_to_do_when_the_decoder_cannot_be_loaded(binding, raster_layer, scene):
    (scene / "scene.qsam" / "decoder.onnx").write_bytes(b"not an onnx model")
    binding.bind(binding.lookup_layer(raster_layer))
    assert binding.store is None and binding.engine is None and binding.to_raster is None
    assert binding.problem and "\n" not in binding.problem and "encode" in binding.problem


# -- DecodeScheduler: hover rest, worker, remembered results, pending accept -------------------------------------


@pytest.fixture
def scheduler(qgis_app):
    piece = DecodeScheduler(delay_ms=20)
    yield piece
    piece.shutdown()
    piece.deleteLater()


def test_scheduler_decodes_an_object_in_the_worker_and_remembers_it(scheduler, engine):
    decoded = []
    scheduler.objectDecoded.connect(lambda *args: decoded.append(args))
    prompts, options = MapPrompts().with_point(*square_centre(), 1), SegmentOptions()
    assert scheduler.decode_object(engine, prompts, options) is None  # not known yet: the worker decodes
    assert scheduler.object_pending
    assert scheduler.wait_idle()
    [(got_prompts, got_options, segments)] = decoded
    assert (got_prompts, got_options) == (prompts, options) and not scheduler.object_pending
    assert [s.geometry.wkb for s in segments] == [s.geometry.wkb for s in engine.segment(prompts)]

    requests = scheduler.worker.stats.requests
    assert scheduler.decode_object(engine, prompts, options) == segments  # from memory, at once
    assert scheduler.preview(engine, prompts, options) == segments  # a preview of the same prompts too
    assert scheduler.worker.stats.requests == requests and len(decoded) == 1


def test_scheduler_reports_a_failed_decode_and_drops_the_pending_accept(scheduler, engine):
    failures = []
    scheduler.objectFailed.connect(failures.append)
    scheduler.accept_pending = True
    outside = MapPrompts().with_point(0.0, 0.0, 1)  # far outside the raster
    scheduler.decode_object(engine, outside, SegmentOptions())
    assert scheduler.wait_idle()
    assert len(failures) == 1 and "outside the raster" in failures[0]
    assert not scheduler.accept_pending and not scheduler.take_accept()
    assert len(scheduler.memo) == 0  # a failure is not remembered: the next attempt decodes again


def test_scheduler_reports_where_the_cursor_came_to_rest_once(scheduler):
    rests = []
    scheduler.rested.connect(rests.append)
    for x in (1.0, 2.0, 3.0):  # quick moves: each restarts the wait
        scheduler.rest_at(QgsPointXY(x, 7.0))
    assert scheduler.wait_idle()
    assert rests == [QgsPointXY(3.0, 7.0)]


def test_scheduler_reset_drops_answers_still_on_their_way(scheduler, engine):
    delivered = []
    scheduler.objectDecoded.connect(lambda *args: delivered.append(args))
    scheduler.previewDecoded.connect(delivered.append)
    prompts = MapPrompts().with_point(*square_centre(), 1)
    scheduler.preview(engine, prompts.with_point(square_centre()[0] + 50, square_centre()[1], 1), SegmentOptions())
    scheduler.decode_object(engine, prompts, SegmentOptions())
    scheduler.accept_pending = True
    scheduler.reset()  # another store was chosen
    assert scheduler.wait_idle()
    assert delivered == [] and len(scheduler.memo) == 0
    assert not scheduler.object_pending and not scheduler.accept_pending


def test_result_memo_forgets_the_least_recently_used_first():
    memo = ResultMemo(size=2)
    options = SegmentOptions()
    first, second, third = (MapPrompts().with_point(float(i), 0.0, 1) for i in range(3))
    memo.put(first, options, ("a",))
    memo.put(second, options, ("b",))
    assert memo.get(first, options) == ("a",)  # used again: now the most recent
    memo.put(third, options, ("c",))
    assert memo.get(second, options) is None and memo.get(first, options) == ("a",) and len(memo) == 2
    assert memo.get(first, SegmentOptions(mode="best")) is None  # other options, another result


# -- SegmentDrawing: markers in the canvas CRS, polygons with their CRS --------------------------------------------


@pytest.fixture
def tool(canvas):
    piece = SegmentMapTool(canvas)
    yield piece
    piece.release()
    piece.deleteLater()


def square_segment() -> Segment:
    """The square's outline as a segment (raster CRS), built by hand: no decoder involved."""
    x0, y0 = pixel_to_map_default(110, 170)
    x1, y1 = pixel_to_map_default(170, 110)
    geometry = QgsGeometry.fromWkt(f"MultiPolygon((({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0})))")
    polygons = Polygons(bytes(geometry.asWkb()), geometry.area(), 1)
    return Segment(polygons, 0.9, "r0_c0", 3600, np.zeros((1, 1), dtype=np.float32))


def test_drawing_marks_prompts_in_the_canvas_crs_and_the_object_reprojected(tool, canvas, project):
    canvas.setDestinationCrs(WGS84)
    to_raster = QgsCoordinateTransform(WGS84, UTM, project.transformContext())
    x, y = square_centre()
    prompts = MapPrompts().with_point(x, y, 1).with_point(x + 400, y, 0).with_box((x - 300, y - 300, x + 300, y + 300))
    drawing = SegmentDrawing(tool)
    drawing.show_object(prompts, [square_segment()], to_raster)

    to_wgs84 = QgsCoordinateTransform(UTM, WGS84, project.transformContext())
    expected = to_wgs84.transform(QgsPointXY(x, y))
    assert tool.foreground_band.numberOfVertices() == 1 and tool.background_band.numberOfVertices() == 1
    marker = tool.foreground_band.getPoint(0, 0)
    # Both sides reproject with PROJ; degrees equal to ~1 mm, not bitwise.
    assert (marker.x(), marker.y()) == pytest.approx((expected.x(), expected.y()), abs=1e-8)
    box = tool.box_band.asGeometry().boundingBox()
    expected_box = to_wgs84.transformBoundingBox(QgsGeometry.fromWkt(
        f"Polygon(({x - 300} {y - 300}, {x + 300} {y - 300}, {x + 300} {y + 300}, {x - 300} {y + 300}, "
        f"{x - 300} {y - 300}))").boundingBox())
    assert box.xMinimum() == pytest.approx(expected_box.xMinimum(), abs=1e-6)
    assert box.yMaximum() == pytest.approx(expected_box.yMaximum(), abs=1e-6)
    outline = segment_geometry(square_segment())
    outline.transform(to_wgs84)
    assert_same_area(tool.object_band.asGeometry(), outline, tolerance=1e-6)


def test_drawing_preview_and_clear(tool, canvas):
    drawing = SegmentDrawing(tool)
    drawing.show_preview([square_segment()], UTM)
    assert_same_area(tool.preview_band.asGeometry(), segment_geometry(square_segment()), tolerance=1e-9)
    drawing.show_object(MapPrompts().with_point(*square_centre(), 1), [square_segment()],
                        QgsCoordinateTransform(UTM, UTM, QgsProject.instance().transformContext()))
    assert tool.foreground_band.numberOfVertices() == 1 and not tool.object_band.asGeometry().isEmpty()
    drawing.clear_preview()
    assert tool.preview_band.asGeometry().isEmpty() and not tool.object_band.asGeometry().isEmpty()
    drawing.clear()
    assert tool.foreground_band.numberOfVertices() == 0 and tool.object_band.asGeometry().isEmpty()
    assert tool.box_band.asGeometry().isEmpty()


# -- ObjectOutput: where accepted objects go ---------------------------------------------------------------------


@pytest.fixture
def output(project, engine):
    piece = ObjectOutput(project)
    piece.bind(engine.store, UTM)
    yield piece
    piece.release()


def test_output_writes_to_the_stores_geopackage_added_to_the_project_once(output, project, engine, scene):
    output.label = "building"
    accepted = accepted_square(engine)
    first = output.commit(accepted)
    second = output.commit(accepted)
    assert (first.object_ids, second.object_ids, first.saved) == ([1], [2], True)
    rows = ogr_rows(scene / "scene.qsam" / OUTPUT_FILE, "segments")
    assert [row[0]["id"] for row in rows] == [1, 2] and {row[0]["label"] for row in rows} == {"building"}
    layers = [layer for layer in project.mapLayers().values() if isinstance(layer, QgsVectorLayer)]
    assert layers == [output.layer()] and output.layer().crs() == UTM
    assert accepted_message(first) == ("object 1 saved to 'QuickSAM segments'; click on the next one",
                                       Qgis.MessageLevel.Success)


def test_output_to_a_users_layer_is_reprojected_and_forgotten_when_it_is_removed(output, project, engine, scene):
    mine = QgsVectorLayer("MultiPolygon?crs=EPSG:4326", "mine", "memory")
    mine.dataProvider().addAttributes(output_fields().toList())
    mine.updateFields()
    project.addMapLayer(mine)
    output.choose(mine)
    accepted = accepted_square(engine)
    result = output.commit(accepted)
    assert result.layer_name == "mine" and not (scene / "scene.qsam" / OUTPUT_FILE).exists()
    [feature] = list(mine.getFeatures())
    expected = segment_geometry(accepted.segments[0])
    expected.transform(QgsCoordinateTransform(UTM, WGS84, project.transformContext()))
    assert_same_area(feature.geometry(), expected, tolerance=1e-6)

    project.removeMapLayer(mine.id())  # deletes the layer: the output must not touch it again
    assert output.choice is None
    assert output.commit(accepted).layer_name == "QuickSAM segments"
    assert len(ogr_rows(scene / "scene.qsam" / OUTPUT_FILE, "segments")) == 1


def test_output_keeps_prompts_with_the_object_id_and_colours_per_object(output, engine, scene):
    output.label = "tree"
    prompts = MapPrompts().with_point(*square_centre(), 1).with_point(square_centre()[0] + 500, square_centre()[1], 0)
    accepted = AcceptedObject(prompts, tuple(engine.segment(prompts)))
    output.keep_prompts = True
    result, problem = output.write(accepted)
    assert problem is None and result.object_ids == [1]
    rows = ogr_rows(scene / "scene.qsam" / PROMPTS_FILE, "prompts")
    assert sorted(row[0]["prompt"] for row in rows) == ["background", "foreground"]
    assert {(row[0]["object_id"], row[0]["label"], row[0]["output"]) for row in rows} == {
        (1, "tree", "QuickSAM segments")}

    def colour_active() -> bool:
        symbol_layer = output.layer().renderer().symbol().symbolLayer(0)
        return symbol_layer.dataDefinedProperties().property(symbol_layer.PropertyFillColor).isActive()

    assert colour_active()
    output.set_random_colours(False)
    assert not colour_active()


def test_output_saves_the_object_even_when_its_prompts_cannot_be_kept(output, engine, scene):
    (scene / "scene.qsam" / PROMPTS_FILE).write_text("the user's own notes")  # not a GeoPackage: kept as is
    output.keep_prompts = True
    result, problem = output.write(accepted_square(engine))
    assert result.saved and len(ogr_rows(scene / "scene.qsam" / OUTPUT_FILE, "segments")) == 1
    assert "is not a GeoPackage" in problem and "\n" not in problem
    assert (scene / "scene.qsam" / PROMPTS_FILE).read_text() == "the user's own notes"


def test_output_without_a_store_says_so(project):
    output = ObjectOutput(project)
    with pytest.raises(QuickSamError, match="choose a feature store first"):
        output.layer()
    output.release()


def test_accepted_message_says_where_the_object_went():
    edited = CommitResult("mine", [4, 5], saved=False)
    text, level = accepted_message(edited)
    assert text == ("object 4, 5 added to 'mine' (being edited: save the layer's edits to write it); "
                    "click on the next one") and level == Qgis.MessageLevel.Info
    text, level = accepted_message(CommitResult("simple", [], saved=True), "disk full")
    assert text == "the object saved to 'simple' (its prompts were not kept: disk full); click on the next one"
    assert level == Qgis.MessageLevel.Warning
