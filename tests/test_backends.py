"""How ``fast=True`` picks a backend: measured on a calibration batch, checked against fp32, cached."""

from __future__ import annotations

import json
import logging
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from stanceclf.errors import BackendError, ModelDirectoryError
from stanceclf.infer.backends import BACKENDS, CACHE_FILE, MAX_MEMORY_RATIO, Backend, choose_backend
from stanceclf.infer.int8 import MAX_DECISIONS_CHANGED, QUANTIZED_FOLDER, calibration_units, int8_encoder
from stanceclf.infer.model import StanceModel


TEXTS = ["The army will attack the city soon.", "She plays the piano.", "Officials warned of a grave threat."]


@pytest.fixture
def tiny(tiny_model_dir):
    return StanceModel.from_pretrained(tiny_model_dir)


def timings(seconds: dict[str, float], calls: list | None = None):
    """A ``measure`` seam that reports fixed seconds per backend (and records what it was asked)."""

    def measure(name, run):
        if calls is not None:
            calls.append(name)
        return seconds[name]

    return measure


@pytest.mark.parametrize("seconds, fastest", [({"torch": 3.0, "bf16": 2.0, "onnx": 1.0}, "onnx"),
                                              ({"torch": 1.0, "bf16": 2.0, "onnx": 3.0}, "torch"),
                                              ({"torch": 3.0, "bf16": 1.0, "onnx": 2.0}, "bf16")])
def test_backends_auto_picks_the_measured_fastest(tiny, tmp_path, seconds, fastest):
    choice, fast = choose_backend(tiny, candidates=["torch", "bf16", "onnx"], measure=timings(seconds),
                                  cache_path=tmp_path / CACHE_FILE)
    assert choice.backend == fast.backend == fastest
    assert (fast.encoder is None) == (fastest == "torch")
    assert choice.seconds == seconds and not choice.cached
    assert max(choice.deviation.values()) <= 0.02
    texts = ["NATO will expand again.", "Moscow warned of a dangerous escalation."]
    assert abs(fast.predict_proba(texts) - tiny.predict_proba(texts)).max() <= 0.02


def test_backends_auto_never_picks_a_backend_that_moves_scores(tiny, tmp_path, monkeypatch):
    def skewed(stance, threads):
        def encoder(input_ids, attention_mask):
            import torch

            logits = stance.model(input_ids=torch.as_tensor(input_ids), attention_mask=torch.as_tensor(attention_mask)).logits
            return logits.float().numpy() + 2.0

        return encoder

    monkeypatch.setitem(BACKENDS, "skewed", Backend("skewed", "fast and wrong", skewed))
    calls = []
    choice, fast = choose_backend(tiny, candidates=["torch", "skewed"], cache_path=tmp_path / CACHE_FILE,
                                  measure=timings({"torch": 5.0, "skewed": 0.1}, calls))
    assert choice.backend == fast.backend == "torch"
    assert choice.deviation["skewed"] > 0.02 and calls == ["torch"]


def test_backends_choice_is_cached_per_machine_and_model(tiny, tmp_path, make_tiny_model):
    cache = tmp_path / CACHE_FILE
    calls = []
    first, _ = choose_backend(tiny, candidates=["torch", "bf16"], cache_path=cache,
                              measure=timings({"torch": 2.0, "bf16": 1.0}, calls))
    assert calls == ["torch", "bf16"] and first.backend == "bf16"
    again, fast = choose_backend(tiny, candidates=["torch", "bf16"], cache_path=cache,
                                 measure=timings({"torch": 1.0, "bf16": 2.0}, calls))
    assert calls == ["torch", "bf16"], "the second load must not measure again"
    assert again.cached and again.backend == fast.backend == "bf16" and again.seconds == first.seconds
    other = StanceModel.from_pretrained(make_tiny_model(seed=5).save_pretrained(tmp_path / "other"))
    choice, _ = choose_backend(other, candidates=["torch", "bf16"], cache_path=cache,
                               measure=timings({"torch": 1.0, "bf16": 2.0}, calls))
    assert choice.backend == "torch" and not choice.cached and len(calls) == 4
    assert len(json.loads(cache.read_text())["choices"]) == 2


