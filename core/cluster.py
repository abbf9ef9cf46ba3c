"""Run QuickSAM's tasks on a Dask cluster (no QGIS; `distributed` is imported only when a cluster is used).

A run asks for a cluster with `ClusterSettings`: an embedded `distributed.LocalCluster` of `workers` processes
on this machine, or an existing cluster at `scheduler` (`tcp://HOST:8786`). `cluster_client` opens it;
`QuickSamWorkerPlugin` (registered on every worker) keeps what a worker builds once, such as a model, in
`worker_cache()` between tasks, and gives each local worker its device (`worker_device()`) and its share of the
CPU threads. `results_in_order` / `results_as_completed` submit tasks with a bounded number in flight, so a
run's memory does not grow with the raster; a cancelled run cancels what is still queued.

Dask reschedules the tasks of a worker that dies on the others (distributed's `allowed-failures`), so a task
must be safe to run twice: QuickSAM's tile tasks write each file atomically and leave the store's log to the
coordinating process, which records each result once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Hashable, Iterator, Optional, Sequence, Tuple

from .errors import Cancelled, QuickSamError
from .logger import LOGGER, silence_library

if TYPE_CHECKING:
    from distributed import Client, Future

PLUGIN_NAME = "quicksam"
#: How to get the cluster packages, in every message that needs them.
INSTALL_HINT = "install Dask into the encoder's Python: pip install 'dask[distributed]'"
_SCHEDULER_URL = re.compile(r"^(tcp|tls|inproc|ws|wss)://\S+$")
#: Seconds a cancelled run waits for its running tasks to stop at their next tile (and release their locks).
STOP_WAIT_SECONDS = 30
#: Seconds to connect to an existing cluster's scheduler (and as many for its handshake).
CONNECT_SECONDS = 10
#: Seconds between two questions of a running task to the scheduler: "is the run cancelled?"
CANCEL_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class ClusterSettings:
    """Where a run's tasks go.

    `scheduler`: address of an existing Dask scheduler (`tcp://HOST:8786`); None = an embedded LocalCluster.
    `workers`: worker processes of the embedded LocalCluster (0 = no cluster: the run stays in its own process,
    unless `scheduler` is given). `devices`: the device of each local worker in turn ("cuda:0", "cuda:1",
    "cpu"; one worker per GPU); empty = every worker uses the run's own device choice.
    """

    scheduler: Optional[str] = None
    workers: int = 0
    devices: Tuple[str, ...] = ()

    @property
    def wanted(self) -> bool:
        """Whether the run goes to a cluster at all."""
        return bool(self.scheduler) or self.workers > 0

    def check(self) -> None:
        """QuickSamError (one line, what to do) for settings no cluster can have."""
        if self.workers < 0:
            raise QuickSamError(f"--workers must be 0 (no cluster) or more, not {self.workers}")
        if self.scheduler and not _SCHEDULER_URL.match(self.scheduler):
            raise QuickSamError(f"'{self.scheduler}' is not a Dask scheduler address; give it as tcp://HOST:8786")
        if self.scheduler and self.workers:
            raise QuickSamError("give either --scheduler (an existing cluster) or --workers (a cluster on this "
                                "machine), not both")
        if self.scheduler and self.devices:
            raise QuickSamError("--devices sets the devices of workers on this machine, not of an existing cluster: "
                                "leave it out and start each of that cluster's workers with its GPU "
                                "(CUDA_VISIBLE_DEVICES=0 dask worker ...; docs/scaling.md)")


def _distributed() -> Any:
    """The `distributed` module, or QuickSamError saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise QuickSamError(f"running on a Dask cluster needs the package distributed ({exc}); {INSTALL_HINT}") \
            from exc
    return distributed


