"""What segment everything's filters dropped, counted over a run (numpy only; no QGIS).

SAM's generator drops most of its candidate masks; a run that writes no object must say which filter
dropped them and how far its threshold is from letting some through. `FilterCounts` is filled tile by tile
(mask_generator counts the score filters, nodata, empty masks, NMS and small regions; automatic.py's
vectoriser the object area limits) and `nearest_thresholds` gives the thresholds that would have let the
best candidate past both score filters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np


@dataclass
class FilterCounts:
    """Counts of one run (the tiles segmented in it, not those resumed from an earlier one), in the order
    the filters apply. Scores are SAM's: predicted IoU and stability score, both in [0, 1].

    points: grid points decoded; points_on_nodata: grid points left out because they fell on nodata;
    points_covered: grid points left out because they fell inside a mask already kept (only with the opt-in
    skip_covered_points);
    candidates: masks the mask mode picked (one or three per point); below_iou: candidates under the
    predicted IoU threshold; below_stability: of the rest, those under the stability threshold; empty:
    masks with no pixel left on valid data; duplicates: dropped by box NMS; small_regions: nothing left
    once regions under the minimum mask region area were removed; too_small / too_large: objects outside
    the object area limits (map units²). best_iou: the highest predicted IoU of any candidate;
    best_stability: the highest stability of the candidates that passed the IoU threshold (None: none
    did); largest_too_small / smallest_too_large: areas (map units²) of the objects nearest to the limits;
    nearest: (predicted IoU, stability) of the candidate needing the least lowering of the two thresholds.
    """

    points: int = 0
    points_on_nodata: int = 0
    points_covered: int = 0
    candidates: int = 0
    below_iou: int = 0
    below_stability: int = 0
    empty: int = 0
    duplicates: int = 0
    small_regions: int = 0
    too_small: int = 0
    too_large: int = 0
    best_iou: Optional[float] = None
    best_stability: Optional[float] = None
    largest_too_small: Optional[float] = None
    smallest_too_large: Optional[float] = None
    nearest: Optional[Tuple[float, float]] = None

    @property
    def passed_scores(self) -> int:
        """Candidates that passed both score filters."""
        return self.candidates - self.below_iou - self.below_stability

    def count_scores(self, scores: np.ndarray, stability: np.ndarray, iou_threshold: float,
                     stability_threshold: float) -> None:
        """Count one batch's (K,) predicted IoUs and (K,) stability scores against the two thresholds."""
        if scores.size == 0:
            return
        passed_iou = scores >= iou_threshold
        self.candidates += int(scores.size)
        self.below_iou += int((~passed_iou).sum())
        self.below_stability += int((passed_iou & (stability < stability_threshold)).sum())
        self.best_iou = _higher(self.best_iou, float(scores.max()))
        if passed_iou.any():
            self.best_stability = _higher(self.best_stability, float(stability[passed_iou].max()))
        # the lowering both thresholds need for each candidate to pass; the least of them is the nearest
        lowering = np.maximum(iou_threshold - scores, 0) + np.maximum(stability_threshold - stability, 0)
        best = int(np.argmin(lowering))
        if self.nearest is None or lowering[best] < _lowering(self.nearest, iou_threshold, stability_threshold):
            self.nearest = (float(scores[best]), float(stability[best]))

    def count_area(self, area: float, min_area: float, max_area: float) -> bool:
        """True when an object of `area` (map units²) is within the limits (0 = none); counts it if not."""
        if area < min_area:
            self.too_small += 1
            self.largest_too_small = _higher(self.largest_too_small, area)
            return False
        if max_area and area > max_area:
            self.too_large += 1
            self.smallest_too_large = area if self.smallest_too_large is None else min(self.smallest_too_large,
                                                                                         area)
            return False
        return True

    def add(self, other: FilterCounts, iou_threshold: float, stability_threshold: float) -> None:
        """Add the counts of `other` (a later part of the same run, e.g. a tile decoded on a cluster worker, with
        the same thresholds), as if its candidates had been counted here after this run's own."""
        for name in ("points", "points_on_nodata", "points_covered", "candidates", "below_iou", "below_stability",
                     "empty", "duplicates", "small_regions", "too_small", "too_large"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.best_iou = _higher(self.best_iou, other.best_iou)
        self.best_stability = _higher(self.best_stability, other.best_stability)
        self.largest_too_small = _higher(self.largest_too_small, other.largest_too_small)
        if other.smallest_too_large is not None:
            self.smallest_too_large = (other.smallest_too_large if self.smallest_too_large is None
                                       else min(self.smallest_too_large, other.smallest_too_large))
        if other.nearest is not None and (self.nearest is None or _lowering(other.nearest, iou_threshold,
                                                                            stability_threshold)
                                          < _lowering(self.nearest, iou_threshold, stability_threshold)):
            self.nearest = other.nearest

    def nearest_thresholds(self, iou_threshold: float, stability_threshold: float
                           ) -> Optional[Tuple[float, float]]:
        """(predicted IoU, stability) thresholds, each the current one or lower, rounded down to 0.01, that let
        the nearest candidate past both score filters; None when no candidate was decoded."""
        if self.nearest is None:
            return None
        iou, stability = self.nearest
        return min(iou_threshold, floor_hundredth(iou)), min(stability_threshold, floor_hundredth(stability))


def floor_hundredth(value: float) -> float:
    """`value` rounded down to a multiple of 0.01 (a threshold at it keeps a score of `value`)."""
    return math.floor(value * 100) / 100


def _higher(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _lowering(pair: Tuple[float, float], iou_threshold: float, stability_threshold: float) -> float:
    return max(iou_threshold - pair[0], 0.0) + max(stability_threshold - pair[1], 0.0)
