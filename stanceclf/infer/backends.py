"""The faster CPU paths ("backends"), and how ``fast=True`` picks one, checked on a calibration batch against fp32.

- ``bf16``: torch with bfloat16 matrix products (autocast; layer norms and softmax
  stay float32). On CPUs with native bfloat16 (AVX512-BF16 or AMX: AMD Zen 4 and
  later, Intel Cooper Lake and Sapphire Rapids and later) it runs about 2x as fast
  as fp32 end to end on an idle machine. On 7,079 news sentences scores moved by up to
  0.014 (0.018 for the previous default model) and up to 0.08% of label decisions changed
  (benchmarks/results/inference.md): measured, not a guarantee. On other CPUs bfloat16 is emulated and slow.
- ``onnx``: ONNX Runtime with fused attention, in float32. The model is exported to
  ONNX in memory (nothing but safetensors and JSON is read from a model directory) and
  optimised by ONNX Runtime's BERT fusions; scores match fp32 to about 1e-6. The optimised
  graph is kept in the cache folder (``onnx/<key>.onnx``, keyed by a hash of the model's config and
  tensors and the torch, onnx and ONNX Runtime versions), so a later fast load skips the export
  (on a 2-core AMD EPYC: 5.6 s to 0.7 s for MiniLM, 11.1 s to 3.1 s for MPNet); the four most
  recently used graphs are kept. Needs
  ``pip install 'stanceclf[fast]'``.
- ``int8``: OpenVINO running a static int8 graph that NNCF quantised under accuracy control
  (:mod:`stanceclf.infer.int8`), for CPUs with VNNI or AMX and no native bfloat16, where fp32 is near the
  machine's peak. At most 1% of label decisions change on its calibration sentences (checked when it is
  built, once per model and machine, and cached). Needs ``pip install 'stanceclf[int8]'``.
- ``auto`` (``fast=True``): measured, not guessed from CPU flags. On the first fast load of
  a model on a machine, :func:`choose_backend` scores a sample shaped like real work (the 224 sentences
  of the seed news articles, in length-sorted batches of 64, with this process's threads) with every
  candidate (``torch``; ``bf16`` where the CPU has native bfloat16; ``int8`` where OpenVINO and NNCF are
  installed and the CPU has int8 dot products; ``onnx`` where ONNX Runtime is installed). The gate is on
  what users see: a candidate is dropped if it changes more than 1% of fp32's label decisions on the
  sample, or if the process then holds more than 1.5x the memory it held with fp32. The fastest of the
  rest wins, and fp32 is always among them. The choice and every measurement behind it (seconds,
  decisions changed, memory, why a candidate was dropped) are cached per machine (CPU model, cores,
  threads, library versions) and model in ``backends.json`` under the cache folder
  (``$STANCECLF_CACHE``, else ``$XDG_CACHE_HOME/stanceclf``, else ``~/.cache/stanceclf``); delete it to
  measure again. A loaded machine can favour another backend than an idle one, which is why the choice
  is measured where the model runs.

Dynamic int8 quantisation was measured and rejected: on the shipped claim-type model it moved scores by
up to 0.59 (torch, per tensor), 0.41 (torch, per channel) and 0.21 (ONNX Runtime, per channel).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from stanceclf.cache import cache_dir, evict_least_recent
from stanceclf.files import FileStamp, exclusive_lock, write_atomically
from stanceclf.errors import BackendError
from stanceclf.infer.graph_key import model_graph_key, package_version, thread_setting
from stanceclf.machine import cpu_flags, cpu_name
from stanceclf.infer.int8 import (MAX_DECISIONS_CHANGED, cached_int8_encoder, calibration_units, int8_encoder,
                                  int8_installed)
from stanceclf.model.decision import decide
from stanceclf.model.architectures import architecture_of
from stanceclf.model.layout import weights_file
from stanceclf.model.manifest import manifest_digest


@dataclass(frozen=True)
class Backend:
    """One way to run the forward pass. ``build(stance_model, threads)`` returns an encoder
    ``(input_ids, attention_mask) -> logits`` for an fp32 :class:`StanceModel`, or None for plain torch."""

    name: str
    summary: str
    build: Callable
    #: The largest change of any score from fp32 its tests allow; None where the bound is on label
    #: decisions instead (int8: at most 1% of them on the calibration sentences, checked when built).
    max_score_change: float | None = 0.02
    #: Whether it runs without the torch weights once built (a later load reads only its own graph), so
    #: that the memory it costs is its own less theirs.
    replaces_torch_weights: bool = False


def _torch(model, threads):
    return None


def _bf16(stance, threads):
    return Bfloat16Encoder(stance.model)


def _onnx(stance, threads):
    from stanceclf.model.native import transformers_model

    # ONNX Runtime's BERT fusion recognises the graph of transformers' eager attention.
    return OnnxEncoder(transformers_model(stance.model), threads=threads,
                       graph_file=cache_dir() / GRAPH_FOLDER / f"{model_graph_key(stance.model, ONNX_LIBRARIES)}.onnx")


def _int8(stance, threads):
    return int8_encoder(stance, threads=threads)


#: Every backend, in one place: the CLI help, ``load(fast=...)`` and scoring read this table.
BACKENDS: dict[str, Backend] = {
    "torch": Backend("torch", "fp32, the reference scores", _torch),
    "bf16": Backend("bf16", "bfloat16 matrix products; 2 to 2.5x fp32 on CPUs with native bfloat16 "
                    "(measured), scores move by up to about 0.02", _bf16),
    "onnx": Backend("onnx", "ONNX Runtime in fp32 (fused attention on BERT-family models); same scores",
                    _onnx),
    "int8": Backend("int8", "OpenVINO static int8 quantised by NNCF, for CPUs with VNNI or AMX and no bfloat16; "
                    "at most 1% of label decisions change on the calibration sentences (checked)", _int8,
                    max_score_change=None, replaces_torch_weights=True),
}
AUTO = "auto"


def backend_help() -> str:
    """One line per backend, for command-line help."""
    return "; ".join(f"{b.name} ({b.summary})" for b in BACKENDS.values()) + \
        f"; {AUTO} (the fastest on this machine, measured once per model and cached)"


def native_bf16_supported() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX). Without them oneDNN
    emulates bfloat16 on any AVX-512 CPU, slowly, so torch's own ``mkldnn`` check is too lax."""
    import torch

    if not _isa_cap_allows_bf16(os.environ.get("ONEDNN_MAX_CPU_ISA")):
        return False
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def _isa_cap_allows_bf16(cap: str | None) -> bool:
    """Whether oneDNN's instruction cap (``ONEDNN_MAX_CPU_ISA``, set to measure a CPU without bfloat16 on
    one that has it) leaves native bfloat16 in: no cap, ``ALL``, or a cap at AVX512_CORE_BF16, AMX or AVX10."""
    if not cap:
        return True
    cap = cap.upper()
    return cap in ("ALL", "DEFAULT") or "BF16" in cap or "AMX" in cap or cap.startswith("AVX10")


