"""What differs between base-model families, in one table.

Everything that depends on the transformer's architecture (which linear layers LoRA
adapts, which ONNX Runtime fusion applies) is looked up here by the config's
``model_type``, so a new family is one entry, not edits across the package. An
architecture without an entry still works: LoRA adapts every linear layer and ONNX
Runtime applies its generic graph optimisations only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    model_type: str
    #: Module names LoRA adapts; "all-linear" lets peft find them.
    lora_targets: tuple[str, ...] | str
    #: ``model_type`` of onnxruntime.transformers' fusing optimizer, or None for generic optimisations.
    onnx_fusion: str | None
    #: Whether the model takes ``token_type_ids`` (we never pass them; recorded for exports).
    token_types: bool = False


ARCHITECTURES = {
    "bert": Architecture("bert", ("query", "key", "value", "dense"), onnx_fusion="bert", token_types=True),
    "mpnet": Architecture("mpnet", ("q", "k", "v", "o", "dense"), onnx_fusion=None),
}
GENERIC = Architecture("generic", "all-linear", onnx_fusion=None)


def architecture_of(config) -> Architecture:
    """The table entry for a transformers config (or a ``model_type`` string)."""
    model_type = config if isinstance(config, str) else getattr(config, "model_type", "")
    return ARCHITECTURES.get(model_type, GENERIC)
