"""quicksam:encoderaster: metadata, input checks, the command line it builds, and the process runner.

End-to-end runs through the real CLI live with the CLI's tests; here the encoder process is a fake
script, so these tests need no torch and no model.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
from osgeo import gdal, osr
from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFolder,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBand,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsRasterLayer,
)

from quicksam.core.catalogue import MODELS
from quicksam.core.defaults import DEFAULT_MODEL
from quicksam.core.errors import Cancelled, QuickSamError
from quicksam.encoder import subprocess_runner
from quicksam.encoder.subprocess_runner import (
    encoder_environment,
    parse_event_line,
    run_encoder_process,
)
from quicksam.ui.algorithms.encode_algorithm import (
    DEVICES,
    MODEL_NAMES,
    EncoderEventReporter,
    build_encode_args,
)

ALGORITHM_ID = "quicksam:encoderaster"

# -- fixtures ---------------------------------------------------------------------------------------


def write_geotiff(path: Path, bands: int = 4, size: int = 64, epsg: int = 3857,
                  origin=(1000.0, 2000.0), pixel: float = 10.0) -> Path:
    """A small georeferenced GeoTIFF; pixel (0, 0) has its top-left corner at `origin`."""
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), size, size, bands, gdal.GDT_Byte)
    dataset.SetGeoTransform((origin[0], pixel, 0.0, origin[1], 0.0, -pixel))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    dataset.SetProjection(srs.ExportToWkt())
    for band in range(1, bands + 1):
        dataset.GetRasterBand(band).Fill(band * 40)
    dataset.FlushCache()
    dataset = None
    return path


@pytest.fixture
def raster_path(tmp_path) -> Path:
    return write_geotiff(tmp_path / "four_bands.tif")


@pytest.fixture
def algorithm(qgis_processing, plugin):
    """A fresh instance from the registry, as Processing creates it for each run."""
    return QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)


def request_args(algorithm, parameters: dict) -> list:
    """The encoder arguments the algorithm builds for `parameters` (nothing is run)."""
    context = QgsProcessingContext()
    ok, message = algorithm.checkParameterValues(parameters, context)
    assert ok, message
    return algorithm.encoder_job(parameters, context).args


# -- metadata -----------------------------------------------------------------------------------------


def test_identity(algorithm):
    assert algorithm.id() == ALGORITHM_ID
    assert algorithm.name() == "encoderaster"
    assert algorithm.displayName() == "Encode raster for SAM"
    assert algorithm.group() == "Encoding"
    assert algorithm.groupId() == "encoding"
    assert "feature store" in algorithm.shortHelpString()
    assert not algorithm.icon().isNull()


def test_parameters_and_defaults(algorithm):
    names = [p.name() for p in algorithm.parameterDefinitions()]
    assert names == ["INPUT", "RED_BAND", "GREEN_BAND", "BLUE_BAND", "BANDS", "EXTENT", "FRAMES", "FRAMES_FROM_BANDS",
                     "FRAME_DATES", "DATE_PATTERN", "MODEL", "CHECKPOINT", "RANDOM_WEIGHTS", "RESOLUTION", "LEVELS",
                     "OVERLAP", "BATCH_SIZE", "DEVICE", "TILE_SIZE", "FEATURE_DTYPE", "WORKERS",
                     "SCHEDULER", "OUTPUT"]
    param = algorithm.parameterDefinition

    for name in ("RED_BAND", "GREEN_BAND", "BLUE_BAND"):
        assert isinstance(param(name), QgsProcessingParameterBand)
        assert param(name).parentLayerParameterName() == "INPUT"
        assert not param(name).allowMultiple()
    bands = param("BANDS")  # hidden: the list of QuickSAM 0.1 scripts
    assert isinstance(bands, QgsProcessingParameterBand)
    assert bands.parentLayerParameterName() == "INPUT"
    assert bands.allowMultiple()
    assert bands.flags() & QgsProcessingParameterDefinition.Flag.FlagHidden

    model = param("MODEL")
    assert isinstance(model, QgsProcessingParameterEnum)
    assert model.options() == list(MODELS)
    assert model.defaultValue() == list(MODELS).index(DEFAULT_MODEL)

    overlap = param("OVERLAP")
    assert isinstance(overlap, QgsProcessingParameterNumber)
    # not given = a quarter of the tile size, as in the CLI (core.defaults.default_overlap)
    assert (overlap.defaultValue(), overlap.minimum(), overlap.maximum()) == (None, 0, 1023)
    assert overlap.dataType() == QgsProcessingParameterNumber.Type.Integer
    assert (param("BATCH_SIZE").defaultValue(), param("BATCH_SIZE").minimum()) == (1, 1)
    assert param("TILE_SIZE").defaultValue() == 0
    assert param("RANDOM_WEIGHTS").defaultValue() is False
    assert param("CHECKPOINT").defaultValue() in ("", None)
    assert param("DEVICE").options() == ["auto", "cpu", "cuda", "mps"]
    assert param("DEVICE").defaultValue() == 0
    assert isinstance(param("OUTPUT"), QgsProcessingParameterFolderDestination)

    def is_set(name: str, flag) -> bool:
        return bool(param(name).flags() & flag)

    optional = QgsProcessingParameterDefinition.Flag.FlagOptional
    advanced = QgsProcessingParameterDefinition.Flag.FlagAdvanced
    assert {n for n in names if is_set(n, optional)} == {"RED_BAND", "GREEN_BAND", "BLUE_BAND", "BANDS", "EXTENT",
                                                         "CHECKPOINT", "OVERLAP", "OUTPUT", "RESOLUTION",
                                                         "LEVELS", "FRAMES", "FRAME_DATES", "DATE_PATTERN",
                                                         "SCHEDULER"}
    assert {n for n in names if is_set(n, advanced)} == {"RANDOM_WEIGHTS", "BATCH_SIZE", "DEVICE",
                                                         "TILE_SIZE", "FRAME_DATES", "DATE_PATTERN",
                                                         "WORKERS", "SCHEDULER", "FEATURE_DTYPE"}
    assert (param("WORKERS").defaultValue(), param("WORKERS").minimum()) == (0, 0)
    assert all(param(n).help() for n in names), "every parameter has help"


def test_outputs(algorithm):
    outputs = {o.name(): o for o in algorithm.outputDefinitions()}
    assert set(outputs) == {"OUTPUT", "TILE_INDEX"}
    assert isinstance(outputs["OUTPUT"], QgsProcessingOutputFolder)
    assert isinstance(outputs["TILE_INDEX"], QgsProcessingOutputVectorLayer)


# -- bad input through processing.run -------------------------------------------------------------------


def run_expecting_error(parameters: dict) -> str:
    import processing

    with pytest.raises(QgsProcessingException) as raised:
        processing.run(ALGORITHM_ID, parameters, feedback=QgsProcessingFeedback())
    return str(raised.value)


def test_missing_input_is_refused(algorithm, tmp_path):
    message = run_expecting_error({"OUTPUT": str(tmp_path / "store")})
    assert "INPUT" in message


def test_world_wide_web_layer_without_extent_asks_for_one(algorithm, tmp_path):
    """An XYZ layer is encoded (tests/test_online_layers.py), but its extent is the whole world."""
    layer = QgsRasterLayer("type=xyz&url=http://localhost/{z}/{x}/{y}.png&zmin=0&zmax=19",
                           "tiles", "wms")
    assert layer.isValid()
    message = run_expecting_error({"INPUT": layer, "OUTPUT": str(tmp_path / "store")})
    assert "'tiles' is a web map covering a very large area: choose the Extent to encode" in message


def test_web_layer_with_credentials_is_refused_with_save_hint(algorithm, tmp_path):
    layer = QgsRasterLayer("type=xyz&url=http://localhost/{z}/{x}/{y}.png&zmin=0&zmax=19&username=me&password=pw",
                           "tiles", "wms")
    assert layer.isValid()
    message = run_expecting_error({"INPUT": layer, "OUTPUT": str(tmp_path / "store"),
                                   "EXTENT": "0,1000,0,1000 [EPSG:3857]"})
    assert "user name, a password or a QGIS authentication configuration" in message
    assert "Save As" in message


def test_in_memory_raster_is_refused_with_save_hint(algorithm, tmp_path):
    memory_path = "/vsimem/quicksam_test_memory.tif"
    write_geotiff(Path(memory_path))
    try:
        layer = QgsRasterLayer(memory_path, "memory raster", "gdal")
        assert layer.isValid()
        message = run_expecting_error({"INPUT": layer, "OUTPUT": str(tmp_path / "store")})
    finally:
        gdal.Unlink(memory_path)
    assert "only in memory" in message
    assert "Save it to a file first" in message


@pytest.mark.parametrize(("extra", "expected"), [
    ({"BANDS": [1, 2, 3, 4]}, "at most 3 bands"),
    ({"BANDS": [5]}, "Band 5 does not exist"),
    ({"CHECKPOINT": "sam2.1_hiera_tiny", "RANDOM_WEIGHTS": True}, "not both"),
    ({"OVERLAP": 256, "TILE_SIZE": 256}, "must be smaller than the tile size"),
])
def test_inconsistent_parameters_are_refused(algorithm, raster_path, tmp_path, extra, expected):
    parameters = {"INPUT": str(raster_path), "OUTPUT": str(tmp_path / "store"), **extra}
    assert expected in run_expecting_error(parameters)


# -- the command line -----------------------------------------------------------------------------------


def test_build_encode_args_flags():
    args = build_encode_args(
        "/data/ortho.tif", "/stores/ortho", model="sam2.1_hiera_s", bands=[3, 2, 1],
        extent=(-10.5, 20.0, 30.25, 40.0), checkpoint="/weights/custom.pt", overlap=128,
        batch_size=2, device="cpu", tile_size=256)
    assert args[:3] == ["encode", "/data/ortho.tif", "/stores/ortho"]
    assert set(args[3:]) == {
        "--model=sam2.1_hiera_s", "--checkpoint=/weights/custom.pt", "--bands=3,2,1",
        "--overlap=128", "--extent=-10.5,20.0,30.25,40.0", "--batch-size=2", "--device=cpu",
        "--tile-size=256"}


def test_build_encode_args_defaults_and_random_weights():
    args = build_encode_args("r.tif", "store", random_weights=True)
    assert args == ["encode", "r.tif", "store", f"--model={DEFAULT_MODEL}", "--random-weights",
                    "--overlap=256", "--batch-size=1", "--device=auto"]
    assert not any(a.startswith(("--bands", "--extent", "--checkpoint", "--tile-size"))
                   for a in args)


@pytest.mark.parametrize(("tile_size", "overlap"), [(0, 256), (256, 64), (512, 128)])
def test_overlap_not_given_is_a_quarter_of_the_tile_as_in_the_cli(algorithm, raster_path, tmp_path, tile_size,
                                                                   overlap):
    """The CLI's rule (core.defaults.default_overlap); a fixed 256 px refused 256 px tiles."""
    for not_given in ({}, {"OVERLAP": None}):
        args = request_args(algorithm, {"INPUT": str(raster_path), "OUTPUT": str(tmp_path / "store"),
                                        "RANDOM_WEIGHTS": True, "TILE_SIZE": tile_size, **not_given})
        assert f"--overlap={overlap}" in args


