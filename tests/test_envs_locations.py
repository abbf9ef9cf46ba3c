"""Where the set-up puts things, and how it finds QGIS's Python on each platform (fake folder layouts in
tmp_path: pure path logic; plus the real QGIS of this machine)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import pytest

from quicksam.envs.failures import FailureKind, SetupError
from quicksam.envs.locations import Locations, data_dir, runtime_dir, venv_python
from quicksam.envs.pythons import PythonInfo, find_qgis_python, find_torch_python, probe_python


@pytest.mark.parametrize("platform, environ, expected", [
    ("windows", {"LOCALAPPDATA": "C:/Users/ana/AppData/Local"}, "C:/Users/ana/AppData/Local/QuickSAM"),
    ("windows", {}, "HOME/AppData/Local/QuickSAM"),
    ("macos", {}, "HOME/Library/Application Support/QuickSAM"),
    ("linux", {}, "HOME/.local/share/quicksam"),
    ("linux", {"XDG_DATA_HOME": "/data/xdg"}, "/data/xdg/quicksam"),
    ("macos", {"QUICKSAM_DATA_DIR": "/big/disk/qs"}, "/big/disk/qs"),
])
def test_data_dir_per_platform(platform, environ, expected):
    found = data_dir(environ, home=Path("HOME"), platform=platform)
    assert found == Path(expected)


def test_runtime_goes_into_the_profile_per_python_version(tmp_path):
    profile = tmp_path / "profiles" / "default"
    assert runtime_dir(profile, (3, 12)) == profile / "QuickSAM" / "runtime" / "py312"
    where = Locations(profile, tmp_path / "data", (3, 11))
    assert where.runtime.parent == where.runtime_root
    assert where.encoder_env == tmp_path / "data" / "encoder-env"
    assert venv_python(where.encoder_env, "windows") == where.encoder_env / "Scripts" / "python.exe"
    assert venv_python(where.encoder_env, "linux") == where.encoder_env / "bin" / "python"


def _fake_probe(tmp_path: Path, versions: Dict[str, Tuple[int, int]]):
    """A probe that runs only the fake interpreters created under tmp_path (paths of either style)."""
    def probe(command: Sequence[str]) -> Optional[PythonInfo]:
        path = Path(str(command[0]).replace("\\", "/"))
        if tmp_path not in path.parents or not path.is_file():
            return None
        return PythonInfo(str(path), versions[path.relative_to(tmp_path).as_posix()], True, True)
    return probe


# (platform, QGIS prefix, QGIS executable, the Python files of the layout, QGIS's Python version, expected)
LAYOUTS = [
    ("windows", "OSGeo4W/apps/qgis-ltr", "OSGeo4W/bin/qgis-ltr-bin.exe",
     {"OSGeo4W/apps/Python312/python.exe": (3, 12), "OSGeo4W/apps/Python39/python.exe": (3, 9)}, (3, 12),
     "OSGeo4W/apps/Python312/python.exe"),
    ("windows", "QGIS 3.34.1/apps/qgis", "QGIS 3.34.1/bin/qgis-bin.exe",
     {"QGIS 3.34.1/apps/Python39/python.exe": (3, 9)}, (3, 9), "QGIS 3.34.1/apps/Python39/python.exe"),
    ("windows", "miniconda/envs/gis/Library", "miniconda/envs/gis/Library/bin/qgis.exe",
     {"miniconda/envs/gis/python.exe": (3, 11)}, (3, 11), "miniconda/envs/gis/python.exe"),
    ("macos", "QGIS.app/Contents/MacOS", "QGIS.app/Contents/MacOS/QGIS",
     {"QGIS.app/Contents/MacOS/bin/python3": (3, 9)}, (3, 9), "QGIS.app/Contents/MacOS/bin/python3"),
    ("macos", "QGIS-LTR.app/Contents/MacOS", "QGIS-LTR.app/Contents/MacOS/QGIS",
     {"QGIS-LTR.app/Contents/Frameworks/Python.framework/Versions/3.12/bin/python3.12": (3, 12)}, (3, 12),
     "QGIS-LTR.app/Contents/Frameworks/Python.framework/Versions/3.12/bin/python3.12"),
    ("linux", "usr", "usr/bin/qgis", {"usr/bin/python3.11": (3, 11), "usr/bin/python3": (3, 11)}, (3, 11),
     "usr/bin/python3.11"),
    ("linux", "usr", "usr/bin/qgis", {"usr/bin/python3.13": (3, 13), "usr/bin/python3": (3, 12)}, (3, 12),
     "usr/bin/python3"),
    ("linux", "conda/envs/qgis", "conda/envs/qgis/bin/qgis", {"conda/envs/qgis/bin/python": (3, 12)}, (3, 12),
     "conda/envs/qgis/bin/python"),
    ("linux", "app", "app/bin/qgis", {"app/bin/python3": (3, 12)}, (3, 12), "app/bin/python3"),  # Flatpak
]


@pytest.mark.parametrize("platform, prefix, executable, files, version, expected", LAYOUTS,
                         ids=["osgeo4w", "win-standalone", "win-conda", "mac-old", "mac-framework", "debian",
                              "linux-python3", "conda", "flatpak"])
def test_finds_qgis_python_in_each_layout(tmp_path, platform, prefix, executable, files, version, expected):
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    found = find_qgis_python(str(tmp_path / prefix), str(tmp_path / executable), version, platform,
                             probe=_fake_probe(tmp_path, files))
    assert Path(found.path) == tmp_path / expected


def test_a_python_of_another_version_is_not_qgis_python(tmp_path):
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "bin" / "python3").write_text("")
    with pytest.raises(SetupError) as caught:
        find_qgis_python(str(tmp_path / "usr"), str(tmp_path / "usr/bin/qgis"), (3, 11), "linux",
                         probe=_fake_probe(tmp_path, {"usr/bin/python3": (3, 13)}))
    assert caught.value.kind is FailureKind.NO_PYTHON
    assert "\n" not in str(caught.value)


def test_finds_this_machines_qgis_python():
    """The real one: QGIS from Debian packages (prefix /usr, run as /usr/bin/qgis)."""
    if not Path("/usr/bin/qgis").exists():
        pytest.skip("needs QGIS installed from distribution packages (/usr/bin/qgis)")
    found = find_qgis_python("/usr", "/usr/bin/qgis", sys.version_info[:2], "linux")
    assert found.version == tuple(sys.version_info[:2]) and found.has_pip
    assert Path(found.path).parent == Path("/usr/bin")


def test_torch_python_prefers_the_given_one_and_says_what_it_tried():
    good = probe_python([sys.executable])
    assert good is not None
    assert find_torch_python([sys.executable], "linux", which=lambda name: None).path == good.path
    with pytest.raises(SetupError) as caught:
        find_torch_python(["/nonexistent/python3"], "linux", which=lambda name: None)
    message = str(caught.value)
    assert caught.value.kind is FailureKind.NO_PYTHON and "/nonexistent/python3" in message
    assert "install Python" in message and "\n" not in message
