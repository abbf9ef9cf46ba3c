"""The feature store: tile files, tile index, georeferencing of tiles, integrity checks, resume.

Synthetic rasters in EPSG:32633 (see synthetic.py), seeded random tiny SAM2.1, 256 px tiles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
from osgeo import ogr, osr
from rasterio.transform import Affine
from shapely import wkt
from shapely.geometry import box
from shapely.ops import unary_union
from synthetic import (
    RecordingModel,
    default_transform,
    encode,
    encode_args,
    file_states,
    gradient,
    random_model,
    run_cli,
    square_scene,
    write_raster,
)

from quicksam.core.errors import Cancelled, StoreError
from quicksam.core.store import FeatureStore
from quicksam.core.tile_codec import decode_tile
from quicksam.encoder.normalise import Stretch
from quicksam.encoder.raster import WindowReader

ogr.UseExceptions()
osr.UseExceptions()


def _nodata_corner_raster(path: Path) -> Path:
    """600 x 500 px, 10 m pixels; the bottom-right tile (cols >= 344, rows >= 244) is all nodata."""
    data = gradient(600, 500, 3) + 1
    data[:, 244:, 344:] = 0
    return write_raster(path, data.astype(np.uint8), nodata=0)


@pytest.fixture(scope="module")
def store_600x500(tmp_path_factory) -> Tuple[Path, Path]:
    """(raster, store) of a default encode (float16) of the 600 x 500 raster: 3 x 3 tiles, one nodata."""
    folder = tmp_path_factory.mktemp("store600")
    raster = _nodata_corner_raster(folder / "scene.tif")
    encode(raster, folder / "store")
    return raster, folder / "store"


def _feature_count(store: FeatureStore) -> int:
    return sum(int(np.prod(item.shape)) for item in store.layout)


def _tile_index(store: Path) -> Dict[str, dict]:
    """tile_id -> {status, row, col, geometry (shapely)} read with OGR, plus the layer's SRS under ''."""
    dataset = ogr.Open(str(store / "tile_index.gpkg"))
    layer = dataset.GetLayerByName("tiles")
    rows = {"": {"srs": layer.GetSpatialRef().ExportToWkt(),
                 "geometry_type": layer.GetGeomType(), "count": layer.GetFeatureCount()}}
    for feature in layer:
        rows[feature.GetField("tile_id")] = {
            "status": feature.GetField("status"), "row": feature.GetField("row"), "col": feature.GetField("col"),
            "geometry": wkt.loads(feature.GetGeometryRef().ExportToWkt())}
    return rows


# -- tile files ----------------------------------------------------------------------------------------

def test_tiles_are_compressed_float16_of_the_manifest_layout(store_600x500) -> None:
    _, root = store_600x500
    store = FeatureStore.open(root)
    count = _feature_count(store)
    assert [item.name for item in store.layout] == ["image_embed", "high_res_feats_0", "high_res_feats_1"]
    assert count == 256 * 16 * 16 + 32 * 64 * 64 + 64 * 32 * 32
    files = sorted(p for p in (root / "tiles").iterdir() if not p.name.endswith(".valid.npy"))
    assert len(files) == 8      # 9 tiles, one of them nodata (valid-pixel masks: tests/test_nodata.py)
    for path in files:   # format version 4: a flat uint8 .npy holding the compressed payload (core/tile_codec.py)
        payload = np.load(path, allow_pickle=False)
        assert payload.dtype == np.uint8 and payload.ndim == 1 and payload.size < count * 2
        assert decode_tile(payload, "float16", store.manifest.features.shapes.values()).dtype == np.float16
    features = store.load_tile("r0000c0000")
    assert {name: array.shape for name, array in features.items()} == {
        "image_embed": (256, 16, 16), "high_res_feats_0": (32, 64, 64), "high_res_feats_1": (64, 32, 32)}
    assert all(np.isfinite(array).all() and np.abs(array).max() > 0 for array in features.values())


