"""The FastAPI application behind ``stanceclf serve``.

- ``POST /v1/classify``: classify one text or a list of texts (micro-batched, see :mod:`.batching`).
- ``GET /v1/model``: the model's labels, thresholds, temperatures and provenance; the server's limits.
- ``GET /v1/stats``: counters since start (requests, batches, units, refusals).
- ``GET /healthz``: the process is alive. ``GET /readyz``: 200 once the model is loaded, 503 before.

The model is fixed when the app is made (:class:`ServeSettings`): no request names a path. It is
loaded on a background thread after start, so that ``/healthz`` answers while it loads.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from uvicorn.config import STARTUP_FAILURE

import stanceclf
from stanceclf.errors import (BadRequestError, InternalServerError, RequestTooLargeError, ServerBusyError,
                              StanceclfError)
from stanceclf.serve import schemas
from stanceclf.serve.batching import MicroBatcher, log
from stanceclf.serve.settings import TEST_LOAD_GATE_ENV, ServeSettings, wait_at_test_gate

#: Seconds a client told "busy" (503) should wait before trying again.
RETRY_AFTER_S = 1
_STATUS = {BadRequestError: 422, RequestTooLargeError: 413, ServerBusyError: 503, InternalServerError: 500}
_ERRORS = {status: {"model": schemas.ErrorResponse} for status in (413, 422, 500, 503)}


def error_response(error: StanceclfError, problems: list[schemas.FieldProblem] = ()) -> JSONResponse:
    """Every error answer: status by error class, the coded message, and the fields at fault."""
    status = next((code for kind, code in _STATUS.items() if isinstance(error, kind)), 500)
    if not problems and error.where:
        problems = [schemas.FieldProblem(field=error.where, message=error.detail)]
    body = schemas.ErrorResponse(code=error.code, message=str(error), problems=list(problems))
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class BodySizeLimit:
    """ASGI middleware: refuse a body over ``max_bytes`` (413) before any of it is parsed, whether the
    client announces its length or streams it in chunks; read bodies are passed on in one piece."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the client left while sending: nothing to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: http.disconnect when the client leaves
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        error = RequestTooLargeError(f"the request body is over the limit of {self.max_bytes} bytes; send fewer "
                                     "texts per request, or use 'stanceclf score' for corpora")
        response = error_response(error)
        response.headers["Connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)


def _problems(error: RequestValidationError) -> list[schemas.FieldProblem]:
    problems = []
    for item in error.errors():
        loc = [str(part) for part in item.get("loc", ())]
        if item.get("type") == "json_invalid":
            reason = item.get("ctx", {}).get("error", "")
            position = f" at character {loc[1]}" if len(loc) > 1 else ""
            problems.append(schemas.FieldProblem(field="(body)", message=f"not valid JSON: {reason}{position}"))
            continue
        field = ".".join(loc[1:] if loc[:1] == ["body"] else loc) or "(body)"
        message = item.get("msg", "invalid").removeprefix("Value error, ")
        problems.append(schemas.FieldProblem(field=field, message=message))
    return problems


def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = _problems(error)
    if "json" not in request.headers.get("content-type", "json"):  # without the header FastAPI parses JSON
        problems.insert(0, schemas.FieldProblem(field="(body)", message="send JSON, with the header "
                                                                        "Content-Type: application/json"))
    described = "; ".join(f"field '{p.field}': {p.message}" for p in problems)
    return error_response(BadRequestError(f"the request is invalid: {described}"), problems)


class ServerState:
    """The loaded model and its batcher, once loaded."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.batcher: MicroBatcher | None = None
        self.model_info: schemas.ModelInfo | None = None

    def load(self) -> None:
        """Load, warm up and start batching. On failure say why and end the process with uvicorn's
        startup-failure status, which also stops uvicorn's parent process under ``--workers N`` (a
        worker that would fail the same way on every restart)."""
        from stanceclf.infer.predict import load
        from stanceclf.model.manifest import library_versions

        settings = self.settings
        wait_at_test_gate(TEST_LOAD_GATE_ENV)
        try:
            if settings.threads:
                import torch

                torch.set_num_threads(settings.threads)
            model = load(settings.model, fast=settings.backend)
            model.classify("Warm up.")
        except Exception as error:  # noqa: BLE001 - whatever it is, this server can never become ready
            log.error("stanceclf serve: the model could not be loaded: %s", error)
            os._exit(STARTUP_FAILURE)  # no request was ever served: nothing to finish
        manifest = model.manifest
        limits = schemas.Limits(**settings.model_dump(include=set(schemas.Limits.model_fields)))
        self.model_info = schemas.ModelInfo(
            name=model.path.name if model.path else "", labels=model.labels, thresholds=model.thresholds,
            temperatures=dict(manifest.temperatures), max_length=manifest.max_length,
            label_schema=manifest.label_schema,
            base_model=manifest.base_model, data_fingerprint=manifest.data_fingerprint, created=manifest.created,
            backend=model.backend, library_versions=manifest.library_versions, serving_versions=library_versions(),
            metrics=manifest.metrics, limits=limits)
        self.batcher = MicroBatcher(model, max_queue=settings.max_queue, batch_wait_ms=settings.batch_wait_ms,
                                    batch_units=settings.batch_units, batch_size=settings.batch_size).start()
        log.info("stanceclf serve: model %s loaded (backend %s); ready", self.model_info.name, model.backend)

    def ready_batcher(self) -> MicroBatcher:
        if self.batcher is None:
            raise ServerBusyError("the model is still loading; retry shortly")
        return self.batcher

    def check_lengths(self, texts: list[str], single: bool) -> None:
        limit = self.settings.max_text_chars
        for index, text in enumerate(texts):
            if len(text) > limit:
                raise RequestTooLargeError(f"has {len(text)} characters, over the limit of {limit}",
                                           where="text" if single else f"texts.{index}")


async def _until_disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is already read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(settings: ServeSettings) -> FastAPI:
    """The app for one fixed model. The model loads in the background once the server starts."""
    state = ServerState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, name="stanceclf-load", daemon=True).start()
        yield
        if state.batcher is not None:
            state.batcher.close()

    app = FastAPI(title="stanceclf", version=stanceclf.__version__, lifespan=lifespan,
                  description="Tag sentences of news and opinion articles with claim types.")
    app.state.serve = state
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_exception_handler(StanceclfError, lambda request, error: error_response(error))
    app.add_exception_handler(RequestValidationError, invalid_request)

    @app.post("/v1/classify", response_model=schemas.ClassifyResponse, responses=_ERRORS)
    async def classify(body: schemas.ClassifyRequest, request: Request):
        """Classify one text or a list of texts; requests arriving together are scored as one batch."""
        batcher = state.ready_batcher()
        texts = body.all_texts
        state.check_lengths(texts, single=body.text is not None)
        results = await batcher.classify(texts, body.split_sentences, partial(_until_disconnected, request))
        if results is None:
            return Response(status_code=499)  # client closed the request; nothing reaches it anyway
        return schemas.ClassifyResponse.model_validate({"results": results}, from_attributes=True)

    @app.get("/v1/model", response_model=schemas.ModelInfo, responses={503: _ERRORS[503]})
    async def model_info():
        """The model this server runs, its provenance, and the server's limits."""
        state.ready_batcher()
        return state.model_info

    @app.get("/v1/stats", response_model=schemas.Stats, responses={503: _ERRORS[503]})
    async def stats():
        """Counters since this process started."""
        batcher = state.ready_batcher()
        return schemas.Stats(**batcher.counters.snapshot(), queued=batcher.queued)

    @app.get("/healthz", response_model=schemas.Status)
    async def healthz():
        """The process is alive (says nothing about the model)."""
        return schemas.Status(status="ok")

    @app.get("/readyz", response_model=schemas.Status, responses={503: {"model": schemas.Status}})
    async def readyz():
        """200 once the model is loaded and warmed up; 503 while it loads."""
        if state.batcher is not None:
            return schemas.Status(status="ready")
        return JSONResponse(schemas.Status(status="loading", detail="the model is still loading").model_dump(),
                            status_code=503)

    return app


def app_from_environment() -> FastAPI:
    """uvicorn's factory for ``--workers N``: each worker process builds the app from the settings the
    ``serve`` verb put in the environment."""
    return create_app(ServeSettings.from_environment())

