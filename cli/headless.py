"""A headless QGIS for `segment` and `segment-all`, which run QuickSAM's Processing algorithms in it.

QGIS is imported inside these functions only: `encode`, `info` and `checkpoints` never load it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, TypeVar

from ..core.errors import Cancelled, QuickSamError
from ..core.logger import LOGGER

if TYPE_CHECKING:
    from qgis.core import QgsProcessingFeedback, QgsProject

T = TypeVar("T")


@contextlib.contextmanager
def _captured_process_output() -> Iterator[None]:
    """Send whatever GDAL, PROJ, Qt and QGIS print (file descriptors 1 and 2) to the debug log, so that bad
    input still ends in exactly one error line. QUICKSAM_DEBUG=1 leaves the output alone."""
    if os.environ.get("QUICKSAM_DEBUG"):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in saved.items():
                os.dup2(original, fd)
                os.close(original)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                LOGGER.debug("qgis: %s", line)


def qgis_python_plugins_dir() -> str:
    """The folder of QGIS's bundled Python plugins (`processing` among them), found the way QGIS finds it:
    `<pkgDataPath>/python/plugins` (Debian: /usr/share/qgis, OSGeo4W: <root>/apps/qgis[-ltr], macOS:
    QGIS.app/Contents/Resources, conda: <env>/share/qgis). Needs an initialised QgsApplication."""
    from qgis.core import QgsApplication

    return os.path.join(QgsApplication.pkgDataPath(), "python", "plugins")


#: Projects made by `private_project`, destroyed before QGIS exits.
_PRIVATE_PROJECTS: list = []


def private_project() -> QgsProject:
    """A QgsProject for one headless run, destroyed by `_headless_qgis` before QGIS exits, whoever still
    refers to it: a project that outlives `exitQgis` (a failed Processing run's traceback keeps it and its
    context alive) crashes the interpreter's shutdown on QGIS 3.40 (its style settings reach into the
    application's style model, gone by then)."""
    from qgis.core import QgsProject

    project = QgsProject()
    _PRIVATE_PROJECTS.append(project)
    return project


def _destroy_private_projects() -> None:
    from qgis.PyQt import sip

    while _PRIVATE_PROJECTS:
        project = _PRIVATE_PROJECTS.pop()
        if not sip.isdeleted(project):
            project.removeAllMapLayers()
            sip.delete(project)


def _make_processing_importable() -> None:
    """Outside a QGIS executable the `processing` plugin is not on sys.path: add QGIS's plugin folder."""
    try:
        import processing  # noqa: F401
    except ImportError:
        folder = qgis_python_plugins_dir()
        if not os.path.isdir(os.path.join(folder, "processing")):
            raise QuickSamError(f"QGIS's Processing plugin was not found in '{folder}'; install QGIS with its "
                                "Python plugins (Debian: apt install python3-qgis qgis-providers)") from None
        if folder not in sys.path:
            sys.path.append(folder)


@contextlib.contextmanager
def _headless_qgis() -> Iterator[None]:
    """A QGIS application (offscreen) with Processing and the QuickSAM provider, for this process.

    Reuses a running QgsApplication (e.g. inside QGIS or pytest-qgis) and then leaves it running.
    """
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication
    from qgis.PyQt.QtCore import qInstallMessageHandler

    own_app = QgsApplication.instance() is None
    if own_app:
        qInstallMessageHandler(lambda _mode, _context, message: LOGGER.debug("qt: %s", message))
        app = QgsApplication([], False)
        app.initQgis()
    try:
        _make_processing_importable()
        from processing.core.Processing import Processing

        Processing.initialize()
        registry = QgsApplication.processingRegistry()
        if registry.providerById("quicksam") is None:
            from ..ui.algorithms.provider import QuickSamProvider

            registry.addProvider(QuickSamProvider())
        yield
    finally:
        if own_app:
            gc.collect()  # QGIS objects held in reference cycles (tracebacks) must go before QGIS exits
            _destroy_private_projects()
            app.exitQgis()
            qInstallMessageHandler(None)  # no Python callback may outlive the interpreter


def without_traceback(lines: List[str]) -> List[str]:
    """`lines` with a Python traceback cut down to its last line (the exception: "KeyboardInterrupt")."""
    for index, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            return lines[:index] + lines[-1:]
    return lines


def one_line(message: str) -> str:
    """A Processing error as one line, without Processing's "Unable to execute algorithm" preamble."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].lower().startswith("unable to execute algorithm"):
        lines = lines[1:]
    lines = without_traceback(lines)
    text = " ".join(lines) or "the segmentation failed"
    return text[0].lower() + text[1:] if text[:2].istitle() else text


def run_algorithm(algorithm_id: str, parameters: dict, project: QgsProject,
                  feedback: QgsProcessingFeedback) -> Dict[str, object]:
    """processing.run of one of our algorithms on a private project; its layers are released before
    QGIS exits. QuickSamError (one line) when the algorithm refuses or fails."""
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingException

    from ..ui.algorithms.algorithm_base import mark_command_line

    context = QgsProcessingContext()
    context.setProject(project)
    context.setFeedback(feedback)
    mark_command_line(context)  # the algorithm's advice then names our options (--overwrite, --prompts-crs)
    try:
        return processing.run(algorithm_id, parameters, feedback=feedback, context=context,
                              onFinish=lambda *_: None)
    except QgsProcessingException as exc:
        raise QuickSamError(one_line(str(exc))) from None
    finally:
        project.removeAllMapLayers()


def in_headless_qgis(work: Callable[[], T]) -> T:
    """Run `work()` in a headless QGIS (see `_headless_qgis`) with QGIS's own output captured; a QuickSamError
    it raises is re-raised as plain text once QGIS is gone (its traceback's frames hold QGIS objects)."""
    error: Optional[str] = None
    kind = QuickSamError
    result = None
    with _captured_process_output(), warnings.catch_warnings(), _headless_qgis():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        try:
            result = work()
        except QuickSamError as exc:
            error, kind = str(exc), Cancelled if isinstance(exc, Cancelled) else QuickSamError
    if error is not None:
        raise kind(error)  # a Cancelled stays one (exit 130)
    return result


def open_store_before_qgis(store: Path) -> None:
    """Open an existing store (its manifest and tile log are checked) before QGIS starts, so that a damaged one
    is refused in a moment rather than after seconds; the algorithm opens it again (and words a missing one)."""
    if store.exists():
        from ..core.store import FeatureStore

        FeatureStore.open(store)
