"""Tracking, the QGIS side: prompts → track job → the tracker's process → masks → polygons in a temporal layer,
through quicksam:trackobjects (real Processing runs) and `quicksam track` (a real subprocess).

The tracker is tests/fake_tracker.py, run as the encoder's Python (QUICKSAM_PYTHON): it writes known masks (a
10 x 10 px square with a 2 x 2 px hole, 2 px further right per frame from the prompt frame, around each object's
anchor) and reports them with the real tracker's events, so polygons, ids, frames and dates are checked exactly.
The series store (tests/series_stores.py) has 4 dated frames of a 400 x 256 px scene in two 256 px tiles
(r0000c0000 at column 0, r0000c0001 at column 144), EPSG:32633, 10 m pixels, encoded by `quicksam encode`
processes with random weights (this process never imports torch).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
import shapely
import shapely.wkb
from fake_tracker import ABSENT, HOLD_ENV, fake_python
from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QDateTime, Qt
from series_stores import SERIES_DATES, build_series
from synthetic import ORIGIN, PIXEL_SIZE, assert_one_line_error, assert_same_geometry, cli_command
from synthetic import pixel_to_map_default as at

from quicksam.core.series import SeriesManifest, read_series, write_series
from quicksam.core.store import FeatureStore
from quicksam.interactive.engine import MapPrompts
from quicksam.interactive.tracking import ObjectPrompts, plan_track
from quicksam.ui import settings
from quicksam.ui.layers import qgis_field

ALGORITHM_ID = "quicksam:trackobjects"
#: Object 1 on tile r0000c0000 (column offset 0), object 2 on tile r0000c0001 (column offset 144).
POINT_1, POINT_2 = (80.5, 120.5), (300.5, 50.5)
TILE_OFFSETS = {1: 0, 2: 144}


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    return build_series(tmp_path_factory.mktemp("series"))


@pytest.fixture
def fake_tracker(tmp_path, monkeypatch) -> Path:
    """The fake tracker as the encoder's Python, for the algorithm run in this process."""
    settings.PYTHON_EXECUTABLE.reset()  # the variable decides
    python = fake_python(tmp_path)
    monkeypatch.setenv(settings.PYTHON_ENV_VAR, str(python))
    return python


@pytest.fixture
def registered(qgis_processing, plugin):
    assert QgsApplication.processingRegistry().algorithmById(ALGORITHM_ID) is not None
    return plugin


class RecordingFeedback(QgsProcessingFeedback):
    def __init__(self) -> None:
        super().__init__()
        self.warnings: List[str] = []

    def pushWarning(self, warning: str) -> None:  # noqa: N802 - QGIS's name
        self.warnings.append(warning)


def prompt_layer(kind: str, rows: Sequence[tuple]) -> QgsVectorLayer:
    """A memory layer (EPSG:32633) of (geometry, obj_id, frame) rows."""
    layer = QgsVectorLayer(f"{kind}?crs=EPSG:32633", "prompts", "memory")
    layer.dataProvider().addAttributes([qgis_field("obj_id", "int"), qgis_field("frame", "int")])
    layer.updateFields()
    features = []
    for geometry, obj_id, frame in rows:
        feature = QgsFeature(layer.fields())
        feature.setGeometry(geometry)
        feature.setAttributes([obj_id, frame])
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)
    return layer


def point(col: float, row: float) -> QgsGeometry:
    return QgsGeometry.fromPointXY(QgsPointXY(*at(col, row)))


def two_points(frame_2: int = 1) -> QgsVectorLayer:
    return prompt_layer("Point", [(point(*POINT_1), 1, 1), (point(*POINT_2), 2, frame_2)])


def run(series: Path, prompts, feedback=None, **parameters) -> dict:
    import processing

    parameters = {"STORE": str(series), "PROMPTS": prompts, "OBJECT_ID": "obj_id", "FRAME_FIELD": "frame",
                  "OUTPUT": "TEMPORARY_OUTPUT", **parameters}
    return processing.run(ALGORITHM_ID, parameters, feedback=feedback or QgsProcessingFeedback())


def expected_square(obj_id: int, anchor: tuple, frame: int, prompt_frame: int = 1):
    """The fake's mask of `obj_id` on `frame` as a polygon in EPSG:32633 (see fake_tracker)."""
    ax, ay = anchor
    col0 = TILE_OFFSETS[obj_id] + ax - 5 + 2 * (frame - prompt_frame)

    def rect(c0, r0, c1, r1):
        return shapely.box(ORIGIN[0] + c0 * PIXEL_SIZE, ORIGIN[1] - r1 * PIXEL_SIZE,
                           ORIGIN[0] + c1 * PIXEL_SIZE, ORIGIN[1] - r0 * PIXEL_SIZE)

    square = rect(col0, ay - 5, col0 + 10, ay + 5).difference(rect(col0 + 5, ay, col0 + 7, ay + 2))
    return shapely.MultiPolygon([square])


