"""What the Segment dock and map tool do: store, prompts, decoding, preview and accepting (QGIS layer).

The controller coordinates; each job is a piece of its own, testable without the others:
  - `StoreBinding` (store_binding.py): which store serves the raster layer, and canvas <-> raster CRS;
  - `DecodeScheduler` (decode_scheduler.py): the hover rest, the decode worker, remembered results and an
    accept waiting for its decode;
  - `SegmentDrawing` (drawing.py): prompt markers, the object and the hover preview on the canvas;
  - `ObjectOutput` (object_output.py): the output and prompts layers accepted objects are written to.
The controller owns them, the map tool and the session (prompts and results), and says what happened on its
status line; the dock only shows its state and forwards the user's intent.

CRSs: the tool reports canvas-CRS positions; they are transformed to the raster's CRS (the store's) with
the project's transform context, and polygons are drawn/written by transforming back or into the output
layer's CRS. The project's and the canvas's CRS are never changed.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence

from qgis.core import (
    Qgis,
    QgsCsException,
    QgsGeometry,
    QgsMapLayer,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.gui import QgsMapCanvas
from qgis.PyQt.QtCore import QObject, pyqtSignal

from ...core.errors import QuickSamError
from ...core.store import FeatureStore
from ...interactive.engine import MapPrompts, PromptError, Segment
from ...interactive.session import SegmentOptions, SegmentSession
from ...interactive.store_lookup import StoreLookup
from .. import settings
from ..algorithms.encode_dialog import open_encode_dialog
from ..i18n import tr
from ..layers import open_tile_index_layer
from .decode_scheduler import DecodeScheduler
from .decode_worker import DecodeWorker
from .drawing import SegmentDrawing
from .level_text import decoded_message
from .map_tool import SegmentMapTool
from .object_output import ObjectOutput, accepted_message
from .object_writer import CommitResult, add_to_project_once
from .store_binding import StoreBinding


class SegmentController(QObject):
    """Store, session, decoding and output behind the Segment dock."""

    statusChanged = pyqtSignal(str, int)  # noqa: N815 (Qt naming); message, Qgis.MessageLevel
    storeChanged = pyqtSignal()  # noqa: N815 (Qt naming)
    objectChanged = pyqtSignal()  # noqa: N815 (Qt naming)
    objectCommitted = pyqtSignal(object)  # noqa: N815 (Qt naming); CommitResult
    promptsRefused = pyqtSignal(object)  # noqa: N815 (Qt naming); the PromptError (on_demand.py offers a tile)

    def __init__(self, canvas: QgsMapCanvas, project: Optional[QgsProject] = None,
                 parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.canvas = canvas
        self.project = project or QgsProject.instance()
        self.tool = SegmentMapTool(canvas)
        self.binding = StoreBinding(canvas, self.project, self)
        self.scheduler = DecodeScheduler(settings.HOVER_DELAY_MS.value(), self)
        self.drawing = SegmentDrawing(self.tool)
        self.output = ObjectOutput(self.project)
        self.options = SegmentOptions()
        self.hover_enabled = True
        #: The Segment tool is the canvas's tool (followed from its signals: while `deactivated` is emitted the
        #: canvas still holds it).
        self.tool_active = False
        self.session: Optional[SegmentSession] = None
        self.status = ""
        self._connections = [
            (self.tool.pointClicked, self.add_point), (self.tool.boxDrawn, self.set_box),
            (self.tool.hovered, self.hover), (self.tool.undoRequested, self.undo),
            (self.tool.clearRequested, self.clear), (self.tool.acceptRequested, self.accept),
            (self.tool.activated, self._on_tool_activated), (self.tool.deactivated, self._on_tool_deactivated),
            (self.tool.left, self._stop_preview),
            (self.canvas.extentsChanged, self._stop_preview),
            (self.scheduler.rested, self._preview_at), (self.scheduler.previewReady, self._on_preview),
            (self.scheduler.moved, lambda point: self._preview_at(point, low_res=True)),
            (self.scheduler.objectDecoded, self._object_decoded),
            (self.scheduler.objectFailed, self._on_object_failed),
            (self.binding.transformChanged, self._redraw),
            (self.project.layerWillBeRemoved[str], self._on_layer_removed),
        ]
        for signal, slot in self._connections:
            signal.connect(slot)

    # -- what the dock shows ------------------------------------------------------------------------------
    @property
    def raster_layer(self) -> Optional[QgsRasterLayer]:
        return self.binding.raster_layer

    @property
    def store(self) -> Optional[FeatureStore]:
        return self.binding.store

    @property
    def found_by(self) -> str:
        return self.binding.found_by

    @property
    def problem(self) -> Optional[str]:
        return self.binding.problem

    @property
    def worker(self) -> DecodeWorker:
        return self.scheduler.worker

    # -- store ---------------------------------------------------------------------------------------
    def set_raster_layer(self, layer: Optional[QgsMapLayer]) -> None:
        """Segment on `layer` (a raster layer) with its store, found as store_lookup describes."""
        if isinstance(layer, QgsRasterLayer):
            self._apply_lookup(self.binding.lookup_layer(layer))

    def choose_store(self, path: str) -> bool:
        """Use the store folder at `path` for the current raster layer; a plain problem otherwise."""
        self._apply_lookup(self.binding.lookup_chosen(path))
        return self.store is not None

    def _apply_lookup(self, lookup: StoreLookup) -> None:
        self.scheduler.reset()
        self.session = None
        self.binding.bind(lookup)
        if self.binding.engine is not None:
            self.session = SegmentSession(self.binding.engine, self.options)
        self.output.bind(self.binding.store, self.binding.raster_crs)
        self._redraw()
        self.storeChanged.emit()
        self._say_state()

    def recheck(self) -> None:
        """Look for the raster layer's store again when none is in use (ONNX Runtime may have been set up, or
        the raster encoded, since)."""
        if self.raster_layer is not None and self.store is None:
            self.set_raster_layer(self.raster_layer)

    def encode_raster(self, open_setup: Callable[[], None]) -> None:
        """Open the encoder's Processing dialog for the current raster layer, as the menu does (`open_setup` is
        offered when the encoder's environment is missing); once it is closed, use the store it wrote (or look
        for the layer's store again)."""
        layer = self.raster_layer
        results = open_encode_dialog(self.canvas.window(), open_setup, {"INPUT": layer} if layer is not None else {},
                                     self.canvas)
        if layer is None or self.raster_layer is not layer:
            return
        written = results.get("OUTPUT") if isinstance(results, dict) else None
        lookup = self.binding.lookup_written(layer, written)
        if lookup is not None:
            self._apply_lookup(lookup)
        elif self.store is None:
            self._apply_lookup(self.binding.lookup_layer(layer))

    def show_tile_index(self) -> Optional[QgsVectorLayer]:
        """Add the store's tile index to the project (once), drawn as labelled outlines, and return it."""
        layer = open_tile_index_layer(self.store) if self.store is not None else None
        if layer is None:
            self._say(tr("this store has no tile index that can be opened"), Qgis.MessageLevel.Warning)
            return None
        return add_to_project_once(self.project, layer)

    # -- options -------------------------------------------------------------------------------------
    def set_options(self, options: SegmentOptions) -> None:
        """New mask options; the current object is decoded again with them."""
        self.options = options
        if self.session is not None:
            self.session.set_options(options)
            self._drop_preview()
            if not self.session.prompts.is_empty():
                self._decode_object()

    def set_hover_enabled(self, enabled: bool) -> None:
        self.hover_enabled = enabled
        if not enabled:
            self.scheduler.stop_hover()
            self._drop_preview()

    def output_layer(self) -> QgsVectorLayer:
        """The layer accepted objects go to (see ObjectOutput.layer)."""
        return self.output.layer()

    # -- the tool --------------------------------------------------------------------------------------
    def activate_tool(self) -> None:
        self.canvas.setMapTool(self.tool)
        self.canvas.setFocus()

    def deactivate_tool(self) -> None:
        if self.canvas.mapTool() is self.tool:
            self.canvas.unsetMapTool(self.tool)

    def _on_tool_activated(self) -> None:
        self.tool_active = True
        self._say_state()

    def _on_tool_deactivated(self) -> None:
        self.tool_active = False
        self._stop_preview()
        self._say_state()

    def _stop_preview(self) -> None:
        """The cursor left the canvas, the map moved or the tool was switched off: no preview is drawn, none is
        waiting for the cursor to rest, and a decode already on its way is dropped when it arrives."""
        self.scheduler.stop_hover()
        self._drop_preview()

    # -- prompts (positions in the canvas CRS) ---------------------------------------------------------
    def add_point(self, point: QgsPointXY, label: int) -> bool:
        """Add a foreground (1) or background (0) point clicked at `point` (canvas CRS)."""
        return self._change_prompts(lambda session: session.add_point(*self.binding.to_raster_xy(point), label))

    def set_box(self, box: QgsRectangle) -> bool:
        """Set the object's box dragged on the canvas (canvas CRS)."""
        return self._change_prompts(lambda session: session.set_box(self.binding.box_to_raster(box)))

    def _change_prompts(self, change: Callable[[SegmentSession], MapPrompts]) -> bool:
        if self.session is None or self.scheduler.accept_pending:  # pending: the prompt would join the accepted object
            self._say(tr("the accepted object is still being decoded: click again in a moment") if self.session
                      else self.problem or tr("choose a feature store first"), Qgis.MessageLevel.Warning)
            return False
        try:
            change(self.session)
        except PromptError as exc:
            self._say(str(exc), Qgis.MessageLevel.Warning)
            self.promptsRefused.emit(exc)
            return False
        except QgsCsException:
            self._say(tr("this position cannot be transformed to the raster's CRS"), Qgis.MessageLevel.Warning)
            return False
        self._drop_preview()
        self._decode_object()
        return True

    def undo(self) -> bool:
        """Take back the last prompt of the current object."""
        if self.session is None or not self.session.undo():
            self._say(tr("no prompt to undo"), Qgis.MessageLevel.Info)
            return False
        self.scheduler.accept_pending = False
        self._drop_preview()
        if self.session.prompts.is_empty():
            self.scheduler.cancel_object()
            self._redraw()
            self._say_state()
        else:
            self._decode_object()
        return True

    def clear(self) -> None:
        """Forget the current object."""
        self.scheduler.accept_pending = False
        self.scheduler.cancel_object()
        self._drop_preview()
        if self.session is not None:
            self.session.clear()
        self._redraw()
        if self.session is not None:
            self._say_state(tr("cleared: click on an object"))

    def accept(self) -> Optional[CommitResult]:
        """Commit the current object to the output layer and start the next one. If it is still being
        decoded, it is committed as soon as its result arrives (returns None then)."""
        if self.session is None:
            self._say(self.problem or tr("choose a feature store first"), Qgis.MessageLevel.Warning)
            return None
        if not self.session.prompts.is_empty() and not self.session.has_result():
            self.scheduler.accept_pending = True
            if not self.scheduler.object_pending:
                self._decode_object()  # the last decode failed: try again
            self._say(tr("accepting as soon as the object is decoded…"), Qgis.MessageLevel.Info)
            return None
        try:
            accepted = self.session.current_object()
        except PromptError as exc:
            self._say(str(exc), Qgis.MessageLevel.Warning)
            return None
        try:
            result, prompts_problem = self.output.write(accepted)
        except (OSError, QuickSamError) as exc:
            self._say(tr("the object was not saved: {}").format(exc), Qgis.MessageLevel.Critical)
            return None
        self.session.clear()
        self._drop_preview()
        self._redraw()
        self._say(*accepted_message(result, prompts_problem))
        self.objectCommitted.emit(result)
        return result

    # -- decoding ---------------------------------------------------------------------------------------
    def hover(self, point: QgsPointXY) -> None:
        """The cursor is at `point` (canvas CRS): low-resolution previews while it moves, full once it rests."""
        if self.hover_enabled and self.session is not None:
            self.scheduler.rest_at(point)

    def _preview_at(self, point: QgsPointXY, low_res: bool = False) -> None:
        """The cursor rested (or moved: `low_res`) at `point` (canvas CRS): preview a foreground point there."""
        if not self.hover_enabled or self.session is None:
            return
        try:
            prompts = self.session.preview_prompts(*self.binding.to_raster_xy(point))
        except (PromptError, QgsCsException):
            # Outside the raster or the tile: nothing to preview, and no message on a mouse move.
            self._drop_preview()
            return
        self.request_preview(prompts, low_res)

    def request_preview(self, prompts: MapPrompts, low_res: bool = False) -> None:
        """Preview `prompts` (raster CRS): from memory, else by the worker (`low_res`: DecodeScheduler.preview)."""
        remembered = self.scheduler.preview(self.session.engine, prompts, self.options, low_res)
        if remembered is not None:
            self._show_preview(remembered)

    def _decode_object(self) -> None:
        self._redraw()
        prompts = self.session.prompts
        remembered = self.scheduler.decode_object(self.session.engine, prompts, self.options)
        if remembered is not None:
            self._object_decoded(prompts, self.options, remembered)

    def _on_preview(self, segments: Optional[Sequence[Segment]], geometries: Sequence[QgsGeometry]) -> None:
        if self.session is None:
            return
        if segments is not None and self.hover_enabled and self.canvas.mapTool() is self.tool:
            self._show_preview(segments, geometries)
        else:
            self.drawing.clear_preview()

    def _on_object_failed(self, message: str) -> None:
        if self.session is not None:
            self._say(message, Qgis.MessageLevel.Warning)

    def _object_decoded(self, prompts: MapPrompts, options: SegmentOptions, segments: Sequence[Segment]) -> None:
        if self.session is None or not self.session.set_result(prompts, options, segments):
            return
        self._redraw()
        self._say(*decoded_message(segments, self.binding.raster_crs))
        if self.scheduler.take_accept():
            self.accept()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Process events until no hover rest is pending and every decode came back (tests; seconds)."""
        return self.scheduler.wait_idle(timeout)

    # -- drawing -----------------------------------------------------------------------------------------
    def _redraw(self) -> None:
        """Draw the current object's prompts and polygons (or nothing) on the canvas."""
        if self.session is None or self.binding.to_raster is None:
            self.drawing.clear()
        else:
            self.drawing.show_object(self.session.prompts, self.session.segments, self.binding.to_raster)
        self.objectChanged.emit()

    def _drop_preview(self) -> None:
        self.scheduler.cancel_preview()
        self.drawing.clear_preview()

    def _show_preview(self, segments: Sequence[Segment], geometries: Sequence[QgsGeometry] = ()) -> None:
        self.drawing.show_preview(segments, self.binding.raster_crs, geometries)

    # -- status and life cycle -------------------------------------------------------------------------------
    def _say_state(self, ready: str = "") -> None:
        """Say where things stand (what a warning said is gone): nothing without a store (the store line says
        why), that the tool is off, or `ready` (by default "ready: click on an object")."""
        if self.store is None:
            self._say("")
        elif not self.tool_active:
            self._say(tr("the Segment tool is off: switch it on to click on objects"))
        elif self.session is not None and not self.session.prompts.is_empty():
            self._say(tr("click to refine the object; Enter or Accept keeps it"))
        else:
            self._say(ready or tr("ready: click on an object"))

    def _say(self, message: str, level: int = Qgis.MessageLevel.Info) -> None:
        self.status = message
        self.statusChanged.emit(message, int(level))

    def _on_layer_removed(self, layer_id: str) -> None:
        if self.raster_layer is not None and layer_id == self.raster_layer.id():
            self._apply_lookup(self.binding.forget_layer())

    def release(self) -> None:
        """Undo everything the controller set up: worker, timer, tool, drawings, signal connections."""
        self.scheduler.shutdown()
        self.deactivate_tool()
        for signal, slot in self._connections:
            with contextlib.suppress(TypeError):  # already disconnected
                signal.disconnect(slot)
        self._connections = []
        self.binding.release()
        self.output.release()
        self.tool.release()
        self.tool.deleteLater()
