"""QuickSAM's page in Settings > Options, in real QGIS (pytest-qgis): registered by initGui and
unregistered by unload, shows and writes the settings of ui/settings.py as real QgsSettings keys, checks
the encoder's Python with the set-up's own verification (a real subprocess), opens the set-up."""

from __future__ import annotations

import re
import sys
import time
from unittest import mock

import pytest
from qgis.core import QgsSettings
from qgis.PyQt.QtCore import QCoreApplication

import quicksam
from quicksam.envs.locations import Locations
from quicksam.ui import settings
from quicksam.ui.options.page import PAGE_OBJECT_NAME, QuickSamOptionsFactory, QuickSamOptionsPage

PAGE_SETTINGS = (settings.SETUP_ENCODER_PYTHON, settings.PYTHON_EXECUTABLE, settings.STORE_FOLDER,
                 settings.HOVER_PREVIEW, settings.HOVER_DELAY_MS)


@pytest.fixture
def clean_settings(qgis_app, monkeypatch):
    monkeypatch.delenv(settings.PYTHON_ENV_VAR, raising=False)
    for setting in PAGE_SETTINGS:
        setting.reset()
    yield
    for setting in PAGE_SETTINGS:
        setting.reset()


@pytest.fixture
def page(clean_settings, tmp_path):
    locations = Locations(tmp_path / "profiles" / "default", tmp_path / "data", tuple(sys.version_info[:2]))
    widget = QuickSamOptionsPage(None, locations=locations)
    yield widget
    wait_for_check(widget)
    widget.deleteLater()


def wait_for_check(page: QuickSamOptionsPage, limit: float = 300.0) -> None:
    """Let the task manager run the Check and deliver its signal (the limit only stops a hang)."""
    deadline = time.monotonic() + limit
    while page.check_task is not None:
        QCoreApplication.processEvents()
        time.sleep(0.02)
        assert time.monotonic() < deadline, "the check never finished"


def test_init_gui_registers_the_options_page_and_unload_unregisters_it(qgis_app, qgis_iface):
    with mock.patch.object(qgis_iface, "registerOptionsWidgetFactory", create=True) as register, \
            mock.patch.object(qgis_iface, "unregisterOptionsWidgetFactory", create=True) as unregister:
        instance = quicksam.classFactory(qgis_iface)
        instance.initGui()
        [(factory,)] = [call.args for call in register.call_args_list]
        assert isinstance(factory, QuickSamOptionsFactory) and factory.title() == "QuickSAM"
        assert not factory.icon().isNull()
        page = factory.createWidget(None)
        assert page.objectName() == PAGE_OBJECT_NAME
        page.setupButton.click()  # the page's Set up… opens the plugin's set-up dialog
        assert instance.setup_dialog is not None and instance.setup_dialog.isVisible()
        page.deleteLater()
        instance.unload()
        assert [call.args for call in unregister.call_args_list] == [(factory,)]
        assert instance.options_factory is None


def test_the_page_shows_the_settings_and_apply_writes_them_as_quicksam_keys(page, tmp_path):
    assert page.pythonEdit.text() == "" and page.storeFolderEdit.text() == ""
    assert page.hoverCheck.isChecked() and page.hoverDelaySpin.value() == 200
    page.pythonEdit.setText(sys.executable)
    page.storeFolderEdit.setText(str(tmp_path / "stores"))
    page.hoverCheck.setChecked(False)
    page.hoverDelaySpin.setValue(350)
    page.apply()
    assert settings.SETUP_ENCODER_PYTHON.value() == sys.executable
    assert settings.encoder_python() == sys.executable
    assert settings.STORE_FOLDER.value() == str(tmp_path / "stores")
    assert settings.HOVER_PREVIEW.value() is False and settings.HOVER_DELAY_MS.value() == 350
    assert sys.executable in page.effectiveLabel.text()
    # Real keys under quicksam/, which QGIS's advanced settings editor lists (it shows QgsSettings' keys).
    keys = set(QgsSettings().allKeys())
    assert {"quicksam/setup/encoder_python", "quicksam/encode/store_folder", "quicksam/segment/hover_preview",
            "quicksam/segment/hover_delay_ms"} <= keys
    assert not page.hoverDelaySpin.isEnabled()  # no delay to set while the preview is off

    again = QuickSamOptionsPage(None)
    assert again.pythonEdit.text() == sys.executable and not again.hoverCheck.isChecked()
    assert again.hoverDelaySpin.value() == 350 and again.storeFolderEdit.text() == str(tmp_path / "stores")
    assert not again.setupButton.isEnabled() and not page.setupButton.isEnabled()  # no plugin to open it
    again.deleteLater()


def test_a_python_chosen_on_the_page_replaces_an_older_override(page):
    settings.PYTHON_EXECUTABLE.set_value("/old/override/python")
    page.load()
    assert "quicksam/python_executable" in page.effectiveLabel.text()
    page.pythonEdit.setText(sys.executable)
    page.apply()
    assert settings.PYTHON_EXECUTABLE.value() == "" and settings.encoder_python() == sys.executable


def test_check_verifies_the_python_like_the_set_up_without_recording_it(page):
    """This venv has torch, sam2 and segment-anything: checked in a real subprocess by envs/ as the set-up does."""
    page.pythonEdit.setText(sys.executable)
    assert page.check_python() is not None and not page.checkButton.isEnabled()
    wait_for_check(page)
    text = page.checkLabel.text()
    assert re.match(r"It works: Python 3\.\d+\.\d+, PyTorch \S+, the encoder will use (cpu|cuda|mps)", text), text
    assert "set-up finished" in (page.locations.logs / "setup.log").read_text()  # logged where the set-up logs
    assert page.checkButton.isEnabled()
    assert settings.SETUP_ENCODER_PYTHON.value() == ""  # recorded only by apply (OK)


def test_check_of_a_missing_python_says_so_in_one_line(page, tmp_path):
    missing = str(tmp_path / "nowhere" / "python3")
    page.pythonEdit.setText(missing)
    page.check_python()
    wait_for_check(page)
    text = page.checkLabel.text()
    assert "cannot start the Python" in text and missing in text and "\n" not in text
    page.pythonEdit.setText("")
    assert page.check_python() is None and "Choose a Python first" in page.checkLabel.text()


def test_closing_the_options_while_a_check_runs_is_harmless(clean_settings, tmp_path):
    """QGIS deletes the page when the Options dialog closes; the Check's task still ends cleanly."""
    from qgis.core import QgsApplication
    from qgis.PyQt import sip
    from qgis.PyQt.QtCore import QEvent

    locations = Locations(tmp_path / "profiles" / "default", tmp_path / "data", tuple(sys.version_info[:2]))
    page = QuickSamOptionsPage(None, locations=locations)
    page.pythonEdit.setText(sys.executable)
    task = page.check_python()
    page.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    assert sip.isdeleted(page)
    deadline = time.monotonic() + 300
    while QgsApplication.taskManager().tasks():
        QCoreApplication.processEvents()
        time.sleep(0.02)
        assert time.monotonic() < deadline, "the check never finished"
    assert task is not None
