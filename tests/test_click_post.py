"""The click path after the decoder graph works only inside each mask's window, with the same results.

`SegmentEngine.segment` upsamples a candidate mask only inside its low-resolution bounding window (cut to
the tile's valid part and a box prompt's bounds), ANDs it with that window of the valid-pixel mask, counts
and vectorises it there (interactive/mask_window.py). The reference here is the whole-tile path it replaced
(the full (K, S, S) masks, here from the plain bilinear upsampling of every pixel (`upsample_logits`), ANDed
with the valid mask, the padding cut, ANDed with the box's pixels, picked by area on the full arrays,
vectorised from the full mask), run on the same decoder output.

Masks come from a stub decoder that returns chosen low-resolution logits through the real `postprocess`
(the graph's weights do not matter here; one test runs the real decoder too), on one store: a 300 x 200 px
scene in two 256 px tiles (columns 0 and 44), each 200 rows high, so its bottom 56 rows are padding.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pytest
import shapely
import shapely.wkb
from osgeo import ogr
from qgis.core import QgsProject
from synthetic import encode, square_scene, write_raster
from synthetic import pixel_to_map_default as at

from quicksam.core import mask_decoding
from quicksam.core.geo import window_geotransform
from quicksam.core.mask_decoding import (
    DecodeResult,
    DecoderSettings,
    pick_masks,
    postprocess,
    upsample_logits,
    upsample_masks,
    upsample_window,
)
from quicksam.core.store import FeatureStore
from quicksam.interactive.engine import MapPrompts, SegmentEngine
from quicksam.interactive.mask_window import chosen_masks, mask_bounds
from quicksam.interactive.session import AcceptedObject
from quicksam.interactive.vectorise import mask_to_polygons
from quicksam.ui.dock.object_output import ObjectOutput
from quicksam.ui.layers import OUTPUT_FILE, raster_crs

WIDTH, HEIGHT, SIZE = 300, 200, 256
LOW = SIZE // 4
MODES = ("single", "best", "largest", "smallest", "all")
#: Map units (10 m pixels): far below a pixel, far above the rounding of the same arithmetic done twice.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    folder = tmp_path_factory.mktemp("click-post")
    raster = write_raster(folder / "scene.tif", square_scene(WIDTH, HEIGHT, (100, 60, 80)))
    store, _ = encode(raster, folder / "store", overlap=32)
    assert [(t.col_off, t.row_off, t.valid_width, t.valid_height) for t in store.grid] == [(0, 0, 256, 200),
                                                                                             (44, 0, 256, 200)]
    return store


def disc(centre: Tuple[float, float], radius: float) -> np.ndarray:
    """(LOW, LOW) float32 logits: positive inside a disc (low-res pixels), smooth, with a seeded ripple."""
    rows, cols = np.mgrid[0:LOW, 0:LOW].astype(np.float32)
    distance = np.hypot(rows - centre[0], cols - centre[1])
    ripple = np.random.default_rng(int(radius * 10)).normal(0, 0.3, (LOW, LOW)).astype(np.float32)
    return (radius - distance) * 2.0 + ripple


def ring(centre: Tuple[float, float], outer: float, inner: float) -> np.ndarray:
    """A disc with a hole: positive between the two radii."""
    return np.minimum(disc(centre, outer), -disc(centre, inner))


#: Four model outputs (0 = single-mask, 1..3 = multimask) per case, in low-res pixels (row, col).
CASES = {
    "edges": [disc((0, 0), 20), disc((30, 63), 12), disc((63, 30), 14), np.full((LOW, LOW), 3.0, np.float32)],
    "holes_and_parts": [ring((30, 30), 18, 7), np.maximum(disc((15, 15), 6), disc((45, 45), 9)),
                        ring((32, 20), 14, 4), np.maximum(ring((20, 40), 15, 5), disc((20, 40), 2))],
    "padding": [disc((58, 30), 10), disc((62, 5), 4), disc((55, 55), 20), disc((30, 30), 3)],
    "small_and_empty": [disc((25, 25), 1.2), np.full((LOW, LOW), -5.0, np.float32), disc((25, 26), 0.4),
                        disc((20, 20), 2)],
}


class StubDecoder:
    """The decoder's interface with fixed logits: `postprocess` as OnnxDecoder.decode runs it."""

    def __init__(self, logits: List[np.ndarray]) -> None:
        self.logits = np.stack(logits).astype(np.float32)
        self.scores = np.array([0.5, 0.9, 0.7, 0.8], np.float32)
        self.settings = DecoderSettings()

    def decode(self, features, prompts, multimask: bool = True) -> DecodeResult:
        return postprocess(self.logits, self.scores, multimask, self.settings, SIZE)


