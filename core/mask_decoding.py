"""What SAM's prompt encoder + mask decoder take and give, as numpy arrays (no torch, no QGIS, no ONNX).

Shared by the ONNX decoder of the interactive stage (interactive/decoding.py) and the torch decoder of
the encoder stage (encoder/models.py), so both paths differ only in the graph runtime: the prompt
packing (`Prompts`, `prompt_arrays`, `decoder_inputs`) and the post-processing (upsampling,
`stability_score`, choosing among `multimask_output` masks).

Coordinates: continuous tile pixel coordinates, x = column, y = row, (0, 0) = top-left corner of the
tile's top-left pixel. SAM itself adds 0.5 to integer pixel indices, so we pass `coordinate - 0.5`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:
    from sam2.modeling.sam.mask_decoder import MaskDecoder

LOW_RES_LOGIT_CLAMP = 32.0


@dataclass(frozen=True)
class Prompts:
    """One object's prompts in tile pixel coordinates.

    points: (N, 2) x, y; labels: (N,) 1 = foreground, 0 = background; box: (x0, y0, x1, y1) or None;
    mask_input: (L, L) low-resolution logits of a previous decode of the same object, or None.
    """

    points: np.ndarray = None
    labels: np.ndarray = None
    box: Optional[Tuple[float, float, float, float]] = None
    mask_input: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        points = np.zeros((0, 2)) if self.points is None else np.asarray(self.points, np.float64)
        labels = np.zeros(0) if self.labels is None else np.asarray(self.labels)
        object.__setattr__(self, "points", points.reshape(-1, 2))
        object.__setattr__(self, "labels", labels.astype(np.int64).reshape(-1))
        if len(self.points) != len(self.labels):
            raise ValueError("each point needs a label (1 = foreground, 0 = background)")
        if len(self.points) == 0 and self.box is None:
            raise ValueError("a prompt needs at least one point or a box")

    def sam_points(self) -> np.ndarray:
        return self.points - 0.5

    def sam_box(self) -> Optional[Tuple[float, float, float, float]]:
        if self.box is None:
            return None
        return tuple(float(v) - 0.5 for v in self.box)


@dataclass(frozen=True)
class DecoderSettings:
    """How one mask is chosen when a single output is asked for (SAM 2's dynamic multimask)."""

    dynamic_multimask_via_stability: bool = False
    stability_delta: float = 0.05
    stability_thresh: float = 0.98
    mask_threshold: float = 0.0

    @classmethod
    def from_sam2(cls, mask_decoder: MaskDecoder) -> DecoderSettings:
        return cls(
            dynamic_multimask_via_stability=bool(mask_decoder.dynamic_multimask_via_stability),
            stability_delta=float(mask_decoder.dynamic_multimask_stability_delta),
            stability_thresh=float(mask_decoder.dynamic_multimask_stability_thresh),
        )

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class MaskWindow:
    """One mask's pixels inside a window of the tile: `crop` (h, w) bool, whose pixel (0, 0) is the tile
    pixel (row0, col0); every pixel outside the window is False."""

    row0: int
    col0: int
    crop: np.ndarray

    @property
    def pixels(self) -> int:
        """How many pixels the mask has."""
        return int(np.count_nonzero(self.crop))


#: A window of tile pixels: (row0, row1, col0, col1), half-open.
Bounds = Tuple[int, int, int, int]


@dataclass
class DecodeResult:
    """scores: (K,) predicted IoU; low_res_logits: (K, L, L) clamped to +-32 (feed one back as
    `Prompts.mask_input`); indices: which of the model's outputs; logits: (K, L, L) float32, not clamped,
    what the masks are upsampled from to (size, size) and thresholded at `threshold`.

    `masks` ((K, size, size) bool at tile resolution) is built from the logits on first use, unless given;
    `window(k)` gives one mask inside its bounding window only, without a tile-sized array (the same
    pixels)."""

    scores: np.ndarray
    low_res_logits: np.ndarray
    indices: np.ndarray
    logits: Optional[np.ndarray] = None
    size: int = 0
    threshold: float = 0.0
    masks: Optional[np.ndarray] = field(default=None, repr=False, compare=False)  # the property below

    def window(self, index: int, bounds: Optional[Bounds] = None) -> Optional[MaskWindow]:
        """Mask `index` inside `bounds` (tile pixels; None: the whole tile); see `upsample_window`."""
        if self._given is None:
            return upsample_window(self.logits[index], self.size, self.threshold, bounds)
        row0, row1, col0, col1 = bounds or (0, self._given.shape[1], 0, self._given.shape[2])
        return cropped_window(self._given[index, row0:row1, col0:col1], row0, col0)


def _masks(result: DecodeResult) -> np.ndarray:
    if result._given is not None:
        return result._given
    if result._built is None:
        result._built = upsample_masks(result.logits, result.size, result.threshold)
    return result._built


def _set_masks(result: DecodeResult, masks: Optional[np.ndarray]) -> None:
    result._given, result._built = masks, None


# `masks` stays an init field (DecodeResult(masks=...), dataclasses.replace(result, masks=...)) read through
# the property: given masks are used as they are, else they are upsampled from the logits when asked for.
DecodeResult.masks = property(_masks, _set_masks)


def cropped_window(mask: np.ndarray, row0: int = 0, col0: int = 0) -> Optional[MaskWindow]:
    """A (H, W) bool mask whose pixel (0, 0) is tile pixel (row0, col0), cut to its bounding window; None
    when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return MaskWindow(row0 + int(rows[0]), col0 + int(cols[0]), crop)


def prompt_arrays(family: str, prompts: Prompts) -> Tuple[np.ndarray, np.ndarray]:
    """Point coordinates and labels in the order each package's predictor builds them.

    sam2: box corners (labels 2, 3) first, then points, then always one padding point (label -1).
    sam1: points, then box corners; a padding point only when there is no box.
    """
    points = [list(p) for p in prompts.sam_points()]
    labels = [int(v) for v in prompts.labels]
    box = prompts.sam_box()
    corners = [[box[0], box[1]], [box[2], box[3]]] if box is not None else []
    corner_labels = [2, 3] if box is not None else []
    if family == "sam2":
        coords = corners + points + [[0.0, 0.0]]
        all_labels = corner_labels + labels + [-1]
    else:
        coords = points + corners + ([] if box is not None else [[0.0, 0.0]])
        all_labels = labels + corner_labels + ([] if box is not None else [-1])
    return np.asarray(coords, np.float32), np.asarray(all_labels, np.int64)


def decoder_inputs(family: str, feature_names: Sequence[str], features: Dict[str, np.ndarray],
                   prompts: Prompts, image_size: int) -> List[np.ndarray]:
    """Decoder graph inputs, batch dimension added: features, point_coords, point_labels,
    mask_input, has_mask_input."""
    coords, labels = prompt_arrays(family, prompts)
    arrays = [np.asarray(features[name], dtype=np.float32)[None] for name in feature_names]
    size = image_size // 4
    if prompts.mask_input is None:
        mask, has_mask = np.zeros((1, 1, size, size), np.float32), np.zeros(1, np.float32)
    else:
        mask = np.asarray(prompts.mask_input, np.float32).reshape(1, 1, size, size)
        has_mask = np.ones(1, np.float32)
    return arrays + [coords[None], labels[None], mask, has_mask]


DECODER_EXTRA_INPUTS = ("point_coords", "point_labels", "mask_input", "has_mask_input")
#: Bilinear taps per target index: first and second source index (int64), their weights (float32).
Taps = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@lru_cache(maxsize=8)
def _bilinear_taps(source: int, target: int) -> Taps:
    """For each target index: the two source indices and their weights of bilinear resampling with
    align_corners=False (torch's F.interpolate)."""
    position = np.maximum((np.arange(target) + 0.5) * (source / target) - 0.5, 0.0)
    first = np.minimum(np.floor(position).astype(np.int64), source - 1)
    second = np.minimum(first + 1, source - 1)
    weight = (position - first).astype(np.float32)
    return first, second, (1.0 - weight).astype(np.float32), weight


def _interpolate(block: np.ndarray, taps: Taps, targets: slice, axis: int) -> np.ndarray:
    first, second, w_first, w_second = (t[targets] for t in taps)
    if axis == 0:
        return block[first] * w_first[:, None] + block[second] * w_second[:, None]
    return block[:, first] * w_first[None, :] + block[:, second] * w_second[None, :]


def upsample_logits(logits: np.ndarray, size: int) -> np.ndarray:
    """(K, L, L) -> (K, size, size) bilinear, separably, two taps per output row and column."""
    taps = _bilinear_taps(logits.shape[-1], size)
    whole = slice(0, size)
    return np.stack([_interpolate(_interpolate(low_res, taps, whole, 1), taps, whole, 0)
                     for low_res in logits.astype(np.float32)])


def _touching(taps: Taps, low: int, high: int) -> slice:
    """The (contiguous) target indices whose taps read any source index in [low, high]."""
    first, second = taps[0], taps[1]
    hits = np.flatnonzero((second >= low) & (first <= high))
    return slice(int(hits[0]), int(hits[-1]) + 1)


def _limited(span: slice, low: int, high: int) -> slice:
    return slice(max(span.start, low), min(span.stop, high))


def upsample_window(low_res: np.ndarray, size: int, threshold: float,
                    bounds: Optional[Bounds] = None) -> Optional[MaskWindow]:
    """(L, L) logits -> the pixels of bilinear(logits) > threshold at (size, size) inside `bounds`
    (row0, row1, col0, col1 tile pixels, half-open; None: the whole tile), computed only where a low-res
    pixel above the threshold is read (a bilinear value is a convex mix of the pixels it reads, so
    elsewhere it cannot exceed the threshold). Each pixel is computed as in the whole upsampled tile, so
    the window holds exactly its pixels. None when no pixel can be above the threshold there."""
    low_res = np.asarray(low_res, dtype=np.float32)
    above = low_res > threshold
    if not above.any():
        return None
    taps = _bilinear_taps(low_res.shape[-1], size)
    rows, cols = np.flatnonzero(above.any(axis=1)), np.flatnonzero(above.any(axis=0))
    row_range = _touching(taps, int(rows[0]), int(rows[-1]))
    col_range = _touching(taps, int(cols[0]), int(cols[-1]))
    if bounds is not None:
        row_range = _limited(row_range, bounds[0], bounds[1])
        col_range = _limited(col_range, bounds[2], bounds[3])
        if row_range.start >= row_range.stop or col_range.start >= col_range.stop:
            return None
    first, second = taps[0][row_range], taps[1][row_range]
    read = slice(int(first[0]), int(second[-1]) + 1)  # the low-res rows these target rows read
    columns = _interpolate(low_res[read], taps, col_range, 1)  # columns first, on the few low-res rows
    row_taps = (first - read.start, second - read.start, taps[2][row_range], taps[3][row_range])
    return MaskWindow(row_range.start, col_range.start, _rows_above(columns, row_taps, threshold))


def _rows_above(columns: np.ndarray, rows: Taps, threshold: float) -> np.ndarray:
    """(H, W) bool: the bilinear rows of `columns` ((R, W) float32, interpolated along columns already)
    through the row taps `rows` (indices into `columns`), > threshold; exactly
    `_interpolate(columns, rows, all, 0) > threshold`.

    A target row mixes source rows k and k + 1 (or k twice at the last row) with weights summing to 1 up to
    float32 rounding: where both are above the threshold by more than that rounding could cost (`margin`),
    the pixel is above; where both are below by as much, it is not. Only the pixels between two rows that
    are neither (a band along the mask's edge) are computed, with `_interpolate`'s float32 operations in the
    same order, so the result is the same bit for bit."""
    first, second, w_first, w_second = rows
    rows_ext = np.concatenate([columns, columns[-1:]])  # row k + 1 of the last row k: itself, same values
    margin = 1e-5 * (float(np.abs(columns).max()) + abs(threshold)) + 1e-30  # NaN: every pixel computed
    above, below = rows_ext > threshold + margin, rows_ext < threshold - margin
    pair_in, pair_out = above[:-1] & above[1:], below[:-1] & below[1:]  # pair k: rows k and k + 1
    result = pair_in[first]
    pairs, cols = np.nonzero(~(pair_in | pair_out))
    if pairs.size:
        starts, ends = np.searchsorted(first, pairs, "left"), np.searchsorted(first, pairs, "right")
        counts = ends - starts  # the target rows reading each unsure pair (first is non-decreasing)
        offsets = np.repeat(np.cumsum(counts) - counts, counts)
        target = np.repeat(starts, counts) + (np.arange(int(counts.sum())) - offsets)
        cols = np.repeat(cols, counts)
        values = (columns[first[target], cols] * w_first[target]
                  + columns[second[target], cols] * w_second[target])
        result[target, cols] = values > threshold
    return result


def upsample_masks(logits: np.ndarray, size: int, threshold: float) -> np.ndarray:
    """(K, L, L) logits -> (K, size, size) bool of bilinear(logits) > threshold, computed only in each
    mask's window (`upsample_window`). Exact; fast for the compact masks SAM makes."""
    masks = np.zeros((len(logits), size, size), dtype=bool)
    for k, low_res in enumerate(logits):
        window = upsample_window(low_res, size, threshold)
        if window is not None:
            height, width = window.crop.shape
            masks[k, window.row0:window.row0 + height, window.col0:window.col0 + width] = window.crop
    return masks


def stability_scores(logits: np.ndarray, delta: float) -> np.ndarray:
    """IoU of the masks thresholded at +delta and -delta, per (K, L, L) logit map."""
    flat = logits.reshape(len(logits), -1)
    inter = (flat > delta).sum(axis=1)
    union = (flat > -delta).sum(axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def choose_outputs(all_logits: np.ndarray, all_scores: np.ndarray, multimask: bool,
                   settings: DecoderSettings) -> np.ndarray:
    """Indices of the model outputs to return: 1..3 for multimask, else the single-mask output 0
    (or, with SAM 2's dynamic multimask, the best of 1..3 when output 0 is unstable)."""
    if multimask:
        return np.arange(1, len(all_logits))
    if settings.dynamic_multimask_via_stability:
        stable = stability_scores(all_logits[:1], settings.stability_delta)[0]
        if stable < settings.stability_thresh:
            return np.array([1 + int(np.argmax(all_scores[1:]))])
    return np.array([0])


#: SAM's `stability_score_offset` (logits): the shift of the threshold that the stability score measures.
STABILITY_SCORE_OFFSET = 1.0
#: Mask modes that choose by area (see `pick_masks`).
AREA_MODES = ("largest", "smallest")


def pick_masks(scores: np.ndarray, mode: str, masks: Optional[np.ndarray] = None,
               areas: Optional[Sequence[int]] = None) -> List[int]:
    """Which of K candidate masks a mask mode keeps (core/defaults.MASK_MODES), as indices in order.

    "single" and "all" keep every candidate, "best" the highest of the (K,) predicted IoU `scores`,
    "largest" / "smallest" the one with the most / fewest pixels in `masks`: (K, H, W) bool, each mask as it
    becomes the polygon (at tile resolution, nodata and anything outside a box prompt removed), so the
    choice is by the area the user sees; or their (K,) pixel counts as `areas`. Ties go to the first.
    ValueError for an area mode without masks or areas.
    """
    if mode in AREA_MODES:
        if areas is None and masks is None:
            raise ValueError(f"mask mode '{mode}' chooses by area: pass the masks")
        if areas is None:
            areas = np.asarray(masks).reshape(len(masks), -1).sum(axis=1)
        return [int(np.argmax(areas) if mode == "largest" else np.argmin(areas))]
    if mode == "best":
        return [int(np.argmax(scores))]
    return list(range(len(scores)))


def postprocess(all_logits: np.ndarray, all_scores: np.ndarray, multimask: bool,
                settings: DecoderSettings, image_size: int) -> DecodeResult:
    """From the graph's (M, L, L) logits and (M,) scores to the chosen outputs; their masks at tile
    resolution are upsampled when asked for (`DecodeResult.masks`, `DecodeResult.window`)."""
    indices = choose_outputs(all_logits, all_scores, multimask, settings)
    low_res = all_logits[indices]
    return DecodeResult(
        scores=all_scores[indices].astype(np.float32),
        low_res_logits=np.clip(low_res, -LOW_RES_LOGIT_CLAMP, LOW_RES_LOGIT_CLAMP),
        indices=indices,
        logits=np.asarray(low_res, dtype=np.float32),
        size=image_size,
        threshold=settings.mask_threshold,
    )
