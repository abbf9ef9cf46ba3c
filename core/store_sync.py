"""Copying a feature store between an object store (an fsspec URL) and a local folder (no QGIS, no torch).

A store's *control files* are every file but its tiles: manifest.json, tiles.jsonl, decoder.onnx,
tile_index.gpkg (and the same in levels/x<factor>/). The coordinator of an encode into a URL pulls them into
its working copy before it starts (`pull_control_files`: the URL is the truth) and pushes them back while it
runs (`ControlPusher`); `pull_store` downloads a whole store into a folder (`quicksam pull`), resumably.
Every object is written with one PUT and every local file atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from .errors import StoreError
from .locking import STORE_LOCK
from .store_layout import MANIFEST, TILE_DIR, TILE_LOG
from .store_url import open_url, remote_errors
from .tile_files import atomic_write_bytes

#: Push the control files after this many tiles were logged, or this many seconds after the last push.
PUSH_EVERY_TILES = 16
PUSH_EVERY_SECONDS = 60.0


def _is_local_leftover(name: str) -> bool:
    """A lock, a temporary file or a tile index being built: never copied."""
    return name == STORE_LOCK or name.endswith(".tmp") or name.startswith("tile_index.tmp.")


def remote_listing(url: str, with_tiles: bool) -> Dict[str, int]:
    """{relative POSIX path: bytes} of the objects of the store at `url` (the tiles/ folders only when
    `with_tiles`); {} when nothing is there. QuickSamError in one line when the URL cannot be listed."""
    with remote_errors(url, "listing the store"):
        fs, root = open_url(url)
        fs.invalidate_cache()
        found: Dict[str, int] = {}
        for folder, dirs, files in fs.walk(root, detail=True, topdown=True):
            if not with_tiles:
                dirs.pop(TILE_DIR, None)
            relative = folder.rstrip("/")[len(root.rstrip("/")):].strip("/")
            for name, info in files.items():
                if name:
                    found[f"{relative}/{name}" if relative else name] = int(info.get("size") or 0)
        return found


def _control_first(paths: List[str]) -> List[str]:
    """Control files in upload order: manifests and the rest first, tile logs last (a log never arrives before
    the manifest it belongs to)."""
    return sorted(paths, key=lambda path: (Path(path).name == TILE_LOG, Path(path).name != MANIFEST, path))


def _read_objects(url: str, paths: List[str]) -> Dict[str, bytes]:
    """The bytes of the store's objects at the relative `paths` (one GET each)."""
    with remote_errors(url, "reading the store"):
        fs, root = open_url(url)
        return {path: fs.cat_file(f"{root.rstrip('/')}/{path}") for path in paths}


def _local_control_files(local_root: Path) -> Iterator[Path]:
    """The control files under a local store folder (no tiles, locks or temporary files)."""
    for path in sorted(local_root.rglob("*")):
        relative = path.relative_to(local_root)
        if path.is_file() and TILE_DIR not in relative.parts[:-1] and not _is_local_leftover(path.name):
            yield path


def pull_control_files(url: str, local_root: Path) -> List[str]:
    """Make `local_root` (a working copy) hold exactly the control files of the store at `url`: the local ones
    are removed, the URL's downloaded (atomically). The relative paths pulled ([] for a new store)."""
    local_root = Path(local_root)
    objects = _read_objects(url, [path for path in remote_listing(url, with_tiles=False)])
    for path in _local_control_files(local_root):
        path.unlink()
    for path, data in objects.items():
        target = local_root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
    return sorted(objects)


