"""tools/qt6_check.py: the check that keeps the code runnable on QGIS 4 (Qt6) and QGIS 3.22 alike.

Its own small cases come first: each construct it must flag (with the spelling it proposes, which must
resolve here to the same value) and the Qt6-ready spellings it must let pass, so the tree-wide run
below cannot pass by finding nothing. Then the whole tree must be clean.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "qt6_check.py"

_spec = importlib.util.spec_from_file_location("qt6_check", SCRIPT)
qt6_check = importlib.util.module_from_spec(_spec)
sys.modules["qt6_check"] = qt6_check
_spec.loader.exec_module(qt6_check)

IMPORTS = """\
from qgis.core import Qgis, QgsCoordinateTransform, QgsProcessing, QgsProcessingParameterNumber, QgsWkbTypes
from qgis.PyQt import QtCore
from qgis.PyQt.QtCore import QEvent, QMetaType, Qt, QVariant, pyqtSignal
from qgis.PyQt.QtGui import QPainter
from qgis.PyQt.QtWidgets import QAction, QDialog, QMessageBox, QSizePolicy
"""

#: (source line, code it must raise, spelling the message must propose or None)
MUST_FLAG = [
    ("align = Qt.AlignLeft | Qt.AlignmentFlag.AlignTop", "QT601", "Qt.AlignmentFlag.AlignLeft"),
    ("policy = QSizePolicy.Expanding", "QT601", "QSizePolicy.Policy.Expanding"),
    ("answer = QMessageBox.Yes", "QT601", "QMessageBox.StandardButton.Yes"),
    ("kind = QEvent.MouseMove", "QT601", "QEvent.Type.MouseMove"),
    ("button = QtCore.Qt.LeftButton", "QT601", "QtCore.Qt.MouseButton.LeftButton"),
    ("accepted = QDialog.Accepted", "QT601", "QDialog.DialogCode.Accepted"),
    ("geometry = QgsWkbTypes.PolygonGeometry", "QT602", None),
    ("level = Qgis.Info", "QT602", "Qgis.MessageLevel.Info"),
    ("kind = QgsProcessing.TypeVectorPolygon", "QT602", "QgsProcessing.SourceType.TypeVectorPolygon"),
    ("number = QgsProcessingParameterNumber.Double", "QT602", "QgsProcessingParameterNumber.Type.Double"),
    ("direction = QgsCoordinateTransform.ReverseTransform", "QT602", None),
    ("from PyQt5.QtCore import QTimer", "QT603", None),
    ("import sip", "QT603", None),
    ("result = QDialog().exec_()", "QT604", None),
    ("class Dialog(QDialog):\n    def exec_(self):\n        return 0", "QT604", None),
    ("from qgis.PyQt.QtCore import QRegExp", "QT605", None),
    ("kind = QVariant.Type.Int", "QT606", None),
    ("null = QVariant()", "QT606", None),
    ("null = QVariant(QVariant.Int)", "QT606", None),
    ("from qgis.PyQt.QtGui import QAction as GuiAction", "QT607", None),
    ("button = Qt.MidButton", "QT608", None),
    ("hint = QPainter.HighQualityAntialiasing", "QT608", None),
    ("from qgis.PyQt.QtWidgets import qApp", "QT609", None),
    ("width = QDialog().fontMetrics().width('x')", "QT609", None),
    ("signal = combo.activated[str]", "QT609", None),
    ("from . import resources_rc", "QT609", None),
    ("from qgis.PyQt.Qt import Qt as OldQt", "QT609", None),
]

MUST_PASS = [
    "align = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop",
    "policy = QSizePolicy.Policy.Expanding",
    "answer = QMessageBox.StandardButton.Yes",
    "kind = QEvent.Type.MouseMove",
    "button = QtCore.Qt.MouseButton.LeftButton",
    "geometry = QgsWkbTypes.GeometryType.PolygonGeometry",
    "level = Qgis.MessageLevel.Info",
    "direction = Qgis.TransformDirection.Reverse",
    "kind = QVariant.Int  # QGIS's Qt6 builds patch QVariant's type names back in",
    "kind = QMetaType.Type.QString",
    "action = QAction('a')  # imported from QtWidgets: QGIS 3.22 and Qt6 builds alike",
    "changed = pyqtSignal(int)",
    "result = QDialog().exec()",
    "from qgis.PyQt import sip",
    "enum_type = Qt.AlignmentFlag",
    "flags_type = Qt.ItemFlags",
    "text = 'Qt.AlignLeft in a string'  # and Qt.AlignLeft in a comment",
    "value = self.LeftButton if False else None",
    "instance = QgsWkbTypes.displayString",
    "from qgis.PyQt.QtCore import QRegularExpression",
]


def findings_for(line: str) -> list:
    source = IMPORTS + line + "\n"
    return [f for f in qt6_check.check_source(source, "case.py") if f.line > IMPORTS.count("\n")]


def evaluate(expression: str):
    namespace: dict = {}
    exec(IMPORTS, namespace)  # noqa: S102 (the fixture's own import lines)
    return eval(expression, namespace)  # noqa: S307 (spellings the checker proposed for our fixture)


@pytest.mark.parametrize(("line", "code", "proposed"), MUST_FLAG, ids=[case[0] for case in MUST_FLAG])
def test_checker_flags(line, code, proposed):
    findings = findings_for(line)
    assert [finding.code for finding in findings] == [code], findings
    message = findings[0].message
    if code in ("QT601", "QT602"):
        written, spelling = message.split(": write ")
        assert evaluate(spelling) == evaluate(written) and type(evaluate(spelling)) is type(evaluate(written))
        if proposed:
            assert spelling == proposed


@pytest.mark.parametrize("line", MUST_PASS)
def test_checker_lets_qt6_ready_code_pass(line):
    assert findings_for(line) == []


def test_fixture_imports_are_clean():
    assert qt6_check.check_source(IMPORTS) == []


def test_command_line_reports_file_line_and_exit_status(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from qgis.PyQt.QtCore import Qt\n\nalign = Qt.AlignLeft\n")
    good = tmp_path / "good.py"
    good.write_text("from qgis.PyQt.QtCore import Qt\n\nalign = Qt.AlignmentFlag.AlignLeft\n")
    result = subprocess.run([sys.executable, str(SCRIPT), str(bad)], capture_output=True, text=True)
    assert result.returncode == 1
    assert f"{bad}:3:9: QT601 Qt.AlignLeft: write Qt.AlignmentFlag.AlignLeft" in result.stdout
    result = subprocess.run([sys.executable, str(SCRIPT), str(good)], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "")


def test_tree_is_qt6_clean():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
