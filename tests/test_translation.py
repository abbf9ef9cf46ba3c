"""The plugin's translator in real QGIS (pytest-qgis): a .ts file made by tools/translations.py for a
language, compiled by Qt's lrelease, is installed by initGui for QGIS's user locale (the menu, the
Processing provider and the Options page's form speak it) and removed by unload (English again)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from unittest import mock

import pytest
from qgis.core import QgsApplication, QgsSettings

import quicksam
from quicksam.plugin import ENCODE_ACTION_OBJECT_NAME
from quicksam.ui import translation
from quicksam.ui.i18n import tr

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "translations.py"
LANGUAGE = "eo"  # Esperanto: QuickSAM ships no translation for it, so only the test's file can be used
TRANSLATED = {("QuickSAM", "Encode raster…"): "Kodi rastrumon…", ("QuickSAM", "&QuickSAM"): "&QuickSAM (eo)",
              ("QuickSAM", "QuickSAM (Segment Anything for rasters)"): "QuickSAM (Segmentu ĉion)",
              ("QuickSamOptionsPage", "Encoder"): "Kodilo"}


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, check=True)


def translate_ts(path: Path, translations: dict) -> None:
    """Fill in translations of a .ts file, as a translator does with Qt Linguist."""
    tree = ElementTree.parse(path)
    for context in tree.getroot().iter("context"):
        for message in context.iter("message"):
            key = (context.findtext("name"), message.findtext("source"))
            if key in translations:
                node = message.find("translation")
                node.text = translations.pop(key)
                node.attrib.pop("type", None)
    assert translations == {}, f"not in the .ts file: {translations}"
    tree.write(path, encoding="utf-8")


@pytest.fixture
def user_locale(qgis_app):
    """A function setting QGIS's interface language (locale/userLocale); the previous one restored."""
    settings = QgsSettings()
    previous = settings.value(translation.LOCALE_KEY, None)
    yield lambda locale: settings.setValue(translation.LOCALE_KEY, locale)
    if previous is None:
        settings.remove(translation.LOCALE_KEY)
    else:
        settings.setValue(translation.LOCALE_KEY, previous)


@pytest.fixture(scope="module")
def i18n_folder(tmp_path_factory) -> Path:
    if translation_tool() is None:
        pytest.skip("needs Qt's lrelease (Debian: qttools5-dev-tools, in the Makefile's APT_PACKAGES)")
    folder = tmp_path_factory.mktemp("i18n")
    [ts_file] = [Path(line) for line in run_tool("update", LANGUAGE, "--folder", str(folder)).stdout.split()]
    translate_ts(ts_file, dict(TRANSLATED))
    run_tool("build", "--folder", str(folder))
    assert (folder / f"quicksam_{LANGUAGE}.qm").is_file()
    return folder


def translation_tool():
    sys.path.insert(0, str(TOOL.parent))
    try:
        import translations

        return translations.find_lrelease()
    finally:
        sys.path.remove(str(TOOL.parent))


def test_files_tried_for_a_locale_go_from_the_region_to_the_language(tmp_path):
    assert translation.translation_candidates("pt_BR", tmp_path) == [tmp_path / "quicksam_pt_BR.qm",
                                                                      tmp_path / "quicksam_pt.qm"]
    assert translation.translation_candidates("de", tmp_path) == [tmp_path / "quicksam_de.qm"]


def test_init_gui_installs_the_users_language_and_unload_removes_it(qgis_iface, i18n_folder, user_locale,
                                                                     monkeypatch):
    monkeypatch.setattr(translation, "I18N_DIR", i18n_folder)
    user_locale(f"{LANGUAGE}_XX")  # no file for the region: the language's is used
    with mock.patch.object(qgis_iface, "addPluginToRasterMenu", create=True) as add, \
            mock.patch.object(qgis_iface, "removePluginRasterMenu", create=True) as remove:
        instance = quicksam.classFactory(qgis_iface)
        instance.initGui()
        try:
            [encode] = [a for a in instance.actions if a.objectName() == ENCODE_ACTION_OBJECT_NAME]
            assert encode.text() == "Kodi rastrumon…"
            assert {menu for menu, _ in (call.args for call in add.call_args_list)} == {"&QuickSAM (eo)"}
            provider = QgsApplication.processingRegistry().providerById("quicksam")
            assert provider.longName() == "QuickSAM (Segmentu ĉion)"
            page = instance.options_factory.createWidget(None)
            assert page.encoderGroup.title() == "Kodilo"  # the form's own context, from options_page.ui
            page.deleteLater()
        finally:
            instance.unload()
        # unload removed the menu entries under the name they were added with
        assert {menu for menu, _ in (call.args for call in remove.call_args_list)} == {"&QuickSAM (eo)"}
    assert instance.translator is None
    assert tr("Encode raster…") == "Encode raster…"


def test_without_a_file_for_the_locale_nothing_is_installed(plugin_factory_with_locale):
    instance = plugin_factory_with_locale("fr_FR")
    assert instance.translator is None
    assert tr("Encode raster…") == "Encode raster…"


@pytest.fixture
def plugin_factory_with_locale(qgis_iface, i18n_folder, user_locale, monkeypatch):
    monkeypatch.setattr(translation, "I18N_DIR", i18n_folder)
    created = []

    def load(locale: str):
        user_locale(locale)
        instance = quicksam.classFactory(qgis_iface)
        instance.initGui()
        created.append(instance)
        return instance

    yield load
    for instance in created:
        instance.unload()
