"""Qt6 check: the constructs that stop Python code from running on QGIS 4 (Qt6, PyQt6) while it must
keep running on QGIS 3.22 (PyQt5 5.15).

    python tools/qt6_check.py [PATH ...]        (default: every .py file of the repository)

Prints one line per finding, `path:line:col: CODE message`, and exits 1 if there is any. It follows
the constructs QGIS's own migration script (scripts/pyqt5_to_pyqt6/pyqt5_to_pyqt6.py in QGIS) fixes or
warns about, in its QGIS-3-compatible mode:

  QT601  a Qt enum value reached through its class, not its enum (`Qt.AlignLeft`): PyQt6 knows only
         `Qt.AlignmentFlag.AlignLeft`, which PyQt5 5.15 accepts too.
  QT602  the same for a QGIS class's enum (`QgsProcessing.TypeRaster`), reported where a scoped
         spelling resolves on the QGIS running the check: `Class.Enum.Member`, else the enum's own
         (`Qgis.TransformDirection.Reverse` for `QgsCoordinateTransform.ReverseTransform`). QGIS 4
         keeps unscoped aliases for its own enums, so these are consistency rather than breakage.
         Take the spellings from a run on QGIS 3.22, the oldest supported: QGIS 3.40 also accepts
         them, while some it suggests itself (`Qgis.GeometryType.Polygon`) do not exist on 3.22.
  QT603  PyQt5/PyQt6/sip imported directly instead of through `qgis.PyQt`.
  QT604  `exec_()` (gone in PyQt6): `exec()`.
  QT605  QRegExp (gone in Qt6): QRegularExpression.
  QT606  `QVariant.Type.X` (no QVariant.Type in PyQt6; QGIS 4 patches `QVariant.X` back in) and
         `QVariant()` / `QVariant(QVariant.X)` as a null value (QGIS's `NULL`).
  QT607  QAction, QActionGroup or QShortcut from `qgis.PyQt.QtGui`: not there on QGIS < 3.30; import
         them from `qgis.PyQt.QtWidgets`, which QGIS's Qt6 builds keep re-exporting.
  QT608  enum values removed in Qt6 (`Qt.MidButton`, `QPainter.HighQualityAntialiasing`, ...).
  QT609  other API removed in Qt6: `qApp`, `QDesktopWidget`/`desktop()`, `QFontMetrics.width()`,
         `activated[str]`, compiled resources (`resources_rc`), `qgis.PyQt.Qt`, `QDateTime` from 8 ints.

Whether a name is an enum value is asked of the PyQt5 and QGIS the check runs with (it imports
`qgis.PyQt` and `qgis.core`/`qgis.gui`/`qgis.analysis`), so it needs a QGIS Python, as the tests do.
"""

from __future__ import annotations

import ast
import enum
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

ROOT = Path(__file__).resolve().parent.parent
SKIPPED_FOLDERS = {".venv", "venv", "build", "dist", "__pycache__", ".git", ".stamps", ".qgis-settings"}
QT_MODULE_PREFIXES = ("qgis.PyQt", "PyQt5", "PyQt6")
QGIS_MODULES = ("qgis.core", "qgis.gui", "qgis.analysis")
REMOVED_ENUMS = {("Qt", "MidButton"): "Qt.MouseButton.MiddleButton",
                 ("Qt", "TextColorRole"): "Qt.ItemDataRole.ForegroundRole",
                 ("Qt", "BackgroundColorRole"): "Qt.ItemDataRole.BackgroundRole",
                 ("QPainter", "HighQualityAntialiasing"): "QPainter.RenderHint.Antialiasing"}
MOVED_TO_QTGUI = {"QAction", "QActionGroup", "QShortcut"}
_MISSING = object()


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    col: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.code} {self.message}"


def is_enum_type(obj: Any) -> bool:
    """A PyQt5/sip enum type (metaclass `sip.enumtype`) or a Python enum (PyQt6, QGIS's scoped enums)."""
    if not isinstance(obj, type):
        return False
    return type(obj).__name__ == "enumtype" or issubclass(obj, enum.Enum)


def is_enum_value(obj: Any) -> bool:
    return not isinstance(obj, type) and is_enum_type(type(obj))