def test_algorithm_builds_command_from_parameters(algorithm, raster_path, tmp_path):
    store = str(tmp_path / "store")
    args = request_args(algorithm, {
        "INPUT": str(raster_path), "BANDS": [4, 2, 1], "MODEL": MODEL_NAMES.index("sam_vit_b"),
        "RANDOM_WEIGHTS": True, "OVERLAP": 64, "BATCH_SIZE": 3,
        "DEVICE": DEVICES.index("cpu"), "TILE_SIZE": 256, "OUTPUT": store})
    assert args[:3] == ["encode", str(raster_path), store]
    for flag in ("--model=sam_vit_b", "--random-weights", "--bands=4,2,1", "--overlap=64",
                 "--batch-size=3", "--device=cpu", "--tile-size=256"):
        assert flag in args
    assert not any(a.startswith(("--extent", "--checkpoint")) for a in args)


def test_extent_is_transformed_to_the_raster_crs(algorithm, raster_path, tmp_path):
    # The raster is in EPSG:3857; the extent is given in EPSG:4326 around (0.01 deg, 0.02 deg).
    args = request_args(algorithm, {
        "INPUT": str(raster_path), "EXTENT": "0.01,0.011,0.018,0.019 [EPSG:4326]",
        "CHECKPOINT": "sam2.1_hiera_small", "OUTPUT": str(tmp_path / "store")})
    assert "--checkpoint=sam2.1_hiera_small" in args
    [extent] = [a.split("=", 1)[1] for a in args if a.startswith("--extent=")]
    xmin, ymin, xmax, ymax = (float(v) for v in extent.split(","))
    # Web Mercator: x = R * lon (rad); y ~ R * lat (rad) this close to the equator.
    metres_per_degree = 6378137.0 * 3.141592653589793 / 180
    assert xmin == pytest.approx(0.010 * metres_per_degree, abs=0.01)
    assert xmax == pytest.approx(0.011 * metres_per_degree, abs=0.01)
    assert ymin == pytest.approx(0.018 * metres_per_degree, abs=0.01)
    assert ymax == pytest.approx(0.019 * metres_per_degree, abs=0.01)


