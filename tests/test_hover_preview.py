"""The hover preview while the cursor moves: the decoder's low-resolution mask outlined (interactive/preview.py),
decoded off the GUI thread, newest position first, and a click/accept still committing the full-resolution
polygon. Real QGIS, a real canvas, the real dock; random weights (plumbing and geometry, never mask quality).

The scene (tests/synthetic.py): 300 x 300 px, EPSG:32633, 10 m pixels, a bright 60 px square at pixel (110, 110);
encoded once per module in 128 px tiles (low-resolution logits 32 x 32, 4 tile pixels a cell).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from qgis.core import QgsApplication, QgsGeometry, QgsPointXY
from qgis.gui import QgsMapMouseEvent
from qgis.PyQt.QtCore import QEvent, QPoint, Qt
from synthetic import encoded_square_scene, fresh_copy, pixel_to_map_default

from quicksam.core.mask_decoding import upsample_masks
from quicksam.core.tiling import Tile
from quicksam.interactive import preview
from quicksam.interactive.engine import MapPrompts, SegmentEngine
from quicksam.interactive.session import SegmentOptions
from quicksam.interactive.vectorise import mask_to_polygons
from quicksam.ui import settings
from quicksam.ui.dock import decode_worker
from quicksam.ui.dock.dock import SegmentDock
from quicksam.ui.dock.drawing import segment_geometry

TILE = 128
SQUARE = (110, 110, 60)
DOCK_SETTINGS = (settings.KNOWN_STORES, settings.HOVER_PREVIEW, settings.HOVER_DELAY_MS, settings.SEGMENT_DOCK_OPEN)


def boundary_cells(mask: np.ndarray) -> np.ndarray:
    """(L, L) bool: cells of a low-resolution mask with an 8-neighbour on the other side (edges clamped, as
    the upsampling clamps): the only cells where the full-resolution mask may differ (module docstring)."""
    padded = np.pad(mask, 1, mode="edge")
    height, width = mask.shape
    differs = np.zeros(mask.shape, dtype=bool)
    for dr in (0, 1, 2):
        for dc in (0, 1, 2):
            differs |= padded[dr:dr + height, dc:dc + width] != mask
    return differs


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    return encoded_square_scene(tmp_path_factory.mktemp("encoded"), SQUARE, tile_size=TILE, overlap=32)


@pytest.fixture
def scene(encoded, tmp_path):
    return fresh_copy(encoded, tmp_path)


@pytest.fixture
def engine(scene) -> SegmentEngine:
    return SegmentEngine.open(scene / "scene.qsam")


@pytest.fixture
def dock(scene, show_raster, qgis_iface):
    """The dock on the scene, its tool active; the rest delay long enough that no rest happens unless waited for."""
    for setting in DOCK_SETTINGS:
        setting.reset()
    settings.HOVER_DELAY_MS.set_value(5000)
    show_raster(scene / "scene.tif")
    widget = SegmentDock(qgis_iface, qgis_iface.mainWindow())
    widget.setUserVisible(True)
    QgsApplication.processEvents()
    yield widget
    widget.release()
    widget.deleteLater()
    QgsApplication.processEvents()
    for setting in DOCK_SETTINGS:
        setting.reset()


def move_to(dock, x: float, y: float) -> QgsPointXY:
    """A mouse move (no button) to the map position (canvas CRS); returns the position QGIS gives its pixel."""
    canvas = dock.controller.canvas
    pixel = canvas.getCoordinateTransform().transform(x, y)
    event = QgsMapMouseEvent(canvas, QEvent.Type.MouseMove, QPoint(round(pixel.x()), round(pixel.y())),
                             Qt.MouseButton.NoButton, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    dock.controller.tool.canvasMoveEvent(event)
    return QgsPointXY(event.mapPoint())


def square_centre() -> tuple:
    col, row, size = SQUARE
    return pixel_to_map_default(col + size / 2, row + size / 2)


def geometry(polygons) -> QgsGeometry:
    result = QgsGeometry()
    result.fromWkb(polygons.wkb)
    return result


# -- the outline and its bound --------------------------------------------------------------------------------


def test_low_res_outline_lies_within_one_low_res_pixel_of_the_full_resolution_polygon(qgis_app):
    """An ellipse of logits (a known mask): the low-resolution outline differs from the full-resolution polygon
    only in the cells touching the outline (boundary_cells), so the symmetric difference lies in them
    (area within 1e-6 of a pixel: float rounding of the same pixel-corner coordinates) and its area is at most
    their number x 4 x 4 pixels; the outlines are within one low-resolution pixel (4 px, x sqrt 2 diagonally)."""
    low, scale, pixel = 64, 4, 10.0
    rows, cols = np.mgrid[0:low, 0:low] + 0.5
    logits = (10 * (1 - ((cols - 30.3) / 17.2) ** 2 - ((rows - 33.7) / 11.4) ** 2)).astype(np.float32)
    size = low * scale
    tile = Tile(index=0, row=0, col=0, col_off=0, row_off=0, size=size, valid_width=size, valid_height=size)
    raster_geotransform = (500000.0, pixel, 0.0, 4200000.0, 0.0, -pixel)
    full = geometry(mask_to_polygons(upsample_masks(logits[None], low * scale, 0.0)[0], raster_geotransform))
    low_geotransform = preview.low_res_geotransform(raster_geotransform, tile, scale)
    low_mask = logits > 0
    outline = geometry(mask_to_polygons(low_mask, low_geotransform))
    cells = boundary_cells(low_mask)
    near = geometry(mask_to_polygons(cells, low_geotransform))

    # the outline on the tile's grid: the cells' own corners and area (exact binary fractions of 40 m)
    cell_rows, cell_cols = np.nonzero(low_mask)
    box = outline.boundingBox()
    assert (box.xMinimum(), box.yMaximum()) == (500000.0 + cell_cols.min() * scale * pixel,
                                               4200000.0 - cell_rows.min() * scale * pixel)
    assert outline.area() == pytest.approx(low_mask.sum() * (scale * pixel) ** 2, rel=1e-12)
    difference = outline.symDifference(full)
    assert difference.area() > 0  # the two resolutions do differ here
    assert difference.difference(near).area() <= 1e-6 * pixel ** 2
    assert difference.area() <= cells.sum() * (scale * pixel) ** 2
    assert outline.hausdorffDistance(full) <= scale * pixel * np.sqrt(2)
    assert abs(outline.area() - full.area()) <= cells.sum() * (scale * pixel) ** 2


def test_preview_segments_outline_the_decoders_own_logits(engine):
    """Through the real engine: the preview is the low-resolution mask of the same decode, on the tile's grid,
    and stays within the bound of the full-resolution polygon the engine makes of the same prompts."""
    prompts = MapPrompts().with_point(*square_centre(), 1)
    [sketch] = preview.preview_segments(engine, prompts, SegmentOptions())
    [full] = engine.segment(prompts)
    np.testing.assert_allclose(sketch.low_res_logits, full.low_res_logits, atol=1e-4)  # one graph, same inputs
    tile = engine.store.grid.by_id(sketch.tile_id)
    low_mask = preview.low_res_masks(engine, prompts, tile, sketch.low_res_logits[None])[0]
    assert preview.vertex_count(sketch.geometry) <= preview.MAX_VERTICES  # drawn as traced: the bound holds
    near = geometry(mask_to_polygons(boundary_cells(low_mask),
                                     preview.low_res_geotransform(engine.store.geotransform, tile, 4)))
    pixel = engine.store.geotransform[1]
    difference = geometry(sketch.geometry).symDifference(geometry(full.geometry))
    assert difference.difference(near).area() <= 1e-6 * pixel ** 2


# -- the dock: newest position, stale results dropped, accept at full resolution, nothing heavy on the GUI ------


def test_moving_sends_the_newest_position_and_never_draws_an_older_preview(dock, engine):
    controller = dock.controller
    requested, delivered = [], []
    original_request = controller.worker.request

    def recording_request(kind, engine_, prompts, options, low_res=False):
        token = original_request(kind, engine_, prompts, options, low_res)
        requested.append((token, prompts.points[-1], low_res))
        return token

    controller.worker.request = recording_request
    controller.worker.finished.connect(lambda outcome: delivered.append(outcome.token))
    x, y = square_centre()
    positions = [move_to(dock, x + dx, y) for dx in (-120, -60, 0, 60, 120)]  # faster than any decode
    assert [low_res for _, _, low_res in requested] == [True]  # the first at once, the rest wait for it
    assert controller.worker.wait_idle()
    newest = (positions[-1].x(), positions[-1].y())
    assert [point for _, point, _ in requested] == [(positions[0].x(), positions[0].y()), newest]
    assert delivered == [token for token, _, _ in requested]  # each drawn as it came back, oldest first
    [expected] = preview.preview_segments(engine, MapPrompts().with_point(*newest, 1), SegmentOptions())
    drawn = controller.tool.preview_band.asGeometry()
    assert drawn.symDifference(geometry(expected.geometry)).area() <= 1e-9 * geometry(expected.geometry).area()

    # A moving preview still on its way when a newer preview (the rest's) is asked for is dropped.
    before = list(delivered)
    controller.request_preview(MapPrompts().with_point(x - 30, y, 1), low_res=True)
    controller.request_preview(MapPrompts().with_point(x + 30, y, 1))
    assert controller.worker.wait_idle()
    assert delivered[len(before):] == [requested[-1][0]] and not requested[-1][2]


def test_accept_after_hovering_commits_the_full_resolution_polygon(dock, engine):
    controller = dock.controller
    point = move_to(dock, *square_centre())
    assert controller.worker.wait_idle()
    sketch = controller.tool.preview_band.asGeometry()
    assert not sketch.isEmpty()
    tool = controller.tool
    pixel = controller.canvas.getCoordinateTransform().transform(point)
    for kind in (QEvent.Type.MouseButtonPress, QEvent.Type.MouseButtonRelease):
        buttons = Qt.MouseButton.LeftButton if kind == QEvent.Type.MouseButtonPress else Qt.MouseButton.NoButton
        event = QgsMapMouseEvent(controller.canvas, kind, QPoint(round(pixel.x()), round(pixel.y())),
                                 Qt.MouseButton.LeftButton, buttons, Qt.KeyboardModifier.NoModifier)
        (tool.canvasPressEvent if kind == QEvent.Type.MouseButtonPress else tool.canvasReleaseEvent)(event)
    prompts = controller.session.prompts
    dock.acceptButton.click()
    assert controller.wait_idle(30)
    [feature] = list(controller.output_layer().getFeatures())
    expected = QgsGeometry.collectGeometry([segment_geometry(s) for s in engine.segment(prompts)])
    assert feature.geometry().symDifference(expected).area() <= 1e-9 * expected.area()  # full resolution, exact
    assert feature.geometry().symDifference(sketch).area() > 0  # not the low-resolution preview


def test_moving_does_no_decoding_or_vectorising_on_the_gui_thread(dock, engine, monkeypatch):
    """Counted, not timed: per move event the GUI thread makes at most one tile check and one worker request;
    decoding (the decoder graph) and vectorising (low- and full-resolution) run only in the worker."""
    controller = dock.controller
    threads = {"decode": [], "vectorise": []}
    original_raw, original_vectorise = engine.decoder.raw, preview.mask_to_polygons

    def raw(*args):
        threads["decode"].append(threading.current_thread())
        return original_raw(*args)

    def vectorise(*args, **kwargs):
        threads["vectorise"].append(threading.current_thread())
        return original_vectorise(*args, **kwargs)

    session_engine = controller.session.engine
    monkeypatch.setattr(session_engine.decoder, "raw", raw)
    monkeypatch.setattr(preview, "mask_to_polygons", vectorise)
    full_vectorise = []
    original_segment = decode_worker.segment_prompts
    monkeypatch.setattr(decode_worker, "segment_prompts",
                        lambda *args: full_vectorise.append(threading.current_thread()) or original_segment(*args))
    checks, requests = [], []
    original_check, original_request = controller.session.preview_prompts, controller.worker.request
    monkeypatch.setattr(controller.session, "preview_prompts", lambda *a: checks.append(1) or original_check(*a))
    monkeypatch.setattr(controller.worker, "request", lambda *a, **k: requests.append(1) or original_request(*a, **k))

    x, y = square_centre()
    moves = 12
    for step in range(moves):
        move_to(dock, x - 60 + 10 * step, y + 5 * (step % 3))
        QgsApplication.processEvents()  # let results come back between some moves
        if step % 4 == 3:
            assert controller.worker.wait_idle()
    controller.scheduler.hover_timer.setInterval(10)  # and rest: the full-resolution preview
    move_to(dock, x, y)
    assert controller.wait_idle()
    assert len(checks) <= moves + 2 and len(requests) <= moves + 2  # at most one of each per move (+ the rest)
    assert threads["decode"] and threads["vectorise"] and full_vectorise
    main = threading.main_thread()
    assert main not in threads["decode"] + threads["vectorise"] + full_vectorise
