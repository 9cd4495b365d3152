"""When progress bars show: on a terminal, and for work long enough to watch.

transformers, datasets and huggingface_hub each draw their own bars (saving shards, mapping and
writing datasets) and transformers prints a load report on every load. In a log file or a pipe
those are noise, and on a terminal they are noise for work that takes a moment. The library
wraps such calls in :func:`library_output`, which silences them unless the caller asks for bars.
"""

from __future__ import annotations

import importlib
import sys
from contextlib import contextmanager
from typing import Iterator

#: Units (sentences, documents) below which work is short enough to need no bar.
LONG_WORK = 5_000


def wants_progress(work: int | None = None, *, long_work: int = LONG_WORK, stream=None) -> bool:
    """Bars for ``work`` units: only when ``stream`` (stderr) is a terminal and the work reaches
    ``long_work`` units (``None``: unknown length, judged by the terminal alone)."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) and (work is None or work >= long_work)


# (module, query, whether the query answers "disabled", enable, disable): each library's bar switch.
_SWITCHES = {
    "transformers": ("transformers.utils.logging", "is_progress_bar_enabled", False, "enable_progress_bar",
                     "disable_progress_bar"),
    "datasets": ("datasets.utils", "are_progress_bars_disabled", True, "enable_progress_bars",
                 "disable_progress_bars"),
    "huggingface_hub": ("huggingface_hub.utils", "are_progress_bars_disabled", True, "enable_progress_bars",
                        "disable_progress_bars"),
}


@contextmanager
def library_output(*libraries: str, progress: bool = False) -> Iterator[None]:
    """Within the block, the named libraries (keys of the switch table) draw progress bars only if
    ``progress``, and transformers logs errors only; everything is restored afterwards. A library
    not imported yet is left alone (importing it just to silence it would slow every start): import
    it before the block if the block will use it."""
    libraries = tuple(name for name in libraries if name in sys.modules)
    restore = []
    for name in libraries:
        module_name, query, answers_disabled, enable, disable = _SWITCHES[name]
        module = importlib.import_module(module_name)
        was_on = getattr(module, query)() != answers_disabled
        restore.append(getattr(module, enable if was_on else disable))
        getattr(module, enable if progress else disable)()
    verbosity = None
    if "transformers" in libraries:
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        for switch_back in restore:
            switch_back()
        if verbosity is not None:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity(verbosity)
