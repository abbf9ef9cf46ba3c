"""The objects to track from the features of a point or polygon layer (quicksam:trackobjects, `quicksam track`).

Rules: features sharing a value of the object-id field are one object with that id (an integer); without the
field each feature is an object, numbered 1, 2, ... in reading order. Points are point prompts (the label field:
1 = foreground, 0 = background, empty = foreground, as quicksam:segmentprompts reads it); a polygon is a mask
prompt (its shape: an accepted object) or, as segmentprompts takes it, a box prompt (its extent); an object takes
at most one polygon. The frame field gives each feature's frame; all prompts must be on one frame.
Coordinates come out in the raster's CRS. Bad input: QuickSamError, one line naming the feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from qgis.core import QgsCsException, QgsWkbTypes

from ...core.errors import QuickSamError
from ...interactive.engine import MapPrompts
from ...interactive.prompt_input import parse_label
from ...interactive.tracking import ObjectPrompts
from .prompt_features import plain_value

POLYGON_MODES = ("mask", "box")


@dataclass
class _Gathered:
    """One object's prompts while the features are read."""

    prompts: MapPrompts = MapPrompts()
    polygon_wkb: Optional[bytes] = None
    polygons: List[int] = field(default_factory=list)


def integer_value(value: Any, what: str, fid: int) -> int:
    """An attribute as an integer (1, 1.0, "1"); QuickSamError naming the feature otherwise."""
    value = plain_value(value)
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
        if number != int(number):
            raise ValueError
        return int(number)
    except (TypeError, ValueError):
        raise QuickSamError(f"feature {fid}: its {what} {value!r} is not a whole number; give every prompt "
                            f"one") from None


def check_prompt_fields(layer_name: str, available: Sequence[str], given: Sequence[Tuple[str, Optional[str]]],
                        hidden: Sequence[str] = ()) -> None:
    """QuickSamError (one line) when a field named in `given` ((option, field name or None) pairs, e.g.
    ("--id-field", "oid")) is not one of the `available` field names of the prompt layer `layer_name`; the
    message lists them but `hidden` (a GeoPackage's fid: usable, but not a field one made)."""
    for option, name in given:
        if name and name not in available:
            listed = ", ".join(n for n in available if n not in hidden) or "none"
            raise QuickSamError(f"{layer_name} has no field '{name}' (its fields: {listed}); give {option} one of "
                                "them")


def read_track_prompts(features: Iterable[Any], transform: Any, id_field: Optional[str], frame_field: Optional[str],
                       label_field: Optional[str], polygons_as: str = "mask") -> Tuple[List[ObjectPrompts], Set[int]]:
    """(objects: List[ObjectPrompts] in reading order, frames: Set[int] the frame field's values (empty without
    the field)) from QgsFeatures; `transform` a QgsCoordinateTransform to the raster's CRS or None."""
    gathered: Dict[int, _Gathered] = {}
    frames: Set[int] = set()
    for number, feature in enumerate(features, start=1):
        fid = int(feature.id())
        obj_id = integer_value(feature[id_field], "object id", fid) if id_field else number
        if obj_id < 1:
            raise QuickSamError(f"feature {fid}: its object id {obj_id} is not 1 or more; give every object a whole "
                                "number 1 or more")
        if frame_field:
            frames.add(integer_value(feature[frame_field], "frame", fid))
        _add_feature(gathered.setdefault(obj_id, _Gathered()), feature, transform, label_field, polygons_as)
    return [_object(obj_id, item) for obj_id, item in gathered.items()], frames


def _add_feature(item: _Gathered, feature: Any, transform: Any, label_field: Optional[str], polygons_as: str) -> None:
    fid = int(feature.id())
    try:
        label = parse_label(plain_value(feature[label_field])) if label_field else 1
    except ValueError as exc:
        raise QuickSamError(f"feature {fid}: {exc}") from None
    geometry = feature.geometry()
    if geometry is None or geometry.isNull() or geometry.isEmpty():
        raise QuickSamError(f"feature {fid} has no geometry; give each prompt a point or a polygon")
    kind = geometry.type()
    if kind not in (QgsWkbTypes.GeometryType.PointGeometry, QgsWkbTypes.GeometryType.PolygonGeometry):
        raise QuickSamError(f"feature {fid} is neither a point nor a polygon; prompts are points or polygons")
    geometry = type(geometry)(geometry)  # never transform the caller's feature
    if transform is not None:
        try:
            geometry.transform(transform)
        except QgsCsException as exc:
            raise QuickSamError(f"feature {fid} cannot be transformed to the raster's CRS ({exc}); check the "
                                "prompt layer's CRS") from None
    if kind == QgsWkbTypes.GeometryType.PointGeometry:
        for vertex in geometry.vertices():
            item.prompts = item.prompts.with_point(vertex.x(), vertex.y(), label)
        return
    if label == 0:
        raise QuickSamError(f"feature {fid} is a polygon labelled 0 (background); a polygon prompt is foreground")
    item.polygons.append(fid)
    if polygons_as == "box":
        rect = geometry.boundingBox()
        item.prompts = item.prompts.with_box((rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()))
    else:
        item.polygon_wkb = bytes(geometry.asWkb())


def _object(obj_id: int, item: _Gathered) -> ObjectPrompts:
    if len(item.polygons) > 1:
        raise QuickSamError(f"object {obj_id} has {len(item.polygons)} polygons (features "
                            f"{', '.join(map(str, item.polygons))}); an object takes one")
    if item.prompts.box is None and item.polygon_wkb is None and item.prompts.foreground_count == 0:
        raise QuickSamError(f"object {obj_id} has only background points (label 0); add a foreground point or a "
                            "polygon")
    return ObjectPrompts(obj_id, item.prompts, item.polygon_wkb)


def prompt_frame(frames: Set[int], given: Optional[int], given_name: str = "FRAME") -> int:
    """The one frame the prompts are on: the frame field's values and/or the frame given (`given_name` names
    it: FRAME in Processing, --frame on the command line). QuickSamError when they name several frames, or
    none."""
    if len(frames) > 1:
        listed = ", ".join(str(frame) for frame in sorted(frames))
        raise QuickSamError(f"the prompts are on frames {listed}, but tracking starts from one frame; give every "
                            "prompt the same frame")
    if frames and given is not None and given not in frames:
        (field_frame,) = frames
        raise QuickSamError(f"the prompts are on frame {field_frame} (their frame field) but {given_name} says "
                            f"{given}; give {given_name} {field_frame}, or leave the frame field empty")
    if frames:
        return next(iter(frames))
    if given is None:
        raise QuickSamError("give the frame the prompts are on (a frame field, or the frame number)")
    return given