def by_key(layer: QgsVectorLayer) -> dict:
    return {(feature["obj_id"], feature["frame"]): feature for feature in layer.getFeatures()}


def iso(text: str) -> QDateTime:
    """A series date-time as the layer holds it (without a zone: UTC, ui/track_layer.qdatetime)."""
    return QDateTime.fromString(text + "Z", Qt.DateFormat.ISODate)


# -- plan_track (no QGIS needed) ------------------------------------------------------------------------------

def test_plan_puts_each_object_on_its_tile_in_tile_pixels_and_rasterises_a_polygon(series, tmp_path):
    store = FeatureStore.open(series)
    square = shapely.box(*at(60, 130), *at(80, 110))   # pixels columns 60-79, rows 110-129
    objects = [ObjectPrompts(1, MapPrompts(points=(at(*POINT_1),), labels=(1,))),
               ObjectPrompts(2, MapPrompts(points=(at(*POINT_2),), labels=(1,))),
               ObjectPrompts(3, polygon_wkb=shapely.to_wkb(square))]
    plan = plan_track(store, objects, 2, "forward", tmp_path / "job", (0, 3))
    job = plan.job
    assert job.frames == (2, 3) and job.prompt_frame == 2 and job.direction == "forward"
    assert [(g.level, g.tile_id, [o.obj_id for o in g.objects]) for g in job.groups] == [
        (".", "r0000c0000", [1, 3]), (".", "r0000c0001", [2])]
    assert job.groups[0].objects[0].points[0] == pytest.approx((80.5, 120.5), abs=1e-9)
    assert job.groups[1].objects[0].points[0] == pytest.approx((300.5 - 144, 50.5), abs=1e-9)
    mask = np.load(job.groups[0].objects[1].mask_file)
    expected = np.zeros((256, 256), bool)
    expected[110:130, 60:80] = True
    assert np.array_equal(mask, expected)
    assert plan.places[1].geotransform == pytest.approx((ORIGIN[0] + 1440, 10, 0, ORIGIN[1], 0, -10), abs=1e-9)


# -- Processing --------------------------------------------------------------------------------------------------

def test_polygons_ids_frames_dates_and_absence_are_exact(registered, series, fake_tracker):
    layer = run(series, two_points(), DIRECTION=2)["OUTPUT"]
    features = by_key(layer)
    assert sorted(features) == [(obj, frame) for obj in (1, 2) for frame in range(4)]
    anchors = {1: (80, 120), 2: (156, 50)}
    for (obj_id, frame), feature in features.items():
        assert feature["datetime"] == iso(SERIES_DATES[frame])
        end = SERIES_DATES[frame + 1] if frame < 3 else "2024-06-30T10:30:00"   # last: one more 20-day step
        assert feature["datetime_end"] == iso(end)
        assert feature["score"] == pytest.approx(0.5 + 0.01 * frame, abs=1e-6)   # float32 in the fake
        assert feature["level"] == "." and feature["resolution"] == pytest.approx(10.0)
        if (obj_id, frame) == ABSENT:
            assert not feature["present"] and not feature.hasGeometry() and feature["area"] == 0
            continue
        assert feature["present"]
        geometry = shapely.wkb.loads(bytes(feature.geometry().asWkb()))
        assert_same_geometry(geometry, expected_square(obj_id, anchors[obj_id], frame))  # 1e-6 m
        assert feature["area"] == pytest.approx(96 * 100.0, rel=1e-9)


def test_the_loaded_layer_is_temporal_from_its_datetime_fields(registered, series, fake_tracker):
    import processing
    from qgis.core import Qgis, QgsProcessingContext

    project = QgsProject.instance()
    context = QgsProcessingContext()
    context.setProject(project)
    results = processing.runAndLoadResults(ALGORITHM_ID, {
        "STORE": str(series), "PROMPTS": two_points(), "OBJECT_ID": "obj_id", "FRAME_FIELD": "frame",
        "DIRECTION": 0, "OUTPUT": "TEMPORARY_OUTPUT"}, context=context)
    layer = project.mapLayer(results["OUTPUT"])
    try:
        properties = layer.temporalProperties()
        assert properties.isActive()
        assert properties.mode() == Qgis.VectorTemporalMode.FeatureDateTimeStartAndEndFromFields
        assert (properties.startField(), properties.endField()) == ("datetime", "datetime_end")
        assert sorted({f["frame"] for f in layer.getFeatures()}) == [1, 2, 3]   # forward from frame 1
    finally:
        project.removeMapLayer(layer.id())