def test_float32_features_on_request_keep_full_precision(store_600x500, tmp_path: Path) -> None:
    raster = store_600x500[0]
    root = tmp_path / "store32"
    # Only the top-left 100 x 100 m: it grows to the one full tile at the raster's corner.
    result = run_cli(*encode_args(raster, root, "--feature-dtype", "float32",
                                  "--extent", "500000,4199900,500100,4200000"))
    assert result.returncode == 0, result.stderr
    assert json.loads(run_cli("info", root).stdout)["feature_dtype"] == "float32"
    store = FeatureStore.open(root)
    (tile,) = store.grid.tiles
    assert (tile.col_off, tile.row_off, tile.valid_width, tile.valid_height) == (0, 0, 256, 256)
    path = store.tile_path(tile.tile_id)
    flat = decode_tile(np.load(path, allow_pickle=False), "float32", store.manifest.features.shapes.values())
    assert flat.dtype == np.float32 and flat.shape == (_feature_count(store),)
    # The same model here, fed the same tile, gives the stored numbers, not a float16 rounding of them.
    stretch = Stretch(**dataclasses.asdict(store.manifest.preprocessing.stretch))
    with WindowReader(str(raster), list(store.manifest.preprocessing.bands)) as reader:
        image = stretch.apply(*reader.read_tile(tile))
    (expected,) = random_model().encode(image[np.newaxis])
    for name, stored in store.load_tile(tile.tile_id).items():
        assert stored.dtype == np.float32
        assert np.allclose(stored, expected[name], rtol=1e-4, atol=1e-4), name
        assert not np.array_equal(stored.astype(np.float16).astype(np.float32), stored), name


def test_tile_index_has_one_polygon_per_tile_with_status_in_raster_crs(store_600x500) -> None:
    _, root = store_600x500
    index = _tile_index(root)
    meta = index.pop("")
    assert meta["count"] == 9 and meta["geometry_type"] == ogr.wkbPolygon
    expected_srs = osr.SpatialReference()
    expected_srs.ImportFromEPSG(32633)
    assert osr.SpatialReference(meta["srs"]).IsSame(expected_srs)
    store = FeatureStore.open(root)
    assert sorted(index) == sorted(t.tile_id for t in store.grid)
    statuses = {tile_id: row["status"] for tile_id, row in index.items()}
    assert statuses.pop("r0002c0002") == "nodata"
    assert set(statuses.values()) == {"done"}


def test_tile_index_is_a_geopackage_every_supported_qgis_reads_without_a_warning(store_600x500) -> None:
    # pip's pyogrio bundles a GDAL that writes GeoPackage 1.4 unless told otherwise; QGIS 3.22's GDAL
    # 3.6 then warns "may only be partially supported" each time the layer is opened.
    _, root = store_600x500
    with contextlib.closing(sqlite3.connect(root / "tile_index.gpkg")) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10200


# -- georeferencing --------------------------------------------------------------------------------

def _to_map(transform: Affine, col: float, row: float) -> Tuple[float, float]:
    """Map coordinates of a continuous pixel position (col, row), written out from the affine terms."""
    return (transform.c + col * transform.a + row * transform.b,
            transform.f + col * transform.d + row * transform.e)


def _assert_footprints_match_grid(root: Path, transform: Affine, width: int, height: int) -> None:
    store = FeatureStore.open(root)
    index = _tile_index(root)
    index.pop("")
    for tile in store.grid:
        c0, r0 = tile.col_off, tile.row_off
        c1, r1 = c0 + tile.valid_width, r0 + tile.valid_height
        corners = [_to_map(transform, c, r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1))]
        ring = list(index[tile.tile_id]["geometry"].exterior.coords)
        assert len(ring) == 5 and ring[0] == ring[-1]
        # Same four corners (the ring's orientation is the writer's choice).
        assert np.abs(np.array(sorted(ring[:4])) - np.array(sorted(corners))).max() < 1e-6, tile.tile_id
    union = unary_union([row["geometry"] for row in index.values()])
    x0, y0 = _to_map(transform, 0, 0)
    x1, y1 = _to_map(transform, width, height)
    bounds = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    assert union.symmetric_difference(bounds).area < 1e-6
    assert union.bounds == pytest.approx(bounds.bounds, abs=1e-6)


def test_footprints_are_pixel_windows_through_the_geotransform(store_600x500) -> None:
    _assert_footprints_match_grid(store_600x500[1], default_transform(), 600, 500)


