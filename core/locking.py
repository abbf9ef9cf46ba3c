"""One writer at a time: an exclusive OS lock on a lock file, saying who holds it (no QGIS, no torch).

`quicksam encode` holds `STORE/.quicksam.lock` while it writes a feature store, and `segment-all` holds
`OUT.gpkg.lock` while it builds OUT.gpkg. The lock is the operating system's (`fcntl.flock` on Linux and
macOS, `msvcrt.locking` on Windows): the kernel releases it when its holder exits or is killed (kill -9, a
crash), so a lock left by a dead process never blocks the next run, which a pid file could. The file's
content names the holder (pid, host, start time, command) for the message a second run gives; the file is
deleted when the lock is released.

Why not the `filelock` package: it opens the lock file with O_TRUNC before it tries the lock, so every
refused run would wipe the holder's details, and on Windows it locks the file's first byte, which makes
the content unreadable to others. The lock here is on a byte far past the content on Windows.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import QuickSamError
from .logger import LOGGER

#: The lock file of a feature store (see docs/store-format.md).
STORE_LOCK = ".quicksam.lock"
#: Errors that mean the lock file cannot be created: a folder nobody may write needs no lock.
READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
#: Windows: the byte locked, far past the holder's details, which stay readable.
_WINDOWS_LOCK_OFFSET = 1 << 30
#: How long a refused run waits for a holder that has the lock but has not written its details yet.
_DETAILS_WAIT_SECONDS = 0.5


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock: process id, host name, start time (ISO 8601, UTC) and command."""

    pid: int
    host: str
    started: str
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, {self.command}, started {self.started}"

    @classmethod
    def this_process(cls, command: str) -> LockHolder:
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        return cls(os.getpid(), socket.gethostname(), started, command)

    @classmethod
    def parse(cls, text: str) -> Optional[LockHolder]:
        try:
            data = json.loads(text)
            return cls(int(data["pid"]), str(data["host"]), str(data["started"]), str(data["command"]))
        except (ValueError, TypeError, KeyError):
            return None


class LockBusy(QuickSamError):
    """Another process holds the lock; the message names it and says what to do."""


def _try_lock(fd: int) -> bool:
    """Take the OS lock on `fd` without waiting; False when another open file holds it."""
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    # elsewhere closing the file releases the flock


def _read_holder(path: Path) -> Optional[LockHolder]:
    """The holder's details, waiting briefly for a holder that has just taken the lock."""
    deadline = time.monotonic() + _DETAILS_WAIT_SECONDS
    while True:
        with contextlib.suppress(OSError):
            holder = LockHolder.parse(path.read_text(encoding="utf-8", errors="replace"))
            if holder is not None:
                return holder
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (a releasing holder deletes it, see `release`)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


class ExclusiveLock:
    """The OS lock on `path`, held by this process for `command` (e.g. "quicksam encode").

    `acquire` raises LockBusy (a one-line message from `busy_message(holder)`, holder None when unknown)
    if another process or another open of the file holds it. A lock file that cannot be created because
    its folder is read-only is not an error: nothing can write there, so there is nothing to guard, and
    `held` stays False. Other OSErrors are raised.
    """

    def __init__(self, path: Path, command: str, busy_message: Callable[[Optional[LockHolder]], str]) -> None:
        self.path = Path(path)
        self.command = command
        self.busy_message = busy_message
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
            except OSError as exc:
                if exc.errno in READ_ONLY_ERRNOS:
                    LOGGER.debug("no lock on %s (%s): the folder cannot be written", self.path, exc.strerror)
                    return
                raise
            if not _try_lock(fd):
                os.close(fd)
                raise LockBusy(self.busy_message(_read_holder(self.path)))
            if _same_file(fd, self.path):
                break
            os.close(fd)  # locked a file its holder deleted while releasing: take the new one
        self._fd = fd
        self._write_holder()

    def _write_holder(self) -> None:
        holder = LockHolder.this_process(self.command)
        text = json.dumps(holder.__dict__).encode()
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.write(self._fd, text)
        except OSError as exc:  # a full disk: the lock holds all the same, only without details
            LOGGER.debug("cannot write the lock holder into %s: %s", self.path, exc)

    def release(self) -> None:
        """Delete the lock file, then release the lock (in this order: see `_same_file`)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if sys.platform != "win32":
            with contextlib.suppress(OSError):
                self.path.unlink()
        _unlock(fd)
        os.close(fd)
        if sys.platform == "win32":  # an open file cannot be deleted there: only once closed, if no one has it
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> ExclusiveLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@contextlib.contextmanager
def exclusive_lock(path: Path, command: str,
                   busy_message: Callable[[Optional[LockHolder]], str]) -> Iterator[ExclusiveLock]:
    """`with exclusive_lock(...)`: hold `ExclusiveLock(path, command, busy_message)` for the block."""
    lock = ExclusiveLock(path, command, busy_message)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def holder_text(holder: Optional[LockHolder]) -> str:
    """"pid 123 on host h, quicksam encode, started ..." or what is known when the holder said nothing."""
    return holder.describe() if holder is not None else "a process that has not said who it is yet"


def command_name() -> str:
    """What this process is, for the lock file: the command line's program and subcommand, or QGIS."""
    argv = [os.path.basename(a) for a in sys.argv[:2] if a]
    if argv and argv[0] in ("cli.py", "__main__.py", "-m", "-c"):
        argv[0] = "quicksam"
    return " ".join(argv) or "QGIS"
