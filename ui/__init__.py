"""The thin QGIS layer: everything QuickSAM shows or registers inside QGIS.

`algorithms/` holds the Processing provider and algorithms, `dock/` the segment dock, its map tool and
the pieces behind it; `layers.py` builds QGIS layers and features, `settings.py` is QuickSAM's one
place for QgsSettings, `i18n.py` holds the one translation helper `tr`, `qgis_logging.py` routes logging
to QgsMessageLog, and `segment_dock.ui` is the dock's Qt Designer form. Every module here may import QGIS;
nothing outside `ui/`, `plugin.py` and the package's `__init__.py` does (tests/test_architecture.py checks
it).
"""

from pathlib import Path

#: The plugin folder (the repository root, installed as the `quicksam` package).
PLUGIN_DIR = Path(__file__).resolve().parent.parent
ICONS_DIR = PLUGIN_DIR / "icons"
FORMS_DIR = Path(__file__).resolve().parent
