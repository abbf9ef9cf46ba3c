"""The interactive runtime: ONNX Runtime installed with QGIS's own Python by real pip from the package
index into a temporary QGIS profile; QGIS's numpy stays the one imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import encoded_square_scene, pixel_to_map_default

from quicksam.core.errors import Cancelled
from quicksam.envs.commands import Runner
from quicksam.envs.folders import distribution_name, distributions_in, drop_distributions
from quicksam.envs.locations import runtime_dir, staging_of
from quicksam.envs.pythons import find_qgis_python
from quicksam.envs.runtime import Activation, constraints_text, install_runtime, installed_version

ROOT = Path(__file__).resolve().parents[1]


def test_constraints_pin_what_qgis_has_and_skip_what_pip_cannot_find():
    text = constraints_text({"numpy": "1.24.2", "lz4": "4.0.2+dfsg", "mpmath": "0.0.0", "odd": "1.0-debian"})
    assert text.splitlines() == ["lz4==4.0.2", "numpy==1.24.2"]


def test_dropping_a_distribution_deletes_its_recorded_files_only(tmp_path):
    for name, files in (("numpy", ["numpy/__init__.py", "numpy/core/x.so"]), ("flatbuffers", ["flatbuffers/a.py"])):
        info = tmp_path / f"{name}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n\n")
        for relative in files:
            (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / relative).write_text("")
        (info / "RECORD").write_text("".join(f"{f},sha256=x,1\n" for f in files) + f"{info.name}/METADATA,,\n"
                                     "../../outside.txt,,\n")
    (tmp_path.parent / "outside.txt").write_text("keep")
    assert drop_distributions(tmp_path, ["NumPy"]) == ["numpy"]
    assert not (tmp_path / "numpy").exists() and (tmp_path / "flatbuffers" / "a.py").exists()
    assert [distribution_name(d) for d in distributions_in(tmp_path)] == ["flatbuffers"]
    assert (tmp_path.parent / "outside.txt").read_text() == "keep"


@pytest.fixture(scope="module")
def qgis_python() -> str:
    if not Path("/usr/bin/qgis").exists():
        pytest.skip("needs QGIS installed from distribution packages (/usr/bin/qgis, Python in /usr/bin)")
    return find_qgis_python("/usr", "/usr/bin/qgis", sys.version_info[:2], "linux").path


def _qgis_numpy(python: str) -> str:
    return subprocess.run([python, "-c", "import numpy; print(numpy.__file__)"], capture_output=True, text=True,
                          check=True).stdout.strip()


ACTIVATE = """
import json, sys
from pathlib import Path
from quicksam.envs.runtime import activate
state = activate(Path(sys.argv[1]))
import numpy, onnxruntime
print(json.dumps({"state": state.value, "ort": onnxruntime.__file__, "numpy": numpy.__file__,
                  "appended": sys.path[-1] == sys.argv[1], "providers": onnxruntime.get_available_providers()}))
