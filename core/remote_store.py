"""Tiles of a feature store kept in an object store, and a working copy bound to it (no QGIS, no torch).

`RemoteTileWriter` is `TileWriter` (core/tile_writer.py) for a store at an fsspec URL: it writes
`tiles/<id>.npy` and `tiles/<id>.valid.npy` each with ONE object PUT (`fs.pipe_file`: an object appears whole
or not at all, so a tile is atomic as on a disk) and returns the same `TileRecord`. It is small and picklable
(a URL, the layout, the dtype): a Dask task carries it and a worker opens the file system itself, with its own
credentials (the environment's).

The coordinator works on a local working copy of the control files (encoder/remote_encode.py). While
`bound_to_url(working_root, url)` holds, every `FeatureStore` under `working_root` writes its tiles with a
`RemoteTileWriter` (`remote_writer_for`) and verifies them on resume by one listing of the URL's tiles/
(`remote_tile_check`): present, of the exact byte size the manifest implies. That check is weaker than a local
store's (no CRC-32: reading every tile back would cost as much as the encoding's upload); a tile that is
corrupt but of the right size is found when it is read after `quicksam pull` (its CRC-32 is checked then).
"""

from __future__ import annotations

import contextlib
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence

import numpy as np

from .manifest import ArrayLayout
from .store_layout import TILE_DIR, TILE_LOG, VALID_MASK_SUFFIX
from .store_url import join_url, open_url, remote_errors
from .tile_files import npy_size
from .tile_log import TileRecord
from .tile_writer import TileFiles
from .tiling import Tile

_BOUND: Dict[Path, str] = {}
_BOUND_LOCK = threading.Lock()


def npy_bytes(array: np.ndarray) -> bytes:
    """`array` as the bytes of a .npy file (no pickle): what a local store's file holds."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@dataclass(frozen=True)
class RemoteTileWriter(TileFiles):
    """Writes the tile files of the store at `url` (an fsspec URL) whose tile files hold `layout` as `dtype`;
    the same records as `TileWriter`, each file one object PUT (whole or not at all). Errors: QuickSamError in
    one line (core/store_url.py)."""

    url: str
    layout: Sequence[ArrayLayout]
    dtype: str
    codec: Optional[str] = None

    def _save(self, name: str, array: np.ndarray) -> None:
        target = join_url(self.url, TILE_DIR, name)
        with remote_errors(target, "writing a tile"):
            fs, path = open_url(target)
            fs.pipe_file(path, npy_bytes(array))


@contextlib.contextmanager
def bound_to_url(working_root: Path, url: str) -> Iterator[None]:
    """For the block, the stores under `working_root` (the store itself and its levels/) keep their tiles at
    `url` (the same relative paths)."""
    key = Path(working_root).resolve()
    with _BOUND_LOCK:
        _BOUND[key] = url
    try:
        yield
    finally:
        with _BOUND_LOCK:
            _BOUND.pop(key, None)


def bound_url(root: Path) -> Optional[str]:
    """The URL of the store at `root` when it is (under) a bound working copy, else None."""
    folder = Path(root).resolve()
    with _BOUND_LOCK:
        bound = dict(_BOUND)
    for candidate in (folder, *folder.parents):
        if candidate in bound:
            return join_url(bound[candidate], folder.relative_to(candidate).as_posix())
    return None


def remote_writer_for(root: Path, layout: Sequence[ArrayLayout], dtype: str,
                      codec: Optional[str] = None) -> Optional[RemoteTileWriter]:
    """The writer of a store whose working copy is bound to a URL; None for a plain local store."""
    url = bound_url(root)
    return RemoteTileWriter(url, tuple(layout), dtype, codec) if url is not None else None


def remote_tile_sizes(url: str) -> Dict[str, int]:
    """{file name: bytes} of the objects in the store's tiles/ at `url` (one listing; {} when there is none)."""
    target = join_url(url, TILE_DIR)
    with remote_errors(target, "listing the tiles"):
        fs, path = open_url(target)
        try:
            entries = fs.ls(path, detail=True)
        except FileNotFoundError:
            return {}
    return {Path(entry["name"]).name: int(entry.get("size") or 0) for entry in entries if entry.get("type") == "file"}


TileCheck = Callable[[Tile, TileRecord], Optional[str]]


def remote_tile_check(root: Path, layout: Sequence[ArrayLayout], dtype: np.dtype,
                      codec: Optional[str] = None) -> Optional[TileCheck]:
    """For a store bound to a URL, a check of one logged-done tile against one listing of the URL's tiles/:
    None when its objects exist at their exact sizes (a compressed tile's: its log line's `file_bytes`), else
    what is wrong (existence and size only: weaker than a local store's CRC-32 check, see the module's
    docstring). None (no check) for a plain local store."""
    url = bound_url(root)
    if url is None:
        return None
    sizes = remote_tile_sizes(url)
    features_size = npy_size(dtype, sum(item.size for item in layout))

    def check(tile: Tile, record: TileRecord) -> Optional[str]:
        expected = [(f"{tile.tile_id}.npy", features_size if codec is None else record.file_bytes)]
        if record.valid_crc32 is not None:
            expected.append((f"{tile.tile_id}{VALID_MASK_SUFFIX}", npy_size(np.uint8, (tile.size ** 2 + 7) // 8)))
        for name, size in expected:
            found = sizes.get(name)
            if found is None:
                return f"{join_url(url, TILE_DIR, name)} is missing from the object store"
            if size is not None and found != size:
                return (f"{join_url(url, TILE_DIR, name)} is {found} bytes, {size} expected (its {TILE_LOG} line is "
                        "from another write)")
        return None

    return check
