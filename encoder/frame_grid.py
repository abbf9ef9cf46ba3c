"""Every frame of a series on one pixel grid: frame 0's (rasterio; no QGIS).

A frame on the grid (same size, geotransform within GRID_TOLERANCE of a pixel, same CRS) is read as it is. A
frame on another grid (shifted, another resolution or CRS) is read through a warped VRT (GDAL's warper, the
resampling chosen, e.g. bilinear) that puts it on the grid: a small XML file the encoder's WindowReader opens
like any raster. Pixels of the grid that the frame does not cover are invalid (nodata in the VRT). A frame
that does not overlap the grid at all is refused before anything is written.

Coordinates: geotransforms are GDAL's 6-tuples in the grid's CRS (`crs_wkt`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

from ..core.errors import QuickSamError
from .raster import RasterInfo

#: GDAL resamplings a frame may be brought onto the grid with (--frame-resampling).
FRAME_RESAMPLINGS = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode")
DEFAULT_FRAME_RESAMPLING = "bilinear"
#: Geotransforms closer than this fraction of a pixel are the same grid.
GRID_TOLERANCE = 1e-6


@dataclass(frozen=True)
class PixelGrid:
    """A pixel grid: `width` x `height` pixels, GDAL `geotransform`, CRS as WKT."""

    width: int
    height: int
    geotransform: Tuple[float, float, float, float, float, float]
    crs_wkt: str

    @classmethod
    def of(cls, info: RasterInfo) -> PixelGrid:
        return cls(info.width, info.height, tuple(info.geotransform), info.crs_wkt)


def same_crs(a_wkt: str, b_wkt: str) -> bool:
    """Whether two WKT strings are one CRS (rasterio's comparison, not the text)."""
    from rasterio.crs import CRS

    return a_wkt == b_wkt or CRS.from_wkt(a_wkt) == CRS.from_wkt(b_wkt)


def on_grid(info: RasterInfo, grid: PixelGrid) -> bool:
    """Whether the raster `info` is on `grid`: same size, same CRS, geotransform within GRID_TOLERANCE pixel."""
    if (info.width, info.height) != (grid.width, grid.height) or not same_crs(info.crs_wkt, grid.crs_wkt):
        return False
    pixel = math.hypot(grid.geotransform[1], grid.geotransform[4]) or 1.0
    return all(abs(a - b) <= GRID_TOLERANCE * pixel for a, b in zip(info.geotransform, grid.geotransform))


def grid_bounds(grid: PixelGrid) -> Tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of the grid in its CRS."""
    from rasterio.transform import Affine, array_bounds

    left, bottom, right, top = array_bounds(grid.height, grid.width, Affine.from_gdal(*grid.geotransform))
    return min(left, right), min(bottom, top), max(left, right), max(bottom, top)


def overlaps_grid(info: RasterInfo, grid: PixelGrid) -> bool:
    """Whether the raster's area, brought into the grid's CRS, overlaps the grid's (an area in common, not only an
    edge)."""
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    bounds = info.bounds
    if not same_crs(info.crs_wkt, grid.crs_wkt):
        try:
            bounds = transform_bounds(CRS.from_wkt(info.crs_wkt), CRS.from_wkt(grid.crs_wkt), *bounds)
        except Exception:  # noqa: BLE001 - a CRS pair PROJ cannot relate has no overlap to speak of
            return False
    xmin, ymin, xmax, ymax = grid_bounds(grid)
    return bounds[0] < xmax and bounds[2] > xmin and bounds[1] < ymax and bounds[3] > ymin


def plain_number(value: float) -> str:
    """A coordinate as people write it: no exponent, no trailing zeros (4997440, 12.5, 0.000123)."""
    return f"{round(value, 6):f}".rstrip("0").rstrip(".") or "0"


def crs_name(crs_wkt: str) -> str:
    """A CRS as a short name: its authority code ("EPSG:32633"), else its name."""
    from rasterio.crs import CRS

    crs = CRS.from_wkt(crs_wkt)
    authority = crs.to_authority()
    return f"{authority[0]}:{authority[1]}" if authority else (crs.to_dict().get("proj") or "its own CRS")


def bounds_text(bounds: Tuple[float, float, float, float], crs_wkt: str) -> str:
    """"xmin, ymin, xmax, ymax in EPSG:n", in plain numbers."""
    return ", ".join(plain_number(value) for value in bounds) + f" in {crs_name(crs_wkt)}"


def check_overlap(info: RasterInfo, grid: PixelGrid, name: str, grid_name: str) -> None:
    """QuickSamError naming the frame, with its bounds and the grid's (each in its own CRS), when it does not
    overlap the grid."""
    if not overlaps_grid(info, grid):
        raise QuickSamError(f"frame {name} (bounds {bounds_text(tuple(info.bounds), info.crs_wkt)}) does not overlap "
                            f"{grid_name} (bounds {bounds_text(grid_bounds(grid), grid.crs_wkt)}): every frame must "
                            "show the same area; leave it out of the series")


def check_resampling(name: str) -> str:
    """`name` when it is one of FRAME_RESAMPLINGS; QuickSamError listing them otherwise."""
    if name not in FRAME_RESAMPLINGS:
        raise QuickSamError(f"--frame-resampling {name!r} is not one of {', '.join(FRAME_RESAMPLINGS)}")
    return name


def write_warped_vrt(source: str, grid: PixelGrid, resampling: str, target: Path) -> Path:
    """Write `target`, a warped VRT that reads `source` on `grid` with `resampling` (FRAME_RESAMPLINGS), atomically
    (temp file + rename; the same XML for the same inputs). Grid pixels the source does not cover are nodata: the
    source's nodata value, or 0 and False in the mask of an added alpha band when it has none. The source is named
    by its absolute path, so the VRT may be moved."""
    import os

    import rasterio
    import rasterio.shutil
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.transform import Affine
    from rasterio.vrt import WarpedVRT

    path = str(Path(source).resolve()) if Path(source).exists() else source
    temporary = target.with_name(target.name + ".tmp.vrt")
    with rasterio.open(path) as src, WarpedVRT(
            src, crs=CRS.from_wkt(grid.crs_wkt), transform=Affine.from_gdal(*grid.geotransform), width=grid.width,
            height=grid.height, resampling=Resampling[resampling], add_alpha=src.nodata is None) as vrt:
        rasterio.shutil.copy(vrt, str(temporary), driver="VRT")
    os.replace(temporary, target)
    return target