def test_frames_without_dates_leave_datetime_empty_and_the_layer_not_temporal(registered, series, fake_tracker,
                                                                              tmp_path):
    import dataclasses

    import processing
    from qgis.core import QgsProcessingContext

    undated = tmp_path / "undated"
    shutil.copytree(series, undated)
    manifest = read_series(undated)
    write_series(undated, SeriesManifest(tuple(dataclasses.replace(frame, datetime=None, date_source="index")
                                               for frame in manifest.frames), manifest.grid_source))
    feedback = RecordingFeedback()
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    results = processing.runAndLoadResults(ALGORITHM_ID, {
        "STORE": str(undated), "PROMPTS": two_points(), "OBJECT_ID": "obj_id", "FRAME_FIELD": "frame",
        "FRAMES": "1:2", "OUTPUT": "TEMPORARY_OUTPUT"}, context=context, feedback=feedback)
    layer = QgsProject.instance().mapLayer(results["OUTPUT"])
    try:
        assert sorted(by_key(layer)) == [(1, 1), (1, 2), (2, 1), (2, 2)]
        assert all(f["datetime"] is None or not f["datetime"] for f in layer.getFeatures())
        assert not layer.temporalProperties().isActive()
        assert any("not temporal" in warning for warning in feedback.warnings)
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


@pytest.mark.parametrize("case, expected", [
    ("two frames", "the prompts are on frames 1, 2"),
    ("frame out of range", "frame 9 is not a frame of the series (frames 0 to 3)"),
    ("range without the frame", "outside the frames 2:3"),
    ("not a series", "is not a series store"),
    ("field and FRAME differ", "the prompts are on frame 1 (their frame field) but FRAME says 0; give FRAME 1"),
    ("not a series, in the dialog's words", "Encode raster for SAM with its Time series frames"),
    ("object id below 1", "its object id 0 is not 1 or more"),
    ("missing field", "The prompt layer has no field 'nosuch' (its fields: obj_id, frame); give FRAME_FIELD one"),
])
def test_bad_input_is_refused_in_one_line(registered, series, fake_tracker, case, expected):
    store, prompts, extra = series, two_points(), {}
    if case == "two frames":
        prompts = two_points(frame_2=2)
    elif case == "frame out of range":
        prompts = prompt_layer("Point", [(point(*POINT_1), 1, 9)])
    elif case == "range without the frame":
        extra = {"FRAMES": "2:3"}
    elif case == "field and FRAME differ":
        extra = {"FRAME": 0}
    elif case.startswith("not a series"):
        store = series / "frames" / "t0001"
    elif case == "object id below 1":
        prompts = prompt_layer("Point", [(point(*POINT_1), 0, 1)])
    elif case == "missing field":
        extra = {"FRAME_FIELD": "nosuch"}
    else:
        store = series / "frames" / "t0001"   # a frame's own store: a plain store
    with pytest.raises(QgsProcessingException) as caught:
        run(store, prompts, **extra)
    message = str(caught.value)
    assert expected in message and "\n" not in message.strip()
    assert " --" not in message   # the dialog names its fields, not the command line's options


# -- the command line -------------------------------------------------------------------------------------------

