"""Segment everything upsamples each candidate only in the window that can hold its pixels: the same candidates
(box, pixels) as upsampling it to the whole tile, on full and partial tiles, with and without nodata."""

from __future__ import annotations

import numpy as np
import pytest

from quicksam.core.mask_decoding import DecoderSettings
from quicksam.core.tiling import TileGrid
from quicksam.interactive.mask_generator import _Candidate, _object_masks, _window_candidate

#: tiles of a raster larger than a tile, and of one smaller than a tile (its right and bottom are padding)
TILES = (TileGrid.build(400, 300, tile_size=256, overlap=64).tiles
         + TileGrid.build(200, 150, tile_size=256, overlap=64).tiles)


class Decoder:
    image_size = 256
    settings = DecoderSettings()


def _logit_maps(rng: np.random.Generator) -> list:
    """(64, 64) logit maps: blobs of several sizes (some at the edges), speckle, one all below 0."""
    maps = []
    for _ in range(12):
        low = np.full((64, 64), -5.0, np.float32)
        r0, c0 = rng.integers(0, 64, 2)
        r1, c1 = min(64, r0 + rng.integers(1, 40)), min(64, c0 + rng.integers(1, 40))
        low[r0:r1, c0:c1] = rng.uniform(-1, 8, (r1 - r0, c1 - c0))
        maps.append(low)
    maps.append(rng.normal(0, 2, (64, 64)).astype(np.float32))
    maps.append(np.full((64, 64), -1.0, np.float32))
    maps.append(np.full((64, 64), 3.0, np.float32))
    return maps


@pytest.mark.parametrize("with_nodata", [False, True])
def test_the_window_gives_the_same_candidates_as_the_whole_tile(with_nodata):
    rng = np.random.default_rng(3)
    valid = None
    if with_nodata:
        valid = np.ones((256, 256), bool)
        valid[:, :90] = False
        valid[200:, :] = False
    assert any(tile.valid_width < 256 and tile.valid_height < 256 for tile in TILES)
    for tile in TILES:
        for low in _logit_maps(rng):
            whole = _Candidate.of(_object_masks(Decoder, low[None], tile, valid)[0], 0.5, 0.5)
            window = _window_candidate(Decoder, low, tile, valid, 0.5, 0.5)
            if whole is None:
                assert window is None
                continue
            # booleans of the same float arithmetic in the same order: compared exactly
            assert window is not None and window.box == whole.box
            assert np.array_equal(window.crop(), whole.crop())


def test_segment_everything_writes_the_same_objects_as_with_whole_tile_upsampling(tmp_path, monkeypatch):
    """The output before the window change (each candidate upsampled to the whole tile) and after it: the same
    count, ids, scores and geometries (exactly: the same pixels give the same polygons)."""
    from osgeo import ogr
    from synthetic import two_tile_store

    from quicksam.interactive import mask_generator
    from quicksam.interactive.automatic import AutoMaskSettings, segment_everything

    store = two_tile_store(tmp_path)
    settings = AutoMaskSettings(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                min_mask_region_area=4, box_nms_thresh=0.99)

    def rows(path):
        dataset = ogr.Open(str(path))
        found = [(f["id"], f["predicted_iou"], f["stability_score"], f["tile_ids"],
                  f.GetGeometryRef().ExportToWkb()) for f in dataset.GetLayer(0)]
        dataset = None
        return found

    after = rows(segment_everything(store, tmp_path / "window.gpkg", settings).output)

    def whole_tile(decoder, low_res, tile, valid, score, stability):
        return _Candidate.of(_object_masks(decoder, low_res[None], tile, valid)[0], score, stability)

    monkeypatch.setattr(mask_generator, "_window_candidate", whole_tile)
    before = rows(segment_everything(store, tmp_path / "whole.gpkg", settings).output)
    assert len(after) > 1 and after == before
