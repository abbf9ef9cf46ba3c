"""Tracking with SAM 2's video memory on a series store's cached features (encoder/tracking.py, `quicksam
track-masks`), against sam2's stock SAM2VideoPredictor run on the same frames' images with the same weights.

The series: `tracking_series.moving_square_frames` (a square that moves and grows over 4 frames of 256 x 256 px,
one tile), encoded with the seeded random SAM 2.1 tiny model. Random weights make arbitrary masks, so the tests
assert the plumbing exactly and the equivalence with the stock predictor within stated tolerances.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch
from synthetic import (
    MODEL,
    TILE_SIZE,
    RecordingModel,
    assert_one_line_error,
    cli_command,
    encode,
    random_model,
    run_cli,
    square_scene,
    write_raster,
)
from tracking_series import SQUARES, encode_series, moving_square_frames

from quicksam.core.errors import Cancelled, QuickSamError
from quicksam.core.mask_decoding import Prompts, prompt_arrays
from quicksam.core.store import FeatureStore
from quicksam.core.track_job import TrackGroup, TrackJob, TrackObject, read_result, result_path
from quicksam.encoder import tracking
from quicksam.encoder.track_inputs import open_group, open_series
from quicksam.encoder.tracking_state import FramesNotLoaded, stored_inference_state

#: sam2 warns on every frame that its compiled extension (hole filling) is missing: both predictors alike.
pytestmark = pytest.mark.filterwarnings("ignore:cannot import name '_C':UserWarning")

TILE = "r0000c0000"
#: The equivalence's objects on prompt frame 1: a point, a box, and a mask prompt (the square on that frame).
POINT = TrackObject(1, points=((95.0, 100.0),), labels=(1,))
BOX = TrackObject(7, box=(60.0, 70.0, 130.0, 140.0))
MASK_ID = 3


def square_mask(frame: int) -> np.ndarray:
    """(256, 256) bool: frame `frame`'s square."""
    col, row, side = SQUARES[frame]
    mask = np.zeros((TILE_SIZE, TILE_SIZE), bool)
    mask[row:row + side, col:col + side] = True
    return mask


def make_job(store: Path, out: Path, objects: Sequence[TrackObject], frames: Tuple[int, ...] = (0, 1, 2, 3),
             prompt: int = 1, direction: str = "both", level: str = ".", groups: int = 1, tile: str = TILE) -> TrackJob:
    return TrackJob(store=str(store), frames=frames, prompt_frame=prompt, direction=direction,
                    groups=tuple(TrackGroup(level, tile, tuple(objects)) for _ in range(groups)), output_dir=str(out))


def recorded_series(folder: Path, feature_dtype: str) -> Tuple[Path, np.ndarray]:
    """The moving-square series encoded with `feature_dtype`, and the (4, S, S, 3) uint8 tiles the encoder was fed;
    a mask prompt file mask3.npy (frame 1's square) beside it."""
    recorder = RecordingModel(random_model())
    store = encode_series(moving_square_frames(folder, 4), folder / "series.qsam", segment_model=recorder,
                          feature_dtype=feature_dtype)
    np.save(folder / "mask3.npy", square_mask(1))
    return store, np.stack(recorder.inputs)


@pytest.fixture(scope="module")
def series32(tmp_path_factory) -> Tuple[Path, np.ndarray]:
    return recorded_series(tmp_path_factory.mktemp("series32"), "float32")


@pytest.fixture(scope="module")
def series16(tmp_path_factory) -> Tuple[Path, np.ndarray]:
    return recorded_series(tmp_path_factory.mktemp("series16"), "float16")


@pytest.fixture(scope="module")
def predictor(series32):
    """QuickSAM's video predictor for the series' model (built once)."""
    return tracking.build_store_predictor(FeatureStore.open(series32[0]), "cpu")