def onnxruntime_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def resolve_backend(fast: bool | str | None) -> str:
    """``False``/None -> torch, ``True`` or ``"auto"`` -> ``"auto"`` (measured by :func:`choose_backend`
    once a model is loaded), or a backend named outright."""
    if fast is False or fast is None:
        return "torch"
    if fast is True or fast == AUTO:
        return AUTO
    if fast not in BACKENDS:
        raise BackendError(f"unknown backend {fast!r}: choose from {', '.join(BACKENDS)} or {AUTO!r}")
    return fast


def build_encoder(backend: str, stance, *, threads: int | None = None
                  ) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """The encoder of a named backend for an fp32 :class:`StanceModel` (None for plain torch)."""
    return BACKENDS[backend].build(stance, threads)


def candidate_backends() -> list[str]:
    """What ``auto`` measures: torch always; bf16 only with native bfloat16 (emulated, it is many times
    slower, and timing it would slow every first load); int8 when OpenVINO and NNCF are installed and the
    CPU has int8 dot-product instructions (quantising takes minutes, worth it only there); onnx when ONNX
    Runtime is installed. The heaviest in memory is measured last."""
    return (["torch"] + (["bf16"] if native_bf16_supported() else [])
            + (["int8"] if int8_installed() and int8_dot_product_supported() else [])
            + (["onnx"] if onnxruntime_installed() else []))


