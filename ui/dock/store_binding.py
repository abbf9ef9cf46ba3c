"""Which feature store serves the raster layer being segmented, and the CRS transforms between the canvas
and that raster (QGIS layer; one piece of the Segment dock's controller).

Two CRSs meet here: the map canvas's destination CRS (where the map tool reports positions) and the raster's
CRS (the store's, from its manifest: prompts, segments and the decoder work in it). The transform between
them uses the project's transform context and follows the canvas when its CRS changes; neither the project's
nor the canvas's CRS is ever changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import List, Optional, Tuple

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
)
from qgis.gui import QgsMapCanvas
from qgis.PyQt.QtCore import QObject, pyqtSignal

from ...core.errors import QuickSamError
from ...core.logger import LOGGER
from ...core.series import FrameRef
from ...core.store import FeatureStore
from ...core.store_series import frame_store, series_frames
from ...interactive.engine import SegmentEngine
from ...interactive.scales import MultiScaleEngine, open_engine
from ...interactive.store_lookup import FOUND_CHOSEN, StoreLookup, check_store_matches_layer
from ..i18n import tr
from ..layer_stores import find_layer_store, layer_raster_path, remember_layer_store
from ..layers import raster_crs

#: How a store was found when the encoder (started from the dock) has just written it.
FOUND_ENCODED = "encoded"


def runtime_importable() -> bool:
    """Whether this QGIS's Python can import ONNX Runtime now (the set-up may have just made it so)."""
    try:
        import onnxruntime  # noqa: F401 (imported to see whether it can be)
    except ImportError:
        return False
    return True


def runtime_missing_message() -> str:
    return tr("ONNX Runtime is needed to segment: Set up… installs it into your QGIS profile.")


