"""quicksam:encoderaster end to end: processing.run, batch runs, the Model Builder and qgis_process run
the real algorithm, which runs the real encoder CLI (`python -m quicksam.cli encode`) in a separate
process. No fakes.

Every encode uses seeded random tiny SAM2.1 weights, 256 px tiles and a small overlap on rasters of
at most 600 px. Synthetic rasters come from synthetic.py: EPSG:32633, 10 m pixels, top-left corner at
(500000, 4200000) unless told otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingMultiStepFeedback,
    QgsProcessingParameterRasterLayer,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from synthetic import (
    CRS,
    ORIGIN,
    PIXEL_SIZE,
    default_transform,
    file_states,
    gradient,
    landsat_path,
    run_cli,
    write_raster,
)

from quicksam.core.defaults import DEFAULT_MODEL
from quicksam.core.store import FeatureStore
from quicksam.core.tiling import PixelWindow, TileGrid

ALGORITHM_ID = "quicksam:encoderaster"
TILE_SIZE = 256
OVERLAP = 32
#: The parameters that keep every encode small and offline.
SMALL_ENCODE: Dict[str, Any] = {"RANDOM_WEIGHTS": True, "TILE_SIZE": TILE_SIZE, "OVERLAP": OVERLAP}
REPO = Path(__file__).resolve().parent.parent
L7_CRS = "EPSG:31985"
QGIS_PROCESS_BIN = Path("/usr/bin/qgis_process.bin")
CLI_ERROR_PREFIX = "quicksam: error: "
CANCELLED_HINT = "the tiles encoded so far are kept"
PYTEST_QGIS_SETTINGS_VARIABLES = ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_OPTIONS_PATH")


# -- helpers ------------------------------------------------------------------------------------------


class RecordingFeedback(QgsProcessingFeedback):
    """Records every progress value (from the progressChanged signal that setProgress emits) and the
    info messages. With `cancel_at_first_progress`, it cancels itself when the first tile is reported,
    as a user pressing Cancel while the encoder runs; `on_first_progress` is called just before."""

    def __init__(self, cancel_at_first_progress: bool = False,
                 on_first_progress: Optional[Callable[[], None]] = None):
        super().__init__()
        self.progress_values: List[float] = []
        self.infos: List[str] = []
        self.cancel_at_first_progress = cancel_at_first_progress
        self.on_first_progress = on_first_progress
        self.progressChanged.connect(self._record_progress)

    def _record_progress(self, value: float) -> None:
        first = not any(v > 0 for v in self.progress_values) and value > 0
        self.progress_values.append(value)
        if first and self.on_first_progress is not None:
            self.on_first_progress()
        if first and self.cancel_at_first_progress:
            self.cancel()

    def pushInfo(self, info: str) -> None:
        self.infos.append(info)
        super().pushInfo(info)


@pytest.fixture
def encoder_provider(qgis_processing, plugin):
    """Processing initialised and the real plugin loaded, so that quicksam:encoderaster is registered."""
    assert QgsApplication.processingRegistry().algorithmById(ALGORITHM_ID) is not None
    return plugin


def project_context() -> QgsProcessingContext:
    """A context like the one the Processing dialog passes: with the current project."""
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    return context


def run_encode(parameters: Dict[str, Any], feedback: Optional[QgsProcessingFeedback] = None,
               algorithm: Any = ALGORITHM_ID) -> Dict[str, Any]:
    """processing.run of the algorithm (or of an algorithm object) with SMALL_ENCODE under `parameters`."""
    import processing

    return processing.run(algorithm, {**SMALL_ENCODE, **parameters}, context=project_context(),
                          feedback=feedback or RecordingFeedback())


def read_manifest(store: Path) -> dict:
    return json.loads((Path(store) / "manifest.json").read_text())


def store_summary(store: Path) -> dict:
    return FeatureStore.open(Path(store)).summary()


def map_rect(window: PixelWindow, origin=ORIGIN, pixel: float = PIXEL_SIZE) -> QgsRectangle:
    """Map rectangle (the raster's CRS) of a pixel window under a north-up geotransform."""
    return QgsRectangle(origin[0] + window.col_off * pixel, origin[1] - window.row_end * pixel,
                        origin[0] + window.col_end * pixel, origin[1] - window.row_off * pixel)


def corners(rect: QgsRectangle) -> tuple:
    return rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()


def _root_of(pid: str) -> tuple:
    """(device, inode) of a process's root folder: a chroot's differs (readlink says "/" for both inside one)."""
    root = os.stat(f"/proc/{pid}/root")
    return root.st_dev, root.st_ino


def encoder_processes(store: Path) -> List[int]:
    """Pids of running `python -m quicksam.cli ...` processes with `store` on their command line, under this
    process's root (a chroot's test run on the same machine may use the same temporary path)."""
    pids, own_root = [], _root_of("self")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if _root_of(entry.name) != own_root:
                continue
        except OSError:  # the process ended while we looked
            continue
        if "quicksam.cli" in args and str(store) in args:
            pids.append(int(entry.name))
    return pids


def cli_advice(raster: Path, scratch: Path) -> str:
    """The one-line advice the CLI itself gives for `raster` (its error line without the prefix)."""
    result = run_cli("encode", raster, scratch, "--random-weights", f"--tile-size={TILE_SIZE}",
                     f"--overlap={OVERLAP}")
    assert result.returncode == 1, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith(CLI_ERROR_PREFIX)]
    return line[len(CLI_ERROR_PREFIX):]


