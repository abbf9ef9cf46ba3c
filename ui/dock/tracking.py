"""The Segment dock's **Track**: the current object followed through the frames of a series store (QGIS layer;
one piece beside the controller).

Track takes the object's prompts (raster CRS) on the frame the dock decodes, plans the run
(interactive/tracking.plan_track: the level and tile holding the prompts, as the dock decodes them) and starts a
`TrackTask` (a QgsTask: progress and cancel in QGIS's task manager and on the dock's button) that runs the tracker
in the encoder's process (ui/track_runner.py; QGIS never imports torch). Each frame's polygons reach the GUI thread
through a queued signal and are added to the store's tracks layer (`tracks.gpkg` in the store folder, layer
`tracks`, temporal from its date-time fields: ui/track_layer.py) as they arrive; the object gets the next free
`obj_id` of that layer. The run's work folder (mask prompts, the tracker's per-frame files) is a temporary folder
removed when the run ends, however it ends.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, List, Optional

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsFeature,
    QgsFeatureRequest,
    QgsFields,
    QgsTask,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QObject, pyqtSignal

from ...core.errors import QuickSamError
from ...interactive.engine import PromptError
from ...interactive.tracking import ObjectPrompts, TrackPlan, plan_track
from .. import settings
from ..algorithms.encoder_events import run_encoder_task
from ..i18n import tr
from ..track_layer import TRACK_LAYER, save_temporal_style, set_temporal, track_feature, track_fields
from ..track_runner import run_tracker
from .controller import SegmentController
from .object_writer import add_to_project_once
from .series_panel import SeriesPanel

TRACKS_FILE = "tracks.gpkg"


class TrackTask(QgsTask):
    """Runs the tracker off the GUI thread (`run` touches no layer); `arrived(records, fraction)` carries each
    frame's records to the GUI thread; `error` (one line) once it ends; `done(task)` from `finished`."""

    class Relay(QObject):
        arrived = pyqtSignal(list, float)

    def __init__(self, plan: TrackPlan, python: str, done: Any) -> None:
        super().__init__(tr("QuickSAM: tracking an object"), QgsTask.Flag.CanCancel)
        self.plan = plan
        self.python = python
        self.relay = TrackTask.Relay()
        self._done = done
        self.error: Optional[str] = None
        self.frames_received = 0

    def run(self) -> bool:
        self.error = run_encoder_task(lambda: run_tracker(self.plan, self._received, self.isCanceled, self.python),
                                      tr("tracking was stopped; the frames tracked so far are kept"),
                                      tr("tracking failed"))
        return self.error is None

    def _received(self, records: List[Any], progress: Any) -> None:
        self.frames_received += 1
        self.setProgress(100.0 * progress.fraction)
        self.relay.arrived.emit(list(records), float(progress.fraction))

    def finished(self, result: bool) -> None:  # noqa: ARG002 - QgsTask's signature; `error` says how it went
        self._done(self)


