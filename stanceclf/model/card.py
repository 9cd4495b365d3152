"""The generated model card (``README.md`` in every saved model directory)."""

from __future__ import annotations

from pathlib import Path

from stanceclf.data.dataset import format_statistics
from stanceclf.model.metrics import format_report

#: A hand-written section a project can add to a model's card: ``CARD_NOTES.md``
#: beside the model directory's README (failure modes with real examples, data sources).
NOTES_FILE = "CARD_NOTES.md"


def render_model_card(manifest, notes: str = "") -> str:
    schema = manifest.label_schema
    lines = [
        "---",
        "library_name: stanceclf",
        "pipeline_tag: text-classification",
        "tags: [multi-label, claim-types, news]",
        "language: [en]",
        "---",
        f"# stanceclf model: {schema.name} (schema v{schema.version})",
        "",
        "Sentence-level multi-label classifier made with [stanceclf](https://pypi.org/project/stanceclf/). "
        "Load it with `stanceclf.load(DIR)` (calibrated scores, tuned thresholds, sentence splitting) or with "
        + ("`transformers.pipeline('text-classification', model=DIR, top_k=None)` (raw sigmoid scores, no thresholds)."
           if manifest.stored_weights is None else _adapter_note(manifest.stored_weights)),
        "",
        "## Labels",
        "",
    ]
    for label in schema.labels:
        threshold = manifest.thresholds[label.name]
        temperature = manifest.temperatures[label.name]
        lines.append(f"- **{label.name}** (threshold {threshold:.3f}, temperature {temperature:.2f}): "
                     + " ".join(label.definition.split()))
    lines += ["", "## Training", "",
              f"- Base model: `{manifest.base_model}`",
              f"- Max length: {manifest.max_length} tokens; sentence splitter: `{manifest.splitter.backend}`",
              f"- Data fingerprint: `{manifest.data_fingerprint}`"]
    training = manifest.training or {}
    recipe = training.get("recipe", {})
    if recipe:
        settings = recipe.get("training", {})
        lines.append(f"- Recipe `{recipe.get('name')}`: method {settings.get('method')}, "
                     f"lr {settings.get('learning_rate')}, batch {settings.get('batch_size')}, "
                     f"epochs up to {settings.get('epochs')} (ran {training.get('epochs_run')}), seed {recipe.get('seed')}")
    distilled = training.get("distillation")
    if distilled:
        teachers = ", ".join(f"`{t['path']}` (base `{t['base_model']}`"
                             + (f", recipe `{t['recipe']}`" if t.get("recipe") else "") + ")"
                             for t in distilled["teachers"])
        kept = f"; layers {distilled['student_layers']} of the base kept" if distilled.get("student_layers") else ""
        lines.append(f"- Distilled from {teachers}: alpha {distilled['alpha']} (weight of the gold loss), "
                     f"{distilled['soft_rows']} sentences with the teachers' probabilities{kept}")
    if "wall_seconds" in training:
        lines.append(f"- Training wall time {training['wall_seconds']} s, peak RSS {training.get('peak_rss_mb')} MB")
    if training.get("statistics"):
        lines += ["", "Data (sentences and positives per split):", "", format_statistics(training["statistics"])]
    lines += ["", "## Metrics", ""]
    for split, report in (manifest.metrics or {}).items():
        lines += [format_report(report, title=f"{split} split (calibrated scores, tuned thresholds)"), ""]
        if "ece_before_calibration" in report:
            lines += [f"Expected calibration error on {split}: {report['ece_before_calibration']:.4f} before, "
                      f"{report['ece_after_calibration']:.4f} after temperature scaling.", ""]
    lines += ["## Versions", ""]
    lines += [f"- {name} {version}" for name, version in sorted(manifest.library_versions.items())]
    lines += ["", "## Limits", "",
              "- Trained on English news and opinion articles; other genres and languages are untested.",
              "- Labels are sentence-level; a claim spread over several sentences is scored per sentence.",
              "- Scores are calibrated on " + _calibrated_on(training) + "; calibration may drift on other sources."]
    if notes.strip():
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def _adapter_note(stored) -> str:
    return ("`transformers.pipeline` on the plain folder that `stanceclf export DIR OUT` writes. This directory "
            f"holds a LoRA adapter, not every weight: loading (with peft, a dependency of stanceclf) "
            f"adds it to the base `{stored.base}`, whose `model.safetensors` must have sha256 `{stored.base_sha256}`.")


def _calibrated_on(training: dict) -> str:
    calibration = training.get("calibration") or {}
    if calibration.get("method") == "cross-validation":
        return (f"out-of-fold predictions over the {calibration.get('documents')} training documents "
                f"({calibration.get('folds')} folds)")
    return "the dev split"


def write_model_card(directory: Path, manifest) -> Path:
    notes_path = directory / NOTES_FILE
    notes = notes_path.read_text(encoding="utf-8") if notes_path.exists() else ""
    path = directory / "README.md"
    path.write_text(render_model_card(manifest, notes), encoding="utf-8")
    return path
