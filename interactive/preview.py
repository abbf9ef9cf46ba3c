"""The hover preview at the decoder's own resolution: its low-resolution mask outlined (no QGIS, no torch).

SAM's decoder gives (L, L) logits for an (S, S) tile, L = S / 4 (256 x 256 for a 1024 px tile); the full
path (`SegmentEngine.segment`) upsamples them bilinearly to (S, S) and vectorises that mask. A preview drawn
while the cursor moves skips both: it thresholds the low-resolution logits and vectorises the (L, L) mask
whose pixel i covers tile pixels [s * i, s * i + s), s = S / L (4), i.e. through the tile's geotransform with
the pixel size multiplied by s. Polygons are in the raster's CRS, like the engine's; vertices lie on
low-resolution pixel corners, which are tile pixel corners.

Resolution and bound: bilinear upsampling (align_corners=False) reads, for a tile pixel of low-resolution
cell i, only cells i - 1 .. i + 1 (per axis); where a cell and its 8 neighbours are on the same side of the
threshold, every tile pixel of the cell is too. So the low-resolution mask differs from the full-resolution
one only in cells that touch the low-resolution outline: the symmetric difference of the
two polygons lies in those cells, its area at most their number times s x s tile pixels, and the outline is
within one low-resolution pixel (s tile pixels) of the full-resolution boundary there.

Drawing budget: a rubber band repaints every vertex on the GUI thread (about 3 ms per 1,000 vertices on a
2-core CPU; 50-70 ms for the 20,000 of a random model's speckled mask), so an outline of more than
MAX_VERTICES vertices (no real object has one) is traced again without parts and holes under
LIGHTER_MIN_CELLS cells and simplified by one cell (a mask with more than SPECKLED_EDGES cell edges at once,
without the exact tracing first): the bound above holds for outlines within budget.

Nodata and boxes, as the engine: a low-resolution cell is kept only if the tile pixel at its centre
(s * i + s / 2) has data and, with a box prompt, lies in the box (clipped to the raster). Mask modes choose
among candidates as the engine does, areas counted on the low-resolution masks. `min_area_pixels` is in
raster pixels (converted here), `simplify_tolerance` in map units, as the engine takes them.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from ..core.geo import window_geotransform
from ..core.mask_decoding import LOW_RES_LOGIT_CLAMP, choose_outputs, pick_masks
from ..core.tiling import Tile
from .engine import MapPrompts, Segment, SegmentEngine
from .session import SegmentOptions
from .vectorise import Polygons, mask_to_polygons

#: Vertices a preview outline may have before it is lightened (module docstring); WKB has 16 bytes a vertex.
MAX_VERTICES = 2000
LIGHTER_MIN_CELLS = 16
#: A mask with more True/False cell edges than this is lightened without being traced exactly first.
SPECKLED_EDGES = 4 * MAX_VERTICES


def vertex_count(polygons: Polygons) -> int:
    """About how many vertices a 2D MultiPolygon's WKB holds (16 bytes each; headers counted as vertices)."""
    return len(polygons.wkb) // 16


def outline(mask: np.ndarray, geotransform: Sequence[float], scale: int, options: SegmentOptions) -> Polygons:
    """Polygons (raster CRS) of a (L, L) low-resolution mask on `geotransform` (its cells, `scale` tile pixels
    each), with the options' simplification, minimum area (raster pixels) and holes, lightened above
    MAX_VERTICES (module docstring)."""
    min_cells = options.min_area_pixels / scale ** 2
    if edge_count(mask) <= SPECKLED_EDGES:  # else tracing it exactly is wasted: it would be lightened
        polygons = mask_to_polygons(mask, geotransform, options.simplify_tolerance, min_cells, options.keep_holes)
        if vertex_count(polygons) <= MAX_VERTICES:
            return polygons
    cell = float(np.hypot(geotransform[1], geotransform[2]))
    return mask_to_polygons(mask, geotransform, max(options.simplify_tolerance, cell),
                            max(min_cells, LIGHTER_MIN_CELLS), options.keep_holes)


def edge_count(mask: np.ndarray) -> int:
    """How many cell edges of a (L, L) bool mask separate True from False (the tile's edge not counted)."""
    return int(np.count_nonzero(mask[:, 1:] != mask[:, :-1]) + np.count_nonzero(mask[1:] != mask[:-1]))


