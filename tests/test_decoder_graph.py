"""The split decoder (tile part kept per tile, prompt part per prompt) gives the full decoder's masks; stores
without it, or with one that does not fit, decode with decoder.onnx alone.

Tolerance: the two graphs do the same float32 arithmetic in a different grouping of operators, so ONNX
Runtime may pick other kernels; logits within 1e-4 absolute (on logits of order 1) and masks equal except
at pixels whose logit is within 1e-4 of the threshold.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from synthetic import TILE_SIZE, encode, file_states, random_model, two_tile_store

from quicksam.core.mask_decoding import DecoderSettings, Prompts
from quicksam.core.store import DECODER_ONNX, FeatureStore
from quicksam.core.store_layout import DECODER_PROMPT_ONNX, DECODER_TILE_ONNX
from quicksam.interactive.decoding import OnnxDecoder
from quicksam.interactive.engine import SegmentEngine

LOGIT_TOLERANCE = 1e-4
NAMES = ["image_embed", "high_res_feats_0", "high_res_feats_1"]


def assert_same_masks(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=LOGIT_TOLERANCE)
    differ = (actual > 0) != (expected > 0)
    assert not (differ & (np.abs(expected) > LOGIT_TOLERANCE)).any()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    return two_tile_store(tmp_path_factory.mktemp("graph"))


def decoders(store: FeatureStore):
    onnx = store.root / DECODER_ONNX
    full = OnnxDecoder(onnx, "sam2", NAMES, TILE_SIZE, DecoderSettings(), split=False)
    split = OnnxDecoder(onnx, "sam2", NAMES, TILE_SIZE, DecoderSettings())
    return full, split


PROMPTS = [Prompts(points=[[190.0, 110.0]], labels=[1]),
           Prompts(points=[[30.0, 200.0], [200.0, 120.0]], labels=[1, 0]),
           Prompts(points=[[100.0, 100.0]], labels=[1], box=(60.0, 60.0, 230.0, 170.0)),
           Prompts(box=(10.0, 10.0, 120.0, 250.0))]


def test_a_new_sam2_store_has_the_split_decoder(store):
    assert (store.root / DECODER_TILE_ONNX).is_file() and (store.root / DECODER_PROMPT_ONNX).is_file()
    assert decoders(store)[1].tile_side is not None


def test_split_decoder_gives_the_full_graphs_masks(store):
    full, split = decoders(store)
    for tile in store.grid:
        features = store.load_tile(tile.tile_id)
        for prompts in PROMPTS:
            expected_logits, expected_scores = full.raw(features, prompts)
            logits, scores = split.raw(features, prompts)
            assert_same_masks(logits, expected_logits)
            np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=LOGIT_TOLERANCE)
    assert split.tile_side.tile_runs == len(store.grid)  # once per tile, not per prompt


def test_split_decoder_batches_give_the_full_graphs_masks(store):
    full, split = decoders(store)
    features = store.load_tile(list(store.grid)[0].tile_id)
    points = np.random.default_rng(0).random((5, 2)) * TILE_SIZE
    expected_logits, expected_scores = full.raw_points(features, points)
    logits, scores = split.raw_points(features, points)
    assert logits.shape == expected_logits.shape == (5, 4, TILE_SIZE // 4, TILE_SIZE // 4)
    assert_same_masks(logits, expected_logits)
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=LOGIT_TOLERANCE)


def test_a_mask_input_prompt_uses_the_full_graph(store):
    full, split = decoders(store)
    features = store.load_tile(list(store.grid)[0].tile_id)
    first, _ = full.raw(features, PROMPTS[0])
    refine = Prompts(points=[[190.0, 110.0]], labels=[1], mask_input=first[0])
    assert_same_masks(split.raw(features, refine)[0], full.raw(features, refine)[0])
    assert split.tile_side.tile_runs == 0


def test_the_tile_side_follows_the_features_it_was_computed_from(store):
    full, split = decoders(store)
    features = store.load_tile(list(store.grid)[0].tile_id)
    split.raw(features, PROMPTS[0])
    other = store.load_tile(list(store.grid)[1].tile_id)
    other["image_embed"] = other["image_embed"].copy()  # a new array: a stale entry must not match it
    assert_same_masks(split.raw(other, PROMPTS[0])[0], full.raw(other, PROMPTS[0])[0])
    assert split.tile_side.tile_runs == 2


def old_store(store: FeatureStore, tmp_path: Path) -> FeatureStore:
    shutil.copytree(store.root, tmp_path / "old")
    for name in (DECODER_TILE_ONNX, DECODER_PROMPT_ONNX):
        (tmp_path / "old" / name).unlink()
    return FeatureStore.open(tmp_path / "old")


def test_a_store_without_the_split_decoder_still_decodes(store, tmp_path):
    old = old_store(store, tmp_path)
    engine = SegmentEngine(old)
    assert engine.decoder.tile_side is None
    tile = list(old.grid)[0]
    features = engine.cache.get(tile.tile_id)
    full = decoders(store)[0]
    assert_same_masks(engine.decoder.raw(features, PROMPTS[0])[0], full.raw(features, PROMPTS[0])[0])


def test_a_split_decoder_of_another_tile_size_is_not_used(store, tmp_path, caplog):
    from quicksam.encoder.decoder_split import export_split_decoder

    old = old_store(store, tmp_path)
    export_split_decoder(random_model(2 * TILE_SIZE).net, 2 * TILE_SIZE, old.root / DECODER_TILE_ONNX,
                         old.root / DECODER_PROMPT_ONNX)
    with caplog.at_level(logging.WARNING):
        decoder = OnnxDecoder(old.root / DECODER_ONNX, "sam2", NAMES, TILE_SIZE, DecoderSettings())
    assert decoder.tile_side is None
    assert "another tile size" in caplog.text
    features = old.load_tile(list(old.grid)[0].tile_id)
    assert_same_masks(decoder.raw(features, PROMPTS[0])[0], decoders(store)[0].raw(features, PROMPTS[0])[0])


def test_a_tile_part_of_another_tile_size_is_not_used(store, tmp_path, caplog):
    """Only decoder_tile.onnx from another tile size (the prompt part fits): it is refused when the session opens
    (logged), not at the first decode with ONNX Runtime's shape error."""
    from quicksam.encoder.decoder_split import export_split_decoder

    old = old_store(store, tmp_path)
    shutil.copyfile(store.root / DECODER_PROMPT_ONNX, old.root / DECODER_PROMPT_ONNX)
    export_split_decoder(random_model(2 * TILE_SIZE).net, 2 * TILE_SIZE, old.root / DECODER_TILE_ONNX,
                         tmp_path / "unused_prompt.onnx")
    with caplog.at_level(logging.WARNING):
        decoder = OnnxDecoder(old.root / DECODER_ONNX, "sam2", NAMES, TILE_SIZE, DecoderSettings())
    assert decoder.tile_side is None
    assert "another tile size" in caplog.text and DECODER_TILE_ONNX in caplog.text
    features = old.load_tile(list(old.grid)[0].tile_id)
    assert_same_masks(decoder.raw(features, PROMPTS[0])[0], decoders(store)[0].raw(features, PROMPTS[0])[0])


