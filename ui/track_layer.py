"""The temporal layer of tracked objects: its fields, its features, its temporal properties (QGIS layer of
interactive/track_features.py; docs/time-series.md "The temporal layer").

One feature per object per frame: `obj_id`, `frame` (series index), `datetime` (the frame's date-time) and
`datetime_end` (the next frame's, so that each polygon shows until the next date), `score` (SAM 2's
object score, 0..1), `area` (map units² of the raster's CRS), `present` (False: SAM 2 lost the object on that
frame, and the feature has no geometry), `level` and `resolution` (the store level decoded, its map units per
pixel). The layer's temporal properties take the feature's start and end from `datetime` and `datetime_end`, so
QGIS's Temporal Controller animates it; frames without dates leave both empty and the layer not temporal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qgis.core import (
    Qgis,
    QgsFeature,
    QgsFields,
    QgsGeometry,
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QDateTime, Qt

from ..interactive.track_features import TrackedShape
from .layers import fields_of

TRACK_LAYER = "tracks"
START_FIELD, END_FIELD = "datetime", "datetime_end"
TRACK_FIELD_SPECS = (
    ("obj_id", "int64"), ("frame", "int"), (START_FIELD, "datetime"), (END_FIELD, "datetime"), ("score", "double"),
    ("area", "double"), ("present", "bool"), ("level", "string"), ("resolution", "double"),
)


def track_fields() -> QgsFields:
    return fields_of(TRACK_FIELD_SPECS)


def qdatetime(iso: Optional[str]) -> Optional[QDateTime]:
    """An ISO 8601 date-time (no time zone: local time, as the series gave it) as a QDateTime; None for None."""
    if not iso:
        return None
    value = QDateTime.fromString(iso, Qt.DateFormat.ISODate)
    return value if value.isValid() else None


def track_feature(shape: TrackedShape, fields: QgsFields) -> QgsFeature:
    """The feature of one object on one frame (geometry in the raster's CRS; none when it is absent)."""
    feature = QgsFeature(fields)
    if shape.wkb is not None:
        geometry = QgsGeometry()
        geometry.fromWkb(shape.wkb)
        feature.setGeometry(geometry)
    feature.setAttributes([shape.obj_id, shape.frame, qdatetime(shape.datetime), qdatetime(shape.datetime_end),
                           shape.score, shape.area, shape.present, shape.level, shape.resolution])
    return feature


def set_temporal(layer: QgsVectorLayer) -> None:
    """Make `layer` temporal: each feature from its `datetime` to its `datetime_end` (end excluded)."""
    properties = layer.temporalProperties()
    properties.setMode(Qgis.VectorTemporalMode.FeatureDateTimeStartAndEndFromFields)
    properties.setStartField(START_FIELD)
    properties.setEndField(END_FIELD)
    properties.setLimitMode(Qgis.VectorTemporalLimitMode.IncludeBeginExcludeEnd)
    properties.setIsActive(True)


def save_temporal_style(path: Path, layer_name: str) -> Path:
    """Keep the temporal properties with the file the CLI wrote, where QGIS finds them when it opens it: a
    GeoPackage's default style (its `layer_styles` table), else a .qml file beside it. Returns where.
    OSError when the style cannot be written."""
    uri = f"{path}|layername={layer_name}" if path.suffix.lower() == ".gpkg" else str(path)
    layer = QgsVectorLayer(uri, layer_name, "ogr")
    if not layer.isValid():
        raise OSError(f"'{path}' cannot be opened to add its temporal settings")
    set_temporal(layer)
    categories = QgsMapLayer.StyleCategory.Temporal
    if path.suffix.lower() == ".gpkg":
        error = layer.saveStyleToDatabase(layer_name, "QuickSAM tracks: temporal settings", True, "",
                                          categories) if _takes_categories() else \
            layer.saveStyleToDatabase(layer_name, "QuickSAM tracks: temporal settings", True, "")
        if error:
            raise OSError(f"the temporal settings cannot be stored in '{path}' ({error})")
        return path
    qml = path.with_suffix(".qml")
    message, ok = layer.saveNamedStyle(str(qml), categories)
    if not ok:
        raise OSError(f"the temporal settings cannot be written to '{qml}' ({message})")
    return qml


def _takes_categories() -> bool:
    """saveStyleToDatabase takes style categories from QGIS 3.24 on."""
    return Qgis.QGIS_VERSION_INT >= 32400


class TemporalLayer(QgsProcessingLayerPostProcessorInterface):
    """Sets the temporal properties of the track layer Processing loads when a run ends (main thread)."""

    #: Processing keeps no reference to a post-processor: the last one is kept alive here.
    instance: Optional[TemporalLayer] = None

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,  # noqa: N802 - QGIS's name
                         feedback: QgsProcessingFeedback) -> None:
        if isinstance(layer, QgsVectorLayer):
            set_temporal(layer)

    @staticmethod
    def create() -> TemporalLayer:
        TemporalLayer.instance = TemporalLayer()
        return TemporalLayer.instance
