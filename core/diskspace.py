"""A full disk and a folder that cannot be written, said in one line with what to do (no QGIS, no torch).

A full disk reaches Python in two forms: an OSError with errno ENOSPC (or EDQUOT, a quota), and text from
GDAL/SQLite ("database or disk is full") or pyogrio. Both become `DiskFull`, whose message names the file
system, says about how much more room the run needs, and that the same command resumes.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from .errors import QuickSamError

#: errno values of a full disk: no space left, and (where the platform has it) a disk quota exceeded.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, *([errno.EDQUOT] if hasattr(errno, "EDQUOT") else [])})
#: How libraries that do not raise OSError report a full disk (SQLite via GDAL, GDAL's VSI, the C library).
NO_SPACE_TEXTS = ("database or disk is full", "no space left on device", "disk quota exceeded",
                  "not enough space")
#: What "read-only" is, by errno, for messages.
UNWRITABLE_REASONS = {errno.EROFS: "read-only", errno.EACCES: "permission denied", errno.EPERM: "permission denied"}
MB = 1_000_000
#: numpy's words for a short write (see `is_disk_full`).
SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")


class DiskFull(QuickSamError):
    """No space left where a run writes; everything finished so far is kept and the same command resumes."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (an OSError, or an error of GDAL/SQLite/pyogrio known only by its text) is a full disk.

    numpy's `tofile` (what `np.save` uses for a real file) reports a short write as an OSError without
    errno, "N requested and M written": a regular file takes fewer bytes than asked only when the disk or
    the quota is full."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return True
    if isinstance(exc, OSError) and exc.errno is None and SHORT_WRITE.search(str(exc)):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in NO_SPACE_TEXTS)


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding `path` (or its nearest existing parent)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged user may still write on the file system of `path` (0 when unknown)."""
    try:
        return shutil.disk_usage(mount_point(path)).free
    except OSError:
        return 0


def disk_full_error(path: Path, bytes_needed: int, quota: bool = False) -> DiskFull:
    """The DiskFull to raise when writing `path` failed for want of space.

    `bytes_needed`: what the rest of the run writes, estimated; the message says how much more than the
    free space that is (at least 1 MB, since the write failed).
    """
    more = max(1, math.ceil((bytes_needed - free_bytes(path)) / MB))
    where = mount_point(path)
    what = "no room left in the disk quota" if quota else "no space left"
    return DiskFull(f"{what} on {where} while writing '{path}' (needs about {more} MB more); free space and run "
                    "the same command again to resume")


def is_quota(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and hasattr(errno, "EDQUOT") and exc.errno == errno.EDQUOT) \
        or "quota" in str(exc).lower()


def unwritable_reason(exc: BaseException) -> Optional[str]:
    """"read-only" or "permission denied" when `exc` says a file cannot be written; None otherwise."""
    return UNWRITABLE_REASONS.get(exc.errno) if isinstance(exc, OSError) else None


def folder_unwritable_reason(folder: Path) -> Optional[str]:
    """Why no file can be created in `folder` ("read-only", "permission denied", or the system's words), or
    None when one can. Tries it (a nameless temporary file, removed at once): permission bits do not tell,
    since they do not bind root, and a read-only mount, ACLs or a network share say no only when asked."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        if is_disk_full(exc):
            return None  # writable, only full: the write itself says so, with how much room it needs
        return unwritable_reason(exc) or exc.strerror or str(exc)
    return None
