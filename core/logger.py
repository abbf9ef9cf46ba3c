"""QuickSAM's one logger: every module logs through `LOGGER`, named "quicksam" (never `print`).

The core knows nothing of QGIS; inside QGIS ui/qgis_logging.py forwards this logger to the message log,
and the CLI turns its records into `info` and `warning` events (cli/events.py).
"""

import logging

LOGGER_NAME = "quicksam"
LOGGER = logging.getLogger(LOGGER_NAME)
