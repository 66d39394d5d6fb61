"""One owner per storage directory: an OS file lock held for a runtime's life.

Two runtimes on one ``SQLiteBackend`` directory would each run an instance of
the same object and lose each other's writes, so a runtime claims the
directory when it starts: it takes an exclusive ``flock`` on ``<dir>/@lock``
(``@`` is outside the namespace alphabet, as for the alarm index) and writes
its PID into the file, so that the one refused can say who holds it. The
lock belongs to an open file description, so it is released when the backend
closes, and by the OS when the process dies, however it dies (``SIGKILL``
included): a stale PID in the file means nothing once nobody holds the lock.
The file is never deleted: unlinking a lock file lets a second process lock a
fresh inode while a third still holds the old one.

``flock`` locks are per open file, not per process, so two runtimes of one
process conflict just as two processes do. They are advisory and local:
directories on network file systems may not be protected. On Windows, which
has no ``flock``, claiming does nothing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import typing

from pyobjects._errors import StorageError, StorageInUseError

if sys.platform != "win32":
    import fcntl

__all__ = ["LOCK_FILE", "DirectoryLock"]

LOCK_FILE = "@lock"

logger = logging.getLogger("pyobjects")

# Errors that mean "this directory cannot be written", where a lock file that
# does not exist yet cannot be created. Nothing can be written there either,
# so a second runtime cannot lose writes: start without the lock.
_UNWRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0)
    except OSError:  # pragma: no cover - the file was opened for reading
        return None
    try:
        return int(text.strip() or b"x")
    except ValueError:
        return None  # the holder has not written its PID yet


@typing.final
class DirectoryLock:
    """The exclusive lock on one storage directory (``<dir>/@lock``)."""

    __slots__ = ("_directory", "_fd")

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this lock holds the directory."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without waiting, creating the directory if needed.

        Raises:
            StorageInUseError: If another open lock (another runtime, in
                this process or another) holds the directory, this one
                included if it is already held.
            StorageError: If the lock file cannot be opened or locked.
        """
        if sys.platform == "win32":  # pragma: no cover - no flock on Windows
            return
        path = os.path.join(self._directory, LOCK_FILE)
        try:
            os.makedirs(self._directory, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno not in _UNWRITABLE:
                raise StorageError(f"cannot open the lock file {path}: {exc}") from exc
            try:  # a lock file that exists can still be locked read-only
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                logger.warning(
                    "cannot create the lock file %s (%s): starting without the "
                    "guard against a second runtime on this directory",
                    path,
                    exc,
                )
                return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise StorageInUseError(directory=self._directory, pid=pid) from None
        except OSError as exc:  # pragma: no cover - e.g. ENOLCK on a network FS
            os.close(fd)
            raise StorageError(f"cannot lock {path}: {exc}") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a read-only lock file: the lock holds, the PID is unknown
        self._fd = fd

    def release(self) -> None:
        """Give the directory up (nothing happens if it is not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no stale PID for the next one refused
        os.close(fd)  # closing the file releases the lock
