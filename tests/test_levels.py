"""Resolution levels (issue 11): encoding at a chosen resolution and at several levels in one store, and
prompts decoded at the level that holds them (core/levels.py, encoder/levels_pipeline.py,
interactive/scales.py).

Random weights make masks arbitrary, so the geometry tests replace the decoder's masks with the tile
image the encoder read at that level, thresholded: what comes out then depends only on QuickSAM's own
plumbing (level grid, resampled read, tile offsets, geotransforms), and the synthetic scene says where it
must land. Map coordinates are compared with a tolerance of 1e-6 map units (float sums of pixel sizes),
never bitwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import shapely
from synthetic import (
    ORIGIN,
    PIXEL_SIZE,
    TILE_SIZE,
    assert_one_line_error,
    encode_args,
    file_states,
    random_model,
    run_cli,
    write_raster,
)

from quicksam.core.store import FeatureStore
from quicksam.core.store_levels import level_stores
from quicksam.core.tiling import PixelWindow
from quicksam.encoder.levels_pipeline import encode_levels
from quicksam.encoder.pipeline import EncodeRequest
from quicksam.encoder.raster import WindowReader
from quicksam.interactive.engine import MapPrompts
from quicksam.interactive.scales import MultiScaleEngine, open_engine

SIZE = 1024
#: The big disk: centre (col, row) and radius in raster pixels (600 px across: more than two 256 px tiles).
BIG = (420.0, 470.0, 300.0)
#: A small disk (30 px across) far from the big one.
SMALL = (880.0, 150.0, 15.0)


def disks_scene(size: int = SIZE) -> np.ndarray:
    """(3, size, size) uint8: bright disks (BIG, SMALL) on a dark background."""
    rows, cols = np.mgrid[:size, :size] + 0.5
    data = np.full((3, size, size), 30, np.uint8)
    for col, row, radius in (BIG, SMALL):
        data[:, (cols - col) ** 2 + (rows - row) ** 2 <= radius ** 2] = 220
    return data


def to_map(col: float, row: float) -> Tuple[float, float]:
    """Raster pixel position -> map (x, y) of the synthetic rasters (10 m pixels, north up)."""
    return ORIGIN[0] + col * PIXEL_SIZE, ORIGIN[1] - row * PIXEL_SIZE


def encode_with_levels(raster: Path, store: Path, levels: Tuple[float, ...], **fields: object) -> FeatureStore:
    """`encode_levels` with the cached random model and 256 px tiles."""
    request = EncodeRequest(raster=str(raster), store=store, model="sam2.1_hiera_t", tile_size=TILE_SIZE, overlap=32,
                            device="cpu", levels=levels, **fields)
    return encode_levels(request, model=random_model(TILE_SIZE))[0]


@pytest.fixture(scope="module")
def three_levels(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    """(raster, store): the disks scene encoded at levels 1, 4 and 16."""
    folder = tmp_path_factory.mktemp("levels")
    raster = write_raster(folder / "disks.tif", disks_scene())
    encode_with_levels(raster, folder / "disks.qsam", (1, 4, 16))
    return raster, folder / "disks.qsam"


def image_masks(engine: object, raster: Path) -> None:
    """Make every level's decoder return, as its mask, the tile image the encoder read (bright = object):
    the tile is the one whose features the engine fetched last."""
    for level in engine.level_engines:
        decode, factor, get, last = level.decoder.decode, level.store.manifest.pixel_grid.factor, level.cache.get, []

        def fetch(tile_id: str, _get=get, _last=last) -> dict:
            _last[:] = [tile_id]
            return _get(tile_id)

        def fake(features: dict, prompts: object, multimask: bool = False, _decode=decode, _level=level,
                 _factor=factor, _last=last) -> object:
            result = _decode(features, prompts, multimask=multimask)
            with WindowReader(str(raster), [1, 2, 3], _factor) as reader:
                image, _ = reader.read_tile(_level.store.grid.by_id(_last[0]))
            return dataclasses.replace(result, masks=np.repeat((image[0] > 125)[None], len(result.scores), axis=0))

        level.cache.get = fetch
        level.decoder = _Decoder(level.decoder, fake)


class _Decoder:
    """A level's own decoder whose `decode` is replaced (the levels share one OnnxDecoder)."""

    def __init__(self, decoder: object, decode: object) -> None:
        self._decoder, self.decode = decoder, decode

    def __getattr__(self, name: str) -> object:
        return getattr(self._decoder, name)


