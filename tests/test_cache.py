"""The cache folder's file handling: atomic replacement, eviction and locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from stanceclf.cache import STALE_TEMPORARY_SECONDS, evict_least_recent
from stanceclf.files import exclusive_lock, replaced_atomically, write_atomically


def test_cache_replaced_atomically_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "sub" / "model.safetensors"
    write_atomically(target, b"old")
    with pytest.raises(RuntimeError):
        with replaced_atomically(target) as tmp:
            tmp.write_bytes(b"half of the n")
            raise RuntimeError("killed while writing")
    assert target.read_bytes() == b"old"
    assert sorted(path.name for path in target.parent.iterdir()) == ["model.safetensors"]
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new" and oct(target.stat().st_mode & 0o777) == "0o644"


def test_cache_evicts_the_least_recently_used_and_abandoned_temporaries(tmp_path):
    now = time.time()
    for age, name in enumerate(["a", "b", "c", "d", "e", "f"]):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(b"x")
        os.utime(path, (now - age * 60, now - age * 60))  # a is the most recently used, f the least
    (tmp_path / "other.onnx").write_bytes(b"x")
    old, fresh = tmp_path / "g.safetensorsabc.tmp", tmp_path / "h.safetensorsdef.tmp"
    for path, age in ((old, STALE_TEMPORARY_SECONDS + 60), (fresh, 60)):
        path.write_bytes(b"x")
        os.utime(path, (now - age, now - age))
    evict_least_recent(tmp_path, "*.safetensors", keep=4)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "a.safetensors", "b.safetensors", "c.safetensors", "d.safetensors", "h.safetensorsdef.tmp", "other.onnx"]


def test_cache_exclusive_lock_refuses_at_once_with_the_given_error_and_is_free_once_its_holder_is_killed(tmp_path):
    lock = tmp_path / "out.jsonl.lock"
    script = (f"import time\nfrom stanceclf.files import exclusive_lock\nwith exclusive_lock({str(lock)!r}):\n"
              "    print('held', flush=True)\n    time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        started = time.monotonic()
        with pytest.raises(LookupError, match="someone else's"):
            with exclusive_lock(lock, timeout=0, refusal=LookupError("someone else's")):
                pass
        assert time.monotonic() - started < 1  # refused at once, not after waiting
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert lock.exists()  # a killed holder leaves its file, but not the lock on it
    with exclusive_lock(lock, timeout=0, refusal=LookupError("still held"), remove=True):
        with pytest.raises(KeyError):  # an error inside the block is not taken for a refusal
            with exclusive_lock(tmp_path / "other.lock", timeout=0, refusal=LookupError("other")):
                raise KeyError("inside")
    assert not lock.exists()
