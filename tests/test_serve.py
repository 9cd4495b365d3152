"""The HTTP API: the real server (uvicorn on loopback) in a subprocess, called over HTTP.

Most servers here run :func:`stanceclf.serve.app.run_server` with file gates as hooks (this file, run as a
script, is their launcher), so that a test can hold one in a state; the ``keyed`` server runs the
``stanceclf serve`` verb itself."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from typer.testing import CliRunner  # noqa: E402

from stanceclf.cli import app  # noqa: E402
from stanceclf.serve.settings import ServeHooks, ServeSettings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXT = "NATO will expand again. Moscow warned of a dangerous escalation.\nThe summit opened on Monday."
API_KEY = "k3y-" + uuid.uuid4().hex  # never a fixed string: the log test looks for it


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FileGate:
    """A point where a server in another process waits (a :class:`ServeHooks` hook), driven by files in
    ``folder``: open while the file ``open`` exists; closed, it lets one call through per ``pass-*`` file,
    which that call deletes."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self) -> None:  # in the server
        while not (self.folder / "open").exists():
            for ticket in self.folder.glob("pass-*"):
                try:
                    ticket.unlink()
                    return
                except FileNotFoundError:
                    continue
            time.sleep(0.01)

    def open(self) -> None:
        (self.folder / "open").touch()

    def close(self) -> None:
        (self.folder / "open").unlink(missing_ok=True)

    def let_through(self) -> None:
        (self.folder / f"pass-{uuid.uuid4().hex}").touch()


def serve_with_gates(gates: str, port: str, settings: str) -> None:
    """The gated server (this file run as a script): the app with file gates before loading and before each
    batch, on uvicorn, as ``stanceclf serve`` runs it."""
    from stanceclf.serve.app import run_server

    hooks = ServeHooks(before_load=FileGate(Path(gates) / "load"), before_batch=FileGate(Path(gates) / "worker"))
    run_server(ServeSettings.model_validate_json(settings), host="127.0.0.1", port=int(port), access_log=False,
               hooks=hooks)


class Server:
    """A server in a subprocess on a free loopback port; its output goes to a log file (a pipe nobody reads
    could fill and stall it). A gated one (the default) holds its model loading until :meth:`wait_ready` has
    seen it loading, and its worker before each batch while a test holds it (:meth:`held`, :meth:`step`)."""

    def __init__(self, log_path: Path, settings: ServeSettings | None = None, *, cli_options: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, headers: dict[str, str] | None = None):
        port = str(free_port())
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.headers = headers or {}
        self.gated = settings is not None
        gates = log_path.with_suffix(".gates")
        self.gates = {name: FileGate(gates / name) for name in ("load", "worker")}
        self.gates["worker"].open()
        if self.gated:
            command = [sys.executable, __file__, str(gates), port, settings.model_dump_json()]
        else:
            command = [sys.executable, "-m", "stanceclf.cli", "serve", "--port", port, *cli_options]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {}),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.seen: list[tuple[int, int]] = []  # (healthz, readyz) statuses while starting
        self.classify_while_loading = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @contextmanager
    def held(self, gate: str = "worker"):
        self.gates[gate].close()
        try:
            yield
        finally:
            self.gates[gate].open()

    def step(self) -> None:
        """Let the held worker score one batch."""
        self.gates["worker"].let_through()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=10, headers=self.headers) as client:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, f"the server exited:\n{self.log()}"
                try:
                    health, ready = client.get("/healthz").status_code, client.get("/readyz").status_code
                    if ready == 503 and self.gated and self.classify_while_loading is None:
                        self.classify_while_loading = client.post("/v1/classify", json={"text": "Too early."})
                        self.gates["load"].open()  # loading was held until now: it was certainly seen
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
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return httpx.post(f"{self.url}/v1/classify", json=payload, timeout=kwargs.pop("timeout", 60),
                          headers=headers, **kwargs)

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/v1/stats", timeout=10, headers=self.headers).json()


