"""Processing algorithm quicksam:trackobjects: track objects prompted on one frame through a series store.

The same core as the dock: prompt features become objects (track_prompts.py), `interactive.tracking.plan_track`
chooses each object's level and tile, `ui.track_runner.run_tracker` runs SAM 2's video memory in the encoder's
process (`quicksam track-masks`; QGIS's Python never imports torch), and each frame's masks become polygons in
the raster's CRS as they arrive. `quicksam track` (the CLI) runs this algorithm.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (
    QgsCoordinateTransform,
    QgsFeatureRequest,
    QgsFeatureSink,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeatureSource,
    QgsProcessingFeedback,
    QgsProcessingOutputBoolean,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsWkbTypes,
)

from ...core.errors import Cancelled, QuickSamError
from ...core.store import FeatureStore
from ...core.track_job import DIRECTIONS
from ...interactive.track_features import TrackedShape
from ...interactive.tracking import TrackPlan, parse_frame_range, plan_track, series_of
from ..i18n import tr as _tr
from ..layers import raster_crs
from ..track_layer import TemporalLayer, track_feature, track_fields
from ..track_runner import TrackProgress, run_tracker
from .algorithm_base import started_by_command_line
from .encoder_events import in_dialog_words
from .segment_algorithm import DecodingAlgorithm, open_store, output_layer_name
from .track_prompts import POLYGON_MODES, check_prompt_fields, prompt_frame, read_track_prompts


class TrackObjectsAlgorithm(DecodingAlgorithm):
    """Track objects through the frames of a series store; one polygon per object per frame."""

    GROUP_ID = "segmentation"
    PROMPTS = "PROMPTS"
    OBJECT_ID = "OBJECT_ID"
    FRAME_FIELD = "FRAME_FIELD"
    FRAME = "FRAME"
    LABEL_FIELD = "LABEL_FIELD"
    POLYGONS = "POLYGONS"
    DIRECTION = "DIRECTION"
    FRAMES = "FRAMES"
    OUTPUT = "OUTPUT"
    TRACKED = "TRACKED"
    ABSENT = "ABSENT"
    TEMPORAL = "TEMPORAL"

    def name(self) -> str:
        return "trackobjects"

    def displayName(self) -> str:
        return _tr("Track objects through a time series")

    def shortHelpString(self) -> str:
        return _tr(
            "<p>Tracks objects through the frames (dates) of a <b>series store</b> with SAM 2's video memory, from "
            "prompts on one frame, and writes one polygon per object per frame (in the raster's CRS), a layer the "
            "Temporal Controller animates.</p>"
            "<p><b>Prompts</b>: points (the label field: 1 = foreground, 0 = background) and polygons: a polygon is "
            "a mask prompt (its shape, e.g. an accepted object) or, as chosen, a box prompt (its extent). Features "
            "sharing an <b>object id</b> are one object, which keeps that id on every frame; without the field each "
            "feature is an object. All prompts are on one frame: the <b>frame field</b>'s value or the <b>frame</b> "
            "number (series index, 0 = the earliest date).<br>"
            "<b>Direction</b>: forward (later frames), backward (earlier) or both. <b>Frames</b>: A:B limits the "
            "run to series frames A to B (inclusive).</p>"
            "<p>Attributes: obj_id, frame, datetime (the frame's date-time) and datetime_end (the next frame's), "
            "score (SAM 2's object score, 0..1), area (map units²), present (false: the object was lost on that "
            "frame; the feature then has no geometry), level, resolution. Frames without dates leave datetime "
            "empty and the layer is not temporal.</p>"
            "<p>Tracking runs in the encoder's Python (the one 'Encode raster for SAM' uses).</p>")

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:
        self._add_store_parameter()
        self._add(QgsProcessingParameterFeatureSource(
            self.PROMPTS, _tr("Prompts (points and/or polygons)"),
            [QgsProcessing.SourceType.TypeVectorPoint, QgsProcessing.SourceType.TypeVectorPolygon]),
            _tr("Points and polygons on one frame; any CRS."))
        self._add(QgsProcessingParameterField(self.OBJECT_ID, _tr("Object id field"),
                                              parentLayerParameterName=self.PROMPTS, optional=True),
                  _tr("Features with the same whole number are one object with that id; empty: each feature is one."))
        self._add(QgsProcessingParameterField(self.FRAME_FIELD, _tr("Frame field"),
                                              parentLayerParameterName=self.PROMPTS, optional=True),
                  _tr("The series frame (index) each prompt is on; all must be the same."))
        self._add(QgsProcessingParameterNumber(self.FRAME, _tr("Frame of the prompts (without a frame field)"),
                                               QgsProcessingParameterNumber.Type.Integer, optional=True, minValue=0),
                  _tr("The series frame (index, 0 = earliest) the prompts are on."))
        self._add(QgsProcessingParameterField(self.LABEL_FIELD, _tr("Label field (1 = foreground, 0 = background)"),
                                              parentLayerParameterName=self.PROMPTS, optional=True),
                  _tr("For points; empty values and no field mean foreground."), advanced=True)
        self._add(QgsProcessingParameterEnum(self.POLYGONS, _tr("Polygons are"), options=[
            _tr("mask prompts (their shape)"), _tr("box prompts (their extent)")], defaultValue=0),
            _tr("A polygon gives SAM 2 its shape as a mask, or its extent as a box."), advanced=True)
        self._add(QgsProcessingParameterEnum(self.DIRECTION, _tr("Direction"), options=list(DIRECTIONS),
                                             defaultValue=DIRECTIONS.index("both")),
                  _tr("forward: later frames; backward: earlier frames; both."))
        self._add(QgsProcessingParameterString(self.FRAMES, _tr("Frames (A:B, inclusive; empty = all)"),
                                               optional=True),
                  _tr("Series frame indices to track, e.g. 2:7; it must hold the prompts' frame."))
        self._add(QgsProcessingParameterFeatureSink(
            self.OUTPUT, _tr("Tracked objects"), QgsProcessing.SourceType.TypeVectorPolygon),
            _tr("One polygon per object per frame, in the raster's CRS, with date-times for the Temporal Controller."))
        self.addOutput(QgsProcessingOutputNumber(self.TRACKED, _tr("Features written")))
        self.addOutput(QgsProcessingOutputNumber(self.ABSENT, _tr("Frames where an object was lost")))
        self.addOutput(QgsProcessingOutputBoolean(self.TEMPORAL, _tr("Every frame has a date-time")))

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        store = open_store(self.parameterAsFile(parameters, self.STORE, context))
        work = Path(tempfile.mkdtemp(prefix="quicksam-track-", dir=QgsProcessingUtils.tempFolder()))
        try:
            plan = self._plan(parameters, context, feedback, store, work)
            sink, dest_id = self._create_sink(parameters, context, store, plan)
            counts = self._track(plan, sink, feedback)
        except Cancelled:
            raise QgsProcessingException(_tr("Tracking cancelled; the frames tracked so far are in the output.")) \
                from None
        except QuickSamError as exc:   # the dialog names its fields, not the CLI's options
            raise QgsProcessingException(str(exc) if started_by_command_line(context) else in_dialog_words(str(exc))) \
                from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        feedback.pushInfo(_tr("{written} features written ({objects} objects on {frames} frames; {absent} times an "
                              "object was lost).").format(written=counts[0], objects=_object_count(plan),
                                                          frames=len(plan.job.frames), absent=counts[1]))
        return {self.OUTPUT: dest_id, self.TRACKED: counts[0], self.ABSENT: counts[1], self.TEMPORAL: plan.dated}

    def _plan(self, parameters: Dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback,
              store: FeatureStore, work: Path) -> TrackPlan:
        """The track plan of the parameters (QuickSamError, one line, for bad prompts, frames or store)."""
        frames = series_of(store)
        objects, frame = self._read_objects(parameters, context, feedback, store)
        frame_range = parse_frame_range(self.parameterAsString(parameters, self.FRAMES, context), len(frames))
        direction = DIRECTIONS[self.parameterAsEnum(parameters, self.DIRECTION, context)]
        plan = plan_track(store, objects, frame, direction, work, frame_range)
        if not plan.dated:
            feedback.pushWarning(_tr("The frames have no date-times: the datetime fields stay empty and the layer "
                                     "is not temporal (frames are known by their index)."))
        return plan

    def _read_objects(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                      feedback: QgsProcessingFeedback, store: FeatureStore) -> Tuple[list, int]:
        """The objects (raster CRS) and the frame they are prompted on."""
        source = self.parameterAsSource(parameters, self.PROMPTS, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.PROMPTS))
        if source.featureCount() == 0:
            raise QuickSamError(_tr("The prompt layer has no features: add points or polygons on one frame."))
        fields = [self.parameterAsString(parameters, name, context) or None
                  for name in (self.OBJECT_ID, self.FRAME_FIELD, self.LABEL_FIELD)]
        check_prompt_fields(_tr("The prompt layer"), source.fields().names(),
                            list(zip((self.OBJECT_ID, self.FRAME_FIELD, self.LABEL_FIELD), fields)))
        crs, source_crs = raster_crs(store), source.sourceCrs()
        transform = QgsCoordinateTransform(source_crs, crs, context.transformContext()) \
            if source_crs.isValid() and source_crs != crs else None
        features = source.getFeatures(QgsFeatureRequest(),
                                      QgsProcessingFeatureSource.Flag.FlagSkipGeometryValidityChecks)
        polygons = POLYGON_MODES[self.parameterAsEnum(parameters, self.POLYGONS, context)]
        objects, frames = read_track_prompts(features, transform, *fields, polygons_as=polygons)
        given = parameters.get(self.FRAME)
        frame = prompt_frame(frames, self.parameterAsInt(parameters, self.FRAME, context)
                             if given is not None and given != "" else None,
                             "--frame" if started_by_command_line(context) else self.FRAME)
        return objects, frame

    def _create_sink(self, parameters: Dict[str, Any], context: QgsProcessingContext, store: FeatureStore,
                     plan: TrackPlan) -> Tuple[QgsFeatureSink, str]:
        """The output sink; the layer Processing loads is named after the raster and made temporal."""
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, track_fields(),
                                             QgsWkbTypes.Type.MultiPolygon, raster_crs(store))
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        if context.willLoadLayerOnCompletion(dest_id):
            details = context.layerToLoadOnCompletionDetails(dest_id)
            details.name = output_layer_name(store, _tr("tracks"))
            details.forceName = True
            if plan.dated:
                details.setPostProcessor(TemporalLayer.create())
        return sink, dest_id

    def _track(self, plan: TrackPlan, sink: QgsFeatureSink, feedback: QgsProcessingFeedback) -> Tuple[int, int]:
        """Run the tracker, adding each frame's features as they arrive; (features written, absences)."""
        fields = track_fields()
        counts = [0, 0]

        def add(records: List[TrackedShape], progress: TrackProgress) -> None:
            for record in records:
                if not sink.addFeature(track_feature(record, fields), QgsFeatureSink.Flag.FastInsert):
                    raise QuickSamError(_tr("The output layer refused a feature; choose another output."))
                counts[0] += 1
                counts[1] += 0 if record.present else 1
            feedback.setProgress(100.0 * progress.fraction)

        progress = run_tracker(plan, add, feedback.isCanceled, on_event=lambda event: _log_event(feedback, event))
        if len(progress.done) < progress.total:
            feedback.pushWarning(_tr("The tracker sent {done} of {total} frame results; the others are missing from "
                                     "the output.").format(done=len(progress.done), total=progress.total))
        return counts[0], counts[1]


def _object_count(plan: TrackPlan) -> int:
    return sum(len(group.objects) for group in plan.job.groups)


def _log_event(feedback: QgsProcessingFeedback, event: Dict[str, Any]) -> None:
    """The tracker's log lines and warnings in the Processing log."""
    message = event.get("message")
    if event.get("event") in ("log", "warning", "info", "stderr") and message:
        feedback.pushDebugInfo(str(message))
