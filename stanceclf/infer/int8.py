"""The ``int8`` backend: OpenVINO running a static int8 graph that NNCF quantised under accuracy control.

For CPUs with int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX) and no native bfloat16, where
the fp32 path is already near the machine's fp32 peak. How it is built, once per model, machine and
library versions (about 25 s for the student and 2 to 3 min for the MPNet default on 2 cores):

1. the torch model is converted to an OpenVINO graph (``openvino.convert_model``, eager attention);
2. NNCF's ``quantize_with_accuracy_control`` quantises it statically (transformer preset: activations
   per tensor, weights per channel, softmax and layer norms kept in float), calibrated on in-genre
   sentences (:func:`calibration_texts`: the five seed news articles shipped with the package, or the
   caller's), and keeps the most sensitive layers in float until the metric bound holds. The metric is
   what users see: the share of label decisions (sentence x label, the model's own temperatures and
   thresholds) that equal fp32's on those sentences; the bound is :data:`MAX_DECISIONS_CHANGED`;
3. the result is checked once more through the real prediction path and refused (a
   :class:`~stanceclf.errors.BackendError`) if it still changes more than the bound;
4. the graph is kept in the cache folder (``openvino/<key>/``, the four most recently used), so a later
   load only compiles it.

Non-quantised operations run in float32 (``INFERENCE_PRECISION_HINT``), also on CPUs that have bfloat16,
so the scores do not depend on which of those a machine has.
Needs ``pip install 'stanceclf[int8]'`` (openvino and nncf).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from stanceclf.cache import cache_dir, evict_least_recent
from stanceclf.errors import BackendError
from stanceclf.files import folder_replaced_atomically
from stanceclf.infer.graph_key import model_graph_key
from stanceclf.model.decision import decide, probabilities
from stanceclf.model.manifest import manifest_digest

# The functions below take an fp32 ``StanceModel`` (``model``); it is not imported here, since
# stanceclf.infer.model reaches this module through the backends table.

#: The largest share of label decisions (sentence x label) that the int8 graph may change from fp32's.
MAX_DECISIONS_CHANGED = 0.01
QUANTIZED_FOLDER = "openvino"
#: Quantised graphs kept, the most recently used (the default's is about 120 MB).
GRAPHS_KEPT = 4
GRAPH_NAME = "model.xml"
REPORT_NAME = "quantization.json"
#: Sentences a calibration batch holds (NNCF collects its statistics per batch).
CALIBRATION_BATCH = 32
log = logging.getLogger(__name__)


def int8_installed() -> bool:
    """Whether OpenVINO and NNCF are importable (the ``int8`` extra)."""
    return importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None


def seed_articles_folder() -> Path:
    """The five seed news articles: ``examples/seeds`` in a source checkout, ``stanceclf/shipped_examples/seeds``
    once installed."""
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "shipped_examples" / "seeds", package.parent / "examples" / "seeds"):
        if folder.is_dir():
            return folder
    raise BackendError("the seed articles the int8 backend calibrates on are missing from this installation "
                       f"(looked in {package / 'shipped_examples' / 'seeds'}); pass calibration texts instead")


def calibration_texts(model) -> list[str]:
    """In-genre calibration sentences: the seed articles, split by the model's own splitter (224 sentences
    with the shipped models)."""
    from stanceclf.data.documents import read_document_text

    texts = []
    for path in sorted(seed_articles_folder().glob("*.txt")):
        texts += [span.text for span in model.split(read_document_text(path))]
    return texts


@dataclass
class QuantizationReport:
    """What one build measured, kept beside the graph."""

    sentences: int
    decisions: int
    decisions_changed: int
    max_logit_change: float
    seconds: float
    openvino: str
    nncf: str

    @property
    def changed_share(self) -> float:
        return self.decisions_changed / self.decisions if self.decisions else 0.0


class Int8Encoder:
    """Callable ``(input_ids, attention_mask) -> logits`` running the cached int8 graph in OpenVINO."""

    def __init__(self, graph: Path, *, threads: int | None = None):
        import openvino as ov

        self.graph = graph
        self.report = _read_report(graph.parent)
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(str(graph), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, input_ids, attention_mask) -> np.ndarray:
        result = self.request.infer({"input_ids": np.asarray(input_ids, dtype=np.int64),
                                     "attention_mask": np.asarray(attention_mask, dtype=np.int64)})
        return np.array(result[self.compiled.output(0)], dtype=np.float32)


def int8_encoder(model, *, threads: int | None = None, texts: list[str] | None = None,
                 echo: Callable[[str], None] | None = None) -> Int8Encoder:
    """The int8 encoder of ``model`` (an fp32 :class:`StanceModel`), quantised on ``texts`` (default:
    :func:`calibration_texts`) or read from the cache when this model was quantised here before."""
    if not int8_installed():
        raise BackendError("the int8 backend needs OpenVINO and NNCF: pip install 'stanceclf[int8]'")
    texts = list(texts) if texts is not None else calibration_texts(model)
    if len(texts) < CALIBRATION_BATCH:
        raise BackendError(f"int8 calibration needs at least {CALIBRATION_BATCH} sentences; got {len(texts)}")
    folder = cache_dir() / QUANTIZED_FOLDER / _quantized_key(model, texts)
    graph = folder / GRAPH_NAME
    if graph.is_file():
        try:
            encoder = Int8Encoder(graph, threads=threads)
            os.utime(folder)  # recently used: the last to be evicted
            return encoder
        except Exception as exc:  # a truncated or foreign graph: build it again
            log.info("the cached int8 graph %s cannot be used (%s): quantising again", graph, exc)
    (echo or log.warning)(f"quantising the model to int8 on {len(texts)} calibration sentences, once per model "
                          "and machine (about 25 s for a 6-layer model, 2 to 3 min for a 12-layer one on 2 cores)")
    with folder_replaced_atomically(folder) as work:
        _quantize(model, texts, work, threads)
    evict_least_recent(folder.parent, "*", GRAPHS_KEPT)
    return Int8Encoder(graph, threads=threads)


def _quantize(model, texts: list[str], out: Path, threads: int | None) -> None:
    import nncf
    import openvino as ov

    started = time.perf_counter()
    batches = _batches(model, texts)
    reference = model.predict_logits(texts)
    reference_decisions = decide(probabilities(reference, model.temperature_vector), model.threshold_vector)

    def agreement(compiled, items) -> float:
        # NNCF passes the raw items, all of them or (when ranking layers) a subset.
        same = total = 0
        for rows, inputs in items:
            decisions = decide(probabilities(compiled(inputs)[0], model.temperature_vector), model.threshold_vector)
            same += int((decisions == reference_decisions[rows]).sum())
            total += decisions.size
        return same / total if total else 1.0

    dataset = nncf.Dataset(batches, lambda item: item[1])
    with _quiet_nncf():
        graph = _openvino_graph(model)
        quantized = nncf.quantize_with_accuracy_control(
            graph, calibration_dataset=dataset, validation_dataset=dataset, validation_fn=agreement,
            max_drop=MAX_DECISIONS_CHANGED, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(texts),
            model_type=nncf.ModelType.TRANSFORMER)
    ov.save_model(quantized, str(out / GRAPH_NAME))
    # The bound checked again through the path users run, not NNCF's own bookkeeping.
    logits = model.on_encoder(Int8Encoder(out / GRAPH_NAME, threads=threads), "int8").predict_logits(texts)
    decisions = decide(probabilities(logits, model.temperature_vector), model.threshold_vector)
    report = QuantizationReport(
        sentences=len(texts), decisions=int(decisions.size),
        decisions_changed=int((decisions != reference_decisions).sum()),
        max_logit_change=round(float(abs(logits - reference).max()), 4),
        seconds=round(time.perf_counter() - started, 1), openvino=ov.__version__, nncf=nncf.__version__)
    if report.changed_share > MAX_DECISIONS_CHANGED:
        raise BackendError(f"int8 quantisation changed {report.decisions_changed} of {report.decisions} label "
                           f"decisions on the calibration sentences ({report.changed_share:.1%}), more than the "
                           f"{MAX_DECISIONS_CHANGED:.0%} allowed: not used")
    (out / REPORT_NAME).write_text(json.dumps(asdict(report), indent=1) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF logs each step at INFO and draws rich bars on stdout: the caller's output stays its own."""
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        nncf_log.setLevel(level)


