"""On-demand tiles (docs/levels.md): one extra tile centred on prompts no tile holds, from the placement rules
(core/on_demand.py) through `quicksam encode-tile` to `quicksam segment --encode-missing`.

The scene: 400 x 256 px, EPSG:32633, 10 m pixels, encoded with the seeded random tiny model in 256 px tiles with
a 32 px overlap: two tiles, columns [0, 256) and [144, 400). Points at columns 130 and 270 (row 128) are across
their border: no tile holds both, and the on-demand tile centred on them starts at column 72. Random weights:
the masks mean nothing; geometry is checked against the engine decoding the same prompts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import shapely
import shapely.wkb
from synthetic import (
    PIXEL_SIZE,
    assert_one_line_error,
    assert_same_geometry,
    cli_command,
    encode,
    random_model,
    run_cli,
    square_scene,
    write_raster,
)
from synthetic import pixel_to_map_default as at

from quicksam.core.errors import Cancelled, QuickSamError
from quicksam.core.on_demand import centred_tile, in_encoded_area, tile_for_prompts, with_tile
from quicksam.core.store import TILE_INDEX, TILE_LOG, FeatureStore
from quicksam.core.tiling import PixelWindow, TileGrid
from quicksam.encoder.on_demand import TileRequest, encode_tile_at
from quicksam.interactive.engine import MapPrompts, NoTilePromptError, SegmentEngine

WIDTH, HEIGHT, TILE, OVERLAP = 400, 256, 256, 32
LEFT, RIGHT = at(130, 128), at(270, 128)
#: Where the on-demand tile for LEFT and RIGHT lies: centred on columns 130..270, rows 128.
EXTRA_COL_OFF = 72


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("on_demand")
    raster = write_raster(folder / "scene.tif", square_scene(WIDTH, HEIGHT, (170, 90, 60)))
    store, _ = encode(raster, folder / "store", overlap=OVERLAP)
    assert [(t.col_off, t.row_off) for t in store.grid] == [(0, 0), (144, 0)]
    return folder


@pytest.fixture
def scene(encoded, tmp_path) -> Path:
    shutil.copytree(encoded, tmp_path / "scene")
    return tmp_path / "scene"


def csv(*values: float) -> str:
    return ",".join(repr(float(v)) for v in values)


def point_args(*points) -> list:
    return [f"--point={csv(*point)}" for point in points]


def log_lines(store: Path) -> list:
    return [json.loads(line) for line in (store / TILE_LOG).read_text().splitlines()]


def read_rows(path: Path, layer: str) -> list:
    """The features of a vector layer as dicts of their fields, with a shapely `geometry`."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # Debian's pyproj without PROJ data, never used here
        import pyogrio.raw

        meta, _, geometry, fields = pyogrio.raw.read(str(path), layer=layer)
    return [{**{name: column[i] for name, column in zip(meta["fields"], fields)},
             "geometry": shapely.from_wkb(geometry[i])} for i in range(len(geometry))]


def index_rows(store: Path) -> list:
    return read_rows(store / TILE_INDEX, "tiles")


# -- placement (core/on_demand.py) ----------------------------------------------------------------------


def grid() -> TileGrid:
    return TileGrid.build(WIDTH, HEIGHT, TILE, OVERLAP)


def test_a_new_tile_is_centred_on_the_prompts_and_clipped_to_the_raster_like_edge_tiles():
    tile = centred_tile(grid(), [(130, 128), (270, 128)])
    assert (tile.col_off, tile.row_off, tile.valid_width, tile.valid_height) == (EXTRA_COL_OFF, 0, TILE, TILE)
    assert tile.extra and tile.tile_id == "x0000" and tile.index == 2
    near_edge = centred_tile(grid(), [(390, 250)])   # shifted inward, never hanging over the edge
    assert (near_edge.col_off, near_edge.row_off) == (WIDTH - TILE, 0)
    small = centred_tile(TileGrid.build(100, 80, TILE, OVERLAP), [(50, 40)])   # a raster smaller than a tile
    assert (small.col_off, small.row_off, small.valid_width, small.valid_height) == (0, 0, 100, 80)


