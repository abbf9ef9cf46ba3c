"""The Segment dock on a series store (issue 12), in real QGIS with real map-tool events: the frame selector lists
the frames by date, choosing a frame decodes the object on that frame's features (its prompts kept), and the frame
follows QGIS's Temporal Controller when the map is temporal and a raster layer is.

The scene (tests/synthetic.py): 300 x 300 px, EPSG:32633, 10 m pixels; frame 0 a bright 60 px square at pixel
(110, 110), frame 1 the square moved to (150, 150); 128 px tiles, random weights. The series is put together here
from two plain stores and a series.json (core/series.py), as the series encoder writes it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fake_tracker import fake_python
from qgis.core import QgsApplication, QgsDateTimeRange, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QCoreApplication, QDate, QDateTime, QElapsedTimer, QEventLoop, QTime
from synthetic import encode, fresh_copy, pixel_to_map_default, square_scene, write_raster
from test_dock import DOCK_SETTINGS, click_map

from quicksam.core.series import FrameRef, SeriesManifest, frame_folder_name, write_series
from quicksam.ui import settings
from quicksam.ui.dock.dock import SegmentDock

TILE = 128
DATES = ("2024-05-01T10:00:00", "2024-06-01T10:00:00")


@pytest.fixture(scope="module")
def encoded_series(tmp_path_factory) -> Path:
    """scene0.tif, scene1.tif and the series store scene.qsam (frame 0 in the folder, frame 1 in frames/t0001)."""
    tmp_path = tmp_path_factory.mktemp("series")
    root = tmp_path / "scene.qsam"
    refs = []
    for index, corner in enumerate((110, 150)):
        raster = write_raster(tmp_path / f"scene{index}.tif", square_scene(300, 300, (corner, corner, 60)))
        folder = frame_folder_name(index)
        encode(raster, root / folder, tile_size=TILE, overlap=32)
        refs.append(FrameRef(index=index, folder=folder, source=str(raster), datetime=DATES[index],
                             date_source="option"))
    write_series(root, SeriesManifest(frames=tuple(refs), grid_source=refs[0].source))
    return tmp_path


@pytest.fixture
def series(encoded_series: Path, tmp_path: Path) -> Path:
    """A copy of `encoded_series` for one test (tests write tracks into the store); the frames' sources are the
    first copy's rasters, which stay."""
    return fresh_copy(encoded_series, tmp_path)


@pytest.fixture
def dock(series: Path, show_raster, qgis_iface) -> SegmentDock:
    for setting in DOCK_SETTINGS:
        setting.reset()
    settings.HOVER_PREVIEW.set_value(False)
    layer: QgsRasterLayer = show_raster(series / "scene0.tif")
    assert layer.isValid()
    widget = SegmentDock(qgis_iface, qgis_iface.mainWindow())
    widget.setUserVisible(True)
    widget.controller.choose_store(str(series / "scene.qsam"))
    QgsApplication.processEvents()
    yield widget
    widget.release()
    widget.deleteLater()
    QgsApplication.processEvents()
    for setting in DOCK_SETTINGS:
        setting.reset()


def test_the_frame_selector_lists_the_frames_and_decodes_the_object_on_the_chosen_one(dock: SegmentDock,
                                                                                     series: Path) -> None:
    assert dock.seriesGroup.isVisibleTo(dock)
    assert [dock.frameCombo.itemText(i) for i in range(dock.frameCombo.count())] == \
        [f"0: {DATES[0]}", f"1: {DATES[1]}"]
    dock.controller.activate_tool()
    click_map(dock, *pixel_to_map_default(170, 170))   # inside both frames' squares
    assert dock.controller.wait_idle()
    on_frame_0 = dock.controller.session.segments
    assert on_frame_0
    dock.frameCombo.setCurrentIndex(1)
    assert dock.controller.wait_idle()
    assert dock.controller.binding.frame_index == 1
    assert not dock.controller.session.prompts.is_empty()        # the prompts are kept
    on_frame_1 = dock.controller.session.segments
    assert on_frame_1 and on_frame_1[0].tile_id == on_frame_0[0].tile_id
    # decoded again, on frame 1's features: the same tile's logits differ by far more than float noise
    assert np.abs(on_frame_1[0].low_res_logits - on_frame_0[0].low_res_logits).max() > 1e-2
    assert dock.frameCombo.currentText() == f"1: {DATES[1]}"


def test_a_plain_store_shows_no_series_group(tmp_path: Path, show_raster, qgis_iface) -> None:
    raster = write_raster(tmp_path / "plain.tif", square_scene(300, 300, (110, 110, 60)))
    encode(raster, tmp_path / "plain.qsam", tile_size=TILE, overlap=32)
    show_raster(raster)
    widget = SegmentDock(qgis_iface, qgis_iface.mainWindow())
    widget.setUserVisible(True)
    try:
        widget.controller.choose_store(str(tmp_path / "plain.qsam"))
        assert widget.controller.store is not None
        assert not widget.seriesGroup.isVisibleTo(widget)
    finally:
        widget.release()
        widget.deleteLater()


def day(text: str) -> QDateTime:
    return QDateTime(QDate.fromString(text, "yyyy-MM-dd"), QTime(0, 0))


