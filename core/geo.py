"""Geotransforms: between pixel positions and map coordinates (no QGIS, no GDAL bindings).

A GDAL geotransform is six floats (x0, pixel width, row rotation, y0, column rotation, pixel height):
map x = x0 + col * gt[1] + row * gt[2], map y = y0 + col * gt[4] + row * gt[5], in the raster's CRS.
Pixel positions are continuous: (0, 0) is the top-left corner of the top-left pixel.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, Sequence, Tuple

from .errors import RasterError
from .tiling import PixelWindow

_FINGERPRINT_CHUNK = 1 << 16
_FINGERPRINT_SAMPLES = 16


def pixel_to_map(geotransform: Sequence[float], col: float, row: float) -> Tuple[float, float]:
    """Map coordinates (raster CRS) of a continuous pixel position (col, row); (0, 0) is the top-left
    corner of the top-left pixel."""
    a, b, c, d, e, f = geotransform
    return a + col * b + row * c, d + col * e + row * f


def map_to_pixel(geotransform: Sequence[float], x: float, y: float) -> Tuple[float, float]:
    """Continuous pixel position (col, row) of a point in the raster CRS."""
    a, b, c, d, e, f = geotransform
    det = b * f - c * e
    if det == 0:
        raise RasterError("the raster's geotransform is degenerate; fix its georeferencing")
    dx, dy = x - a, y - d
    return (f * dx - c * dy) / det, (-e * dx + b * dy) / det


def window_geotransform(geotransform: Sequence[float], col_off: float, row_off: float) -> Tuple[float, ...]:
    """GDAL geotransform of a window's own pixel grid: its pixel (0, 0) is raster pixel (col_off, row_off)
    (a tile, a mask's crop, a PixelWindow's offsets); same pixel size and rotation, same CRS."""
    x0, y0 = pixel_to_map(geotransform, col_off, row_off)
    _, b, c, _, e, f = geotransform
    return (x0, b, c, y0, e, f)


def window_outline(geotransform: Sequence[float], window: PixelWindow) -> List[Tuple[float, float]]:
    """Closed ring (5 points, the first repeated) of a pixel window's outline in map coordinates (raster
    CRS), clockwise on a north-up raster from the top-left corner; e.g. a tile's valid area (`Tile.window`)."""
    corners = [(window.col_off, window.row_off), (window.col_end, window.row_off),
               (window.col_end, window.row_end), (window.col_off, window.row_end)]
    ring = [pixel_to_map(geotransform, col, row) for col, row in corners]
    return ring + ring[:1]


def raster_fingerprint(path: str, width: int, height: int, count: int, geotransform: Sequence[float]) -> str:
    """A content fingerprint that changes when the pixels or the georeference change.

    Hashes the structure (size, band count, geotransform), the file size and evenly spaced 64 KiB
    samples of the bytes (not the whole file: rasters can be hundreds of GB); a new CRS or new pixels
    rewrite some of those bytes. Copying or renaming the file keeps it. Only plain values go in, so
    the encoder (rasterio) and QGIS's side (GDAL's own bindings) compute the same fingerprint.
    """
    digest = hashlib.sha256()
    structure = (int(width), int(height), int(count), tuple(float(v) for v in geotransform))
    digest.update(repr(structure).encode())
    file_path = Path(path)
    if file_path.is_file():
        size = file_path.stat().st_size
        digest.update(str(size).encode())
        with open(file_path, "rb") as handle:
            for i in range(_FINGERPRINT_SAMPLES):
                handle.seek(max(0, (size - _FINGERPRINT_CHUNK) * i // (_FINGERPRINT_SAMPLES - 1)))
                digest.update(handle.read(_FINGERPRINT_CHUNK))
    return digest.hexdigest()
