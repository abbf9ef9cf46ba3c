"""The Set-up dialog (QuickSAM > Set up…): what is installed, Install / Repair, Choose existing Python…,
Remove all, Show log. The work runs in a SetupTask; this class only shows state and forwards intent."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from qgis.core import QgsApplication
from qgis.PyQt import uic
from qgis.PyQt.QtCore import QTimer, pyqtSignal
from qgis.PyQt.QtGui import QTextCursor
from qgis.PyQt.QtWidgets import QDialog, QFileDialog, QMessageBox, QPlainTextEdit, QVBoxLayout, QWidget

from ...envs.locations import Locations
from ...envs.runtime import Activation
from ...envs.setup import SetupRequest, SetupResult
from ...envs.status import collect_status, describe, log_path, remove_all, start_log
from .. import settings
from ..i18n import tr
from .context import activate_runtime, deactivate_runtime, qgis_locations, setup_request
from .task import SetupTask

UI_PATH = Path(__file__).resolve().parent / "setup_dialog.ui"
FORM_CLASS, _ = uic.loadUiType(str(UI_PATH))
DIALOG_OBJECT_NAME = "QuickSamSetupDialog"
#: How often the dialog shows the tool's latest output line while a task runs, in milliseconds.
LINE_REFRESH_MS = 500
LOG_TAIL_CHARS = 200_000



class SetupDialog(QDialog, FORM_CLASS):
    """One per plugin; kept while QGIS runs so that a set-up can go on while it is closed.

    `setupFinished`: a set-up ended (well or not) and what it made usable is active (the Segment dock re-checks).
    """

    setupFinished = pyqtSignal()  # noqa: N815 (Qt naming)

    def __init__(self, parent: Optional[QWidget] = None, locations: Optional[Locations] = None) -> None:
        super().__init__(parent)
        self.setupUi(self)
        self.setObjectName(DIALOG_OBJECT_NAME)
        self.locations = locations or qgis_locations()
        self.task: Optional[SetupTask] = None
        self._line_timer = QTimer(self)
        self._line_timer.setInterval(LINE_REFRESH_MS)
        self._line_timer.timeout.connect(self._show_last_line)
        self.installButton.clicked.connect(self.install)
        self.chooseButton.clicked.connect(self.choose_python)
        self.cancelButton.clicked.connect(self.cancel)
        self.removeButton.clicked.connect(self.remove_everything)
        self.logButton.clicked.connect(self.show_log)
        self.closeButton.clicked.connect(self.close)
        self.refresh_status()

    # -- state --------------------------------------------------------------------------------------

    def status_lines(self) -> list:
        lines = describe(collect_status(self.locations))
        spec = importlib.util.find_spec("onnxruntime")
        lines.insert(1, tr("ONNX Runtime in this QGIS: {where}").format(
            where=spec.origin if spec is not None else tr("cannot be imported (segmenting needs it)")))
        python = settings.encoder_python()
        lines.append(tr("The encoder runs with: {python}").format(python=python or tr("no Python found")))
        if settings.PYTHON_EXECUTABLE.value().strip():
            lines.append(tr("(chosen in the setting quicksam/python_executable, which comes before the set-up's)"))
        return lines

    def refresh_status(self) -> None:
        self.statusView.setPlainText("\n".join(self.status_lines()))

    def _set_running(self, running: bool) -> None:
        for button in (self.installButton, self.chooseButton, self.removeButton):
            button.setEnabled(not running)
        self.cancelButton.setEnabled(running)
        if running:
            self._line_timer.start()
        else:
            self._line_timer.stop()

    def _show_last_line(self) -> None:
        if self.task is not None and self.task.last_line():
            self.statusView.appendPlainText(self.task.last_line()[:200])

    # -- intents ------------------------------------------------------------------------------------

    def install(self) -> None:
        """Install or repair what is ticked."""
        self.start(setup_request(self.runtimeCheck.isChecked(), self.encoderCheck.isChecked(),
                                 locations=self.locations))

    def choose_python(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, tr("Choose the encoder's Python (with torch and sam2)"))
        if path:
            self.start(setup_request(runtime=False, encoder=True, existing_python=path, locations=self.locations))

    def start(self, request: SetupRequest) -> Optional[SetupTask]:
        if self.task is not None:
            return None
        if not (request.runtime or request.encoder):
            self.messageLabel.setText(tr("Tick what to install."))
            return None
        self.task = SetupTask(request, start_log(self.locations), tr("QuickSAM set-up"))
        self.task.step.connect(self._on_step)
        self.task.done.connect(self._on_done)
        self.progressBar.setValue(0)
        self.task.progressChanged.connect(self._on_progress)
        self.messageLabel.setText(tr("Setting up… (you may close this window; the set-up goes on)"))
        self._set_running(True)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _on_progress(self, value: float) -> None:
        self.progressBar.setValue(int(value))

    def _on_step(self, text: str) -> None:
        self.statusView.appendPlainText(text)

    def _on_done(self, ok: bool, error: str) -> None:
        task, self.task = self.task, None
        self._set_running(False)
        if ok and task is not None and task.result is not None:
            self.messageLabel.setText(self._record(task.result))
        else:
            self.messageLabel.setText(error)
        self.refresh_status()
        self.setupFinished.emit()

    def _record(self, result: SetupResult) -> str:
        """Record the encoder's Python, make ONNX Runtime importable; the message to show."""
        parts = []
        if result.encoder_python:
            settings.SETUP_ENCODER_PYTHON.set_value(result.encoder_python)
            check = result.encoder
            parts.append(tr("The encoder will use torch {torch} on {device}.").format(
                torch=check.torch, device=check.device + (f" ({check.device_name})" if check.device_name else "")))
        if result.runtime_note:
            parts.append(result.runtime_note)
        elif result.runtime is not None:
            state = activate_runtime(self.locations)
            parts.append(tr("ONNX Runtime {version} is ready: you can segment now.").format(
                version=result.runtime.onnxruntime) if state is Activation.ACTIVE else
                tr("ONNX Runtime {version} is installed: restart QGIS to use it.").format(
                    version=result.runtime.onnxruntime))
        return " ".join(parts) or tr("Done.")

    def remove_everything(self) -> None:
        answer = QMessageBox.question(self, tr("Remove all"), tr(
            "Remove ONNX Runtime from your QGIS profile and the encoder environment? Feature stores, models "
            "and settings are kept."))
        if answer != QMessageBox.StandardButton.Yes:
            return
        self.messageLabel.setText(self.remove_all_now())

    def remove_all_now(self) -> str:
        deactivate_runtime(self.locations)
        recorded = settings.SETUP_ENCODER_PYTHON.value()
        problems = remove_all(self.locations)
        if recorded and not Path(recorded).exists():
            settings.SETUP_ENCODER_PYTHON.reset()
        self.refresh_status()
        return " ".join(problems) or tr("Removed. ONNX Runtime stays loaded until QGIS restarts.")

    def show_log(self) -> None:
        path = log_path(self.locations)
        text = path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:] if path.exists() else \
            tr("No set-up has run yet.")
        viewer = QDialog(self)
        viewer.setWindowTitle(str(path))
        viewer.resize(900, 600)
        view = QPlainTextEdit(viewer)
        view.setReadOnly(True)
        view.setPlainText(text)
        view.moveCursor(QTextCursor.MoveOperation.End)
        layout = QVBoxLayout(viewer)
        layout.addWidget(view)
        viewer.show()
        self.log_viewer = viewer