@pytest.fixture(scope="module")
def stock_predictor():
    """sam2's own SAM2VideoPredictor, built by sam2's builder for the model's config at 256 px, with the weights
    the stores were encoded with."""
    from sam2.build_sam import build_sam2_video_predictor

    from quicksam.core.catalogue import model_spec

    stock = build_sam2_video_predictor(model_spec(MODEL).config, device="cpu",
                                       hydra_overrides_extra=[f"++model.image_size={TILE_SIZE}"])
    stock.load_state_dict(random_model().net.state_dict())
    return stock


def sam2_frames(tiles: np.ndarray) -> torch.Tensor:
    """(N, 3, S, S) float32: the tiles as sam2's load_video_frames prepares JPEG frames (uint8 / 255 in float64,
    into float32, minus ImageNet's mean, over its std)."""
    images = torch.zeros(len(tiles), 3, TILE_SIZE, TILE_SIZE, dtype=torch.float32)
    for index, tile in enumerate(tiles):
        images[index] = torch.from_numpy(tile / 255.0).permute(2, 0, 1)
    images -= torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
    images /= torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]
    return images


def stock_state(stock, tiles: np.ndarray, monkeypatch) -> dict:
    """stock.init_state on `tiles` (sam2 reads JPEG folders only: its frame loader is replaced, in the test only)."""
    import sam2.sam2_video_predictor

    images = sam2_frames(tiles)
    monkeypatch.setattr(sam2.sam2_video_predictor, "load_video_frames",
                        lambda **kwargs: (images, TILE_SIZE, TILE_SIZE))
    return stock.init_state(video_path="the test's frames")


def stock_object_logits(state: dict, video_index: int) -> np.ndarray:
    rows = [state["output_dict_per_obj"][i] for i in range(len(state["obj_ids"]))]
    return np.array([float((row["cond_frame_outputs"].get(video_index) or
                            row["non_cond_frame_outputs"][video_index])["object_score_logits"]) for row in rows])


def run_stock(stock, tiles: np.ndarray, prompt: int, monkeypatch) -> Dict[int, tuple]:
    """The stock predictor on the frames' images with the equivalence's three objects (prompts in sam2's pixel
    indices: QuickSAM's continuous pixel coordinates - 0.5), forward then backward from `prompt`:
    {video index: (object ids, mask logits (N, 1, S, S), object score logits (N,))}."""
    state = stock_state(stock, tiles, monkeypatch)
    stock.add_new_points_or_box(state, frame_idx=prompt, obj_id=1, points=[[94.5, 99.5]], labels=[1])
    stock.add_new_points_or_box(state, frame_idx=prompt, obj_id=7, box=[59.5, 69.5, 129.5, 139.5])
    stock.add_new_mask(state, frame_idx=prompt, obj_id=MASK_ID, mask=square_mask(1))
    found = {}
    for reverse in (False, True):
        for index, ids, masks in stock.propagate_in_video(state, start_frame_idx=prompt, reverse=reverse):
            found.setdefault(index, (list(ids), masks.clone(), stock_object_logits(state, index)))
    return found


def equivalence_objects(folder: Path) -> List[TrackObject]:
    return [POINT, BOX, TrackObject(MASK_ID, mask_file=str(folder / "mask3.npy"))]


