"""The HTTP API: the real server (``python -m stanceclf.cli serve``) in a subprocess, called over HTTP."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from typer.testing import CliRunner  # noqa: E402

from stanceclf.cli import app  # noqa: E402
from stanceclf.serve.settings import TEST_LOAD_GATE_ENV, TEST_WORKER_GATE_ENV  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXT = "NATO will expand again. Moscow warned of a dangerous escalation.\nThe summit opened on Monday."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``stanceclf serve`` in a subprocess on a free loopback port; its output goes to a log file (a pipe
    nobody reads could fill and stall it). Its test gates (:mod:`stanceclf.serve.settings`) hold the model
    loading until :meth:`wait_ready` has seen it loading, and the worker whenever a test :meth:`hold`s it."""

    def __init__(self, model_dir: Path, log_path: Path, *options: str):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = log_path
        self.gates = {"load": log_path.with_suffix(".load-gate"), "worker": log_path.with_suffix(".worker-gate")}
        self.release("worker")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", TEST_LOAD_GATE_ENV: str(self.gates["load"]),
               TEST_WORKER_GATE_ENV: str(self.gates["worker"]),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "stanceclf.cli", "serve", "--model", str(model_dir), "--port",
                   self.url.rsplit(":", 1)[1], "--no-access-log", *options]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.seen: list[tuple[int, int]] = []  # (healthz, readyz) statuses while starting
        self.classify_while_loading = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def release(self, gate: str) -> None:
        self.gates[gate].touch()

    @contextmanager
    def held(self, gate: str):
        self.gates[gate].unlink(missing_ok=True)
        try:
            yield
        finally:
            self.release(gate)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, f"the server exited:\n{self.log()}"
                try:
                    health, ready = client.get("/healthz").status_code, client.get("/readyz").status_code
                    if ready == 503 and self.classify_while_loading is None:
                        self.classify_while_loading = client.post("/v1/classify", json={"text": "Too early."})
                        self.release("load")  # loading was held until now: it was certainly seen
                except httpx.TransportError:  # not listening yet
                    time.sleep(0.05)
                    continue
                self.seen.append((health, ready))
                if ready == 200:
                    return
                time.sleep(0.05)
        raise AssertionError(f"the server was not ready within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def post(self, payload=None, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/classify", json=payload, timeout=kwargs.pop("timeout", 60), **kwargs)

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/v1/stats", timeout=10).json()


@pytest.fixture(scope="module")
def servers(shared_tiny_model_dir, tmp_path_factory):
    """Servers started together: ``main`` with small size limits, ``busy`` with a one-request queue, and
    ``broken``, whose weights file is garbage (its manifest is fine, so it gets as far as loading)."""
    logs = tmp_path_factory.mktemp("serve-logs")
    broken_dir = logs / "broken-model"
    shutil.copytree(shared_tiny_model_dir, broken_dir)
    (broken_dir / "model.safetensors").write_bytes(b"not safetensors")
    started = []
    try:
        # One torch thread: on a shared machine two threads per process can run many times slower.
        started.append(Server(shared_tiny_model_dir, logs / "main.log", "--threads", "1", "--max-body-bytes",
                              "262144", "--max-text-chars", "20000"))
        started.append(Server(shared_tiny_model_dir, logs / "busy.log", "--threads", "1", "--max-queue", "1"))
        started.append(Server(broken_dir, logs / "broken.log"))
        started[-1].release("load")
        for server in started[:2]:
            server.wait_ready()
        yield dict(zip(("main", "busy", "broken"), started))
    finally:
        for server in started:
            server.release("worker")
            server.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers["main"]


@pytest.fixture(scope="module")
def reference(shared_tiny_model_dir):
    """The same model in process: what the server must answer."""
    from stanceclf import load

    return load(shared_tiny_model_dir)


def assert_same_predictions(served: list[dict], expected) -> None:
    assert len(served) == len(expected)
    for got, want in zip(served, expected):
        want = want.to_dict()
        assert {k: got[k] for k in ("text", "start", "end", "labels", "truncated")} == \
               {k: want[k] for k in ("text", "start", "end", "labels", "truncated")}
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-6)


