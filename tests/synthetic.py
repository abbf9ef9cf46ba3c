"""Synthetic rasters with known content at known coordinates, and a cached tiny random model.

Plain helper functions (no fixtures), so any test module can use them. Rasters are written with
rasterio as GeoTIFFs. Unless told otherwise a raster is in EPSG:32633 (UTM 33N) with 10 m square pixels
and its top-left corner at (500000, 4200000): pixel (col, row) covers
x in [500000 + 10 col, 500000 + 10 (col + 1)] and y in [4200000 - 10 (row + 1), 4200000 - 10 row].
"""

from __future__ import annotations

import contextlib
import functools
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from rasterio.transform import Affine

ORIGIN = (500000.0, 4200000.0)
PIXEL_SIZE = 10.0
CRS = "EPSG:32633"
#: Small model inputs only: 256 px tiles take ~0.15 s with the random tiny SAM2.1 model.
TILE_SIZE = 256
MODEL = "sam2.1_hiera_t"
#: The real Landsat 7 ETM+ subset (6 bands uint8, 349 x 352 px, EPSG:31985) kept beside the repository, in
#: ../shared/data (its README.md there says where it comes from); read it through `landsat_path()`.
LANDSAT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "L7_ETMs.tif"


def landsat_path() -> Path:
    """`LANDSAT`, the real Landsat 7 test raster; skips the calling test, naming the missing file and where it
    comes from, when it is absent (it lives outside the repository)."""
    if not LANDSAT.is_file():
        import pytest

        pytest.skip(f"test raster {LANDSAT} is missing: it is the Landsat 7 subset L7_ETMs.tif of Debian's "
                    f"r-cran-stars package, expected in {LANDSAT.parent} (see README.md there)")
    return LANDSAT


def default_transform(pixel_width: float = PIXEL_SIZE, pixel_height: float = PIXEL_SIZE,
                      origin: Tuple[float, float] = ORIGIN) -> Affine:
    """North-up geotransform with the top-left corner at `origin` (map units, the raster's CRS)."""
    return Affine(pixel_width, 0.0, origin[0], 0.0, -pixel_height, origin[1])


def write_raster(path: Path, data: np.ndarray, crs: Optional[str] = CRS,
                 transform: Optional[Affine] = None, nodata: Optional[float] = None,
                 dtype: Optional[str] = None, colorinterp: Optional[Sequence[str]] = None,
                 mask: Optional[np.ndarray] = None, georeferenced: bool = True) -> Path:
    """Write `data` ((bands, rows, cols) or (rows, cols)) as a GeoTIFF and return its path.

    `transform` defaults to `default_transform()`; `georeferenced=False` writes neither CRS nor
    geotransform. `colorinterp` names ColorInterp members per band ('red', 'alpha', 'undefined', ...).
    `mask` (rows, cols; True = valid) is written as the dataset's internal GDAL mask band.
    """
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.errors import NotGeoreferencedWarning

    data = np.asarray(data)
    if data.ndim == 2:
        data = data[np.newaxis]
    dtype = dtype or str(data.dtype)
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=dtype, nodata=nodata)
    if colorinterp is not None and colorinterp[-1] == "alpha":
        profile["alpha"] = "YES"  # GTiff only keeps an alpha band declared at creation (EXTRASAMPLES)
    if georeferenced:
        profile.update(crs=crs, transform=transform if transform is not None else default_transform())
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data.astype(dtype))
            if colorinterp is not None:
                dst.colorinterp = [ColorInterp[name] for name in colorinterp]
            if mask is not None:
                dst.write_mask(np.where(mask, 255, 0).astype(np.uint8))
    return path


