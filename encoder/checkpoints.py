"""Finding, downloading, verifying and loading model checkpoints (no QGIS; torch only when loading).

Where things live (never inside the plugin folder, which is deleted on reinstall):

- downloaded checkpoints: ``cache_dir() / "checkpoints"``; official ones under their file name,
  custom ones under ``custom/<name>/<file name>`` so two fine-tunes called ``model.pt`` cannot
  overwrite each other;
- memoised SHA-256 of checkpoint files: ``cache_dir() / "checkpoints" / "hashes.json"``, keyed by
  resolved path and checked against size and ``mtime_ns``, so a 900 MB file is hashed once;
- the registry of custom checkpoints (fine-tunes such as micro-sam): ``config_dir() /
  "checkpoints.json"``.

A custom checkpoint registered by path is stored as a :class:`CheckpointSpec` whose ``url`` is the
file's ``file://`` URL. Any checkpoint with a ``file://`` URL is used where it lies, not copied into
the cache. A custom URL registered without a SHA-256 is trusted on first download: the hash of what
was downloaded then becomes its identity and is written back to the registry.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import pickle
import re
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Dict, Optional, Tuple

from ..core import catalogue
from ..core.catalogue import CheckpointSpec
from ..core.errors import Cancelled, CheckpointError
from ..core.logger import LOGGER

#: Bytes read, written and reported per step of a download or a hash.
CHUNK_SIZE = 1 << 20
SUPPORTED_SCHEMES = ("http", "https", "file")
REGISTRY_FORMAT_VERSION = 1
HASH_MEMO_FORMAT_VERSION = 1

ProgressCallback = Callable[[int, Optional[int]], None]
CancelCallback = Callable[[], bool]

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_BY_HAND = "or download the file by hand and pass --checkpoint PATH"
# Serialises read-modify-write of the small JSON files within one process.
_JSON_LOCK = threading.Lock()


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint file on disk, verified. `source` is the URL it came from or the path given."""

    path: Path
    sha256: str
    name: str
    model: str
    source: str


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


# --- directories -------------------------------------------------------------------------------


def _env_dir(variable: str) -> Optional[Path]:
    """The directory named by an environment variable, if set to an absolute path."""
    value = os.environ.get(variable, "")
    if value and Path(value).expanduser().is_absolute():
        return Path(value).expanduser()
    return None


def cache_dir() -> Path:
    """The per-user cache directory of QuickSAM (`QUICKSAM_CACHE_DIR` overrides it)."""
    override = os.environ.get("QUICKSAM_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = _env_dir("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
        return base / "quicksam" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "quicksam"
    return (_env_dir("XDG_CACHE_HOME") or Path.home() / ".cache") / "quicksam"


def config_dir() -> Path:
    """The per-user configuration directory of QuickSAM (`QUICKSAM_CONFIG_DIR` overrides it)."""
    override = os.environ.get("QUICKSAM_CONFIG_DIR")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        return (_env_dir("APPDATA") or Path.home() / "AppData" / "Roaming") / "quicksam"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "quicksam"
    return (_env_dir("XDG_CONFIG_HOME") or Path.home() / ".config") / "quicksam"


def checkpoints_dir() -> Path:
    """Where downloaded checkpoints are kept: `cache_dir() / "checkpoints"`."""
    return cache_dir() / "checkpoints"


def registry_path() -> Path:
    """The JSON file listing custom checkpoints: `config_dir() / "checkpoints.json"`."""
    return config_dir() / "checkpoints.json"


def _hash_memo_path() -> Path:
    return checkpoints_dir() / "hashes.json"


# --- small JSON files, written atomically -----------------------------------------------------


def _write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


# --- hashing -------------------------------------------------------------------------------------


def _hash_of(path: Path) -> hashlib._Hash:
    """A SHA-256 object fed with the content of `path`, to be continued with more bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's content, as 64 lowercase hex digits."""
    return _hash_of(Path(path)).hexdigest()


def _read_hash_memo() -> Dict[str, Dict[str, Any]]:
    """The memoised hashes; an unreadable memo is only a cache, so it counts as empty."""
    path = _hash_memo_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        LOGGER.warning("ignoring unreadable checkpoint hash cache %s: %s", path, exc)
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def _remember_sha256(path: Path, sha256: str, stat: Optional[os.stat_result] = None) -> None:
    """Memoise the verified hash of `path` as it is (or was, when `stat` was taken)."""
    path = Path(path).resolve()
    stat = stat or path.stat()
    entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
    with _JSON_LOCK:
        files = _read_hash_memo()
        files[str(path)] = entry
        try:
            _write_json_atomic(
                _hash_memo_path(), {"format_version": HASH_MEMO_FORMAT_VERSION, "files": files}
            )
        except OSError as exc:
            LOGGER.warning("cannot write checkpoint hash cache %s: %s", _hash_memo_path(), exc)


def checkpoint_sha256(path: Path) -> str:
    """The SHA-256 of a file, memoised by resolved path, size and mtime_ns in `hashes.json`."""
    path = Path(path).resolve()
    stat = path.stat()
    entry = _read_hash_memo().get(str(path))
    if (
        isinstance(entry, dict)
        and entry.get("size") == stat.st_size
        and entry.get("mtime_ns") == stat.st_mtime_ns
        and isinstance(entry.get("sha256"), str)
    ):
        return entry["sha256"]
    LOGGER.info("computing the SHA-256 of %s (%d bytes)", path, stat.st_size)
    # The stat taken before hashing is stored: a file modified meanwhile will not match it.
    sha256 = sha256_file(path)
    _remember_sha256(path, sha256, stat)
    return sha256


# --- downloading -------------------------------------------------------------------------------


def _url_scheme(url: str) -> str:
    """The URL's scheme, if QuickSAM can download from it; CheckpointError otherwise."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise CheckpointError(
            f"cannot download '{url}': only http://, https:// and file:// URLs are supported; "
            f"{_BY_HAND}"
        )
    return scheme


def _file_url_path(url: str) -> Path:
    """The local path of a file:// URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise CheckpointError(
            f"cannot read '{url}': file:// URLs must name a local file; mount the share and "
            "pass --checkpoint PATH"
        )
    return Path(urllib.request.url2pathname(parts.path))


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split())