def test_the_frame_follows_the_temporal_controller_when_a_raster_layer_is_temporal(dock: SegmentDock) -> None:
    canvas = dock.controller.canvas
    june = QgsDateTimeRange(day("2024-06-01"), day("2024-06-02"))
    canvas.setTemporalRange(june)
    QgsApplication.processEvents()
    assert dock.controller.binding.frame_index == 0, "no temporal raster layer: the frame is the user's choice"
    layer = dock.controller.raster_layer
    properties = layer.temporalProperties()
    properties.setIsActive(True)
    properties.setFixedTemporalRange(QgsDateTimeRange(day("2024-05-01"), day("2024-07-01")))
    canvas.setTemporalRange(QgsDateTimeRange(day("2024-05-01"), day("2024-05-02")))
    canvas.setTemporalRange(june)
    QgsApplication.processEvents()
    assert dock.controller.binding.frame_index == 1
    assert dock.frameCombo.currentIndex() == 1
    canvas.setTemporalRange(QgsDateTimeRange(day("2023-01-01"), day("2023-01-02")))   # no frame then
    assert dock.controller.binding.frame_index == 1


# -- Track (the tracker process is tests/fake_tracker.py: known squares, see there) ------------------------------


def wait_tracked(dock: SegmentDock, timeout: float = 60.0) -> None:
    timer = QElapsedTimer()
    timer.start()
    while dock.tracking.busy and timer.elapsed() < timeout * 1000:
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
    assert not dock.tracking.busy, "tracking did not end"


def test_track_adds_one_polygon_per_frame_to_the_temporal_tracks_layer(dock: SegmentDock, series: Path, tmp_path,
                                                                       monkeypatch) -> None:
    monkeypatch.setenv(settings.PYTHON_ENV_VAR, str(fake_python(tmp_path)))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))   # where the run's work folder goes
    dock.controller.activate_tool()
    x, y = pixel_to_map_default(170.5, 170.5)
    click_map(dock, x, y)
    assert dock.controller.wait_idle()
    assert dock.tracking.track_or_stop()
    assert dock.trackButton.text() == "Stop"
    wait_tracked(dock)
    assert dock.trackButton.text() == "Track"
    layer = dock.tracking.layer
    assert layer is not None and QgsProject.instance().mapLayer(layer.id()) is layer
    assert layer.source().startswith(str(series / "scene.qsam" / "tracks.gpkg"))
    assert layer.temporalProperties().isActive()
    assert layer.temporalProperties().startField() == "datetime"
    features = sorted(layer.getFeatures(), key=lambda feature: feature["frame"])
    assert [(f["obj_id"], f["frame"]) for f in features] == [(1, 0), (1, 1)]
    assert [f["datetime"].toUTC().toString("yyyy-MM-ddTHH:mm:ss") for f in features] == list(DATES)
    # The fake's square is centred on the clicked pixel on the prompt frame and 2 px (20 m) further right on the
    # next: polygons in the raster's CRS where the tile's geotransform puts them (1e-6 m: exact arithmetic).
    for feature, shift in zip(features, (0.0, 20.0)):
        box = feature.geometry().boundingBox()
        assert box.center().x() == pytest.approx(x - 5 + shift, abs=1e-6)   # 10 px wide, hole not at an edge
        assert (box.width(), box.height()) == (pytest.approx(100.0), pytest.approx(100.0))
    assert "2 frames" in dock.statusLabel.text()
    assert not list(temp.iterdir()), "the run's work folder was left behind"
    # A second object gets the next id, in the same layer.
    assert dock.tracking.track_or_stop()
    wait_tracked(dock)
    assert sorted({f["obj_id"] for f in dock.tracking.layer.getFeatures()}) == [1, 2]


def test_track_without_an_object_says_what_to_do(dock: SegmentDock) -> None:
    assert not dock.tracking.track_or_stop()
    assert "click on the object" in dock.statusLabel.text()
    assert not (dock.controller.store.root / "tracks.gpkg").exists()


@pytest.mark.slow
def test_track_with_the_real_tracker_process_fills_every_frame(dock: SegmentDock, monkeypatch) -> None:
    """The dock's Track against the real `quicksam track-masks` (this venv's Python as the encoder's): one
    feature per frame with its date, from frame 1 both ways. (That QGIS's process never imports torch is checked
    by tests/test_track_qgis.py, whose process has not imported it; this one built its stores with torch.)"""
    monkeypatch.setenv(settings.PYTHON_ENV_VAR, sys.executable)
    dock.controller.activate_tool()
    dock.frameCombo.setCurrentIndex(1)
    click_map(dock, *pixel_to_map_default(170.5, 170.5))
    assert dock.controller.wait_idle()
    dock.directionCombo.setCurrentIndex(dock.directionCombo.findData("both"))
    assert dock.tracking.track_or_stop()
    wait_tracked(dock, timeout=300)
    assert "2 frames" in dock.statusLabel.text(), dock.statusLabel.text()
    features = sorted(dock.tracking.layer.getFeatures(), key=lambda feature: feature["frame"])
    assert [(f["obj_id"], f["frame"]) for f in features] == [(1, 0), (1, 1)]
    assert [f["datetime"].toUTC().toString("yyyy-MM-ddTHH:mm:ss") for f in features] == list(DATES)
    assert all(0.0 <= f["score"] <= 1.0 for f in features)
    assert all(f.geometry().isNull() != bool(f["present"]) for f in features)   # a shape exactly when present