def compare_with_stock(series, predictor, stock, monkeypatch, tmp_path, logit_tol: float, score_tol: float,
                       equal_pixels: float) -> Tuple[float, float, float]:
    """Track the three objects from the store and with the stock predictor; assert the tolerances; return the
    largest mask logit and object score logit differences and the smallest share of equal mask pixels."""
    store, tiles = series
    job = make_job(store, tmp_path / "out", equivalence_objects(store.parent))
    root, frames = open_series(job)
    mine = list(tracking.tracked_frames(predictor, job, open_group(root, frames, job, 0)))
    theirs = run_stock(stock, tiles, 1, monkeypatch)
    assert [index for index, *_ in mine] == [1, 2, 3, 0] == list(theirs)
    worst = (0.0, 0.0, 1.0)
    for index, ids, masks, logits in mine:
        stock_ids, stock_masks, stock_logits = theirs[index]
        assert ids == stock_ids == [1, 7, MASK_ID]
        logit_diff = float((masks - stock_masks).abs().max())
        score_diff = float(np.abs(logits - stock_logits).max())
        equal = float(((masks > 0) == (stock_masks > 0)).float().mean())
        assert logit_diff <= logit_tol and score_diff <= score_tol and equal >= equal_pixels, (index, logit_diff,
                                                                                               score_diff, equal)
        worst = (max(worst[0], logit_diff), max(worst[1], score_diff), min(worst[2], equal))
    # the files a run writes hold those masks and scores
    results = []
    tracking.run_track_job(job, on_result=lambda result, path: results.append(result), predictor=predictor)
    for result in results:
        index = job.frames.index(result.frame)
        _, stock_masks, stock_logits = theirs[index]
        assert np.mean(result.masks == (stock_masks[:, 0] > 0).numpy()) >= equal_pixels
        np.testing.assert_allclose(result.object_score, 1 / (1 + np.exp(-stock_logits)), atol=score_tol)
    return worst


# -- equivalence with the stock SAM2VideoPredictor -----------------------------------------------------------------
def test_float32_store_tracks_as_the_stock_predictor(series32, predictor, stock_predictor, monkeypatch, tmp_path):
    """float32 features are the encoder's own output; only the image embedding goes through + and - no_mem_embed
    (a float32 rounding), so the mask logits may differ by float rounding carried through the memory attention:
    tolerance 1e-4 on mask logits (measured: 5e-7), 1e-5 on object score logits (measured: 2e-7), 99.99 % of mask
    pixels equal (measured: all)."""
    worst = compare_with_stock(series32, predictor, stock_predictor, monkeypatch, tmp_path, 1e-4, 1e-5, 0.9999)
    print("float32 store vs stock (logit, object logit, equal pixels):", worst)


@pytest.mark.slow
def test_float16_store_tracks_as_the_stock_predictor_within_half_precision(series16, predictor, stock_predictor,
                                                                           monkeypatch, tmp_path):
    """float16 features are rounded to 11 significant bits (a relative error up to 4.9e-4 on every feature), which
    moves the logits a little more: tolerance 5e-4 on mask logits (measured: 8e-5; leaving no_mem_embed in the image
    embedding moves them by 3e-3), 1e-4 on object score logits
    (measured: 9e-6), 99.9 % of mask pixels equal (measured: 99.988 %: pixels whose logit is near 0 flip)."""
    worst = compare_with_stock(series16, predictor, stock_predictor, monkeypatch, tmp_path, 5e-4, 1e-4, 0.999)
    print("float16 store vs stock (logit, object logit, equal pixels):", worst)


def test_inference_state_has_the_keys_of_init_state(series32, predictor, stock_predictor, monkeypatch):
    stock = stock_state(stock_predictor, series32[1], monkeypatch)
    mine = stored_inference_state(predictor, 4, lambda index: {}, TILE_SIZE)
    assert set(mine) == set(stock)
    for key in ("num_frames", "video_height", "video_width", "offload_video_to_cpu", "offload_state_to_cpu",
                "device", "storage_device", "obj_ids"):
        assert mine[key] == stock[key], key
    assert len(mine["images"]) == 4


def test_the_predictor_has_the_stores_weights(predictor):
    """The video predictor holds a copy of the encoding model's weights: equal tensors (copied, not computed)."""
    theirs = random_model().net.state_dict()
    mine = predictor.state_dict()
    assert set(mine) == set(theirs)
    assert all(torch.equal(mine[name].cpu(), theirs[name]) for name in theirs)
    assert type(predictor).__name__ == "SAM2VideoPredictor"