# -- 1. processing.run on a synthetic raster ----------------------------------------------------------


def test_encode_returns_store_and_tile_index(encoder_provider, tmp_path):
    raster = write_raster(tmp_path / "rgb.tif", gradient(400, 300))
    store = tmp_path / "store"
    feedback = RecordingFeedback()

    results = run_encode({"INPUT": str(raster), "OUTPUT": str(store)}, feedback)

    assert set(results) == {"OUTPUT", "TILE_INDEX"}
    assert results["OUTPUT"] == str(store)
    assert Path(results["TILE_INDEX"]) == store / "tile_index.gpkg"
    manifest = read_manifest(store)
    assert manifest["model"]["random_weights"] is True
    assert manifest["model"]["name"] == DEFAULT_MODEL
    assert manifest["model"]["image_size"] == TILE_SIZE
    assert QgsCoordinateReferenceSystem.fromWkt(manifest["raster"]["crs_wkt"]).authid() == CRS
    expected = TileGrid.build(400, 300, TILE_SIZE, OVERLAP)
    assert len(expected) > 1
    summary = store_summary(store)
    assert summary["complete"] and summary["tiles_done"] == len(expected)

    raster_layer = QgsRasterLayer(str(raster), "rgb")
    tiles = QgsVectorLayer(results["TILE_INDEX"], "tiles", "ogr")
    assert tiles.isValid()
    assert tiles.featureCount() == len(expected)
    assert tiles.crs().authid() == raster_layer.crs().authid() == CRS
    footprints = {f["tile_id"]: (f["status"], f.geometry()) for f in tiles.getFeatures()}
    assert set(footprints) == {tile.tile_id for tile in expected}
    extent = raster_layer.extent()
    for tile in expected:
        status, geometry = footprints[tile.tile_id]
        assert status == "done"
        assert extent.buffered(1e-6).contains(geometry.boundingBox()), tile.tile_id
        assert corners(geometry.boundingBox()) == pytest.approx(corners(map_rect(tile.window)))
    # Together the footprints cover the whole raster.
    union = QgsGeometry.unaryUnion([geometry for _, geometry in footprints.values()])
    assert union.area() == pytest.approx(extent.area())

    assert feedback.progress_values, "the feedback received no progress"
    assert feedback.progress_values[-1] == 100
    assert feedback.progress_values == sorted(feedback.progress_values)
    # One step per tile, as the encoder reports them (percent rounded to 2 decimals).
    assert {v for v in feedback.progress_values if v > 0} == {
        round(100 * done / len(expected), 2) for done in range(1, len(expected) + 1)}


def test_default_overlap_with_small_tiles_runs_and_matches_the_cli(encoder_provider, tmp_path):
    """Without OVERLAP the overlap is a quarter of the tile size, as the CLI's default: 256 px tiles
    encode with 64 px overlap (a fixed 256 px default refused its own 256 px tiles)."""
    raster = write_raster(tmp_path / "rgb.tif", gradient(300, 260))
    store = tmp_path / "store"
    parameters = {"INPUT": str(raster), "OUTPUT": str(store), "RANDOM_WEIGHTS": True, "TILE_SIZE": TILE_SIZE}

    import processing

    processing.run(ALGORITHM_ID, parameters, context=project_context(), feedback=RecordingFeedback())

    assert read_manifest(store)["grid"]["overlap"] == TILE_SIZE // 4
    by_cli = tmp_path / "by_cli"
    result = run_cli("encode", raster, by_cli, "--random-weights", f"--tile-size={TILE_SIZE}")
    assert result.returncode == 0, result.stderr
    assert read_manifest(by_cli)["grid"] == read_manifest(store)["grid"]


