"""The tree's layers hold (docs/architecture.md): the QGIS-free core under the thin QGIS layer.

- `core/`, `encoder/`, `interactive/` and `envs/` (the set-up's environments) import no QGIS (`qgis`,
  `qgis.PyQt`, PyQt itself), not even inside a function: checked on the source, so a lazy import cannot hide.
- Each core module also imports for real in a fresh Python where `qgis` and `PyQt5`/`PyQt6` cannot be
  imported, and, in `core/`, `encoder/` and `envs/` (which do not declare GDAL's bindings), `osgeo` neither.
  There `osgeo` may only be tried: imported inside `try: ... except ImportError:` with a fallback.
- Edges point one way: `core/` imports neither stage; the two stages do not import each other; no core
  module imports the QGIS layer (`ui/`), the plugin or the command line.
- Size: no module over 400 lines and no function over 50 outside tests (the house rule).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE_PACKAGES = ("core", "encoder", "interactive", "envs")
#: What each core package may import of QuickSAM's own packages.
ALLOWED = {"core": {"core"}, "encoder": {"core", "encoder"}, "interactive": {"core", "interactive"},
           "envs": {"core", "envs"}}
QGIS_MODULES = ("qgis", "PyQt5", "PyQt6", "sip")
#: Packages whose modules run where GDAL's Python bindings may be missing (the headless encoder).
WITHOUT_OSGEO = ("core", "encoder", "envs")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def package_modules(package: str) -> List[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["quicksam", *parts])


def _tried_imports(tree: ast.AST) -> set:
    """Import nodes inside a `try:` body whose handlers catch ImportError (an optional dependency)."""
    tried = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            tried.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return tried


def imported_modules(path: Path) -> Iterator[Tuple[int, str, bool]]:
    """(line, absolute module, tried) of every import in `path`, at any depth (relative ones resolved);
    `tried` when the import sits in a `try` that falls back on ImportError."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    tried = _tried_imports(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, id(node) in tried
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            yield node.lineno, target, id(node) in tried
            if node.level and not node.module:  # `from .. import settings`: the names are modules
                for alias in node.names:
                    yield node.lineno, f"{target}.{alias.name}", id(node) in tried


def boundary_violations(package: str) -> List[str]:
    problems = []
    for path in package_modules(package):
        where = path.relative_to(ROOT)
        for line, target, tried in imported_modules(path):
            top = target.split(".")[0]
            if top in QGIS_MODULES:
                problems.append(f"{where}:{line} imports {target} (QGIS belongs in ui/)")
            elif top == "quicksam" and target != "quicksam":
                own = target.split(".")[1]
                if own not in ALLOWED[package]:
                    problems.append(f"{where}:{line} imports {target} ({package}/ may import only "
                                    f"{', '.join(sorted(ALLOWED[package]))})")
            elif top == "osgeo" and package in WITHOUT_OSGEO and not tried:
                problems.append(f"{where}:{line} imports {target} ({package}/ runs without GDAL's bindings)")
    return problems


@pytest.mark.parametrize("package", CORE_PACKAGES)
def test_core_packages_import_no_qgis_and_only_allowed_packages(package):
    assert boundary_violations(package) == []


def test_the_check_sees_a_lazy_qgis_import(tmp_path, monkeypatch):
    """The source check finds an import hidden in a function (the kind the old tree had)."""
    fake = tmp_path / "interactive"
    fake.mkdir()
    (fake / "lazy.py").write_text("def f():\n    from qgis.core import QgsProject\n    from ..ui import settings\n")
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "gdal.py").write_text("def f():\n    from osgeo import gdal\n\n\ndef g():\n    try:\n"
                                               "        from osgeo import osr\n    except ImportError:\n"
                                               "        return None\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    problems = boundary_violations("interactive")
    assert len(problems) == 2
    assert "qgis.core" in problems[0] and "quicksam.ui" in problems[1]
    assert boundary_violations("core") == ["core/gdal.py:2 imports osgeo (core/ runs without GDAL's bindings)"]


_IMPORT_BLOCKED = r"""
import importlib, importlib.abc, json, sys
blocked = tuple(json.loads(sys.argv[1]))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
failures = {}
for name in json.loads(sys.argv[2]):
    try:
        importlib.import_module(name)
    except Exception as exc:
        failures[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failures))
"""


def import_with_blocked(modules: List[str], blocked: Tuple[str, ...]) -> Dict[str, str]:
    result = subprocess.run([sys.executable, "-c", _IMPORT_BLOCKED, json.dumps(blocked), json.dumps(modules)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", CORE_PACKAGES)
def test_core_modules_import_with_qgis_blocked(package):
    blocked = QGIS_MODULES + (("osgeo",) if package in WITHOUT_OSGEO else ())
    modules = [module_name(path) for path in package_modules(package)]
    assert import_with_blocked(modules, blocked) == {}


def test_blocking_works():
    """The blocker really blocks: a QGIS-layer module fails to import under it."""
    failures = import_with_blocked(["quicksam.ui.settings"], QGIS_MODULES)
    assert "blocked" in failures["quicksam.ui.settings"]


def code_files() -> List[Path]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in listed.stdout.split() if not name.startswith("tests/")]


def test_no_module_over_400_lines_and_no_function_over_50():
    too_long = []
    for path in code_files():
        source = path.read_text(encoding="utf-8")
        where = path.relative_to(ROOT)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{where}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{where}:{node.lineno} {node.name}: {length} lines")
    assert too_long == []


def test_the_architecture_doc_names_every_module():
    """docs/architecture.md matches the tree: each module of the layers is named in it."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = [path for package in (*CORE_PACKAGES, "ui", "cli") for path in package_modules(package)
               if path.name not in ("__init__.py", "__main__.py")]
    assert len(modules) > 40
    missing = [str(path.relative_to(ROOT)) for path in modules
               if f"`{path.stem}`" not in doc and f"{path.stem}.py" not in doc and f"{path.stem}/" not in doc]
    assert missing == []


def test_one_logger_and_one_translation_helper():
    """Every module logs through core/logger.py's LOGGER ("quicksam") and translates through ui/i18n.tr."""
    strays = []
    for path in code_files():
        where = str(path.relative_to(ROOT))
        source = path.read_text(encoding="utf-8")
        if "getLogger(" in source and where != "core/logger.py" and not where.startswith(("bench/", "tools/")):
            strays.append(f"{where}: its own logger")
        if "QCoreApplication.translate(" in source and where != "ui/i18n.py":
            strays.append(f"{where}: its own translation helper")
    assert strays == []