class Nodata:
    """`ValidMaskCache`'s interface: every tile's valid mask has a nodata strip and a nodata block."""

    def get(self, tile) -> np.ndarray:
        valid = np.ones((SIZE, SIZE), bool)
        valid[:, 100:112] = False
        valid[150:180, 0:40] = False
        valid[tile.valid_height:, :] = False
        valid[:, tile.valid_width:] = False
        return valid


class AllValid:
    """`ValidMaskCache`'s interface: every pixel valid, the padding too (only the padding cut removes it)."""

    def get(self, tile) -> np.ndarray:
        return np.ones((SIZE, SIZE), bool)


def engine_with(store: FeatureStore, logits: List[np.ndarray], nodata) -> SegmentEngine:
    """An engine on `store` decoding `logits`; `nodata`: True (`Nodata`), False (the store's valid masks) or
    "padding-valid" (`AllValid`)."""
    engine = SegmentEngine(store, decoder=StubDecoder(logits))
    if nodata:
        engine.valid_masks = AllValid() if nodata == "padding-valid" else Nodata()
    return engine


def whole_tile_segments(engine: SegmentEngine, prompts: MapPrompts, mode: str, **options) -> List[tuple]:
    """The click path as it was: every step on (K, S, S) arrays. (index, pixels, polygons) per candidate."""
    tile = engine.choose_tile(prompts)
    result = engine.decoder.decode(engine.cache.get(tile.tile_id), engine.tile_prompts(prompts, tile),
                                   multimask=mode != "single")
    masks = upsample_logits(result.logits, SIZE) > result.threshold
    masks = (masks & engine.valid_masks.get(tile))[:, :tile.valid_height, :tile.valid_width]
    if prompts.box is not None:
        col0, row0, col1, row1 = engine.box_pixels(prompts.box)
        centres_col = tile.col_off + np.arange(tile.valid_width) + 0.5
        centres_row = tile.row_off + np.arange(tile.valid_height) + 0.5
        masks = masks & (((centres_row >= row0) & (centres_row <= row1))[:, None]
                         & ((centres_col >= col0) & (centres_col <= col1))[None, :])
    geotransform = window_geotransform(engine.store.geotransform, tile.col_off, tile.row_off)
    segments = []
    for index in pick_masks(result.scores, mode, masks):
        geometry = mask_to_polygons(masks[index], geotransform, **options)
        if not geometry.is_empty:
            segments.append((index, int(masks[index].sum()), geometry))
    return segments


def assert_same_segments(engine: SegmentEngine, prompts: MapPrompts, mode: str, **options) -> int:
    expected = whole_tile_segments(engine, prompts, mode, **options)
    actual = engine.segment(prompts, mode, **options)
    assert len(actual) == len(expected)
    for segment, (index, pixels, geometry) in zip(actual, expected):
        assert segment.mask_pixels == pixels
        assert segment.score == pytest.approx(float(engine.decoder.scores[1 + index if mode != "single" else 0]))
        assert segment.geometry.parts == geometry.parts
        ours, theirs = shapely.wkb.loads(segment.geometry.wkb), shapely.wkb.loads(geometry.wkb)
        assert shapely.equals_exact(ours, theirs, tolerance=TOLERANCE)
    return len(actual)


POINT_LEFT = at(20.5, 30.5)       # tile 0 (columns 0..255)
POINT_RIGHT = at(280.5, 100.5)    # only tile 1 (columns 44..299)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("nodata", [False, True, "padding-valid"], ids=["store-mask", "nodata", "padding-valid"])
@pytest.mark.parametrize("mode", MODES)
def test_windowed_path_gives_the_whole_tile_path_segments(store, case, nodata, mode):
    engine = engine_with(store, CASES[case], nodata)
    found = sum(assert_same_segments(engine, MapPrompts().with_point(*point, 1), mode)
                for point in (POINT_LEFT, POINT_RIGHT))
    if mode in ("single", "all"):
        assert found > 0  # the case has something to compare (some candidates lie wholly in the padding)


@pytest.mark.parametrize("box", [(3.3, 2.5, 180.5, 150.5), (10.0, 10.0, 120.0, 199.0), (50.5, 50.5, 50.7, 60.0),
                                 (-20.0, -20.0, 200.0, 90.0), (150.4, 120.6, 299.0, 199.5),
                                 (60.0, 150.0, 250.0, 260.0)])
@pytest.mark.parametrize("mode", MODES)
def test_box_bounds_cut_the_same_pixels(store, box, mode):
    """Box edges through pixels and between centres, a box thinner than a pixel, boxes past the raster's
    top-left and bottom edges (clipped to the raster, so to the tile's valid rows)."""
    col0, row0, col1, row1 = box
    xmin, ymax = at(col0, row0)
    xmax, ymin = at(col1, row1)
    for case in ("edges", "holes_and_parts", "padding"):
        engine = engine_with(store, CASES[case], nodata=True)
        assert_same_segments(engine, MapPrompts().with_box((xmin, ymin, xmax, ymax)), mode)


