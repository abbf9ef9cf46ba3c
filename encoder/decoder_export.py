"""The store's ONNX decoder: exported once per checkpoint and tile size into the user cache, copied into
each store (no QGIS; torch only through the model that exports it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Tuple

from ..core.store import DECODER_ONNX, FeatureStore, temporary_path
from ..core.store_layout import DECODER_PROMPT_ONNX, DECODER_TILE_ONNX

if TYPE_CHECKING:
    from .models import SegmentModel

#: Bumped when the decoder export changes, so cached exports of an older form are not reused
#: (2: a batch axis for objects).
DECODER_EXPORT_VERSION = 2
#: Bumped when the split decoder (encoder/decoder_split.py) changes.
SPLIT_EXPORT_VERSION = 1


def install_decoder(store: FeatureStore, model: SegmentModel) -> None:
    """Put the ONNX decoder of these weights into the store, exporting it once per checkpoint and tile
    size into the user cache (an export takes seconds; a copy takes milliseconds). A cached export (also a
    cached split decoder) that does not load or fit is exported again. SAM 2 stores also get the split
    decoder (decoder_tile.onnx, decoder_prompt.onnx: encoder/decoder_split.py), installed before
    decoder.onnx so that a store whose decoder.onnx is in place has them too."""
    from ..core.decoder_file import decoder_file_problem, split_decoder_problem

    cached = cached_decoder(store)
    if not cached.is_file() or decoder_file_problem(cached, store.feature_shapes, store.image_size) is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        model.export_decoder_onnx(cached)
    if model.family == "sam2":
        tile, prompt = cached_split_decoder(store)
        if not (tile.is_file() and prompt.is_file()) or split_decoder_problem(tile, prompt, store.feature_shapes):
            from .decoder_split import export_split_decoder

            export_split_decoder(model.net, model.image_size, tile, prompt)
        _copy_into(tile, store.root / DECODER_TILE_ONNX)
        _copy_into(prompt, store.root / DECODER_PROMPT_ONNX)
    _copy_into(cached, store.root / DECODER_ONNX)


def _copy_into(source: Path, target: Path) -> None:
    """Copy `source` to `target` atomically (temporary file + rename). An OSError names the target: shutil's fast
    copy names the source (on a full disk: "no space left on" the cache's disk, not the store's)."""
    tmp = temporary_path(target)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()  # a partial copy would hold the space a full disk needs back
        if isinstance(exc, OSError):
            exc.filename, exc.filename2 = str(tmp), None
        raise


def cached_decoder(store: FeatureStore) -> Path:
    """Where the user cache keeps the exported decoder of this store's weights and tile size (the file may
    not exist yet)."""
    from .checkpoints import cache_dir

    name = f"{store.model_name}-{store.checkpoint_sha256}-{store.image_size}-v{DECODER_EXPORT_VERSION}.onnx"
    return cache_dir() / "decoders" / name


def cached_split_decoder(store: FeatureStore) -> Tuple[Path, Path]:
    """Where the user cache keeps the split decoder (tile part, prompt part) of this store's weights and
    tile size, beside `cached_decoder` (the files may not exist yet)."""
    full = cached_decoder(store)
    stem = f"{full.stem}-split{SPLIT_EXPORT_VERSION}"
    return full.with_name(stem + "-tile.onnx"), full.with_name(stem + "-prompt.onnx")
