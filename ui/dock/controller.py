"""What the Segment dock and map tool do: store, prompts, decoding, preview and accepting (QGIS layer).

The controller owns the map tool, the session (prompts and results), the decode worker and the writing of
accepted objects; the dock only shows its state and forwards the user's intent.

CRSs: the tool reports canvas-CRS positions; they are transformed to the raster's CRS (the store's) with
the project's transform context, and polygons are drawn/written by transforming back or into the output
layer's CRS. The project's and the canvas's CRS are never changed.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence, Tuple

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
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
from qgis.PyQt.QtCore import QCoreApplication, QElapsedTimer, QEventLoop, QObject, QTimer, pyqtSignal

from ...core.errors import QuickSamError
from ...core.logger import LOGGER
from ...core.store import TILE_INDEX, FeatureStore
from ...interactive.engine import MapPrompts, PromptError, Segment, SegmentEngine
from ...interactive.session import AcceptedObject, SegmentOptions, SegmentSession
from ...interactive.store_lookup import FOUND_CHOSEN, StoreLookup, check_store_matches_layer
from .. import settings
from ..layer_stores import find_layer_store, layer_raster_path, remember_layer_store
from ..layers import FeatureBuilder, open_or_create_output_layer, raster_crs, store_output_path
from .decode_worker import OBJECT, PREVIEW, DecodeOutcome, DecodeWorker
from .map_tool import SegmentMapTool
from .object_writer import (
    CommitResult,
    add_features,
    add_to_project_once,
    commit_object,
    open_or_create_prompts_layer,
    prompt_features,
    set_object_colours,
)

ENCODE_ALGORITHM_ID = "quicksam:encoderaster"
TILE_INDEX_LAYER_NAME = "QuickSAM tiles"
_RESULT_MEMO = 32


def _tr(message: str) -> str:
    return QCoreApplication.translate("QuickSAM", message)


def segment_geometry(segment: Segment) -> QgsGeometry:
    """A segment's polygons as a QgsGeometry (raster CRS)."""
    geometry = QgsGeometry()
    geometry.fromWkb(segment.geometry.wkb)
    return geometry


