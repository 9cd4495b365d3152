"""The FastAPI application behind ``stanceclf serve``.

- ``POST /v1/classify``: classify one text or a list of texts (micro-batched, see :mod:`.batching`).
- ``GET /v1/model``: the model's labels, thresholds, temperatures and provenance; the server's limits.
- ``GET /v1/stats``: counters since start (requests, batches, units, refusals).
- ``GET /healthz``: the process is alive. ``GET /readyz``: 200 once the model is loaded, 503 before.

The model is fixed when the app is made (:class:`ServeSettings`): no request names a path. It is
loaded on a background thread after start, so that ``/healthz`` answers while it loads. With an API key,
every path but ``/healthz`` and ``/readyz`` needs ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import threading
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from uvicorn.config import STARTUP_FAILURE

import stanceclf
from stanceclf.errors import (ApiKeyError, BadRequestError, ExplainError, InternalServerError,
                              MethodNotAllowedError, NotFoundError, RequestTooLargeError, ServerBusyError,
                              StanceclfError)
from stanceclf.serve import schemas
from stanceclf.serve.batching import MicroBatcher, log
from stanceclf.serve.settings import ServeHooks, ServeSettings

#: Seconds a client told "busy" (503) should wait before trying again.
RETRY_AFTER_S = 1
_STATUS = {BadRequestError: 422, ExplainError: 422, ApiKeyError: 401, NotFoundError: 404, MethodNotAllowedError: 405,
           RequestTooLargeError: 413, ServerBusyError: 503, InternalServerError: 500}
_ERRORS = {status: {"model": schemas.ErrorResponse} for status in (401, 413, 422, 500, 503)}
#: Paths open without the API key: probes of load balancers and orchestrators, which say nothing of the model.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
#: A request refused before its body is read still has that body read and dropped, up to these bounds, before
#: the answer: a client that sends its whole body before reading (Python's http.client, hence urllib and
#: requests) would otherwise meet a reset connection instead of the answer. Beyond them the connection closes.
DRAIN_MAX_BYTES = 64 * 1024 * 1024
DRAIN_MAX_S = 30.0


def error_response(error: StanceclfError, problems: list[schemas.FieldProblem] = (), *,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error answer: status by error class, the coded message, and the fields at fault."""
    status = next((code for kind, code in _STATUS.items() if isinstance(error, kind)), 500)
    if not problems and error.where:
        problems = [schemas.FieldProblem(field=error.where, message=error.detail)]
    body = schemas.ErrorResponse(code=error.code, message=str(error), problems=list(problems))
    headers = dict(headers or {})
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers or None)


def _header(scope, name: bytes) -> bytes:
    return dict(scope["headers"]).get(name, b"")


async def _drop_body(scope, receive) -> None:
    """Read and drop what is left of the request body, within :data:`DRAIN_MAX_BYTES` and
    :data:`DRAIN_MAX_S`."""
    declared = _header(scope, b"content-length")
    if declared.isdigit() and int(declared) > DRAIN_MAX_BYTES:
        return
    dropped = 0
    try:
        async with asyncio.timeout(DRAIN_MAX_S):
            while dropped <= DRAIN_MAX_BYTES:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                dropped += len(message.get("body", b""))
    except TimeoutError:
        return


async def refuse(scope, receive, send, error: StanceclfError, *, body_left: bool,
                 headers: dict[str, str] | None = None) -> None:
    """Answer ``error`` in place of the app and close the connection. When ``body_left`` (the client may
    still be sending its body), the rest is read and dropped first; except from a client that waits for
    "100 Continue" before sending it, which learns from the answer that it need not send it."""
    waits_to_send = _header(scope, b"expect").lower() == b"100-continue"
    if body_left and not waits_to_send:
        await _drop_body(scope, receive)
    response = error_response(error, headers={**(headers or {}), "Connection": "close"})
    await response(scope, receive, send)


