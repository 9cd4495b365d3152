"""Model directories stored as a base model plus a LoRA adapter.

A model trained with ``training.method = "lora"`` can be saved as its adapter alone
(``training.lora_storage = "adapter"``): a few MB in place of every weight, which is what lets
a 110M-parameter MPNet model be committed to git or mailed. The directory then holds peft's
own ``adapter_config.json`` and ``adapter_model.safetensors`` in place of ``model.safetensors``,
and its manifest names the base and pins the sha256 of the base's weights.

Loading builds the base (a packaged base is assembled and verified as for training), adds the
adapter and merges it, so that everything after loading (the fast backends, export, serving)
sees an ordinary model. A base whose weights are not the pinned ones is refused: the adapter
was trained on other numbers and its scores would be wrong without any sign of it.
``stanceclf export`` writes the merged model as a plain folder, for tools that expect one.

Building and merging costs seconds (importing transformers and peft, hashing the base, the merge
itself), so the merged weights of a model that runs natively (:mod:`stanceclf.model.native`) are kept
in the cache folder, under ``merged/``, named by a digest of the adapter's files, config.json and the
base's sha256: a later load reads that one safetensors file and imports neither library. A merged file
is written only from a verified base; one that cannot be read is merged again and replaced. An MPNet
model's merged file is 438 MB, so only the :data:`MERGED_KEPT` most recently used are kept.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stanceclf.cache import cache_dir, evict_least_recent
from stanceclf.errors import ModelDirectoryError, RecipeError
from stanceclf.files import file_sha256, replaced_atomically, stamped_sha256
from stanceclf.model.base_models import PACKAGED_BASES, PACKAGED_PREFIX, resolve_base
from stanceclf.model.layout import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CONFIG_NAME
from stanceclf.model.layout import WEIGHTS_NAME as BASE_WEIGHTS_NAME
from stanceclf.progress import library_output

if TYPE_CHECKING:
    import peft
    import transformers

log = logging.getLogger(__name__)

#: Cache subfolder of merged models (``<digest>.safetensors``) and how many are kept, the most recently used.
MERGED_FOLDER = "merged"
MERGED_KEPT = 4
#: Part of every merged file's key: raise it when merged files change names or contents for the same inputs.
MERGED_FORMAT = 1


@dataclass
class LoraAdapter:
    """A trained LoRA adapter and the base it belongs to: what an adapter directory stores."""

    #: peft's ``LoraConfig``.
    config: object
    #: peft's adapter state dict (LoRA factors and the fully trained head), float32 on the CPU.
    tensors: dict
    #: The base as the recipe named it: ``packaged:<name>``, a folder or a hub id.
    base: str
    #: sha256 of the base's ``model.safetensors``: the only weights this adapter is valid on.
    base_sha256: str

    @classmethod
    def from_peft(cls, peft_model, base: str) -> "LoraAdapter":
        """The adapter of a trained (not yet merged) peft model whose base is ``base``."""
        import torch
        from peft import get_peft_model_state_dict

        if not base.startswith(PACKAGED_PREFIX) and Path(base).expanduser().is_dir():
            base = str(Path(base).expanduser().resolve())  # a local base: the folder, wherever it was run from
        tensors = {name: tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
                   for name, tensor in get_peft_model_state_dict(peft_model).items()}
        return cls(config=peft_model.peft_config["default"], tensors=tensors, base=base,
                   base_sha256=base_weights_sha256(base))

    @classmethod
    def read(cls, path: str | Path, base: str, base_sha256: str) -> "LoraAdapter":
        try:
            from peft import LoraConfig
        except ImportError:
            raise ModelDirectoryError("this model directory stores a LoRA adapter, which needs peft: "
                                      "pip install 'peft>=0.12' (a dependency of stanceclf)",
                                      where=str(path)) from None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        try:
            config = LoraConfig.from_pretrained(str(path))
        except (OSError, ValueError, TypeError) as exc:
            raise ModelDirectoryError(f"not a LoRA adapter config peft can read: {exc}",
                                      where=str(path / ADAPTER_CONFIG_NAME)) from None
        try:
            tensors = {name: tensor.float() for name, tensor in load_file(path / ADAPTER_WEIGHTS_NAME).items()}
        except (SafetensorError, OSError) as exc:
            raise ModelDirectoryError(f"not a readable safetensors file (truncated or corrupt?): {exc}",
                                      where=str(path / ADAPTER_WEIGHTS_NAME)) from None
        return cls(config=config, tensors=tensors, base=base, base_sha256=base_sha256)

    def save(self, path: Path, *, storage_dtype: str = "float32") -> None:
        import torch
        from safetensors.torch import save_file

        dtype = torch.float16 if storage_dtype == "float16" else torch.float32
        # peft's format, with the hub id of a packaged base: peft alone can load it for users online.
        config = copy.copy(self.config)  # the caller's peft model keeps its own config
        config.base_model_name_or_path = _hub_id(self.base)
        config.save_pretrained(str(path))
        save_file({name: tensor.to(dtype).contiguous() for name, tensor in self.tensors.items()},
                  str(path / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})

    def merged_model(self, where: Path) -> transformers.PreTrainedModel:
        """The base, verified, with this adapter added and merged: a plain transformers model with the
        architecture and head of the config.json in ``where`` (the adapter directory)."""
        from peft import set_peft_model_state_dict
        from transformers import AutoConfig, AutoModelForSequenceClassification

        folder = verified_base_folder(self.base, self.base_sha256, where)
        config = AutoConfig.from_pretrained(where, trust_remote_code=False, local_files_only=True)
        with library_output("transformers", "huggingface_hub"):
            try:
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    folder, config=config, use_safetensors=True, trust_remote_code=False, local_files_only=True,
                    output_loading_info=True)
            except (OSError, ValueError, RuntimeError) as exc:
                raise ModelDirectoryError(f"the base {self.base!r} does not fit this model's config.json: {exc}",
                                          where=str(where)) from None
        # The saved config names the base by its hub id (for peft users); here the base is the verified
        # folder, so name that, or peft warns on every load that the name changed.
        config = copy.copy(self.config)
        config.base_model_name_or_path = str(folder)
        wrapped = with_lora(model, config)
        result = set_peft_model_state_dict(wrapped, self.tensors)
        # transformers fills what the base file lacks with random values; only the adapter's own
        # trained tensors (the new head, saved in full) may stand in for them.
        covered = {name.removeprefix("base_model.model.") for name in self.tensors}
        uncovered = [name for name in [*(info.get("missing_keys") or []),
                                       *(name for name, *_ in info.get("mismatched_keys") or [])]
                     if name not in covered]
        if uncovered:
            raise ModelDirectoryError(
                f"the base {self.base!r} lacks, or has other shapes for, {len(uncovered)} tensor(s) that the "
                f"adapter does not hold either: {', '.join(sorted(uncovered)[:5])}", where=str(where))
        # The base's own tensors are "missing" from an adapter; an adapter tensor not loaded is not.
        missing = [name for name in result.missing_keys if "lora_" in name or "modules_to_save" in name]
        if result.unexpected_keys or missing:
            raise ModelDirectoryError(
                f"{ADAPTER_WEIGHTS_NAME} does not fit {ADAPTER_CONFIG_NAME} on this base: "
                f"unexpected {sorted(result.unexpected_keys)[:5]}, missing {sorted(missing)[:5]}",
                where=str(where / ADAPTER_WEIGHTS_NAME))
        return wrapped.merge_and_unload()


def merged_tensors(path: Path, base: str, base_sha256: str) -> dict:
    """Every weight of an adapter directory's model with the adapter merged, float32, named as in
    transformers' ``AutoModelForSequenceClassification``: from the cache when this model was merged before."""
    key = merged_key(path, base_sha256)
    cached = cache_dir() / MERGED_FOLDER / f"{key}.safetensors"
    tensors = _read_merged(cached, key)
    if tensors is not None:
        return tensors
    merged = LoraAdapter.read(path, base, base_sha256).merged_model(path)
    tensors = {name: tensor.detach().float().contiguous() for name, tensor in merged.state_dict().items()}
    _write_merged(cached, key, tensors)
    return tensors


