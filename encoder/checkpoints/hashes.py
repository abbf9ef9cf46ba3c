"""SHA-256 of checkpoint files, memoised in ``checkpoints_dir() / "hashes.json"`` by resolved path,
size and ``mtime_ns``, so that a 900 MB file is hashed once."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Optional

from ...core.logger import LOGGER
from .paths import JSON_LOCK, hash_memo_path, load_json, write_json_atomic

#: Bytes read, written and reported per step of a download or a hash.
CHUNK_SIZE = 1 << 20
HASH_MEMO_FORMAT_VERSION = 1


def hash_of(path: Path) -> hashlib._Hash:
    """A SHA-256 object fed with the content of `path`, to be continued with more bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's content, as 64 lowercase hex digits."""
    return hash_of(Path(path)).hexdigest()


def _read_hash_memo() -> Dict[str, Dict[str, Any]]:
    """The memoised hashes; an unreadable memo is only a cache, so it counts as empty."""
    path = hash_memo_path()
    try:
        data = load_json(path)
    except (OSError, ValueError) as exc:
        LOGGER.warning("ignoring unreadable checkpoint hash cache %s: %s", path, exc)
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def remember_sha256(path: Path, sha256: str, stat: Optional[os.stat_result] = None) -> None:
    """Memoise the verified hash of `path` as it is (or was, when `stat` was taken)."""
    path = Path(path).resolve()
    stat = stat or path.stat()
    entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
    with JSON_LOCK:
        files = _read_hash_memo()
        files[str(path)] = entry
        try:
            write_json_atomic(
                hash_memo_path(), {"format_version": HASH_MEMO_FORMAT_VERSION, "files": files}
            )
        except OSError as exc:
            LOGGER.warning("cannot write checkpoint hash cache %s: %s", hash_memo_path(), exc)


def checkpoint_sha256(path: Path) -> str:
    """The SHA-256 of a file, memoised by resolved path, size and mtime_ns in `hashes.json`."""
    path = Path(path).resolve()
    stat = path.stat()
    entry = _read_hash_memo().get(str(path))
    if (
        isinstance(entry, dict)
        and entry.get("size") == stat.st_size
        and entry.get("mtime_ns") == stat.st_mtime_ns
        and isinstance(entry.get("sha256"), str)
    ):
        return entry["sha256"]
    LOGGER.info("computing the SHA-256 of %s (%d bytes)", path, stat.st_size)
    # The stat taken before hashing is stored: a file modified meanwhile will not match it.
    sha256 = sha256_file(path)
    remember_sha256(path, sha256, stat)
    return sha256
