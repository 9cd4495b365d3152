"""When progress shows, and how: a bar on a terminal for work long enough to watch; a plain line now and
then in a log file or a pipe, so that a job run under nohup or a scheduler does not look hung for hours.

transformers, datasets and huggingface_hub each draw their own bars (saving shards, mapping and
writing datasets) and transformers prints a load report on every load. In a log file or a pipe
those are noise, and on a terminal they are noise for work that takes a moment. The library
wraps such calls in :func:`library_output`, which silences them unless the caller asks for bars.
"""

from __future__ import annotations

import importlib
import re
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from tqdm import tqdm

#: Units (sentences, documents) below which work is short enough to need no bar.
LONG_WORK = 5_000

#: Seconds between two progress lines in a log file, and before the first: work shorter than this writes none.
LOG_INTERVAL = 60.0

# A log line's layout: no bar (its redraws are what a log cannot show), the rate as units per second even
# below one (a CPU training step takes seconds), averaged over the whole run (``smoothing=0``) so that the time
# left is an estimate, not the last minute's speed; a tenth of a percent, so that 99.6% does not read 100%.
_LOG_LINE = ("{desc}: {percentage:.1f}% ({n_fmt}/{total_fmt}{unit}) "
             "[{elapsed} elapsed, about {remaining} left, {rate_noinv_fmt}{postfix}]")
_LOG_LINE_OPEN_ENDED = "{desc}: {n_fmt}{unit} [{elapsed} elapsed, {rate_noinv_fmt}{postfix}]"


def wants_progress(work: int | None = None, *, long_work: int = LONG_WORK, stream=None) -> bool:
    """Bars for ``work`` units: only when ``stream`` (stderr) is a terminal and the work reaches
    ``long_work`` units (``None``: unknown length, judged by the terminal alone)."""
    return _is_terminal(stream or sys.stderr) and (work is None or work >= long_work)


def progress_bar(total: int | None = None, *, show: bool = True, long_work: int = LONG_WORK, stream=None,
                 log_interval: float | None = None, **options) -> tqdm:
    """A tqdm progress display on ``stream`` (stderr) for ``total`` units (``None``: not known ahead).

    On a terminal it is a bar, drawn when ``total`` reaches ``long_work`` or is unknown
    (:func:`wants_progress`). Anywhere else (a log file, a pipe) it writes one plain line every
    ``log_interval`` seconds (:data:`LOG_INTERVAL`) and a last one when it closes; work that ends sooner writes
    nothing. With ``show`` false it writes nothing. ``options`` go to tqdm (``desc``, ``unit``, ``initial``...); call
    ``set_postfix(..., refresh=False)`` on it, since a refresh writes a line at once.
    """
    from tqdm import tqdm

    stream = stream or sys.stderr
    log_interval = LOG_INTERVAL if log_interval is None else log_interval
    if not show:
        return tqdm(total=total, disable=True, **options)
    if _is_terminal(stream):
        return tqdm(total=total, file=stream, dynamic_ncols=True,
                    disable=not wants_progress(total, long_work=long_work, stream=stream), **options)
    options.setdefault("unit", " it")
    # miniters=1: tqdm's own choice of it (a minute's worth of units) lets its monitor thread add a line 10 to
    # 20 s after each one; position=0: a second open bar would write cursor moves into the log.
    return tqdm(total=total, file=_LogLines(stream), mininterval=log_interval, delay=log_interval, miniters=1,
                smoothing=0, position=0, ascii=True, bar_format=_LOG_LINE if total else _LOG_LINE_OPEN_ENDED,
                **options)


def _is_terminal(stream) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


class _LogLines:
    """What tqdm writes, as whole lines: tqdm redraws its status in place (a carriage return, the text,
    spaces over the longer previous text), which a log file keeps as one ever longer line; and it pads
    numbers to a fixed width so that a bar stands still, which a line does not need."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = re.sub(" {2,}", " ", text.replace("\r", "")).strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


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
