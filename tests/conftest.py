"""Shared fixtures for QuickSAM's tests (pytest + pytest-qgis, real QGIS, offscreen).

Sections:
  1. Environment: settings that must be in place before QGIS starts.
  2. Plugin and canvas: the real plugin loaded through the package's `classFactory`; the map canvas.
  3. The two-squares store: `synthetic.two_squares_scene()` encoded once per session, and its engine.

The user cache and config folders point at one temporary folder per session (set at import, so that
encoder processes started by tests inherit it; removed when the session ends): tests never touch the real
home, and the ONNX decoder exported for a random model is reused across tests. A session refuses to start
without the free space it needs in the temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

# -- 1. Environment ---------------------------------------------------------------------------------

# Headless QGIS: no display on CI machines. pytest-qgis starts QGIS before conftests are imported when
# it runs from the command line, so `QT_QPA_PLATFORM=offscreen` is best also set in the shell; this
# covers the other entry points (IDE runners, pytester).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import shutil  # noqa: E402
import tempfile  # noqa: E402

_SESSION_DIR = tempfile.mkdtemp(prefix="quicksam-tests-")
os.environ["QUICKSAM_CACHE_DIR"] = os.path.join(_SESSION_DIR, "cache")
os.environ["QUICKSAM_CONFIG_DIR"] = os.path.join(_SESSION_DIR, "config")

import pytest  # noqa: E402 (after the environment is set)

#: Free space the whole suite needs in the temporary folder. Measured: about 7 GB at its peak, 5.6 GB of it the
#: encoder set-up test's venv (torch from pip's default index, with its CUDA libraries on Linux), the rest the
#: module-scoped stores and the session's decoder cache (a passed test's folder is removed when it ends:
#: `tmp_path_retention_policy = "failed"` in pyproject.toml). QUICKSAM_TEST_FREE_BYTES overrides it.
FREE_BYTES_NEEDED = int(os.environ.get("QUICKSAM_TEST_FREE_BYTES", 10 * 1024 ** 3))


def pytest_sessionstart(session: pytest.Session) -> None:  # noqa: ARG001 - pytest's hook signature
    """Refuse to start, in one line, on a temporary folder without the room the suite needs: a disk that fills
    half-way fails hundreds of tests with errors that say nothing about the disk."""
    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    if free < FREE_BYTES_NEEDED:
        pytest.exit(f"the test suite needs about {FREE_BYTES_NEEDED / 1024 ** 3:.1f} GB free in {folder}, which has "
                    f"{free / 1024 ** 3:.1f} GB; free space there (or point TMPDIR at a larger disk) and run it again",
                    returncode=3)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:  # noqa: ARG001 - pytest's hook
    """The session's cache and config folder goes with the session (its exported decoders are ~100 MB)."""
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)

# -- 2. Plugin ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def segment_dock_closed_at_start():
    """The plugin opens the Segment dock when QGIS starts if it was open at the last exit (a setting): every
    test starts, and leaves, with it closed."""
    from quicksam.ui import settings

    settings.SEGMENT_DOCK_OPEN.reset()
    yield
    settings.SEGMENT_DOCK_OPEN.reset()



@pytest.fixture
def plugin(qgis_app, qgis_iface):
    """The real plugin, created the way QGIS does (`classFactory(iface)`) with its GUI initialised;
    unloaded at teardown."""
    import quicksam

    instance = quicksam.classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()


@pytest.fixture
def canvas(qgis_app, qgis_canvas, qgis_new_project):
    """The pytest-qgis canvas (a new project), shown at 800 x 600 px; its CRS, layers and tool restored
    afterwards."""
    from qgis.core import QgsApplication

    window = qgis_canvas.parentWidget()
    window.resize(800, 600)
    window.show()
    qgis_canvas.resize(800, 600)
    QgsApplication.processEvents()
    original_crs = qgis_canvas.mapSettings().destinationCrs()
    yield qgis_canvas
    if qgis_canvas.mapTool() is not None:
        qgis_canvas.unsetMapTool(qgis_canvas.mapTool())
    qgis_canvas.setDestinationCrs(original_crs)
    qgis_canvas.setLayers([])


@pytest.fixture
def show_raster(canvas, qgis_iface):
    """A function (path) -> QgsRasterLayer: the raster file added to the project as the active layer, the
    canvas in its CRS and showing it whole."""
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer

    def show(path: Path) -> QgsRasterLayer:
        layer = QgsRasterLayer(str(path), path.stem)
        assert layer.isValid(), path
        QgsProject.instance().addMapLayer(layer)
        qgis_iface.setActiveLayer(layer)
        canvas.setDestinationCrs(layer.crs())
        canvas.setExtent(layer.extent())
        canvas.refresh()
        QgsApplication.processEvents()
        return layer

    return show


# -- 3. The two-squares store ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def store_path(tmp_path_factory) -> Path:
    """The feature store of `synthetic.two_squares_scene()` (320 x 300 px, EPSG:32633, 10 m pixels), encoded
    once per session with the seeded random tiny model in 256 px tiles with a 64 px overlap (2 x 2 tiles).
    Shared by the test modules that segment it: tests read it and never write into it."""
    from synthetic import encode, two_squares_scene, write_raster

    folder = tmp_path_factory.mktemp("two-squares-store")
    raster = write_raster(folder / "scene.tif", two_squares_scene())
    store, _ = encode(raster, folder / "store", overlap=64)
    assert store.summary()["tiles_done"] == 4
    return store.root


@pytest.fixture(scope="module")
def engine(store_path: Path):
    """`SegmentEngine` on the `store_path` store, one per test module (the reference the outputs of the
    Processing algorithm and the CLI are compared with)."""
    from quicksam.core.store import FeatureStore
    from quicksam.interactive.engine import SegmentEngine

    return SegmentEngine(FeatureStore.open(store_path))
