"""Accepted objects into their layers: on disk at once, through QGIS's edit commands (QGIS layer).

An object is added inside one edit command ("QuickSAM object"), so QGIS's layer signals, defaults and
the edit history see an ordinary edit. Then:
  - a layer that was not being edited is committed at once and left as it was: the object is on disk,
    a crash afterwards loses nothing (committing closes that edit session, so QGIS's undo stack is
    emptied, as after any save);
  - a layer the user is editing keeps the object in their edit session (undoable with QGIS's Undo); it
    is not committed, because that would also save the user's own unsaved edits behind their back.
The dock keeps the output layer's provider in update mode between accepts (`WriteAccess`), so that
committing does not reopen its file each time; the commit per accept stays.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransformContext,
    QgsFeature,
    QgsFields,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsProperty,
    QgsProviderRegistry,
    QgsSingleSymbolRenderer,
    QgsSymbolLayer,
    QgsVectorLayer,
    QgsVectorLayerUtils,
    QgsWkbTypes,
)

from ...core.store import FeatureStore
from ...interactive.session import AcceptedObject
from ..layers import FeatureBuilder, fields_of, open_or_create_gpkg_layer

EDIT_COMMAND = "QuickSAM object"
PROMPTS_FILE = "prompts.gpkg"
PROMPTS_LAYER = "prompts"
PROMPTS_LAYER_NAME = "QuickSAM prompts"
#: Hue from the object id by the golden angle: consecutive objects get clearly different colours.
_HUE = '(coalesce("id", 0) * 137.508) % 360'
FILL_COLOUR_EXPRESSION = f"color_hsva({_HUE}, 70, 95, 110)"
STROKE_COLOUR_EXPRESSION = f"color_hsv({_HUE}, 85, 65)"


@dataclass(frozen=True)
class CommitResult:
    """Where an object went: its ids (attribute `id`, or none if the layer has no such field) and whether
    it is on disk (False: left in the user's edit session)."""

    layer_name: str
    object_ids: List[int]
    saved: bool


class WriteAccess:
    """Keeps one layer's data provider in update mode (`enterUpdateMode`) until `release`, so that each
    accept's startEditing / commitChanges does not reopen the file: for a GeoPackage, reopening it for
    writing and read-only again after the commit costs tens of ms per accept, the commit itself ~1.5 ms
    (bench/click_post.py). Each object is still committed when it is accepted, in its own SQLite
    transaction: a crash afterwards loses nothing (GDAL recounts the features on the next open)."""

    def __init__(self) -> None:
        self.layer_id: Optional[str] = None
        self._provider = None

    def hold(self, layer: QgsVectorLayer) -> None:
        """Keep `layer`'s provider in update mode (releasing the one held before, if another layer's)."""
        if layer.id() == self.layer_id:
            return
        self.release()
        provider = layer.dataProvider()
        if provider is not None and provider.enterUpdateMode():
            self.layer_id, self._provider = layer.id(), provider

    def release(self) -> None:
        """Let the held provider go back to read-only (before its layer is removed, or the output changes)."""
        if self._provider is not None:
            with contextlib.suppress(RuntimeError):  # the provider is gone already
                self._provider.leaveUpdateMode()
        self.layer_id, self._provider = None, None


def next_object_id(layer: QgsVectorLayer) -> int:
    """One more than the largest `id` in the layer (edits included); 1 for an empty layer."""
    index = layer.fields().indexOf("id")
    if index < 0:
        return 1
    largest = layer.maximumValue(index)
    try:
        return int(largest) + 1
    except (TypeError, ValueError):
        return 1  # NULL: empty layer


def add_features(layer: QgsVectorLayer, features: Sequence[QgsFeature], command: str = EDIT_COMMAND) -> bool:
    """Add `features` in one edit command; commit unless the user is editing the layer. Returns whether the
    features are on disk; OSError (the layer left as it was) when the layer refuses them."""
    user_editing = layer.isEditable()
    if not user_editing and not layer.startEditing():
        raise OSError(f"the layer '{layer.name()}' cannot be edited (read-only file or provider)")
    layer.beginEditCommand(command)
    if not layer.addFeatures(list(features)):
        layer.destroyEditCommand()
        if not user_editing:
            layer.rollBack()
        raise OSError(f"the layer '{layer.name()}' refused the new features")
    layer.endEditCommand()
    if user_editing:
        return False
    if not layer.commitChanges():
        errors = "; ".join(layer.commitErrors())
        layer.rollBack()
        raise OSError(f"cannot save to '{layer.name()}': {errors}")
    return True


def commit_object(layer: QgsVectorLayer, accepted: AcceptedObject, builder: FeatureBuilder,
                  label: str = "") -> CommitResult:
    """Write an accepted object (one feature per segment, each with its own id) to `layer`, whose CRS
    must be `builder.target_crs`."""
    first_id = next_object_id(layer)
    features: List[QgsFeature] = []
    for offset, segment in enumerate(accepted.segments):
        feature = builder.feature(segment, accepted.prompts, first_id + offset, label, fields=layer.fields())
        features.extend(QgsVectorLayerUtils.makeFeatureCompatible(feature, layer))
    saved = add_features(layer, features)
    has_ids = layer.fields().indexOf("id") >= 0
    ids = [first_id + offset for offset in range(len(accepted.segments))] if has_ids else []
    return CommitResult(layer.name(), ids, saved)


# -- layers in the project ----------------------------------------------------------------------------

def _uri_key(layer_source: str) -> tuple:
    parts = QgsProviderRegistry.instance().decodeUri("ogr", layer_source)
    path = parts.get("path") or layer_source
    with contextlib.suppress(OSError):
        path = str(Path(path).resolve())
    return path, parts.get("layerName") or ""


def project_layer_with_source(project: QgsProject, layer: QgsVectorLayer) -> Optional[QgsVectorLayer]:
    """A vector layer of the project reading the same file and table as `layer`, if any."""
    wanted = _uri_key(layer.source())
    for candidate in project.mapLayers().values():
        if isinstance(candidate, QgsVectorLayer) and candidate.providerType() == "ogr" \
                and _uri_key(candidate.source()) == wanted:
            return candidate
    return None


def add_to_project_once(project: QgsProject, layer: QgsVectorLayer) -> QgsVectorLayer:
    """The project's layer on the same data as `layer`, adding `layer` only if there is none."""
    existing = project_layer_with_source(project, layer)
    if existing is not None:
        return existing
    project.addMapLayer(layer)
    return layer


def set_object_colours(layer: QgsVectorLayer, enabled: bool) -> bool:
    """Colour each feature from its `id` (or stop doing so). Only single-symbol styles are touched, so a
    user's own categorised style is left alone; returns whether the style was changed."""
    renderer = layer.renderer()
    if not isinstance(renderer, QgsSingleSymbolRenderer) or layer.fields().indexOf("id") < 0:
        return False
    symbol_layer = renderer.symbol().symbolLayer(0)
    if symbol_layer is None:
        return False
    fill = QgsProperty.fromExpression(FILL_COLOUR_EXPRESSION) if enabled else QgsProperty()
    stroke = QgsProperty.fromExpression(STROKE_COLOUR_EXPRESSION) if enabled else QgsProperty()
    symbol_layer.setDataDefinedProperty(QgsSymbolLayer.Property.PropertyFillColor, fill)
    symbol_layer.setDataDefinedProperty(QgsSymbolLayer.Property.PropertyStrokeColor, stroke)
    layer.triggerRepaint()
    return True


# -- prompts ------------------------------------------------------------------------------------------

def prompt_fields() -> QgsFields:
    return fields_of((("object_id", "int64"), ("label", "string"), ("prompt", "string"), ("output", "string")))


def open_or_create_prompts_layer(store: FeatureStore, crs: QgsCoordinateReferenceSystem,
                                 context: QgsCoordinateTransformContext) -> QgsVectorLayer:
    """The point layer STORE/prompts.gpkg (raster CRS), created on first use."""
    return open_or_create_gpkg_layer(store.root / PROMPTS_FILE, PROMPTS_LAYER, prompt_fields(), QgsWkbTypes.Type.Point,
                                     crs, context, PROMPTS_LAYER_NAME)


def prompt_features(accepted: AcceptedObject, object_id: int, label: str, output: str,
                    fields: QgsFields) -> List[QgsFeature]:
    """One point per prompt (raster CRS): foreground and background points, and the box's two corners."""
    points = [(QgsPointXY(x, y), "foreground" if kind == 1 else "background")
              for (x, y), kind in zip(accepted.prompts.points, accepted.prompts.labels)]
    if accepted.prompts.box is not None:
        xmin, ymin, xmax, ymax = accepted.prompts.box
        points += [(QgsPointXY(xmin, ymin), "box corner"), (QgsPointXY(xmax, ymax), "box corner")]
    features = []
    for point, kind in points:
        feature = QgsFeature(fields)
        feature.setGeometry(QgsGeometry.fromPointXY(point))
        for name, value in (("object_id", object_id), ("label", label), ("prompt", kind), ("output", output)):
            if fields.indexOf(name) >= 0:
                feature.setAttribute(name, value)
        features.append(feature)
    return features
