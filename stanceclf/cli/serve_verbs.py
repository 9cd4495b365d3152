"""The ``serve`` verb: the HTTP API (:mod:`stanceclf.serve`) on uvicorn.

FastAPI and uvicorn are an optional extra, imported only when the verb runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from stanceclf.cli.common import BACKEND_OPTION, FAST_OPTION, fail
from stanceclf.errors import ServeSetupError, StanceclfError, describe_validation_error
from stanceclf.serve.settings import ServeSettings

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
DEFAULTS = ServeSettings()  # the one home of the limits' defaults


def _check_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise ServeSetupError(f"the HTTP server needs FastAPI and uvicorn ({error.name} is missing): "
                              "pip install 'stanceclf[serve]'") from None


def _settings(model: Optional[Path], backend: str, threads: Optional[int], **options) -> ServeSettings:
    """Settings checked before uvicorn starts, so that a wrong model, backend or API key source fails at once
    with its code."""
    from stanceclf.infer.backends import resolve_backend
    from stanceclf.infer.predict import model_path
    from stanceclf.model.directory import check_model_directory

    directory = model_path(model)
    check_model_directory(directory)
    try:
        settings = ServeSettings(model=str(Path(directory).resolve()), backend=resolve_backend(backend),
                                 threads=threads, **options)
    except ValidationError as error:
        raise ServeSetupError(describe_validation_error(error)) from None
    settings.api_key()  # readable and not empty
    return settings


def serve(
    model: Optional[Path] = typer.Option(None, help="Model directory, or a shipped model's name such as "
                                         "claim-types-student (default: claim-types). Fixed for the "
                                         "server's life: no request can name another."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on. The default takes connections from this "
                             "machine only; on another address, give the API a key (--api-key-file or "
                             "--api-key-env) or put it behind a reverse proxy that checks clients."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    backend: str = BACKEND_OPTION,
    fast: bool = FAST_OPTION,
    workers: int = typer.Option(1, min=1, help="Server processes. Each loads its own copy of the model and "
                                "batches only its own requests."),
    threads: Optional[int] = typer.Option(None, min=1, help="Torch threads per process (default: torch's "
                                          "choice with one worker; cores / workers with several)."),
    max_body_bytes: int = typer.Option(DEFAULTS.max_body_bytes, min=1024,
                                       help="Largest request body; larger gets HTTP 413."),
    max_text_chars: int = typer.Option(DEFAULTS.max_text_chars, min=1,
                                       help="Longest single text, in characters; longer gets HTTP 413."),
    max_request_chars: int = typer.Option(DEFAULTS.max_request_chars, min=1, help="Most characters of all texts "
                                          "of one request together; more gets HTTP 413."),
    max_request_sentences: int = typer.Option(DEFAULTS.max_request_sentences, min=1, help="Most sentences (texts, "
                                              "without splitting) of one request; more gets HTTP 413."),
    max_queue: int = typer.Option(DEFAULTS.max_queue, min=1,
                                  help="Requests that may wait for the model, large ones being scored in pieces "
                                  "included; beyond that HTTP 503 with Retry-After."),
    max_explain_sentences: int = typer.Option(DEFAULTS.max_explain_sentences, min=1, help="Most sentences of one "
                                              "POST /v1/explain request (each costs about one forward pass per "
                                              "word); more gets HTTP 413."),
    batch_wait_ms: float = typer.Option(DEFAULTS.batch_wait_ms, min=0,
                                        help="How long the first request of a batch waits for others to join it."),
    batch_sentences: int = typer.Option(DEFAULTS.batch_units, min=1, help="Stop gathering requests into a batch "
                                        "once it holds this many sentences."),
    batch_size: int = typer.Option(DEFAULTS.batch_size, min=1, help="Sentences per forward pass (a batch of "
                                   "requests is scored in passes of this size)."),
    access_log: bool = typer.Option(True, help="Log one line per request."),
    api_key_env: Optional[str] = typer.Option(None, help="Name of an environment variable that holds an API key: "
                                              "then every request but /healthz and /readyz needs the header "
                                              "'Authorization: Bearer <key>' (401 otherwise)."),
    api_key_file: Optional[Path] = typer.Option(None, help="A file that holds the API key (instead of "
                                                "--api-key-env); surrounding whitespace is dropped."),
) -> None:
    """Serve the model over HTTP: POST /v1/classify, POST /v1/explain, GET /v1/model, /v1/stats, /healthz, /readyz
    (OpenAPI at /openapi.json). Concurrent requests are scored together in micro-batches."""
    try:
        _check_extra()
        if workers > 1 and threads is None:
            threads = max(1, (os.cpu_count() or 1) // workers)  # N processes must not each take every core
        settings = _settings(model, "auto" if fast else backend, threads, max_body_bytes=max_body_bytes,
                             max_text_chars=max_text_chars, max_request_chars=max_request_chars,
                             max_request_sentences=max_request_sentences, max_queue=max_queue,
                             max_explain_sentences=max_explain_sentences,
                             batch_wait_ms=batch_wait_ms, batch_units=batch_sentences, batch_size=batch_size,
                             api_key_env=api_key_env, api_key_file=str(api_key_file) if api_key_file else None)
    except StanceclfError as error:
        fail(error)
    from stanceclf.serve.app import run_server

    if host not in LOOPBACK and not (api_key_env or api_key_file):
        typer.secho(f"listening on {host} without an API key: anyone who can reach it can use the API "
                    "(give one with --api-key-file or --api-key-env)", fg=typer.colors.YELLOW, err=True)
    elif host not in LOOPBACK:
        typer.secho(f"listening on {host} over plain HTTP: the API key crosses the network unencrypted unless a "
                    "reverse proxy in front of the server terminates TLS", fg=typer.colors.YELLOW, err=True)
    run_server(settings, host=host, port=port, workers=workers, access_log=access_log)
