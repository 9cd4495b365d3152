"""This machine: its CPU's name and instruction-set flags, read from ``/proc/cpuinfo`` (Linux), and the
memory the C library holds after frees.

One reader for the backends (which fast path this CPU can run, and the key of a cached choice) and
for the benchmarks (the flags stated beside every figure). Where the file cannot be read (another OS),
the name falls back to :mod:`platform` and the flags are unknown (``None``), never guessed.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import threading
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
#: The flags that decide this project's fast paths: int8 dot products (VNNI, AMX-INT8) and bfloat16.
FLAGS_OF_INTEREST = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _first_field(key: str, cpuinfo: Path) -> str | None:
    """The value of the first ``key : value`` line (every core repeats them), or None."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as info:
            for line in info:
                name, sep, value = line.partition(":")
                if sep and name.strip() == key:
                    return value.strip()
    except OSError:
        return None
    return None


def cpu_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name ("Intel(R) Xeon(R) ..."), else what :mod:`platform` knows."""
    return _first_field("model name", cpuinfo) or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """The CPU's instruction-set flags, or None where they cannot be read."""
    flags = _first_field("flags", cpuinfo)
    return None if flags is None else frozenset(flags.split())


def described_flags(wanted: tuple[str, ...] = FLAGS_OF_INTEREST, cpuinfo: Path = CPUINFO) -> str:
    """Which of ``wanted`` this CPU has, for a benchmark's heading: "avx512_vnni, amx_bf16" or "none of ..."."""
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return "flags not readable"
    return ", ".join(flag for flag in wanted if flag in flags) or "none of " + ", ".join(wanted)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` among the symbols this process has loaded, or None under another C library
    (musl, macOS) or where the process's own symbols cannot be opened (Windows)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):
        return None


def release_freed_memory() -> None:
    """Give back to the OS the heap memory glibc keeps after frees (``malloc_trim(0)``); nothing elsewhere.

    Forward passes over batches of ever other shapes make glibc raise its mmap threshold, after which freed
    activations stay in the heap, fragmented: the default scoring 28,000 sentences in torch grew from 843 to
    1,444 MB. Trimmed every few hundred sentences it stayed at 700 MB, no slower (a trim takes 0.3 ms, or
    30 ms when it gives back 280 MB; benchmarks/results/million-default-slice.md)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class MemoryRelease:
    """Calls :func:`release_freed_memory` once ``every`` units of work (sentences) have been counted since the
    last call; safe to count from several threads."""

    def __init__(self, every: int = 256):
        self.every, self._pending = every, 0
        self._lock = threading.Lock()

    def count(self, units: int) -> None:
        with self._lock:
            self._pending += units
            due = self._pending >= self.every
            if due:
                self._pending = 0
        if due:
            release_freed_memory()
