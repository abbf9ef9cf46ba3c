"""QuickSAM > Set up… in real QGIS (pytest-qgis): the menu action, the dialog, its QgsTask (completes,
cancels leaving nothing in use, fails with one line), the recorded encoder Python, remove all."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtWidgets import QPlainTextEdit

import quicksam
from quicksam.envs.locations import Locations, staging_of
from quicksam.envs.setup import SetupRequest
from quicksam.plugin import SETUP_ACTION_OBJECT_NAME
from quicksam.ui import settings

QGIS_PREFIX, QGIS_EXECUTABLE = "/usr", "/usr/bin/qgis"  # this machine's QGIS (Debian packages)
VERSION = tuple(sys.version_info[:2])


@pytest.fixture
def clean_settings(monkeypatch):
    for setting in (settings.PYTHON_EXECUTABLE, settings.SETUP_ENCODER_PYTHON):
        setting.reset()
    monkeypatch.delenv(settings.PYTHON_ENV_VAR, raising=False)
    yield
    for setting in (settings.PYTHON_EXECUTABLE, settings.SETUP_ENCODER_PYTHON):
        setting.reset()


@pytest.fixture
def dialog(qgis_app, tmp_path, clean_settings):
    from quicksam.ui.setup.dialog import SetupDialog

    locations = Locations(tmp_path / "profiles" / "default", tmp_path / "data", VERSION)
    widget = SetupDialog(None, locations)
    yield widget
    widget.cancel()
    wait_until_done(widget)
    widget.remove_all_now()  # also takes the runtime folder off sys.path
    widget.deleteLater()


def wait_until_done(dialog, limit: float = 900.0) -> None:
    """Let the task manager run the set-up and deliver its signals (the limit only stops a hang)."""
    deadline = time.monotonic() + limit
    while dialog.task is not None:
        QCoreApplication.processEvents()
        time.sleep(0.02)
        assert time.monotonic() < deadline, "the set-up task never finished"


def runtime_request(dialog) -> SetupRequest:
    if not Path(QGIS_EXECUTABLE).exists():
        pytest.skip(f"needs QGIS installed from distribution packages ({QGIS_EXECUTABLE})")
    return SetupRequest(dialog.locations, QGIS_PREFIX, QGIS_EXECUTABLE, VERSION, runtime=True, encoder=False)


def test_set_up_is_in_the_plugin_menu_and_unload_removes_it(qgis_app, qgis_iface):
    with mock.patch.object(qgis_iface, "addPluginToRasterMenu", create=True) as add, \
            mock.patch.object(qgis_iface, "removePluginRasterMenu", create=True) as remove:
        instance = quicksam.classFactory(qgis_iface)
        instance.initGui()
        [setup] = [a for menu, a in (c.args for c in add.call_args_list) if a.objectName() == SETUP_ACTION_OBJECT_NAME]
        assert setup.text() == "Set up…" and setup not in instance.toolbar.actions()
        setup.trigger()
        dialog = instance.setup_dialog
        assert dialog is not None and dialog.isVisible() and dialog.objectName() == "QuickSamSetupDialog"
        assert "ONNX Runtime for QGIS" in dialog.statusView.toPlainText()
        instance.unload()
        assert ("&QuickSAM", setup) in [c.args for c in remove.call_args_list]
        assert instance.setup_dialog is None


@pytest.mark.slow
def test_the_task_installs_the_runtime_and_remove_all_removes_it(dialog):
    shown = []
    dialog.progressBar.valueChanged.connect(shown.append)
    task = dialog.start(runtime_request(dialog))
    assert task is not None and not dialog.installButton.isEnabled() and dialog.cancelButton.isEnabled()
    wait_until_done(dialog)
    assert len(shown) > 2 and shown == sorted(shown) and shown[-1] == 100  # the task's progress, step by step
    message = dialog.messageLabel.text()
    assert "ONNX Runtime" in message and ("segment now" in message or "restart QGIS" in message), message
    folder = dialog.locations.runtime
    assert (folder / "onnxruntime" / "__init__.py").is_file() and not (folder / "numpy").exists()
    assert str(folder) in sys.path and sys.path.index(str(folder)) > 0  # appended, QGIS's own first
    assert str(folder) in dialog.statusView.toPlainText()
    assert dialog.installButton.isEnabled() and not dialog.cancelButton.isEnabled()

    assert dialog.remove_all_now().startswith("Removed")
    assert not dialog.locations.runtime_root.exists() and str(folder) not in sys.path
    assert "not installed" in dialog.statusView.toPlainText()


@pytest.mark.slow
def test_cancel_while_pip_runs_leaves_nothing_in_use(dialog):
    task = dialog.start(runtime_request(dialog))
    task.step.connect(lambda text: dialog.cancel() if "Downloading" in text else None)
    wait_until_done(dialog)
    assert task.was_cancelled and "cancelled" in dialog.messageLabel.text()
    folder = dialog.locations.runtime
    assert not folder.exists() and not staging_of(folder).exists()
    assert str(folder) not in sys.path
    log = (dialog.locations.logs / "setup.log").read_text()
    assert "-m pip install --target" in log and "] cancelled\n" in log  # pip was running, and was killed


def test_choosing_an_existing_python_checks_and_records_it(dialog):
    """This venv has torch, sam2 and segment-anything: checked in a subprocess, then the encoder's Python."""
    request = SetupRequest(dialog.locations, QGIS_PREFIX, QGIS_EXECUTABLE, VERSION, runtime=False, encoder=True,
                           existing_python=sys.executable)
    dialog.start(request)
    wait_until_done(dialog)
    assert "The encoder will use torch" in dialog.messageLabel.text(), dialog.messageLabel.text()
    assert settings.SETUP_ENCODER_PYTHON.value() == sys.executable
    assert settings.encoder_python() == sys.executable
    assert not dialog.locations.encoder_env.exists()  # nothing built


