"""Segment everything across the levels of a multi-scale store (interactive/segment_levels.py, level_merge.py,
docs/segment-everything.md *Levels*).

1. The merge rule across levels on constructed objects whose right answer is known (random weights make real
   masks arbitrary), and SAM's own crop NMS and point-grid rule as the reference where QuickSAM follows SAM.
2. Real runs on a synthetic scene (a disk two finest tiles wide, small disks in the corners) encoded with levels
   1 and 4 in 256 px tiles: with a hand-made decoder (masks known, so placement and merges are exact) and with
   the seeded random model (fields, extents, resume inside level 2, Processing and the command line).
3. A single-level store gives what QuickSAM gave before levels (a reference made by main's code).
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import shapely
import shapely.wkb
from osgeo import ogr
from shapely.geometry import Polygon, box
from synthetic import MODEL, TILE_SIZE, assert_one_line_error, random_model, run_cli, write_raster

from quicksam.core.errors import Cancelled, QuickSamError
from quicksam.core.mask_decoding import DecoderSettings
from quicksam.core.store import FeatureStore
from quicksam.interactive.automatic import AutoMaskSettings, partial_path, segment_everything
from quicksam.interactive.engine import SegmentEngine
from quicksam.interactive.level_merge import BoxGrid, LevelObject, crop_nms, merge_levels
from quicksam.interactive.run_file import TILE_TABLE
from quicksam.interactive.segment_levels import LEVELS_MERGED, level_settings, parse_levels, select_levels

# -- 1. the rule on constructed objects -------------------------------------------------------------------


class Objects:
    """Objects for `merge_levels`: each a shapely polygon at a level factor, with a score."""

    def __init__(self) -> None:
        self.items: List[LevelObject] = []
        self.shapes: Dict[int, Polygon] = {}

    def add(self, factor: float, shape: Polygon, score: float = 0.9) -> int:
        key = len(self.items) + 1
        self.items.append(LevelObject(key, factor, score, shape.bounds))
        self.shapes[key] = shape
        return key

    def geometry(self, key: int) -> ogr.Geometry:
        return ogr.CreateGeometryFromWkb(shapely.wkb.dumps(self.shapes[key]))

    def kept(self, crop_nms_thresh: float = 0.7) -> List[int]:
        dropped = set(merge_levels(self.items, self.geometry, crop_nms_thresh).dropped)
        return [item.key for item in self.items if item.key not in dropped]


def jagged(x0: float, y0: float, x1: float, y1: float, step: float = 1.0) -> Polygon:
    """A box with a staircase notch on each side: a fine level's edge where the coarse one is straight."""
    return box(x0, y0, x1, y1).difference(box(x0, y0, x0 + step, y0 + step)).difference(
        box(x1 - step, y1 - step, x1, y1))


def test_an_object_whole_at_a_coarse_level_and_in_pieces_at_a_fine_one_comes_out_once():
    objects = Objects()
    whole = objects.add(4, box(0, 0, 400, 400), score=0.5)
    for x0, y0 in ((0, 0), (200, 0), (0, 200), (200, 200)):  # four quarters, a little jagged, better scored
        objects.add(1, jagged(x0 + 2, y0 + 2, x0 + 200, y0 + 200), score=0.99)
    assert objects.kept() == [whole]


def test_pieces_over_three_levels_come_out_as_the_coarsest_whole():
    objects = Objects()
    whole = objects.add(16, box(0, 0, 800, 800))
    objects.add(4, box(0, 0, 800, 400))                                              # halves at level 4
    objects.add(4, box(0, 400, 800, 790))
    for col in range(4):                                                             # strips at level 1
        objects.add(1, box(col * 200, 0, col * 200 + 195, 800))
    assert objects.kept() == [whole]


def test_two_disjoint_objects_of_two_levels_stay_two():
    objects = Objects()
    coarse, fine = objects.add(4, box(0, 0, 400, 400)), objects.add(1, box(500, 0, 600, 100))
    assert objects.kept() == [coarse, fine]


