"""Raster input: band choice, nodata/NaN/alpha/mask handling, one stretch per raster, odd sizes.

Encodes go through the real pipeline (`encode_raster`) with the seeded random tiny SAM2.1 model and
256 px tiles; a recording wrapper keeps the exact uint8 tiles the model was fed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
from osgeo import ogr
from synthetic import (
    RecordingModel,
    assert_one_line_error,
    encode,
    encode_args,
    gradient,
    landsat_path,
    random_model,
    run_cli,
    square_scene,
    write_raster,
)

from quicksam.core.store import FeatureStore
from quicksam.encoder.normalise import Stretch
from quicksam.encoder.raster import WindowReader, choose_bands, describe_raster


def _encode_recording(raster: Path, store: Path, **fields) -> Tuple[FeatureStore, RecordingModel, List[str]]:
    """Encode and return the store, the model inputs in encode order, and the ids of 'done' tiles in
    the same order."""
    model = RecordingModel(random_model())
    events = []
    store_obj, _ = encode(raster, store, progress=events.append, model=model, **fields)
    done_ids = [event.tile_id for event in events if event.status == "done"]
    assert len(done_ids) == len(model.inputs)
    return store_obj, model, done_ids


def _stored_stretch(store: Path) -> Stretch:
    manifest = json.loads((store / "manifest.json").read_text())
    return Stretch.from_dict(manifest["preprocessing"]["stretch"])


def _info(store: Path) -> Dict:
    result = run_cli("info", store)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _expected_input(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Independent reference of the linear 2-98 % stretch to 0..255 (float64)."""
    return np.clip(np.rint((values.astype(np.float64) - low) * 255.0 / (high - low)), 0, 255)


# -- band choice ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("count,colours,requested,expected", [
    (1, None, None, [1, 1, 1]),
    (2, None, None, [1, 2, 1]),
    (6, None, None, [1, 2, 3]),
    (4, ["blue", "green", "red", "undefined"], None, [3, 2, 1]),
    (5, ["undefined", "undefined", "blue", "green", "red"], None, [5, 4, 3]),
    (2, ["gray", "alpha"], None, [1, 1, 1]),
    (6, None, [4, 2], [4, 2, 4]),
    (6, None, [6], [6, 6, 6]),
    (6, None, [5, 4, 3], [5, 4, 3]),
])
def test_bands_fed_to_the_model(tmp_path: Path, count: int, colours, requested, expected) -> None:
    raster = write_raster(tmp_path / "bands.tif", gradient(40, 30, count), colorinterp=colours)
    assert choose_bands(describe_raster(str(raster)), requested) == expected


def test_six_band_landsat_defaults_to_its_first_three_bands() -> None:
    info = describe_raster(str(landsat_path()))
    assert info.count == 6
    assert choose_bands(info, None) == [1, 2, 3]


def test_single_band_raster_smaller_than_a_tile_is_one_padded_tile(tmp_path: Path) -> None:
    data = (gradient(50, 40, 1) + 1).astype(np.uint8)   # no zeros, so padding is told apart
    raster = write_raster(tmp_path / "small.tif", data)
    store, model, done = _encode_recording(raster, tmp_path / "store")
    assert done == ["r0000c0000"]
    info = _info(tmp_path / "store")
    assert (info["tiles"], info["tiles_done"], info["complete"]) == (1, 1, True)
    assert info["raster_size"] == [50, 40] and info["bands"] == [1, 1, 1]
    tile = store.grid.tiles[0]
    assert (tile.valid_width, tile.valid_height, tile.size) == (50, 40, 256)
    image = model.inputs[0]
    assert image.shape == (256, 256, 3)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()
    assert (image[:40, :50] > 0).mean() > 0.9
    assert not image[40:].any() and not image[:, 50:].any()
    # The tile's footprint is the 50 x 40 px that exist (10 m pixels from (500000, 4200000)), not 256 x 256.
    dataset = ogr.Open(str(tmp_path / "store" / "tile_index.gpkg"))   # keep: its layers die with it
    footprints = [f.GetGeometryRef().GetEnvelope() for f in dataset.GetLayerByName("tiles")]
    assert footprints == [pytest.approx((500000, 500500, 4199600, 4200000), abs=1e-6)]


# -- nodata, NaN, alpha and mask -------------------------------------------------------------------

