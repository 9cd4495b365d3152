"""The training harness: recipe -> dataset -> fine-tuned, calibrated model directory.

Fine-tuning uses the transformers ``Trainer`` (so ``accelerate launch`` with
several processes works unchanged): a multi-label head trained with BCE on
logits, positive-class weighting for rare labels, dynamic padding, early
stopping on dev macro-F1, checkpoints every evaluation and resumption from the
last one. After training, per-label temperatures and thresholds are fitted on
dev, the test split is evaluated, and the model directory is written.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from .base_models import resolve_base
from .calibration import calibrate
from .dataset import build_dataset, load_built_dataset
from .errors import RecipeError
from .metrics import expected_calibration_error, multilabel_report
from .model import ModelManifest, StanceModel, _quiet_transformers, probabilities
from .readers import ReadReport, read_annotations
from .recipe import Recipe
from .schema import LabelSchema, load_schema
from .sentences import SentenceSplitter

log = logging.getLogger(__name__)


def prepare_dataset(recipe: Recipe, schema: LabelSchema):
    """Build (or load) the dataset the recipe names: ``(DatasetDict, build info, read report)``."""
    data = recipe.data
    report = ReadReport()
    if data.dataset is not None:
        dataset, info = load_built_dataset(recipe.resolve(data.dataset))
        if info["schema"]["labels"] != schema.to_dict()["labels"]:
            raise RecipeError(f"the dataset at {data.dataset} was built with another schema than {schema.name!r}",
                              where=recipe.source)
        return dataset, info, report

    def read(paths):
        return read_annotations(data.format, [recipe.resolve(p) for p in paths], labels=schema.label_names,
                                label_map=data.label_map, strict=data.strict, report=report)

    config = data.build_config(recipe.seed)
    if data.inputs:
        dataset, info = build_dataset(read(data.inputs), schema, config)
    else:
        fixed = {name: read(paths) for name, paths in (("train", data.train), ("dev", data.dev), ("test", data.test))
                 if paths}
        dataset, info = build_dataset([], schema, config, fixed_splits=fixed)
    return dataset, info, report


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
        """BCE on logits with a positive-class weight per label."""

        # compute_loss returns a plain per-batch mean: the Trainer must divide it by the
        # gradient accumulation steps (it skips that for models that take loss kwargs).
        loss_is_scaled_for_ga = False

        def __init__(self, *args, pos_weight=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.pos_weight = torch.tensor(pos_weight, dtype=torch.float32) if pos_weight is not None else None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            weight = self.pos_weight.to(outputs.logits.device) if self.pos_weight is not None else None
            loss = torch.nn.functional.binary_cross_entropy_with_logits(outputs.logits, labels.float(),
                                                                        pos_weight=weight)
            return (loss, outputs) if return_outputs else loss

    return WeightedBCETrainer


def _dev_macro_f1(eval_prediction) -> dict:
    logits, labels = eval_prediction
    predicted = (np.asarray(logits) > 0).astype(int)  # probability 0.5 before calibration
    report = multilabel_report(np.asarray(labels), predicted, [str(i) for i in range(predicted.shape[1])])
    return {"macro_f1": report["macro"]["f1"], "micro_f1": report["micro"]["f1"]}


def build_base_model(base: str, schema: LabelSchema, *, config=None):
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
    with _quiet_transformers():
        return AutoModelForSequenceClassification.from_pretrained(
            resolve_base(base), trust_remote_code=False, use_safetensors=True, **head)


def train(recipe: Recipe, *, model=None, tokenizer=None, resume: bool = True, progress: bool = True) -> StanceModel:
    """Run a recipe end to end and return the saved :class:`StanceModel`.

    ``model``/``tokenizer`` replace the base model (tests pass tiny ones).
    With ``resume``, a run folder holding checkpoints continues from the last.
    """
    from transformers import AutoTokenizer, DataCollatorWithPadding, EarlyStoppingCallback, TrainingArguments
    started = time.time()
    schema = load_schema(recipe.resolve(recipe.schema_name) if recipe.schema_name.endswith(".toml")
                         else recipe.schema_name)
    dataset, info, read_report = prepare_dataset(recipe, schema)
    if read_report.skipped:
        log.warning("%s", read_report.summary())
    for split in ("train", "dev"):
        if split not in dataset or len(dataset[split]) == 0:
            raise RecipeError(f"the {split} split is empty; check data inputs and split_ratios", where=recipe.source)
    settings = recipe.training
    if tokenizer is None:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(resolve_base(recipe.base_model), trust_remote_code=False)
    if model is None:
        model = build_base_model(recipe.base_model, schema)
    if settings.method == "lora":
        model = _wrap_lora(model, settings)

    def encode(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=settings.max_length)
        encoded["labels"] = [[float(v) for v in row] for row in batch["labels"]]
        return encoded

    columns = dataset["train"].column_names
    encoded = dataset.map(encode, batched=True, remove_columns=columns, desc=None)
    train_labels = np.array(dataset["train"]["labels"], dtype=np.float32)
    pos_weight = positive_weights(train_labels, settings.pos_weight)

    run_dir = recipe.run_path
    strategy = "epoch" if settings.eval_every == "epoch" else "steps"
    steps = settings.eval_every if strategy == "steps" else None
    args = TrainingArguments(
        output_dir=str(run_dir),
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
        report_to=[], disable_tqdm=not progress, use_cpu=_use_cpu(), bf16=_use_bf16(settings.precision),
        dataloader_num_workers=0,
    )
    trainer_class = _make_trainer_class()
    callbacks = [EarlyStoppingCallback(settings.early_stopping_patience)] if settings.early_stopping_patience else []
    trainer = trainer_class(
        model=model, args=args, train_dataset=encoded["train"], eval_dataset=encoded["dev"],
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=_dev_macro_f1,
        callbacks=callbacks, pos_weight=pos_weight,
    )
    checkpoint = _checkpoint_to_resume(recipe, info["fingerprint"], run_dir, resume, args.process_index == 0)
    if checkpoint:
        log.warning("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)

    # Under mixed precision accelerate wraps forward in autocast; the saved model runs without it.
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    if settings.method == "lora":
        model = model.merge_and_unload()
    # Thresholds, temperatures and metrics come from float32 logits, as the saved model runs
    # in float32 whatever precision trained it.
    collator = DataCollatorWithPadding(tokenizer)
    dev_logits = _float32_logits(model, encoded["dev"], collator)
    dev_labels = np.array(dataset["dev"]["labels"])
    temperatures, thresholds = calibrate(dev_logits, dev_labels)
    labels = schema.label_names
    metrics = {"dev": _evaluate_logits(dev_logits, dev_labels, labels, temperatures, thresholds)}
    if "test" in encoded and len(encoded["test"]):
        test_logits = _float32_logits(model, encoded["test"], collator)
        metrics["test"] = _evaluate_logits(test_logits, np.array(dataset["test"]["labels"]), labels, temperatures,
                                           thresholds)
    elapsed = time.time() - started
    manifest = ModelManifest(
        label_schema=schema,
        thresholds=dict(zip(labels, map(float, thresholds))),
        temperatures=dict(zip(labels, map(float, temperatures))),
        max_length=settings.max_length,
        # The splitter the data was built with (a prebuilt dataset records its own).
        splitter=SentenceSplitter.model_validate(info["build_config"]["splitter"]),
        base_model=recipe.base_model,
        data_fingerprint=info["fingerprint"],
        metrics=metrics,
        training={"recipe": recipe.model_dump(mode="json", by_alias=True), "wall_seconds": round(elapsed, 1),
                  "epochs_run": float(trainer.state.epoch or 0), "best_checkpoint": trainer.state.best_model_checkpoint,
                  "peak_rss_mb": _peak_rss_mb(), "statistics": _split_sizes(dataset, labels),
                  "documents": info["documents"]},
    )
    result = StanceModel(model, tokenizer, manifest)
    if trainer.is_world_process_zero():
        out = recipe.resolve(recipe.output_dir)
        if settings.storage_dtype == "float16":
            _save_half(result, out)
        else:
            result.save_pretrained(out)
        (run_dir / "dataset-info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return result


RUN_SIGNATURE = "run-signature.json"


def _run_signature(recipe: Recipe, fingerprint: str) -> dict:
    """What a checkpoint must share with the run that resumes it (output paths may differ)."""
    dumped = recipe.model_dump(mode="json", by_alias=True)
    dumped.pop("output_dir", None)
    dumped.pop("run_dir", None)
    return {"recipe": dumped, "data_fingerprint": fingerprint}


def _checkpoint_to_resume(recipe: Recipe, fingerprint: str, run_dir: Path, resume: bool, main_process: bool):
    """The checkpoint to continue from, if any, after checking that it belongs to this recipe and data."""
    from transformers.trainer_utils import get_last_checkpoint

    signature = _run_signature(recipe, fingerprint)
    signature_path = run_dir / RUN_SIGNATURE
    checkpoints = sorted(run_dir.glob("checkpoint-*")) if run_dir.is_dir() else []
    if checkpoints and not resume:
        if main_process:
            import shutil

            log.warning("--no-resume: removing %d checkpoint(s) of an earlier run in %s", len(checkpoints), run_dir)
            for folder in checkpoints:
                shutil.rmtree(folder, ignore_errors=True)
        checkpoints = []
    if checkpoints:
        recorded = json.loads(signature_path.read_text(encoding="utf-8")) if signature_path.exists() else None
        if recorded != signature:
            if recorded is None:
                what = "checkpoints with no record of the run that wrote them"
            else:
                changed = [k for k in signature["recipe"] if recorded["recipe"].get(k) != signature["recipe"][k]]
                if recorded.get("data_fingerprint") != fingerprint:
                    changed.append("the data")
                what = f"checkpoints of another run (it differs in {', '.join(changed)})"
            raise RecipeError(f"the run folder holds {what}; resuming would mix two runs. Pass --no-resume to "
                              "start again, or set run_dir to a new folder", where=str(run_dir))
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        signature_path.write_text(json.dumps(signature, indent=2, sort_keys=True), encoding="utf-8")
    return get_last_checkpoint(str(run_dir)) if checkpoints else None


def _float32_logits(model, split, collator, batch_size: int = 64) -> np.ndarray:
    import torch

    device = next(model.parameters()).device
    model.eval()
    blocks = []
    with torch.inference_mode(), torch.autocast(device.type, enabled=False):
        for begin in range(0, len(split), batch_size):
            batch = collator([split[i] for i in range(begin, min(begin + batch_size, len(split)))])
            batch.pop("labels", None)
            blocks.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy())
    return np.concatenate(blocks) if blocks else np.zeros((0, model.config.num_labels), dtype=np.float32)


def _evaluate_logits(logits, y_true, labels, temperatures, thresholds) -> dict:
    uncalibrated = probabilities(logits, np.ones(len(labels), dtype=np.float32))
    calibrated = probabilities(logits, np.asarray(temperatures, dtype=np.float32))
    predicted = (calibrated >= np.asarray(thresholds)).astype(int)
    report = multilabel_report(y_true, predicted, labels, calibrated)
    report["ece_before_calibration"] = expected_calibration_error(y_true, uncalibrated)
    report["ece_after_calibration"] = expected_calibration_error(y_true, calibrated)
    return report


def _split_sizes(dataset, labels) -> list[dict]:
    from .dataset import statistics

    return statistics(dataset, LabelSchema.from_labels(labels))


def _save_half(result: StanceModel, out: Path) -> None:
    """Store weights in float16 (half the bytes) while the config keeps float32 as the
    run dtype, so every loader (ours and ``pipeline``) computes in float32."""
    import torch

    result.model.to(torch.float16)
    try:
        result.save_pretrained(out)
    finally:
        result.model.to(torch.float32)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = "float32"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _wrap_lora(model, settings):
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise RecipeError("training.method = 'lora' needs peft: pip install 'stanceclf[lora]'") from None
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=settings.lora_r, lora_alpha=settings.lora_alpha,
                        lora_dropout=settings.lora_dropout, target_modules=["query", "key", "value", "dense"])
    return get_peft_model(model, config)


def _use_bf16(precision: str) -> bool:
    import torch

    if precision == "auto":
        from .fast_path import native_bf16_supported

        return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else native_bf16_supported()
    return precision == "bf16"


def _use_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