def test_serial_numbers_follow_the_extra_tiles_and_a_tile_holding_the_prompts_is_reused():
    first = centred_tile(grid(), [(130, 128), (270, 128)])
    grown = with_tile(grid(), first)
    assert tile_for_prompts(grown, [(140, 120), (260, 130)]) == (first, False)   # held 16+ px inside: reused
    # held by x0000 only 8 px inside, where a new tile leaves 18 px: a second tile
    second, new = tile_for_prompts(grown, [(100, 128), (320, 128)])
    assert new and second.tile_id == "x0001" and second.index == 3 and second.col_off == 82
    # a grid tile that holds the prompts a margin (16 px at 256 px) inside is reused, not duplicated
    assert tile_for_prompts(grid(), [(100, 100), (120, 110)]) == (grid().tiles[0], False)
    # at the raster's edge no tile can leave the margin on that side: an existing edge tile is still reused
    edge, new = tile_for_prompts(grid(), [(395, 100)])
    assert not new and edge.tile_id == "r0000c0001"
    with pytest.raises(ValueError, match="index"):
        with_tile(grid(), first.__class__(**{**first.__dict__, "index": 7}))


def test_the_encoded_area_is_the_grids_window_and_its_extra_tiles():
    partial = TileGrid.build(WIDTH, HEIGHT, TILE, OVERLAP, window=PixelWindow(0, 0, 200, 256))
    assert len(partial) == 1 and not in_encoded_area(partial, 300, 100)
    grown = with_tile(partial, centred_tile(partial, [(300, 100)]))
    assert in_encoded_area(grown, 300, 100) and not in_encoded_area(partial, 300, 100)


# -- encoding one tile (encoder/on_demand.py) -------------------------------------------------------------


def test_prompts_across_a_border_are_refused_then_decoded_on_the_new_tile(scene):
    prompts = MapPrompts((LEFT, RIGHT), (1, 1))
    with pytest.raises(NoTilePromptError, match="no single tile holds") as refused:
        SegmentEngine.open(scene / "store").segment(prompts)
    assert refused.value.prompts == prompts
    outcome = encode_tile_at(TileRequest(scene / "store", points=(LEFT, RIGHT)), model=random_model())
    assert outcome.encoded and outcome.folder == "." and outcome.tile.tile_id == "x0000"
    store = FeatureStore.open(scene / "store")
    tile = store.grid.tiles[-1]
    assert len(store.grid) == 3 and tile.extra and (tile.col_off, tile.row_off) == (EXTRA_COL_OFF, 0)
    assert store.status(tile) == "done" and not store.verify_tiles()
    segments = SegmentEngine(store).segment(prompts)
    assert segments and segments[0].tile_id == "x0000" and segments[0].level_factor == 1.0
    # the polygon is on the finest level's pixel edges: every vertex a whole number of 10 m pixels from the origin
    polygon = shapely.wkb.loads(segments[0].geometry.wkb)
    cols_rows = np.array([((x - at(0, 0)[0]) / PIXEL_SIZE, (at(0, 0)[1] - y) / PIXEL_SIZE)
                          for x, y in shapely.get_coordinates(polygon)])
    assert np.allclose(cols_rows, np.round(cols_rows), atol=1e-6)   # float noise of the geotransform only
    again = encode_tile_at(TileRequest(scene / "store", points=(LEFT, RIGHT)), model=random_model())
    assert not again.encoded and again.tile.tile_id == "x0000" and len(again.level.grid) == 3


