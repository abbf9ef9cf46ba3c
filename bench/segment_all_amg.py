"""bench/segment_all.py --part amg: one 1024 px tile, QuickSAM's automatic masks against the sam2 package's
`SAM2AutomaticMaskGenerator` on the same tile in the same process.

A synthetic scene with known objects (bright and dark rectangles and discs on a noisy background, `SCENE`)
is encoded with the seeded random SAM 2.1 tiny model into a one-tile store. Then, in one fresh process, for
each threshold set (`THRESHOLDS`: SAM's defaults, and keep-everything so that random weights' masks get through):
- ours: `mask_generator.tile_masks` on the stored features (decoding, filters, NMS: the masks), `--runs`
  times, median seconds; and once the whole `segment_everything` of the tile (plus vectorising and writing);
- SAM2's: `SAM2AutomaticMaskGenerator.generate` with the tile already encoded (`set_image` called once,
  timed on its own, before the clock starts, and made a no-op inside `generate`, `reset_predictor` too): its
  decoding work against ours, `--runs` times; its `generate` as it runs normally is that plus `set_image`;
- the masks compared: each of ours matched to one of SAM2's by mask IoU (greedy, best first); matched
  when IoU >= `MATCH_IOU`.
Both run with the same thresholds, SAM's `box_nms_thresh` 0.7, no small-region removal (SAM2's default),
three masks per point, SAM2's `points_per_batch` 64 (its default), ours its automatic batch.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

#: (kind, col, row, size, value): rectangles (size = side) and discs (size = diameter) in pixels of the tile.
SCENE = (("rect", 80, 90, 180, 220), ("rect", 420, 60, 120, 30), ("disc", 760, 200, 200, 200),
         ("rect", 150, 520, 260, 160), ("disc", 600, 600, 140, 235), ("rect", 820, 700, 90, 15),
         ("disc", 300, 860, 110, 180), ("rect", 520, 380, 60, 250))
#: Threshold sets: SAM's defaults (as AutoMaskSettings) and the bench's keep-everything.
THRESHOLDS = {"sam_defaults": {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95},
              "keep_everything": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}}
MATCH_IOU = 0.9
TARGET_SPEEDUP = 5.0


def write_scene(path: Path, size: int = 1024) -> Path:
    """A (3, size, size) uint8 GeoTIFF of `SCENE` on a noisy mid-grey background."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    data = np.full((3, size, size), 110, np.int32) + rng.integers(-12, 12, (3, size, size))
    rows, cols = np.mgrid[0:size, 0:size]
    for band, (kind, col, row, extent, value) in [(b, item) for item in SCENE for b in range(3)]:
        if kind == "rect":
            inside = (cols >= col) & (cols < col + extent) & (rows >= row) & (rows < row + extent)
        else:
            radius = extent / 2
            inside = (cols - col - radius) ** 2 + (rows - row - radius) ** 2 < radius ** 2
        data[band][inside] = value + (band - 1) * 10
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=from_origin(500000, 4200000, 1.0, 1.0))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.clip(data, 0, 255).astype(np.uint8))
    return path


def _our_settings(points_per_side: int, thresholds: dict, **extra):
    from quicksam.interactive.mask_generator import AutoMaskSettings

    return AutoMaskSettings(points_per_side=points_per_side, min_mask_region_area=0, **thresholds, **extra)


def ours(store_path: Path, points_per_side: int, thresholds: dict, runs: int) -> Tuple[float, List[np.ndarray]]:
    """Median seconds of `tile_masks` on the store's one tile and its masks as (S, S) bool arrays."""
    from quicksam.core.store import FeatureStore
    from quicksam.interactive.engine import SegmentEngine
    from quicksam.interactive.mask_generator import tile_masks

    engine = SegmentEngine(FeatureStore.open(store_path), cache_tiles=1)
    tile = engine.store.grid.regular_tiles[0]
    features, valid = engine.cache.get(tile.tile_id), engine.valid_masks.get(tile)
    settings = _our_settings(points_per_side, thresholds)
    seconds, masks = [], []
    for _ in range(runs):
        started = time.perf_counter()
        masks = tile_masks(engine.decoder, features, tile, settings, valid)
        seconds.append(time.perf_counter() - started)
    size = engine.decoder.image_size
    whole = []
    for mask in masks:
        full = np.zeros((size, size), bool)
        full[mask.row0 - tile.row_off:mask.row0 - tile.row_off + mask.crop.shape[0],
             mask.col0 - tile.col_off:mask.col0 - tile.col_off + mask.crop.shape[1]] = mask.crop
        whole.append(full)
    return statistics.median(seconds), whole


def ours_whole_run(store_path: Path, work: Path, points_per_side: int, thresholds: dict) -> dict:
    """Seconds of one `segment_everything` of the tile (masks, polygons, the output file) and its objects."""
    from quicksam.core.store import FeatureStore
    from quicksam.interactive.automatic import segment_everything

    started = time.perf_counter()
    result = segment_everything(FeatureStore.open(store_path), work / f"whole-{time.monotonic_ns()}.gpkg",
                                _our_settings(points_per_side, thresholds))
    return {"seconds": round(time.perf_counter() - started, 3), "objects": result.objects}