def test_loaded_raster_layer_is_accepted(encoder_provider, tmp_path):
    raster = write_raster(tmp_path / "small.tif", gradient(240, 200))
    layer = QgsRasterLayer(str(raster), "small")
    assert layer.isValid()
    store = tmp_path / "store"

    results = run_encode({"INPUT": layer, "OUTPUT": str(store)})

    assert results["OUTPUT"] == str(store)
    summary = store_summary(store)
    assert summary["complete"] and summary["tiles"] == 1
    assert read_manifest(store)["raster"]["path"] == str(raster.resolve())


# -- 2. BANDS and an EXTENT in another CRS -----------------------------------------------------------------


def test_bands_and_extent_in_another_crs_reach_the_store(encoder_provider, tmp_path):
    raster = write_raster(tmp_path / "four_bands.tif", gradient(400, 500, bands=4))
    layer = QgsRasterLayer(str(raster), "four bands")
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    # An area of about 270 x 290 px inside the raster, given in degrees. QGIS 3.22 extent strings are
    # "xmin,xmax,ymin,ymax [CRS]" (x = longitude for EPSG:4326).
    wanted = QgsRectangle(ORIGIN[0] + 60.5 * PIXEL_SIZE, ORIGIN[1] - 410.75 * PIXEL_SIZE,
                          ORIGIN[0] + 330.5 * PIXEL_SIZE, ORIGIN[1] - 120.25 * PIXEL_SIZE)
    degrees = QgsCoordinateTransform(layer.crs(), wgs84, QgsProject.instance()).transformBoundingBox(wanted)
    extent_text = (f"{degrees.xMinimum()!r},{degrees.xMaximum()!r},"
                   f"{degrees.yMinimum()!r},{degrees.yMaximum()!r} [EPSG:4326]")
    in_raster_crs = QgsCoordinateTransform(wgs84, layer.crs(), QgsProject.instance()).transformBoundingBox(degrees)
    store = tmp_path / "store"

    run_encode({"INPUT": str(raster), "BANDS": [3, 2, 1], "EXTENT": extent_text, "OUTPUT": str(store)})

    manifest = read_manifest(store)
    assert manifest["preprocessing"]["bands"] == [3, 2, 1]
    window = PixelWindow(**manifest["grid"]["window"])
    assert (window.width, window.height) != (400, 500), "the extent was ignored"
    grid_area = map_rect(window)
    # The window is the extent rounded outwards to whole pixels.
    assert in_raster_crs.buffered(PIXEL_SIZE).contains(grid_area)
    assert grid_area.contains(in_raster_crs.intersect(layer.extent()))
    assert store_summary(store)["complete"]


@pytest.mark.parametrize("text", ["3;2;1", "3,2,1", "3 2 1"])
def test_bands_given_as_text(encoder_provider, tmp_path, text):
    """qgis_process and hand-written calls pass BANDS as text; QGIS itself only splits on ';'."""
    raster = write_raster(tmp_path / "four_bands.tif", gradient(64, 64, bands=4))
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
    parameters = {"INPUT": str(raster), "BANDS": text, "OUTPUT": str(tmp_path / "store"), **SMALL_ENCODE}
    context = project_context()
    ok, message = algorithm.checkParameterValues(parameters, context)
    assert ok, message
    assert "--bands=3,2,1" in algorithm.encoder_job(parameters, context).args


def test_bands_that_are_not_numbers_are_refused(encoder_provider, tmp_path):
    raster = write_raster(tmp_path / "four_bands.tif", gradient(64, 64, bands=4))
    with pytest.raises(QgsProcessingException, match="BANDS must be band numbers"):
        run_encode({"INPUT": str(raster), "BANDS": "3;red", "OUTPUT": str(tmp_path / "store")})
    assert not (tmp_path / "store").exists()


# -- 3. batch runs and the Model Builder ---------------------------------------------------------------