def _openvino_graph(model):
    import openvino as ov
    import torch

    from stanceclf.model.native import transformers_model

    eager = transformers_model(model.model).float().eval()
    try:  # NNCF's transformer patterns match eager attention, not SDPA's
        eager.set_attn_implementation("eager")
    except (ValueError, AttributeError):
        pass
    example = {"input_ids": torch.ones((2, 8), dtype=torch.long),
               "attention_mask": torch.ones((2, 8), dtype=torch.long)}
    with torch.inference_mode():
        return ov.convert_model(eager, example_input=example)


def _batches(model, texts: list[str]) -> list[tuple[list[int], dict]]:
    """Length-sorted, padded batches of ``texts`` as the prediction path makes them: ``(rows, inputs)``."""
    ids, _ = model.tokenize(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pad = model.tokenizer.pad_token_id or 0
    batches = []
    for start in range(0, len(order), CALIBRATION_BATCH):
        rows = order[start:start + CALIBRATION_BATCH]
        width = max(len(ids[i]) for i in rows)
        input_ids = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for row, i in enumerate(rows):
            input_ids[row, :len(ids[i])] = ids[i]
            mask[row, :len(ids[i])] = 1
        batches.append((rows, {"input_ids": input_ids, "attention_mask": mask}))
    return batches


def _quantized_key(model, texts: list[str]) -> str:
    """What a quantised graph depends on: the model's weights and manifest, the calibration sentences,
    the bound, and the library versions."""
    extra = {"manifest": manifest_digest(model.manifest), "bound": MAX_DECISIONS_CHANGED,
             "texts": hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()}
    return model_graph_key(model.model, ("openvino", "nncf"), extra)[:32]


def _read_report(folder: Path) -> QuantizationReport | None:
    try:
        return QuantizationReport(**json.loads((folder / REPORT_NAME).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
