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

import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional

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
from qgis.PyQt.QtXml import QDomDocument

from ..interactive.track_features import TrackedShape
from .layers import fields_of

if TYPE_CHECKING:
    from osgeo import gdal, ogr

TRACK_LAYER = "tracks"
STYLES_TABLE = "layer_styles"
STYLE_DESCRIPTION = "QuickSAM tracks: temporal settings"
START_FIELD, END_FIELD = "datetime", "datetime_end"
TRACK_FIELD_SPECS = (
    ("obj_id", "int64"), ("frame", "int"), (START_FIELD, "datetime"), (END_FIELD, "datetime"), ("score", "double"),
    ("area", "double"), ("present", "bool"), ("level", "string"), ("resolution", "double"),
)


def track_fields() -> QgsFields:
    return fields_of(TRACK_FIELD_SPECS)


def qdatetime(iso: Optional[str]) -> Optional[QDateTime]:
    """An ISO 8601 date-time of a series as a QDateTime, None for None or an unreadable one. A frame's date-time
    without a time zone is taken as UTC (acquisition times are; the series encoder converts a zoned one to UTC), so
    the same instant is written and read back by every QGIS (3.22 keeps local times, 3.40's GeoPackages UTC) on a
    machine in any time zone."""
    if not iso:
        return None
    zoned = iso.endswith("Z") or re.search(r"T.*[+-]\d\d:?\d\d$", iso) is not None
    value = QDateTime.fromString(iso if zoned else iso + "Z", Qt.DateFormat.ISODate)
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
        document = QDomDocument()
        error = layer.exportNamedStyle(document)
        del layer  # QGIS's connection to the file is closed before ours writes (two writers wait on each other)
        if error:
            raise OSError(f"the temporal settings cannot be stored in '{path}' ({error})")
        write_default_gpkg_style(path, layer_name, document.toString())
        return path
    qml = path.with_suffix(".qml")
    message, ok = layer.saveNamedStyle(str(qml), categories)
    if not ok:
        raise OSError(f"the temporal settings cannot be written to '{qml}' ({message})")
    return qml


def write_default_gpkg_style(path: Path, layer_name: str, qml: str) -> None:
    """Make `qml` the one default style of `layer_name` in the GeoPackage's `layer_styles` table (QGIS's table,
    created as QGIS creates it when missing), in one transaction on one GDAL connection: the layer's other styles
    stop being default, an older QuickSAM style of that name is replaced. QGIS's saveStyleToDatabase is not used:
    on a file whose layer_styles already has a row for the layer it waited forever on its own second
    connection. OSError when the file cannot be updated."""
    from osgeo import gdal, ogr

    dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_UPDATE, allowed_drivers=["GPKG"])
    if dataset is None:
        raise OSError(f"the temporal settings cannot be stored in '{path}' (it cannot be opened for update)")
    try:
        tracks = dataset.GetLayerByName(layer_name)
        geometry_column = (tracks.GetGeometryColumn() if tracks is not None else "") or "geom"
        styles = dataset.GetLayerByName(STYLES_TABLE) or _create_styles_table(dataset)
        quoted = layer_name.replace("'", "''")
        if dataset.StartTransaction() != ogr.OGRERR_NONE:
            raise OSError(f"the temporal settings cannot be stored in '{path}' (no transaction)")
        dataset.ExecuteSQL(f"UPDATE {STYLES_TABLE} SET useAsDefault = 0 WHERE f_table_name = '{quoted}'")
        dataset.ExecuteSQL(f"DELETE FROM {STYLES_TABLE} WHERE f_table_name = '{quoted}' AND styleName = '{quoted}'")
        feature = ogr.Feature(styles.GetLayerDefn())
        for name, value in (("f_table_catalog", ""), ("f_table_schema", ""), ("f_table_name", layer_name),
                            ("f_geometry_column", geometry_column), ("styleName", layer_name), ("styleQML", qml),
                            ("useAsDefault", 1), ("description", STYLE_DESCRIPTION), ("owner", "")):
            feature.SetField(name, value)
        if styles.CreateFeature(feature) != ogr.OGRERR_NONE or dataset.CommitTransaction() != ogr.OGRERR_NONE:
            dataset.RollbackTransaction()
            raise OSError(f"the temporal settings cannot be stored in '{path}' ({gdal.GetLastErrorMsg()})")
    finally:
        tracks = styles = feature = None  # noqa: F841
        dataset = None


def _create_styles_table(dataset: gdal.Dataset) -> ogr.Layer:
    """QGIS's layer_styles table (an attributes table of the GeoPackage), its columns as QGIS makes them."""
    from osgeo import ogr

    table = dataset.CreateLayer(STYLES_TABLE, geom_type=ogr.wkbNone, options=["FID=id"])
    for name, kind, width in (("f_table_catalog", ogr.OFTString, 256), ("f_table_schema", ogr.OFTString, 256),
                              ("f_table_name", ogr.OFTString, 256), ("f_geometry_column", ogr.OFTString, 256),
                              ("styleName", ogr.OFTString, 30), ("styleQML", ogr.OFTString, 0),
                              ("styleSLD", ogr.OFTString, 0), ("useAsDefault", ogr.OFTInteger, 0),
                              ("description", ogr.OFTString, 0), ("owner", ogr.OFTString, 30),
                              ("ui", ogr.OFTString, 30), ("update_time", ogr.OFTDateTime, 0)):
        definition = ogr.FieldDefn(name, kind)
        definition.SetWidth(width)
        if name == "useAsDefault":
            definition.SetSubType(ogr.OFSTBoolean)
        if name == "update_time":
            definition.SetDefault("CURRENT_TIMESTAMP")
        table.CreateField(definition)
    return table


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
