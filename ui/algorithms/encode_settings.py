"""The encode settings quicksam:encoderaster and quicksam:encoderasters share: their parameters (one definition for
both), read and checked into `EncodeSettings`, which gives the `quicksam encode` options (QGIS layer).

Model and weights (MODEL, CHECKPOINT, RANDOM_WEIGHTS), the tiles and levels (RESOLUTION, LEVELS, OVERLAP,
BATCH_SIZE, DEVICE, TILE_SIZE, FEATURE_DTYPE: the CLI's --feature-dtype) and where the tiles are encoded
(WORKERS: a Dask cluster on this machine; SCHEDULER: an existing Dask cluster; core/cluster.py, docs/scaling.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ...core.catalogue import MODELS
from ...core.cluster import ClusterSettings
from ...core.defaults import DEFAULT_MODEL, DEFAULT_TILE_SIZE, default_overlap
from ...core.errors import QuickSamError
from ...core.levels import parse_factors
from ...core.tile_codec import FEATURE_DTYPES
from ..i18n import tr as _tr
from .encode_job import encode_options, is_given
from .encoder_events import in_dialog_words

MODEL_NAMES: List[str] = list(MODELS)
DEVICES: Tuple[str, ...] = ("auto", "cpu", "cuda", "mps")

MODEL = "MODEL"
CHECKPOINT = "CHECKPOINT"
RANDOM_WEIGHTS = "RANDOM_WEIGHTS"
RESOLUTION = "RESOLUTION"
LEVELS = "LEVELS"
OVERLAP = "OVERLAP"
BATCH_SIZE = "BATCH_SIZE"
DEVICE = "DEVICE"
TILE_SIZE = "TILE_SIZE"
FEATURE_DTYPE = "FEATURE_DTYPE"
WORKERS = "WORKERS"
SCHEDULER = "SCHEDULER"


@dataclass(frozen=True)
class EncodeSettings:
    """The checked encode settings: as `encode_job.encode_options` takes them (the same names)."""

    model: str = DEFAULT_MODEL
    checkpoint: str = ""
    random_weights: bool = False
    overlap: Optional[int] = None
    batch_size: int = 1
    device: str = "auto"
    tile_size: int = 0
    resolution: Optional[float] = None
    levels: Tuple[float, ...] = (1.0,)
    workers: int = 0
    scheduler: str = ""
    feature_dtype: str = "float16"

    def options(self) -> List[str]:
        """The `quicksam encode` options of these settings (`--name=value`)."""
        return encode_options(**asdict(self))


def add_model_parameters(algorithm: Any) -> None:
    """MODEL, CHECKPOINT and RANDOM_WEIGHTS (advanced), through the algorithm's `_add(parameter, help, advanced)`."""
    algorithm._add(QgsProcessingParameterEnum(
        MODEL, _tr("Model"), options=MODEL_NAMES, defaultValue=MODEL_NAMES.index(DEFAULT_MODEL)),
        _tr("The Segment Anything model. {models}.").format(
            models="; ".join(f"{name}: {spec.description}" for name, spec in MODELS.items())))
    algorithm._add(QgsProcessingParameterString(
        CHECKPOINT, _tr("Checkpoint (empty = the model's official weights)"), defaultValue="", optional=True),
        _tr("Empty: the model's official checkpoint, downloaded into the user cache if missing. "
            "Otherwise a checkpoint file path or a registered checkpoint name."))
    algorithm._add(QgsProcessingParameterBoolean(
        RANDOM_WEIGHTS, _tr("Use seeded random weights (testing and demos only)"), defaultValue=False),
        _tr("Build the model with seeded random weights instead of a checkpoint: fast to set up, "
            "useless for real segmentation. The store records it."), advanced=True)


def add_level_parameters(algorithm: Any) -> None:
    """RESOLUTION and LEVELS."""
    algorithm._add(QgsProcessingParameterNumber(
        RESOLUTION, _tr("Ground resolution (map units/pixel)"),
        QgsProcessingParameterNumber.Type.Double, defaultValue=None, optional=True, minValue=0),
        _tr("Pixel size of the finest level, in the raster CRS's units; empty: the raster's own. Coarser than "
            "the raster's pixels is read with averaging (the file's overviews where it has them)."))
    algorithm._add(QgsProcessingParameterString(
        LEVELS, _tr("Levels (e.g. 1,4,16)"), defaultValue="1", optional=True),
        _tr("Factors of the finest level's pixel size, one level each, each its own tile grid; objects "
            "larger than a tile are segmented on a coarser level. Run again with more factors to add levels "
            "to a store."))


def add_tile_parameters(algorithm: Any) -> None:
    """OVERLAP, then BATCH_SIZE, DEVICE, TILE_SIZE and FEATURE_DTYPE (advanced)."""
    algorithm._add(QgsProcessingParameterNumber(
        OVERLAP, _tr("Tile overlap (pixels, empty = a quarter of the tile size)"),
        QgsProcessingParameterNumber.Type.Integer, defaultValue=None, optional=True, minValue=0, maxValue=1023),
        _tr("Pixels shared by neighbouring tiles; objects up to this size on a tile edge are "
            "still whole in some tile. Must be smaller than the tile size. Empty: a quarter of the "
            "tile size (256 px for the native 1024 px tiles)."))
    algorithm._add(QgsProcessingParameterNumber(
        BATCH_SIZE, _tr("Batch size (tiles encoded together)"),
        QgsProcessingParameterNumber.Type.Integer, defaultValue=1, minValue=1),
        _tr("Tiles sent to the model at once; larger batches can be faster on a GPU and need "
            "more memory."), advanced=True)
    algorithm._add(QgsProcessingParameterEnum(
        DEVICE, _tr("Device"), options=list(DEVICES), defaultValue=0),
        _tr("Where the model runs: auto (CUDA or MPS when available, else CPU), cpu, cuda or "
            "mps."), advanced=True)
    algorithm._add(QgsProcessingParameterNumber(
        TILE_SIZE, _tr("Tile size (pixels, 0 = the model's native 1024)"),
        QgsProcessingParameterNumber.Type.Integer, defaultValue=0, minValue=0),
        _tr("Side of the square tiles in pixels. 0 uses the model's native 1024 px; smaller "
            "tiles are only for tests."), advanced=True)
    algorithm._add(QgsProcessingParameterEnum(
        FEATURE_DTYPE, _tr("Stored feature precision"), options=list(FEATURE_DTYPES), defaultValue=0),
        _tr("float16 (default) and float32 are kept exactly (compressed without loss); int8 keeps each feature "
            "channel as 8-bit codes: about half float16's disk (opt-in: masks very close to float16's, not "
            "identical)."),
        advanced=True)


