"""A decode's masks as each becomes its polygon, computed only inside the mask's window (numpy; no QGIS).

The click path (interactive/engine.py) keeps of each candidate mask the tile's valid pixels (nodata
removed, the padding of an edge tile cut) and, with a box prompt, the pixels whose centre lies in the
box. Those bounds are windows of the tile, so nothing here touches a tile-sized array: a mask is upsampled
only inside (its low-res bounding window ∩ the bounds), ANDed with that window of the valid-pixel mask,
and counted there; the engine vectorises that crop. The pixels are exactly those of the whole-tile path
(tests/test_click_post.py). Coordinates: tile pixels (row, col), (0, 0) = the tile's top-left pixel.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from ..core.mask_decoding import AREA_MODES, Bounds, DecodeResult, MaskWindow, pick_masks
from ..core.tiling import Tile


def mask_bounds(tile: Tile, box: Optional[Tuple[float, float, float, float]] = None) -> Bounds:
    """The window (row0, row1, col0, col1, tile pixels, half-open) a mask may have pixels in: the tile's
    valid part (without an edge tile's padding), and with `box` (col0, row0, col1, row1 in raster pixels,
    already clipped to the raster) only the pixels whose centre lies in the box, edges included (an empty
    window when none does)."""
    if box is None:
        return 0, tile.valid_height, 0, tile.valid_width
    col0, row0, col1, row1 = box
    centres_col = tile.col_off + np.arange(tile.valid_width) + 0.5
    centres_row = tile.row_off + np.arange(tile.valid_height) + 0.5
    rows = np.flatnonzero((centres_row >= row0) & (centres_row <= row1))
    cols = np.flatnonzero((centres_col >= col0) & (centres_col <= col1))
    if rows.size == 0 or cols.size == 0:
        return 0, 0, 0, 0
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def clipped_mask(result: DecodeResult, index: int, bounds: Bounds, valid: np.ndarray) -> Optional[MaskWindow]:
    """Candidate `index` of `result` inside `bounds`, ANDed with the tile's (size, size) bool `valid`
    pixels; None when it has no pixel there that the upsampling could set."""
    window = result.window(index, bounds)
    if window is None:
        return None
    height, width = window.crop.shape
    crop = window.crop & valid[window.row0:window.row0 + height, window.col0:window.col0 + width]
    return MaskWindow(window.row0, window.col0, crop)


def chosen_masks(result: DecodeResult, mode: str, bounds: Bounds, valid: np.ndarray
                 ) -> List[Tuple[int, Optional[MaskWindow]]]:
    """(index, mask) of each candidate the mask mode keeps (`pick_masks`), clipped as `clipped_mask`.
    Only the masks needed are upsampled: all for "largest" / "smallest" (chosen by the area the polygon
    will have), the one with the best score for "best"."""
    if mode in AREA_MODES:
        masks = [clipped_mask(result, index, bounds, valid) for index in range(len(result.scores))]
        areas = [0 if mask is None else mask.pixels for mask in masks]
        return [(index, masks[index]) for index in pick_masks(result.scores, mode, areas=areas)]
    return [(index, clipped_mask(result, index, bounds, valid)) for index in pick_masks(result.scores, mode)]
