"""Prompt records from the features of a QGIS point or polygon layer (the QGIS side of
interactive/prompt_input.py, whose rules they follow)."""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional

from qgis.core import QgsCsException, QgsWkbTypes
from qgis.PyQt.QtCore import QVariant

from ...interactive.prompt_input import PromptRecord, group_key, parse_label


def plain_value(value: Any) -> Any:
    """An attribute value with QGIS's NULL (a null QVariant on PyQt5, None on Qt6 builds) as None."""
    if isinstance(value, QVariant):
        return None if value.isNull() else value.value()
    return value


def read_prompt_records(features: Iterable[Any], transform: Any, group_field: Optional[str] = None,
                        label_field: Optional[str] = None,
                        is_canceled: Callable[[], bool] = lambda: False) -> List[PromptRecord]:
    """PromptRecords, in the raster CRS, from QgsFeatures of a point or polygon layer.

    `transform` is a QgsCoordinateTransform from the layer's CRS to the raster's CRS (or None when they
    are the same). A polygon's box is the extent of its vertices after the transformation. Features
    that cannot be used (no geometry, a line, a bad label, a failed transformation) come back with a
    `problem`, so that their object is reported and skipped, not silently changed.
    """
    records = []
    for feature in features:
        if is_canceled():
            break
        records.append(prompt_record(feature, transform, group_field, label_field))
    return records


def prompt_record(feature: Any, transform: Any, group_field: Optional[str] = None,
                  label_field: Optional[str] = None) -> PromptRecord:
    """The PromptRecord of one QgsFeature (see `read_prompt_records`)."""
    fid = int(feature.id())
    group = group_key(plain_value(feature[group_field])) if group_field else None
    try:
        label = parse_label(plain_value(feature[label_field])) if label_field else 1
    except ValueError as exc:
        return PromptRecord(fid, group=group, problem=f"feature {fid}: {exc}")
    geometry = feature.geometry()
    problem = _geometry_problem(fid, geometry, label)
    if problem is not None:
        return PromptRecord(fid, group=group, problem=problem)
    kind = geometry.type()
    geometry = type(geometry)(geometry)  # a copy: never transform the caller's feature in place
    if transform is not None:
        try:
            geometry.transform(transform)
        except QgsCsException as exc:
            return PromptRecord(fid, group=group, problem=(
                f"feature {fid} cannot be transformed to the raster's CRS ({exc}); check the prompt layer's CRS"))
    if kind == QgsWkbTypes.GeometryType.PointGeometry:
        points = tuple((vertex.x(), vertex.y()) for vertex in geometry.vertices())
        return PromptRecord(fid, points=points, label=label, group=group)
    rect = geometry.boundingBox()
    return PromptRecord(fid, box=(rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()), label=label,
                        group=group)


def _geometry_problem(fid: int, geometry: Any, label: int) -> Optional[str]:
    """Why feature `fid`'s QgsGeometry cannot be a prompt with `label`, or None if it can."""
    if geometry is None or geometry.isNull() or geometry.isEmpty():
        return f"feature {fid} has no geometry"
    kind = geometry.type()
    if kind not in (QgsWkbTypes.GeometryType.PointGeometry, QgsWkbTypes.GeometryType.PolygonGeometry):
        return (f"feature {fid} is a {QgsWkbTypes.geometryDisplayString(kind).lower()}; prompts are points "
                "(one click each) or polygons (their extent is a box)")
    if kind == QgsWkbTypes.GeometryType.PolygonGeometry and label == 0:
        return (f"feature {fid} is a polygon labelled 0 (background), but a box is always foreground; set its "
                "label to 1 or leave it empty")
    return None
