"""Load once, unload, verify: `resident_model` against the Ollama emulator and its emulated card, in process."""

import pytest

from ollama_emulator import OOM_MESSAGE, Fault
from ragsweep.backends.base import GenerationOptions
from ragsweep.backends.ollama import OllamaBackend
from ragsweep.errors import ModelUnavailableError
from ragsweep.lifecycle import relieve_pressure, resident_model
from ragsweep.platform import PlatformConfig
from ragsweep.runlog import RunLog
from ragsweep.store import Store

GB = 10**9
OPTIONS = GenerationOptions(max_tokens=16, temperature=0.0, seed=0, num_ctx=4096)


@pytest.fixture
def runlog(tmp_path):
    platform = PlatformConfig(
        "cuda", "emulated", 12 * GB, 64, 2, pressure_threshold_bytes=10 * GB, baseline_target_bytes=2 * GB, unload_timeout_s=10
    )
    log = RunLog("r1", tmp_path, Store(tmp_path / "db.sqlite"), platform)
    yield log
    log.close()


def kinds(runlog, model=None):
    return [e["event"] for e in runlog.store.events("r1") if model is None or e["model"] == model]


def test_a_model_is_loaded_once_unloaded_and_its_memory_verified(fake_gpu, runlog):
    backend = OllamaBackend(fake_gpu.url, request_timeout_s=30, down_retry_s=5)
    info = backend.describe("qwen2.5:7b", "llm")
    with resident_model(backend, info, "generate", runlog, OPTIONS) as resident:
        assert resident.call("generate", _prompt()).text
        assert fake_gpu.device_used() > 4 * GB
    assert fake_gpu.device_used() == 0 and backend.loaded() == []
    assert kinds(runlog) == ["model_load", "model_unload", "unload_verified"]
    labels = [s["label"] for s in runlog.store.snapshots("r1")]
    assert labels == ["before_load", "loaded", "before_unload", "after_unload"]
    loaded = runlog.store.snapshots("r1")[1]
    assert loaded["device_used_bytes"] > 4 * GB and loaded["backend_models"] == "qwen2.5:7b"
    assert fake_gpu.state.loads["qwen2.5:7b"] == 1


def test_out_of_memory_at_load_climbs_the_ladder(fake_gpu, runlog):
    fake_gpu.add_fault(Fault("/api/chat", 500, OOM_MESSAGE, count=2, when="load"))
    backend = OllamaBackend(fake_gpu.url, request_timeout_s=30, down_retry_s=5)
    with resident_model(backend, backend.describe("qwen2.5:7b", "llm"), "generate", runlog, OPTIONS) as resident:
        assert resident.degraded and resident.options.num_ctx == 2048  # 2 failures: clean-up retry, then num_ctx halved
    steps = [
        (e["event"], e.get("step") or e.get("recovered_by"))
        for e in runlog.store.events("r1")
        if e["event"] in {"out_of_memory", "model_load"}
    ]
    assert steps == [("out_of_memory", "as configured"), ("out_of_memory", "after clean-up"), ("model_load", "num_ctx halved")]


def test_a_model_that_never_loads_is_unavailable_with_its_reason(fake_gpu, runlog):
    fake_gpu.add_fault(Fault("/api/chat", 500, OOM_MESSAGE, count=10, when="load"))
    backend = OllamaBackend(fake_gpu.url, request_timeout_s=30, down_retry_s=5)
    with pytest.raises(ModelUnavailableError, match="does not fit in memory, even with num_ctx halved and half its layers on the GPU"):
        with resident_model(backend, backend.describe("qwen2.5:7b", "llm"), "generate", runlog, OPTIONS):
            pass
    assert kinds(runlog).count("out_of_memory") == 4


