"""The ``int8`` backend: OpenVINO running an int8 graph that NNCF built, static where that keeps decisions.

For CPUs with int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX) and no native bfloat16, where
the fp32 path is already near the machine's fp32 peak. How it is built, once per model, machine and
library versions (measured on 2 shared cores: about 1 min for the student, 2 to 6 min for the MPNet default):

1. the torch model is converted to an OpenVINO graph (``openvino.convert_model``, eager attention);
2. NNCF's ``quantize_with_accuracy_control`` quantises it statically (transformer preset: activations
   per tensor, weights per channel, softmax and layer norms kept in float), calibrated on in-genre
   sentences (:func:`calibration_units`: the five seed news articles shipped with the package, or the
   caller's documents, each sentence with the context the model reads), one sentence at a time, and keeps
   the most sensitive layers in float until the metric holds. The metric is what users see: the share of
   label decisions (sentence x label, the model's own temperatures and thresholds) that equal fp32's on
   those sentences; the target is :data:`QUANTIZATION_TARGET`, the gate itself;
3. the result is checked once more through the real prediction path. A static graph that changes more
   than :data:`STATIC_CALIBRATION_BOUND` (half the gate) of the decisions on the calibration sentences
   would change more on other text, so it is replaced by the dynamic kind: int8 weights
   (``nncf.compress_weights``) and activations quantised per group of :data:`DYNAMIC_GROUP_SIZE` at run
   time by OpenVINO, which is more accurate and slower. Either is refused (a
   :class:`~stanceclf.errors.BackendError`) if it changes more than :data:`MAX_DECISIONS_CHANGED` (1%).
   Which kind was built is in the report beside the graph;
4. the graph is kept in the cache folder (``openvino/<key>/``, the four most recently used), so a later
   load only compiles it.

A model read from a directory is quantised in a child process (:mod:`stanceclf.infer.int8_build`), which
reads it from there: NNCF's peak memory stays out of the caller's process, and
``StanceModel.from_pretrained(path, fast="int8")`` never reads the torch weights.

Non-quantised operations run in float32 (``INFERENCE_PRECISION_HINT``), also on CPUs that have bfloat16,
so the scores do not depend on which of those a machine has.
Needs ``pip install 'stanceclf[int8]'`` (openvino and nncf).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from stanceclf.cache import cache_dir, evict_least_recent
import stanceclf.errors as errors
from stanceclf.errors import BackendError, StanceclfError
from stanceclf.files import exclusive_lock, folder_replaced_atomically, stamped_sha256
from stanceclf.infer.graph_key import model_graph_key, package_version, thread_setting
from stanceclf.infer.padding import padded_arrays
from stanceclf.model.decision import decide, probabilities
from stanceclf.model.layout import weights_file
from stanceclf.model.manifest import ModelManifest, manifest_digest
from stanceclf.progress import library_output

# The functions below take an fp32 ``StanceModel`` (``model``); it is not imported here, since
# stanceclf.infer.model reaches this module through the backends table.

#: The largest share of label decisions (sentence x label) that the int8 graph may change from fp32's on
#: the calibration sentences: checked when it is built, and the gate ``fast=True`` applies to every backend.
MAX_DECISIONS_CHANGED = 0.01
#: What NNCF's accuracy control aims for on the calibration sentences: the gate. Aiming lower did not carry
#: over to other text: on the default's test split 1.14% of decisions changed at the gate, 1.11% at half of
#: it (360 s to build instead of about 130), and a build aiming at no change did not end in 20 minutes.
QUANTIZATION_TARGET = 0.01
#: The share of decisions a *static* graph may change on the calibration sentences; one that changes more is
#: replaced by the dynamic kind. Half the gate: on text it was not calibrated on a static graph changed 1.4 to
#: 2.5 times its calibration share (the default: 0.89% on the seeds, 1.21% on its test split, 1.50% on the
#: 4,827 batch-3 sentences; the student: 0.30% and 0.74%), while the dynamic kind stayed under 0.6% on both
#: samples (``benchmarks/results/int8-backend-vnni.md``).
STATIC_CALIBRATION_BOUND = MAX_DECISIONS_CHANGED / 2
#: Activations quantised at run time in groups of this many values (OpenVINO's dynamic quantisation of
#: fully connected layers with int8 weights): 128 changed 0.46 to 0.51% of the default's decisions at about
#: twice fp32's speed, 32 changed 0.37 to 0.43% at 1.75 times (1 thread, measured side by side).
DYNAMIC_GROUP_SIZE = 128
#: How a graph is quantised (settings in this module); a cached graph of another format is built again.
QUANTIZATION_FORMAT = 6
QUANTIZED_FOLDER = "openvino"
#: Quantised graphs kept, the most recently used (the default's is about 120 MB).
GRAPHS_KEPT = 4
#: Hex digits of a graph folder's name.
KEY_LENGTH = 32
GRAPH_NAME = "model.xml"
REPORT_NAME = "quantization.json"
#: Sentences per validation batch (what accuracy control scores repeatedly).
VALIDATION_BATCH = 32
#: Seconds to wait for another process quantising the same model before quantising here too.
LOCK_TIMEOUT = 1800
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


def seed_articles() -> list[str]:
    """The seed articles' texts, in file-name order."""
    from stanceclf.data.documents import read_document_text

    return [read_document_text(path) for path in sorted(seed_articles_folder().glob("*.txt"))]


