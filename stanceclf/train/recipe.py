"""Training recipes: one validated TOML file per model the project trains.

A recipe names the schema, the annotated data (or a built dataset), the base
model and the hyper-parameters. Relative paths are resolved against the
recipe file's folder. It is validated completely before any work starts, and
command-line overrides (``--set training.epochs=3``) are validated the same way.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from stanceclf.model.base_models import DEFAULT_BASE
from stanceclf.data.dataset import AnnotationSource, BuildConfig
from stanceclf.errors import RecipeError, describe_validation_error, load_toml


class DataSection(AnnotationSource, BuildConfig):
    """The recipe's ``[data]``: what to read (:class:`AnnotationSource`) and how to build it
    (:class:`BuildConfig`, whose defaults are the only ones), or a dataset already built.

    The split seed defaults to the recipe's ``seed``; ``stanceclf build-dataset --recipe R``
    builds exactly this dataset. ``context = { previous = 1, next = 1, title = true }`` reads each
    sentence with its neighbours and its document's title (:mod:`stanceclf.data.context`); the saved
    model's manifest carries it, so that prediction reads the same.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: A folder written by ``stanceclf build-dataset``, instead of annotations.
    dataset: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "DataSection":
        sources = [bool(self.inputs), bool(self.train), self.dataset is not None]
        if sum(sources) != 1:
            raise ValueError("give exactly one of data.inputs, data.train (with data.dev), or data.dataset")
        if self.train and not self.dev:
            raise ValueError("data.train needs data.dev (used for early stopping and calibration)")
        if (self.dev or self.test) and not self.train:
            raise ValueError("data.dev and data.test go with data.train (fixed splits); with data.inputs the "
                             "splits come from data.split_ratios")
        if self.dataset is not None:
            built = (set(BuildConfig.model_fields) | set(AnnotationSource.model_fields)) - {"seed"}
            clashing = sorted(built & self.model_fields_set)
            if clashing:
                raise ValueError(f"data.dataset is already built, so {', '.join('data.' + k for k in clashing)} "
                                 "would be ignored: remove them, or build from the annotations instead")
        return self


class TrainingSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["full", "lora"] = "full"
    epochs: float = Field(default=6, gt=0)
    max_steps: int = -1
    learning_rate: float = Field(default=5e-5, gt=0, lt=1)
    batch_size: int = Field(default=16, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_length: int = Field(default=128, ge=8, le=512)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    #: Weight of positive examples in the BCE loss: none, sqrt(neg/pos), or neg/pos.
    pos_weight: Literal["none", "sqrt", "balanced"] = "sqrt"
    early_stopping_patience: int = Field(default=2, ge=0)
    eval_every: Literal["epoch"] | int = "epoch"
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.1, ge=0, lt=1)
    #: How a LoRA model is saved: merged into full weights (any tool loads it), or as the adapter alone
    #: plus the pinned base (a few MB; stanceclf, or peft with the base, loads it). See stanceclf.model.adapter.
    lora_storage: Literal["merged", "adapter"] = "merged"
    #: float16 halves the stored weights (the model still runs in float32).
    storage_dtype: Literal["float32", "float16"] = "float32"
    #: Arithmetic of the forward and backward passes: float32, or bfloat16 mixed precision
    #: (master weights stay float32); "auto" takes bf16 on a GPU or a CPU with native bfloat16.
    precision: Literal["float32", "bf16", "auto"] = "float32"
    #: Batches of sentences of about the same length, in a shuffled order (stanceclf.train.sampling),
    #: instead of random ones: far less padding, so fewer operations a step. Off by default, so that a
    #: recipe written before it still trains the same model. Resumes exactly, as random batches do.
    group_by_length: bool = False

    @field_validator("eval_every")
    @classmethod
    def _positive_steps(cls, value) -> Literal["epoch"] | int:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"must be 'epoch' or a positive number of steps, got {value}")
        return value

    @model_validator(mode="after")
    def _adapter_needs_lora(self) -> "TrainingSection":
        if self.lora_storage == "adapter" and self.method != "lora":
            raise ValueError("lora_storage = 'adapter' stores a LoRA adapter: it needs method = 'lora'")
        return self


class _SignedOnlyWhenSet(BaseModel):
    """A section whose options named in ``_only_when_set``, added after runs were first signed, are left out
    of its dump while unset: a recipe without them signs its runs exactly as before they existed, so that
    those runs' checkpoints and fold records are still reused."""

    _only_when_set: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _leave_out_unset(self, handler) -> dict:
        dumped = handler(self)
        for name in self._only_when_set:
            if getattr(self, name) is None:
                dumped.pop(name, None)
        return dumped