def test_of_equal_boxes_at_two_levels_the_finer_levels_object_is_kept_as_sam_prefers_smaller_crops():
    objects = Objects()
    objects.add(4, box(0, 0, 400, 400), score=0.99)
    fine = objects.add(1, jagged(0, 0, 400, 400), score=0.5)  # the same object with finer edges, lower score
    result = merge_levels(objects.items, objects.geometry)
    assert result.duplicates == [1] and result.pieces == []
    assert objects.kept() == [fine]


def test_the_crop_nms_threshold_is_an_iou_above_which_the_coarser_object_is_dropped():
    # box IoU 0.75: above SAM's 0.7, so the coarse one goes; at 0.8 NMS keeps both, and the fine object, lying
    # inside the coarse one and covering 3/4 of it, is its piece: either way the object comes out once
    objects = Objects()
    coarse, fine = objects.add(4, box(0, 0, 400, 400)), objects.add(1, box(0, 0, 400, 300))
    assert merge_levels(objects.items, objects.geometry, 0.7).duplicates == [coarse]
    result = merge_levels(objects.items, objects.geometry, 0.8)
    assert (result.duplicates, result.pieces) == ([], [fine])


def test_objects_of_one_level_never_suppress_each_other():
    """Within a level, the border merge has already done SAM's crop NMS's job (crops of one layer)."""
    objects = Objects()
    first, second = objects.add(1, box(0, 0, 100, 100)), objects.add(1, box(0, 0, 100, 99))
    assert objects.kept() == [first, second]


def test_a_small_object_inside_a_big_coarse_one_stays_as_sam_keeps_nested_masks():
    objects = Objects()
    field = objects.add(4, box(0, 0, 1000, 1000))
    pond = objects.add(1, box(100, 100, 200, 200))   # all inside the field, but 1 % of it: not its piece
    assert objects.kept() == [field, pond]


def test_a_fine_object_mostly_outside_a_coarse_one_is_not_its_piece():
    objects = Objects()
    coarse = objects.add(4, box(0, 0, 400, 400))
    across = objects.add(1, box(200, 0, 700, 400))   # half inside: another object reaching into it
    assert objects.kept() == [coarse, across]


def test_crop_nms_keeps_what_sams_batched_nms_keeps_with_its_crop_scores():
    """SAM's merge of crop layers (automatic_mask_generator.py `_generate_masks`): torchvision's batched_nms
    with scores 1 / box_area(crop_boxes). A level's tile covers (tile × factor)² raster pixels, its crop box."""
    torch = pytest.importorskip("torch")
    from torchvision.ops.boxes import batched_nms, box_area

    rng = np.random.default_rng(5)
    objects = [(x0, y0, x0 + w, y0 + h) for x0, y0, w, h in
               zip(*rng.uniform(0, 900, (2, 60)), *rng.uniform(20, 300, (2, 60)))]
    items, crop_boxes = [], []
    for factor in (1.0, 4.0, 16.0):
        placed: List[Tuple[float, ...]] = []
        for index in rng.permutation(len(objects))[:40]:  # each level sees some objects, a little differently
            candidate = tuple(np.asarray(objects[index]) + rng.normal(0, 4, 4))
            if candidate[2] > candidate[0] and candidate[3] > candidate[1] and \
                    all(_iou(candidate, other) <= 0.7 for other in placed):  # within a level: the border merge's job
                placed.append(candidate)
        for candidate in placed:
            items.append(LevelObject(len(items), factor, float(rng.uniform()), candidate))
            side = TILE_SIZE * factor
            crop_boxes.append((0.0, 0.0, side, side))
    boxes = torch.tensor([item.box for item in items], dtype=torch.float32)
    scores = 1 / box_area(torch.tensor(crop_boxes, dtype=torch.float32))
    sam = set(batched_nms(boxes, scores, torch.zeros(len(items)), iou_threshold=0.7).tolist())
    ours = set(range(len(items))) - crop_nms(items, 0.7, BoxGrid(items, 100.0))
    assert len(items) // 2 < len(sam) <= len(items) - 20 and ours == sam


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    return box(*a).intersection(box(*b)).area / box(*a).union(box(*b)).area