def _truncate_prompt_part(root: Path, _: FeatureStore) -> None:
    (root / DECODER_PROMPT_ONNX).write_bytes((root / DECODER_PROMPT_ONNX).read_bytes()[:1000])


def _delete_tile_part(root: Path, _: FeatureStore) -> None:
    (root / DECODER_TILE_ONNX).unlink()


def _tile_part_of_another_tile_size(root: Path, _: FeatureStore) -> None:
    from quicksam.encoder.decoder_split import export_split_decoder

    export_split_decoder(random_model(2 * TILE_SIZE).net, 2 * TILE_SIZE, root / DECODER_TILE_ONNX,
                         root / "unused_prompt.onnx")
    (root / "unused_prompt.onnx").unlink()


@pytest.mark.parametrize("damage", [_truncate_prompt_part, _delete_tile_part, _tile_part_of_another_tile_size])
def test_resuming_the_encode_repairs_a_damaged_split_decoder(store, tmp_path, caplog, damage):
    """What the "not using the split decoder" warning says to do (re-run the same encode) repairs it: the part is
    exported again, with a warning naming it; the split decoder is used again."""
    root = Path(shutil.copytree(store.root, tmp_path / "store"))
    damage(root, store)
    with caplog.at_level(logging.WARNING):
        encode(store.manifest.raster.path, root, overlap=64)
    assert "the split decoder of store" in caplog.text and "exporting it again" in caplog.text
    for name in (DECODER_TILE_ONNX, DECODER_PROMPT_ONNX):
        assert (root / name).read_bytes() == (store.root / name).read_bytes(), name
    decoder = OnnxDecoder(root / DECODER_ONNX, "sam2", NAMES, TILE_SIZE, DecoderSettings())
    assert decoder.tile_side is not None


def test_resuming_a_store_written_before_the_split_decoder_writes_nothing(store, tmp_path):
    old = old_store(store, tmp_path)
    before = file_states(old.root)
    encode(store.manifest.raster.path, old.root, overlap=64)
    assert file_states(old.root) == before


def test_a_damaged_cached_split_decoder_is_exported_again(store, tmp_path):
    """A truncated split decoder in the user cache (a full disk, a killed export) is not copied into new stores."""
    from quicksam.encoder.decoder_export import cached_split_decoder

    cached_prompt = cached_split_decoder(store)[1]
    cached_prompt.write_bytes(cached_prompt.read_bytes()[:1000])
    new = encode(store.manifest.raster.path, tmp_path / "new", overlap=64)[0]
    assert (new.root / DECODER_PROMPT_ONNX).read_bytes() == (store.root / DECODER_PROMPT_ONNX).read_bytes()
    assert cached_prompt.read_bytes() == (store.root / DECODER_PROMPT_ONNX).read_bytes()


@pytest.mark.parametrize("damage", [_truncate_prompt_part, _delete_tile_part, _tile_part_of_another_tile_size])
def test_info_reports_a_damaged_split_decoder(store, tmp_path, damage):
    """`quicksam info` says what the segment warning says: the part named, the store not complete (resuming the
    encode repairs it); a store written before the split decoder (neither part) is complete."""
    root = Path(shutil.copytree(store.root, tmp_path / "store"))
    assert FeatureStore.open(root).summary()["complete"] is True
    damage(root, store)
    summary = FeatureStore.open(root).summary()
    assert summary["complete"] is False
    assert summary["decoder_problem"] and ("decoder_tile.onnx" in summary["decoder_problem"]
                                           or "decoder_prompt.onnx" in summary["decoder_problem"])
    old = old_store(store, tmp_path)
    assert (old.summary()["complete"], old.summary()["decoder_problem"]) == (True, None)
