"""The Segment dock's on-demand tiles and "Full resolution only" (QGIS layer; one piece beside the controller).

When a prompt is refused because no tile of the store holds the object's prompts (`NoTilePromptError`: across
a tile border, or outside the encoded area), `OnDemandTiles` offers to encode one tile centred on them. Accepted,
a `TileEncodeTask` (a QgsTask) runs `quicksam encode-tile` in the encoder's process (ui/tile_encoder.py; the GUI
thread never waits and QGIS never imports torch); when it ends, on the GUI thread, the store is bound again
(its engine now knows the tile), the refused prompt is applied to the object, the object decoded, and the tile
index layers of the store in the project are reloaded (the new tile shows with extra = 1).

"Full resolution only" (settings.FULL_RESOLUTION_ONLY) decodes at the finest level of a multi-scale store
(MultiScaleEngine.finest_only); prompts no finest tile holds are then offered a tile of the finest level.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from qgis.core import Qgis, QgsApplication, QgsProject, QgsTask, QgsVectorLayer
from qgis.PyQt.QtCore import QCoreApplication, QElapsedTimer, QEventLoop, QObject, pyqtSignal

from ...core.errors import QuickSamError
from ...core.logger import LOGGER
from ...core.store import TILE_INDEX, FeatureStore
from ...interactive.engine import MapPrompts, NoTilePromptError, PromptError
from ...interactive.scales import MultiScaleEngine
from ...interactive.session import SegmentSession
from ...interactive.store_lookup import StoreLookup
from .. import settings
from ..algorithms.encoder_events import run_encoder_task
from ..i18n import tr
from ..tile_encoder import run_tile_encoder
from .controller import SegmentController


@dataclass(frozen=True)
class TileOffer:
    """A refused object for which a tile is offered: the store folder, the refused prompts (raster CRS), and
    the object's prompts before the refused change (the offer holds while the object is unchanged)."""

    store: Path
    prompts: MapPrompts
    before: MapPrompts


class TileEncodeTask(QgsTask):
    """Runs the encoder process for one tile off the GUI thread (`run` touches no layer, project or widget);
    `summary` (the encoder's result) or `error` (one line) once it ends; `done(task)` is called from
    `finished`, on the GUI thread."""

    def __init__(self, offer: TileOffer, finest_only: bool, python: str,
                 done: Callable[[TileEncodeTask], None]) -> None:
        super().__init__(tr("QuickSAM: encoding a tile"), QgsTask.Flag.CanCancel)
        self.offer = offer
        self.finest_only = finest_only
        self.python = python
        self._done = done
        self.summary: Optional[Dict[str, Any]] = None
        self.error: Optional[str] = None

    def run(self) -> bool:
        def encode() -> None:
            self.summary = run_tile_encoder(str(self.offer.store), self.offer.prompts, self.finest_only,
                                            self._on_event, self.isCanceled, self.python)

        self.error = run_encoder_task(encode, tr("encoding the tile was stopped; the next try finishes it"),
                                      tr("encoding the tile failed"))
        return self.error is None

    def _on_event(self, event: Dict[str, Any]) -> None:
        if event.get("event") == "progress" and isinstance(event.get("percent"), (int, float)):
            self.setProgress(float(event["percent"]))
        elif event.get("event") in ("stderr", "info", "warning"):
            LOGGER.debug("encoder: %s", event.get("message"))

    def finished(self, result: bool) -> None:  # noqa: ARG002 - QgsTask's signature; `error` says how it went
        self._done(self)


