"""One object at a time: its prompts with an undo history, its candidate segments, accept and clear.

Plain Python over the engine (no QGIS, no Qt): the dock's controller drives it from the GUI thread and
hands `segment_prompts` to a worker thread. Coordinates are in the raster's CRS, like the engine's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..core.defaults import MASK_MODES
from .engine import MapPrompts, PromptError, Segment, SegmentEngine

FOREGROUND = 1
BACKGROUND = 0


@dataclass(frozen=True)
class SegmentOptions:
    """How masks become polygons.

    mode: one of MASK_MODES ('single', or of the three candidates 'best' / 'largest' / 'smallest' / 'all');
    min_area_pixels: parts and holes smaller than this many raster pixels are dropped;
    simplify_tolerance: Douglas-Peucker tolerance in the raster CRS's map units (0 = pixel edges);
    keep_holes: False fills holes.
    """

    mode: str = "single"
    min_area_pixels: float = 0.0
    simplify_tolerance: float = 0.0
    keep_holes: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MASK_MODES:
            raise ValueError(f"mask mode must be one of {', '.join(MASK_MODES)}, not '{self.mode}'")


def segment_prompts(engine: SegmentEngine, prompts: MapPrompts, options: SegmentOptions) -> List[Segment]:
    """The engine's candidates for `prompts` (raster CRS). Touches no session state: safe in a worker."""
    return engine.segment(prompts, mode=options.mode, simplify_tolerance=options.simplify_tolerance,
                          min_area_pixels=options.min_area_pixels, keep_holes=options.keep_holes)


@dataclass(frozen=True)
class AcceptedObject:
    """What to commit for one object: its prompts and the segments decoded from exactly those prompts."""

    prompts: MapPrompts
    segments: Tuple[Segment, ...]


class SegmentSession:
    """The object being segmented: prompts (raster CRS), their undo history and the latest result.

    Every change of prompts is checked against the store first (inside the raster, on one encoded tile),
    so a prompt that cannot be segmented is refused with the engine's PromptError and never kept.
    """

    def __init__(self, engine: SegmentEngine, options: Optional[SegmentOptions] = None) -> None:
        self.engine = engine
        self.options = options or SegmentOptions()
        self._history: List[MapPrompts] = [MapPrompts()]
        self._result_prompts: Optional[MapPrompts] = None
        self._result_options: Optional[SegmentOptions] = None
        self._segments: Tuple[Segment, ...] = ()

    # -- prompts -------------------------------------------------------------------------------------
    @property
    def prompts(self) -> MapPrompts:
        """The current object's prompts (raster CRS)."""
        return self._history[-1]

    @property
    def undo_depth(self) -> int:
        """How many prompt changes `undo` can take back."""
        return len(self._history) - 1

    def add_point(self, x: float, y: float, label: int) -> MapPrompts:
        """Add a foreground (1) or background (0) point at (x, y) in the raster CRS."""
        if label not in (FOREGROUND, BACKGROUND):
            raise ValueError("a point label is 1 (foreground) or 0 (background)")
        return self._push(self.prompts.with_point(x, y, label))

    def set_box(self, box: Tuple[float, float, float, float]) -> MapPrompts:
        """Set the object's box (xmin, ymin, xmax, ymax in the raster CRS; corners in any order). SAM takes
        one box per object, so a new box replaces the previous one (undo brings it back)."""
        return self._push(self.prompts.with_box(box))

    def _push(self, candidate: MapPrompts) -> MapPrompts:
        self.engine.choose_tile(candidate)  # PromptError when it cannot be segmented: nothing is kept
        self._history.append(candidate)
        return candidate

    def undo(self) -> bool:
        """Take back the last prompt change; False when there is none."""
        if len(self._history) == 1:
            return False
        self._history.pop()
        return True

    def clear(self) -> None:
        """Forget the current object's prompts, history and result."""
        self._history = [MapPrompts()]
        self._result_prompts = None
        self._result_options = None
        self._segments = ()

    def preview_prompts(self, x: float, y: float) -> MapPrompts:
        """What a foreground click at (x, y) (raster CRS) would make; PromptError if it cannot be segmented."""
        candidate = self.prompts.with_point(x, y, FOREGROUND)
        self.engine.choose_tile(candidate)
        return candidate

    # -- results -------------------------------------------------------------------------------------
    def set_options(self, options: SegmentOptions) -> None:
        self.options = options

    def segment(self, prompts: Optional[MapPrompts] = None) -> List[Segment]:
        """Decode `prompts` (default: the current ones) with the session's options, here and now."""
        return segment_prompts(self.engine, self.prompts if prompts is None else prompts, self.options)

    def set_result(self, prompts: MapPrompts, options: SegmentOptions, segments: Sequence[Segment]) -> bool:
        """Keep `segments` if they were decoded from the current prompts and options; False (ignored)
        when the object changed meanwhile."""
        if prompts != self.prompts or options != self.options:
            return False
        self._result_prompts, self._result_options, self._segments = prompts, options, tuple(segments)
        return True

    def has_result(self) -> bool:
        """True when `segments` belong to the current prompts and options."""
        return (not self.prompts.is_empty() and self._result_prompts == self.prompts
                and self._result_options == self.options)

    @property
    def segments(self) -> Tuple[Segment, ...]:
        """Candidates of the current prompts (empty while they are being decoded)."""
        return self._segments if self.has_result() else ()

    def current_object(self) -> AcceptedObject:
        """The object as it would be committed now; PromptError saying why there is nothing to commit."""
        if self.prompts.is_empty():
            raise PromptError("nothing to accept: click on the object first")
        if not self.has_result():
            raise PromptError("the object is still being decoded; accept again in a moment")
        if not self._segments:
            raise PromptError("the mask of these prompts is empty (or smaller than the minimum area); "
                              "move the points or lower the minimum area")
        return AcceptedObject(self.prompts, self._segments)

    def accept(self) -> AcceptedObject:
        """Hand over the current object for committing and start the next one."""
        accepted = self.current_object()
        self.clear()
        return accepted