class DockTracking(QObject):
    """Track / Stop for the controller's object; `statusChanged(message, level)` says how it goes."""

    statusChanged = pyqtSignal(str, int)  # noqa: N815 (Qt naming)

    def __init__(self, controller: SegmentController, panel: SeriesPanel, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.panel = panel
        self.task: Optional[TrackTask] = None
        self.layer: Optional[QgsVectorLayer] = None
        panel.connect(panel.dock.trackButton.clicked, self.track_or_stop)

    @property
    def busy(self) -> bool:
        return self.task is not None

    def track_or_stop(self) -> bool:
        """Start tracking the current object, or stop the run under way."""
        if self.task is not None:
            self.task.cancel()
            return False
        return self.track()

    def track(self) -> bool:
        """Track the current object from the current frame in the panel's direction; False (with the reason on
        the status line) when there is nothing to track or it cannot be planned."""
        controller = self.controller
        session, store = controller.session, controller.store
        if session is None or store is None or session.prompts.is_empty():
            return self._say(tr("click on the object to track first"), Qgis.MessageLevel.Warning)
        work = Path(tempfile.mkdtemp(prefix="quicksam-track-"))
        try:
            layer = self.tracks_layer()
            obj_id = next_object_id(layer)
            plan = plan_track(store, [ObjectPrompts(obj_id, session.prompts)], controller.binding.frame_index,
                              self.panel.direction, work, engine=controller.binding.engine)
        except (QuickSamError, PromptError, OSError) as exc:
            shutil.rmtree(work, ignore_errors=True)
            return self._say(str(exc), Qgis.MessageLevel.Warning)
        self.task = TrackTask(plan, settings.encoder_python(), self._task_done)
        self.task.relay.arrived.connect(self._arrived)
        self._show_running(True)
        QgsApplication.taskManager().addTask(self.task)
        return self._say(tr("tracking object {} over {} frames in the background…").format(
            obj_id, len(plan.job.frames)), Qgis.MessageLevel.Info, True)

    def tracks_layer(self) -> QgsVectorLayer:
        """The store's tracks layer (created with its temporal style on first use), in the project once.
        OSError when it cannot be created."""
        store = self.controller.store
        path = store.root / TRACKS_FILE
        if not path.exists():
            create_tracks_file(path, self.controller.binding.raster_crs, self.controller.project)
        layer = QgsVectorLayer(f"{path}|layername={TRACK_LAYER}", tr("QuickSAM tracks"), "ogr")
        if not layer.isValid():
            raise OSError(tr("'{}' cannot be opened as the tracks layer; move it away to start a new one").format(path))
        set_temporal(layer)
        self.layer = add_to_project_once(self.controller.project, layer)
        return self.layer

    def _arrived(self, records: List[Any], fraction: float) -> None:
        """On the GUI thread: add a frame's records to the tracks layer."""
        layer = self.layer
        if layer is None:
            return
        fields, track = layer.fields(), track_fields()
        layer.dataProvider().addFeatures([in_layer_fields(track_feature(record, track), fields)
                                          for record in records])
        layer.updateExtents()
        layer.triggerRepaint()
        self.panel.dock.trackProgress.setValue(int(round(100 * fraction)))

    def _task_done(self, task: TrackTask) -> None:
        self.task = None
        shutil.rmtree(task.plan.job.output_dir, ignore_errors=True)  # its records have reached the layer
        self._show_running(False)
        if task.error is not None:
            self._say(tr("tracking ended early: {}").format(task.error), Qgis.MessageLevel.Warning)
        else:
            self._say(tr("tracked: {} frames added to the tracks layer").format(task.frames_received),
                      Qgis.MessageLevel.Success)

    def _show_running(self, running: bool) -> None:
        dock = self.panel.dock
        dock.trackButton.setText(tr("Stop") if running else tr("Track"))
        dock.trackProgress.setValue(0)
        dock.trackProgress.setVisible(running)

    def _say(self, message: str, level: int, ok: bool = False) -> bool:
        self.statusChanged.emit(message, int(level))
        return ok

    def release(self) -> None:
        if self.task is not None:
            self.task.cancel()


def create_tracks_file(path: Path, crs: Any, project: Any) -> None:
    """An empty GeoPackage `path` with the `tracks` layer (track_layer.track_fields, MultiPolygon, `crs`) and its
    temporal style stored as the layer's default. OSError when it cannot be written."""
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = TRACK_LAYER
    writer = QgsVectorFileWriter.create(str(path), track_fields(), QgsWkbTypes.Type.MultiPolygon, crs,
                                        project.transformContext(), options)
    if writer.hasError() != QgsVectorFileWriter.WriterError.NoError:
        message = writer.errorMessage()
        del writer
        raise OSError(tr("the tracks layer cannot be written to '{}' ({})").format(path, message))
    del writer
    save_temporal_style(path, TRACK_LAYER)


def in_layer_fields(feature: QgsFeature, fields: QgsFields) -> QgsFeature:
    """`feature` with the layer's `fields` (a GeoPackage layer has its `fid` first), attributes taken by name."""
    copy = QgsFeature(fields)
    copy.setGeometry(feature.geometry())
    for name in feature.fields().names():
        copy.setAttribute(name, feature[name])
    return copy


def next_object_id(layer: QgsVectorLayer) -> int:
    """One more than the largest `obj_id` in `layer` (1 for an empty layer)."""
    request = QgsFeatureRequest().setFlags(QgsFeatureRequest.Flag.NoGeometry).setSubsetOfAttributes(["obj_id"],
                                                                                                  layer.fields())
    ids = [feature["obj_id"] for feature in layer.getFeatures(request)]
    return max((int(value) for value in ids if value is not None), default=0) + 1

