"""`quicksam encode INPUT... --output-dir DIR | --next-to-inputs`: every raster into its own store (docs/batch.md).

In this process one after another (the model built once for all), or on a Dask cluster (--workers,
--scheduler): with more files than workers each file is one task (file-level: encoder/batch_tasks.py on the
workers, each keeping its model), else the files go one after another, each one's tiles spread over the
cluster (tile-level). No QGIS.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple

from ..core.batch import ENCODE
from ..core.batch_log import INTERRUPTED, ItemResult, logged_result
from ..core.errors import QuickSamError
from .batch import (
    ItemEvents,
    announce,
    command_settings,
    dry_run_finished,
    finish,
    item_finished,
    item_started,
    new_result,
    plan_batch,
)
from .events import EventWriter, OutputClosed, stop_signal_handler

if TYPE_CHECKING:
    from ..encoder.batch_tasks import EncodeItem
    from ..encoder.tile_pipeline import ProgressEvent


def _refuse_single_raster_options(args: argparse.Namespace) -> None:
    """QuickSamError (one line) for the options of one series store, which a batch cannot take."""
    if args.series or args.frames_from_bands:
        raise QuickSamError("--series and --frames-from-bands make one series store: leave out --output-dir and "
                            "--next-to-inputs (give the frames, then the STORE folder)")
    if args.zoom is not None:
        raise QuickSamError("--zoom is for a web service, not for raster files: leave it out of a run over many "
                            "inputs")


def run_encode_batch(args: argparse.Namespace, events: EventWriter) -> int:
    """Encode every input of the command line into its store; exit status 0 (all done) or EXIT_SOME_FAILED."""
    from ..encoder.raster_formats import raster_extensions
    from .encode import _resolve_weights, encode_request
    from .options import cluster_settings

    _refuse_single_raster_options(args)
    cluster = cluster_settings(args)
    items = plan_batch(args, [*args.rasters, str(args.store)], ENCODE, raster_extensions())
    announce(events, items, args.dry_run)
    if args.dry_run:
        return dry_run_finished(events, items)
    base = encode_request(args, "", Path(), args.extent, _resolve_weights(args, events))
    if args.random_weights:
        events.warning("using seeded random weights: the masks will be meaningless; the stores record this")
    settings = command_settings(args)
    tasks = [_task(base, item.input, item.output, new_result(index, items), settings, args.extent_crs)
             for index, item in enumerate(items)]
    if not cluster.wanted:
        return finish(events, *encode_stopping_on_signal(tasks, events))
    from ..core.cluster import cluster_client

    results: List[ItemResult] = []
    file_level, began = False, time.time()
    try:
        with stop_signal_handler(_interrupt), cluster_client(cluster) as client:   # SIGTERM: QGIS's cancel
            file_level = len(tasks) > (cluster.workers or len(client.scheduler_info()["workers"]))
            if file_level:
                encode_on_workers(client, tasks, events, results)
            else:
                encode_in_turn(tasks, events, client, results=results)
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM: the summary so far, as in one process
        return finish(events, interrupted_rows(tasks, results, file_level, began), interrupted=True)
    return finish(events, sorted(results, key=lambda row: row.index))


def interrupted_rows(tasks: Sequence[EncodeItem], results: Sequence[ItemResult], file_level: bool,
                     began: float) -> List[ItemResult]:
    """The rows of a stopped cluster run, in list order: the finished items, then the items started and not seen
    finished: tile-level the current one ("interrupted"); file-level those whose log a worker ended since `began`
    (time.time() of the run's start; the coordinator does not see which queued tasks a worker had begun, nor
    the results of tasks that ended after the cancel), as their logs say: "interrupted", or "done" for a file a
    worker finished. Seconds (and tiles) are their logs'. Items not started are left out, as in one process."""
    finished = {row.index: row for row in results}
    unfinished = [task.result for task in tasks if task.result.index not in finished]
    if file_level:
        ended = [_logged_since(row, began) for row in unfinished]
        stopped = [row for row in ended if row is not None]
    else:
        stopped = [interrupted_row(row) for row in unfinished[:1]]
    return sorted([*finished.values(), *stopped], key=lambda row: row.index)