def merged_key(path: Path, base_sha256: str) -> str:
    """What a merged model depends on: the adapter's two files, config.json and the base's weights (and
    how merged files are written: a new :data:`MERGED_FORMAT` leaves the old ones unread, to be evicted)."""
    digest = hashlib.sha256(f"{MERGED_FORMAT} {base_sha256}".encode())
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CONFIG_NAME):
        digest.update(bytes.fromhex(file_sha256(path / name)))
    return digest.hexdigest()


def _read_merged(cached: Path, key: str) -> dict | None:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        if not cached.is_file():  # inside the try: an unreadable cache folder raises PermissionError
            return None
        with safe_open(str(cached), framework="pt") as handle:
            if (handle.metadata() or {}).get("merged_key") != key:
                raise ValueError("written for another model")
        tensors = load_file(str(cached))
        os.utime(cached)  # recently used: the last to be evicted
        return tensors
    except (SafetensorError, OSError, ValueError) as exc:  # truncated, foreign or deleted meanwhile
        log.info("the cached merged model %s cannot be used (%s): merging again", cached, exc)
        return None


def _write_merged(cached: Path, key: str, tensors: dict) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        with replaced_atomically(cached) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", "merged_key": key})
        evict_least_recent(cached.parent, "*.safetensors", MERGED_KEPT)
    except (OSError, SafetensorError) as exc:  # a full disk, a read-only cache: merging again next time
        log.info("could not cache the merged model in %s: %s", cached, exc)


