"""Checks of a parsed manifest.json, part by part, before any record is built (no QGIS, no torch).

One function per part of the manifest (model, checkpoint, preprocessing, raster, grid, features,
decoder), each given that part as parsed JSON and its dotted key; `validate_manifest` runs them and the
checks across parts. They raise ManifestProblem naming the key (e.g. `grid.tile_size`); the typed records of
core/manifest.py are built only from a manifest that passed. Every readable format version is checked here:
version 1 also holds `preprocessing.stretch_mode` and `grid.raster_width/height` (docs/store-format.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from .levels import MAX_LEVEL_FACTOR
from .store_layout import DECODER_ONNX
from .tile_codec import FEATURE_CODECS, FEATURE_DTYPES, QUANTISED_DTYPE
from .tiling import PixelWindow, Tile

#: Largest tile a store may declare, in pixels (8x the models' native 1024 px input).
MAX_TILE_SIZE = 8192
#: Largest raster side a store may declare, in pixels (GDAL's limit).
MAX_RASTER_SIZE = 2**31 - 1
#: Largest feature map side or channel count (SAM's largest: 256 channels, 256 x 256 cells at 1024 px).
MAX_FEATURE_EDGE = 8192
MODEL_FAMILIES = ("sam2", "sam1")
#: The fields of `decoder.settings` and their types (core.mask_decoding.DecoderSettings).
DECODER_SETTING_TYPES: Mapping[str, type] = {"dynamic_multimask_via_stability": bool, "stability_delta": float,
                                             "stability_thresh": float, "mask_threshold": float}
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestProblem(ValueError):
    """One manifest value that is missing or wrong: `key` is its dotted path (e.g. `grid.tile_size`)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key} {problem}")
        self.key = key
        self.problem = problem


def shown(value: Any) -> str:
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
        raise ManifestProblem(key, f"must be a JSON object, found {shown(value)}")
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
        raise ManifestProblem(key, f"must be {wanted}, found {shown(value)}")
    return value


