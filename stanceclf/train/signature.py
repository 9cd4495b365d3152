"""What a run's checkpoints (and a cross-validation's fold records) must share with the run that reuses
them: its run signature, and the checkpoint a run resumes once the signature is checked.

Every recipe option is signed but the paths (``output_dir``, ``run_dir``) and where a distilling run's
teachers and their scores are found (its fingerprint names the teachers by their weights instead).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from stanceclf.errors import RecipeError
from stanceclf.train.recipe import Recipe

log = logging.getLogger(__name__)

RUN_SIGNATURE = "run-signature.json"
#: Part of every signature: raise it when what a signature covers changes, so that what an earlier
#: format signed is recognised as such. 1 (no number): options added after the first records were
#: left out at their first value (``training.group_by_length``) or always (``training.lora_storage``).
SIGNATURE_FORMAT = 2

#: Where a teacher is found, what trained it and where its scores are cached: a distilling run's
#: fingerprint names the teachers by their weights instead (``+distill:<signature>``).
TEACHER_LOCATIONS = ("teacher", "teacher_recipe", "teacher_folds_of", "scores_dir")


def run_signature(recipe: Recipe, fingerprint: str) -> dict:
    """What a checkpoint must share with the run that resumes it (output paths may differ)."""
    dumped = recipe.model_dump(mode="json", by_alias=True)
    dumped.pop("output_dir", None)
    dumped.pop("run_dir", None)
    if dumped.get("distill"):
        for key in TEACHER_LOCATIONS:
            dumped["distill"].pop(key, None)
    return {"format": SIGNATURE_FORMAT, "recipe": dumped, "data_fingerprint": fingerprint}


def signature_format(signed: dict) -> int:
    """The format a signature or a signed record was made under (1: before signatures had a number)."""
    return signed.get("format", 1)


def checkpoint_to_resume(recipe: Recipe, fingerprint: str, run_dir: Path, resume: bool,
                         main_process: bool) -> str | None:
    """The checkpoint to continue from, if any, after checking that it belongs to this recipe and data.
    Without ``resume`` the checkpoints of an earlier run are removed."""
    from transformers.trainer_utils import get_last_checkpoint

    signature = run_signature(recipe, fingerprint)
    signature_path = run_dir / RUN_SIGNATURE
    checkpoints = sorted(run_dir.glob("checkpoint-*")) if run_dir.is_dir() else []
    if checkpoints and not resume:
        if main_process:
            log.warning("--no-resume: removing %d checkpoint(s) of an earlier run in %s", len(checkpoints), run_dir)
            for folder in checkpoints:
                shutil.rmtree(folder, ignore_errors=True)
        checkpoints = []
    if checkpoints:
        recorded = json.loads(signature_path.read_text(encoding="utf-8")) if signature_path.exists() else None
        if recorded != signature:
            raise RecipeError(f"the run folder holds {_whose(recorded, signature)}; resuming would mix two runs. "
                              "Pass --no-resume to start again, or set run_dir to a new folder", where=str(run_dir))
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        signature_path.write_text(json.dumps(signature, indent=2, sort_keys=True), encoding="utf-8")
    return get_last_checkpoint(str(run_dir)) if checkpoints else None


def _whose(recorded: dict | None, signature: dict) -> str:
    """Whose checkpoints a run folder holds, when they are not the run's."""
    if recorded is None:
        return "checkpoints with no record of the run that wrote them"
    if signature_format(recorded) != SIGNATURE_FORMAT:
        return (f"checkpoints signed by an earlier stanceclf (signature format {signature_format(recorded)}, "
                f"now {SIGNATURE_FORMAT})")
    changed = [k for k in signature["recipe"] if recorded["recipe"].get(k) != signature["recipe"][k]]
    if recorded.get("data_fingerprint") != signature["data_fingerprint"]:
        changed.append("the data")
    return f"checkpoints of another run (it differs in {', '.join(changed)})"


def checkpoint_step(checkpoint: str | None) -> int:
    """The training step a checkpoint folder (``checkpoint-<step>``) was saved at; 0 for none."""
    return int(Path(checkpoint).name.rsplit("-", 1)[1]) if checkpoint else 0