def test_each_level_is_a_grid_where_its_geotransform_says(three_levels: Tuple[Path, Path]) -> None:
    """Level f has pixels f times the raster's, the same origin, ceil(size / f) pixels a side; its tiles'
    footprints in the root tile index are exactly the level pixels they cover."""
    _, store_path = three_levels
    levels = level_stores(FeatureStore.open(store_path))
    assert [level.manifest.pixel_grid.factor for level in levels] == [1.0, 4.0, 16.0]
    from osgeo import ogr

    source = ogr.Open(str(store_path / "tile_index.gpkg"))
    rows = {(f.GetField("level"), f.GetField("tile_id")): f.GetGeometryRef().GetEnvelope() for f in source.GetLayer()}
    for level in levels:
        factor = level.manifest.pixel_grid.factor
        grid = level.manifest.pixel_grid
        expected_gt = (ORIGIN[0], PIXEL_SIZE * factor, 0, ORIGIN[1], 0, -PIXEL_SIZE * factor)
        assert grid.geotransform == pytest.approx(expected_gt)
        assert (grid.width, grid.height) == (math.ceil(SIZE / factor),) * 2
        assert grid.resolution == pytest.approx(PIXEL_SIZE * factor)
        folder = "." if factor == 1 else f"levels/x{factor:g}"
        for tile in level.grid:
            xmin, xmax, ymin, ymax = rows[(folder, tile.tile_id)]
            expected = (ORIGIN[0] + tile.col_off * PIXEL_SIZE * factor,
                        ORIGIN[0] + (tile.col_off + tile.valid_width) * PIXEL_SIZE * factor,
                        ORIGIN[1] - (tile.row_off + tile.valid_height) * PIXEL_SIZE * factor,
                        ORIGIN[1] - tile.row_off * PIXEL_SIZE * factor)
            assert (xmin, xmax, ymin, ymax) == pytest.approx(expected, abs=1e-6)
    assert len(rows) == sum(len(level.grid) for level in levels)


def test_a_box_around_a_disk_wider_than_a_tile_gives_one_polygon_on_a_coarse_level(
        three_levels: Tuple[Path, Path]) -> None:
    """The box around the big disk (600 px, more than two 256 px tiles) is decoded on level 4 (150 px there,
    inside one tile with a margin): one polygon with level 4's 40 m pixel edges, centred on the disk within
    a level pixel."""
    raster, store_path = three_levels
    engine = open_engine(FeatureStore.open(store_path))
    assert isinstance(engine, MultiScaleEngine)
    image_masks(engine, raster)
    col, row, radius = BIG
    (x0, y1), (x1, y0) = to_map(col - radius - 20, row - radius - 20), to_map(col + radius + 20, row + radius + 20)
    segments = engine.segment(MapPrompts(box=(x0, y0, x1, y1)))
    assert len(segments) == 1
    segment = segments[0]
    assert (segment.level_factor, segment.resolution) == (4.0, pytest.approx(40.0))
    assert segment.tile_id.startswith("levels/x4/")
    parts = shapely.get_parts(shapely.from_wkb(segment.geometry.wkb))
    assert len(parts) == 1   # one object, not pieces per tile
    polygon = parts[0]
    ring = np.asarray(polygon.exterior.coords)
    steps = (ring - np.asarray(ORIGIN)) / 40.0
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-6)   # every vertex on a level-4 pixel corner
    centre = np.asarray(to_map(col, row))
    error_level_pixels = np.hypot(*(np.asarray(polygon.centroid.coords[0]) - centre)) / 40.0
    assert error_level_pixels < 1.0
    assert polygon.area == pytest.approx(math.pi * (radius * PIXEL_SIZE) ** 2, rel=0.05)


