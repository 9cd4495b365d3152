"""A model directory's ``tokenizer.json`` run by the ``tokenizers`` library, without transformers or torch.

A leaf of :mod:`stanceclf.model`: prediction on a backend that needs no torch (the cached int8 graph)
tokenises with it and never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from stanceclf.model.layout import TOKENIZER_CONFIG_NAME, TOKENIZER_NAME


class JsonTokenizer:
    """A model directory's ``tokenizer.json`` run by the ``tokenizers`` library, called like a
    transformers tokenizer for what prediction asks of it (ids of a batch, truncated)."""

    def __init__(self, tokenizer_json: str, tokenizer_config_json: str):
        """From the texts of ``tokenizer.json`` and ``tokenizer_config.json`` (raises what ``tokenizers``
        and ``json`` raise on bad content; :mod:`stanceclf.model.directory` names the file)."""
        from tokenizers import Tokenizer

        self._files = {TOKENIZER_NAME: tokenizer_json, TOKENIZER_CONFIG_NAME: tokenizer_config_json}
        tokenizer_config = json.loads(tokenizer_config_json)
        self.backend = Tokenizer.from_str(tokenizer_json)
        self.backend.no_padding()
        self.backend.no_truncation()
        self._truncated_at: int | None = None
        for name in ("pad", "cls", "sep", "unk", "mask"):
            setattr(self, f"{name}_token_id", self._special_id(tokenizer_config.get(f"{name}_token")))
        if self.pad_token_id is None:
            self.pad_token_id = 0

    def _special_id(self, token) -> int | None:
        content = token.get("content") if isinstance(token, dict) else token
        return self.backend.token_to_id(content) if isinstance(content, str) else None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(self, texts: list[str], *, truncation: bool = False, max_length: int | None = None,
                 add_special_tokens: bool = True, return_attention_mask: bool = False,
                 return_token_type_ids: bool = False) -> dict:
        """``{"input_ids": [[...], ...]}``. Not thread-safe (truncation is the tokenizer's state):
        :class:`~stanceclf.infer.model.StanceModel` calls it under a lock."""
        limit = max_length if truncation else None
        if limit != self._truncated_at:
            if limit is None:
                self.backend.no_truncation()
            else:
                self.backend.enable_truncation(max_length=limit)
            self._truncated_at = limit
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        result = {"input_ids": [e.ids for e in encodings]}
        if return_attention_mask:
            result["attention_mask"] = [e.attention_mask for e in encodings]
        if return_token_type_ids:
            result["token_type_ids"] = [e.type_ids for e in encodings]
        return result

    def save_pretrained(self, path: str | Path) -> None:
        """Write the two files it was read from, unchanged."""
        for name, content in self._files.items():
            (Path(path) / name).write_text(content, encoding="utf-8")
