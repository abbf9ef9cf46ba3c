"""QuickSAM's one translation helper: every user-visible string of the QGIS layer goes through `tr`.

One translation context ("QuickSAM") for the whole plugin, so a translator sees each sentence once.
Whole sentences go to `tr` (with `{name}` placeholders filled in afterwards), never fragments.
"""

from __future__ import annotations

from qgis.PyQt.QtCore import QCoreApplication

#: The one translation context of the plugin.
CONTEXT = "QuickSAM"


def tr(message: str) -> str:
    """`message` in the user's language (as the translator installed for QGIS's locale has it), else as is."""
    return QCoreApplication.translate(CONTEXT, message)