def _network_error(url: str, exc: BaseException) -> CheckpointError:
    """A one-line CheckpointError for a download that could not start."""
    if isinstance(exc, urllib.error.HTTPError):
        return CheckpointError(
            f"cannot download {url}: the server answered HTTP {exc.code} "
            f"{_one_line(exc.reason)}; check the URL, {_BY_HAND}"
        )
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return CheckpointError(
        f"cannot download {url}: {_one_line(reason) or type(exc).__name__}; check the network "
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
    path = _file_url_path(url)
    try:
        body = path.open("rb")
    except OSError as exc:
        raise CheckpointError(
            f"cannot read {url}: {_one_line(exc.strerror or exc)}; check the path, {_BY_HAND}"
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
    if _url_scheme(url) == "file":
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
    """Append the stream to `part` in CHUNK_SIZE steps, feeding `digest` and reporting progress."""
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
                chunk = stream.body.read(CHUNK_SIZE)
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
        digest = _hash_of(part) if stream.start else hashlib.sha256()
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


# --- the registry of custom checkpoints ----------------------------------------------------------


def _check_model(model: str) -> None:
    if model not in catalogue.MODELS:
        raise CheckpointError(
            f"unknown model '{model}'; choose one of: {', '.join(catalogue.MODELS)}"
        )


def _normalise_sha256(sha256: Optional[str]) -> Optional[str]:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA256_PATTERN.match(value):
        raise CheckpointError(f"'{sha256}' is not a SHA-256 (64 hexadecimal digits)")
    return value


def _read_registry() -> Dict[str, Dict[str, Any]]:
    """The registry's entries by name; empty when there is no registry file yet."""
    path = registry_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read the checkpoint registry {path} ({_one_line(exc)}); fix or delete it"
        ) from exc
    entries = data.get("checkpoints") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise CheckpointError(f"{path} is not a QuickSAM checkpoint registry; fix or delete it")
    return entries


def _write_registry(entries: Dict[str, Dict[str, Any]]) -> None:
    with _JSON_LOCK:
        _write_json_atomic(
            registry_path(), {"format_version": REGISTRY_FORMAT_VERSION, "checkpoints": entries}
        )


def _spec_from_entry(name: str, entry: Any) -> CheckpointSpec:
    try:
        return CheckpointSpec(
            name=name,
            model=str(entry["model"]),
            url=str(entry["url"]),
            sha256=entry.get("sha256"),
            size=entry.get("size"),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"entry '{name}' of {registry_path()} is malformed; fix it or register it again"
        ) from exc


def custom_checkpoints() -> Dict[str, CheckpointSpec]:
    """The registered custom checkpoints by name. Path-registered ones have a file:// `url`."""
    return {name: _spec_from_entry(name, entry) for name, entry in _read_registry().items()}


def all_checkpoints() -> Dict[str, CheckpointSpec]:
    """Official checkpoints (catalogue.CHECKPOINTS) then custom ones; official names win."""
    merged = dict(catalogue.CHECKPOINTS)
    for name, spec in custom_checkpoints().items():
        if name in merged:
            LOGGER.warning("custom checkpoint '%s' is hidden by the official one of that name", name)
        else:
            merged[name] = spec
    return merged


def register_checkpoint(
    name: str,
    model: str,
    path: Optional[Path] = None,
    url: Optional[str] = None,
    sha256: Optional[str] = None,
) -> CheckpointSpec:
    """Register (or replace) a custom checkpoint of `model` under `name`.

    Exactly one of `path` (a local file, hashed now and used where it lies) and `url` (downloaded
    into the cache on first use) is given. `sha256`, if given, must match the file.
    """
    if not _NAME_PATTERN.match(name):
        raise CheckpointError(
            f"'{name}' is not a valid checkpoint name; use letters, digits and . _ + - only"
        )
    if name in catalogue.CHECKPOINTS:
        raise CheckpointError(f"'{name}' is the name of an official checkpoint; choose another")
    _check_model(model)
    if (path is None) == (url is None):
        raise CheckpointError("give either a path or a URL for the checkpoint, not both or none")
    expected = _normalise_sha256(sha256)
    size = None
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} does not exist")
        file = file.resolve()
        actual = checkpoint_sha256(file)
        if expected is not None and actual != expected:
            raise CheckpointError(
                f"{file} has SHA-256 {actual}, not the {expected} given; check the file"
            )
        expected, size, url = actual, file.stat().st_size, file.as_uri()
    else:
        _url_scheme(str(url))
    entries = _read_registry()
    if name in entries:
        LOGGER.info("replacing custom checkpoint '%s'", name)
    entries[name] = {"model": model, "url": str(url), "sha256": expected, "size": size}
    _write_registry(entries)
    LOGGER.info("registered custom checkpoint '%s' (%s) at %s", name, model, url)
    return CheckpointSpec(name, model, str(url), expected, size)


