"""Segment everything (interactive/automatic.py, quicksam:segmentall, `quicksam segment-all`).

1. The merge rule on synthetic masks whose right answer is known: each object is drawn on a raster-sized
   canvas, every tile "sees" the part inside its window (as a model would), and the ownership rule and the
   merge must give back exactly the drawn objects, once each.
2. Plumbing with the seeded random tiny model on a two-tile store (masks are meaningless; counts,
   attributes, resume after a kill, cancel and bad input are not).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pytest
import shapely
import shapely.wkb
from osgeo import ogr
from synthetic import assert_one_line_error, encode, landsat_path, run_cli, square_scene, two_tile_store, write_raster

from quicksam.core.errors import Cancelled, QuickSamError
from quicksam.core.mask_decoding import DecoderSettings, postprocess, upsample_masks
from quicksam.core.store import FeatureStore
from quicksam.core.tiling import TileGrid
from quicksam.interactive.automatic import AutoMaskSettings, partial_path, segment_everything
from quicksam.interactive.border_merge import BorderMerge, MemoryStaging
from quicksam.interactive.mask_generator import box_nms, point_grid
from quicksam.interactive.tile_merge import TileMask, assign_masks, tile_regions, trimmed

# -- 1. the merge rule ------------------------------------------------------------------------------------

# 400 x 256 px, 256 px tiles, 64 px overlap: tiles at columns 0..256 and 144..400; they split their
# overlap at column 200.
ONE_ROW = TileGrid.build(400, 256, tile_size=256, overlap=64)
# 400 x 400: a 2 x 2 grid, split at column 200 and row 200.
TWO_BY_TWO = TileGrid.build(400, 400, tile_size=256, overlap=64)


def rect(grid: TileGrid, col0: int, row0: int, col1: int, row1: int) -> np.ndarray:
    canvas = np.zeros((grid.raster_height, grid.raster_width), dtype=bool)
    canvas[row0:row1, col0:col1] = True
    return canvas


def run_rule(grid: TileGrid, objects: Sequence[Union[np.ndarray, Dict[str, np.ndarray]]],
             processed: Optional[Sequence[str]] = None, staging: Optional[MemoryStaging] = None) -> List[np.ndarray]:
    """The objects as the rule writes them, tile by tile in grid order as a run does (complete masks at
    once, merged ones when the streamed merge releases them), each as a raster-sized mask."""
    merge = BorderMerge(tile_regions(list(grid), processed))
    staging = staging if staging is not None else MemoryStaging()
    written, done = [], set()
    for tile in grid:
        if tile.tile_id not in merge.regions:
            continue
        seen = []
        for drawn in objects:  # one canvas for all tiles, or {tile_id: that tile's view of the object}
            canvas = drawn.get(tile.tile_id) if isinstance(drawn, dict) else drawn
            if canvas is None:
                continue
            window = canvas[tile.row_off:tile.row_off + tile.valid_height, tile.col_off:tile.col_off + tile.valid_width]
            mask = trimmed(TileMask(tile.tile_id, tile.col_off, tile.row_off, window.copy()))
            if mask is not None:
                seen.append(mask)
        assignment = assign_masks(merge.regions[tile.tile_id], seen)
        done.add(tile.tile_id)
        written += assignment.complete
        written += [item.mask for item in merge.tile_done(staging, done, tile.tile_id, assignment)]
    assert len(staging) == 0, "masks left staged after the last tile"
    canvases = []
    for mask in written:
        canvas = np.zeros((grid.raster_height, grid.raster_width), dtype=bool)
        canvas[mask.row0:mask.row1, mask.col0:mask.col1] = mask.crop
        canvases.append(canvas)
    return canvases


def assert_same_objects(actual: List[np.ndarray], expected: Sequence[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    remaining = list(actual)
    for want in expected:
        match = [i for i, got in enumerate(remaining) if np.array_equal(got, want)]
        assert match, "an expected object is missing or cut"
        remaining.pop(match[0])


def test_regions_split_the_overlap_in_the_middle():
    regions = tile_regions(list(ONE_ROW))
    assert [r.cell for r in regions.values()] == [(0, 0, 200, 256), (200, 0, 400, 256)]
    assert [r.inner for r in regions.values()] == [(False, False, True, False), (True, False, False, False)]


@pytest.mark.parametrize("box", [(100, 50, 300, 120),  # wider than the overlap: cut in both tiles
                                 (160, 60, 240, 90),  # inside the overlap: whole in both tiles
                                 (150, 10, 256, 40),  # ends on the first tile's edge
                                 (0, 0, 400, 256)])  # the whole raster
def test_one_object_comes_out_once_and_whole(box):
    expected = [rect(ONE_ROW, *box)]
    assert_same_objects(run_rule(ONE_ROW, expected), expected)


def test_two_slightly_different_views_of_one_object_at_the_split_give_one_object():
    # a model sees an object a little differently from each tile: here each view's centroid falls on its
    # own tile's side of the split (column 200), so both tiles would claim it
    left_view, right_view = rect(ONE_ROW, 183, 50, 213, 80), rect(ONE_ROW, 187, 50, 217, 80)
    written = run_rule(ONE_ROW, [{"r0000c0000": left_view, "r0000c0001": right_view}])
    assert len(written) == 1 and (np.array_equal(written[0], left_view) or np.array_equal(written[0], right_view))
    # two distinct objects side by side near the split are not mistaken for one
    apart = [rect(ONE_ROW, 170, 50, 198, 80), rect(ONE_ROW, 202, 50, 230, 80)]
    assert_same_objects(run_rule(ONE_ROW, apart), apart)


def test_two_touching_objects_stay_two():
    side_by_side = [rect(ONE_ROW, 150, 50, 200, 100), rect(ONE_ROW, 200, 50, 250, 100)]  # touch on the split line
    stacked = [rect(ONE_ROW, 100, 150, 300, 180), rect(ONE_ROW, 100, 180, 300, 210)]  # both cut, touching
    for objects in (side_by_side, stacked):
        assert_same_objects(run_rule(ONE_ROW, objects), objects)


def test_an_object_inside_another_is_not_joined_to_it():
    objects = [rect(ONE_ROW, 100, 50, 300, 150), rect(ONE_ROW, 170, 60, 260, 80)]
    assert_same_objects(run_rule(ONE_ROW, objects), objects)


def test_an_object_whose_centroid_lies_past_the_split_keeps_its_tail():
    shape = rect(ONE_ROW, 150, 100, 152, 102) | rect(ONE_ROW, 150, 101, 250, 102) | rect(ONE_ROW, 230, 80, 250, 140)
    assert_same_objects(run_rule(ONE_ROW, [shape]), [shape])


def test_an_object_over_a_four_tile_corner_is_one():
    objects = [rect(TWO_BY_TWO, 120, 130, 290, 280), rect(TWO_BY_TWO, 10, 10, 60, 60),
               rect(TWO_BY_TWO, 180, 300, 230, 330)]
    assert_same_objects(run_rule(TWO_BY_TWO, objects), objects)


def test_an_l_shaped_selection_writes_each_object_once_and_leaves_the_missing_cell_alone():
    # an area of interest that takes three tiles of the 2 x 2 grid, not the bottom-right one (D): the
    # windows of all three overlap at the concave corner; cells still partition the raster
    processed = ["r0000c0000", "r0000c0001", "r0001c0000"]
    regions = tile_regions(list(TWO_BY_TWO), processed)
    assert regions["r0000c0001"].cell == (200, 0, 400, 200) and regions["r0001c0000"].cell == (0, 200, 200, 400)
    kept = [rect(TWO_BY_TWO, 150, 150, 190, 190),  # seen whole by all three, centred in A's cell
            rect(TWO_BY_TWO, 150, 50, 250, 100),  # cut in A and B, joined
            rect(TWO_BY_TWO, 50, 150, 100, 250),  # cut in A and C, joined
            rect(TWO_BY_TWO, 300, 150, 350, 230)]  # whole in B, reaching into D's cell
    in_missing_cell = [rect(TWO_BY_TWO, 210, 210, 250, 250),  # seen whole by B and C: D's object, not theirs
                       rect(TWO_BY_TWO, 300, 220, 350, 300)]  # cut by B's bottom edge, centred in D's cell
    assert_same_objects(run_rule(TWO_BY_TWO, kept + in_missing_cell, processed), kept)


def _border_objects(grid: TileGrid) -> List[np.ndarray]:
    """One object across each vertical cell border of a one-row grid, cut by both tiles' edges."""
    regions = tile_regions(list(grid))
    splits = [region.cell[2] for region in regions.values()][:-1]
    return [rect(grid, split - 60, 100, split + 60, 140) for split in splits]