def test_batch_runs_one_algorithm_on_two_inputs(encoder_provider, tmp_path):
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
    assert not algorithm.flags() & QgsProcessingAlgorithm.Flag.FlagNoThreading
    assert algorithm.flags() & QgsProcessingAlgorithm.Flag.FlagSupportsBatch
    rasters = [
        write_raster(tmp_path / "a.tif", gradient(240, 200)),
        write_raster(tmp_path / "b.tif", gradient(200, 230, bands=4),
                     transform=default_transform(origin=(600000.0, 4100000.0))),
    ]
    # As the batch dialog does: the same algorithm object, a new context per row, one feedback whose
    # progress spans the rows.
    feedback = RecordingFeedback()
    rows = QgsProcessingMultiStepFeedback(len(rasters), feedback)
    stores = []
    for row, raster in enumerate(rasters):
        rows.setCurrentStep(row)
        results = run_encode({"INPUT": str(raster), "OUTPUT": str(tmp_path / f"store_{row}")}, rows,
                             algorithm=algorithm)
        stores.append(Path(results["OUTPUT"]))

    assert stores == [tmp_path / "store_0", tmp_path / "store_1"]
    for raster, store in zip(rasters, stores):
        assert store_summary(store)["complete"]
        assert read_manifest(store)["raster"]["path"] == str(raster.resolve())
    geotransforms = [read_manifest(store)["raster"]["geotransform"] for store in stores]
    assert geotransforms[0][0] == pytest.approx(500000.0) and geotransforms[1][0] == pytest.approx(600000.0)
    # One tile per row: each row's 100 % is half of the batch.
    assert feedback.progress_values == [50, 100]


def encode_model() -> QgsProcessingModelAlgorithm:
    """A Model Builder model: one raster input -> quicksam:encoderaster -> the feature store output."""
    model = QgsProcessingModelAlgorithm("Encode for SAM", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("raster", "Raster"),
                            QgsProcessingModelParameter("raster"))
    child = QgsProcessingModelChildAlgorithm(ALGORITHM_ID)
    child.setChildId("encode")
    child.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("raster")])
    for name, value in SMALL_ENCODE.items():
        child.addParameterSources(name, [QgsProcessingModelChildParameterSource.fromStaticValue(value)])
    output = QgsProcessingModelOutput("store", "Feature store")
    output.setChildId("encode")
    output.setChildOutputName("OUTPUT")
    child.setModelOutputs({"store": output})
    model.addChildAlgorithm(child)
    return model


def test_model_builder_model_runs_the_algorithm(encoder_provider, tmp_path):
    import processing

    raster = write_raster(tmp_path / "small.tif", gradient(240, 200))
    store = tmp_path / "store"
    model = encode_model()
    assert model.childAlgorithm("encode").algorithm() is not None
    names = [p.name() for p in model.parameterDefinitions()]
    # the model's output parameter is named by QGIS: "encode:store" (child:output) up to QGIS 3.3x, from the
    # output's description ("feature_store") in QGIS 3.40; users see the description either way
    assert len(names) == 2 and names[0] == "raster" and names[1] in ("encode:store", "feature_store")
    store_parameter = names[1]

    results = processing.run(model, {"raster": str(raster), store_parameter: str(store)},
                             context=project_context(), feedback=RecordingFeedback())

    assert results[store_parameter] == str(store)
    summary = store_summary(store)
    assert summary["complete"] and summary["tiles"] == 1 and summary["random_weights"]


# -- 4. resume ---------------------------------------------------------------------------------------------


def test_rerun_resumes_and_keeps_every_tile(encoder_provider, tmp_path):
    raster = write_raster(tmp_path / "rgb.tif", gradient(400, 300))
    store = tmp_path / "store"
    parameters = {"INPUT": str(raster), "OUTPUT": str(store)}
    run_encode(parameters)
    tiles_before = file_states(store / "tiles")
    log_before = (store / "tiles.jsonl").read_bytes()
    total = len(TileGrid.build(400, 300, TILE_SIZE, OVERLAP))
    assert len(tiles_before) == total > 1

    feedback = RecordingFeedback()
    results = run_encode(parameters, feedback)

    assert results["OUTPUT"] == str(store)
    assert file_states(store / "tiles") == tiles_before
    assert (store / "tiles.jsonl").read_bytes() == log_before
    assert any(f"{total} tiles, 0 to encode" in info for info in feedback.infos), feedback.infos
    [line] = [info for info in feedback.infos if info.startswith("Feature store ")]
    # a sentence, not the JSON summary (that is debug information now)
    assert re.fullmatch(rf"Feature store {re.escape(str(store))}: {total} of {total} tiles encoded \(0 all nodata\), "
                        r"model [\w.]+, bands \d+(, \d+)*, \d+ MB\.", line), line
    assert not any(info.lstrip().startswith(("{", "Summary: {")) for info in feedback.infos)
    assert feedback.progress_values == [100]


