"""The annotation loop against a real Label Studio: suggest -> import -> annotate -> export -> build-dataset.

Label Studio pins its own Django and friends, so it lives in its own virtualenv (``.venv-ls``,
made by ``.ci/run``); ``STANCECLF_LABEL_STUDIO`` names another ``label-studio`` executable. The
test starts the server on a free port with a temporary data folder, talks to its REST API
only, and always stops it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stanceclf.cli import app
from stanceclf.data.label_studio_config import labelling_config
from stanceclf.data.schema import load_schema
from stanceclf.data.sentences import SentenceSplitter

REPO = Path(__file__).resolve().parents[1]
LABEL_STUDIO = Path(os.environ.get("STANCECLF_LABEL_STUDIO", REPO / ".venv-ls" / "bin" / "label-studio"))
TOKEN = "stanceclf-test-token-0123456789"
STARTUP_SECONDS = 300

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not LABEL_STUDIO.exists(), reason=f"Label Studio is not installed at {LABEL_STUDIO} (make "
                       "it with 'bash setup.sh test', or set STANCECLF_LABEL_STUDIO to a label-studio executable)"),
]
runner = CliRunner()

DOCUMENTS = {
    "emoji": "Wow \U0001F600 prices will rise next year. NATO warned of a dangerous escalation \U0001F680.\n"
             "The minister blamed the central bank for the crisis.\n",
    "plain": "Moscow plans to expand its fleet. Analysts expect tensions to grow.\nNothing else happened.\n",
    "third": "The summit ended early. Both sides said talks would resume in spring.\n",
}


class LabelStudio:
    """A Label Studio server started for one test module, driven through its REST API."""

    def __init__(self, data_dir: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "server.log"
        env = {**os.environ, "LATEST_VERSION_CHECK": "false", "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir)}
        with open(self.log, "wb") as log:
            # Its own session: stopping it stops its child processes too, and nothing else.
            self.process = subprocess.Popen(
                [str(LABEL_STUDIO), "start", "--no-browser", "--port", str(self.port), "--data-dir",
                 str(data_dir / "data"), "--username", "admin@example.org", "--password", "stanceclf-test",
                 "--user-token", TOKEN, "--enable-legacy-api-token"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_until_up(self) -> None:
        deadline = time.time() + STARTUP_SECONDS
        while time.time() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"label-studio exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        pytest.fail(f"label-studio did not answer /health within {STARTUP_SECONDS} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def call(self, method: str, path: str, body=None):
        request = urllib.request.Request(
            self.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{method} {path}: HTTP {error.code}: {error.read()[:2000]!r}") from None


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    server = LabelStudio(tmp_path_factory.mktemp("label-studio"))
    try:
        server.wait_until_up()
        yield server
    finally:
        server.stop()


def _annotate(server: LabelStudio, tasks: dict[str, dict], second_user: int):
    """Submit annotations that change the pre-annotations. Returns the labels each sentence must get,
    ``{doc_id: {sentence index: labels}}``, and the first annotator's user id."""
    submitted: dict[str, dict[int, set[str]]] = {doc_id: {} for doc_id in tasks}

    def submit(doc_id: str, results: list[dict], **extra) -> dict:
        sentence = {(s.start, s.end): i for i, s in enumerate(SentenceSplitter().split(DOCUMENTS[doc_id]))}
        for result in results:
            submitted[doc_id].setdefault(sentence[result["value"]["start"], result["value"]["end"]], set()).update(
                result["value"]["labels"])
        return server.call("POST", f"/api/tasks/{tasks[doc_id]['id']}/annotations/", {"result": results, **extra})

    for doc_id, task in tasks.items():
        results = [dict(result) for result in task["predictions"][0]["result"]]
        # Remove one pre-annotated label, and add one the model did not give.
        results.remove(next(r for r in results if r["value"]["labels"] == ["threat_framing"]))
        last = max(results, key=lambda r: r["value"]["start"])
        results.append({**last, "id": "added", "value": {**last["value"], "labels": ["policy_attribution"]}})
        first_user = submit(doc_id, results)["completed_by"]
    # A second annotator: on "emoji" one more label (merged), on "third" a skipped task (never read).
    second = next(r for r in tasks["emoji"]["predictions"][0]["result"] if r["id"].startswith("s1-"))
    submit("emoji", [{**second, "id": "second", "value": {**second["value"], "labels": ["policy_attribution"]}}],
           completed_by=second_user)
    server.call("POST", f"/api/tasks/{tasks['third']['id']}/annotations/",
                {"result": [], "was_cancelled": True, "completed_by": second_user})
    return submitted, first_user