def sam2_generator(points_per_side: int, thresholds: dict, tile: int):
    """SAM2AutomaticMaskGenerator on the seeded random model (as the store was encoded), binary masks."""
    import torch
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    from quicksam.encoder.models import build_model

    torch.set_num_threads(2)
    model = build_model("sam2.1_hiera_t", checkpoint=None, seed=0, device="cpu", image_size=tile)
    generator = SAM2AutomaticMaskGenerator(model.net, points_per_side=points_per_side, points_per_batch=64,
                                           box_nms_thresh=0.7, min_mask_region_area=0, output_mode="binary_mask",
                                           **thresholds)
    generator.predictor._bb_feat_sizes = [(tile // 4, tile // 4), (tile // 8, tile // 8), (tile // 16, tile // 16)]
    return generator


def stored_features(store_path: Path) -> dict:
    """The store's one tile's features as SAM2ImagePredictor keeps them (float32 of the stored float16), so the
    generator decodes exactly what QuickSAM decodes and the objects compare decoding with decoding."""
    import torch

    from quicksam.core.store import FeatureStore

    store = FeatureStore.open(store_path)
    maps = {name: torch.from_numpy(np.asarray(array, np.float32))[None]
            for name, array in store.load_tile(store.grid.regular_tiles[0].tile_id).items()}
    return {"image_embed": maps["image_embed"], "high_res_feats": [maps["high_res_feats_0"], maps["high_res_feats_1"]]}


def sam2_timed(generator, image: np.ndarray, runs: int, features: dict) -> Tuple[float, float, List[np.ndarray]]:
    """(median seconds of `generate` with the image encoded beforehand, seconds of its `set_image` (the
    encoding `generate` does first when it runs normally), the masks). After `set_image` the predictor's
    features are replaced by `features` (the store's), so both sides decode the same numbers."""
    import torch

    with torch.inference_mode():
        predictor = generator.predictor
        started = time.perf_counter()
        predictor.set_image(image)
        encoding = time.perf_counter() - started
        predictor._features = features  # noqa: SLF001 - the stored features, as the existing plugins inject them
        set_image, reset = predictor.set_image, predictor.reset_predictor
        predictor.set_image = lambda _image: None
        predictor.reset_predictor = lambda: None
        seconds, records = [], []
        try:
            for _ in range(runs):
                started = time.perf_counter()
                records = generator.generate(image)
                seconds.append(time.perf_counter() - started)
        finally:
            predictor.set_image, predictor.reset_predictor = set_image, reset
    return statistics.median(seconds), encoding, [record["segmentation"].astype(bool) for record in records]


def match(ours_masks: List[np.ndarray], theirs: List[np.ndarray]) -> dict:
    """Greedy one-to-one matching by mask IoU, best pairs first: how many pairs reach `MATCH_IOU`."""
    if not ours_masks or not theirs:
        return {"ours": len(ours_masks), "sam2": len(theirs), "matched": 0, "min_matched_iou": None,
                "best_iou": None}
    a = np.stack([m.ravel() for m in ours_masks]).astype(np.float32)
    b = np.stack([m.ravel() for m in theirs]).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = inter / np.maximum(union, 1)
    pairs: Dict[int, Tuple[int, float]] = {}
    used = set()
    for flat in np.argsort(-iou, axis=None):
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] < MATCH_IOU:
            break
        if i not in pairs and j not in used:
            pairs[i] = (j, float(iou[i, j]))
            used.add(j)
    return {"ours": len(ours_masks), "sam2": len(theirs), "matched": len(pairs),
            "min_matched_iou": round(min(v for _, v in pairs.values()), 4) if pairs else None,
            "best_iou": round(float(iou.max()), 4)}


def amg_case(store_path: Path, raster: Path, work: Path, points_per_side: int, runs: int,
             threshold_sets: Tuple[str, ...] = tuple(THRESHOLDS)) -> dict:
    """In this (fresh) process: each threshold set, ours against SAM2's generator (see the module docstring)."""
    import rasterio

    with rasterio.open(raster) as src:
        image = np.moveaxis(src.read([1, 2, 3]), 0, -1)
    result = {}
    for name in threshold_sets:
        thresholds = THRESHOLDS[name]
        our_seconds, our_masks = ours(store_path, points_per_side, thresholds, runs)
        whole = ours_whole_run(store_path, work, points_per_side, thresholds)
        generator = sam2_generator(points_per_side, thresholds, image.shape[0])
        their_seconds, their_encoding, their_masks = sam2_timed(generator, image, runs, stored_features(store_path))
        speedup = their_seconds / our_seconds
        result[name] = {
            "thresholds": thresholds,
            "ours_tile_masks_median_seconds": round(our_seconds, 3),
            "ours_segment_everything_seconds": whole["seconds"], "ours_objects_written": whole["objects"],
            "sam2_generate_after_set_image_median_seconds": round(their_seconds, 3),
            "sam2_set_image_seconds": round(their_encoding, 3),
            "speedup_decoding_vs_decoding": round(speedup, 3),
            "speedup_whole_run_vs_sam2_with_encoding": round((their_seconds + their_encoding) / whole["seconds"], 3),
            "objects": match(our_masks, their_masks),
            "targets": {f"speedup_at_least_{TARGET_SPEEDUP:g}x": speedup >= TARGET_SPEEDUP}}
    return result