def threads_per_worker(workers: int) -> int:
    """CPU threads each of `workers` local workers may use (torch, ONNX Runtime): the cores shared out, >= 1."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def thread_environment(workers: int) -> Dict[str, str]:
    """The variables that size a local worker's OpenMP/BLAS thread pools to its share of the cores. Dask's nanny
    sets them to 1 before a worker starts (its pre-spawn environment), and pools sized then stay small: torch
    ran 1.5 x slower in a lone worker than in a plain process with the same torch.set_num_threads."""
    threads = str(threads_per_worker(workers))
    return {name: threads for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


@contextlib.contextmanager
def cluster_client(settings: ClusterSettings) -> Iterator[Client]:
    """A `distributed.Client` of the cluster `settings` asks for, with `QuickSamWorkerPlugin` registered on
    every worker; the embedded LocalCluster (if any) is shut down on exit. QuickSamError (one line) when
    `distributed` is missing or the scheduler cannot be reached."""
    settings.check()
    distributed = _distributed()
    cluster = None
    try:
        if settings.scheduler:
            client = _connect(distributed, settings.scheduler)
        else:
            workers = max(1, settings.workers)
            with sigint_ignored():   # a terminal's Ctrl-C reaches the process group: only we answer it
                cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                   host="127.0.0.1", dashboard_address=":0",
                                                   silence_logs=logging.ERROR, env=thread_environment(workers))
            client = distributed.Client(cluster)
        with client:
            client.register_plugin(make_worker_plugin(settings), name=PLUGIN_NAME)
            yield client
    except (KeyboardInterrupt, Cancelled):
        # the run stops on purpose: what distributed logs while its cluster shuts down is noise
        silence_library("distributed")
        raise
    finally:
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored inside the block, in the main thread (elsewhere nothing changes). Processes started in it
    inherit that (an ignored signal stays ignored across exec, and Python leaves it so): the LocalCluster's
    workers, in the command's process group, then ignore a terminal's Ctrl-C, which only the command answers
    by shutting them down."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _connect(distributed: Any, scheduler: str) -> Client:
    try:
        _check_handshake(distributed, scheduler)
        return distributed.Client(scheduler, timeout=f"{CONNECT_SECONDS}s")
    except (OSError, TimeoutError) as exc:
        raise QuickSamError(f"cannot reach the Dask scheduler at {scheduler} ({' '.join(str(exc).split())[:160]}); "
                            "start it with 'dask scheduler' and its workers with 'dask worker "
                            f"{scheduler}', or check the address") from exc


def _check_handshake(distributed: Any, scheduler: str) -> None:
    """Open one comm to `scheduler` and close it; QuickSamError (one line) when something answers there that is
    no Dask scheduler. distributed's own connect waits for the handshake without a time limit (a service that
    keeps silent hangs the command for ever) and reads another service's reply as a frame length (a MemoryError
    of exabytes): both are bounded and said here. OSError / TimeoutError when nothing answers."""
    async def handshake() -> None:
        comm = await distributed.comm.connect(scheduler, timeout=CONNECT_SECONDS)
        await comm.close()

    async def in_time() -> bool:
        try:
            await asyncio.wait_for(handshake(), 2 * CONNECT_SECONDS)
        except asyncio.TimeoutError:   # connect() itself says OSError when nothing answers in CONNECT_SECONDS
            return False
        return True

    with concurrent.futures.ThreadPoolExecutor(1) as pool:   # a loop of its own, whatever runs in this thread
        try:
            answered = pool.submit(asyncio.run, in_time()).result()
        except OSError:
            raise
        except Exception as exc:   # noqa: BLE001 - whatever another protocol's bytes make of Dask's reader
            raise QuickSamError(f"the service at {scheduler} is no Dask scheduler (its answer is not Dask's: "
                                f"{type(exc).__name__}): give the scheduler's address (tcp://HOST:8786 by "
                                "default), or check the address") from exc
    if not answered:
        raise QuickSamError(f"the service at {scheduler} is no Dask scheduler (it did not answer Dask's handshake "
                            f"in {2 * CONNECT_SECONDS} s; a dashboard or web port?): give the scheduler's address "
                            "(tcp://HOST:8786 by default), or check the address")


def check_scheduler(scheduler: str) -> None:
    """Connect to the Dask scheduler at `scheduler` once and close: QuickSamError (one line, what to do) when it
    cannot be reached or `distributed` is missing. For runs that open their cluster later, per item."""
    _connect(_distributed(), scheduler).close()


def make_worker_plugin(settings: ClusterSettings) -> Any:
    """A `distributed.WorkerPlugin` that gives each worker a cache (`worker_cache`), its device
    (`worker_device`) and, on an embedded cluster, its share of the CPU threads."""
    distributed = _distributed()

    class QuickSamWorkerPlugin(distributed.WorkerPlugin):
        """What a worker keeps between QuickSAM tasks."""

        def __init__(self, devices: Tuple[str, ...], threads: Optional[int]) -> None:
            self.devices = devices
            self.threads = threads
            self.cache: Dict[Hashable, Any] = {}
            self.device: Optional[str] = None

        def setup(self, worker: Any) -> None:
            index = _worker_index(worker.name)
            self.device = self.devices[index % len(self.devices)] if self.devices else None
            self.cache = {}

        def teardown(self, worker: Any) -> None:
            self.cache.clear()

    local_threads = None if settings.scheduler else threads_per_worker(max(1, settings.workers))
    return QuickSamWorkerPlugin(tuple(settings.devices), local_threads)


def _worker_index(name: Any) -> int:
    """A worker's place among its cluster's workers: LocalCluster names them 0, 1, ...; others count as 0."""
    try:
        return int(name)
    except (TypeError, ValueError):
        return 0


_LOCAL_CACHE: Dict[Hashable, Any] = {}


def _plugin() -> Optional[Any]:
    """This worker's QuickSamWorkerPlugin, or None outside a Dask worker."""
    try:
        from distributed import get_worker

        return get_worker().plugins.get(PLUGIN_NAME)
    except (ImportError, ValueError):
        return None


