"""SAM's automatic mask generator on one tile's cached features (numpy + GDAL; no QGIS, no torch, no shapely).

A grid of point prompts over the tile's valid area (grid points on nodata pixels are left out) is decoded by
the store's ONNX decoder (the same `OnnxDecoder` as the dock, `points_per_batch` prompts per call); each
point's mask is chosen by the mask mode (`core.mask_decoding.pick_masks`: by area, the area of the mask as it
becomes the polygon), clipped to the tile's valid pixels (the store's mask), filtered by predicted IoU and
stability, small regions removed and duplicates suppressed (NMS on boxes). What happens at tile borders is
tile_merge's job; the run around it is automatic.py's.

Coordinates: tile pixels (x = col, y = row) for prompts; the masks out carry raster pixel offsets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..core.defaults import MASK_MODES
from ..core.errors import QuickSamError
from ..core.mask_decoding import (
    AREA_MODES,
    choose_outputs,
    pick_masks,
    stability_scores,
    upsample_masks,
    upsample_window,
)
from ..core.tiling import Tile
from .decoding import OnnxDecoder
from .filter_counts import FilterCounts
from .tile_merge import TileMask, pixel_bounds, trimmed


@dataclass(frozen=True)
class AutoMaskSettings:
    """SAM's automatic mask generator parameters, plus QuickSAM's object filters.

    points_per_side: grid points per tile side (points_per_side² prompts per tile);
    points_per_batch: prompts decoded in one call of the decoder (memory grows with it); 0 = automatic:
    the decoder's preferred batch (4 on the CPU, 64 on a GPU; see OnnxDecoder.preferred_batch);
    pred_iou_thresh: minimum predicted IoU; stability_score_thresh / stability_score_offset: minimum IoU of
    the mask thresholded at ±offset (logits); box_nms_thresh: box IoU above which the lower-scored mask of
    a tile is dropped; min_mask_region_area: islands and holes smaller than this many pixels are removed;
    mask_mode: as in the interactive stage (`all` = SAM's three candidates per point);
    min_object_area / max_object_area: in the raster CRS's map units² (0 = no limit);
    simplify_tolerance: Douglas-Peucker tolerance in map units (0 = exact pixel edges).
    Across the levels of a multi-scale store (interactive/segment_levels.py, level_merge.py), under SAM's names:
    crop_nms_thresh: box IoU (map units) above which, of two objects from different levels, the coarser
    level's is dropped (SAM prefers masks from smaller crops, i.e. finer pixels); crop_n_points_downscale_factor:
    a level 2**i times finer than the coarsest level run gets points_per_side / factor**i points per side (SAM's
    rule per crop layer i). skip_covered_points (opt-in, off = SAM's generator): a grid point inside a mask
    already kept on the tile (passed the score filters) is not decoded; faster, but fewer candidates: an object
    nested inside a kept one may be missed (docs/segment-everything.md). With several levels, points_per_side is
    the coarsest level's and min_mask_region_area counts pixels of the store's finest level (scaled to each
    level's pixels).
    """

    points_per_side: int = 32
    points_per_batch: int = 0
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 100
    mask_mode: str = "all"
    min_object_area: float = 0.0
    max_object_area: float = 0.0
    simplify_tolerance: float = 0.0
    crop_nms_thresh: float = 0.7
    crop_n_points_downscale_factor: int = 1
    skip_covered_points: bool = False

    def check(self) -> None:
        """QuickSamError naming the first unusable value."""
        problems = [
            (self.points_per_side < 1, "points per side must be at least 1"),
            (self.points_per_batch < 0, "points per batch must be 0 (automatic) or more"),
            (not 0 <= self.pred_iou_thresh <= 1, "the predicted IoU threshold must be between 0 and 1"),
            (not 0 <= self.stability_score_thresh <= 1, "the stability threshold must be between 0 and 1"),
            (self.stability_score_offset < 0, "the stability offset must not be negative"),
            (not 0 < self.box_nms_thresh <= 1, "the box NMS threshold must be above 0 and at most 1"),
            (self.min_mask_region_area < 0, "the minimum mask region area must not be negative"),
            (self.mask_mode not in MASK_MODES, f"the mask mode must be one of {', '.join(MASK_MODES)}"),
            (self.min_object_area < 0 or self.max_object_area < 0, "object areas must not be negative"),
            (0 < self.max_object_area < self.min_object_area,
             "the maximum object area is smaller than the minimum"),
            (self.simplify_tolerance < 0, "the simplification tolerance must not be negative"),
            (not 0 < self.crop_nms_thresh <= 1, "the crop NMS threshold must be above 0 and at most 1"),
            (self.crop_n_points_downscale_factor < 1, "the crop points downscale factor must be at least 1"),
        ]
        for bad, message in problems:
            if bad:
                raise QuickSamError(message)

    def to_dict(self) -> dict:
        return asdict(self)



def point_grid(tile: Tile, points_per_side: int) -> np.ndarray:
    """(n², 2) prompt points (x = col, y = row) in tile pixels, evenly over the tile's valid area as
    SAM's `build_point_grid` (cell centres)."""
    fractions = (np.arange(points_per_side) + 0.5) / points_per_side
    xs, ys = fractions * tile.valid_width, fractions * tile.valid_height
    grid_x, grid_y = np.meshgrid(xs, ys)
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)


def points_with_data(points: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The (n, 2) tile-pixel points (x = col, y = row) that lie on a valid pixel of the (S, S) bool mask."""
    cols = np.clip(np.floor(points[:, 0]).astype(int), 0, valid.shape[1] - 1)
    rows = np.clip(np.floor(points[:, 1]).astype(int), 0, valid.shape[0] - 1)
    return points[valid[rows, cols]]


def box_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> List[int]:
    """Indices kept by greedy non-maximum suppression on (N, 4) boxes x0, y0, x1, y1 (half-open)."""
    order = list(np.argsort(-scores, kind="stable"))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: List[int] = []
    while order:
        best = order.pop(0)
        keep.append(int(best))
        if not order:
            break
        rest = np.array(order)
        x0 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1)
        order = [int(i) for i, o in zip(rest, iou) if o <= threshold]
    return keep


def remove_small_regions(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """The mask with 8-connected islands and holes smaller than `min_pixels` removed (GDAL's sieve, like
    SAM's `remove_small_regions` in both modes)."""
    if min_pixels <= 0 or not mask.any():
        return mask
    from osgeo import gdal

    # The padding joins the outside into one background region, at least `min_pixels` large so that the
    # sieve never takes the outside itself for a small hole (a mask's crop may be small).
    pad = max(1, int(np.ceil(np.sqrt(min_pixels) / 2)))
    padded = np.pad(mask, pad).astype(np.uint8)
    raster = gdal.GetDriverByName("MEM").Create("", padded.shape[1], padded.shape[0], 1, gdal.GDT_Byte)
    band = raster.GetRasterBand(1)
    band.WriteArray(padded)
    gdal.SieveFilter(band, None, band, int(min_pixels), 8)
    return band.ReadAsArray()[pad:-pad, pad:-pad].astype(bool)



@dataclass
class _Candidate:
    """A mask that passed the score filters, waiting for NMS: its box in tile pixels (x0, y0, x1, y1,
    half-open) and its crop packed to bits (a tile can have thousands of candidates)."""

    box: Tuple[int, int, int, int]
    score: float
    stability: float
    bits: np.ndarray = field(repr=False)

    @classmethod
    def of(cls, mask: np.ndarray, score: float, stability: float) -> Optional[_Candidate]:
        box = pixel_bounds(mask)
        if box is None:
            return None
        return cls(box, score, stability, np.packbits(mask[box[1]:box[3], box[0]:box[2]]))

    def crop(self) -> np.ndarray:
        """The mask inside its box."""
        x0, y0, x1, y1 = self.box
        return np.unpackbits(self.bits, count=(y1 - y0) * (x1 - x0)).reshape(y1 - y0, x1 - x0).astype(bool)



def tile_masks(decoder: OnnxDecoder, features: Dict[str, np.ndarray], tile: Tile,
               settings: AutoMaskSettings, valid: Optional[np.ndarray] = None,
               counts: Optional[FilterCounts] = None,
               batch_done: Optional[Callable[[int, int], None]] = None) -> List[TileMask]:
    """The filtered, de-duplicated masks of one tile (raster pixel coordinates). As in SAM's generator:
    score filters per batch, NMS on the boxes of all candidates, then small regions removed from the
    survivors only. `valid` ((S, S) bool, True = data; None = all valid) drops grid points on nodata and
    clips every mask before it is scored against others. `counts` (if given) is told what each filter
    dropped; `batch_done(done, total)` is called after each batch of points (it may raise, e.g.
    Cancelled, to stop between batches)."""
    counts = counts if counts is not None else FilterCounts()
    batch = settings.points_per_batch or decoder.preferred_batch
    points = point_grid(tile, settings.points_per_side)
    if valid is not None:
        grid_size = len(points)
        points = points_with_data(points, valid)
        counts.points_on_nodata += grid_size - len(points)
    starts = range(0, len(points), batch)
    candidates: List[_Candidate] = []
    covered = _Coverage(tile) if settings.skip_covered_points else None
    for done, start in enumerate(starts, start=1):
        batch_points = points[start:start + batch]
        if covered is not None:
            batch_points = covered.uncovered(batch_points, counts)
        found = _batch_candidates(decoder, features, tile, settings, batch_points, valid, counts)
        if covered is not None:
            covered.add(found)
        candidates += found
        if batch_done is not None:
            batch_done(done, len(starts))
    if not candidates:
        return []
    boxes = np.array([c.box for c in candidates], dtype=float)
    kept = box_nms(boxes, np.array([c.score for c in candidates]), settings.box_nms_thresh)
    counts.duplicates += len(candidates) - len(kept)
    found = []
    for index in kept:
        candidate = candidates[index]
        # on the box alone: outside it there is only background, which the sieve's padding stands for
        mask = remove_small_regions(candidate.crop(), settings.min_mask_region_area)
        item = trimmed(TileMask(tile.tile_id, tile.col_off + candidate.box[0], tile.row_off + candidate.box[1], mask,
                                candidate.score, candidate.stability))
        if item is not None:
            found.append(item)
        else:
            counts.small_regions += 1
    return found



class _Coverage:
    """The tile pixels inside the masks kept so far (skip_covered_points): (S, S) bool, tile pixels."""

    def __init__(self, tile: Tile) -> None:
        self.pixels = np.zeros((tile.valid_height, tile.valid_width), dtype=bool)

    def add(self, candidates: List[_Candidate]) -> None:
        for candidate in candidates:
            x0, y0, x1, y1 = candidate.box
            self.pixels[y0:y1, x0:x1] |= candidate.crop()

    def uncovered(self, points: np.ndarray, counts: FilterCounts) -> np.ndarray:
        """The (n, 2) tile-pixel points (x = col, y = row) not on a covered pixel; the others are counted."""
        cols = np.clip(np.floor(points[:, 0]).astype(int), 0, self.pixels.shape[1] - 1)
        rows = np.clip(np.floor(points[:, 1]).astype(int), 0, self.pixels.shape[0] - 1)
        inside = self.pixels[rows, cols]
        counts.points_covered += int(inside.sum())
        return points[~inside]


def _object_masks(decoder: OnnxDecoder, logits: np.ndarray, tile: Tile, valid: Optional[np.ndarray]) -> np.ndarray:
    """(K, valid_height, valid_width) bool: (K, L, L) logits as the masks that become polygons (upsampled to
    the tile, nodata removed, the padding cut)."""
    masks = upsample_masks(logits, decoder.image_size, decoder.settings.mask_threshold)
    if valid is not None:
        masks &= valid  # nodata is never part of an object
    return masks[:, :tile.valid_height, :tile.valid_width]


def _window_candidate(decoder: OnnxDecoder, low_res: np.ndarray, tile: Tile, valid: Optional[np.ndarray],
                      score: float, stability: float) -> Optional[_Candidate]:
    """The candidate of one (L, L) logit map: the same mask as `_object_masks` (upsampled, nodata removed, the
    padding cut), upsampled only in the window that can hold its pixels; None when it has none left."""
    window = upsample_window(low_res, decoder.image_size, decoder.settings.mask_threshold,
                             (0, tile.valid_height, 0, tile.valid_width))   # the padding cut
    if window is None:
        return None
    row0, col0, pixels = window.row0, window.col0, window.crop
    if valid is not None:
        pixels = pixels & valid[row0:row0 + pixels.shape[0], col0:col0 + pixels.shape[1]]
    box = pixel_bounds(pixels)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return _Candidate((col0 + x0, row0 + y0, col0 + x1, row0 + y1), score, stability,
                      np.packbits(pixels[y0:y1, x0:x1]))


def _picked_outputs(decoder: OnnxDecoder, all_logits: np.ndarray, all_scores: np.ndarray, tile: Tile,
                    settings: AutoMaskSettings, valid: Optional[np.ndarray]) -> np.ndarray:
    """Indices of one point's (M, L, L) model outputs that its mask mode keeps (by area: of the mask that
    becomes the polygon, as in the interactive stage)."""
    chosen = choose_outputs(all_logits, all_scores, settings.mask_mode != "single", decoder.settings)
    masks = (_object_masks(decoder, all_logits[chosen], tile, valid) if settings.mask_mode in AREA_MODES
             else None)
    return chosen[pick_masks(all_scores[chosen], settings.mask_mode, masks)]


def _batch_candidates(decoder: OnnxDecoder, features: Dict[str, np.ndarray], tile: Tile,
                      settings: AutoMaskSettings, points: np.ndarray,
                      valid: Optional[np.ndarray], counts: FilterCounts) -> List[_Candidate]:
    """Decode one batch of grid points; the masks that pass the predicted-IoU and stability filters (what
    the filters dropped is added to `counts`)."""
    counts.points += len(points)
    if len(points) == 0:
        return []
    batch_logits, batch_scores = decoder.raw_points(features, points)
    picked = [_picked_outputs(decoder, all_logits, all_scores, tile, settings, valid)
              for all_logits, all_scores in zip(batch_logits, batch_scores)]
    logits = np.concatenate([all_logits[chosen] for all_logits, chosen in zip(batch_logits, picked)])
    scores = np.concatenate([all_scores[chosen] for all_scores, chosen in zip(batch_scores, picked)])
    stable = stability_scores(logits - decoder.settings.mask_threshold, settings.stability_score_offset)
    counts.count_scores(scores, stable, settings.pred_iou_thresh, settings.stability_score_thresh)
    good = np.flatnonzero((scores >= settings.pred_iou_thresh) & (stable >= settings.stability_score_thresh))
    found = []
    for i in good:  # one at a time: a batch of 1024 px masks would take ~200 MB at once
        candidate = _window_candidate(decoder, logits[i], tile, valid, float(scores[i]), float(stable[i]))
        if candidate is not None:
            found.append(candidate)
        else:
            counts.empty += 1
    return found