def unregister_checkpoint(name: str) -> None:
    """Forget a custom checkpoint; its file (and any cached download) is left alone."""
    entries = _read_registry()
    if name not in entries:
        known = ", ".join(entries) or "none"
        raise CheckpointError(f"no custom checkpoint called '{name}'; registered: {known}")
    del entries[name]
    _write_registry(entries)
    LOGGER.info("unregistered custom checkpoint '%s'", name)


def _adopt_sha256(name: str, sha256: str) -> None:
    """Trust on first use: record the hash of a custom checkpoint registered without one."""
    entries = _read_registry()
    if name in entries and not entries[name].get("sha256"):
        entries[name]["sha256"] = sha256
        _write_registry(entries)
        LOGGER.info("custom checkpoint '%s' is now identified by SHA-256 %s", name, sha256)


# --- resolving -----------------------------------------------------------------------------------


def _url_file_name(url: str) -> str:
    """The file name at the end of a URL's path (query and fragment ignored)."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    name = Path(path.replace("\\", "/")).name
    return name if name not in ("", ".", "..") else "checkpoint.pt"


def checkpoint_cache_path(spec: CheckpointSpec) -> Path:
    """Where the checkpoint is (or will be) downloaded to in the cache."""
    if spec.name in catalogue.CHECKPOINTS:
        return checkpoints_dir() / _url_file_name(spec.url)
    return checkpoints_dir() / "custom" / spec.name / _url_file_name(spec.url)


def _is_local(spec: CheckpointSpec) -> bool:
    return urllib.parse.urlsplit(spec.url).scheme.lower() == "file"


def _local_path(spec: CheckpointSpec) -> Optional[Path]:
    """The resolved local path of a file:// checkpoint, or None if it names another host."""
    try:
        return _file_url_path(spec.url).resolve()
    except CheckpointError:
        return None


def _check_spec_model(spec: CheckpointSpec, model: Optional[str]) -> None:
    if model is not None and model != spec.model:
        raise CheckpointError(
            f"checkpoint '{spec.name}' is for model '{spec.model}', not '{model}'; "
            f"use --model {spec.model} or a checkpoint of '{model}'"
        )


def _identify(path: Path, sha256: str) -> Optional[CheckpointSpec]:
    """The known checkpoint that `path` is: a registered path, or a known SHA-256."""
    specs = all_checkpoints().values()
    for spec in specs:
        if _is_local(spec) and _local_path(spec) == path:
            return spec
    return next((spec for spec in specs if spec.sha256 == sha256), None)


def _resolve_file(path: Path, model: Optional[str]) -> ResolvedCheckpoint:
    """A checkpoint given as a file path; `model` says what it is for."""
    if model is None:
        raise CheckpointError(
            f"say which model this checkpoint is for with --model (one of: "
            f"{', '.join(catalogue.MODELS)}); {path} is not enough to tell"
        )
    _check_model(model)
    path = path.resolve()
    sha256 = checkpoint_sha256(path)
    known = _identify(path, sha256)
    if known is None:
        LOGGER.info("%s is not a known checkpoint; its SHA-256 %s identifies it", path, sha256)
        return ResolvedCheckpoint(path, sha256, path.name, model, str(path))
    _check_spec_model(known, model)
    return ResolvedCheckpoint(path, sha256, known.name, model, str(path))