def test_points_per_side_per_level_follow_sams_rule_for_crop_layers():
    """segment_anything's `build_all_layer_point_grids`: int(points_per_side / downscale**layer) points per
    side in crop layer `layer`; a level 2**i times finer than the coarsest is crop layer i."""
    from segment_anything.utils.amg import build_all_layer_point_grids

    for points, downscale, layers in ((32, 2, 4), (32, 1, 4), (27, 3, 3), (5, 2, 2)):  # SAM needs >= 1 point
        sam = build_all_layer_point_grids(points, layers, downscale)
        settings = AutoMaskSettings(points_per_side=points, crop_n_points_downscale_factor=downscale)
        for layer in range(layers + 1):
            ours = level_settings(settings, 2.0 ** (layers - layer), 2.0 ** layers).points_per_side
            assert ours == math.isqrt(len(sam[layer])), (points, downscale, layer)
    # where SAM's rule gives no point (its build_point_grid divides by zero), a level keeps one
    few = AutoMaskSettings(points_per_side=5, crop_n_points_downscale_factor=2)
    assert level_settings(few, 1.0, 16.0).points_per_side == 1
    # the minimum region is counted in pixels of the finest level, so in fewer pixels of a coarser one
    assert level_settings(AutoMaskSettings(min_mask_region_area=100), 4.0, 4.0).min_mask_region_area == 6
    assert level_settings(AutoMaskSettings(min_mask_region_area=100), 1.0, 4.0).min_mask_region_area == 100


def test_levels_text_is_read_as_encode_reads_it_and_bad_values_say_what_to_give():
    assert parse_levels("") is None and parse_levels(" ") is None
    assert parse_levels("1, 4,16") == [1.0, 4.0, 16.0]
    for bad in ("0.5", "abc", "1,x", "-4", "nan", "2000"):
        expected = r"from 1 to 1024, separated by commas like 1,4,16, not '.*', or nothing for every level"
        with pytest.raises(QuickSamError, match=expected):
            parse_levels(bad)


# -- 2. real runs on a two-level store ----------------------------------------------------------------------

SIZE = 700                     # level 1: 3 x 3 tiles of 256 px (32 px overlap); level 4: one tile of 175 px
PIXEL = 10.0                   # EPSG:32633, top-left corner (500000, 4200000): synthetic.py's default
ORIGIN = (500000.0, 4200000.0)
LOOSE = AutoMaskSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                         min_mask_region_area=4)


def disks_scene() -> np.ndarray:
    """(3, 700, 700) uint8: a bright disk 440 px across in the middle and four small disks in the corners."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    data = np.full((3, SIZE, SIZE), 40, np.uint8)
    data[:, (rows - 350) ** 2 + (cols - 350) ** 2 < 220 ** 2] = 200
    for row, col in ((60, 60), (60, 640), (640, 60), (640, 640)):
        data[:, (rows - row) ** 2 + (cols - col) ** 2 < 25 ** 2] = 150
    return data


@pytest.fixture(scope="module")
def levels_store(tmp_path_factory) -> FeatureStore:
    from quicksam.encoder.levels_pipeline import encode_levels
    from quicksam.encoder.pipeline import EncodeRequest

    folder = tmp_path_factory.mktemp("levels")
    raster = write_raster(folder / "disks.tif", disks_scene())
    request = EncodeRequest(raster=str(raster), store=folder / "disks.qsam", model=MODEL, tile_size=TILE_SIZE,
                            overlap=32, device="cpu", levels=(1.0, 4.0))
    store, _ = encode_levels(request, model=random_model())
    assert [len(level.grid) for level in select_levels(store)] == [9, 1]
    return store


class SquareDecoder:
    """A decoder whose every prompt gives the same mask in every tile: the low-resolution logits' square
    `block` (rows = cols, a slice of the L x L grid, L = tile / 4), i.e. tile pixels 4 × block (the bilinear
    upsampling crosses 0 halfway between low-resolution pixel centres). OnnxDecoder's interface."""

    def __init__(self, block: slice, image_size: int = TILE_SIZE) -> None:
        low = image_size // 4
        self.logits = np.full((4, low, low), -10.0, np.float32)
        self.logits[:, block, block] = 10.0
        self.scores = np.array([0.9, 0.9, 0.9, 0.9], np.float32)
        self.image_size, self.settings, self.preferred_batch = image_size, DecoderSettings(), 4

    def raw_points(self, features, points) -> Tuple[np.ndarray, np.ndarray]:
        return np.repeat(self.logits[None], len(points), 0), np.repeat(self.scores[None], len(points), 0)


