"""Resolution levels of a feature store: each level is the raster seen at one ground resolution (no QGIS).

A level is a pixel grid laid over the raster: its pixel is `factor` times the raster's own pixel along
both axes (factor 1 = the raster's pixels; 4 = 4 x 4 raster pixels per level pixel), with the same origin
and orientation. Its `geotransform` is GDAL's (x0, pixel width, row rotation, y0, column rotation, pixel
height) in the raster's CRS, from level pixel (col, row) to map (x, y); `width`/`height` are level pixels,
rounded up so that the level covers the whole raster (the last column and row may reach past the raster's
edge: their pixels are invalid where they do, see encoder/raster.py).

A multi-scale store (docs/levels.md) is the store folder holding its finest level ("root" level, the
folder itself) and coarser ones in sub-folders `levels/x<factor>/`, each a complete store of its own (own
manifest, tiles, tile log, decoder, tile index). The root manifest lists every level (`levels`), the
root's own first (folder "."); each level's manifest has its `level` section. A store written before
levels existed (format version 1 or 2) is one native level.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence, Tuple

#: The folder, inside a store, that holds the levels other than the root's.
LEVELS_DIR = "levels"
#: Resampling of a level coarser than the raster: the mean of the raster pixels under each level pixel
#: (GDAL's "average"); "none" for the raster's own pixels.
LEVEL_RESAMPLING = "average"
NO_RESAMPLING = "none"
#: Largest factor between a level's pixel and the raster's (a 1024 px tile then covers 1024² raster px).
MAX_LEVEL_FACTOR = 1024.0
_NUMBER = re.compile(r"\d+(\.\d*)?([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?")
#: Factors closer than this (relative) are the same level.
_SAME_FACTOR = 1e-9


@dataclass(frozen=True)
class LevelSection:
    """One level's pixel grid: `factor` its pixel size over the raster's own (> 0; 1 = native), `width`
    and `height` in level pixels, `geotransform` from level pixels to map coordinates in the raster's CRS,
    `resampling` how raster pixels were combined into level pixels ("average", or "none" at factor 1)."""

    factor: float
    width: int
    height: int
    geotransform: Tuple[float, float, float, float, float, float]
    resampling: str = NO_RESAMPLING

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", float(self.factor))
        object.__setattr__(self, "geotransform", tuple(float(v) for v in self.geotransform))

    @property
    def resolution(self) -> float:
        """Ground resolution: the length of a level pixel's top edge, in map units of the raster's CRS
        (metres for a CRS in metres, degrees for longitude/latitude)."""
        return math.hypot(self.geotransform[1], self.geotransform[4])

    @property
    def is_native(self) -> bool:
        return same_factor(self.factor, 1.0)


@dataclass(frozen=True)
class LevelRef:
    """A level as the root manifest lists it: `folder` relative to the store ("." for the root level,
    `levels/x4` for the others) and its `factor` over the raster's pixel."""

    folder: str
    factor: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", float(self.factor))


def same_factor(a: float, b: float) -> bool:
    """True when two factors name the same level (equal up to floating-point noise)."""
    return abs(a - b) <= _SAME_FACTOR * max(abs(a), abs(b))


def level_grid(width: int, height: int, geotransform: Sequence[float], factor: float) -> LevelSection:
    """The level of `factor` over a raster of `width` x `height` pixels with GDAL `geotransform`: pixel
    size times `factor` (rotation terms too), same origin, ceil(width / factor) x ceil(height / factor)
    level pixels. ValueError for a factor that is not a finite number in (0, MAX_LEVEL_FACTOR]."""
    factor = float(factor)
    if not (math.isfinite(factor) and 0 < factor <= MAX_LEVEL_FACTOR):
        raise ValueError(f"a level's factor must be above 0 and at most {MAX_LEVEL_FACTOR:g}, not {factor:g}")
    if same_factor(factor, 1.0):
        return LevelSection(1.0, int(width), int(height), tuple(geotransform), NO_RESAMPLING)
    x0, b, c, y0, e, f = (float(v) for v in geotransform)
    level_width = max(1, math.ceil(width / factor - 1e-9))
    level_height = max(1, math.ceil(height / factor - 1e-9))
    return LevelSection(factor, level_width, level_height, (x0, b * factor, c * factor, y0, e * factor, f * factor),
                        LEVEL_RESAMPLING)


def level_folder(factor: float) -> str:
    """The folder of a non-root level, relative to the store: `levels/x4`, `levels/x2.5` (the factor
    relative to the root level, up to 6 significant digits)."""
    return f"{LEVELS_DIR}/x{float(factor):.6g}"


def parse_factors(text: str) -> Tuple[float, ...]:
    """Level factors from "1,4,16" (spaces allowed), each a number from 1 to MAX_LEVEL_FACTOR; ValueError
    saying what is expected otherwise (the CLI's --levels and the Processing algorithm's LEVELS)."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    # one plain number per comma: "1 4" or "1_000" is refused, never read as 14 or 1000
    values = tuple(float(item) for item in items if _NUMBER.fullmatch(item)) if items else ()
    if len(values) != len(items):
        values = ()
    if not values or not all(math.isfinite(v) and 1 <= v <= MAX_LEVEL_FACTOR for v in values):
        raise ValueError(f"levels must be factors of the finest level's pixel size from 1 to {MAX_LEVEL_FACTOR:g}, "
                         f"separated by commas like 1,4,16, not '{text}'")
    return values


def format_factor(factor: float) -> str:
    """A factor as people read it: '1', '4', '2.5'."""
    return f"{float(factor):.6g}"


__all__ = ["LEVELS_DIR", "LEVEL_RESAMPLING", "MAX_LEVEL_FACTOR", "NO_RESAMPLING", "LevelRef", "LevelSection",
           "format_factor", "level_folder", "level_grid", "parse_factors", "same_factor"]
