"""From prompts on the map to polygons, on cached features (ONNX Runtime + numpy; no QGIS, no torch).

One engine serves the dock, the `quicksam:segmentprompts` algorithm and `quicksam segment`.
Coordinates: prompts and polygons are in the raster's CRS (callers transform from/to the canvas or
layer CRS); inside, continuous raster pixel coordinates (col, row).

Nodata never becomes part of an object: masks are ANDed with the tile's valid-pixel mask from the store
(no raster read) before they are vectorised, and a point on a nodata pixel is refused.

Boxes: a box reaching past the raster's edge is clipped to the raster here, once, for every caller (a
box dragged over the edge means "the object, as far as the raster goes"); a box wholly outside is
refused. A box also bounds its object: mask pixels whose centre lies outside the box are dropped, so
the polygon lies within box ∩ raster (up to half a pixel where a box edge cuts a pixel).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.defaults import MASK_MODES
from ..core.errors import QuickSamError
from ..core.geo import map_to_pixel, pixel_to_map, window_geotransform
from ..core.mask_decoding import STABILITY_SCORE_OFFSET, DecoderSettings, Prompts, stability_scores
from ..core.on_demand import in_encoded_area
from ..core.store import DECODER_ONNX, STATUS_DONE, STATUS_NODATA, FeatureStore
from ..core.tiling import Tile
from .decoding import OnnxDecoder
from .mask_window import chosen_masks, mask_bounds
from .vectorise import Polygons, mask_to_polygons

DEFAULT_CACHE_TILES = 6
#: Valid-pixel masks kept in memory (1 MiB each for 1024 px tiles): more than feature tiles, because
#: every click and hover rest looks one up.
DEFAULT_MASK_CACHE_TILES = 16
NO_DATA_HERE = ("no data here: the store records this part of the raster as nodata, so there is nothing to "
                "segment; click where the raster has data")
NO_DATA_AT_POINT = ("no data at this point (the raster's nodata value, NaN, alpha or mask band marks the pixel "
                    "empty); place points on pixels with data (a box may reach over nodata)")
NO_DATA_IN_BOX = "no data inside this box (every pixel in it is nodata); draw the box over pixels with data"


class PromptError(QuickSamError):
    """Prompts that cannot be segmented as given (outside the raster, across tiles, not encoded).

    `looks_like_lonlat` is True when the prompts are outside the raster and their numbers look like
    longitude/latitude degrees: the caller knows how its user says which CRS the prompts are in, and
    adds that (e.g. `--prompts-crs EPSG:4326`) to the message.
    """

    def __init__(self, message: str, looks_like_lonlat: bool = False) -> None:
        super().__init__(message)
        self.looks_like_lonlat = looks_like_lonlat


class NoTilePromptError(PromptError):
    """No encoded tile of the store holds every prompt (they are farther apart than a tile, across a border of
    tiles never encoded, or outside the encoded area); `prompts` are those prompts, for an on-demand tile."""

    def __init__(self, message: str, prompts: Optional[MapPrompts] = None) -> None:
        super().__init__(message)
        self.prompts = prompts


def format_xy(x: float, y: float) -> str:
    """'x,y' for messages, as --point takes it: up to 10 significant digits (0.1 mm in UTM, 1e-8 degrees)."""
    return f"{x:.10g},{y:.10g}"


def looks_like_lonlat(points: Sequence[Tuple[float, float]], raster_bounds: Tuple[float, float, float, float]
                      ) -> bool:
    """True when every (x, y) could be longitude/latitude degrees (|x| <= 180, |y| <= 90) while the raster's
    extent (xmin, ymin, xmax, ymax in its own CRS) lies wholly outside those numbers: then the prompts were
    most likely given in degrees to a raster in a projected CRS."""
    xmin, ymin, xmax, ymax = raster_bounds
    far = xmin > 180 or xmax < -180 or ymin > 90 or ymax < -90
    return far and bool(points) and all(abs(x) <= 180 and abs(y) <= 90 for x, y in points)


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

    def describe(self) -> str:
        """The prompts in words with their coordinates (raster CRS), for messages: 'the point at x,y',
        'the box xmin,ymin,xmax,ymax and the 2 points at x,y and x,y'."""
        parts = []
        if self.box is not None:
            parts.append("the box " + ",".join(f"{v:.10g}" for v in self.box))
        if len(self.points) == 1:
            parts.append(f"the point at {format_xy(*self.points[0])}")
        elif 1 < len(self.points) <= 3:
            listed = [format_xy(x, y) for x, y in self.points]
            parts.append(f"the {len(listed)} points at {', '.join(listed[:-1])} and {listed[-1]}")
        elif self.points:
            parts.append(f"the {len(self.points)} points (the first at {format_xy(*self.points[0])})")
        return " and ".join(parts) or "no prompt"


@dataclass
class Segment:
    """One candidate object: polygons in the raster CRS, the model's IoU score (SAM's predicted IoU), and
    where it came from; `stability` is SAM's stability score of its mask (None where not computed)."""

    geometry: Polygons
    score: float
    tile_id: str
    mask_pixels: int
    low_res_logits: np.ndarray = field(repr=False)
    stability: Optional[float] = None
    #: The store level decoded: its pixel over the raster's (1 = the raster's own), and its ground
    #: resolution in map units per pixel (core/levels.py).
    level_factor: float = 1.0
    resolution: float = 0.0


