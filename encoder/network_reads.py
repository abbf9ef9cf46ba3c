"""Reading online sources politely: bounded connections, retries with back-off, one-line errors (no QGIS).

Every open and every read of a network source (encoder/online_sources.py) runs inside a `rasterio.Env`
holding `network_options()` (GDAL configuration, thread-local, so the encoder's reader thread gets its own):

- at most `MAX_CONNECTIONS` (2) requests at once: GDAL_MAX_CONNECTIONS for the WMS/WMTS/XYZ drivers, and
  GDAL_HTTP_MULTIRANGE=SERIAL so that /vsicurl/ fetches a COG's byte ranges one at a time;
- retries with exponential back-off: GDAL_HTTP_MAX_RETRY / GDAL_HTTP_RETRY_DELAY, which GDAL's HTTP layer
  applies to /vsicurl/ (429, 5xx); GDAL's WMS driver does not retry, so `NetworkDataset` retries a read
  that failed with HTTP 429 or 5xx itself, waiting RETRY_DELAY, 2 x, 4 x ... seconds;
- time-outs (GDAL_HTTP_TIMEOUT, GDAL_HTTP_CONNECTTIMEOUT) and a user agent naming QuickSAM.

Any of these set in the environment (e.g. `GDAL_MAX_CONNECTIONS=1`) wins over QuickSAM's value.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from ..core.errors import RasterError
from ..core.logger import LOGGER
from . import __version__
from .online_sources import gdal_dataset, source_host, source_kind

MAX_CONNECTIONS = 2
MAX_RETRY = 4
RETRY_DELAY = 2.0
TIMEOUT = 60
CONNECT_TIMEOUT = 20
USER_AGENT = f"QuickSAM/{__version__} (QGIS plugin; https://github.com/quicksam/quicksam)"

_STATUS = re.compile(r"HTTP (?:status|response|error) code:?\s*(\d{3})", re.IGNORECASE)
_RETRIED_STATUSES = (429, 500, 502, 503, 504)


def network_options() -> Dict[str, str]:
    """The GDAL configuration of every network read; a variable set in the environment keeps its value."""
    ours = {
        "GDAL_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "GDAL_HTTP_MULTIRANGE": "SERIAL",
        "GDAL_HTTP_MAX_RETRY": str(MAX_RETRY),
        "GDAL_HTTP_RETRY_DELAY": str(RETRY_DELAY),
        "GDAL_HTTP_TIMEOUT": str(TIMEOUT),
        "GDAL_HTTP_CONNECTTIMEOUT": str(CONNECT_TIMEOUT),
        "GDAL_HTTP_USERAGENT": USER_AGENT,
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing of a COG's server for side files
    }
    return {key: os.environ.get(key, value) for key, value in ours.items()}


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a refused read is tried again (seconds)."""

    max_retry: int
    delay: float

    @classmethod
    def from_options(cls, options: Dict[str, str]) -> RetryPolicy:
        try:
            return cls(max(0, int(options["GDAL_HTTP_MAX_RETRY"])), max(0.0, float(options["GDAL_HTTP_RETRY_DELAY"])))
        except ValueError:
            return cls(MAX_RETRY, RETRY_DELAY)

    def wait(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0-based): the delay doubled each time."""
        return self.delay * (2 ** attempt)


def failure_text(exc: BaseException) -> str:
    """Every message of an exception and its causes, joined on one line (GDAL chains several)."""
    texts = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts.append(" ".join(str(exc).split()))
        exc = exc.__cause__ or exc.__context__
    return " | ".join(text for text in texts if text)


def http_status(text: str) -> Optional[int]:
    """The HTTP status GDAL reported in a failure's text, if any."""
    codes = [int(code) for code in _STATUS.findall(text) if int(code) >= 400]
    return codes[0] if codes else None


