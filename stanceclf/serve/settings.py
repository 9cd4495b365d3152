"""The server's settings, fixed at start: which model, which backend, the request limits and where the API
key comes from; and the hooks, the calls a server built in Python makes at fixed points.

The settings travel to uvicorn's worker processes as JSON in an environment variable (``--workers N``
starts each worker from an import string, so nothing else can be handed over). They name where the API
key is, never the key itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stanceclf.errors import ServeSetupError

SETTINGS_ENV = "STANCECLF_SERVE_SETTINGS"


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class ServeHooks:
    """Calls the server makes at fixed points, given to ``create_app`` by whoever builds the app in Python
    (tests hold the server in a state through them: still loading, the worker between two batches).
    ``stanceclf serve`` gives none."""

    #: Called on the loading thread before the model loads (/readyz answers 503 until it returns).
    before_load: Callable[[], None] = _nothing
    #: Called on the batching worker before each batch is gathered and scored.
    before_batch: Callable[[], None] = _nothing


class ServeSettings(BaseModel):
    """Everything ``create_app`` needs. No request can change any of it: the model is fixed at start."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str | None = Field(None, description="Model directory; None for the shipped default model.")
    backend: str = "torch"
    threads: int | None = Field(None, ge=1, description="Torch (and ONNX Runtime) threads; None: torch's choice.")
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_text_chars: int = Field(100_000, ge=1)
    max_request_chars: int = Field(500_000, ge=1)
    max_request_sentences: int = Field(5_000, ge=1)
    max_queue: int = Field(128, ge=1)
    #: An explanation costs about one forward pass per word of each sentence: far fewer per request.
    max_explain_sentences: int = Field(20, ge=1)
    batch_wait_ms: float = Field(5.0, ge=0)
    batch_units: int = Field(256, ge=1)
    batch_size: int = Field(64, ge=1)
    api_key_env: str | None = Field(None, min_length=1, description="Environment variable that holds the API key.")
    api_key_file: str | None = Field(None, min_length=1, description="File that holds the API key.")

    @model_validator(mode="after")
    def _one_api_key_source(self) -> "ServeSettings":
        if self.api_key_env and self.api_key_file:
            raise ValueError("give the API key in an environment variable (--api-key-env) or in a file "
                             "(--api-key-file), not both")
        return self

    def api_key(self) -> str | None:
        """The API key (surrounding whitespace dropped), or None when the server has none; a named source
        that is missing or empty is an error (E050) that names the source, never its content."""
        if self.api_key_env:
            where, key = f"environment variable {self.api_key_env}", os.environ.get(self.api_key_env, "")
        elif self.api_key_file:
            where = f"API key file {self.api_key_file}"
            try:
                key = Path(self.api_key_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                reason = getattr(error, "strerror", None) or "not UTF-8 text"
                raise ServeSetupError(f"cannot be read: {reason}", where=where) from None
        else:
            return None
        key = key.strip()
        if not key:
            raise ServeSetupError("is unset or empty; it must hold the API key", where=where)
        if not key.isascii() or any(char.isspace() for char in key):
            raise ServeSetupError("holds a key with spaces or non-ASCII characters, which an HTTP header "
                                  "cannot carry", where=where)
        return key

    def to_environment(self) -> None:
        os.environ[SETTINGS_ENV] = self.model_dump_json()

    @classmethod
    def from_environment(cls) -> "ServeSettings":
        return cls.model_validate_json(os.environ.get(SETTINGS_ENV, "{}"))
