"""Prompt features (points and polygons of a layer) to one MapPrompts per object.

Rules (the `quicksam:segmentprompts` algorithm and `quicksam segment` follow them):

- Without a group field every feature is one object: a point (or multipoint) gives its point(s), a
  polygon (or multipolygon) gives its bounding box as a box prompt.
- With a group field, the features sharing a group value form one object: its points, plus the box
  of its polygon. An object takes at most one box, so a group with two polygons is refused. Features
  whose group value is empty (NULL) are objects of their own.
- A label field says 1 = foreground, 0 = background for points (True/False and "1"/"0" too); without
  one, or where it is empty, points are foreground. A box is always foreground, so a polygon
  labelled 0 is refused rather than silently taken as foreground.
- An object needs a box or a foreground point; one made only of background points is refused.

Refused objects are returned as `SkippedObject`s with a reason, never raised: a batch reports them
and carries on. Objects are numbered 1, 2, ... in the order their first feature is read; refused ones
keep their number, so an output id always names the same object in the log.

Coordinates: `PromptRecord`s and the resulting `MapPrompts` are in the raster's CRS. Reading them from
QGIS features (and the CRS transformation) is the QGIS layer's part: ui/algorithms/prompt_features.py.
No QGIS here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Hashable, Iterable, List, Optional, Tuple

from .engine import MapPrompts

Box = Tuple[float, float, float, float]
Point = Tuple[float, float]


@dataclass(frozen=True)
class PromptRecord:
    """One prompt feature, in the raster CRS.

    `points` holds a (multi)point's points; `box` (xmin, ymin, xmax, ymax) a polygon's extent.
    `group` is None when the feature is an object of its own. `problem` says why the feature
    (and so its whole object) cannot be used.
    """

    feature_id: int
    points: Tuple[Point, ...] = ()
    box: Optional[Box] = None
    label: int = 1
    group: Optional[Hashable] = None
    problem: Optional[str] = None


@dataclass(frozen=True)
class PromptObject:
    """One object to segment: its number, a name for messages, its prompts (raster CRS) and the text
    written to the output's `label` attribute (the group value; empty without grouping)."""

    object_id: int
    name: str
    prompts: MapPrompts
    label: str = ""


@dataclass(frozen=True)
class SkippedObject:
    """An object that cannot be segmented, and why (one sentence saying what to change)."""

    object_id: int
    name: str
    reason: str

    def message(self) -> str:
        return f"object {self.object_id} ({self.name}) skipped: {self.reason}"

    @classmethod
    def from_message(cls, message: str) -> Optional[SkippedObject]:
        """The SkippedObject that `message()` wrote `message` from, or None for any other text (a caller
        that gets the messages as text, like `quicksam segment`, reads them back with this)."""
        match = _SKIPPED_MESSAGE.match(message)
        return cls(int(match.group(1)), match.group(2), match.group(3)) if match else None


_SKIPPED_MESSAGE = re.compile(r"^object (\d+) \((.*?)\) skipped: (.*)$", re.DOTALL)


# -- values ------------------------------------------------------------------------------------------

def is_null(value: Any) -> bool:
    """True for None (the QGIS layer turns QGIS's NULL into None before values reach here)."""
    return value is None


def parse_label(value: Any) -> int:
    """1 (foreground) or 0 (background) from a label attribute; empty means foreground.

    ValueError with a message naming the value otherwise.
    """
    if is_null(value) or (isinstance(value, str) and not value.strip()):
        return 1
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    raise ValueError(f"label {value!r} is neither 1 (foreground) nor 0 (background)")


def group_key(value: Any) -> Optional[Hashable]:
    """The value features are grouped by: None for empty, numbers and text as they are, anything else
    (dates, ...) as its text. 1 and 1.0 group together, "1" does not."""
    if is_null(value) or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _group_name(group: Hashable) -> str:
    return f"group {group!r}" if isinstance(group, str) else f"group {group}"


# -- grouping (QGIS-free) ------------------------------------------------------------------------------

def _object_prompts(records: List[PromptRecord]) -> Tuple[Optional[MapPrompts], Optional[str]]:
    """The prompts of one object's records, or the reason they cannot form an object."""
    for record in records:
        if record.problem:
            return None, record.problem
    boxes = [record for record in records if record.box is not None]
    if len(boxes) > 1:
        ids = ", ".join(str(record.feature_id) for record in boxes)
        return None, (f"it has {len(boxes)} polygons (features {ids}) but an object takes one box; give each "
                      "polygon its own group value")
    prompts = MapPrompts()
    for record in records:
        for x, y in record.points:
            prompts = prompts.with_point(x, y, record.label)
    if boxes:
        prompts = prompts.with_box(boxes[0].box)
    if prompts.is_empty():
        return None, "it has no point and no polygon"
    if prompts.box is None and prompts.foreground_count == 0:
        return None, ("it has only background points (label 0); add a foreground point (label 1) or a polygon "
                      "to the same group")
    return prompts, None


def group_records(records: Iterable[PromptRecord]) -> Tuple[List[PromptObject], List[SkippedObject]]:
    """Objects from prompt records, in reading order, and the objects refused (with reasons).

    Records with a group value are merged per value; records without one are objects of their own.
    """
    buckets: Dict[Tuple[str, Any], List[PromptRecord]] = {}
    for record in records:
        key = ("feature", record.feature_id) if record.group is None else ("group", record.group)
        buckets.setdefault(key, []).append(record)
    objects: List[PromptObject] = []
    skipped: List[SkippedObject] = []
    for object_id, ((kind, value), members) in enumerate(buckets.items(), start=1):
        name = f"feature {value}" if kind == "feature" else _group_name(value)
        label = "" if kind == "feature" else str(value)
        prompts, problem = _object_prompts(members)
        if prompts is None:
            skipped.append(SkippedObject(object_id, name, problem or "unusable prompts"))
        else:
            objects.append(PromptObject(object_id, name, prompts, label))
    return objects, skipped