def calibration_units(model, documents: list[str] | None = None) -> list:
    """What the model reads of ``documents`` (default: the seed articles): its units, each sentence with the
    context its manifest asks for (224 sentences of the seeds with the shipped models)."""
    return model.units(seed_articles() if documents is None else list(documents))


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
    #: ``static``: weights and activations quantised with ranges fixed on the calibration sentences;
    #: ``dynamic``: int8 weights, activations quantised per group at run time (more accurate, slower).
    method: str = "static"
    #: The dynamic kind's run-time group size (OpenVINO's ``DYNAMIC_QUANTIZATION_GROUP_SIZE``); 0: static.
    group_size: int = 0
    #: What the static graph changed, when it was replaced by the dynamic one.
    static_decisions_changed: int | None = None

    @property
    def changed_share(self) -> float:
        return self.decisions_changed / self.decisions if self.decisions else 0.0


class Int8Encoder:
    """Callable ``(input_ids, attention_mask) -> logits`` running the cached int8 graph in OpenVINO. One
    infer request per thread: a request is not safe to share (the server scores and explains at once)."""

    def __init__(self, graph: Path, *, threads: int | None = None, report: QuantizationReport | None = None):
        """``report``: how the graph was built (default: the one saved beside it), which sets how it runs."""
        import openvino as ov

        self.graph = graph
        self.report = report if report is not None else _read_report(graph.parent)
        # No cache of compiled kernels per input shape: every batch width and size is a shape, and over a
        # corpus the cache grew the student's process from 0.8 to 2.2 GB in 240,000 sentences; without
        # it the resident set stayed flat (benchmarks/results/million-student.md), and 1,200 war-news articles were
        # scored no slower (54 s against 57 s, one run each).
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "CPU_RUNTIME_CACHE_CAPACITY": 0,
                  "DYNAMIC_QUANTIZATION_GROUP_SIZE": dynamic_group_size(self.report)}
        threads = thread_setting(threads)
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(str(graph), "CPU", config)
        self._requests = threading.local()

    def __call__(self, input_ids, attention_mask) -> np.ndarray:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        result = request.infer({"input_ids": np.asarray(input_ids, dtype=np.int64),
                                "attention_mask": np.asarray(attention_mask, dtype=np.int64)})
        return np.array(result[self.compiled.output(0)], dtype=np.float32)


