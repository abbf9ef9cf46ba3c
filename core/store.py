"""The feature store: one folder per encoding, the contract between the encoder and the decoder.

Layout (format version 1, see docs/store-format.md):

    STORE/
      manifest.json      what produced the features: model, checkpoint SHA-256, preprocessing and
                         stretch, raster path + fingerprint, CRS (WKT), geotransform, tile grid
      tiles.jsonl        append-only log, one line per finished tile: id, status, CRC-32 (the last line
                         of a tile wins: a tile encoded again appends one)
      tiles/<id>.npy     one flat float16 (or float32) array per tile, all feature maps back to back
                         (offsets in the manifest); plain .npy, memory-mapped, never pickled
      tiles/<id>.valid.npy  the tile's valid-pixel mask packed to bits (np.packbits), only for tiles
                         with nodata inside the raster; its CRC-32 is the log line's `valid_crc32`
      decoder.onnx       prompt encoder + mask decoder for these features
      tile_index.gpkg    tile footprints (id, row, col, status) for QGIS
      .quicksam.lock     only while `quicksam encode` writes the store: its lock, naming the process

Every file is written to a temporary name in the same folder (NAME.PID.tmp) and renamed into place.
Nothing outside the store folder is ever written or deleted. No QGIS, no torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import io
import json
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import StoreError
from .locking import STORE_LOCK
from .tiling import PixelWindow, Tile, TileGrid

FORMAT_NAME = "quicksam-feature-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TILE_LOG = "tiles.jsonl"
TILE_DIR = "tiles"
DECODER_ONNX = "decoder.onnx"
TILE_INDEX = "tile_index.gpkg"
STATUS_DONE = "done"
STATUS_NODATA = "nodata"
STATUS_PENDING = "pending"
#: A tile's valid-pixel mask file: tiles/<id>.valid.npy (only for tiles with nodata inside the raster).
VALID_MASK_SUFFIX = ".valid.npy"
#: In memory only, never logged: a tile logged done whose file failed `verify_tiles` (encoded again on resume).
STATUS_DAMAGED = "damaged"
#: The statuses a tile log line may hold.
LOGGED_STATUSES = (STATUS_DONE, STATUS_NODATA)
#: Manifest fields that must be equal for a run to resume into an existing store.
RESUME_KEYS = (
    ("model", "name"), ("model", "image_size"), ("model", "random_weights"), ("model", "seed"),
    ("checkpoint", "sha256"), ("raster", "fingerprint"), ("preprocessing", "bands"),
    ("preprocessing", "stretch_mode"), ("features", "dtype"), ("grid",),
)


def temporary_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: NAME.PID.tmp, so that no two processes ever
    share a temporary (a resume removes every *.tmp, which it may only do while it holds the store's lock)."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)  # a half-written file would only hold space (a full disk) until the next resume
        raise


def atomic_write_json(path: Path, data: dict) -> None:
    _atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())


@dataclass(frozen=True)
class ArrayLayout:
    """Where one feature map sits in a tile file: (C, H, W) starting at element `offset`."""

    name: str
    shape: Tuple[int, int, int]
    offset: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def feature_layout(specs: Iterable[Tuple[str, Tuple[int, int, int]]]) -> List[ArrayLayout]:
    layout, offset = [], 0
    for name, shape in specs:
        item = ArrayLayout(name, tuple(int(v) for v in shape), offset)
        layout.append(item)
        offset += item.size
    return layout


@dataclass(frozen=True)
class TileRecord:
    """One line of the tile log."""

    tile_id: str
    status: str
    crc32: Optional[int] = None
    valid_fraction: float = 1.0
    #: CRC-32 of the tile's packed valid-pixel mask file; None when the store keeps no mask for the tile
    #: (every pixel inside the raster is valid, or the store was written before masks were kept).
    valid_crc32: Optional[int] = None


def _value_at(data: dict, keys: Tuple[str, ...]):
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def describe_difference(existing: dict, wanted: dict) -> Optional[str]:
    """The first resume-relevant manifest field that differs, said plainly, or None."""
    labels = {"fingerprint": "raster contents", "sha256": "checkpoint", "name": "model",
              "grid": "tile grid (overlap, extent or tile size)"}
    for keys in RESUME_KEYS:
        old, new = _value_at(existing, keys), _value_at(wanted, keys)
        if keys == ("checkpoint", "sha256") and new is None:
            continue  # random weights: identified by model, seed and size, hashed once built
        if old != new:
            label = labels.get(keys[-1], ".".join(keys))
            if keys == ("grid",):
                return f"{label} differs"
            return f"{label}: store has {old!r}, this run has {new!r}"
    return None


# -- manifest validation ---------------------------------------------------------------------------------
# One function per part of the manifest (model, checkpoint, preprocessing, raster, grid, features,
# decoder), each given that part as parsed JSON and its dotted key; `validate_manifest` runs them and
# the checks across parts. They raise ManifestProblem naming the key, and take plain JSON so that a
# typed loader of the manifest can call them before building its records.

#: Largest tile a store may declare, in pixels (8x the models' native 1024 px input).
MAX_TILE_SIZE = 8192
#: Largest raster side a store may declare, in pixels (GDAL's limit).
MAX_RASTER_SIZE = 2**31 - 1
#: Largest feature map side or channel count (SAM's largest: 256 channels, 256 x 256 cells at 1024 px).
MAX_FEATURE_EDGE = 8192
FEATURE_DTYPES = ("float16", "float32")
MODEL_FAMILIES = ("sam2", "sam1")
#: The fields of `decoder.settings` and their types (core.mask_decoding.DecoderSettings).
DECODER_SETTING_TYPES: Mapping[str, type] = {"dynamic_multimask_via_stability": bool, "stability_delta": float,
                                             "stability_thresh": float, "mask_threshold": float}
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestProblem(ValueError):
    """One manifest value that is missing or wrong: `key` is its dotted path (e.g. `grid.tile_size`)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key} {problem}")
        self.key = key
        self.problem = problem


