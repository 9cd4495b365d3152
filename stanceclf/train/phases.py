"""The phases of a training, which :func:`stanceclf.train.trainer.train` runs in order and every fold of a
cross-validation runs too (:mod:`stanceclf.train.fold_runner`):

1. data (:func:`prepared_data`), and the base (:func:`seeded_base_model`, :func:`load_base_tokenizer`);
   1b. distillation, for recipes with ``[distill]`` (:func:`distillation_phase`);
2. a transformers ``Trainer`` (:func:`make_trainer`): a multi-label head trained with BCE on logits,
   positive-class weighting for rare labels, dynamic padding, early stopping on dev macro-F1 (its count
   kept in the checkpoints), checkpoints every evaluation;
3. fitting (:func:`fit`), resuming the last checkpoint of the same run;
4. calibration and evaluation (:func:`calibrate_and_evaluate`): per-label temperatures and thresholds
   fitted on dev (or given: out-of-fold calibration, :mod:`stanceclf.train.out_of_fold`), metrics per split;
5. the manifest (:func:`final_manifest`) and 6. saving (:func:`save`).

:func:`fit_and_calibrate` runs phases 2 to 4 on any train/dev split.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stanceclf.data.context import ContextSettings
from stanceclf.data.dataset import built_contexts, from_annotations, load_built_dataset, statistics
from stanceclf.data.readers import ReadReport
from stanceclf.data.schema import LabelSchema
from stanceclf.data.sentences import SentenceSplitter
from stanceclf.errors import RecipeError
from stanceclf.infer.model import PairEncoder, StanceModel
from stanceclf.model.adapter import LoraAdapter, with_lora
from stanceclf.model.architectures import architecture_of
from stanceclf.model.base_models import resolve_base
from stanceclf.model.decision import decide, probabilities
from stanceclf.model.manifest import ModelManifest
from stanceclf.model.metrics import expected_calibration_error, multilabel_report
from stanceclf.progress import library_output, progress_bar, wants_progress
from stanceclf.train.calibration import calibrate
from stanceclf.train.recipe import Recipe
from stanceclf.train.sampling import ShuffledLengthGroupSampler
from stanceclf.train.signature import checkpoint_step, checkpoint_to_resume

if TYPE_CHECKING:
    import datasets
    import transformers

    from stanceclf.train.distill import Distillation

log = logging.getLogger(__name__)


# ---- 1. data and base ---------------------------------------------------------------------------
def prepare_dataset(recipe: Recipe, schema: LabelSchema) -> tuple[datasets.DatasetDict, dict, ReadReport]:
    """Build (or load) the dataset the recipe names: ``(DatasetDict, build info, read report)``."""
    data = recipe.data
    report = ReadReport()
    if data.dataset is not None:
        dataset, info = load_built_dataset(recipe.resolve(data.dataset))
        if info["schema"]["labels"] != schema.to_dict()["labels"]:
            raise RecipeError(f"the dataset at {data.dataset} was built with another schema than {schema.name!r}",
                              where=recipe.source)
        if recipe.distill is not None and data_context(info).enabled:  # as the recipe's own data.context is
            raise RecipeError(f"the dataset at {data.dataset} was built with context, and [distill] trains on the "
                              "teachers' scores of sentences read alone: build it without data.context, or train "
                              "without [distill]", where=recipe.source)
        return dataset, info, report
    dataset, info = from_annotations(data, schema, data, resolve=recipe.resolve, report=report)
    return dataset, info, report


def prepared_data(recipe: Recipe, schema: LabelSchema) -> tuple[datasets.DatasetDict, dict]:
    """Phase 1: the dataset, with a train and a dev split that are not empty: ``(DatasetDict, build info)``."""
    dataset, info, read_report = prepare_dataset(recipe, schema)
    if read_report.skipped:
        log.warning("%s", read_report.summary())
    for split in ("train", "dev"):
        if split not in dataset or len(dataset[split]) == 0:
            raise RecipeError(f"the {split} split is empty; check data inputs and split_ratios", where=recipe.source)
    return dataset, info


def data_splitter(info: dict) -> SentenceSplitter:
    """The splitter the dataset was built with (from its build info)."""
    return SentenceSplitter.model_validate(info["build_config"]["splitter"])


def data_context(info: dict) -> ContextSettings:
    """The context the dataset's sentences are read with (from its build info; none recorded: none)."""
    return ContextSettings.model_validate(info["build_config"].get("context", {}))


