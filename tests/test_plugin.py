"""The plugin shell: load, unload, reload, the encode and segment actions, log forwarding, settings, no torch."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
from qgis.core import Qgis, QgsApplication
from qgis.gui import QgsDockWidget
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QCoreApplication, QEvent
from qgis.PyQt.QtWidgets import QToolBar

import quicksam
from quicksam.plugin import ENCODE_ACTION_OBJECT_NAME, TOOLBAR_OBJECT_NAME
from quicksam.ui import PLUGIN_DIR, settings
from quicksam.ui.algorithms.encode_dialog import ENCODE_ALGORITHM_ID
from quicksam.ui.dock.dock import DOCK_OBJECT_NAME
from quicksam.ui.qgis_logging import HANDLER_NAME, LOGGER_NAME, MESSAGE_LOG_TAG

# -- helpers ------------------------------------------------------------------------------------------


def registry():
    return QgsApplication.processingRegistry()


def toolbars(iface) -> list:
    """QuickSAM toolbars still alive under the main window (deferred deletions processed first)."""
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    return iface.mainWindow().findChildren(QToolBar, TOOLBAR_OBJECT_NAME)


def quicksam_log_handlers() -> list:
    return [h for h in logging.getLogger(LOGGER_NAME).handlers if h.get_name() == HANDLER_NAME]


@pytest.fixture
def menu_spy(qgis_iface):
    """Record the plugin's Raster menu calls (pytest-qgis's iface has no real Raster menu)."""
    with mock.patch.object(qgis_iface, "addPluginToRasterMenu", create=True) as add, \
            mock.patch.object(qgis_iface, "removePluginRasterMenu", create=True) as remove:
        yield add, remove


# -- load ---------------------------------------------------------------------------------------------


def test_init_gui_registers_provider_and_algorithm(plugin):
    provider = registry().providerById("quicksam")
    assert provider is not None
    assert provider.name() == "QuickSAM"
    assert registry().algorithmById(ENCODE_ALGORITHM_ID) is not None


def test_init_gui_adds_toolbar_with_encode_action(plugin, qgis_iface):
    [toolbar] = toolbars(qgis_iface)
    [action] = [a for a in toolbar.actions() if a.objectName() == ENCODE_ACTION_OBJECT_NAME]
    assert action.text() == "Encode raster…"
    assert not action.icon().isNull()


def test_init_gui_adds_encode_action_to_raster_menu(qgis_app, qgis_iface, menu_spy):
    add, _ = menu_spy
    instance = quicksam.classFactory(qgis_iface)
    instance.initGui()
    try:
        [(menu, action), *_] = [call.args for call in add.call_args_list]
        assert menu == "&QuickSAM"
        assert action.objectName() == ENCODE_ACTION_OBJECT_NAME
    finally:
        instance.unload()


def test_encode_action_opens_processing_dialog(plugin, qgis_iface):
    from quicksam.ui import algorithm_dialogs
    from quicksam.ui.algorithms.encode_dialog import MINIMUM_SIZE

    [action] = [a for a in toolbars(qgis_iface)[0].actions()
                if a.objectName() == ENCODE_ACTION_OBJECT_NAME]
    with mock.patch.object(algorithm_dialogs, "run_algorithm_dialog", return_value={}) as dialog:
        action.trigger()
    dialog.assert_called_once_with(ENCODE_ALGORITHM_ID, {}, qgis_iface.mapCanvas(), minimum_size=MINIMUM_SIZE)


def test_segment_everything_action_opens_its_processing_dialog(plugin, qgis_iface, qgis_new_project):
    from quicksam.plugin import SEGMENT_ALL_ACTION_OBJECT_NAME
    from quicksam.ui import algorithm_dialogs

    [action] = [a for a in toolbars(qgis_iface)[0].actions()
                if a.objectName() == SEGMENT_ALL_ACTION_OBJECT_NAME]
    assert action.text() == "Segment everything…"
    from qgis.core import QgsProject, QgsVectorLayer

    points = QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory")  # no raster active: no store to fill in
    QgsProject.instance().addMapLayer(points)
    qgis_iface.setActiveLayer(points)
    with mock.patch.object(algorithm_dialogs, "run_algorithm_dialog") as dialog:
        action.trigger()
    QgsProject.instance().removeMapLayer(points.id())
    dialog.assert_called_once_with("quicksam:segmentall", {}, qgis_iface.mapCanvas())
    assert registry().algorithmById("quicksam:segmentall") is not None


def test_log_records_reach_qgis_message_log(plugin):
    received = []

    def on_message(message, tag, level):
        received.append((message, tag, level))

    QgsApplication.messageLog().messageReceived.connect(on_message)
    try:
        logging.getLogger("quicksam.encoder").warning("tile r0000c0000 is all nodata")
        logging.getLogger("quicksam.encoder").info("encoding 4 tiles")
    finally:
        QgsApplication.messageLog().messageReceived.disconnect(on_message)
    assert ("quicksam.encoder: tile r0000c0000 is all nodata", MESSAGE_LOG_TAG, Qgis.MessageLevel.Warning) \
        in received
    assert ("quicksam.encoder: encoding 4 tiles", MESSAGE_LOG_TAG, Qgis.MessageLevel.Info) in received


# -- unload and reload --------------------------------------------------------------------------------


def test_unload_leaves_nothing_behind(qgis_app, qgis_iface, qgis_canvas, menu_spy):
    add, remove = menu_spy
    logger_level = logging.getLogger(LOGGER_NAME).level
    scene_items = len(qgis_canvas.scene().items())
    instance = quicksam.classFactory(qgis_iface)
    instance.initGui()
    actions = list(instance.actions)
    instance.segment_action.trigger()  # the dock, created on first use
    dock = instance.dock
    qgis_canvas.setMapTool(dock.controller.tool)  # its map tool active, rubber bands on the canvas
    tool = dock.controller.tool
    assert len(qgis_canvas.scene().items()) > scene_items
    instance.unload()

    assert registry().providerById("quicksam") is None
    assert registry().algorithmById(ENCODE_ALGORITHM_ID) is None
    assert toolbars(qgis_iface) == []
    assert all(sip.isdeleted(action) for action in actions)
    # removed in reverse order: unload mirrors initGui
    assert [call.args for call in remove.call_args_list] == [call.args for call in reversed(add.call_args_list)]
    assert quicksam_log_handlers() == []
    assert logging.getLogger(LOGGER_NAME).level == logger_level
    assert instance.actions == [] and instance.toolbar is None and instance.provider is None
    # the dock and its map tool
    assert instance.dock is None and sip.isdeleted(dock) and sip.isdeleted(tool)
    assert qgis_iface.mainWindow().findChildren(QgsDockWidget, DOCK_OBJECT_NAME) == []
    assert qgis_canvas.mapTool() is None
    assert len(qgis_canvas.scene().items()) == scene_items


def test_segment_action_toggles_the_dock(plugin, qgis_iface):
    action = plugin.segment_action
    assert action.isCheckable() and action.text() == "Segment…" and not action.icon().isNull()
    assert plugin.dock is None  # nothing is built (nor ONNX Runtime loaded) before first use
    qgis_iface.mainWindow().show()  # as in QGIS: docks are visible only in a visible main window
    action.trigger()
    dock = plugin.dock
    assert dock.objectName() == DOCK_OBJECT_NAME and dock.isUserVisible()
    dock.close()  # the dock's own close button
    assert not action.isChecked()
    action.trigger()
    assert plugin.dock is dock and dock.isUserVisible() and action.isChecked()
    action.trigger()
    assert not dock.isUserVisible()


def test_reload_works(qgis_app, qgis_iface):
    """What QGIS's plugin reloader does: unload, then a new instance through classFactory."""
    first = quicksam.classFactory(qgis_iface)
    first.initGui()
    first.unload()
    second = quicksam.classFactory(qgis_iface)
    second.initGui()
    try:
        assert registry().algorithmById(ENCODE_ALGORITHM_ID) is not None
        assert len(toolbars(qgis_iface)) == 1
        assert len(quicksam_log_handlers()) == 1
    finally:
        second.unload()
    assert registry().providerById("quicksam") is None
    assert toolbars(qgis_iface) == []


