"""What a scoring run remembers between chunks, and the lock that keeps two runs apart.

After each chunk the run writes a :class:`ResumeState` (atomically) beside the output. A
run started again with the same inputs, model and output-shaping options resumes from it;
options that cannot change rows already written (``--max-chars``, ``--on-error``) are not
part of the :class:`RunSignature`, so following an error's advice never loses finished work.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from stanceclf.errors import ResumeError, ScoringSetupError
from stanceclf.files import FileStamp, exclusive_lock, write_atomically
from stanceclf.model.layout import weights_digest
from stanceclf.model.manifest import manifest_digest

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

    signature: dict = field(default_factory=dict)
    records_done: int = 0
    output_length: int = 0
    errors_written: int = 0
    #: Saved just before the output takes its final name: only then can an output found under that name
    #: be this run's (and not an earlier run's that ``--overwrite`` was replacing). None: a progress file of an
    #: earlier stanceclf, which did not record it (and kept its error log under the final name).
    finishing: bool | None = False

    def save(self, path: Path) -> None:
        write_atomically(path, json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> "ResumeState":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{"finishing": None, **{key: data[key] for key in cls.__dataclass_fields__ if key in data}})
        except (OSError, ValueError, TypeError) as exc:
            raise ResumeError(f"unreadable progress file ({exc}); pass --overwrite to start again",
                              where=str(path)) from None


@dataclass(frozen=True)
class OutputPaths:
    """The files a run keeps beside its output ``out``. The error log is written as ``errors_partial`` and
    takes its final name (``errors``) right after the output, so once a run ends the log beside an output is
    that output's."""

    out: Path
    partial: Path
    progress: Path
    errors: Path
    errors_partial: Path
    lock: Path

    @classmethod
    def beside(cls, out: Path) -> "OutputPaths":
        return cls(out, *(out.with_name(out.name + suffix)
                          for suffix in (PARTIAL_SUFFIX, PROGRESS_SUFFIX, ERRORS_SUFFIX, ERRORS_SUFFIX + PARTIAL_SUFFIX,
                                         LOCK_SUFFIX)))

    def publish_errors(self, logged: bool) -> None:
        """Give the finished run's error log its final name, or, with nothing ``logged``, remove it and any log
        an earlier run left under that name. Run again after a kill that came between the two, it does nothing."""
        if logged:
            if self.errors_partial.exists():
                self.errors_partial.replace(self.errors)
        else:
            self.errors_partial.unlink(missing_ok=True)
            self.errors.unlink(missing_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``OUT.lock`` for a run, or refuse at once when another run holds it. The lock dies with its
        process, so a killed run never leaves the output locked; a run that ends removes the file."""
        refusal = ScoringSetupError("another stanceclf run is writing this output right now; wait for it to "
                                    "finish (its progress is safe), or choose another --out", where=str(self.out))
        with exclusive_lock(self.lock, timeout=0, refusal=refusal, remove=True):
            yield


def _model_description(model) -> bytes:
    return (f"backend:{getattr(model, 'backend', 'torch')}manifest:{manifest_digest(model.manifest)}"
            f"weights:{weights_digest(model.path)}").encode()


def model_signature(model, use: dict) -> str:
    """The model (weights, manifest, backend) and what its scores are for, as one digest: distillation
    keys its teachers' cached scores by it."""
    return hashlib.sha256(_model_description(model) + json.dumps(use, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class RunSignature:
    """What a resumed run must share with the interrupted one: the input files it reads (their
    :class:`~stanceclf.files.FileStamp`), the model (weights, manifest, backend) and the options that
    shape the output. Kept in parts, so that a refusal can say what changed."""

    inputs: str
    model: str
    backend: str
    options: dict

    @classmethod
    def of(cls, files: list[Path], model, options: dict) -> "RunSignature":
        stamps = json.dumps([FileStamp.of(file).as_list() for file in files]).encode()
        return cls(hashlib.sha256(stamps).hexdigest(), hashlib.sha256(_model_description(model)).hexdigest(),
                   getattr(model, "backend", "torch"), json.loads(json.dumps(options)))

    def as_dict(self) -> dict:
        return asdict(self)

    def refuse_other(self, stored, progress_file: Path) -> None:
        """Raise :class:`~stanceclf.errors.ResumeError` when ``stored`` (the signature in the progress
        file) is not this one, saying what changed and what to do."""
        if stored == self.as_dict():
            return
        if not isinstance(stored, dict) or set(stored) != set(self.as_dict()):
            raise ResumeError("an interrupted run of an older stanceclf left this progress file, and it cannot "
                              "tell what changed since; pass --overwrite to start again", where=str(progress_file))
        inputs_changed = stored["inputs"] != self.inputs
        backend_changed = stored["backend"] != self.backend
        model_changed = not backend_changed and stored["model"] != self.model  # another backend: another digest
        changes = ["the input files changed (edited, replaced, added or removed)"] if inputs_changed else []
        if backend_changed:
            changes.append(f"the backend was {stored['backend']}, now {self.backend}")
        if model_changed:
            changes.append("the model's weights or manifest changed")
        for name in [*self.options, *(name for name in stored["options"] if name not in self.options)]:
            before, now = stored["options"].get(name), self.options.get(name)
            if before != now:
                changes.append(f"--{name.replace('_', '-')} was {before!r}, now {now!r}")
        # The model's digest covers its backend: with another backend, a changed model cannot be told apart.
        same_model = " and the same model" if backend_changed else ""
        advice = ("the rows written so far cannot be continued: pass --overwrite to start again"
                  if inputs_changed or model_changed else f"rerun with the interrupted run's backend{same_model} "
                  "and options to resume it, or pass --overwrite to start again")
        raise ResumeError(f"an interrupted run left this progress file, but {'; '.join(changes)}: {advice}",
                          where=str(progress_file))
