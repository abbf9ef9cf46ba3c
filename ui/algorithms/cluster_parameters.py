"""The cluster parameters of an algorithm that runs its tiles on Dask inside QGIS's own process (core/cluster.py,
docs/scaling.md): SCHEDULER (an existing cluster) and WORKERS (an embedded LocalCluster).

A LocalCluster starts its workers with `sys.executable`; inside the QGIS desktop or `qgis_process` that is QGIS
itself, not a Python interpreter, so WORKERS is refused there with what to use instead. A scheduler works
wherever the package `distributed` imports.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ...core.cluster import ClusterSettings, cluster_client
from ...core.errors import QuickSamError
from ..i18n import tr as _tr

if TYPE_CHECKING:
    from distributed import Client

SCHEDULER = "SCHEDULER"
WORKERS = "WORKERS"


def cluster_parameters() -> Dict[str, QgsProcessingParameterDefinition]:
    """{name: parameter} of SCHEDULER and WORKERS (to be added as advanced)."""
    scheduler = QgsProcessingParameterString(SCHEDULER, _tr("Dask scheduler (tcp://HOST:8786)"), defaultValue="",
                                             optional=True)
    workers = QgsProcessingParameterNumber(WORKERS, _tr("Worker processes on this machine (Dask)"),
                                           QgsProcessingParameterNumber.Type.Integer, defaultValue=0, minValue=0)
    return {SCHEDULER: scheduler, WORKERS: workers}


def cluster_help() -> Dict[str, str]:
    """{name: help text} of the cluster parameters."""
    return {
        SCHEDULER: _tr("An existing Dask cluster (docs/scaling.md): the tiles are decoded on its workers, which must "
                       "see the feature store at the same path and have onnxruntime and GDAL's Python bindings. "
                       "Empty: no cluster."),
        WORKERS: _tr("Decode the tiles in this many worker processes on this machine (a Dask LocalCluster). Only "
                     "where QGIS runs from a Python interpreter (the 'quicksam segment-all --workers' command): the "
                     "QGIS desktop and qgis_process need a scheduler instead. 0: this process only."),
    }


def requested_cluster(parameters: Dict[str, Any], context: QgsProcessingContext,
                      as_string: Callable[..., str], as_int: Callable[..., int]) -> ClusterSettings:
    """The ClusterSettings of SCHEDULER and WORKERS; QgsProcessingException (one line, what to do) for settings
    this process cannot run."""
    scheduler = (as_string(parameters, SCHEDULER, context) or "").strip() or None
    settings = ClusterSettings(scheduler=scheduler, workers=as_int(parameters, WORKERS, context))
    try:
        settings.check()
    except QuickSamError as exc:
        raise QgsProcessingException(str(exc).replace("--scheduler", SCHEDULER).replace("--workers", WORKERS)) \
            from None
    if settings.workers and not runs_in_python():
        raise QgsProcessingException(_tr(
            "WORKERS cannot start worker processes from {program} (it is not a Python interpreter); give the "
            "SCHEDULER of a running Dask cluster, or run 'quicksam segment-all --workers N'").format(
                program=Path(sys.executable or "QGIS").name))
    if settings.wanted:
        _check_distributed()
    return settings


def runs_in_python() -> bool:
    """Whether this process is a Python interpreter (a LocalCluster can start workers from it), not the QGIS
    desktop or qgis_process."""
    return Path(sys.executable or "").name.lower().startswith("python")


def _check_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise QgsProcessingException(_tr(
            "running on a Dask cluster needs the Python package distributed in QGIS's Python; install it there "
            "(pip install 'dask[distributed]') or leave SCHEDULER and WORKERS empty")) from None


@contextlib.contextmanager
def opened_cluster(settings: ClusterSettings) -> Iterator[Optional[Client]]:
    """A `distributed.Client` of `settings` while the block runs (None when no cluster is asked for);
    QuickSamError (one line) when the scheduler cannot be reached."""
    if not settings.wanted:
        yield None
        return
    with cluster_client(settings) as client:
        yield client
