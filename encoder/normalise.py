"""One brightness stretch for the whole raster (numpy only).

The stretch is computed once from a spatially spread sample of the area being encoded and stored in
the feature store, so that neighbouring tiles see the same brightness and a resumed run uses the very
same numbers. NaN, nodata and masked pixels never enter the statistics and are black in the model input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Sequence, Tuple

import numpy as np

from ..core.tiling import PixelWindow

STRETCH_MODES = ("percentile", "none")
DEFAULT_PERCENTILES = (2.0, 98.0)
#: The sample reads at most this many windows of SAMPLE_WINDOW px, whatever the raster size.
SAMPLE_GRID = 8
SAMPLE_WINDOW = 256


@dataclass(frozen=True)
class Stretch:
    """Linear map of each chosen band from [low, high] to [0, 255] (values outside are clipped)."""

    mode: str
    low: Tuple[float, ...]
    high: Tuple[float, ...]
    percentiles: Tuple[float, float]
    sampled_pixels: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Stretch:
        return cls(mode=data["mode"], low=tuple(data["low"]), high=tuple(data["high"]),
                   percentiles=tuple(data["percentiles"]), sampled_pixels=data["sampled_pixels"])

    def apply(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(3, H, W) raw pixels + (H, W) validity -> (H, W, 3) uint8 RGB, invalid pixels 0."""
        out = np.empty(data.shape[1:] + (data.shape[0],), dtype=np.uint8)
        for band in range(data.shape[0]):
            low, high = self.low[band], self.high[band]
            scale = 255.0 / (high - low)
            channel = (data[band].astype(np.float32) - np.float32(low)) * np.float32(scale)
            np.clip(channel, 0, 255, out=channel)
            channel[~valid] = 0
            out[..., band] = np.rint(channel, out=channel)
        return out


def sample_windows(area: PixelWindow, grid: int = SAMPLE_GRID,
                   window: int = SAMPLE_WINDOW) -> List[PixelWindow]:
    """Evenly spread windows over `area`; the whole area when it is small enough."""
    if area.width * area.height <= (grid * window) ** 2:
        return [area]
    w, h = min(window, area.width), min(window, area.height)
    windows = []
    for gy in range(grid):
        for gx in range(grid):
            col = area.col_off + (area.width - w) * gx // max(1, grid - 1)
            row = area.row_off + (area.height - h) * gy // max(1, grid - 1)
            windows.append(PixelWindow(col, row, w, h))
    return windows


def compute_stretch(samples: Sequence[Tuple[np.ndarray, np.ndarray]], mode: str = "percentile",
                    percentiles: Tuple[float, float] = DEFAULT_PERCENTILES,
                    dtype: str = "uint8") -> Stretch:
    """Stretch from sampled (3, H, W) pixel blocks and their (H, W) validity masks.

    mode 'percentile': low/high are robust percentiles of the valid sampled values, per band.
    mode 'none': 0..255 (8-bit data as is; other types clipped to that range).
    """
    if mode not in STRETCH_MODES:
        raise ValueError(f"stretch must be one of {STRETCH_MODES}, got '{mode}'")
    bands = samples[0][0].shape[0] if samples else 3
    values = [np.concatenate([block[b][valid] for block, valid in samples]) if samples
              else np.empty(0) for b in range(bands)]
    count = int(values[0].size)
    if mode == "none" or count == 0:
        return Stretch("none", (0.0,) * bands, (255.0,) * bands, tuple(percentiles), count)
    low, high = [], []
    for band_values in values:
        lo, hi = np.percentile(band_values.astype(np.float64), percentiles)
        if not hi > lo:  # a constant band: keep its value mid-grey rather than dividing by zero
            lo, hi = lo - 0.5, lo + 0.5
        low.append(float(lo))
        high.append(float(hi))
    return Stretch("percentile", tuple(low), tuple(high), tuple(percentiles), count)