def int8_dot_product_supported() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX-INT8); True where
    the flags cannot be read (then it is measured, not guessed)."""
    flags = cpu_flags()
    return flags is None or bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


CACHE_FILE = "backends.json"
#: How a choice is made; a cached choice made another way is measured again (4: int8 is quantised in a child
#: process, so its memory is measured without NNCF's peak).
CHOICE_FORMAT = 4
#: A fast path may hold at most this many times the memory (resident set) of the process running fp32.
MAX_MEMORY_RATIO = 1.5
#: Optimised ONNX graphs, one per model and library versions (``<key>.onnx``). On a 2-core AMD EPYC an
#: onnx load took 5.6 s for MiniLM and 11.1 s for MPNet with the export, 0.7 s and 3.1 s from the cache.
GRAPH_FOLDER = "onnx"
#: What an exported ONNX graph depends on besides torch and the model.
ONNX_LIBRARIES = ("onnx", "onnxruntime")
#: Graphs kept, the most recently used: an MPNet graph is 438 MB, and cross-validation or distillation
#: would otherwise leave one per fold model in the cache.
GRAPHS_KEPT = 4
#: Seconds to wait for another process writing the cache before giving up on caching this choice.
LOCK_TIMEOUT = 30
log = logging.getLogger(__name__)


def time_backend(name: str, run: Callable[[], object], repeats: int = 2) -> float:
    """Seconds ``run`` takes, the best of ``repeats`` (the caller has run it once already: first calls
    allocate and plan)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def resident_megabytes() -> float | None:
    """This process's resident set now (MB), or None where it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass
class BackendChoice:
    """What ``auto`` chose, and the measurements behind it (kept in the cache, so a user can see why)."""

    backend: str
    #: Seconds to score the sample (:func:`~stanceclf.infer.int8.calibration_units`), per measured candidate.
    seconds: dict[str, float] = field(default_factory=dict)
    #: Largest score change from fp32 on the sample, per candidate.
    deviation: dict[str, float] = field(default_factory=dict)
    #: Label decisions (sentence x label) on the sample that differ from fp32's, per candidate.
    decisions_changed: dict[str, int] = field(default_factory=dict)
    #: The process's resident set (MB) with each candidate built and run: fp32's, and for each other
    #: candidate fp32's plus what building and running it added.
    memory_mb: dict[str, float] = field(default_factory=dict)
    #: Why a candidate was not taken: it cannot run here, its decisions or its memory.
    rejected: dict[str, str] = field(default_factory=dict)
    #: Sentences and label decisions in the sample.
    sample: dict[str, int] = field(default_factory=dict)
    cached: bool = False


def choose_backend(model, *, threads: int | None = None, candidates: list[str] | None = None,
                   measure: Callable[[str, Callable[[], object]], float] = time_backend,
                   memory: Callable[[], float | None] = resident_megabytes,
                   cache_path: Path | None = None) -> tuple[BackendChoice, "StanceModel"]:
    """``(BackendChoice, StanceModel on that backend)``: the fastest candidate on a sample shaped like real
    work (the seed news articles' sentences, length-sorted batches of 64, this process's threads) whose
    label decisions on the sample differ from fp32's in at most :data:`~stanceclf.infer.int8.MAX_DECISIONS_CHANGED`
    of cases and whose process memory stays within :data:`MAX_MEMORY_RATIO` of fp32's. fp32 itself is always a
    candidate, so the choice is never slower than no flag on that sample. Read from the cache when this
    machine has measured this model before. ``measure(name, run)`` times one candidate; ``memory()`` reads
    the resident set."""
    cache = BackendCache(cache_path or cache_dir() / CACHE_FILE)
    key = _cache_key(model, threads)
    known = cache.get(key) if key else None
    if known is not None and known.backend in (candidates or candidate_backends()):
        try:
            return known, (model if known.backend == "torch" else model.accelerated(known.backend, threads=threads))
        except Exception as exc:  # e.g. ONNX Runtime broken or removed since: the cached choice is stale
            log.warning("the cached backend %s cannot run here any more (%s): measuring again", known.backend, exc)
    sample = calibration_units(model)  # each sentence with the context the model reads, as classify scores it
    names = candidates or candidate_backends()
    # Minutes for a large model on a small CPU (an ONNX export, an int8 build): say why nothing else shows.
    log.warning("fast: measuring %s on %d sentences to choose the fastest backend for %s on this machine%s",
                ", ".join(names), len(sample), Path(model.path).name if model.path is not None else "this model",
                " (once: the choice is cached)" if key else " (a model not read from a folder: not cached)")
    reference = model.score_units(sample)[0]
    reference_decisions = decide(reference, model.threshold_vector)
    choice, built = BackendChoice("torch"), {}
    choice.sample = {"sentences": len(sample), "decisions": int(reference_decisions.size)}
    fp32_memory = None
    for name in names:
        before = memory()
        try:
            candidate = model if name == "torch" else model.accelerated(name, threads=threads)
            scores = candidate.score_units(sample)[0]  # also the warm-up run
        except Exception as exc:  # a fast path that cannot run here (export, runtime) is only not a candidate
            if name == "torch":
                raise
            log.warning("backend %s cannot run this model here (%s): not used", name, exc)
            choice.rejected[name] = f"cannot run here: {exc}"
            continue
        choice.deviation[name] = round(float(abs(scores - reference).max()), 6)
        choice.decisions_changed[name] = int((decide(scores, model.threshold_vector) != reference_decisions).sum())
        changed_share = choice.decisions_changed[name] / max(1, reference_decisions.size)
        if changed_share > MAX_DECISIONS_CHANGED:  # not worth timing
            choice.rejected[name] = (f"changed {choice.decisions_changed[name]} of {reference_decisions.size} label "
                                     f"decisions of fp32 ({changed_share:.1%})")
            log.warning("backend %s is not used: %s", name, choice.rejected[name])
            continue
        choice.seconds[name] = round(measure(name, lambda runner=candidate: runner.score_units(sample)), 4)
        after = memory()
        if name == "torch":
            fp32_memory = after
        elif fp32_memory is not None and before is not None and after is not None:
            # What this candidate added (the candidates before it are held too), on top of fp32 alone; less
            # the torch weights for one that later loads without them.
            resident = fp32_memory + max(0.0, after - before)
            if BACKENDS[name].replaces_torch_weights:
                resident = max(resident - _weights_megabytes(model), 0.0)
            choice.memory_mb[name] = round(resident, 1)
            if resident > MAX_MEMORY_RATIO * fp32_memory:
                choice.rejected[name] = f"held {resident:.0f} MB against {fp32_memory:.0f} MB for fp32"
                log.warning("backend %s is not used: %s", name, choice.rejected[name])
                continue
        if fp32_memory is not None and name == "torch":
            choice.memory_mb[name] = round(fp32_memory, 1)
        built[name] = candidate
    eligible = {name: seconds for name, seconds in choice.seconds.items() if name in built}
    choice.backend = min(eligible, key=eligible.get)
    built = {choice.backend: built[choice.backend]}  # the others' sessions and graphs are freed
    if key:
        cache.put(key, choice)
    for candidate in built.values():  # calibration is not work the caller asked for
        candidate.stats = type(candidate.stats)()
    return choice, built[choice.backend]


def _weights_megabytes(model) -> float:
    """The torch model's parameters and buffers in memory (MB)."""
    tensors = list(model.model.parameters()) + list(model.model.buffers())
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors) / 2**20


