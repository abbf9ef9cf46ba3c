"""The straightforward encoder loop that in-QGIS SAM encoders run today, for comparison.

For each 1024 px window: read it, `SAM2ImagePredictor.set_image`, and save the three feature maps
as float32 GeoTIFFs (one band per channel). No overlap of reading, encoding and writing; no
stretch beyond taking the 8-bit values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

import numpy as np


def baseline_encode(raster: str, out_dir: Path, predictor, tile_size: int = 1024,
                    bands=(1, 2, 3), on_tile: Optional[Callable[[int], None]] = None) -> List[Path]:
    import rasterio
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with rasterio.open(raster) as src:
        for row in range(0, max(1, src.height - tile_size + 1), tile_size):
            for col in range(0, max(1, src.width - tile_size + 1), tile_size):
                window = Window(col, row, tile_size, tile_size)
                image = np.moveaxis(src.read(list(bands), window=window), 0, -1).astype(np.uint8)
                predictor.set_image(image)
                features = predictor._features  # what the existing plugins do
                maps = {"image_embed": features["image_embed"],
                        "high_res_feats_0": features["high_res_feats"][0],
                        "high_res_feats_1": features["high_res_feats"][1]}
                transform = window_transform(window, src.transform)
                for name, tensor in maps.items():
                    array = tensor[0].float().cpu().numpy()
                    scale = tile_size / array.shape[-1]
                    path = out_dir / f"{name}_{row}_{col}.tif"
                    profile = dict(driver="GTiff", width=array.shape[2], height=array.shape[1],
                                   count=array.shape[0], dtype="float32", crs=src.crs,
                                   transform=transform * transform.scale(scale, scale))
                    with rasterio.open(path, "w", **profile) as dst:
                        dst.write(array)
                    written.append(path)
                if on_tile:
                    on_tile(len(written) // 3)
    return written
