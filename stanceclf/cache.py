"""stanceclf's one cache folder (assembled base weights, measured backend choices).

``$STANCECLF_CACHE``, else ``$XDG_CACHE_HOME/stanceclf``, else ``~/.cache/stanceclf``.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "STANCECLF_CACHE"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "stanceclf"
