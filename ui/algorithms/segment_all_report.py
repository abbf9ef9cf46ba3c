"""What quicksam:segmentall tells the user (QGIS layer): progress per batch of points, the summary of a run,
and why a run found no object (from the counts of interactive/filter_counts.py), in the words of whoever
started it: the dialog's parameter labels, or the options of `quicksam segment-all`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

from qgis.core import QgsProcessingFeedback

from ..i18n import tr as _tr

if TYPE_CHECKING:
    from ...interactive.automatic import SegmentAllResult
    from ...interactive.filter_counts import FilterCounts
    from ...interactive.mask_generator import AutoMaskSettings
    from ...interactive.segment_progress import SegmentAllProgress

#: The settings a hint may ask to change, as `quicksam segment-all` names them.
COMMAND_LINE_NAMES = {"pred_iou_thresh": "--pred-iou-thresh", "stability_score_thresh": "--stability-score-thresh",
                      "min_mask_region_area": "--min-mask-region-area", "min_object_area": "--min-object-area",
                      "max_object_area": "--max-object-area"}


def dialog_names() -> Dict[str, str]:
    """The settings a hint may ask to change, as the algorithm's dialog labels them."""
    return {"pred_iou_thresh": _tr("Predicted IoU threshold"),
            "stability_score_thresh": _tr("Stability score threshold"),
            "min_mask_region_area": _tr("Minimum mask region area (pixels)"),
            "min_object_area": _tr("Minimum object area (map units²)"),
            "max_object_area": _tr("Maximum object area (map units²)")}


class TileProgressFeedback(QgsProcessingFeedback):
    """A feedback also told of each finished tile: `quicksam segment-all --progress-json` counts tiles with it
    (Processing's own progress is a percentage)."""

    def tile_finished(self, event: SegmentAllProgress) -> None:
        """Called once a tile's objects are committed; nothing here."""


def progress_reporter(feedback: QgsProcessingFeedback) -> Callable[[SegmentAllProgress], None]:
    """The `progress` callback of `segment_everything` for `feedback`: the percentage over all tiles and
    batches of points (so a long tile moves the bar), a line when a tile starts and when it is finished."""
    def on_progress(event: SegmentAllProgress) -> None:
        feedback.setProgress(100.0 * event.fraction)
        if event.tile_finished:
            feedback.setProgressText(_tr("tile {tile}: {objects} objects so far").format(tile=event.tile_id,
                                                                                        objects=event.objects))
            if event.points_skipped is not None:
                feedback.pushInfo(skipped_points_message(event))
            if isinstance(feedback, TileProgressFeedback):
                feedback.tile_finished(event)
        elif event.batch == 1:  # one line per tile: the dialog logs every progress text
            feedback.setProgressText(_tr("tile {tile} ({number} of {total}): {batches} batches of points").format(
                tile=event.tile_id, number=event.done + 1, total=event.total, batches=event.batches))
    return on_progress


def skipped_points_message(event: SegmentAllProgress) -> str:
    """One line on a finished tile of a run with skip_covered_points: the grid points it did not decode (the
    Processing log and the CLI's `info` events both show it)."""
    return _tr("tile {tile}: {skipped} grid points skipped inside masks already kept (skip covered points is "
               "on)").format(tile=event.tile_id, skipped=event.points_skipped)


def summary_message(result: SegmentAllResult, seconds: float) -> str:
    """One line: objects written, tiles, seconds and where."""
    return _tr("{objects} objects written from {tiles} tiles in {seconds:.1f} s to {path} ({merged} joined across "
               "tile borders; {resumed} tiles from an earlier run).").format(
        objects=result.objects, tiles=result.tiles, seconds=seconds, path=result.output,
        merged=result.merged_objects, resumed=result.tiles_resumed)


def levels_message(result: SegmentAllResult) -> str:
    """One line on a run over several levels: which, and how many objects the merge across them dropped."""
    return _tr("Levels {levels} (factors of the finest level's pixel size) segmented; {duplicates} objects found at "
               "more than one level were written once.").format(
        levels=", ".join(f"{factor:g}" for factor in result.levels), duplicates=result.level_duplicates)


