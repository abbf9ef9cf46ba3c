"""The model of a Dask worker (or of a process that encodes several rasters): built once, kept between tasks.

`cached_model(request)` builds the request's model on the worker's device (core/cluster.worker_device: one GPU
per worker) the first time and returns the same object to every later task that asks for the same model,
checkpoint, seed, device and tile size; a different model replaces it (one model per worker at a time, so a
worker's memory holds one). No QGIS; torch is imported only when a model is built.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Hashable, Tuple

from ..core.cluster import worker_cache, worker_device, worker_threads

if TYPE_CHECKING:
    from .models import SegmentModel
    from .pipeline import EncodeRequest

_KEY = "encoder-model"
#: How many models this worker has built (in its `worker_cache`): one per worker and model, whatever the tasks.
BUILDS_KEY = "encoder-model-builds"


def model_key(request: EncodeRequest, device: str) -> Tuple[Hashable, ...]:
    """What makes two requests' models the same: model, checkpoint (sha256) or seed, device, tile size."""
    checkpoint = request.checkpoint.sha256 if request.checkpoint is not None else None
    return (request.model, checkpoint, None if checkpoint else request.seed, device, request.tile_size)


def cached_model(request: EncodeRequest) -> SegmentModel:
    """The model `request` asks for, on this worker's device; built on the first call, then kept (the
    worker plugin's cache, or this process's outside a worker). QuickSamError for a device that is not
    there (as `pipeline.load_model_for`)."""
    from .pipeline import load_model_for

    device = worker_device(request.device)
    threads = worker_threads()
    if threads:
        import torch

        torch.set_num_threads(threads)
    cache = worker_cache()
    key = model_key(request, device)
    held = cache.get(_KEY)
    if held is None or held[0] != key:
        cache.pop(_KEY, None)   # free the old model before the new one is built
        cache[_KEY] = (key, load_model_for(dataclasses.replace(request, device=device)))
        cache[BUILDS_KEY] = cache.get(BUILDS_KEY, 0) + 1
    return cache[_KEY][1]
