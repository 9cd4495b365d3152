"""What a scoring run remembers between chunks, and the lock that keeps two runs apart.

After each chunk the run writes a :class:`ResumeState` (atomically) beside the output. A
run started again with the same inputs, model and output-shaping options resumes from it;
options that cannot change rows already written (``--max-chars``, ``--on-error``) are not
part of the signature, so following an error's advice never loses finished work.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from stanceclf.errors import ScoringSetupError, StanceclfError
from stanceclf.model.directory import manifest_digest, weights_digest

PROGRESS_SUFFIX = ".progress.json"
PARTIAL_SUFFIX = ".partial"
ERRORS_SUFFIX = ".errors.jsonl"
LOCK_SUFFIX = ".lock"


@dataclass
class RunCounts:
    """What a run has done so far."""

    documents: int = 0
    sentences: int = 0
    skipped: int = 0
    truncated: int = 0


@dataclass
class ResumeState(RunCounts):
    """Progress of a run: records finished, the committed output length, and running counts."""

    signature: str = ""
    records_done: int = 0
    output_length: int = 0
    errors_written: int = 0

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(asdict(self), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "ResumeState":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})
        except (OSError, ValueError, TypeError) as exc:
            raise StanceclfError(f"unreadable progress file ({exc}); pass --overwrite to start again",
                                 where=str(path)) from None


@dataclass(frozen=True)
class OutputPaths:
    """The files a run keeps beside its output ``out``."""

    out: Path
    partial: Path
    progress: Path
    errors: Path
    lock: Path

    @classmethod
    def beside(cls, out: Path) -> "OutputPaths":
        return cls(out, *(out.with_name(out.name + suffix)
                          for suffix in (PARTIAL_SUFFIX, PROGRESS_SUFFIX, ERRORS_SUFFIX, LOCK_SUFFIX)))


def run_signature(files: list[Path], model, options: dict) -> str:
    """What a resumed run must share with the interrupted one: the input files it reads,
    the model (weights, manifest, backend) and the options that shape the output."""
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(f"backend:{getattr(model, 'backend', 'torch')}".encode())
    digest.update(f"manifest:{manifest_digest(model.manifest)}".encode())
    digest.update(f"weights:{weights_digest(model.path)}".encode())
    digest.update(json.dumps(options, sort_keys=True).encode())
    return digest.hexdigest()


class OutputLock:
    """An OS-level lock on ``OUT.lock``: it dies with its process, so a killed run never leaves it held."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = None

    def __enter__(self) -> "OutputLock":
        import fcntl

        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                raise ScoringSetupError("another 'stanceclf score' run is writing this output right now; wait for "
                                        "it to finish (its progress is safe), or choose another --out",
                                        where=str(self.path.with_suffix(""))) from None
            if self._still_the_lock_file(handle):
                self.handle = handle
                return self
            # The run that held it finished and removed the file between our open and our lock: lock anew.
            handle.close()

    def _still_the_lock_file(self, handle) -> bool:
        try:
            return os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def release(self, *, remove: bool = False) -> None:
        """Unlock; ``remove`` (once the output is complete) also deletes the lock file while still holding it."""
        import fcntl

        if self.handle is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
        self.handle.close()
        self.handle = None

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