def gradient(width: int, height: int, bands: int = 3, dtype: str = "uint8") -> np.ndarray:
    """(bands, height, width) where band b at (col, row) holds (col + 2 row + 7 b) mod 251: every
    pixel of a band differs from its right and lower neighbours, so a shifted read shows."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([(cols + 2 * rows + 7 * b) % 251 for b in range(bands)]).astype(dtype)


def square_scene(width: int, height: int, square: Tuple[int, int, int],
                 background: int = 40, foreground: int = 200) -> np.ndarray:
    """(3, height, width) uint8: a bright square on a dark background.

    `square` is (col_off, row_off, size) in pixels; with the default transform its map corners are
    `pixel_to_map_default(col_off, row_off)` and `pixel_to_map_default(col_off + size, row_off + size)`.
    """
    col_off, row_off, size = square
    data = np.full((3, height, width), background, dtype=np.uint8)
    data[:, row_off:row_off + size, col_off:col_off + size] = foreground
    return data


#: `two_squares_scene()`: its size in pixels and its bright squares as (col_off, row_off, size) in pixels.
TWO_SQUARES_WIDTH, TWO_SQUARES_HEIGHT = 320, 300
TWO_SQUARES = ((40, 40, 70), (200, 170, 80))


def two_squares_scene() -> np.ndarray:
    """(3, 300, 320) uint8: two bright squares (`TWO_SQUARES`) on a dark background and a third, darker patch
    in band 2 (rows 120-139, cols 150-189), so the scene is not symmetric. Encoded in 256 px tiles with a 64 px
    overlap it makes 2 x 2 tiles (the `store_path` fixture)."""
    data = np.full((3, TWO_SQUARES_HEIGHT, TWO_SQUARES_WIDTH), 40, dtype=np.uint8)
    for col, row, size in TWO_SQUARES:
        data[:, row:row + size, col:col + size] = 210
    data[1, 120:140, 150:190] = 120
    return data


def pixel_to_map_default(col: float, row: float) -> Tuple[float, float]:
    """Map coordinates (EPSG:32633) of a continuous pixel position under `default_transform()`."""
    return ORIGIN[0] + col * PIXEL_SIZE, ORIGIN[1] - row * PIXEL_SIZE


def box_at(col0: float, row0: float, col1: float, row1: float) -> Tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) map box of a pixel rectangle under `default_transform()`."""
    (x0, y0), (x1, y1) = pixel_to_map_default(col0, row0), pixel_to_map_default(col1, row1)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def assert_same_geometry(actual: Any, expected: Any, tolerance: float = 1e-6) -> None:
    """Two polygons equal vertex by vertex within `tolerance` (map units), after putting both in normal form.

    `actual` is a shapely geometry; `expected` a shapely geometry or anything with a `wkb` attribute (the
    engine's `Polygons`). The tolerance absorbs float noise (coordinates written to an output
    file and read back, equivalent arithmetic in another order), far below a 10 m pixel."""
    import shapely
    import shapely.wkb

    if not hasattr(expected, "geom_type"):  # the engine's WKB polygons
        expected = shapely.wkb.loads(expected.wkb)
    assert not expected.is_empty
    assert shapely.equals_exact(shapely.normalize(actual), shapely.normalize(expected), tolerance=tolerance)


def assert_one_line_error(result: subprocess.CompletedProcess, hint: str) -> None:
    """Exit 1, exactly one stderr line, starting 'quicksam: error:', matching `hint` (what to do); no
    traceback and nothing on stdout."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("quicksam: error: ")
    assert re.search(hint, lines[0]), f"{hint!r} not in {lines[0]!r}"
    assert result.stdout == ""


def file_states(folder: Path) -> Dict[str, Tuple[bytes, int]]:
    """{relative path: (bytes, mtime_ns)} of every file under `folder`: equal before and after means
    nothing was written, replaced or deleted."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def cli_command(*args: object) -> List[str]:
    """The command line `python -m quicksam.cli ARGS` with this test's interpreter, every argument a string."""
    return [sys.executable, "-m", "quicksam.cli", *map(str, args)]