class BodySizeLimit:
    """ASGI middleware: refuse a body over ``max_bytes`` (413) before any of it is parsed, whether the
    client announces its length or streams it in chunks; read bodies are passed on in one piece."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await refuse(scope, receive, send, self._too_large(), body_left=True)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the client left while sending: nothing to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await refuse(scope, receive, send, self._too_large(), body_left=more)
            if not more:
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: http.disconnect when the client leaves
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return await self.app(scope, replay, send)

    def _too_large(self) -> RequestTooLargeError:
        return RequestTooLargeError(f"the request body is over the limit of {self.max_bytes} bytes; send fewer "
                                    "texts per request, or use 'stanceclf score' for corpora")


class ApiKeyCheck:
    """ASGI middleware: every path but :data:`OPEN_PATHS` needs ``Authorization: Bearer <key>`` (401
    otherwise, before the body is read). The key is compared in constant time and never logged."""

    def __init__(self, app, key: str):
        self.app = app
        self._key = key.encode("ascii")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        scheme, _, given = _header(scope, b"authorization").strip().partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._key):
            return await self.app(scope, receive, send)
        problem = "a wrong API key" if scheme.lower() == b"bearer" else "no API key"
        error = ApiKeyError(f"the request has {problem}; this server needs the header "
                            "'Authorization: Bearer <key>' with its API key")
        await refuse(scope, receive, send, error, body_left=True, headers={"WWW-Authenticate": "Bearer"})


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


def _bad_request(problems: list[schemas.FieldProblem]) -> JSONResponse:
    described = "; ".join(f"field '{p.field}': {p.message}" for p in problems)
    return error_response(BadRequestError(f"the request is invalid: {described}"), problems)


def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = _problems(error)
    if "json" not in request.headers.get("content-type", "json"):  # without the header FastAPI parses JSON
        problems.insert(0, schemas.FieldProblem(field="(body)", message="send JSON, with the header "
                                                                        "Content-Type: application/json"))
    return _bad_request(problems)


def _unparsable(cause: BaseException | None) -> str:
    """Why FastAPI could not parse a body (its 400 says only "There was an error parsing the body")."""
    if isinstance(cause, UnicodeDecodeError):
        return f"not {cause.encoding} text (byte {cause.start}); send JSON in UTF-8"
    if isinstance(cause, RecursionError):
        return "not usable JSON: nested too deeply"
    if isinstance(cause, ValueError):  # json: "Exceeds the limit (4300 digits) for integer string conversion"
        return "not usable JSON: an integer has more digits than Python reads (4,300)"
    return f"cannot be parsed ({type(cause).__name__})"


def http_error(request: Request, error: HTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own errors (no such path, a method the path does not take, a body that
    cannot be parsed) in the coded shape of every other error."""
    path = request.url.path
    if error.status_code == 404:
        return error_response(NotFoundError(f"there is no endpoint {path}; the API is described at /openapi.json"))
    if error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        return error_response(MethodNotAllowedError(f"{path} does not take {request.method}; it takes {allowed}"),
                              headers=error.headers)
    if error.status_code == 400:
        return _bad_request([schemas.FieldProblem(field="(body)", message=_unparsable(error.__cause__))])
    body = schemas.ErrorResponse(code=BadRequestError.code, message=f"[{BadRequestError.code}] {error.detail}")
    return JSONResponse(body.model_dump(), status_code=error.status_code, headers=error.headers)


class ServerState:
    """The loaded model and its batcher, once loaded."""

    def __init__(self, settings: ServeSettings, hooks: ServeHooks):
        self.settings = settings
        self.hooks = hooks
        self.batcher: MicroBatcher | None = None
        self.model_info: schemas.ModelInfo | None = None
        # One explanation at a time: each is already a batch of word-deleted copies of its sentences.
        self.explaining = threading.Lock()

    def load(self) -> None:
        """Load, warm up and start batching. On failure say why and end the process with uvicorn's
        startup-failure status, which also stops uvicorn's parent process under ``--workers N`` (a
        worker that would fail the same way on every restart)."""
        from stanceclf.infer.predict import load
        from stanceclf.model.manifest import library_versions

        settings = self.settings
        self.hooks.before_load()
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
        self.model = model
        self.batcher = MicroBatcher(model, max_queue=settings.max_queue, batch_wait_ms=settings.batch_wait_ms,
                                    batch_units=settings.batch_units, batch_size=settings.batch_size,
                                    hooks=self.hooks).start()
        log.info("stanceclf serve: model %s loaded (backend %s); ready", self.model_info.name, model.backend)

    def ready_batcher(self) -> MicroBatcher:
        if self.batcher is None:
            raise ServerBusyError("the model is still loading; retry shortly")
        return self.batcher

    def check_characters(self, texts: list[str], single: bool) -> None:
        """Each text within ``max_text_chars`` and all of them within ``max_request_chars`` (E052)."""
        limit = self.settings.max_text_chars
        for index, text in enumerate(texts):
            if len(text) > limit:
                raise RequestTooLargeError(f"has {len(text)} characters, over the limit of {limit}",
                                           where="text" if single else f"texts.{index}")
        total, limit = sum(map(len, texts)), self.settings.max_request_chars
        if total > limit:
            raise RequestTooLargeError(f"the texts have {total} characters together, over the limit of {limit} "
                                       "per request; send fewer texts per request, or use 'stanceclf score' for "
                                       "corpora", where="text" if single else "texts")

    def explain(self, body: schemas.ExplainRequest) -> list:
        """The explanations of a request's sentences, computed on the served model (on the caller's thread)."""
        from stanceclf.infer.explain import explain

        self.check_characters([body.text], single=True)
        units = len(self.model.units([body.text], split_sentences=body.split_sentences))
        limit = self.settings.max_explain_sentences
        if units > limit:
            raise RequestTooLargeError(f"the text has {units} sentences to explain, over the limit of {limit} per "
                                       "request (an explanation costs about one forward pass per word); send "
                                       "fewer sentences, or use 'stanceclf explain'", where="text")
        with self.explaining:
            return explain(body.text, label=body.label, model=self.model, method=body.method,
                           split_sentences=body.split_sentences)

    def check_units(self, units: int, split_sentences: bool, single: bool) -> None:
        """At most ``max_request_sentences`` units in one request (E052)."""
        limit = self.settings.max_request_sentences
        if units > limit:
            what = "sentences" if split_sentences else "texts"
            raise RequestTooLargeError(f"the request has {units} {what} to score, over the limit of {limit} "
                                       "per request; send fewer texts per request, or use 'stanceclf score' for "
                                       "corpora", where="text" if single else "texts")


