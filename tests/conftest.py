"""Shared fixtures: tiny randomly initialised models built in process, and paths."""

from __future__ import annotations

import functools
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Backend choices measured by the tests go to a folder of their own, never to the user's cache."""
    os.environ["STANCECLF_CACHE_DIR"] = str(tmp_path_factory.mktemp("stanceclf-cache"))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
needs_shared = pytest.mark.skipif(not (SHARED / "corpus").is_dir(),
                                  reason="../shared/corpus is absent (only the project's CI and checkouts have it)")


@pytest.fixture(scope="session")
def base_tokenizer():
    """The packaged base's tokenizer (local files, no weights loaded)."""
    from transformers import AutoTokenizer

    from stanceclf.train.base_models import resolve_base

    return AutoTokenizer.from_pretrained(resolve_base("packaged:all-minilm-l6-v2"))


def tiny_config(vocab_size: int, max_positions: int = 128):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=max_positions)


def build_tiny_model(base_tokenizer, schema_name: str = "claim-types", *, thresholds=None, temperatures=None,
                     max_length: int = 64, seed: int = 0):
    """An untrained tiny StanceModel for a schema, with given thresholds and temperatures."""
    import torch

    from stanceclf.data.schema import load_schema
    from stanceclf.infer.model import StanceModel
    from stanceclf.model.manifest import ModelManifest
    from stanceclf.train.trainer import build_base_model

    schema = load_schema(schema_name)
    torch.manual_seed(seed)
    model = build_base_model("unused", schema, config=tiny_config(base_tokenizer.vocab_size))
    labels = schema.label_names
    manifest = ModelManifest(
        label_schema=schema,
        thresholds=thresholds or {label: 0.5 for label in labels},
        temperatures=temperatures or {label: 1.0 for label in labels},
        max_length=max_length,
        base_model="tiny-random-bert",
    )
    return StanceModel(model, base_tokenizer, manifest)


@pytest.fixture
def make_tiny_model(base_tokenizer):
    """Build an untrained tiny StanceModel for a schema, with given thresholds and temperatures."""
    return functools.partial(build_tiny_model, base_tokenizer)


@pytest.fixture
def tiny_model_dir(tmp_path, make_tiny_model):
    """A saved tiny model directory."""
    model = make_tiny_model()
    return model.save_pretrained(tmp_path / "tiny-model")


@pytest.fixture(scope="session")
def shared_tiny_model_dir(tmp_path_factory, base_tokenizer):
    """The same saved tiny model directory, made once per session, for fixtures that outlive one test
    (a server started once per module). Tests must not modify it."""
    return build_tiny_model(base_tokenizer).save_pretrained(tmp_path_factory.mktemp("shared") / "tiny-model")
