"""Names of the files of a feature store folder (docs/store-format.md). No QGIS, no torch.

    STORE/
      manifest.json         what produced the features (core/manifest.py)
      tiles.jsonl           append-only tile log (core/tile_log.py)
      tiles/<id>.npy        one tile's features; tiles/<id>.valid.npy its valid-pixel mask (core/tile_files.py)
      decoder.onnx          prompt encoder + mask decoder for these features
      decoder_tile.onnx     optional (SAM 2, since 0.1.0): the decoder's tile part, run once per tile
      decoder_prompt.onnx   optional: the rest of the decoder, run per prompt (interactive/tile_side.py)
      tile_index.gpkg       tile footprints for QGIS (encoder/tile_index.py)
      .quicksam.lock        only while `quicksam encode` writes the store (core/locking.py)
"""

from __future__ import annotations

MANIFEST = "manifest.json"
TILE_LOG = "tiles.jsonl"
TILE_DIR = "tiles"
DECODER_ONNX = "decoder.onnx"
#: The split decoder (optional; stores without it decode with decoder.onnx alone).
DECODER_TILE_ONNX = "decoder_tile.onnx"
DECODER_PROMPT_ONNX = "decoder_prompt.onnx"
TILE_INDEX = "tile_index.gpkg"
#: A tile's valid-pixel mask file: tiles/<id>.valid.npy (only for tiles with nodata inside the raster).
VALID_MASK_SUFFIX = ".valid.npy"
