"""Reading georeferenced rasters in windows (rasterio; no QGIS, no torch).

Coordinates: `extent` values are in the raster's CRS; pixel windows are in raster pixels.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np

from ..core.errors import RasterError
from ..core.geo import map_to_pixel, pixel_to_map, raster_fingerprint
from ..core.levels import same_factor
from ..core.tiling import PixelWindow, Tile
from .network_reads import open_network
from .online_sources import is_network_source, network_fingerprint

if TYPE_CHECKING:
    from rasterio.io import DatasetReader

#: Raster pixels sampled along each axis of a level pixel to decide whether it is valid (WindowReader).
MASK_SAMPLES = 4
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")


@dataclass(frozen=True)
class RasterInfo:
    """What the encoder needs to know about a raster. `geotransform` is GDAL's 6-tuple."""

    path: str
    width: int
    height: int
    count: int
    dtypes: Tuple[str, ...]
    nodata: Optional[float]
    crs_wkt: str
    crs_name: str
    geotransform: Tuple[float, float, float, float, float, float]
    colour_interpretation: Tuple[str, ...]

    @property
    def bounds(self) -> Tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in the raster CRS."""
        xs, ys = zip(*(pixel_to_map(self.geotransform, c, r)
                       for c, r in ((0, 0), (self.width, 0), (0, self.height),
                                    (self.width, self.height))))
        return min(xs), min(ys), max(xs), max(ys)


def _open(path: str) -> DatasetReader:
    if is_network_source(path):  # XYZ, WMS, WMTS, /vsicurl/: bounded connections, retries (network_reads.py)
        return open_network(path)
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            # describe_raster reports a missing georeference itself, as one line that says what to do.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise RasterError(f"cannot open raster '{path}': {str(exc).splitlines()[0].rstrip('.')}. "
                          "Check the path and that GDAL can read the file.") from exc


def describe_raster(path: str) -> RasterInfo:
    """Open a raster and check it can be encoded; raise RasterError saying what to do if not."""
    with _open(path) as src:
        if src.crs is None and src.transform.is_identity:
            raise RasterError(
                f"'{path}' has no georeference (no CRS, no geotransform): polygons would not land on "
                "the map. Georeference it first (QGIS: Raster > Georeferencer, or "
                "Raster > Projections > Assign Projection) and encode again.")
        if src.crs is None:
            raise RasterError(
                f"'{path}' has a geotransform but no CRS. Assign its CRS first "
                "(QGIS: Raster > Projections > Assign Projection) and encode again.")
        dtypes = tuple(src.dtypes)
        unsupported = sorted({dt for dt in dtypes if dt not in SUPPORTED_DTYPES})
        if unsupported:
            raise RasterError(
                f"'{path}' has bands of type {', '.join(unsupported)}, which QuickSAM cannot "
                f"stretch; convert it to one of {', '.join(SUPPORTED_DTYPES)} "
                "(QGIS: Raster > Conversion > Translate) and encode again.")
        return RasterInfo(
            path=str(path),
            width=src.width,
            height=src.height,
            count=src.count,
            dtypes=dtypes,
            nodata=None if src.nodata is None else float(src.nodata),
            crs_wkt=src.crs.to_wkt(),
            crs_name=src.crs.to_string(),
            geotransform=tuple(src.transform.to_gdal()),
            colour_interpretation=tuple(ci.name for ci in src.colorinterp),
        )


def choose_bands(info: RasterInfo, requested: Optional[Sequence[int]]) -> List[int]:
    """The three 1-based band numbers fed to the model as R, G, B.

    One band is repeated three times; two bands give (1, 2, 1). With more than three bands and no choice,
    bands labelled red/green/blue are used if the file says so, else the first three.
    """
    if requested:
        bands = [int(b) for b in requested]
        bad = [b for b in bands if not 1 <= b <= info.count]
        if bad:
            raise RasterError(
                f"band {bad[0]} does not exist: '{info.path}' has {info.count} band(s) "
                f"(1..{info.count}); pass e.g. --bands {','.join(str(b) for b in range(1, min(3, info.count) + 1))}")
        if not 1 <= len(bands) <= 3:
            raise RasterError(f"choose one to three bands, got {len(bands)} ({bands})")
    else:
        by_colour = {name: i + 1 for i, name in enumerate(info.colour_interpretation)}
        if all(colour in by_colour for colour in ("red", "green", "blue")):
            bands = [by_colour["red"], by_colour["green"], by_colour["blue"]]
        else:
            data_bands = [i + 1 for i, name in enumerate(info.colour_interpretation) if name != "alpha"]
            bands = (data_bands or [1])[:3]
    if len(bands) == 1:
        return bands * 3
    if len(bands) == 2:
        return [bands[0], bands[1], bands[0]]
    return bands


def extent_to_window(info: RasterInfo, extent: Tuple[float, float, float, float]) -> PixelWindow:
    """Pixel window covering an (xmin, ymin, xmax, ymax) extent given in the raster's CRS."""
    xmin, ymin, xmax, ymax = extent
    if not all(math.isfinite(v) for v in extent):
        raise RasterError(f"extent {extent} is not a set of finite numbers: give it as xmin,ymin,xmax,ymax "
                          f"in the raster's CRS ({info.crs_name})")
    if not (xmin < xmax and ymin < ymax):
        raise RasterError(f"extent {extent} is empty: give it as xmin,ymin,xmax,ymax with xmin < xmax "
                          "and ymin < ymax")
    corners = [map_to_pixel(info.geotransform, x, y) for x in (xmin, xmax) for y in (ymin, ymax)]
    cols, rows = zip(*corners)
    # Coordinates so far away that their pixel position overflows cannot overlap the raster.
    finite = all(math.isfinite(v) for v in cols + rows)
    col0, col1 = (max(0, math.floor(min(cols))), min(info.width, math.ceil(max(cols)))) if finite else (0, 0)
    row0, row1 = (max(0, math.floor(min(rows))), min(info.height, math.ceil(max(rows)))) if finite else (0, 0)
    if col0 >= col1 or row0 >= row1:
        bx = ", ".join(f"{v:.6g}" for v in info.bounds)
        raise RasterError(f"extent {extent} does not overlap the raster, whose bounds are ({bx}) in "
                          f"{info.crs_name}; give the extent in the raster's CRS")
    return PixelWindow(col0, row0, col1 - col0, row1 - row0)