@pytest.fixture(scope="module")
def servers(shared_tiny_model_dir, tmp_path_factory):
    """Servers started together: ``main`` with small size limits, ``busy`` with a one-request queue,
    ``broken``, whose weights file is garbage (its manifest is fine, so it gets as far as loading), and
    ``keyed``, the ``stanceclf serve`` verb with an API key from a file and its access log on."""
    logs = tmp_path_factory.mktemp("serve-logs")
    broken_dir = logs / "broken-model"
    shutil.copytree(shared_tiny_model_dir, broken_dir)
    (broken_dir / "model.safetensors").write_bytes(b"not safetensors")
    key_file = logs / "api-key.txt"
    key_file.write_text(API_KEY + "\n")
    model = str(shared_tiny_model_dir)
    started = {}
    try:
        # One torch thread: on a shared machine two threads per process can run many times slower.
        started["main"] = Server(logs / "main.log", ServeSettings(
            model=model, threads=1, max_body_bytes=262144, max_text_chars=20000, max_request_chars=100_000,
            max_request_sentences=2000, batch_size=64, batch_units=256))
        started["busy"] = Server(logs / "busy.log", ServeSettings(model=model, threads=1, max_queue=1))
        started["broken"] = Server(logs / "broken.log", ServeSettings(model=str(broken_dir)))
        started["broken"].gates["load"].open()
        # The seams of earlier versions, which made a server wait for these files whatever started it.
        old_seams = {"STANCECLF_SERVE_TEST_LOAD_GATE": str(logs / "never"),
                     "STANCECLF_SERVE_TEST_WORKER_GATE": str(logs / "never")}
        started["keyed"] = Server(logs / "keyed.log", cli_options=(
            "--model", model, "--threads", "1", "--api-key-file", str(key_file), "--max-request-chars", "4567",
            "--max-request-sentences", "123"), env=old_seams, headers={"Authorization": f"Bearer {API_KEY}"})
        for name in ("main", "busy", "keyed"):
            started[name].wait_ready()
        yield started
    finally:
        for server in started.values():
            server.gates["worker"].open()
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
def test_serve_explain_gives_the_word_weights_of_the_served_model(server, reference):
    from stanceclf.infer.explain import explain

    label = reference.labels[1]
    response = httpx.post(f"{server.url}/v1/explain", json={"text": TEXT, "label": label}, timeout=120)
    assert response.status_code == 200, response.text
    sentences = response.json()["sentences"]
    expected = explain(TEXT, label=label, model=reference)
    assert [(s["start"], s["end"]) for s in sentences] == [(e.start, e.end) for e in expected]
    for got, want in zip(sentences, expected):
        words = got["explanations"][label]["words"]
        assert [(w["start"], w["end"], w["text"]) for w in words] == \
               [(w.start, w.end, w.text) for w in want.explanations[label].words]
        assert [w["weight"] for w in words] == pytest.approx([w.weight for w in want.explanations[label].words],
                                                             abs=1e-5)
        assert got["method"] == "occlusion" and got["backend"] == "torch"


def test_serve_explain_refuses_an_unknown_label_and_too_many_sentences(server):
    response = httpx.post(f"{server.url}/v1/explain", json={"text": TEXT, "label": "sarcasm"}, timeout=60)
    assert response.status_code == 422 and response.json()["code"] == "E035", response.text
    many = " ".join(f"Sentence {i} is here." for i in range(21))
    response = httpx.post(f"{server.url}/v1/explain", json={"text": many}, timeout=60)
    assert response.status_code == 413 and response.json()["code"] == "E052", response.text
    assert "limit of 20" in response.json()["message"]


def test_serve_model_endpoint_gives_labels_thresholds_and_provenance(server, reference):
    info = httpx.get(f"{server.url}/v1/model", timeout=10).json()
    assert info["labels"] == reference.labels == ["prediction", "threat_framing", "policy_attribution"]
    assert info["thresholds"] == reference.thresholds
    assert info["temperatures"] == reference.manifest.temperatures
    assert info["label_schema"] == reference.manifest.label_schema.model_dump(mode="json")
    assert info["base_model"] == "tiny-random-bert" and info["backend"] == "torch"
    assert info["library_versions"] == reference.manifest.library_versions
    assert "torch" in info["serving_versions"]
    assert info["limits"] == {"max_body_bytes": 262144, "max_text_chars": 20000, "max_request_chars": 100_000,
                              "max_request_sentences": 2000, "max_queue": 128, "max_explain_sentences": 20}
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
    assert {"200", "401", "413", "422", "503"} <= set(classify["responses"])


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