def _integer(value: Any, key: str, low: int, high: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        if low == high:
            wanted = str(low)
        else:
            wanted = f"a positive integer at most {high}" if low == 1 else f"an integer from {low} to {high}"
        raise ManifestProblem(key, f"must be {wanted}{f' ({why})' if why else ''}, found {shown(value)}")
    return value


def _finite(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManifestProblem(key, f"must be a finite number, found {shown(value)}")
    return float(value)


def _text(value: Any, key: str, optional: bool = False) -> Optional[str]:
    """A non-empty string; with `optional`, also null or empty (names shown to people, never parsed)."""
    if optional and (value is None or value == ""):
        return value
    if not isinstance(value, str) or not value:
        raise ManifestProblem(key, f"must be a non-empty string{' or null' if optional else ''}, found "
                                   f"{shown(value)}")
    return value


def _boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ManifestProblem(key, f"must be true or false, found {shown(value)}")
    return value


def _one_of(value: Any, key: str, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ManifestProblem(key, f"must be {' or '.join(repr(a) for a in allowed)}, found {shown(value)}")
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


def _optional_text(data: dict, name: str, key: str) -> None:
    """`data[name]`, when present, is a string or null (a field shown to people, never parsed)."""
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise ManifestProblem(f"{key}.{name}" if key else name, f"must be a string or null, found {shown(value)}")


def check_model(model: Any, key: str = "model") -> dict:
    """The `model` part: name, family, image_size (the tile size, px), random_weights, seed, config."""
    model = _object(model, key)
    _text(_member(model, "name", key), f"{key}.name")
    _optional_text(model, "config", key)
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
        raise ManifestProblem(f"{key}.sha256", f"must be 64 hexadecimal digits or null, found {shown(sha256)}")
    _text(checkpoint.get("name"), f"{key}.name", optional=True)
    _optional_text(checkpoint, "source", key)
    return checkpoint


def check_preprocessing(preprocessing: Any, key: str = "preprocessing", version: int = 2) -> dict:
    """The `preprocessing` part: bands (1 to 3 band numbers), stretch (low < high per band), nodata_fill;
    in version 1 also stretch_mode."""
    preprocessing = _object(preprocessing, key)
    bands = _list(_member(preprocessing, "bands", key), f"{key}.bands", 1, 3)
    for i, band in enumerate(bands):
        _integer(band, f"{key}.bands[{i}]", 1, MAX_RASTER_SIZE)
    if version == 1:
        _text(_member(preprocessing, "stretch_mode", key), f"{key}.stretch_mode")
    if "nodata_fill" in preprocessing:
        _integer(preprocessing["nodata_fill"], f"{key}.nodata_fill", 0, 255)
    stretch_key = f"{key}.stretch"
    stretch = _object(_member(preprocessing, "stretch", key), stretch_key)
    _text(_member(stretch, "mode", stretch_key), f"{stretch_key}.mode")
    low = _list(_member(stretch, "low", stretch_key), f"{stretch_key}.low", len(bands), len(bands))
    high = _list(_member(stretch, "high", stretch_key), f"{stretch_key}.high", len(bands), len(bands))
    for i, (lo, hi) in enumerate(zip(low, high)):
        if _finite(hi, f"{stretch_key}.high[{i}]") <= _finite(lo, f"{stretch_key}.low[{i}]"):
            raise ManifestProblem(f"{stretch_key}.high[{i}]", f"must be above {stretch_key}.low[{i}] ({shown(lo)}), "
                                                             f"found {shown(hi)}")
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
                                   f"{shown(geotransform)}")
    return values


def check_raster(raster: Any, key: str = "raster") -> dict:
    """The `raster` part: path, fingerprint, width and height (px), crs_wkt (a CRS that parses, see
    `crs_problem`), geotransform (`check_geotransform`); count, dtypes and nodata when present."""
    raster = _object(raster, key)
    _text(_member(raster, "path", key), f"{key}.path")
    _check_raster_bands(raster, key)
    _text(_member(raster, "fingerprint", key), f"{key}.fingerprint")
    for name in ("width", "height"):
        _integer(_member(raster, name, key), f"{key}.{name}", 1, MAX_RASTER_SIZE)
    check_geotransform(_member(raster, "geotransform", key), f"{key}.geotransform")
    _text(raster.get("crs_name"), f"{key}.crs_name", optional=True)
    wkt = _text(_member(raster, "crs_wkt", key), f"{key}.crs_wkt")
    problem = crs_problem(wkt)
    if problem:
        raise ManifestProblem(f"{key}.crs_wkt", f"is not a CRS GDAL can read ({problem}), found {shown(wkt)}")
    return raster


def _check_raster_bands(raster: dict, key: str) -> None:
    """count (bands), dtypes (one numpy type name per band) and nodata (a number, NaN too, or null), each
    optional: what the raster was, shown by `quicksam info`, never used to decode."""
    if raster.get("count") is not None:
        _integer(raster["count"], f"{key}.count", 1, MAX_RASTER_SIZE)
    for i, name in enumerate(_list(raster.get("dtypes", []), f"{key}.dtypes")):
        _text(name, f"{key}.dtypes[{i}]")
    nodata = raster.get("nodata")
    if nodata is not None and (isinstance(nodata, bool) or not isinstance(nodata, (int, float))):
        raise ManifestProblem(f"{key}.nodata", f"must be a number or null, found {shown(nodata)}")


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
        raise ManifestProblem(key, f"has an unknown key {shown(unknown[0])} (known: {', '.join(names)})")


def _check_tile(tile: Any, key: str, index: int, tile_size: int, width: int, height: int) -> Tuple[bool, int, int]:
    tile = _object(tile, key)
    _exact_keys(tile, key, [f.name for f in dataclasses.fields(Tile) if f.name != "extra" or "extra" in tile])
    if "extra" in tile:
        _boolean(tile["extra"], f"{key}.extra")
    _integer(tile["index"], f"{key}.index", index, index, "its place in the list")
    _integer(tile["size"], f"{key}.size", tile_size, tile_size, "grid.tile_size")
    col_off = _integer(tile["col_off"], f"{key}.col_off", 0, width - 1)
    row_off = _integer(tile["row_off"], f"{key}.row_off", 0, height - 1)
    _integer(tile["valid_width"], f"{key}.valid_width", 1, min(tile_size, width - col_off))
    _integer(tile["valid_height"], f"{key}.valid_height", 1, min(tile_size, height - row_off))
    return (bool(tile.get("extra", False)), _integer(tile["row"], f"{key}.row", 0, MAX_RASTER_SIZE),
            _integer(tile["col"], f"{key}.col", 0, MAX_RASTER_SIZE))


def check_grid(grid: Any, key: str = "grid", raster_size: Optional[Tuple[int, int]] = None) -> dict:
    """The `grid` part: tile_size, overlap, window, and tiles that lie inside the raster of `raster_size`
    (width, height px), numbered in order, each of tile_size, with distinct (row, col). Without
    `raster_size` (version 1, tiling.TileGrid.to_dict) the grid holds raster_width and raster_height."""
    grid = _object(grid, key)
    if raster_size is None:
        width = _integer(_member(grid, "raster_width", key), f"{key}.raster_width", 1, MAX_RASTER_SIZE)
        height = _integer(_member(grid, "raster_height", key), f"{key}.raster_height", 1, MAX_RASTER_SIZE)
    else:
        width, height = raster_size
    tile_size = _integer(_member(grid, "tile_size", key), f"{key}.tile_size", 1, MAX_TILE_SIZE)
    _integer(_member(grid, "overlap", key), f"{key}.overlap", 0, tile_size - 1)
    _check_window(_member(grid, "window", key), f"{key}.window", width, height)
    tiles = _list(_member(grid, "tiles", key), f"{key}.tiles", 1)
    seen = set()
    for index, tile in enumerate(tiles):
        place = _check_tile(tile, f"{key}.tiles[{index}]", index, tile_size, width, height)
        if place in seen:
            raise ManifestProblem(f"{key}.tiles[{index}]", f"repeats row {place[1]}, col {place[2]}")
        seen.add(place)
    return grid


def check_features(features: Any, key: str = "features") -> dict:
    """The `features` part: dtype (float16, float32, or int8 with a codec), codec (absent: raw tiles), arrays back
    to back (`offset` in elements, `shape` (C, H, W)); no arrays only in a store whose model was not built yet."""
    features = _object(features, key)
    dtype = _one_of(_member(features, "dtype", key), f"{key}.dtype", FEATURE_DTYPES)
    if features.get("codec") is not None or dtype == QUANTISED_DTYPE:
        _one_of(features.get("codec"), f"{key}.codec", FEATURE_CODECS)
    offset, names = 0, set()
    for i, item in enumerate(_list(_member(features, "arrays", key), f"{key}.arrays")):
        item_key = f"{key}.arrays[{i}]"
        item = _object(item, item_key)
        name = _text(_member(item, "name", item_key), f"{item_key}.name")
        if name in names:
            raise ManifestProblem(f"{item_key}.name", f"repeats {shown(name)}")
        names.add(name)
        shape = _list(_member(item, "shape", item_key), f"{item_key}.shape", 3, 3)
        for j, size in enumerate(shape):
            _integer(size, f"{item_key}.shape[{j}]", 1, MAX_FEATURE_EDGE)
        _integer(_member(item, "offset", item_key), f"{item_key}.offset", offset, offset,
                 "the sum of the sizes of the arrays before it")
        offset += math.prod(shape)
    return features


def check_decoder(decoder: Any, key: str = "decoder") -> dict:
    """The `decoder` part: onnx (the file name decoder.onnx) and, once the model is built, settings
    (absent or null before)."""
    decoder = _object(decoder, key)
    _one_of(_member(decoder, "onnx", key), f"{key}.onnx", (DECODER_ONNX,))
    if decoder.get("settings") is not None:
        settings_key = f"{key}.settings"
        settings = _object(decoder["settings"], settings_key)
        _exact_keys(settings, settings_key, [name for name in DECODER_SETTING_TYPES if name in settings])
        for name, kind in DECODER_SETTING_TYPES.items():
            if name in settings:
                (_boolean if kind is bool else _finite)(settings[name], f"{settings_key}.{name}")
    return decoder


def check_level(level: Any, key: str = "level") -> Tuple[int, int]:
    """The `level` part (version 3): factor, width, height (level px), geotransform; returns (width, height)."""
    level = _object(level, key)
    _exact_keys(level, key, ["factor", "width", "height", "geotransform", "resampling"])
    factor = _finite(level["factor"], f"{key}.factor")
    if not 0 < factor <= MAX_LEVEL_FACTOR:
        raise ManifestProblem(f"{key}.factor", f"must be above 0 and at most {MAX_LEVEL_FACTOR:g}, found {factor:g}")
    check_geotransform(level["geotransform"], f"{key}.geotransform")
    _text(level["resampling"], f"{key}.resampling")
    return tuple(_integer(level[name], f"{key}.{name}", 1, MAX_RASTER_SIZE) for name in ("width", "height"))


def check_levels(levels: Any, key: str = "levels") -> None:
    """The root's `levels` list (version 3): {folder, factor} per level, distinct folders."""
    folders = set()
    for i, item in enumerate(_list(levels, key)):
        item = _object(item, f"{key}[{i}]")
        _exact_keys(item, f"{key}[{i}]", ["folder", "factor"])
        folder, factor = _text(item["folder"], f"{key}[{i}].folder"), _finite(item["factor"], f"{key}[{i}].factor")
        if folder in folders or ".." in folder.replace("\\", "/").split("/") or folder.startswith("/"):
            raise ManifestProblem(f"{key}[{i}].folder", f"must be a distinct folder in the store: {shown(folder)}")
        if not 0 < factor <= MAX_LEVEL_FACTOR:
            raise ManifestProblem(f"{key}[{i}].factor", f"must be above 0, found {shown(factor)}")
        folders.add(folder)


def validate_manifest(manifest: Any) -> dict:
    """Every part of a manifest (after its format and version are known to be ours: `format_version` 1
    to 4) and how the parts agree; ManifestProblem naming the first wrong key. Version 3's grid lies
    on its level's pixels."""
    manifest = _object(manifest, "the top level")
    version = manifest.get("format_version") if manifest.get("format_version") in (1, 3, 4) else 2
    for name in ("quicksam_version", "created"):
        _optional_text(manifest, name, "")
    check_model(_member(manifest, "model", ""), "model")
    check_checkpoint(_member(manifest, "checkpoint", ""), "checkpoint")
    check_preprocessing(_member(manifest, "preprocessing", ""), "preprocessing", version)
    raster = check_raster(_member(manifest, "raster", ""), "raster")
    size = (raster["width"], raster["height"])
    if version >= 3:
        size = check_level(_member(manifest, "level", ""), "level")
        check_levels(manifest.get("levels", []), "levels")
    grid = check_grid(_member(manifest, "grid", ""), "grid", None if version == 1 else size)
    check_features(_member(manifest, "features", ""), "features")
    check_decoder(_member(manifest, "decoder", ""), "decoder")
    for name in ("width", "height") if version == 1 else ():
        if grid[f"raster_{name}"] != raster[name]:
            raise ManifestProblem(f"grid.raster_{name}", f"must equal raster.{name} ({raster[name]}), found "
                                                         f"{shown(grid[f'raster_{name}'])}")
    if manifest["model"]["image_size"] != grid["tile_size"]:
        raise ManifestProblem("model.image_size", f"must equal grid.tile_size ({grid['tile_size']}), found "
                                                  f"{shown(manifest['model']['image_size'])}")
    return manifest