def worker_cache() -> Dict[Hashable, Any]:
    """The dict this worker keeps between tasks (a process-wide one outside a worker: tests, plain runs)."""
    plugin = _plugin()
    return plugin.cache if plugin is not None else _LOCAL_CACHE


def worker_device(default: str) -> str:
    """This worker's device from `ClusterSettings.devices`, else `default` (the run's own choice)."""
    plugin = _plugin()
    return plugin.device if plugin is not None and plugin.device else default


def worker_threads() -> Optional[int]:
    """CPU threads this worker's numeric libraries may use; None = leave them as they are."""
    plugin = _plugin()
    return plugin.threads if plugin is not None else None


def results_in_order(client: Client, function: Callable[..., Any], items: Sequence[Any], window: int,
                     cancelled: Optional[Callable[[], bool]] = None) -> Iterator[Tuple[Any, Any]]:
    """(item, function(item)) for each of `items`, run on the cluster, yielded in the order of `items` with at
    most `window` tasks in flight. A task's exception is raised here when its turn comes. Cancelled (the
    queued tasks cancelled) once `cancelled()` turns true."""
    pending: Deque[Tuple[Any, Future]] = deque()
    index = 0
    try:
        while index < len(items) or pending:
            while index < len(items) and len(pending) < max(1, window):
                pending.append((items[index], client.submit(function, items[index], pure=False)))
                index += 1
            item, future = pending.popleft()
            yield item, _wait(future, cancelled)
    finally:
        client.cancel([future for _, future in pending])


def results_as_completed(client: Client, function: Callable[..., Any], items: Sequence[Any], window: int,
                         cancelled: Optional[Callable[[], bool]] = None, cancel_name: Optional[str] = None
                         ) -> Iterator[Tuple[Any, Any]]:
    """(item, function(item)) for each of `items` as the tasks finish, at most `window` in flight; errors and
    cancelling as `results_in_order`. With `cancel_name` (the tasks poll `cancel_flag(cancel_name)`), a run
    stopped early (Cancelled, Ctrl-C, an error) first has its running tasks stop (`stop_running_tasks`)."""
    queue = list(items)
    running: Dict[Future, Any] = {}
    try:
        while queue or running:
            while queue and len(running) < max(1, window):
                item = queue.pop(0)
                running[client.submit(function, item, pure=False)] = item
            finished = _first_done(list(running), cancelled)
            item = running.pop(finished)
            yield item, _result(finished, cancelled)
    finally:
        if running and cancel_name is not None:
            stop_running_tasks(client, cancel_name, list(running))
        client.cancel(list(running))


