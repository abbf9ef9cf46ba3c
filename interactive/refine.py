"""Finer edges for an object decoded on a coarse level (interactive/scales.py, docs/levels.md; no QGIS).

An object too large for one tile of the finest level is decoded on a coarser level, and its polygon has
that level's pixel steps. `refine_segment` re-decodes it along its boundary on the finest level's tiles:
the coarse polygon is rasterised on the finest level's pixels; every encoded finest tile that the boundary
crosses is decoded with prompts derived from the coarse mask inside it (its bounding box in the tile,
grown by two coarse pixels, and one foreground point on the coarse pixel deepest inside it, SAM's usual
box-plus-point prompt); each tile's mask replaces the coarse one in the tile's core (the tile less half
the overlap on sides with a neighbour); the result is vectorised once on the finest level's pixels, so
the pieces join into one polygon. Away from the boundary the coarse mask stands. SAM's `mask_input` is not
used: a binary mask is not the logits SAM was trained to take back, and random weights cannot show whether
it would help.

Coordinates: map coordinates in the raster's CRS; pixel arrays are (rows, cols) of the finest level.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import numpy as np

from ..core.geo import map_to_pixel, window_geotransform
from ..core.logger import LOGGER
from ..core.mask_decoding import Prompts, pick_masks
from ..core.store import STATUS_DONE
from ..core.tiling import Tile
from .engine import Segment, SegmentEngine
from .vectorise import mask_to_polygons, rasterize_polygons

#: Largest object (finest-level pixels of its bounding box) refined; larger ones keep their coarse edges.
MAX_REFINE_PIXELS = 8192 * 8192


def refine_segment(fine: SegmentEngine, segment: Segment, mode: str = "single", simplify_tolerance: float = 0.0,
                   min_area_pixels: float = 0.0, keep_holes: bool = True) -> Segment:
    """`segment` (decoded on a coarser level) with its edges re-decoded on `fine`'s level (the finest).

    Returns a Segment at `fine`'s level (level_factor, resolution, tile_id "<coarse tile>+refined"), or
    `segment` unchanged when no encoded fine tile crosses its boundary or it is larger than
    MAX_REFINE_PIXELS. The score and stability stay the coarse decode's.
    """
    from osgeo import ogr

    window = _fine_window(fine, segment)
    if window is None:
        return segment
    col0, row0, col1, row1 = window
    geotransform = window_geotransform(fine.store.geotransform, col0, row0)
    canvas = rasterize_polygons([ogr.CreateGeometryFromWkb(segment.geometry.wkb)], (row1 - row0, col1 - col0),
                                geotransform)
    coarse = canvas.copy()
    refined = 0
    for tile in _boundary_tiles(fine, coarse, col0, row0):
        refined += _refine_in_tile(fine, tile, coarse, canvas, col0, row0, mode, segment.level_factor)
    if not refined:
        return segment
    geometry = mask_to_polygons(canvas, geotransform, simplify_tolerance, min_area_pixels, keep_holes)
    grid = fine.store.manifest.pixel_grid
    return dataclasses.replace(segment, geometry=geometry, mask_pixels=int(canvas.sum()),
                               tile_id=f"{segment.tile_id}+refined", level_factor=grid.factor,
                               resolution=grid.resolution)


def _fine_window(fine: SegmentEngine, segment: Segment) -> Optional[Tuple[int, int, int, int]]:
    """(col0, row0, col1, row1) of the fine level's pixels holding the segment's envelope (clipped to the
    level), or None when it is empty or too large to refine."""
    from osgeo import ogr

    xmin, xmax, ymin, ymax = ogr.CreateGeometryFromWkb(segment.geometry.wkb).GetEnvelope()
    corners = [map_to_pixel(fine.store.geotransform, x, y) for x in (xmin, xmax) for y in (ymin, ymax)]
    grid = fine.store.grid
    col0, row0 = max(0, int(np.floor(min(c for c, _ in corners)))), max(0, int(np.floor(min(r for _, r in corners))))
    col1 = min(grid.raster_width, int(np.ceil(max(c for c, _ in corners))))
    row1 = min(grid.raster_height, int(np.ceil(max(r for _, r in corners))))
    if col1 <= col0 or row1 <= row0:
        return None
    if (col1 - col0) * (row1 - row0) > MAX_REFINE_PIXELS:
        LOGGER.info("object of %d x %d fine pixels is too large to refine; its edges stay at the coarse level",
                    col1 - col0, row1 - row0)
        return None
    return col0, row0, col1, row1


def _boundary_tiles(fine: SegmentEngine, coarse: np.ndarray, col0: int, row0: int) -> List[Tile]:
    """The encoded regular tiles of the fine level whose window holds both object and background pixels of
    the coarse mask (the boundary crosses them)."""
    found = []
    for tile in fine.store.grid.regular_tiles:
        if fine.store.status(tile) != STATUS_DONE:
            continue
        crop = _crop(coarse, tile, col0, row0)
        if crop is not None and crop.any() and not crop.all():
            found.append(tile)
    return found


def _crop(canvas: np.ndarray, tile: Tile, col0: int, row0: int) -> Optional[np.ndarray]:
    """The part of `canvas` (pixel (0, 0) = fine pixel (col0, row0)) inside the tile's valid window."""
    c0, r0 = max(tile.col_off, col0), max(tile.row_off, row0)
    c1 = min(tile.col_off + tile.valid_width, col0 + canvas.shape[1])
    r1 = min(tile.row_off + tile.valid_height, row0 + canvas.shape[0])
    if c1 <= c0 or r1 <= r0:
        return None
    return canvas[r0 - row0:r1 - row0, c0 - col0:c1 - col0]


