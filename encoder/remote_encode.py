"""Encode into a feature store on an object store (s3://, gs://, az://: an fsspec URL; no QGIS).

The coordinating process (this one) works on a local *working copy* of the store's control files
(`working_copy`: `<user cache>/quicksam/remote-stores/<sha1 of the URL>/store/`, or a folder the user names), guarded
by a lock in its folder (one coordinator per machine and URL; two machines writing one URL are not detected).
`encode_to_url`: pull the URL's control files into it (the URL is the truth: a resume starts from what it
holds), run the normal store logic there (`encode_levels`: plan, resume checks, the store's own lock) with
the tiles written straight into the object store (core/remote_store.py: one PUT per file), and push the
control files back every few tiles, on cancel or failure, and at the end (core/store_sync.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Tuple

from ..core.errors import QuickSamError, StoreError
from ..core.locking import LockHolder, command_name, exclusive_lock, holder_text
from ..core.logger import LOGGER
from ..core.remote_store import bound_to_url
from ..core.store import FeatureStore
from ..core.store_sync import ControlPusher, pull_control_files
from ..core.store_url import check_reachable
from .checkpoints.paths import cache_dir
from .levels_pipeline import encode_levels
from .pipeline import EncodeRequest
from .tile_pipeline import CancelCheck, EncodeStats, ProgressCallback, ProgressEvent

if TYPE_CHECKING:
    from distributed import Client

    from .models import SegmentModel

#: Inside a working copy's folder: which URL it mirrors, the store's control files, the coordinator's lock.
SOURCE_FILE = "source.json"
STORE_FOLDER = "store"
COORDINATOR_LOCK = ".quicksam-coordinator.lock"


def default_work_dir(url: str) -> Path:
    """`<user cache>/remote-stores/<sha1 of the URL>`: the working copy of the store at `url`."""
    return cache_dir() / "remote-stores" / hashlib.sha1(url.encode("utf-8")).hexdigest()


def working_copy(url: str, work_dir: Optional[Path] = None) -> Path:
    """The working copy's folder for `url` (created; its source.json names the URL); the store's control files
    go in its `store/`. QuickSamError when `work_dir` holds other files or another URL's working copy."""
    folder = Path(work_dir) if work_dir is not None else default_work_dir(url)
    source = folder / SOURCE_FILE
    if source.is_file():
        try:
            recorded = json.loads(source.read_text(encoding="utf-8")).get("url")
        except (ValueError, AttributeError, OSError):
            recorded = None
        if recorded != url:
            raise QuickSamError(f"the working folder '{folder}' belongs to another store ({recorded}); choose another "
                                "working folder, or delete that one (it holds only a copy of control files)")
        return folder
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise QuickSamError(f"the working folder '{folder}' is not empty and is not a QuickSAM working copy; give an "
                            "empty or new working folder")
    (folder / STORE_FOLDER).mkdir(parents=True, exist_ok=True)
    source.write_text(json.dumps({"url": url}) + "\n", encoding="utf-8")
    return folder


def _busy(url: str) -> Callable[[Optional[LockHolder]], str]:
    def message(holder: Optional[LockHolder]) -> str:
        return (f"the store '{url}' is being encoded by another QuickSAM run on this machine ({holder_text(holder)}); "
                "wait for it to finish or stop it, then run the same command again to resume")
    return message


@contextlib.contextmanager
def coordinating(url: str, work_dir: Optional[Path] = None) -> Iterator[Path]:
    """Hold the working copy of `url` for the block: locked, its control files pulled from the URL, its stores
    writing their tiles into the URL. Yields the working store folder."""
    check_reachable(url)
    folder = working_copy(url, work_dir)
    store_root = folder / STORE_FOLDER
    with exclusive_lock(folder / COORDINATOR_LOCK, command_name(), _busy(url)):
        pulled = pull_control_files(url, store_root)
        LOGGER.debug("working copy of %s in %s (%d control files pulled)", url, store_root, len(pulled))
        with bound_to_url(store_root, url):
            yield store_root


def _pushing(progress: Optional[ProgressCallback], pusher: ControlPusher) -> ProgressCallback:
    """Progress events that also push the control files when due (after the tile's record is logged)."""
    def on_progress(event: ProgressEvent) -> None:
        pusher.tile_logged()
        if progress is not None:
            progress(event)
    return on_progress


def encode_to_url(request: EncodeRequest, url: str, work_dir: Optional[Path] = None,
                  progress: Optional[ProgressCallback] = None, cancelled: Optional[CancelCheck] = None,
                  started: Optional[Callable[[FeatureStore, int], None]] = None,
                  model: Optional[SegmentModel] = None, client: Optional[Client] = None
                  ) -> Tuple[FeatureStore, EncodeStats]:
    """Encode (or resume) `request.raster` into the store at `url`, as `encode_levels` does into a folder.
    With a Dask `client` the workers write the tiles into the URL (encoder/cluster_encode.py).
    Returns the working copy's store (its control files equal the URL's) and the run's totals. QuickSamError in
    one line for a URL that cannot be opened or written (a missing protocol package names what to install),
    LockBusy when another run on this machine coordinates the same URL, Cancelled / KeyboardInterrupt as a
    plain run (the control files are pushed first, so the same command resumes)."""
    with coordinating(url, work_dir) as store_root:
        pusher = ControlPusher(store_root, url)
        local = dataclasses.replace(request, store=store_root)
        try:
            result = encode_levels(local, progress=_pushing(progress, pusher), cancelled=cancelled,
                                   started=started, model=model, client=client)
        except StoreError as exc:   # said of the working copy: say it of the URL
            _push_after_failure(pusher)
            raise StoreError(str(exc).replace(f"'{store_root}", f"'{url}")) from exc
        except BaseException:
            _push_after_failure(pusher)
            raise
        pusher.push()
        return result


def _push_after_failure(pusher: ControlPusher) -> None:
    """Push what was logged before a failure or a cancel; a push that fails too is logged, never hides the
    first error."""
    try:
        pusher.push()
    except QuickSamError as exc:
        LOGGER.warning("the control files could not be pushed after the run stopped (%s); the next run redoes the "
                       "tiles the store at the URL does not list", exc)