def no_objects_message(counts: FilterCounts, settings: AutoMaskSettings, names: Dict[str, str]) -> str:
    """One line saying which filters dropped the candidate masks of a run that wrote no object, and the
    setting (named as in `names`) that would let some through."""
    if counts.points == 0 and counts.points_on_nodata:
        return _tr("0 objects: all {points} grid points fell on nodata pixels.").format(
            points=counts.points_on_nodata)
    if counts.candidates == 0:
        return _tr("0 objects: no tile was segmented in this run (every tile was finished by an earlier run).")
    reasons = "; ".join(_drop_reasons(counts, settings))
    hint = _hint(counts, settings, names)
    message = _tr("0 objects: of {candidates} candidate masks, {reasons}.").format(
        candidates=counts.candidates, reasons=reasons)
    return f"{message} {hint}" if hint else message


def _drop_reasons(counts: FilterCounts, settings: AutoMaskSettings) -> List[str]:
    """What each filter that dropped masks dropped, in the order they apply."""
    reasons = []
    if counts.below_iou:
        reasons.append(_tr("{count} were below the predicted IoU threshold {threshold:g} (best {best:.2f})").format(
            count=counts.below_iou, threshold=settings.pred_iou_thresh, best=counts.best_iou))
    if counts.below_stability:
        reasons.append(_tr("{count} were below the stability score threshold {threshold:g} (best {best:.2f})").format(
            count=counts.below_stability, threshold=settings.stability_score_thresh, best=counts.best_stability))
    if counts.empty:
        reasons.append(_tr("{count} had no pixel on valid data").format(count=counts.empty))
    if counts.duplicates:
        reasons.append(_tr("{count} were duplicates (box NMS)").format(count=counts.duplicates))
    if counts.small_regions:
        reasons.append(_tr("{count} were left empty by the minimum mask region area ({pixels} pixels)").format(
            count=counts.small_regions, pixels=settings.min_mask_region_area))
    if counts.too_small:
        reasons.append(_tr("{count} were smaller than the minimum object area {area:g} (largest {largest:g})").format(
            count=counts.too_small, area=settings.min_object_area, largest=counts.largest_too_small))
    if counts.too_large:
        reasons.append(_tr("{count} were larger than the maximum object area {area:g} (smallest {smallest:g})").format(
            count=counts.too_large, area=settings.max_object_area, smallest=counts.smallest_too_large))
    return reasons


def _hint(counts: FilterCounts, settings: AutoMaskSettings, names: Dict[str, str]) -> Optional[str]:
    """The change that lets some masks past the filter that stopped them all, or None."""
    if counts.passed_scores == 0:
        thresholds = counts.nearest_thresholds(settings.pred_iou_thresh, settings.stability_score_thresh)
        if thresholds is None:
            return None
        iou, stability = thresholds
        lower = [_tr("{name} to {value:g}").format(name=names[key], value=value) for key, value, current in
                 (("pred_iou_thresh", iou, settings.pred_iou_thresh),
                  ("stability_score_thresh", stability, settings.stability_score_thresh)) if value < current]
        if not lower:
            return None
        return _tr("Lower {changes} to let some masks through.").format(changes=_tr(" and ").join(lower))
    if counts.small_regions and not (counts.too_small or counts.too_large):
        return _tr("Lower {name} to let some masks through.").format(name=names["min_mask_region_area"])
    if counts.too_small and not counts.too_large:
        return _tr("Lower {name} to {value:g} to let some masks through.").format(
            name=names["min_object_area"], value=three_digits(counts.largest_too_small, up=False))
    if counts.too_large and not counts.too_small:
        return _tr("Raise {name} to {value:g} (or 0 for no limit) to let some masks through.").format(
            name=names["max_object_area"], value=three_digits(counts.smallest_too_large, up=True))
    return None


def three_digits(value: float, up: bool) -> float:
    """`value` (> 0) rounded to three significant digits, up or down, so that a limit set to it keeps `value`."""
    if value <= 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(value)) - 2)
    return (math.ceil(value / step) if up else math.floor(value / step)) * step
