"""Models behind one interface: stored features decode exactly like in-memory features.

Reference = the packages' own predictors (`SAM2ImagePredictor.set_image` + `predict`,
`SamPredictor.set_image` + `predict`) on random, seeded weights built from the packages' configs.
Tolerances: float32 storage reproduces our in-memory decode bit for bit and the predictor to 1e-5;
float16 storage changes low-resolution logits by at most FLOAT16_LOGIT_TOL and flips < 0.5 % of mask
pixels; ONNX Runtime matches torch to 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is needed for the model tests (make install)")

from synthetic import write_raster  # noqa: E402

from quicksam.core.mask_decoding import Prompts, upsample_logits  # noqa: E402
from quicksam.core.store import FeatureStore  # noqa: E402
from quicksam.encoder.models import build_model, select_device  # noqa: E402
from quicksam.encoder.pipeline import EncodeRequest, encode_raster  # noqa: E402
from quicksam.interactive.decoding import OnnxDecoder  # noqa: E402

FLOAT16_LOGIT_TOL = 0.05
ONNX_TOL = 1e-4
PROMPT_SETS = [
    dict(points=[[500, 300]], labels=[1], box=None),
    dict(points=[[500, 300], [100, 900]], labels=[1, 0], box=None),
    dict(points=[], labels=[], box=(50, 60, 700, 800)),
    dict(points=[[420, 500]], labels=[1], box=(50, 60, 700, 800)),
]


def _scaled(prompt: dict, scale: float) -> dict:
    box = None if prompt["box"] is None else tuple(v * scale for v in prompt["box"])
    return dict(points=[[x * scale, y * scale] for x, y in prompt["points"]], labels=prompt["labels"], box=box)


def _ours(prompt: dict) -> Prompts:
    """Predictor pixel indices -> our continuous coordinates (pixel centre = index + 0.5)."""
    points = np.asarray(prompt["points"], float).reshape(-1, 2) + 0.5
    box = None if prompt["box"] is None else tuple(v + 0.5 for v in prompt["box"])
    return Prompts(points=points, labels=prompt["labels"], box=box)


def _predictor_kwargs(prompt: dict) -> dict:
    kwargs = {}
    if prompt["points"]:
        kwargs.update(point_coords=np.asarray(prompt["points"], float), point_labels=np.asarray(prompt["labels"]))
    if prompt["box"] is not None:
        kwargs["box"] = np.asarray(prompt["box"], float)
    return kwargs


def _image(size: int, seed: int = 0) -> np.ndarray:
    """A tile with structure (blocks + noise) so that features are not uniform."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    image[size // 4: size // 2, size // 3: 2 * size // 3] += 150
    return image


@pytest.fixture(scope="module")
def sam2_full(tmp_path_factory):
    """A random SAM 2.1 tiny at the native 1024 px, one tile encoded through the real pipeline."""
    torch.set_num_threads(2)
    model = build_model("sam2.1_hiera_t", seed=0)
    image = _image(1024)
    raster = write_raster(tmp_path_factory.mktemp("raster") / "rgb.tif", image.transpose(2, 0, 1))
    stores = {}
    for dtype in ("float32", "float16"):
        store_dir = tmp_path_factory.mktemp("store") / f"{dtype}.qsam"
        request = EncodeRequest(raster=str(raster), store=store_dir, model="sam2.1_hiera_t", checkpoint=None,
                                stretch="none", feature_dtype=dtype)
        stores[dtype], _ = encode_raster(request, model=model)
    return model, image, stores