def test_the_merge_holds_as_few_pieces_for_a_long_raster_as_for_a_short_one():
    peaks = []
    for tiles in (4, 12):
        grid = TileGrid.build(192 * (tiles - 1) + 256, 256, tile_size=256, overlap=64)
        assert len(grid) == tiles
        objects, staging = _border_objects(grid), MemoryStaging()
        assert_same_objects(run_rule(grid, objects, staging=staging), objects)
        peaks.append(staging.most_loaded)
    assert 0 < peaks[0] == peaks[1] <= 6  # two pieces per tile, about three tiles waiting


def test_point_grid_and_nms():
    tile = ONE_ROW.tiles[0]
    points = point_grid(tile, 4)
    assert points.shape == (16, 2) and points[0].tolist() == [32.0, 32.0] and points[-1].tolist() == [224.0, 224.0]
    boxes = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 30, 30]], float)
    assert box_nms(boxes, np.array([0.5, 0.9, 0.1]), 0.7) == [1, 2]


def test_removing_small_regions_on_a_masks_box_equals_doing_it_on_the_whole_tile():
    # segment everything sieves each mask on its bounding box only; the background around must behave
    # as the whole tile's does, also for boxes smaller than the minimum region
    from quicksam.interactive.mask_generator import remove_small_regions
    from quicksam.interactive.tile_merge import pixel_bounds

    rng = np.random.default_rng(1)
    for _ in range(60):
        tile = np.zeros((128, 128), dtype=bool)
        for _ in range(rng.integers(1, 6)):
            row, col = rng.integers(0, 120, 2)
            height, width = rng.integers(1, 40, 2)
            tile[row:row + height, col:col + width] = True
        tile &= rng.random(tile.shape) > 0.05  # speckle holes
        x0, y0, x1, y1 = pixel_bounds(tile)
        for min_pixels in (4, 30, 100):
            on_box = np.zeros_like(tile)
            on_box[y0:y1, x0:x1] = remove_small_regions(tile[y0:y1, x0:x1], min_pixels)
            np.testing.assert_array_equal(on_box, remove_small_regions(tile, min_pixels))


# -- 2. plumbing with the random model ------------------------------------------------------------------------

#: Thresholds the random model's masks pass; 4 x 4 points per tile keep the test fast.
LOOSE = AutoMaskSettings(points_per_side=4, points_per_batch=5, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                         box_nms_thresh=0.9, min_mask_region_area=4)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    return two_tile_store(tmp_path_factory.mktemp("segment-all-store"))


