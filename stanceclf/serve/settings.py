"""The server's settings, fixed at start: which model, which backend, and the request limits.

They travel to uvicorn's worker processes as JSON in an environment variable (``--workers N``
starts each worker from an import string, so nothing else can be handed over).
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, ConfigDict, Field

SETTINGS_ENV = "STANCECLF_SERVE_SETTINGS"

# Test seams, for tests/test_serve.py only (never set them in production): each names a file, and the server
# waits at that point until the file exists, so that a test can hold the server in a state (still loading;
# the worker busy with a job) for exactly as long as it needs, whatever the machine's speed.
#: ServerState.load waits before loading the model: /readyz stays 503.
TEST_LOAD_GATE_ENV = "STANCECLF_SERVE_TEST_LOAD_GATE"
#: The batching worker, having taken a job off the queue, waits before gathering and scoring its batch.
TEST_WORKER_GATE_ENV = "STANCECLF_SERVE_TEST_WORKER_GATE"


def wait_at_test_gate(variable: str) -> None:
    """Wait until the file named by the test-seam environment ``variable`` exists; return at once when unset."""
    gate = os.environ.get(variable)
    while gate and not os.path.exists(gate):
        time.sleep(0.01)


class ServeSettings(BaseModel):
    """Everything ``create_app`` needs. No request can change any of it: the model is fixed at start."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str | None = Field(None, description="Model directory; None for the shipped default model.")
    backend: str = "torch"
    threads: int | None = Field(None, ge=1, description="Torch (and ONNX Runtime) threads; None: torch's choice.")
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_text_chars: int = Field(100_000, ge=1)
    max_queue: int = Field(128, ge=1)
    batch_wait_ms: float = Field(5.0, ge=0)
    batch_units: int = Field(256, ge=1)
    batch_size: int = Field(64, ge=1)

    def to_environment(self) -> None:
        os.environ[SETTINGS_ENV] = self.model_dump_json()

    @classmethod
    def from_environment(cls) -> "ServeSettings":
        return cls.model_validate_json(os.environ.get(SETTINGS_ENV, "{}"))