def _tile_prompts(coarse_in_tile: np.ndarray, grow: float) -> Prompts:
    """Box (grown by `grow` px, clipped to the tile) and one foreground point on the coarse mask's pixel
    deepest inside it (the last survivor of repeated 4-neighbour erosion), in tile pixels."""
    rows, cols = np.nonzero(coarse_in_tile)
    size = coarse_in_tile.shape[0]
    box = (max(0.0, cols.min() - grow), max(0.0, rows.min() - grow),
           min(float(size), cols.max() + 1 + grow), min(float(size), rows.max() + 1 + grow))
    core = coarse_in_tile
    while True:
        eroded = core.copy()
        eroded[1:, :] &= core[:-1, :]
        eroded[:-1, :] &= core[1:, :]
        eroded[:, 1:] &= core[:, :-1]
        eroded[:, :-1] &= core[:, 1:]
        if not eroded.any():
            break
        core = eroded
    row, col = (int(v[len(v) // 2]) for v in np.nonzero(core))
    return Prompts(points=np.array([[col + 0.5, row + 0.5]]), labels=np.array([1]), box=box)


def _refine_in_tile(fine: SegmentEngine, tile: Tile, coarse: np.ndarray, canvas: np.ndarray, col0: int, row0: int,
                    mode: str, coarse_factor: float) -> int:
    """Decode the object in one fine tile and write its mask over the tile's core in `canvas`; 1 if done."""
    in_tile = np.zeros((tile.size, tile.size), bool)
    c0, r0 = max(tile.col_off, col0), max(tile.row_off, row0)
    crop = _crop(coarse, tile, col0, row0)
    row, col = r0 - tile.row_off, c0 - tile.col_off
    in_tile[row:row + crop.shape[0], col:col + crop.shape[1]] = crop
    ratio = coarse_factor / fine.store.manifest.pixel_grid.factor
    result = fine.decoder.decode(fine.cache.get(tile.tile_id), _tile_prompts(in_tile, 2 * ratio),
                                 multimask=mode != "single")
    index = pick_masks(result.scores, "best" if mode == "all" else mode, result.masks)[0]
    mask = result.masks[index] & fine.valid_masks.get(tile)
    cc0, rr0, cc1, rr1 = _core(fine, tile)
    cc0, rr0 = max(cc0, col0), max(rr0, row0)
    cc1, rr1 = min(cc1, col0 + canvas.shape[1]), min(rr1, row0 + canvas.shape[0])
    if cc1 <= cc0 or rr1 <= rr0:
        return 0
    canvas[rr0 - row0:rr1 - row0, cc0 - col0:cc1 - col0] = mask[rr0 - tile.row_off:rr1 - tile.row_off,
                                                                 cc0 - tile.col_off:cc1 - tile.col_off]
    return 1


def _core(fine: SegmentEngine, tile: Tile) -> Tuple[int, int, int, int]:
    """(col0, row0, col1, row1), fine pixels: the tile's valid window less half the overlap on each side
    that has a neighbouring tile (its pixels nearer that neighbour's centre are the neighbour's)."""
    half = fine.store.grid.overlap // 2
    window = fine.store.grid.window
    col0 = tile.col_off + (half if tile.col_off > window.col_off else 0)
    row0 = tile.row_off + (half if tile.row_off > window.row_off else 0)
    col1 = tile.col_off + tile.valid_width - (half if tile.col_off + tile.valid_width < window.col_end else 0)
    row1 = tile.row_off + tile.valid_height - (half if tile.row_off + tile.valid_height < window.row_end else 0)
    return col0, row0, col1, row1


__all__ = ["MAX_REFINE_PIXELS", "refine_segment"]
