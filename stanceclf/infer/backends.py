"""The faster CPU paths ("backends"), each checked by the tests to stay within 0.02 of fp32.

- ``bf16``: torch with bfloat16 matrix products (autocast; layer norms and softmax
  stay float32). On CPUs with native bfloat16 (AVX512-BF16 or AMX: AMD Zen 4 and
  later, Intel Cooper Lake and Sapphire Rapids and later) it runs about 1.5x as fast
  as fp32 end to end. On 7,079 news sentences scores moved by up to 0.017 and 0.06%
  of label decisions changed (benchmarks/results/inference.md): a measured bound, not
  a guarantee. On other CPUs bfloat16 is emulated and slow.
- ``onnx``: ONNX Runtime with fused attention, in float32. The model is exported to
  ONNX in memory (nothing but safetensors and JSON is read from a model directory) and
  optimised by ONNX Runtime's BERT fusions; scores match fp32 to about 1e-6. Needs
  ``pip install 'stanceclf[fast]'``.
- ``auto`` (``fast=True``): ``bf16`` where the CPU has native bfloat16, else ``onnx``
  when ONNX Runtime is installed, else plain torch.

int8 dynamic quantization was measured and rejected for this purpose: on the
shipped claim-type model it moved scores by up to 0.59 (torch, per tensor), 0.41
(torch, per channel) and 0.21 (ONNX Runtime, per channel), far outside the 0.02
that the fast path promises.
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from stanceclf.errors import BackendError
from stanceclf.model.architectures import architecture_of


@dataclass(frozen=True)
class Backend:
    """One way to run the forward pass. ``build(model, threads)`` returns an encoder
    ``(input_ids, attention_mask) -> logits``, or None for the plain torch model."""

    name: str
    summary: str
    build: Callable


def _torch(model, threads):
    return None


def _bf16(model, threads):
    return Bfloat16Encoder(model)


def _onnx(model, threads):
    return OnnxEncoder(model, threads=threads)


#: Every backend, in one place: the CLI help, ``load(fast=...)`` and scoring read this table.
BACKENDS: dict[str, Backend] = {
    "torch": Backend("torch", "fp32, the reference scores", _torch),
    "bf16": Backend("bf16", "bfloat16 matrix products; about 1.5x fp32 on CPUs with native bfloat16, "
                    "scores move by up to about 0.02", _bf16),
    "onnx": Backend("onnx", "ONNX Runtime in fp32 (fused attention on BERT-family models); same scores",
                    _onnx),
}
AUTO = "auto"


def backend_help() -> str:
    """One line per backend, for command-line help."""
    return "; ".join(f"{b.name} ({b.summary})" for b in BACKENDS.values()) + \
        f"; {AUTO} (the fastest for this CPU)"


def native_bf16_supported() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX). Without them oneDNN
    emulates bfloat16 on any AVX-512 CPU, slowly, so torch's own ``mkldnn`` check is too lax."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def onnxruntime_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def resolve_backend(fast: bool | str | None) -> str:
    """``False``/None -> torch, ``True`` or ``"auto"`` -> the fastest available on this CPU, or a backend named
    outright. ``auto`` falls back to torch (fp32) when the CPU lacks bfloat16 and ONNX Runtime is not installed."""
    if fast is False or fast is None:
        return "torch"
    if fast is True or fast == AUTO:
        if native_bf16_supported():
            return "bf16"
        return "onnx" if onnxruntime_installed() else "torch"
    if fast not in BACKENDS:
        raise BackendError(f"unknown backend {fast!r}: choose from {', '.join(BACKENDS)} or {AUTO!r}")
    return fast


def build_encoder(backend: str, model, *, threads: int | None = None):
    """The encoder of a named backend for ``model`` (None for plain torch)."""
    return BACKENDS[resolve_backend(backend)].build(model, threads)


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

    def __init__(self, model, *, threads: int | None = None):
        try:
            import onnxruntime as ort
            from onnxruntime.transformers import optimizer
        except ImportError:
            raise BackendError("the onnx backend needs ONNX Runtime: pip install 'stanceclf[fast]'") from None
        import torch

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
        import onnx

        config = model.config
        fusion = architecture_of(config).onnx_fusion
        graph = buffer.getvalue()
        if fusion is not None:
            graph = optimizer.optimize_model(onnx.load_from_string(graph), model_type=fusion,
                                             num_heads=config.num_attention_heads,
                                             hidden_size=config.hidden_size).model.SerializeToString()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Follow torch's thread setting (--threads, torch.set_num_threads), so one knob governs both backends.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(graph, options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, input_ids, attention_mask) -> np.ndarray:
        return self.session.run(None, {"input_ids": np.asarray(input_ids, dtype=np.int64),
                                       "attention_mask": np.asarray(attention_mask, dtype=np.int64)})[0]
