"""Processing algorithm quicksam:segmentprompts: segment objects from a layer of prompts.

The same core as the dock: prompt features are grouped into objects (`prompt_input`), each object is
segmented by `SegmentEngine` on the feature store, and `FeatureBuilder` writes the output schema.
`quicksam segment` (the CLI) runs this algorithm, so all three share one implementation.

Batch policy: an object that cannot be segmented (prompts outside the raster or the encoded area,
a bad label, an empty mask, ...) is reported with its id through `feedback.reportError` and skipped;
the run fails only when no object gave a polygon, and then nothing is written.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeatureRequest,
    QgsFeatureSink,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeatureSource,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsWkbTypes,
)

from ...core.defaults import MASK_MODES
from ...core.errors import QuickSamError
from ...core.store import DECODER_ONNX, FeatureStore
from ...interactive.engine import PromptError, SegmentEngine
from ...interactive.prompt_input import PromptObject, SkippedObject, group_records
from ...interactive.scales import MultiScaleEngine, open_engine
from ..i18n import tr as _tr
from ..layers import FeatureBuilder, output_fields, raster_crs, sink_keeping_other_layers
from .algorithm_base import QuickSamAlgorithm, started_by_command_line
from .prompt_features import read_prompt_records


def open_store(path: str) -> FeatureStore:
    """The feature store at `path`, ready to decode; QgsProcessingException saying what to do otherwise."""
    if not path:
        raise QgsProcessingException(_tr("Choose the feature store folder (STORE) that 'Encode raster for "
                                         "SAM' or 'quicksam encode' wrote."))
    if not Path(path).exists():
        raise QgsProcessingException(_tr("The feature store '{path}' does not exist; encode the raster first "
                                         "(Processing > QuickSAM > Encode raster for SAM, or quicksam encode)."
                                         ).format(path=path))
    try:
        store = FeatureStore.open(Path(path))
    except QuickSamError as exc:
        raise QgsProcessingException(str(exc)) from exc
    if not (store.root / DECODER_ONNX).is_file():
        raise QgsProcessingException(_tr("The feature store '{path}' has no {decoder}; re-run the same encode "
                                         "to finish it.").format(path=path, decoder=DECODER_ONNX))
    return store


def output_layer_name(store: FeatureStore, what: str) -> str:
    """The name of a layer a run adds to the project: the encoded raster's file name, then `what` (e.g.
    "segments"), so that runs on several rasters, and the dock's layer, are told apart."""
    raster = Path(store.manifest.raster.path).stem or store.root.stem
    return _tr("{raster} — {what}").format(raster=raster, what=what)


class DecodingAlgorithm(QuickSamAlgorithm):
    """Base of the algorithms that decode on a feature store (parameter STORE): its parameter, and a missing
    or unfinished store refused before anything runs."""

    STORE = "STORE"

    def _add_store_parameter(self) -> None:
        self._add(QgsProcessingParameterFile(self.STORE, _tr("Feature store"),
                                             behavior=QgsProcessingParameterFile.Behavior.Folder),
                  _tr("The folder written by 'Encode raster for SAM' (or 'quicksam encode')."))

    def checkParameterValues(self, parameters: Dict[str, Any],
                             context: QgsProcessingContext) -> Tuple[bool, str]:
        """Refuse a missing or unfinished store before anything runs (the dialog shows the message)."""
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        try:
            open_store(self.parameterAsFile(parameters, self.STORE, context))
        except QgsProcessingException as exc:
            return False, str(exc)
        return True, ""


