"""The store's ONNX decoder: exported once per checkpoint and tile size into the user cache, copied into
each store (no QGIS; torch only through the model that exports it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.store import DECODER_ONNX, FeatureStore, temporary_path

if TYPE_CHECKING:
    from .models import SegmentModel

#: Bumped when the decoder export changes, so cached exports of an older form are not reused
#: (2: a batch axis for objects).
DECODER_EXPORT_VERSION = 2


def install_decoder(store: FeatureStore, model: SegmentModel) -> None:
    """Put the ONNX decoder of these weights into the store, exporting it once per checkpoint and tile
    size into the user cache (an export takes seconds; a copy takes milliseconds). A cached export that
    does not load or fit is exported again."""
    from ..core.decoder_file import decoder_file_problem

    cached = cached_decoder(store)
    if not cached.is_file() or decoder_file_problem(cached, store.feature_shapes, store.image_size) is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        model.export_decoder_onnx(cached)
    tmp = temporary_path(store.root / DECODER_ONNX)
    try:
        shutil.copyfile(cached, tmp)
        os.replace(tmp, store.root / DECODER_ONNX)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()  # a partial copy would hold the space a full disk needs back
        raise


def cached_decoder(store: FeatureStore) -> Path:
    """Where the user cache keeps the exported decoder of this store's weights and tile size (the file may
    not exist yet)."""
    from .checkpoints import cache_dir

    name = f"{store.model_name}-{store.checkpoint_sha256}-{store.image_size}-v{DECODER_EXPORT_VERSION}.onnx"
    return cache_dir() / "decoders" / name
