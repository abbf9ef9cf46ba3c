"""From prompts on the map to polygons, on cached features (ONNX Runtime + numpy; no QGIS, no torch).

One engine serves the dock, the `quicksam:segmentprompts` algorithm and `quicksam segment`.
Coordinates: prompts and polygons are in the raster's CRS (callers transform from/to the canvas or
layer CRS); inside, continuous raster pixel coordinates (col, row).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..encoder.errors import QuickSamError
from ..encoder.raster import map_to_pixel, tile_geotransform
from ..encoder.store import DECODER_ONNX, STATUS_DONE, FeatureStore
from ..encoder.tiling import Tile
from .decoding import DecoderSettings, OnnxDecoder, Prompts
from .vectorise import Polygons, mask_to_polygons

MASK_MODES = ("single", "best", "largest", "smallest", "all")
DEFAULT_CACHE_TILES = 6


class PromptError(QuickSamError):
    """Prompts that cannot be segmented as given (outside the raster, across tiles, not encoded)."""


@dataclass(frozen=True)
class MapPrompts:
    """One object's prompts in the raster CRS: points (x, y) with labels 1 (foreground) / 0
    (background), and an optional box (xmin, ymin, xmax, ymax)."""

    points: Tuple[Tuple[float, float], ...] = ()
    labels: Tuple[int, ...] = ()
    box: Optional[Tuple[float, float, float, float]] = None

    def is_empty(self) -> bool:
        return not self.points and self.box is None

    def with_point(self, x: float, y: float, label: int) -> MapPrompts:
        return MapPrompts(self.points + ((x, y),), self.labels + (int(label),), self.box)

    def with_box(self, box: Tuple[float, float, float, float]) -> MapPrompts:
        xmin, ymin, xmax, ymax = box
        return MapPrompts(self.points, self.labels, (min(xmin, xmax), min(ymin, ymax),
                                                     max(xmin, xmax), max(ymin, ymax)))

    @property
    def foreground_count(self) -> int:
        return sum(1 for label in self.labels if label == 1)

    @property
    def background_count(self) -> int:
        return sum(1 for label in self.labels if label == 0)


@dataclass
class Segment:
    """One candidate object: polygons in the raster CRS, the model's IoU score, and where it came from."""

    geometry: Polygons
    score: float
    tile_id: str
    mask_pixels: int
    low_res_logits: np.ndarray = field(repr=False)