def test_a_missing_python_fails_with_one_line_and_records_nothing(dialog, tmp_path):
    missing = str(tmp_path / "nowhere" / "python3")
    dialog.start(SetupRequest(dialog.locations, QGIS_PREFIX, QGIS_EXECUTABLE, VERSION, runtime=False,
                              encoder=True, existing_python=missing))
    wait_until_done(dialog)
    message = dialog.messageLabel.text()
    assert "cannot start the Python" in message and missing in message and "\n" not in message
    assert settings.SETUP_ENCODER_PYTHON.value() == ""


def test_the_set_up_python_comes_after_the_variable_and_before_the_plugin_venv(clean_settings, monkeypatch,
                                                                                  tmp_path):
    plugin_dir = tmp_path / "quicksam"
    venv_python = settings.plugin_venv_python(plugin_dir)
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("")
    (plugin_dir / ".git").mkdir()
    monkeypatch.setattr(settings, "PLUGIN_DIR", plugin_dir)
    built = tmp_path / "data" / "encoder-env" / "bin" / "python"
    settings.SETUP_ENCODER_PYTHON.set_value(str(built))
    assert settings.encoder_python() == str(venv_python)  # the recorded one is gone: not used
    built.parent.mkdir(parents=True)
    built.write_text("")
    assert settings.encoder_python() == str(built)
    monkeypatch.setenv(settings.PYTHON_ENV_VAR, "/from/env/python")
    assert settings.encoder_python() == "/from/env/python"


def test_show_log_shows_the_set_up_log(dialog):
    dialog.show_log()
    assert "No set-up has run yet." in dialog.log_viewer.findChild(QPlainTextEdit).toPlainText()
    dialog.start(SetupRequest(dialog.locations, QGIS_PREFIX, QGIS_EXECUTABLE, VERSION, runtime=False,
                              encoder=True, existing_python=str(dialog.locations.data / "nowhere")))
    wait_until_done(dialog)
    dialog.show_log()
    text = dialog.log_viewer.findChild(QPlainTextEdit).toPlainText()
    assert "set-up started" in text and "cannot start" in text
    dialog.log_viewer.close()
