"""The Segment map tool: clicks, drags, hover and keys on the canvas, and what is drawn over it.

The tool only reports intent in the canvas CRS (signals) and draws what it is told; the controller turns
intent into prompts in the raster CRS. Left click = foreground point, right click or Shift+click =
background point, left drag = box. Keys, handled only while the tool is the canvas's active tool:
Ctrl+Z undo last prompt, Esc clear the object, Enter/Return accept it. While the tool is active the canvas
claims these keys from application shortcuts (ShortcutOverride), so QGIS's own Undo does not also act;
no shortcut is registered anywhere. `left` says the cursor left the canvas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple

from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsGeometry,
    QgsPointXY,
    QgsRectangle,
    QgsWkbTypes,
)
from qgis.gui import QgsMapCanvas, QgsMapMouseEvent, QgsMapTool, QgsRubberBand
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QEvent, QObject, QPoint, Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor, QKeyEvent, QKeySequence

#: Press and release closer than this (screen pixels) is a click; farther is a drag.
DRAG_THRESHOLD_PX = 5

FOREGROUND_COLOUR = QColor(30, 180, 60)
BACKGROUND_COLOUR = QColor(220, 40, 40)
BOX_COLOUR = QColor(255, 200, 0)
OBJECT_COLOUR = QColor(0, 120, 255)
PREVIEW_COLOUR = QColor(255, 255, 255)


@dataclass(frozen=True)
class _Press:
    pixel: QPoint
    point: QgsPointXY
    button: int
    modifiers: int


def _band(canvas: QgsMapCanvas, kind: int, colour: QColor, fill_alpha: int = 0, width: int = 2,
          dashed: bool = False) -> QgsRubberBand:
    band = QgsRubberBand(canvas, kind)
    band.setStrokeColor(colour)
    fill = QColor(colour)
    fill.setAlpha(fill_alpha)
    band.setFillColor(fill)
    band.setWidth(width)
    if dashed:
        band.setLineStyle(Qt.PenStyle.DashLine)
    return band


class SegmentMapTool(QgsMapTool):
    """Points, boxes and hover on a canvas; all coordinates emitted are in the canvas CRS."""

    pointClicked = pyqtSignal(QgsPointXY, int)  # noqa: N815 (Qt naming); position, label (1 foreground, 0 background)
    boxDrawn = pyqtSignal(QgsRectangle)  # noqa: N815 (Qt naming)
    hovered = pyqtSignal(QgsPointXY)
    undoRequested = pyqtSignal()  # noqa: N815 (Qt naming)
    clearRequested = pyqtSignal()  # noqa: N815 (Qt naming)
    acceptRequested = pyqtSignal()  # noqa: N815 (Qt naming)
    #: The cursor left the canvas (onto a panel, a dialog, another window) while the tool is active.
    left = pyqtSignal()

    def __init__(self, canvas: QgsMapCanvas) -> None:
        super().__init__(canvas)
        self._canvas = canvas  # a Python reference: tells whether the canvas is still alive
        self._press: Optional[_Press] = None
        self._dragging = False
        self._filter_installed = False
        self.setCursor(QgsApplication.getThemeCursor(QgsApplication.Cursor.CrossHair))
        self.object_band = _band(canvas, QgsWkbTypes.GeometryType.PolygonGeometry, OBJECT_COLOUR, fill_alpha=70)
        self.preview_band = _band(canvas, QgsWkbTypes.GeometryType.PolygonGeometry, PREVIEW_COLOUR, fill_alpha=50,
                                  width=1, dashed=True)
        self.box_band = _band(canvas, QgsWkbTypes.GeometryType.PolygonGeometry, BOX_COLOUR, width=2)
        self.drag_band = _band(canvas, QgsWkbTypes.GeometryType.PolygonGeometry, BOX_COLOUR, width=1, dashed=True)
        self.foreground_band = self._point_band(canvas, FOREGROUND_COLOUR)
        self.background_band = self._point_band(canvas, BACKGROUND_COLOUR)

    @staticmethod
    def _point_band(canvas: QgsMapCanvas, colour: QColor) -> QgsRubberBand:
        band = QgsRubberBand(canvas, QgsWkbTypes.GeometryType.PointGeometry)
        band.setColor(colour)
        band.setIcon(QgsRubberBand.IconType.ICON_CIRCLE)
        band.setIconSize(10)
        band.setWidth(3)
        return band

    def bands(self) -> Tuple[QgsRubberBand, ...]:
        return (self.object_band, self.preview_band, self.box_band, self.drag_band, self.foreground_band,
                self.background_band)

    # -- mouse -----------------------------------------------------------------------------------------
    def canvasPressEvent(self, event: QgsMapMouseEvent) -> None:
        if event.button() in (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton):
            self._press = _Press(QPoint(event.pixelPoint()), QgsPointXY(event.mapPoint()), int(event.button()),
                                 int(event.modifiers()))
            self._dragging = False

    def canvasMoveEvent(self, event: QgsMapMouseEvent) -> None:
        press = self._press
        if press is None:
            self.hovered.emit(QgsPointXY(event.mapPoint()))
            return
        if press.button == int(Qt.MouseButton.LeftButton) and (self._dragging or self._moved(press, event)):
            self._dragging = True
            self.drag_band.setToGeometry(QgsGeometry.fromRect(QgsRectangle(press.point, event.mapPoint())))

    def canvasReleaseEvent(self, event: QgsMapMouseEvent) -> None:
        press, self._press = self._press, None
        if press is None:
            return
        if self._dragging:
            self._dragging = False
            self.drag_band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
            box = QgsRectangle(press.point, event.mapPoint())
            box.normalize()
            if box.width() > 0 and box.height() > 0:
                self.boxDrawn.emit(box)
            return
        if self._moved(press, event):
            return  # a right-button drag is nothing
        background = (press.button == int(Qt.MouseButton.RightButton)
                      or bool(press.modifiers & int(Qt.KeyboardModifier.ShiftModifier)))
        self.pointClicked.emit(press.point, 0 if background else 1)

    @staticmethod
    def _moved(press: _Press, event: QgsMapMouseEvent) -> bool:
        delta = event.pixelPoint() - press.pixel
        return max(abs(delta.x()), abs(delta.y())) > DRAG_THRESHOLD_PX

    # -- keys (only while active: the canvas gives keys to its current tool alone) -------------------------
    @staticmethod
    def is_own_key(event: QKeyEvent) -> bool:
        return (event.matches(QKeySequence.StandardKey.Undo)
                or event.key() in (Qt.Key.Key_Escape, Qt.Key.Key_Return, Qt.Key.Key_Enter))

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.matches(QKeySequence.StandardKey.Undo):
            self.undoRequested.emit()
        elif event.key() == Qt.Key.Key_Escape:
            self.clearRequested.emit()
        elif event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.acceptRequested.emit()
        else:
            event.ignore()
            return
        event.accept()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        # Claim our keys from application shortcuts (QGIS's Undo is Ctrl+Z) while the canvas has focus.
        if event.type() == QEvent.Type.ShortcutOverride and self.is_own_key(event):
            event.accept()
            return True
        if event.type() == QEvent.Type.Leave:
            self.left.emit()  # map tools get no leave event of their own; the canvas widget does
        return False

    # -- life cycle -------------------------------------------------------------------------------------
    def activate(self) -> None:
        if not self._filter_installed:
            self.canvas().installEventFilter(self)
            self._filter_installed = True
        super().activate()

    def deactivate(self) -> None:
        self._remove_filter()
        self._press = None
        self._dragging = False
        self.drag_band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        self.clear_preview()
        super().deactivate()

    def _remove_filter(self) -> None:
        if self._filter_installed and not sip.isdeleted(self._canvas):
            self._canvas.removeEventFilter(self)
            self._filter_installed = False

    def release(self) -> None:
        """Remove and delete everything the tool drew (before the tool is deleted)."""
        self._remove_filter()
        if sip.isdeleted(self._canvas):
            return  # a deleted canvas took its items (the bands) with it
        for band in self.bands():
            sip.delete(band)  # a deleted canvas item leaves the scene

    # -- drawing (the controller says what; geometries come with their CRS) -------------------------------
    def show_prompts(self, points: Sequence[Tuple[QgsPointXY, int]], box: Optional[QgsGeometry] = None) -> None:
        """Prompt markers; `points` and `box` are in the canvas CRS."""
        self.foreground_band.reset(QgsWkbTypes.GeometryType.PointGeometry)
        self.background_band.reset(QgsWkbTypes.GeometryType.PointGeometry)
        for point, label in points:
            (self.foreground_band if label == 1 else self.background_band).addPoint(point)
        if box is None:
            self.box_band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        else:
            self.box_band.setToGeometry(box)

    def show_object(self, geometries: Iterable[QgsGeometry], crs: QgsCoordinateReferenceSystem) -> None:
        self._show(self.object_band, geometries, crs)

    def show_preview(self, geometries: Iterable[QgsGeometry], crs: QgsCoordinateReferenceSystem) -> None:
        self._show(self.preview_band, geometries, crs)

    def clear_preview(self) -> None:
        self.preview_band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)

    def clear_object(self) -> None:
        self.object_band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)

    @staticmethod
    def _show(band: QgsRubberBand, geometries: Iterable[QgsGeometry], crs: QgsCoordinateReferenceSystem) -> None:
        parts = [g for g in geometries if g is not None and not g.isEmpty()]
        if not parts:
            band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
            return
        band.setToGeometry(QgsGeometry.collectGeometry(parts), crs)  # reprojected to the canvas CRS