def build_base_model(base: str, schema: LabelSchema, *, config=None) -> transformers.PreTrainedModel:
    """A sequence-classification model with a fresh multi-label head for ``schema``.

    ``config`` (a transformers config) builds a randomly initialised model in
    process instead of loading weights: the tests' tiny models.
    """
    from transformers import AutoModelForSequenceClassification

    labels = schema.label_names
    head = dict(num_labels=len(labels), problem_type="multi_label_classification",
                id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    if config is not None:
        for key, value in head.items():
            setattr(config, key, value)
        return AutoModelForSequenceClassification.from_config(config)
    with library_output("transformers", "huggingface_hub"):
        return AutoModelForSequenceClassification.from_pretrained(
            resolve_base(base), trust_remote_code=False, use_safetensors=True, **head)


def seeded_base_model(recipe: Recipe, schema: LabelSchema) -> transformers.PreTrainedModel:
    """The recipe's base model with a fresh head whose initial weights follow the recipe's seed, so that
    two trainings of one recipe (or its cross-validation folds) start from the same weights."""
    from transformers import set_seed

    set_seed(recipe.seed)
    return build_base_model(recipe.base_model, schema)


def load_base_tokenizer(base: str) -> transformers.PreTrainedTokenizerBase:
    """The tokenizer of a base model as a recipe names it."""
    from transformers import AutoTokenizer

    with library_output("transformers", "huggingface_hub"):
        return AutoTokenizer.from_pretrained(resolve_base(base), trust_remote_code=False)


# ---- 1b. distillation ---------------------------------------------------------------------------
def distillation_phase(recipe: Recipe, schema: LabelSchema, dataset, splitter: SentenceSplitter, model,
                       progress: bool) -> Distillation:
    """Phase 1b (recipes with ``[distill]``): the student's layers (``model`` is cut in place), and its
    training rows with the teachers' cached scores (:mod:`stanceclf.train.distill`). The sentences of
    every split of ``dataset`` are left out of the unlabelled ones."""
    from stanceclf.train.distill import prepare_distillation, student_model

    _, kept = student_model(model, recipe.distill.student_layers)
    distillation = prepare_distillation(recipe, schema, dataset, splitter, progress=progress)
    distillation.record["student_layers"] = kept
    return distillation


# ---- 2. the Trainer -----------------------------------------------------------------------------
def positive_weights(label_matrix: np.ndarray, mode: str) -> np.ndarray:
    """Per-label weight of positives in the BCE loss, from train-split frequencies."""
    positives = label_matrix.sum(axis=0).astype(np.float64)
    negatives = len(label_matrix) - positives
    ratio = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    if mode == "none":
        return np.ones_like(ratio)
    return np.sqrt(ratio) if mode == "sqrt" else ratio


def _make_trainer_class():
    import torch
    from transformers import Trainer

    class WeightedBCETrainer(Trainer):
        """BCE on logits with a positive-class weight per label (and, distilling, a weight per row)."""

        # compute_loss returns a plain per-batch mean: the Trainer must divide it by the
        # gradient accumulation steps (it skips that for models that take loss kwargs).
        loss_is_scaled_for_ga = False

        def __init__(self, *args, pos_weight=None, group_by_length=False, **kwargs):
            super().__init__(*args, **kwargs)
            self.pos_weight = torch.tensor(pos_weight, dtype=torch.float32) if pos_weight is not None else None
            self.group_by_length = group_by_length

        def _get_train_sampler(self, train_dataset=None):
            # transformers' length grouping leaves each run of 50 batches sorted long to short: ours shuffles
            # the batches (stanceclf.train.sampling).
            if not self.group_by_length:
                return super()._get_train_sampler(train_dataset)
            rows = train_dataset if train_dataset is not None else self.train_dataset
            return ShuffledLengthGroupSampler([len(ids) for ids in rows["input_ids"]], self._train_batch_size,
                                              seed=self.args.seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            # Distillation rows carry a weight each (gold and soft rows mixed, see stanceclf.train.distill);
            # their labels may be probabilities in [0, 1].
            row_weight = inputs.pop("weight", None)
            outputs = model(**inputs)
            weight = self.pos_weight.to(outputs.logits.device) if self.pos_weight is not None else None
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                outputs.logits, labels.float(), pos_weight=weight, reduction="mean" if row_weight is None else "none")
            if row_weight is not None:
                loss = (loss.mean(dim=1) * row_weight.to(loss.dtype)).mean()
            return (loss, outputs) if return_outputs else loss

    return WeightedBCETrainer


def _dev_macro_f1(eval_prediction) -> dict:
    """Early stopping's measure: macro F1 at probability 0.5, before calibration."""
    logits, labels = eval_prediction
    logits = np.asarray(logits)
    predicted = decide(probabilities(logits, np.ones(logits.shape[1])), np.full(logits.shape[1], 0.5))
    report = multilabel_report(np.asarray(labels), predicted, [str(i) for i in range(predicted.shape[1])])
    # A dev split without positives of any label has no macro F1: nothing to stop early on, so 0.
    return {"macro_f1": report["macro"]["f1"] or 0.0, "micro_f1": report["micro"]["f1"]}


def _training_arguments(recipe: Recipe, progress: bool):
    from transformers import TrainingArguments

    settings = recipe.training
    strategy = "epoch" if settings.eval_every == "epoch" else "steps"
    steps = settings.eval_every if strategy == "steps" else None
    return TrainingArguments(
        output_dir=str(recipe.run_path),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=64,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a ratio of all steps
        eval_strategy=strategy, save_strategy=strategy, eval_steps=steps, save_steps=steps,
        logging_strategy=strategy, logging_steps=steps,
        load_best_model_at_end=True, metric_for_best_model="macro_f1", greater_is_better=True,
        save_total_limit=2, seed=recipe.seed, data_seed=recipe.seed,
        # A resumed run goes on counting early stopping's evaluations without improvement from where the
        # checkpoint left it (the count is saved with each checkpoint, but restored only when asked).
        restore_callback_states_from_checkpoint=True,
        # Bars only on a terminal: in a log each redraw is a line of noise.
        report_to=[], disable_tqdm=not (progress and wants_progress()), use_cpu=_use_cpu(),
        bf16=_use_bf16(settings.precision),
        # No train_sampling_strategy: length grouping is the trainer's own sampler (_get_train_sampler).
        dataloader_num_workers=0,
        # The encoded splits hold only what the loss reads; a distillation row's "weight" is not a model input.
        remove_unused_columns=False,
    )


def make_trainer(recipe: Recipe, model, tokenizer, dataset, progress: bool, *, train_rows=None) -> transformers.Trainer:
    """Phase 2: a transformers ``Trainer`` over the tokenized splits (:func:`encoded_inputs`), with weighted BCE
    and early stopping. ``train_rows`` (distillation) replaces the train split: targets in [0, 1] and a
    ``weight`` per row."""
    from datasets import DatasetDict
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback

    settings = recipe.training
    if settings.method == "lora":
        model = _wrap_lora(model, settings)
    pairs = PairEncoder(tokenizer) if "context" in dataset["train"].column_names else None

    def encode(batch):
        encoded = encoded_inputs(tokenizer, pairs, batch, settings.max_length)
        encoded["labels"] = [[float(v) for v in row] for row in batch["labels"]]
        if "weight" in batch:
            encoded["weight"] = batch["weight"]
        return encoded

    splits = {"train": train_rows if train_rows is not None else dataset["train"], "dev": dataset["dev"]}
    with library_output("datasets", progress=progress and wants_progress(sum(map(len, splits.values())))):
        encoded = DatasetDict({name: split.map(encode, batched=True, remove_columns=split.column_names, desc=None)
                               for name, split in splits.items()})
    # Positive weights from the gold labels only: the teachers' probabilities are targets, not counts.
    pos_weight = positive_weights(np.array(dataset["train"]["labels"], dtype=np.float32), settings.pos_weight)
    callbacks = [EarlyStoppingCallback(settings.early_stopping_patience)] if settings.early_stopping_patience else []
    if progress and not wants_progress():  # the Trainer's own bar is for terminals (disable_tqdm)
        callbacks.append(_step_lines())
    return _make_trainer_class()(
        model=model, args=_training_arguments(recipe, progress), train_dataset=encoded["train"],
        eval_dataset=encoded["dev"], data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=_dev_macro_f1, callbacks=callbacks, pos_weight=pos_weight,
        group_by_length=settings.group_by_length)


def _step_lines():
    """A callback that writes the optimisation steps' progress as a line a minute (:func:`progress_bar`): in a
    log file a training of hours would otherwise say nothing between its per-epoch metrics."""
    from transformers import TrainerCallback

    class StepLines(TrainerCallback):
        bar = loss = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:  # one process's lines, as the Trainer's own bar
                # A resumed run starts at its checkpoint's step: the rate and time left count this run's steps.
                self.bar = progress_bar(state.max_steps, desc="training", unit=" steps", initial=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.set_postfix(self._shown(state), refresh=False)
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            # Logs come after the step's on_step_end: the mean loss of the period just ended.
            if self.bar is not None and logs and "loss" in logs:
                self.loss = float(logs["loss"])
                self.bar.set_postfix(self._shown(state), refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is None:
                return
            if self.bar.n < self.bar.total:  # early stopping: the steps left will not run
                self.bar.set_description_str("training (stopped early)", refresh=False)  # no ": " added
                self.bar.total = self.bar.n
            self.bar.close()
            self.bar = None

        def _shown(self, state) -> dict:
            shown = {"epoch": f"{state.epoch or 0:.2f}"}
            if self.loss is not None:
                shown["loss"] = f"{self.loss:.4f}"
            return shown

    return StepLines()


def encoded_inputs(tokenizer, pairs: PairEncoder | None, batch: dict, max_length: int) -> dict:
    """The model inputs of a batch of dataset rows: its ``text`` alone, or with ``pairs`` (a dataset built
    with context) each text with its ``context``, encoded as prediction encodes it (:class:`PairEncoder`)."""
    if pairs is None:
        # No token_type_ids: serving never passes them (all zeros), and MPNet has none.
        return tokenizer(batch["text"], truncation=True, max_length=max_length, return_token_type_ids=False)
    ids, _ = pairs(batch["text"], batch["context"], max_length)
    return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}


def _wrap_lora(model, settings):
    try:
        from peft import LoraConfig, TaskType
    except ImportError:
        raise RecipeError("training.method = 'lora' needs peft (a dependency of stanceclf): "
                          "pip install 'peft>=0.12'") from None
    targets = architecture_of(model.config).lora_targets
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=settings.lora_r, lora_alpha=settings.lora_alpha,
                        lora_dropout=settings.lora_dropout,
                        target_modules=targets if isinstance(targets, str) else list(targets))
    return with_lora(model, config)


def _use_bf16(precision: str) -> bool:
    import torch

    if precision == "auto":
        from stanceclf.infer.backends import native_bf16_supported

        return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else native_bf16_supported()
    return precision == "bf16"


def _use_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


# ---- 3. fitting ---------------------------------------------------------------------------------
def fit(trainer, recipe: Recipe, fingerprint: str, resume: bool
        ) -> tuple[transformers.PreTrainedModel, LoraAdapter | None]:
    """Phase 3: fine-tune (resuming a checkpoint of this very run); ``(model, adapter)``: the plain float32-ready
    model, and its LoRA adapter when the recipe stores one."""
    checkpoint = checkpoint_to_resume(recipe, fingerprint, recipe.run_path, resume, trainer.args.process_index == 0)
    if checkpoint:
        log.warning("resuming from %s", checkpoint)
    # The log history comes back with a resumed checkpoint: the manifest times only this session's steps.
    trainer.resumed_from_step = checkpoint_step(checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    # Under mixed precision accelerate wraps forward in autocast; the saved model runs without it.
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    if recipe.training.method != "lora":
        return model, None
    adapter = LoraAdapter.from_peft(model, recipe.base_model) if recipe.training.lora_storage == "adapter" else None
    return model.merge_and_unload(), adapter


# ---- 4. calibration and evaluation --------------------------------------------------------------
def calibrate_and_evaluate(model, tokenizer, dataset, schema: LabelSchema, max_length: int,
                           calibration=None) -> StanceModel:
    """Phase 4: temperatures and thresholds fitted on dev (unless ``calibration`` gives them), and metrics
    per split, from logits computed by the very code that serves the model (``StanceModel.predict_logits``:
    float32, same truncation)."""
    labels = schema.label_names
    provisional = ModelManifest(label_schema=schema, thresholds={l: 0.5 for l in labels},
                                temperatures={l: 1.0 for l in labels}, max_length=max_length, base_model="")
    served = StanceModel(model, tokenizer, provisional)
    # Each sentence with the context it was trained with (the dataset's), by the model's own encoding.
    logits = {name: served.predict_logits(list(dataset[name]["text"]), contexts=built_contexts(dataset[name]))
              for name in ("dev", "test") if name in dataset and len(dataset[name])}
    truth = {name: np.array(dataset[name]["labels"]) for name in logits}
    temperatures, thresholds = calibration if calibration is not None else calibrate(logits["dev"], truth["dev"])
    served.manifest = provisional.model_copy(update={
        "thresholds": dict(zip(labels, map(float, thresholds))),
        "temperatures": dict(zip(labels, map(float, temperatures))),
        "metrics": {name: evaluate_logits(logits[name], truth[name], labels, temperatures, thresholds)
                    for name in logits}})
    return served


def evaluate_logits(logits, y_true, labels, temperatures, thresholds) -> dict:
    """The report of logits under given temperatures and thresholds, with the ECE before and after them."""
    uncalibrated = probabilities(logits, np.ones(len(labels)))
    calibrated = probabilities(logits, np.asarray(temperatures))
    report = multilabel_report(y_true, decide(calibrated, thresholds), labels, calibrated)
    report["ece_before_calibration"] = expected_calibration_error(y_true, uncalibrated)
    report["ece_after_calibration"] = expected_calibration_error(y_true, calibrated)
    return report


def fit_and_calibrate(recipe: Recipe, dataset, schema: LabelSchema, *, model, tokenizer, fingerprint: str,
                      resume: bool = True, progress: bool = True, calibration=None, train_rows=None
                      ) -> tuple[StanceModel, transformers.Trainer]:
    """Phases 2 to 4 on a given ``DatasetDict`` (train, dev, optionally test): ``(StanceModel, trainer)``,
    nothing saved. Checkpoints go to ``recipe.run_path``; ``fingerprint`` names the data they belong to.
    ``calibration`` (temperatures, thresholds) replaces fitting them on dev; ``train_rows`` (distillation)
    replaces the train split's rows."""
    trainer = make_trainer(recipe, model, tokenizer, dataset, progress, train_rows=train_rows)
    fitted, adapter = fit(trainer, recipe, fingerprint, resume)
    result = calibrate_and_evaluate(fitted, tokenizer, dataset, schema, recipe.training.max_length, calibration)
    result.adapter = adapter
    return result, trainer


# ---- 5. manifest and 6. saving ------------------------------------------------------------------
def final_manifest(result: StanceModel, recipe: Recipe, info: dict, dataset, trainer, elapsed: float, *,
                   distillation: dict | None = None) -> ModelManifest:
    """Phase 5: the manifest, with provenance (recipe, data, teachers, wall time, memory)."""
    labels = result.labels
    extra = {"distillation": distillation} if distillation else {}
    return result.manifest.model_copy(update={
        # The splitter and context the data was built with (a prebuilt dataset records its own).
        "splitter": data_splitter(info),
        "context": data_context(info),
        "base_model": recipe.base_model,
        "data_fingerprint": info["fingerprint"],
        "training": {"recipe": recipe.model_dump(mode="json", by_alias=True), "wall_seconds": round(elapsed, 1),
                     **_fit_timing(trainer), "epochs_run": float(trainer.state.epoch or 0),
                     "best_checkpoint": _checkpoint_name(trainer.state.best_model_checkpoint), "peak_rss_mb": _peak_rss_mb(),
                     "statistics": statistics(dataset, LabelSchema.from_labels(labels)),
                     "documents": info["documents"], **extra}})


def _fit_timing(trainer) -> dict:
    """The Trainer's own clocks for this session's steps (after ``resumed_from_step`` if it resumed): the
    fine-tuning loop (its last ``train_runtime``) and the dev evaluations inside it."""
    start = getattr(trainer, "resumed_from_step", 0)
    history = trainer.state.log_history
    fit_runtimes = [entry["train_runtime"] for entry in history if "train_runtime" in entry]
    evaluations = [entry["eval_runtime"] for entry in history
                   if "eval_runtime" in entry and entry.get("step", 0) > start]
    return {"fit_seconds": round(float(fit_runtimes[-1]) if fit_runtimes else 0.0, 2),
            "dev_evaluation_seconds": round(float(sum(evaluations)), 2),
            "steps": int(trainer.state.global_step), "resumed_from_step": start}


def _checkpoint_name(path: str | None) -> str | None:
    """The best checkpoint's folder name within the run folder: the manifest travels, this machine's paths don't."""
    return Path(path).name if path else None


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def save(result: StanceModel, recipe: Recipe, info: dict, trainer) -> None:
    """Phase 6 (the main process only): the model directory, and the dataset's build info in the run folder."""
    if trainer.is_world_process_zero():
        result.save_pretrained(recipe.resolve(recipe.output_dir), storage_dtype=recipe.training.storage_dtype)
        (recipe.run_path / "dataset-info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
