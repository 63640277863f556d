"""The plan: every model resolved before any work, E + L loads, what is cached, the fit, the judge's calls."""

import numpy as np
import pytest
from rich.console import Console

from ragsweep.backends.ollama import OllamaBackend
from ragsweep.errors import ModelNotFoundError
from ragsweep.judge_client import JudgeSpec
from ragsweep.plan import make_plan, print_plan
from ragsweep.platform import PlatformConfig
from ragsweep.store import Store

GB = 10**9


@pytest.fixture
def backend(emulator):
    return OllamaBackend(emulator.url, request_timeout_s=30, down_retry_s=5)


def test_a_plan_counts_each_model_once_and_knows_the_cache(backend, tmp_path):
    store = Store(tmp_path / "db.sqlite")
    digest = backend.describe("nomic-embed-text", "embedding").digest
    store.put_embeddings(digest, [(f"h{i}", np.ones(4, dtype=np.float32)) for i in range(7)])
    plan = make_plan(backend, store, ["nomic-embed-text", "bm25"], ["llama3.2:3b", "qwen2.5:7b", "mistral:7b"], questions=10, chunks=50)
    assert (plan.samples, plan.model_loads) == (2 * 3 * 10, 2 + 3)
    assert plan.cached_embeddings == {"nomic-embed-text": 7}  # bm25 has no vectors to cache
    assert plan.expected_bytes["qwen2.5:7b"] > plan.expected_bytes["llama3.2:3b"] > 0  # from the sizes Ollama reports
    assert "bm25" not in plan.expected_bytes  # lexical: nothing to load


def test_judge_calls_are_six_plus_k_per_sample(backend, tmp_path):
    spec = JudgeSpec(
        "openai/x", "openai/e", "http://127.0.0.1:1/v1", concurrency=2, timeout_s=1, retries=0, parse_retries=0, max_tokens=2048
    )
    plan = make_plan(backend, Store(tmp_path / "db.sqlite"), ["bm25"], ["llama3.2:3b"], questions=4, chunks=9, judge=spec, top_k=5)
    assert plan.judge_calls == 4 * (6 + 5) and plan.judge_cost_usd() is None  # a local server has no price


def test_an_unknown_model_fails_the_plan_before_any_work(backend, tmp_path, emulator):
    with pytest.raises(ModelNotFoundError, match="ollama pull llama9"):
        make_plan(backend, Store(tmp_path / "db.sqlite"), ["bm25"], ["llama9"], questions=1, chunks=1)
    assert sum(emulator.state.loads.values()) == 0


def test_print_plan_says_when_a_model_will_not_fit(backend, tmp_path):
    plan = make_plan(backend, Store(tmp_path / "db.sqlite"), ["bm25"], ["llama3.2:3b", "qwen2.5:7b"], questions=3, chunks=9)
    small = PlatformConfig(
        "cuda", "6 GB card", 6 * GB, 64, 2, pressure_threshold_bytes=5 * GB, baseline_target_bytes=1 * GB, unload_timeout_s=5
    )
    console = Console(record=True, width=400)
    print_plan(plan, small, console)
    text = console.export_text()
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 3}
    assert "yes (~" in lines["llama3.2:3b"] and "NO (~" in lines["qwen2.5:7b"]
    assert "model loads: 3 (E + L)" in text


def test_a_model_too_big_for_one_card_fits_when_the_backend_splits_it_over_several():
    from ragsweep.plan import fit
    from ragsweep.platform import Budget

    assert fit(30 * GB, Budget(20 * GB, 1, splits=True)).startswith("NO")  # one card
    assert fit(30 * GB, Budget(20 * GB, 2, splits=True)).startswith("yes, split over 2 cards")
    assert fit(30 * GB, Budget(20 * GB, 2, splits=False)).startswith("NO")  # the local backend puts a model on one card
    assert fit(10 * GB, Budget(20 * GB, 1)).startswith("yes (~10.0 GB)")


def test_on_a_cluster_the_fit_is_per_box():
    from ragsweep.plan import fit_on_boxes
    from ragsweep.platform import Budget

    boxes = {"box-small": Budget(5 * GB), "box-big": Budget(20 * GB), "box-pair": Budget(8 * GB, 2, splits=True)}
    assert fit_on_boxes(6 * GB, boxes) == "yes on box-big, box-pair; NO on box-small (~6.0 GB)"
    assert fit_on_boxes(4 * GB, boxes) == "yes on every box (~4.0 GB)"
    assert fit_on_boxes(25 * GB, boxes).startswith("NO on any box (~25.0 GB > 20.0 GB, the largest)")
    assert fit_on_boxes(None, boxes) == "-"


def test_a_cpu_only_llama_cpp_on_a_cuda_box_is_said_in_the_plan():
    from ragsweep.backends.local import LLAMA_CUDA_REBUILD, LocalBackend, llama_cpp_offloads

    assert not llama_cpp_offloads()  # this machine's build is CPU-only
    on_a_card = LocalBackend("cuda", request_timeout_s=60)
    [note] = on_a_card.plan_notes([on_a_card.describe("smollm2-135m", "llm")])
    assert "CPU-only build: the LLMs will run on the CPU" in note and LLAMA_CUDA_REBUILD in note
    assert on_a_card.plan_notes([on_a_card.describe("all-minilm-l6-v2", "embedding")]) == []  # no LLM: nothing to say
    assert LocalBackend("cpu", request_timeout_s=60).plan_notes([on_a_card.describe("smollm2-135m", "llm")]) == []
