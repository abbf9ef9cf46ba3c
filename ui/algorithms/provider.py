"""The QuickSAM Processing provider (id "quicksam")."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .. import ICONS_DIR
from ..i18n import tr
from .encode_algorithm import EncodeRasterAlgorithm
from .encode_many_algorithm import EncodeRastersAlgorithm
from .segment_algorithm import SegmentPromptsAlgorithm
from .segment_all_algorithm import SegmentAllAlgorithm
from .track_algorithm import TrackObjectsAlgorithm

ICON_PATH = ICONS_DIR / "quicksam.svg"


class QuickSamProvider(QgsProcessingProvider):
    """Holds QuickSAM's Processing algorithms."""

    def id(self) -> str:
        return "quicksam"

    def name(self) -> str:
        return "QuickSAM"

    def longName(self) -> str:
        return tr("QuickSAM (Segment Anything for rasters)")

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def svgIconPath(self) -> str:
        return str(ICON_PATH)

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(EncodeRasterAlgorithm())
        self.addAlgorithm(EncodeRastersAlgorithm())
        self.addAlgorithm(SegmentPromptsAlgorithm())
        self.addAlgorithm(SegmentAllAlgorithm())
        self.addAlgorithm(TrackObjectsAlgorithm())