#: How often a wait on the cluster looks at its futures and at the stop flag (seconds).
POLL_SECONDS = 0.02


def _first_done(futures: Sequence[Future], cancelled: Optional[Callable[[], bool]]) -> Future:
    """The first of `futures` to end (finished, failed or cancelled). Polls `Future.done()`, which reads the
    client's state, rather than `distributed.wait(timeout=...)` or `Future.result(timeout=...)`: those run
    `distributed.utils.sync`, which turns a timeout racing a cancel into "UnboundLocalError: ... 'result'"
    (dask/distributed#8514)."""
    while True:
        _stop_if(cancelled)
        for future in futures:
            if future.done():
                return future
        time.sleep(POLL_SECONDS)


def _wait(future: Future, cancelled: Optional[Callable[[], bool]]) -> Any:
    """The future's result, checking `cancelled()` while it runs."""
    return _result(_first_done([future], cancelled), cancelled)


def _result(future: Future, cancelled: Optional[Callable[[], bool]]) -> Any:
    """The result of an ended future (its task's exception raised here). A future the cluster cancelled (its
    scheduler restarted or lost this client) is Cancelled when we asked for the stop, else a QuickSamError:
    `Future.result` would raise an asyncio CancelledError, which distributed's `sync` turns into an
    UnboundLocalError."""
    if future.cancelled():
        _stop_if(cancelled)
        raise QuickSamError("the Dask cluster cancelled a task of this run (its scheduler restarted or lost this "
                            "client); finished work is kept: run the same command again")
    return future.result()


def _stop_if(cancelled: Optional[Callable[[], bool]]) -> None:
    if cancelled is not None and cancelled():
        raise Cancelled("stopped; finished tiles are kept and the same command resumes")


def new_cancel_name() -> str:
    """A fresh name for a run's cancel `distributed.Event` (the coordinator sets it, the run's tasks poll it)."""
    return f"quicksam-cancel-{uuid.uuid4().hex}"


def cancel_flag(name: Optional[str], every: float = CANCEL_POLL_SECONDS) -> Callable[[], bool]:
    """On a worker: a `cancelled()` callback that is true once the coordinator set the run's cancel Event `name`
    (`stop_running_tasks`). It asks the scheduler at most once every `every` seconds (the first call always
    asks) and stays true once set; without a name (None) it is never true. A running task cannot be stopped by
    `client.cancel`: it must ask, as the tile loops do with this callback."""
    state = {"set": False, "asked": float("-inf")}

    def cancelled() -> bool:
        if name is None or state["set"]:
            return state["set"]
        now = time.monotonic()
        if now - state["asked"] >= every:
            state["asked"] = now
            state["set"] = bool(_distributed().Event(name).is_set())
        return state["set"]

    return cancelled


def stop_running_tasks(client: Client, name: str, futures: Sequence[Future],
                       seconds: float = STOP_WAIT_SECONDS) -> None:
    """Set the run's cancel Event `name`, then wait at most `seconds` for `futures` to end: their tasks stop at
    their next tile (`cancel_flag`), keeping the finished tiles and releasing their stores' locks. A warning
    names what may still be running after that."""
    distributed = _distributed()
    distributed.Event(name, client=client).set()
    unfinished = [future for future in futures if not future.done()]
    if not unfinished:
        return
    LOGGER.info("stopping: waiting up to %d s for %d running task(s) to stop at their next tile", seconds,
                len(unfinished))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(future.done() for future in unfinished):
        time.sleep(POLL_SECONDS * 10)   # not distributed.wait(timeout=...): see _first_done
    if not all(future.done() for future in unfinished):
        LOGGER.warning("%d task(s) still running after %d s: their stores may stay locked until they stop",
                       sum(not future.done() for future in unfinished), seconds)
