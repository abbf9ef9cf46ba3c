"""What SAM's prompt encoder + mask decoder take and give, as numpy arrays (no torch, no QGIS, no ONNX).

Shared by the ONNX decoder of the interactive stage (interactive/decoding.py) and the torch decoder of
the encoder stage (encoder/models.py), so both paths differ only in the graph runtime: the prompt
packing (`Prompts`, `prompt_arrays`, `decoder_inputs`) and the post-processing (upsampling,
`stability_score`, choosing among `multimask_output` masks).

Coordinates: continuous tile pixel coordinates, x = column, y = row, (0, 0) = top-left corner of the
tile's top-left pixel. SAM itself adds 0.5 to integer pixel indices, so we pass `coordinate - 0.5`.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class DecodeResult:
    """masks: (K, S, S) bool at tile resolution; scores: (K,) predicted IoU; low_res_logits: (K, L, L)
    clamped to +-32 (feed one back as `Prompts.mask_input`); indices: which of the model's outputs."""

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    indices: np.ndarray


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


def upsample_masks(logits: np.ndarray, size: int, threshold: float) -> np.ndarray:
    """(K, L, L) logits -> (K, size, size) bool of bilinear(logits) > threshold, computed only where
    a low-res pixel above the threshold is read (a bilinear value is a convex mix of the pixels it
    reads, so elsewhere it cannot exceed the threshold). Exact; fast for the compact masks SAM makes."""
    taps = _bilinear_taps(logits.shape[-1], size)
    masks = np.zeros((len(logits), size, size), dtype=bool)
    for k, low_res in enumerate(logits.astype(np.float32)):
        above = low_res > threshold
        if not above.any():
            continue
        rows, cols = np.flatnonzero(above.any(axis=1)), np.flatnonzero(above.any(axis=0))
        row_range = _touching(taps, int(rows[0]), int(rows[-1]))
        col_range = _touching(taps, int(cols[0]), int(cols[-1]))
        # columns first on the small low-res rows, then whole-row gathers (contiguous, fast)
        block = _interpolate(_interpolate(low_res, taps, col_range, 1), taps, row_range, 0)
        masks[k, row_range, col_range] = block > threshold
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


def pick_masks(scores: np.ndarray, mode: str, masks: Optional[np.ndarray] = None) -> List[int]:
    """Which of K candidate masks a mask mode keeps (core/defaults.MASK_MODES), as indices in order.

    "single" and "all" keep every candidate, "best" the highest of the (K,) predicted IoU `scores`,
    "largest" / "smallest" the one with the most / fewest pixels in `masks`: (K, H, W) bool, each mask as it
    becomes the polygon (at tile resolution, nodata and anything outside a box prompt removed), so the
    choice is by the area the user sees. Ties go to the first. ValueError for an area mode without masks.
    """
    if mode in AREA_MODES:
        if masks is None:
            raise ValueError(f"mask mode '{mode}' chooses by area: pass the masks")
        areas = np.asarray(masks).reshape(len(masks), -1).sum(axis=1)
        return [int(np.argmax(areas) if mode == "largest" else np.argmin(areas))]
    if mode == "best":
        return [int(np.argmax(scores))]
    return list(range(len(scores)))


def postprocess(all_logits: np.ndarray, all_scores: np.ndarray, multimask: bool,
                settings: DecoderSettings, image_size: int) -> DecodeResult:
    """From the graph's (M, L, L) logits and (M,) scores to the chosen masks at tile resolution."""
    indices = choose_outputs(all_logits, all_scores, multimask, settings)
    low_res = all_logits[indices]
    masks = upsample_masks(low_res, image_size, settings.mask_threshold)
    return DecodeResult(
        masks=masks,
        scores=all_scores[indices].astype(np.float32),
        low_res_logits=np.clip(low_res, -LOW_RES_LOGIT_CLAMP, LOW_RES_LOGIT_CLAMP),
        indices=indices,
    )


def upsample_mask_window(low_res: np.ndarray, size: int, threshold: float
                         ) -> Optional[Tuple[int, int, np.ndarray]]:
    """One (L, L) logit map -> (row0, col0, window): the part of `upsample_masks`' (size, size) bool mask that
    can hold true pixels (the target rows and columns reading a low-res pixel above `threshold`), at tile
    pixel offset (row0, col0); None when no low-res pixel is above it. The same pixels as `upsample_masks`
    (the same arithmetic), without allocating or scanning the whole tile (segment everything keeps
    thousands of candidates per tile)."""
    taps = _bilinear_taps(low_res.shape[-1], size)
    low_res = np.asarray(low_res, np.float32)
    above = low_res > threshold
    rows, cols = np.flatnonzero(above.any(axis=1)), np.flatnonzero(above.any(axis=0))
    if rows.size == 0:
        return None
    row_range = _touching(taps, int(rows[0]), int(rows[-1]))
    col_range = _touching(taps, int(cols[0]), int(cols[-1]))
    block = _interpolate(_interpolate(low_res, taps, col_range, 1), taps, row_range, 0)
    return row_range.start, col_range.start, block > threshold
