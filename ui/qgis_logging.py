"""Forward the "quicksam" logger to the QGIS message log (tab "QuickSAM").

The core logs through `core.LOGGER.LOGGER` (the logger "quicksam") and knows nothing of QGIS; inside QGIS
this handler makes those records visible in View > Panels > Log Messages.
"""

from __future__ import annotations

import logging
from typing import Optional

from qgis.core import Qgis, QgsMessageLog

from ..core.logger import LOGGER, LOGGER_NAME  # noqa: F401 - LOGGER_NAME re-exported for callers

MESSAGE_LOG_TAG = "QuickSAM"
#: Handlers are found by this name, not by class: reloading the plugin creates a new class object.
HANDLER_NAME = "quicksam.qgis-message-log"


def _qgis_level(levelno: int) -> Qgis.MessageLevel:
    if levelno >= logging.ERROR:
        return Qgis.MessageLevel.Critical
    if levelno >= logging.WARNING:
        return Qgis.MessageLevel.Warning
    return Qgis.MessageLevel.Info


class QgsMessageLogHandler(logging.Handler):
    """A logging handler writing each record to `QgsMessageLog` under one tag (thread-safe)."""

    def __init__(self, tag: str = MESSAGE_LOG_TAG, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.tag = tag
        #: The logger's level before `install_log_handler` changed it, restored on removal.
        self.previous_logger_level: Optional[int] = None
        self.set_name(HANDLER_NAME)
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            QgsMessageLog.logMessage(message, self.tag, _qgis_level(record.levelno), notifyUser=False)
        except Exception:  # noqa: BLE001 (logging must never raise; this is logging's own contract)
            self.handleError(record)


def install_log_handler(level: int = logging.INFO) -> QgsMessageLogHandler:
    """Attach a fresh handler to the "quicksam" logger (replacing one left by an earlier load)."""
    remove_log_handler(None)
    handler = QgsMessageLogHandler()
    LOGGER.addHandler(handler)
    if LOGGER.level == logging.NOTSET or LOGGER.level > level:
        # Without this the root logger's WARNING threshold would drop the core's progress messages.
        handler.previous_logger_level = LOGGER.level
        LOGGER.setLevel(level)
    return handler


def remove_log_handler(handler: Optional[logging.Handler]) -> None:
    """Detach `handler`, and any other QuickSAM message-log handler, from the "quicksam" logger."""
    for existing in list(LOGGER.handlers):
        if existing is handler or existing.get_name() == HANDLER_NAME:
            LOGGER.removeHandler(existing)
            existing.close()
            previous = getattr(existing, "previous_logger_level", None)
            if previous is not None:
                LOGGER.setLevel(previous)
