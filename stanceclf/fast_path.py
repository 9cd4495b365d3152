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

import numpy as np


BACKENDS = ("torch", "bf16", "onnx")


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


def resolve_backend(fast: bool | str) -> str:
    """``False`` -> torch, ``True`` or ``"auto"`` -> the fastest available on this CPU, or a backend named
    outright. ``auto`` falls back to torch (fp32) when the CPU lacks bfloat16 and ONNX Runtime is not installed."""
    if fast is False or fast is None:
        return "torch"
    if fast is True or fast == "auto":
        if native_bf16_supported():
            return "bf16"
        return "onnx" if onnxruntime_installed() else "torch"
    if fast not in BACKENDS:
        from .errors import BackendError

        raise BackendError(f"unknown backend {fast!r}: choose from {', '.join(BACKENDS)} or 'auto'")
    return fast


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
            from .errors import BackendError

            raise BackendError("the onnx backend needs ONNX Runtime: pip install 'stanceclf[fast]'") from None
        import torch

        eager = copy.deepcopy(model).float().eval()
        # The ONNX Runtime attention fusion recognises the eager attention graph, not SDPA's.
        eager.set_attn_implementation("eager")
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
        optimized = optimizer.optimize_model(onnx.load_from_string(buffer.getvalue()), model_type="bert",
                                             num_heads=config.num_attention_heads, hidden_size=config.hidden_size)
        options = ort.SessionOptions()
        # Follow torch's thread setting (--threads, torch.set_num_threads), so one knob governs both backends.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(optimized.model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, input_ids, attention_mask) -> np.ndarray:
        return self.session.run(None, {"input_ids": np.asarray(input_ids, dtype=np.int64),
                                       "attention_mask": np.asarray(attention_mask, dtype=np.int64)})[0]
