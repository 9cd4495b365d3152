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
    os.environ["STANCECLF_CACHE"] = str(tmp_path_factory.mktemp("stanceclf-cache"))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
needs_shared = pytest.mark.skipif(not (SHARED / "corpus").is_dir(),
                                  reason="../shared/corpus is absent (only the project's CI and checkouts have it)")


@pytest.fixture(scope="session")
def base_tokenizer():
    """The packaged base's tokenizer (local files, no weights loaded)."""
    from transformers import AutoTokenizer

    from stanceclf.model.base_models import resolve_base

    return AutoTokenizer.from_pretrained(resolve_base("packaged:all-minilm-l6-v2"))


#: The base-model families every architecture-dependent test runs on (see stanceclf/model/architectures.py).
TINY_ARCHITECTURES = ("bert", "mpnet")


def tiny_config(vocab_size: int, max_positions: int = 128, *, architecture: str = "bert", layers: int = 2):
    """A tiny random config. The MPNet one reads the MiniLM tokenizer's ids (the real MPNet tokenizer
    exists only once its base is assembled), and has two positions more than it reads (it numbers
    positions from its padding id 1 + 1)."""
    from transformers import BertConfig, MPNetConfig

    sizes = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                 intermediate_size=64)
    if architecture == "mpnet":
        return MPNetConfig(**sizes, max_position_embeddings=max_positions + 2)
    return BertConfig(**sizes, max_position_embeddings=max_positions)


@pytest.fixture(params=TINY_ARCHITECTURES)
def architecture(request):
    """Parametrizes a test over every tiny architecture."""
    return request.param


def build_tiny_model(base_tokenizer, schema_name: str = "claim-types", *, thresholds=None, temperatures=None,
                     max_length: int = 64, seed: int = 0, architecture: str = "bert"):
    """An untrained tiny StanceModel for a schema, with given thresholds and temperatures."""
    import torch

    from stanceclf.data.schema import load_schema
    from stanceclf.infer.model import StanceModel
    from stanceclf.model.manifest import ModelManifest
    from stanceclf.train.phases import build_base_model

    schema = load_schema(schema_name)
    torch.manual_seed(seed)
    config = tiny_config(base_tokenizer.vocab_size, architecture=architecture)
    model = build_base_model("unused", schema, config=config)
    labels = schema.label_names
    manifest = ModelManifest(
        label_schema=schema,
        thresholds=thresholds or {label: 0.5 for label in labels},
        temperatures=temperatures or {label: 1.0 for label in labels},
        max_length=max_length,
        base_model=f"tiny-random-{architecture}",
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


@pytest.fixture
def tiny_arch_model_dir(tmp_path, make_tiny_model, architecture):
    """A saved tiny model directory of each architecture in turn."""
    return make_tiny_model(architecture=architecture).save_pretrained(tmp_path / f"tiny-{architecture}")


@pytest.fixture(scope="session")
def shared_tiny_model_dir(tmp_path_factory, base_tokenizer):
    """The same saved tiny model directory, made once per session, for fixtures that outlive one test
    (a server started once per module). Tests must not modify it."""
    return build_tiny_model(base_tokenizer).save_pretrained(tmp_path_factory.mktemp("shared") / "tiny-model")


def interrupt_on_call(monkeypatch, owner, name, after: int):
    """Make ``owner.name`` raise KeyboardInterrupt from its ``after``-th call on (a Ctrl-C there)."""
    real = getattr(owner, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) >= after:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return real