def test_cli_track_writes_a_temporal_geopackage_without_torch(series, tmp_path):
    """`quicksam track` in a fresh process (the fake tracker as its encoder's Python); the process has not
    imported torch when it ends, and the GeoPackage carries its temporal settings for QGIS."""
    output = tmp_path / "tracks.gpkg"
    marker = tmp_path / "torch.txt"
    args = ["track", str(series), "--frame", "1", "--point", "{},{}".format(*at(*POINT_2)), "--object-id", "7",
            "--direction", "forward", "--frames", "0:2", "--output", str(output)]
    code = ("import sys; from quicksam.cli import main; code = main(sys.argv[2:]); "
            "open(sys.argv[1], 'w').write(str('torch' in sys.modules)); sys.exit(code)")
    environment = {**__import__("os").environ, settings.PYTHON_ENV_VAR: str(fake_python(tmp_path))}
    result = subprocess.run([sys.executable, "-c", code, str(marker), *args], capture_output=True, text=True,
                            env=environment, timeout=300)
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "False"
    layer = QgsVectorLayer(f"{output}|layername=tracks", "tracks", "ogr")
    assert layer.isValid()
    features = by_key(layer)
    assert sorted(features) == [(7, 1), (7, 2)]
    geometry = shapely.wkb.loads(bytes(features[(7, 2)].geometry().asWkb()))
    assert_same_geometry(geometry, expected_square(2, (156, 50), 2))
    assert features[(7, 2)]["datetime"] == iso(SERIES_DATES[2])
    assert features[(7, 2)]["datetime_end"] == iso(SERIES_DATES[3])   # the next frame's, though not tracked
    assert not layer.temporalProperties().isActive()
    _, loaded = layer.loadDefaultStyle()   # as QGIS does when it adds the layer to a project
    properties = layer.temporalProperties()
    assert loaded and properties.isActive()
    assert (properties.startField(), properties.endField()) == ("datetime", "datetime_end")


def test_cli_track_refuses_a_store_that_is_not_a_series_in_one_line(series, tmp_path):
    result = subprocess.run(cli_command("track", series / "frames" / "t0002", "--frame", "0", "--point",
                                        "{},{}".format(*at(*POINT_1)), "--output", tmp_path / "out.gpkg"),
                            capture_output=True, text=True, timeout=300)
    assert_one_line_error(result, r"is not a series store .*quicksam encode --series ")
    assert not (tmp_path / "out.gpkg").exists()


# -- levels, cancel, the tracker's failures ------------------------------------------------------------------------

def test_an_object_larger_than_a_tile_is_tracked_on_the_coarser_level_at_its_place(registered, tmp_path_factory,
                                                                                  fake_tracker):
    """A box over 36 x 10 px of the raster at factor 1 fits no 256 px tile of the finest level (wider than one):
    it goes to the 4x level (100 x 64 px, one tile), and the polygons lie on that level's 40 m pixels."""
    series = build_series(tmp_path_factory.mktemp("levels"), SERIES_DATES[:2], "--levels", "1,4")
    box = (*at(20, 200), *at(380, 100))   # columns 20-380, rows 100-200 of the raster
    layer = prompt_layer("Polygon", [(QgsGeometry.fromRect(QgsRectangle(*box)), 4, 0)])
    features = by_key(run(series, layer, POLYGONS=1)["OUTPUT"])
    assert sorted(features) == [(4, 0), (4, 1)]
    assert features[(4, 1)]["level"] == "levels/x4" and features[(4, 1)]["resolution"] == pytest.approx(40.0)
    # the box's centre in 4x pixels: column 50, row 37.5 → anchor (50, 37); frame 1 is 2 px right of frame 0
    col0, row0 = 50 - 5 + 2, 37 - 5
    square = shapely.box(ORIGIN[0] + col0 * 40, ORIGIN[1] - (row0 + 10) * 40, ORIGIN[0] + (col0 + 10) * 40,
                         ORIGIN[1] - row0 * 40)
    hole = shapely.box(ORIGIN[0] + (col0 + 5) * 40, ORIGIN[1] - (row0 + 7) * 40, ORIGIN[0] + (col0 + 7) * 40,
                       ORIGIN[1] - (row0 + 5) * 40)
    geometry = shapely.wkb.loads(bytes(features[(4, 1)].geometry().asWkb()))
    assert_same_geometry(geometry, shapely.MultiPolygon([square.difference(hole)]))


def test_cancel_stops_the_tracker_and_says_so(registered, series, fake_tracker):
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda _percent: feedback.cancel())   # after the first frame arrives
    with pytest.raises(QgsProcessingException, match="Tracking cancelled"):
        run(series, two_points(), feedback=feedback)


def test_an_encoder_without_track_masks_is_told_to_update_in_one_line(registered, series, tmp_path, monkeypatch):
    python = tmp_path / "old-encoder-python"
    python.write_text("#!/bin/sh\necho \"quicksam: error: argument command: invalid choice: 'track-masks' "
                      "(choose from 'encode', 'info')\" >&2\nexit 1\n")
    python.chmod(0o755)
    settings.PYTHON_EXECUTABLE.reset()
    monkeypatch.setenv(settings.PYTHON_ENV_VAR, str(python))
    with pytest.raises(QgsProcessingException) as caught:
        run(series, two_points())
    message = str(caught.value).strip()
    assert "has no track-masks command" in message and "Set up" in message and "\n" not in message