async def _until_disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is already read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(settings: ServeSettings, hooks: ServeHooks = ServeHooks()) -> FastAPI:
    """The app for one fixed model. The model loads in the background once the server starts."""
    state = ServerState(settings, hooks)
    api_key = settings.api_key()

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
    if api_key:
        app.add_middleware(ApiKeyCheck, key=api_key)  # added last, so runs first: no body read without the key
    app.add_exception_handler(StanceclfError, lambda request, error: error_response(error))
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)

    @app.post("/v1/classify", response_model=schemas.ClassifyResponse, responses=_ERRORS)
    async def classify(body: schemas.ClassifyRequest, request: Request):
        """Classify one text or a list of texts; requests arriving together are scored as one batch, and a
        large request in pieces, between which others are scored."""
        batcher = state.ready_batcher()
        texts = body.all_texts
        single = body.text is not None
        state.check_characters(texts, single)
        units = await batcher.units(texts, body.split_sentences)
        state.check_units(len(units), body.split_sentences, single)
        results = await batcher.classify(units, len(texts), partial(_until_disconnected, request))
        if results is None:
            return Response(status_code=499)  # client closed the request; nothing reaches it anyway
        return schemas.ClassifyResponse.model_validate({"results": results}, from_attributes=True)

    @app.post("/v1/explain", response_model=schemas.ExplainResponse, responses=_ERRORS)
    async def explain(body: schemas.ExplainRequest):
        """Explain each sentence's flagged labels (or one named label): every word's weight on the calibrated
        score, computed on the forward pass this server runs. Costly: about one forward pass per word."""
        from starlette.concurrency import run_in_threadpool

        state.ready_batcher()
        explained = await run_in_threadpool(state.explain, body)
        return schemas.ExplainResponse.model_validate({"sentences": [e.to_dict() for e in explained]})

    @app.get("/v1/model", response_model=schemas.ModelInfo, responses={401: _ERRORS[401], 503: _ERRORS[503]})
    async def model_info():
        """The model this server runs, its provenance, and the server's limits."""
        state.ready_batcher()
        return state.model_info

    @app.get("/v1/stats", response_model=schemas.Stats, responses={401: _ERRORS[401], 503: _ERRORS[503]})
    async def stats():
        """Counters since this process started."""
        batcher = state.ready_batcher()
        return schemas.Stats(**batcher.counters.snapshot(), queued=batcher.queued,
                             in_progress=batcher.in_progress)

    @app.get("/healthz", response_model=schemas.Status)
    async def healthz():
        """The process is alive (says nothing about the model). Open without the API key."""
        return schemas.Status(status="ok")

    @app.get("/readyz", response_model=schemas.Status, responses={503: {"model": schemas.Status}})
    async def readyz():
        """200 once the model is loaded and warmed up; 503 while it loads. Open without the API key."""
        if state.batcher is not None:
            return schemas.Status(status="ready")
        return JSONResponse(schemas.Status(status="loading", detail="the model is still loading").model_dump(),
                            status_code=503)

    return app


def app_from_environment() -> FastAPI:
    """uvicorn's factory for ``--workers N``: each worker process builds the app from the settings the
    ``serve`` verb put in the environment."""
    return create_app(ServeSettings.from_environment())


def run_server(settings: ServeSettings, *, host: str, port: int, workers: int = 1, access_log: bool = True,
               hooks: ServeHooks = ServeHooks()) -> None:
    """Serve on uvicorn until stopped: one process, or ``workers`` processes that each build the app from
    the settings (hooks, being Python objects, reach only a single process)."""
    import uvicorn

    options = dict(host=host, port=port, access_log=access_log, log_level="info")
    if workers == 1:
        uvicorn.run(create_app(settings, hooks), **options)
        return
    if hooks != ServeHooks():
        raise ValueError("hooks reach only a server of one process (workers=1)")
    settings.to_environment()
    uvicorn.run("stanceclf.serve.app:app_from_environment", factory=True, workers=workers, **options)
