"""The cache folder's file handling: atomic replacement and eviction."""

from __future__ import annotations

import os
import time

import pytest

from stanceclf.cache import STALE_TEMPORARY_SECONDS, evict_least_recent
from stanceclf.files import replaced_atomically, write_atomically


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