def _as_list(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


class DistillSection(_SignedOnlyWhenSet):
    """The recipe's ``[distill]``: train the model as a student of one or more teachers
    (stanceclf model directories), on its labelled data and on the teachers' calibrated
    probabilities for unlabelled sentences; see :mod:`stanceclf.train.distill`."""

    model_config = ConfigDict(extra="forbid")
    _only_when_set = ("teacher_folds_of", "max_unlabelled")

    #: A teacher's model directory, or a list of them (an ensemble: their calibrated probabilities are averaged).
    teacher: str | list[str]
    #: The recipe that trains each teacher, in the order of ``teacher``. ``stanceclf train`` reads only
    #: ``teacher``; cross-validation and learning curves train these recipes again on each fold's own
    #: training documents, since a teacher trained on all the data has seen every fold's test documents.
    teacher_recipe: str | list[str] | None = None
    #: Cross-validation folders of ``teacher_recipe`` run earlier with ``--keep-models``, one per teacher:
    #: their fold models teach the student's folds instead of being trained again. Each fold must be the
    #: student's (same data, split and teacher recipe): its signature is checked.
    teacher_folds_of: str | list[str] | None = None
    #: Unlabelled inputs (folders of .txt files, JSONL, CSV, Parquet), split with the student's splitter.
    unlabelled: list[str] = []
    input_format: Literal["auto", "txt", "jsonl", "csv", "parquet"] = "auto"
    text_field: str = "text"
    #: A bad unlabelled record (empty, not UTF-8, too long) stops the run, or is skipped and counted.
    on_error: Literal["stop", "skip"] = "stop"
    max_chars: int = Field(default=1_000_000, ge=1)
    #: At most this many distinct unlabelled sentences, drawn at random (the recipe's seed) from all those
    #: read: a large pool bounds what the teachers score and the student's epoch. None: all of them.
    max_unlabelled: int | None = Field(default=None, ge=1)
    #: Weight of the gold loss on labelled sentences; 1 - alpha weighs the soft loss against the teachers.
    alpha: float = Field(default=0.5, ge=0, lt=1)
    #: Also learn the teachers' probabilities on the labelled training sentences (besides their gold labels).
    soft_on_labelled: bool = False
    #: Noisy copies of each labelled training sentence for the teachers to score (words dropped, a window
    #: kept; :mod:`stanceclf.train.augment`): transfer text in the labelled data's genre. 0: none.
    augment_labelled: int = Field(default=0, ge=0)
    #: A student with fewer layers than its base: how many (spread evenly from the first: 3 of 6 keeps
    #: layers 0, 2, 4) or which ones (``[1, 3, 5]``). BERT and MPNet bases.
    student_layers: int | list[int] | None = None
    #: How the teachers run (``stanceclf score --backend``); scores are computed once and cached in the run folder.
    teacher_backend: str = "torch"
    teacher_batch_size: int = Field(default=64, ge=1)
    #: Where the teachers' scores are cached (default: the run folder's ``teacher-scores``). Students of one
    #: teacher can share a folder: its scores are keyed by the teacher's signature and by sentence.
    scores_dir: str | None = None

    @property
    def teachers(self) -> list[str]:
        return _as_list(self.teacher)

    @property
    def teacher_recipes(self) -> list[str]:
        return _as_list(self.teacher_recipe)

    @property
    def teacher_folds(self) -> list[str]:
        return _as_list(self.teacher_folds_of)

    @model_validator(mode="after")
    def _consistent(self) -> "DistillSection":
        from stanceclf.infer.backends import AUTO, BACKENDS

        if not self.teachers:
            raise ValueError("distill.teacher names no model directory")
        if self.teacher_recipe is not None and len(self.teacher_recipes) != len(self.teachers):
            raise ValueError(f"distill.teacher_recipe names {len(self.teacher_recipes)} recipe(s) for "
                             f"{len(self.teachers)} teacher(s): give one recipe per teacher, in the same order")
        if self.teacher_folds_of is not None and len(self.teacher_folds) != len(self.teacher_recipes):
            raise ValueError(f"distill.teacher_folds_of names {len(self.teacher_folds)} folder(s) for "
                             f"{len(self.teacher_recipes)} teacher recipe(s): give one cross-validation folder "
                             "per distill.teacher_recipe, in the same order")
        if not self.unlabelled and not self.soft_on_labelled and not self.augment_labelled:
            raise ValueError("distill needs unlabelled inputs (distill.unlabelled), distill.soft_on_labelled = "
                             "true or distill.augment_labelled: otherwise the teachers have nothing to teach")
        layers = self.student_layers
        if isinstance(layers, int) and layers < 1 or isinstance(layers, list) and (
                not layers or min(layers) < 0 or layers != sorted(set(layers))):
            raise ValueError(f"distill.student_layers must be a positive count or a non-empty, increasing list of "
                             f"layer numbers from 0, got {layers!r}")
        if self.teacher_backend not in (*BACKENDS, AUTO):
            raise ValueError(f"distill.teacher_backend must be one of {', '.join((*BACKENDS, AUTO))}, "
                             f"got {self.teacher_backend!r}")
        return self


class EvaluationSection(_SignedOnlyWhenSet):
    """The recipe's ``[evaluation]``: how ``stanceclf cross-validate`` and ``learning-curve`` split documents."""

    model_config = ConfigDict(extra="forbid")
    _only_when_set = ("keep_folds_of",)

    #: Document-grouped folds of k-fold cross-validation.
    folds: int = Field(default=5, ge=2)
    #: Source name -> document-id glob(s) (fnmatch) for leave-one-source-out; documents of no
    #: source are never tested, only trained on.
    sources: dict[str, str | list[str]] = {}
    #: Share of each fold's non-test documents held out as dev (early stopping, calibration);
    #: by default dev / (train + dev) of the data's split ratios.
    dev_fraction: float | None = Field(default=None, gt=0, lt=1)
    #: An earlier cross-validation's output folder (relative to the recipe): its documents keep the test
    #: fold they had there, and documents added since are spread over the folds around them, so that a
    #: model trained on grown data is compared with the earlier one fold by fold on the same test documents.
    keep_folds_of: str | None = None

    @field_validator("sources")
    @classmethod
    def _plain_source_names(cls, value) -> dict[str, str | list[str]]:
        # A source's name names its fold's files.
        bad = [name for name in value if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name)]
        if bad:
            raise ValueError(f"source names must be letters, digits, '-' and '_', starting with a letter or "
                             f"digit: {bad}")
        return value


