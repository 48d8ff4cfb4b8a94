"""The spool of the ``orthanc`` destination: corrected DICOM files kept on disk while the
instance they replace is deleted and uploaded again (PACS running with OverwriteInstances
false), so that a crash between the delete and the upload never loses an instance.

A copy is written under a temporary name, fsynced, locked (``flock``) and renamed before the
instance is deleted; the next attempt uploads any unlocked copy a dead attempt left behind.
Copies hold patient data: the folder and files are the broker user's only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


class Kept:
    """A spooled copy, locked (``flock``) by its holder until :meth:`done` or :meth:`release`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @property
    def key(self) -> str:
        return self.path.stem

    def done(self) -> None:
        """The copy is stored in Orthanc: forget it (unlinked before the lock goes)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)

    def release(self) -> None:
        """Leave the copy for a later attempt."""
        os.close(self.fd)


class Spool:
    """Corrected files kept on disk (fsynced) while their instance is replaced.

    A copy is written under a temporary name, fsynced, locked and renamed to
    ``<orthanc instance id>.dcm`` (the folder fsynced too) before the instance is deleted.
    The lock (``flock``, per open file) tells an attempt of this or another broker process
    that a copy is still in use; only unlocked copies are leftovers of a dead attempt.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def keep(self, key: str, data: bytes) -> Kept:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.directory / f"{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)  # PHI: owner only
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            final = self.directory / f"{key}.dcm"
            os.replace(tmp, final)
            self._sync_directory()
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return Kept(final, fd)

    def leftovers(self) -> Iterator[Kept]:
        """Copies no attempt holds, oldest first, each locked for the caller; stale
        temporary files (a crash while writing: the instance was not deleted) are removed."""
        try:
            paths = sorted(self.directory.iterdir(), key=_mtime)
        except FileNotFoundError:
            return
        for path in paths:
            kept = self._claim(path)
            if kept is None:
                continue
            if path.suffix == ".tmp":
                kept.done()
            elif path.suffix == ".dcm":
                yield kept
            else:
                kept.release()

    def _claim(self, path: Path) -> Kept | None:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None  # in use by a running attempt
            raise
        if not path.exists():  # done() by its holder just before we locked it
            os.close(fd)
            return None
        return Kept(path, fd)

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


__all__ = ["Kept", "Spool"]