def test_a_click_on_a_small_disk_is_decoded_on_the_finest_level(three_levels: Tuple[Path, Path]) -> None:
    """A click on the small disk is held by a finest-level tile: polygon on 10 m pixel edges, centred on the
    disk within a pixel."""
    raster, store_path = three_levels
    engine = open_engine(FeatureStore.open(store_path))
    image_masks(engine, raster)
    col, row, radius = SMALL
    segments = engine.segment(MapPrompts(points=(to_map(col, row),), labels=(1,)))
    assert [(s.level_factor, s.resolution) for s in segments] == [(1.0, pytest.approx(10.0))]
    [polygon] = shapely.get_parts(shapely.from_wkb(segments[0].geometry.wkb))
    steps = (np.asarray(polygon.exterior.coords) - np.asarray(ORIGIN)) / PIXEL_SIZE
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-6)
    error_pixels = np.hypot(*(np.asarray(polygon.centroid.coords[0]) - np.asarray(to_map(col, row)))) / PIXEL_SIZE
    assert error_pixels < 1.0


def test_points_farther_apart_than_a_tile_go_to_the_level_that_holds_them(three_levels: Tuple[Path, Path]) -> None:
    """Two clicks 500 px apart (no 256 px tile of the finest level holds both) are decoded on level 4; with
    finest_only they are refused, naming what to do."""
    _, store_path = three_levels
    col, row, _ = BIG
    prompts = MapPrompts(points=(to_map(col - 250, row), to_map(col + 250, row)), labels=(1, 1))
    engine = open_engine(FeatureStore.open(store_path))
    assert engine.choose_level(prompts)[0].store.manifest.pixel_grid.factor == 4.0
    single = MultiScaleEngine(level_stores(FeatureStore.open(store_path)), finest_only=True)
    from quicksam.interactive.engine import NoTilePromptError

    with pytest.raises(NoTilePromptError, match="no single tile holds .* encode a coarser level"):
        single.choose_tile(prompts)