def network_error(source: str, text: str, retries: int) -> RasterError:
    """One line saying what the server (or the network) did and what to do, from a failure's `text`."""
    host = source_host(source)
    status = http_status(text)
    later = "try again later (finished tiles are kept: the same command resumes)"
    lower = " or a lower zoom" if source_kind(source) in ("xyz", "wmts") else ""
    if status in (401, 403):
        return RasterError(f"{host} refused access (HTTP {status}): check the URL and any key or credentials it "
                           "needs, and that the service allows this use")
    if status == 404:
        return RasterError(f"{host} has no such data (HTTP 404): check the URL" + (
            ", and that the service has tiles at this zoom over this extent (choose a lower zoom)" if lower else ""))
    if status == 429:
        return RasterError(f"{host} asks to slow down (HTTP 429) and still refused after {retries} retries: "
                           f"{later}, or encode a smaller extent{lower}")
    if status is not None:
        return RasterError(f"{host} failed (HTTP {status}) after {retries} retries: {later}")
    lowered = text.lower()
    if "resolve host" in lowered:
        return RasterError(f"cannot find the host {host}: check the URL and your network connection")
    if "failed to connect" in lowered or "connection refused" in lowered or "could not connect" in lowered:
        return RasterError(f"cannot connect to {host}: check the URL and its port, your network connection and "
                           "proxy (GDAL_HTTP_PROXY)")
    if "timed out" in lowered or "timeout" in lowered:
        return RasterError(f"{host} did not answer in time: {later}, or raise GDAL_HTTP_TIMEOUT")
    detail = text.split(" | ")[-1][:200]
    if "tilematrix" in lowered:  # GDAL's WMTS driver: zoom_level is the index of a tile matrix, 0 the coarsest
        return RasterError(f"{host}: {detail}; choose a lower zoom (for WMTS the index of the finest tile matrix "
                           "to read, 0 = the coarsest)")
    return RasterError(f"reading from {host} failed ({detail}): check the URL and your network connection, "
                       f"or {later}")


def _is_retried(text: str) -> bool:
    return http_status(text) in _RETRIED_STATUSES


class NetworkDataset:
    """A rasterio dataset of a network source whose reads retry and fail in one line. Attributes other than
    `read` and `read_masks` are the dataset's own; use it from the thread that opened it (GDAL handles are
    not thread-safe)."""

    def __init__(self, source: str, dataset: Any, options: Dict[str, str]) -> None:
        self.source = source
        self._dataset = dataset
        self._options = options
        self._policy = RetryPolicy.from_options(options)

    def read(self, *args: Any, **kwargs: Any) -> Any:
        return self._retrying(self._dataset.read, args, kwargs)

    def read_masks(self, *args: Any, **kwargs: Any) -> Any:
        return self._retrying(self._dataset.read_masks, args, kwargs)

    def close(self) -> None:
        self._dataset.close()

    def __enter__(self) -> NetworkDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataset, name)

    def _retrying(self, function: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        """`function(*args, **kwargs)` in the network configuration, retried with back-off on HTTP 429/5xx."""
        import rasterio
        from rasterio.errors import RasterioError

        attempt = 0
        while True:
            try:
                with rasterio.Env(**self._options):
                    return function(*args, **kwargs)
            except RasterioError as exc:
                text = failure_text(exc)
                if not _is_retried(text) or attempt >= self._policy.max_retry:
                    raise network_error(self.source, text, attempt) from exc
                wait = self._policy.wait(attempt)
                attempt += 1
                LOGGER.warning("%s answered HTTP %s; trying again in %.3g s (retry %d of %d)",
                               source_host(self.source), http_status(text), wait, attempt, self._policy.max_retry)
                threading.Event().wait(wait)


def open_network(source: str) -> NetworkDataset:
    """Open a network source (canonical, see online_sources.py) in the network configuration; RasterError,
    one line, when the server refuses or cannot be reached."""
    import rasterio
    from rasterio.errors import RasterioError

    options = network_options()
    try:
        with rasterio.Env(**options):
            dataset = rasterio.open(gdal_dataset(source))
    except RasterioError as exc:
        raise network_error(source, failure_text(exc), RetryPolicy.from_options(options).max_retry) from exc
    return NetworkDataset(source, dataset, options)
