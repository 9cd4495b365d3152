"""BERT and MPNet classifiers in plain torch and tokenizer.json through ``tokenizers``: prediction
without transformers.

Importing transformers' model code costs about 1.7 s on this project's machines (it pulls in
``torch._dynamo`` and ``torch.distributed``), more than loading and running the model. Prediction
needs only the forward pass, so a model directory of the BERT or MPNet family is run by
:class:`BertClassifier` or :class:`MPNetClassifier`: the computation of transformers'
``BertForSequenceClassification`` (post-norm encoder, pooler, linear head) and
``MPNetForSequenceClassification`` (post-norm encoder with a relative position bias, a dense-tanh-linear
head on the first token) written out in torch and filled from the same safetensors tensors, and its
``tokenizer.json`` by the ``tokenizers`` library that transformers' fast tokenizers wrap. Logits match
transformers to about 1e-5 and token ids exactly (tested). Training, ``export``, the ONNX backend and
other architectures use transformers itself (:meth:`NativeClassifier.to_transformers`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stanceclf.errors import ModelDirectoryError
from stanceclf.model.layout import CONFIG_NAME, WEIGHTS_NAME

if TYPE_CHECKING:
    import transformers

_ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


#: What :class:`BertClassifier` reads from config.json (transformers would fill a missing one with its default).
_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
          "max_position_embeddings", "layer_norm_eps")


def native_classifier(config: dict) -> "type[NativeClassifier] | None":
    """The class that computes exactly what transformers would for this ``config.json``, or None."""
    if config.get("is_decoder") or config.get("add_cross_attention") or not all(key in config for key in _SIZES):
        return None
    if config.get("hidden_act", "gelu") not in _ACTIVATIONS:
        return None
    # Loading builds AutoModelForSequenceClassification whatever config.json's ``architectures`` says (a
    # packaged base's config, kept by an adapter directory, names BertModel or MPNetForMaskedLM).
    model_type = config.get("model_type")
    if model_type == "bert":
        fits = "type_vocab_size" in config and config.get("position_embedding_type", "absolute") == "absolute"
        return BertClassifier if fits else None
    if model_type == "mpnet":
        # The bias table needs at least the buckets transformers computes (32, fixed), or it fails to index.
        fits = config.get("relative_attention_num_buckets", 0) >= _MPNET_BUCKETS
        return MPNetClassifier if fits else None
    return None


class ModelConfig:
    """``config.json`` read as attributes: the part of a transformers config that prediction reads."""

    def __init__(self, values: dict):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value) -> None:
        self._values[name] = value

    def to_dict(self) -> dict:
        return dict(self._values)


class ClassifierOutput(NamedTuple):
    logits: torch.Tensor


class _Linear(nn.Module):
    """``nn.Linear`` without the random initialisation: every parameter is loaded from the weights
    file, and initialising 22M parameters (or building on the meta device, which imports torch._dynamo)
    would cost more than loading them."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(outputs, inputs), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(outputs), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _LayerNorm(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.hidden_size), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(config.hidden_size), requires_grad=False)
        self.eps = config.layer_norm_eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


def _table(rows: int, config: ModelConfig) -> nn.Module:
    table = nn.Module()
    table.weight = nn.Parameter(torch.empty(rows, config.hidden_size), requires_grad=False)
    return table


def _dense_and_norm(config: ModelConfig, inputs: int) -> nn.ModuleDict:
    return nn.ModuleDict({"dense": _Linear(inputs, config.hidden_size), "LayerNorm": _LayerNorm(config)})


