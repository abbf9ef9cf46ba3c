"""What every QuickSAM Processing algorithm shares: its group, its icon, how it is copied, how it adds a
parameter with its help text."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingAlgorithm, QgsProcessingParameterDefinition
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

ICONS = Path(__file__).resolve().parent.parent / "icons"
GROUP_NAMES = {"encoding": "Encoding", "segmentation": "Segmentation"}


class QuickSamAlgorithm(QgsProcessingAlgorithm):
    """Base of the provider's algorithms: subclasses set GROUP_ID and ICON (a file in icons/)."""

    GROUP_ID = "segmentation"
    ICON = "quicksam.svg"

    def group(self) -> str:
        return QCoreApplication.translate("QuickSAM", GROUP_NAMES[self.GROUP_ID])

    def groupId(self) -> str:
        return self.GROUP_ID

    def icon(self) -> QIcon:
        return QIcon(self.svgIconPath())

    def svgIconPath(self) -> str:
        return str(ICONS / self.ICON)

    def createInstance(self) -> QgsProcessingAlgorithm:
        return type(self)()

    def _add(self, parameter: QgsProcessingParameterDefinition, help_text: str, advanced: bool = False) -> None:
        """Add `parameter` with its help text (the dialog's tooltip), under "Advanced" if asked."""
        parameter.setHelp(help_text)
        if advanced:
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(parameter)