class RecordingFeedback(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.messages = []

    def pushInfo(self, info):
        self.messages.append(("info", info))

    def pushWarning(self, warning):
        self.messages.append(("warning", warning))

    def pushDebugInfo(self, info):
        self.messages.append(("debug", info))


def test_encoder_events_reach_the_feedback(qgis_app):
    feedback = RecordingFeedback()
    reporter = EncoderEventReporter(feedback, "/s")
    reporter({"event": "start", "tiles": 4, "todo": 3, "store": "/s"})
    reporter({"event": "progress", "done": 2, "total": 4, "percent": 50.0, "tile": "r0000c0001",
              "status": "done"})
    reporter({"event": "log", "message": "reading bands 1,2,3"})
    reporter({"event": "log", "level": "warning", "message": "random weights"})
    reporter({"event": "something-new"})
    assert feedback.progress() == pytest.approx(50.0)
    assert ("info", "reading bands 1,2,3") in feedback.messages
    assert ("warning", "random weights") in feedback.messages
    assert reporter.finished is None
    reporter({"event": "finished", "store": "/s", "tile_index": "/s/tile_index.gpkg",
              "summary": {"tiles": 4}})
    assert reporter.finished["tile_index"] == "/s/tile_index.gpkg"


# -- the process runner (a fake CLI script stands in for quicksam.cli) -------------------------------

FAKE_CLI = textwrap.dedent("""
    import json, os, signal, sys, time

    def emit(**event):
        print(json.dumps(event), flush=True)

    mode = sys.argv[1]
    if mode == "ok":
        emit(event="start", tiles=2, todo=2, store="/s")
        emit(event="log", message="argv " + json.dumps(sys.argv[1:]))
        print("plain text from a library", flush=True)
        print("a warning on stderr", file=sys.stderr, flush=True)
        emit(event="progress", done=1, total=2, percent=50.0, tile="r0000c0000", status="done")
        emit(event="progress", done=2, total=2, percent=100.0, tile="r0000c0001", status="nodata")
        emit(event="finished", store="/s", tile_index="/s/tile_index.gpkg", summary={"done": 1})
    elif mode == "fail":
        print("Traceback noise that is not the message", file=sys.stderr)
        print("quicksam: error: the raster has no CRS; assign one and encode again",
              file=sys.stderr)
        print("", file=sys.stderr)
        sys.exit(1)
    elif mode == "interrupted":
        sys.exit(130)
    elif mode in ("sleep", "stubborn"):
        if mode == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        emit(event="start", tiles=100, todo=100, store="/s", pid=os.getpid())
        time.sleep(60)
""")


@pytest.fixture
def fake_cli(tmp_path, monkeypatch) -> str:
    """The module name of a fake encoder CLI importable by the child process."""
    (tmp_path / "fake_quicksam_cli.py").write_text(FAKE_CLI)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return "fake_quicksam_cli"


def collect(mode: str, module: str, **kwargs):
    events = []
    code = run_encoder_process([mode], sys.executable, events.append, lambda: False,
                               poll_interval=0.02, module=module, **kwargs)
    return code, events


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_runner_streams_events_in_order(fake_cli):
    code, events = collect("ok", fake_cli)
    assert code == 0
    stdout_events = [e for e in events if e["event"] != "stderr"]
    assert [e["event"] for e in stdout_events] == ["start", "log", "log", "progress", "progress",
                                                   "finished"]
    assert json.loads(stdout_events[1]["message"][len("argv "):]) == ["ok", "--progress-json"]
    assert stdout_events[2] == {"event": "log", "message": "plain text from a library"}
    assert stdout_events[4]["status"] == "nodata"
    assert stdout_events[-1]["tile_index"] == "/s/tile_index.gpkg"
    assert {"event": "stderr", "message": "a warning on stderr"} in events


def test_runner_passes_the_error_line_through(fake_cli):
    with pytest.raises(QuickSamError) as raised:
        collect("fail", fake_cli)
    assert str(raised.value) == ("quicksam: error: the raster has no CRS; assign one and encode "
                                 "again")
    assert not isinstance(raised.value, Cancelled)


def test_runner_exit_130_is_cancelled(fake_cli):
    with pytest.raises(Cancelled):
        collect("interrupted", fake_cli)


@pytest.mark.parametrize("mode", ["sleep", "stubborn"])
def test_runner_cancel_stops_the_process(fake_cli, mode):
    started = []

    def on_event(event):
        if event["event"] == "start":
            started.append(event["pid"])

    begin = time.monotonic()
    with pytest.raises(Cancelled):
        run_encoder_process([mode], sys.executable, on_event, lambda: bool(started),
                            poll_interval=0.02, module=fake_cli, terminate_grace=0.5)
    assert time.monotonic() - begin < 20
    [pid] = started
    assert not process_alive(pid)


def test_runner_missing_interpreter_says_how_to_fix(tmp_path):
    with pytest.raises(QuickSamError) as raised:
        run_encoder_process(["encode"], str(tmp_path / "no" / "python"), print, lambda: False)
    message = str(raised.value)
    assert "QuickSAM > Set up…" in message and "quicksam/python_executable" in message


def test_runner_unimportable_package_says_how_to_fix():
    with pytest.raises(QuickSamError) as raised:
        run_encoder_process(["encode"], sys.executable, lambda e: None, lambda: False,
                            module="quicksam_not_installed_anywhere.cli")
    message = str(raised.value)
    assert "cannot import QuickSAM" in message
    assert "QuickSAM > Set up…" in message and "quicksam/python_executable" in message


def test_runner_no_python_at_all():
    with pytest.raises(QuickSamError, match="no Python interpreter"):
        run_encoder_process(["encode"], "", lambda e: None, lambda: False)


def test_environment_for_installed_plugin(tmp_path):
    plugin_dir = tmp_path / "plugins" / "quicksam"
    env = encoder_environment({"PYTHONHOME": "/qgis/apps/Python39", "PYTHONPATH": "/qgis/python"},
                              plugin_dir)
    assert "PYTHONHOME" not in env
    assert env["PYTHONPATH"] == os.pathsep.join([str(tmp_path / "plugins"), "/qgis/python"])


def test_environment_for_development_checkout(tmp_path):
    env = encoder_environment({"PATH": "/usr/bin"}, tmp_path / "checkout")
    assert "PYTHONPATH" not in env
    assert env["PATH"] == "/usr/bin"


def test_parse_event_line():
    assert parse_event_line('{"event": "progress", "percent": 12.5}') == {"event": "progress",
                                                                         "percent": 12.5}
    assert parse_event_line("not json\n") == {"event": "log", "message": "not json"}
    assert parse_event_line("[1, 2]") == {"event": "log", "message": "[1, 2]"}
    assert parse_event_line("   \n") is None


def test_runner_module_default_is_the_cli():
    assert subprocess_runner.encoder_command(["encode"], "py") == [
        "py", "-m", "quicksam.cli", "encode", "--progress-json"]
