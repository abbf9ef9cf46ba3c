"""What the Segment tool draws over the map: the object's prompt markers and polygons, and the hover preview
(QGIS layer; one piece of the Segment dock's controller).

Prompts and segments arrive in the raster CRS; markers are drawn in the canvas CRS (transformed back with
the binding's canvas -> raster transform), polygons are handed to the rubber bands with their CRS and
reprojected by QGIS.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCsException,
    QgsGeometry,
    QgsPointXY,
    QgsRectangle,
)

from ...interactive.engine import MapPrompts, Segment
from .map_tool import SegmentMapTool


def segment_geometry(segment: Segment) -> QgsGeometry:
    """A segment's polygons as a QgsGeometry (raster CRS)."""
    geometry = QgsGeometry()
    geometry.fromWkb(segment.geometry.wkb)
    return geometry


def prompt_markers(prompts: MapPrompts, to_raster: QgsCoordinateTransform
                   ) -> Tuple[List[Tuple[QgsPointXY, int]], Optional[QgsGeometry]]:
    """The prompts' points (with their labels, 1 foreground, 0 background) and box polygon in the canvas CRS;
    `to_raster` goes from the canvas CRS to the raster CRS. QgsCsException when they cannot be transformed."""
    back = Qgis.TransformDirection.Reverse
    points = [(to_raster.transform(QgsPointXY(x, y), back), label)
              for (x, y), label in zip(prompts.points, prompts.labels)]
    box = None
    if prompts.box is not None:
        box = QgsGeometry.fromRect(QgsRectangle(*prompts.box))
        box.transform(to_raster, back)
    return points, box


class SegmentDrawing:
    """Draws on the rubber bands of a SegmentMapTool (which live on its canvas)."""

    def __init__(self, tool: SegmentMapTool) -> None:
        self.tool = tool

    def show_object(self, prompts: MapPrompts, segments: Iterable[Segment],
                    to_raster: QgsCoordinateTransform) -> None:
        """The object's prompts and polygons (raster CRS); `to_raster` goes from the canvas CRS to the
        raster CRS. Prompts that cannot be transformed to the canvas CRS are not marked."""
        try:
            points, box = prompt_markers(prompts, to_raster)
        except QgsCsException:
            points, box = [], None
        self.tool.show_prompts(points, box)
        self.tool.show_object([segment_geometry(s) for s in segments], to_raster.destinationCrs())

    def show_preview(self, segments: Iterable[Segment], raster_crs: QgsCoordinateReferenceSystem,
                     geometries: Sequence[QgsGeometry] = ()) -> None:
        """The hover preview's polygons (in `raster_crs`): `geometries` when given (built off the GUI thread
        from the segments), else built from the segments here."""
        self.tool.show_preview(list(geometries) or [segment_geometry(s) for s in segments], raster_crs)

    def clear_preview(self) -> None:
        self.tool.clear_preview()

    def clear(self) -> None:
        """No markers, no object, no preview."""
        self.tool.show_prompts([])
        self.tool.clear_object()
        self.tool.clear_preview()
