"""What a cached graph of a model (an ONNX export, an int8 quantisation) depends on, as one key.

A leaf shared by :mod:`stanceclf.infer.backends` and :mod:`stanceclf.infer.int8`: hashing every tensor
(part of the 3.1 s an MPNet load takes from the cache) costs far less than an export or a quantisation,
and no file's name, size or time can pass other weights for these.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sys


def package_version(distribution: str) -> str | None:
    """An installed distribution's version, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def model_graph_key(model, libraries: tuple[str, ...], extra: dict | None = None) -> str:
    """The sha256 (hex) of the torch ``model``'s class, config and every tensor's bytes, the versions of
    torch and of ``libraries``, and ``extra`` (what else the graph was made from)."""
    import torch

    digest = hashlib.sha256(json.dumps(
        {"torch": torch.__version__, **{name: package_version(name) for name in libraries},
         "class": type(model).__name__, "config": model.config.to_dict(), **({"extra": extra} if extra else {})},
        sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def thread_setting(threads: int | None = None) -> int | None:
    """The threads a forward pass runs with: ``threads`` if given, else torch's setting when torch is loaded
    (``--threads N`` sets it, so one knob governs every backend), else the CPU count (torch's own default on
    these machines), read without importing torch."""
    if threads:
        return int(threads)
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else os.cpu_count()