def test_init_processing_alone_then_unload(qgis_app, qgis_iface):
    """qgis_process calls only initProcessing(); unload() must cope with no GUI."""
    instance = quicksam.classFactory(qgis_iface)
    instance.initProcessing()
    instance.initProcessing()  # idempotent: initGui calls it again in the desktop
    assert registry().providerById("quicksam") is not None
    instance.unload()
    assert registry().providerById("quicksam") is None


# -- QGIS's Python never imports torch ----------------------------------------------------------------

NO_TORCH_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from qgis.core import QgsApplication
    from qgis.PyQt.QtWidgets import QMainWindow, QToolBar

    app = QgsApplication([], True)
    app.initQgis()
    # QGIS itself may load some (QGIS 3.40's qgis.core imports shapely when it is installed, for
    # QgsGeometry.as_shapely): only what loading the plugin adds counts
    loaded_by_qgis = set(sys.modules)


    class StubIface:
        \"\"\"The part of QgisInterface the plugin uses.\"\"\"

        def __init__(self):
            self.window = QMainWindow()
            self.menu = {}
            self.options_factories = []

        def mainWindow(self):
            return self.window

        def addToolBar(self, name):
            return self.window.addToolBar(name)

        def addPluginToRasterMenu(self, menu, action):
            self.menu.setdefault(menu, []).append(action)

        def removePluginRasterMenu(self, menu, action):
            self.menu[menu].remove(action)

        def registerOptionsWidgetFactory(self, factory):
            self.options_factories.append(factory)

        def unregisterOptionsWidgetFactory(self, factory):
            self.options_factories.remove(factory)


    import quicksam

    plugin = quicksam.classFactory(StubIface())
    plugin.initGui()
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("quicksam:encoderaster")
    # torch is never needed in QGIS; rasterio and shapely bundle their own GDAL/GEOS, which clash with
    # QGIS's inside its executables, so the QGIS side uses GDAL's own bindings instead.
    heavy = sorted(name for name in ("torch", "torchvision", "sam2", "segment_anything", "rasterio", "shapely",
                                     "pyogrio") if name in sys.modules and name not in loaded_by_qgis)
    plugin.unload()
    print(json.dumps({"algorithm": algorithm is not None, "heavy": heavy}))
    app.exitQgis()