class CalibrationSection(BaseModel):
    """The recipe's ``[calibration]``: where the saved model's temperatures and thresholds are fitted."""

    model_config = ConfigDict(extra="forbid")

    #: "dev": on the dev split; "cross-validation": on out-of-fold predictions over all training
    #: documents (``folds`` extra trainings), which transfer better than a small dev split's.
    thresholds: Literal["dev", "cross-validation"] = "dev"
    folds: int = Field(default=5, ge=2)


class Recipe(BaseModel):
    """A validated training recipe."""

    model_config = ConfigDict(extra="forbid")

    name: str
    schema_name: str = Field(alias="schema")
    base_model: str = DEFAULT_BASE
    output_dir: str
    run_dir: str | None = None
    seed: int = 13
    data: DataSection
    training: TrainingSection = TrainingSection()
    distill: DistillSection | None = None
    evaluation: EvaluationSection = EvaluationSection()
    calibration: CalibrationSection = CalibrationSection()
    source: str | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _split_seed_follows_recipe_seed(cls, data) -> Any:
        if isinstance(data, dict) and isinstance(data.get("data"), dict) and "seed" not in data["data"]:
            data = {**data, "data": {**data["data"], "seed": data.get("seed", 13)}}
        return data

    @model_validator(mode="after")
    def _out_of_fold_students_have_teacher_recipes(self) -> "Recipe":
        if (self.distill is not None and self.calibration.thresholds == "cross-validation"
                and not self.distill.teacher_recipes):
            raise ValueError("calibration.thresholds = 'cross-validation' with [distill] needs distill.teacher_recipe: "
                             "each out-of-fold student learns from teachers trained on its own documents")
        return self

    @model_validator(mode="after")
    def _students_read_sentences_alone(self) -> "Recipe":
        if self.distill is not None and self.data.context.enabled:
            raise ValueError("data.context with [distill]: the teachers' scores are cached per sentence, without "
                             "context, so a student cannot learn from them what it reads with context; remove "
                             "one of the two")
        return self

    @model_validator(mode="after")
    def _adapter_fits_its_base(self) -> "Recipe":
        if (self.training.lora_storage == "adapter" and self.distill is not None
                and self.distill.student_layers is not None):
            raise ValueError("training.lora_storage = 'adapter' stores weights relative to the base, but "
                             "distill.student_layers drops some of the base's layers: use lora_storage = 'merged'")
        return self

    @property
    def schema_path(self) -> str | Path:
        """The schema as ``load_schema`` takes it: a shipped name, or a path resolved against the recipe."""
        name = self.schema_name
        return self.resolve(name) if name.endswith(".toml") or "/" in name else name

    def resolve(self, path: str) -> Path:
        """A path from the recipe, relative to the recipe file's folder."""
        p = Path(path).expanduser()
        if p.is_absolute() or self.source is None:
            return p
        return (Path(self.source).parent / p).resolve()

    @property
    def run_path(self) -> Path:
        return self.resolve(self.run_dir) if self.run_dir else self.resolve(self.output_dir).with_name(
            self.resolve(self.output_dir).name + ".run")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe file, applying ``section.key=value`` overrides."""
    path = Path(path)
    data = load_toml(path, RecipeError, "recipe")
    for override in overrides or []:
        apply_override(data, override, where=str(path))
    try:
        return Recipe.model_validate({**data, "source": str(path.resolve())})
    except ValidationError as exc:
        raise RecipeError(describe_validation_error(exc), where=str(path)) from None


def apply_override(data: dict, override: str, *, where: str = "") -> None:
    """Set ``a.b=value`` in nested ``data``; the value is parsed as TOML, else kept as a string."""
    if "=" not in override:
        raise RecipeError(f"override {override!r} must look like section.key=value", where=where)
    key, raw = override.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    parts = key.strip().split(".")
    target = data
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise RecipeError(f"override {override!r}: {part!r} is not a section", where=where)
    target[parts[-1]] = value