def test_prompts_reach_sam2_as_the_interactive_decoder_gives_them(series32, predictor):
    """Points and box corners reach SAM 2 at the coordinates (tile pixels - 0.5) that the interactive decoder
    (core/mask_decoding.prompt_arrays) gives SAM 2's mask decoder."""
    obj = TrackObject(5, points=((95.0, 100.0), (30.25, 40.75)), labels=(1, 0), box=(60.0, 70.0, 130.0, 140.0))
    state = stored_inference_state(predictor, 4, _reader(series32[0]), TILE_SIZE)
    tracking.add_prompts(predictor, state, 1, obj, None)
    given = state["point_inputs_per_obj"][0][1]
    coords, labels = prompt_arrays("sam2", Prompts(points=np.array(obj.points), labels=np.array(obj.labels),
                                                   box=obj.box))
    np.testing.assert_allclose(given["point_coords"][0].cpu().numpy(), coords[:-1], atol=1e-4)  # - padding point
    assert given["point_labels"][0].tolist() == labels[:-1].tolist()


def _reader(store: Path):
    root = FeatureStore.open(store)
    return lambda index: root.load_tile(TILE)


# -- frames, directions, objects -----------------------------------------------------------------------------------
@pytest.mark.parametrize("direction, prompt, order", [
    ("forward", 1, [1, 2, 3]), ("backward", 2, [2, 1, 0]), ("both", 1, [1, 2, 3, 0]), ("backward", 0, [0]),
    ("forward", 3, [3]), ("both", 0, [0, 1, 2, 3])])
def test_directions_visit_the_frames_in_order(series32, predictor, direction, prompt, order, tmp_path):
    job = make_job(series32[0], tmp_path, [POINT], prompt=prompt, direction=direction)
    root, frames = open_series(job)
    group = open_group(root, frames, job, 0)
    results = list(tracking.track_group(predictor, job, 0, group))
    assert [result.frame for result in results] == order == list(job.tracked_order())
    assert all(result.obj_ids.tolist() == [1] for result in results)


def test_backward_frames_are_tracked_in_reverse(series32, predictor, tmp_path, monkeypatch):
    """Frames before the prompt frame are tracked by SAM 2 in reverse time order (memory from later frames)."""
    job = make_job(series32[0], tmp_path, [POINT], prompt=2, direction="both")
    root, frames = open_series(job)
    states = []
    real = tracking.stored_inference_state
    monkeypatch.setattr(tracking, "stored_inference_state", lambda *args: states.append(real(*args)) or states[-1])
    list(tracking.track_group(predictor, job, 0, open_group(root, frames, job, 0)))
    tracked = states[0]["frames_tracked_per_obj"][0]
    assert set(tracked) == {0, 1, 2, 3}
    assert {index: tracked[index]["reverse"] for index in (3, 1, 0)} == {3: False, 1: True, 0: True}


def test_a_subset_of_frames_is_a_video_of_those_frames(series32, predictor, stock_predictor, monkeypatch, tmp_path):
    """frames (0, 2, 3): video index i reads series frame frames[i]'s store; the masks are the stock predictor's on
    those three frames' images."""
    store, tiles = series32
    job = make_job(store, tmp_path / "out", equivalence_objects(store.parent), frames=(0, 2, 3), prompt=2)
    root, frames = open_series(job)
    group = open_group(root, frames, job, 0)
    assert [s.root for s in group.stores] == [store, store / "frames/t0002", store / "frames/t0003"]
    results = {}
    tracking.run_track_job(job, on_result=lambda result, path: results.update({result.frame: result}),
                           predictor=predictor)
    assert sorted(results) == [0, 2, 3]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["g000_f0000.npz", "g000_f0002.npz",
                                                                     "g000_f0003.npz"]
    theirs = run_stock(stock_predictor, tiles[[0, 2, 3]], 1, monkeypatch)
    for index, frame in enumerate((0, 2, 3)):
        assert np.mean(results[frame].masks == (theirs[index][1][:, 0] > 0).numpy()) >= 0.9999


