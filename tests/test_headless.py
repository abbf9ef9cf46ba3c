"""The encoder on a machine without QGIS and without GDAL's Python bindings (a headless GPU server).

An environment is built where `import qgis` and `import osgeo` fail: a venv *without* the system's
site-packages, seeing only the packages pip installed into this test venv (torch, sam2, rasterio, ...)
and QuickSAM itself. `quicksam encode` and `quicksam info` run there end to end. A second test checks
that every third-party module the encoder side imports is a dependency `pyproject.toml` declares.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import tomllib
from osgeo import ogr
from synthetic import encode, encode_args, square_scene, write_raster

from quicksam.core.store import FeatureStore

REPO = Path(__file__).resolve().parent.parent
#: The encoder side: what `quicksam encode` and `quicksam info` import: the QGIS-free core and encoding stage, and
#: the command line (cli.py, or a cli/ package).
ENCODER_SIDE = sorted([*(REPO / "core").rglob("*.py"), *(REPO / "encoder").rglob("*.py"), *REPO.glob("cli.py"),
                       *(REPO / "cli").glob("*.py")])


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def headless_python(tmp_path_factory) -> Path:
    """A venv's python with QuickSAM pip-installed (not editable) and this venv's own packages visible, but
    not the system's (no qgis, no osgeo, nothing Debian installed)."""
    root = tmp_path_factory.mktemp("headless")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        check=True).stdout.strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    (purelib / "quicksam-test.pth").write_text(f"{ours}\n")
    # pip, as a user would run it, installs QuickSAM with what pyproject.toml declares; what this test venv
    # already holds (torch, sam2, ...) counts as installed, what Debian provided to it does not
    install = _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", f"{REPO}[encoder]"])
    assert install.returncode == 0, install.stderr[-3000:]
    return python


@pytest.mark.slow
def test_the_headless_environment_has_no_qgis_and_no_osgeo(headless_python: Path):
    for module in ("qgis", "osgeo"):
        probe = _run([headless_python, "-c", f"import {module}"])
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, module


@pytest.mark.slow
def test_encode_and_info_run_without_qgis_or_osgeo(headless_python: Path, tmp_path: Path):
    """A real `quicksam encode` in the QGIS-free venv (the seeded random tiny model, 256 px tiles) writes a whole
    store: every tile done, a manifest the store contract reads, the tile index. Its features are those of the
    same encode in this process, so the headless run really ran the test model on the raster."""
    raster = write_raster(tmp_path / "scene.tif", square_scene(300, 260, (80, 70, 60)))
    store = tmp_path / "scene.qsam"
    args = [headless_python, "-m", "quicksam.cli", *encode_args(raster, store, "--seed", "0", overlap=64)]
    first = _run(args)
    assert first.returncode == 0, first.stderr[-3000:]
    again = _run(args)  # a resumed run of a finished store works too (it rewrote the index before)
    assert again.returncode == 0, again.stderr[-3000:]
    info = _run([headless_python, "-m", "quicksam.cli", "info", store])
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["complete"] and summary["tiles_done"] == summary["tiles"] == 4

    written = FeatureStore.open(store)  # the manifest is there and the store contract reads it
    reference, _ = encode(raster, tmp_path / "reference.qsam", overlap=64)  # in this process: same model, seed
    assert (written.model_name, written.checkpoint_sha256) == (reference.model_name, reference.checkpoint_sha256)
    assert (written.crs_wkt, written.geotransform) == (reference.crs_wkt, reference.geotransform)
    assert written.feature_shapes == reference.feature_shapes
    assert {tile_id: record.status for tile_id, record in written.records().items()} == \
        {tile.tile_id: "done" for tile in reference.grid}
    for tile_id in reference.records():
        for name, expected in reference.load_tile(tile_id).items():
            # Both float16 (the stored dtype) from the same float32 computation; the two processes may run torch
            # with other thread counts, which reorders float32 sums, and a value at a float16 rounding boundary
            # then moves by one float16 step (2**-10 relative); atol covers values near 0.
            np.testing.assert_allclose(written.load_tile(tile_id)[name].astype(np.float32),
                                       expected.astype(np.float32), rtol=2e-3, atol=1e-3, err_msg=f"{tile_id} {name}")

    dataset = ogr.Open(str(store / "tile_index.gpkg"))
    layer = dataset.GetLayer("tiles")
    assert layer.GetFeatureCount() == 4
    assert {feature.GetField("status") for feature in layer} == {"done"}
    assert "32633" in layer.GetSpatialRef().ExportToWkt()  # the raster's CRS (square_scene: UTM 33N)


def _third_party_imports(path: Path) -> set:
    """Top-level names of absolute imports in a module, also those inside functions (lazy imports)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"quicksam", "__future__"}


def _declared_distributions() -> set:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *(s for extra in project["optional-dependencies"].values() for s in extra)]
    return {re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in specs}


def test_every_package_the_encoder_imports_is_declared():
    providers = metadata.packages_distributions()
    declared = _declared_distributions()
    undeclared = {}
    for path in ENCODER_SIDE:
        for module in _third_party_imports(path):
            if module in ("qgis", "processing", "osgeo"):
                continue  # only `segment`/`segment-all` import these, inside QGIS (which ships them)
            dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
            if not dists & declared:
                undeclared.setdefault(module, []).append(path.name)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_cli_finds_qgis_processing_from_qgis_own_data_path(qgis_app):
    """`segment`/`segment-all` import QGIS's Processing plugin from where this QGIS keeps it (its
    pkgDataPath), not from a Debian path: the same code finds it under OSGeo4W, macOS bundles and conda."""
    from qgis.core import QgsApplication

    from quicksam.cli.headless import qgis_python_plugins_dir

    folder = Path(qgis_python_plugins_dir())
    assert folder == Path(QgsApplication.pkgDataPath()) / "python" / "plugins"
    assert (folder / "processing" / "core" / "Processing.py").is_file()
