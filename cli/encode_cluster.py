"""`quicksam encode --workers N / --scheduler URL / --devices ...`: the encode's Dask cluster (docs/scaling.md).

With no cluster option the encode runs in its own process as before. With one, `encode_cluster` opens the
cluster (core/cluster.py: an embedded LocalCluster on 127.0.0.1, or an existing scheduler) around the run and
turns SIGINT (Ctrl-C) and SIGTERM (a cancelled QGIS task) into a cancel: the queued tasks are cancelled, the
finished tiles kept and recorded, the command exits 130 and the same command resumes. A second signal
interrupts at once.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING, Callable, Dict, Iterator, Optional, Tuple

from .events import stop_signal_handler
from .options import cluster_settings

if TYPE_CHECKING:
    from distributed import Client


def _never() -> bool:
    return False


@contextlib.contextmanager
def encode_cluster(args: argparse.Namespace) -> Iterator[Tuple[Optional[Client], Callable[[], bool]]]:
    """(client, cancelled) for the run: (None, never) without cluster options; else the cluster's client and
    whether a stop signal came. QuickSamError (one line) for bad options, a missing `distributed` or a
    scheduler that cannot be reached."""
    from ..core.cluster import cluster_client

    settings = cluster_settings(args)
    if not settings.wanted:
        yield None, _never
        return
    stop: Dict[str, bool] = {"requested": False}

    def handler(signum: int, frame: object) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True

    with stop_signal_handler(handler), cluster_client(settings) as client:
        yield client, lambda: stop["requested"]


def refuse_series_on_cluster(args: argparse.Namespace, series: bool) -> None:
    """QuickSamError (one line, nothing written) for a time series with cluster options: not supported yet."""
    from ..core.errors import QuickSamError

    if series and cluster_settings(args).wanted:
        raise QuickSamError("a time series (--series, --frames-from-bands) does not run on a Dask cluster yet; "
                            "leave out --workers, --scheduler and --devices")


def cluster_fields(client: Optional[Client]) -> dict:
    """The `start` event's fields of a cluster run: `workers` (connected now) and `scheduler` (its address)."""
    if client is None:
        return {}
    from ..encoder.cluster_encode import cluster_workers

    return {"workers": cluster_workers(client), "scheduler": client.scheduler.address}