@pytest.mark.parametrize("content", ["{not json", "[]", '{"choices": 7}', "\x00\xff"])
def test_backends_corrupt_cache_is_ignored_and_rewritten(tiny, tmp_path, content):
    cache = tmp_path / CACHE_FILE
    cache.write_text(content, encoding="utf-8", errors="surrogateescape")
    calls = []
    choice, _ = choose_backend(tiny, candidates=["torch", "bf16"], cache_path=cache,
                               measure=timings({"torch": 1.0, "bf16": 2.0}, calls))
    assert choice.backend == "torch" and calls == ["torch", "bf16"]
    [entry] = json.loads(cache.read_text())["choices"].values()
    assert entry["backend"] == "torch"


def test_backends_cached_entry_of_a_backend_not_available_now_is_measured_again(tiny, tmp_path):
    cache = tmp_path / CACHE_FILE
    choose_backend(tiny, candidates=["torch", "bf16"], cache_path=cache, measure=timings({"torch": 2.0, "bf16": 1.0}))
    choice, _ = choose_backend(tiny, candidates=["torch"], cache_path=cache, measure=timings({"torch": 1.0}))
    assert choice.backend == "torch" and not choice.cached


def test_backends_load_fast_true_measures_once_and_caches_in_the_cache_dir(tiny_model_dir, tmp_path, monkeypatch):
    from stanceclf.infer import predict

    monkeypatch.setenv("STANCECLF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(predict, "_cache", {})
    fast = predict.load(tiny_model_dir, fast=True)
    entries = json.loads((tmp_path / "cache" / CACHE_FILE).read_text())["choices"]
    [entry] = entries.values()
    assert fast.backend == entry["backend"] and set(entry["seconds"]) >= {"torch"}
    assert predict.load(tiny_model_dir, fast=True) is fast
    assert fast.model is predict.load(tiny_model_dir).model, "backends share one copy of the weights"


def test_backends_a_fast_path_that_cannot_run_is_not_a_candidate(tiny, tmp_path, monkeypatch):
    def broken(model, threads):
        raise RuntimeError("cannot export this graph")

    monkeypatch.setitem(BACKENDS, "broken", Backend("broken", "fails to build", broken))
    choice, fast = choose_backend(tiny, candidates=["torch", "broken"], cache_path=tmp_path / CACHE_FILE,
                                  measure=timings({"torch": 1.0, "broken": 0.1}))
    assert choice.backend == fast.backend == "torch" and "broken" not in choice.seconds


def test_backends_cached_backend_that_can_no_longer_be_built_is_measured_again(tiny, tmp_path, monkeypatch):
    cache = tmp_path / CACHE_FILE
    monkeypatch.setitem(BACKENDS, "gone", BACKENDS["bf16"])
    first, _ = choose_backend(tiny, candidates=["torch", "gone"], cache_path=cache,
                              measure=timings({"torch": 2.0, "gone": 1.0}))
    assert first.backend == "gone"

    def uninstalled(model, threads):
        raise ImportError("No module named 'onnxruntime'")

    monkeypatch.setitem(BACKENDS, "gone", Backend("gone", "uninstalled since", uninstalled))
    calls = []
    choice, fast = choose_backend(tiny, candidates=["torch", "gone"], cache_path=cache,
                                  measure=timings({"torch": 2.0, "gone": 1.0}, calls))
    assert choice.backend == fast.backend == "torch" and not choice.cached and calls == ["torch"]
    [entry] = json.loads(cache.read_text())["choices"].values()
    assert entry["backend"] == "torch", "the stale choice is replaced"


def test_backends_failed_cache_write_leaves_no_temporary_file(tiny, tmp_path):
    cache = tmp_path / CACHE_FILE
    cache.mkdir()  # a folder where the cache file should be: the final rename fails
    choice, _ = choose_backend(tiny, candidates=["torch"], cache_path=cache, measure=timings({"torch": 1.0}))
    assert choice.backend == "torch"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_backends_concurrent_cache_writers_keep_every_entry(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from stanceclf.infer.backends import BackendCache, BackendChoice

    cache = BackendCache(tmp_path / CACHE_FILE)
    keys = [f"model-{i}" for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: cache.put(key, BackendChoice("torch", {"torch": 1.0})), keys))
    assert sorted(json.loads(cache.path.read_text())["choices"]) == sorted(keys)


def test_backends_onnx_graph_is_cached_and_follows_the_weights(tmp_path, make_tiny_model, monkeypatch):
    """A fast load reuses the exported graph; a broken cached graph is replaced, and new weights in the
    same directory never run on the old graph."""
    pytest.importorskip("onnxruntime")
    cache = tmp_path / "cache"
    monkeypatch.setenv("STANCECLF_CACHE", str(cache))
    folder = make_tiny_model(seed=0).save_pretrained(tmp_path / "model")

    model = StanceModel.from_pretrained(folder)
    first = model.accelerated("onnx")
    graphs = list((cache / "onnx").glob("*.onnx"))
    assert not first.encoder.graph_was_cached and len(graphs) == 1
    again = model.accelerated("onnx")
    assert again.encoder.graph_was_cached
    np.testing.assert_allclose(again.predict_proba(TEXTS), model.predict_proba(TEXTS), atol=1e-5)

    graphs[0].write_bytes(b"not a graph")
    repaired = model.accelerated("onnx")
    assert not repaired.encoder.graph_was_cached and graphs[0].read_bytes() != b"not a graph"
    np.testing.assert_allclose(repaired.predict_proba(TEXTS), model.predict_proba(TEXTS), atol=1e-5)

    manifest = (folder / "stanceclf.json").read_text()
    make_tiny_model(seed=1).save_pretrained(folder)  # other weights, same path and same manifest
    (folder / "stanceclf.json").write_text(manifest)
    retrained = StanceModel.from_pretrained(folder)
    fast = retrained.accelerated("onnx")
    assert not fast.encoder.graph_was_cached
    np.testing.assert_allclose(fast.predict_proba(TEXTS), retrained.predict_proba(TEXTS), atol=1e-5)
    assert np.abs(retrained.predict_proba(TEXTS) - model.predict_proba(TEXTS)).max() > 1e-3


def test_backends_onnx_graph_cache_keeps_only_the_most_recently_used(tmp_path, make_tiny_model, monkeypatch):
    """Each retrained or fold model leaves a graph (438 MB for MPNet): the cache keeps the newest few."""
    pytest.importorskip("onnxruntime")
    from stanceclf.infer.backends import GRAPHS_KEPT

    monkeypatch.setenv("STANCECLF_CACHE", str(tmp_path / "cache"))
    models = [StanceModel.from_pretrained(make_tiny_model(seed=seed).save_pretrained(tmp_path / f"m{seed}"))
              for seed in range(GRAPHS_KEPT + 1)]
    for model in models[:GRAPHS_KEPT]:
        model.accelerated("onnx")
    assert models[0].accelerated("onnx").encoder.graph_was_cached  # used again: now the most recent
    models[GRAPHS_KEPT].accelerated("onnx")
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == GRAPHS_KEPT
    assert models[0].accelerated("onnx").encoder.graph_was_cached
    assert not models[1].accelerated("onnx").encoder.graph_was_cached  # the least recently used went


def test_backends_auto_drops_a_fast_path_that_holds_too_much_memory(tiny, tmp_path):
    """A new user's `score --fast` once chose a path with three times fp32's memory: what each candidate adds
    to fp32's resident set is weighed."""
    readings = iter([500.0, 800.0,  # torch: before building, after running -> fp32 holds 800 MB
                     800.0, 1300.0])  # bf16 adds 500 MB: 1,300 against 800 is over 1.5x

    choice, fast = choose_backend(tiny, candidates=["torch", "bf16"], cache_path=tmp_path / CACHE_FILE,
                                  measure=timings({"torch": 2.0, "bf16": 1.0}), memory=lambda: next(readings))
    assert choice.backend == fast.backend == "torch"
    assert "held 1300 MB against 800 MB" in choice.rejected["bf16"]
    assert choice.memory_mb == {"torch": 800.0, "bf16": 1300.0}
    assert choice.sample["sentences"] == len(calibration_units(tiny)) > 200
    cached = json.loads((tmp_path / CACHE_FILE).read_text())["choices"]
    assert [entry["rejected"] for entry in cached.values()] == [choice.rejected]  # why, kept for the user


@pytest.fixture
def int8_cache(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    monkeypatch.setenv("STANCECLF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / QUANTIZED_FOLDER


def test_backends_int8_is_quantised_once_checked_on_decisions_and_cached(tmp_path, make_tiny_model, int8_cache):
    model = StanceModel.from_pretrained(make_tiny_model(seed=0).save_pretrained(tmp_path / "model"))
    texts = [unit.text for unit in calibration_units(model)]  # the tiny model reads no context
    fast = model.accelerated("int8")  # a saved model: quantised in a child process
    assert fast.backend == "int8"
    report = fast.encoder.report
    assert report.sentences == len(texts) and report.decisions == len(texts) * len(model.labels)
    assert report.decisions_changed <= MAX_DECISIONS_CHANGED * report.decisions
    assert (fast.predict(texts) != model.predict(texts)).sum() == report.decisions_changed
    folders = [path for path in int8_cache.iterdir() if path.is_dir()]  # beside each: its lock file
    assert len(folders) == 1 and (folders[0] / "model.xml").is_file()
    stamp = (folders[0] / "model.bin").stat().st_mtime_ns
    again = model.accelerated("int8")  # read from the cache: nothing quantised again
    assert (folders[0] / "model.bin").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.predict_logits(texts), fast.predict_logits(texts))
    (folders[0] / "model.xml").write_text("not a graph")  # a broken cached graph is rebuilt
    np.testing.assert_array_equal(model.accelerated("int8").predict(texts), fast.predict(texts))


def test_backends_int8_of_an_unsaved_model_is_quantised_here_without_library_warnings(make_tiny_model, int8_cache,
                                                                                       caplog, recwarn):
    import logging

    model = make_tiny_model(seed=0)  # never saved: nothing a child process could read, so quantised here
    logging.Logger.warning_once.cache_clear()  # transformers warns once a process: as if this were the first time
    with caplog.at_level(logging.WARNING):
        fast = model.accelerated("int8")
    assert fast.backend == "int8"
    # Tracing touches the model's loss function, and transformers warns about a loss the graph never holds.
    assert not [r for r in caplog.records if r.name.startswith("transformers") and "loss_type" in r.getMessage()]
    assert not [w for w in recwarn if "TracerWarning" in w.category.__name__]


def test_backends_int8_static_graph_that_moves_too_many_decisions_becomes_the_dynamic_kind(make_tiny_model,
                                                                                           int8_cache, monkeypatch):
    import openvino as ov

    from stanceclf.infer import int8

    model = make_tiny_model(seed=0)  # never saved: quantised in this process, where the bound is lowered
    texts = [unit.text for unit in calibration_units(model)]
    static = model.accelerated("int8")
    assert static.encoder.report.method == "static" and int8.dynamic_group_size(static.encoder.report) == 0
    monkeypatch.setattr(int8, "STATIC_CALIBRATION_BOUND", -1.0)  # no static graph is good enough
    monkeypatch.setattr(int8, "QUANTIZATION_FORMAT", int8.QUANTIZATION_FORMAT + 100)  # not the cached one
    dynamic = model.accelerated("int8")
    report = dynamic.encoder.report
    assert report.method == "dynamic" and report.group_size == int8.DYNAMIC_GROUP_SIZE
    assert report.static_decisions_changed == static.encoder.report.decisions_changed
    assert report.decisions_changed <= MAX_DECISIONS_CHANGED * report.decisions
    assert (dynamic.predict(texts) != model.predict(texts)).sum() == report.decisions_changed
    graph = ov.Core().read_model(str(dynamic.encoder.graph))
    kinds = {node.get_type_name() for node in graph.get_ops()}
    assert "FakeQuantize" not in kinds and "Convert" in kinds  # no fixed activation ranges; int8 weights
    assert dynamic.encoder.compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == int8.DYNAMIC_GROUP_SIZE
    reread = int8.Int8Encoder(dynamic.encoder.graph)  # as a later load reads it: the report sets how it runs
    assert reread.report.method == "dynamic"
    assert reread.compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == int8.DYNAMIC_GROUP_SIZE
    np.testing.assert_allclose(reread(*_one_batch(model, texts)), dynamic.encoder(*_one_batch(model, texts)))


def _one_batch(model, texts):
    from stanceclf.infer.padding import padded_arrays

    ids, _ = model.tokenize(texts[:8])
    return padded_arrays(ids, model.tokenizer.pad_token_id or 0)


def test_backends_int8_needs_enough_calibration_sentences(tiny, int8_cache):
    with pytest.raises(BackendError, match="at least 32 sentences; got 3"):
        int8_encoder(tiny, documents=TEXTS)


@pytest.mark.parametrize("cap, allowed", [(None, True), ("ALL", True), ("AVX512_CORE_AMX", True),
                                          ("avx512_core_bf16", True), ("AVX512_CORE_VNNI", False), ("AVX2", False)])
def test_backends_an_instruction_cap_below_bfloat16_rules_out_bf16(cap, allowed, monkeypatch):
    """Measuring a CPU without bfloat16 on one that has it: the cap must also keep bf16 out of auto's candidates."""
    from stanceclf.infer.backends import native_bf16_supported

    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    if allowed:
        import torch

        assert native_bf16_supported() == bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    else:
        assert native_bf16_supported() is False


def test_backends_int8_cache_keeps_only_the_most_recently_used_graph_folders(tmp_path, make_tiny_model, int8_cache,
                                                                              monkeypatch):
    from stanceclf.infer import int8

    monkeypatch.setattr(int8, "GRAPHS_KEPT", 1)
    first, second = (StanceModel.from_pretrained(make_tiny_model(seed=seed).save_pretrained(tmp_path / f"m{seed}"))
                     for seed in (0, 1))
    first.accelerated("int8")
    second.accelerated("int8")
    assert len([path for path in int8_cache.iterdir() if path.is_dir()]) == 1  # folders evicted, not unlinked


TORCH_FREE_CHILD = """
import json, sys
from stanceclf import load
model = load(sys.argv[1], fast=sys.argv[2])  # as `stanceclf classify --backend int8` and `--fast` load it
scores = model.predict_proba(json.loads(sys.argv[3])).tolist()
print(json.dumps({"backend": model.backend, "torch": "torch" in sys.modules, "scores": scores}))
model.model  # the torch weights, read when something needs them
print(json.dumps({"torch": "torch" in sys.modules}))
"""


def test_backends_a_cached_int8_graph_loads_and_runs_without_torch(tmp_path, make_tiny_model, int8_cache):
    """Cold start: a model whose int8 graph this machine built before is scored without importing torch,
    named outright or chosen by fast=True, with the scores of the int8 path loaded the usual way."""
    import os
    import subprocess
    import sys

    import torch

    folder = make_tiny_model(seed=0).save_pretrained(tmp_path / "model")
    model = StanceModel.from_pretrained(folder)
    int8 = model.accelerated("int8")
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count())  # what a process that has not imported torch keys its choice by
    try:
        choose_backend(model, candidates=["torch", "int8"], measure=timings({"torch": 2.0, "int8": 1.0}))
    finally:
        torch.set_num_threads(threads)
    for fast in ("int8", "auto"):
        out = subprocess.run([sys.executable, "-c", TORCH_FREE_CHILD, str(folder), fast, json.dumps(TEXTS)],
                             capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        first, second = (json.loads(line) for line in out.stdout.strip().splitlines()[-2:])
        assert first["backend"] == "int8" and first["torch"] is False, fast
        np.testing.assert_allclose(first["scores"], int8.predict_proba(TEXTS), atol=1e-6)
        assert second["torch"] is True


def test_backends_int8_of_a_saved_model_is_quantised_in_a_child_process(tmp_path, make_tiny_model, int8_cache,
                                                                      monkeypatch):
    """NNCF's peak memory stays out of the caller's process, which never reads the torch weights; a refusal
    in the child comes back as the caller's BackendError, naming what the child found."""
    from stanceclf.infer import int8

    folder = make_tiny_model(seed=0).save_pretrained(tmp_path / "model")
    model = StanceModel.from_pretrained(folder)
    in_process = []

    def here(*args):
        in_process.append(args)
        raise LookupError("quantised in the caller's process")

    monkeypatch.setattr(int8, "quantize_into", here)
    fast = StanceModel.from_pretrained(folder, fast="int8")
    assert fast.backend == "int8" and not in_process and not fast.torch_loaded  # quantised, but not here
    assert fast.encoder.report.decisions_changed <= MAX_DECISIONS_CHANGED * fast.encoder.report.decisions
    np.testing.assert_allclose(fast.predict_proba(TEXTS), model.accelerated("int8").predict_proba(TEXTS))  # cached
    # The child reads the model from its directory: a broken weights file is its refusal, raised here.
    other = make_tiny_model(seed=1).save_pretrained(tmp_path / "other")
    weights = next(path for path in other.iterdir() if path.suffix == ".safetensors")
    weights.write_bytes(b"not safetensors")
    with pytest.raises(ModelDirectoryError, match=r"\[E020\] .*model.safetensors: not a readable safetensors") \
            as refused:
        StanceModel.from_pretrained(other, fast="int8")  # the child's error, as it would be raised here
    assert "exit status" not in str(refused.value) and not in_process
    assert not list((int8_cache).glob("*/refusal.json"))  # the refused build left no folder behind
    # A model changed since it was read (here its thresholds) is quantised in this process, as it is.
    changed = StanceModel.from_pretrained(folder)
    changed.manifest.thresholds = {label: 0.9 for label in changed.labels}
    with pytest.raises(LookupError, match="in the caller's process"):
        changed.accelerated("int8")
    assert len(in_process) == 1


def _crashing_python(tmp_path: Path, crashes: int) -> Path:
    """An interpreter that dies of SIGSEGV on its first ``crashes`` starts and is the real one afterwards."""
    counter = tmp_path / "starts"
    script = tmp_path / "python-that-crashes"
    # ulimit -c 0: the crash leaves no core file behind.
    script.write_text(f"""#!/bin/sh
ulimit -c 0
n=$(cat {shlex.quote(str(counter))} 2>/dev/null || echo 0)
echo $((n + 1)) > {shlex.quote(str(counter))}
if [ "$n" -lt {crashes} ]; then kill -SEGV $$; fi
exec {shlex.quote(sys.executable)} "$@"
""")
    script.chmod(0o755)
    return script


def test_backends_int8_child_that_crashes_in_native_code_is_run_once_more(tmp_path, make_tiny_model, int8_cache,
                                                                        monkeypatch, caplog):
    """A quantising child killed by SIGSEGV (seen once in a full test run, in OpenVINO or NNCF) is started a
    second time; a second crash is the caller's BackendError, naming the signal."""
    folder = make_tiny_model(seed=0).save_pretrained(tmp_path / "model")
    (tmp_path / "once").mkdir()
    monkeypatch.setattr(sys, "executable", str(_crashing_python(tmp_path / "once", crashes=1)))
    with caplog.at_level(logging.WARNING, logger="stanceclf.infer.int8"):
        fast = StanceModel.from_pretrained(folder, fast="int8")
    assert fast.backend == "int8" and (tmp_path / "once" / "starts").read_text().strip() == "2"
    assert "crashed (signal 11)" in caplog.text
    other = make_tiny_model(seed=1).save_pretrained(tmp_path / "other")
    (tmp_path / "always").mkdir()
    monkeypatch.setattr(sys, "executable", str(_crashing_python(tmp_path / "always", crashes=99)))
    with pytest.raises(BackendError, match=r"crashed twice \(signal 11\)"):
        StanceModel.from_pretrained(other, fast="int8")
    assert (tmp_path / "always" / "starts").read_text().strip() == "2"  # once more, not forever


def test_backends_memory_of_a_backend_that_replaces_the_torch_weights_is_its_own(tiny, tmp_path, monkeypatch):
    """int8 is later loaded without the torch weights: it is weighed by what it holds then, not beside them."""
    from stanceclf.infer import backends

    weights = backends._weights_megabytes(tiny)
    assert weights > 0
    monkeypatch.setitem(BACKENDS, "light", Backend("light", "its own graph", BACKENDS["bf16"].build,
                                                   replaces_torch_weights=True))
    added = 0.5 * 800.0 + weights  # over the 1.5x bound beside the weights, within it without them
    readings = iter([500.0, 800.0, 800.0, 800.0 + added])
    choice, fast = choose_backend(tiny, candidates=["torch", "light"], cache_path=tmp_path / CACHE_FILE,
                                  measure=timings({"torch": 2.0, "light": 1.0}), memory=lambda: next(readings))
    assert choice.backend == fast.backend == "light" and not choice.rejected
    assert choice.memory_mb["light"] == pytest.approx(800.0 + added - weights, abs=0.1)


def test_machine_reads_the_cpu_name_and_flags_once_per_file(tmp_path):
    from stanceclf.machine import cpu_flags, cpu_name, described_flags

    info = tmp_path / "cpuinfo"
    core = "processor\t: {n}\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t\t: fpu sse avx512f avx512_vnni{extra}\n\n"
    info.write_text(core.format(n=0, extra=" amx_int8") + core.format(n=1, extra=""))
    assert cpu_name(info) == "Intel(R) Xeon(R) Platinum 8488C"
    assert cpu_flags(info) == {"fpu", "sse", "avx512f", "avx512_vnni", "amx_int8"}  # the first core's
    assert described_flags(cpuinfo=info) == "avx512_vnni, amx_int8"
    info.write_text(core.format(n=0, extra="").replace("avx512_vnni", "avx2"))
    assert described_flags(cpuinfo=info) == "none of avx512_vnni, avx_vnni, avx512_bf16, amx_bf16, amx_int8"
    missing = tmp_path / "absent"
    assert cpu_flags(missing) is None and described_flags(cpuinfo=missing) == "flags not readable"
    assert cpu_name(missing)  # platform's answer, never empty


def test_machine_returns_freed_memory_once_enough_work_was_counted(monkeypatch, tiny):
    """Every backend's forward passes count toward one release per MemoryRelease.every sentences."""
    import stanceclf.machine as machine

    released = []
    monkeypatch.setattr(machine, "release_freed_memory", lambda: released.append(1))
    memory = machine.MemoryRelease(every=10)
    memory.count(4)
    memory.count(5)
    assert released == []
    memory.count(1)
    assert released == [1]
    memory.count(9)
    assert released == [1], "the count starts again after a release"
    tiny._memory = machine.MemoryRelease(every=3)
    tiny.predict_proba(["One.", "Two.", "Three."])
    assert released == [1, 1]


def test_machine_release_of_freed_memory_runs_where_the_c_library_has_it():
    from stanceclf.machine import _malloc_trim, release_freed_memory

    release_freed_memory()  # a no-op without glibc, a trim with it; never an error
    if platform.libc_ver()[0] == "glibc":
        assert _malloc_trim() is not None