# -- 5. cancel -----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to list processes")
def test_cancel_stops_the_encoder_keeps_tiles_and_rerun_completes(encoder_provider, tmp_path):
    raster = write_raster(tmp_path / "large.tif", gradient(600, 600))
    store = tmp_path / "store"
    parameters = {"INPUT": str(raster), "OUTPUT": str(store), "OVERLAP": 64}
    total = len(TileGrid.build(600, 600, TILE_SIZE, 64))
    assert total >= 4, "too few tiles to cancel in the middle"
    seen_running: List[int] = []
    feedback = RecordingFeedback(cancel_at_first_progress=True,
                                 on_first_progress=lambda: seen_running.extend(encoder_processes(store)))

    with pytest.raises(QgsProcessingException) as raised:
        run_encode(parameters, feedback)

    message = str(raised.value)
    assert CANCELLED_HINT in message and str(store) in message
    assert seen_running, "the encoder process was not found while it ran"
    assert encoder_processes(store) == [], "the encoder process outlived the cancel"
    partial = store_summary(store)
    assert 1 <= partial["tiles_done"] < total, partial
    kept = {name: state for name, state in file_states(store / "tiles").items() if name.endswith(".npy")}
    assert len(kept) == partial["tiles_done"]

    results = run_encode(parameters)

    assert results["OUTPUT"] == str(store)
    summary = store_summary(store)
    assert summary["complete"] and summary["tiles_done"] == total
    after = file_states(store / "tiles")
    assert {name: after[name] for name in kept} == kept, "finished tiles were encoded again"


# -- 6. errors pass through ----------------------------------------------------------------------------


def test_raster_without_crs_fails_with_the_cli_advice(encoder_provider, tmp_path):
    raster = write_raster(tmp_path / "no_crs.tif", gradient(200, 200), crs=None)
    advice = cli_advice(raster, tmp_path / "cli_store")
    assert "CRS" in advice
    store = tmp_path / "store"

    with pytest.raises(QgsProcessingException) as raised:
        run_encode({"INPUT": str(raster), "OUTPUT": str(store)})

    assert advice in str(raised.value)
    assert not (store / "manifest.json").exists()


