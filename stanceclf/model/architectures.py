"""What differs between base-model families, in one table.

Everything that depends on the transformer's architecture (which linear layers LoRA
adapts, which ONNX Runtime fusion applies, how many positions a sequence may use, where
the layers are that a smaller student keeps) is looked up here by the config's
``model_type``, so a new family is one entry, not edits across the package. An
architecture without an entry still works: LoRA adapts every linear layer, ONNX Runtime
applies its generic graph optimisations only, and a student cannot drop its layers.
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
    #: Position embeddings never read: MPNet numbers positions from its padding id (1, fixed in
    #: transformers) + 1 on, so a sequence may hold two tokens fewer than it has positions.
    position_offset: int = 0
    #: Attribute path, from the transformer body (``model.base_model``), to its list of layers:
    #: where a student built with fewer layers keeps some and drops the others. None: not supported.
    layer_stack: str | None = None

    def usable_positions(self, config) -> int | None:
        """How many tokens one sequence may hold (None when the config does not say)."""
        positions = getattr(config, "max_position_embeddings", None)
        return None if positions is None else positions - self.position_offset


ARCHITECTURES = {
    "bert": Architecture("bert", ("query", "key", "value", "dense"), onnx_fusion="bert", token_types=True,
                         layer_stack="encoder.layer"),
    # ONNX Runtime's BERT optimizer finds no attention to fuse in MPNet (a relative position bias is added
    # to the scores); the session's own optimisations still fuse its layer norms and GELUs.
    "mpnet": Architecture("mpnet", ("q", "k", "v", "o", "dense"), onnx_fusion=None, position_offset=2,
                          layer_stack="encoder.layer"),
}
GENERIC = Architecture("generic", "all-linear", onnx_fusion=None)


def architecture_of(config) -> Architecture:
    """The table entry for a transformers config (or a ``model_type`` string)."""
    model_type = config if isinstance(config, str) else getattr(config, "model_type", "")
    return ARCHITECTURES.get(model_type, GENERIC)