def test_sam2_stored_features_decode_like_set_image(sam2_full):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model, image, stores = sam2_full
    predictor = SAM2ImagePredictor(model.net)
    predictor.set_image(image)
    memory_features = model.encode(image[None])[0]
    store32, store16 = stores["float32"], stores["float16"]
    tile_id = store32.grid.tiles[0].tile_id
    stored32, stored16 = store32.load_tile(tile_id), store16.load_tile(tile_id)
    assert stored16["image_embed"].dtype == np.float16
    # The store runs the same encoder again, in another batch and memory layout: float32 results agree to
    # rounding, not bitwise (BLAS kernels and SIMD paths differ by CPU). 1e-5 relative is ~80 ulps.
    for name, array in memory_features.items():
        np.testing.assert_allclose(stored32[name], array, rtol=1e-5, atol=1e-6)
    onnx32 = OnnxDecoder(store32.root / "decoder.onnx", "sam2", store32.feature_names, 1024, model.decoder_settings)
    for prompt in PROMPT_SETS:
        for multimask in (True, False):
            ref_masks, ref_scores, ref_logits = predictor.predict(**_predictor_kwargs(prompt),
                                                                  multimask_output=multimask)
            ours_memory = model.decode(memory_features, _ours(prompt), multimask)
            ours_stored = model.decode(stored32, _ours(prompt), multimask)
            # decoding from the stored float32 features is decoding from the encoder's own output: the same up
            # to float32 rounding (seen here: 2.7e-7 on another CPU); logits are O(10)
            np.testing.assert_allclose(ours_stored.low_res_logits, ours_memory.low_res_logits, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(ours_stored.low_res_logits, ref_logits, atol=1e-5)
            np.testing.assert_allclose(ours_stored.scores, ref_scores, atol=1e-5)
            assert (ours_stored.masks != ref_masks.astype(bool)).mean() < 1e-4
            from_onnx = onnx32.decode(stored32, _ours(prompt), multimask)
            np.testing.assert_allclose(from_onnx.low_res_logits, ref_logits, atol=ONNX_TOL)
            half = model.decode(stored16, _ours(prompt), multimask)
            assert np.abs(half.low_res_logits - ref_logits).max() < FLOAT16_LOGIT_TOL
            assert (half.masks != ref_masks.astype(bool)).mean() < 5e-3


def test_sam2_onnx_decoder_from_float16_store_matches_torch(sam2_full):
    model, _, stores = sam2_full
    store = stores["float16"]
    decoder = OnnxDecoder(store.root / "decoder.onnx", store.family, store.feature_names, store.image_size,
                          model.decoder_settings)
    features = store.load_tile(store.grid.tiles[0].tile_id)
    for prompt in PROMPT_SETS:
        torch_result = model.decode(features, _ours(prompt), multimask=True)
        onnx_result = decoder.decode(features, _ours(prompt), multimask=True)
        np.testing.assert_allclose(onnx_result.low_res_logits, torch_result.low_res_logits, atol=ONNX_TOL)
        np.testing.assert_allclose(onnx_result.scores, torch_result.scores, atol=ONNX_TOL)


@pytest.mark.parametrize("name", ["sam2_hiera_t", "sam_vit_b"])
def test_other_families_match_their_predictor(name):
    """SAM 2 (not 2.1) and SAM v1 at a 256 px tile: our encode + decode equal the package predictor's."""
    model = build_model(name, seed=1, image_size=256)
    image = _image(256, seed=3)
    features = model.encode(image[None])[0]
    if model.family == "sam2":
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        predictor = SAM2ImagePredictor(model.net)
        predictor._bb_feat_sizes = [(64, 64), (32, 32), (16, 16)]  # the predictor hard-codes 1024 px
    else:
        from segment_anything import SamPredictor

        predictor = SamPredictor(model.net)
    predictor.set_image(image)
    for prompt in PROMPT_SETS:
        small = _scaled(prompt, 0.25)
        _, ref_scores, ref_logits = predictor.predict(**_predictor_kwargs(small), multimask_output=True)
        ours = model.decode(features, _ours(small), multimask=True)
        np.testing.assert_allclose(ours.low_res_logits, ref_logits, atol=1e-4)
        np.testing.assert_allclose(ours.scores, ref_scores, atol=1e-4)


def test_sam1_onnx_export_matches_torch(tmp_path: Path):
    model = build_model("sam_vit_b", seed=2, image_size=256)
    features = model.encode(_image(256)[None])[0]
    model.export_decoder_onnx(tmp_path / "decoder.onnx")
    decoder = OnnxDecoder(tmp_path / "decoder.onnx", "sam1", model.feature_names(), 256, model.decoder_settings)
    for prompt in PROMPT_SETS:
        small = _ours(_scaled(prompt, 0.25))
        np.testing.assert_allclose(decoder.decode(features, small).low_res_logits,
                                   model.decode(features, small).low_res_logits, atol=ONNX_TOL)
    # many single-point objects in one call (segment everything) decode as they do one by one
    points = np.array([[40.0, 60.0], [128.0, 128.0], [250.0, 3.0]])
    batched_logits, batched_scores = decoder.raw_points(features, points)
    assert decoder.batched and batched_logits.shape[0] == 3
    for point, logits, scores in zip(points, batched_logits, batched_scores):
        alone_logits, alone_scores = decoder.raw(features, Prompts(points=[point], labels=[1]))
        np.testing.assert_allclose(logits, alone_logits, atol=ONNX_TOL)
        np.testing.assert_allclose(scores, alone_scores, atol=ONNX_TOL)


def test_random_weights_are_seeded():
    image = _image(128)[None]
    first = build_model("sam2.1_hiera_t", seed=5, image_size=128).encode(image)[0]["image_embed"]
    again = build_model("sam2.1_hiera_t", seed=5, image_size=128).encode(image)[0]["image_embed"]
    other = build_model("sam2.1_hiera_t", seed=6, image_size=128).encode(image)[0]["image_embed"]
    # the same seed gives the same weights, so the same features up to float rounding; another seed gives
    # other features (differences of order 1, far beyond the tolerance)
    np.testing.assert_allclose(first, again, rtol=1e-5, atol=1e-6)
    assert not np.allclose(first, other, rtol=1e-2, atol=1e-2)


def test_batched_encode_equals_one_by_one():
    model = build_model("sam2.1_hiera_t", seed=0, image_size=128)
    images = np.stack([_image(128, seed=s) for s in range(3)])
    batched = model.encode(images)
    for i in range(3):
        single = model.encode(images[i:i + 1])[0]
        for name in single:
            np.testing.assert_allclose(batched[i][name], single[name], atol=1e-5)


def test_upsampling_matches_torch_bilinear():
    logits = np.random.default_rng(0).normal(size=(3, 64, 64)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], (256, 256), mode="bilinear",
                                               align_corners=False)[0].numpy()
    np.testing.assert_allclose(upsample_logits(logits, 256), expected, atol=1e-5)