def test_an_object_sam2_marks_absent_is_not_present_and_has_no_mask(series32, predictor, tmp_path):
    """An empty mask prompt is SAM 2's way of saying "not on this frame": its object score logit is -10 there (sam2's
    _use_mask_as_output), so the object is not present, scores ~0 and has an empty mask; a non-empty mask prompt
    gives +10."""
    np.save(tmp_path / "empty.npy", np.zeros((TILE_SIZE, TILE_SIZE), bool))
    objects = [TrackObject(9, mask_file="empty.npy"), TrackObject(MASK_ID, mask_file=str(series32[0].parent /
                                                                                         "mask3.npy"))]
    job = make_job(series32[0], tmp_path / "out", objects, direction="forward")
    tracking.run_track_job(job, base=tmp_path, predictor=predictor)
    result = read_result(result_path(tmp_path / "out", 0, 1))
    assert result.obj_ids.tolist() == [9, MASK_ID]
    assert result.present.tolist() == [False, True]
    assert result.object_score[0] < 1e-4 < 0.999 < result.object_score[1]
    assert not result.masks[0].any() and result.masks[1].any()


def test_an_absent_object_gets_no_mask_whatever_sam2_drew():
    """The conversion: present = object score logit > 0, score = its sigmoid, mask emptied where not present."""
    logits = np.array([-0.25, 0.5, 0.0], np.float32)
    masks = torch.ones(3, 1, 8, 8)
    masks[1, 0, :4] = -1.0
    result = tracking.frame_result(2, 5, [4, 6, 8], masks, logits)
    assert (result.group, result.frame, result.obj_ids.tolist()) == (2, 5, [4, 6, 8])
    assert result.present.tolist() == [False, True, False]
    np.testing.assert_allclose(result.object_score, 1 / (1 + np.exp(-logits)), rtol=1e-6)
    assert result.masks.sum(axis=(1, 2)).tolist() == [0, 32, 0]


def test_tracking_never_encodes_a_frame(series32, predictor, monkeypatch, tmp_path):
    from sam2.modeling.backbones.image_encoder import ImageEncoder
    from sam2.modeling.sam2_base import SAM2Base

    def refuse(*args, **kwargs):
        raise AssertionError("a frame was encoded")
    monkeypatch.setattr(SAM2Base, "forward_image", refuse)
    monkeypatch.setattr(ImageEncoder, "forward", refuse)
    outcome = tracking.run_track_job(make_job(series32[0], tmp_path, [POINT, BOX]), predictor=predictor)
    assert outcome.results == 4
    with pytest.raises(RuntimeError, match="never encodes"):
        FramesNotLoaded(4)[0]


def test_several_groups_and_objects_keep_their_ids(series32, predictor, tmp_path):
    objects = [TrackObject(12, points=((95.0, 100.0),), labels=(1,)), TrackObject(4, box=(60.0, 70.0, 130.0, 140.0))]
    job = make_job(series32[0], tmp_path, objects, groups=2)
    seen = []
    tracking.run_track_job(job, predictor=predictor, on_result=lambda result, path: seen.append((result, path)))
    assert [(r.group, r.frame) for r, _ in seen] == [(g, f) for g in (0, 1) for f in (1, 2, 3, 0)]
    for result, path in seen:
        assert path == result_path(tmp_path, result.group, result.frame)
        stored = read_result(path)
        assert stored.obj_ids.tolist() == [12, 4] and stored.masks.shape == (2, TILE_SIZE, TILE_SIZE)
        assert stored.masks.dtype == bool and stored.object_score.dtype == np.float32