def wait_for(condition, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


# ---- classify --------------------------------------------------------------------------------------
def test_serve_classify_one_text_equals_classify(server, reference):
    response = server.post({"text": TEXT})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 1 and len(results[0]) == 3
    assert_same_predictions(results[0], reference.classify(TEXT))
    assert [TEXT[p["start"]:p["end"]] for p in results[0]] == [p["text"] for p in results[0]]


def test_serve_classify_list_equals_classify(server, reference):
    texts = [TEXT, "Prices will rise next year.", "One more. And another one."]
    response = server.post({"texts": texts})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    for served, expected in zip(results, reference.classify(texts), strict=True):
        assert_same_predictions(served, expected)


def test_serve_classify_without_splitting_gives_one_unit_per_text(server, reference):
    texts = [TEXT, "Prices will rise next year."]
    response = server.post({"texts": texts, "split_sentences": False})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [len(r) for r in results] == [1, 1] and results[0][0]["text"] == TEXT
    for served, expected in zip(results, reference.classify(texts, split_sentences=False), strict=True):
        assert_same_predictions(served, expected)


# ---- model, health, readiness, OpenAPI ----------------------------------------------------------------
def test_serve_model_endpoint_gives_labels_thresholds_and_provenance(server, reference):
    info = httpx.get(f"{server.url}/v1/model", timeout=10).json()
    assert info["labels"] == reference.labels == ["prediction", "threat_framing", "policy_attribution"]
    assert info["thresholds"] == reference.thresholds
    assert info["temperatures"] == reference.manifest.temperatures
    assert info["label_schema"] == reference.manifest.label_schema.model_dump(mode="json")
    assert info["base_model"] == "tiny-random-bert" and info["backend"] == "torch"
    assert info["library_versions"] == reference.manifest.library_versions
    assert "torch" in info["serving_versions"]
    assert info["limits"] == {"max_body_bytes": 262144, "max_text_chars": 20000, "max_queue": 128}
    assert info["name"] == "tiny-model" and "/" not in info["name"]


def test_serve_is_alive_before_ready_and_refuses_work_until_loaded(server):
    assert (200, 503) in server.seen, server.seen  # listening while the model loads
    assert server.seen[-1] == (200, 200)
    early = server.classify_while_loading
    assert early.status_code == 503 and early.headers["retry-after"] == "1"
    assert early.json()["code"] == "E053" and "loading" in early.json()["message"]
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok", "detail": None}
    assert httpx.get(f"{server.url}/readyz").json()["status"] == "ready"


def test_serve_openapi_documents_every_field(server):
    document = httpx.get(f"{server.url}/openapi.json").json()
    schemas = document["components"]["schemas"]
    for name in ("ClassifyRequest", "ClassifyResponse", "Prediction", "ModelInfo", "Stats", "ErrorResponse"):
        assert name in schemas, sorted(schemas)
    for name in ("ClassifyRequest", "ClassifyResponse", "Prediction", "ModelInfo", "Limits", "Stats",
                 "ErrorResponse", "FieldProblem", "LabelSchema", "LabelDefinition", "Status"):
        undocumented = [field for field, spec in schemas[name]["properties"].items() if not spec.get("description")]
        assert not undocumented, f"{name}: {undocumented}"
    classify = document["paths"]["/v1/classify"]["post"]
    assert {"200", "413", "422", "503"} <= set(classify["responses"])


# ---- limits and bad input ------------------------------------------------------------------------------
def test_serve_body_over_the_limit_is_413(server):
    body = b'{"text": "' + b"a" * 300_000 + b'"}'
    declared = httpx.post(f"{server.url}/v1/classify", content=body, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and declared.json()["code"] == "E052"
    assert "262144 bytes" in declared.json()["message"]

    def chunks():  # no Content-Length: the server must count as it reads
        yield b'{"text": "'
        for _ in range(6):
            yield b"a" * 65_536
        yield b'"}'

    streamed = httpx.post(f"{server.url}/v1/classify", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["code"] == "E052"


def test_serve_text_over_the_limit_is_413_naming_it(server):
    response = server.post({"texts": ["Fine.", "a" * 20_001]})
    assert response.status_code == 413
    assert response.json()["problems"] == [{"field": "texts.1", "message": "has 20001 characters, over the limit "
                                                                           "of 20000"}]


@pytest.mark.parametrize("payload, field, words", [
    (b'{"texts": ["a", ', "(body)", "not valid JSON"),
    ({"texts": [1]}, "texts.0", "valid string"),
    ({"text": ["a list"]}, "text", "valid string"),
    ({"text": "   \n"}, "text", "empty or only whitespace"),
    ({"texts": ["Fine.", ""]}, "texts.1", "empty or only whitespace"),
    ({"texts": []}, "texts", "at least 1"),
    ({"text": "Fine.", "split_sentences": "yes"}, "split_sentences", "boolean"),
    ({}, "(body)", "exactly one of 'text'"),
    ({"text": "Fine.", "texts": ["Fine."]}, "(body)", "exactly one of 'text'"),
    ({"txt": "Fine."}, "txt", "Extra inputs"),
])
def test_serve_bad_request_is_422_naming_the_field(server, payload, field, words):
    if isinstance(payload, bytes):
        response = httpx.post(f"{server.url}/v1/classify", content=payload,
                              headers={"content-type": "application/json"})
    else:
        response = server.post(payload)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "E051" and body["message"].startswith("[E051]")
    assert any(p["field"] == field and words in p["message"] for p in body["problems"]), body


def test_serve_body_that_is_not_json_says_which_content_type(server):
    response = httpx.post(f"{server.url}/v1/classify", content=b"text=hello",
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 422
    assert "Content-Type: application/json" in response.json()["problems"][0]["message"]


# ---- batching, overload, disconnects, failures ----------------------------------------------------------
def worker_holds_a_job(server: Server, before: dict) -> bool:
    """A request arrived and the worker took it off the queue (and, held, waits before scoring it)."""
    stats = server.stats()
    return stats["requests"] > before["requests"] and stats["queued"] == 0


def test_serve_concurrent_requests_are_scored_in_one_batch(server, reference):
    texts = [f"Request {i} says NATO will grow. Moscow warned of war number {i}." for i in range(16)]
    before = server.stats()
    with ThreadPoolExecutor(len(texts) + 1) as pool, server.held("worker"):
        first = pool.submit(server.post, {"text": TEXT})
        wait_for(lambda: worker_holds_a_job(server, before))
        small = [pool.submit(server.post, {"text": text}) for text in texts]
        wait_for(lambda: server.stats()["queued"] == len(texts))  # all wait while the worker is held
    after = server.stats()
    assert first.result().status_code == 200 and all(r.result().status_code == 200 for r in small)
    assert after["requests"] - before["requests"] == len(texts) + 1
    assert after["batches"] - before["batches"] == 1, (before, after)  # the queued requests joined the first
    assert after["units"] - before["units"] == len(reference.units([TEXT, *texts]))
    for response, text in zip(small, texts):
        assert_same_predictions(response.result().json()["results"][0], reference.classify(text))


def test_serve_full_queue_is_503_with_retry_after(servers):
    busy = servers["busy"]
    before = busy.stats()
    with ThreadPoolExecutor(2) as pool, busy.held("worker"):
        scored = pool.submit(busy.post, {"text": "Scored first."})
        wait_for(lambda: worker_holds_a_job(busy, before))
        queued = pool.submit(busy.post, {"text": "Queued second."})
        wait_for(lambda: busy.stats()["queued"] == 1)  # the queue of one is full until the worker moves
        refused = [busy.post({"text": f"Small request {i}."}) for i in range(3)]
    assert scored.result().status_code == 200 and queued.result().status_code == 200
    assert [r.status_code for r in refused] == [503] * 3
    assert all(r.headers["retry-after"] == "1" and r.json()["code"] == "E053" for r in refused)
    assert "queue is full" in refused[0].json()["message"]
    assert busy.stats()["rejected_busy"] - before["rejected_busy"] == len(refused)
    assert "never awaited" not in busy.log()


def test_serve_client_that_leaves_before_scoring_costs_nothing(servers, reference):
    server = servers["busy"]
    before = server.stats()
    with ThreadPoolExecutor(1) as pool, server.held("worker"):
        scored = pool.submit(server.post, {"text": TEXT})
        wait_for(lambda: worker_holds_a_job(server, before))
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while its request waits
            server.post({"text": "Gone before scoring."}, timeout=0.2)
        time.sleep(0.3)  # the server's idle event loop sees the disconnect; nothing shows it in /v1/stats
    assert scored.result().status_code == 200
    after = wait_for(lambda: (s := server.stats())["abandoned"] > before["abandoned"] and s)
    assert after["abandoned"] - before["abandoned"] == 1
    assert after["requests"] - before["requests"] == 2
    assert after["units"] - before["units"] == len(reference.units([TEXT]))  # the abandoned one was never scored


@contextmanager
def server_in_process(model_dir: Path):
    """The app on a real uvicorn server in a thread of this process, so that a test can break the model under
    it; uvicorn's loggers are left unconfigured, so that their records reach pytest's ``caplog``."""
    import uvicorn

    from stanceclf.serve.app import create_app
    from stanceclf.serve.settings import ServeSettings

    port = free_port()
    uvicorn_server = uvicorn.Server(uvicorn.Config(create_app(ServeSettings(model=str(model_dir))), host="127.0.0.1",
                                                   port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: uvicorn_server.started and httpx.get(f"{url}/readyz").status_code == 200, timeout=120)
        yield url
    finally:
        uvicorn_server.should_exit = True
        thread.join(30)


@pytest.mark.parametrize("broken, doing", [("units", "splitting the texts"), ("classify_units", "scoring")])
def test_serve_unexpected_error_is_a_coded_500_logged_once(shared_tiny_model_dir, monkeypatch, caplog, broken,
                                                         doing):
    from stanceclf.infer.model import StanceModel

    monkeypatch.delenv(TEST_WORKER_GATE_ENV, raising=False)
    monkeypatch.delenv(TEST_LOAD_GATE_ENV, raising=False)
    with server_in_process(shared_tiny_model_dir) as url:
        working = getattr(StanceModel, broken)

        def fails(*args, **kwargs):
            raise ZeroDivisionError("a bug, not the request")

        monkeypatch.setattr(StanceModel, broken, fails)
        caplog.clear()
        response = httpx.post(f"{url}/v1/classify", json={"text": TEXT}, timeout=60)
        assert response.status_code == 500, response.text
        body = response.json()
        assert body == {"code": "E054", "problems": [], "message": f"[E054] internal error while {doing} "
                        "(ZeroDivisionError); the server's log has the details"}
        logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
        assert len(logged) == 1 and f"unexpected error while {doing}" in logged[0].getMessage()
        monkeypatch.setattr(StanceModel, broken, working)
        assert httpx.post(f"{url}/v1/classify", json={"text": TEXT}, timeout=60).status_code == 200  # lives on


def test_serve_worker_outlives_an_event_loop_closed_at_shutdown(reference):
    from stanceclf.serve.batching import MicroBatcher, _Job

    batcher = MicroBatcher(reference, max_queue=4, batch_wait_ms=0, batch_units=256, batch_size=8).start()
    try:
        gone = asyncio.new_event_loop()
        job = _Job(["Scored after its loop closed."], True, gone, gone.create_future())
        gone.close()
        batcher._queue.put(job)

        async def ask():  # a client that stays; a dead worker would leave it waiting
            return await asyncio.wait_for(batcher.classify([TEXT], True, lambda: asyncio.Event().wait()), 20)

        assert len(asyncio.run(ask())[0]) == 3  # a later request is still answered
    finally:
        batcher.close()


def test_serve_model_that_fails_to_load_ends_the_server_with_the_reason(servers):
    broken = servers["broken"]
    assert broken.process.wait(timeout=120) == 3  # uvicorn's startup-failure status
    assert "the model could not be loaded" in broken.log()


# ---- the verb ------------------------------------------------------------------------------------------
def test_serve_verb_without_the_extra_is_a_coded_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 1
    assert "[E050]" in result.output and "stanceclf[serve]" in result.output


def test_serve_verb_refuses_a_missing_model_or_backend_before_starting(tmp_path, tiny_model_dir):
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "[E020]" in result.output
    result = CliRunner().invoke(app, ["serve", "--model", str(tiny_model_dir), "--backend", "gpu"])
    assert result.exit_code == 1 and "[E022]" in result.output


def test_serve_import_stanceclf_does_not_load_the_web_stack():
    code = "import sys, stanceclf, stanceclf.cli; print(sorted({'fastapi', 'uvicorn'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]"