class FeatureCache:
    """Recently used tiles' features as float32 arrays in memory (thread-safe LRU)."""

    def __init__(self, store: FeatureStore, capacity: int = DEFAULT_CACHE_TILES) -> None:
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


class ValidMaskCache:
    """Recently used tiles' valid-pixel masks, (size, size) bool, True = data (thread-safe LRU). Read from
    the store (`FeatureStore.load_valid_mask`), never from the raster."""

    def __init__(self, store: FeatureStore, capacity: int = DEFAULT_MASK_CACHE_TILES) -> None:
        self.store = store
        self.capacity = capacity
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, tile: Tile) -> np.ndarray:
        """The tile's mask; StoreError when the tile is not encoded or its mask file is damaged."""
        with self._lock:
            if tile.tile_id in self._masks:
                self._masks.move_to_end(tile.tile_id)
                return self._masks[tile.tile_id]
        mask = self.store.load_valid_mask(tile)
        mask.setflags(write=False)  # shared between threads
        with self._lock:
            self._masks[tile.tile_id] = mask
            while len(self._masks) > self.capacity:
                self._masks.popitem(last=False)
        return mask


class SegmentEngine:
    """Decodes prompts on a feature store and vectorises the masks."""

    def __init__(self, store: FeatureStore, cache_tiles: int = DEFAULT_CACHE_TILES,
                 threads: Optional[int] = None, decoder: Optional[OnnxDecoder] = None) -> None:
        if not (store.root / DECODER_ONNX).is_file():
            raise QuickSamError(f"store '{store.root}' has no {DECODER_ONNX}; re-run the same "
                                "'quicksam encode' command to finish it")
        self.store = store
        self.cache = FeatureCache(store, cache_tiles)
        self.valid_masks = ValidMaskCache(store)
        settings = store.manifest.decoder.settings or DecoderSettings()
        self.decoder = decoder or OnnxDecoder(store.root / DECODER_ONNX, store.family, store.feature_names,
                                              store.image_size, settings, threads=threads,
                                              feature_shapes=store.feature_shapes)
        self._geotransform = store.geotransform
        #: Seconds spent in each step of the last `segment` call (for benchmarks).
        self.last_timings: Dict[str, float] = {}

    @classmethod
    def open(cls, path: Path, **kwargs: Optional[int]) -> SegmentEngine:
        return cls(FeatureStore.open(path), **kwargs)

    # -- where ---------------------------------------------------------------------------------------
    def to_pixels(self, x: float, y: float) -> Tuple[float, float]:
        """Continuous raster pixel position of a point in the raster CRS."""
        return map_to_pixel(self._geotransform, x, y)

    def raster_bounds(self) -> Tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the whole raster, in its CRS."""
        grid = self.store.grid
        corners = [pixel_to_map(self._geotransform, col, row)
                   for col in (0, grid.raster_width) for row in (0, grid.raster_height)]
        xs, ys = [x for x, _ in corners], [y for _, y in corners]
        return min(xs), min(ys), max(xs), max(ys)

    def _outside_raster(self, what: str, coordinates: Sequence[Tuple[float, float]]) -> PromptError:
        """The PromptError for prompts (`what`, at `coordinates` in the raster CRS) outside the raster."""
        bounds = self.raster_bounds()
        name = self.store.manifest.raster.crs_name or ""
        crs = name if 0 < len(name) <= 40 else "the raster's CRS"  # "EPSG:32633", not a whole WKT
        where = (f"{what} is outside the raster (x {bounds[0]:.10g} to {bounds[2]:.10g}, y {bounds[1]:.10g} to "
                 f"{bounds[3]:.10g} in {crs})")
        if looks_like_lonlat(coordinates, bounds):
            return PromptError(f"{where}; its numbers look like longitude/latitude degrees, not {crs} "
                               "coordinates", looks_like_lonlat=True)
        return PromptError(f"{where}; place prompts inside the raster")

    def box_pixels(self, box: Tuple[float, float, float, float]) -> Tuple[float, float, float, float]:
        """The box (xmin, ymin, xmax, ymax, raster CRS) as raster pixels (col0, row0, col1, row1), clipped
        to the raster. PromptError when no part of it (of positive area) is inside the raster."""
        grid = self.store.grid
        (c0, r0), (c1, r1) = self.to_pixels(box[0], box[1]), self.to_pixels(box[2], box[3])
        col0, row0 = max(min(c0, c1), 0.0), max(min(r0, r1), 0.0)
        col1, row1 = min(max(c0, c1), float(grid.raster_width)), min(max(r0, r1), float(grid.raster_height))
        if col0 >= col1 or row0 >= row1:
            raise self._outside_raster(MapPrompts(box=box).describe(), [(box[0], box[1]), (box[2], box[3])])
        return col0, row0, col1, row1

    def prompt_pixels(self, prompts: MapPrompts) -> List[Tuple[float, float]]:
        """Raster pixel positions of the points and of the box's corners (the box clipped to the raster)."""
        pixels = [self.to_pixels(x, y) for x, y in prompts.points]
        if prompts.box is not None:
            col0, row0, col1, row1 = self.box_pixels(prompts.box)
            pixels += [(col0, row0), (col1, row1)]
        return pixels

    def pixel_at(self, col: float, row: float) -> Tuple[int, int]:
        """The raster pixel (col, row) holding a continuous pixel position inside the raster (on a pixel
        edge: the pixel right of / below it; on the raster's right or bottom edge: the last pixel)."""
        grid = self.store.grid
        return (min(max(int(np.floor(col)), 0), grid.raster_width - 1),
                min(max(int(np.floor(row)), 0), grid.raster_height - 1))

    def check_inside(self, prompts: MapPrompts) -> None:
        """PromptError, naming the prompt and its coordinates, if a point or the whole box lies outside the
        raster, or a point or the (clipped) box outside the encoded area."""
        grid = self.store.grid
        for x, y in prompts.points:
            col, row = self.to_pixels(x, y)
            if not (0 <= col <= grid.raster_width and 0 <= row <= grid.raster_height):
                raise self._outside_raster(f"the point at {format_xy(x, y)}", [(x, y)])
            if not in_encoded_area(grid, col, row):
                raise NoTilePromptError(f"the point at {format_xy(x, y)} is outside the area this store encoded; "
                                        "encode that area (or the whole raster) first, or a tile here", prompts)
        if prompts.box is not None:
            col0, row0, col1, row1 = self.box_pixels(prompts.box)
            if not (in_encoded_area(grid, col0, row0) and in_encoded_area(grid, col1, row1)):
                raise NoTilePromptError(f"{MapPrompts(box=prompts.box).describe()} reaches outside the area this "
                                        "store encoded; encode that area (or the whole raster) first, or a tile here",
                                        prompts)

    def choose_tile(self, prompts: MapPrompts) -> Tile:
        """Of the encoded tiles holding every prompt, the one where they sit farthest from its edges.

        PromptError when there is none, when a point lies on a nodata pixel (or in a nodata tile), or
        when a box holds no pixel with data.
        """
        if prompts.is_empty():
            raise PromptError("add a point or a box first")
        self.check_inside(prompts)
        for x, y in prompts.points:
            self.check_point_has_data(*self.to_pixels(x, y))
        candidates = self.store.grid.tiles_containing(self.prompt_pixels(prompts))
        statuses = [self.store.status(tile) for tile, _ in candidates]
        encoded = [tile for (tile, _), status in zip(candidates, statuses) if status == STATUS_DONE]
        if encoded:
            self.check_box_has_data(prompts, encoded[0])
            return encoded[0]
        if STATUS_NODATA in statuses:
            raise PromptError(NO_DATA_HERE)
        if candidates:
            raise PromptError(f"the tile under {prompts.describe()} was not encoded: the encoding did not finish; "
                              "re-run the same encode command to finish it")
        raise NoTilePromptError(f"no single tile holds {prompts.describe()}: these prompts are farther apart than one "
                                "tile covers; encode a coarser level (quicksam encode --levels 1,4,16) or a tile here",
                                prompts)

    def check_point_has_data(self, col: float, row: float) -> None:
        """PromptError when the raster pixel at (col, row) (continuous raster pixels) is nodata: in a tile
        the store records as nodata (NO_DATA_HERE), or invalid in an encoded tile's mask (NO_DATA_AT_POINT).
        A pixel only in tiles not encoded yet passes (the tile choice says so)."""
        pixel_col, pixel_row = self.pixel_at(col, row)
        holding = [tile for tile, _ in self.store.grid.tiles_containing([(pixel_col + 0.5, pixel_row + 0.5)])]
        encoded = [tile for tile in holding if self.store.status(tile) == STATUS_DONE]
        if encoded:
            tile = encoded[0]  # every tile's mask is a window of the same raster mask
            if not self.valid_masks.get(tile)[pixel_row - tile.row_off, pixel_col - tile.col_off]:
                raise PromptError(NO_DATA_AT_POINT)
        elif any(self.store.status(tile) == STATUS_NODATA for tile in holding):
            raise PromptError(NO_DATA_HERE)

    def check_box_has_data(self, prompts: MapPrompts, tile: Tile) -> None:
        """PromptError when the prompts' box (if any) holds no pixel with data in `tile`."""
        if prompts.box is None:
            return
        x0, y0, x1, y1 = self.tile_prompts(prompts, tile).box
        valid = self.valid_masks.get(tile)
        col0, row0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        col1, row1 = max(int(np.ceil(x1)), col0 + 1), max(int(np.ceil(y1)), row0 + 1)
        if not valid[row0:row1, col0:col1].any():
            raise PromptError(NO_DATA_IN_BOX)

    def tile_prompts(self, prompts: MapPrompts, tile: Tile,
                     mask_input: Optional[np.ndarray] = None) -> Prompts:
        """Prompts in the tile's own pixel coordinates (the box clipped to the raster)."""
        points = [(c - tile.col_off, r - tile.row_off) for c, r in (self.to_pixels(x, y) for x, y in prompts.points)]
        box = None
        if prompts.box is not None:
            col0, row0, col1, row1 = self.box_pixels(prompts.box)
            box = (col0 - tile.col_off, row0 - tile.row_off, col1 - tile.col_off, row1 - tile.row_off)
        return Prompts(points=np.asarray(points, float).reshape(-1, 2), labels=list(prompts.labels), box=box,
                       mask_input=mask_input)

    # -- what ----------------------------------------------------------------------------------------
    def segment(self, prompts: MapPrompts, mode: str = "single", simplify_tolerance: float = 0.0,
                min_area_pixels: float = 0.0, keep_holes: bool = True,
                mask_input: Optional[np.ndarray] = None) -> List[Segment]:
        """Candidate objects for one object's prompts: one, or three with mode 'all', each clipped to the
        tile's valid pixels. Empty masks give no candidate. With a box, only mask pixels whose centre lies
        in box ∩ raster are kept."""
        if mode not in MASK_MODES:
            raise PromptError(f"mask mode must be one of {', '.join(MASK_MODES)}, not '{mode}'")
        started = time.perf_counter()
        tile = self.choose_tile(prompts)
        features = self.cache.get(tile.tile_id)
        loaded = time.perf_counter()
        result = self.decoder.decode(features, self.tile_prompts(prompts, tile, mask_input),
                                     multimask=mode != "single")
        # each candidate as it becomes the polygon (nodata removed, the padding cut, bounded by the box),
        # only inside its window: no tile-sized array
        box = None if prompts.box is None else self.box_pixels(prompts.box)
        chosen = chosen_masks(result, mode, mask_bounds(tile, box), self.valid_masks.get(tile))
        upsampled = time.perf_counter()
        stability = stability_scores(result.low_res_logits - self.decoder.settings.mask_threshold,
                                     STABILITY_SCORE_OFFSET)
        geotransform = window_geotransform(self._geotransform, tile.col_off, tile.row_off)
        segments = []
        for index, mask in chosen:
            geometry = None if mask is None else mask_to_polygons(
                mask.crop, geotransform, simplify_tolerance, min_area_pixels, keep_holes, (mask.col0, mask.row0))
            if geometry is None or geometry.is_empty:
                continue
            segments.append(Segment(geometry, float(result.scores[index]), tile.tile_id, mask.pixels,
                                    result.low_res_logits[index], float(stability[index]),
                                    self.store.manifest.pixel_grid.factor, self.store.manifest.pixel_grid.resolution))
        self.last_timings = {"tile_and_features": loaded - started, "decode_and_upsample": upsampled - loaded,
                             "vectorise": time.perf_counter() - upsampled}
        return segments
