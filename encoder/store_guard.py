"""A store while a run writes it: its lock, its write errors in one line, the room it still needs (no QGIS)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..core.diskspace import disk_full_error, is_disk_full, is_quota, unwritable_reason
from ..core.errors import QuickSamError
from ..core.locking import READ_ONLY_ERRNOS, STORE_LOCK, LockHolder, command_name, exclusive_lock, holder_text
from ..core.series import SERIES_FILE
from ..core.store import DECODER_ONNX, MANIFEST, FeatureStore
from .decoder_export import cached_decoder, cached_split_decoder

#: For "needs about N MB more": the header of a tile's .npy file, a tile index's size (GeoPackage
#: overhead, then per tile), and the block files take space in (4 KiB on ext4, XFS, NTFS, APFS, tmpfs).
NPY_HEADER_BYTES = 128
TILE_INDEX_BYTES = 120_000
TILE_INDEX_BYTES_PER_TILE = 1_000
DISK_BLOCK = 4096


def _store_busy_message(root: Path) -> Callable[[Optional[LockHolder]], str]:
    def message(holder: Optional[LockHolder]) -> str:
        return (f"the feature store '{root}' is being written by another QuickSAM run ({holder_text(holder)}); "
                "wait for it to finish or stop it, then run the same command again to resume")
    return message


@contextlib.contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Hold the lock of the store at `root` (STORE/.quicksam.lock, see `locking`) for the block, creating
    the folder if needed. A path that is a file or a folder of other files gets no lock file (the store
    refuses it); a read-only store gets none either (nothing can write it). LockBusy if another run holds it."""
    root = Path(root)
    if root.exists() and not _may_hold_a_store(root):
        yield
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno not in READ_ONLY_ERRNOS:
            raise
        yield  # nothing can be written there; creating the store says so
        return
    with exclusive_lock(root / STORE_LOCK, command_name(), _store_busy_message(root)):
        yield


#: How many folders above a store a series root may be (frames/t0001/levels/x4 is four below it).
SERIES_DEPTH = 4
#: What a plain encode into a series store is told to run instead.
SERIES_ADVICE = ("run the same quicksam encode --series ... (or --frames-from-bands) with the new options instead, "
                 "so that every frame gets them")


def series_root_of(store: Path) -> Optional[Path]:
    """The series store `store` is part of (itself, a frame's folder or a level of one), or None."""
    folder = Path(store).absolute()
    for candidate in [folder, *folder.parents][:SERIES_DEPTH + 1]:
        if (candidate / SERIES_FILE).is_file():
            return candidate
    return None


def refuse_series_store(store: Path, what: str = "a plain encode") -> None:
    """QuickSamError (one line, before anything is written) when `store` is part of a series store: `what` (a
    plain encode, an on-demand tile) would change one frame only, and the frames must stay alike."""
    root = series_root_of(store)
    if root is not None:
        raise QuickSamError(f"'{root}' is a time-series store: {what} would change one frame only; {SERIES_ADVICE}")


def _may_hold_a_store(root: Path) -> bool:
    """A folder that is a store, is becoming one (only a lock file), or is empty."""
    return root.is_dir() and ((root / MANIFEST).is_file() or (root / STORE_LOCK).exists() or not any(root.iterdir()))


@contextlib.contextmanager
def plain_write_errors(root: Path) -> Iterator[None]:
    """Turn a full disk (DiskFull, with about how much more room the run needs) and a store that cannot be
    written (QuickSamError) raised in the block into one line that says what to do."""
    try:
        yield
    except QuickSamError:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            path = Path(exc.filename) if isinstance(exc, OSError) and exc.filename else root
            raise disk_full_error(path, bytes_to_finish(root), quota=is_quota(exc)) from exc
        reason = unwritable_reason(exc)
        if reason is not None:
            path = exc.filename or root
            raise QuickSamError(f"cannot write '{path}' ({reason}); make the feature store writable, or encode "
                                "into another folder") from exc
        raise


def bytes_to_finish(root: Path) -> int:
    """About how many bytes the store at `root` still needs: its pending tiles, its decoder if missing and
    its tile index (0 when the store cannot be read)."""
    try:
        store = FeatureStore.open(root)
        pending = len(store.pending_tiles())
    except (QuickSamError, OSError, ValueError, KeyError, TypeError):
        return 0
    tile_bytes = NPY_HEADER_BYTES + store.dtype.itemsize * sum(item.size for item in store.layout)
    tile_bytes = -(-tile_bytes // DISK_BLOCK) * DISK_BLOCK
    # the index is rewritten beside the old one, then renamed over it: room for two
    needed = pending * tile_bytes + 2 * (TILE_INDEX_BYTES + TILE_INDEX_BYTES_PER_TILE * len(store.grid))
    if not (root / DECODER_ONNX).is_file():   # the split decoder (SAM 2) is installed with it
        cached = [cached_decoder(store), *(cached_split_decoder(store) if store.family == "sam2" else ())]
        needed += sum(path.stat().st_size for path in cached if path.is_file())
    return needed
