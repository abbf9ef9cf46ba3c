"""From a checkpoint name or path to a verified file on disk, downloaded into the cache if allowed."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ...core import catalogue
from ...core.catalogue import CheckpointSpec
from ...core.errors import CheckpointError
from ...core.logger import LOGGER
from .download import CancelCallback, ProgressCallback, download, file_url_path
from .hashes import checkpoint_sha256, remember_sha256
from .paths import checkpoints_dir
from .registry import adopt_sha256, all_checkpoints, check_model


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint file on disk, verified. `source` is the URL it came from or the path given."""

    path: Path
    sha256: str
    name: str
    model: str
    source: str

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
        return file_url_path(spec.url).resolve()
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
    check_model(model)
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
    path = file_url_path(spec.url).resolve()
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
        adopt_sha256(spec.name, sha256)
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
                adopt_sha256(spec.name, sha256)
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
    remember_sha256(target, sha256)
    if spec.sha256 is None:
        adopt_sha256(spec.name, sha256)
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
    check_model(model)
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
