"""Processing algorithm quicksam:encoderaster: encode a raster into a feature store.

A thin layer over the CLI: the parameters are checked and copied on the main thread
(`prepareAlgorithm`), then `processAlgorithm` runs `python -m quicksam.cli encode ...` in a separate
Python process (QGIS's own Python never imports torch) and maps its JSON progress to the feedback.
"""

from __future__ import annotations

import shlex
from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsRasterLayer,
)

from ...core.catalogue import MODELS
from ...core.defaults import DEFAULT_MODEL, DEFAULT_TILE_SIZE, default_overlap
from ...core.errors import Cancelled, QuickSamError
from ...encoder.subprocess_runner import DEFAULT_MODULE, encoder_command, run_encoder_process
from ..i18n import tr as _tr
from ..settings import encoder_python
from .algorithm_base import QuickSamAlgorithm
from .encode_job import (
    EncoderJob,
    band_numbers_from_text,
    build_encode_args,
    is_given,
    raster_file_path,
)
from .encoder_events import EncoderEventReporter

MODEL_NAMES: List[str] = list(MODELS)
DEVICES: Tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
MAX_BANDS = 3

class EncodeRasterAlgorithm(QuickSamAlgorithm):
    """Encode a raster with a SAM image encoder into a resumable feature store."""

    GROUP_ID = "encoding"
    ICON = "encode.svg"

    INPUT = "INPUT"
    BANDS = "BANDS"
    EXTENT = "EXTENT"
    MODEL = "MODEL"
    CHECKPOINT = "CHECKPOINT"
    RANDOM_WEIGHTS = "RANDOM_WEIGHTS"
    OVERLAP = "OVERLAP"
    BATCH_SIZE = "BATCH_SIZE"
    DEVICE = "DEVICE"
    TILE_SIZE = "TILE_SIZE"
    OUTPUT = "OUTPUT"
    TILE_INDEX = "TILE_INDEX"

    def __init__(self) -> None:
        super().__init__()
        self._job: Optional[EncoderJob] = None

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
            "<p><b>Input raster</b>: a georeferenced, file-based raster.<br>"
            "<b>Bands</b>: up to 3 bands fed to the model as red, green, blue. By default the bands "
            "labelled red/green/blue, else the first three; one band is repeated as grey.<br>"
            "<b>Extent</b>: encode only this area (any CRS; it is transformed to the raster's CRS). "
            "Default: the whole raster.<br>"
            "<b>Model</b>: the SAM model; tiny models are fastest on a CPU.<br>"
            "<b>Checkpoint</b>: empty for the model's official weights (downloaded into your user "
            "cache if missing), or a checkpoint file path or a registered checkpoint name.<br>"
            "<b>Overlap</b>: pixels shared by neighbouring tiles, so that objects on a tile edge are "
            "whole in some tile.<br>"
            "<b>Feature store</b>: the output folder; an existing store of the same raster and model "
            "is resumed.</p>"
            "<p>Advanced: <b>random weights</b> (seeded, for tests and demos; recorded in the store), "
            "<b>batch size</b>, <b>device</b> (auto picks CUDA or MPS when available) and <b>tile "
            "size</b> (0 = the model's native 1024 px).</p>"
            "<p>Outputs: the feature store folder and its tile index (a GeoPackage of tile "
            "footprints).</p>")

    # -- parameters -------------------------------------------------------------------------------

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:
        self._add_raster_parameters()
        self._add_model_parameters()
        self._add_run_parameters()
        self._add(QgsProcessingParameterFolderDestination(self.OUTPUT, _tr("Feature store")),
                  _tr("Folder of the feature store. An existing store of the same raster and model "
                      "is resumed; one of anything else is refused."))
        self.addOutput(QgsProcessingOutputVectorLayer(
            self.TILE_INDEX, _tr("Tile index"), QgsProcessing.SourceType.TypeVectorPolygon))

    def _add_raster_parameters(self) -> None:
        self._add(QgsProcessingParameterRasterLayer(self.INPUT, _tr("Input raster")),
                  _tr("A georeferenced raster stored in a file (GeoTIFF or any GDAL format)."))
        self._add(QgsProcessingParameterBand(
            self.BANDS, _tr("Bands (up to 3, as red, green, blue)"), None, self.INPUT,
            optional=True, allowMultiple=True),
            _tr("Up to 3 bands fed to the model as red, green and blue. Default: the bands labelled "
                "red/green/blue, else the first three. One band is repeated three times."))
        self._add(QgsProcessingParameterExtent(self.EXTENT, _tr("Extent to encode"), optional=True),
                  _tr("Only tiles covering this area are encoded; it is transformed to the raster's "
                      "CRS. Default: the whole raster."))

    def _add_model_parameters(self) -> None:
        self._add(QgsProcessingParameterEnum(
            self.MODEL, _tr("Model"), options=MODEL_NAMES,
            defaultValue=MODEL_NAMES.index(DEFAULT_MODEL)),
            _tr("The Segment Anything model. {models}.").format(
                models="; ".join(f"{name}: {spec.description}" for name, spec in MODELS.items())))
        self._add(QgsProcessingParameterString(
            self.CHECKPOINT, _tr("Checkpoint (empty = the model's official weights)"),
            defaultValue="", optional=True),
            _tr("Empty: the model's official checkpoint, downloaded into the user cache if missing. "
                "Otherwise a checkpoint file path or a registered checkpoint name."))
        self._add(QgsProcessingParameterBoolean(
            self.RANDOM_WEIGHTS, _tr("Use seeded random weights (testing and demos only)"),
            defaultValue=False),
            _tr("Build the model with seeded random weights instead of a checkpoint: fast to set up, "
                "useless for real segmentation. The store records it."), advanced=True)

    def _add_run_parameters(self) -> None:
        self._add(QgsProcessingParameterNumber(
            self.OVERLAP, _tr("Tile overlap (pixels, empty = a quarter of the tile size)"),
            QgsProcessingParameterNumber.Type.Integer, defaultValue=None, optional=True, minValue=0, maxValue=1023),
            _tr("Pixels shared by neighbouring tiles; objects up to this size on a tile edge are "
                "still whole in some tile. Must be smaller than the tile size. Empty: a quarter of the "
                "tile size (256 px for the native 1024 px tiles)."))
        self._add(QgsProcessingParameterNumber(
            self.BATCH_SIZE, _tr("Batch size (tiles encoded together)"),
            QgsProcessingParameterNumber.Type.Integer, defaultValue=1, minValue=1),
            _tr("Tiles sent to the model at once; larger batches can be faster on a GPU and need "
                "more memory."), advanced=True)
        self._add(QgsProcessingParameterEnum(
            self.DEVICE, _tr("Device"), options=list(DEVICES), defaultValue=0),
            _tr("Where the model runs: auto (CUDA or MPS when available, else CPU), cpu, cuda or "
                "mps."), advanced=True)
        self._add(QgsProcessingParameterNumber(
            self.TILE_SIZE, _tr("Tile size (pixels, 0 = the model's native 1024)"),
            QgsProcessingParameterNumber.Type.Integer, defaultValue=0, minValue=0),
            _tr("Side of the square tiles in pixels. 0 uses the model's native 1024 px; smaller "
                "tiles are only for tests."), advanced=True)

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
        return True

    def encoder_job(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> EncoderJob:
        """The checked parameters as an EncoderJob; QgsProcessingException on bad input."""
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(
                _tr("No valid input raster: choose a raster layer or a raster file for INPUT."))
        raster = raster_file_path(layer)
        bands = self._bands(parameters, context, layer)
        extent = None
        if parameters.get(self.EXTENT) is not None:
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
            if not rect.isNull():
                extent = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
        checkpoint = (self.parameterAsString(parameters, self.CHECKPOINT, context) or "").strip()
        random_weights = self.parameterAsBoolean(parameters, self.RANDOM_WEIGHTS, context)
        if checkpoint and random_weights:
            raise QgsProcessingException(
                _tr("Choose either a checkpoint or random weights, not both: clear CHECKPOINT or "
                    "untick RANDOM_WEIGHTS."))
        tile_size = self.parameterAsInt(parameters, self.TILE_SIZE, context)
        overlap = self._overlap(parameters, context, tile_size or DEFAULT_TILE_SIZE)
        store = self.parameterAsString(parameters, self.OUTPUT, context)
        if not store:
            raise QgsProcessingException(_tr("Choose a folder for the feature store (OUTPUT)."))
        args = build_encode_args(
            raster, store,
            model=MODEL_NAMES[self.parameterAsEnum(parameters, self.MODEL, context)],
            bands=bands, extent=extent, checkpoint=checkpoint, random_weights=random_weights,
            overlap=overlap,
            batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
            device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
            tile_size=tile_size)
        return EncoderJob(args=args, python=encoder_python(), store=store)

    def _overlap(self, parameters: Dict[str, Any], context: QgsProcessingContext, tile_size: int) -> int:
        """OVERLAP in pixels, or when it is not given `default_overlap(tile_size)`; QgsProcessingException
        when it is not smaller than the tile."""
        if is_given(parameters.get(self.OVERLAP)):
            overlap = self.parameterAsInt(parameters, self.OVERLAP, context)
        else:
            overlap = default_overlap(tile_size)
        if overlap >= tile_size:
            raise QgsProcessingException(
                _tr("The overlap ({overlap} px) must be smaller than the tile size ({tile} px).")
                .format(overlap=overlap, tile=tile_size))
        return overlap

    def _bands(self, parameters: Dict[str, Any], context: QgsProcessingContext,
               layer: QgsRasterLayer) -> List[int]:
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
        missing = [band for band in bands if not 1 <= band <= layer.bandCount()]
        if missing:
            raise QgsProcessingException(
                _tr("Band {band} does not exist: '{name}' has {count} band(s).").format(
                    band=missing[0], name=layer.name(), count=layer.bandCount()))
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
        except QuickSamError as exc:
            raise QgsProcessingException(str(exc)) from exc
        finished = reporter.finished
        if finished is None or not finished.get("tile_index"):
            raise QgsProcessingException(
                _tr("The encoder process ended without reporting its result; see the log above."))
        return {self.OUTPUT: str(finished.get("store") or job.store),
                self.TILE_INDEX: str(finished["tile_index"])}