@pytest.mark.slow
def test_a_coarse_level_of_a_two_level_series_is_tracked(tmp_path, predictor):
    """--levels 1,4: the group's level `levels/x4` is opened on every frame (`frame store / level`), its tile
    tracked."""
    rasters = moving_square_frames(tmp_path, 3, size=300)
    store = encode_series(rasters, tmp_path / "series.qsam", levels=(1.0, 4.0))
    job = make_job(store, tmp_path / "out", [TrackObject(2, points=((22.0, 24.0),), labels=(1,))], frames=(0, 1, 2),
                   level="levels/x4")
    root, frames = open_series(job)
    group = open_group(root, frames, job, 0)
    assert [s.root for s in group.stores] == [store / "levels/x4", store / "frames/t0001/levels/x4",
                                              store / "frames/t0002/levels/x4"]
    assert all(s.manifest.pixel_grid.factor == 4.0 for s in group.stores)
    outcome = tracking.run_track_job(job, predictor=predictor)
    assert outcome.order == (1, 2, 0)
    assert read_result(result_path(tmp_path / "out", 0, 2)).masks.shape == (1, TILE_SIZE, TILE_SIZE)


# -- bad jobs: one line, before the model is built -------------------------------------------------------------------
@pytest.fixture(scope="module")
def nodata_series(tmp_path_factory) -> Path:
    """Two frames of 400 x 256 px (tiles r0000c0000 and r0000c0001, from column 144); frame 1 is nodata from column
    140 on, so its tile r0000c0001 has no valid pixel."""
    folder = tmp_path_factory.mktemp("nodata")
    first = write_raster(folder / "a.tif", square_scene(400, 256, (60, 70, 50)), nodata=0)
    data = square_scene(400, 256, (70, 74, 54))
    data[:, :, 140:] = 0
    second = write_raster(folder / "b.tif", data, nodata=0)
    return encode_series([first, second], folder / "series.qsam")