def int8_encoder(model, *, threads: int | None = None, documents: list[str] | None = None,
                 echo: Callable[[str], None] | None = None) -> Int8Encoder:
    """The int8 encoder of ``model`` (an fp32 :class:`~stanceclf.infer.model.StanceModel`), quantised on the
    sentences of ``documents`` (default: the seed articles), or read from the cache when this model was
    quantised on this machine before. Two processes that need the same graph quantise it once."""
    if not int8_installed():
        raise BackendError("the int8 backend needs OpenVINO and NNCF: pip install 'stanceclf[int8]'")
    units = calibration_units(model, documents)
    if len(units) < VALIDATION_BATCH:
        raise BackendError(f"int8 calibration needs at least {VALIDATION_BATCH} sentences; got {len(units)}")
    folder = cache_dir() / QUANTIZED_FOLDER / _quantized_key(model, units)
    cached = _cached_encoder(folder, threads)
    if cached is not None:
        return cached
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(str(folder) + ".lock", timeout=LOCK_TIMEOUT):
        cached = _cached_encoder(folder, threads)  # another process may have built it meanwhile
        if cached is not None:
            return cached
        (echo or log.warning)(f"quantising the model to int8 on {len(units)} calibration sentences, once per "
                              "model and machine (about 1 min for a 6-layer model, 2 to 6 min for a 12-layer one "
                              "on 2 cores)")
        with folder_replaced_atomically(folder) as work:
            _quantize_isolated(model, units, work, threads)
    evict_least_recent(folder.parent, "?" * KEY_LENGTH, GRAPHS_KEPT)  # graph folders, not their lock files
    return Int8Encoder(folder / GRAPH_NAME, threads=threads)


def cached_int8_encoder(model, *, threads: int | None = None) -> Int8Encoder | None:
    """The int8 encoder of ``model`` if this machine has quantised it on the seed articles before, else None;
    never quantises (and imports no torch for a model read from a directory)."""
    if not int8_installed():
        return None
    units = calibration_units(model)
    return _cached_encoder(cache_dir() / QUANTIZED_FOLDER / _quantized_key(model, units), threads)


def _cached_encoder(folder: Path, threads: int | None) -> Int8Encoder | None:
    if not (folder / GRAPH_NAME).is_file():
        return None
    try:
        encoder = Int8Encoder(folder / GRAPH_NAME, threads=threads)
    except Exception as exc:  # a truncated or foreign graph: build it again
        log.info("the cached int8 graph %s cannot be used (%s): quantising again", folder, exc)
        return None
    os.utime(folder)  # recently used: the last to be evicted
    return encoder


#: What a child quantising a model writes into its graph folder when it refuses (see :mod:`.int8_build`).
REFUSAL_NAME = "refusal.json"
#: A quantising child that crashes in native code (SIGSEGV, SIGBUS, SIGABRT) is run once more: on 2026-12-07 one
#: build of the default's graph crashed with SIGSEGV in a full test run and the same build passed twice alone.
#: SIGKILL (the kernel's out-of-memory killer, or a user) is not retried: it would only happen again.
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT})
CRASH_RETRIES = 1