class SegmentController(QObject):
    """Store, session, decoding and output behind the Segment dock."""

    statusChanged = pyqtSignal(str, int)  # noqa: N815 (Qt naming); message, Qgis.MessageLevel
    storeChanged = pyqtSignal()  # noqa: N815 (Qt naming)
    objectChanged = pyqtSignal()  # noqa: N815 (Qt naming)
    objectCommitted = pyqtSignal(object)  # noqa: N815 (Qt naming); CommitResult

    def __init__(self, canvas: QgsMapCanvas, project: Optional[QgsProject] = None,
                 parent: Optional[QObject] = None):
        super().__init__(parent)
        self.canvas = canvas
        self.project = project or QgsProject.instance()
        self.tool = SegmentMapTool(canvas)
        self.worker = DecodeWorker(self)
        self.hover_timer = QTimer(self)
        self.hover_timer.setSingleShot(True)
        self.hover_timer.setInterval(settings.HOVER_DELAY_MS.value())

        self.options = SegmentOptions()
        self.hover_enabled = True
        self.label = ""
        self.keep_prompts = False
        self.random_colours = True
        self.output_choice: Optional[QgsVectorLayer] = None  # None: the store's segments.gpkg

        self.raster_layer: Optional[QgsRasterLayer] = None
        self.store: Optional[FeatureStore] = None
        self.found_by = ""
        self.problem: Optional[str] = None
        self.session: Optional[SegmentSession] = None
        self.status = ""
        self._raster_crs = QgsCoordinateReferenceSystem()
        self._to_raster: Optional[QgsCoordinateTransform] = None
        self._hover_point: Optional[QgsPointXY] = None
        self._results: OrderedDict = OrderedDict()
        self._accept_pending = False
        self._object_pending = False  # an object decode was requested and has not come back
        self._default_output_id: Optional[str] = None
        self._prompts_layer_id: Optional[str] = None

        self._connections = [
            (self.tool.pointClicked, self.add_point), (self.tool.boxDrawn, self.set_box),
            (self.tool.hovered, self.hover), (self.tool.undoRequested, self.undo),
            (self.tool.clearRequested, self.clear), (self.tool.acceptRequested, self.accept),
            (self.tool.deactivated, self._on_tool_deactivated), (self.worker.finished, self._on_decoded),
            (self.hover_timer.timeout, self._decode_hover),
            (self.canvas.destinationCrsChanged, self._update_transform),
            (self.project.layerWillBeRemoved[str], self._on_layer_removed),
        ]
        for signal, slot in self._connections:
            signal.connect(slot)

    # -- store ---------------------------------------------------------------------------------------
    def set_raster_layer(self, layer: Optional[QgsMapLayer]) -> None:
        """Segment on `layer` (a raster layer) with its store, found as store_lookup describes."""
        if not isinstance(layer, QgsRasterLayer):
            return
        self.raster_layer = layer
        lookup = find_layer_store(layer)
        self._apply_lookup(lookup)

    def choose_store(self, path: str) -> bool:
        """Use the store folder at `path` for the current raster layer; a plain problem otherwise."""
        if self.raster_layer is None:
            self._apply_lookup(StoreLookup(problem=_tr("choose a raster layer in the Layers panel first")))
            return False
        raster_path = layer_raster_path(self.raster_layer)
        if raster_path is None:
            self._apply_lookup(find_layer_store(self.raster_layer))
            return False
        problem = check_store_matches_layer(path, raster_path)
        if problem is not None:
            self._apply_lookup(StoreLookup(problem=problem))
            return False
        store = FeatureStore.open(Path(path))
        remember_layer_store(self.raster_layer, store)
        self._apply_lookup(StoreLookup(store, FOUND_CHOSEN))
        return self.store is not None

    def _apply_lookup(self, lookup: StoreLookup) -> None:
        self.worker.cancel()
        self.hover_timer.stop()
        self.session = None
        self.store = None
        self.problem = lookup.problem
        self.found_by = lookup.found_by
        self._results.clear()
        self._accept_pending = False
        self._object_pending = False
        self._default_output_id = None
        self._prompts_layer_id = None
        if lookup.store is not None:
            try:
                engine = SegmentEngine(lookup.store)
            except QuickSamError as exc:
                self.problem = str(exc)
            except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own errors on a damaged decoder.onnx
                LOGGER.exception("cannot load the decoder of %s", lookup.store.root)
                self.problem = _tr("cannot load this store's decoder ({}); encode the raster again into a new "
                                   "folder").format(exc)
            else:
                self.store = lookup.store
                self.session = SegmentSession(engine, self.options)
                self._raster_crs = raster_crs(lookup.store)
        self._update_transform()
        self._redraw()
        self.storeChanged.emit()
        if self.problem:
            self._say("", Qgis.Info)  # the store line shows the problem (and offers to encode)
        elif self.store is not None:
            self._say(_tr("ready: click on an object"), Qgis.Info)

    def encode_raster(self) -> None:
        """Open the encoder's Processing dialog for the current raster layer; once it is closed, use the
        store it wrote (or look for the layer's store again)."""
        import processing  # QGIS's Processing plugin, imported on use

        layer = self.raster_layer
        results = processing.execAlgorithmDialog(ENCODE_ALGORITHM_ID, {"INPUT": layer} if layer is not None else {})
        if layer is None or self.raster_layer is not layer:
            return
        written = results.get("OUTPUT") if isinstance(results, dict) else None
        raster_path = layer_raster_path(layer)
        if written and raster_path and check_store_matches_layer(written, raster_path) is None:
            self.choose_store(str(written))
        elif self.store is None:
            self._apply_lookup(find_layer_store(layer))

    def show_tile_index(self) -> Optional[QgsVectorLayer]:
        """Add the store's tile index to the project (once) and return it."""
        if self.store is None or not (self.store.root / TILE_INDEX).is_file():
            self._say(_tr("this store has no tile index"), Qgis.Warning)
            return None
        layer = QgsVectorLayer(f"{self.store.root / TILE_INDEX}|layername=tiles", TILE_INDEX_LAYER_NAME, "ogr")
        if not layer.isValid():
            self._say(_tr("cannot open the tile index of this store"), Qgis.Warning)
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
            self.hover_timer.stop()
            self._drop_preview()

    def set_output_layer(self, layer: Optional[QgsVectorLayer]) -> None:
        """Write accepted objects to `layer` (any polygon layer; reprojected to its CRS), or with None to
        the store's own segments.gpkg."""
        self.output_choice = layer if isinstance(layer, QgsVectorLayer) else None

    # -- the tool --------------------------------------------------------------------------------------
    def activate_tool(self) -> None:
        self.canvas.setMapTool(self.tool)
        self.canvas.setFocus()

    def deactivate_tool(self) -> None:
        if self.canvas.mapTool() is self.tool:
            self.canvas.unsetMapTool(self.tool)

    def _on_tool_deactivated(self) -> None:
        self.hover_timer.stop()
        self.worker.cancel(PREVIEW)

    # -- prompts (positions in the canvas CRS) ---------------------------------------------------------
    def add_point(self, point: QgsPointXY, label: int) -> bool:
        """Add a foreground (1) or background (0) point clicked at `point` (canvas CRS)."""
        return self._change_prompts(lambda session: session.add_point(*self._to_raster_xy(point), label))

    def set_box(self, box: QgsRectangle) -> bool:
        """Set the object's box dragged on the canvas (canvas CRS)."""
        return self._change_prompts(lambda session: session.set_box(self._box_to_raster(box)))

    def _change_prompts(self, change) -> bool:
        if self.session is None:
            self._say(self.problem or _tr("choose a feature store first"), Qgis.Warning)
            return False
        try:
            change(self.session)
        except PromptError as exc:
            self._say(str(exc), Qgis.Warning)
            return False
        except QgsCsException:
            self._say(_tr("this position cannot be transformed to the raster's CRS"), Qgis.Warning)
            return False
        self._drop_preview()
        self._decode_object()
        return True

    def undo(self) -> bool:
        """Take back the last prompt of the current object."""
        if self.session is None or not self.session.undo():
            self._say(_tr("no prompt to undo"), Qgis.Info)
            return False
        self._accept_pending = False
        self._drop_preview()
        if self.session.prompts.is_empty():
            self.worker.cancel(OBJECT)
            self._object_pending = False
            self._redraw()
            self._say(_tr("ready: click on an object"), Qgis.Info)
        else:
            self._decode_object()
        return True

    def clear(self) -> None:
        """Forget the current object."""
        self._accept_pending = False
        self._object_pending = False
        self.worker.cancel(OBJECT)
        self._drop_preview()
        if self.session is not None:
            self.session.clear()
        self._redraw()
        if self.session is not None:
            self._say(_tr("cleared: click on an object"), Qgis.Info)

    def accept(self) -> Optional[CommitResult]:
        """Commit the current object to the output layer and start the next one. If it is still being
        decoded, it is committed as soon as its result arrives (returns None then)."""
        if self.session is None:
            self._say(self.problem or _tr("choose a feature store first"), Qgis.Warning)
            return None
        if not self.session.prompts.is_empty() and not self.session.has_result():
            self._accept_pending = True
            if not self._object_pending:
                self._decode_object()  # the last decode failed: try again
            self._say(_tr("accepting as soon as the object is decoded…"), Qgis.Info)
            return None
        try:
            accepted = self.session.current_object()
        except PromptError as exc:
            self._say(str(exc), Qgis.Warning)
            return None
        try:
            result = self._commit(accepted)
        except (OSError, QuickSamError) as exc:
            self._say(_tr("the object was not saved: {}").format(exc), Qgis.Critical)
            return None
        self.session.clear()
        self._drop_preview()
        self._redraw()
        prompts_problem = ""
        if self.keep_prompts:
            try:
                self._keep_prompts(accepted, result)
            except (OSError, QuickSamError) as exc:
                prompts_problem = _tr(" (its prompts were not kept: {})").format(exc)
        ids = ", ".join(str(i) for i in result.object_ids)
        what = _tr("object {}").format(ids) if ids else _tr("the object")
        where = (_tr("saved to '{}'") if result.saved else
                 _tr("added to '{}' (being edited: save the layer's edits to write it)")).format(result.layer_name)
        self._say(_tr("{} {}{}; click on the next one").format(what, where, prompts_problem),
                  Qgis.Warning if prompts_problem else Qgis.Success if result.saved else Qgis.Info)
        self.objectCommitted.emit(result)
        return result

    # -- output -----------------------------------------------------------------------------------------
    def output_layer(self) -> QgsVectorLayer:
        """The layer accepted objects go to: the user's choice, or the store's segments.gpkg (created on
        first use and added to the project once)."""
        if self.output_choice is not None and self.project.mapLayer(self.output_choice.id()) is not None:
            return self.output_choice
        existing = self.project.mapLayer(self._default_output_id) if self._default_output_id else None
        if isinstance(existing, QgsVectorLayer):
            return existing
        layer = open_or_create_output_layer(store_output_path(self.store), self._raster_crs,
                                            self.project.transformContext())
        layer = add_to_project_once(self.project, layer)
        if self.random_colours:
            set_object_colours(layer, True)
        self._default_output_id = layer.id()
        return layer

    def set_random_colours(self, enabled: bool) -> None:
        self.random_colours = enabled
        layer = self.project.mapLayer(self._default_output_id) if self._default_output_id else None
        if isinstance(layer, QgsVectorLayer):
            set_object_colours(layer, enabled)

    def _commit(self, accepted: AcceptedObject) -> CommitResult:
        layer = self.output_layer()
        builder = FeatureBuilder(self.store, layer.crs(), self.project.transformContext())
        return commit_object(layer, accepted, builder, self.label)

    def _keep_prompts(self, accepted: AcceptedObject, result: CommitResult) -> None:
        layer = self.project.mapLayer(self._prompts_layer_id) if self._prompts_layer_id else None
        if not isinstance(layer, QgsVectorLayer):
            layer = open_or_create_prompts_layer(self.store, self._raster_crs, self.project.transformContext())
            layer = add_to_project_once(self.project, layer)
            self._prompts_layer_id = layer.id()
        object_id = result.object_ids[0] if result.object_ids else 0
        add_features(layer, prompt_features(accepted, object_id, self.label, result.layer_name, layer.fields()),
                     "QuickSAM prompts")

    # -- decoding ---------------------------------------------------------------------------------------
    def hover(self, point: QgsPointXY) -> None:
        """The cursor rests at `point` (canvas CRS): preview after the rest delay (restarted by each move)."""
        if not self.hover_enabled or self.session is None:
            return
        self._hover_point = QgsPointXY(point)
        self.hover_timer.start()

    def _decode_hover(self) -> None:
        if not self.hover_enabled or self.session is None or self._hover_point is None:
            return
        try:
            prompts = self.session.preview_prompts(*self._to_raster_xy(self._hover_point))
        except (PromptError, QgsCsException):
            # Outside the raster or the tile: nothing to preview, and no message on a mouse move.
            self._drop_preview()
            return
        self.request_preview(prompts)

    def request_preview(self, prompts: MapPrompts) -> None:
        """Preview `prompts` (raster CRS): from memory if decoded before, else by the worker."""
        remembered = self._remembered(prompts, self.options)
        if remembered is not None:
            self.worker.cancel(PREVIEW)
            self._show_preview(remembered)
            return
        self.worker.request(PREVIEW, self.session.engine, prompts, self.options)

    def _decode_object(self) -> None:
        self._redraw()
        prompts = self.session.prompts
        remembered = self._remembered(prompts, self.options)
        if remembered is not None:
            self.worker.cancel(OBJECT)
            self._object_pending = False
            self._object_decoded(prompts, self.options, remembered)
            return
        self._object_pending = True
        self.worker.request(OBJECT, self.session.engine, prompts, self.options)

    def _remembered(self, prompts: MapPrompts, options: SegmentOptions) -> Optional[Tuple[Segment, ...]]:
        key = (prompts, options)
        if key in self._results:
            self._results.move_to_end(key)
            return self._results[key]
        return None

    def _remember(self, prompts: MapPrompts, options: SegmentOptions, segments: Tuple[Segment, ...]) -> None:
        self._results[(prompts, options)] = segments
        while len(self._results) > _RESULT_MEMO:
            self._results.popitem(last=False)

    def _on_decoded(self, outcome: DecodeOutcome) -> None:
        if self.session is None:
            return
        if outcome.error is None:
            self._remember(outcome.prompts, outcome.options, outcome.segments)
        if outcome.kind == PREVIEW:
            if outcome.error is None and self.hover_enabled and self.canvas.mapTool() is self.tool:
                self._show_preview(outcome.segments)
            else:
                self.tool.clear_preview()
            return
        self._object_pending = False
        if outcome.error is not None:
            self._accept_pending = False
            self._say(outcome.error, Qgis.Warning)
            return
        self._object_decoded(outcome.prompts, outcome.options, outcome.segments)

    def _object_decoded(self, prompts: MapPrompts, options: SegmentOptions, segments: Sequence[Segment]) -> None:
        if not self.session.set_result(prompts, options, segments):
            return
        self._redraw()
        if not segments:
            self._say(_tr("empty mask: move the points, or lower the minimum area"), Qgis.Warning)
        else:
            scores = ", ".join(f"{segment.score:.2f}" for segment in segments)
            self._say(_tr("score {}; Enter or Accept to keep it").format(scores), Qgis.Info)
        if self._accept_pending:
            self._accept_pending = False
            self.accept()

    def _drop_preview(self) -> None:
        self.worker.cancel(PREVIEW)
        self.tool.clear_preview()

    def _show_preview(self, segments: Sequence[Segment]) -> None:
        self.tool.show_preview([segment_geometry(s) for s in segments], self._raster_crs)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Process events until no hover rest is pending and every decode came back (tests; seconds)."""
        timer = QElapsedTimer()
        timer.start()
        while self.hover_timer.isActive() and timer.elapsed() < timeout * 1000:
            QCoreApplication.processEvents(QEventLoop.AllEvents, 20)
        return self.worker.wait_idle(max(0.0, timeout - timer.elapsed() / 1000))

    # -- CRS ---------------------------------------------------------------------------------------------
    def _update_transform(self) -> None:
        if self.store is None:
            self._to_raster = None
            return
        self._to_raster = QgsCoordinateTransform(self.canvas.mapSettings().destinationCrs(), self._raster_crs,
                                                 self.project.transformContext())
        self._redraw()

    def _to_raster_xy(self, point: QgsPointXY) -> Tuple[float, float]:
        transformed = self._to_raster.transform(QgsPointXY(point))
        return transformed.x(), transformed.y()

    def _box_to_raster(self, box: QgsRectangle) -> Tuple[float, float, float, float]:
        # The raster-CRS box holding the whole dragged box (its edges are densified when reprojected).
        rect = self._to_raster.transformBoundingBox(box)
        return rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()

    def _to_canvas_point(self, x: float, y: float) -> QgsPointXY:
        return self._to_raster.transform(QgsPointXY(x, y), QgsCoordinateTransform.ReverseTransform)

    # -- drawing -----------------------------------------------------------------------------------------
    def _redraw(self) -> None:
        """Draw the current object's prompts and polygons (or nothing) on the canvas."""
        if self.session is None or self._to_raster is None:
            self.tool.show_prompts([])
            self.tool.clear_object()
            self.tool.clear_preview()
            self.objectChanged.emit()
            return
        prompts = self.session.prompts
        try:
            points = [(self._to_canvas_point(x, y), label) for (x, y), label in zip(prompts.points, prompts.labels)]
            box = None
            if prompts.box is not None:
                box = QgsGeometry.fromRect(QgsRectangle(*prompts.box))
                box.transform(self._to_raster, QgsCoordinateTransform.ReverseTransform)
        except QgsCsException:
            points, box = [], None
        self.tool.show_prompts(points, box)
        self.tool.show_object([segment_geometry(s) for s in self.session.segments], self._raster_crs)
        self.objectChanged.emit()

    # -- status and life cycle -------------------------------------------------------------------------------
    def _say(self, message: str, level: int = Qgis.Info) -> None:
        self.status = message
        self.statusChanged.emit(message, int(level))

    def _on_layer_removed(self, layer_id: str) -> None:
        if self.raster_layer is not None and layer_id == self.raster_layer.id():
            self.raster_layer = None
            self._apply_lookup(StoreLookup(problem=_tr("the raster layer was removed; choose another")))
        if self.output_choice is not None and layer_id == self.output_choice.id():
            self.output_choice = None

    def release(self) -> None:
        """Undo everything the controller set up: worker, timer, tool, drawings, signal connections."""
        self.hover_timer.stop()
        self.worker.shutdown()
        self.deactivate_tool()
        for signal, slot in self._connections:
            with contextlib.suppress(TypeError):  # already disconnected
                signal.disconnect(slot)
        self._connections = []
        self.tool.release()
        self.tool.deleteLater()

