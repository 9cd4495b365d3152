"""The HTTP API: the real server (``python -m stanceclf.cli serve``) in a subprocess, called over HTTP."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from typer.testing import CliRunner  # noqa: E402

from stanceclf.cli import app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXT = "NATO will expand again. Moscow warned of a dangerous escalation.\nThe summit opened on Monday."


def many_sentences(count: int, tag: int = 0) -> str:
    return " ".join(f"Minister {tag}-{i} said the war will come soon." for i in range(count))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``stanceclf serve`` in a subprocess on a free loopback port; its output goes to a log file (a pipe
    nobody reads could fill and stall it)."""

    def __init__(self, model_dir: Path, log_path: Path, *options: str):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = log_path
        env = {**os.environ, "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "stanceclf.cli", "serve", "--model", str(model_dir), "--port",
                   self.url.rsplit(":", 1)[1], "--no-access-log", *options]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.seen: list[tuple[int, int]] = []  # (healthz, readyz) statuses while starting
        self.classify_while_loading = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, f"the server exited:\n{self.log()}"
                try:
                    health, ready = client.get("/healthz").status_code, client.get("/readyz").status_code
                    if ready == 503 and self.classify_while_loading is None:
                        self.classify_while_loading = client.post("/v1/classify", json={"text": "Too early."})
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
    """Servers started together: ``main`` with small size limits, ``busy`` with a one-request queue and
    one sentence per forward pass (so that a big request keeps its worker busy for a good while), and
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
        started.append(Server(shared_tiny_model_dir, logs / "busy.log", "--threads", "1", "--max-queue", "1",
                              "--batch-size", "1"))
        started.append(Server(broken_dir, logs / "broken.log"))
        for server in started[:2]:
            server.wait_ready()
        yield dict(zip(("main", "busy", "broken"), started))
    finally:
        for server in started:
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


# ---- batching, overload, disconnects -----------------------------------------------------------------
def busy_worker_payload(texts: int = 3) -> dict:
    """One request that keeps the model busy for a while (380 sentences per text)."""
    return {"texts": [many_sentences(380, tag) for tag in range(texts)]}


def test_serve_concurrent_requests_are_scored_in_few_batches(server, reference):
    texts = [f"Request {i} says NATO will grow. Moscow warned of war number {i}." for i in range(16)]
    before = server.stats()

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            big = asyncio.create_task(client.post("/v1/classify", json=busy_worker_payload(8)))
            while (await client.get("/v1/stats")).json()["requests"] == before["requests"]:
                await asyncio.sleep(0.01)  # the big request is in: the small ones queue behind it
            small = await asyncio.gather(*(client.post("/v1/classify", json={"text": t}) for t in texts))
            return await big, small

    big, small = asyncio.run(run())
    after = server.stats()
    assert big.status_code == 200 and all(r.status_code == 200 for r in small)
    assert after["requests"] - before["requests"] == len(texts) + 1
    assert after["batches"] - before["batches"] <= 1 + len(texts) // 2, (before, after)
    for response, text in zip(small, texts):
        assert_same_predictions(response.json()["results"][0], reference.classify(text))


def test_serve_full_queue_is_503_with_retry_after(servers):
    busy = servers["busy"]
    before = busy.stats()
    with ThreadPoolExecutor(9) as pool:
        big = pool.submit(busy.post, busy_worker_payload())
        wait_for(lambda: busy.stats()["requests"] > before["requests"] and busy.stats()["queued"] == 0)
        small = list(pool.map(lambda i: busy.post({"text": f"Small request {i}."}), range(8)))
        assert big.result().status_code == 200
    refused = [r for r in small if r.status_code == 503]
    assert refused, [r.status_code for r in small]
    assert all(r.status_code == 200 for r in small if r not in refused)
    assert all(r.headers["retry-after"] == "1" and r.json()["code"] == "E053" for r in refused)
    assert "queue is full" in refused[0].json()["message"]
    assert busy.stats()["rejected_busy"] - before["rejected_busy"] == len(refused)


def test_serve_client_that_leaves_before_scoring_costs_nothing(servers, reference):
    server = servers["busy"]
    payload = busy_worker_payload()
    big_units = len(reference.units(payload["texts"]))
    before = server.stats()
    with ThreadPoolExecutor(1) as pool:
        big = pool.submit(server.post, payload)
        wait_for(lambda: server.stats()["requests"] > before["requests"] and server.stats()["queued"] == 0)
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while its request waits
            server.post({"text": "Gone before scoring."}, timeout=0.1)
        assert big.result().status_code == 200
    after = wait_for(lambda: (s := server.stats())["abandoned"] > before["abandoned"] and s)
    assert after["abandoned"] - before["abandoned"] == 1
    assert after["requests"] - before["requests"] == 2
    assert after["units"] - before["units"] == big_units  # the abandoned request was never scored


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