def _resolve_local_spec(spec: CheckpointSpec) -> ResolvedCheckpoint:
    """A checkpoint whose URL is file://: used in place, checked against its recorded hash."""
    path = _file_url_path(spec.url).resolve()
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint '{spec.name}' is registered at {path}, which does not exist; "
            "register it again with its new path"
        )
    sha256 = checkpoint_sha256(path)
    if spec.sha256 is not None and sha256 != spec.sha256:
        raise CheckpointError(
            f"{path} (checkpoint '{spec.name}') changed since it was registered: expected "
            f"SHA-256 {spec.sha256}, got {sha256}; register it again if the change is intended"
        )
    if spec.sha256 is None:
        _adopt_sha256(spec.name, sha256)
    return ResolvedCheckpoint(path, sha256, spec.name, spec.model, str(path))


def _resolve_spec(
    spec: CheckpointSpec,
    download_missing: bool,
    progress: Optional[ProgressCallback],
    cancel: Optional[CancelCallback],
) -> ResolvedCheckpoint:
    """A named checkpoint: the verified file in the cache, downloaded if allowed and needed."""
    if _is_local(spec):
        return _resolve_local_spec(spec)
    target = checkpoint_cache_path(spec)
    state = "not downloaded yet"
    if target.is_file():
        sha256 = checkpoint_sha256(target)
        if spec.sha256 is None or sha256 == spec.sha256:
            if spec.sha256 is None:
                _adopt_sha256(spec.name, sha256)
            return ResolvedCheckpoint(target, sha256, spec.name, spec.model, spec.url)
        LOGGER.warning(
            "%s has SHA-256 %s, expected %s; it must be downloaded again",
            target, sha256, spec.sha256,
        )
        state = "damaged in the cache"
    if not download_missing:
        raise CheckpointError(
            f"checkpoint '{spec.name}' is {state}; download it with "
            f"`quicksam checkpoints download {spec.name}`"
        )
    LOGGER.info("downloading checkpoint '%s' from %s", spec.name, spec.url)
    sha256 = download(spec.url, target, spec.sha256, progress=progress, cancel=cancel)
    _remember_sha256(target, sha256)
    if spec.sha256 is None:
        _adopt_sha256(spec.name, sha256)
    return ResolvedCheckpoint(target, sha256, spec.name, spec.model, spec.url)


def resolve_checkpoint(
    name_or_path: str,
    model: Optional[str] = None,
    download_missing: bool = True,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> ResolvedCheckpoint:
    """The verified checkpoint file for a path or a checkpoint name.

    An existing file path needs `model`. A name (official or custom) is looked up in the cache
    and downloaded when missing or damaged, if `download_missing`; `progress` and `cancel` are
    passed to :func:`download`. A `model` that differs from a known checkpoint's is an error.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return _resolve_file(candidate, model)
    specs = all_checkpoints()
    spec = specs.get(name_or_path)
    if spec is None:
        raise CheckpointError(
            f"'{name_or_path}' is neither an existing checkpoint file nor a known checkpoint; "
            f"known checkpoints: {', '.join(specs)}"
        )
    _check_spec_model(spec, model)
    return _resolve_spec(spec, download_missing, progress, cancel)


def cached_checkpoint(model: str) -> Optional[ResolvedCheckpoint]:
    """The official checkpoint of `model` if it is fully downloaded and verified; no network.

    The first call hashes the cached file (memoised afterwards).
    """
    _check_model(model)
    spec = next((s for s in catalogue.CHECKPOINTS.values() if s.model == model), None)
    if spec is None:
        return None
    target = checkpoint_cache_path(spec)
    if not target.is_file():
        return None
    sha256 = checkpoint_sha256(target)
    if spec.sha256 is not None and sha256 != spec.sha256:
        return None
    return ResolvedCheckpoint(target, sha256, spec.name, spec.model, spec.url)


# --- loading -------------------------------------------------------------------------------------


def load_state_dict(path: Path) -> Dict[str, Any]:
    """The state dict in a checkpoint file, loaded on the CPU without unpickling arbitrary objects.

    SAM 2 files wrap the state dict in {"model": ...}; that inner dict is returned.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        import torch
    except ImportError as exc:
        raise CheckpointError(
            "PyTorch is needed to read checkpoints; install QuickSAM's encoder requirements"
        ) from exc
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, AttributeError,
            TypeError, ImportError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint QuickSAM can read safely (only tensors and "
            f"plain containers are accepted): {reason}"
        ) from exc
    if not isinstance(loaded, dict):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint QuickSAM can read safely: it holds a "
            f"{type(loaded).__name__}, not a state dict"
        )
    inner = loaded.get("model")
    return inner if isinstance(inner, dict) else loaded