def with_lora(model, config) -> peft.PeftModel:
    """``model`` wrapped by peft with the LoRA ``config`` (training and loading both come here)."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        # peft asks transformers a deprecated question; nothing a user of stanceclf can act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def base_weights_sha256(base: str) -> str:
    """sha256 of a base's ``model.safetensors`` (the base as a recipe names it)."""
    if base.startswith(PACKAGED_PREFIX) and base[len(PACKAGED_PREFIX):] in PACKAGED_BASES:
        return PACKAGED_BASES[base[len(PACKAGED_PREFIX):]].sha256  # verified when the base was resolved
    weights = _base_folder(base) / BASE_WEIGHTS_NAME
    if not weights.is_file():
        raise RecipeError(f"the base {base!r} has no {BASE_WEIGHTS_NAME}: an adapter can only be stored "
                          "against safetensors weights (set training.lora_storage = 'merged')")
    return stamped_sha256(weights)


def verified_base_folder(base: str, expected: str, where: Path) -> Path:
    """The folder of ``base``, once its weights are known to be the ones the adapter was trained on."""
    folder = _base_folder(base, where)
    weights = folder / BASE_WEIGHTS_NAME
    if not weights.is_file():
        raise ModelDirectoryError(f"the base {base!r} named in the manifest has no {BASE_WEIGHTS_NAME} in {folder}",
                                  where=str(where))
    digest = stamped_sha256(weights)
    if digest != expected:
        raise ModelDirectoryError(
            f"the adapter was trained on base weights with sha256 {expected}, but {weights} has {digest}: "
            "another model's weights, which would give wrong scores", where=str(where))
    return folder


def _base_folder(base: str, where: Path | None = None) -> Path:
    resolved = resolve_base(base)
    if Path(resolved).is_dir():
        return Path(resolved)
    # A hub id: its files, from the local hub cache or (online) downloaded like transformers would.
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", BASE_WEIGHTS_NAME]
    try:
        return Path(snapshot_download(resolved, allow_patterns=patterns, local_files_only=True))
    except Exception:  # not in the local hub cache yet: fetch it once (online users)
        pass
    try:
        return Path(snapshot_download(resolved, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown id, no access: huggingface_hub raises many kinds
        raise ModelDirectoryError(f"the base {base!r} is neither a packaged base, a folder, nor a hub model "
                                  f"that can be fetched: {exc}", where=str(where) if where else None) from None


def _hub_id(base: str) -> str:
    name = base[len(PACKAGED_PREFIX):] if base.startswith(PACKAGED_PREFIX) else None
    return PACKAGED_BASES[name].hub_id if name in PACKAGED_BASES else base