def test_the_extra_tiles_features_are_the_models_encoding_of_its_window(scene):
    """The tile went through the same pipeline as `quicksam encode`: encoding a raster cut to the tile's window
    gives the same features (float16 store; both are the same computation on the same pixels)."""
    from quicksam.encoder.normalise import Stretch
    from quicksam.encoder.raster import WindowReader

    encode_tile_at(TileRequest(scene / "store", points=(LEFT, RIGHT)), model=random_model())
    store = FeatureStore.open(scene / "store")
    tile = store.grid.tiles[-1]
    with WindowReader(str(scene / "scene.tif"), [1, 2, 3]) as reader:
        data, valid = reader.read_tile(tile)
    image = Stretch(**store.manifest.preprocessing.stretch.__dict__).apply(data, valid)
    expected = random_model().encode(image[np.newaxis])[0]
    stored = store.load_tile(tile.tile_id)
    for name, array in expected.items():
        np.testing.assert_allclose(stored[name], np.asarray(array, dtype=np.float16), rtol=0, atol=0)


def test_an_area_never_encoded_gets_a_tile_too(tmp_path):
    raster = write_raster(tmp_path / "scene.tif", square_scene(WIDTH, HEIGHT, (170, 90, 60)))
    xmin, ymax = at(0, 0)
    xmax, ymin = at(200, 256)
    store, _ = encode(raster, tmp_path / "store", overlap=OVERLAP, extent=(xmin, ymin, xmax, ymax))
    assert len(store.grid) == 1
    prompts = MapPrompts((at(330, 60),), (1,))
    with pytest.raises(NoTilePromptError, match="outside the area this store encoded"):
        SegmentEngine(store).segment(prompts)
    encode_tile_at(TileRequest(tmp_path / "store", points=prompts.points), model=random_model())
    segments = SegmentEngine.open(tmp_path / "store").segment(prompts)
    assert segments and segments[0].tile_id == "x0000"


def test_a_grid_tile_that_holds_the_prompts_is_reused_and_nothing_is_written(scene):
    before = (scene / "store" / "manifest.json").read_bytes(), (scene / "store" / TILE_LOG).read_bytes()
    outcome = encode_tile_at(TileRequest(scene / "store", points=(at(100, 100),)), model=random_model())
    assert not outcome.encoded and outcome.tile.tile_id == "r0000c0000"
    assert ((scene / "store" / "manifest.json").read_bytes(), (scene / "store" / TILE_LOG).read_bytes()) == before


def test_a_cancelled_extra_tile_stays_pending_and_the_stores_encode_command_finishes_it(scene):
    with pytest.raises(Cancelled):
        encode_tile_at(TileRequest(scene / "store", points=(LEFT, RIGHT)), model=random_model(),
                       cancelled=lambda: True)
    store = FeatureStore.open(scene / "store")
    assert [t.tile_id for t in store.pending_tiles()] == ["x0000"]
    store, stats = encode(scene / "scene.tif", scene / "store", overlap=OVERLAP)   # the same encode resumes
    assert stats.tiles_encoded == 1 and not store.pending_tiles() and len(store.grid) == 3
    assert [row["tile_id"] for row in log_lines(scene / "store")][-1] == "x0000"


def test_prompts_farther_apart_than_a_tile_are_refused_before_anything_is_written(scene):
    before = (scene / "store" / "manifest.json").read_bytes()
    with pytest.raises(QuickSamError, match="more than one 256 px tile holds; add a coarser level to the store"):
        encode_tile_at(TileRequest(scene / "store", points=(at(5, 10), at(395, 10))), model=random_model())
    with pytest.raises(QuickSamError, match="outside the raster"):
        encode_tile_at(TileRequest(scene / "store", points=(at(-50, 10),)), model=random_model())
    with pytest.raises(QuickSamError, match="has no level 4; its levels are 1"):
        encode_tile_at(TileRequest(scene / "store", points=(LEFT,), level=4), model=random_model())
    assert (scene / "store" / "manifest.json").read_bytes() == before


