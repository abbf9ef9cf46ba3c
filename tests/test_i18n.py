"""One translation context for the whole plugin: a translator for "QuickSAM" reaches every user-visible
string (the plugin's menu, the Processing provider and algorithms, the dock and its controller).

The translator is a real QTranslator installed on the running QgsApplication; it "translates" by
putting a marker in front of each message of the QuickSAM context, so no .qm file is needed.
"""

from __future__ import annotations

import pytest
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QTranslator

from quicksam.ui.algorithms.encode_algorithm import EncodeRasterAlgorithm
from quicksam.ui.algorithms.provider import QuickSamProvider
from quicksam.ui.algorithms.segment_algorithm import SegmentPromptsAlgorithm
from quicksam.ui.algorithms.segment_all_algorithm import SegmentAllAlgorithm
from quicksam.ui.dock.dock import found_by_text, mask_mode_labels
from quicksam.ui.i18n import CONTEXT, tr

MARK = "[xx] "


class MarkingTranslator(QTranslator):
    """Translates every message of QuickSAM's context to MARK + message (other contexts: no translation)."""

    def isEmpty(self) -> bool:  # noqa: N802 (Qt naming)
        return False

    def translate(self, context, source, disambiguation=None, n=-1):
        return MARK + source if context == CONTEXT else None  # None: no translation, the source is used


@pytest.fixture
def translator(qgis_app):
    marking = MarkingTranslator()
    QgsApplication.installTranslator(marking)
    yield marking
    QgsApplication.removeTranslator(marking)


def test_every_part_of_the_plugin_is_translated_in_one_context(translator, plugin):
    assert tr("Segment…") == MARK + "Segment…"
    texts = [action.text() for action in plugin.actions] + [plugin.toolbar.windowTitle()]
    texts += [QuickSamProvider().longName(), EncodeRasterAlgorithm().group()]
    texts += [algorithm().displayName() for algorithm in
              (EncodeRasterAlgorithm, SegmentPromptsAlgorithm, SegmentAllAlgorithm)]
    texts += list(mask_mode_labels().values()) + [found_by_text("chosen")]
    assert texts and all(text.startswith(MARK) for text in texts), texts
