"""Install a plugin zip into a fresh QGIS profile the way the plugin manager's *Install from ZIP* does.

Run as a script in its own process (tests/test_package.py does):

    python tests/install_zip_in_qgis.py PLUGIN.zip PROFILES_ROOT

It starts a QGIS application on the profile PROFILES_ROOT/profiles/default: QGIS_CUSTOM_CONFIG_PATH
names the profiles folder (the variable behind `qgis --profiles-path`; QGIS 3.40 ignores
QgsApplication's profileFolder argument), and the settings go where QGIS's own `main` puts a
profile's. It points QGIS's Python plugin paths at the profile's python/plugins as QGIS's Python
start-up does, then calls QGIS's own installer, `pyplugin_installer`'s
`QgsPluginInstaller.installFromZipFile`: it unzips into the profile, loads and starts (enables) the
plugin. The interface is pytest-qgis's stand-in `QgisInterface` (a real map canvas and main window;
the plugin manager's own widget is a mock that records the installer's message).

Prints one JSON object on stdout: what the installer said, whether the plugin is active, the module
file it was imported from, the Processing provider and algorithms it registered.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def start_qgis(profile: Path):
    """A QgsApplication whose settings and plugin folder are the profile's (as QGIS's `main` does)."""
    from qgis.core import QgsApplication
    from qgis.PyQt.QtCore import QCoreApplication, QSettings

    QCoreApplication.setOrganizationName(QgsApplication.QGIS_ORGANIZATION_NAME)
    QCoreApplication.setOrganizationDomain(QgsApplication.QGIS_ORGANIZATION_DOMAIN)
    QCoreApplication.setApplicationName(QgsApplication.QGIS_APPLICATION_NAME)
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(profile))
    app = QgsApplication([], True, str(profile))
    app.initQgis()
    return app


def set_python_plugin_paths(profile: Path) -> Path:
    """Plugin search paths as QGIS's Python start-up sets them: the profile's plugins, then QGIS's own."""
    import qgis.utils
    from qgis.core import QgsApplication

    home_plugins = profile / "python" / "plugins"
    system_plugins = Path(QgsApplication.pkgDataPath()) / "python" / "plugins"
    qgis.utils.plugin_paths[:] = [str(home_plugins), str(system_plugins)]
    qgis.utils.home_plugin_path = str(home_plugins)  # QGIS < 3.40
    qgis.utils.HOME_PLUGIN_PATH = str(home_plugins)  # QGIS 3.40+
    for path in (str(Path(QgsApplication.pkgDataPath()) / "python"), str(system_plugins), str(home_plugins)):
        sys.path.insert(0, path)
    return home_plugins


def declare_plugin_manager_settings() -> list:
    """QGIS 3.40's installer reads its settings through the settings tree node "plugin-manager", which
    the desktop application declares in C++; a bare QgsApplication has no such node. Declare the ones
    the installer reads, with the desktop's defaults except that checking repositories for updates at
    start is off (no network here). Returns the entries (kept alive by the caller). QGIS < 3.30 reads
    plain QgsSettings keys instead and needs nothing."""
    from qgis import core

    if not hasattr(core, "QgsSettingsTree") or core.QgsSettingsTree.node("plugin-manager") is not None:
        return []
    node = core.QgsSettingsTree.treeRoot().createChildNode("plugin-manager")
    return [node,
            core.QgsSettingsEntryBool("automatically-check-for-updates", node, False),
            core.QgsSettingsEntryBool("allow-experimental", node, False),
            core.QgsSettingsEntryBool("allow-deprecated", node, False),
            core.QgsSettingsEntryVariant("check-on-start-last-date", node, None),
            core.QgsSettingsEntryStringList("seen-plugins", node, []),
            core.QgsSettingsEntryString("last-zip-directory", node, "")]


def hide_development_install() -> None:
    """Take the development venv's editable `quicksam` finder out of the import system: only the
    plugin folder in the profile may answer `import quicksam`, as in a QGIS without that venv."""
    sys.meta_path[:] = [finder for finder in sys.meta_path
                        if not getattr(finder, "__module__", "").startswith("__editable__")]


def stand_in_interface():
    """pytest-qgis's QgisInterface with a real canvas and main window, installed as `qgis.utils.iface`."""
    import qgis.utils
    from pytest_qgis.mock_qgis_classes import MockMessageBar
    from pytest_qgis.qgis_interface import QgisInterface
    from qgis.gui import QgsMapCanvas
    from qgis.PyQt.QtWidgets import QMainWindow

    window = QMainWindow()
    iface = QgisInterface(QgsMapCanvas(window), MockMessageBar(), window)
    qgis.utils.iface = iface
    return iface, window


def install(zip_path: Path, profile: Path) -> dict:
    """Install and enable the zip with QGIS's installer; what QGIS then knows about the plugin."""
    import pytest_qgis.qgis_interface  # noqa: F401 (before QGIS starts, as under pytest: its slots' signatures)

    app = start_qgis(profile)
    home_plugins = set_python_plugin_paths(profile)
    hide_development_install()
    _settings = declare_plugin_manager_settings()  # noqa: F841 (kept alive while the installer runs)
    iface, _window = stand_in_interface()
    # Imported only now: the installer binds `iface` and the plugin paths when it is imported.
    import qgis.utils
    from pyplugin_installer.installer import QgsPluginInstaller
    from qgis.core import QgsApplication, QgsSettings

    QgsPluginInstaller().installFromZipFile(str(zip_path))
    pushed = iface.pluginManagerInterface().pushMessage.call_args_list
    module = sys.modules.get("quicksam")
    provider = QgsApplication.processingRegistry().providerById("quicksam")
    report = {
        "installer_messages": [str(call.args[0]) for call in pushed],
        "settings_folder": QgsApplication.qgisSettingsDirPath(),
        "plugins_folder": str(home_plugins),
        "active": "quicksam" in qgis.utils.active_plugins,
        "enabled_setting": QgsSettings().value("PythonPlugins/quicksam", False, type=bool),
        "module_file": getattr(module, "__file__", None),
        "provider": provider.id() if provider else None,
        "algorithms": sorted(alg.id() for alg in provider.algorithms()) if provider else [],
        "plugin_dependencies": qgis.utils.get_plugin_deps("quicksam"),
    }
    qgis.utils.unloadPlugin("quicksam")
    app.exitQgis()
    return report


def main() -> int:
    zip_path, profiles_root = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    os.environ["QGIS_CUSTOM_CONFIG_PATH"] = str(profiles_root)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    profile = profiles_root / "profiles" / "default"
    report = install(zip_path, profile)
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