def low_res_geotransform(geotransform: Sequence[float], tile: Tile, scale: int) -> tuple:
    """GDAL geotransform (raster CRS) of a tile's low-resolution grid: pixel (0, 0) is tile pixels [0, scale)
    x [0, scale), each `scale` x `scale` tile pixels; `geotransform` is the raster's (the store's)."""
    x0, b, c, y0, e, f = window_geotransform(geotransform, tile.col_off, tile.row_off)
    return (x0, b * scale, c * scale, y0, e * scale, f * scale)


def low_res_valid(valid: np.ndarray, scale: int, size: int) -> np.ndarray:
    """(size, size) bool: the tile's valid-pixel mask (S, S) sampled at each low-resolution cell's centre
    tile pixel (scale * i + scale // 2); padding beyond the raster is False there already."""
    return np.ascontiguousarray(valid[scale // 2::scale, scale // 2::scale][:size, :size])


def low_res_box(engine: SegmentEngine, prompts: MapPrompts, tile: Tile, scale: int, size: int
                ) -> Optional[np.ndarray]:
    """(size, size) bool: low-resolution cells whose centre lies in the prompts' box (clipped to the raster,
    in raster pixels); None without a box."""
    if prompts.box is None:
        return None
    col0, row0, col1, row1 = engine.box_pixels(prompts.box)
    centres = (np.arange(size) + 0.5) * scale
    rows, cols = tile.row_off + centres, tile.col_off + centres
    return ((rows >= row0) & (rows <= row1))[:, None] & ((cols >= col0) & (cols <= col1))[None, :]


def low_res_masks(engine: SegmentEngine, prompts: MapPrompts, tile: Tile, low_res: np.ndarray) -> np.ndarray:
    """(K, L, L) bool: (K, L, L) low-resolution logits above the decoder's threshold, on cells with data and
    (with a box prompt) in the box (module docstring)."""
    size = low_res.shape[-1]
    scale = tile.size // size
    masks = (low_res > engine.decoder.settings.mask_threshold) & low_res_valid(engine.valid_masks.get(tile), scale,
                                                                               size)
    inside_box = low_res_box(engine, prompts, tile, scale, size)
    return masks & inside_box if inside_box is not None else masks


def segment_outline(engine: SegmentEngine, prompts: MapPrompts, segment: Segment, options: SegmentOptions
                    ) -> Polygons:
    """The low-resolution outline (raster CRS) of a segment the engine decoded from `prompts`, from its own
    `low_res_logits`: what a preview draws of a full-resolution result too big to draw (MAX_VERTICES)."""
    tile = engine.store.grid.by_id(segment.tile_id)
    mask = low_res_masks(engine, prompts, tile, segment.low_res_logits[None])[0]
    scale = tile.size // mask.shape[-1]
    return outline(mask, low_res_geotransform(engine.store.geotransform, tile, scale), scale, options)


def preview_segments(engine: SegmentEngine, prompts: MapPrompts, options: SegmentOptions) -> List[Segment]:
    """The hover preview of `prompts` (raster CRS): `SegmentEngine.segment`'s candidates, outlined at the
    decoder's low resolution (module docstring). `mask_pixels` counts tile pixels (low-resolution cells
    times scale²). PromptError as the engine raises it."""
    tile = engine.choose_tile(prompts)
    features = engine.cache.get(tile.tile_id)
    decoder = engine.decoder
    logits, scores = decoder.raw(features, engine.tile_prompts(prompts, tile))
    indices = choose_outputs(logits, scores, options.mode != "single", decoder.settings)
    low_res = logits[indices]
    scale = tile.size // low_res.shape[-1]
    masks = low_res_masks(engine, prompts, tile, low_res)
    geotransform = low_res_geotransform(engine.store.geotransform, tile, scale)
    pixel_grid = engine.store.manifest.pixel_grid
    segments = []
    for index in pick_masks(scores[indices], options.mode, masks):
        geometry = outline(masks[index], geotransform, scale, options)
        if geometry.is_empty:
            continue
        segments.append(Segment(geometry, float(scores[indices][index]), tile.tile_id,
                                int(masks[index].sum()) * scale ** 2,
                                np.clip(low_res[index], -LOW_RES_LOGIT_CLAMP, LOW_RES_LOGIT_CLAMP),
                                None, pixel_grid.factor, pixel_grid.resolution))
    return segments