def test_a_crashed_runner_is_reloaded_once_and_the_call_retried(fake_gpu, runlog):
    fake_gpu.add_fault(
        Fault("/api/chat", 500, "model runner has unexpectedly stopped, this may be due to resource limitations", count=1, when="work")
    )
    backend = OllamaBackend(fake_gpu.url, request_timeout_s=30, down_retry_s=5, retries=1)  # no backend-level retry: the lifecycle's turn
    with resident_model(backend, backend.describe("llama3.2:3b", "llm"), "generate", runlog, OPTIONS) as resident:
        assert resident.call("generate", _prompt()).text
    assert kinds(runlog) == ["model_load", "recovering", "model_unload", "model_load", "model_unload", "unload_verified"]
    assert fake_gpu.state.loads["llama3.2:3b"] == 2


def test_pressure_unloads_other_models_and_halves_the_batch(fake_gpu, runlog):
    backend = OllamaBackend(fake_gpu.url, request_timeout_s=30, down_retry_s=5)
    backend.load(backend.describe("qwen2.5:7b", "llm"), OPTIONS)  # someone else's model, resident
    runlog.platform = PlatformConfig(
        "cuda", "emulated", 12 * GB, 64, 2, pressure_threshold_bytes=1 * GB, baseline_target_bytes=2 * GB, unload_timeout_s=10
    )
    assert relieve_pressure(backend, runlog, "retrieve", "nomic-embed-text", 64) == 32
    assert [e["event"] for e in runlog.store.events("r1")] == ["model_unload", "memory_pressure"]
    assert relieve_pressure(backend, runlog, "retrieve", "nomic-embed-text", 1) == 1  # nothing left to halve


def _prompt():
    from ragsweep.prompt import build_prompt

    return build_prompt("What is the capital of France?", ["Paris is the capital of France."])


def test_samples_taken_while_resident_join_the_ledger(fake_gpu, runlog):
    import time

    runlog.sample_interval_s = 0.02
    backend = OllamaBackend(fake_gpu.url, request_timeout_s=30, down_retry_s=5)
    with resident_model(backend, backend.describe("llama3.2:3b", "llm"), "generate", runlog, OPTIONS):
        time.sleep(0.3)
    rows = runlog.store.snapshots("r1")
    fixed = {s["label"]: s["t"] for s in rows if s["label"] != "sample"}
    assert list(fixed) == ["before_load", "loaded", "before_unload", "after_unload"]
    samples = [s for s in rows if s["label"] == "sample"]
    resident = [s for s in samples if fixed["loaded"] <= s["t"] <= fixed["before_unload"]]
    assert len(resident) >= 5 and all(s["device_max_used_bytes"] > 2 * GB and s["model"] == "llama3.2:3b" for s in resident)
    assert all(fixed["before_load"] <= s["t"] <= fixed["after_unload"] for s in samples)


def test_memory_is_sampled_while_a_model_loads_and_unloads(fake_gpu, runlog):
    """On a GPU the peak often comes during the load: a slow load gets samples of its own, and so does the unload."""
    runlog.sample_interval_s = 0.02
    fake_gpu.add_fault(Fault("/api/chat", kind="hang", hang_s=0.4, when="load"))  # the runner holds its memory, the load goes on
    backend = OllamaBackend(fake_gpu.url, request_timeout_s=30, down_retry_s=5)
    with resident_model(backend, backend.describe("llama3.2:3b", "llm"), "generate", runlog, OPTIONS):
        pass
    rows = runlog.store.snapshots("r1")
    fixed = {s["label"]: s["t"] for s in rows if s["label"] != "sample"}
    loading = [s for s in rows if s["label"] == "sample" and fixed["before_load"] <= s["t"] < fixed["loaded"]]
    unloading = [s for s in rows if s["label"] == "sample" and fixed["before_unload"] < s["t"] <= fixed["after_unload"]]
    assert len(loading) >= 5 and max(s["device_max_used_bytes"] for s in loading) > 2 * GB  # the load's memory was seen
    assert unloading  # and the way back down