def _quantize_isolated(model, units: list, out: Path, threads: int | None) -> None:
    """Quantise in a child process (:mod:`stanceclf.infer.int8_build`) when the model is as its directory holds
    it (the graph's key names the weights file; the manifest is compared here): NNCF's peak memory then stays
    out of the caller's process, which never reads the torch weights either. A model never saved, or whose
    manifest was changed since it was read, is quantised here. A command, not ``multiprocessing``: spawning
    would run the caller's script again in the child."""
    saved = weights_file(model.path)
    if saved is None or manifest_digest(ModelManifest.read(Path(model.path))) != manifest_digest(model.manifest):
        quantize_into(model, units, out, threads)
        return
    request = {"model": str(model.path), "units": [[unit.text, unit.context] for unit in units], "out": str(out),
               "threads": threads}
    request_file = out / "request.json"
    request_file.write_text(json.dumps(request), encoding="utf-8")
    try:
        for attempt in range(1 + CRASH_RETRIES):
            # -P: the working directory does not go first on the child's path (another checkout there would win).
            # -X faulthandler: a crash in native code prints the Python stack it happened under, for the error.
            done = subprocess.run([sys.executable, "-P", "-X", "faulthandler", "-m", "stanceclf.infer.int8_build",
                                   str(request_file)], capture_output=True, encoding="utf-8", errors="replace")
            if -done.returncode not in CRASH_SIGNALS or attempt == CRASH_RETRIES:
                break
            log.warning("int8 quantisation crashed (signal %d) in its own process: trying once more. %s",
                        -done.returncode, done.stderr.strip()[-800:])
    finally:
        request_file.unlink(missing_ok=True)
    refusal = out / REFUSAL_NAME
    if refusal.is_file():
        raise refusal_error(json.loads(refusal.read_text(encoding="utf-8")))
    if done.returncode == 0 and (out / GRAPH_NAME).is_file() and (out / REPORT_NAME).is_file():
        return
    how = (f"crashed twice (signal {-done.returncode})" if -done.returncode in CRASH_SIGNALS else
           f"was killed (signal {-done.returncode}; out of memory?)" if done.returncode < 0 else
           f"failed (exit status {done.returncode})" if done.returncode else "ended without writing the graph")
    raise BackendError(f"int8 quantisation in its own process {how}: {done.stderr.strip()[-1500:]}")


def refusal_error(refusal: dict) -> StanceclfError:
    """The error a child refused with, as its own class of :mod:`stanceclf.errors` (a BackendError otherwise)."""
    kind = getattr(errors, refusal.get("kind", ""), None)
    if not (isinstance(kind, type) and issubclass(kind, StanceclfError)):
        kind = BackendError
    return kind(refusal["error"], where=refusal.get("where"))


def dynamic_group_size(report: QuantizationReport | None) -> int:
    """OpenVINO's ``DYNAMIC_QUANTIZATION_GROUP_SIZE`` for a graph: its report's (0, off, for a static graph)."""
    return report.group_size if report is not None else 0