def interrupted_row(result: ItemResult) -> ItemResult:
    """The row of an item Ctrl-C or SIGTERM stopped: "interrupted", with the seconds (and tiles) its log's
    footer gives (one source for the log and the summary; 0.0 when it has none: stopped before its log)."""
    return dataclasses.replace(logged_result(result) or result, status=INTERRUPTED)


def _logged_since(result: ItemResult, began: float) -> Optional[ItemResult]:
    """The row of an item whose log a worker ended since `began` (time.time()), as that log says; else None."""
    try:
        recent = Path(result.log).stat().st_mtime >= began
    except OSError:   # no log: never started
        return None
    return logged_result(result) if recent else None


def _task(base: Any, raster: Path, store: Path, result: ItemResult, settings: Any, extent_crs: Any) -> EncodeItem:
    from ..encoder.batch_tasks import EncodeItem

    request = dataclasses.replace(base, raster=str(raster), store=store)
    return EncodeItem(request=request, result=result, settings=settings, extent_crs=extent_crs)


def encode_stopping_on_signal(tasks: Sequence[EncodeItem], events: EventWriter) -> Tuple[List[ItemResult], bool]:
    """`encode_in_turn` in this process, where Ctrl-C and SIGTERM (QGIS's cancel) stop the run: the results so
    far (the current item "interrupted", as its log says) and whether the run was stopped."""
    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    results: List[ItemResult] = []
    with stop_signal_handler(on_signal):
        try:
            encode_in_turn(tasks, events, results=results)
        except KeyboardInterrupt:
            results.append(interrupted_row(tasks[len(results)].result))
            return results, True
    return results, False


def encode_in_turn(tasks: Sequence[EncodeItem], events: EventWriter, client: Any = None,
                   results: Optional[List[ItemResult]] = None) -> List[ItemResult]:
    """The items one after another in this process (their tiles on `client`'s cluster when given), each result
    appended to `results` as it comes; progress events carry the item's index."""
    from ..encoder.batch_tasks import encode_item

    results = [] if results is None else results
    for task in tasks:
        item_started(events, task.result)
        result = encode_item(task, progress=_item_progress(ItemEvents(events, task.result.index)), client=client,
                             stop_on=(OutputClosed,))
        item_finished(events, result)
        results.append(result)
    return results


def _item_progress(events: ItemEvents) -> Callable[[ProgressEvent], None]:
    """Tile progress events of one item (with its index); a closed output stops the run."""
    def on_progress(event: ProgressEvent) -> None:
        events.progress(event.done, event.total, "tiles", tile=event.tile_id, status=event.status)
        events.check_open()

    return on_progress


def encode_on_workers(client: Any, tasks: Sequence[EncodeItem], events: EventWriter,
                      results: Optional[List[ItemResult]] = None) -> List[ItemResult]:
    """File-level: each item one task on the cluster (handed over at once, `item_start` for each), results as
    they finish (appended to `results` as they come, so a stopped run knows them); returned in list order."""
    from ..core.cluster import new_cancel_name, results_as_completed
    from ..encoder.batch_tasks import encode_item_task
    from .events import stop_signal_handler

    cancel_name = new_cancel_name()   # Ctrl-C, SIGTERM or a closed output: the running tasks stop at a tile
    tasks = [dataclasses.replace(task, cancel_name=cancel_name) for task in tasks]
    for task in tasks:
        item_started(events, task.result)
    results = [] if results is None else results
    with stop_signal_handler(_interrupt):
        for _, result in results_as_completed(client, encode_item_task, tasks, window=len(tasks),
                                              cancelled=lambda: events.closed, cancel_name=cancel_name):
            item_finished(events, result)
            results.append(result)
    return sorted(results, key=lambda row: row.index)


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM (a cancelled QGIS task) both interrupt a file-level run (exit 130)."""
    raise KeyboardInterrupt
