"""What every QuickSAM Processing algorithm shares: its group, its icon, how it is copied, how it adds a
parameter with its help text, and whether the `quicksam` command started it (to word advice as its options)."""

from __future__ import annotations

from qgis.core import (
    QgsExpressionContextScope,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingParameterDefinition,
)
from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtGui import QIcon

from .. import ICONS_DIR, PLUGIN_DIR
from ..i18n import tr

ICONS = ICONS_DIR
#: The guide of each algorithm (by `name()`), in the docs/ folder shipped inside the installed plugin.
HELP_FILES = {"encoderaster": "encoding.md", "encoderasters": "encoding.md", "segmentprompts": "segmenting.md",
              "segmentall": "segment-everything.md", "trackobjects": "time-series.md"}
GROUP_NAMES = {"encoding": "Encoding", "segmentation": "Segmentation"}
#: Expression-context variable set by the `quicksam` command on the algorithm runs it starts: messages then
#: name the command's options ("pass --overwrite") instead of the algorithm's parameters.
COMMAND_LINE_VARIABLE = "quicksam_command_line"


def mark_command_line(context: QgsProcessingContext) -> None:
    """Say in `context` that the `quicksam` command runs the algorithm (see `started_by_command_line`)."""
    scope = QgsExpressionContextScope("quicksam")
    scope.setVariable(COMMAND_LINE_VARIABLE, True)
    expression_context = context.expressionContext()
    expression_context.appendScope(scope)
    context.setExpressionContext(expression_context)


def started_by_command_line(context: QgsProcessingContext) -> bool:
    """True when the `quicksam` command runs the algorithm in `context` (it words advice as its options)."""
    return bool(context.expressionContext().variable(COMMAND_LINE_VARIABLE))


class QuickSamAlgorithm(QgsProcessingAlgorithm):
    """Base of the provider's algorithms: subclasses set GROUP_ID and ICON (a file in icons/)."""

    GROUP_ID = "segmentation"
    ICON = "quicksam.svg"

    def group(self) -> str:
        return tr(GROUP_NAMES[self.GROUP_ID])

    def groupId(self) -> str:
        return self.GROUP_ID

    def icon(self) -> QIcon:
        return QIcon(self.svgIconPath())

    def svgIconPath(self) -> str:
        return str(ICONS / self.ICON)

    def helpUrl(self) -> str:
        """The algorithm's guide in the installed plugin's docs/ folder, as a file:// URL ("" if it is missing)."""
        guide = PLUGIN_DIR / "docs" / HELP_FILES.get(self.name(), "")
        return QUrl.fromLocalFile(str(guide)).toString() if guide.is_file() else ""

    def createInstance(self) -> QgsProcessingAlgorithm:
        return type(self)()

    def _add(self, parameter: QgsProcessingParameterDefinition, help_text: str, advanced: bool = False) -> None:
        """Add `parameter` with its help text (the dialog's tooltip), under "Advanced" if asked."""
        parameter.setHelp(help_text)
        if advanced:
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
        self.addParameter(parameter)
