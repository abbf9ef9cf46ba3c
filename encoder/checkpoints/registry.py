"""The registry of custom checkpoints (fine-tunes such as micro-sam): ``config_dir() / "checkpoints.json"``.

A custom checkpoint registered by path is stored with its file's ``file://`` URL and used where it lies. A
custom URL registered without a SHA-256 is trusted on first download: the hash of what was downloaded then
becomes its identity and is written back to the registry.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional

from ...core import catalogue
from ...core.catalogue import CheckpointSpec
from ...core.errors import CheckpointError
from ...core.logger import LOGGER
from .download import one_line, url_scheme
from .hashes import checkpoint_sha256
from .paths import JSON_LOCK, load_json, registry_path, write_json_atomic

REGISTRY_FORMAT_VERSION = 1

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def check_model(model: str) -> None:
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
        data = load_json(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read the checkpoint registry {path} ({one_line(exc)}); fix or delete it"
        ) from exc
    if data is None:
        return {}
    entries = data.get("checkpoints") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise CheckpointError(f"{path} is not a QuickSAM checkpoint registry; fix or delete it")
    return entries


def _write_registry(entries: Dict[str, Dict[str, Any]]) -> None:
    with JSON_LOCK:
        write_json_atomic(
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
    check_model(model)
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
        url_scheme(str(url))
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


def adopt_sha256(name: str, sha256: str) -> None:
    """Trust on first use: record the hash of a custom checkpoint registered without one."""
    entries = _read_registry()
    if name in entries and not entries[name].get("sha256"):
        entries[name]["sha256"] = sha256
        _write_registry(entries)
        LOGGER.info("custom checkpoint '%s' is now identified by SHA-256 %s", name, sha256)