class StoreBinding(QObject):
    """The raster layer, the store found (or chosen) for it with its decoding engine, or the plain sentence
    saying why there is none; and the canvas CRS -> raster CRS transform while a store is bound.

    `lookup_*` find a store (they change nothing but the layer property and store list that remember a
    chosen store); `bind` makes a lookup's store the current one.
    """

    #: The canvas CRS changed while a store is bound: whatever is drawn from raster-CRS data must be redrawn.
    transformChanged = pyqtSignal()  # noqa: N815 (Qt naming)

    def __init__(self, canvas: QgsMapCanvas, project: QgsProject, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.canvas = canvas
        self.project = project
        self.raster_layer: Optional[QgsRasterLayer] = None
        self.store: Optional[FeatureStore] = None
        self.engine: Optional[SegmentEngine] = None
        self.found_by = ""
        self.problem: Optional[str] = None
        #: ONNX Runtime cannot be imported: no store can be used until the set-up installs it.
        self.runtime_missing = not runtime_importable()
        #: The store's raster CRS (kept from the last store bound when none is).
        self.raster_crs = QgsCoordinateReferenceSystem()
        #: Canvas CRS -> raster CRS; None while no store is bound.
        self.to_raster: Optional[QgsCoordinateTransform] = None
        #: Decode at the finest level of a multi-scale store only ("Full resolution only", ui/dock/on_demand.py).
        self.finest_only = False
        #: MultiScaleEngine.refine_edges of the engines this binding opens.
        self.refine_edges = False
        #: The frames of a series store (core/series.py; empty for a plain store) and the one decoded; `store`
        #: stays the series' folder (frame 0's store), the engine decodes `frame_index`'s store.
        self.frames: List[FrameRef] = []
        self.frame_index = 0
        self.canvas.destinationCrsChanged.connect(self._canvas_crs_changed)

    # -- which store ------------------------------------------------------------------------------------
    def lookup_layer(self, layer: QgsRasterLayer) -> StoreLookup:
        """Segment on `layer` from now on; its store as found by store_lookup (property, folder, store list)."""
        self.raster_layer = layer
        return find_layer_store(layer)

    def lookup_chosen(self, path: str) -> StoreLookup:
        """The store folder at `path` for the current raster layer, remembered on the layer and in the store
        list when it matches the layer's raster; else a lookup with a plain problem."""
        if self.raster_layer is None:
            return StoreLookup(problem=tr("choose a raster layer in the Layers panel first"))
        raster_path = layer_raster_path(self.raster_layer)
        if raster_path is None:
            return find_layer_store(self.raster_layer)  # says why this layer cannot be segmented
        problem = check_store_matches_layer(path, raster_path)
        if problem is not None:
            return StoreLookup(problem=problem)
        store = FeatureStore.open(Path(path))
        remember_layer_store(self.raster_layer, store)
        return StoreLookup(store, FOUND_CHOSEN)

    def lookup_written(self, layer: QgsRasterLayer, written: Optional[str]) -> Optional[StoreLookup]:
        """The store the encoder wrote at `written` for `layer` (chosen as by `lookup_chosen`), or None when
        there is none or it does not match the layer's raster."""
        raster_path = layer_raster_path(layer)
        if written and raster_path and check_store_matches_layer(written, raster_path) is None:
            lookup = self.lookup_chosen(str(written))
            return dataclasses.replace(lookup, found_by=FOUND_ENCODED) if lookup.store is not None else lookup
        return None

    def forget_layer(self) -> StoreLookup:
        """The raster layer was removed from the project: no layer, and a lookup saying so."""
        self.raster_layer = None
        return StoreLookup(problem=tr("the raster layer was removed; choose another"))

    def bind(self, lookup: StoreLookup) -> None:
        """Make `lookup`'s store current, with its decoder loaded; a decoder that cannot be loaded leaves no
        store and a problem that says what to do. Without ONNX Runtime no store is bound (`runtime_missing`)."""
        previous = self.store.root if self.store is not None else None
        self.store, self.engine = None, None
        self.problem = lookup.problem
        self.found_by = lookup.found_by
        self.runtime_missing = not runtime_importable()
        if self.runtime_missing:
            self.problem = runtime_missing_message()
        elif lookup.store is not None:
            try:
                self._open_series(lookup.store, previous)
                self.engine = self._open_frame_engine(lookup.store)
            except QuickSamError as exc:
                self.problem = str(exc)
            except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own errors on a damaged decoder.onnx
                LOGGER.exception("cannot load the decoder of %s", lookup.store.root)
                self.problem = tr("cannot load this store's decoder ({}); encode the raster again into a new "
                                  "folder").format(exc)
            else:
                self.store = lookup.store
                self.raster_crs = raster_crs(lookup.store)
        self._update_transform()

    def _open_series(self, store: FeatureStore, previous: Optional[Path]) -> None:
        """Read the frames of `store` (none for a plain store); the frame decoded is kept when the same series is
        bound again (`previous`, the folder bound before: on-demand tiles), else frame 0."""
        same = previous == store.root
        self.frames = series_frames(store)
        if not same or self.frame_index >= len(self.frames):
            self.frame_index = 0

    def _open_frame_engine(self, store: FeatureStore) -> SegmentEngine:
        """The decoding engine of the current frame of `store` (the store itself when it is not a series)."""
        frame = frame_store(store, self.frames[self.frame_index]) if self.frames else store
        engine = open_engine(frame, finest_only=self.finest_only)
        if isinstance(engine, MultiScaleEngine):
            engine.refine_edges = self.refine_edges
        return engine

    def open_frame(self, index: int) -> None:
        """Decode frame `index` of the bound series from now on (its store's engine); QuickSamError (one line)
        when the frame's store cannot be opened, the current frame then kept."""
        if self.store is None or not 0 <= index < len(self.frames):
            raise QuickSamError(tr("there is no frame {} in this store").format(index))
        previous, self.frame_index = self.frame_index, index
        try:
            self.engine = self._open_frame_engine(self.store)
        except QuickSamError:
            self.frame_index = previous
            raise

    # -- canvas CRS -> raster CRS ----------------------------------------------------------------------------
    def to_raster_xy(self, point: QgsPointXY) -> Tuple[float, float]:
        """`point` (canvas CRS) in the raster CRS; QgsCsException when it cannot be transformed."""
        transformed = self.to_raster.transform(QgsPointXY(point))
        return transformed.x(), transformed.y()

    def box_to_raster(self, box: QgsRectangle) -> Tuple[float, float, float, float]:
        """The raster-CRS box (xmin, ymin, xmax, ymax) holding the whole canvas-CRS `box` (its edges are
        densified when reprojected); QgsCsException when it cannot be transformed."""
        rect = self.to_raster.transformBoundingBox(box)
        return rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()

    def _update_transform(self) -> None:
        if self.store is None:
            self.to_raster = None
            return
        self.to_raster = QgsCoordinateTransform(self.canvas.mapSettings().destinationCrs(), self.raster_crs,
                                                self.project.transformContext())

    def _canvas_crs_changed(self) -> None:
        self._update_transform()
        if self.to_raster is not None:
            self.transformChanged.emit()

    def release(self) -> None:
        """Stop following the canvas (before the binding is deleted)."""
        with contextlib.suppress(TypeError):  # already disconnected
            self.canvas.destinationCrsChanged.disconnect(self._canvas_crs_changed)