def raster_fingerprint_rasterio(path: str, info: RasterInfo) -> str:
    """`core.geo.raster_fingerprint` of a raster described by rasterio (the encoder's side); for a network
    source its description and structure (`network_fingerprint`: no pixels are fetched to hash)."""
    if is_network_source(path):
        return network_fingerprint(path, info.width, info.height, info.count, info.geotransform)
    return raster_fingerprint(path, info.width, info.height, info.count, info.geotransform)


class WindowReader:
    """Reads tiles of selected bands with their validity mask, at the raster's own pixels or at a level
    `factor` times coarser (core/levels.py). Keep one per thread (GDAL handles are not thread-safe)."""

    def __init__(self, path: str, bands: Sequence[int], factor: float = 1.0) -> None:
        self._dataset = _open(path)
        self._path = str(path)
        self._bands = list(bands)
        self._unique = sorted(set(self._bands))
        self._nodata = self._dataset.nodata
        self._factor = float(factor)

    def close(self) -> None:
        self._dataset.close()

    def __enter__(self) -> WindowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, window: PixelWindow) -> Tuple[np.ndarray, np.ndarray]:
        """Pixels (3, height, width) in the band order and a bool mask (height, width), True = valid, of a
        window in the reader's level pixels.

        A pixel is invalid when any chosen band is nodata, NaN, or masked by GDAL (alpha/mask band). At a
        coarser level each pixel is the mean of the raster pixels under it (GDAL's average resampling, from
        the file's overviews where it has them) and is valid only when every raster pixel under it is; a
        level pixel reaching past the raster's edge is invalid (its values are 0).
        """
        return self._read_or_fail(window, f"window {_window_text(window)}")

    def _read_or_fail(self, window: PixelWindow, what: str) -> Tuple[np.ndarray, np.ndarray]:
        """`read`; RasterError naming the raster, `what` was read and GDAL's message when GDAL cannot read it
        (a truncated or corrupt file)."""
        from rasterio.errors import RasterioIOError

        try:
            if same_factor(self._factor, 1.0):
                return self._read_native(window)
            return self._read_level(window)
        except RasterioIOError as exc:
            raise RasterError(f"cannot read {what} of raster '{self._path}': {gdal_message(exc)}; the file may be "
                              "truncated or corrupt: check it (gdalinfo -checksum) or export it again") from exc

    def _read_native(self, window: PixelWindow) -> Tuple[np.ndarray, np.ndarray]:
        from rasterio.windows import Window

        win = Window(window.col_off, window.row_off, window.width, window.height)
        return self._checked(self._dataset.read(self._unique, window=win),
                             self._dataset.read_masks(self._unique, window=win) > 0)

    def _read_level(self, window: PixelWindow) -> Tuple[np.ndarray, np.ndarray]:
        """`read` at a coarser level: the level pixels wholly inside the raster are read resampled."""
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        f = self._factor
        inside_cols = min(window.col_end, math.floor(self._dataset.width / f + 1e-9)) - window.col_off
        inside_rows = min(window.row_end, math.floor(self._dataset.height / f + 1e-9)) - window.row_off
        data = np.zeros((len(self._unique), window.height, window.width), dtype=self._dataset.dtypes[0])
        valid = np.zeros((len(self._unique), window.height, window.width), dtype=bool)
        if inside_cols > 0 and inside_rows > 0:
            win = Window(window.col_off * f, window.row_off * f, inside_cols * f, inside_rows * f)
            shape = (len(self._unique), inside_rows, inside_cols)
            data[:, :inside_rows, :inside_cols] = self._dataset.read(
                self._unique, window=win, out_shape=shape, resampling=Resampling.average)
            valid[:, :inside_rows, :inside_cols] = self._sampled_masks(win, inside_rows, inside_cols)
        return self._checked(data, valid)

    def _sampled_masks(self, win: object, rows: int, cols: int) -> np.ndarray:
        """(bands, rows, cols) bool: True where every one of k x k raster pixels sampled evenly under a level
        pixel is valid (k = the factor rounded up, at most MASK_SAMPLES). GDAL's averaging leaves nodata out
        of the mean, so the mask of the averaged read would call a half-nodata pixel valid."""
        from rasterio.enums import Resampling

        k = max(1, min(math.ceil(self._factor - 1e-9), MASK_SAMPLES))
        masks = self._dataset.read_masks(self._unique, window=win, out_shape=(len(self._unique), rows * k, cols * k),
                                         resampling=Resampling.nearest)
        return (masks > 0).reshape(len(self._unique), rows, k, cols, k).all(axis=(2, 4))

    def _checked(self, data: np.ndarray, band_valid: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(data in the chosen band order, valid (H, W)) from the unique bands' data and validity."""
        valid = np.all(band_valid, axis=0)
        if np.issubdtype(data.dtype, np.floating):
            valid &= np.all(np.isfinite(data), axis=0)
        if self._nodata is not None and not np.isnan(self._nodata):
            valid &= np.all(data != self._nodata, axis=0)
        order = [self._unique.index(b) for b in self._bands]
        return data[order], valid

    def read_tile(self, tile: Tile) -> Tuple[np.ndarray, np.ndarray]:
        """A full `size` x `size` tile; padding (small rasters only) is zero and invalid."""
        data, valid = self._read_or_fail(tile.window, f"tile {tile.tile_id} (window {_window_text(tile.window)})")
        if not tile.is_padded:
            return data, valid
        padded = np.zeros((data.shape[0], tile.size, tile.size), dtype=data.dtype)
        padded_valid = np.zeros((tile.size, tile.size), dtype=bool)
        padded[:, :tile.valid_height, :tile.valid_width] = data
        padded_valid[:tile.valid_height, :tile.valid_width] = valid
        return padded, padded_valid


def _window_text(window: PixelWindow) -> str:
    """'col,row widthxheight' of a pixel window, as messages give it."""
    return f"{window.col_off},{window.row_off} {window.width}x{window.height} px"


def gdal_message(exc: BaseException) -> str:
    """GDAL's own words for a failed read, on one line: the messages chained under rasterio's 'Read failed. See
    previous exception for details.' (that one only when nothing else is said)."""
    texts: List[str] = []
    cause: Optional[BaseException] = exc
    while cause is not None and len(texts) < 5:
        text = " ".join(str(cause).split()).rstrip(".")
        if text and "see previous exception" not in text.lower() and not any(text in t for t in texts):
            texts.append(text)
        cause = cause.__cause__ or cause.__context__
    return "; ".join(texts) or " ".join(str(exc).split()) or type(exc).__name__


def file_size_or_zero(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
