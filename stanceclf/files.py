"""How stanceclf writes, fingerprints and locks files: the one home of each idea.

- **Write, then rename** (:func:`replaced_atomically`, :func:`write_atomically`,
  :func:`folder_replaced_atomically`): a reader, another process too, sees the old file or the
  whole new one, never half of it; a block that raises leaves nothing behind.
- **Has this file changed?** (:class:`FileStamp`): size, modification and change times and inode.
  ``cp -p``, rsync or unzip keep size and mtime, but not ctime or inode.
- **Its sha256** (:func:`file_sha256`; :func:`stamped_sha256` hashes a file again only when its
  stamp changed).
- **One process at a time** (:func:`exclusive_lock`): a lock file held through the OS, so a killed
  process never leaves it held.

A leaf: it imports nothing from stanceclf.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

TEMPORARY_SUFFIX = ".tmp"


def default_file_mode() -> int:
    """The mode a plain ``open()`` gives a new file (0644 under the usual umask 022)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux shows the umask without changing it (os.umask would, briefly, for every thread)
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


@contextmanager
def replaced_atomically(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; renamed over ``path`` when the block ends without an
    error, deleted when it raises. ``durable`` flushes it to disk before the rename, so that after a
    crash the name holds the old file or the whole new one, never one with missing blocks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=TEMPORARY_SUFFIX)
    os.close(handle)
    try:
        yield Path(tmp)
        if durable:
            with open(tmp, "rb+") as written:
                os.fsync(written.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomically(path: str | Path, data: bytes | str, *, durable: bool = True) -> None:
    """Write ``data`` (text is written as UTF-8) to ``path`` through :func:`replaced_atomically`."""
    with replaced_atomically(path, durable=durable) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


@contextmanager
def folder_replaced_atomically(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; it replaces ``path`` when the block ends without an
    error and is deleted when it raises, so a folder found at ``path`` is complete. (A folder cannot be
    renamed over another: an old ``path`` is removed just before the rename.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX))
    try:
        yield work
        if path.exists():
            shutil.rmtree(path)
        os.rename(work, path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


@dataclass(frozen=True)
class FileStamp:
    """What tells whether a file changed without reading it: its resolved path, size, modification
    and change times (ns) and inode. Equal stamps mean the same file with the same bytes, short of
    someone setting both clocks back by hand."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: str | Path) -> "FileStamp":
        path = Path(path)
        stat = path.stat()
        return cls(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)

    def as_list(self) -> list:
        """JSON-ready, for cache keys and signatures."""
        return list(astuple(self))


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def stamped_sha256(path: str | Path) -> str:
    """:func:`file_sha256`, remembered per :class:`FileStamp`: a file is read again only once it changed
    (a base model's weights are 438 MB)."""
    return _sha256_of(FileStamp.of(path))


@lru_cache(maxsize=32)
def _sha256_of(stamp: FileStamp) -> str:
    return file_sha256(stamp.path)


@contextmanager
def exclusive_lock(path: str | Path, *, timeout: float = -1, refusal: Exception | None = None,
                   remove: bool = False) -> Iterator[None]:
    """Hold the lock file ``path`` (``filelock``: an OS lock, released when its process dies).
    ``timeout`` -1 waits for it; 0 fails at once with ``filelock.Timeout`` (an ``OSError``) when
    another process holds it, or with ``refusal`` when given (a coded error saying who holds it and
    what to do). ``remove`` deletes the lock file when the block ends, while still holding it, so that
    none is left beside what it guards (filelock >= 3.20.4 never lets a waiter keep a lock on a
    removed file: it locks the new one)."""
    from filelock import FileLock, Timeout

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        if refusal is None:
            raise
        raise refusal from None
    try:
        yield
    finally:
        if remove:
            Path(path).unlink(missing_ok=True)
        lock.release()