@pytest.mark.parametrize("options", [dict(simplify_tolerance=15.0), dict(min_area_pixels=30.0),
                                     dict(keep_holes=False), dict(min_area_pixels=10.0, keep_holes=False)])
def test_vectorising_options_give_the_same_polygons(store, options):
    engine = engine_with(store, CASES["holes_and_parts"], nodata=True)
    assert assert_same_segments(engine, MapPrompts().with_point(*POINT_LEFT, 1), "all", **options) > 0


def test_real_decoder_gives_the_whole_tile_path_segments(store):
    engine = SegmentEngine(store)
    for mode in MODES:
        prompts = MapPrompts().with_point(*at(140.5, 100.5), 1)
        expected = whole_tile_segments(engine, prompts, mode)
        actual = engine.segment(prompts, mode)
        assert [s.mask_pixels for s in actual] == [pixels for _, pixels, _ in expected]
        for segment, (_, _, geometry) in zip(actual, expected):
            assert shapely.equals_exact(shapely.wkb.loads(segment.geometry.wkb), shapely.wkb.loads(geometry.wkb),
                                        tolerance=TOLERANCE)


def test_click_path_builds_no_tile_sized_mask(store, monkeypatch):
    """`segment` never asks for the (K, S, S) masks: every step runs on windows."""
    def refuse(*args):
        raise AssertionError("the click path built tile-sized masks")

    monkeypatch.setattr(mask_decoding, "upsample_masks", refuse)
    engine = engine_with(store, CASES["holes_and_parts"], nodata=True)
    for mode in MODES:
        assert engine.segment(MapPrompts().with_point(*POINT_LEFT, 1), mode)


@pytest.mark.parametrize("bounds", [None, (0, SIZE, 0, SIZE), (10, 200, 5, 150), (40, 41, 0, SIZE), (300, 400, 0, 9)])
def test_upsample_window_is_the_whole_upsampling_cut(bounds: Optional[Tuple[int, int, int, int]]):
    logits = np.stack([value for case in CASES.values() for value in case])
    whole = upsample_logits(logits, SIZE) > 0.0
    np.testing.assert_array_equal(upsample_masks(logits, SIZE, 0.0), whole)
    for k, low_res in enumerate(logits):
        window = upsample_window(low_res, SIZE, 0.0, bounds)
        row0, row1, col0, col1 = bounds or (0, SIZE, 0, SIZE)
        expected = np.zeros((SIZE, SIZE), bool)
        expected[row0:row1, col0:col1] = whole[k, row0:row1, col0:col1]
        placed = np.zeros((SIZE, SIZE), bool)
        if window is not None:
            height, width = window.crop.shape
            placed[window.row0:window.row0 + height, window.col0:window.col0 + width] = window.crop
            assert window.pixels == int(expected.sum())
        np.testing.assert_array_equal(placed, expected)


def test_chosen_masks_are_the_full_masks_cut(store):
    """The masks themselves (not only their polygons): each chosen window, placed in a tile, equals the
    whole-tile mask clipped by valid pixels and bounds; only the needed candidates are upsampled."""
    tile = next(iter(store.grid))
    valid = Nodata().get(tile)
    decoder = StubDecoder(CASES["edges"])
    kept = 0
    for mode in MODES:
        result = decoder.decode(None, None, multimask=mode != "single")
        bounds = mask_bounds(tile, (12.5, 3.0, 240.2, 190.7))
        row0, row1, col0, col1 = bounds
        full = (upsample_logits(result.logits, SIZE) > 0.0) & valid
        for index, window in chosen_masks(result, mode, bounds, valid):
            expected = np.zeros((SIZE, SIZE), bool)
            expected[row0:row1, col0:col1] = full[index, row0:row1, col0:col1]
            placed = np.zeros((SIZE, SIZE), bool)
            if window is not None:
                height, width = window.crop.shape
                placed[window.row0:window.row0 + height, window.col0:window.col0 + width] = window.crop
            np.testing.assert_array_equal(placed, expected)
            kept += placed.any()
    assert kept >= 5


def test_masks_given_to_a_decode_result_are_the_ones_cut(store):
    """A DecodeResult made with its masks (dataclasses.replace(result, masks=...), as tests and callers do)
    gives windows of those masks, not of its logits."""
    result = StubDecoder(CASES["edges"]).decode(None, None, multimask=True)
    given = np.zeros((3, SIZE, SIZE), bool)
    given[1, 40:50, 7:9] = True
    replaced = dataclasses.replace(result, masks=given)
    assert replaced.masks is given and replaced.window(0) is None
    window = replaced.window(1, (0, 45, 8, SIZE))
    assert (window.row0, window.col0, window.crop.shape, window.pixels) == (40, 8, (5, 1), 5)
    assert result.masks.any(axis=(1, 2)).all()  # its own masks, from the logits, are not those