def test_non_store_folder_is_refused_and_left_untouched(encoder_provider, tmp_path):
    raster = write_raster(tmp_path / "rgb.tif", gradient(200, 200))
    folder = tmp_path / "holiday photos"
    (folder / "day 1").mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    (folder / "day 1" / "beach.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    before = file_states(folder)

    with pytest.raises(QgsProcessingException) as raised:
        run_encode({"INPUT": str(raster), "OUTPUT": str(folder)})

    message = str(raised.value)
    assert "is not empty and is not a QuickSAM store" in message
    assert str(folder) in message
    assert file_states(folder) == before


# -- 7. qgis_process ---------------------------------------------------------------------------------------


def load_qgisproc():
    """bench/qgisproc.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("qgisproc", REPO / "bench" / "qgisproc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def qgis_process(tmp_path_factory):
    """(run, env): run(args) runs qgis_process.bin with QuickSAM enabled in a private profile."""
    if not QGIS_PROCESS_BIN.exists():
        pytest.skip(f"{QGIS_PROCESS_BIN} is not installed (Debian package qgis)")
    qgisproc = load_qgisproc()
    with pytest.MonkeyPatch.context() as patch:
        # pytest-qgis points these at the test session's own settings folder; qgis_process must use
        # the private profile instead (and must not enable the plugin in the session's settings).
        for name in PYTEST_QGIS_SETTINGS_VARIABLES:
            patch.delenv(name, raising=False)
        env = qgisproc.qgis_process_env(tmp_path_factory.mktemp("qgis_process"))
    return lambda args: qgisproc.run_qgis_process(args, env, timeout=300)


def qgis_process_encode_args(raster: Path, store: Path, *extra: str) -> List[str]:
    return ["run", ALGORITHM_ID, "--", f"INPUT={raster}", f"OUTPUT={store}", "RANDOM_WEIGHTS=true",
            f"TILE_SIZE={TILE_SIZE}", f"OVERLAP={OVERLAP}", *extra]


@pytest.mark.slow
def test_qgis_process_encodes_with_chosen_bands(qgis_process, tmp_path):
    raster = write_raster(tmp_path / "four_bands.tif", gradient(300, 260, bands=4))
    store = tmp_path / "store"

    # qgis_process takes a parameter with several values by repeating it.
    result = qgis_process(qgis_process_encode_args(raster, store, "BANDS=3", "BANDS=2", "BANDS=1"))

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"OUTPUT:\t{store}" in result.stdout
    assert f"TILE_INDEX:\t{store / 'tile_index.gpkg'}" in result.stdout
    summary = store_summary(store)
    assert summary["complete"]
    assert summary["tiles"] == len(TileGrid.build(300, 260, TILE_SIZE, OVERLAP))
    assert summary["bands"] == [3, 2, 1]
    assert summary["random_weights"]


@pytest.mark.slow
def test_qgis_process_failure_exits_non_zero_with_the_advice(qgis_process, tmp_path):
    raster = write_raster(tmp_path / "no_crs.tif", gradient(200, 200), crs=None)
    advice = cli_advice(raster, tmp_path / "cli_store")

    result = qgis_process(qgis_process_encode_args(raster, tmp_path / "store"))

    assert result.returncode != 0
    assert advice in result.stdout + result.stderr


# -- 8. a real raster ----------------------------------------------------------------------------------------


def test_real_landsat_subset(encoder_provider, tmp_path):
    landsat = landsat_path()
    layer = QgsRasterLayer(str(landsat), "L7_ETMs")
    assert layer.isValid() and (layer.width(), layer.height(), layer.bandCount()) == (349, 352, 6)
    store = tmp_path / "store"

    results = run_encode({"INPUT": str(landsat), "BANDS": [3, 2, 1], "OUTPUT": str(store)})

    expected = TileGrid.build(349, 352, TILE_SIZE, OVERLAP)
    manifest = read_manifest(store)
    assert FeatureStore.open(store).grid == expected
    assert manifest["preprocessing"]["bands"] == [3, 2, 1]
    assert QgsCoordinateReferenceSystem.fromWkt(manifest["raster"]["crs_wkt"]).authid() == L7_CRS
    summary = store_summary(store)
    assert summary["complete"] and summary["tiles"] == len(expected)
    assert summary["tiles_done"] + summary["tiles_nodata"] == len(expected)
    tiles = QgsVectorLayer(results["TILE_INDEX"], "tiles", "ogr")
    assert tiles.isValid() and tiles.featureCount() == len(expected)
    assert tiles.crs().authid() == layer.crs().authid() == L7_CRS


def test_levels_and_resolution_reach_the_store_and_its_tile_index(encoder_provider, tmp_path):
    """RESOLUTION 20 (the raster's pixels are 10 m) and LEVELS 1,4: the store's finest level is 20 m, a
    second level is 80 m, and the tile index the algorithm returns draws both, each level in its colour."""
    from quicksam.core.store_levels import level_stores
    from quicksam.ui.layers import open_tile_index_layer

    raster = write_raster(tmp_path / "rgb.tif", gradient(800, 600))
    store = tmp_path / "store"
    results = run_encode({"INPUT": str(raster), "OUTPUT": str(store), "RESOLUTION": 20.0, "LEVELS": "1, 4"})
    levels = level_stores(FeatureStore.open(store))
    assert [(level.manifest.pixel_grid.factor, level.manifest.pixel_grid.resolution) for level in levels] == [
        (2.0, pytest.approx(20.0)), (8.0, pytest.approx(80.0))]
    tiles = QgsVectorLayer(results["TILE_INDEX"], "tiles", "ogr")
    assert tiles.featureCount() == sum(len(level.grid) for level in levels)
    assert sorted({f["factor"] for f in tiles.getFeatures()}) == [2.0, 8.0]
    styled = open_tile_index_layer(levels[0])
    assert styled.renderer().type() == "categorizedSymbol"
    assert len(styled.renderer().categories()) == 2


@pytest.mark.parametrize("levels", ["0.5", "1,x"])
def test_bad_levels_are_refused_before_running(encoder_provider, tmp_path, levels):
    import processing

    raster = write_raster(tmp_path / "rgb.tif", gradient(300, 300))
    with pytest.raises(QgsProcessingException, match="levels must be factors of the finest level's pixel size"):
        processing.run(ALGORITHM_ID, {**SMALL_ENCODE, "INPUT": str(raster), "OUTPUT": str(tmp_path / "s"),
                                      "LEVELS": levels}, context=project_context(), feedback=RecordingFeedback())
    assert not (tmp_path / "s").exists()
