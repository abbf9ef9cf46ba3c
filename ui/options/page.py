"""QuickSAM's page in Settings > Options: the encoder's Python (with a Check that runs the set-up's own
verification), the folder for default feature stores, and the Segment dock's hover preview.

The page reads and writes only through `ui/settings.py`; `apply()` is called by QGIS when the user
presses OK in the Options dialog. The Check runs in a SetupTask (a QgsTask), never on the GUI thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from qgis.core import QgsApplication
from qgis.gui import QgsOptionsPageWidget, QgsOptionsWidgetFactory
from qgis.PyQt import uic
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QFileDialog, QWidget

from ...envs.locations import Locations
from ...envs.status import start_log
from .. import ICONS_DIR, settings
from ..i18n import tr
from ..setup.context import qgis_locations, setup_request
from ..setup.task import SetupTask

UI_PATH = Path(__file__).resolve().parent / "options_page.ui"
FORM_CLASS, _ = uic.loadUiType(str(UI_PATH))
PAGE_OBJECT_NAME = "QuickSamOptionsPage"


def effective_python_text() -> str:
    """Which Python the encoder will run with, and which setting or variable chose it (one line)."""
    python = settings.encoder_python()
    if settings.PYTHON_EXECUTABLE.value().strip():
        source = tr("the setting {key}, which comes first").format(key=settings.PYTHON_EXECUTABLE.full_key)
    elif python and python == settings.SETUP_ENCODER_PYTHON.value().strip():
        source = tr("this page or the set-up")
    else:
        source = tr("found automatically")
    return tr("The encoder runs with: {python} ({source}).").format(python=python or tr("no Python found"),
                                                                    source=source)


class QuickSamOptionsPage(QgsOptionsPageWidget, FORM_CLASS):
    """The widget QGIS puts in the Options dialog; it shows the settings and writes them in `apply()`."""

    def __init__(self, parent: Optional[QWidget] = None, open_setup: Optional[Callable[[], None]] = None,
                 locations: Optional[Locations] = None) -> None:
        super().__init__(parent)
        self.setupUi(self)
        self.setObjectName(PAGE_OBJECT_NAME)
        self.open_setup = open_setup
        self.locations = locations  #: where the Check logs (None: the running QGIS profile's)
        self.check_task: Optional[SetupTask] = None
        self.browsePythonButton.clicked.connect(self.browse_python)
        self.browseStoreFolderButton.clicked.connect(self.browse_store_folder)
        self.checkButton.clicked.connect(self.check_python)
        self.setupButton.clicked.connect(self._open_setup)
        self.setupButton.setEnabled(open_setup is not None)
        self.hoverCheck.toggled.connect(self.hoverDelaySpin.setEnabled)
        self.load()

    def load(self) -> None:
        """Show the current settings."""
        self.pythonEdit.setText(settings.SETUP_ENCODER_PYTHON.value())
        self.storeFolderEdit.setText(settings.STORE_FOLDER.value())
        self.hoverCheck.setChecked(settings.HOVER_PREVIEW.value())
        self.hoverDelaySpin.setValue(settings.HOVER_DELAY_MS.value())
        self.hoverDelaySpin.setEnabled(self.hoverCheck.isChecked())
        self.effectiveLabel.setText(effective_python_text())

    def apply(self) -> None:
        """Write every setting of the page (so that each key is also in the advanced settings editor).

        A Python chosen here replaces an older `python_executable` override: the newest choice wins.
        """
        python = self.pythonEdit.text().strip()
        if python != settings.SETUP_ENCODER_PYTHON.value().strip() and settings.PYTHON_EXECUTABLE.value().strip():
            settings.PYTHON_EXECUTABLE.reset()
        settings.SETUP_ENCODER_PYTHON.set_value(python)
        settings.STORE_FOLDER.set_value(self.storeFolderEdit.text().strip())
        settings.HOVER_PREVIEW.set_value(self.hoverCheck.isChecked())
        settings.HOVER_DELAY_MS.set_value(self.hoverDelaySpin.value())
        self.effectiveLabel.setText(effective_python_text())

    # -- intents ------------------------------------------------------------------------------------

    def browse_python(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, tr("Choose the encoder's Python (with PyTorch and SAM 2)"),
                                              self.pythonEdit.text())
        if path:
            self.pythonEdit.setText(path)

    def browse_store_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, tr("Choose the folder for feature stores"),
                                                self.storeFolderEdit.text())
        if path:
            self.storeFolderEdit.setText(path)

    def check_python(self) -> Optional[SetupTask]:
        """Verify the Python in the field the way the set-up does (a QgsTask); the answer goes to checkLabel."""
        python = self.pythonEdit.text().strip()
        if self.check_task is not None:
            return None
        if not python:
            self.checkLabel.setText(tr("Choose a Python first (or press Set up… to build an environment)."))
            return None
        locations = self.locations or qgis_locations()
        request = setup_request(runtime=False, encoder=True, existing_python=python, locations=locations)
        self.check_task = SetupTask(request, start_log(locations), tr("QuickSAM: checking the encoder's Python"))
        self.check_task.done.connect(self._on_checked)
        self.checkButton.setEnabled(False)
        self.checkLabel.setText(tr("Checking {python}…").format(python=python))
        QgsApplication.taskManager().addTask(self.check_task)
        return self.check_task

    def _on_checked(self, ok: bool, error: str) -> None:
        task, self.check_task = self.check_task, None
        self.checkButton.setEnabled(True)
        check = task.result.encoder if ok and task is not None and task.result is not None else None
        if check is None:
            self.checkLabel.setText(error)
            return
        device = check.device + (f" ({check.device_name})" if check.device_name else "")
        self.checkLabel.setText(tr("It works: Python {version}, PyTorch {torch}, the encoder will use {device}. "
                                   "Press OK to keep it.").format(version=check.version, torch=check.torch,
                                                                  device=device))

    def _open_setup(self) -> None:
        if self.open_setup is not None:
            self.open_setup()


class QuickSamOptionsFactory(QgsOptionsWidgetFactory):
    """Gives QGIS's Options dialog the QuickSAM page (registered in initGui, unregistered in unload)."""

    def __init__(self, open_setup: Optional[Callable[[], None]] = None) -> None:
        super().__init__(tr("QuickSAM"), QIcon(str(ICONS_DIR / "quicksam.svg")))
        self.open_setup = open_setup

    def icon(self) -> QIcon:
        return QIcon(str(ICONS_DIR / "quicksam.svg"))

    def createWidget(self, parent: Optional[QWidget] = None) -> QuickSamOptionsPage:  # noqa: N802 (QGIS naming)
        return QuickSamOptionsPage(parent, self.open_setup)