def _cache_key(model, threads: int | None) -> str | None:
    """Machine and model, or None for a model not read from a directory (nothing to key it by). Computed
    without importing torch, so that a cached choice can be read before torch is needed."""
    identity = _model_identity(model)
    if identity is None:
        return None
    parts = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": thread_setting(threads),
             "torch": package_version("torch"), "onnxruntime": package_version("onnxruntime"),
             "openvino": package_version("openvino"), "nncf": package_version("nncf"), "format": CHOICE_FORMAT,
             # oneDNN's instruction cap (e.g. AVX512_CORE_VNNI: no AMX) changes which path is fastest.
             "isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
             **identity}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cached_encoder_without_torch(model, backend: str, *, threads: int | None = None,
                                 cache_path: Path | None = None) -> tuple[Callable, str] | None:
    """``(encoder, backend name)`` for ``model`` (a :class:`StanceModel` whose torch weights are not read yet)
    when ``backend`` (a name or ``auto``) resolves, from this machine's caches alone, to a backend that runs
    without torch: a cached int8 graph, named or chosen by ``auto`` before. None otherwise (the caller loads
    the torch model and goes the usual way)."""
    if backend == AUTO:
        known = BackendCache(cache_path or cache_dir() / CACHE_FILE).get(_cache_key(model, threads) or "")
        backend = known.backend if known is not None else None
    if backend != "int8":
        return None
    encoder = cached_int8_encoder(model, threads=threads)
    return (encoder, "int8") if encoder is not None else None


