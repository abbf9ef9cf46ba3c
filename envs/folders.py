"""Folder chores of the set-up: staging a folder and swapping it in, sizes, dropping distributions."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Callable, Iterable, List

from .failures import FailureKind, SetupError
from .locations import old_of


def normalise_name(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): "Foo_Bar" -> "foo-bar"."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _make_writable_and_retry(function: Callable[[str], object], path: str, _info: object) -> None:
    # Read-only files (e.g. copied from a read-only wheel cache) would stop rmtree on Windows.
    try:
        os.chmod(path, stat.S_IWRITE | stat.S_IREAD | stat.S_IEXEC)
        function(path)
    except OSError:
        pass


def remove_tree(folder: Path) -> None:
    """Delete `folder` and everything in it, if it exists (symlinks are removed, not followed)."""
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder, onerror=_make_writable_and_retry)


def folder_size(folder: Path) -> int:
    """Bytes of the files under `folder` (0 when it does not exist); symlinks are not followed."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def human_size(size: int) -> str:
    """"1.2 GB", "85 MB", "12 kB" (powers of 1000, as file managers show them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}" if size < 10 * scale else f"{size / scale:.0f} {unit}"
    return f"{size} B"


def swap_in(staging: Path, folder: Path) -> None:
    """Make the finished `staging` folder `folder`; the previous `folder` is moved aside, then removed.
    Raises SetupError when the previous folder cannot be moved (on Windows: a library of it is loaded)."""
    old = old_of(folder)
    remove_tree(old)
    if folder.exists():
        try:
            folder.rename(old)
        except OSError as exc:
            raise SetupError(FailureKind.OTHER, (
                f"replacing {folder}: it is in use ({exc.strerror or exc}): restart QGIS and run the set-up "
                "again")) from exc
    try:
        staging.rename(folder)
    except OSError:
        if old.exists() and not folder.exists():
            old.rename(folder)  # the previous folder back in use
        raise
    with contextlib.suppress(OSError):  # still loaded somewhere: removed by the next set-up
        remove_tree(old)


def distributions_in(target: Path) -> List[Path]:
    """The `*.dist-info` folders of a `pip install --target` folder."""
    return sorted(target.glob("*.dist-info")) if target.is_dir() else []


def distribution_name(dist_info: Path) -> str:
    """The normalised name of a `*.dist-info` folder (from METADATA, else from the folder name)."""
    metadata = dist_info / "METADATA"
    if metadata.is_file():
        for line in metadata.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Name:"):
                return normalise_name(line.split(":", 1)[1].strip())
            if not line.strip():
                break
    return normalise_name(dist_info.name[: -len(".dist-info")].rsplit("-", 1)[0])


def drop_distributions(target: Path, names: Iterable[str]) -> List[str]:
    """Delete from the pip target folder `target` every distribution named in `names` (normalised
    names): the files its RECORD lists (inside `target` only) and its dist-info. Returns the names
    dropped."""
    wanted = {normalise_name(name) for name in names}
    dropped = []
    root = target.resolve()
    for dist_info in distributions_in(target):
        name = distribution_name(dist_info)
        if name not in wanted:
            continue
        record = dist_info / "RECORD"
        lines = record.read_text(encoding="utf-8", errors="replace").splitlines() if record.is_file() else []
        for line in lines:
            relative = line.rsplit(",", 2)[0] if line.count(",") >= 2 else line
            path = (target / relative).resolve()
            if relative and root in path.parents and (path.is_file() or path.is_symlink()):
                path.unlink()
        remove_tree(dist_info)
        dropped.append(name)
    _remove_empty_folders(target)
    return dropped


def _remove_empty_folders(target: Path) -> None:
    """Remove the folders left empty under `target` (deepest first)."""
    for root, _dirs, _files in os.walk(target, topdown=False):
        path = Path(root)
        if path != target and not any(path.iterdir()):
            path.rmdir()
