"""The plugin's translator: `i18n/quicksam_<locale>.qm` for QGIS's user locale, installed on the
application by `initGui` and removed by `unload`, so that every `ui/i18n.tr` string (context "QuickSAM")
and the forms' strings are shown translated. Without a file for the locale nothing is installed and
the English source text is shown. The .qm files are built from `i18n/*.ts` by `make translations`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from qgis.core import QgsSettings
from qgis.PyQt.QtCore import QCoreApplication, QLocale, QTranslator

from ..core.logger import LOGGER
from . import PLUGIN_DIR

#: Where the compiled translations are shipped (inside the plugin: they are part of the release).
I18N_DIR = PLUGIN_DIR / "i18n"
FILE_PREFIX = "quicksam_"
#: The QgsSettings key where QGIS keeps the language of its interface (e.g. "de", "pt_BR").
LOCALE_KEY = "locale/userLocale"


def user_locale() -> str:
    """QGIS's interface language, e.g. "pt_BR" (the system's when QGIS has not recorded one)."""
    value = QgsSettings().value(LOCALE_KEY, "")
    return str(value or QLocale().name())


def translation_candidates(locale: str, folder: Path) -> List[Path]:
    """The files tried for `locale`, most specific first: quicksam_pt_BR.qm, then quicksam_pt.qm."""
    names = [locale.replace("-", "_")]
    language = names[0].split("_")[0]
    if language and language != names[0]:
        names.append(language)
    return [folder / f"{FILE_PREFIX}{name}.qm" for name in names if name]


def install_translator(locale: Optional[str] = None, folder: Optional[Path] = None) -> Optional[QTranslator]:
    """Load and install the translator for `locale` (default: QGIS's); None when there is no file for it."""
    locale = user_locale() if locale is None else locale
    for path in translation_candidates(locale, I18N_DIR if folder is None else folder):
        if not path.is_file():
            continue
        translator = QTranslator()
        if translator.load(str(path)):
            QCoreApplication.installTranslator(translator)
            LOGGER.debug("translation %s installed", path)
            return translator
        LOGGER.warning("the translation %s could not be loaded (not a .qm file?)", path)
    return None


def remove_translator(translator: Optional[QTranslator]) -> None:
    """Undo `install_translator` (nothing to do for None)."""
    if translator is not None:
        QCoreApplication.removeTranslator(translator)
