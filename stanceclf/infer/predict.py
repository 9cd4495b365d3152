"""The public prediction API: :func:`classify` and :func:`load`.

``classify(text)`` with no model loads the shipped default model once per
process (thread-safe) and works offline.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from stanceclf.errors import ModelDirectoryError
from stanceclf.infer.results import Prediction, RowSpec
from stanceclf.infer.model import StanceModel

if TYPE_CHECKING:
    import pandas as pd

# Where the shipped models live: models/ in a source checkout, stanceclf/shipped_models/ once installed.
_SHIPPED_MODEL_ROOTS = (
    Path(__file__).resolve().parents[2] / "models",
    Path(__file__).resolve().parents[1] / "shipped_models",
)
#: What ``load()`` and ``classify()`` run when given no model.
DEFAULT_MODEL = "claim-types"
_cache: dict[tuple[str, bool], StanceModel] = {}
_cache_lock = threading.Lock()


def shipped_model_path(name: str = DEFAULT_MODEL) -> Path:
    """The directory of a model shipped with stanceclf: ``"claim-types"`` (the default) or
    ``"claim-types-student"`` (the fast distilled MiniLM model)."""
    for root in _SHIPPED_MODEL_ROOTS:
        if (root / name / "stanceclf.json").exists():
            return root / name
    shipped = sorted({d.name for root in _SHIPPED_MODEL_ROOTS if root.is_dir()
                      for d in root.iterdir() if (d / "stanceclf.json").exists()})
    raise ModelDirectoryError(f"{name!r} is neither a model directory nor a shipped model (shipped: "
                              f"{', '.join(shipped) or 'none'}); looked in "
                              + ", ".join(str(root / name) for root in _SHIPPED_MODEL_ROOTS))


def default_model_path() -> Path:
    """The shipped default model's directory."""
    return shipped_model_path(DEFAULT_MODEL)


def model_path(model: str | Path | None) -> Path:
    """The directory ``model`` names: a folder, the name of a shipped model, or None for the default.
    A model folder (one with ``stanceclf.json``) wins over a shipped model of the same name."""
    if model is None:
        return default_model_path()
    path = Path(model).expanduser()
    if len(path.parts) != 1 or (path / "stanceclf.json").exists():
        return path
    try:
        return shipped_model_path(str(model))
    except ModelDirectoryError:
        if path.exists():
            return path  # not a model: the directory's own checks say what is missing
        raise


def load(path: str | Path | None = None, *, fast: bool | str = False) -> StanceModel:
    """Load a model directory, or a shipped model by name (the default when ``path`` is None).

    Loaded models are cached per (directory, backend): calling ``load`` again is
    free, and concurrent first calls from several threads load it once. Every backend
    of one directory shares one copy of the weights.

    ``fast=True`` runs the fastest path on this machine that passes the gate: on the first fast load of a
    model, the seed articles' 224 sentences are scored with each available backend; one that changes more
    than 1% of fp32's label decisions on them, or makes the process hold more than 1.5x fp32's memory, is
    dropped, and the fastest of the rest (fp32 among them) is kept; the choice is cached per machine and
    model (see :mod:`stanceclf.infer.backends`). The check covers that sample only. ``fast="bf16"``,
    ``"onnx"`` or ``"int8"`` picks one outright.
    """
    from stanceclf.infer.backends import resolve_backend

    directory = model_path(path)
    backend = resolve_backend(fast)
    key = (str(directory.resolve()), backend)
    with _cache_lock:
        if key not in _cache:
            fp32 = _cache.get((key[0], "torch"))
            if fp32 is None and backend != "torch":
                # A graph this machine built before may run without reading the torch weights at all.
                fast_model = _cache[key] = StanceModel.from_pretrained(directory, fast=backend)
                if fast_model.torch_loaded:  # read the usual way: fp32 shares its weights
                    _cache[(key[0], "torch")] = fast_model.on_encoder(None, "torch")
            else:
                if fp32 is None:
                    fp32 = _cache[(key[0], "torch")] = StanceModel.from_pretrained(directory)
                _cache[key] = fp32 if backend == "torch" else fp32.accelerated(backend)
        return _cache[key]


def classify(texts, *, model: StanceModel | str | Path | None = None, split_sentences: bool = True,
             batch_size: int = 64) -> list[Prediction] | list[list[Prediction]]:
    """Classify a text (-> list of :class:`Prediction`) or a list of texts (-> list of lists).

    Each prediction has ``text``, ``start``, ``end`` (offsets into its input),
    ``labels`` (those at or above the model's per-label thresholds) and
    ``scores`` (a calibrated probability for every label of the schema).
    """
    if not isinstance(model, StanceModel):
        model = load(model)
    return model.classify(texts, split_sentences=split_sentences, batch_size=batch_size)


def to_records(predictions, *, doc_ids=None) -> list[dict]:
    """Flatten predictions (one list, or a list of lists) into plain dicts with the columns
    of ``stanceclf score`` (:class:`~stanceclf.infer.results.RowSpec`): ``doc_id`` (``doc_ids[i]``,
    or the input's position), ``sentence_index``, ``start``, ``end``, ``text``, ``labels``, and one
    ``score_<label>`` per label."""
    if predictions and isinstance(predictions[0], Prediction):
        predictions = [predictions]
    if doc_ids is not None and len(doc_ids) != len(predictions):
        raise ValueError(f"{len(doc_ids)} doc_ids for {len(predictions)} documents")
    first = next((p for doc in predictions for p in doc), None)
    if first is None:
        return []
    spec = RowSpec(tuple(first.scores))
    return [row for position, doc in enumerate(predictions)
            for row in spec.rows(doc_ids[position] if doc_ids is not None else position, doc)]


def to_dataframe(predictions, *, doc_ids=None) -> pd.DataFrame:
    """Predictions as a pandas DataFrame, one row per sentence."""
    import pandas as pd

    return pd.DataFrame.from_records(to_records(predictions, doc_ids=doc_ids))