class FeatureCache:
    """Recently used tiles' features as float32 arrays in memory (thread-safe LRU)."""

    def __init__(self, store: FeatureStore, capacity: int = DEFAULT_CACHE_TILES):
        self.store = store
        self.capacity = capacity
        self._tiles: OrderedDict[str, Dict[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self.disk_reads = 0

    def get(self, tile_id: str) -> Dict[str, np.ndarray]:
        with self._lock:
            if tile_id in self._tiles:
                self._tiles.move_to_end(tile_id)
                return self._tiles[tile_id]
        features = {name: np.array(array, dtype=np.float32)
                    for name, array in self.store.load_tile(tile_id).items()}
        with self._lock:
            self.disk_reads += 1
            self._tiles[tile_id] = features
            while len(self._tiles) > self.capacity:
                self._tiles.popitem(last=False)
        return features


def _mask_area_order(masks: np.ndarray) -> np.ndarray:
    return np.argsort(masks.reshape(len(masks), -1).sum(axis=1))


class SegmentEngine:
    """Decodes prompts on a feature store and vectorises the masks."""

    def __init__(self, store: FeatureStore, cache_tiles: int = DEFAULT_CACHE_TILES,
                 threads: Optional[int] = None):
        if not (store.root / DECODER_ONNX).is_file():
            raise QuickSamError(f"store '{store.root}' has no {DECODER_ONNX}; re-run the same "
                                "'quicksam encode' command to finish it")
        self.store = store
        self.cache = FeatureCache(store, cache_tiles)
        settings = DecoderSettings(**store.manifest["decoder"].get("settings", {}))
        self.decoder = OnnxDecoder(store.root / DECODER_ONNX, store.family, store.feature_names,
                                   store.image_size, settings, threads=threads, feature_shapes=store.feature_shapes)
        self._geotransform = store.geotransform
        #: Seconds spent in each step of the last `segment` call (for benchmarks).
        self.last_timings: Dict[str, float] = {}

    @classmethod
    def open(cls, path: Path, **kwargs) -> SegmentEngine:
        return cls(FeatureStore.open(path), **kwargs)

    # -- where ---------------------------------------------------------------------------------------
    def to_pixels(self, x: float, y: float) -> Tuple[float, float]:
        """Continuous raster pixel position of a point in the raster CRS."""
        return map_to_pixel(self._geotransform, x, y)

    def prompt_pixels(self, prompts: MapPrompts) -> List[Tuple[float, float]]:
        pixels = [self.to_pixels(x, y) for x, y in prompts.points]
        if prompts.box is not None:
            xmin, ymin, xmax, ymax = prompts.box
            pixels += [self.to_pixels(xmin, ymin), self.to_pixels(xmax, ymax)]
        return pixels

    def check_inside(self, prompts: MapPrompts) -> None:
        """PromptError if any prompt lies outside the raster or outside the encoded area."""
        grid = self.store.grid
        for col, row in self.prompt_pixels(prompts):
            if not (0 <= col <= grid.raster_width and 0 <= row <= grid.raster_height):
                raise PromptError("the prompt is outside the raster; place prompts inside the raster's extent")
            window = grid.window
            if not (window.col_off <= col <= window.col_end and window.row_off <= row <= window.row_end):
                raise PromptError("the prompt is outside the encoded area of this store; encode that "
                                  "area (or the whole raster) first")

    def choose_tile(self, prompts: MapPrompts) -> Tile:
        """Of the encoded tiles holding every prompt, the one where they sit farthest from its edges."""
        if prompts.is_empty():
            raise PromptError("add a point or a box first")
        self.check_inside(prompts)
        candidates = self.store.grid.tiles_containing(self.prompt_pixels(prompts))
        encoded = [tile for tile, _ in candidates if self.store.status(tile) == STATUS_DONE]
        if encoded:
            return encoded[0]
        if candidates:
            raise PromptError("the tile under these prompts was not encoded (no data there, or the "
                              "encoding did not finish; re-run the same encode command to finish it)")
        raise PromptError("these prompts are farther apart than one tile covers; segment the object in "
                          "parts, or encode with a larger overlap")

    def tile_prompts(self, prompts: MapPrompts, tile: Tile,
                     mask_input: Optional[np.ndarray] = None) -> Prompts:
        """Prompts in the tile's own pixel coordinates."""
        points = [(c - tile.col_off, r - tile.row_off) for c, r in (self.to_pixels(x, y) for x, y in prompts.points)]
        box = None
        if prompts.box is not None:
            (c0, r0), (c1, r1) = (self.to_pixels(prompts.box[0], prompts.box[1]),
                                  self.to_pixels(prompts.box[2], prompts.box[3]))
            box = (min(c0, c1) - tile.col_off, min(r0, r1) - tile.row_off,
                   max(c0, c1) - tile.col_off, max(r0, r1) - tile.row_off)
        return Prompts(points=np.asarray(points, float).reshape(-1, 2), labels=list(prompts.labels), box=box,
                       mask_input=mask_input)

    # -- what ----------------------------------------------------------------------------------------
    def segment(self, prompts: MapPrompts, mode: str = "single", simplify_tolerance: float = 0.0,
                min_area_pixels: float = 0.0, keep_holes: bool = True,
                mask_input: Optional[np.ndarray] = None) -> List[Segment]:
        """Candidate objects for one object's prompts: one, or three with mode 'all'. Empty masks
        give no candidate."""
        if mode not in MASK_MODES:
            raise PromptError(f"mask mode must be one of {', '.join(MASK_MODES)}, not '{mode}'")
        started = time.perf_counter()
        tile = self.choose_tile(prompts)
        features = self.cache.get(tile.tile_id)
        loaded = time.perf_counter()
        result = self.decoder.decode(features, self.tile_prompts(prompts, tile, mask_input),
                                     multimask=mode != "single")
        decoded = time.perf_counter()
        picks = self._pick(result.masks, result.scores, mode)
        transform = tile_geotransform(self._geotransform, tile)
        segments = []
        for index in picks:
            mask = result.masks[index][:tile.valid_height, :tile.valid_width]
            geometry = mask_to_polygons(mask, transform, simplify_tolerance, min_area_pixels, keep_holes)
            if geometry.is_empty:
                continue
            segments.append(Segment(geometry, float(result.scores[index]), tile.tile_id, int(mask.sum()),
                                    result.low_res_logits[index]))
        self.last_timings = {"tile_and_features": loaded - started, "decode_and_upsample": decoded - loaded,
                             "vectorise": time.perf_counter() - decoded}
        return segments

    @staticmethod
    def _pick(masks: np.ndarray, scores: np.ndarray, mode: str) -> Sequence[int]:
        if mode in ("single", "all"):
            return range(len(masks))
        if mode == "best":
            return [int(np.argmax(scores))]
        order = _mask_area_order(masks)
        return [int(order[-1])] if mode == "largest" else [int(order[0])]