""")


def test_plugin_in_a_fresh_qgis_python_never_imports_torch(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"algorithm": True, "heavy": []}


# -- settings -------------------------------------------------------------------------------------------


@pytest.fixture
def clean_python_setting(monkeypatch):
    """No python_executable setting and no QUICKSAM_PYTHON during the test."""
    settings.PYTHON_EXECUTABLE.reset()
    monkeypatch.delenv(settings.PYTHON_ENV_VAR, raising=False)
    yield
    settings.PYTHON_EXECUTABLE.reset()


def test_settings_defaults_and_prefix():
    for setting in settings.ALL_SETTINGS:
        assert setting.full_key == "quicksam/" + setting.key
        setting.reset()
        assert setting.value() == setting.default
        assert isinstance(setting.value(), setting.kind)
    assert settings.PYTHON_EXECUTABLE.default == ""


def test_every_setting_is_read_by_the_plugin():
    """No dead settings: each one in ALL_SETTINGS is read (`NAME.value()`) somewhere in the plugin's code."""
    names = [name for name, value in vars(settings).items() if isinstance(value, settings.Setting)]
    assert {getattr(settings, name) for name in names} == set(settings.ALL_SETTINGS)
    sources = [path.read_text(encoding="utf-8") for path in PLUGIN_DIR.rglob("*.py")
               if not {"tests", ".venv", "bench", "docs"} & set(path.relative_to(PLUGIN_DIR).parts)]
    unread = [name for name in names if not any(f"{name}.value()" in source for source in sources)]
    assert unread == []


def test_setting_round_trip_is_typed():
    try:
        settings.HOVER_DELAY_MS.set_value(120)
        assert settings.HOVER_DELAY_MS.value() == 120
    finally:
        settings.HOVER_DELAY_MS.reset()
    assert settings.HOVER_DELAY_MS.value() == 200


def test_encoder_python_order(clean_python_setting, monkeypatch, tmp_path):
    plugin_dir = tmp_path / "quicksam"
    monkeypatch.setattr(settings, "PLUGIN_DIR", plugin_dir)
    monkeypatch.setattr(settings.shutil, "which",
                        lambda name: "/usr/bin/python3" if name == "python3" else None)

    # 5. python3 on PATH, when the running executable is not a Python (the QGIS binary).
    monkeypatch.setattr(sys, "executable", "/usr/bin/qgis")
    assert settings.encoder_python() == "/usr/bin/python3"

    # 4. the running interpreter, when it is a Python.
    monkeypatch.setattr(sys, "executable", "/opt/env/bin/python3.11")
    assert settings.encoder_python() == "/opt/env/bin/python3.11"

    # 3. the checkout's own .venv, in a development checkout (a git work tree) only: a plugin folder
    # QGIS's installer unpacked never uses a venv found in it.
    venv_python = settings.plugin_venv_python(plugin_dir)
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("")
    assert settings.encoder_python() == "/opt/env/bin/python3.11"
    (plugin_dir / ".git").write_text("gitdir: /elsewhere\n")  # a worktree's .git is a file
    assert settings.encoder_python() == str(venv_python)

    # 2. QUICKSAM_PYTHON.
    monkeypatch.setenv(settings.PYTHON_ENV_VAR, "/from/env/python")
    assert settings.encoder_python() == "/from/env/python"

    # 1. the setting, even when it does not exist (the error then names it).
    settings.PYTHON_EXECUTABLE.set_value("/configured/python")
    assert settings.encoder_python() == "/configured/python"


def test_encoder_python_none_found(clean_python_setting, monkeypatch, tmp_path):
    monkeypatch.setattr(settings, "PLUGIN_DIR", tmp_path)
    monkeypatch.setattr(sys, "executable", "/usr/bin/qgis")
    monkeypatch.setattr(settings.shutil, "which", lambda name: None)
    assert settings.encoder_python() == ""


def test_plugin_venv_python_location():
    expected = (Path("p") / ".venv" / "Scripts" / "python.exe" if os.name == "nt"
                else Path("p") / ".venv" / "bin" / "python")
    assert settings.plugin_venv_python(Path("p")) == expected