def hand_run(store: FeatureStore, output: Path, decoder: SquareDecoder, **options) -> List[dict]:
    engine = SegmentEngine(store, cache_tiles=1)
    engine.decoder = decoder  # every level's engine shares the finest level's decoder
    settings = AutoMaskSettings(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                min_mask_region_area=0, **options)
    segment_everything(store, output, settings, engine=engine)
    return read_rows(output)


def read_rows(path: Path) -> List[dict]:
    rows, dataset = [], ogr.Open(str(path))  # the dataset outlives its layer's features
    for feature in dataset.GetLayer(0):
        row = {key: feature[key] for key in ("id", "predicted_iou", "tile_ids", "level_factor", "resolution")}
        row["geometry"] = shapely.wkb.loads(bytes(feature.GetGeometryRef().ExportToIsoWkb()))
        rows.append(row)
    return rows


def level_box(col0: int, row0: int, col1: int, row1: int, factor: float) -> Tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) in EPSG:32633 of level pixels [col0, col1) x [row0, row1) at `factor`."""
    size = PIXEL * factor
    return ORIGIN[0] + col0 * size, ORIGIN[1] - row1 * size, ORIGIN[0] + col1 * size, ORIGIN[1] - row0 * size


def test_every_level_writes_its_objects_at_their_map_coordinates_with_their_level(levels_store, tmp_path):
    """Each tile of each level sees a 24 px square at tile pixels 40-64: nine at level 1 (one per tile), one at
    level 4, 24 level pixels (960 m) wide where level 4's geotransform puts it; none overlaps another."""
    rows = hand_run(levels_store, tmp_path / "squares.gpkg", SquareDecoder(slice(10, 16)))
    expected = {(1.0, 10.0, tile.tile_id, level_box(tile.col_off + 40, tile.row_off + 40, tile.col_off + 64,
                                                     tile.row_off + 64, 1)) for tile in levels_store.grid}
    assert len(expected) == 9
    expected.add((4.0, 40.0, "levels/x4/r0000c0000", level_box(40, 40, 64, 64, 4)))
    got = {(row["level_factor"], row["resolution"], row["tile_ids"], row["geometry"].bounds) for row in rows}
    assert got == expected  # exact: vertices lie on pixel corners, multiples of the pixel size
    assert sorted(row["id"] for row in rows) == list(range(1, 11))


def test_a_run_finds_the_disk_whole_at_level_4_and_in_tiles_at_level_1_and_writes_it_once(levels_store, tmp_path):
    """A mask covering tile pixels 4-252: at level 1, nine tile-sized squares, each mostly inside the coarse one
    (the corner one 91 %) and together all of it; at level 4 one square over nearly the whole raster. It comes
    out once, at level 4. (Squares at tile pixels 16-248 stick out more: then the five along the top and left
    edges, 63 % inside, are objects of their own and only the four inner ones are dropped as pieces.)"""
    rows = hand_run(levels_store, tmp_path / "pieces.gpkg", SquareDecoder(slice(1, 63)))
    assert [(row["id"], row["level_factor"], row["tile_ids"]) for row in rows] == [(1, 4.0, "levels/x4/r0000c0000")]
    assert rows[0]["geometry"].bounds == level_box(4, 4, 175, 175, 4)  # clipped to level 4's 175 valid pixels
    rows = hand_run(levels_store, tmp_path / "sticking-out.gpkg", SquareDecoder(slice(4, 62)))
    assert sorted((row["level_factor"], row["tile_ids"]) for row in rows) == [
        (1.0, "r0000c0000"), (1.0, "r0000c0001"), (1.0, "r0000c0002"), (1.0, "r0001c0000"), (1.0, "r0002c0000"),
        (4.0, "levels/x4/r0000c0000")]


