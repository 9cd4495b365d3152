"""The training harness: recipe -> dataset -> fine-tuned, calibrated model directory.

:func:`train` runs the phases of :mod:`stanceclf.train.phases` in order: data, out-of-fold calibration
when the recipe asks for it (``[calibration] thresholds = "cross-validation"``, see
:mod:`stanceclf.train.out_of_fold`), distillation when the recipe has ``[distill]``, the Trainer, fit,
calibrate and evaluate, manifest, save. Fine-tuning uses the transformers ``Trainer``, so
``accelerate launch`` with several processes works unchanged.
"""

from __future__ import annotations

import time

from stanceclf.data.schema import load_schema
from stanceclf.errors import RecipeError
from stanceclf.infer.model import StanceModel
from stanceclf.model.adapter import base_weights_sha256
from stanceclf.train.out_of_fold import recipe_calibration
from stanceclf.train.phases import (data_splitter, distillation_phase, final_manifest, fit_and_calibrate,
                                    load_base_tokenizer, prepared_data, save, seeded_base_model)
from stanceclf.train.recipe import Recipe


def train(recipe: Recipe, *, model=None, tokenizer=None, resume: bool = True, progress: bool = True) -> StanceModel:
    """Run a recipe end to end and return the saved :class:`StanceModel`.

    ``model``/``tokenizer`` replace the base model (tests pass tiny ones).
    With ``resume``, a run folder holding checkpoints continues from the last.
    """
    started = time.time()
    pinned_base = _adapter_base_sha256(recipe, model)
    schema = load_schema(recipe.schema_path)
    dataset, info = prepared_data(recipe, schema)
    tokenizer = tokenizer or load_base_tokenizer(recipe.base_model)
    model = model or seeded_base_model(recipe, schema)
    splitter = data_splitter(info)
    # Before the distillation phase cuts the student's layers: each out-of-fold model starts from the base.
    out_of_fold = recipe_calibration(recipe, dataset, schema, model=model, tokenizer=tokenizer,
                                     fingerprint=info["fingerprint"], resume=resume, progress=progress,
                                     splitter=splitter)
    distillation = (distillation_phase(recipe, schema, dataset, splitter, model, progress)
                    if recipe.distill else None)
    fingerprint = info["fingerprint"] + (f"+distill:{distillation.signature}" if distillation else "")
    result, trainer = fit_and_calibrate(recipe, dataset, schema, model=model, tokenizer=tokenizer,
                                        fingerprint=fingerprint, resume=resume, progress=progress,
                                        calibration=out_of_fold.fitted if out_of_fold else None,
                                        train_rows=distillation.train_rows if distillation else None)
    if result.adapter is not None and result.adapter.base_sha256 != pinned_base:
        raise RecipeError(f"the weights of the base {recipe.base_model!r} changed while the model trained "
                          f"(sha256 {pinned_base} before, {result.adapter.base_sha256} after): an adapter of "
                          "this run would pin weights it was not trained on; nothing was saved")
    result.manifest = final_manifest(result, recipe, info, dataset, trainer, time.time() - started,
                                     distillation=distillation.record if distillation else None)
    result.manifest.training["calibration"] = out_of_fold.record if out_of_fold else {"method": "dev"}
    save(result, recipe, info, trainer)
    return result


def _adapter_base_sha256(recipe: Recipe, model) -> str | None:
    """The digest an adapter of this run will pin, taken before training: a base it cannot pin (no single
    model.safetensors) fails now, not after hours, and weights swapped during training are caught."""
    if recipe.training.lora_storage != "adapter":
        return None
    if model is not None:
        raise RecipeError("training.lora_storage = 'adapter' stores the model relative to the recipe's "
                          f"base_model ({recipe.base_model!r}), but another model was passed to train(): "
                          "use lora_storage = 'merged'")
    return base_weights_sha256(recipe.base_model)