def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device("auto") == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device("auto") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == "cuda"
    assert select_device("cuda:1") == "cuda:1"


def test_device_that_is_missing_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="not available"):
        select_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu")


def test_store_records_random_weights(sam2_full):
    _, _, stores = sam2_full
    summary = FeatureStore.open(stores["float16"].root).summary()
    assert summary["random_weights"] is True
    assert "NOT a trained model" in summary["checkpoint"]
    assert len(summary["checkpoint_sha256"]) == 64


def test_cropped_mask_upsampling_equals_full_upsampling():
    from quicksam.core.mask_decoding import upsample_masks

    rng = np.random.default_rng(1)
    logits = rng.normal(-5, 1, size=(3, 64, 64)).astype(np.float32)
    logits[0, 10:20, 30:45] += 9  # a compact object
    logits[1, 0:3, 60:64] += 9  # touching the top-right edge
    logits[2] = -3  # nothing
    full = upsample_logits(logits, 256)
    expected = full > 0
    # The cropped path evaluates the same bilinear weights in another order: a pixel may flip only where
    # the logit is within float32 rounding of the threshold (|logit| < 1e-5 for logits of order 10).
    differ = upsample_masks(logits, 256, 0.0) != expected
    assert not differ.any() or np.abs(full[differ]).max() < 1e-5
    assert expected[0].any() and expected[1].any() and not expected[2].any()


def test_missing_onnxruntime_is_a_clear_message(monkeypatch, tmp_path):
    import builtins

    from quicksam.core.errors import QuickSamError
    from quicksam.core.mask_decoding import DecoderSettings

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(QuickSamError, match="needs onnxruntime"):
        OnnxDecoder(tmp_path / "decoder.onnx", "sam2", ["image_embed"], 256, DecoderSettings())
