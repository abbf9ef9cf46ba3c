"""QuickSAM's one logger: every module logs through `LOGGER`, named "quicksam" (never `print`).

The core knows nothing of QGIS; inside QGIS ui/qgis_logging.py forwards this logger to the message log,
and the CLI turns its records into `info` and `warning` events (cli/events.py).
"""

import logging

LOGGER_NAME = "quicksam"
LOGGER = logging.getLogger(LOGGER_NAME)


def silence_library(name: str) -> None:
    """Drop everything but CRITICAL records of another library's logger `name` (e.g. "distributed" while a
    cancelled run's cluster shuts down: its complaints about closed connections are noise then)."""
    logging.getLogger(name).setLevel(logging.CRITICAL)