def add_cluster_parameters(algorithm: Any) -> None:
    """WORKERS and SCHEDULER (advanced)."""
    algorithm._add(QgsProcessingParameterNumber(
        WORKERS, _tr("Worker processes on this machine (0 = the encoder process alone)"),
        QgsProcessingParameterNumber.Type.Integer, defaultValue=0, minValue=0),
        _tr("Encode on a Dask cluster of this many processes on this machine, each loading the model once (one "
            "per GPU with several GPUs). 0: the encoder process alone. Needs Dask in the encoder's Python."),
        advanced=True)
    algorithm._add(QgsProcessingParameterString(
        SCHEDULER, _tr("Dask scheduler of an existing cluster (tcp://HOST:8786)"), defaultValue="", optional=True),
        _tr("The address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786: the tiles are encoded on its "
            "workers, which must see the rasters and the stores at the same paths. Leave Worker processes at 0."),
        advanced=True)


def encode_settings(algorithm: Any, parameters: Dict[str, Any], context: QgsProcessingContext) -> EncodeSettings:
    """The settings of `parameters` (the algorithm's `parameterAs...`), checked; QgsProcessingException (one
    line, what to do) for settings that cannot go together."""
    checkpoint = (algorithm.parameterAsString(parameters, CHECKPOINT, context) or "").strip()
    random_weights = algorithm.parameterAsBoolean(parameters, RANDOM_WEIGHTS, context)
    if checkpoint and random_weights:
        raise QgsProcessingException(
            _tr("Choose either a checkpoint or random weights, not both: clear CHECKPOINT or "
                "untick RANDOM_WEIGHTS."))
    tile_size = algorithm.parameterAsInt(parameters, TILE_SIZE, context)
    workers, scheduler = cluster_choice(algorithm, parameters, context)
    return EncodeSettings(
        model=MODEL_NAMES[algorithm.parameterAsEnum(parameters, MODEL, context)], checkpoint=checkpoint,
        random_weights=random_weights, overlap=_overlap(algorithm, parameters, context, tile_size or DEFAULT_TILE_SIZE),
        batch_size=algorithm.parameterAsInt(parameters, BATCH_SIZE, context),
        device=DEVICES[algorithm.parameterAsEnum(parameters, DEVICE, context)], tile_size=tile_size,
        resolution=resolution_choice(algorithm, parameters, context), levels=_levels(algorithm, parameters, context),
        workers=workers, scheduler=scheduler,
        feature_dtype=FEATURE_DTYPES[algorithm.parameterAsEnum(parameters, FEATURE_DTYPE, context)])


def cluster_choice(algorithm: Any, parameters: Dict[str, Any], context: QgsProcessingContext) -> Tuple[int, str]:
    """(WORKERS, SCHEDULER) checked as the CLI checks them (core.cluster.ClusterSettings.check);
    QgsProcessingException in the dialog's words otherwise."""
    workers = algorithm.parameterAsInt(parameters, WORKERS, context) if is_given(parameters.get(WORKERS)) else 0
    scheduler = (algorithm.parameterAsString(parameters, SCHEDULER, context) or "").strip()
    try:
        ClusterSettings(scheduler=scheduler or None, workers=workers).check()
    except QuickSamError as exc:
        raise QgsProcessingException(in_dialog_words(str(exc))) from None
    return workers, scheduler


def resolution_choice(algorithm: Any, parameters: Dict[str, Any],
                      context: QgsProcessingContext) -> Optional[float]:
    """RESOLUTION in map units per pixel, or None when it is empty or 0 (the raster's own)."""
    if not is_given(parameters.get(RESOLUTION)):
        return None
    return algorithm.parameterAsDouble(parameters, RESOLUTION, context) or None


def _levels(algorithm: Any, parameters: Dict[str, Any], context: QgsProcessingContext) -> Tuple[float, ...]:
    """LEVELS as factors (default one level); QgsProcessingException saying what is expected."""
    text = (algorithm.parameterAsString(parameters, LEVELS, context) or "").strip() or "1"
    try:
        return parse_factors(text)
    except ValueError as exc:
        raise QgsProcessingException(str(exc)) from None


def _overlap(algorithm: Any, parameters: Dict[str, Any], context: QgsProcessingContext, tile_size: int) -> int:
    """OVERLAP in pixels, or when it is not given `default_overlap(tile_size)`; QgsProcessingException
    when it is not smaller than the tile."""
    if is_given(parameters.get(OVERLAP)):
        overlap = algorithm.parameterAsInt(parameters, OVERLAP, context)
    else:
        overlap = default_overlap(tile_size)
    if overlap >= tile_size:
        raise QgsProcessingException(
            _tr("The overlap ({overlap} px) must be smaller than the tile size ({tile} px).")
            .format(overlap=overlap, tile=tile_size))
    return overlap
