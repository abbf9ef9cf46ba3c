"""Series stores for tests, built the way the series encoder lays them out (core/series.py), until it lands: each
frame raster encoded by the ordinary encoder (the same model, seeded random weights, 256 px tiles, the same
stretch) into `frames/t000k/` (frame 0 into the store folder itself), then `series.json` written with
core.series.write_series.

`moving_square_frames` draws the synthetic series: a bright square that moves and grows from frame to frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np
from synthetic import square_scene, write_raster

#: `moving_square_frames`' squares (col_off, row_off, size) in pixels, frame by frame.
SQUARES = ((60, 70, 50), (70, 74, 54), (80, 78, 58), (90, 82, 62), (100, 86, 66), (110, 90, 70))


def moving_square_frames(folder: Path, count: int = 4, size: int = 256, scale: int = 1) -> List[Path]:
    """`count` rasters of size x size px (`scale` times larger squares and positions), frame k with square
    SQUARES[k] on a dark background, written as frame_k.tif in `folder`."""
    paths = []
    for index in range(count):
        col, row, side = (value * scale for value in SQUARES[index])
        data = square_scene(size, size, (col, row, side))
        data[1, :, :] = np.clip(data[1].astype(int) + index * 7, 0, 255).astype(np.uint8)  # frames differ a bit
        paths.append(write_raster(Path(folder) / f"frame_{index}.tif", data))
    return paths


def encode_series(rasters: Sequence[Path], store: Path, segment_model: Optional[Any] = None,
                  datetimes: Optional[Sequence[Optional[str]]] = None, **encode_options: Any) -> Path:
    """Encode `rasters` (in date order) as a series store at `store` with the test model (stretch none, so that
    every frame is read alike) and write its series.json; returns `store`. `segment_model`: the model object
    (default: the cached random one); `encode_options` are EncodeRequest fields (e.g. feature_dtype="float32",
    levels=(1.0, 4.0), model="sam_vit_b" with a model object of it)."""
    from synthetic import MODEL, TILE_SIZE, random_model

    from quicksam.core.series import FrameRef, SeriesManifest, frame_folder_name, write_series
    from quicksam.encoder.levels_pipeline import encode_levels
    from quicksam.encoder.pipeline import EncodeRequest

    store = Path(store)
    refs = []
    for index, raster in enumerate(rasters):
        folder = store if index == 0 else store / frame_folder_name(index)
        fields = dict(model=MODEL, tile_size=TILE_SIZE, overlap=32, device="cpu", stretch="none")
        fields.update(encode_options)
        encode_levels(EncodeRequest(raster=str(raster), store=folder, **fields),
                      model=segment_model or random_model(TILE_SIZE, fields.get("seed", 0)))
        date = datetimes[index] if datetimes else None
        refs.append(FrameRef(index=index, folder=frame_folder_name(index), source=str(raster), datetime=date,
                             date_source="option" if date else "index"))
    write_series(store, SeriesManifest(frames=tuple(refs), grid_source=str(rasters[0])))
    return store