def read_rows(path: Path) -> List[dict]:
    dataset = ogr.Open(str(path))
    assert [dataset.GetLayer(i).GetName() for i in range(dataset.GetLayerCount())] == ["segments"]
    rows = []
    for feature in dataset.GetLayerByName("segments"):
        row = {key: feature[key] for key in ("id", "predicted_iou", "stability_score", "area", "area_m2", "tile_ids",
                                             "model", "checkpoint")}
        row["geometry"] = shapely.wkb.loads(bytes(feature.GetGeometryRef().ExportToIsoWkb()))
        rows.append(row)
    return rows


def signature(rows: List[dict]) -> List[Tuple]:
    """What must be the same between two runs: ids, tiles and pixel-exact geometries (vertices on pixel
    corners), and scores to within 1e-5 (decoder floats vary in the last bits with batch size and CPU)."""
    return sorted((r["id"], ScoreTol(r["predicted_iou"]), r["tile_ids"], shapely.normalize(r["geometry"]).wkt)
                  for r in rows)


class ScoreTol(float):
    """A score compared with an absolute tolerance of 1e-5 (scores lie in [0, 1])."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, float) and abs(float(self) - float(other)) <= 1e-5

    __hash__ = float.__hash__


def assert_same_objects_nearly(actual: List[dict], expected: List[dict], rel_area: float = 0.01) -> None:
    """Two runs that decode in other batch sizes: the logits differ in the last bits, so a pixel whose logit
    is within rounding of the threshold may flip. Same number of objects, each within 1 % of area."""
    assert len(actual) == len(expected)
    remaining = [row["geometry"] for row in actual]
    for row in expected:
        want = row["geometry"]
        match = [i for i, got in enumerate(remaining) if got.symmetric_difference(want).area <= rel_area * want.area]
        assert match, f"object {row['id']} has no counterpart within {rel_area:.0%} of its area"
        remaining.pop(match[0])


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory) -> List[dict]:
    output = tmp_path_factory.mktemp("reference") / "all.gpkg"
    result = segment_everything(store, output, LOOSE)
    assert (result.tiles, result.tiles_resumed) == (2, 0)
    rows = read_rows(output)
    assert len(rows) == result.objects > 0
    assert not partial_path(output).exists()
    return rows


def test_attributes_and_no_overlapping_copies(store, reference):
    assert sorted(r["id"] for r in reference) == list(range(1, len(reference) + 1))
    for row in reference:
        assert row["model"] == store.model_name and row["checkpoint"] == store.checkpoint_sha256
        assert set(row["tile_ids"].split(",")) <= {"r0000c0000", "r0000c0001"}
        assert 0 <= row["stability_score"] <= 1
        assert row["area"] == pytest.approx(row["geometry"].area)
        assert row["geometry"].is_valid
    geometries = [r["geometry"] for r in reference]
    for i, a in enumerate(geometries):  # no object written twice (identical geometry)
        assert not any(a.equals(b) for b in geometries[i + 1:])


class HandDecoder:
    """A decoder that gives the same hand-made outputs for every prompt: (4, L, L) logits (output 0 = the
    single mask, 1..3 = SAM's three candidates) and (4,) scores, in OnnxDecoder's interface."""

    def __init__(self, logits: np.ndarray, scores: np.ndarray, image_size: int):
        self.logits, self.scores, self.image_size = logits, scores, image_size
        self.settings = DecoderSettings()
        self.preferred_batch = 4

    def raw_points(self, features, points) -> Tuple[np.ndarray, np.ndarray]:
        count = len(points)
        return np.repeat(self.logits[None], count, axis=0), np.repeat(self.scores[None], count, axis=0)

    def decode(self, features, prompts, multimask: bool = True):
        return postprocess(self.logits, self.scores, multimask, self.settings, self.image_size)


def area_test_logits(size: int) -> np.ndarray:
    """(4, L, L) logits, L = size / 4, whose three candidates rank one way by low-resolution area and
    another by the area of the upsampled mask (the mask that becomes the polygon):
    1: a 2 x 2 block plus 100 isolated weak pixels (low-res 104 px; the weak pixels vanish when upsampled,
       ~8 x 8 px at tile resolution); 2: a 6 x 6 block (36 px; ~24 x 24); 3: a 3 x 3 block (9 px; ~12 x 12)."""
    low = size // 4
    logits = np.full((4, low, low), -10.0, dtype=np.float32)
    logits[1, 4:6, 4:6] = 10.0
    for i in range(100):  # a bilinear mix of 0.1 with its -10 neighbours never rises above 0
        logits[1, 20 + 3 * (i // 10), 20 + 3 * (i % 10)] = 0.1
    logits[2, 40:46, 40:46] = 10.0
    logits[3, 4:7, 50:53] = 10.0
    logits[0] = logits[2]
    return logits


def test_largest_and_smallest_are_chosen_by_the_area_of_the_polygons_mask(store):
    """The interactive stage chose by the upsampled mask's area, segment everything by the low-resolution
    logits' area; with these logits the two disagree. Both now choose by the area of the mask that becomes
    the polygon: the same candidate in both stages."""
    from quicksam.interactive.engine import MapPrompts, SegmentEngine
    from quicksam.interactive.mask_generator import tile_masks

    size = store.image_size
    logits = area_test_logits(size)
    full = upsample_masks(logits[1:], size, 0.0).reshape(3, -1).sum(axis=1)  # candidates 1..3
    low = (logits[1:] > 0).reshape(3, -1).sum(axis=1)
    assert (np.argmax(low), np.argmin(low)) == (0, 2) and (np.argmax(full), np.argmin(full)) == (1, 0)
    decoder = HandDecoder(logits, np.array([0.9, 0.8, 0.7, 0.6], np.float32), size)
    engine = SegmentEngine(store)
    engine.decoder = decoder
    tile = store.grid.tiles[0]
    prompts = MapPrompts(points=(_tile_centre(store, tile),), labels=(1,))
    for mode, expected in (("largest", full[1]), ("smallest", full[0])):
        settings = AutoMaskSettings(points_per_side=1, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                    min_mask_region_area=0, mask_mode=mode)
        (mask,) = tile_masks(decoder, {}, tile, settings, engine.valid_masks.get(tile))
        assert mask.pixels == expected, mode
        (segment,) = engine.segment(prompts, mode=mode)
        assert segment.mask_pixels == expected, mode


def _tile_centre(store: FeatureStore, tile) -> Tuple[float, float]:
    from quicksam.core.geo import pixel_to_map

    return pixel_to_map(store.geotransform, tile.col_off + 64.5, tile.row_off + 64.5)


def test_points_per_batch_changes_speed_and_memory_not_the_result(store, tmp_path, reference, monkeypatch):
    from quicksam.interactive.engine import SegmentEngine

    engine, tile = SegmentEngine(store), store.grid.tiles[0]
    decoder, features = engine.decoder, engine.cache.get(tile.tile_id)
    assert decoder.batched and decoder.preferred_batch == 4  # many prompts per call; 4 is fastest on a CPU
    batched = decoder.raw_points(features, point_grid(tile, 3))
    monkeypatch.setattr(decoder, "batched", False)  # as an older store's decoder
    one_by_one = decoder.raw_points(features, point_grid(tile, 3))
    assert decoder.preferred_batch == 1
    assert batched[0].shape == one_by_one[0].shape == (9, 4, 64, 64)
    np.testing.assert_allclose(batched[0], one_by_one[0], atol=1e-4)
    np.testing.assert_allclose(batched[1], one_by_one[1], atol=1e-5)
    monkeypatch.undo()
    settings = AutoMaskSettings(**{**LOOSE.to_dict(), "points_per_batch": 16})
    segment_everything(store, tmp_path / "batched.gpkg", settings)
    assert_same_objects_nearly(read_rows(tmp_path / "batched.gpkg"), reference)


def test_area_filters(store, tmp_path, reference):
    areas = sorted(r["area"] for r in reference)
    limit = areas[len(areas) // 2]
    settings = AutoMaskSettings(**{**LOOSE.to_dict(), "max_object_area": limit})
    segment_everything(store, tmp_path / "small.gpkg", settings)
    assert all(r["area"] <= limit for r in read_rows(tmp_path / "small.gpkg"))


def test_cancel_then_resume_gives_the_same_output(store, tmp_path, reference):
    output = tmp_path / "out.gpkg"
    finished = []  # cancelled once the first tile is finished
    with pytest.raises(Cancelled, match="resume"):
        segment_everything(store, output, LOOSE, progress=lambda event: event.tile_finished and finished.append(event),
                           cancelled=lambda: bool(finished))
    assert not output.exists() and partial_path(output).exists()
    result = segment_everything(store, output, LOOSE)
    assert result.tiles_resumed == 1
    assert signature(read_rows(output)) == signature(reference)


def kill_after_tiles(store: FeatureStore, output: Path, tiles: int) -> None:
    """Run segment everything in another process and SIGKILL it right after `tiles` tiles are committed."""
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from quicksam.core.store import FeatureStore
        from quicksam.interactive.automatic import AutoMaskSettings, segment_everything
        settings = AutoMaskSettings(**{LOOSE.to_dict()!r})
        def on_progress(event):
            if event.tile_finished and event.done == {tiles}:
                os.kill(os.getpid(), signal.SIGKILL)
        segment_everything(FeatureStore.open(Path({str(store.root)!r})), Path({str(output)!r}), settings,
                           progress=on_progress)
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not output.exists() and partial_path(output).exists()


def test_a_killed_run_resumes_without_duplicates(store, tmp_path, reference):
    output = tmp_path / "killed.gpkg"
    kill_after_tiles(store, output, 1)
    result = segment_everything(store, output, LOOSE)
    assert result.tiles_resumed == 1
    assert signature(read_rows(output)) == signature(reference)


def test_a_run_killed_with_border_pieces_waiting_resumes_to_the_same_objects(tmp_path):
    # a 3 x 3 grid: killed after 5 tiles, the merge still holds pieces of tiles not yet closed
    raster = write_raster(tmp_path / "grid.tif", square_scene(640, 640, (150, 150, 300)))
    grid_store, _ = encode(raster, tmp_path / "store", overlap=64)
    assert len(grid_store.grid) == 9
    uninterrupted = segment_everything(grid_store, tmp_path / "whole.gpkg", LOOSE)
    assert uninterrupted.merged_objects > 0  # objects joined across borders: the case under test
    output = tmp_path / "killed.gpkg"
    kill_after_tiles(grid_store, output, 5)
    run_file = ogr.Open(str(partial_path(output)))  # kept: its layers die with it
    assert run_file.GetLayerByName("quicksam_staged").GetFeatureCount() > 0
    run_file = None
    resumed = segment_everything(grid_store, output, LOOSE)
    assert resumed.tiles_resumed == 5
    assert signature(read_rows(output)) == signature(read_rows(tmp_path / "whole.gpkg"))


def test_bad_input_is_refused_plainly(store, tmp_path):
    existing = tmp_path / "exists.gpkg"
    existing.write_bytes(b"keep me")
    with pytest.raises(QuickSamError, match="exists"):
        segment_everything(store, existing, LOOSE)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(QuickSamError, match=r"unknown extension '\.xyz'; end it in one of \.gpkg \(GeoPackage\)"):
        segment_everything(store, tmp_path / "out.xyz", LOOSE)
    with pytest.raises(QuickSamError, match="does not exist"):
        segment_everything(store, tmp_path / "missing" / "out.gpkg", LOOSE)
    with pytest.raises(QuickSamError, match="points per side"):
        segment_everything(store, tmp_path / "out.gpkg", AutoMaskSettings(points_per_side=0))
    far_away = ogr.CreateGeometryFromWkt("POLYGON ((0 0, 1 0, 1 1, 0 0))").ExportToIsoWkb()
    with pytest.raises(QuickSamError, match="does not overlap"):
        segment_everything(store, tmp_path / "out.gpkg", LOOSE, area_wkbs=[bytes(far_away)])
    # an unfinished run with other settings is not mixed with this one
    output = tmp_path / "mixed.gpkg"
    with pytest.raises(Cancelled):
        segment_everything(store, output, LOOSE, cancelled=lambda: True)
    other = AutoMaskSettings(**{**LOOSE.to_dict(), "points_per_side": 3})
    with pytest.raises(QuickSamError, match="other settings"):
        segment_everything(store, output, other)
    segment_everything(store, output, other, overwrite=True)
    assert output.is_file()


def test_overwrite_is_worded_as_each_caller_asks_for_it(store, tmp_path, qgis_app, plugin):
    """One wording for one option: Processing names its parameter, the `quicksam` commands --overwrite (also
    where segment-all reaches the run file through the algorithm), Python callers the argument."""
    import processing
    from qgis.core import QgsProcessingException

    existing = tmp_path / "exists.gpkg"
    existing.write_bytes(b"keep me")
    with pytest.raises(QuickSamError, match=re.escape("delete it (or pass overwrite=True)")):
        segment_everything(store, existing, LOOSE)
    with pytest.raises(QgsProcessingException) as raised:
        processing.run("quicksam:segmentall", {"STORE": str(store.root), "OUTPUT": str(existing)})
    assert str(raised.value).endswith("delete it (or tick 'Overwrite an existing output' (OVERWRITE))")
    assert existing.read_bytes() == b"keep me"

    unfinished = tmp_path / "unfinished.gpkg"
    with pytest.raises(Cancelled):
        segment_everything(store, unfinished, LOOSE, cancelled=lambda: True)
    parameters = {"STORE": str(store.root), "POINTS_PER_SIDE": 3, "OUTPUT": str(unfinished)}
    with pytest.raises(QgsProcessingException) as raised:
        processing.run("quicksam:segmentall", parameters)
    assert str(raised.value).endswith(
        "or tick 'Overwrite an existing output' (OVERWRITE) to start again")
    result = run_cli("segment-all", store.root, "--output", unfinished, "--points-per-side", "3")
    assert_one_line_error(result, r"holds an unfinished run with other settings .*, or pass --overwrite to start "
                                  r"again$")
    assert not unfinished.exists() and partial_path(unfinished).exists()


def test_the_run_file_counts_its_rows_not_the_cached_feature_counts(tmp_path):
    """A full disk can leave a GeoPackage's cached feature counts (gpkg_ogr_contents) wrong: the rows were rolled
    back, the count was not. A resumed run then stopped with "still holds staged pieces" although none was
    left, and could report a wrong number of objects."""
    import sqlite3

    from osgeo import osr

    from quicksam.interactive.run_file import RunFile

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    path = tmp_path / "out.partial.gpkg"
    RunFile.create(path, srs.ExportToWkt(), {"run": 1}).close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE gpkg_ogr_contents SET feature_count = 2 WHERE table_name IN ('quicksam_staged', 'segments')")
    run = RunFile.open(path, {"run": 1})
    try:
        assert (run.staged_count(), run.object_count(), run.object_count(joined=True)) == (0, 0, 0)
    finally:
        run.close()


def test_a_corrupt_tile_stops_the_run_plainly_and_keeps_the_finished_tiles(store, tmp_path, reference):
    damaged = FeatureStore.open(Path(shutil.copytree(store.root, tmp_path / "store")))
    output = tmp_path / "out.gpkg"
    finished: list = []
    with pytest.raises(Cancelled):   # a first run, stopped after its first tile
        segment_everything(damaged, output, LOOSE, cancelled=lambda: len(finished) >= 1,
                           progress=lambda event: event.tile_finished and finished.append(event))
    second = damaged.grid.tiles[1].tile_id
    path = damaged.tile_path(second)
    data = bytearray(path.read_bytes())
    data[-100:] = bytes(100)  # a damaged disk block at the end of the second tile
    path.write_bytes(bytes(data))
    with pytest.raises(QuickSamError, match=f"1 damaged tile.*tile {second}: .* corrupt.*'quicksam encode'"):
        segment_everything(FeatureStore.open(damaged.root), output, LOOSE)   # checked before any tile
    assert not output.exists() and partial_path(output).exists()
    # re-encoded (here: the good copy put back), the same command resumes after the finished tile
    path.write_bytes((store.root / path.relative_to(damaged.root)).read_bytes())
    result = segment_everything(FeatureStore.open(damaged.root), output, LOOSE)
    assert result.tiles_resumed == 1 and signature(read_rows(output)) == signature(reference)


def test_an_unfinished_store_is_refused_unless_the_area_is_encoded(store, tmp_path):
    partial = Path(shutil.copytree(store.root, tmp_path / "store"))
    lines = (partial / "tiles.jsonl").read_text().splitlines()
    (partial / "tiles.jsonl").write_text(lines[0] + "\n")  # as if the encoder stopped after the first tile
    unfinished = FeatureStore.open(partial)
    with pytest.raises(QuickSamError, match="unfinished: 1 of the 2 tiles .* 'quicksam encode'"):
        segment_everything(unfinished, tmp_path / "all.gpkg", LOOSE)
    assert not (tmp_path / "all.gpkg").exists() and not partial_path(tmp_path / "all.gpkg").exists()
    a, b, _, d, _, f = unfinished.geotransform  # raster pixels 10..60 x 10..60: inside the first tile only
    inside_first = ogr.CreateGeometryFromWkt(
        f"POLYGON (({a + 10 * b} {d + 10 * f}, {a + 60 * b} {d + 10 * f}, {a + 60 * b} {d + 60 * f}, "
        f"{a + 10 * b} {d + 10 * f}))").ExportToIsoWkb()
    result = segment_everything(unfinished, tmp_path / "first.gpkg", LOOSE, area_wkbs=[bytes(inside_first)])
    assert result.tiles == 1


def test_processing_algorithm_with_an_aoi_in_another_crs(store, tmp_path, qgis_app, plugin):
    import processing
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    aoi = QgsVectorLayer("Polygon?crs=EPSG:4326", "aoi", "memory")
    feature = QgsFeature()
    # around raster pixel (50, 50) of the first tile only (EPSG:32633 -> lon/lat near 15°E, 37.9°N)
    feature.setGeometry(QgsGeometry.fromWkt("POLYGON ((15.0 37.946, 15.001 37.946, 15.001 37.945, 15.0 37.945, "
                                            "15.0 37.946))"))
    aoi.dataProvider().addFeatures([feature])
    output = tmp_path / "aoi.gpkg"
    params = {"STORE": str(store.root), "AOI": aoi, "POINTS_PER_SIDE": 4, "PRED_IOU_THRESH": 0.0,
              "STABILITY_SCORE_THRESH": 0.0, "OUTPUT": str(output)}
    results = processing.runAndLoadResults("quicksam:segmentall", params)  # as the toolbox runs it
    assert results["TILES"] == 1 and results["OUTPUT"] == str(output)
    assert {r["tile_ids"] for r in read_rows(output)} == {"r0000c0000"}
    from qgis.core import QgsProject

    loaded = QgsProject.instance().mapLayersByName("scene — objects (segment everything)")
    assert len(loaded) == 1 and loaded[0].featureCount() == results["OBJECTS"] > 0
    assert loaded[0].crs().authid() == "EPSG:32633"
    QgsProject.instance().removeMapLayer(loaded[0].id())
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="aoi.gpkg' already has a layer 'segments'"):
        processing.run("quicksam:segmentall", params)


@pytest.mark.slow
def test_cli_segment_all(store, tmp_path, reference):
    output = tmp_path / "cli.gpkg"
    loose = ["--points-per-side", "4", "--points-per-batch", "5", "--pred-iou-thresh", "0",
             "--stability-score-thresh", "0", "--box-nms-thresh", "0.9", "--min-mask-region-area", "4"]
    result = run_cli("segment-all", store.root, "--output", output, *loose)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["output"] == str(output) and summary["tiles"] == 2
    assert signature(read_rows(output)) == signature(reference)
    again = run_cli("segment-all", store.root, "--output", output, *loose)
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert "cli.gpkg' already has a layer 'segments'; choose another --layer" in again.stderr
    missing = run_cli("segment-all", tmp_path / "nothing", "--output", tmp_path / "x.gpkg")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert os.listdir(tmp_path) == ["cli.gpkg"]


@pytest.mark.slow
def test_cli_segment_all_with_an_aoi_file_and_an_extent(store, tmp_path):
    loose = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    aoi = tmp_path / "aoi.geojson"  # lon/lat around raster pixel (50, 50): the first tile only
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                   "geometry": {"type": "Polygon", "coordinates": [[[15.0, 37.946], [15.001, 37.946],
                                                                    [15.001, 37.945], [15.0, 37.945],
                                                                    [15.0, 37.946]]]}}]}))
    by_aoi = run_cli("segment-all", store.root, "--output", tmp_path / "aoi.gpkg", "--aoi", aoi, *loose)
    assert by_aoi.returncode == 0, by_aoi.stderr
    assert json.loads(by_aoi.stdout.splitlines()[-1])["tiles"] == 1
    assert {r["tile_ids"] for r in read_rows(tmp_path / "aoi.gpkg")} == {"r0000c0000"}
    # raster pixels 300..390 x 10..50, in the raster's CRS: the second tile only
    extent = "503000,4199500,503900,4199900"
    by_extent = run_cli("segment-all", store.root, "--output", tmp_path / "extent.gpkg", "--extent", extent, *loose)
    assert by_extent.returncode == 0, by_extent.stderr
    assert {r["tile_ids"] for r in read_rows(tmp_path / "extent.gpkg")} == {"r0000c0001"}
    apart = run_cli("segment-all", store.root, "--output", tmp_path / "none.gpkg", "--aoi", aoi, "--extent", extent)
    assert apart.returncode == 1 and "does not overlap" in apart.stderr and apart.stderr.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["aoi.geojson", "aoi.gpkg", "extent.gpkg"]


def test_the_real_landsat_raster_comes_out_in_its_crs_without_copies(tmp_path):
    store, _ = encode(landsat_path(), tmp_path / "store", overlap=64, bands=[3, 2, 1])
    assert len(store.grid) == 4  # 349 x 352 px in 256 px tiles: a 2 x 2 grid with 163 px overlaps
    settings = AutoMaskSettings(**{**LOOSE.to_dict(), "points_per_side": 8, "mask_mode": "best"})
    result = segment_everything(store, tmp_path / "olinda.gpkg", settings)
    dataset = ogr.Open(str(tmp_path / "olinda.gpkg"))
    assert dataset.GetLayerByName("segments").GetSpatialRef().GetAuthorityCode(None) == "31985"
    rows = read_rows(tmp_path / "olinda.gpkg")
    assert len(rows) == result.objects > 0 and result.tiles == 4
    a, b, _, d, _, f = store.geotransform
    bounds = shapely.box(a, d + 352 * f, a + 349 * b, d)
    for i, row in enumerate(rows):
        assert row["geometry"].is_valid and bounds.buffer(1e-6).contains(row["geometry"])
        for other in rows[i + 1:]:  # no object written twice by two overlapping tiles (nested ones may be)
            union = row["geometry"].union(other["geometry"]).area
            assert row["geometry"].intersection(other["geometry"]).area < 0.9 * union


# -- 3. what a run tells its user: progress per batch, why nothing passed, layer names, the summary ------------


def test_progress_is_reported_per_batch_of_points_and_cancel_stops_inside_a_tile(store, tmp_path):
    events = []
    result = segment_everything(store, tmp_path / "all.gpkg", LOOSE, progress=events.append)
    # 16 points per tile in batches of 5: 4 batches, then the tile's own event
    per_tile = [(e.tile_id, e.batch, e.batches, e.done) for e in events]
    assert per_tile == ([("r0000c0000", b, 4, 0) for b in (1, 2, 3, 4)] + [("r0000c0000", 0, 0, 1)]
                        + [("r0000c0001", b, 4, 1) for b in (1, 2, 3, 4)] + [("r0000c0001", 0, 0, 2)])
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[0] == pytest.approx(1 / 8) and fractions[-1] == 1.0
    assert [e.objects for e in events if e.tile_finished][-1] == result.objects
    # cancelled after the first batch: the second batch of the first tile is never decoded
    seen = []
    with pytest.raises(Cancelled, match="stopped after 0 of 2 tiles"):
        segment_everything(store, tmp_path / "cancelled.gpkg", LOOSE, progress=seen.append,
                           cancelled=lambda: bool(seen))
    assert [(e.batch, e.batches) for e in seen] == [(1, 4)]


def test_the_filter_counts_add_up_and_name_the_nearest_thresholds(store, tmp_path):
    strict = AutoMaskSettings(**{**LOOSE.to_dict(), "pred_iou_thresh": 0.99, "stability_score_thresh": 0.99})
    result = segment_everything(store, tmp_path / "none.gpkg", strict)
    counts = result.filters
    assert result.objects == 0
    # 2 tiles x 16 points, three candidates each (mask mode "all"), none past both score filters
    assert (counts.points, counts.points_on_nodata, counts.candidates) == (32, 0, 96)
    assert counts.below_iou + counts.below_stability == 96 and counts.passed_scores == 0
    iou, stability = counts.nearest_thresholds(0.99, 0.99)
    assert iou <= counts.best_iou and iou <= 0.99 and stability <= 0.99
    # the thresholds named let masks through: a run with them writes objects
    loosened = AutoMaskSettings(**{**strict.to_dict(), "pred_iou_thresh": iou, "stability_score_thresh": stability})
    assert segment_everything(store, tmp_path / "some.gpkg", loosened).objects > 0


def run_segment_all(store: FeatureStore, output: Path, feedback=None, load: bool = False, **parameters) -> dict:
    import processing
    from qgis.core import QgsProcessingFeedback

    parameters = {"STORE": str(store.root), "POINTS_PER_SIDE": 4, "POINTS_PER_BATCH": 5, "MIN_MASK_REGION_AREA": 4,
                  "OUTPUT": str(output), **parameters}
    run = processing.runAndLoadResults if load else processing.run
    return run("quicksam:segmentall", parameters, feedback=feedback or QgsProcessingFeedback())


def recording_feedback():
    from qgis.core import QgsProcessingFeedback

    class Recording(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.infos: List[str] = []
            self.warnings: List[str] = []
            self.progress: List[float] = []
            self.progressChanged.connect(self.progress.append)

        def pushInfo(self, info: str) -> None:  # noqa: N802 - Qt's name
            self.infos.append(info)

        def pushWarning(self, warning: str) -> None:  # noqa: N802 - Qt's name
            self.warnings.append(warning)

    return Recording()


def test_processing_reports_progress_inside_a_tile_and_is_cancelled_between_batches(store, tmp_path, plugin):
    from qgis.core import QgsProcessingException

    feedback = recording_feedback()
    run_segment_all(store, tmp_path / "all.gpkg", feedback, PRED_IOU_THRESH=0.0, STABILITY_SCORE_THRESH=0.0)
    # 2 tiles of 4 batches: steps of 12.5 %, the first ones inside the first tile
    assert [v for v in feedback.progress if 0 < v < 50] == pytest.approx([12.5, 25.0, 37.5])
    assert feedback.progress[-1] == pytest.approx(100.0)
    cancelling = recording_feedback()
    cancelling.progressChanged.connect(lambda value: value > 0 and cancelling.cancel())
    with pytest.raises(QgsProcessingException, match="stopped after 0 of 2 tiles"):
        run_segment_all(store, tmp_path / "cancelled.gpkg", cancelling, PRED_IOU_THRESH=0.0,
                        STABILITY_SCORE_THRESH=0.0)
    assert [v for v in cancelling.progress if v > 0] == pytest.approx([12.5])


def test_a_run_without_objects_says_which_filter_and_threshold(store, tmp_path, plugin):
    feedback = recording_feedback()
    results = run_segment_all(store, tmp_path / "none.gpkg", feedback)  # SAM's thresholds: 0.88 and 0.95
    assert results["OBJECTS"] == 0
    reason = results["NO_OBJECTS_REASON"]
    assert feedback.warnings == [reason] and "\n" not in reason
    assert reason.startswith("0 objects: of 96 candidate masks, ")
    assert re.search(r"\d+ were below the predicted IoU threshold 0\.88 \(best 0\.\d\d\)", reason), reason
    found = re.search(r"Lower (Predicted IoU threshold to (?P<iou>[\d.]+))?( and )?"
                      r"(Stability score threshold to (?P<stability>[\d.]+))? to let some masks through\.$", reason)
    assert found and (found["iou"] or found["stability"]), reason
    again = run_segment_all(store, tmp_path / "some.gpkg", PRED_IOU_THRESH=float(found["iou"] or 0.88),
                            STABILITY_SCORE_THRESH=float(found["stability"] or 0.95))
    assert again["OBJECTS"] > 0 and again["NO_OBJECTS_REASON"] == ""
    # an area limit that stops everything names the area that would pass
    huge = run_segment_all(store, tmp_path / "huge.gpkg", PRED_IOU_THRESH=0.0, STABILITY_SCORE_THRESH=0.0,
                           MIN_OBJECT_AREA=1e12)
    assert huge["OBJECTS"] == 0
    area = re.search(r"Lower Minimum object area \(map units²\) to ([\d.e+]+) to let", huge["NO_OBJECTS_REASON"])
    assert area and "smaller than the minimum object area 1e+12" in huge["NO_OBJECTS_REASON"]
    kept = run_segment_all(store, tmp_path / "kept.gpkg", PRED_IOU_THRESH=0.0, STABILITY_SCORE_THRESH=0.0,
                           MIN_OBJECT_AREA=float(area.group(1)))
    assert kept["OBJECTS"] >= 1


def test_the_summary_is_one_plain_line_and_layers_are_named_after_raster_and_run(store, tmp_path, plugin):
    from qgis.core import QgsProject

    feedback = recording_feedback()
    first = run_segment_all(store, tmp_path / "first.gpkg", feedback, load=True, PRED_IOU_THRESH=0.0,
                            STABILITY_SCORE_THRESH=0.0)
    [summary] = [line for line in feedback.infos if "objects written" in line]
    assert re.fullmatch(rf"{first['OBJECTS']} objects written from 2 tiles in \d+\.\d s to "
                        rf"{re.escape(str(tmp_path / 'first.gpkg'))} \(\d+ joined across tile borders; "
                        r"0 tiles from an earlier run\)\.", summary), summary
    assert not any(line.lstrip().startswith("{") for line in feedback.infos)
    run_segment_all(store, tmp_path / "second.gpkg", load=True, PRED_IOU_THRESH=0.0, STABILITY_SCORE_THRESH=0.0)
    name = "scene — objects (segment everything)"  # the raster is scene.tif
    loaded = QgsProject.instance().mapLayersByName(name)
    try:
        assert len(loaded) == 2 and not QgsProject.instance().mapLayersByName("Segments")
        assert sorted(layer.source().split("|")[0] for layer in loaded) == [str(tmp_path / "first.gpkg"),
                                                                            str(tmp_path / "second.gpkg")]
    finally:
        QgsProject.instance().removeMapLayers([layer.id() for layer in loaded])


def test_segment_everything_from_the_menu_starts_with_the_rasters_store(store, plugin, qgis_iface, qgis_new_project):
    """The dialog gets the store as its initial parameters (pytest-qgis's iface cannot build the real dialog)."""
    from unittest import mock

    from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer
    from qgis.PyQt.QtWidgets import QAction

    from quicksam.interactive.store_lookup import STORE_PROPERTY
    from quicksam.plugin import SEGMENT_ALL_ACTION_OBJECT_NAME
    from quicksam.ui import algorithm_dialogs

    [action] = [a for a in qgis_iface.mainWindow().findChildren(QAction, SEGMENT_ALL_ACTION_OBJECT_NAME)]
    raster = QgsRasterLayer(store.manifest.raster.path, "scene")
    raster.setCustomProperty(STORE_PROPERTY, str(store.root))  # as the dock or an encode registers it
    other = QgsVectorLayer("Point?crs=EPSG:32633", "points", "memory")
    QgsProject.instance().addMapLayers([raster, other])
    try:
        # the raster active; then the segments layer just written is active: still the raster's store (seen in
        # the desktop walkthrough, where the accepted object's layer becomes the active one)
        for active in (raster, other):
            qgis_iface.setActiveLayer(active)
            with mock.patch.object(algorithm_dialogs, "run_algorithm_dialog") as dialog:
                action.trigger()
            dialog.assert_called_once_with("quicksam:segmentall", {"STORE": str(store.root)}, qgis_iface.mapCanvas())
        QgsProject.instance().removeMapLayer(raster.id())  # no raster with a store left: nothing to fill in
        with mock.patch.object(algorithm_dialogs, "run_algorithm_dialog") as dialog:
            action.trigger()
        dialog.assert_called_once_with("quicksam:segmentall", {}, qgis_iface.mapCanvas())
    finally:
        QgsProject.instance().removeAllMapLayers()


@pytest.mark.slow
def test_cli_says_why_no_object_was_found_in_its_own_options(store, tmp_path):
    result = run_cli("segment-all", store.root, "--output", tmp_path / "none.gpkg", "--points-per-side", "4")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["objects"] == 0
    reason = summary["no_objects_reason"]
    assert reason.startswith("0 objects: of 96 candidate masks") and "Lower --pred-iou-thresh to " in reason
    assert f"quicksam: warning: {reason}" in result.stderr