def test_an_object_seen_alike_at_both_levels_comes_out_once_at_the_finer(levels_store, tmp_path):
    """Masks covering whole tiles: level 1's pieces join across the borders into one object over the raster,
    level 4 sees the same box: SAM's crop NMS keeps the finer level's."""
    rows = hand_run(levels_store, tmp_path / "alike.gpkg", SquareDecoder(slice(0, 64)))
    assert [(row["level_factor"], row["resolution"]) for row in rows] == [(1.0, 10.0)]
    assert rows[0]["geometry"].bounds == level_box(0, 0, SIZE, SIZE, 1)
    with_nms_off = hand_run(levels_store, tmp_path / "off.gpkg", SquareDecoder(slice(0, 64)), crop_nms_thresh=1.0)
    assert [row["level_factor"] for row in with_nms_off] == [4.0]  # then the fine one is the coarse one's piece


@pytest.fixture(scope="module")
def random_rows(levels_store, tmp_path_factory) -> List[dict]:
    output = tmp_path_factory.mktemp("random") / "all.gpkg"
    result = segment_everything(levels_store, output, LOOSE)
    assert (result.tiles, result.levels) == (10, (1.0, 4.0))
    rows = read_rows(output)
    assert len(rows) == result.objects > 0
    return rows


def test_random_weights_objects_carry_their_level_and_lie_inside_the_raster(random_rows):
    extent = box(*level_box(0, 0, SIZE, SIZE, 1))
    for row in random_rows:
        level = "levels/x4/" if row["level_factor"] == 4.0 else ""
        assert (row["level_factor"], row["resolution"]) in ((1.0, 10.0), (4.0, 40.0))
        assert all(tile.startswith(level) and "/" not in tile[len(level):] for tile in row["tile_ids"].split(","))
        assert row["geometry"].is_valid and extent.buffer(1e-6).contains(row["geometry"])
    assert sorted(row["id"] for row in random_rows) == list(range(1, len(random_rows) + 1))


def test_one_chosen_level_is_segmented_alone(levels_store, tmp_path):
    result = segment_everything(levels_store, tmp_path / "four.gpkg", LOOSE, levels=[4])
    rows = read_rows(tmp_path / "four.gpkg")
    assert (result.tiles, result.levels, result.level_duplicates) == (1, (4.0,), 0)
    assert rows and {(row["level_factor"], row["tile_ids"]) for row in rows} == {(4.0, "levels/x4/r0000c0000")}
    with pytest.raises(QuickSamError, match=r"has no level 8 \(its levels: 1, 4\); choose among those"):
        segment_everything(levels_store, tmp_path / "eight.gpkg", LOOSE, levels=[8])


def test_a_run_stopped_in_level_2_resumes_there_and_merges_once(levels_store, tmp_path, random_rows):
    output = tmp_path / "stopped.gpkg"
    finished: list = []
    with pytest.raises(Cancelled, match="stopped after 9 of 10 tiles"):
        segment_everything(levels_store, output, LOOSE, cancelled=lambda: len(finished) >= 9,
                           progress=lambda event: event.tile_finished and finished.append(event.tile_id))
    assert finished == [f"r{r:04d}c{c:04d}" for r in range(3) for c in range(3)]  # level 1, then stopped
    assert _done_marks(partial_path(output)) == set(finished)
    result = segment_everything(levels_store, output, LOOSE,
                                progress=lambda event: event.tile_finished and finished.append(event.tile_id))
    assert finished[9:] == ["levels/x4/r0000c0000"] and result.tiles_resumed == 9
    assert _signature(read_rows(output)) == _signature(random_rows)


def _done_marks(run_file: Path) -> set:
    dataset = ogr.Open(str(run_file))
    return {feature["tile_id"] for feature in dataset.GetLayerByName(TILE_TABLE)}


