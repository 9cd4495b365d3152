"""stanceclf's one cache folder (assembled base weights, merged adapter models, exported ONNX graphs,
measured backend choices) and how files in it are written and evicted.

``$STANCECLF_CACHE``, else ``$XDG_CACHE_HOME/stanceclf``, else ``~/.cache/stanceclf``.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CACHE_ENV = "STANCECLF_CACHE"
TEMPORARY_SUFFIX = ".tmp"
#: A temporary file older than this is left over by a killed process (a write takes seconds), not being written.
STALE_TEMPORARY_SECONDS = 3600


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "stanceclf"


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; renamed over ``path`` when the block ends without an
    error, deleted when it raises. A reader (another process too) sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=TEMPORARY_SUFFIX)
    os.close(handle)
    try:
        yield Path(tmp)
        # On disk before the rename: after a crash the name holds the old file or the whole new one,
        # never a new one with missing blocks (cache files are trusted without a checksum).
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache holds nothing private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`replaced_atomically`."""
    with replaced_atomically(path) as tmp:
        tmp.write_bytes(data)


def evict_least_recent(folder: Path, pattern: str, keep: int) -> None:
    """Delete all but the ``keep`` most recently used files matching ``pattern`` (by modification time,
    which readers refresh; another process may delete one first), and the temporary files that killed
    writers left behind (an MPNet model's is 438 MB)."""
    def used(path: Path) -> int:
        try:
            return path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    for stale in sorted(folder.glob(pattern), key=used, reverse=True)[keep:]:
        stale.unlink(missing_ok=True)
    abandoned = time.time_ns() - STALE_TEMPORARY_SECONDS * 10**9
    for temporary in folder.glob(f"*{TEMPORARY_SUFFIX}"):
        if 0 < used(temporary) < abandoned:
            temporary.unlink(missing_ok=True)
