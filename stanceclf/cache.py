"""stanceclf's one cache folder (assembled base weights, merged adapter models, exported ONNX graphs,
measured backend choices) and how files in it are evicted (they are written with :mod:`stanceclf.files`).

``$STANCECLF_CACHE``, else ``$XDG_CACHE_HOME/stanceclf``, else ``~/.cache/stanceclf``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from stanceclf.files import TEMPORARY_SUFFIX

CACHE_ENV = "STANCECLF_CACHE"
#: A temporary file older than this is left over by a killed process (a write takes seconds), not being written.
STALE_TEMPORARY_SECONDS = 3600


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "stanceclf"


def evict_least_recent(folder: Path, pattern: str, keep: int) -> None:
    """Delete all but the ``keep`` most recently used files or folders matching ``pattern`` (by modification
    time, which readers refresh; another process may delete one first), and the temporary files and folders
    that killed writers left behind (an MPNet model's is 438 MB)."""
    def used(path: Path) -> int:
        try:
            return path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def remove(path: Path) -> None:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    current = [path for path in folder.glob(pattern) if not path.name.endswith(TEMPORARY_SUFFIX)]
    for stale in sorted(current, key=used, reverse=True)[keep:]:
        remove(stale)
    abandoned = time.time_ns() - STALE_TEMPORARY_SECONDS * 10**9
    for temporary in folder.glob(f"*{TEMPORARY_SUFFIX}"):
        if 0 < used(temporary) < abandoned:
            remove(temporary)