def quantize_into(model, units: list, out: Path, threads: int | None, *, static_bound: float | None = None) -> None:
    """Quantise ``model`` on ``units`` and write the graph and its report into ``out`` (see the module): the
    static graph, or where it changes more than ``static_bound`` (default :data:`STATIC_CALIBRATION_BOUND`) of
    the decisions on ``units``, the dynamic one, which must stay within :data:`MAX_DECISIONS_CHANGED`."""
    static_bound = STATIC_CALIBRATION_BOUND if static_bound is None else static_bound
    import nncf
    import openvino as ov

    started = time.perf_counter()
    texts, contexts = [unit.text for unit in units], [unit.context for unit in units]
    reference = model.logits_and_truncation(texts, contexts=contexts)[0]
    reference_decisions = decide(probabilities(reference, model.temperature_vector), model.threshold_vector)

    def checked(method: str, **extra) -> QuantizationReport:
        # The bound checked through the path users run, not NNCF's own bookkeeping.
        report = QuantizationReport(sentences=len(texts), decisions=0, decisions_changed=0, max_logit_change=0.0,
                                    seconds=0.0, openvino=ov.__version__, nncf=nncf.__version__, method=method,
                                    **extra)
        encoder = Int8Encoder(out / GRAPH_NAME, threads=threads, report=report)
        logits = model.on_encoder(encoder, "int8").logits_and_truncation(texts, contexts=contexts)[0]
        decisions = decide(probabilities(logits, model.temperature_vector), model.threshold_vector)
        report.decisions, report.decisions_changed = int(decisions.size), int((decisions != reference_decisions).sum())
        report.max_logit_change = round(float(abs(logits - reference).max()), 4)
        report.seconds = round(time.perf_counter() - started, 1)
        return report

    def agreement(compiled, items) -> float:
        # NNCF passes the raw items, all of them or (when ranking layers) a subset.
        same = total = 0
        for rows, inputs in items:
            decisions = decide(probabilities(compiled(inputs)[0], model.temperature_vector), model.threshold_vector)
            same += int((decisions == reference_decisions[rows]).sum())
            total += decisions.size
        return same / total if total else 1.0

    # One dataset for both: statistics from single sentences (no padding) changed as many decisions on the
    # default's test split (36 of 3,234 against 37) and took 360 s to build instead of about 130.
    validation = nncf.Dataset(_batches(model, texts, contexts, VALIDATION_BATCH), lambda item: item[1])
    calibration = validation
    with _quiet_nncf():
        graph = _openvino_graph(model)
        quantized = nncf.quantize_with_accuracy_control(
            graph, calibration_dataset=calibration, validation_dataset=validation, validation_fn=agreement,
            max_drop=QUANTIZATION_TARGET, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(texts),
            model_type=nncf.ModelType.TRANSFORMER)
    ov.save_model(quantized, str(out / GRAPH_NAME), compress_to_fp16=False)
    report = checked("static")
    if report.changed_share > static_bound:
        # Static ranges fixed on a few hundred sentences moved too many decisions: int8 weights, and
        # activations quantised per group at run time instead.
        with _quiet_nncf():
            compressed = nncf.compress_weights(_openvino_graph(model), mode=nncf.CompressWeightsMode.INT8_ASYM)
        ov.save_model(compressed, str(out / GRAPH_NAME), compress_to_fp16=False)
        report = checked("dynamic", group_size=DYNAMIC_GROUP_SIZE, static_decisions_changed=report.decisions_changed)
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

    import transformers  # noqa: F401  (imported first, so that its load report can be silenced)

    # Tracing reads every attribute of the model, the loss function too, which makes transformers warn
    # about a loss the graph never holds; torch warns that traced Python conditions become constants. The
    # graph is checked on label decisions after quantisation, so these messages are silenced here.
    with library_output("transformers"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # A copy: the fp32 model the other backends share keeps its own attention and dtype.
        eager = copy.deepcopy(transformers_model(model.model)).float().eval()
        try:  # NNCF's transformer patterns match eager attention, not SDPA's
            eager.set_attn_implementation("eager")
        except (ValueError, AttributeError):
            pass
        example = {"input_ids": torch.ones((2, 8), dtype=torch.long),
                   "attention_mask": torch.ones((2, 8), dtype=torch.long)}
        with torch.inference_mode():
            return ov.convert_model(eager, example_input=example)


def _batches(model, texts: list[str], contexts: list, size: int) -> list[tuple[list[int], dict]]:
    """Length-sorted, padded batches of ``size`` units, tokenised as the prediction path does: ``(rows, inputs)``."""
    ids, _ = model.tokenize(texts, contexts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pad = model.tokenizer.pad_token_id or 0
    batches = []
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        input_ids, mask = padded_arrays([ids[i] for i in rows], pad)
        batches.append((rows, {"input_ids": input_ids, "attention_mask": mask}))
    return batches


def _quantized_key(model, units: list) -> str:
    """What a quantised graph depends on: the model (its directory's weights file and manifest, or for a
    model never saved its tensors), the calibration units, how it is quantised, and the library versions."""
    extra = {"manifest": manifest_digest(model.manifest), "format": QUANTIZATION_FORMAT,
             "target": QUANTIZATION_TARGET, "bound": MAX_DECISIONS_CHANGED,
             "openvino": package_version("openvino"), "nncf": package_version("nncf"),
             "units": hashlib.sha256(json.dumps([[u.text, u.context] for u in units]).encode("utf-8")).hexdigest()}
    weights = weights_file(model.path)
    if weights is not None:
        extra["weights"] = stamped_sha256(weights)
        return hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:KEY_LENGTH]
    return model_graph_key(model.model, ("openvino", "nncf"), extra)[:KEY_LENGTH]


def _read_report(folder: Path) -> QuantizationReport | None:
    try:
        return QuantizationReport(**json.loads((folder / REPORT_NAME).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
