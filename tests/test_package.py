"""The plugin zip that `make package` builds: what is in it, and QGIS's own installer installing it.

The zip is built once per module from the committed HEAD into a temporary folder (`make package
DIST=...`), with an untracked file planted in a package folder to show that only git's tracked files
go in. What the zip must hold is derived from the tree at HEAD (every Python package and top-level
module, whatever they are called then), not from a list kept here; what it must not hold is the
development side (tests, benchmarks, CI, tools, venvs, caches, build output, git files).

The install test runs `tests/install_zip_in_qgis.py` in its own process: a QGIS application on a fresh
profile under a temporary HOME, QGIS's `pyplugin_installer` installing the zip and enabling the plugin;
then nothing may have been written outside that profile.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath
from typing import Dict, List, Set

import pytest

REPO = Path(__file__).resolve().parent.parent
TOP = "quicksam"
#: Path parts that are development-side or junk wherever they appear in the zip.
FORBIDDEN_PARTS = {"tests", "bench", ".ci", "tools", ".venv", "venv", ".stamps", "build", "dist",
                   "__pycache__", ".pytest_cache", ".ruff_cache", ".qgis-settings", "__MACOSX", ".git",
                   "screenshot"}
#: Top-level modules of the package that are development tools, not plugin code (`make demo` only).
DEV_ONLY_MODULES = {"demo.py"}
#: What QGIS's plugin repository refuses an upload without (its validator's required metadata).
REPOSITORY_REQUIRED = ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about",
                       "tracker", "repository")


def head_files() -> List[str]:
    """Paths (POSIX, relative to the repository root) of the files tracked at HEAD."""
    out = subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return out.splitlines()


def package_files_at_head(files: List[str]) -> Set[str]:
    """The plugin's code at HEAD: top-level modules and every file of each Python package (a folder,
    at any depth, whose chain of folders up to the root all hold an `__init__.py`), plus the
    package's `.ui` files."""
    tracked = set(files)

    def in_package(path: str) -> bool:
        parents = PurePosixPath(path).parents
        folders = [str(p) for p in parents if str(p) != "."]
        return all(f"{folder}/__init__.py" in tracked for folder in folders)

    return {path for path in files
            if path.endswith((".py", ".ui")) and in_package(path) and path not in DEV_ONLY_MODULES}


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory) -> Path:
    """`make package` into a temporary folder, with untracked junk planted in the tree meanwhile."""
    dist = tmp_path_factory.mktemp("dist")
    junk = REPO / "core" / f"untracked_junk_{os.getpid()}.py"
    junk.write_text("raise RuntimeError('an untracked file was packaged')\n")
    try:
        subprocess.run(["make", "--no-print-directory", "package", f"DIST={dist}"], cwd=REPO, check=True,
                       capture_output=True, text=True)
    finally:
        junk.unlink()
    zips = sorted(dist.glob("quicksam-*.zip"))
    assert len(zips) == 1, zips
    return zips[0]


@pytest.fixture(scope="module")
def names(built_zip) -> List[str]:
    with zipfile.ZipFile(built_zip) as archive:
        assert archive.testzip() is None
        return archive.namelist()


@pytest.fixture(scope="module")
def unpacked(built_zip, tmp_path_factory) -> Path:
    """The zip extracted; the plugin folder is `unpacked / "quicksam"`."""
    target = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(built_zip) as archive:
        archive.extractall(target)
    return target


def plugin_files(names: List[str]) -> Set[str]:
    """The zip's files (not folders) relative to the top folder."""
    return {name[len(TOP) + 1:] for name in names if not name.endswith("/")}


def metadata(unpacked: Path) -> configparser.SectionProxy:
    """metadata.txt parsed as QGIS parses it (`configparser.ConfigParser`, interpolation on)."""
    parser = configparser.ConfigParser()
    parser.optionxform = str  # keys as written (qgisMinimumVersion), as the plugin repository reads them
    with open(unpacked / TOP / "metadata.txt", encoding="utf-8") as handle:
        parser.read_file(handle)
    return parser["general"]


def test_zip_name_and_version_come_from_metadata(built_zip, unpacked):
    general = metadata(unpacked)
    assert built_zip.name == f"quicksam-{general['version']}.zip"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(general["version"])}"$', pyproject, re.MULTILINE), \
        "metadata.txt and pyproject.toml give different versions"


def test_one_top_folder_and_nothing_the_plugin_repository_refuses(names):
    assert names and all(name.startswith(f"{TOP}/") for name in names)
    assert re.match(r"^[A-Za-z][A-Za-z0-9-_]+$", TOP)
    for name in names:
        assert ".." not in name and not name.startswith("/"), name
        assert not name.endswith((".pyc", ".pyo")), name
        parts = PurePosixPath(name).parts
        assert not FORBIDDEN_PARTS & set(parts), name
        assert not any(part.startswith(".git") or part.endswith(".egg-info") for part in parts), name
    assert f"{TOP}/__init__.py" in names and f"{TOP}/metadata.txt" in names and f"{TOP}/LICENSE" in names