def test_non_square_pixels_put_a_known_square_at_known_map_coordinates(tmp_path: Path) -> None:
    """10 m wide, 20 m tall pixels. A bright 40 x 40 px block at known map coordinates must appear
    at exactly those coordinates in the model input of every tile that holds it."""
    transform = default_transform(pixel_width=10.0, pixel_height=20.0, origin=(612345.5, 4411111.25))
    raster = write_raster(tmp_path / "rect.tif", square_scene(400, 300, (230, 120, 40)), transform=transform)
    model = RecordingModel(random_model())
    events: List = []
    encode(raster, tmp_path / "store", model=model, progress=events.append)
    _assert_footprints_match_grid(tmp_path / "store", transform, 400, 300)
    # The block in map coordinates: x 612345.5 + 10 * [230, 270], y 4411111.25 - 20 * [120, 160].
    x_min, x_max = 612345.5 + 2300, 612345.5 + 2700
    y_min, y_max = 4411111.25 - 3200, 4411111.25 - 2400
    index = _tile_index(tmp_path / "store")
    inputs = dict(zip([e.tile_id for e in events], model.inputs))
    assert len(inputs) == 4
    for tile_id, image in inputs.items():
        left, bottom, right, top = index[tile_id]["geometry"].bounds
        assert (right - left, top - bottom) == pytest.approx((2560, 5120))
        cols = slice(round((x_min - left) / 10), round((x_max - left) / 10))
        rows = slice(round((top - y_max) / 20), round((top - y_min) / 20))
        expected = np.zeros(image.shape[:2], dtype=bool)
        expected[max(rows.start, 0):max(rows.stop, 0), max(cols.start, 0):max(cols.stop, 0)] = True
        bright = image[..., 0] > 128
        assert np.array_equal(bright, expected), tile_id


# -- integrity -----------------------------------------------------------------------------------------

def _copy_store(store_600x500, tmp_path: Path) -> Path:
    return Path(shutil.copytree(store_600x500[1], tmp_path / "copy"))


@pytest.mark.parametrize("damage", ["flip data bytes", "flip header byte", "truncate", "delete"])
def test_damaged_tile_is_refused_naming_the_tile(store_600x500, tmp_path: Path, damage: str) -> None:
    root = _copy_store(store_600x500, tmp_path)
    path = root / "tiles" / "r0001c0001.npy"
    data = bytearray(path.read_bytes())
    if damage == "flip data bytes":
        for offset in (1000, 200_000, len(data) - 3):
            data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "flip header byte":
        data[10] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[:len(data) // 2]))
    else:
        path.unlink()
    store = FeatureStore.open(root)
    with pytest.raises(StoreError, match="r0001c0001"):
        store.load_tile("r0001c0001")
    assert store.load_tile("r0001c0000")["image_embed"].shape == (256, 16, 16)   # the others still load


def test_unfinished_and_nodata_tiles_are_refused_saying_so(store_600x500) -> None:
    store = FeatureStore.open(store_600x500[1])
    with pytest.raises(StoreError, match="r0002c0002.*all nodata"):
        store.load_tile("r0002c0002")
    with pytest.raises(StoreError, match="r0009c0009.*not encoded"):
        store.load_tile("r0009c0009")


# -- cancel and resume --------------------------------------------------------------------------------

def test_cancelled_encode_keeps_finished_tiles_and_resumes_with_the_rest(tmp_path: Path) -> None:
    raster = write_raster(tmp_path / "scene.tif", gradient(400, 300, 3))
    root = tmp_path / "store"
    first = RecordingModel(random_model())
    events: List = []
    with pytest.raises(Cancelled):
        encode(raster, root, model=first, progress=events.append, cancelled=lambda: len(first.inputs) >= 2)
    store = FeatureStore.open(root)
    assert len(store.grid) == 4
    done = sorted(tile_id for tile_id, r in store.records().items() if r.status == "done")
    assert done == sorted(e.tile_id for e in events) and len(done) == 2
    assert sorted(p.name for p in (root / "tiles").iterdir()) == [f"{t}.npy" for t in done]
    before = {t: file_states(root / "tiles")[f"{t}.npy"] for t in done}
    summary = json.loads(run_cli("info", root).stdout)
    assert (summary["tiles_done"], summary["tiles_pending"], summary["complete"]) == (2, 2, False)

    second = RecordingModel(random_model())
    resumed: List = []
    encode(raster, root, model=second, progress=resumed.append)
    assert len(resumed) == 2 and len(second.inputs) == 2
    assert not set(done) & {e.tile_id for e in resumed}
    assert [e.done for e in resumed] == [3, 4]
    after = file_states(root / "tiles")
    assert {t: after[f"{t}.npy"] for t in done} == before
    assert len(after) == 4
    summary = json.loads(run_cli("info", root).stdout)
    assert (summary["tiles_done"], summary["complete"]) == (4, True)
