"""The Segment dock's on-demand tiles and "Full resolution only", in real QGIS with real map tool events.

The scene: 400 x 256 px, EPSG:32633, 10 m pixels, a bright square; its store scene.qsam (found next to the
raster) encoded with the seeded random tiny model in 256 px tiles with a 32 px overlap: two tiles, columns
[0, 256) and [144, 400). Clicks at columns 130 and 270 are across their border. A second store adds a level 4x
coarser. Polygons are compared with the engine decoding the same prompts (random weights: never mask quality).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from qgis.core import QgsApplication, QgsGeometry, QgsProject, QgsRectangle, QgsRenderContext
from qgis.gui import QgsMapMouseEvent
from qgis.PyQt.QtCore import QEvent, QPoint, Qt
from synthetic import PIXEL_SIZE, encode, random_model, square_scene, write_raster
from synthetic import pixel_to_map_default as at

from quicksam.core.store import FeatureStore
from quicksam.interactive.engine import MapPrompts, SegmentEngine
from quicksam.ui import settings
from quicksam.ui.dock.dock import SegmentDock
from quicksam.ui.dock.drawing import segment_geometry
from quicksam.ui.layers import stroke_style_property

WIDTH, HEIGHT, TILE, OVERLAP = 400, 256, 256, 32
LEFT, RIGHT = at(130, 128), at(270, 128)
SETTINGS = (settings.FULL_RESOLUTION_ONLY, settings.HOVER_DELAY_MS, settings.HOVER_PREVIEW, settings.KNOWN_STORES,
            settings.PYTHON_EXECUTABLE)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> Path:
    """scene.tif with its single-level store scene.qsam, and levels.tif (the same pixels) with levels.qsam:
    levels 1 and 4."""
    from quicksam.encoder.levels_pipeline import encode_levels
    from quicksam.encoder.pipeline import EncodeRequest

    folder = tmp_path_factory.mktemp("dock_on_demand")
    pixels = square_scene(WIDTH, HEIGHT, (170, 90, 60))
    encode(write_raster(folder / "scene.tif", pixels), folder / "scene.qsam", overlap=OVERLAP)
    levels = write_raster(folder / "levels.tif", pixels)
    encode_levels(EncodeRequest(raster=str(levels), store=folder / "levels.qsam", tile_size=TILE, overlap=OVERLAP,
                                device="cpu", levels=(1.0, 4.0)), model=random_model())
    return folder


@pytest.fixture
def scene(encoded, tmp_path) -> Path:
    shutil.copytree(encoded, tmp_path / "scene")
    return tmp_path / "scene"


@pytest.fixture(autouse=True)
def clean_settings():
    for setting in SETTINGS:
        setting.reset()
    settings.HOVER_DELAY_MS.set_value(30)
    yield
    for setting in SETTINGS:
        setting.reset()


@pytest.fixture
def open_dock(qgis_iface, show_raster):
    """A function (raster path) -> the dock opened on that raster, its tool active; released afterwards."""
    docks = []

    def open_on(raster: Path) -> SegmentDock:
        show_raster(raster)
        widget = SegmentDock(qgis_iface, qgis_iface.mainWindow())
        widget.setUserVisible(True)
        QgsApplication.processEvents()
        docks.append(widget)
        assert widget.controller.store is not None, widget.storeInfoLabel.text()
        return widget

    yield open_on
    for widget in docks:
        widget.release()
        widget.deleteLater()
    QgsApplication.processEvents()
    for layer in list(QgsProject.instance().mapLayers().values()):
        QgsProject.instance().removeMapLayer(layer)


def click_map(dock: SegmentDock, x: float, y: float) -> tuple:
    """A left click at map (x, y) (canvas CRS = raster CRS here) through the map tool; the map position QGIS
    gives that screen pixel."""
    canvas, tool = dock.controller.canvas, dock.controller.tool
    pixel = canvas.getCoordinateTransform().transform(x, y)
    screen = QPoint(round(pixel.x()), round(pixel.y()))
    press = QgsMapMouseEvent(canvas, QEvent.Type.MouseButtonPress, screen, Qt.MouseButton.LeftButton,
                             Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    tool.canvasPressEvent(press)
    tool.canvasReleaseEvent(QgsMapMouseEvent(canvas, QEvent.Type.MouseButtonRelease, screen,
                                             Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton,
                                             Qt.KeyboardModifier.NoModifier))
    return press.mapPoint().x(), press.mapPoint().y()


def hover_map(dock: SegmentDock, x: float, y: float) -> None:
    canvas = dock.controller.canvas
    pixel = canvas.getCoordinateTransform().transform(x, y)
    dock.controller.tool.canvasMoveEvent(QgsMapMouseEvent(
        canvas, QEvent.Type.MouseMove, QPoint(round(pixel.x()), round(pixel.y())), Qt.MouseButton.NoButton,
        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier))


def on_pixel_grid(geometry: QgsGeometry, pixel: float) -> bool:
    """Every vertex a whole number of `pixel` map units from the raster's origin (float noise aside)."""
    x0, y0 = at(0, 0)
    steps = np.array([((v.x() - x0) / pixel, (y0 - v.y()) / pixel) for v in geometry.vertices()])
    return bool(np.allclose(steps, np.round(steps), atol=1e-6))


