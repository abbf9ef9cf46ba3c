"""The time-series parameters of quicksam:encoderaster: frames from a list of raster layers or from the bands of the
input, and their dates (QGIS layer; the encoder's `quicksam encode --series`, docs/time-series.md).

The frames are INPUT and the layers of FRAMES (INPUT counted once), each layer's file; with FRAMES_FROM_BANDS, the
bands of INPUT. Dates: FRAME_DATES (one per frame, in the order INPUT, then FRAMES), else DATE_PATTERN, else, when
every frame layer has a fixed temporal range (its Temporal properties), the start of that range, else the encoder
reads them from GDAL metadata (or numbers the frames).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from qgis.core import (
    Qgis,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterString,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import Qt

from ..i18n import tr as _tr
from .encode_job import is_given, raster_file_path

FRAMES = "FRAMES"
FRAMES_FROM_BANDS = "FRAMES_FROM_BANDS"
FRAME_DATES = "FRAME_DATES"
DATE_PATTERN = "DATE_PATTERN"
#: The encode algorithm's band parameters, which a band-per-frame series leaves empty.
BAND_PARAMETERS = ("RED_BAND", "GREEN_BAND", "BLUE_BAND", "BANDS")


@dataclass(frozen=True)
class SeriesChoice:
    """The series the parameters ask for: the frame files in the order given (empty: not a series), or the input's
    bands as frames; the dates (one ISO text per frame) and the date pattern to pass on."""

    frames: List[str] = field(default_factory=list)
    from_bands: bool = False
    dates: List[str] = field(default_factory=list)
    date_pattern: str = ""

    @property
    def is_series(self) -> bool:
        return self.from_bands or len(self.frames) > 1


def add_series_parameters(algorithm: Any) -> None:
    """Add the series parameters to the encode algorithm (its `_add(parameter, help, advanced)`)."""
    algorithm._add(QgsProcessingParameterMultipleLayers(
        FRAMES, _tr("Time series: frames (raster layers)"), QgsProcessing.SourceType.TypeRaster, optional=True),
        _tr("Raster layers that are, with the input raster, the frames of a time series (one date each), encoded into "
            "one series store: frames in date order, all on the earliest frame's pixel grid (others resampled), "
            "one stretch for all. Each layer must be a file."))
    algorithm._add(QgsProcessingParameterBoolean(
        FRAMES_FROM_BANDS, _tr("Time series: each band of the input raster is a frame"), defaultValue=False),
        _tr("A band-per-date raster (an NDVI or SAR stack): each band is one frame, fed to the model as grey. Leave "
            "the band fields empty."))
    algorithm._add(QgsProcessingParameterString(
        FRAME_DATES, _tr("Time series: frame dates (comma-separated)"), defaultValue="", optional=True),
        _tr("One ISO date or date-time per frame (e.g. 2024-05-01,2024-06-01), in the order: the input raster, then "
            "the frames listed (or the bands). Empty: the date pattern, else each layer's fixed temporal range, else "
            "the files' GDAL metadata, else the frames are numbered."), advanced=True)
    algorithm._add(QgsProcessingParameterString(
        DATE_PATTERN, _tr("Time series: date pattern in file names"), defaultValue="", optional=True),
        _tr("A strptime format found in each frame's file name (a band frame: its band description), e.g. %Y%m%d for "
            "scene_20240501.tif."), advanced=True)


def layer_start(layer: QgsRasterLayer) -> Optional[str]:
    """The start of the layer's fixed temporal range as ISO 8601, or None when it has none."""
    properties = layer.temporalProperties()
    if properties is None or not properties.isActive():
        return None
    if properties.mode() != Qgis.RasterTemporalMode.FixedTemporalRange:
        return None
    begin = properties.fixedTemporalRange().begin()
    return begin.toString(Qt.DateFormat.ISODate) if begin.isValid() else None


def _frame_layers(algorithm: QgsProcessingAlgorithm, parameters: Dict[str, Any], context: QgsProcessingContext,
                  layer: QgsRasterLayer) -> List[QgsRasterLayer]:
    """INPUT and the FRAMES layers, INPUT once (by source), in that order."""
    layers = [layer]
    for other in algorithm.parameterAsLayerList(parameters, FRAMES, context) or []:
        if not isinstance(other, QgsRasterLayer) or not other.isValid():
            raise QgsProcessingException(_tr("A frame of FRAMES is not a valid raster layer: choose raster layers."))
        if other.source() not in [known.source() for known in layers]:
            layers.append(other)
    return layers


def series_choice(algorithm: QgsProcessingAlgorithm, parameters: Dict[str, Any], context: QgsProcessingContext,
                  layer: QgsRasterLayer) -> SeriesChoice:
    """The series asked for (not a series: empty frames); QgsProcessingException for frames and bands together."""
    from_bands = algorithm.parameterAsBoolean(parameters, FRAMES_FROM_BANDS, context)
    dates_text = (algorithm.parameterAsString(parameters, FRAME_DATES, context) or "").strip()
    pattern = (algorithm.parameterAsString(parameters, DATE_PATTERN, context) or "").strip()
    dates = [item.strip() for item in dates_text.split(",") if item.strip()]
    layers = _frame_layers(algorithm, parameters, context, layer)
    if from_bands and len(layers) > 1:
        raise QgsProcessingException(_tr("Choose either frame layers or the bands of the input raster as frames, not "
                                         "both: clear FRAMES or untick FRAMES_FROM_BANDS."))
    if from_bands:
        if any(is_given(parameters.get(name)) and parameters.get(name) != [] for name in BAND_PARAMETERS):
            raise QgsProcessingException(_tr("Each band is one frame, fed as grey: leave the Red, Green and Blue band "
                                             "fields empty, or untick FRAMES_FROM_BANDS."))
        return SeriesChoice([raster_file_path(layer)], True, dates, pattern)
    if len(layers) == 1:
        if dates or pattern:
            raise QgsProcessingException(_tr("Frame dates and a date pattern are for a time series: add frame layers "
                                             "to FRAMES, or tick FRAMES_FROM_BANDS."))
        return SeriesChoice()
    if not dates and not pattern:
        starts = [layer_start(item) for item in layers]
        dates = [start for start in starts if start] if all(starts) else []
    return SeriesChoice([raster_file_path(item) for item in layers], False, dates, pattern)


def series_args(choice: SeriesChoice) -> List[str]:
    """The encoder's options for the series (after its positional rasters and store)."""
    args = ["--frames-from-bands"] if choice.from_bands else ["--series"]
    if choice.dates:
        args.append("--dates=" + ",".join(choice.dates))
    if choice.date_pattern:
        args.append(f"--date-pattern={choice.date_pattern}")
    return args


def with_series(args: List[str], choice: SeriesChoice) -> List[str]:
    """`build_encode_args`' command line (`encode RASTER STORE ...`) for the series `choice`: every frame file in
    RASTER's place and the series options added; as is when `choice` is not a series."""
    if not choice.is_series:
        return args
    return [args[0], *choice.frames, *args[2:], *series_args(choice)]
