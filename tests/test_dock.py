"""The Segment dock and map tool in real QGIS: a real canvas, a raster layer, a store with random weights,
real QgsMapMouseEvents and key events. Every polygon is compared with the engine decoding the same
prompts directly (SegmentEngine.segment): plumbing and geometry exactly, never mask quality.

The scene (tests/synthetic.py): 300 x 300 px, EPSG:32633, 10 m pixels, a bright 60 px square at
pixel (110, 110); encoded once per module in 128 px tiles.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from unittest import mock

import pytest
from osgeo import ogr
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsGeometry,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsSymbolLayer,
    QgsVectorLayer,
)
from qgis.gui import QgsMapMouseEvent, QgsMapToolPan
from qgis.PyQt.QtCore import QEvent, QPoint, QSize, Qt
from qgis.PyQt.QtGui import QColor, QKeyEvent, QKeySequence
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QAction, QShortcut
from synthetic import CRS, encoded_square_scene, fresh_copy, pixel_to_map_default

from quicksam.interactive.engine import MapPrompts, PromptError, SegmentEngine
from quicksam.interactive.session import SegmentOptions, SegmentSession
from quicksam.interactive.store_lookup import STORE_PROPERTY, check_store_matches_layer, find_store
from quicksam.ui import settings
from quicksam.ui.dock import decode_worker
from quicksam.ui.dock.dock import DOCK_OBJECT_NAME, SegmentDock
from quicksam.ui.dock.drawing import segment_geometry
from quicksam.ui.dock.object_writer import EDIT_COMMAND, PROMPTS_FILE
from quicksam.ui.layers import OUTPUT_FILE, output_fields

TILE = 128
SQUARE = (110, 110, 60)
DOCK_SETTINGS = (settings.KNOWN_STORES, settings.MASK_MODE, settings.MIN_AREA_PIXELS, settings.SIMPLIFY_TOLERANCE,
                 settings.KEEP_HOLES, settings.KEEP_PROMPTS, settings.RANDOM_COLOURS, settings.HOVER_PREVIEW,
                 settings.HOVER_DELAY_MS, settings.SEGMENT_DOCK_OPEN)


# -- the scene, encoded once --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> Path:
    """A folder with scene.tif and its store scene.qsam (random weights)."""
    return encoded_square_scene(tmp_path_factory.mktemp("encoded"), SQUARE, tile_size=TILE, overlap=32)


@pytest.fixture
def scene(encoded, tmp_path) -> Path:
    """A fresh copy of the raster and its store for one test (objects are written into the store)."""
    return fresh_copy(encoded, tmp_path)


@pytest.fixture
def engine(scene) -> SegmentEngine:
    """The reference: the same store decoded directly, without the dock."""
    return SegmentEngine.open(scene / "scene.qsam")


@pytest.fixture(autouse=True)
def clean_settings():
    for setting in DOCK_SETTINGS:
        setting.reset()
    settings.HOVER_DELAY_MS.set_value(30)  # a short rest keeps hover tests quick
    yield
    for setting in DOCK_SETTINGS:
        setting.reset()


@pytest.fixture
def raster_layer(scene, show_raster) -> QgsRasterLayer:
    return show_raster(scene / "scene.tif")


@pytest.fixture
def dock(raster_layer, qgis_iface):
    """The dock opened on the raster layer, its tool active on the canvas."""
    widget = SegmentDock(qgis_iface, qgis_iface.mainWindow())
    widget.setUserVisible(True)
    QgsApplication.processEvents()
    yield widget
    widget.release()
    widget.deleteLater()
    QgsApplication.processEvents()


# -- helpers ------------------------------------------------------------------------------------------


def to_screen(canvas, x: float, y: float) -> QPoint:
    """Screen pixel of a canvas-CRS map position."""
    pixel = canvas.getCoordinateTransform().transform(x, y)
    return QPoint(round(pixel.x()), round(pixel.y()))


def mouse(canvas, kind, pixel: QPoint, button=Qt.MouseButton.LeftButton,
          modifiers=Qt.KeyboardModifier.NoModifier) -> QgsMapMouseEvent:
    buttons = Qt.MouseButton.NoButton if kind in (QEvent.Type.MouseButtonRelease, QEvent.Type.MouseMove) else button
    return QgsMapMouseEvent(canvas, kind, pixel, button, buttons, modifiers)


def click(dock, pixel: QPoint, button=Qt.MouseButton.LeftButton,
          modifiers=Qt.KeyboardModifier.NoModifier) -> QgsPointXY:
    """Press and release at `pixel`; returns the map position (canvas CRS) QGIS gives that pixel."""
    tool, canvas = dock.controller.tool, dock.controller.canvas
    press = mouse(canvas, QEvent.Type.MouseButtonPress, pixel, button, modifiers)
    tool.canvasPressEvent(press)
    tool.canvasReleaseEvent(mouse(canvas, QEvent.Type.MouseButtonRelease, pixel, button, modifiers))
    return QgsPointXY(press.mapPoint())


def click_map(dock, x: float, y: float, **kwargs) -> QgsPointXY:
    return click(dock, to_screen(dock.controller.canvas, x, y), **kwargs)


def drag(dock, start: QPoint, end: QPoint) -> QgsRectangle:
    tool, canvas = dock.controller.tool, dock.controller.canvas
    press = mouse(canvas, QEvent.Type.MouseButtonPress, start)
    tool.canvasPressEvent(press)
    move = QgsMapMouseEvent(canvas, QEvent.Type.MouseMove, end, Qt.MouseButton.NoButton, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    tool.canvasMoveEvent(move)
    release = mouse(canvas, QEvent.Type.MouseButtonRelease, end)
    tool.canvasReleaseEvent(release)
    box = QgsRectangle(press.mapPoint(), release.mapPoint())
    box.normalize()
    return box


def hover(dock, pixel: QPoint) -> QgsPointXY:
    event = mouse(dock.controller.canvas, QEvent.Type.MouseMove, pixel, Qt.MouseButton.NoButton)
    dock.controller.tool.canvasMoveEvent(event)
    return QgsPointXY(event.mapPoint())


def square_centre() -> tuple:
    col, row, size = SQUARE
    return pixel_to_map_default(col + size / 2, row + size / 2)


def expected_geometry(engine, prompts: MapPrompts, **kwargs) -> QgsGeometry:
    segments = engine.segment(prompts, **kwargs)
    assert segments, "the reference decode gave no polygon"
    return QgsGeometry.collectGeometry([segment_geometry(s) for s in segments])


def assert_same_area(actual: QgsGeometry, expected: QgsGeometry, tolerance: float = 1e-9) -> None:
    assert not actual.isEmpty() and not expected.isEmpty()
    difference = actual.symDifference(expected).area()
    assert difference <= tolerance * max(expected.area(), 1.0), (difference, expected.area())


def ogr_features(path: Path, layer: str = "segments") -> list:
    """Features read through a separate GDAL connection: what is really on disk."""
    dataset = ogr.Open(str(path))
    table = dataset.GetLayerByName(layer)
    rows = [(feature.items(), feature.GetGeometryRef().ExportToWkt()) for feature in table]
    dataset = None
    return rows


def accept_and_wait(dock):
    dock.acceptButton.click()
    assert dock.controller.wait_idle()


# -- store ----------------------------------------------------------------------------------------------


def test_dock_finds_the_store_next_to_the_raster_and_describes_it(dock, scene):
    controller = dock.controller
    assert dock.objectName() == DOCK_OBJECT_NAME
    assert controller.store is not None and controller.store.root == scene / "scene.qsam"
    assert dock.storeEdit.text() == str(scene / "scene.qsam")
    info = dock.storeInfoLabel.text()
    assert "sam2.1_hiera_t" in info and "9 of 9 tiles" in info and "found next to the raster" in info
    assert "Random weights" in info
    assert not dock.encodeButton.isVisible()
    assert controller.canvas.mapTool() is controller.tool and dock.toolButton.isChecked()


def test_show_tiles_adds_the_tile_index_once(dock):
    first = dock.controller.show_tile_index()
    dock.showTilesButton.click()
    tiles = [layer for layer in QgsProject.instance().mapLayers().values() if layer.name() == "QuickSAM tiles"]
    assert tiles == [first] and first.featureCount() == 9


def render(layers, extent: QgsRectangle, crs, size: int = 200):
    """The layers drawn by QGIS's renderer on a transparent `size` x `size` px image."""
    map_settings = QgsMapSettings()
    map_settings.setLayers(layers)
    map_settings.setDestinationCrs(crs)
    map_settings.setExtent(extent)
    map_settings.setOutputSize(QSize(size, size))
    map_settings.setBackgroundColor(QColor(0, 0, 0, 0))
    job = QgsMapRendererSequentialJob(map_settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def test_the_tile_index_is_drawn_as_outlines_with_labels_over_the_raster(dock, raster_layer):
    tiles = dock.controller.show_tile_index()
    symbol_layer = tiles.renderer().symbol().symbolLayer(0)
    assert symbol_layer.brushStyle() == Qt.BrushStyle.NoBrush
    assert symbol_layer.strokeStyle() != Qt.PenStyle.NoPen and symbol_layer.strokeColor().alpha() == 255
    assert tiles.labelsEnabled() and "tile_id" in tiles.labeling().settings().fieldName

    # What QGIS draws: inside a tile, away from its outline and label, nothing covers the raster.
    feature = next(tiles.getFeatures())
    box = feature.geometry().boundingBox()
    image = render([tiles], box, raster_layer.crs())
    # The first tile fills the image; its neighbours (32 px overlap) begin at 150 px, the labels sit at ~100 px.
    assert all(image.pixelColor(x, y).alpha() == 0 for x, y in ((20, 20), (100, 40), (40, 60), (60, 130)))
    outline = [image.pixelColor(x, 0).alpha() for x in range(200)]
    outline += [image.pixelColor(0, y).alpha() for y in range(200)]
    assert max(outline) > 0  # the outline is drawn


def test_store_lookup_order_property_then_folder_then_list(scene, tmp_path):
    raster = scene / "scene.tif"
    moved = tmp_path / "elsewhere"
    shutil.move(str(scene / "scene.qsam"), moved)
    assert find_store(raster).store is None  # nothing next to it any more
    assert find_store(raster, known_stores=[str(moved)]).store.root == moved
    assert find_store(raster, property_value=str(moved)).found_by == "layer property"
    renamed = scene / "renamed_copy.tif"
    shutil.copy(raster, renamed)
    assert check_store_matches_layer(moved, renamed) is None  # a copied / renamed raster still matches


def test_choosing_a_store_remembers_it_on_the_layer_and_in_the_store_list(dock, raster_layer, scene, tmp_path):
    elsewhere = tmp_path / "my_store"
    shutil.copytree(scene / "scene.qsam", elsewhere)
    dock.storeEdit.clear()
    QTest.keyClicks(dock.storeEdit, str(elsewhere))  # typed by the user
    dock.storeEdit.editingFinished.emit()
    assert dock.controller.store.root == elsewhere
    assert raster_layer.customProperty(STORE_PROPERTY) == str(elsewhere)
    assert settings.known_stores()[0] == str(elsewhere)
    assert "chosen" in dock.storeInfoLabel.text()


def test_a_store_of_another_raster_is_refused_plainly(dock, scene, tmp_path):
    other = tmp_path / "other.qsam"
    shutil.copytree(scene / "scene.qsam", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["raster"].update(fingerprint="0" * 64, path="/data/other_scene.tif")
    (other / "manifest.json").write_text(json.dumps(manifest))

    assert not dock.controller.choose_store(str(other))
    message = dock.storeInfoLabel.text()
    assert "was made from 'other_scene.tif', not from 'scene.tif'" in message
    assert "encode" in message
    assert dock.controller.store is None and dock.encodeButton.isVisibleTo(dock)
    assert not dock.toolButton.isEnabled()
    click_map(dock, *square_centre())
    assert dock.controller.session is None


def test_pointing_at_the_raster_says_encode_it_first_and_offers_encoding(dock, raster_layer, scene):
    from quicksam.ui import algorithm_dialogs
    from quicksam.ui.algorithms.encode_dialog import MINIMUM_SIZE as ENCODE_DIALOG_SIZE

    assert not dock.controller.choose_store(str(scene / "scene.tif"))
    assert "'scene.tif' is this layer's raster, not a feature store: encode it first" in dock.storeInfoLabel.text()
    assert dock.encodeButton.isVisibleTo(dock)
    with mock.patch.object(algorithm_dialogs, "run_algorithm_dialog", return_value={}) as dialog:
        dock.encodeButton.click()
    dialog.assert_called_once_with("quicksam:encoderaster", {"INPUT": raster_layer}, dock.controller.canvas,
                                   minimum_size=ENCODE_DIALOG_SIZE)


def test_the_store_written_by_the_encode_dialog_is_used(dock, raster_layer, scene, tmp_path):
    from quicksam.ui import algorithm_dialogs

    written = tmp_path / "new_store"
    shutil.copytree(scene / "scene.qsam", written)  # stands for what the encoder wrote
    assert not dock.controller.choose_store(str(scene / "scene.tif"))
    with mock.patch.object(algorithm_dialogs, "run_algorithm_dialog", return_value={"OUTPUT": str(written)}):
        dock.encodeButton.click()
    assert dock.controller.store is not None and dock.controller.store.root == written
    assert raster_layer.customProperty(STORE_PROPERTY) == str(written)
    assert not dock.encodeButton.isVisibleTo(dock)


def store_lines(dock) -> list:
    return dock.storeInfoLabel.text().split("<br>")


def test_every_line_about_the_store_is_a_phrase_not_a_lone_word(dock, scene, tmp_path):
    assert "store found next to the raster" in store_lines(dock)
    elsewhere = tmp_path / "my_store"
    shutil.copytree(scene / "scene.qsam", elsewhere)
    assert dock.controller.choose_store(str(elsewhere))
    lines = store_lines(dock)
    assert "chosen" not in lines and "store chosen by you" in lines
    assert all(" " in line for line in lines)


def test_the_store_written_by_the_encode_dialog_says_so(dock, raster_layer, scene, tmp_path):
    from quicksam.ui import algorithm_dialogs

    written = tmp_path / "new_store"
    shutil.copytree(scene / "scene.qsam", written)
    assert not dock.controller.choose_store(str(scene / "scene.tif"))
    with mock.patch.object(algorithm_dialogs, "run_algorithm_dialog", return_value={"OUTPUT": str(written)}):
        dock.encodeButton.click()
    assert "store just encoded" in store_lines(dock)


def test_status_says_whether_the_segment_tool_is_on(dock):
    canvas = dock.controller.canvas
    assert dock.statusLabel.text() == "ready: click on an object"
    canvas.setMapTool(QgsMapToolPan(canvas))
    assert "Segment tool" in dock.statusLabel.text() and "ready" not in dock.statusLabel.text()
    dock.toolButton.setChecked(True)
    assert dock.statusLabel.text() == "ready: click on an object"


def test_after_an_accept_another_tool_still_says_the_segment_tool_is_off(dock):
    # Seen in the desktop walkthrough: "object 1 saved …; click on the next one" stayed with the Pan tool on.
    canvas = dock.controller.canvas
    click_map(dock, *square_centre())
    assert dock.controller.wait_idle()
    dock.acceptButton.click()
    assert "saved" in dock.statusLabel.text()
    canvas.setMapTool(QgsMapToolPan(canvas))
    assert "Segment tool is off" in dock.statusLabel.text(), dock.statusLabel.text()


def test_a_warning_is_gone_once_the_situation_changes(dock):
    canvas = dock.controller.canvas
    canvas.setExtent(QgsRectangle(497000, 4194000, 506000, 4203000))
    click_map(dock, 498000, 4199000)  # outside the raster
    assert dock.controller.wait_idle()
    warning = dock.statusLabel.text()
    assert "outside" in warning and "b35900" in dock.statusLabel.styleSheet()
    canvas.setMapTool(QgsMapToolPan(canvas))
    assert dock.statusLabel.text() != warning and dock.statusLabel.styleSheet() == ""
    dock.toolButton.setChecked(True)
    assert dock.statusLabel.text() == "ready: click on an object"


def block_onnxruntime(monkeypatch) -> None:
    """This QGIS's Python cannot import onnxruntime (as before the set-up installed it)."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError


def test_without_onnx_runtime_the_dock_offers_the_set_up_not_encoding(dock, raster_layer, monkeypatch):
    block_onnxruntime(monkeypatch)
    dock.controller.set_raster_layer(raster_layer)
    assert dock.controller.store is None and dock.controller.binding.runtime_missing
    info = dock.storeInfoLabel.text()
    assert "ONNX Runtime is needed" in info and "QGIS profile" in info and "<br>" not in info
    assert dock.setupButton.isVisibleTo(dock) and not dock.encodeButton.isVisibleTo(dock)
    assert not dock.toolButton.isEnabled()
    requested = []
    dock.setupRequested.connect(lambda: requested.append(True))
    dock.setupButton.click()
    assert requested == [True]

    monkeypatch.undo()  # the set-up made onnxruntime importable
    dock.recheck()
    assert dock.controller.store is not None and not dock.setupButton.isVisibleTo(dock)
    assert dock.toolButton.isEnabled()


# -- the session (plain Python over the engine) ----------------------------------------------------------


def test_session_keeps_prompts_with_undo_and_refuses_what_cannot_be_segmented(engine):
    session = SegmentSession(engine)
    x, y = square_centre()
    session.add_point(x, y, 1)
    session.set_box((x - 300, y - 300, x + 300, y + 300))
    session.set_box((x + 200, y + 200, x - 200, y - 200))  # corners in any order; replaces the first box
    assert session.prompts.box == (x - 200, y - 200, x + 200, y + 200) and session.undo_depth == 3
    with pytest.raises(PromptError, match="outside the raster"):
        session.add_point(x - 1e5, y, 0)
    assert session.undo_depth == 3  # nothing kept
    assert session.undo() and session.prompts.box == (x - 300, y - 300, x + 300, y + 300)
    assert session.undo() and session.undo() and not session.undo()
    assert session.prompts.is_empty()


def test_session_accepts_only_the_result_of_its_current_prompts(engine):
    session = SegmentSession(engine, SegmentOptions(mode="best"))
    x, y = square_centre()
    first = session.add_point(x, y, 1)
    with pytest.raises(PromptError, match="still being decoded"):
        session.accept()
    stale = session.segment(first)
    session.add_point(x + 300, y, 0)
    assert not session.set_result(first, session.options, stale)  # the object changed meanwhile
    assert session.set_result(session.prompts, session.options, session.segment())
    accepted = session.accept()
    assert accepted.prompts.labels == (1, 0) and len(accepted.segments) == 1
    assert session.prompts.is_empty() and session.segments == ()
    with pytest.raises(PromptError, match="nothing to accept"):
        session.accept()


# -- prompts ---------------------------------------------------------------------------------------------


def test_foreground_click_shows_the_engines_polygon(dock, engine):
    point = click_map(dock, *square_centre())  # canvas CRS = raster CRS here
    assert dock.controller.wait_idle()
    prompts = dock.controller.session.prompts
    assert prompts == MapPrompts(((point.x(), point.y()),), (1,))
    expected = expected_geometry(engine, prompts)
    assert_same_area(dock.controller.tool.object_band.asGeometry(), expected)
    assert dock.controller.session.segments[0].geometry.wkb == engine.segment(prompts)[0].geometry.wkb
    assert dock.controller.tool.foreground_band.numberOfVertices() == 1
    assert "score" in dock.statusLabel.text()


def test_right_click_and_shift_click_add_background_points(dock, engine):
    x, y = square_centre()
    click_map(dock, x, y)
    click_map(dock, x + 400, y, button=Qt.MouseButton.RightButton)
    click_map(dock, x - 400, y, modifiers=Qt.KeyboardModifier.ShiftModifier)
    assert dock.controller.wait_idle()
    prompts = dock.controller.session.prompts
    assert prompts.labels == (1, 0, 0)
    tool = dock.controller.tool
    assert tool.foreground_band.numberOfVertices() == 1 and tool.background_band.numberOfVertices() == 2
    assert_same_area(tool.object_band.asGeometry(), expected_geometry(engine, prompts))


def test_drag_makes_a_box_and_points_refine_it(dock, engine):
    x, y = square_centre()
    canvas = dock.controller.canvas
    box = drag(dock, to_screen(canvas, x - 400, y + 400), to_screen(canvas, x + 400, y - 400))
    assert dock.controller.wait_idle()
    prompts = dock.controller.session.prompts
    assert prompts.points == () and prompts.box == pytest.approx(
        (box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()))
    assert not dock.controller.tool.box_band.asGeometry().isEmpty()
    click_map(dock, x, y)
    assert dock.controller.wait_idle()
    prompts = dock.controller.session.prompts
    assert prompts.box is not None and prompts.labels == (1,)
    assert_same_area(dock.controller.tool.object_band.asGeometry(), expected_geometry(engine, prompts))


def test_a_small_wobble_is_a_click_not_a_box(dock):
    start = to_screen(dock.controller.canvas, *square_centre())
    drag(dock, start, start + QPoint(3, 2))
    prompts = dock.controller.session.prompts
    assert prompts.box is None and prompts.labels == (1,)


def test_undo_removes_the_last_prompt_and_clear_empties(dock, engine):
    x, y = square_centre()
    click_map(dock, x, y)
    click_map(dock, x + 500, y + 500, button=Qt.MouseButton.RightButton)
    assert dock.controller.wait_idle()
    dock.undoButton.click()
    assert dock.controller.wait_idle()
    prompts = dock.controller.session.prompts
    assert prompts.labels == (1,)
    assert dock.controller.tool.background_band.numberOfVertices() == 0
    assert_same_area(dock.controller.tool.object_band.asGeometry(), expected_geometry(engine, prompts))
    dock.clearButton.click()
    assert dock.controller.session.prompts.is_empty()
    assert dock.controller.tool.object_band.asGeometry().isEmpty()
    assert dock.controller.tool.foreground_band.numberOfVertices() == 0
    assert not dock.acceptButton.isEnabled() and not dock.clearButton.isEnabled()


def test_a_click_outside_the_raster_is_refused_with_a_message(dock):
    canvas = dock.controller.canvas
    canvas.setExtent(QgsRectangle(497000, 4194000, 506000, 4203000))  # the raster and a margin around it
    canvas.refresh()
    click_map(dock, 498000, 4199000)
    assert "outside the raster" in dock.statusLabel.text()
    assert dock.controller.session.prompts.is_empty()
    assert dock.controller.worker.stats.by_kind.get("object", 0) == 0


def test_a_box_dragged_over_the_raster_edge_is_clipped_to_the_raster(dock, engine):
    import shapely
    import shapely.wkb

    canvas = dock.controller.canvas
    canvas.setExtent(QgsRectangle(497000, 4194000, 506000, 4203000))  # the raster and a margin around it
    canvas.refresh()
    # from outside the top-left corner to inside the raster (300 x 300 px of 10 m from 500000,4200000)
    box = drag(dock, to_screen(canvas, 499300, 4200600), to_screen(canvas, 500800, 4199150))
    assert dock.controller.wait_idle()
    prompts = dock.controller.session.prompts
    assert prompts.box == pytest.approx((box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()))
    assert box.xMinimum() < 500000 and box.yMaximum() > 4200000  # really over the edge
    (segment,) = dock.controller.session.segments
    assert segment.geometry.wkb == engine.segment(prompts)[0].geometry.wkb
    geometry = shapely.wkb.loads(segment.geometry.wkb)
    raster = shapely.box(500000, 4197000, 503000, 4200000).buffer(1e-6, join_style="mitre")
    # Pixels count when their centre is in the box, so the polygon may pass a box edge that cuts pixels by
    # up to half a pixel (5 m); the raster's edges are pixel edges: only float noise past them.
    within = shapely.box(box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()).buffer(
        5.0 + 1e-6, join_style="mitre").intersection(raster)
    assert geometry.area > 0 and geometry.within(within)
    assert_same_area(dock.controller.tool.object_band.asGeometry(), expected_geometry(engine, prompts))


def test_a_box_dragged_wholly_outside_the_raster_is_refused_in_one_line(dock):
    canvas = dock.controller.canvas
    canvas.setExtent(QgsRectangle(497000, 4194000, 506000, 4203000))
    canvas.refresh()
    drag(dock, to_screen(canvas, 497500, 4199500), to_screen(canvas, 499500, 4198000))
    status = dock.statusLabel.text()
    assert "the box " in status and "is outside the raster (x 500000 to 503000" in status and "\n" not in status
    assert dock.controller.session.prompts.is_empty()
    assert dock.controller.worker.stats.by_kind.get("object", 0) == 0


# -- accepting --------------------------------------------------------------------------------------------


def test_accept_writes_the_object_to_the_stores_geopackage_on_disk(dock, engine, scene):
    dock.labelEdit.setText("building")
    started = []
    click_map(dock, *square_centre())
    assert dock.controller.wait_idle()
    prompts = dock.controller.session.prompts
    [segment] = engine.segment(prompts)

    layer = dock.controller.output_layer()
    layer.editCommandStarted.connect(started.append)
    accept_and_wait(dock)

    assert started == [EDIT_COMMAND]
    assert not layer.isEditable() and layer.featureCount() == 1
    [(attributes, wkt)] = ogr_features(scene / "scene.qsam" / OUTPUT_FILE)
    assert attributes["id"] == 1 and attributes["label"] == "building"
    assert attributes["fg_points"] == 1 and attributes["bg_points"] == 0
    assert attributes["model"] == "sam2.1_hiera_t" and attributes["tile_id"] == segment.tile_id
    assert attributes["predicted_iou"] == pytest.approx(segment.score, abs=1e-6)
    assert attributes["area_m2"] == pytest.approx(segment.geometry.area)
    assert_same_area(QgsGeometry.fromWkt(wkt), segment_geometry(segment))
    assert dock.controller.session.prompts.is_empty()  # the next object starts
    assert dock.controller.tool.object_band.asGeometry().isEmpty()
    assert "saved" in dock.statusLabel.text()

    click_map(dock, *square_centre())
    assert dock.controller.wait_idle()
    accept_and_wait(dock)
    assert [row[0]["id"] for row in ogr_features(scene / "scene.qsam" / OUTPUT_FILE)] == [1, 2]
    segments_layers = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.name() == "QuickSAM segments"]
    assert segments_layers == [layer]  # added to the project once


def test_accept_right_after_a_click_commits_once_decoded(dock, scene):
    click_map(dock, *square_centre())
    dock.acceptButton.click()  # before the decode came back
    assert dock.controller.wait_idle()
    assert len(ogr_features(scene / "scene.qsam" / OUTPUT_FILE)) == 1


def test_a_click_while_an_accept_waits_for_its_decode_does_not_join_the_accepted_object(dock, scene):
    """Click, Enter, click elsewhere before the first decode came back (no event processed in between, so its
    result cannot have arrived): the accepted object is the one clicked before Enter, with one point; the later
    click is refused with a message, not silently added to it."""
    click_map(dock, *square_centre())
    dock.acceptButton.click()
    x, y = square_centre()
    assert not click_map(dock, x + 400, y - 400).isEmpty()
    assert "still being decoded" in dock.statusLabel.text()
    assert dock.controller.wait_idle()
    rows = ogr_features(scene / "scene.qsam" / OUTPUT_FILE)
    assert [(row[0]["fg_points"], row[0]["bg_points"]) for row in rows] == [(1, 0)]
    assert dock.controller.session.prompts.is_empty()


def test_accept_into_a_layer_the_user_is_editing_stays_on_qgis_undo_stack(dock, engine):
    layer = QgsVectorLayer(f"MultiPolygon?crs={CRS}", "my objects", "memory")
    layer.dataProvider().addAttributes(output_fields().toList())
    layer.updateFields()
    QgsProject.instance().addMapLayer(layer)
    dock.outputLayerCombo.setLayer(layer)
    layer.startEditing()

    click_map(dock, *square_centre())
    assert dock.controller.wait_idle()
    accept_and_wait(dock)

    assert layer.isEditable() and layer.undoStack().count() == 1
    assert layer.undoStack().text(0) == EDIT_COMMAND
    assert len(layer.editBuffer().addedFeatures()) == 1
    assert "being edited" in dock.statusLabel.text()
    layer.undoStack().undo()
    assert layer.featureCount() == 0
    layer.rollBack()


def test_mode_all_accepts_every_candidate_with_its_own_id(dock, engine, scene):
    dock.maskModeCombo.setCurrentIndex(dock.maskModeCombo.findData("all"))
    click_map(dock, *square_centre())
    assert dock.controller.wait_idle()
    prompts = dock.controller.session.prompts
    expected = engine.segment(prompts, mode="all")
    assert len(dock.controller.session.segments) == len(expected) == 3
    accept_and_wait(dock)
    rows = ogr_features(scene / "scene.qsam" / OUTPUT_FILE)
    assert [row[0]["id"] for row in rows] == [1, 2, 3]
    for (attributes, wkt), segment in zip(rows, expected):
        assert attributes["predicted_iou"] == pytest.approx(segment.score, abs=1e-6)
        assert_same_area(QgsGeometry.fromWkt(wkt), segment_geometry(segment))


def test_options_reach_the_engine(dock, engine):
    dock.keepHolesCheck.setChecked(False)
    dock.minAreaSpin.setValue(20)
    dock.simplifySpin.setValue(15.0)
    click_map(dock, *square_centre())
    assert dock.controller.wait_idle()
    prompts = dock.controller.session.prompts
    expected = expected_geometry(engine, prompts, keep_holes=False, min_area_pixels=20, simplify_tolerance=15.0)
    assert_same_area(dock.controller.tool.object_band.asGeometry(), expected)
    assert settings.SIMPLIFY_TOLERANCE.value() == 15.0 and not settings.KEEP_HOLES.value()


def test_keep_prompts_writes_them_with_the_object_id(dock, scene):
    dock.keepPromptsCheck.setChecked(True)
    dock.labelEdit.setText("tree")
    x, y = square_centre()
    click_map(dock, x, y)
    click_map(dock, x + 500, y, button=Qt.MouseButton.RightButton)
    assert dock.controller.wait_idle()
    accept_and_wait(dock)
    rows = ogr_features(scene / "scene.qsam" / PROMPTS_FILE, "prompts")
    assert sorted(row[0]["prompt"] for row in rows) == ["background", "foreground"]
    assert {row[0]["object_id"] for row in rows} == {1} and {row[0]["label"] for row in rows} == {"tree"}


def test_random_colours_come_from_the_id(dock):
    click_map(dock, *square_centre())
    assert dock.controller.wait_idle()
    accept_and_wait(dock)
    layer = dock.controller.output_layer()

    def fill_colour():
        return layer.renderer().symbol().symbolLayer(0).dataDefinedProperties().property(
            QgsSymbolLayer.Property.PropertyFillColor)

    assert fill_colour().isActive() and '"id"' in fill_colour().expressionString()
    dock.randomColoursCheck.setChecked(False)
    assert not fill_colour().isActive()


# -- CRS ------------------------------------------------------------------------------------------------


def test_canvas_in_another_crs_prompts_land_on_the_right_pixel_and_output_is_reprojected(
        dock, engine, raster_layer, tmp_path):
    project_crs = QgsProject.instance().crs()
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    canvas = dock.controller.canvas
    to_wgs84 = QgsCoordinateTransform(raster_layer.crs(), wgs84, QgsProject.instance().transformContext())
    canvas.setDestinationCrs(wgs84)
    canvas.setExtent(to_wgs84.transformBoundingBox(raster_layer.extent()))
    canvas.refresh()
    QgsApplication.processEvents()

    output = QgsVectorLayer("MultiPolygon?crs=EPSG:4326", "objects 4326", "memory")
    output.dataProvider().addAttributes(output_fields().toList())
    output.updateFields()
    QgsProject.instance().addMapLayer(output)
    dock.outputLayerCombo.setLayer(output)

    x, y = square_centre()
    centre = to_wgs84.transform(QgsPointXY(x, y))
    clicked = click_map(dock, centre.x(), centre.y())
    assert dock.controller.wait_idle()

    [(px, py)] = dock.controller.session.prompts.points
    back = to_wgs84.transform(clicked, Qgis.TransformDirection.Reverse)
    assert (px, py) == pytest.approx((back.x(), back.y()))
    col, row = engine.to_pixels(px, py)
    assert (col, row) == pytest.approx((140, 140), abs=1.0)  # within a screen pixel of the square's centre

    prompts = dock.controller.session.prompts
    [segment] = engine.segment(prompts)
    accept_and_wait(dock)
    [feature] = list(output.getFeatures())
    expected = segment_geometry(segment)
    expected.transform(to_wgs84)
    assert_same_area(feature.geometry(), expected, tolerance=1e-9)
    assert feature["fg_points"] == 1
    assert QgsProject.instance().crs() == project_crs
    assert canvas.mapSettings().destinationCrs() == wgs84


# -- hover -------------------------------------------------------------------------------------------------


def test_hover_previews_the_mask_under_the_cursor(dock, engine):
    canvas = dock.controller.canvas
    point = hover(dock, to_screen(canvas, *square_centre()))
    assert dock.controller.wait_idle()
    expected = expected_geometry(engine, MapPrompts().with_point(point.x(), point.y(), 1))
    assert_same_area(dock.controller.tool.preview_band.asGeometry(), expected)
    assert dock.controller.session.prompts.is_empty()  # hovering adds no prompt
    assert dock.statusLabel.text() == "ready: click on an object"  # and says nothing


def test_hover_over_an_object_previews_it_with_one_more_point_from_memory(dock, engine):
    controller = dock.controller
    canvas = controller.canvas
    x, y = square_centre()
    click_map(dock, x, y)
    assert controller.wait_idle()
    reads = controller.session.engine.cache.disk_reads
    for offset in (100, 150, 200):
        point = hover(dock, to_screen(canvas, x + offset, y + offset))
        assert controller.wait_idle()
    expected = expected_geometry(engine, controller.session.prompts.with_point(point.x(), point.y(), 1))
    assert_same_area(controller.tool.preview_band.asGeometry(), expected)
    assert controller.session.engine.cache.disk_reads == reads  # the same tile: no disk read per move


def test_decoding_runs_off_the_gui_thread(dock, monkeypatch):
    threads = []
    original = decode_worker.segment_prompts

    def recording(*args):
        threads.append(threading.current_thread())
        return original(*args)

    monkeypatch.setattr(decode_worker, "segment_prompts", recording)
    click_map(dock, *square_centre())
    hover(dock, to_screen(dock.controller.canvas, *square_centre()) + QPoint(20, 20))
    assert dock.controller.wait_idle()
    assert len(threads) == 2 and threading.main_thread() not in threads


def test_quick_moves_coalesce_and_only_the_latest_result_is_drawn(dock, engine):
    controller = dock.controller
    canvas = controller.canvas
    x, y = square_centre()
    for offset in (-300, -200, -100, 0):
        last = hover(dock, to_screen(canvas, x + offset, y))
    assert controller.wait_idle()
    stats = controller.worker.stats
    # One rest, one full-resolution decode; the moves asked for one low-resolution preview at once and, the
    # worker being busy with it, kept only the newest position for when it came back (unless the rest came first).
    assert stats.requests - stats.low_res_requests == 1 and 1 <= stats.low_res_requests <= 2
    assert_same_area(controller.tool.preview_band.asGeometry(),
                     expected_geometry(engine, MapPrompts().with_point(last.x(), last.y(), 1)))

    # Requests faster than the worker: older ones are skipped or dropped, only the last is drawn.
    before = (stats.requests, stats.stale, stats.delivered)
    prompts = [MapPrompts().with_point(x + dx, y - dx, 1) for dx in (-250, -150, -50, 50)]
    for item in prompts:
        controller.request_preview(item)
    assert controller.wait_idle()
    assert stats.requests - before[0] == 4
    assert stats.stale - before[1] == 3 and stats.delivered - before[2] == 1
    assert_same_area(controller.tool.preview_band.asGeometry(), expected_geometry(engine, prompts[-1]))


def test_hover_can_be_switched_off(dock):
    dock.hoverCheck.setChecked(False)
    hover(dock, to_screen(dock.controller.canvas, *square_centre()))
    assert dock.controller.wait_idle()
    assert dock.controller.worker.stats.requests == 0
    assert dock.controller.tool.preview_band.asGeometry().isEmpty()
    assert not settings.HOVER_PREVIEW.value()


def test_hover_outside_the_raster_previews_nothing_and_says_nothing(dock):
    canvas = dock.controller.canvas
    canvas.setExtent(QgsRectangle(497000, 4194000, 506000, 4203000))
    canvas.refresh()
    status = dock.statusLabel.text()
    hover(dock, to_screen(canvas, 498000, 4199000))
    assert dock.controller.wait_idle()
    assert dock.controller.worker.stats.requests == 0
    assert dock.statusLabel.text() == status


def leave_canvas(canvas) -> None:
    """The cursor leaves the canvas (onto a panel or a dialog): the Leave event Qt sends the canvas widget."""
    QgsApplication.sendEvent(canvas, QEvent(QEvent.Type.Leave))


def zoom_in(canvas) -> None:
    canvas.zoomByFactor(0.5)


def switch_to_pan(canvas) -> None:
    canvas.setMapTool(QgsMapToolPan(canvas))


@pytest.mark.parametrize("what", [leave_canvas, zoom_in, switch_to_pan],
                         ids=["cursor leaves the canvas", "zoom", "another tool"])
def test_the_hover_preview_is_cleared_when_the_cursor_leaves_the_map_or_the_map_moves(dock, what):
    canvas = dock.controller.canvas
    hover(dock, to_screen(canvas, *square_centre()))
    assert dock.controller.wait_idle()
    assert not dock.controller.tool.preview_band.asGeometry().isEmpty()
    what(canvas)
    assert dock.controller.tool.preview_band.asGeometry().isEmpty()
    assert dock.controller.wait_idle()  # and nothing brings it back
    assert dock.controller.tool.preview_band.asGeometry().isEmpty()


@pytest.mark.parametrize("what", [leave_canvas, zoom_in, switch_to_pan],
                         ids=["cursor leaves the canvas", "zoom", "another tool"])
def test_a_preview_decoded_after_the_cursor_left_is_not_drawn(dock, what):
    """The decode for the old position is in flight when the cursor leaves: its late result is dropped."""
    controller = dock.controller
    canvas = controller.canvas
    in_flight = []

    def leave_while_decoding(_point):
        in_flight.append((controller.worker.is_busy(), controller.worker.stats.delivered))  # asked the worker first
        what(canvas)

    controller.scheduler.rested.connect(leave_while_decoding)
    try:
        hover(dock, to_screen(canvas, *square_centre()))
        assert controller.wait_idle()
    finally:
        controller.scheduler.rested.disconnect(leave_while_decoding)
    stats = controller.worker.stats
    # one full-resolution decode for the rest (the moving cursor's low-resolution preview may have come
    # back before it rested); nothing delivered after the cursor left
    assert in_flight == [(True, stats.delivered)] and stats.requests - stats.low_res_requests == 1
    assert controller.tool.preview_band.asGeometry().isEmpty()


def test_clicking_after_hovering_reuses_the_preview(dock, engine):
    canvas = dock.controller.canvas
    pixel = to_screen(canvas, *square_centre())
    hover(dock, pixel)
    assert dock.controller.wait_idle()
    requests = dock.controller.worker.stats.requests
    click(dock, pixel)
    assert dock.controller.session.has_result()  # at once, without a new decode
    assert dock.controller.worker.stats.requests == requests


# -- keys ---------------------------------------------------------------------------------------------------


def key(code, modifiers=Qt.KeyboardModifier.NoModifier) -> QKeyEvent:
    return QKeyEvent(QEvent.Type.KeyPress, code, modifiers)


def test_keys_undo_clear_accept_on_the_tool_and_are_accepted(dock, scene):
    tool = dock.controller.tool
    x, y = square_centre()
    click_map(dock, x, y)
    click_map(dock, x + 500, y, button=Qt.MouseButton.RightButton)
    assert dock.controller.wait_idle()

    undo = key(Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert undo.matches(QKeySequence.StandardKey.Undo)
    tool.keyPressEvent(undo)
    assert undo.isAccepted() and dock.controller.session.prompts.labels == (1,)

    escape = key(Qt.Key.Key_Escape)
    tool.keyPressEvent(escape)
    assert escape.isAccepted() and dock.controller.session.prompts.is_empty()

    click_map(dock, x, y)
    assert dock.controller.wait_idle()
    enter = key(Qt.Key.Key_Return)
    tool.keyPressEvent(enter)
    assert dock.controller.wait_idle()
    assert enter.isAccepted() and len(ogr_features(scene / "scene.qsam" / OUTPUT_FILE)) == 1

    other = key(Qt.Key.Key_A)
    tool.keyPressEvent(other)
    assert not other.isAccepted()  # left to QGIS


def test_ctrl_z_on_the_canvas_undoes_the_prompt_not_qgis_undo(dock, qgis_iface):
    """QGIS's Undo is an application action on Ctrl+Z; while the tool is active the canvas claims the key.
    Control: with another tool the same key press does reach the application action."""
    canvas = dock.controller.canvas
    window = canvas.window()
    qgis_undo = QAction("Undo", window)
    qgis_undo.setShortcut(QKeySequence.StandardKey.Undo)
    window.addAction(qgis_undo)
    triggered = []
    qgis_undo.triggered.connect(lambda: triggered.append(True))
    window.activateWindow()
    canvas.setFocus()
    QgsApplication.processEvents()
    try:
        x, y = square_centre()
        click_map(dock, x, y)
        click_map(dock, x + 500, y, button=Qt.MouseButton.RightButton)
        assert dock.controller.wait_idle()
        QTest.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
        assert dock.controller.session.prompts.labels == (1,)
        assert triggered == []

        pan = QgsMapToolPan(canvas)
        canvas.setMapTool(pan)
        QTest.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
        assert triggered == [True]  # the key does reach application shortcuts when our tool is not active
        assert dock.controller.session.prompts.labels == (1,)
        canvas.unsetMapTool(pan)
    finally:
        window.removeAction(qgis_undo)
        qgis_undo.deleteLater()


def test_deactivating_the_tool_unchecks_the_button_and_stops_hover(dock):
    controller = dock.controller
    canvas = controller.canvas
    hover(dock, to_screen(canvas, *square_centre()))  # a rest is pending
    pan = QgsMapToolPan(canvas)
    canvas.setMapTool(pan)
    assert not dock.toolButton.isChecked()
    assert controller.wait_idle()
    stats = controller.worker.stats  # no rest: no full-resolution decode, and the move's preview never drawn
    assert stats.requests == stats.low_res_requests and stats.delivered == 0
    assert controller.tool.preview_band.asGeometry().isEmpty()
    dock.toolButton.setChecked(True)
    assert canvas.mapTool() is controller.tool
    canvas.unsetMapTool(controller.tool)
    assert not dock.toolButton.isChecked()


def test_user_layer_fields_are_filled_by_name(dock, engine):
    layer = QgsVectorLayer("Polygon?crs=EPSG:32633&field=label:string&field=score:double", "simple", "memory")
    QgsProject.instance().addMapLayer(layer)
    dock.outputLayerCombo.setLayer(layer)
    dock.labelEdit.setText("field")
    click_map(dock, *square_centre())
    assert dock.controller.wait_idle()
    [segment] = engine.segment(dock.controller.session.prompts)
    accept_and_wait(dock)
    features = list(layer.getFeatures())
    assert features and all(isinstance(f, QgsFeature) for f in features)
    assert {f["label"] for f in features} == {"field"}
    assert_same_area(QgsGeometry.unaryUnion([f.geometry() for f in features]), segment_geometry(segment))


def test_no_shortcut_is_registered_on_the_main_window(plugin, qgis_iface, raster_layer):
    window = qgis_iface.mainWindow()
    before = len(window.findChildren(QShortcut))
    plugin.segment_action.trigger()
    QgsApplication.processEvents()
    assert plugin.dock is not None and plugin.dock.isUserVisible()
    assert len(window.findChildren(QShortcut)) == before
    own = [action for action in window.findChildren(QAction) if action.objectName().startswith("QuickSam")]
    own += plugin.dock.findChildren(QAction)
    assert own and all(action.shortcut().isEmpty() for action in own)


def restart_qgis(qgis_iface, previous=None):
    """What closing and starting QGIS does to the plugin: unload (if loaded), then a new one through classFactory."""
    import quicksam

    if previous is not None:
        previous.unload()
        QgsApplication.processEvents()
    instance = quicksam.classFactory(qgis_iface)
    instance.initGui()
    QgsApplication.processEvents()
    return instance


def test_the_dock_is_open_again_after_a_restart_when_it_was_open(qgis_iface, raster_layer):
    qgis_iface.mainWindow().show()  # as in QGIS: docks are visible only in a visible main window
    plugin = restart_qgis(qgis_iface)
    try:
        assert plugin.dock is None
        plugin.segment_action.trigger()  # the user opens the dock
        plugin = restart_qgis(qgis_iface, plugin)
        dock = plugin.dock
        assert dock is not None and dock.isUserVisible() and plugin.segment_action.isChecked()
        assert dock.objectName() == DOCK_OBJECT_NAME  # the name QGIS's saved window state places it by
        assert dock.controller.store is not None  # and it works on the active raster layer
        dock.close()  # the user closes it
        plugin = restart_qgis(qgis_iface, plugin)
        assert plugin.dock is None and not plugin.segment_action.isChecked()
    finally:
        plugin.unload()


def test_without_onnx_runtime_the_dock_says_so_as_it_opens_before_any_raster(canvas, qgis_iface, monkeypatch):
    block_onnxruntime(monkeypatch)
    widget = SegmentDock(qgis_iface, qgis_iface.mainWindow())
    try:
        assert "ONNX Runtime is needed" in widget.storeInfoLabel.text()
        assert widget.setupButton.isVisibleTo(widget) and not widget.encodeButton.isVisibleTo(widget)
    finally:
        widget.release()
        widget.deleteLater()


def test_the_docks_set_up_button_opens_the_set_up_and_a_finished_set_up_makes_the_dock_look_again(
        plugin, qgis_iface, raster_layer, monkeypatch):
    block_onnxruntime(monkeypatch)
    plugin.segment_action.trigger()
    dock = plugin.dock
    assert dock.controller.store is None and dock.setupButton.isVisibleTo(dock)
    dock.setupButton.click()
    assert plugin.setup_dialog is not None and plugin.setup_dialog.isVisible()
    monkeypatch.undo()  # the set-up made onnxruntime importable ...
    plugin.setup_dialog.setupFinished.emit()  # ... and says it finished
    assert dock.controller.store is not None and not dock.setupButton.isVisibleTo(dock)
    plugin.setup_dialog.close()


# -- a crash after accepting loses nothing ------------------------------------------------------------------

CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from qgis.core import QgsApplication, QgsPointXY, QgsProject, QgsRasterLayer
    from qgis.gui import QgsMapCanvas

    app = QgsApplication([], True)
    app.initQgis()
    from quicksam.ui.dock.controller import SegmentController

    raster, x, y = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    layer = QgsRasterLayer(raster, "scene")
    QgsProject.instance().addMapLayer(layer)
    canvas = QgsMapCanvas()
    canvas.setDestinationCrs(layer.crs())
    canvas.setExtent(layer.extent())
    controller = SegmentController(canvas, QgsProject.instance())
    controller.set_raster_layer(layer)
    assert controller.add_point(QgsPointXY(x, y), 1), controller.status
    assert controller.wait_idle()
    result = controller.accept()
    print("accepted", result.object_ids, result.saved, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, no exitQgis: as if QGIS crashed
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX) to simulate a crash")
def test_an_accepted_object_survives_a_crash_right_after(scene, tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(tmp_path))
    x, y = square_centre()
    done = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(scene / "scene.tif"), str(x), str(y)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert "accepted [1] True" in done.stdout
    [(attributes, _)] = ogr_features(scene / "scene.qsam" / OUTPUT_FILE)
    assert attributes["id"] == 1 and attributes["fg_points"] == 1
