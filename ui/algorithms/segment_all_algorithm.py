"""Processing algorithm quicksam:segmentall: automatic masks for a whole encoded raster.

A thin layer over `automatic.segment_everything` (which `quicksam segment-all` also reaches through this
algorithm): parameters in, an area of interest transformed to the raster's CRS, progress and cancel
forwarded. The output is a file (not a feature sink) because the run keeps its progress in a GeoPackage
beside it to resume after a stop, and writes the output's format (by its extension) when it finishes; an
existing GeoPackage gets the layer LAYER_NAME added (or replaced with OVERWRITE) and keeps its other layers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from qgis.core import (
    QgsCoordinateTransform,
    QgsGeometry,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ...core.defaults import MASK_MODES
from ...core.errors import Cancelled, QuickSamError
from ...interactive.automatic import (
    COMMAND_LINE_OVERWRITE,
    OUTPUT_LAYER,
    AutoMaskSettings,
    segment_everything,
)
from ...interactive.output_formats import FORMATS
from ...interactive.segment_levels import parse_levels
from ..i18n import tr as _tr
from ..layers import raster_crs
from .algorithm_base import started_by_command_line
from .cluster_parameters import cluster_help, cluster_parameters, opened_cluster, requested_cluster
from .segment_algorithm import DecodingAlgorithm, open_store, output_layer_name
from .segment_all_report import (
    COMMAND_LINE_NAMES,
    TileProgressFeedback,
    dialog_names,
    levels_message,
    no_objects_message,
    progress_reporter,
    summary_message,
)

__all__ = ["SegmentAllAlgorithm", "TileProgressFeedback"]

if TYPE_CHECKING:
    from ...core.store import FeatureStore
    from ...interactive.automatic import SegmentAllResult

DEFAULTS = AutoMaskSettings()


class SegmentAllAlgorithm(DecodingAlgorithm):
    """Segment everything on a feature store, merged across tile borders."""

    GROUP_ID = "segmentation"
    ICON = "quicksam.svg"

    AOI = "AOI"
    EXTENT = "EXTENT"
    LEVELS = "LEVELS"
    CROP_NMS_THRESH = "CROP_NMS_THRESH"
    CROP_N_POINTS_DOWNSCALE_FACTOR = "CROP_N_POINTS_DOWNSCALE_FACTOR"
    POINTS_PER_SIDE = "POINTS_PER_SIDE"
    POINTS_PER_BATCH = "POINTS_PER_BATCH"
    PRED_IOU_THRESH = "PRED_IOU_THRESH"
    STABILITY_SCORE_THRESH = "STABILITY_SCORE_THRESH"
    STABILITY_SCORE_OFFSET = "STABILITY_SCORE_OFFSET"
    BOX_NMS_THRESH = "BOX_NMS_THRESH"
    MIN_MASK_REGION_AREA = "MIN_MASK_REGION_AREA"
    MASK_MODE = "MASK_MODE"
    MIN_OBJECT_AREA = "MIN_OBJECT_AREA"
    MAX_OBJECT_AREA = "MAX_OBJECT_AREA"
    SIMPLIFY = "SIMPLIFY"
    OVERWRITE = "OVERWRITE"
    SKIP_COVERED_POINTS = "SKIP_COVERED_POINTS"
    LAYER_NAME = "LAYER_NAME"
    OUTPUT = "OUTPUT"
    OBJECTS = "OBJECTS"
    TILES = "TILES"
    NO_OBJECTS_REASON = "NO_OBJECTS_REASON"
    LEVELS_SEGMENTED = "LEVELS_SEGMENTED"
    LEVEL_DUPLICATES = "LEVEL_DUPLICATES"

    def name(self) -> str:
        return "segmentall"

    def displayName(self) -> str:
        return _tr("Segment everything (automatic masks)")

    def shortHelpString(self) -> str:
        return _tr(
            "<p>Finds every object on an encoded raster (a <b>feature store</b>) with SAM's automatic mask "
            "generator, tile by tile from the cached features (nothing is encoded again), and writes one "
            "polygon layer in the raster's CRS. Objects cut by a tile edge or seen by two overlapping tiles "
            "come out once (the Help button opens the full guide).</p>"
            "<p>Optionally limited to tiles meeting an <b>area of interest</b> layer and/or an <b>extent</b> "
            "(any CRS; transformed to the raster's).</p>"
            "<p>On a <b>multi-scale store</b> every level is segmented (or those listed in <b>Levels</b>, as "
            "factors of the finest level's pixel size, e.g. 1,4), then objects are merged across levels: of two "
            "objects of different levels whose boxes overlap more than the <b>crop NMS threshold</b>, the finer "
            "level's is kept (as SAM merges its crop layers), and finer pieces of an object found whole at a "
            "coarser level are dropped, so it comes out once.</p>"
            "<p>Parameters as in SAM: points per side (grid per tile), predicted IoU and stability "
            "thresholds, stability offset, box NMS threshold, minimum region area (pixels), mask mode. "
            "Object areas and simplification are in the raster CRS's map units.</p>"
            "<p><b>Objects</b>: any vector format by the file's extension: GeoPackage (.gpkg), Shapefile "
            "(.shp), GeoJSON (.geojson, .json: in the raster's CRS, named by its EPSG code, not reprojected "
            "to EPSG:4326), FlatGeobuf (.fgb), GeoParquet (.parquet, where GDAL has it), or another format "
            "GDAL writes. An existing GeoPackage keeps its other layers: the layer <b>Layer name</b> is added, "
            "or replaced with <b>Overwrite</b>.</p>"
            "<p>A stopped run resumes when started again with the same settings and output; an existing "
            "output (or layer) is replaced only with <b>Overwrite</b>.</p>"
            "<p>Advanced: the tiles can be decoded on a <b>Dask cluster</b> (a <b>scheduler</b> address, or "
            "<b>worker processes</b> where QGIS runs from Python); the objects are merged here in the same order, "
            "so they are the same as in one process.</p>"
            "<p>Attributes: id, predicted_iou, stability_score, area (map units² of the raster's CRS), area_m2 "
            "(square metres: planar for projected CRSs, ellipsoidal otherwise), tile_ids, model, checkpoint "
            "(SHA-256), level_factor (the level's pixel over the raster's) and resolution (map units per pixel "
            "of that level).</p>")

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:
        self._add_store_parameter()
        self._add(QgsProcessingParameterFeatureSource(self.AOI, _tr("Area of interest (polygons)"),
                                                      [QgsProcessing.SourceType.TypeVectorPolygon], optional=True),
                  _tr("Only tiles meeting these polygons are segmented. Any CRS."))
        self._add(QgsProcessingParameterExtent(self.EXTENT, _tr("Extent"), optional=True),
                  _tr("Only tiles meeting this extent are segmented."))
        self._add(QgsProcessingParameterString(self.LEVELS, _tr("Levels (multi-scale store)"), defaultValue="",
                                               optional=True),
                  _tr("The levels to segment, as factors of the finest level's pixel size separated by commas "
                      "(e.g. 1,4); empty: every level of the store."))
        numbers = self._number_parameters()
        for name, label, kind, default, low, high, advanced, help_text in numbers[:5]:
            self._number(name, label, kind, default, low, high, advanced, help_text)
        self._add(QgsProcessingParameterEnum(self.MASK_MODE, _tr("Mask mode"), options=list(MASK_MODES),
                                             defaultValue=MASK_MODES.index(DEFAULTS.mask_mode)),
                  _tr("all: SAM's three candidates per point (as SAM's generator); single, best, largest, smallest "
                      "as in the interactive stage."), advanced=True)
        for name, label, kind, default, low, high, advanced, help_text in numbers[5:]:
            self._number(name, label, kind, default, low, high, advanced, help_text)
        self._add(QgsProcessingParameterBoolean(self.SKIP_COVERED_POINTS, _tr("Skip grid points inside kept masks"),
                                                defaultValue=False),
                  _tr("Faster, but not SAM's result: a grid point inside a mask already kept on its tile is not "
                      "decoded, so an object nested inside a kept one may be missed. Off by default."), advanced=True)
        self._add(QgsProcessingParameterBoolean(self.OVERWRITE, _tr("Overwrite an existing output"),
                                                defaultValue=False),
                  _tr("Replace the output file (or, in a GeoPackage, its layer of that name) if it exists, and "
                      "restart an unfinished run with other settings."))
        self._add(QgsProcessingParameterString(self.LAYER_NAME, _tr("Layer name (GeoPackage)"),
                                               defaultValue=OUTPUT_LAYER),
                  _tr("The layer written into a GeoPackage; the file's other layers are kept."), advanced=True)
        helps = cluster_help()
        for name, parameter in cluster_parameters().items():
            self._add(parameter, helps[name], advanced=True)
        self._add(QgsProcessingParameterFileDestination(self.OUTPUT, _tr("Objects"), _file_filter()),
                  _tr("A vector file in the raster's CRS, its format chosen by its extension (GeoPackage: "
                      "layer 'segments' unless named otherwise)."))
        self.addOutput(QgsProcessingOutputNumber(self.OBJECTS, _tr("Objects written")))
        self.addOutput(QgsProcessingOutputNumber(self.TILES, _tr("Tiles segmented")))
        self.addOutput(QgsProcessingOutputString(self.NO_OBJECTS_REASON,
                                                 _tr("Why no object was found (empty when some were)")))
        self.addOutput(QgsProcessingOutputString(self.LEVELS_SEGMENTED, _tr("Levels segmented")))
        self.addOutput(QgsProcessingOutputNumber(self.LEVEL_DUPLICATES,
                                                 _tr("Objects found at several levels, written once")))

    def _number_parameters(self) -> Tuple[tuple, ...]:
        """(name, label, type, default, minimum, maximum or None, advanced, help text) of the numeric parameters
        in the dialog's order; the mask mode goes after the first five."""
        return (
            (self.POINTS_PER_SIDE, _tr("Points per side (per tile)"), QgsProcessingParameterNumber.Type.Integer,
             DEFAULTS.points_per_side, 1, None, False,
             _tr("A grid of this many × this many point prompts over each tile.")),
            (self.PRED_IOU_THRESH, _tr("Predicted IoU threshold"), QgsProcessingParameterNumber.Type.Double,
             DEFAULTS.pred_iou_thresh, 0.0, 1.0, False, _tr("Masks the model scores lower are dropped.")),
            (self.STABILITY_SCORE_THRESH, _tr("Stability score threshold"), QgsProcessingParameterNumber.Type.Double,
             DEFAULTS.stability_score_thresh, 0.0, 1.0, False,
             _tr("Masks whose shape changes more than this when the logit threshold moves are dropped.")),
            (self.MIN_OBJECT_AREA, _tr("Minimum object area (map units²)"), QgsProcessingParameterNumber.Type.Double,
             DEFAULTS.min_object_area, 0.0, None, False, _tr("Smaller objects are dropped; 0 = no limit.")),
            (self.MAX_OBJECT_AREA, _tr("Maximum object area (map units²)"), QgsProcessingParameterNumber.Type.Double,
             DEFAULTS.max_object_area, 0.0, None, False, _tr("Larger objects are dropped; 0 = no limit.")),
            (self.POINTS_PER_BATCH, _tr("Points per batch"), QgsProcessingParameterNumber.Type.Integer,
             DEFAULTS.points_per_batch, 0, None, True,
             _tr("Prompts per decoder call; 0 = automatic (4 on the CPU, 64 on a GPU). Memory grows with it.")),
            (self.STABILITY_SCORE_OFFSET, _tr("Stability score offset (logits)"),
             QgsProcessingParameterNumber.Type.Double, DEFAULTS.stability_score_offset, 0.0, None, True,
             _tr("The logit shift used to measure stability.")),
            (self.BOX_NMS_THRESH, _tr("Box NMS threshold"), QgsProcessingParameterNumber.Type.Double,
             DEFAULTS.box_nms_thresh, 0.01, 1.0, True,
             _tr("Of two masks of a tile whose boxes overlap more than this (IoU), the lower scored is dropped.")),
            (self.MIN_MASK_REGION_AREA, _tr("Minimum mask region area (pixels)"),
             QgsProcessingParameterNumber.Type.Integer, DEFAULTS.min_mask_region_area, 0, None, True,
             _tr("Islands and holes smaller than this are removed from each mask.")),
            (self.SIMPLIFY, _tr("Simplify tolerance (map units)"), QgsProcessingParameterNumber.Type.Double,
             DEFAULTS.simplify_tolerance, 0.0, None, True, _tr("0 keeps the exact pixel edges.")),
            (self.CROP_NMS_THRESH, _tr("Crop NMS threshold (across levels)"),
             QgsProcessingParameterNumber.Type.Double, DEFAULTS.crop_nms_thresh, 0.01, 1.0, True,
             _tr("Of two objects of different levels whose boxes overlap more than this (IoU), the coarser level's "
                 "is dropped (SAM's crop_nms_thresh).")),
            (self.CROP_N_POINTS_DOWNSCALE_FACTOR, _tr("Crop points downscale factor (across levels)"),
             QgsProcessingParameterNumber.Type.Integer, DEFAULTS.crop_n_points_downscale_factor, 1, None, True,
             _tr("Points per side are divided by this for each halving of the pixel size below the coarsest level "
                 "(SAM's crop_n_points_downscale_factor); 1 = the same points at every level.")),
        )

    @staticmethod
    def how_to_overwrite(context: QgsProcessingContext) -> str:
        """How the user asks to overwrite: this algorithm's parameter, or the option of `quicksam segment-all`
        when that command runs it."""
        if started_by_command_line(context):
            return COMMAND_LINE_OVERWRITE
        return _tr("tick 'Overwrite an existing output' (OVERWRITE)")

    def _number(self, name: str, label: str, kind: QgsProcessingParameterNumber.Type, default: float, low: float,
                high: Optional[float], advanced: bool, help_text: str) -> None:
        parameter = QgsProcessingParameterNumber(name, label, kind, defaultValue=default, minValue=low)
        if high is not None:
            parameter.setMaximum(high)
        self._add(parameter, help_text, advanced)

    def settings(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> AutoMaskSettings:
        def number(name: str) -> float:
            return self.parameterAsDouble(parameters, name, context)

        return AutoMaskSettings(
            points_per_side=self.parameterAsInt(parameters, self.POINTS_PER_SIDE, context),
            points_per_batch=self.parameterAsInt(parameters, self.POINTS_PER_BATCH, context),
            pred_iou_thresh=number(self.PRED_IOU_THRESH),
            stability_score_thresh=number(self.STABILITY_SCORE_THRESH),
            stability_score_offset=number(self.STABILITY_SCORE_OFFSET),
            box_nms_thresh=number(self.BOX_NMS_THRESH),
            min_mask_region_area=self.parameterAsInt(parameters, self.MIN_MASK_REGION_AREA, context),
            mask_mode=MASK_MODES[self.parameterAsEnum(parameters, self.MASK_MODE, context)],
            min_object_area=number(self.MIN_OBJECT_AREA), max_object_area=number(self.MAX_OBJECT_AREA),
            simplify_tolerance=number(self.SIMPLIFY), crop_nms_thresh=number(self.CROP_NMS_THRESH),
            crop_n_points_downscale_factor=self.parameterAsInt(parameters, self.CROP_N_POINTS_DOWNSCALE_FACTOR,
                                                               context),
            skip_covered_points=self.parameterAsBoolean(parameters, self.SKIP_COVERED_POINTS, context))

    def _area_wkbs(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                   feedback: QgsProcessingFeedback, store: FeatureStore) -> Optional[List[bytes]]:
        """AOI polygons and the extent as WKB in the raster's CRS, or None for the whole store."""
        crs = raster_crs(store)
        areas: Optional[List[bytes]] = None
        if parameters.get(self.AOI):
            source = self.parameterAsSource(parameters, self.AOI, context)
            if source is None:
                raise QgsProcessingException(self.invalidSourceError(parameters, self.AOI))
            source_crs = source.sourceCrs()
            transform = None
            if not source_crs.isValid():
                feedback.pushWarning(_tr("The area of interest has no CRS; it is taken to be in the raster's CRS."))
            elif source_crs != crs:
                feedback.pushInfo(_tr("The area of interest ({source}) is transformed to the raster's CRS ({crs})."
                                      ).format(source=source_crs.authid(), crs=crs.authid()))
                transform = QgsCoordinateTransform(source_crs, crs, context.transformContext())
            areas = []
            for feature in source.getFeatures():
                geometry = QgsGeometry(feature.geometry())
                if geometry.isEmpty():
                    continue
                if transform is not None:
                    try:
                        geometry.transform(transform)
                    except Exception as exc:  # noqa: BLE001 - QgsCsException, reported plainly
                        raise QgsProcessingException(_tr(
                            "The area of interest cannot be transformed from {source} to the raster's CRS "
                            "({crs}): {error}").format(source=source_crs.authid(), crs=crs.authid(),
                                                       error=exc)) from None
                areas.append(bytes(geometry.asWkb()))
            if not areas:
                raise QgsProcessingException(_tr("The area of interest layer has no polygon."))
        if parameters.get(self.EXTENT):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, crs)
            box = bytes(QgsGeometry.fromRect(extent).asWkb())
            if areas is None:
                areas = [box]
            else:  # both given: the polygons inside the extent
                clip = QgsGeometry.fromRect(extent)
                areas = [bytes(_from_wkb(a).intersection(clip).asWkb()) for a in areas]
        return areas

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        store = open_store(self.parameterAsFile(parameters, self.STORE, context))
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        settings = self.settings(parameters, context)
        areas = self._area_wkbs(parameters, context, feedback, store)
        cluster = requested_cluster(parameters, context, self.parameterAsString, self.parameterAsInt)
        started = time.monotonic()
        try:
            levels = parse_levels(self.parameterAsString(parameters, self.LEVELS, context) or "")
            with opened_cluster(cluster) as client:
                result = segment_everything(store, Path(output), settings, areas, levels=levels,
                                            overwrite=self.parameterAsBoolean(parameters, self.OVERWRITE, context),
                                            progress=progress_reporter(feedback), cancelled=feedback.isCanceled,
                                            how_to_overwrite=self.how_to_overwrite(context),
                                            layer=self.parameterAsString(parameters, self.LAYER_NAME, context)
                                            or OUTPUT_LAYER, client=client)
        except Cancelled as exc:
            raise QgsProcessingException(_tr("Cancelled: {reason}").format(reason=exc)) from None
        except QuickSamError as exc:
            raise QgsProcessingException(str(exc)) from None
        feedback.pushInfo(summary_message(result, time.monotonic() - started))
        feedback.pushInfo(_written_message(result))
        if len(result.levels) > 1:
            feedback.pushInfo(levels_message(result))
        reason = "" if result.objects else no_objects_message(
            result.filters, settings, COMMAND_LINE_NAMES if started_by_command_line(context) else dialog_names())
        if reason:
            feedback.pushWarning(reason)
        if context.project() is not None:  # the toolbox: show the result as the sink outputs of QGIS are
            details = QgsProcessingContext.LayerDetails(output_layer_name(store, _tr("objects (segment everything)")),
                                                        context.project(), self.OUTPUT)
            details.forceName = True  # not the file's or layer's name ("segments"), whatever Processing prefers
            source = f"{result.output}|layername={result.layer}" if result.layer else str(result.output)
            context.addLayerToLoadOnCompletion(source, details)
        return {self.OUTPUT: str(result.output), self.OBJECTS: result.objects, self.TILES: result.tiles,
                self.NO_OBJECTS_REASON: reason, self.LEVEL_DUPLICATES: result.level_duplicates,
                self.LEVELS_SEGMENTED: ",".join(f"{factor:g}" for factor in result.levels)}


def _file_filter() -> str:
    """The file dialog's formats: those this GDAL writes, GeoPackage first."""
    names = [f"{fmt.name} ({' '.join('*' + end for end in fmt.extensions)})" for fmt in FORMATS if fmt.available()]
    return ";;".join(names + [_tr("Other GDAL vector format (*.*)")])


def _written_message(result: SegmentAllResult) -> str:
    if result.layer is None:
        return _tr("Wrote {path}.").format(path=result.output)
    if result.kept_layers:
        return _tr("Wrote layer '{layer}' into {path}; its other layers ({kept}) are kept.").format(
            layer=result.layer, path=result.output, kept=", ".join(result.kept_layers))
    return _tr("Wrote layer '{layer}' into {path}.").format(layer=result.layer, path=result.output)


def _from_wkb(wkb: bytes) -> QgsGeometry:
    geometry = QgsGeometry()
    geometry.fromWkb(wkb)
    return geometry