def test_licence_is_the_gpl_pyproject_declares(unpacked):
    assert 'license = { text = "GPL-2.0-or-later" }' in (REPO / "pyproject.toml").read_text()
    text = (unpacked / TOP / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 2, June 1991" in text


def test_every_module_of_the_plugin_at_head_is_in_the_zip(names):
    expected = package_files_at_head(head_files())
    # The tree has the packages the plugin is made of, whatever their layout at HEAD.
    assert {"__init__.py", "plugin.py"} <= expected
    assert any(path.startswith("core/") for path in expected) and any(path.endswith(".ui") for path in expected)
    missing = expected - plugin_files(names)
    assert not missing, f"not packaged: {sorted(missing)}"


def test_only_tracked_files_at_head_and_no_development_side(names):
    packaged = plugin_files(names)
    assert packaged <= set(head_files()), f"not tracked at HEAD: {sorted(packaged - set(head_files()))}"
    assert not any(path.startswith("core/untracked_junk_") for path in packaged)
    assert not DEV_ONLY_MODULES & packaged
    assert not {"Makefile", "pyproject.toml", ".gitignore", ".gitattributes"} & packaged


def test_icons_and_docs_the_plugin_links_to_are_in_it(names, unpacked):
    packaged = plugin_files(names)
    general = metadata(unpacked)
    assert general["icon"] in packaged
    for icon in {path for path in head_files() if path.startswith("icons/")}:
        assert icon in packaged
    docs = [path for path in packaged if path.endswith(".md")]
    assert "README.md" in docs and any(path.startswith("docs/") for path in docs)
    for doc in docs:
        text = (unpacked / TOP / doc).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"^[a-z]+:", target):
                continue  # a web address
            linked = os.path.normpath(os.path.join(os.path.dirname(doc), target)).replace(os.sep, "/")
            assert linked in packaged, f"{doc} links to {target}, which is not in the zip"


def test_metadata_has_what_qgis_and_the_plugin_repository_need(unpacked):
    general = metadata(unpacked)
    for key in (*REPOSITORY_REQUIRED, "icon", "hasProcessingProvider", "changelog", "qgisMaximumVersion",
                "supportsQt6"):
        assert general.get(key, "").strip(), f"metadata.txt lacks {key}"
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["qgisMaximumVersion"] == "4.99"
    assert general.getboolean("supportsQt6") is True
    assert "plugin_dependencies" not in general  # none; an empty value would name a plugin ""
    about = general["about"]
    assert not re.search(r"\bmake\b", about), "about must not send users to `make` in the plugin folder"
    for dependency in ("onnxruntime", "numpy", "PyTorch", "sam2"):
        assert dependency in about
    changelog = general["changelog"]
    assert "Segment dock" in changelog and "Segment everything" in changelog and "Encode" in changelog


def test_qgis_3_22_to_4_accept_the_version_range(unpacked):
    """QGIS's own version test from its plugin installer (`version_compare.isCompatible`)."""
    from qgis.core import QgsApplication

    sys.path.insert(0, str(Path(QgsApplication.pkgDataPath()) / "python"))
    try:
        from pyplugin_installer.version_compare import isCompatible
    finally:
        sys.path.pop(0)
    general = metadata(unpacked)
    low, high = general["qgisMinimumVersion"], general["qgisMaximumVersion"]
    for version in ("3.22.16", "3.34.0", "3.40.6", "4.0.0", "4.2.0"):
        assert isCompatible(version, low, high), version
    assert not isCompatible("3.20.0", low, high)


def test_unpacked_zip_imports_as_package_quicksam(unpacked):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import quicksam.core.store, quicksam; "
            "print(quicksam.__file__); print(quicksam.core.store.__file__)")
    result = subprocess.run([sys.executable, "-c", code, str(unpacked)], capture_output=True, text=True,
                            cwd=unpacked)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        assert Path(line).resolve().is_relative_to((unpacked / TOP).resolve()), line


def install_environment(home: Path) -> Dict[str, str]:
    """The test environment with a fresh HOME, temporary and runtime folders, and nothing pointing
    QuickSAM or the XDG folders elsewhere (so anything written lands under `home` and is seen)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("QUICKSAM_", "XDG_")) and key not in ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_OPTIONS_PATH")}
    runtime = home.parent / "runtime"
    runtime.mkdir(mode=0o700)
    (home.parent / "tmp").mkdir()
    env.update(HOME=str(home), TMPDIR=str(home.parent / "tmp"), XDG_RUNTIME_DIR=str(runtime),
               QT_QPA_PLATFORM="offscreen")
    return env


def files_under(folder: Path) -> Set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def test_qgis_plugin_installer_installs_and_enables_it_in_a_fresh_profile(built_zip, names, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    profiles_root = home / "qgis-profiles"
    profile = profiles_root / "profiles" / "default"
    result = subprocess.run([sys.executable, str(REPO / "tests" / "install_zip_in_qgis.py"), str(built_zip),
                             str(profiles_root)], capture_output=True, text=True, env=install_environment(home),
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["installer_messages"] == ["<b>Plugin installed successfully</b>"]
    assert Path(report["settings_folder"]).resolve() == profile.resolve()
    plugin_folder = profile / "python" / "plugins" / TOP
    assert Path(report["plugins_folder"]).resolve() == plugin_folder.parent.resolve()
    assert report["active"] and report["enabled_setting"]
    assert Path(report["module_file"]).resolve() == (plugin_folder / "__init__.py").resolve()
    assert report["provider"] == "quicksam"
    assert {"quicksam:encoderaster", "quicksam:segmentprompts", "quicksam:segmentall"} <= set(report["algorithms"])
    assert report["plugin_dependencies"] == {}

    # The plugin folder holds exactly the zip (Python's own __pycache__ aside): nothing written into it.
    installed = {path.relative_to(plugin_folder).as_posix() for path in files_under(plugin_folder)
                 if "__pycache__" not in path.parts}
    assert installed == plugin_files(names)
    # Nothing outside the profile: not in HOME (no ~/.config, ~/.cache, default profile), not in TMPDIR.
    outside = {path for path in files_under(home) if not path.is_relative_to(profile)}
    assert not outside, sorted(map(str, outside))
    assert not files_under(tmp_path / "tmp")