def run_cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m quicksam.cli ARGS` in a fresh process; text output captured."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout)


def encode_args(raster: Path, store: Path, *extra: str, overlap: int = 32) -> List[str]:
    """`quicksam encode` arguments with the small test model (random weights, 256 px tiles)."""
    return ["encode", str(raster), str(store), "--random-weights", "--tile-size", str(TILE_SIZE),
            "--overlap", str(overlap), *extra]


class RecordingModel:
    """A model wrapper that keeps a copy of every (S, S, 3) uint8 tile the pipeline feeds it, in order;
    everything else is the wrapped model's."""

    def __init__(self, model: object):
        self.model = model
        self.inputs: List[np.ndarray] = []

    def encode(self, tiles: np.ndarray) -> List[Dict[str, np.ndarray]]:
        self.inputs.extend(np.array(tile) for tile in tiles)
        return self.model.encode(tiles)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


@functools.lru_cache(maxsize=2)
def random_model(tile_size: int = TILE_SIZE, seed: int = 0) -> Any:
    """The seeded random tiny SAM2.1 model, built once per test process (about 2 s)."""
    from quicksam.encoder.models import build_model

    return build_model(MODEL, checkpoint=None, seed=seed, device="cpu", image_size=tile_size)


def encode(raster: Path, store: Path, progress: Optional[Callable[[Any], None]] = None,
           cancelled: Optional[Callable[[], bool]] = None, model: Optional[object] = None,
           **request_fields: Any) -> Tuple[Any, Any]:
    """`encode_raster` with the cached random model and 256 px tiles; returns (FeatureStore, EncodeStats).

    `request_fields` are EncodeRequest fields (overlap defaults to 32 px here)."""
    from quicksam.encoder.pipeline import EncodeRequest, encode_raster

    fields = dict(model=MODEL, tile_size=TILE_SIZE, overlap=32, device="cpu")
    fields.update(request_fields)
    request = EncodeRequest(raster=str(raster), store=Path(store), **fields)
    model = model if model is not None else random_model(fields["tile_size"], fields.get("seed", 0))
    return encode_raster(request, progress=progress, cancelled=cancelled, model=model)


@contextlib.contextmanager
def gdal_exceptions_on():
    """GDAL, OGR and OSR raising exceptions, as QGIS 3.40's Processing leaves them for the whole process
    (3.22 leaves them off); the previous modes come back afterwards."""
    from osgeo import gdal, ogr, osr

    modules = (gdal, ogr, osr)
    if hasattr(gdal, "ExceptionMgr"):  # GDAL >= 3.7
        with contextlib.ExitStack() as stack:
            for module in modules:
                stack.enter_context(module.ExceptionMgr(useExceptions=True))
            yield
        return
    switched = [module for module in modules if not module.GetUseExceptions()]
    for module in switched:
        module.UseExceptions()
    try:
        yield
    finally:
        for module in reversed(switched):  # GDAL < 3.7 pops them as a stack
            module.DontUseExceptions()


def two_tile_store(folder: Path):
    """A store of a 400 x 256 px scene of squares in two 256 px tiles with a 64 px overlap (random weights)."""
    raster = write_raster(folder / "scene.tif", square_scene(400, 256, (170, 90, 60)))
    store, _ = encode(raster, folder / "store", overlap=64)
    assert len(store.grid) == 2
    return store


def encoded_square_scene(folder: Path, square: Tuple[int, int, int], size: int = 300, **encode_options: Any) -> Path:
    """`folder` with scene.tif (a `square_scene` of size x size px) and its store scene.qsam (random weights)."""
    raster = write_raster(folder / "scene.tif", square_scene(size, size, square))
    encode(raster, folder / "scene.qsam", **encode_options)
    return folder


def fresh_copy(folder: Path, tmp_path: Path) -> Path:
    """A copy of an encoded scene folder for one test (tests write objects into the store)."""
    shutil.copytree(folder, tmp_path / "scene")
    return tmp_path / "scene"