def _model_identity(model) -> dict | None:
    weights = weights_file(model.path)
    if weights is None:
        return None
    return {"weights": FileStamp.of(weights).as_list(), "manifest": manifest_digest(model.manifest)}


class BackendCache:
    """Measured choices in one small JSON file. An unreadable or malformed file counts as empty and is
    rewritten; a cache that cannot be written only means measuring again next time."""

    def __init__(self, path: Path):
        self.path = path

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and isinstance(data.get("choices"), dict) else {}

    def get(self, key: str) -> BackendChoice | None:
        entry = self._read().get("choices", {}).get(key)
        try:
            return BackendChoice(**{**entry, "cached": True}) if isinstance(entry, dict) else None
        except TypeError:
            return None

    def put(self, key: str, choice: BackendChoice) -> None:
        entry = {k: v for k, v in asdict(choice).items() if k != "cached"}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Read, change and rewrite under one lock: workers that measure at once (serve --workers N
            # --fast) would otherwise each drop the others' entries.
            with exclusive_lock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT):
                data = self._read() or {"choices": {}}
                data["choices"][key] = entry
                self._write(data)
        except OSError as exc:  # filelock's Timeout is an OSError too
            log.info("could not cache the backend choice in %s: %s", self.path, exc)

    def _write(self, data: dict) -> None:
        write_atomically(self.path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))


class Bfloat16Encoder:
    """Callable ``(input_ids, attention_mask) -> logits`` running the torch model under bfloat16 autocast."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, attention_mask) -> np.ndarray:
        import torch

        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = self.model(input_ids=torch.as_tensor(input_ids), attention_mask=torch.as_tensor(attention_mask)).logits
        return logits.float().numpy()


class OnnxEncoder:
    """Callable ``(input_ids, attention_mask) -> logits`` backed by an ONNX Runtime session."""

    def __init__(self, model, *, threads: int | None = None, graph_file: Path | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("the onnx backend needs ONNX Runtime: pip install 'stanceclf[fast]'") from None
        import torch

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Follow torch's thread setting (--threads, torch.set_num_threads), so one knob governs both backends.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.graph_was_cached = False
        if graph_file is not None and graph_file.is_file():
            try:
                self.session = ort.InferenceSession(graph_file.read_bytes(), options,
                                                    providers=["CPUExecutionProvider"])
                self.graph_was_cached = True
                os.utime(graph_file)  # recently used: the last to be evicted
                return
            except Exception as exc:  # a truncated or foreign file: export again and replace it
                log.info("the cached ONNX graph %s cannot be used (%s): exporting again", graph_file, exc)
        graph = self._export(model)
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        if graph_file is not None:
            try:
                write_atomically(graph_file, graph)
                evict_least_recent(graph_file.parent, "*.onnx", GRAPHS_KEPT)
            except OSError as exc:  # a cache that cannot be written only means exporting again next time
                log.info("could not cache the ONNX graph in %s: %s", graph_file, exc)

    @staticmethod
    def _export(model) -> bytes:
        """The model's optimised ONNX graph, exported in memory."""
        import onnx
        import torch
        from onnxruntime.transformers import optimizer

        eager = copy.deepcopy(model).float().eval()
        # The ONNX Runtime attention fusion recognises the eager attention graph, not SDPA's.
        try:
            eager.set_attn_implementation("eager")
        except (ValueError, AttributeError):
            pass  # an architecture with a single attention implementation
        example = torch.ones((1, 8), dtype=torch.long)
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(eager, (example, example), buffer, input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], opset_version=17, dynamo=False,
                              dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                            "attention_mask": {0: "batch", 1: "sequence"},
                                            "logits": {0: "batch"}})
        config = model.config
        fusion = architecture_of(config).onnx_fusion
        graph = buffer.getvalue()
        if fusion is not None:
            graph = optimizer.optimize_model(onnx.load_from_string(graph), model_type=fusion,
                                             num_heads=config.num_attention_heads,
                                             hidden_size=config.hidden_size).model.SerializeToString()
        return graph

    def __call__(self, input_ids, attention_mask) -> np.ndarray:
        return self.session.run(None, {"input_ids": np.asarray(input_ids, dtype=np.int64),
                                       "attention_mask": np.asarray(attention_mask, dtype=np.int64)})[0]