def many_sentences(count: int, per_text: int = 400) -> list[str]:
    """``count`` distinct sentences, ``per_text`` to a text (each text well under the main server's 20,000
    characters)."""
    sentences = [f"Claim {i} says that prices will rise." for i in range(count)]
    return [" ".join(sentences[i:i + per_text]) for i in range(0, count, per_text)]


def test_serve_request_over_the_sentence_limit_is_413_saying_the_limit(server, reference):
    texts = many_sentences(2001)
    assert len(reference.units(texts)) == 2001
    response = server.post({"texts": texts})
    assert response.status_code == 413, response.text[:500]
    assert response.json()["code"] == "E052"
    assert response.json()["problems"] == [{"field": "texts", "message": "the request has 2001 sentences to score, "
                                            "over the limit of 2000 per request; send fewer texts per request, or "
                                            "use 'stanceclf score' for corpora"}]
    assert server.post({"texts": many_sentences(2000)}).status_code == 200  # at the limit


def test_serve_request_over_the_character_limit_is_413_saying_the_limit(server):
    texts = ["Word " * 3600] * 6  # 18,000 characters each, under the limit per text; 108,000 together
    response = server.post({"texts": texts})
    assert response.status_code == 413, response.text[:500]
    assert response.json()["code"] == "E052"
    assert "108000 characters together, over the limit of 100000 per request" in response.json()["message"]


def test_serve_limits_are_the_verbs_options(servers):
    keyed = servers["keyed"]
    limits = httpx.get(f"{keyed.url}/v1/model", headers=keyed.headers).json()["limits"]
    assert (limits["max_request_chars"], limits["max_request_sentences"]) == (4567, 123)
    response = keyed.post({"text": "Go. " * 124})
    assert response.status_code == 413 and "124 sentences to score, over the limit of 123" in response.text


