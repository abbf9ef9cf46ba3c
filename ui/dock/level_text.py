"""Which level of the store a result came from, in the dock's words ("level 4x (40 m/px)"; QGIS layer)."""

from __future__ import annotations

from typing import Sequence, Tuple

from qgis.core import Qgis, QgsCoordinateReferenceSystem, QgsUnitTypes

from ...core.levels import format_factor
from ...interactive.engine import Segment
from ..i18n import tr


def level_text(segment: Segment, crs: QgsCoordinateReferenceSystem) -> str:
    """"level 4x (40 m/px)": the segment's level (its pixel over the raster's) and ground resolution, in the
    map units of the raster's CRS `crs`."""
    units = QgsUnitTypes.toAbbreviatedString(crs.mapUnits()) if crs.isValid() else ""
    resolution = f"{segment.resolution:.3g} {units}/px" if units else f"{segment.resolution:.3g}/px"
    return tr("level {factor}x ({resolution})").format(factor=format_factor(segment.level_factor),
                                                       resolution=resolution)


def decoded_message(segments: Sequence[Segment], crs: QgsCoordinateReferenceSystem) -> Tuple[str, int]:
    """The status line of an object decoded into `segments` and its Qgis.MessageLevel: their scores and level,
    or that the mask is empty."""
    if not segments:
        return tr("empty mask: move the points, or lower the minimum area"), Qgis.MessageLevel.Warning
    scores = ", ".join(f"{segment.score:.2f}" for segment in segments)
    return (tr("score {scores}, {level}; Enter or Accept to keep it").format(
        scores=scores, level=level_text(segments[0], crs)), Qgis.MessageLevel.Info)


def preview_message(segments: Sequence[Segment], crs: QgsCoordinateReferenceSystem) -> str:
    """The level line of a hover preview ("" when there is none)."""
    return tr("Preview: {level}").format(level=level_text(segments[0], crs)) if segments else ""
