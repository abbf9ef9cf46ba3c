"""Downloading a checkpoint: resumable (HTTP Range), hashed while it arrives, renamed into place only
once its SHA-256 is right (no QGIS, no torch)."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Optional, Tuple

from ...core.errors import Cancelled, CheckpointError
from ...core.logger import LOGGER
from . import hashes

SUPPORTED_SCHEMES = ("http", "https", "file")

ProgressCallback = Callable[[int, Optional[int]], None]
CancelCallback = Callable[[], bool]

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_BY_HAND = "or download the file by hand and pass --checkpoint PATH"


@dataclass
class _Stream:
    """An open response body positioned at byte `start` of a file of `total` bytes (None: unknown)."""

    body: IO[bytes]
    start: int
    total: Optional[int]


class _RangeNotSatisfiable(Exception):
    """HTTP 416: the .part is already as long as (or longer than) the file of `total` bytes."""

    def __init__(self, total: Optional[int]) -> None:
        super().__init__(total)
        self.total = total

def url_scheme(url: str) -> str:
    """The URL's scheme, if QuickSAM can download from it; CheckpointError otherwise."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise CheckpointError(
            f"cannot download '{url}': only http://, https:// and file:// URLs are supported; "
            f"{_BY_HAND}"
        )
    return scheme


def file_url_path(url: str) -> Path:
    """The local path of a file:// URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise CheckpointError(
            f"cannot read '{url}': file:// URLs must name a local file; mount the share and "
            "pass --checkpoint PATH"
        )
    return Path(urllib.request.url2pathname(parts.path))


def one_line(reason: object) -> str:
    return " ".join(str(reason).split())


def _network_error(url: str, exc: BaseException) -> CheckpointError:
    """A one-line CheckpointError for a download that could not start."""
    if isinstance(exc, urllib.error.HTTPError):
        return CheckpointError(
            f"cannot download {url}: the server answered HTTP {exc.code} "
            f"{one_line(exc.reason)}; check the URL, {_BY_HAND}"
        )
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return CheckpointError(
        f"cannot download {url}: {one_line(reason) or type(exc).__name__}; check the network "
        f"connection and the URL, {_BY_HAND}"
    )


def _interrupted(url: str, done: int, total: Optional[int]) -> CheckpointError:
    of_total = f" of {total}" if total is not None else ""
    return CheckpointError(
        f"the download of {url} was interrupted after {done}{of_total} bytes; run the same "
        "command again to resume it"
    )


def _open_file_url(url: str, offset: int) -> _Stream:
    """Open a file:// URL at byte `offset` (from the start when the file is shorter than that)."""
    path = file_url_path(url)
    try:
        body = path.open("rb")
    except OSError as exc:
        raise CheckpointError(
            f"cannot read {url}: {one_line(exc.strerror or exc)}; check the path, {_BY_HAND}"
        ) from exc
    total = os.fstat(body.fileno()).st_size
    start = offset if offset <= total else 0
    body.seek(start)
    return _Stream(body, start, total)