def _signature(rows: List[dict]) -> List[tuple]:
    """Ids, levels, tiles and pixel-exact geometries; scores to 1e-5 (decoder floats vary in the last bits)."""
    return sorted((r["id"], r["level_factor"], r["tile_ids"], round(r["predicted_iou"], 5),
                   shapely.normalize(r["geometry"]).wkt) for r in rows)


def test_the_merge_across_levels_is_committed_once(levels_store, tmp_path):
    """The run file records the merge with the objects it deleted: a run resumed after it (before the output
    was written) does not merge again."""
    from quicksam.interactive.automatic import run_identity
    from quicksam.interactive.run_file import RunFile
    from quicksam.interactive.segment_levels import merge_levels_in_run, plan_levels

    plan = plan_levels(levels_store, None, LOOSE)
    run = RunFile.create(tmp_path / "run.partial.gpkg", levels_store.crs_wkt, run_identity(plan, LOOSE))
    objects = Objects()
    objects.add(4, box(*level_box(0, 0, 100, 100, 4)))
    objects.add(1, box(*level_box(0, 0, 400, 400, 1)))  # the same box: the coarse one is dropped
    with run.transaction():
        run.write_objects([(_polygons(objects.shapes[key]), {"id": key, "level_factor": item.factor,
                                                             "predicted_iou": 0.9})
                           for key, item in zip(objects.shapes, objects.items)])
    assert merge_levels_in_run(run, plan, 0.7) == 1
    assert LEVELS_MERGED in run.finished_tiles() and run.object_count() == 1
    assert merge_levels_in_run(run, plan, 0.7) == 0 and run.next_id() == 2  # the survivor is numbered 1
    run.close()


def _polygons(shape: Polygon):
    from quicksam.interactive.vectorise import Polygons

    return Polygons(shapely.wkb.dumps(shapely.MultiPolygon([shape])), shape.area, 1)


def test_processing_segments_the_levels_asked_for_and_refuses_bad_ones_plainly(levels_store, tmp_path, plugin):
    import processing
    from qgis.core import QgsProcessingException

    parameters = {"STORE": str(levels_store.root), "POINTS_PER_SIDE": 2, "PRED_IOU_THRESH": 0.0,
                  "STABILITY_SCORE_THRESH": 0.0, "CROP_NMS_THRESH": 0.5, "CROP_N_POINTS_DOWNSCALE_FACTOR": 2}
    results = processing.run("quicksam:segmentall", {**parameters, "LEVELS": "4",
                                                     "OUTPUT": str(tmp_path / "four.gpkg")})
    assert (results["LEVELS_SEGMENTED"], results["TILES"]) == ("4", 1)
    assert {row["level_factor"] for row in read_rows(tmp_path / "four.gpkg")} == {4.0}
    results = processing.run("quicksam:segmentall", {**parameters, "OUTPUT": str(tmp_path / "all.gpkg")})
    assert (results["LEVELS_SEGMENTED"], results["TILES"]) == ("1,4", 10) and results["LEVEL_DUPLICATES"] >= 0
    for levels, message in (("1,x", "like 1,4,16, not '1,x', or nothing for every level"),
                            ("2", r"has no level 2 \(its levels: 1, 4\)")):
        with pytest.raises(QgsProcessingException, match=message):
            processing.run("quicksam:segmentall", {**parameters, "LEVELS": levels,
                                                   "OUTPUT": str(tmp_path / "bad.gpkg")})
    assert not (tmp_path / "bad.gpkg").exists() and not partial_path(tmp_path / "bad.gpkg").exists()


def test_cli_refuses_bad_levels_in_one_line_before_qgis_starts(levels_store, tmp_path):
    output = tmp_path / "out.gpkg"
    result = run_cli("segment-all", levels_store.root, "--output", output, "--levels", "0.5")
    assert_one_line_error(result, r"--levels: levels must be factors of the finest level's pixel size from 1 to")
    result = run_cli("segment-all", levels_store.root, "--output", output, "--levels", "1,8")
    assert_one_line_error(result, r"has no level 8 \(its levels: 1, 4\); choose among those")
    assert not output.exists()