def enum_name_on(owner: type, member: str, value: Any) -> Optional[str]:
    """The name under which `owner` exposes the enum of `value` such that `owner.<name>.<member>`
    resolves here (QGIS 3.40 aliases moved enums, e.g. QgsProcessing.SourceType); None if none does."""
    kind = type(value)
    candidates = [kind.__name__] + [name for name in dir(owner) if name != kind.__name__]
    for name in candidates:
        enum_type = getattr(owner, name, None)
        if is_enum_type(enum_type) and getattr(enum_type, member, _MISSING) is value:
            return name
        if enum_type is kind and getattr(enum_type, member, _MISSING) is not _MISSING:
            return name
    return None


def canonical_spelling(value: Any) -> Optional[str]:
    """`Qgis.TransformDirection.Reverse` for a value of a Python enum (QGIS's scoped enums), if that
    spelling resolves here from the enum's own module; None otherwise."""
    if not isinstance(value, enum.Enum):
        return None
    kind = type(value)
    found: Any = sys.modules.get(kind.__module__, _MISSING)
    for part in [*kind.__qualname__.split("."), value.name]:
        found = getattr(found, part, _MISSING)
    return f"{kind.__qualname__}.{value.name}" if found is value else None


class Imports:
    """What the names of one file refer to, for the names bound by imports from Qt and QGIS modules."""

    def __init__(self, tree: ast.AST) -> None:
        self.objects: Dict[str, Any] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                self._from_import(node.module, node.names)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(QT_MODULE_PREFIXES + QGIS_MODULES) and alias.asname:
                        self.objects[alias.asname] = _import(alias.name)

    def _from_import(self, module_name: str, names: List[ast.alias]) -> None:
        if not module_name.startswith(QT_MODULE_PREFIXES + QGIS_MODULES + ("qgis",)):
            return
        module = _import(module_name)
        for alias in names:
            value = getattr(module, alias.name, _MISSING) if module is not None else _MISSING
            if value is _MISSING:
                value = _import(f"{module_name}.{alias.name}")
            if value is not None and value is not _MISSING:
                self.objects[alias.asname or alias.name] = value

    def resolve(self, node: ast.AST) -> Any:
        """The object a Name/Attribute chain refers to, or _MISSING."""
        if isinstance(node, ast.Name):
            return self.objects.get(node.id, _MISSING)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return _MISSING if base is _MISSING else getattr(base, node.attr, _MISSING)
        return _MISSING


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "..."


def is_qt_class(obj: Any) -> bool:
    return isinstance(obj, type) and getattr(obj, "__module__", "").startswith(("PyQt5", "PyQt6"))