def _content_range(value: Optional[str]) -> Optional[Tuple[int, Optional[int]]]:
    """(first byte, total or None) of a `Content-Range: bytes a-b/n` header, or None."""
    match = _CONTENT_RANGE.match(value or "")
    if match is None:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _open_http_url(url: str, offset: int, timeout: float) -> _Stream:
    """GET an http(s) URL, asking for bytes from `offset` on when it is not 0."""
    request = urllib.request.Request(url, headers={"User-Agent": "QuickSAM"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            unsatisfied = re.match(r"^\s*bytes\s+\*/(\d+)\s*$", exc.headers.get("Content-Range", ""))
            exc.close()
            raise _RangeNotSatisfiable(int(unsatisfied.group(1)) if unsatisfied else None) from exc
        raise _network_error(url, exc) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise _network_error(url, exc) from exc
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if response.status == 206:
        content_range = _content_range(response.headers.get("Content-Range"))
        start, total = content_range if content_range else (-1, None)
        if total is None and length is not None and start >= 0:
            total = start + length
        return _Stream(response, start, total)
    if offset:
        LOGGER.info("%s does not support resuming downloads; starting again", url)
    return _Stream(response, 0, length)


def _open_stream(url: str, offset: int, timeout: float) -> _Stream:
    """Open `url` for reading from byte `offset`; the stream says where it really starts."""
    if url_scheme(url) == "file":
        return _open_file_url(url, offset)
    return _open_http_url(url, offset, timeout)


def _copy_stream(
    url: str,
    stream: _Stream,
    part: Path,
    digest: hashlib._Hash,
    progress: Optional[ProgressCallback],
    cancel: Optional[CancelCallback],
) -> None:
    """Append the stream to `part` in hashes.CHUNK_SIZE steps, feeding `digest` and reporting progress."""
    done = stream.start
    if progress is not None:
        progress(done, stream.total)
    with part.open("ab" if done else "wb") as out:
        while stream.total is None or done < stream.total:
            if cancel is not None and cancel():
                raise Cancelled(
                    f"the download of {url} was cancelled after {done} bytes; run the same "
                    "command again to resume it"
                )
            try:
                chunk = stream.body.read(hashes.CHUNK_SIZE)
            except (OSError, http.client.HTTPException) as exc:
                raise _interrupted(url, done, stream.total) from exc
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, stream.total)
    if stream.total is not None and done < stream.total:
        raise _interrupted(url, done, stream.total)


def _open_resumable(url: str, part: Path, timeout: float) -> _Stream:
    """Open `url` continuing `part` where possible; drop a `part` that cannot be continued."""
    offset = part.stat().st_size if part.is_file() else 0
    try:
        stream = _open_stream(url, offset, timeout)
    except _RangeNotSatisfiable as exc:
        if exc.total == offset:
            # A complete .part left by an earlier run that stopped before verifying it.
            return _Stream(io.BytesIO(), offset, offset)
        LOGGER.info("discarding %s, which does not match %s", part, url)
        part.unlink()
        return _open_stream(url, 0, timeout)
    if stream.start not in (0, offset):
        stream.body.close()
        LOGGER.info("the server resumed %s at the wrong byte; starting again", url)
        part.unlink()
        return _open_stream(url, 0, timeout)
    return stream


def download(
    url: str,
    dest: Path,
    expected_sha256: Optional[str],
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
    timeout: float = 30,
) -> str:
    """Download `url` to `dest` and return the SHA-256 of what was downloaded.

    Bytes go to `dest` + ".part" first, CHUNK_SIZE at a time; `progress(bytes_done, total_bytes)`
    is called after each chunk (total None when the server does not say) and `cancel()` is asked
    before each. An existing .part is resumed with an HTTP Range request. `dest` appears (atomic
    rename) only once the SHA-256 equals `expected_sha256`; with `expected_sha256=None` any
    content is accepted and its hash becomes its identity. `timeout` is in seconds per socket
    operation.

    Raises Cancelled (the .part is kept for resuming) or CheckpointError: network failure,
    interrupted transfer (the .part is kept), or a hash mismatch (the .part is deleted).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    stream = _open_resumable(url, part, timeout)
    try:
        if stream.start:
            LOGGER.info("resuming the download of %s at byte %d", url, stream.start)
        digest = hashes.hash_of(part) if stream.start else hashlib.sha256()
        _copy_stream(url, stream, part, digest, progress, cancel)
    finally:
        stream.body.close()
    actual = digest.hexdigest()
    if expected_sha256 is not None and actual != expected_sha256.lower():
        part.unlink()
        raise CheckpointError(
            f"the file at {url} is not the expected checkpoint: expected SHA-256 "
            f"{expected_sha256.lower()}, got {actual}; check the URL, {_BY_HAND}"
        )
    os.replace(part, dest)
    LOGGER.info("downloaded %s to %s (SHA-256 %s)", url, dest, actual)
    return actual