@pytest.mark.slow
def test_cli_segments_every_level_and_reports_them(levels_store, tmp_path):
    output = tmp_path / "cli.gpkg"
    result = run_cli("segment-all", levels_store.root, "--output", output, "--points-per-side", "2",
                     "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--crop-nms-thresh", "0.6",
                     "--progress-json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1]["event"] == "finished"
    summary = events[-1]["summary"]
    assert (summary["levels"], summary["tiles"]) == ([1.0, 4.0], 10) and summary["level_duplicates"] >= 0
    assert "levels/x4/r0000c0000" in [event.get("tile") for event in events if event["event"] == "progress"]
    assert {row["level_factor"] for row in read_rows(output)} <= {1.0, 4.0}


# -- 3. one level: what QuickSAM gave before levels ---------------------------------------------------------

DATA = Path(__file__).parent / "data"


def test_a_single_level_store_gives_what_main_gave_before_levels(tmp_path):
    """tests/data/store_v1 (fixed features) segmented by main's code before levels (tests/data/README.md) and
    now: the same objects, ids and tiles. Geometries within 1 % of their area and scores within 1e-4: the
    decoder's floats may differ in the last bits on another CPU, flipping pixels at the mask threshold."""
    from quicksam.encoder.pipeline import install_decoder, random_weights_identity

    root = Path(shutil.copytree(DATA / "store_v1", tmp_path / "store_v1"))
    model = random_model(64)
    if random_weights_identity(model) != FeatureStore.open(root).checkpoint_sha256:
        pytest.skip("the seeded random model's weights differ from those that encoded tests/data/store_v1 "
                    "(another torch version initialises them differently)")
    install_decoder(FeatureStore.open(root), model)
    reference = json.loads(gzip.decompress((DATA / "segment_all_store_v1_main.json.gz").read_bytes()))
    settings = AutoMaskSettings(**reference["settings"])
    result = segment_everything(FeatureStore.open(root), tmp_path / "all.gpkg", settings)
    rows = read_rows(tmp_path / "all.gpkg")
    assert result.objects == len(rows) == len(reference["rows"]) > 10 and result.levels == (1.0,)
    for row, want in zip(sorted(rows, key=lambda r: r["id"]), sorted(reference["rows"], key=lambda r: r["id"])):
        expected = shapely.from_wkt(want["wkt"])
        assert (row["id"], row["tile_ids"]) == (want["id"], want["tile_ids"])
        assert row["predicted_iou"] == pytest.approx(want["predicted_iou"], abs=1e-4)
        assert row["geometry"].symmetric_difference(expected).area <= 0.01 * expected.area
        assert (row["level_factor"], row["resolution"]) == (1.0, 10.0)


def test_an_on_demand_tile_changes_nothing_segment_everything_finds(levels_store, tmp_path):
    """A copy of the store with an on-demand tile (`x0000`, whose row 0 / col 0 numbers are a serial, not a grid
    place) gives the same objects as the store without it: on-demand tiles take no part in the grid's cells
    (before, x0000 took the place of r0000c0000 and the objects of row 0 and column 0 were lost)."""
    from quicksam.encoder.on_demand import TileRequest, encode_tile_at

    copy = tmp_path / "with-extra.qsam"
    shutil.copytree(levels_store.root, copy)
    x, y = level_box(300, 300, 301, 301, 1.0)[:2]
    encode_tile_at(TileRequest(store=copy, points=((x, y), (x + 2500, y)), level=1.0, device="cpu"),
                   model=random_model())
    extra = FeatureStore.open(copy)
    assert any(tile.extra for tile in extra.grid)
    before = hand_run(levels_store, tmp_path / "plain.gpkg", SquareDecoder(slice(4, 60)))
    after = hand_run(extra, tmp_path / "extra.gpkg", SquareDecoder(slice(4, 60)))
    assert len(after) == len(before)
    assert sorted(round(row["geometry"].area) for row in after) == sorted(round(row["geometry"].area) for row in before)
    assert not any("x0000" in row["tile_ids"] for row in after)
