"""One raster of a batch encoded into its store, here or as a task on a Dask worker (no QGIS).

`EncodeItem` is a picklable description of one item (its request, log file and settings); `encode_item`
encodes it with `encode_levels`, the model built once per process or worker (`batch_model_source`), writes
its log (core/batch_log.py) and returns its `ItemResult`: a failure (a corrupt file, a store made with other
settings) is that item's result, not an exception, so the other items go on. Cancelling (and what the caller
names in `stop_on`) stops the whole run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from ..core.batch_log import DONE, FAILED, ItemResult, item_log, one_line_error, unwritable_log
from ..core.errors import Cancelled
from ..core.logger import LOGGER
from .worker_models import cached_model

if TYPE_CHECKING:
    from .models import SegmentModel
    from .pipeline import EncodeRequest
    from .tile_pipeline import CancelCheck, ProgressCallback

#: The model `batch_model_source` handed out last in this process (to say when one is built).
_LAST_MODEL: Dict[str, Any] = {}


@dataclass(frozen=True)
class EncodeItem:
    """One raster of a batch: `request` (raster, store and every setting), `result` (index, count, input,
    output, log), `settings` (what the log's header lists: the command line, resolved options), and
    `extent_crs` (the CRS of `request.extent` when it is not the raster's), `cancel_name` (the run's cancel
    Event on a Dask cluster, core/cluster.py `cancel_flag`)."""

    request: EncodeRequest
    result: ItemResult
    settings: Tuple[Tuple[str, str], ...] = ()
    extent_crs: Optional[str] = None
    cancel_name: Optional[str] = None


def batch_model_source(request: EncodeRequest) -> Callable[[], SegmentModel]:
    """The model source of a batch item: `cached_model` (built once per process or Dask worker, reused by every
    later item of the same model, checkpoint, seed, device and tile size); an INFO line says when a model is
    built ("model ... built"), so a log shows it happens once."""

    def source() -> SegmentModel:
        model = cached_model(request)
        if _LAST_MODEL.get("model") is not model:
            _LAST_MODEL["model"] = model
            LOGGER.info("model %s built on this process (later rasters of this run reuse it)", request.model)
        return model

    return source


def _with_extent(item: EncodeItem) -> EncodeRequest:
    """The item's request, its --extent in the raster's CRS."""
    if item.extent_crs and item.request.extent is not None:
        from .online_sources import extent_in_raster_crs

        extent = extent_in_raster_crs(item.request.raster, item.request.extent, item.extent_crs)
        return dataclasses.replace(item.request, extent=extent)
    return item.request


def _encode(request: EncodeRequest, progress: Optional[ProgressCallback], cancelled: Optional[CancelCheck],
            client: Any) -> int:
    """Encode one store (tile tasks on `client`'s cluster when given); its number of tiles over every level."""
    from ..core.store_levels import level_stores
    from .levels_pipeline import encode_levels

    # client: tile-level, one file's tiles spread over the cluster (its workers build their own models)
    store, _ = encode_levels(request, progress=progress, cancelled=cancelled,
                             model_source=batch_model_source(request), client=client)
    return sum(len(level.grid) for level in level_stores(store))


def encode_item(item: EncodeItem, progress: Optional[ProgressCallback] = None,
                cancelled: Optional[CancelCheck] = None, client: Any = None,
                stop_on: Tuple[type, ...] = ()) -> ItemResult:
    """Encode one batch item into its store, logging to its log file; its result (status "done" or "failed",
    with the error in one line). Cancelled, KeyboardInterrupt and the exceptions of `stop_on` propagate (the
    log says "interrupted"); any other failure is the item's."""
    result = dataclasses.replace(item.result, status=FAILED, error=None)
    result.error = unwritable_log(result)
    if result.error:
        return result
    title = f"quicksam encode {item.result.input} -> {item.result.output}"
    with item_log(result, title, dict(item.settings)) as log:
        try:
            result.tiles = _encode(_with_extent(item), progress, cancelled, client)
            result.status = DONE
        except (Cancelled, *stop_on):
            raise
        except Exception as exc:  # noqa: BLE001 - one raster's failure is its own; the batch goes on
            result.error = one_line_error(exc)   # in the log's footer, and the caller reports it
        result.seconds = log.seconds()
    return result


def encode_item_task(item: EncodeItem) -> ItemResult:
    """`encode_item` as a Dask task (file-level parallelism): no progress, the worker's own model. It stops at
    its next tile once the coordinator sets the run's cancel Event (`item.cancel_name`), and does not start
    when it was set before (Cancelled: the item's store is left as it was)."""
    from ..core.cluster import cancel_flag

    cancelled = cancel_flag(item.cancel_name)
    if cancelled():
        raise Cancelled("the run was cancelled before this raster started")
    return encode_item(item, cancelled=cancelled)

