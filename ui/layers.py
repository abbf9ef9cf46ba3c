"""Segments as QGIS features and the output layer they go to (QGIS layer over the core engine).

Geometry arrives in the raster's CRS and is transformed to the output layer's CRS. The measures are those of
every QuickSAM output (interactive/object_fields.py): `predicted_iou`, `stability_score`, `area` (planar, in
the layer CRS's map units²) and `area_m2` (planar in square metres for projected CRSs, ellipsoidal on the
CRS's ellipsoid for geographic ones).
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

from qgis.core import (
    Qgis,
    QgsCategorizedSymbolRenderer,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsDataSourceUri,
    QgsDistanceArea,
    QgsFeature,
    QgsField,
    QgsFields,
    QgsFillSymbol,
    QgsGeometry,
    QgsPalLayerSettings,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingOutputLayerDefinition,
    QgsProperty,
    QgsRendererCategory,
    QgsSimpleFillSymbolLayer,
    QgsSingleSymbolRenderer,
    QgsSymbolLayer,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsUnitTypes,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QMetaType, Qt, QVariant
from qgis.PyQt.QtGui import QColor

from ..core.errors import QuickSamError
from ..core.store import TILE_INDEX, FeatureStore
from ..interactive.engine import MapPrompts, Segment
from ..interactive.object_fields import AREA, AREA_M2, MEASURE_FIELDS, PREDICTED_IOU, STABILITY_SCORE
from ..interactive.output_formats import format_for, layer_names
from .i18n import tr

OUTPUT_FILE = "segments.gpkg"
OUTPUT_LAYER = "segments"
FIELD_SPECS = (
    ("id", "int64"), ("label", "string"), *((name, "double") for name in MEASURE_FIELDS), ("fg_points", "int"),
    ("bg_points", "int"), ("box", "string"), ("model", "string"), ("checkpoint", "string"),
    ("tile_id", "string"), ("level_factor", "double"), ("resolution", "double"), ("created", "string"),
)
TILE_INDEX_LAYER = "tiles"
TILE_INDEX_LAYER_NAME = "QuickSAM tiles"
TILE_OUTLINE_COLOUR = QColor(255, 140, 0)
#: Each tile's id, and its status when it is not encoded ("pending", "failed", ...).
TILE_LABEL = """concat("tile_id", CASE WHEN "status" <> 'done' THEN ' (' || "status" || ')' END)"""
#: The same, after the level's factor, in a multi-scale store's index ("4x r0000c0001").
LEVEL_TILE_LABEL = f"""concat(CASE WHEN "factor" <> 1 THEN format_number("factor", 0) || 'x ' END, {TILE_LABEL})"""
#: The stroke of a tile index's outline: dashed for an on-demand tile (field `extra` = 1), else solid.
EXTRA_TILE_STROKE = "if(coalesce(attribute('extra'), 0) = 1, 'dash', 'solid')"
#: Outline colours of the levels of a multi-scale store, finest first (then repeated).
LEVEL_COLOURS = (QColor(255, 140, 0), QColor(30, 120, 255), QColor(200, 0, 200), QColor(0, 160, 60))
#: QGIS 3.38 takes field types as QMetaType (QVariant.Type is deprecated there and gone in QGIS 4).
_METATYPE_FIELDS = Qgis.QGIS_VERSION_INT >= 33800


def qgis_field(name: str, kind: str) -> QgsField:
    """A QgsField of `kind` ("int", "int64", "double", "string", "bool" or "datetime") built the way this QGIS
    wants it."""
    if _METATYPE_FIELDS:
        types = {"int": QMetaType.Type.Int, "int64": QMetaType.Type.LongLong, "double": QMetaType.Type.Double,
                 "string": QMetaType.Type.QString, "bool": QMetaType.Type.Bool,
                 "datetime": QMetaType.Type.QDateTime}
    else:
        types = {"int": QVariant.Int, "int64": QVariant.LongLong, "double": QVariant.Double,
                 "string": QVariant.String, "bool": QVariant.Bool, "datetime": QVariant.DateTime}
    return QgsField(name, types[kind])


def fields_of(specs: Iterable[Tuple[str, str]]) -> QgsFields:
    """QgsFields from (name, kind) pairs; see `qgis_field`."""
    fields = QgsFields()
    for name, kind in specs:
        fields.append(qgis_field(name, kind))
    return fields


def output_fields() -> QgsFields:
    return fields_of(FIELD_SPECS)


def raster_crs(store: FeatureStore) -> QgsCoordinateReferenceSystem:
    return QgsCoordinateReferenceSystem.fromWkt(store.crs_wkt)


def area_square_metres(geometry: QgsGeometry, crs: QgsCoordinateReferenceSystem,
                       context: QgsCoordinateTransformContext) -> float:
    """Planar m² for projected CRSs, ellipsoidal m² for geographic ones."""
    measure = QgsDistanceArea()
    measure.setSourceCrs(crs, context)
    measure.setEllipsoid(crs.ellipsoidAcronym() if crs.isGeographic() and crs.ellipsoidAcronym() else "NONE")
    if crs.isGeographic() and not crs.ellipsoidAcronym():
        measure.setEllipsoid("EPSG:7030")  # WGS 84, when the CRS names no ellipsoid
    return measure.convertAreaMeasurement(measure.measureArea(geometry), QgsUnitTypes.AreaUnit.AreaSquareMeters)


class FeatureBuilder:
    """Turns engine segments into features of the output schema, in a target CRS."""

    def __init__(self, store: FeatureStore, target_crs: QgsCoordinateReferenceSystem,
                 context: QgsCoordinateTransformContext) -> None:
        self.store = store
        self.source_crs = raster_crs(store)
        self.target_crs = target_crs
        self.context = context
        self._transform = QgsCoordinateTransform(self.source_crs, target_crs, context)
        self.fields = output_fields()

    def geometry(self, segment: Segment) -> QgsGeometry:
        """The segment's polygons in the target CRS."""
        geometry = QgsGeometry()
        geometry.fromWkb(segment.geometry.wkb)
        if self.source_crs != self.target_crs:
            geometry.transform(self._transform)
        return geometry

    def feature(self, segment: Segment, prompts: MapPrompts, object_id: int, label: str = "",
                fields: Optional[QgsFields] = None) -> QgsFeature:
        geometry = self.geometry(segment)
        feature = QgsFeature(fields or self.fields)
        feature.setGeometry(geometry)
        box = "" if prompts.box is None else ",".join(f"{v:.6f}" for v in prompts.box)
        values = {
            "id": object_id, "label": label, PREDICTED_IOU: round(segment.score, 6),
            STABILITY_SCORE: None if segment.stability is None else round(segment.stability, 6),
            AREA: geometry.area(), AREA_M2: area_square_metres(geometry, self.target_crs, self.context),
            "fg_points": prompts.foreground_count, "bg_points": prompts.background_count, "box": box,
            "model": self.store.model_name, "checkpoint": self.store.checkpoint_sha256,
            "tile_id": segment.tile_id, "level_factor": segment.level_factor,
            "resolution": round(segment.resolution, 9),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        for name, value in values.items():
            if feature.fields().indexOf(name) >= 0:
                feature.setAttribute(name, value)
        return feature


def open_tile_index_layer(store: FeatureStore, name: str = TILE_INDEX_LAYER_NAME) -> Optional[QgsVectorLayer]:
    """The store's tile index (tiles.gpkg, raster CRS) as a layer drawn by `style_tile_index`; None when the
    store has none or it cannot be opened."""
    path = store.root / TILE_INDEX
    layer = QgsVectorLayer(f"{path}|layername={TILE_INDEX_LAYER}", name, "ogr") if path.is_file() else None
    if layer is None or not layer.isValid():
        return None
    style_tile_index(layer)
    return layer


def style_tile_index(layer: QgsVectorLayer) -> None:
    """Outlines without fill (the raster stays visible), labelled with the tile's id (`TILE_LABEL`); in a
    multi-scale store's index each level has its colour (`LEVEL_COLOURS`, coarser levels drawn wider) and
    labels name the level (`LEVEL_TILE_LABEL`)."""
    factors = sorted(layer.uniqueValues(layer.fields().indexOf("factor"))) if "factor" in layer.fields().names() else []
    if len(factors) > 1:
        categories = [QgsRendererCategory(factor, _outline_symbol(LEVEL_COLOURS[i % len(LEVEL_COLOURS)], 0.4 + 0.3 * i),
                                          f"{factor:g}x") for i, factor in enumerate(factors)]
        layer.setRenderer(QgsCategorizedSymbolRenderer("factor", categories))
    else:
        layer.setRenderer(QgsSingleSymbolRenderer(_outline_symbol(TILE_OUTLINE_COLOUR, 0.4)))
    text = QgsTextFormat()
    text.setColor(TILE_OUTLINE_COLOUR)
    text.setSize(8)  # points
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setColor(QColor(255, 255, 255))
    text.setBuffer(buffer)
    labels = QgsPalLayerSettings()
    labels.fieldName = LEVEL_TILE_LABEL if len(factors) > 1 else TILE_LABEL
    labels.isExpression = True
    labels.setFormat(text)
    layer.setLabeling(QgsVectorLayerSimpleLabeling(labels))
    layer.setLabelsEnabled(True)


def _outline_symbol(colour: QColor, width: float) -> QgsFillSymbol:
    """A fill symbol drawing only its outline, `width` millimetres wide."""
    outline = QgsSimpleFillSymbolLayer()
    outline.setBrushStyle(Qt.BrushStyle.NoBrush)
    outline.setStrokeColor(colour)
    outline.setStrokeStyle(Qt.PenStyle.SolidLine)
    outline.setStrokeWidth(width)
    # an on-demand tile (docs/levels.md) is dashed; an index written before them has no `extra`: solid
    outline.setDataDefinedProperty(stroke_style_property(), QgsProperty.fromExpression(EXTRA_TILE_STROKE))
    symbol = QgsFillSymbol()
    symbol.changeSymbolLayer(0, outline)
    return symbol


def stroke_style_property() -> int:
    """QgsSymbolLayer's stroke-style property: `StrokeStyle` in newer QGIS, `PropertyStrokeStyle` in 3.22."""
    names = QgsSymbolLayer.Property
    return getattr(names, "StrokeStyle", None) or names.PropertyStrokeStyle


def store_output_path(store: FeatureStore) -> Path:
    """The GeoPackage owned by the store that collects the dock's objects by default."""
    return store.root / OUTPUT_FILE


def open_or_create_gpkg_layer(path: Path, layer_name: str, fields: QgsFields, geometry_type: int,
                              crs: QgsCoordinateReferenceSystem, context: QgsCoordinateTransformContext,
                              display_name: str) -> QgsVectorLayer:
    """The GeoPackage layer `layer_name` at `path`, created with `fields` if the file or the layer is
    missing. A layer is added to an existing file next to its other layers, which are kept; OSError when
    the file cannot be opened or written."""
    if not path.exists() or not _has_layer(path, layer_name):
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName = "GPKG"
        options.layerName = layer_name
        if path.exists():  # never CreateOrOverwriteFile on an existing file: it would drop the other layers
            options.actionOnExistingFile = QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteLayer
        writer = QgsVectorFileWriter.create(str(path), fields, geometry_type, crs, context, options)
        if writer.hasError() != QgsVectorFileWriter.WriterError.NoError:
            raise OSError(f"cannot create the layer '{layer_name}' in '{path}': {writer.errorMessage()}")
        del writer  # closes the file
    layer = QgsVectorLayer(f"{path}|layername={layer_name}", display_name, "ogr")
    if not layer.isValid():
        raise OSError(f"cannot open layer '{layer_name}' of '{path}'")
    return layer


def _has_layer(path: Path, layer_name: str) -> bool:
    """Whether the GeoPackage `path` has the layer; OSError when GDAL cannot open it as a GeoPackage (then
    it is not replaced: it may be anything the user keeps there)."""
    names = layer_names(path)
    if names is None:
        raise OSError(f"'{path}' exists but is not a GeoPackage QuickSAM can open; move it away or choose "
                      "another output layer")
    return layer_name in names


def open_or_create_output_layer(path: Path, crs: QgsCoordinateReferenceSystem,
                                context: QgsCoordinateTransformContext, name: str = "QuickSAM segments"
                                ) -> QgsVectorLayer:
    """The polygon layer at `path` (layer `segments`), created with the output schema if missing."""
    return open_or_create_gpkg_layer(path, OUTPUT_LAYER, output_fields(), QgsWkbTypes.Type.MultiPolygon, crs, context,
                                     name)


# -- Processing sinks: a container file keeps its other layers ------------------------------------------------

#: A destination that names a provider ("ogr:", "memory:", "postgres:"); a Windows drive letter has one letter.
_PROVIDER_URI = re.compile(r"^[A-Za-z_]{3,}:")


def sink_keeping_other_layers(algorithm: QgsProcessingAlgorithm, parameters: Dict[str, Any], name: str,
                              context: QgsProcessingContext, default_layer: str = OUTPUT_LAYER
                              ) -> Tuple[Dict[str, Any], Optional[str]]:
    """`parameters` with the feature sink `name` aimed so that QGIS adds or replaces only its layer when the
    destination is an existing multi-layer file (GeoPackage, ...), and a message saying so (else None).

    QGIS writes a plain file path with "create or overwrite file", which drops every other layer of an
    existing GeoPackage; its own `ogr:dbname='PATH' table="LAYER" (geom)` destination creates or
    overwrites only that layer. So a plain path to such a file becomes that destination; the layer is the
    sink's `layerName` create option, else `default_layer` (also given to a new file, so that the layer
    has the same name either way). Provider destinations are left as they are.
    """
    destination = algorithm.parameterAsOutputLayer(parameters, name, context)
    if not destination or _PROVIDER_URI.match(destination):
        return parameters, None
    try:
        multi_layer = format_for(Path(destination)).multi_layer
    except QuickSamError:
        return parameters, None  # QGIS's own writer decides
    if not multi_layer:
        return parameters, None
    value = parameters.get(name)
    definition = QgsProcessingOutputLayerDefinition(value) if isinstance(value, QgsProcessingOutputLayerDefinition) \
        else QgsProcessingOutputLayerDefinition(destination)
    layer = definition.createOptions.get("layerName") or default_layer
    names = layer_names(Path(destination)) if Path(destination).is_file() else None
    if names is None:  # a new file (or one that is no dataset): written as a whole, with the layer named
        definition.createOptions = {**definition.createOptions, "layerName": layer}
        return {**parameters, name: definition}, None
    uri = QgsDataSourceUri()
    uri.setDatabase(destination)
    uri.setDataSource("", layer, "geom")
    definition.sink = QgsProperty.fromValue(f"ogr:{uri.uri()}")
    others = [other for other in names if other.lower() != layer.lower()]
    replaced = len(others) < len(names)
    if others and replaced:
        text = tr("{path} exists: its layer '{layer}' is replaced; its other layers ({others}) are kept.")
    elif others:
        text = tr("{path} exists: the layer '{layer}' is added; its other layers ({others}) are kept.")
    else:
        text = tr("{path} exists: its layer '{layer}' is replaced.") if replaced \
            else tr("{path} exists: the layer '{layer}' is added.")
    return {**parameters, name: definition}, text.format(path=destination, layer=layer, others=", ".join(others))