class _Embeddings(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.word_embeddings = _table(config.vocab_size, config)
        self.position_embeddings = _table(config.max_position_embeddings, config)
        self.token_type_embeddings = _table(config.type_vocab_size, config)
        self.LayerNorm = _LayerNorm(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Summed in transformers' order (words + token type 0, then positions): same rounding.
        words = F.embedding(input_ids, self.word_embeddings.weight) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(words + self.position_embeddings.weight[: input_ids.shape[1]])


class _Layer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.hidden_size
        self.attention = nn.ModuleDict({
            "self": nn.ModuleDict({name: _Linear(hidden, hidden) for name in ("query", "key", "value")}),
            "output": _dense_and_norm(config, hidden)})
        self.intermediate = nn.ModuleDict({"dense": _Linear(hidden, config.intermediate_size)})
        self.output = _dense_and_norm(config, config.intermediate_size)
        self.heads = config.num_attention_heads
        self.activation = _ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, hidden = x.shape
        q, k, v = (self.attention["self"][name](x).view(batch, length, self.heads, -1).transpose(1, 2)
                   for name in ("query", "key", "value"))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(batch, length, hidden)
        attended = self.attention["output"]
        x = attended["LayerNorm"](attended["dense"](context) + x)
        inner = self.activation(self.intermediate["dense"](x))
        return self.output["LayerNorm"](self.output["dense"](inner) + x)


class NativeClassifier(nn.Module):
    """What the native classifiers share: building from tensors, saving, converting to transformers."""

    config: ModelConfig

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def from_tensors(cls, config: dict, tensors: dict[str, torch.Tensor], where: str) -> "NativeClassifier":
        """Build without initialising and take every parameter from ``tensors``, in float32. A missing
        tensor or one of another shape is refused, never left uninitialised."""
        model = cls(ModelConfig(config))
        expected = model.state_dict()
        missing = [name for name in expected if name not in tensors]
        if missing:
            raise ModelDirectoryError(f"the weights lack {len(missing)} tensor(s) this config.json needs: "
                                      f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}", where=where)
        wrong = [f"{name} {list(tensors[name].shape)} (config.json implies {list(meta.shape)})"
                 for name, meta in expected.items() if tensors[name].shape != meta.shape]
        if wrong:
            raise ModelDirectoryError("tensor shapes do not fit config.json: " + "; ".join(wrong[:5]), where=where)
        model.load_state_dict({name: tensors[name].float() for name in expected}, assign=True)  # no copy if float32
        return model.eval()

    def save_pretrained(self, path: str | Path, safe_serialization: bool = True) -> None:
        """Write the weights and config.json as transformers' ``save_pretrained`` would."""
        from safetensors.torch import save_file

        path = Path(path)
        save_file({name: tensor.contiguous() for name, tensor in self.state_dict().items()},
                  str(path / WEIGHTS_NAME), metadata={"format": "pt"})
        (path / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n", encoding="utf-8")

    def to_transformers(self) -> transformers.PreTrainedModel:
        """The same model as a transformers ``AutoModelForSequenceClassification`` (for ONNX export)."""
        from transformers import AutoConfig, AutoModelForSequenceClassification

        values = self.config.to_dict()
        config = AutoConfig.for_model(values.pop("model_type"), **values)
        model = AutoModelForSequenceClassification.from_config(config)
        model.load_state_dict({name: tensor.float() for name, tensor in self.state_dict().items()})
        return model.eval()


class BertClassifier(NativeClassifier):
    """transformers' ``BertForSequenceClassification`` at inference, with the same parameter names."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.bert = nn.Module()
        self.bert.embeddings = _Embeddings(config)
        self.bert.encoder = nn.Module()
        self.bert.encoder.layer = nn.ModuleList(_Layer(config) for _ in range(config.num_hidden_layers))
        self.bert.pooler = nn.ModuleDict({"dense": _Linear(config.hidden_size, config.hidden_size)})
        self.classifier = _Linear(config.hidden_size, len(config.id2label))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> ClassifierOutput:
        mask = attention_mask.bool()[:, None, None, :] if attention_mask is not None else None
        x = self.bert.embeddings(input_ids)
        for layer in self.bert.encoder.layer:
            x = layer(x, mask)
        pooled = torch.tanh(self.bert.pooler["dense"](x[:, 0]))
        return ClassifierOutput(self.classifier(pooled))


#: MPNet numbers positions from its padding id on (fixed in transformers, whatever config.json says).
_MPNET_PADDING_ID = 1
#: Relative distances beyond this share the last bucket (fixed in transformers).
_MPNET_MAX_DISTANCE = 128
#: Buckets of relative distance: transformers computes 32 whatever config.json's relative_attention_num_buckets
#: says (that only sizes the bias table, whose rows past 32 are never read).
_MPNET_BUCKETS = 32


class _MPNetEmbeddings(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.word_embeddings = _table(config.vocab_size, config)
        self.position_embeddings = _table(config.max_position_embeddings, config)
        self.LayerNorm = _LayerNorm(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # transformers' create_position_ids_from_input_ids: real tokens count on from the padding id + 1.
        real = input_ids.ne(_MPNET_PADDING_ID).long()
        positions = torch.cumsum(real, dim=1) * real + _MPNET_PADDING_ID
        words = F.embedding(input_ids, self.word_embeddings.weight)
        return self.LayerNorm(words + F.embedding(positions, self.position_embeddings.weight))


class _MPNetLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.hidden_size
        self.attention = nn.ModuleDict({
            "attn": nn.ModuleDict({name: _Linear(hidden, hidden) for name in ("q", "k", "v", "o")}),
            "LayerNorm": _LayerNorm(config)})
        self.intermediate = nn.ModuleDict({"dense": _Linear(hidden, config.intermediate_size)})
        self.output = _dense_and_norm(config, config.intermediate_size)
        self.heads = config.num_attention_heads
        self.activation = _ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        attn = self.attention["attn"]
        q, k, v = (attn[name](x).view(batch, length, self.heads, -1).transpose(1, 2) for name in ("q", "k", "v"))
        # Under bf16 autocast q is bfloat16, and an additive mask must have q's dtype.
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        x = self.attention["LayerNorm"](attn["o"](context.transpose(1, 2).reshape(batch, length, hidden)) + x)
        inner = self.activation(self.intermediate["dense"](x))
        return self.output["LayerNorm"](self.output["dense"](inner) + x)


def _relative_position_buckets(length: int, device: torch.device, buckets: int = _MPNET_BUCKETS) -> torch.Tensor:
    """transformers' MPNetEncoder.relative_position_bucket for every (query, key) pair of one length."""
    positions = torch.arange(length, device=device)
    distance = positions[:, None] - positions[None, :]  # query minus key: what transformers calls n
    half = buckets // 2
    result = (distance < 0).long() * half
    distance = distance.abs()
    exact = half // 2
    # max(distance, 1) keeps log() finite where the exact branch is taken anyway.
    far = exact + (torch.log(distance.clamp(min=1).float() / exact) / math.log(_MPNET_MAX_DISTANCE / exact)
                   * (half - exact)).long()
    far = far.clamp(max=half - 1)
    return result + torch.where(distance < exact, distance, far)


class MPNetClassifier(NativeClassifier):
    """transformers' ``MPNetForSequenceClassification`` at inference, with the same parameter names."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.mpnet = nn.Module()
        self.mpnet.embeddings = _MPNetEmbeddings(config)
        self.mpnet.encoder = nn.Module()
        self.mpnet.encoder.layer = nn.ModuleList(_MPNetLayer(config) for _ in range(config.num_hidden_layers))
        self.mpnet.encoder.relative_attention_bias = nn.Module()
        self.mpnet.encoder.relative_attention_bias.weight = nn.Parameter(
            torch.empty(config.relative_attention_num_buckets, config.num_attention_heads), requires_grad=False)
        self.classifier = nn.ModuleDict({"dense": _Linear(config.hidden_size, config.hidden_size),
                                         "out_proj": _Linear(config.hidden_size, len(config.id2label))})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> ClassifierOutput:
        length = input_ids.shape[1]
        table = self.mpnet.encoder.relative_attention_bias.weight
        buckets = _relative_position_buckets(length, input_ids.device)
        bias = F.embedding(buckets, table).permute(2, 0, 1)[None]  # (1, heads, query, key)
        if attention_mask is not None:
            bias = bias.masked_fill(~attention_mask.bool()[:, None, None, :], float("-inf"))
        x = self.mpnet.embeddings(input_ids)
        for layer in self.mpnet.encoder.layer:
            x = layer(x, bias)
        first = torch.tanh(self.classifier["dense"](x[:, 0]))
        return ClassifierOutput(self.classifier["out_proj"](first))


def read_float32_tensors(weights: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, floating-point ones in float32. numpy converts float16 about
    five times as fast as torch's per-tensor ``.float()`` (0.1 s against 0.5 s for the shipped model);
    bfloat16, which numpy lacks, goes through torch."""
    import numpy as np

    try:
        from safetensors.numpy import load_file

        arrays = load_file(str(weights))
    except TypeError:  # "data type 'bfloat16' not understood"
        from safetensors.torch import load_file

        return {name: tensor.float() if tensor.is_floating_point() else tensor
                for name, tensor in load_file(str(weights)).items()}
    return {name: torch.from_numpy(np.array(array, dtype=np.float32 if array.dtype.kind == "f" else array.dtype))
            for name, array in arrays.items()}


def transformers_model(model) -> nn.Module:
    """``model`` as a transformers model: a :class:`NativeClassifier` converted, anything else as it is."""
    return model.to_transformers() if isinstance(model, NativeClassifier) else model
