"""Store benchmark: bytes per SAM 2 tile and the tile codec's cost; prints one JSON object.

    .venv/bin/python bench/store.py [--repeats 5] [--prompts-per-side 8]

Every figure is measured in this run, on 1024 px tiles encoded here by SAM 2.1 tiny with seeded RANDOM weights
(features of trained weights may compress differently: no checkpoint is available on the machines measured):
- tiles: "synthetic" (bench/encode.py's scene of rectangles and noise), "landsat_padded" (the real Landsat 7
  raster of /work/shared/data, bands 3,2,1: 349 x 352 px, so the tile is mostly padding, as a raster's edge
  tiles are) and "landsat_3x" (the same raster 3x nearest-upsampled and cut to one full 1024 px tile);
- bytes of a tile file: raw (format version 3: .npy float16), lossless (version 4: byte planes + zlib) and
  quantised (--feature-dtype int8); ms to compress (the writer thread's cost) and to decompress (every cold
  click's cost: the file read from the page cache, decoded, and converted to the float32 the decoder takes,
  as the interactive FeatureCache does; raw: the memory-mapped float16 converted to float32);
- the quantised option's mask agreement: IoU of the masks decoded (ONNX Runtime, the store's decoder) from
  int8 and from float32 features at a grid of point prompts, at the model's threshold (0) and at the median of
  float32's logits (a mask of half the tile: random weights' masks cover most of it, which flatters the IoU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from encode import write_test_raster  # noqa: E402

from quicksam.core.mask_decoding import Prompts  # noqa: E402
from quicksam.core.store import FeatureStore  # noqa: E402
from quicksam.core.tile_codec import decode_tile, encode_tile  # noqa: E402
from quicksam.core.tile_files import npy_size, save_npy_atomically  # noqa: E402
from quicksam.encoder.models import build_model  # noqa: E402
from quicksam.encoder.pipeline import EncodeRequest, encode_raster  # noqa: E402

MODEL = "sam2.1_hiera_t"
LANDSAT = Path(os.environ.get("QUICKSAM_LANDSAT", "/work/shared/data/L7_ETMs.tif"))
TARGET_LOSSLESS_BYTES = 6_000_000
TARGET_QUANTISED_BYTES = 4_200_000
TARGET_IOU = 0.99


def landsat_3x(path: Path) -> Path:
    """Landsat bands 3,2,1, 3x nearest-upsampled and cut to 1024 x 1024: one full tile of real structure."""
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(LANDSAT) as src:
        data = src.read([3, 2, 1])
    data = np.repeat(np.repeat(data, 3, axis=1), 3, axis=2)[:, :1024, :1024]
    with rasterio.open(path, "w", driver="GTiff", width=1024, height=1024, count=3, dtype=data.dtype,
                       crs="EPSG:31985", transform=from_origin(280000, 9120000, 9.5, 9.5)) as dst:
        dst.write(data)
    return path


def encode_store(model, raster: Path, store: Path, bands=None) -> FeatureStore:
    request = EncodeRequest(raster=str(raster), store=store, model=MODEL, overlap=0, checkpoint=None,
                            feature_dtype="float32", bands=bands)
    return encode_raster(request, model=model)[0]


def median_ms(run, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1), result


def codec_figures(flat32: np.ndarray, shapes, work: Path, repeats: int) -> dict:
    """Bytes and ms of one tile (flat float32 features) raw, lossless and quantised."""
    raw_path = work / "raw.npy"
    save_npy_atomically(raw_path, flat32.astype(np.float16))
    raw_ms, _ = median_ms(lambda: np.array(np.load(raw_path, mmap_mode="r"), dtype=np.float32), repeats)
    out = {"raw_float16": {"bytes": npy_size(np.float16, flat32.size), "read_ms": raw_ms}}
    for label, dtype, source in (("lossless_float16", "float16", flat32.astype(np.float16)),
                                 ("quantised_int8", "int8", flat32)):
        compress_ms, payload = median_ms(lambda dtype=dtype, source=source: encode_tile(source, dtype, shapes), repeats)
        path = work / f"{label}.npy"
        save_npy_atomically(path, payload)
        read_ms, _ = median_ms(lambda dtype=dtype, path=path: decode_tile(np.load(path, mmap_mode="r"), dtype, shapes)
                               .astype(np.float32, copy=False), repeats)
        out[label] = {"bytes": npy_size(np.uint8, payload.size), "compress_ms": compress_ms, "read_ms": read_ms}
    out["lossless_over_raw"] = round(out["lossless_float16"]["bytes"] / out["raw_float16"]["bytes"], 3)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def quantised_ious(store: FeatureStore, per_side: int) -> dict:
    """IoU distribution of int8 against float32 masks over a per_side x per_side grid of single points."""
    from quicksam.interactive.engine import SegmentEngine

    decoder = SegmentEngine.open(store.root).decoder
    tile_id = store.grid.tiles[0].tile_id
    exact = store.load_tile(tile_id)
    shapes = [array.shape for array in exact.values()]
    flat = decode_tile(encode_tile(np.concatenate([a.reshape(-1) for a in exact.values()]), "int8", shapes),
                       "int8", shapes)
    quantised, offset = {}, 0
    for name, array in exact.items():
        quantised[name] = flat[offset:offset + array.size].reshape(array.shape)
        offset += array.size
    at_zero, at_median, coverage, logit_diff = [], [], [], []
    for x in np.linspace(32, store.image_size - 32, per_side):
        for y in np.linspace(32, store.image_size - 32, per_side):
            prompts = Prompts(points=np.array([[x, y]]), labels=np.array([1]))
            ours, theirs = decoder.raw(quantised, prompts)[0], decoder.raw(exact, prompts)[0]
            median = float(np.median(theirs))
            at_zero += [iou(o > 0, t > 0) for o, t in zip(ours, theirs)]
            at_median += [iou(o > median, t > median) for o, t in zip(ours, theirs)]
            coverage.append(float((theirs > 0).mean()))
            logit_diff.append(float(np.abs(ours - theirs).max()))

    def stats(values):
        values = np.asarray(values)
        return {"min": round(float(values.min()), 4), "p01": round(float(np.percentile(values, 1)), 4),
                "p05": round(float(np.percentile(values, 5)), 4), "median": round(float(np.median(values)), 4),
                "count": int(values.size)}

    return {"prompts": per_side * per_side, "masks_per_prompt": "all the decoder's outputs (4)",
            "iou_at_threshold_0": stats(at_zero), "iou_at_float32_median": stats(at_median),
            "float32_mask_coverage_median": round(float(np.median(coverage)), 3),
            "max_abs_low_res_logit_difference": round(float(np.max(logit_diff)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts-per-side", type=int, default=8)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="quicksam-bench-store-"))
    try:
        model = build_model(MODEL, seed=0)
        rasters = {"synthetic": (write_test_raster(work / "synthetic.tif", 1), None)}
        if LANDSAT.is_file():
            rasters["landsat_padded"] = (LANDSAT, [3, 2, 1])
            rasters["landsat_3x"] = (landsat_3x(work / "landsat_3x.tif"), None)
        tiles, stores = {}, {}
        for name, (raster, bands) in rasters.items():
            store = stores[name] = encode_store(model, raster, work / f"{name}.qsam", bands)
            features = store.load_tile(store.grid.tiles[0].tile_id)
            flat = np.concatenate([a.reshape(-1) for a in features.values()])
            tiles[name] = codec_figures(flat, [a.shape for a in features.values()], work, args.repeats)
        quantised = quantised_ious(stores["synthetic"], args.prompts_per_side)
        full = [t for name, t in tiles.items() if name != "landsat_padded"]   # full tiles: the worst case
        worst_lossless = max(t["lossless_float16"]["bytes"] for t in full)
        worst_quantised = max(t["quantised_int8"]["bytes"] for t in full)
        result = {
            "model": MODEL, "weights": "random (seeded): features of trained weights may compress differently",
            "tile_px": 1024, "repeats": args.repeats, "codec": "byteplanes-zlib (stdlib zlib, level 1, Z_RLE)",
            "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
            "tiles": tiles, "quantised_masks": quantised,
            "targets": {
                "lossless_at_most_6MB": {"met": worst_lossless <= TARGET_LOSSLESS_BYTES, "bytes": worst_lossless},
                "quantised_at_most_4_2MB": {"met": worst_quantised <= TARGET_QUANTISED_BYTES,
                                            "bytes": worst_quantised},
                "quantised_iou_at_least_0_99": {"met": quantised["iou_at_threshold_0"]["min"] >= TARGET_IOU,
                                                "min_iou": quantised["iou_at_threshold_0"]["min"],
                                                "min_iou_at_float32_median": quantised["iou_at_float32_median"]["min"]},
            },
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