class OnDemandTiles(QObject):
    """Offers, encodes and uses on-demand tiles for the controller's object; "Full resolution only".

    `offerChanged(bool)`: a tile is offered (the dock shows its button) or no longer. `statusChanged(str, int)`:
    a status line and its Qgis.MessageLevel. `storeReloaded()`: the store was bound again with its new tile.
    """

    offerChanged = pyqtSignal(bool)  # noqa: N815 (Qt naming)
    statusChanged = pyqtSignal(str, int)  # noqa: N815 (Qt naming)
    storeReloaded = pyqtSignal()  # noqa: N815 (Qt naming)

    def __init__(self, controller: SegmentController, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.offer: Optional[TileOffer] = None
        self.task: Optional[TileEncodeTask] = None
        self.finest_only = settings.FULL_RESOLUTION_ONLY.value()
        controller.binding.finest_only = self.finest_only
        self.refine_edges = settings.REFINE_EDGES.value()
        controller.binding.refine_edges = self.refine_edges
        self._connections = [(controller.promptsRefused, self._refused), (controller.objectChanged, self._check_offer),
                             (controller.storeChanged, self._check_offer)]
        for signal, slot in self._connections:
            signal.connect(slot)

    # -- the offer ----------------------------------------------------------------------------------------------
    def _refused(self, error: Exception) -> None:
        """A prompt change was refused: offer a tile when no tile holds the prompts (and none is being encoded)."""
        session, store = self.controller.session, self.controller.store
        if (not isinstance(error, NoTilePromptError) or error.prompts is None or session is None or store is None
                or self.busy):
            return
        self.offer = TileOffer(store.root, error.prompts, session.prompts)
        self.offerChanged.emit(True)

    def _check_offer(self) -> None:
        """The object or the store changed: an offer for another object, or another store, is withdrawn."""
        session, store = self.controller.session, self.controller.store
        offer = self.offer
        if offer is not None and (session is None or store is None or store.root != offer.store
                                  or session.prompts != offer.before):
            self.withdraw()

    def withdraw(self) -> None:
        if self.offer is not None:
            self.offer = None
            self.offerChanged.emit(False)

    # -- encoding -------------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A tile is being encoded."""
        return self.task is not None

    def encode(self) -> bool:
        """Encode the offered tile in the background (QgsTask); False when nothing is offered or a tile is being
        encoded already."""
        if self.offer is None or self.busy:
            return False
        self.task = TileEncodeTask(self.offer, self.finest_only, settings.encoder_python(), self._task_done)
        self.offer = None
        self.offerChanged.emit(False)
        QgsApplication.taskManager().addTask(self.task)
        self.statusChanged.emit(tr("encoding a tile here in the background…"), int(Qgis.MessageLevel.Info))
        return True

    def _task_done(self, task: TileEncodeTask) -> None:
        self.task = None
        if task.error is not None:
            self.statusChanged.emit(tr("no tile was encoded: {}").format(task.error), int(Qgis.MessageLevel.Warning))
            return
        store = self.controller.store
        if store is None or store.root != task.offer.store:
            return  # the dock moved on to another store meanwhile; the tile waits in its store
        reload_tile_index_layers(self.controller.project, task.offer.store)
        if not self.rebind():
            return
        try:
            apply_refused_prompts(self.controller.session, task.offer)
        except PromptError as exc:  # e.g. a point on nodata: the tile could not tell
            self.statusChanged.emit(str(exc), int(Qgis.MessageLevel.Warning))
            return
        self.controller.set_options(self.controller.options)  # decodes the object again, on the new engine

    def rebind(self) -> bool:
        """Bind the current store again (its engine reads the new manifest) keeping the object being built;
        False, with the problem said, when it cannot be opened any more."""
        controller = self.controller
        try:
            store = FeatureStore.open(controller.store.root)
        except QuickSamError as exc:
            self.statusChanged.emit(str(exc), int(Qgis.MessageLevel.Warning))
            return False
        controller.scheduler.reset()   # remembered results may now come from another tile
        controller.binding.bind(StoreLookup(store, controller.found_by))
        if controller.binding.engine is None or controller.session is None:
            controller.storeChanged.emit()
            return False
        controller.session.engine = controller.binding.engine
        self.storeReloaded.emit()
        return True

    # -- full resolution -----------------------------------------------------------------------------------------
    def set_finest_only(self, finest_only: bool) -> None:
        """Decode at the finest level only (or at the level that holds the prompts); remembered, and the object
        decoded again."""
        settings.FULL_RESOLUTION_ONLY.set_value(finest_only)
        self.finest_only = finest_only
        controller = self.controller
        controller.binding.finest_only = finest_only
        engine = controller.binding.engine
        if isinstance(engine, MultiScaleEngine):   # a store of several levels
            engine.finest_only = finest_only
            controller.scheduler.memo.clear()
            controller.set_options(controller.options)

    def set_refine_edges(self, refine_edges: bool) -> None:
        """Decode the edges of objects found on a coarser level again on the finest level (interactive/refine.py);
        remembered, and the object decoded again."""
        settings.REFINE_EDGES.set_value(refine_edges)
        self.refine_edges = refine_edges
        controller = self.controller
        controller.binding.refine_edges = refine_edges
        engine = controller.binding.engine
        if isinstance(engine, MultiScaleEngine):
            engine.refine_edges = refine_edges
            controller.scheduler.memo.clear()
            controller.set_options(controller.options)

    # -- tests and life cycle ---------------------------------------------------------------------------------------
    def wait_idle(self, timeout: float = 120.0) -> bool:
        """Process events until no tile is being encoded (tests; seconds); False on timeout."""
        timer = QElapsedTimer()
        timer.start()
        while self.busy and timer.elapsed() < timeout * 1000:
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        return not self.busy

    def release(self) -> None:
        """Disconnect, and stop a tile being encoded (its tile stays pending and the next try finishes it)."""
        for signal, slot in self._connections:
            with contextlib.suppress(TypeError):
                signal.disconnect(slot)
        self._connections = []
        if self.task is not None:
            self.task.cancel()


def apply_refused_prompts(session: Optional[SegmentSession], offer: TileOffer) -> bool:
    """Make the object's prompts the refused ones, now that a tile holds them, when the object is still what it
    was when they were refused (one point added, or the box set); False otherwise. PromptError when the store
    still refuses them."""
    if session is None or session.prompts != offer.before:
        return False
    refused, before = offer.prompts, offer.before
    if refused.box != before.box and refused.points == before.points:
        session.set_box(refused.box)
        return True
    if refused.box == before.box and refused.points[:-1] == before.points and len(refused.points) > len(before.points):
        session.add_point(*refused.points[-1], refused.labels[-1])
        return True
    return False


def reload_tile_index_layers(project: QgsProject, store: Path) -> None:
    """Reload the project's layers showing the tile index of `store` (rewritten by the encoder): they show the new
    tile."""
    index = (Path(store) / TILE_INDEX).resolve()
    for layer in project.mapLayers().values():
        if isinstance(layer, QgsVectorLayer) and layer.providerType() == "ogr":
            path = layer.source().split("|", 1)[0]
            if path and Path(path).resolve() == index:
                layer.dataProvider().reloadData()
                layer.triggerRepaint()