def test_a_resampled_level_is_the_mean_of_the_raster_pixels_under_it(tmp_path: Path) -> None:
    """Level 2 of a random raster is the 2 x 2 block means (GDAL's average, rounded to the band's integer
    type: within 0.5 + 1 rounding step), and a level pixel reaching past the raster's edge is invalid."""
    data = np.random.default_rng(3).integers(0, 255, (3, 101, 99), dtype=np.uint8)
    raster = write_raster(tmp_path / "r.tif", data)
    with WindowReader(str(raster), [1, 2, 3], 2.0) as reader:
        read, valid = reader.read(PixelWindow(0, 0, 50, 51))
    means = data[:, :100, :98].astype(float).reshape(3, 50, 2, 49, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(read[:, :50, :49], means, atol=1.0)
    assert valid[:50, :49].all() and not valid[:, 49].any() and not valid[50, :].any()


def test_nodata_stays_out_of_objects_on_a_coarse_level(tmp_path: Path) -> None:
    """A raster whose left 37 columns are nodata (not a multiple of the factor 4): level 4's pixels touching
    them are invalid, and a box over everything decoded there gives polygons that cover no nodata pixel."""
    data = np.full((3, 256, 256), 200, np.uint8)
    data[:, :, :37] = 0
    raster = write_raster(tmp_path / "nd.tif", data, nodata=0)
    store = encode_with_levels(raster, tmp_path / "nd.qsam", (1, 4))
    coarse = level_stores(store)[1]
    valid = coarse.load_valid_mask(coarse.grid.tiles[0])
    assert not valid[:64, :10].any() and valid[:64, 10:64].all()   # level column 9 covers raster cols 36-39
    engine = open_engine(store)
    x0, y1 = to_map(0, 0)
    x1, y0 = to_map(256, 256)
    for segment in engine.level_engines[1].segment(MapPrompts(box=(x0, y0, x1, y1))):
        nodata = shapely.box(x0, y0, to_map(37, 0)[0], y1)
        assert shapely.from_wkb(segment.geometry.wkb).intersection(nodata).area == pytest.approx(0.0, abs=1e-6)


def test_levels_are_added_later_without_encoding_the_others_again(tmp_path: Path) -> None:
    """A one-level store gains level 4 by running again with --levels 1,4: its own tiles are not rewritten,
    its manifest lists both levels; running the same command again writes nothing."""
    raster = write_raster(tmp_path / "d.tif", disks_scene(512))
    store = encode_with_levels(raster, tmp_path / "d.qsam", (1,))
    assert json.loads((store.root / "manifest.json").read_text()).get("levels") is None
    before = file_states(store.root / "tiles")
    store = encode_with_levels(raster, tmp_path / "d.qsam", (1, 4))
    assert file_states(store.root / "tiles") == before
    manifest = json.loads((store.root / "manifest.json").read_text())
    assert manifest["levels"] == [{"folder": ".", "factor": 1.0}, {"folder": "levels/x4", "factor": 4.0}]
    everything = file_states(store.root)
    encode_with_levels(raster, tmp_path / "d.qsam", (1, 4))
    assert file_states(store.root) == everything


def test_a_chosen_resolution_is_the_finest_level(tmp_path: Path) -> None:
    """--resolution 20 on a 10 m raster: the store's pixels are 20 m (factor 2) and its tiles cover the
    raster in half as many pixels a side."""
    raster = write_raster(tmp_path / "d.tif", disks_scene(512))
    store = encode_with_levels(raster, tmp_path / "r.qsam", (1,), resolution=20.0)
    grid = store.manifest.pixel_grid
    assert (grid.factor, grid.resolution, grid.width, grid.height) == (2.0, pytest.approx(20.0), 256, 256)
    assert store.manifest.raster.width == 512   # the raster section still describes the raster itself


def test_a_store_of_format_version_2_still_opens(tmp_path: Path) -> None:
    """A store whose manifest is version 2 (no level section) opens as one native level and decodes."""
    raster = write_raster(tmp_path / "d.tif", disks_scene(256))
    store = encode_with_levels(raster, tmp_path / "v2.qsam", (1,))
    data = json.loads((store.root / "manifest.json").read_text())
    data["format_version"] = 2
    del data["level"]
    (store.root / "manifest.json").write_text(json.dumps(data))
    opened = FeatureStore.open(store.root)
    assert opened.manifest.format_version == 2 and opened.manifest.pixel_grid.factor == 1.0
    segments = open_engine(opened).segment(MapPrompts(points=(to_map(128, 128),), labels=(1,)))
    assert all(s.level_factor == 1.0 for s in segments)


@pytest.mark.parametrize(("extra", "hint"), [
    (["--levels", "4,16"], "a new store starts with its finest level, factor 1: add 1 to --levels"),
    (["--levels", "1,x"], "levels must be factors of the finest level's pixel size"),
    (["--levels", "0.5"], "levels must be factors of the finest level's pixel size"),
    (["--levels", "1,4 16"], "separated by commas like 1,4,16, not '1,4 16'"),   # never read as 1,416
    (["--levels", "1_000"], "separated by commas like 1,4,16, not '1_000'"),
    (["--resolution", "1e9"], "--resolution 1e+09 is 1e+08 times the raster's own pixels"),
    (["--resolution", "5"], "--resolution 5 is finer than the raster's own pixels (10 map units per pixel)"),
])
def test_bad_levels_and_resolutions_are_refused_in_one_line(tmp_path: Path, extra: list, hint: str) -> None:
    raster = write_raster(tmp_path / "d.tif", disks_scene(256))
    result = run_cli(*encode_args(raster, tmp_path / "bad.qsam", *extra))
    assert_one_line_error(result, re.escape(hint))
    assert not (tmp_path / "bad.qsam" / "manifest.json").exists()


@pytest.mark.slow
def test_the_cli_encodes_levels_and_reports_each(tmp_path: Path) -> None:
    """`quicksam encode --levels 1,4` reports each level's factor, resolution and tiles in its summary."""
    raster = write_raster(tmp_path / "d.tif", disks_scene(512))
    result = run_cli(*encode_args(raster, tmp_path / "c.qsam", "--levels", "1,4", "--progress-json"))
    assert result.returncode == 0, result.stderr
    finished = [json.loads(line) for line in result.stdout.splitlines() if '"finished"' in line][-1]
    levels = finished["summary"]["levels"] if "summary" in finished else finished["levels"]
    assert [(level["folder"], level["factor"], level["resolution"]) for level in levels] == [
        (".", 1.0, 10.0), ("levels/x4", 4.0, 40.0)]
    assert all(level["tiles_done"] == level["tiles"] for level in levels)


def test_features_say_the_level_and_resolution_they_came_from(three_levels: Tuple[Path, Path]) -> None:
    """The output schema every prompt output shares (dock, quicksam:segmentprompts, `quicksam segment`) has
    `level_factor` and `resolution`: 4 and 40 m for the big disk's box, in the raster's CRS."""
    from qgis.core import QgsCoordinateTransformContext

    from quicksam.ui.layers import FeatureBuilder, raster_crs

    raster, store_path = three_levels
    store = FeatureStore.open(store_path)
    engine = open_engine(store)
    image_masks(engine, raster)
    col, row, radius = BIG
    (x0, y1), (x1, y0) = to_map(col - radius - 20, row - radius - 20), to_map(col + radius + 20, row + radius + 20)
    prompts = MapPrompts(box=(x0, y0, x1, y1))
    [segment] = engine.segment(prompts)
    builder = FeatureBuilder(store, raster_crs(store), QgsCoordinateTransformContext())
    feature = builder.feature(segment, prompts, 1)
    assert (feature["level_factor"], feature["resolution"]) == (4.0, pytest.approx(40.0))
    assert feature["tile_id"] == "levels/x4/r0000c0000"
    assert feature.geometry().boundingBox().xMinimum() >= x0 - 40


def test_info_lists_every_level(three_levels: Tuple[Path, Path]) -> None:
    """`quicksam info` of a multi-scale store lists each level with its resolution and tiles."""
    _, store_path = three_levels
    result = run_cli("info", store_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [(level["folder"], level["resolution"]) for level in summary["levels"]] == [
        (".", 10.0), ("levels/x4", 40.0), ("levels/x16", 160.0)]
    assert summary["complete"] is True


def boundary_error(polygon: object, centre: Tuple[float, float], radius: float) -> float:
    """Mean distance (map units) of the polygon's boundary vertices from the true circle."""
    ring = np.asarray(shapely.get_coordinates(shapely.boundary(polygon)))
    return float(np.mean(np.abs(np.hypot(ring[:, 0] - centre[0], ring[:, 1] - centre[1]) - radius)))


def test_refining_a_coarse_object_gives_finer_edges_nearer_the_truth(three_levels: Tuple[Path, Path]) -> None:
    """The big disk decoded on level 4, refined along its edge on the finest level's tiles: one polygon on
    10 m pixel edges whose boundary lies nearer the true circle than the coarse one. With the decoder's mask
    replaced by the image the encoder read (random weights make real masks arbitrary), this measures the
    refinement's plumbing: tiles chosen, prompts placed, pieces joined, not SAM's accuracy."""
    raster, store_path = three_levels
    engine = open_engine(FeatureStore.open(store_path))
    image_masks(engine, raster)
    col, row, radius = BIG
    (x0, y1), (x1, y0) = to_map(col - radius - 20, row - radius - 20), to_map(col + radius + 20, row + radius + 20)
    prompts = MapPrompts(box=(x0, y0, x1, y1))
    [coarse] = engine.segment(prompts)
    engine.refine_edges = True
    [refined] = engine.segment(prompts)
    assert (refined.level_factor, refined.tile_id) == (1.0, "levels/x4/r0000c0000+refined")
    parts = shapely.get_parts(shapely.from_wkb(refined.geometry.wkb))
    assert len(parts) == 1
    steps = (np.asarray(parts[0].exterior.coords) - np.asarray(ORIGIN)) / PIXEL_SIZE
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-6)
    centre = to_map(col, row)
    coarse_error = boundary_error(shapely.from_wkb(coarse.geometry.wkb), centre, radius * PIXEL_SIZE)
    refined_error = boundary_error(parts[0], centre, radius * PIXEL_SIZE)
    assert refined_error < coarse_error / 2, (coarse_error, refined_error)
    assert refined_error < PIXEL_SIZE   # within a finest pixel of the true edge, on average


@pytest.mark.slow
def test_the_cli_segments_a_large_object_on_a_coarse_level_and_refines_it(three_levels: Tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    """`quicksam segment --box` around the big disk writes one object of level 4 (40 m); with --refine its
    feature says it comes from the finest level (10 m), refined from level 4's tile."""
    _, store_path = three_levels
    col, row, radius = BIG
    (x0, y1), (x1, y0) = to_map(col - radius - 20, row - radius - 20), to_map(col + radius + 20, row + radius + 20)
    box = f"{x0},{y0},{x1},{y1}"
    from osgeo import ogr

    for extra, expected in (([], (4.0, 40.0, "levels/x4/r0000c0000")),
                            (["--refine"], (1.0, 10.0, "levels/x4/r0000c0000+refined"))):
        output = tmp_path / f"out{len(extra)}.gpkg"
        result = run_cli("segment", store_path, "--box", box, "--output", output, *extra)
        assert result.returncode == 0, result.stderr
        source = ogr.Open(str(output))   # kept: its layer's features die with it
        [feature] = list(source.GetLayer())
        assert (feature.GetField("level_factor"), feature.GetField("resolution"), feature.GetField("tile_id")) == (
            expected[0], pytest.approx(expected[1]), expected[2])


def test_a_level_shares_the_finest_levels_decoder_file(three_levels: Tuple[Path, Path]) -> None:
    """Every level's decoder.onnx is the finest level's file (a hard link on this file system): the same
    bytes, no second copy on disk."""
    _, store_path = three_levels
    root = store_path / "decoder.onnx"
    for folder in ("levels/x4", "levels/x16"):
        level = store_path / folder / "decoder.onnx"
        assert level.read_bytes() == root.read_bytes()
        assert level.stat().st_ino == root.stat().st_ino


def test_resuming_the_finest_level_keeps_every_level_in_the_tile_index(tmp_path: Path) -> None:
    """A store of levels 1 and 4 with one damaged tile on the finest level: the run that encodes it again
    (the other level has nothing to do) leaves the root's tile index listing both levels' tiles (the finest
    level's own run writes only its tiles)."""
    from osgeo import ogr

    raster = write_raster(tmp_path / "d.tif", disks_scene(512))
    store = encode_with_levels(raster, tmp_path / "r.qsam", (1, 4))
    (store.root / "tiles" / "r0000c0000.npy").write_bytes(b"damaged")
    store = encode_with_levels(raster, tmp_path / "r.qsam", (1, 4))
    assert store.status(store.grid.by_id("r0000c0000")) == "done"
    source = ogr.Open(str(store.root / "tile_index.gpkg"))
    levels = sorted({feature.GetField("level") for feature in source.GetLayer()})
    assert levels == [".", "levels/x4"]
    assert source.GetLayer().GetFeatureCount() == sum(len(level.grid) for level in level_stores(store))


def test_a_run_with_nothing_to_encode_restores_every_level_in_the_tile_index(tmp_path: Path) -> None:
    """The tile index deleted (or older than the manifest, as after a plain copy): running the same command,
    which encodes nothing, writes the root's index with every level again, not the finest level's tiles only."""
    from osgeo import ogr

    raster = write_raster(tmp_path / "d.tif", disks_scene(512))
    store = encode_with_levels(raster, tmp_path / "i.qsam", (1, 4))
    (store.root / "tile_index.gpkg").unlink()
    store = encode_with_levels(raster, tmp_path / "i.qsam", (1, 4))
    source = ogr.Open(str(store.root / "tile_index.gpkg"))
    assert sorted({feature.GetField("level") for feature in source.GetLayer()}) == [".", "levels/x4"]