"""


@pytest.mark.slow
def test_runtime_installs_imports_with_qgis_numpy_and_repairs_in_place(tmp_path, qgis_python):
    profile = tmp_path / "profiles" / "default"
    folder = runtime_dir(profile, sys.version_info[:2])
    runner = Runner(tmp_path / "logs" / "setup.log")
    steps = []
    check = install_runtime(runner, qgis_python, folder, lambda fraction, message: steps.append(fraction))
    assert steps == sorted(steps) and steps[-1] == 1.0
    assert installed_version(folder) == check.onnxruntime
    names = {distribution_name(d) for d in distributions_in(folder)}
    assert "onnxruntime" in names and "numpy" not in names and "packaging" not in names
    assert not (folder / "numpy").exists() and not staging_of(folder).exists()
    assert check.numpy_file == _qgis_numpy(qgis_python)

    # A fresh QGIS-free Python of QGIS: the plugin's activation appends the folder; ONNX Runtime comes
    # from it, numpy from QGIS.
    package_parent = tmp_path / "code"
    package_parent.mkdir()
    (package_parent / "quicksam").symlink_to(ROOT)
    result = subprocess.run([qgis_python, "-c", ACTIVATE, str(folder)], capture_output=True, text=True,
                            env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["state"] == Activation.ACTIVE.value and seen["appended"]
    assert Path(seen["ort"]).is_relative_to(folder) and seen["numpy"] == _qgis_numpy(qgis_python)
    assert "CPUExecutionProvider" in seen["providers"]

    # Re-running repairs in place: a damaged folder is replaced whole.
    (folder / "onnxruntime" / "__init__.py").write_text("raise ImportError('damaged')\n")
    again = install_runtime(runner, qgis_python, folder, lambda fraction, message: None)
    assert again.onnxruntime == check.onnxruntime
    assert "damaged" not in (folder / "onnxruntime" / "__init__.py").read_text()


@pytest.mark.slow
def test_a_cancelled_install_keeps_the_previous_runtime(tmp_path, qgis_python):
    folder = runtime_dir(tmp_path / "profile", sys.version_info[:2])
    folder.mkdir(parents=True)
    (folder / "previous.txt").write_text("in use")
    lines = []

    def cancelled() -> bool:
        return any(line.startswith(("Collecting", "Looking in", "Requirement")) for line in lines)

    runner = Runner(tmp_path / "setup.log", is_cancelled=cancelled, on_line=lines.append)
    with pytest.raises(Cancelled):
        install_runtime(runner, qgis_python, folder, lambda fraction, message: None)
    assert (folder / "previous.txt").read_text() == "in use"
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no staging, no constraints


# The plugin loaded by QGIS's own Python (no venv: only what QGIS has, plus the runtime the set-up put in
# the profile), as QGIS loads it; then a click's decode, the way the dock does it (SegmentSession and the
# worker's segment_prompts), on a store encoded by this venv's encoder.
DECODE_WITH_THE_INSTALLED_RUNTIME = """
import json, os, sys
from pathlib import Path
from qgis.core import QgsApplication
from qgis.PyQt.QtWidgets import QMainWindow

app = QgsApplication([], True)
app.initQgis()
had_onnxruntime = "onnxruntime" in sys.modules


class StubIface:
    def __init__(self):
        self.window = QMainWindow()

    def mainWindow(self):
        return self.window

    def addToolBar(self, name):
        return self.window.addToolBar(name)

    def __getattr__(self, name):  # menus and the options page: not needed here
        return lambda *args: None


import quicksam

plugin = quicksam.classFactory(StubIface())
plugin.initGui()  # appends the profile's runtime folder to sys.path, as in QGIS
from quicksam.interactive.engine import SegmentEngine
from quicksam.interactive.session import SegmentSession, segment_prompts
import numpy, onnxruntime

store, x, y = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
session = SegmentSession(SegmentEngine.open(store))
prompts = session.add_point(x, y, 1)
segments = segment_prompts(session.engine, prompts, session.options)
plugin.unload()
print(json.dumps({"had_onnxruntime": had_onnxruntime, "ort": onnxruntime.__file__, "numpy": numpy.__file__,
                  "torch": "torch" in sys.modules, "segments": len(segments),
                  "pixels": [s.mask_pixels for s in segments], "area": [s.geometry.area for s in segments],
                  "runtime_on_path": sys.argv[4] in sys.path}))
app.exitQgis()
"""


@pytest.mark.slow
def test_the_plugin_in_qgis_python_decodes_a_click_with_the_installed_runtime(tmp_path, qgis_python):
    config = tmp_path / "qgis-config"  # QGIS_CUSTOM_CONFIG_PATH: the profile is config/profiles/default
    folder = runtime_dir(config / "profiles" / "default", sys.version_info[:2])
    install_runtime(Runner(tmp_path / "setup.log"), qgis_python, folder, lambda fraction, message: None)
    (tmp_path / "scene").mkdir()
    scene = encoded_square_scene(tmp_path / "scene", (100, 100, 100))  # a 100 px square centred at (150, 150)
    x, y = pixel_to_map_default(150.5, 150.5)

    package_parent = tmp_path / "code"
    package_parent.mkdir()
    (package_parent / "quicksam").symlink_to(ROOT)
    env = {"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen",
           "QGIS_CUSTOM_CONFIG_PATH": str(config), "HOME": str(tmp_path)}
    result = subprocess.run([qgis_python, "-c", DECODE_WITH_THE_INSTALLED_RUNTIME, str(scene / "scene.qsam"),
                             repr(x), repr(y), str(folder)], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert not seen["had_onnxruntime"] and Path(seen["ort"]).is_relative_to(folder)
    assert seen["numpy"] == _qgis_numpy(qgis_python) and not seen["torch"]
    assert not seen["runtime_on_path"]  # unload took the folder off sys.path again
    assert seen["segments"] == 1 and seen["pixels"][0] > 0 and seen["area"][0] > 0, seen