def test_cli_track_to_another_format_writes_a_qml_with_the_temporal_settings(series, tmp_path):
    output = tmp_path / "tracks.geojson"
    environment = {**__import__("os").environ, settings.PYTHON_ENV_VAR: str(fake_python(tmp_path))}
    result = subprocess.run(cli_command("track", series, "--frame", "0", "--box={},{},{},{}".format(
        *at(70, 130), *at(90, 110)), "--direction", "forward", "--frames", "0:1", "--output", output),
        capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr
    layer = QgsVectorLayer(str(output), "tracks", "ogr")
    assert sorted(by_key(layer)) == [(1, 0), (1, 1)]
    assert (tmp_path / "tracks.qml").is_file()
    _, loaded = layer.loadDefaultStyle()
    assert loaded and layer.temporalProperties().isActive()
    assert layer.temporalProperties().endField() == "datetime_end"


# -- frames and dates (no QGIS) -----------------------------------------------------------------------------------

def test_frame_ranges_directions_and_periods():
    from quicksam.core.errors import QuickSamError
    from quicksam.core.series import FrameRef
    from quicksam.interactive.track_features import frame_periods
    from quicksam.interactive.tracking import parse_frame_range, tracked_frames

    assert parse_frame_range("", 5) == (0, 4) and parse_frame_range("2:", 5) == (2, 4)
    assert parse_frame_range(":3", 5) == (0, 3) and parse_frame_range(" 1:2 ", 5) == (1, 2)
    for bad in ("3", "a:b", "3:1", "0:5", "1:2:3"):
        with pytest.raises(QuickSamError):
            parse_frame_range(bad, 5)
    assert tracked_frames(5, 2, "forward", (0, 4)) == (2, 3, 4)
    assert tracked_frames(5, 2, "backward", (1, 4)) == (1, 2)
    assert tracked_frames(5, 2, "both", (1, 3)) == (1, 2, 3)
    frames = [FrameRef(0, ".", "a", datetime="2024-01-01T00:00:00"), FrameRef(1, "frames/t0001", "b",
              datetime="2024-01-03T12:00:00"), FrameRef(2, "frames/t0002", "c", datetime="2024-01-04T00:00:00")]
    assert frame_periods(frames, (1, 2)) == {1: ("2024-01-03T12:00:00", "2024-01-04T00:00:00"),
                                             2: ("2024-01-04T00:00:00", "2024-01-04T12:00:00")}
    undated = [FrameRef(0, ".", "a"), FrameRef(1, "frames/t0001", "b")]
    assert frame_periods(undated, (0, 1)) == {0: (None, None), 1: (None, None)}


# -- found by trying time series as a newcomer ---------------------------------------------------------------------

def _cli_track(series: Path, tmp_path: Path, *extra: object, timeout: float = 120) -> subprocess.CompletedProcess:
    environment = {**__import__("os").environ, settings.PYTHON_ENV_VAR: str(fake_python(tmp_path))}
    return subprocess.run(cli_command("track", series, "--frame", "0", "--box={},{},{},{}".format(
        *at(70, 130), *at(90, 110)), "--direction", "forward", "--frames", "0:1", *extra),
        capture_output=True, text=True, env=environment, timeout=timeout)


def _default_styles(output: Path) -> list:
    import sqlite3

    with sqlite3.connect(str(output)) as connection:
        return connection.execute("SELECT f_table_name FROM layer_styles WHERE useAsDefault").fetchall()


@pytest.mark.parametrize("second", [["--overwrite"], ["--layer", "other"]])
def test_cli_track_into_an_existing_geopackage_ends_with_one_default_temporal_style(series, tmp_path, second):
    """--overwrite replaces the layer; --layer adds another: the run ends, each layer has exactly one default
    (temporal) style, and no partial file is left."""
    output = tmp_path / "tracks.gpkg"
    assert _cli_track(series, tmp_path, "--output", output).returncode == 0
    result = _cli_track(series, tmp_path, "--output", output, *second)
    assert result.returncode == 0, result.stderr
    layer_name = second[-1] if second[0] == "--layer" else "tracks"
    assert sorted(_default_styles(output)) == sorted({("tracks",), (layer_name,)})
    layer = QgsVectorLayer(f"{output}|layername={layer_name}", "tracks", "ogr")
    assert sorted(by_key(layer)) == [(1, 0), (1, 1)]
    _, loaded = layer.loadDefaultStyle()
    assert loaded and layer.temporalProperties().isActive()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("tracks") or p.name.startswith(".")) \
        == ["tracks.gpkg"]