# -- the command line --------------------------------------------------------------------------------------


def test_segment_refuses_prompts_across_a_border_in_one_line_naming_encode_missing(scene, tmp_path):
    result = run_cli("segment", scene / "store", *point_args(LEFT, RIGHT), "--output", tmp_path / "out.gpkg")
    assert_one_line_error(result, r"no single tile holds .*; pass --encode-missing to encode that tile")
    assert not (tmp_path / "out.gpkg").exists() and len(FeatureStore.open(scene / "store").grid) == 2


@pytest.mark.slow
def test_segment_encode_missing_gives_one_polygon_on_a_new_tile_listed_everywhere_and_reused(scene, tmp_path):
    store_path, output = scene / "store", tmp_path / "out.gpkg"
    args = ["segment", store_path, *point_args(LEFT, RIGHT), "--output", output, "--encode-missing"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["objects_segmented"] == 1
    rows = read_rows(output, "segments")
    assert len(rows) == 1 and rows[0]["tile_id"] == "x0000"
    expected = SegmentEngine.open(store_path).segment(MapPrompts((LEFT, RIGHT), (1, 1)))
    assert_same_geometry(rows[0]["geometry"], expected[0].geometry)
    store = FeatureStore.open(store_path)
    extra = [tile for tile in store.grid if tile.extra]
    assert [(t.tile_id, t.col_off, t.row_off) for t in extra] == [("x0000", EXTRA_COL_OFF, 0)]
    assert [row["tile_id"] for row in log_lines(store_path) if row["status"] == "done"][-1] == "x0000"
    index = {row["tile_id"]: row for row in index_rows(store_path)}
    assert index["x0000"]["extra"] == 1 and index["x0000"]["status"] == "done"
    assert {index[name]["extra"] for name in ("r0000c0000", "r0000c0001")} == {0}
    x0, y1 = at(EXTRA_COL_OFF, 0)
    x1, y0 = at(EXTRA_COL_OFF + TILE, TILE)
    np.testing.assert_allclose(index["x0000"]["geometry"].bounds, (x0, y0, x1, y1), atol=1e-6)
    before = {name: (store_path / name).read_bytes() for name in ("manifest.json", TILE_LOG, TILE_INDEX)}
    again = run_cli(*args, "--overwrite")   # the same prompts again: the tile is reused, nothing is written
    assert again.returncode == 0, again.stderr
    assert {name: (store_path / name).read_bytes() for name in before} == before


@pytest.mark.slow
def test_a_killed_encode_tile_leaves_a_pending_tile_that_the_same_command_finishes(scene):
    store_path = scene / "store"
    command = cli_command("encode-tile", store_path, *point_args(LEFT, RIGHT), "--progress-json")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:   # the start event comes once the tile is in the manifest
        if json.loads(line)["event"] == "start":
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    process.stdout.close()
    assert [t.tile_id for t in FeatureStore.open(store_path).pending_tiles()] == ["x0000"]
    result = run_cli("encode-tile", store_path, *point_args(LEFT, RIGHT))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["tile_id"] == "x0000" and summary["encoded"] and summary["status"] == "done"
    assert summary["tiles"] == 3 and not FeatureStore.open(store_path).pending_tiles()


def test_encode_tile_refuses_bad_prompts_in_one_line(scene):
    result = run_cli("encode-tile", scene / "store", *point_args(at(5, 10), at(395, 10)))
    assert_one_line_error(result, "more than one 256 px tile holds")
    result = run_cli("encode-tile", scene / "store")
    assert_one_line_error(result, "give the prompts the tile must hold")


# -- a multi-scale store: full resolution on demand ------------------------------------------------------------


def on_pixel_grid(geometry, pixel: float) -> bool:
    """Whether every vertex lies a whole number of `pixel` map units from the raster's origin (up to float noise
    of the geotransform, far below a pixel)."""
    x0, y0 = at(0, 0)
    steps = np.array([((x - x0) / pixel, (y0 - y) / pixel) for x, y in shapely.get_coordinates(geometry)])
    return bool(np.allclose(steps, np.round(steps), atol=1e-6))


@pytest.mark.slow
def test_prompts_across_a_border_of_the_finest_level_give_one_polygon_at_full_resolution(tmp_path):
    """Levels 1 and 4: without --finest the prompts decode at level 4 (one coarse tile holds them, 40 m pixels);
    with --finest they are refused, and with --finest --encode-missing the finest level gains a tile and the
    polygon has 10 m pixels."""
    from quicksam.encoder.levels_pipeline import encode_levels
    from quicksam.encoder.pipeline import EncodeRequest

    raster = write_raster(tmp_path / "scene.tif", square_scene(WIDTH, HEIGHT, (170, 90, 60)))
    request = EncodeRequest(raster=str(raster), store=tmp_path / "store", tile_size=TILE, overlap=OVERLAP,
                            device="cpu", levels=(1.0, 4.0))
    encode_levels(request, model=random_model())
    common = ["segment", tmp_path / "store", *point_args(LEFT, RIGHT), "--overwrite"]
    coarse = run_cli(*common, "--output", tmp_path / "coarse.gpkg")
    assert coarse.returncode == 0, coarse.stderr
    [row] = read_rows(tmp_path / "coarse.gpkg", "segments")
    assert on_pixel_grid(row["geometry"], 4 * PIXEL_SIZE)
    refused = run_cli(*common, "--finest", "--output", tmp_path / "fine.gpkg")
    assert_one_line_error(refused, "no single tile holds .*--encode-missing")
    fine = run_cli(*common, "--finest", "--encode-missing", "--output", tmp_path / "fine.gpkg")
    assert fine.returncode == 0, fine.stderr
    [row] = read_rows(tmp_path / "fine.gpkg", "segments")
    assert row["tile_id"] == "x0000" and on_pixel_grid(row["geometry"], PIXEL_SIZE)
    assert not on_pixel_grid(row["geometry"], 4 * PIXEL_SIZE)
    root = FeatureStore.open(tmp_path / "store")
    assert [t.tile_id for t in root.grid if t.extra] == ["x0000"]
    index = [(r["level"], r["tile_id"], r["extra"]) for r in index_rows(tmp_path / "store")]
    assert (".", "x0000", 1) in index and ("levels/x4", "r0000c0000", 0) in index


def test_a_stopped_tile_of_a_multi_scale_store_keeps_every_level_in_the_root_index(tmp_path):
    """The root's tile index lists every level: a cancelled on-demand tile of the finest level must not replace it
    with the finest level's own tiles, and the next run lists the finished tile there."""
    from quicksam.encoder.levels_pipeline import encode_levels
    from quicksam.encoder.pipeline import EncodeRequest

    raster = write_raster(tmp_path / "scene.tif", square_scene(WIDTH, HEIGHT, (170, 90, 60)))
    encode_levels(EncodeRequest(raster=str(raster), store=tmp_path / "store", tile_size=TILE, overlap=OVERLAP,
                                device="cpu", levels=(1.0, 4.0)), model=random_model())
    request = TileRequest(tmp_path / "store", points=(LEFT, RIGHT), level=1)
    with pytest.raises(Cancelled):
        encode_tile_at(request, model=random_model(), cancelled=lambda: True)
    rows = {(row["level"], row["tile_id"]): row["status"] for row in index_rows(tmp_path / "store")}
    assert rows[("levels/x4", "r0000c0000")] == "done" and rows[(".", "x0000")] == "pending"
    encode_tile_at(request, model=random_model())
    rows = {(row["level"], row["tile_id"]): row["status"] for row in index_rows(tmp_path / "store")}
    assert rows[("levels/x4", "r0000c0000")] == "done" and rows[(".", "x0000")] == "done"