def _sentence_labels(dataset_dir: Path) -> dict[tuple[str, int], set[str]]:
    from stanceclf.data.dataset import load_built_dataset

    dataset, info = load_built_dataset(dataset_dir)
    names = [label["name"] for label in info["schema"]["labels"]]
    return {(row["doc_id"], row["sentence_index"]): {n for n, on in zip(names, row["labels"]) if on}
            for split in dataset.values() for row in split}


def _build(tmp_path: Path, export: Path, name: str, *options: str) -> Path:
    out = tmp_path / name
    result = runner.invoke(app, ["build-dataset", str(export), "--format", "label-studio", "--out", str(out),
                                 *options])
    assert result.exit_code == 0, result.output
    return out


def test_labelstudio_roundtrip_suggest_annotate_export_build(label_studio, tmp_path, make_tiny_model):
    schema = load_schema("claim-types")
    # Thresholds that make the pre-annotations certain: every sentence gets prediction and threat_framing.
    model_dir = make_tiny_model(thresholds={"prediction": 0.0, "threat_framing": 0.0, "policy_attribution": 2.0}
                                ).save_pretrained(tmp_path / "model")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for doc_id, text in DOCUMENTS.items():
        (corpus / f"{doc_id}.txt").write_text(text, encoding="utf-8")
    tasks_file = tmp_path / "tasks.json"
    result = runner.invoke(app, ["suggest", str(corpus), "--out", str(tasks_file), "--model", str(model_dir),
                                 "--n", "3", "--no-progress"])
    assert result.exit_code == 0, result.output

    server = label_studio
    config = labelling_config(schema)
    project = server.call("POST", "/api/projects", {"title": "stanceclf round trip", "label_config": config})
    assert server.call("GET", f"/api/projects/{project['id']}")["label_config"] == config
    imported = server.call("POST", f"/api/projects/{project['id']}/import", json.loads(tasks_file.read_text()))
    assert imported["task_count"] == 3 and imported["prediction_count"] == 3
    tasks = {t["data"]["doc_id"]: t for t in server.call("GET", f"/api/projects/{project['id']}/tasks?page_size=100")}
    assert set(tasks) == set(DOCUMENTS)
    for doc_id, task in tasks.items():  # the pre-annotations arrive as written, offsets on the text
        assert task["data"]["text"] == DOCUMENTS[doc_id]
        for item in task["predictions"][0]["result"]:
            assert DOCUMENTS[doc_id][item["value"]["start"]:item["value"]["end"]] == item["value"]["text"]

    second = server.call("POST", "/api/users/", {"email": "second@example.org", "username": "second",
                                                  "password": "stanceclf-test-2"})
    submitted, first = _annotate(server, tasks, second["id"])

    exports = {}
    for kind in ("JSON", "JSON_MIN"):
        exports[kind] = tmp_path / f"export-{kind}.json"
        exports[kind].write_text(json.dumps(server.call("GET", f"/api/projects/{project['id']}/export?exportType={kind}"
                                                        "&download_all_tasks=false"), ensure_ascii=False))
    # Sentences carry exactly the submitted labels (both annotators' on "emoji"), from both exports alike.
    built = {kind: _build(tmp_path, path, f"dataset-{kind}") for kind, path in exports.items()}
    expected = {(doc_id, index): submitted[doc_id].get(index, set()) for doc_id, text in DOCUMENTS.items()
                for index, _ in enumerate(SentenceSplitter().split(text))}
    assert _sentence_labels(built["JSON"]) == expected
    assert _sentence_labels(built["JSON_MIN"]) == expected
    infos = [json.loads((path / "build.json").read_text()) for path in built.values()]
    assert infos[0]["fingerprint"] == infos[1]["fingerprint"] and infos[0]["documents"] == infos[1]["documents"]

    # One document per annotator, alike from both exports; the skipped task is in neither.
    per_annotator = [_sentence_labels(_build(tmp_path, path, f"per-annotator-{kind}", "--reader-option",
                                             "annotations=per-annotator")) for kind, path in exports.items()]
    assert per_annotator[0] == per_annotator[1]
    assert {doc for doc, _ in per_annotator[0]} == {f"emoji@label-studio-user-{first}",
                                                    f"emoji@label-studio-user-{second['id']}",
                                                    f"plain@label-studio-user-{first}", f"third@label-studio-user-{first}"}

    # The export goes into a recipe as it is, and the recipe builds the same dataset.
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'name = "round-trip"\nschema = "claim-types"\noutput_dir = "model-2"\n\n[data]\n'
                      f'format = "label-studio"\ninputs = ["{exports["JSON_MIN"].name}"]\n'
                      'reader_options = {annotations = "merge"}\n', encoding="utf-8")
    result = runner.invoke(app, ["build-dataset", "--recipe", str(recipe), "--out", str(tmp_path / "from-recipe")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "from-recipe" / "build.json").read_text())["fingerprint"] == infos[0]["fingerprint"]

