"""Processing algorithm quicksam:encoderaster: encode a raster into a feature store.

A thin layer over the CLI: the parameters are checked and copied on the main thread
(`prepareAlgorithm`), then `processAlgorithm` runs `python -m quicksam.cli encode ...` in a separate
Python process (QGIS's own Python never imports torch) and maps its JSON progress to the feedback.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBand,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterRasterLayer,
    QgsRasterLayer,
)

from ...core.errors import Cancelled, EncoderEnvironmentError, QuickSamError
from ...encoder.subprocess_runner import DEFAULT_MODULE, encoder_command, run_encoder_process
from ..i18n import tr as _tr
from ..layer_sources import encoder_source
from ..settings import encoder_python
from .algorithm_base import QuickSamAlgorithm, started_by_command_line
from .encode_job import (
    EncoderJob,
    band_numbers_from_text,
    build_encode_args,
    check_bands_exist,
    is_given,
    red_green_blue,
)
from .encode_outputs import (
    EncodedStore,
    default_store,
    load_tile_index_on_completion,
    remember_encoded_store,
    wants_default_store,
)
from .encode_series import add_series_parameters, series_choice, with_series
from .encode_settings import (  # noqa: F401 - MODEL_NAMES and DEVICES: the enums' options, which scripts import here
    DEVICES,
    MODEL_NAMES,
    add_cluster_parameters,
    add_level_parameters,
    add_model_parameters,
    add_tile_parameters,
    encode_settings,
    resolution_choice,
)
from .encoder_events import EncoderEventReporter, in_dialog_words, record_environment_failure, words_for

MAX_BANDS = 3

class EncodeRasterAlgorithm(QuickSamAlgorithm):
    """Encode a raster with a SAM image encoder into a resumable feature store."""

    GROUP_ID = "encoding"
    ICON = "encode.svg"

    INPUT = "INPUT"
    RED_BAND = "RED_BAND"
    GREEN_BAND = "GREEN_BAND"
    BLUE_BAND = "BLUE_BAND"
    #: Hidden: the bands as one list, as scripts and models written for 0.1 pass them.
    BANDS = "BANDS"
    EXTENT = "EXTENT"
    MODEL = "MODEL"
    CHECKPOINT = "CHECKPOINT"
    RANDOM_WEIGHTS = "RANDOM_WEIGHTS"
    OVERLAP = "OVERLAP"
    BATCH_SIZE = "BATCH_SIZE"
    DEVICE = "DEVICE"
    TILE_SIZE = "TILE_SIZE"
    FEATURE_DTYPE = "FEATURE_DTYPE"
    RESOLUTION = "RESOLUTION"
    LEVELS = "LEVELS"
    WORKERS = "WORKERS"
    SCHEDULER = "SCHEDULER"
    OUTPUT = "OUTPUT"
    TILE_INDEX = "TILE_INDEX"

    def __init__(self) -> None:
        super().__init__()
        self._job: Optional[EncoderJob] = None
        self._encoded: Optional[EncodedStore] = None

    # -- identity ---------------------------------------------------------------------------------

    def name(self) -> str:
        return "encoderaster"

    def displayName(self) -> str:
        return _tr("Encode raster for SAM")

    def shortHelpString(self) -> str:
        return _tr(
            "<p>Runs a Segment Anything image encoder (SAM 2.1, SAM 2 or SAM) once over a raster and "
            "saves the features of every tile in a <b>feature store</b> folder. Segmenting with "
            "clicks then only decodes, so it answers quickly. The encoder runs in a separate Python "
            "process (the QuickSAM Python, which has PyTorch); cancelled or interrupted runs keep "
            "their tiles and resume where they stopped.</p>"
            "<p><b>Input raster</b>: a georeferenced raster: a file, a COG over HTTP, or an XYZ or WMTS web layer "
            "(read by GDAL in the encoder, two connections at a time; give an Extent).<br>"
            "<b>Red, Green and Blue bands</b>: the bands fed to the model as red, green and blue, in this "
            "order. A band left empty is the one the layer shows in that colour; a single-band layer is "
            "repeated as grey.<br>"
            "<b>Extent</b>: encode only this area (any CRS; it is transformed to the raster's CRS). "
            "Default: the whole raster.<br>"
            "<b>Model</b>: the SAM model; tiny models are fastest on a CPU.<br>"
            "<b>Checkpoint</b>: empty for the model's official weights (downloaded into your user "
            "cache if missing), or a checkpoint file path or a registered checkpoint name.<br>"
            "<b>Overlap</b>: pixels shared by neighbouring tiles, so that objects on a tile edge are "
            "whole in some tile.<br>"
            "<b>Feature store</b>: the output folder; an existing store of the same raster and model "
            "is resumed. Left at its default (the temporary folder, which QGIS deletes on exit), the store "
            "goes beside the raster as <i>raster name</i>.qsam, where the Segment tool finds it (or, when "
            "that folder cannot be written, into the folder set in QuickSAM's settings).</p>"
            "<p>Advanced: <b>random weights</b> (seeded, for tests and demos; recorded in the store), "
            "<b>batch size</b>, <b>device</b> (auto picks CUDA or MPS when available), <b>tile "
            "size</b> (0 = the model's native 1024 px), <b>worker processes</b> (a Dask cluster of that many "
            "processes on this machine, each loading the model once; 0 = the encoder process alone) and "
            "<b>Dask scheduler</b> (tcp://HOST:8786 of an existing cluster whose workers see the raster and the "
            "store at the same paths).</p>"
            "<p>Outputs: the feature store folder and its tile index (a GeoPackage of tile "
            "footprints, added to the project when the dialog runs the algorithm). The store is remembered "
            "for the raster's layers, so the Segment tool uses it.</p>"
            "<p><b>Time series</b>: the input raster and the layers of <i>frames</i> (or each band of the input) "
            "are encoded as the frames of one series store, in date order, all on the earliest frame's pixel grid.</p>"
            "<p>If the encoder's Python lacks PyTorch or another package, run Raster &gt; QuickSAM &gt; "
            "Set up… once.</p>")

    # -- parameters -------------------------------------------------------------------------------

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:
        self._add_raster_parameters()
        add_series_parameters(self)
        add_model_parameters(self)
        add_level_parameters(self)
        add_tile_parameters(self)
        add_cluster_parameters(self)
        self._add(QgsProcessingParameterFolderDestination(
            self.OUTPUT, _tr("Feature store (default: beside the raster)"), optional=True),
            _tr("Folder of the feature store. An existing store of the same raster and model is resumed; one "
                "of anything else is refused. Default (or the temporary folder): <raster name>.qsam beside the "
                "raster, or in the folder set in QuickSAM's settings when that one cannot be written."))
        self.addOutput(QgsProcessingOutputVectorLayer(
            self.TILE_INDEX, _tr("Tile index"), QgsProcessing.SourceType.TypeVectorPolygon))

    def _add_raster_parameters(self) -> None:
        self._add(QgsProcessingParameterRasterLayer(self.INPUT, _tr("Input raster")),
                  _tr("A georeferenced raster: a file (GeoTIFF or any GDAL format), a COG over HTTP, or an XYZ or "
                      "WMTS web layer (then choose an Extent)."))
        for name, colour in ((self.RED_BAND, _tr("Red")), (self.GREEN_BAND, _tr("Green")),
                             (self.BLUE_BAND, _tr("Blue"))):
            self._add(QgsProcessingParameterBand(
                name, _tr("{colour} band (empty = as the layer shows it)").format(colour=colour), None,
                self.INPUT, optional=True, allowMultiple=False),
                _tr("The band fed to the model as {colour}. Empty: the band the layer's renderer shows in "
                    "{colour}; for a layer not shown in colour, the bands labelled red/green/blue, else the "
                    "first three (a single band is repeated as grey).").format(colour=colour.lower()))
        old_bands = QgsProcessingParameterBand(self.BANDS, _tr("Bands (red, green, blue; old form)"), None,
                                               self.INPUT, optional=True, allowMultiple=True)
        old_bands.setFlags(old_bands.flags() | QgsProcessingParameterDefinition.Flag.FlagHidden)
        self._add(old_bands, _tr("Up to 3 band numbers in red, green, blue order, as one list (scripts "
                                 "written for QuickSAM 0.1); use RED_BAND, GREEN_BAND and BLUE_BAND instead."))
        self._add(QgsProcessingParameterExtent(self.EXTENT, _tr("Extent to encode"), optional=True),
                  _tr("Only tiles covering this area are encoded; it is transformed to the raster's "
                      "CRS. Default: the whole raster."))

    # -- running ----------------------------------------------------------------------------------

    def checkParameterValues(self, parameters: Dict[str, Any],
                             context: QgsProcessingContext) -> Tuple[bool, str]:
        """Refuse bad input before anything runs, with a message saying what to do.

        Processing calls this before running (the dialog, processing.run and qgis_process all do),
        and shows the message as is; an exception raised later, in prepareAlgorithm, would only be
        reported as "There were errors executing the algorithm".
        """
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        try:
            self.encoder_job(parameters, context)
        except QgsProcessingException as exc:
            return False, str(exc)
        return True, ""

    def prepareAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> bool:
        """Copy every parameter here, on the main thread, before the background run."""
        self._job = self.encoder_job(parameters, context)
        self._encoded = None  # a batch runs one object row after row
        return True

    def encoder_job(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> EncoderJob:
        """The checked parameters as an EncoderJob; QgsProcessingException on bad input."""
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(
                _tr("No valid input raster: choose a raster layer or a raster file for INPUT."))
        extent = None
        if parameters.get(self.EXTENT) is not None:
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
            if not rect.isNull():
                extent = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
        # a file, a COG over HTTP, or an XYZ/WMTS/WMS layer (WMS read at RESOLUTION)
        raster, extent = encoder_source(layer, extent, resolution_choice(self, parameters, context))
        series = series_choice(self, parameters, context, layer)
        bands = [] if series.from_bands else self._bands(parameters, context, layer)
        raster = series.frames[0] if series.is_series else raster
        chosen = encode_settings(self, parameters, context)
        store = self._store(parameters, context, raster, chosen.model)
        args = build_encode_args(raster, store, bands=bands, extent=extent, **asdict(chosen))
        args = with_series(args, series)
        return EncoderJob(args=args, python=encoder_python(), store=store, raster=raster)

    def _store(self, parameters: Dict[str, Any], context: QgsProcessingContext, raster: str, model: str) -> str:
        """The OUTPUT folder, or when it names none of the user's (empty, Processing's temporary folder) the
        default store beside the raster (encode_outputs.default_store)."""
        if wants_default_store(parameters.get(self.OUTPUT)):
            return str(default_store(raster, model))
        return self.parameterAsString(parameters, self.OUTPUT, context)

    def _bands(self, parameters: Dict[str, Any], context: QgsProcessingContext,
               layer: QgsRasterLayer) -> List[int]:
        """The bands fed as red, green and blue (see `red_green_blue`); [] = the encoder's default."""
        colours = [self.parameterAsInt(parameters, name, context) if is_given(parameters.get(name)) else None
                   for name in (self.RED_BAND, self.GREEN_BAND, self.BLUE_BAND)]
        if not is_given(parameters.get(self.BANDS)) or parameters.get(self.BANDS) == []:
            return red_green_blue(colours, layer)
        if any(colours):
            raise QgsProcessingException(
                _tr("Give the bands either as RED_BAND, GREEN_BAND and BLUE_BAND or as BANDS, not both."))
        return self._old_bands(parameters, context, layer)

    def _old_bands(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                   layer: QgsRasterLayer) -> List[int]:
        """The hidden BANDS list of scripts written for 0.1, in the order given."""
        raw = parameters.get(self.BANDS)
        if isinstance(raw, str) or (isinstance(raw, (list, tuple))
                                    and any(isinstance(value, str) for value in raw)):
            numbers = band_numbers_from_text(raw)
        else:
            numbers = self.parameterAsInts(parameters, self.BANDS, context)
        bands = [band for band in numbers if band]
        if len(bands) > MAX_BANDS:
            raise QgsProcessingException(
                _tr("Choose at most {max} bands (they become red, green and blue); got {count}.")
                .format(max=MAX_BANDS, count=len(bands)))
        check_bands_exist(bands, layer)
        return bands

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        job = self._job
        if job is None:  # prepareAlgorithm always runs first; this guards direct misuse
            raise QgsProcessingException(_tr("The algorithm was not prepared."))
        feedback.pushCommandInfo(shlex.join(encoder_command(job.args, job.python,
                                                            DEFAULT_MODULE)))
        reporter = EncoderEventReporter(feedback, job.store)
        try:
            run_encoder_process(job.args, job.python, reporter, feedback.isCanceled)
        except Cancelled as exc:
            raise QgsProcessingException(
                _tr("Encoding cancelled: the tiles encoded so far are kept in {store}; run the "
                    "algorithm again with the same parameters to resume.").format(
                    store=job.store)) from exc
        except EncoderEnvironmentError as exc:
            record_environment_failure()
            raise QgsProcessingException(in_dialog_words(str(exc))) from exc
        except QuickSamError as exc:
            raise QgsProcessingException(self._words(str(exc), context)) from exc
        finished = reporter.finished
        if finished is None or not finished.get("tile_index"):
            raise QgsProcessingException(
                _tr("The encoder process ended without reporting its result; see the log above."))
        self._encoded = EncodedStore(raster=job.raster, store=str(finished.get("store") or job.store),
                                     tile_index=str(finished["tile_index"]))
        feedback.pushInfo(_tr("Feature store: {store}").format(store=self._encoded.store))
        load_tile_index_on_completion(self._encoded, context)
        return {self.OUTPUT: self._encoded.store, self.TILE_INDEX: self._encoded.tile_index}

    @staticmethod
    def _words(message: str, context: QgsProcessingContext) -> str:
        """The encoder's message as the dialog's words, or as is (without its prefix) for the `quicksam` command."""
        return words_for(message, started_by_command_line(context))

    def postProcessAlgorithm(self, context: QgsProcessingContext,
                             feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        """Remember the store for the raster (its layers in the project, on the main thread; the store list)."""
        if self._encoded is not None:
            remember_encoded_store(self._encoded, context.project())
        return {}