def _shown(value: Any) -> str:
    """A manifest value as it reads in the file (JSON), cut to a short single line."""
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):
        text = "a deeply nested value"
    return text if len(text) <= 60 else text[:57] + "..."


def _member(data: dict, name: str, key: str) -> Any:
    if name not in data:
        raise ManifestProblem(f"{key}.{name}" if key else name, "is missing")
    return data[name]


def _object(value: Any, key: str) -> dict:
    if not isinstance(value, dict):
        raise ManifestProblem(key, f"must be a JSON object, found {_shown(value)}")
    return value


def _list(value: Any, key: str, min_length: int = 0, max_length: Optional[int] = None) -> Sequence:
    """A JSON list (or a tuple, in a manifest built in memory) of an allowed length."""
    if (not isinstance(value, (list, tuple)) or len(value) < min_length
            or (max_length is not None and len(value) > max_length)):
        if max_length is None:
            wanted = "a list with at least one value" if min_length else "a list"
        elif max_length == min_length:
            wanted = f"a list of {min_length} values"
        else:
            wanted = f"a list of {min_length} to {max_length} values"
        raise ManifestProblem(key, f"must be {wanted}, found {_shown(value)}")
    return value


def _integer(value: Any, key: str, low: int, high: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        if low == high:
            wanted = str(low)
        else:
            wanted = f"a positive integer at most {high}" if low == 1 else f"an integer from {low} to {high}"
        raise ManifestProblem(key, f"must be {wanted}{f' ({why})' if why else ''}, found {_shown(value)}")
    return value


def _finite(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManifestProblem(key, f"must be a finite number, found {_shown(value)}")
    return float(value)


def _text(value: Any, key: str, optional: bool = False) -> Optional[str]:
    """A non-empty string; with `optional`, also null or empty (names shown to people, never parsed)."""
    if optional and (value is None or value == ""):
        return value
    if not isinstance(value, str) or not value:
        raise ManifestProblem(key, f"must be a non-empty string{' or null' if optional else ''}, found "
                                   f"{_shown(value)}")
    return value


def _boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ManifestProblem(key, f"must be true or false, found {_shown(value)}")
    return value


def _one_of(value: Any, key: str, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ManifestProblem(key, f"must be {' or '.join(repr(a) for a in allowed)}, found {_shown(value)}")
    return value


def crs_problem(wkt: str) -> Optional[str]:
    """None when the CRS in `wkt` parses, else the parser's complaint.

    Parsed with GDAL's own bindings (osgeo.osr) where they import (always inside QGIS, whose process must
    not load another GDAL), else with rasterio (the headless encoder's declared dependency); with neither
    the CRS is not checked here (QGIS checks it when it opens the store).
    """
    try:
        from osgeo import gdal, osr
    except ImportError:
        return _crs_problem_without_gdal(wkt)
    srs = osr.SpatialReference()
    gdal.PushErrorHandler("CPLQuietErrorHandler")   # GDAL's global exception mode is QGIS's; leave it
    try:
        error = srs.ImportFromWkt(wkt)
    except RuntimeError as exc:
        return str(exc).strip() or "GDAL cannot parse it"
    finally:
        gdal.PopErrorHandler()
    return None if error == 0 else f"GDAL cannot parse it (OGR error {error})"


def _crs_problem_without_gdal(wkt: str) -> Optional[str]:
    try:
        from rasterio.crs import CRS  # a declared dependency of the encoder
        from rasterio.errors import CRSError
    except ImportError:
        return None
    try:
        CRS.from_wkt(wkt)
    except CRSError as exc:
        return str(exc).splitlines()[0] if str(exc) else "it cannot be parsed"
    return None


def check_model(model: Any, key: str = "model") -> dict:
    """The `model` part: name, family, image_size (the tile size, px), random_weights, seed."""
    model = _object(model, key)
    _text(_member(model, "name", key), f"{key}.name")
    _one_of(_member(model, "family", key), f"{key}.family", MODEL_FAMILIES)
    _integer(_member(model, "image_size", key), f"{key}.image_size", 1, MAX_TILE_SIZE)
    _boolean(_member(model, "random_weights", key), f"{key}.random_weights")
    seed = _member(model, "seed", key)
    if seed is not None:
        _integer(seed, f"{key}.seed", -2**63, 2**64 - 1)
    return model


def check_checkpoint(checkpoint: Any, key: str = "checkpoint") -> dict:
    """The `checkpoint` part: sha256 (64 lowercase hex digits, or null before random weights are hashed)."""
    checkpoint = _object(checkpoint, key)
    sha256 = _member(checkpoint, "sha256", key)
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        raise ManifestProblem(f"{key}.sha256", f"must be 64 hexadecimal digits or null, found {_shown(sha256)}")
    _text(checkpoint.get("name"), f"{key}.name", optional=True)
    return checkpoint


def check_preprocessing(preprocessing: Any, key: str = "preprocessing") -> dict:
    """The `preprocessing` part: bands (1 to 3 band numbers), stretch_mode, stretch (low < high per band)."""
    preprocessing = _object(preprocessing, key)
    bands = _list(_member(preprocessing, "bands", key), f"{key}.bands", 1, 3)
    for i, band in enumerate(bands):
        _integer(band, f"{key}.bands[{i}]", 1, MAX_RASTER_SIZE)
    _text(_member(preprocessing, "stretch_mode", key), f"{key}.stretch_mode")
    stretch_key = f"{key}.stretch"
    stretch = _object(_member(preprocessing, "stretch", key), stretch_key)
    _text(_member(stretch, "mode", stretch_key), f"{stretch_key}.mode")
    low = _list(_member(stretch, "low", stretch_key), f"{stretch_key}.low", len(bands), len(bands))
    high = _list(_member(stretch, "high", stretch_key), f"{stretch_key}.high", len(bands), len(bands))
    for i, (lo, hi) in enumerate(zip(low, high)):
        if _finite(hi, f"{stretch_key}.high[{i}]") <= _finite(lo, f"{stretch_key}.low[{i}]"):
            raise ManifestProblem(f"{stretch_key}.high[{i}]", f"must be above {stretch_key}.low[{i}] ({_shown(lo)}), "
                                                             f"found {_shown(hi)}")
    for i, value in enumerate(_list(_member(stretch, "percentiles", stretch_key), f"{stretch_key}.percentiles",
                                    2, 2)):
        _finite(value, f"{stretch_key}.percentiles[{i}]")
    _integer(_member(stretch, "sampled_pixels", stretch_key), f"{stretch_key}.sampled_pixels", 0, 2**63 - 1)
    return preprocessing


def check_geotransform(geotransform: Any, key: str = "raster.geotransform") -> List[float]:
    """GDAL's 6 numbers (x0, pixel width, row rotation, y0, column rotation, pixel height), finite and
    invertible (map_to_pixel divides by the determinant)."""
    values = [_finite(v, f"{key}[{i}]") for i, v in enumerate(_list(geotransform, key, 6, 6))]
    determinant = values[1] * values[5] - values[2] * values[4]
    if determinant == 0 or not math.isfinite(1.0 / determinant):
        raise ManifestProblem(key, f"does not invert (a zero pixel size, or parallel axes), found "
                                   f"{_shown(geotransform)}")
    return values


def check_raster(raster: Any, key: str = "raster") -> dict:
    """The `raster` part: path, fingerprint, width and height (px), crs_wkt (a CRS that parses, see
    `crs_problem`), geotransform (`check_geotransform`)."""
    raster = _object(raster, key)
    _text(_member(raster, "path", key), f"{key}.path")
    _text(_member(raster, "fingerprint", key), f"{key}.fingerprint")
    for name in ("width", "height"):
        _integer(_member(raster, name, key), f"{key}.{name}", 1, MAX_RASTER_SIZE)
    check_geotransform(_member(raster, "geotransform", key), f"{key}.geotransform")
    _text(raster.get("crs_name"), f"{key}.crs_name", optional=True)
    wkt = _text(_member(raster, "crs_wkt", key), f"{key}.crs_wkt")
    problem = crs_problem(wkt)
    if problem:
        raise ManifestProblem(f"{key}.crs_wkt", f"is not a CRS GDAL can read ({problem}), found {_shown(wkt)}")
    return raster


def _check_window(window: Any, key: str, width: int, height: int) -> None:
    window = _object(window, key)
    _exact_keys(window, key, [f.name for f in dataclasses.fields(PixelWindow)])
    col_off = _integer(window["col_off"], f"{key}.col_off", 0, width - 1)
    row_off = _integer(window["row_off"], f"{key}.row_off", 0, height - 1)
    _integer(window["width"], f"{key}.width", 1, width - col_off)
    _integer(window["height"], f"{key}.height", 1, height - row_off)


def _exact_keys(data: dict, key: str, names: Sequence[str]) -> None:
    for name in names:
        _member(data, name, key)
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ManifestProblem(key, f"has an unknown key {_shown(unknown[0])} (known: {', '.join(names)})")


def _check_tile(tile: Any, key: str, index: int, tile_size: int, width: int, height: int) -> Tuple[int, int]:
    tile = _object(tile, key)
    _exact_keys(tile, key, [f.name for f in dataclasses.fields(Tile)])
    _integer(tile["index"], f"{key}.index", index, index, "its place in the list")
    _integer(tile["size"], f"{key}.size", tile_size, tile_size, "grid.tile_size")
    col_off = _integer(tile["col_off"], f"{key}.col_off", 0, width - 1)
    row_off = _integer(tile["row_off"], f"{key}.row_off", 0, height - 1)
    _integer(tile["valid_width"], f"{key}.valid_width", 1, min(tile_size, width - col_off))
    _integer(tile["valid_height"], f"{key}.valid_height", 1, min(tile_size, height - row_off))
    return (_integer(tile["row"], f"{key}.row", 0, MAX_RASTER_SIZE),
            _integer(tile["col"], f"{key}.col", 0, MAX_RASTER_SIZE))


def check_grid(grid: Any, key: str = "grid") -> dict:
    """The `grid` part (tiling.TileGrid.to_dict): raster size, tile_size, overlap, window, and tiles that
    lie inside the raster, numbered in order, each of tile_size, with distinct (row, col)."""
    grid = _object(grid, key)
    width = _integer(_member(grid, "raster_width", key), f"{key}.raster_width", 1, MAX_RASTER_SIZE)
    height = _integer(_member(grid, "raster_height", key), f"{key}.raster_height", 1, MAX_RASTER_SIZE)
    tile_size = _integer(_member(grid, "tile_size", key), f"{key}.tile_size", 1, MAX_TILE_SIZE)
    _integer(_member(grid, "overlap", key), f"{key}.overlap", 0, tile_size - 1)
    _check_window(_member(grid, "window", key), f"{key}.window", width, height)
    tiles = _list(_member(grid, "tiles", key), f"{key}.tiles", 1)
    seen = set()
    for index, tile in enumerate(tiles):
        place = _check_tile(tile, f"{key}.tiles[{index}]", index, tile_size, width, height)
        if place in seen:
            raise ManifestProblem(f"{key}.tiles[{index}]", f"repeats row {place[0]}, col {place[1]}")
        seen.add(place)
    return grid


def check_features(features: Any, key: str = "features") -> dict:
    """The `features` part: dtype (float16 or float32) and arrays laid back to back: each `offset` (in
    elements) is the sum of the sizes before it; `shape` is (C, H, W). `arrays` is empty only in a store
    whose model was not built yet."""
    features = _object(features, key)
    _one_of(_member(features, "dtype", key), f"{key}.dtype", FEATURE_DTYPES)
    offset, names = 0, set()
    for i, item in enumerate(_list(_member(features, "arrays", key), f"{key}.arrays")):
        item_key = f"{key}.arrays[{i}]"
        item = _object(item, item_key)
        name = _text(_member(item, "name", item_key), f"{item_key}.name")
        if name in names:
            raise ManifestProblem(f"{item_key}.name", f"repeats {_shown(name)}")
        names.add(name)
        shape = _list(_member(item, "shape", item_key), f"{item_key}.shape", 3, 3)
        for j, size in enumerate(shape):
            _integer(size, f"{item_key}.shape[{j}]", 1, MAX_FEATURE_EDGE)
        _integer(_member(item, "offset", item_key), f"{item_key}.offset", offset, offset,
                 "the sum of the sizes of the arrays before it")
        offset += math.prod(shape)
    return features


def check_decoder(decoder: Any, key: str = "decoder") -> dict:
    """The `decoder` part: onnx (the file name decoder.onnx) and, once the model is built, settings."""
    decoder = _object(decoder, key)
    _one_of(_member(decoder, "onnx", key), f"{key}.onnx", (DECODER_ONNX,))
    if "settings" in decoder:
        settings_key = f"{key}.settings"
        settings = _object(decoder["settings"], settings_key)
        _exact_keys(settings, settings_key, [name for name in DECODER_SETTING_TYPES if name in settings])
        for name, kind in DECODER_SETTING_TYPES.items():
            if name in settings:
                (_boolean if kind is bool else _finite)(settings[name], f"{settings_key}.{name}")
    return decoder


def validate_manifest(manifest: Any) -> dict:
    """Every part of a manifest (after its format and version are known to be ours) and how the parts
    agree; ManifestProblem naming the first wrong key."""
    manifest = _object(manifest, "the top level")
    check_model(_member(manifest, "model", ""), "model")
    check_checkpoint(_member(manifest, "checkpoint", ""), "checkpoint")
    check_preprocessing(_member(manifest, "preprocessing", ""), "preprocessing")
    raster = check_raster(_member(manifest, "raster", ""), "raster")
    grid = check_grid(_member(manifest, "grid", ""), "grid")
    check_features(_member(manifest, "features", ""), "features")
    check_decoder(_member(manifest, "decoder", ""), "decoder")
    for name in ("width", "height"):
        if grid[f"raster_{name}"] != raster[name]:
            raise ManifestProblem(f"grid.raster_{name}", f"must equal raster.{name} ({raster[name]}), found "
                                                         f"{_shown(grid[f'raster_{name}'])}")
    if manifest["model"]["image_size"] != grid["tile_size"]:
        raise ManifestProblem("model.image_size", f"must equal grid.tile_size ({grid['tile_size']}), found "
                                                  f"{_shown(manifest['model']['image_size'])}")
    return manifest


# -- tile log validation ----------------------------------------------------------------------------------

def tile_record_from_json(data: Any) -> TileRecord:
    """A TileRecord from one parsed tile log line; ValueError saying what is wrong. Keys this version does
    not know are ignored."""
    if not isinstance(data, dict):
        raise ValueError(f"is not a tile record (a JSON object), found {_shown(data)}")
    tile_id, status = data.get("tile_id"), data.get("status")
    if not isinstance(tile_id, str) or not tile_id:
        raise ValueError(f"has no tile_id, found {_shown(tile_id)}")
    if status not in LOGGED_STATUSES:
        raise ValueError(f"tile {tile_id} has status {_shown(status)}, which this QuickSAM does not know "
                         f"({' or '.join(repr(s) for s in LOGGED_STATUSES)})")
    crc32 = data.get("crc32")
    if (status == STATUS_DONE or crc32 is not None) and (
            isinstance(crc32, bool) or not isinstance(crc32, int) or not 0 <= crc32 < 2**32):
        raise ValueError(f"tile {tile_id} has crc32 {_shown(crc32)}, not a CRC-32 (an integer from 0 to 2^32-1)")
    valid_crc32 = data.get("valid_crc32")
    if valid_crc32 is not None and (isinstance(valid_crc32, bool) or not isinstance(valid_crc32, int)
                                    or not 0 <= valid_crc32 < 2**32):
        raise ValueError(f"tile {tile_id} has valid_crc32 {_shown(valid_crc32)}, not a CRC-32 (an integer from 0 to "
                         "2^32-1) or null")
    valid_fraction = data.get("valid_fraction", 1.0)
    if (isinstance(valid_fraction, bool) or not isinstance(valid_fraction, (int, float))
            or not 0.0 <= valid_fraction <= 1.0):
        raise ValueError(f"tile {tile_id} has valid_fraction {_shown(valid_fraction)}, not a number from 0 to 1")
    known = {f.name for f in dataclasses.fields(TileRecord)}
    return TileRecord(**{name: value for name, value in data.items() if name in known})


def _npy_header(path: Path) -> Tuple[np.dtype, Tuple[int, ...], int]:
    """dtype, shape and data offset (bytes) of a .npy file, from its header only."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f".npy version {version[0]}.{version[1]}")
        return dtype, tuple(shape), handle.tell()


def _first_line(exc: BaseException, limit: int = 120) -> str:
    """An exception's message as one short line."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _TileDamage(Exception):
    """What is wrong with a tile's file, in a few words."""


class FeatureStore:
    """A feature store folder. Use `create_or_resume` to write, `open` to read."""

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self._use_manifest(manifest)
        self._records: Optional[Dict[str, TileRecord]] = None
        self._verified: set = set()
        #: Tiles logged done whose file failed `verify_tiles`: id -> what is wrong.
        self._damaged: Dict[str, str] = {}

    def _check_manifest(self, manifest: Any) -> None:
        """StoreError naming the key when any part of `manifest` is missing or wrong (validate_manifest)."""
        try:
            validate_manifest(manifest)
        except ManifestProblem as exc:
            raise StoreError(f"{MANIFEST} of store '{self.root}': {exc}; the store is damaged: encode the raster "
                             "again into a new folder") from None

    def _use_manifest(self, manifest: dict) -> None:
        """What the rest of the class reads from the manifest (validated first)."""
        self._check_manifest(manifest)
        self.manifest = manifest
        self.grid = TileGrid.from_dict(manifest["grid"])
        self.layout = [ArrayLayout(a["name"], tuple(a["shape"]), a["offset"])
                       for a in manifest["features"]["arrays"]]
        self.dtype = np.dtype(manifest["features"]["dtype"])

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: Path) -> FeatureStore:
        """Open an existing store for reading; StoreError saying what is wrong otherwise."""
        root = Path(root)
        manifest_path = root / MANIFEST
        if root.is_file():
            raise StoreError(f"'{root}' is a file, not a QuickSAM feature store folder. If it is a raster, "
                             "encode it first: quicksam encode RASTER STORE (or Processing > QuickSAM > "
                             "Encode raster)")
        if not manifest_path.is_file():
            raise StoreError(f"'{root}' is not a QuickSAM feature store (no {MANIFEST}); choose the folder "
                             "that 'quicksam encode' wrote, or encode the raster into a new folder")
        try:
            manifest = json.loads(manifest_path.read_text())
        except RecursionError:
            raise StoreError(f"{MANIFEST} of store '{root}' is nested too deeply to be a QuickSAM manifest; the "
                             "store is damaged: encode the raster again into a new folder") from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"the manifest of store '{root}' is unreadable ({exc}); encode the raster "
                             "again into a new folder") from exc
        if not isinstance(manifest, dict):
            raise StoreError(f"{MANIFEST} of store '{root}' must hold a JSON object, found {_shown(manifest)}; the "
                             "store is damaged: encode the raster again into a new folder")
        if manifest.get("format") != FORMAT_NAME:
            raise StoreError(f"'{manifest_path}' is not a QuickSAM manifest (its format is "
                             f"{_shown(manifest.get('format'))}, not {FORMAT_NAME!r}); choose the folder that "
                             "'quicksam encode' wrote, or encode the raster again into a new folder")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(f"store '{root}' has format version {_shown(version)}, this QuickSAM reads version "
                             f"{FORMAT_VERSION}; encode the raster again with this version")
        store = cls(root, manifest)
        store.records()   # a damaged tile log is reported on opening, not at the first tile
        return store

    @classmethod
    def create_or_resume(cls, root: Path, manifest: dict) -> FeatureStore:
        """Start a new store in an empty or missing folder, or resume one made with the same settings.

        Refuses (StoreError) a folder that holds anything else, and a store made differently.
        """
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"'{root}' exists and is not a folder; choose a new folder for the store")
        if (root / MANIFEST).is_file():
            store = cls.open(root)
            difference = describe_difference(store.manifest, manifest)
            if difference:
                raise StoreError(f"'{root}' already holds a store made differently ({difference}); "
                                 "choose another output folder, or delete that store yourself to redo it")
            store.discard_partial_writes()
            return store
        if root.is_dir() and any(entry.name != STORE_LOCK for entry in root.iterdir()):
            raise StoreError(f"'{root}' is not empty and is not a QuickSAM store; choose an empty or new "
                             "folder (QuickSAM never overwrites other files)")
        (root / TILE_DIR).mkdir(parents=True, exist_ok=True)
        manifest = dict(manifest, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        atomic_write_json(root / MANIFEST, manifest)
        return cls(root, manifest)

    def update_manifest(self, manifest: dict) -> None:
        """Replace the manifest (atomically) once the model has filled in the feature layout."""
        self._check_manifest(manifest)
        atomic_write_json(self.root / MANIFEST, manifest)
        self._use_manifest(manifest)

    def discard_partial_writes(self) -> None:
        """Remove temporary files and a torn last log line left by a killed run (only inside this store)."""
        leftovers = [*(self.root / TILE_DIR).glob("*.tmp"), *self.root.glob("*.tmp"),
                     *self.root.glob("tile_index.tmp.*.gpkg*")]
        for tmp in leftovers:
            tmp.unlink()
        self._truncate_torn_log_line()

    def _truncate_torn_log_line(self) -> None:
        # A line cut short by a kill would swallow the next appended record; drop the fragment.
        log = self.root / TILE_LOG
        if not log.is_file():
            return
        data = log.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(log, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
                handle.flush()
                os.fsync(handle.fileno())
            self._records = None

    # -- identity ----------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def family(self) -> str:
        return self.manifest["model"]["family"]

    @property
    def image_size(self) -> int:
        return int(self.manifest["model"]["image_size"])

    @property
    def checkpoint_sha256(self) -> str:
        return self.manifest["checkpoint"]["sha256"]

    @property
    def crs_wkt(self) -> str:
        return self.manifest["raster"]["crs_wkt"]

    @property
    def geotransform(self) -> Tuple[float, ...]:
        return tuple(self.manifest["raster"]["geotransform"])

    @property
    def feature_names(self) -> List[str]:
        return [item.name for item in self.layout]

    @property
    def feature_shapes(self) -> Dict[str, Tuple[int, int, int]]:
        """(C, H, W) of each feature map, by name, in file order."""
        return {item.name: item.shape for item in self.layout}

    # -- tile log ----------------------------------------------------------------------------------
    def records(self) -> Dict[str, TileRecord]:
        """Finished tiles by id, read from the log once; the last line of a tile wins (a tile encoded
        again appends a line). StoreError naming the line for a line that is not a record of this
        store's grid, except a torn last line (no newline: a killed run's), which is ignored."""
        if self._records is None:
            self._records = self._read_tile_log()
        return self._records

    def _read_tile_log(self) -> Dict[str, TileRecord]:
        log = self.root / TILE_LOG
        try:
            data = log.read_bytes()   # bytes: a damaged line must not stop the others from being read
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"{TILE_LOG} of store '{self.root}' cannot be read ({exc.strerror}); check the "
                             "folder's permissions") from None
        lines = data.split(b"\n")
        lines.pop()   # what follows the last newline: nothing, or a line torn by a kill
        tile_ids = {tile.tile_id for tile in self.grid}
        records: Dict[str, TileRecord] = {}
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = tile_record_from_json(json.loads(line.decode("utf-8")))
                if record.tile_id not in tile_ids:
                    raise ValueError(f"names tile {record.tile_id}, which is not in the store's grid")
            except UnicodeDecodeError:
                problem = "is not text (binary bytes)"
            except RecursionError:
                problem = "is nested too deeply to be a tile record"
            except ValueError as exc:
                problem = str(exc) if not isinstance(exc, json.JSONDecodeError) else "is not a JSON record"
            else:
                records[record.tile_id] = record
                continue
            raise StoreError(f"{TILE_LOG} of store '{self.root}', line {number}: {problem}; delete that line and "
                             "re-run the same 'quicksam encode' command (it encodes again the tiles the log no "
                             "longer records), or encode the raster again into a new folder")
        return records

    def _append_record(self, record: TileRecord) -> None:
        with open(self.root / TILE_LOG, "a") as handle:
            handle.write(json.dumps(record.__dict__) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records()[record.tile_id] = record

    def status(self, tile: Tile) -> str:
        """done, nodata, pending, or damaged (logged done, failed `verify_tiles`)."""
        if tile.tile_id in self._damaged:
            return STATUS_DAMAGED
        record = self.records().get(tile.tile_id)
        return record.status if record else STATUS_PENDING

    def pending_tiles(self) -> List[Tile]:
        """Tiles to encode: never encoded, or found damaged by `verify_tiles`."""
        return [tile for tile in self.grid if self.status(tile) in (STATUS_PENDING, STATUS_DAMAGED)]

    def verify_tiles(self, tiles: Optional[Iterable[Tile]] = None) -> Dict[str, str]:
        """Check the file of every tile logged done (or of those in `tiles`): present, a .npy of the
        manifest's dtype and length, of the right byte size, and its CRC-32 equal to the log's (read once
        per process; about 8 MB per 1024 px SAM 2 tile). Damaged tiles have status 'damaged' and are
        pending until written again. Returns {tile_id: what is wrong}."""
        found = {}
        for tile in self.grid if tiles is None else tiles:
            record = self.records().get(tile.tile_id)
            if record is None or record.status != STATUS_DONE:
                continue
            problem = self.tile_problem(tile.tile_id) or self._valid_mask_problem(tile, record)
            if problem is not None:
                found[tile.tile_id] = problem
        self._damaged.update(found)
        return found

    def decoder_problem(self) -> Optional[str]:
        """None when decoder.onnx loads in ONNX Runtime and its inputs fit this store's tiles, else what is
        wrong ("is missing", ...). QuickSamError when ONNX Runtime is not installed."""
        from .decoder_file import decoder_file_problem

        return decoder_file_problem(self.root / DECODER_ONNX, self.feature_shapes, self.image_size)

    # -- tile features -----------------------------------------------------------------------------
    def tile_path(self, tile_id: str) -> Path:
        return self.root / TILE_DIR / f"{tile_id}.npy"

    def write_tile(self, tile: Tile, features: Dict[str, np.ndarray], valid_fraction: float,
                   valid_crc32: Optional[int] = None) -> None:
        """Store one tile's feature maps (atomic: temp file + rename, then a log line). `valid_crc32` is
        what `write_valid_mask` returned for the tile (written before, so the log line comes last)."""
        flat = np.concatenate([np.asarray(features[item.name], dtype=self.dtype).reshape(-1)
                               for item in self.layout])
        path = self.tile_path(tile.tile_id)
        tmp = temporary_path(path)
        try:
            with open(tmp, "wb") as handle:
                np.save(handle, flat, allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            _remove_quietly(tmp)
            raise
        self._append_record(TileRecord(tile.tile_id, STATUS_DONE, zlib.crc32(flat.view(np.uint8)),
                                       round(float(valid_fraction), 6), valid_crc32))
        self._damaged.pop(tile.tile_id, None)
        self._verified.add(tile.tile_id)   # its CRC was just taken of the bytes written

    def mark_nodata(self, tile: Tile) -> None:
        """Record a tile with no valid pixel: it is skipped, no features are stored."""
        self._append_record(TileRecord(tile.tile_id, STATUS_NODATA, None, 0.0))

    def load_tile(self, tile_id: str) -> Dict[str, np.ndarray]:
        """Memory-mapped (C, H, W) feature maps of a finished tile; checked against its CRC the first
        time. StoreError naming the tile's file if it is missing, truncated or corrupt."""
        record = self.records().get(tile_id)
        if record is None or record.status != STATUS_DONE:
            state = "has no features (all nodata)" if record else "was not encoded"
            raise StoreError(f"tile {tile_id} of store '{self.root}' {state}; re-run the same "
                             "'quicksam encode' command to finish the store")
        try:
            flat = self._checked_tile(tile_id)
        except _TileDamage as exc:
            raise StoreError(f"tile {tile_id} of store '{self.root}' is damaged: {self._tile_file(tile_id)} {exc}; "
                             "re-run the same 'quicksam encode' command to encode it again, or encode the raster "
                             "again into a new folder") from None
        return {item.name: flat[item.offset:item.offset + item.size].reshape(item.shape)
                for item in self.layout}

    # -- valid-pixel masks -----------------------------------------------------------------------------
    def valid_mask_path(self, tile_id: str) -> Path:
        return self.root / TILE_DIR / f"{tile_id}{VALID_MASK_SUFFIX}"

    def write_valid_mask(self, tile: Tile, valid: np.ndarray) -> Optional[int]:
        """Keep a tile's valid-pixel mask ((size, size) bool, True = data; pixel (col, row) of the tile is
        valid[row, col]) as `tiles/<id>.valid.npy`: np.packbits of the mask in row-major order, a flat uint8
        .npy of ceil(size² / 8) bytes, written atomically. Call before `write_tile`.

        Returns the CRC-32 of the packed bytes, for `write_tile(..., valid_crc32=...)`, or None when every
        pixel inside the raster is valid: then nothing is written (padding is invalid by the grid alone).
        ValueError if the mask is not (size, size).
        """
        valid = np.array(valid, dtype=bool)
        if valid.shape != (tile.size, tile.size):
            raise ValueError(f"a valid mask of tile {tile.tile_id} must be {tile.size} x {tile.size}, "
                             f"not {valid.shape}")
        valid[tile.valid_height:, :] = False  # padding beyond the raster's edge never holds data
        valid[:, tile.valid_width:] = False
        if valid[:tile.valid_height, :tile.valid_width].all():
            return None
        packed = np.packbits(valid.reshape(-1))
        buffer = io.BytesIO()
        np.save(buffer, packed, allow_pickle=False)
        _atomic_write_bytes(self.valid_mask_path(tile.tile_id), buffer.getvalue())
        return zlib.crc32(packed.tobytes())

    def load_valid_mask(self, tile: Tile) -> np.ndarray:
        """(size, size) bool, True where the tile has data (raster pixel (tile.col_off + col,
        tile.row_off + row) at [row, col]); padding beyond the raster's edge is False.

        A nodata tile is all False. A done tile without a recorded mask (every pixel inside the raster
        valid, or a store written before masks were kept) is True inside the raster. StoreError naming
        the tile when it is not encoded or its mask file is missing, the wrong size or corrupt.
        """
        record = self.records().get(tile.tile_id)
        if record is None or record.status not in (STATUS_DONE, STATUS_NODATA):
            raise StoreError(f"tile {tile.tile_id} of store '{self.root}' was not encoded; re-run the same "
                             "'quicksam encode' command to finish the store")
        inside = np.zeros((tile.size, tile.size), dtype=bool)
        if record.status == STATUS_NODATA:
            return inside
        inside[:tile.valid_height, :tile.valid_width] = True
        if record.valid_crc32 is None:
            return inside
        packed = self._read_packed_mask(tile, record.valid_crc32)
        return np.unpackbits(packed, count=tile.size * tile.size).reshape(tile.size, tile.size).astype(bool) & inside

    def _read_packed_mask(self, tile: Tile, crc32: int) -> np.ndarray:
        """The packed mask bytes of a tile, checked for size, type and CRC (StoreError naming the tile)."""
        path = self.valid_mask_path(tile.tile_id)
        try:
            packed = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, SyntaxError, TokenError) as exc:
            raise StoreError(f"the valid-pixel mask of tile {tile.tile_id} of store '{self.root}' is missing or "
                             f"unreadable ({exc}); delete that tile's line from tiles.jsonl and re-run the same "
                             "'quicksam encode' command, or re-encode into a new folder") from exc
        if packed.dtype != np.uint8 or packed.shape != ((tile.size * tile.size + 7) // 8,):
            raise StoreError(f"the valid-pixel mask of tile {tile.tile_id} of store '{self.root}' has the wrong "
                             "size or type; the store is corrupt: re-encode into a new folder")
        if zlib.crc32(packed.tobytes()) != crc32:
            raise StoreError(f"the valid-pixel mask of tile {tile.tile_id} of store '{self.root}' is corrupt "
                             "(checksum mismatch); re-encode into a new folder")
        return packed

    def _valid_mask_problem(self, tile: Tile, record: TileRecord) -> Optional[str]:
        """None when the tile keeps no valid-pixel mask or its mask file is intact, else what is wrong."""
        if record.valid_crc32 is None:
            return None
        try:
            self._read_packed_mask(tile, record.valid_crc32)
        except StoreError as exc:
            return str(exc)
        return None

    def tile_problem(self, tile_id: str) -> Optional[str]:
        """None when the file of a tile logged done is intact (see `verify_tiles`), else what is wrong."""
        try:
            self._checked_tile(tile_id)
        except _TileDamage as exc:
            return f"{self._tile_file(tile_id)} {exc}"
        return None

    def _tile_file(self, tile_id: str) -> str:
        return f"{TILE_DIR}/{self.tile_path(tile_id).name}"

    def _checked_tile(self, tile_id: str) -> np.ndarray:
        """The tile's flat memory-mapped array after a header and size check and (once) its CRC-32;
        _TileDamage otherwise."""
        path = self.tile_path(tile_id)
        expected = sum(item.size for item in self.layout)
        if expected == 0:
            raise _TileDamage("cannot be read: the manifest lists no feature arrays (features.arrays is empty)")
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise _TileDamage("is missing") from None
        except OSError as exc:
            raise _TileDamage(f"cannot be read ({exc.strerror})") from None
        if size == 0:
            raise _TileDamage("is empty (0 bytes)")
        try:
            dtype, shape, offset = _npy_header(path)
        except (OSError, ValueError, SyntaxError, TokenError, TypeError) as exc:  # numpy tokenizes the header
            raise _TileDamage(f"is not a readable .npy array ({_first_line(exc)})") from None
        if dtype != self.dtype or shape != (expected,):
            raise _TileDamage(f"holds an array of shape {shape} and type {dtype}; the manifest's feature "
                              f"layout needs ({expected},) {self.dtype}")
        if size != offset + expected * self.dtype.itemsize:
            raise _TileDamage(f"is {size} bytes, {offset + expected * self.dtype.itemsize} expected "
                              "(truncated or extended)")
        flat = np.memmap(path, dtype=self.dtype, mode="r", offset=offset, shape=(expected,))
        if tile_id not in self._verified:
            if zlib.crc32(flat.view(np.uint8)) != self.records()[tile_id].crc32:
                raise _TileDamage(f"does not match its CRC-32 in {TILE_LOG} (the file is corrupt)")
            self._verified.add(tile_id)
        return flat

    # -- summary -----------------------------------------------------------------------------------
    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def summary(self) -> dict:
        """What `quicksam info` prints. Verifies every tile (`verify_tiles`) and the decoder: `complete`
        only when no tile is pending or damaged and the decoder loads and fits."""
        damaged = self.verify_tiles()
        decoder_problem = self.decoder_problem()
        counts: Dict[str, int] = {}
        for tile in self.grid:
            status = self.status(tile)
            counts[status] = counts.get(status, 0) + 1
        raster = self.manifest["raster"]
        return {
            "store": str(self.root),
            "model": self.model_name,
            "random_weights": self.manifest["model"]["random_weights"],
            "checkpoint_sha256": self.checkpoint_sha256,
            "checkpoint": self.manifest["checkpoint"].get("name"),
            "crs": raster.get("crs_name"),
            "raster": raster["path"],
            "raster_size": [raster["width"], raster["height"]],
            "bands": self.manifest["preprocessing"]["bands"],
            "tile_size": self.grid.tile_size,
            "overlap": self.grid.overlap,
            "tiles": len(self.grid),
            "tiles_done": counts.get(STATUS_DONE, 0),
            "tiles_nodata": counts.get(STATUS_NODATA, 0),
            "tiles_pending": counts.get(STATUS_PENDING, 0),
            "tiles_damaged": len(damaged),
            "damaged_tiles": damaged,
            "decoder_problem": decoder_problem,
            "complete": counts.get(STATUS_PENDING, 0) == 0 and not damaged and decoder_problem is None,
            "feature_dtype": str(self.dtype),
            "bytes_on_disk": self.bytes_on_disk(),
        }