def _noisy_bands(dtype: str, nodata: float, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """(3, 150, 200) values of `dtype` and the (150, 200) validity mask; invalid pixels hold `nodata`
    (and for float32 some NaN), in a block and scattered, ~20 % of the pixels."""
    low, high = {"uint16": (1000, 30000), "int16": (-2000, 5000), "float32": (-3.5, 12.0)}[dtype]
    data = rng.uniform(low, high, size=(3, 150, 200))
    data[1] = data[1] * 0.5 + low * 0.5           # a band with a different range
    data = data.astype(dtype)
    invalid = rng.random((150, 200)) < 0.12
    invalid[100:, 150:] = True
    data[:, invalid] = nodata
    if dtype == "float32":
        nan_pixels = (rng.random((150, 200)) < 0.05) & ~invalid
        data[2, nan_pixels] = np.nan                 # NaN in one band invalidates the pixel
        invalid |= nan_pixels
    return data, ~invalid


@pytest.mark.parametrize("dtype,nodata", [("uint16", 65535), ("int16", -32768), ("float32", -9999.0)])
def test_stretch_ignores_nodata_and_nan(tmp_path: Path, dtype: str, nodata: float) -> None:
    data, valid = _noisy_bands(dtype, nodata, np.random.default_rng(7))
    raster = write_raster(tmp_path / f"{dtype}.tif", data, nodata=nodata)
    _, model, _ = _encode_recording(raster, tmp_path / "store")
    stretch = _stored_stretch(tmp_path / "store")
    assert stretch.mode == "percentile" and stretch.sampled_pixels == int(valid.sum())
    for band in range(3):
        expected = np.percentile(data[band][valid].astype(np.float64), [2, 98])
        assert (stretch.low[band], stretch.high[band]) == pytest.approx(tuple(expected), rel=1e-9, abs=1e-9)
    image = model.inputs[0][:150, :200]
    assert not image[~valid].any(), "nodata/NaN pixels must be black in the model input"
    for band in range(3):
        reference = _expected_input(data[band][valid], stretch.low[band], stretch.high[band])
        assert np.abs(image[..., band][valid].astype(np.float64) - reference).max() <= 1
    # The stretch spreads the valid values over the full range (2-98 %), nodata does not squash them.
    assert np.percentile(image[valid], 50) > 60 and np.percentile(image[valid], 50) < 200


@pytest.mark.parametrize("how", ["alpha", "mask"])
def test_alpha_and_mask_bands_hide_pixels(tmp_path: Path, how: str) -> None:
    rng = np.random.default_rng(11)
    rgb = rng.integers(50, 151, size=(3, 150, 200)).astype(np.uint8)
    hidden = np.zeros((150, 200), dtype=bool)
    hidden[:, :40] = True
    rgb[:, hidden] = 250                              # garbage under the transparent part
    rgb[0, 10:20, 10:20] = 0
    if how == "alpha":
        alpha = np.where(hidden, 0, 255).astype(np.uint8)
        raster = write_raster(tmp_path / "rgba.tif", np.concatenate([rgb, alpha[np.newaxis]]),
                              colorinterp=["red", "green", "blue", "alpha"])
    else:
        raster = write_raster(tmp_path / "masked.tif", rgb, mask=~hidden)
    assert choose_bands(describe_raster(str(raster)), None) == [1, 2, 3]
    _, model, _ = _encode_recording(raster, tmp_path / "store")
    stretch = _stored_stretch(tmp_path / "store")
    assert stretch.sampled_pixels == int((~hidden).sum())
    for band in range(3):
        expected = np.percentile(rgb[band][~hidden].astype(np.float64), [2, 98])
        assert (stretch.low[band], stretch.high[band]) == pytest.approx(tuple(expected))
        assert stretch.high[band] < 150.5
    image = model.inputs[0]
    assert not image[:150, :40].any()
    assert (image[:150, 40:200] > 0).mean() > 0.9


def test_tile_with_only_nodata_is_skipped_and_reported(tmp_path: Path) -> None:
    data = gradient(600, 256, 3) + 1                  # never 0 where valid
    data[:, :, 344:] = 0                              # the last tile column (cols 344..599) is nodata
    raster = write_raster(tmp_path / "edge.tif", data.astype(np.uint8), nodata=0)
    store, model, done = _encode_recording(raster, tmp_path / "store")
    assert [t.col_off for t in store.grid] == [0, 172, 344]
    assert done == ["r0000c0000", "r0000c0001"]       # the nodata tile never reached the model
    assert not (tmp_path / "store" / "tiles" / "r0000c0002.npy").exists()
    records = [json.loads(line) for line in (tmp_path / "store" / "tiles.jsonl").read_text().splitlines()]
    by_id = {r["tile_id"]: r for r in records}
    assert by_id["r0000c0002"]["status"] == "nodata"
    assert by_id["r0000c0001"]["valid_fraction"] == pytest.approx((344 - 172) / 256)
    info = _info(tmp_path / "store")
    assert (info["tiles"], info["tiles_done"], info["tiles_nodata"], info["complete"]) == (3, 2, 1, True)


# -- one stretch for the whole raster -------------------------------------------------------------

def test_overlapping_tiles_see_identical_pixels(tmp_path: Path) -> None:
    """A strong gradient: a per-tile stretch would give different brightness in the overlaps."""
    rows, cols = np.mgrid[0:300, 0:500]
    data = np.stack([cols * 10.0 + rows * 3.0, cols * 2.0 + 5000.0, rows * 7.0 - cols]).astype(np.float32)
    raster = write_raster(tmp_path / "gradient.tif", data)
    store, model, done = _encode_recording(raster, tmp_path / "store")
    assert len(store.grid) == 6
    inputs = dict(zip(done, model.inputs))
    stretch = _stored_stretch(tmp_path / "store")
    # Exact comparisons of uint8 results are right here: the stretch is elementwise float32 subtraction and
    # multiplication (each correctly rounded by IEEE 754 on every CPU, numpy fuses nothing), then rint.
    with WindowReader(str(raster), [1, 2, 3]) as reader:
        for tile in store.grid:      # what the model got is the one stored stretch applied to the tile
            pixels, valid = reader.read_tile(tile)
            assert np.array_equal(inputs[tile.tile_id], stretch.apply(pixels, valid))
    pairs = 0
    for a in store.grid:
        for b in store.grid:
            if a.index >= b.index:
                continue
            c0, c1 = max(a.col_off, b.col_off), min(a.col_off + a.size, b.col_off + b.size)
            r0, r1 = max(a.row_off, b.row_off), min(a.row_off + a.size, b.row_off + b.size)
            if c0 >= c1 or r0 >= r1:
                continue
            in_a = inputs[a.tile_id][r0 - a.row_off:r1 - a.row_off, c0 - a.col_off:c1 - a.col_off]
            in_b = inputs[b.tile_id][r0 - b.row_off:r1 - b.row_off, c0 - b.col_off:c1 - b.col_off]
            assert np.array_equal(in_a, in_b), f"tiles {a.tile_id} and {b.tile_id} disagree in their overlap"
            assert len(np.unique(in_a[..., 0])) > 20      # the overlap holds a real gradient
            pairs += 1
    assert pairs >= 5


# -- a real raster -----------------------------------------------------------------------------------

def test_landsat_subset_encodes_with_chosen_bands(tmp_path: Path) -> None:
    landsat = landsat_path()
    store = tmp_path / "l7"
    result = run_cli(*encode_args(landsat, store, "--bands", "3,2,1", overlap=64))
    assert result.returncode == 0, result.stderr
    info = _info(store)
    assert info["crs"] == "EPSG:31985"
    assert info["raster_size"] == [349, 352]
    assert info["bands"] == [3, 2, 1]
    assert (info["tiles"], info["tiles_done"], info["complete"]) == (4, 4, True)
    assert sorted(p.name for p in (store / "tiles").iterdir()) == [
        "r0000c0000.npy", "r0000c0001.npy", "r0001c0000.npy", "r0001c0001.npy"]


def _truncated_raster(folder: Path) -> Path:
    """A small GeoTIFF cut to half its bytes: it opens (its header is whole), its pixels cannot be read."""
    path = write_raster(folder / "cut.tif", square_scene(300, 300, (60, 60, 100)))
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return path


def test_a_truncated_raster_is_one_line_naming_it_and_gdals_words(tmp_path):
    """A read failure is a RasterError naming the raster, the window and GDAL's message, saying what to do (not
    `unexpected RasterioIOError: Read failed. See previous exception for details.`, exit 2)."""
    from quicksam.core.errors import RasterError
    from quicksam.core.tiling import TileGrid

    raster = _truncated_raster(tmp_path)
    tiles = list(TileGrid.build(300, 300, 256, 32))
    with WindowReader(str(raster), [1, 2, 3]) as reader, pytest.raises(RasterError) as caught:
        for tile in tiles:
            reader.read_tile(tile)
    message = str(caught.value)
    assert "cut.tif" in message and any(f"tile {tile.tile_id} (window " in message for tile in tiles), message
    assert "See previous exception" not in message and "\n" not in message
    result = run_cli("encode", raster, tmp_path / "cut.qsam", "--random-weights", "--tile-size", 256)
    assert_one_line_error(result, r"cannot read window .* of raster '.*cut\.tif': .*TIFF.*truncated or corrupt: "
                                  r"check it .* or export it again")
