"""Prompts decoded across the levels of a multi-scale store (core/levels.py, docs/levels.md; no QGIS).

`open_engine` is how the dock, quicksam:segmentprompts and `quicksam segment` get an engine: a store of one
level gets `SegmentEngine`; a multi-scale store gets `MultiScaleEngine`, which decodes each prompt set at
the finest level where one encoded tile holds all of it at least `margin` level pixels inside the tile's
edges (a sixteenth of the tile, 64 px at 1024 px), else at the coarsest level holding it at all. The
polygon then has that level's pixel size; `Segment.level_factor` and `Segment.resolution` say which.
Coordinates are in the raster's CRS, like the engine's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Tuple

from ..core.store import STATUS_DONE, FeatureStore
from ..core.store_levels import level_folder_of, level_stores
from ..core.tiling import Tile
from .engine import DEFAULT_CACHE_TILES, MapPrompts, NoTilePromptError, PromptError, Segment, SegmentEngine
from .refine import refine_segment

#: The margin a level's tile must leave around the prompts, as a fraction of the tile size.
MARGIN_FRACTION = 1 / 16


def open_engine(store: FeatureStore, cache_tiles: int = DEFAULT_CACHE_TILES, threads: Optional[int] = None
                ) -> SegmentEngine:
    """The engine for `store`: a `MultiScaleEngine` over its levels when it has several, else a
    `SegmentEngine`. QuickSamError/StoreError as SegmentEngine's, and a level that cannot be opened."""
    levels = level_stores(store)
    if len(levels) == 1:
        return SegmentEngine(store, cache_tiles=cache_tiles, threads=threads)
    return MultiScaleEngine(levels, cache_tiles=cache_tiles, threads=threads)


class MultiScaleEngine(SegmentEngine):
    """A `SegmentEngine` on the finest level that decodes each prompt set at the level that holds it.

    `levels` are the store's levels, finest first (core/store_levels.level_stores); one ONNX decoder
    serves them all (the same model encoded every level). `finest_only` True keeps decoding at the finest
    level (prompts no tile of it holds are then refused with NoTilePromptError, for an on-demand tile).
    """

    def __init__(self, levels: List[FeatureStore], cache_tiles: int = DEFAULT_CACHE_TILES,
                 threads: Optional[int] = None, finest_only: bool = False) -> None:
        super().__init__(levels[0], cache_tiles=cache_tiles, threads=threads)
        self.level_engines: List[SegmentEngine] = [self] + [
            SegmentEngine(store, cache_tiles=cache_tiles, decoder=self.decoder) for store in levels[1:]]
        self.finest_only = finest_only
        #: Re-decode the edges of objects decoded on a coarser level on the finest level's tiles
        #: (interactive/refine.py).
        self.refine_edges = False

    def choose_level(self, prompts: MapPrompts) -> Tuple[SegmentEngine, Tile]:
        """The level engine and tile that decode `prompts`: the finest level whose best encoded tile holds
        them `margin` px inside, else the level where they sit deepest inside a tile (relative to its
        size). PromptError as `SegmentEngine.choose_tile` (outside the raster, nodata); NoTilePromptError
        when no tile of any allowed level holds them."""
        engines = self.level_engines[:1] if self.finest_only else self.level_engines
        best: Optional[Tuple[float, SegmentEngine]] = None
        for engine in engines:
            depth = _deepest(engine, prompts)
            if depth is None:
                continue
            if depth >= MARGIN_FRACTION * engine.store.grid.tile_size:
                return engine, SegmentEngine.choose_tile(engine, prompts)
            relative = depth / engine.store.grid.tile_size
            if best is None or relative > best[0]:
                best = (relative, engine)
        if best is not None:
            return best[1], SegmentEngine.choose_tile(best[1], prompts)
        return self, SegmentEngine.choose_tile(self, prompts)   # the finest level says why not

    def choose_tile(self, prompts: MapPrompts) -> Tile:
        """The tile of the level `choose_level` picks (the session checks prompts with it)."""
        return self.choose_level(prompts)[1]

    def segment(self, prompts: MapPrompts, mode: str = "single", simplify_tolerance: float = 0.0,
                min_area_pixels: float = 0.0, keep_holes: bool = True,
                mask_input: Optional[Any] = None) -> List[Segment]:
        """`SegmentEngine.segment` at the level `choose_level` picks; `min_area_pixels` is in the raster's
        own pixels (converted to that level's); the segments say their level."""
        engine, _ = self.choose_level(prompts)
        if engine is self:
            return super().segment(prompts, mode, simplify_tolerance, min_area_pixels, keep_holes, mask_input)
        factor = engine.store.manifest.pixel_grid.factor / self.store.manifest.pixel_grid.factor
        segments = engine.segment(prompts, mode, simplify_tolerance, min_area_pixels / factor ** 2, keep_holes,
                                  mask_input)
        self.last_timings = engine.last_timings
        folder = level_folder_of(self.store, engine.store)   # "levels/x4/r0000c0001": which level's tile
        segments = [dataclasses.replace(segment, tile_id=f"{folder}/{segment.tile_id}") for segment in segments]
        if self.refine_edges:
            segments = [refine_segment(self, segment, mode, simplify_tolerance, min_area_pixels, keep_holes)
                        for segment in segments]
        return segments


def _deepest(engine: SegmentEngine, prompts: MapPrompts) -> Optional[float]:
    """How far (level pixels) the prompts sit inside the encoded tile of `engine`'s level that holds them
    deepest, or None when no encoded tile holds them all (or they are outside that level)."""
    try:
        pixels = engine.prompt_pixels(prompts)
    except PromptError:
        return None
    depths = [distance for tile, distance in engine.store.grid.tiles_containing(pixels)
              if engine.store.status(tile) == STATUS_DONE]
    return max(depths) if depths else None


__all__ = ["MARGIN_FRACTION", "MultiScaleEngine", "NoTilePromptError", "open_engine"]
