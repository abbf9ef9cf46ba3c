"""A synthetic time series whose truth is known: a disk that moves and grows over the frames (tests only).

Every frame is a 400 x 256 px uint16 GeoTIFF (two 256 px tiles with a 64 px overlap) in EPSG:32633 with 10 m
pixels and the top-left corner at (500000, 4200000) (tests/synthetic.py's default grid): a linear ramp
`ramp(col, row) = 1000 + 10 col + 5 row` (col, row: pixel indices on that grid) with a bright disk (10000) of the
frame's centre and radius (`disk_at`). Pixel (col, row) is in the disk when its centre is within the radius.

File names hold the date (`disk_<letter>_<YYYYMMDD>.tif`); the letters make the files listed by name come out of
date order. Options: one frame on a shifted grid (`shifted_frame`, origin moved by `SHIFT` map units: it still
shows the same ground, so resampled onto the default grid it reads `ramp` again), one frame with nodata (0) over
the right half of its disk (`nodata_frame`).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from synthetic import ORIGIN, PIXEL_SIZE, default_transform, write_raster

WIDTH, HEIGHT = 400, 256
DISK_VALUE = 10000
NODATA = 0
#: (dx, dy) in map units by which the shifted frame's origin moves: 1.5 px right, 1.5 px up.
SHIFT = (15.0, 15.0)
FIRST_DATE = _dt.date(2024, 3, 1)
#: Days between frames.
STEP_DAYS = 16
#: The file-name letter of frame k: listed by name, the frames come out of date order.
LETTERS = "dagbhcfe"


@dataclass(frozen=True)
class DiskFrame:
    """Frame k's truth: its date, the disk's centre (col, row; continuous pixels of the default grid) and radius
    (pixels)."""

    index: int
    date: _dt.date
    centre: Tuple[float, float]
    radius: float

    @property
    def iso(self) -> str:
        return _dt.datetime.combine(self.date, _dt.time()).isoformat(timespec="seconds")


def disk_at(index: int, frames: int = 8) -> DiskFrame:
    """Frame `index` of `frames`: the disk moves from col 90 to col 310 along row 128 and grows from 20 to 48 px."""
    share = index / max(1, frames - 1)
    return DiskFrame(index, FIRST_DATE + _dt.timedelta(days=STEP_DAYS * index), (90.0 + 220.0 * share, 128.0),
                     20.0 + 28.0 * share)


def ramp(cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The background at (continuous) pixel indices of the default grid."""
    return 1000.0 + 10.0 * cols + 5.0 * rows


def frame_pixels(truth: DiskFrame, offset: Tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(3, HEIGHT, WIDTH) uint16 of a frame whose pixel (c, r) is pixel (c + offset[0], r + offset[1]) of the
    default grid."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    cols, rows = cols + offset[0], rows + offset[1]
    values = ramp(cols, rows)
    inside = (cols + 0.5 - truth.centre[0]) ** 2 + (rows + 0.5 - truth.centre[1]) ** 2 <= truth.radius ** 2
    values[inside] = DISK_VALUE
    return np.repeat(np.rint(values)[np.newaxis], 3, axis=0).astype(np.uint16)


def frame_name(truth: DiskFrame) -> str:
    return f"disk_{LETTERS[truth.index % len(LETTERS)]}_{truth.date:%Y%m%d}.tif"


def disk_series(folder: Path, frames: int = 8, shifted_frame: Optional[int] = None,
                nodata_frame: Optional[int] = None) -> List[Path]:
    """Write the series into `folder`; the paths in date order (frame k = paths[k], `disk_at(k, frames)`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(frames):
        truth = disk_at(index, frames)
        transform, offset, nodata = None, (0.0, 0.0), None
        if index == shifted_frame:
            transform = default_transform(origin=(ORIGIN[0] + SHIFT[0], ORIGIN[1] + SHIFT[1]))
            offset = (SHIFT[0] / PIXEL_SIZE, -SHIFT[1] / PIXEL_SIZE)
        data = frame_pixels(truth, offset)
        if index == nodata_frame:
            nodata = NODATA
            col, row = int(truth.centre[0]), int(truth.centre[1])
            data[:, row - int(truth.radius) - 2: row + int(truth.radius) + 2, col: col + int(truth.radius) + 2] = NODATA
        paths.append(write_raster(folder / frame_name(truth), data, transform=transform, nodata=nodata))
    return paths


def nodata_box(index: int, frames: int = 8) -> Tuple[int, int, int, int]:
    """(col0, row0, col1, row1) pixels (ends exclusive) set to nodata in frame `index` when it is `nodata_frame`."""
    truth = disk_at(index, frames)
    col, row, radius = int(truth.centre[0]), int(truth.centre[1]), int(truth.radius)
    return col, row - radius - 2, col + radius + 2, row + radius + 2