def show_whole_raster(dock: SegmentDock) -> None:
    canvas = dock.controller.canvas
    (x0, y1), (x1, y0) = at(0, 0), at(WIDTH, HEIGHT)
    canvas.setExtent(QgsRectangle(x0, y0, x1, y1))
    canvas.refresh()
    QgsApplication.processEvents()


def test_a_click_no_tile_holds_offers_a_tile_and_a_changed_object_withdraws_the_offer(scene, open_dock):
    dock = open_dock(scene / "scene.tif")
    show_whole_raster(dock)
    assert dock.encodeTileButton.isHidden()
    click_map(dock, *LEFT)
    assert dock.controller.wait_idle()
    assert "level 1x (10 m/px)" in dock.statusLabel.text()
    click_map(dock, *RIGHT)
    assert "no single tile holds" in dock.statusLabel.text()
    assert not dock.encodeTileButton.isHidden() and dock.on_demand.offer is not None
    assert dock.on_demand.offer.prompts.points == dock.controller.session.prompts.points + (dock.on_demand.offer
                                                                                             .prompts.points[-1],)
    click_map(dock, *at(150, 100))   # the object changes: the offer is for another object now
    assert dock.controller.wait_idle()
    assert dock.encodeTileButton.isHidden() and dock.on_demand.offer is None and not dock.on_demand.busy


def test_hover_previews_say_their_level(scene, open_dock):
    dock = open_dock(scene / "scene.tif")
    show_whole_raster(dock)
    hover_map(dock, *LEFT)
    assert dock.controller.wait_idle()
    assert dock.levelLabel.text() == "Preview: level 1x (10 m/px)"


@pytest.mark.slow
def test_accepting_the_offer_encodes_a_tile_in_the_background_and_segments_on_it_at_full_resolution(
        scene, open_dock):
    settings.PYTHON_EXECUTABLE.set_value(sys.executable)   # the encoder process: this test's Python, with torch
    dock = open_dock(scene / "scene.tif")
    show_whole_raster(dock)
    tiles = dock.controller.show_tile_index()
    assert tiles.featureCount() == 2
    left = click_map(dock, *LEFT)
    assert dock.controller.wait_idle()
    right = click_map(dock, *RIGHT)
    dock.encodeTileButton.click()
    assert dock.on_demand.busy and "in the background" in dock.statusLabel.text()
    assert dock.on_demand.wait_idle(300), "the tile was not encoded in time"
    assert dock.controller.wait_idle()
    session = dock.controller.session
    prompts = MapPrompts((left, right), (1, 1))
    assert session.prompts == prompts
    expected = SegmentEngine(FeatureStore.open(scene / "scene.qsam")).segment(prompts)
    assert [s.tile_id for s in session.segments] == ["x0000"] == [s.tile_id for s in expected]
    drawn = dock.controller.tool.object_band.asGeometry()
    reference = QgsGeometry.collectGeometry([segment_geometry(s) for s in expected])
    assert drawn.symDifference(reference).area() <= 1e-9 * reference.area()   # float noise of two transforms
    assert on_pixel_grid(drawn, PIXEL_SIZE)
    assert "level 1x (10 m/px)" in dock.statusLabel.text()
    assert "3 of 3 tiles encoded" in dock.storeInfoLabel.text()
    extra = [f for f in tiles.getFeatures() if f["extra"] == 1]
    assert tiles.featureCount() == 3 and [f["tile_id"] for f in extra] == ["x0000"]
    assert_dashed_only(tiles, "x0000")


def assert_dashed_only(tiles, tile_id: str) -> None:
    """The tile index draws the outline of `tile_id` dashed, every other one solid."""
    context = QgsRenderContext()
    renderer = tiles.renderer().clone()
    renderer.startRender(context, tiles.fields())
    styles = {}
    for feature in tiles.getFeatures():
        context.expressionContext().setFeature(feature)
        layer = renderer.symbolForFeature(feature, context).symbolLayer(0)
        prop = layer.dataDefinedProperties().property(stroke_style_property())
        styles[feature["tile_id"]] = prop.valueAsString(context.expressionContext(), "solid")[0]
    renderer.stopRender(context)
    assert styles == {name: "dash" if name == tile_id else "solid" for name in styles}


def test_full_resolution_only_keeps_decoding_at_the_finest_level_and_offers_a_tile_there(scene, open_dock):
    dock = open_dock(scene / "levels.tif")
    show_whole_raster(dock)
    click_map(dock, *LEFT)
    assert dock.controller.wait_idle()
    click_map(dock, *RIGHT)   # no finest tile holds both: a coarser level does
    assert dock.controller.wait_idle()
    assert "level 4x (40 m/px)" in dock.statusLabel.text() and dock.encodeTileButton.isHidden()
    dock.controller.clear()
    dock.fullResolutionCheck.setChecked(True)
    assert settings.FULL_RESOLUTION_ONLY.value() and dock.controller.binding.engine.finest_only
    click_map(dock, *LEFT)
    assert dock.controller.wait_idle()
    assert "level 1x (10 m/px)" in dock.statusLabel.text()
    click_map(dock, *RIGHT)
    assert "no single tile holds" in dock.statusLabel.text() and not dock.encodeTileButton.isHidden()