def post_with_urllib(url: str, body, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """What a client written with Python's standard library gets: the status and the JSON body."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_serve_body_over_the_limit_reaches_a_python_client_as_413(server):
    body = b'{"text": "' + b"a" * 5_000_000 + b'"}'
    status, answer = post_with_urllib(f"{server.url}/v1/classify", body)
    assert (status, answer["code"]) == (413, "E052")
    chunks = (body[i:i + 65_536] for i in range(0, len(body), 65_536))  # sent chunked, without Content-Length
    status, answer = post_with_urllib(f"{server.url}/v1/classify", chunks)
    assert (status, answer["code"]) == (413, "E052")
    assert server.post({"text": TEXT}).status_code == 200  # and the server is fine


@pytest.mark.parametrize("method, path, body, status, code, words", [
    ("POST", "/v1/classify", b'{"text": "caf\xe9 au lait"}', 422, "E051", "not utf-8 text (byte 13)"),
    ("POST", "/v1/classify", b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 422, "E051",
     "nested too deeply"),
    ("POST", "/v1/classify", b'{"text": ' + b"7" * 5000 + b"}", 422, "E051", "more digits than Python reads"),
    ("GET", "/v2/classify", None, 404, "E056", "there is no endpoint /v2/classify"),
    ("GET", "/v1/classify", None, 405, "E057", "/v1/classify does not take GET; it takes POST"),
    ("DELETE", "/v1/model", None, 405, "E057", "/v1/model does not take DELETE; it takes GET"),
])
def test_serve_errors_of_the_web_stack_have_the_coded_body(server, method, path, body, status, code, words):
    response = httpx.request(method, f"{server.url}{path}", content=body, timeout=60,
                             headers={"content-type": "application/json"})
    assert response.status_code == status, response.text[:500]
    answer = response.json()
    assert set(answer) == {"code", "message", "problems"} and answer["code"] == code
    assert answer["message"].startswith(f"[{code}]") and words in answer["message"], answer
    if status == 405:
        assert response.headers["allow"] in answer["message"]


# ---- the API key ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("authorization, problem", [
    (None, "no API key"), ("Bearer wrong-key", "a wrong API key"), (f"Bearer {API_KEY[:-1]}", "a wrong API key"),
    (f"Bearer {API_KEY}x", "a wrong API key"), (f"Basic {API_KEY}", "no API key"), (API_KEY, "no API key"),
])
def test_serve_api_key_guards_every_path_but_the_probes(servers, authorization, problem):
    keyed = servers["keyed"]
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in (("POST", "/v1/classify"), ("GET", "/v1/model"), ("GET", "/v1/stats"),
                         ("GET", "/openapi.json"), ("GET", "/nowhere")):
        response = httpx.request(method, f"{keyed.url}{path}", headers=headers, timeout=30,
                                 json={"text": TEXT} if method == "POST" else None)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["code"] == "E055" and f"the request has {problem}" in response.json()["message"]
    for path in ("/healthz", "/readyz"):
        assert httpx.get(f"{keyed.url}{path}", headers=headers).status_code == 200


def test_serve_api_key_lets_its_holder_in(servers, reference):
    keyed = servers["keyed"]
    response = keyed.post({"text": TEXT})  # with the key
    assert response.status_code == 200, response.text
    assert_same_predictions(response.json()["results"][0], reference.classify(TEXT))
    also_lowercase = keyed.post({"text": TEXT}, headers={"Authorization": f"bearer {API_KEY}"})
    assert also_lowercase.status_code == 200


def test_serve_api_key_refusal_reaches_a_python_client(servers):
    keyed = servers["keyed"]
    status, answer = post_with_urllib(f"{keyed.url}/v1/classify", b'{"text": "' + b"a" * 900_000 + b'"}')
    assert (status, answer["code"]) == (401, "E055")


def test_serve_api_key_is_never_logged(servers):
    keyed = servers["keyed"]
    wrong = f"wrong-{uuid.uuid4().hex}"
    assert keyed.post({"text": TEXT}).status_code == 200
    assert keyed.post({"text": TEXT}, headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
    assert keyed.post({"texts": [1]}).status_code == 422
    log = wait_for(lambda: (text := keyed.log()).count('"POST /v1/classify HTTP/1.1" 401') and text)
    assert API_KEY not in log and wrong not in log


def test_serve_api_key_source_reads_the_environment(monkeypatch):
    monkeypatch.setenv("STANCECLF_TEST_API_KEY", f"  {API_KEY}\n")
    assert ServeSettings(api_key_env="STANCECLF_TEST_API_KEY").api_key() == API_KEY
    assert ServeSettings().api_key() is None


def test_serve_verb_refuses_an_unusable_api_key_before_starting(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("STANCECLF_TEST_NO_KEY", raising=False)
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "spaced").write_text("two words\n")
    model = ["serve", "--model", str(tiny_model_dir)]
    for options, words in [
        (["--api-key-env", "STANCECLF_TEST_NO_KEY"], "environment variable STANCECLF_TEST_NO_KEY: is unset or empty"),
        (["--api-key-file", str(tmp_path / "empty")], "is unset or empty"),
        (["--api-key-file", str(tmp_path / "spaced")], "spaces or non-ASCII"),
        (["--api-key-file", str(tmp_path / "missing")], "cannot be read: No such file"),
        (["--api-key-file", str(tmp_path / "empty"), "--api-key-env", "X"], "not both"),
    ]:
        result = CliRunner().invoke(app, model + options)
        assert result.exit_code == 1, result.output
        assert "[E050]" in result.output and words in " ".join(result.output.split()), result.output


def test_serve_ignores_the_test_seams_of_earlier_versions(servers):
    """``keyed`` was started with the environment variables through which earlier versions made any server
    wait for a file (here one that never appears): production code reads no test seams."""
    keyed = servers["keyed"]
    assert keyed.seen[-1] == (200, 200)
    assert keyed.post({"text": TEXT}, timeout=30).status_code == 200


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


def test_serve_large_request_in_progress_counts_against_the_queue(servers):
    busy = servers["busy"]  # a queue of one
    before = busy.stats()
    with ThreadPoolExecutor(1) as pool, busy.held():
        big = pool.submit(busy.post, {"texts": many_sentences(200)})
        wait_for(lambda: (now := busy.stats())["in_progress"] == 1 and now["queued"] == 0)
        refused = busy.post({"text": "Small."})
    assert refused.status_code == 503 and "waiting or in progress" in refused.json()["message"]
    assert big.result().status_code == 200
    assert busy.stats()["in_progress"] == 0 and busy.stats()["rejected_busy"] - before["rejected_busy"] == 1


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


def test_serve_large_request_is_scored_in_pieces_between_small_ones(server, reference):
    large = many_sentences(1000)  # 16 pieces of --batch-size 64
    before = server.stats()
    with ThreadPoolExecutor(2) as pool, server.held():
        big = pool.submit(server.post, {"texts": large}, timeout=120)
        wait_for(lambda: worker_holds_a_job(server, before))
        server.step()  # its first piece
        wait_for(lambda: server.stats()["batches"] > before["batches"])
        small = pool.submit(server.post, {"text": TEXT})
        wait_for(lambda: server.stats()["queued"] == 1)
        server.step()  # the small request
        assert small.result(timeout=30).status_code == 200
        middle = server.stats()
        assert not big.done()  # it has 15 pieces to go
    assert big.result().status_code == 200, big.result().text[:500]
    after = server.stats()
    assert middle["batches"] - before["batches"] == 2
    assert middle["units"] - before["units"] == 64 + len(reference.units([TEXT]))
    assert after["batches"] - before["batches"] == 17 and after["units"] - before["units"] == 1000 + 3
    assert_same_predictions(small.result().json()["results"][0], reference.classify(TEXT))
    expected = [[prediction.to_dict() for prediction in text] for text in reference.classify(large)]
    assert big.result().json()["results"] == expected  # byte for byte: its pieces are classify()'s passes


def test_serve_batches_alternate_between_new_requests_and_pieces_of_large_ones(server):
    """A one-sentence request is not scored beside a large request's piece (it would wait for that too),
    and the large request still advances every other batch however many small ones arrive."""
    before = server.stats()
    sizes = []

    def one_batch() -> None:
        start = server.stats()
        server.step()
        done = wait_for(lambda: (now := server.stats())["batches"] > start["batches"] and now)
        sizes.append(done["units"] - start["units"])

    def small_one_waiting() -> Future:
        small = pool.submit(server.post, {"text": "Prices will rise."})
        wait_for(lambda: server.stats()["queued"] == 1)
        return small

    with ThreadPoolExecutor(3) as pool, server.held():
        big = pool.submit(server.post, {"texts": many_sentences(1000)}, timeout=120)
        wait_for(lambda: worker_holds_a_job(server, before))
        one_batch()  # the large request's first piece
        first = small_one_waiting()
        one_batch()  # the small request, alone
        assert first.result(timeout=30).status_code == 200
        second = small_one_waiting()
        one_batch()  # the large request's second piece, though a small request waits: the last batch was of small ones
        one_batch()
        assert second.result(timeout=30).status_code == 200
    assert sizes == [64, 1, 64, 1]
    assert big.result().status_code == 200


def test_serve_client_that_leaves_mid_request_stops_its_scoring(server):
    body = json.dumps({"texts": many_sentences(1000)}).encode()
    before = server.stats()
    with server.held():
        with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as client:
            client.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: worker_holds_a_job(server, before))
            server.step()
            wait_for(lambda: server.stats()["batches"] > before["batches"])  # its first piece is scored
        worker = server.gates["worker"].folder

        def dropped() -> bool:  # one more batch at a time, until the server has seen the client go
            if server.stats()["abandoned"] > before["abandoned"]:
                return True
            if not any(worker.glob("pass-*")):
                server.step()
            return False

        wait_for(dropped)
    after = server.stats()
    assert after["abandoned"] - before["abandoned"] == 1
    assert 64 <= after["units"] - before["units"] < 1000  # the rest was never scored
    assert after["texts"] == before["texts"]
    assert server.post({"text": TEXT}).status_code == 200


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


@pytest.mark.parametrize("broken, doing", [("units", "splitting the texts"), ("proba_and_truncation", "scoring")])
def test_serve_unexpected_error_is_a_coded_500_logged_once(shared_tiny_model_dir, monkeypatch, caplog, broken,
                                                         doing):
    from stanceclf.infer.model import StanceModel

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
        units = reference.units(["Scored after its loop closed."])
        job = _Job(units, 1, gone, gone.create_future(), batcher.pieces(units))
        gone.close()
        batcher._queue.put(job)

        async def ask():  # a client that stays; a dead worker would leave it waiting
            units = await batcher.units([TEXT], True)
            return await asyncio.wait_for(batcher.classify(units, 1, lambda: asyncio.Event().wait()), 20)

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


if __name__ == "__main__":
    serve_with_gates(*sys.argv[1:])