class ControlPusher:
    """Pushes a working copy's changed control files to the store's URL, one PUT each, tile logs last; due
    every `every_tiles` logged tiles or `every_seconds` after the last push (`tile_logged`), and when asked
    (`push`: on cancel, failure and at the end). A tile log is only pushed after the tiles it lists are in the
    object store: its lines are appended once their tile's PUT has returned."""

    def __init__(self, local_root: Path, url: str, every_tiles: int = PUSH_EVERY_TILES,
                 every_seconds: float = PUSH_EVERY_SECONDS) -> None:
        self.local_root = Path(local_root)
        self.url = url
        self.every_tiles = max(1, int(every_tiles))
        self.every_seconds = every_seconds
        self._pushed: Dict[str, Tuple[int, int]] = {}
        self._tiles_since = 0
        self._last = time.monotonic()

    def tile_logged(self) -> None:
        """One more tile logged; push when due."""
        self._tiles_since += 1
        if self._tiles_since >= self.every_tiles or time.monotonic() - self._last >= self.every_seconds:
            self.push()

    def push(self) -> List[str]:
        """Upload every control file that changed since the last push; the relative paths uploaded."""
        changed = {}
        for path in _local_control_files(self.local_root):
            stat = path.stat()
            relative = path.relative_to(self.local_root).as_posix()
            if self._pushed.get(relative) != (stat.st_size, stat.st_mtime_ns):
                changed[relative] = (stat.st_size, stat.st_mtime_ns)
        with remote_errors(self.url, "pushing the store's control files"):
            fs, root = open_url(self.url)
            for relative in _control_first(list(changed)):
                fs.pipe_file(f"{root.rstrip('/')}/{relative}", (self.local_root / relative).read_bytes())
                self._pushed[relative] = changed[relative]
        self._tiles_since, self._last = 0, time.monotonic()
        return sorted(changed)


PullProgress = Callable[[int, int, str], None]


def _is_tile(path: str) -> bool:
    return TILE_DIR in Path(path).parts[:-1]


def _local_size(path: Path) -> Optional[int]:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def pull_store(url: str, dest: Path, progress: Optional[PullProgress] = None) -> Tuple[int, int]:
    """Download the whole store at `url` into the folder `dest`: its control files read first (so the log
    written last lists only tiles that were there), then every tile object not already in `dest` at the same
    size, then the control files. Returns (tiles downloaded, tiles kept). `progress(done, total, path)` per
    tile. StoreError (one line) when `url` holds no store."""
    listing = remote_listing(url, with_tiles=False)
    if MANIFEST not in listing:
        raise StoreError(f"'{url}' holds no QuickSAM feature store (no {MANIFEST}); check the URL, or encode into it "
                         "first: quicksam encode RASTER URL")
    control = _read_objects(url, list(listing))
    refuse_other_folder(Path(dest), control[MANIFEST], url)
    tiles = {path: size for path, size in remote_listing(url, with_tiles=True).items() if _is_tile(path)}
    fetched = kept = 0
    with remote_errors(url, "downloading the store"):
        fs, root = open_url(url)
        for done, (path, size) in enumerate(sorted(tiles.items()), start=1):
            target = Path(dest) / path
            if _local_size(target) == size:
                kept += 1
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(target, fs.cat_file(f"{root.rstrip('/')}/{path}"))
                fetched += 1
            if progress is not None:
                progress(done, len(tiles), path)
    for path in _control_first(list(control)):
        (Path(dest) / path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(dest) / path, control[path])
    return fetched, kept


def _identity(manifest: bytes) -> Tuple[object, object]:
    """What tells one store from another: when it was created and the raster's fingerprint."""
    try:
        data = json.loads(manifest.decode("utf-8"))
        return data.get("created"), data.get("raster", {}).get("fingerprint")
    except (ValueError, AttributeError):
        return None, None


def refuse_other_folder(dest: Path, manifest: bytes, url: str) -> None:
    """StoreError (nothing written) unless `dest` is missing, empty, or an earlier pull of the same store (its
    manifest's `created` and raster fingerprint equal the URL's): a pull never mixes two stores or overwrites a
    user's files."""
    if dest.exists() and not dest.is_dir():
        raise StoreError(f"'{dest}' exists and is not a folder; choose a new folder to pull '{url}' into")
    if not dest.is_dir() or not any(dest.iterdir()):
        return
    local = dest / MANIFEST
    if not local.is_file() or _identity(local.read_bytes()) != _identity(manifest):
        raise StoreError(f"'{dest}' is not empty and is not an earlier pull of '{url}'; choose an empty or new "
                         "folder (QuickSAM never overwrites other files)")


def remove_folder_quietly(folder: Path) -> None:
    """Delete a temporary folder this process made (never a user's)."""
    shutil.rmtree(folder, ignore_errors=True)