@pytest.mark.parametrize("threshold", [0.0, 0.5, -1.0])
@pytest.mark.parametrize("scale", [1e-6, 1.0, 40.0])
def test_upsampling_computes_every_pixel_near_the_threshold_exactly(threshold, scale):
    """Only a band along the mask's edge is interpolated; pixels between rows on both sides of the threshold,
    rows just past it, zeros and large logits come out as the plain bilinear upsampling's, pixel for pixel."""
    rng = np.random.default_rng(abs(int(scale * 7) + int(threshold * 3)))
    smooth = np.repeat(np.repeat(rng.normal(0, 1, (2, 8, 8)), 8, axis=1), 8, axis=2)
    logits = (smooth + rng.normal(0, 0.3, (2, LOW, LOW))).astype(np.float32) * scale + threshold
    logits[0, 10:20, 10:20] = threshold  # exactly at the threshold: never above
    logits[1, ::7] = np.nextafter(np.float32(threshold), np.float32(np.inf))  # just above it
    expected = upsample_logits(logits, SIZE) > threshold
    differ = upsample_masks(logits, SIZE, threshold) != expected
    if threshold == 0.0:
        assert not differ.any()
    else:  # outside a mask's window nothing is computed; the plain path may round a mix of values <= t above t
        for k in range(2):
            window = upsample_window(logits[k], SIZE, threshold)
            height, width = window.crop.shape
            np.testing.assert_array_equal(window.crop, expected[k, window.row0:window.row0 + height,
                                                                window.col0:window.col0 + width])


# -- committing: the dock keeps the output file open for writing between accepts --------------------------------


def ogr_ids(path: Path) -> list:
    """The objects' ids read through a separate GDAL connection: what is really on disk."""
    dataset = ogr.Open(str(path))
    ids = [feature.GetField("id") for feature in dataset.GetLayerByName("segments")]
    dataset = None
    return ids


def test_dock_commits_each_accept_keeps_the_file_open_for_writing_and_lets_it_go(store, qgis_app, tmp_path):
    project = QgsProject()
    output = ObjectOutput(project)
    output.bind(store, raster_crs(store))
    engine = engine_with(store, CASES["holes_and_parts"], nodata=False)
    prompts = MapPrompts().with_point(*POINT_LEFT, 1)
    accepted = AcceptedObject(prompts, tuple(engine.segment(prompts)))
    try:
        assert output.commit(accepted).saved and output.commit(accepted).saved
        layer = output.layer()
        assert output._access[0].layer_id == layer.id()  # held between accepts
        assert not layer.isEditable() and ogr_ids(store.root / OUTPUT_FILE) == [1, 2]  # on disk at once

        layer.startEditing()  # the user edits the layer: the object stays in their session, undoable
        result = output.commit(accepted)
        assert not result.saved and layer.isEditable() and ogr_ids(store.root / OUTPUT_FILE) == [1, 2]
        layer.undoStack().undo()
        assert layer.featureCount() == 2
        layer.rollBack()

        project.removeMapLayer(layer.id())
        assert output._access[0].layer_id is None  # let go before the layer went
        assert output.commit(accepted).object_ids == [3] and ogr_ids(store.root / OUTPUT_FILE) == [1, 2, 3]
    finally:
        output.release()
        assert output._access[0].layer_id is None
        project.clear()
        (store.root / OUTPUT_FILE).unlink()


CRASH = """
import os, sys
from pathlib import Path
from qgis.core import (QgsApplication, QgsCoordinateReferenceSystem, QgsCoordinateTransformContext, QgsFeature,
                       QgsGeometry)
app = QgsApplication([], False)
app.initQgis()
from quicksam.ui.dock.object_writer import WriteAccess, add_features
from quicksam.ui.layers import open_or_create_output_layer
layer = open_or_create_output_layer(Path(sys.argv[1]), QgsCoordinateReferenceSystem("EPSG:32633"),
                                    QgsCoordinateTransformContext())
WriteAccess().hold(layer)
for i in range(1, 4):
    feature = QgsFeature(layer.fields())
    feature.setGeometry(QgsGeometry.fromWkt(f"MultiPolygon((({i} 0, {i} 1, {i + 1} 1, {i} 0)))"))
    feature.setAttribute("id", i)
    assert add_features(layer, [feature])
os._exit(9)  # a crash: nothing closes the file
"""


def test_accepted_objects_survive_a_crash_while_the_file_is_held(tmp_path):
    path = tmp_path / "segments.gpkg"
    result = subprocess.run([sys.executable, "-c", CRASH, str(path)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert result.returncode == 9, result.stderr
    assert ogr_ids(path) == [1, 2, 3]
