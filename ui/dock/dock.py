"""The Segment dock: shows the store, the object and the options, and forwards what the user asks for.

Layout in ui/segment_dock.ui (Qt Designer, loaded at run time). Everything it does goes through the
SegmentController; options are remembered in settings.py.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable, Optional

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMapLayer,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsRasterLayer,
    QgsUnitTypes,
    QgsVectorLayer,
)
from qgis.gui import QgisInterface, QgsDockWidget
from qgis.PyQt import uic
from qgis.PyQt.QtCore import pyqtBoundSignal, pyqtSignal
from qgis.PyQt.QtWidgets import QFileDialog, QWidget

from ...core.defaults import MASK_MODES
from ...core.store import STATUS_DONE, FeatureStore
from ...interactive.scales import MultiScaleEngine
from ...interactive.session import SegmentOptions
from ...interactive.store_lookup import FOUND_BY_PROPERTY, FOUND_CHOSEN, FOUND_IN_STORE_LIST, FOUND_NEXT_TO_RASTER
from .. import FORMS_DIR, settings
from ..i18n import tr
from ..layers import OUTPUT_FILE, raster_crs
from .controller import SegmentController
from .frames import SeriesFrames
from .level_text import preview_message
from .on_demand import OnDemandTiles
from .series_panel import SeriesPanel
from .store_binding import FOUND_ENCODED, runtime_missing_message
from .tracking import DockTracking

UI_PATH = FORMS_DIR / "segment_dock.ui"
FORM_CLASS, _ = uic.loadUiType(str(UI_PATH))
DOCK_OBJECT_NAME = "QuickSamSegmentDock"

_LEVEL_COLOURS = {Qgis.MessageLevel.Info: "", Qgis.MessageLevel.Success: "#1a7f37",
                  Qgis.MessageLevel.Warning: "#b35900", Qgis.MessageLevel.Critical: "#c62828"}


def mask_mode_labels() -> dict:
    return {"single": tr("Single mask"), "best": tr("Best score of 3"), "largest": tr("Largest of 3"),
            "smallest": tr("Smallest of 3"), "all": tr("All 3 candidates")}


def found_by_text(found_by: str) -> str:
    """How the store was found, as a phrase of its own on the store line ("" when not known)."""
    return {FOUND_BY_PROPERTY: tr("store remembered with the layer"),
            FOUND_NEXT_TO_RASTER: tr("store found next to the raster"),
            FOUND_IN_STORE_LIST: tr("store from your store list"), FOUND_CHOSEN: tr("store chosen by you"),
            FOUND_ENCODED: tr("store just encoded")}.get(found_by, "")


class SegmentDock(QgsDockWidget, FORM_CLASS):
    """Store line, Segment tool, Undo / Clear / Accept, options, output layer and a status line.

    `setupRequested`: the user asked for QuickSAM's set-up (ONNX Runtime cannot be imported); the plugin
    opens its Set-up dialog and calls `recheck` once a set-up finished.
    """

    setupRequested = pyqtSignal()  # noqa: N815 (Qt naming)

    def __init__(self, iface: QgisInterface, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setupUi(self)
        self.setObjectName(DOCK_OBJECT_NAME)
        self.iface = iface
        self.controller = SegmentController(iface.mapCanvas(), QgsProject.instance(), self)
        self.on_demand = OnDemandTiles(self.controller, self)
        self.series = SeriesPanel(self, SeriesFrames(self.controller, self), self)
        self.tracking = DockTracking(self.controller, self.series, self)
        self._setup_widgets()
        self._load_settings()
        self._connections = []
        self._connect_all()
        self.show_store()
        self.show_object()

    # -- set-up --------------------------------------------------------------------------------------
    def _setup_widgets(self) -> None:
        self.toolButton.setIcon(QgsApplication.getThemeIcon("/mActionAddBasicShape.svg"))
        self.undoButton.setIcon(QgsApplication.getThemeIcon("/mActionUndo.svg"))
        self.clearButton.setIcon(QgsApplication.getThemeIcon("/mActionDeleteSelected.svg"))
        self.acceptButton.setIcon(QgsApplication.getThemeIcon("/mActionSaveEdits.svg"))
        self.browseButton.setIcon(QgsApplication.getThemeIcon("/mActionFileOpen.svg"))
        labels = mask_mode_labels()
        for mode in MASK_MODES:
            self.maskModeCombo.addItem(labels[mode], mode)
        self.outputLayerCombo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.outputLayerCombo.setAllowEmptyLayer(True, tr("Store's {}").format(OUTPUT_FILE))
        self.outputLayerCombo.setLayer(None)
        self.encodeButton.setVisible(False)
        self.setupButton.setVisible(False)
        self.encodeTileButton.setVisible(False)

    def _load_settings(self) -> None:
        index = self.maskModeCombo.findData(settings.MASK_MODE.value())
        self.maskModeCombo.setCurrentIndex(max(index, 0))
        self.minAreaSpin.setValue(settings.MIN_AREA_PIXELS.value())
        self.simplifySpin.setValue(settings.SIMPLIFY_TOLERANCE.value())
        self.keepHolesCheck.setChecked(settings.KEEP_HOLES.value())
        self.keepPromptsCheck.setChecked(settings.KEEP_PROMPTS.value())
        self.randomColoursCheck.setChecked(settings.RANDOM_COLOURS.value())
        self.hoverCheck.setChecked(settings.HOVER_PREVIEW.value())
        self.fullResolutionCheck.setChecked(self.on_demand.finest_only)
        self.refineEdgesCheck.setChecked(self.on_demand.refine_edges)
        self.controller.set_options(self.options())
        self.controller.set_hover_enabled(self.hoverCheck.isChecked())
        self.controller.output.keep_prompts = self.keepPromptsCheck.isChecked()
        self.controller.output.random_colours = self.randomColoursCheck.isChecked()

    def _connect(self, signal: pyqtBoundSignal, slot: Callable) -> None:
        signal.connect(slot)
        self._connections.append((signal, slot))

    def _connect_all(self) -> None:
        controller = self.controller
        self._connect(self.browseButton.clicked, self._browse_store)
        self._connect(self.storeEdit.editingFinished, self._store_edited)
        self._connect(self.showTilesButton.clicked, controller.show_tile_index)
        self._connect(self.encodeButton.clicked, self._encode_raster)
        self._connect(self.setupButton.clicked, self.setupRequested)
        self._connect(self.toolButton.toggled, self._tool_toggled)
        self._connect(self.undoButton.clicked, controller.undo)
        self._connect(self.clearButton.clicked, controller.clear)
        self._connect(self.acceptButton.clicked, controller.accept)
        self._connect(self.hoverCheck.toggled, self._hover_toggled)
        self._connect(self.maskModeCombo.currentIndexChanged, self._options_changed)
        self._connect(self.minAreaSpin.valueChanged, self._options_changed)
        self._connect(self.simplifySpin.valueChanged, self._options_changed)
        self._connect(self.keepHolesCheck.toggled, self._options_changed)
        self._connect(self.labelEdit.textChanged, self._label_changed)
        self._connect(self.keepPromptsCheck.toggled, self._keep_prompts_toggled)
        self._connect(self.randomColoursCheck.toggled, self._random_colours_toggled)
        self._connect(self.outputLayerCombo.layerChanged, self._output_changed)
        self._connect(controller.statusChanged, self.show_status)
        self._connect(self.encodeTileButton.clicked, self.on_demand.encode)
        self._connect(self.fullResolutionCheck.toggled, self.on_demand.set_finest_only)
        self._connect(self.refineEdgesCheck.toggled, self.on_demand.set_refine_edges)
        self._connect(self.on_demand.offerChanged, self.encodeTileButton.setVisible)
        self._connect(self.on_demand.statusChanged, self.show_status)
        self._connect(self.on_demand.storeReloaded, self.show_store)
        self._connect(self.series.frames.statusChanged, self.show_status)
        self._connect(self.tracking.statusChanged, self.show_status)
        self._connect(controller.scheduler.previewDecoded, self._show_preview_level)
        self._connect(controller.storeChanged, self.show_store)
        self._connect(controller.objectChanged, self.show_object)
        self._connect(controller.tool.activated, self._tool_activated)
        self._connect(controller.tool.deactivated, self._tool_deactivated)
        self._connect(self.opened, self._on_opened)
        self._connect(self.closed, controller.deactivate_tool)
        if hasattr(self.iface, "currentLayerChanged"):
            self._connect(self.iface.currentLayerChanged, self._current_layer_changed)

    def release(self) -> None:
        """Disconnect everything and release the controller (tool, worker) before the dock is deleted."""
        for signal, slot in self._connections:
            try:
                signal.disconnect(slot)
            except TypeError:
                continue  # already disconnected (or never connected by the stub iface of tests)
        self._connections = []
        self.on_demand.release()
        self.tracking.release()
        self.series.release()
        self.controller.release()

    # -- following the map --------------------------------------------------------------------------
    def follow_active_layer(self) -> None:
        """Segment on the active raster layer (or the first raster on the map when none is active)."""
        layer = self.iface.activeLayer()
        if not isinstance(layer, QgsRasterLayer):
            layer = next((candidate for candidate in self.iface.mapCanvas().layers()
                          if isinstance(candidate, QgsRasterLayer)), None)
        if layer is not None and layer is not self.controller.raster_layer:
            self.controller.set_raster_layer(layer)

    def _current_layer_changed(self, layer: Optional[QgsMapLayer]) -> None:
        if isinstance(layer, QgsRasterLayer) and layer is not self.controller.raster_layer and self.isUserVisible():
            self.controller.set_raster_layer(layer)

    def _encode_raster(self) -> None:
        self.controller.encode_raster(self.setupRequested.emit)

    def recheck(self) -> None:
        """Look for the store again if none is in use (after a set-up, or an encoding started elsewhere)."""
        self.controller.recheck()

    def _on_opened(self) -> None:
        layer = self.controller.raster_layer
        self.follow_active_layer()
        if self.controller.raster_layer is layer:
            self.recheck()
        if self.controller.store is not None:
            self.controller.activate_tool()

    # -- store --------------------------------------------------------------------------------------
    def _browse_store(self) -> None:
        start = self.storeEdit.text() or str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, tr("Feature store folder"), start)
        if folder:
            self.storeEdit.setText(folder)
            self.controller.choose_store(folder)

    def _store_edited(self) -> None:
        if not self.storeEdit.isModified():
            return  # focus left the line without an edit by the user
        text = self.storeEdit.text().strip()
        current = str(self.controller.store.root) if self.controller.store is not None else ""
        if text and text != current:
            self.controller.choose_store(text)
        self.storeEdit.setModified(False)

    def show_store(self) -> None:
        controller, store = self.controller, self.controller.store
        if store is not None:
            self.storeEdit.setText(str(store.root))
            done = sum(1 for tile in store.grid if store.status(tile) == STATUS_DONE)
            lines = [tr("{model} · {done} of {tiles} tiles encoded · {crs}").format(
                model=store.model_name, done=done, tiles=len(store.grid),
                crs=store.manifest.raster.crs_name or ""), levels_text(controller.binding.engine, store),
                found_by_text(controller.found_by)]
            lines = [html.escape(line, quote=False) for line in lines if line]
            if store.manifest.model.random_weights:
                warning = tr("Random weights (a test model): the masks mean nothing.")
                lines.append(f'<span style="color:#c62828"><b>{html.escape(warning, quote=False)}</b></span>')
            self.storeInfoLabel.setText("<br>".join(lines))
            units = QgsUnitTypes.toAbbreviatedString(raster_crs(store).mapUnits())
            self.simplifySpin.setSuffix(f" {units}" if units else "")
        else:
            if not self.storeEdit.isModified():
                self.storeEdit.clear()  # no stale path of another raster's store; what the user typed stays
            if controller.binding.runtime_missing:
                text = runtime_missing_message()  # first of all, whatever the layer
            elif controller.raster_layer is None:
                text = tr("Select a raster layer in the Layers panel.")
            else:
                text = controller.problem or tr("no feature store")
            self.storeInfoLabel.setText(f'<span style="color:#b35900">{html.escape(text, quote=False)}</span>')
        runtime_missing = controller.binding.runtime_missing
        self.setupButton.setVisible(runtime_missing)  # the set-up comes first: it also installs the encoder
        self.encodeButton.setVisible(store is None and controller.raster_layer is not None and not runtime_missing)
        self.showTilesButton.setEnabled(store is not None)
        self.toolButton.setEnabled(store is not None)
        self.show_object()

    # -- object and tool --------------------------------------------------------------------------------
    def show_object(self) -> None:
        session = self.controller.session
        has_prompts = session is not None and not session.prompts.is_empty()
        self.undoButton.setEnabled(session is not None and session.undo_depth > 0)
        self.clearButton.setEnabled(has_prompts)
        self.acceptButton.setEnabled(has_prompts)

    def _show_preview_level(self, segments: object) -> None:
        """Which level the hover preview came from ("" when there is none)."""
        crs = self.controller.binding.raster_crs
        self.levelLabel.setText(preview_message(segments, crs) if isinstance(segments, tuple) else "")

    def show_status(self, message: str, level: int) -> None:
        colour = _LEVEL_COLOURS.get(level, "")
        self.statusLabel.setStyleSheet(f"color: {colour}" if colour else "")
        self.statusLabel.setText(message)

    def _tool_toggled(self, checked: bool) -> None:
        if checked:
            self.controller.activate_tool()
        else:
            self.controller.deactivate_tool()

    def _tool_activated(self) -> None:
        self._show_tool_state(True)

    def _tool_deactivated(self) -> None:
        # Emitted while the canvas still holds the tool: follow the signal, not canvas.mapTool().
        self._show_tool_state(False)

    def _show_tool_state(self, active: bool) -> None:
        self.toolButton.blockSignals(True)
        self.toolButton.setChecked(active)
        self.toolButton.blockSignals(False)

    # -- options ----------------------------------------------------------------------------------------
    def options(self) -> SegmentOptions:
        return SegmentOptions(mode=self.maskModeCombo.currentData() or "single",
                              min_area_pixels=float(self.minAreaSpin.value()),
                              simplify_tolerance=float(self.simplifySpin.value()),
                              keep_holes=self.keepHolesCheck.isChecked())

    def _options_changed(self, *_: object) -> None:
        options = self.options()
        settings.MASK_MODE.set_value(options.mode)
        settings.MIN_AREA_PIXELS.set_value(int(options.min_area_pixels))
        settings.SIMPLIFY_TOLERANCE.set_value(options.simplify_tolerance)
        settings.KEEP_HOLES.set_value(options.keep_holes)
        self.controller.set_options(options)

    def _hover_toggled(self, checked: bool) -> None:
        settings.HOVER_PREVIEW.set_value(checked)
        self.controller.set_hover_enabled(checked)

    def _label_changed(self, text: str) -> None:
        self.controller.output.label = text.strip()

    def _keep_prompts_toggled(self, checked: bool) -> None:
        settings.KEEP_PROMPTS.set_value(checked)
        self.controller.output.keep_prompts = checked

    def _random_colours_toggled(self, checked: bool) -> None:
        settings.RANDOM_COLOURS.set_value(checked)
        self.controller.output.set_random_colours(checked)

    def _output_changed(self, layer: Optional[QgsMapLayer]) -> None:
        self.controller.output.choose(layer if isinstance(layer, QgsVectorLayer) else None)


def levels_text(engine: object, store: FeatureStore) -> str:
    """"3 levels: 10, 40, 160 m per pixel" for a multi-scale store (interactive/scales.py), else ""."""
    if not isinstance(engine, MultiScaleEngine):
        return ""
    units = QgsUnitTypes.toAbbreviatedString(raster_crs(store).mapUnits())
    resolutions = ", ".join(f"{level.store.manifest.pixel_grid.resolution:.4g}" for level in engine.level_engines)
    return tr("{count} levels: {resolutions} {units} per pixel").format(
        count=len(engine.level_engines), resolutions=resolutions, units=units)

