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

import pytest
import tomllib
from osgeo import ogr
from synthetic import square_scene, write_raster

REPO = Path(__file__).resolve().parent.parent
#: The encoder side: what `quicksam encode` and `quicksam info` import (the QGIS layer excluded).
ENCODER_SIDE = [*sorted((REPO / "encoder").rglob("*.py")), *sorted((REPO / "cli").glob("*.py"))]
QGIS_LAYER = {"provider.py", "algorithm_base.py", "encode_algorithm.py"}


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
    raster = write_raster(tmp_path / "scene.tif", square_scene(300, 260, (80, 70, 60)))
    store = tmp_path / "scene.qsam"
    args = [headless_python, "-m", "quicksam.cli", "encode", raster, store, "--random-weights",
            "--tile-size", "256", "--overlap", "64"]
    first = _run(args)
    assert first.returncode == 0, first.stderr[-3000:]
    again = _run(args)  # a resumed run of a finished store works too (it rewrote the index before)
    assert again.returncode == 0, again.stderr[-3000:]
    info = _run([headless_python, "-m", "quicksam.cli", "info", store])
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["complete"] and summary["tiles_done"] == summary["tiles"] == 4
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
        if path.name in QGIS_LAYER:
            continue
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
