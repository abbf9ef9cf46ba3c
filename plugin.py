"""The QuickSAM plugin shell: toolbar, Raster menu entries, Processing provider, log forwarding.

`unload()` undoes exactly what `initGui()` did, in reverse order, so that reloading the plugin leaves
nothing behind. Nothing here imports torch: the encoder runs in a separate Python process. The Segment
dock (and with it ONNX Runtime) is created on first use only, or on start when it was open at exit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import Qt, QTranslator
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QToolBar

from .core.logger import LOGGER
from .ui import ICONS_DIR, algorithm_dialogs, settings
from .ui.algorithms.provider import QuickSamProvider
from .ui.i18n import tr
from .ui.qgis_logging import QgsMessageLogHandler, install_log_handler, remove_log_handler
from .ui.translation import install_translator, remove_translator

if TYPE_CHECKING:
    from qgis.gui import QgisInterface
    from qgis.PyQt.QtCore import pyqtBoundSignal

    from .ui.dock.dock import SegmentDock

TOOLBAR_OBJECT_NAME = "QuickSamToolbar"
ENCODE_ACTION_OBJECT_NAME = "QuickSamEncodeRasterAction"
SEGMENT_ACTION_OBJECT_NAME = "QuickSamSegmentAction"
SEGMENT_ALL_ACTION_OBJECT_NAME = "QuickSamSegmentAllAction"
SETUP_ACTION_OBJECT_NAME = "QuickSamSetupAction"
SEGMENT_ALL_ALGORITHM_ID = "quicksam:segmentall"



def icon_path(name: str) -> str:
    """Absolute path of an SVG icon shipped with the plugin."""
    return str(ICONS_DIR / name)


class QuickSamPlugin:
    """The object QGIS creates through `classFactory`; it owns every piece of GUI it adds."""

    def __init__(self, iface: QgisInterface) -> None:
        self.iface = iface
        self.provider: Optional[QuickSamProvider] = None
        self.toolbar: Optional[QToolBar] = None
        self.actions: List[QAction] = []
        self.log_handler: Optional[QgsMessageLogHandler] = None
        self.segment_action: Optional[QAction] = None
        self.dock = None  # SegmentDock, created when first opened
        self.setup_dialog = None  # SetupDialog, created when first opened
        self.options_factory = None  # QuickSamOptionsFactory: the page in Settings > Options
        self.translator: Optional[QTranslator] = None  # i18n/quicksam_<locale>.qm, when there is one
        self._runtime_activated = False
        self._connections: List[Tuple[object, Callable]] = []

    @property
    def menu_name(self) -> str:
        """The submenu of the Raster menu holding the plugin's actions."""
        return tr("&QuickSAM")

    # -- Processing (also called alone by qgis_process, which has no GUI) -------------------------

    def initProcessing(self) -> None:
        """Make the set-up's ONNX Runtime importable (if installed) and register the Processing provider (once)."""
        if self.provider is not None:
            return
        self._activate_runtime()
        self.provider = QuickSamProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def unloadProcessing(self) -> None:
        if self.provider is None:
            return
        # The registry owns (and deletes) the provider once removed.
        QgsApplication.processingRegistry().removeProvider(self.provider)
        self.provider = None
        self._deactivate_runtime()

    def _activate_runtime(self) -> None:
        """Append the runtime folder the set-up installed to sys.path (nothing is installed here)."""
        from .envs.runtime import Activation
        from .ui.setup.context import activate_runtime

        self._runtime_activated = activate_runtime() is not Activation.ABSENT

    def _deactivate_runtime(self) -> None:
        if self._runtime_activated:
            from .ui.setup.context import deactivate_runtime

            deactivate_runtime()
            self._runtime_activated = False

    # -- GUI ----------------------------------------------------------------------------------------

    def initGui(self) -> None:
        self.translator = install_translator()  # first: every string below is translated
        self.log_handler = install_log_handler()
        self.initProcessing()

        self.toolbar = self.iface.addToolBar(tr("QuickSAM"))
        self.toolbar.setObjectName(TOOLBAR_OBJECT_NAME)
        self.toolbar.setToolTip(tr("QuickSAM"))

        encode = self._add_action(ENCODE_ACTION_OBJECT_NAME, "encode.svg", tr("Encode raster…"),
                                  tr("Encode a raster for Segment Anything (Processing algorithm)"))
        self._connect(encode.triggered, self.open_encode_dialog)

        segment = self._add_action(SEGMENT_ACTION_OBJECT_NAME, "segment.svg", tr("Segment…"),
                                   tr("Segment objects on an encoded raster with clicks and boxes (dock)"))
        segment.setCheckable(True)
        self._connect(segment.toggled, self.toggle_segment_dock)
        self.segment_action = segment

        segment_all = self._add_action(SEGMENT_ALL_ACTION_OBJECT_NAME, "quicksam.svg", tr("Segment everything…"),
                                       tr("Find every object on an encoded raster (Processing algorithm)"))
        self._connect(segment_all.triggered, self.open_segment_all_dialog)

        setup = QAction(QIcon(icon_path("quicksam.svg")), tr("Set up…"), self.iface.mainWindow())
        setup.setObjectName(SETUP_ACTION_OBJECT_NAME)
        setup.setToolTip(tr("Install or repair what QuickSAM needs: ONNX Runtime for QGIS, the encoder's Python"))
        self.iface.addPluginToRasterMenu(self.menu_name, setup)  # menu only, not the toolbar
        self.actions.append(setup)
        self._connect(setup.triggered, self.open_setup_dialog)
        self._register_options_page()
        if settings.SEGMENT_DOCK_OPEN.value():
            segment.setChecked(True)  # open when QGIS closed: open again (QGIS's window state places it)
        LOGGER.debug("QuickSAM GUI loaded")

    def _connect(self, signal: pyqtBoundSignal, slot: Callable) -> None:
        signal.connect(slot)
        self._connections.append((signal, slot))

    def _add_action(self, object_name: str, icon: str, text: str, tooltip: str) -> QAction:
        """A new action on the toolbar and in the Raster menu (removed again by `unload`)."""
        action = QAction(QIcon(icon_path(icon)), text, self.iface.mainWindow())
        action.setObjectName(object_name)
        action.setToolTip(tooltip)
        self.toolbar.addAction(action)
        self.iface.addPluginToRasterMenu(self.menu_name, action)
        self.actions.append(action)
        return action

    def unload(self) -> None:
        """Mirror of `initGui()`: remove the dock (and its map tool), actions, menu entries, toolbar, provider
        log handler and translator."""
        self._remove_segment_dock()
        self._unregister_options_page()
        self._remove_setup_dialog()
        for signal, slot in reversed(self._connections):
            signal.disconnect(slot)
        self._connections = []
        self.segment_action = None
        for action in reversed(self.actions):
            self.iface.removePluginRasterMenu(self.menu_name, action)
            if self.toolbar is not None:
                self.toolbar.removeAction(action)
            action.deleteLater()
        self.actions = []

        if self.toolbar is not None:
            self.iface.mainWindow().removeToolBar(self.toolbar)
            self.toolbar.deleteLater()
            self.toolbar = None

        self.unloadProcessing()

        remove_log_handler(self.log_handler)
        self.log_handler = None
        remove_translator(self.translator)
        self.translator = None

    # -- actions ------------------------------------------------------------------------------------

    def toggle_segment_dock(self, visible: bool) -> None:
        """Show (creating it on first use) or hide the Segment dock; remembered for the next start of QGIS."""
        settings.SEGMENT_DOCK_OPEN.set_value(visible)
        if visible:
            self._segment_dock().setUserVisible(True)
        elif self.dock is not None:
            self.dock.setUserVisible(False)

    def _segment_dock(self) -> SegmentDock:
        if self.dock is None:
            from .ui.dock.dock import SegmentDock  # ONNX Runtime and the dock load on first use

            self.dock = SegmentDock(self.iface, self.iface.mainWindow())
            self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
            self.dock.openedStateChanged.connect(self.segment_action.setChecked)
            self.dock.setupRequested.connect(self.open_setup_dialog)
        return self.dock

    def _remove_segment_dock(self) -> None:
        if self.dock is None:
            return
        self.dock.openedStateChanged.disconnect(self.segment_action.setChecked)
        self.dock.setupRequested.disconnect(self.open_setup_dialog)
        self.dock.release()  # map tool unset and removed, decoding stopped, signals disconnected
        self.iface.removeDockWidget(self.dock)
        self.dock.deleteLater()
        self.dock = None

    def open_setup_dialog(self) -> None:
        """Show the Set-up dialog (created on first use; kept so that a running set-up can go on)."""
        if self.setup_dialog is None:
            from .ui.setup.dialog import SetupDialog

            self.setup_dialog = SetupDialog(self.iface.mainWindow())
            self.setup_dialog.setupFinished.connect(self._recheck_dock)
        self.setup_dialog.refresh_status()
        self.setup_dialog.show()
        self.setup_dialog.raise_()

    def _remove_setup_dialog(self) -> None:
        if self.setup_dialog is None:
            return
        self.setup_dialog.setupFinished.disconnect(self._recheck_dock)
        self.setup_dialog.cancel()  # a running set-up stops; the previous state is kept
        self.setup_dialog.close()
        self.setup_dialog.deleteLater()
        self.setup_dialog = None

    def _recheck_dock(self) -> None:
        """A set-up finished: the dock looks for its store again (ONNX Runtime may be importable now)."""
        if self.dock is not None:
            self.dock.recheck()

    def _register_options_page(self) -> None:
        from .ui.options.page import QuickSamOptionsFactory

        self.options_factory = QuickSamOptionsFactory(self.open_setup_dialog)
        self.iface.registerOptionsWidgetFactory(self.options_factory)

    def _unregister_options_page(self) -> None:
        if self.options_factory is not None:
            self.iface.unregisterOptionsWidgetFactory(self.options_factory)
            self.options_factory = None

    def open_encode_dialog(self) -> None:
        """Open the Processing dialog of quicksam:encoderaster, large enough for its fields; offer the set-up when a
        run in it failed for want of an encoder environment."""
        from .ui.algorithms.encode_dialog import open_encode_dialog

        open_encode_dialog(self.iface.mainWindow(), self.open_setup_dialog, canvas=self.iface.mapCanvas())

    def open_segment_all_dialog(self) -> None:
        """Open the Processing dialog of quicksam:segmentall, its store the active raster layer's (if known)."""
        from .ui.layer_stores import store_parameters

        # The active layer's store; else the dock's raster's (the active layer is often the segments layer just
        # written); else the first raster of the project with a known store.
        candidates = [self.iface.activeLayer(), self.dock.controller.raster_layer if self.dock is not None else None,
                      *QgsProject.instance().mapLayers().values()]
        parameters = next((found for found in map(store_parameters, candidates) if found), {})
        algorithm_dialogs.run_algorithm_dialog(SEGMENT_ALL_ALGORITHM_ID, parameters, self.iface.mapCanvas())

    def _open_algorithm_dialog(self, algorithm_id: str) -> None:
        algorithm_dialogs.run_algorithm_dialog(algorithm_id, {}, self.iface.mapCanvas())
