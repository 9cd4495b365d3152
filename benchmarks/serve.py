"""HTTP API under load: ``stanceclf serve`` with many concurrent clients, against batch ``classify()``.

    python benchmarks/serve.py --write benchmarks/results/serve.md

Starts the server (the shipped model, or --model) on a free loopback port, then runs --clients
concurrent clients for --seconds; each client posts one text at a time, a whole seed article
(examples/seeds/*.txt) or one sentence of one, and posts the next as soon as the answer comes.
Reports requests/s, sentences/s, latency percentiles, errors and the server's peak RSS. Then,
with the server stopped, it times ``classify()`` in this process on the texts the clients posted
(one call, sentence splitting included, like the server) and reports the server's throughput as
a share of it. The run is bounded: it stops by itself and only talks to 127.0.0.1.

    python benchmarks/serve.py --large-request --model claim-types-student --clients 4 --seconds 60 \
        --write benchmarks/results/serve-large-requests.md

measures instead how long one-sentence requests wait while maximum-size requests run: first
--clients clients post one sentence each, back to back, alone for --baseline-seconds; then the same
clients again while one more client posts the largest request the server's limits let through (seed
articles, one per text, up to its limits on characters, sentences and body bytes), back to back, for
--seconds. It reports the latency percentiles of the one-sentence requests that started while a large
one was being answered, and how long the large ones took.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from report import publish  # benchmarks/report.py, beside this script

from stanceclf.machine import described_flags

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "examples" / "seeds"


def payloads(article_share: float, seed: int = 0):
    """An endless, reproducible stream of (kind, text): seed articles and single sentences from them."""
    from stanceclf.data.sentences import SentenceSplitter

    articles = [path.read_text(encoding="utf-8") for path in sorted(SEEDS.glob("*.txt"))]
    splitter = SentenceSplitter()
    sentences = [s.text for article in articles for s in splitter.split(article)]
    rng = random.Random(seed)
    while True:
        if rng.random() < article_share:
            yield "article", rng.choice(articles)
        else:
            yield "sentence", rng.choice(sentences)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(model: str, port: int, extra: list[str]) -> Iterator[subprocess.Popen]:
    """``stanceclf serve`` in a child process (its log in a temporary file), stopped when the block ends."""
    command = [sys.executable, "-m", "stanceclf.cli", "serve", "--model", model, "--host", "127.0.0.1",
               "--port", str(port), "--no-access-log", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            yield server
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 300) -> float:
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            raise SystemExit("the server exited while starting")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server was not ready within {timeout} s")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load_test(url: str, clients: int, seconds: float, stream) -> tuple[list[dict], float]:
    """Each client posts, waits for the answer, posts again, until the time is up. Returns the records and
    the wall time until the last answer."""
    import httpx

    records: list[dict] = []
    deadline = time.monotonic() + seconds

    async def client_loop(client: httpx.AsyncClient):
        while time.monotonic() < deadline:
            kind, text = next(stream)
            start = time.perf_counter()
            record = {"kind": kind, "text": text, "ok": False, "sentences": 0}
            try:
                response = await client.post("/v1/classify", json={"text": text})
                record["ok"] = response.status_code == 200
                record["sentences"] = len(response.json()["results"][0]) if record["ok"] else 0
                record["error"] = None if record["ok"] else f"{response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as error:
                record["error"] = repr(error)
            record["seconds"] = time.perf_counter() - start
            records.append(record)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    start = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        # A hard bound: a stuck server cannot keep the benchmark running.
        await asyncio.wait_for(asyncio.gather(*(client_loop(client) for _ in range(clients))), seconds + 180)
    return records, time.monotonic() - start


def in_process_rate(model_dir: str, backend: str, texts: list[str], threads: int | None) -> tuple[float, int]:
    """Sentences per second of one batch ``classify()`` over ``texts`` (after a warm-up), with the server's
    torch threads."""
    import torch

    from stanceclf import load

    if threads:
        torch.set_num_threads(threads)

    model = load(model_dir, fast=backend)
    model.classify(texts[:4])
    start = time.perf_counter()
    results = model.classify(texts)
    seconds = time.perf_counter() - start
    sentences = sum(len(r) for r in results)
    return sentences / seconds, sentences


def measure(args) -> dict:
    import httpx

    from stanceclf.infer.predict import default_model_path

    model = str(args.model or default_model_path())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = ["--backend", args.backend] + (["--threads", str(args.threads)] if args.threads else [])
    with running_server(model, port, extra) as server:
        startup = wait_ready(url, server)
        records, wall = asyncio.run(load_test(url, args.clients, args.seconds, payloads(args.article_share)))
        stats = httpx.get(f"{url}/v1/stats", timeout=10).json()
        rss = peak_rss_mb(server.pid)
    ok = [r for r in records if r["ok"]]
    # The same texts, in the order posted, up to --compare-sentences sentences, as one classify() call.
    sample, total = [], 0
    for record in ok:
        if total >= args.compare_sentences:
            break
        sample.append(record["text"])
        total += record["sentences"]
    classify_rate, classify_sentences = in_process_rate(model, args.backend, sample, args.threads)
    latencies = np.array([r["seconds"] for r in ok]) * 1000
    return {
        "model": model, "startup_s": startup, "wall_s": wall, "requests": len(records), "ok": len(ok),
        "errors": [r["error"] for r in records if not r["ok"]],
        "sentences": sum(r["sentences"] for r in ok), "kinds": {k: sum(r["kind"] == k for r in ok)
                                                                for k in ("article", "sentence")},
        "latency_ms": {p: float(np.percentile(latencies, p)) for p in (50, 95, 99)} if len(ok) else {},
        "latency_by_kind_ms": {k: float(np.percentile([r["seconds"] * 1000 for r in ok if r["kind"] == k], 50))
                               for k in ("article", "sentence") if any(r["kind"] == k for r in ok)},
        "stats": stats, "peak_rss_mb": rss, "classify_rate": classify_rate,
        "classify_sentences": classify_sentences,
    }


def largest_request(model: str, limits: dict) -> tuple[list[str], int, int]:
    """The largest request ``limits`` let through, made of seed articles, one per text, repeated: its texts,
    characters and sentences (counted with the model's own splitter)."""
    from stanceclf.infer.predict import model_path
    from stanceclf.model.directory import check_model_directory

    splitter = check_model_directory(model_path(model)).splitter
    articles = [(text, len(splitter.split(text))) for text in sorted(p.read_text(encoding="utf-8")
                                                                     for p in SEEDS.glob("*.txt"))]
    texts, chars, sentences, body = [], 0, 0, len('{"texts": []}')
    for text, count in itertools.cycle(articles):
        encoded = len(json.dumps(text)) + 2
        if (len(text) > limits["max_text_chars"] or chars + len(text) > limits["max_request_chars"]
                or sentences + count > limits["max_request_sentences"] or body + encoded > limits["max_body_bytes"]):
            return texts, chars, sentences
        texts.append(text)
        chars, sentences, body = chars + len(text), sentences + count, body + encoded


async def small_requests_beside_large(url: str, clients: int, seconds: float, large: list[str] | None,
                                      sentences: list[str]) -> tuple[list[dict], list[dict]]:
    """``clients`` clients post one sentence each, back to back, for ``seconds``; with ``large``, one more
    client posts it back to back meanwhile. Returns the records of the small and of the large requests; a
    small one's ``beside`` says whether a large one was being answered when it started."""
    import httpx

    small_records: list[dict] = []
    large_records: list[dict] = []
    deadline = time.monotonic() + seconds
    large_running = False
    rng = random.Random(1)

    async def post(client, payload) -> tuple[bool, str | None, float]:
        start = time.perf_counter()
        try:
            response = await client.post("/v1/classify", json=payload)
            error = None if response.status_code == 200 else f"{response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as failure:
            error = repr(failure)
        return error is None, error, time.perf_counter() - start

    async def small_loop(client):
        while time.monotonic() < deadline:
            beside = large_running
            ok, error, took = await post(client, {"text": rng.choice(sentences)})
            small_records.append({"ok": ok, "error": error, "seconds": took, "beside": beside})

    async def large_loop(client):
        nonlocal large_running
        while time.monotonic() < deadline:
            large_running = True
            try:  # the last one is given up at the deadline: the server drops the rest of it
                ok, error, took = await asyncio.wait_for(post(client, {"texts": large}), deadline - time.monotonic())
                large_records.append({"ok": ok, "error": error, "seconds": took})
            except TimeoutError:
                large_records.append({"ok": False, "error": None, "seconds": None})
            large_running = False

    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        loops = [small_loop(client) for _ in range(clients)] + ([large_loop(client)] if large else [])
        # A hard bound: a stuck server cannot keep the benchmark running.
        await asyncio.wait_for(asyncio.gather(*loops), seconds + 600)
    return small_records, large_records


def measure_large(args) -> dict:
    import httpx

    from stanceclf.data.sentences import SentenceSplitter
    from stanceclf.infer.predict import default_model_path

    model = str(args.model or default_model_path())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = ["--backend", args.backend] + (["--threads", str(args.threads)] if args.threads else [])
    articles = [path.read_text(encoding="utf-8") for path in sorted(SEEDS.glob("*.txt"))]
    sentences = [s.text for article in articles for s in SentenceSplitter().split(article)]
    with running_server(model, port, extra) as server:
        startup = wait_ready(url, server)
        limits = httpx.get(f"{url}/v1/model", timeout=10).json()["limits"]
        large, chars, units = largest_request(model, limits)
        alone, _ = asyncio.run(small_requests_beside_large(url, args.clients, args.baseline_seconds, None,
                                                           sentences))
        beside, large_records = asyncio.run(small_requests_beside_large(url, args.clients, args.seconds, large,
                                                                        sentences))
        given_up = sum(r["seconds"] is None for r in large_records)
        for _ in range(300):  # the server drops a request given up once its current batch is scored
            stats = httpx.get(f"{url}/v1/stats", timeout=10).json()
            if stats.get("abandoned", 0) >= given_up:
                break
            time.sleep(0.1)

    def percentiles(records: list[dict]) -> dict:
        seconds = [r["seconds"] for r in records if r["ok"]]
        if not seconds:
            return {}
        return {**{p: float(np.percentile(seconds, p)) for p in (50, 95, 99)}, "max": max(seconds),
                "count": len(seconds)}

    measured = [r for r in beside if r["beside"]]
    return {
        "model": model, "startup_s": startup, "limits": limits, "large_texts": len(large), "large_chars": chars,
        "large_sentences": units, "alone": percentiles(alone), "beside": percentiles(measured),
        "large": [r["seconds"] for r in large_records if r["ok"]],
        "large_given_up": given_up,
        "errors": [r["error"] for r in alone + beside + large_records if r["error"]], "stats": stats,
    }


def report_large(result: dict, args, command: str) -> str:
    model = Path(result["model"])
    model_name = model.relative_to(REPO) if model.is_relative_to(REPO) else model
    limits, alone, beside, large = result["limits"], result["alone"], result["beside"], result["large"]
    stats = result["stats"]

    def row(name: str, lat: dict) -> str:
        if not lat:
            return f"| {name} | 0 | - | - | - | - |"
        return (f"| {name} | {lat['count']} | {lat[50]:.2f} | {lat[95]:.2f} | **{lat[99]:.2f}** | "
                f"{lat['max']:.2f} |")

    lines = [
        "# HTTP API: one-sentence requests while maximum-size requests run",
        "",
        f"Command: `{command}`",
        f"Date {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores (shared with other jobs; "
        f"figures vary run to run), Python {platform.python_version()}; CPU flags: {described_flags()}.",
        f"Server: `stanceclf serve --model {model_name} --backend {args.backend}`"
        + (f" `--threads {args.threads}`" if args.threads else "")
        + f", one process, default limits ({limits.get('max_request_chars')} characters and "
        f"{limits.get('max_request_sentences')} sentences per request, {limits.get('max_body_bytes')} body bytes) "
        f"and batching. Ready {result['startup_s']:.1f} s after start.",
        f"Large request: {result['large_texts']} texts (seed articles, repeated), {result['large_chars']} "
        f"characters, {result['large_sentences']} sentences: the largest the limits let through, posted back to "
        f"back by one client for {args.seconds:.0f} s. Small requests: {args.clients} clients each posting one "
        f"seed sentence and waiting for the answer, back to back; first alone for {args.baseline_seconds:.0f} s, "
        "then beside the large requests (counted: those that started while a large one was being answered). "
        "The clients run in the benchmark's process on the same machine.",
        "",
        "| one-sentence requests | count | p50 (s) | p95 (s) | p99 (s) | max (s) |",
        "|---|---:|---:|---:|---:|---:|",
        row("alone", alone),
        row("beside a maximum-size request", beside),
        "",
        f"Maximum-size requests answered: {len(large)}"
        + (f", {np.mean(large):.1f} s each on average ({result['large_sentences'] / np.mean(large):.0f} "
           "sentences/s)" if large else "")
        + f"; given up by the client at the end of the run: {result['large_given_up']} (the server counted "
        f"{stats.get('abandoned', 0)} abandoned request(s) and scored no more of them). "
        f"Errors: {len(result['errors'])}. Model calls: {stats.get('batches', 0)} for "
        f"{stats.get('units', 0)} sentences.",
    ]
    if result["errors"]:
        lines += ["", "First errors:", ""] + [f"- `{e}`" for e in result["errors"][:5]]
    return "\n".join(lines) + "\n"


def report(result: dict, args, command: str) -> str:
    rate = result["sentences"] / result["wall_s"]
    stats = result["stats"]
    lat = result["latency_ms"]
    model = Path(result["model"])
    model_name = model.relative_to(REPO) if model.is_relative_to(REPO) else model
    lines = [
        "# HTTP API under concurrent load",
        "",
        f"Command: `{command}`",
        f"Date {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores (shared with other jobs; "
        f"figures vary run to run), Python {platform.python_version()}.",
        f"Server: `stanceclf serve --model {model_name} --backend {args.backend}`"
        + (f" `--threads {args.threads}`" if args.threads else "")
        + ", one process, default limits and batching (5 ms wait, 256 sentences). "
        f"Ready {result['startup_s']:.1f} s after start.",
        f"Load: {args.clients} concurrent clients on loopback for {args.seconds:.0f} s, each posting one text and "
        f"waiting for the answer; {args.article_share:.0%} of posts are a whole seed article "
        "(examples/seeds, 4.7 to 9.6 thousand characters), the rest one sentence of one. The clients run in the "
        "benchmark's process on the same machine, so they take some of its CPU.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| requests (answered OK) | {result['ok']} ({result['kinds']['article']} articles, "
        f"{result['kinds']['sentence']} sentences) |",
        f"| errors | {len(result['errors'])} |",
        f"| requests/s | {result['ok'] / result['wall_s']:.1f} |",
        f"| sentences/s | {rate:.1f} |",
        f"| latency p50 / p95 / p99 (ms) | {lat.get(50, 0):.0f} / {lat.get(95, 0):.0f} / {lat.get(99, 0):.0f} |",
        "| median latency: article / sentence (ms) | "
        + " / ".join(f"{result['latency_by_kind_ms'].get(k, 0):.0f}" for k in ("article", "sentence")) + " |",
        f"| model calls (batches) | {stats['batches']} (mean {stats['units'] / max(stats['batches'], 1):.1f} "
        f"sentences, {stats['texts'] / max(stats['batches'], 1):.1f} requests each) |",
        f"| server peak RSS (MB) | {result['peak_rss_mb']:.0f} |",
        f"| batch `classify()` in process, same texts ({result['classify_sentences']} sentences), sentences/s | "
        f"{result['classify_rate']:.1f} |",
        f"| **server throughput / batch classify()** | **{rate / result['classify_rate']:.2f}** |",
    ]
    if result["errors"]:
        lines += ["", "First errors:", ""] + [f"- `{e}`" for e in result["errors"][:5]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="Model directory (default: the shipped model).")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--threads", type=int,
                        help="Torch threads of the server and of the in-process classify() (default: torch's choice).")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--article-share", type=float, default=0.2, help="Share of posts that are whole articles.")
    parser.add_argument("--compare-sentences", type=int, default=3000,
                        help="Sentences of the posted texts that the in-process classify() is timed on.")
    parser.add_argument("--large-request", action="store_true",
                        help="Measure one-sentence requests beside maximum-size requests instead.")
    parser.add_argument("--baseline-seconds", type=float, default=15,
                        help="With --large-request: how long the one-sentence clients run alone first.")
    parser.add_argument("--write", type=Path, help="Write the Markdown report here.")
    args = parser.parse_args()
    command = "python benchmarks/serve.py " + " ".join(sys.argv[1:])
    result = measure_large(args) if args.large_request else measure(args)
    text = (report_large if args.large_request else report)(result, args, command.strip())
    publish(text, args.write)
    if result["errors"]:
        raise SystemExit(f"{len(result['errors'])} requests failed")


if __name__ == "__main__":
    main()