class SegmentPromptsAlgorithm(DecodingAlgorithm):
    """Segment one object per prompt point, per polygon's box, or per group of prompts."""

    GROUP_ID = "segmentation"
    ICON = "quicksam.svg"

    PROMPTS = "PROMPTS"
    GROUP_FIELD = "GROUP_FIELD"
    LABEL_FIELD = "LABEL_FIELD"
    MASK_MODE = "MASK_MODE"
    SIMPLIFY = "SIMPLIFY"
    MIN_AREA = "MIN_AREA"
    KEEP_HOLES = "KEEP_HOLES"
    REFINE = "REFINE"
    OUTPUT = "OUTPUT"
    SEGMENTED = "SEGMENTED"
    SKIPPED = "SKIPPED"

    # -- identity ---------------------------------------------------------------------------------

    def name(self) -> str:
        return "segmentprompts"

    def displayName(self) -> str:
        return _tr("Segment objects from prompts")

    def shortHelpString(self) -> str:
        return _tr(
            "<p>Segments objects on an encoded raster (a <b>feature store</b>) from prompts in a point or "
            "polygon layer, like clicks in the QuickSAM dock, and writes one polygon feature per object "
            "(in the raster's CRS).</p>"
            "<p><b>Prompts</b>: each point is one object; each polygon's bounding box is a box prompt for "
            "one object (clipped to the raster where it reaches past its edge; the polygon stays inside the "
            "box). The layer may be in any CRS; it is transformed to the raster's CRS.<br>"
            "<b>Group field</b>: features with the same value form one object (its points and the box of "
            "its one polygon); features with an empty value stay objects of their own.<br>"
            "<b>Label field</b>: 1 = foreground, 0 = background point; empty or no field = foreground. A "
            "box is always foreground.<br>"
            "<b>Mask mode</b>: single (one mask), best (highest score of three), largest, smallest, or all "
            "(up to three features per object, same id).<br>"
            "<b>Simplify</b>: tolerance in the raster CRS's map units (0 = exact pixel edges). <b>Minimum "
            "area</b>: parts and holes smaller than this many pixels are dropped.</p>"
            "<p>Objects whose prompts lie outside the raster or its encoded area, or whose labels are "
            "unusable, are reported in the log by id, feature or group, and the prompt at fault, and skipped; "
            "the run fails only if no object could be segmented.</p>"
            "<p>Attributes: id (object number, in reading order), label (the group value), predicted_iou (the "
            "model's IoU estimate), stability_score, area (map units² of the CRS), area_m2 (square metres: "
            "planar for projected CRSs, ellipsoidal otherwise), fg_points, bg_points, box, model, checkpoint "
            "(SHA-256), tile_id, created (UTC).</p>"
            "<p>An existing GeoPackage as output keeps its other layers: only the layer 'segments' (or the "
            "table of an ogr:dbname= destination) is added or replaced. GeoJSON is written in the raster's "
            "CRS, named by its EPSG code.</p>")

    # -- parameters -------------------------------------------------------------------------------

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:
        self._add_store_parameter()
        self._add(QgsProcessingParameterFeatureSource(
            self.PROMPTS, _tr("Prompts (points and/or polygons)"),
            [QgsProcessing.SourceType.TypeVectorPoint, QgsProcessing.SourceType.TypeVectorPolygon]),
            _tr("Each point is one object, each polygon's bounding box is one box prompt, unless a group "
                "field joins features into objects. Any CRS."))
        self._add(QgsProcessingParameterField(
            self.GROUP_FIELD, _tr("Group field (features with the same value form one object)"),
            parentLayerParameterName=self.PROMPTS, optional=True),
            _tr("Features sharing a value form one object: its points plus the box of at most one polygon. "
                "Empty values: each feature is its own object."))
        self._add(QgsProcessingParameterField(
            self.LABEL_FIELD, _tr("Label field (1 = foreground, 0 = background)"),
            parentLayerParameterName=self.PROMPTS, optional=True),
            _tr("1 (or true) marks a foreground point, 0 (or false) a background point; empty values and no "
                "field mean foreground."))
        self._add(QgsProcessingParameterEnum(
            self.MASK_MODE, _tr("Mask mode"), options=list(MASK_MODES), defaultValue=0),
            _tr("single: one mask; best: the highest scored of three; largest / smallest: of three; all: up "
                "to three features per object."))
        self._add(QgsProcessingParameterNumber(
            self.SIMPLIFY, _tr("Simplify tolerance (map units of the raster CRS)"),
            QgsProcessingParameterNumber.Type.Double, defaultValue=0.0, minValue=0.0),
            _tr("Douglas-Peucker tolerance in the raster CRS's units; 0 keeps the exact pixel edges."),
            advanced=True)
        self._add(QgsProcessingParameterNumber(
            self.MIN_AREA, _tr("Minimum part and hole area (pixels)"),
            QgsProcessingParameterNumber.Type.Double, defaultValue=0.0, minValue=0.0),
            _tr("Polygon parts and holes smaller than this many raster pixels are dropped."), advanced=True)
        self._add(QgsProcessingParameterBoolean(self.KEEP_HOLES, _tr("Keep holes"), defaultValue=True),
                  _tr("Untick to fill the holes of the polygons."), advanced=True)
        self._add(QgsProcessingParameterBoolean(self.REFINE, _tr("Refine edges on the finest level"),
                                                defaultValue=False),
                  _tr("In a store with several levels: an object decoded on a coarser level (larger than a tile) "
                      "has its edges decoded again on the finest level's tiles."), advanced=True)
        self._add(QgsProcessingParameterFeatureSink(
            self.OUTPUT, _tr("Segmented objects"), QgsProcessing.SourceType.TypeVectorPolygon),
            _tr("Polygons in the raster's CRS, one per object (up to three with mask mode 'all')."))
        self.addOutput(QgsProcessingOutputNumber(self.SEGMENTED, _tr("Objects segmented")))
        self.addOutput(QgsProcessingOutputNumber(self.SKIPPED, _tr("Objects skipped")))

    # -- running ----------------------------------------------------------------------------------

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        store = open_store(self.parameterAsFile(parameters, self.STORE, context))
        objects, skipped, crs_advice = self._read_objects(parameters, context, feedback, store)
        for item in skipped:
            feedback.reportError(item.message(), fatalError=False)
        mode = MASK_MODES[self.parameterAsEnum(parameters, self.MASK_MODE, context)]
        options = dict(mode=mode,
                       simplify_tolerance=self.parameterAsDouble(parameters, self.SIMPLIFY, context),
                       min_area_pixels=self.parameterAsDouble(parameters, self.MIN_AREA, context),
                       keep_holes=self.parameterAsBoolean(parameters, self.KEEP_HOLES, context))
        try:
            engine = open_engine(store)
        except QuickSamError as exc:
            raise QgsProcessingException(str(exc)) from exc
        if isinstance(engine, MultiScaleEngine):
            engine.refine_edges = self.parameterAsBoolean(parameters, self.REFINE, context)
        crs = raster_crs(store)
        builder = FeatureBuilder(store, crs, context.transformContext())
        parameters, output_note = sink_keeping_other_layers(self, parameters, self.OUTPUT, context)
        sink, dest_id = None, None
        segmented = 0
        total = len(objects) + len(skipped)
        started = time.monotonic()
        for done, item in enumerate(objects, start=1):
            if feedback.isCanceled():
                raise QgsProcessingException(_tr("Segmentation cancelled after {done} of {total} objects.")
                                             .format(done=done - 1, total=len(objects)))
            features, problem = self._segment(engine, builder, item, options, crs_advice)
            if problem is not None:
                skipped.append(problem)
                feedback.reportError(problem.message(), fatalError=False)
            else:
                if sink is None:  # created on the first success: a failed run writes nothing
                    sink, dest_id = self._create_sink(parameters, context, store, crs)
                    if output_note:
                        feedback.pushInfo(output_note)
                for feature in features:
                    if not sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert):
                        raise QgsProcessingException(self.writeFeatureError(sink, parameters, self.OUTPUT))
                segmented += 1
            feedback.setProgress(100.0 * done / max(len(objects), 1))
        if sink is None:
            raise QgsProcessingException(self._nothing_segmented(total, skipped))
        feedback.pushInfo(_tr("{segmented} of {total} objects segmented, {skipped} skipped, in {seconds:.1f} s; "
                              "written to {output}.").format(segmented=segmented, total=total, skipped=len(skipped),
                                                             seconds=time.monotonic() - started,
                                                             output=_output_text(context, dest_id)))
        return {self.OUTPUT: dest_id, self.SEGMENTED: segmented, self.SKIPPED: len(skipped)}

    def _create_sink(self, parameters: Dict[str, Any], context: QgsProcessingContext, store: FeatureStore,
                     crs: QgsCoordinateReferenceSystem) -> Tuple[QgsFeatureSink, str]:
        """The output sink and its destination id. The layer Processing loads when the run ends (a temporary
        layer or a file alike) is named after the raster: not the output's description, which every run
        would share."""
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, output_fields(),
                                             QgsWkbTypes.Type.MultiPolygon, crs)
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        if context.willLoadLayerOnCompletion(dest_id):
            details = context.layerToLoadOnCompletionDetails(dest_id)
            details.name = output_layer_name(store, _tr("segments"))
            details.forceName = True
        return sink, dest_id

    def _read_objects(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                      feedback: QgsProcessingFeedback, store: FeatureStore
                      ) -> Tuple[List[PromptObject], List[SkippedObject], str]:
        """The prompt objects (raster CRS), those refused, and what to do if prompts look like lon/lat."""
        source = self.parameterAsSource(parameters, self.PROMPTS, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.PROMPTS))
        if source.featureCount() == 0:
            raise QgsProcessingException(_tr("The prompt layer has no features: add points (one per object) "
                                             "or polygons (their extent is a box prompt)."))
        group_field = self.parameterAsString(parameters, self.GROUP_FIELD, context) or None
        label_field = self.parameterAsString(parameters, self.LABEL_FIELD, context) or None
        for field in (group_field, label_field):
            if field and source.fields().indexOf(field) < 0:
                raise QgsProcessingException(_tr("The prompt layer has no field '{field}'; its fields are: "
                                                 "{fields}.").format(field=field,
                                                                     fields=", ".join(source.fields().names())))
        crs = raster_crs(store)
        source_crs = source.sourceCrs()
        transform = None
        if not source_crs.isValid():
            feedback.pushWarning(_tr("The prompt layer has no CRS; its coordinates are taken to be in the "
                                     "raster's CRS ({crs}).").format(crs=crs.authid() or crs.description()))
        elif source_crs != crs:
            transform = QgsCoordinateTransform(source_crs, crs, context.transformContext())
        # A self-intersecting polygon still has an extent: only the box is used, so no validity check.
        features = source.getFeatures(QgsFeatureRequest(),
                                      QgsProcessingFeatureSource.Flag.FlagSkipGeometryValidityChecks)
        records = read_prompt_records(features, transform, group_field, label_field, feedback.isCanceled)
        if feedback.isCanceled():
            raise QgsProcessingException(_tr("Segmentation cancelled while reading the prompts."))
        objects, skipped = group_records(records)
        return objects, skipped, self._lonlat_advice(context, source_crs, transform is not None)

    @staticmethod
    def _lonlat_advice(context: QgsProcessingContext, source_crs: QgsCoordinateReferenceSystem,
                       transformed: bool) -> str:
        """What to do when prompts outside the raster look like longitude/latitude: say which CRS they are
        in, as the caller can (the `quicksam` command's --prompts-crs, or the prompt layer's CRS)."""
        if transformed:  # they were not taken as they are: the layer's CRS is what to check
            return _tr("check the prompts' CRS ({crs})").format(crs=source_crs.authid() or source_crs.description())
        if started_by_command_line(context):
            if not source_crs.isValid():
                return _tr("the prompts file has no CRS: if they are longitude/latitude, pass --prompts-crs "
                           "EPSG:4326")
            return _tr("if they are, pass --prompts-crs EPSG:4326")
        if not source_crs.isValid():
            return _tr("the prompt layer has no CRS, so they were read in the raster's CRS: if they are "
                       "longitude/latitude, set the layer's CRS to EPSG:4326")
        return _tr("if they are, the prompt layer's CRS ({crs}) is wrong: set it to EPSG:4326").format(
            crs=source_crs.authid() or source_crs.description())

    @staticmethod
    def _segment(engine: SegmentEngine, builder: FeatureBuilder, item: PromptObject,
                 options: Dict[str, Any], crs_advice: str) -> Tuple[list, Optional[SkippedObject]]:
        """The output features of one object, or why it was skipped (naming its prompts)."""
        try:
            segments = engine.segment(item.prompts, **options)
        except PromptError as exc:
            reason = f"{exc}; {crs_advice}" if exc.looks_like_lonlat else str(exc)
            return [], SkippedObject(item.object_id, item.name, reason)
        except QuickSamError as exc:
            return [], SkippedObject(item.object_id, item.name, str(exc))
        if not segments:
            return [], SkippedObject(item.object_id, item.name, _tr(
                "no object found under {prompts} (the mask was empty, or smaller than the minimum area); move "
                "or add prompts").format(prompts=item.prompts.describe()))
        return [builder.feature(segment, item.prompts, item.object_id, item.label) for segment in segments], None

    @staticmethod
    def _nothing_segmented(total: int, skipped: List[SkippedObject]) -> str:
        skipped = sorted(skipped, key=lambda item: item.object_id)
        first = skipped[0].message() if skipped else _tr("no prompt object was found")
        if total == 1:
            return _tr("Nothing was segmented: {first}").format(first=first)
        return _tr("None of the {total} objects could be segmented (each is reported above); the first: "
                   "{first}").format(total=total, first=first)


def _output_text(context: QgsProcessingContext, dest_id: str) -> str:
    """Where the objects went, for the log: the destination, or "a temporary layer" for a memory layer."""
    layer = context.temporaryLayerStore().mapLayer(dest_id)
    if layer is not None and layer.providerType() == "memory":
        return _tr("a temporary layer")
    return dest_id
