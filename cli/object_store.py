"""Stores on an object store from the command line: `quicksam encode RASTER s3://...` (its coordinator side),
`quicksam info s3://...` and `quicksam pull URL DIR` (docs/scaling.md). No QGIS."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from ..core.errors import QuickSamError
from ..core.store_url import is_object_store_url, store_location
from .events import EventWriter, add_events_option

if TYPE_CHECKING:
    from distributed import Client

    from ..core.store import FeatureStore
    from ..encoder.pipeline import EncodeRequest
    from ..encoder.tile_pipeline import ProgressCallback


def add_pull_parser(commands: argparse._SubParsersAction) -> None:
    """`quicksam pull URL DIR`."""
    pull = commands.add_parser("pull", help="download a feature store from an object store into a folder",
                               description="Download the whole store at URL (s3://, gs://, az://) into DIR, so that "
                                           "QGIS, segment, segment-all and info use it as any store. Re-running "
                                           "resumes: tiles already in DIR at the right size are kept.")
    pull.add_argument("url", help="the store's URL, e.g. s3://bucket/prefix/scene.qsam")
    pull.add_argument("folder", type=Path, help="the folder to pull it into (new, empty, or an earlier pull of it)")
    add_events_option(pull)
    pull.set_defaults(handler=_cmd_pull)


def add_store_arguments(encode: argparse.ArgumentParser) -> None:
    """`quicksam encode`'s STORE (a folder or an object store's URL) and --work-dir (the URL's working copy)."""
    encode.add_argument("store", type=store_location,
                        help="output folder of the feature store (new, empty, or a store made by the same command, "
                             "which is then resumed), or the URL of one on an object store (s3://, gs://, az://; "
                             "docs/scaling.md)")
    encode.add_argument("--work-dir", type=Path, default=None,
                        help="a store at an object store URL: the local folder of its working copy (control files "
                             "and lock; default: the user cache's quicksam/remote-stores/<sha1 of the URL>)")


def refuse_series_into_url(args: argparse.Namespace, series: bool) -> None:
    """QuickSamError (one line, nothing written) for a time series into an object store: not supported yet."""
    if series and is_object_store_url(args.store):
        raise QuickSamError("a time series cannot be encoded into an object store yet; encode it into a folder, then "
                            "copy that folder to the object store")


def _cmd_pull(args: argparse.Namespace, events: EventWriter) -> int:
    from ..core.store import FeatureStore
    from ..core.store_sync import pull_store

    if not is_object_store_url(args.url):
        raise QuickSamError(f"'{args.url}' is not an object store URL (s3://, gs://, az://...); a store in a folder "
                            "needs no pull: copy the folder")
    events.start(store=args.url, folder=str(args.folder))
    fetched, kept = pull_store(args.url, args.folder,
                               lambda done, total, path: events.progress(done, total, "tiles", tile=path))
    summary = FeatureStore.open(args.folder).summary()
    events.finished(summary, indent=2, url=args.url, tiles_downloaded=fetched, tiles_kept=kept)
    return 0


def remote_info(url: str, events: EventWriter) -> int:
    """`quicksam info URL`: the URL's control files pulled into a temporary folder and summarised as a local
    store's, the tiles checked by existence and size in the object store (core/remote_store.py)."""
    from ..core.remote_store import bound_to_url
    from ..core.store import FeatureStore
    from ..core.store_sync import pull_control_files, remove_folder_quietly
    from ..core.store_url import check_reachable
    from .encode_series import series_info

    check_reachable(url)
    events.start(store=url)
    folder = Path(tempfile.mkdtemp(prefix="quicksam-info-"))
    try:
        if not pull_control_files(url, folder):
            raise QuickSamError(f"'{url}' holds no QuickSAM feature store; check the URL, or encode into it first: "
                                "quicksam encode RASTER URL")
        with bound_to_url(folder, url):
            summary = series_info(FeatureStore.open(folder))
    finally:
        remove_folder_quietly(folder)
    summary.update(store=url, bytes_on_disk=None)
    events.finished(summary, indent=2)
    return 0


def encode_remote(args: argparse.Namespace, events: EventWriter, request: EncodeRequest,
                  on_progress: ProgressCallback, on_start: Callable[[FeatureStore, int], None],
                  cancelled: Optional[Callable[[], bool]] = None, client: Optional[Client] = None) -> int:
    """`quicksam encode RASTER URL`: the coordinator of an encode into an object store
    (encoder/remote_encode.py), here or with the workers of a Dask `client`; its events as a folder's, the store
    named by its URL."""
    from ..core.remote_store import bound_to_url
    from ..encoder.remote_encode import encode_to_url
    from .encode import levels_summary

    url = str(request.store)
    store, stats = encode_to_url(request, url, args.work_dir, progress=on_progress, started=on_start,
                                 cancelled=cancelled, client=client)
    with bound_to_url(store.root, url):   # its tiles checked in the object store
        summary = levels_summary(store)
    summary.update(store=url, working_copy=str(store.root), bytes_on_disk=None)
    events.finished(summary, indent=2, store=url, tile_index=f"{url}/tile_index.gpkg",
                    seconds=round(stats.total_seconds, 3))
    return 0