@pytest.mark.parametrize("signal_number", [2, 15])   # SIGINT (Ctrl-C), SIGTERM
def test_an_interrupted_cli_track_exits_130_in_one_line_and_leaves_no_partial_file(series, tmp_path, signal_number):
    import os
    import time

    output, marker = tmp_path / "out" / "tracks.gpkg", tmp_path / "holding"
    output.parent.mkdir()
    environment = {**os.environ, settings.PYTHON_ENV_VAR: str(fake_python(tmp_path)), HOLD_ENV: str(marker)}
    process = subprocess.Popen(cli_command("track", series, "--frame", "0", "--box={},{},{},{}".format(
        *at(70, 130), *at(90, 110)), "--direction", "forward", "--frames", "0:2", "--output", output),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    try:
        for _ in range(1200):   # the tracker holds after its first frame (a poll, not a timed assertion)
            if marker.exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), process.communicate()
        process.send_signal(signal_number)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr and "interrupted" in lines[0], stderr
    assert "nothing was written" in lines[0]
    assert sorted(p.name for p in output.parent.iterdir()) == []


def _prompts_file(prompts: Path, frame: int) -> Path:
    """A GeoPackage of one point prompt with fields oid = 1, fr = `frame`, lab = 1."""
    from osgeo import ogr, osr

    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(prompts))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    layer = dataset.CreateLayer("prompts", srs, ogr.wkbPoint)
    for name in ("oid", "fr", "lab"):
        layer.CreateField(ogr.FieldDefn(name, ogr.OFTInteger))
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(ogr.CreateGeometryFromWkt("POINT ({} {})".format(*at(*POINT_1))))
    for name, value in (("oid", 1), ("fr", frame), ("lab", 1)):
        feature[name] = value
    layer.CreateFeature(feature)
    feature = layer = dataset = None
    return prompts


@pytest.mark.parametrize("option", ["--id-field", "--frame-field", "--label-field"])
def test_cli_track_names_the_fields_of_a_prompts_file_when_one_is_missing(series, tmp_path, option):
    prompts = _prompts_file(tmp_path / "prompts.gpkg", 0)
    fields = {"--id-field": "oid", "--frame-field": "fr", "--label-field": "lab", option: "nosuch"}
    result = subprocess.run(cli_command("track", series, "--frame", "0", "--prompts", prompts,
                                        *[part for item in fields.items() for part in item],
                                        "--output", tmp_path / "out.gpkg"), capture_output=True, text=True,
                            timeout=300)
    assert_one_line_error(result, re.escape(f"prompts.gpkg has no field 'nosuch' (its fields: oid, fr, lab); give "
                                            f"{option} one of them"))
    assert not (tmp_path / "out.gpkg").exists()


@pytest.mark.parametrize("frame, frame_field, expected", [
    ("-1", None, r"--frame -1 is not a frame of the series \(frames 0 to 3\): a frame index is 0 or more"),
    ("0", "fr", r"the prompts are on frame 1 \(their frame field\) but --frame says 0; give --frame 1"),
])
def test_cli_track_words_a_wrong_frame_in_its_options(series, tmp_path, frame, frame_field, expected):
    prompts = _prompts_file(tmp_path / "prompts.gpkg", 1)
    result = subprocess.run(cli_command("track", series, f"--frame={frame}", "--prompts", prompts,
                                        *(["--frame-field", frame_field] if frame_field else []),
                                        "--output", tmp_path / "out.gpkg"), capture_output=True, text=True,
                            timeout=300)
    assert_one_line_error(result, expected)
    assert not (tmp_path / "out.gpkg").exists()


@pytest.mark.parametrize("extra, expected", [
    (["--object-id", "3"], r"--object-id applies to --point/--box only; a --prompts file's objects take their ids"),
    (["--object-id=-3"], r"--object-id -3 is not an object id; give a whole number 1 or more"),
])
def test_cli_track_refuses_an_object_id_it_would_not_use(series, tmp_path, extra, expected):
    prompts = ["--prompts", _prompts_file(tmp_path / "prompts.gpkg", 0)] if "3" in extra else \
        ["--point", "{},{}".format(*at(*POINT_1))]
    result = subprocess.run(cli_command("track", series, "--frame", "0", *prompts, *extra, "--output",
                                        tmp_path / "out.gpkg"), capture_output=True, text=True, timeout=300)
    assert_one_line_error(result, expected)
    assert not (tmp_path / "out.gpkg").exists()
