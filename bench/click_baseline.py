"""The Geo-SAM2-style click, for comparison: how in-QGIS SAM 2 plugins decode a click today.

Per click: re-read the tile's three float32 GeoTIFF feature maps (written by baseline.baseline_encode), hand them
to torch `SAM2ImagePredictor.predict` (which upsamples the mask to the whole tile), and vectorise the whole mask
with `rasterio.features.shapes`. The Segment it returns is committed by the caller, through the same path as ours.
With `true_mask`, the predicted mask is replaced by it after `predict` (the object-sized path: the decoder still
runs; vectorising and committing see the real object's size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np

FEATURE_MAPS = ("image_embed", "high_res_feats_0", "high_res_feats_1")


def baseline_predictor(model, raster: Path, feature_dir: Path):
    """A SAM2ImagePredictor on `model.net`, after writing the raster's feature GeoTIFFs to `feature_dir`."""
    from baseline import baseline_encode
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model.net)
    baseline_encode(str(raster), feature_dir, predictor)
    return predictor


def _read_features(feature_dir: Path, col_off: int, row_off: int) -> dict:
    import rasterio
    import torch

    maps = {}
    for name in FEATURE_MAPS:
        with rasterio.open(feature_dir / f"{name}_{row_off}_{col_off}.tif") as src:
            maps[name] = torch.from_numpy(src.read())[None]
    return maps


def baseline_click(predictor, feature_dir: Path, tile: Tuple[int, int], geotransform, x: float, y: float,
                   tile_size: int, true_mask: Optional[np.ndarray] = None):
    """One Geo-SAM2-style click at map (x, y) (raster CRS) on the tile at (col_off, row_off) -> a Segment
    (interactive.engine) with shapely polygons in the raster CRS; `true_mask` (tile_size, tile_size) bool
    replaces the predicted mask when given."""
    from affine import Affine
    from rasterio.features import shapes
    from shapely.geometry import MultiPolygon, shape

    from quicksam.core.geo import map_to_pixel
    from quicksam.interactive.engine import Segment

    col_off, row_off = tile
    maps = _read_features(feature_dir, col_off, row_off)
    predictor._features = {"image_embed": maps["image_embed"],  # what the existing plugins do
                           "high_res_feats": [maps["high_res_feats_0"], maps["high_res_feats_1"]]}
    predictor._orig_hw = [(tile_size, tile_size)]
    predictor._is_image_set = True
    col, row = map_to_pixel(geotransform, x, y)
    masks, scores, _ = predictor.predict(point_coords=np.array([[col - col_off, row - row_off]]),
                                         point_labels=np.array([1]), multimask_output=False)
    mask = (masks[0] if true_mask is None else true_mask).astype(np.uint8)
    transform = Affine.from_gdal(*geotransform) * Affine.translation(col_off, row_off)
    polygons = [shape(g) for g, v in shapes(mask, mask=mask.astype(bool), transform=transform) if v == 1]
    return Segment(MultiPolygon(polygons), float(scores[0]), "", int(mask.sum()), None)