def bad_job_error(job: TrackJob, monkeypatch, base: Path = None) -> str:
    """The one-line error of tracking `job`, checked to come before any model is built."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built for a bad job")
    monkeypatch.setattr(tracking, "build_store_predictor", refuse)
    with pytest.raises(QuickSamError) as caught:
        tracking.run_track_job(job, base=base)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_jobs_are_refused_in_one_line(series32, nodata_series, tmp_path, monkeypatch):
    store = series32[0]
    assert "is not a QuickSAM feature store" in bad_job_error(make_job(tmp_path / "nowhere", tmp_path, [POINT]),
                                                              monkeypatch)
    message = bad_job_error(make_job(store, tmp_path, [POINT], frames=(1, 9)), monkeypatch)
    assert "frame 9 is not in series" in message and "0 to 3" in message
    message = bad_job_error(make_job(nodata_series, tmp_path, [POINT], frames=(0, 1), prompt=0, tile="r0000c0001"),
                            monkeypatch)
    assert "tile r0000c0001 of level '.' is not encoded on frame 1" in message and "nodata" in message
    assert "has no level 'levels/x4'" in bad_job_error(make_job(store, tmp_path, [POINT], level="levels/x4"),
                                                        monkeypatch)
    plain = tmp_path / "plain.qsam"
    encode(moving_square_frames(tmp_path, 1)[0], plain)
    assert "not a series store" in bad_job_error(make_job(plain, tmp_path, [POINT], frames=(1,)), monkeypatch)
    np.save(tmp_path / "small.npy", np.zeros((64, 64), bool))
    message = bad_job_error(make_job(store, tmp_path, [TrackObject(3, mask_file="small.npy")]), monkeypatch, tmp_path)
    assert "mask prompt of object 3" in message and "(64, 64)" in message
    assert "distinct ids" in bad_job_error(make_job(store, tmp_path, [POINT, POINT]), monkeypatch)
    both = TrackObject(3, points=((5.0, 5.0),), labels=(1,), mask_file="small.npy")
    assert "mask prompt and points" in bad_job_error(make_job(store, tmp_path, [both]), monkeypatch)
    (tmp_path / "a_file").write_text("")
    assert "output folder" in bad_job_error(make_job(store, tmp_path / "a_file" / "out", [POINT]), monkeypatch)


@pytest.mark.slow
def test_a_sam1_series_is_refused(tmp_path, monkeypatch):
    rasters = moving_square_frames(tmp_path, 2)
    from quicksam.encoder.models import build_model

    sam1 = build_model("sam_vit_b", seed=0, image_size=TILE_SIZE)
    store = encode_series(rasters, tmp_path / "series.qsam", segment_model=sam1, model="sam_vit_b")
    message = bad_job_error(make_job(store, tmp_path, [POINT], frames=(0, 1)), monkeypatch)
    assert "tracking needs SAM 2 or SAM 2.1" in message and "sam_vit_b" in message


# -- cancel ---------------------------------------------------------------------------------------------------------
def test_cancel_keeps_the_results_written(series32, predictor, tmp_path):
    written = []
    job = make_job(series32[0], tmp_path, [POINT])
    with pytest.raises(Cancelled, match="the 2 results written so far are kept"):
        tracking.run_track_job(job, predictor=predictor, cancelled=lambda: len(written) >= 2,
                               on_result=lambda result, path: written.append(path))
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["g000_f0001.npz", "g000_f0002.npz"]
    assert read_result(written[1]).frame == 2


# -- the command ------------------------------------------------------------------------------------------------------
def events_of(stdout: str) -> List[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.mark.slow
def test_track_masks_command_end_to_end(series32, tmp_path):
    job = make_job(series32[0], "out", [POINT, TrackObject(MASK_ID, mask_file="mask3.npy")], prompt=2)
    np.save(tmp_path / "mask3.npy", square_mask(2))
    job.write(tmp_path / "job.json")
    done = subprocess.run(cli_command("track-masks", "job.json", "--device", "cpu", "--progress-json"),
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    events = events_of(done.stdout)
    frames = [e for e in events if e["event"] == "track_frame"]
    assert [e["frame"] for e in frames] == [2, 3, 1, 0]
    assert all(e["group"] == 0 and e["objects"] == [1, MASK_ID] and set(e["present"]) <= {1, MASK_ID}
               for e in frames)
    for event in frames:
        assert read_result(tmp_path / event["path"]).frame == event["frame"]
    assert events[0]["event"] == "start" and events[0]["results"] == 4
    assert events[-1]["event"] == "finished" and events[-1]["summary"]["results"] == 4


def test_track_masks_command_refuses_a_bad_job_in_one_line(series32, tmp_path):
    make_job(series32[0], tmp_path / "out", [POINT], frames=(1, 7)).write(tmp_path / "job.json")
    assert_one_line_error(run_cli("track-masks", tmp_path / "job.json"), "frame 7 is not in series")
    (tmp_path / "broken.json").write_text("{")
    assert_one_line_error(run_cli("track-masks", tmp_path / "broken.json"), "track job .* cannot be read")


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_track_masks_stops_on_a_signal_and_keeps_its_results(series32, tmp_path, stop):
    """SIGTERM (a cancelled QGIS task) or Ctrl-C after the first result: exit 130, one line, the results written so
    far kept and whole. 2 groups x 4 frames: the run cannot finish its 7 other results before the signal lands."""
    make_job(series32[0], tmp_path / "out", [POINT, BOX], groups=2).write(tmp_path / "job.json")
    process = subprocess.Popen(cli_command("track-masks", tmp_path / "job.json", "--device", "cpu",
                                           "--progress-json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    announced = []
    for line in process.stdout:
        event = json.loads(line)
        if event["event"] == "track_frame":
            announced.append(event["path"])
            os.kill(process.pid, stop)
            break
    rest = [json.loads(line) for line in process.stdout]
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 130, stderr
    announced += [e["path"] for e in rest if e["event"] == "track_frame"]
    assert rest[-1]["event"] == "error" and rest[-1]["exit_status"] == 130
    assert stderr.startswith("quicksam: cancelled: ") and len(stderr.splitlines()) == 1, stderr
    files = sorted(str(p) for p in (tmp_path / "out").iterdir())
    assert files == sorted(announced) and 1 <= len(files) < 8
    assert all(read_result(Path(path)).masks.shape == (2, TILE_SIZE, TILE_SIZE) for path in files)