class Checker(ast.NodeVisitor):
    """Finds the constructs listed in the module docstring in one parsed file."""

    def __init__(self, path: str, tree: ast.AST) -> None:
        self.path = path
        self.imports = Imports(tree)
        self.findings: List[Finding] = []

    def add(self, node: ast.AST, code: str, message: str) -> None:
        self.findings.append(Finding(self.path, node.lineno, node.col_offset + 1, code, message))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] in ("PyQt5", "PyQt6", "sip"):
                self.add(node, "QT603", f"import {alias.name}: import it from qgis.PyQt")
            if alias.name.endswith("resources_rc"):
                self.add(node, "QT609", "compiled resources are gone in Qt6: load icons and .ui files by path")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        imported = {alias.name for alias in node.names}
        if module.split(".")[0] in ("PyQt5", "PyQt6", "sip"):
            self.add(node, "QT603", f"from {module} import ...: import it from qgis.PyQt")
        if module == "qgis.PyQt.Qt":
            self.add(node, "QT609", "qgis.PyQt.Qt is gone in Qt6: import Qt from qgis.PyQt.QtCore")
        if module.endswith("QtGui") and imported & MOVED_TO_QTGUI:
            names = ", ".join(sorted(imported & MOVED_TO_QTGUI))
            self.add(node, "QT607", f"{names} from QtGui is not there on QGIS < 3.30: import from qgis.PyQt.QtWidgets")
        if "QRegExp" in imported:
            self.add(node, "QT605", "QRegExp is gone in Qt6: use QRegularExpression")
        if "qApp" in imported:
            self.add(node, "QT609", "qApp is gone in PyQt6: use QApplication.instance()")
        if "resources_rc" in imported or module.endswith("resources_rc"):
            self.add(node, "QT609", "compiled resources are gone in Qt6: load icons and .ui files by path")
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name == "exec_":
            self.add(node, "QT604", "def exec_: name it exec (exec_ is gone in PyQt6)")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "exec_":
            self.add(node, "QT604", f"{dotted(func)}(): use exec() (exec_ is gone in PyQt6)")
        if isinstance(func, ast.Attribute) and func.attr == "desktop" and not node.args:
            self.add(node, "QT609", "QApplication.desktop() (QDesktopWidget) is gone in Qt6: use QScreen")
        if isinstance(func, ast.Attribute) and func.attr == "width" and self._is_font_metrics(func.value):
            self.add(node, "QT609", "QFontMetrics.width() is gone in Qt6: use horizontalAdvance()")
        if isinstance(func, ast.Name) and func.id == "QVariant" and self._is_null_variant(node):
            self.add(node, "QT606", "a null QVariant: use NULL from qgis.core (None on Qt6 builds)")
        if isinstance(func, ast.Name) and func.id == "QDateTime" and len(node.args) == 8:
            self.add(node, "QT609", "QDateTime from 8 numbers is gone in Qt6: QDateTime(QDate(...), QTime(...))")
        self.generic_visit(node)

    def _is_font_metrics(self, node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        return ((isinstance(node.func, ast.Attribute) and node.func.attr == "fontMetrics")
                or (isinstance(node.func, ast.Name) and node.func.id in ("QFontMetrics", "QFontMetricsF")))

    @staticmethod
    def _is_null_variant(node: ast.Call) -> bool:
        if not node.args and not node.keywords:
            return True
        arg = node.args[0] if len(node.args) == 1 else None
        return isinstance(arg, ast.Attribute) and dotted(arg.value) == "QVariant"

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if (isinstance(node.value, ast.Attribute) and node.value.attr == "activated"
                and isinstance(node.slice, ast.Name) and node.slice.id == "str"):
            self.add(node, "QT609", "activated[str] is gone in Qt6: use textActivated")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in ("QRegExp", "QDesktopWidget") and isinstance(node.ctx, ast.Load):
            self.add(node, "QT605" if node.id == "QRegExp" else "QT609", f"{node.id} is gone in Qt6")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._check_enum_access(node)
        self.generic_visit(node)

    def _check_enum_access(self, node: ast.Attribute) -> None:
        base_name = dotted(node.value).split(".")[-1]
        if (base_name, node.attr) in REMOVED_ENUMS:
            self.add(node, "QT608", f"{dotted(node)} is gone in Qt6: use {REMOVED_ENUMS[(base_name, node.attr)]}")
            return
        owner = self.imports.resolve(node.value)
        if owner is _MISSING or not isinstance(owner, type):
            return
        if owner.__name__ == "QVariant":
            if node.attr == "Type":
                self.add(node, "QT606", "QVariant.Type is gone in PyQt6: write QVariant.X (QGIS 4 keeps those) "
                         "or QMetaType.Type.X")
            return
        if is_enum_type(owner):
            return  # already scoped: Enum.Member
        value = getattr(owner, node.attr, _MISSING)
        if value is _MISSING or not is_enum_value(value):
            return
        self._report_unscoped(node, owner, value)

    def _report_unscoped(self, node: ast.Attribute, owner: type, value: Any) -> None:
        scoped = enum_name_on(owner, node.attr, value)
        spelling = f"{dotted(node.value)}.{scoped}.{node.attr}" if scoped else canonical_spelling(value)
        written = dotted(node)
        if is_qt_class(owner):
            self.add(node, "QT601", f"{written}: write {spelling}" if spelling
                     else f"{written}: unscoped Qt enum with no scoped spelling in this PyQt")
        elif spelling:
            self.add(node, "QT602", f"{written}: write {spelling}")


def check_source(source: str, path: str = "<source>") -> List[Finding]:
    """The findings in one file's source text (a syntax error is itself a finding)."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as error:
        return [Finding(path, error.lineno or 0, error.offset or 0, "QT600", f"cannot parse: {error.msg}")]
    checker = Checker(path, tree)
    checker.visit(tree)
    return sorted(checker.findings, key=lambda f: (f.line, f.col, f.code))


def python_files(paths: List[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            yield path
            continue
        for candidate in sorted(path.rglob("*.py")):
            parts = candidate.relative_to(path).parts
            if not any(part in SKIPPED_FOLDERS or part.startswith(".") for part in parts[:-1]):
                yield candidate


def check_paths(paths: List[Path]) -> List[Finding]:
    findings: List[Finding] = []
    for path in python_files(paths):
        shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        findings.extend(check_source(path.read_text(encoding="utf-8"), str(shown)))
    return findings


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    findings = check_paths([Path(arg) for arg in args] or [ROOT])
    for finding in findings:
        sys.stdout.write(f"{finding}\n")
    if findings:
        sys.stdout.write(f"qt6_check: {len(findings)} finding(s)\n")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
