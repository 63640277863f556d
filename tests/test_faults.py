"""Memory pressure and faults against the emulator: the night finishes, with the right events, report lines and exit code."""

import csv
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cli import emulated_gpu_env, latest_run_dir, ollama_flags, run_cli
from conftest import REPO
from ollama_emulator import OOM_MESSAGE, Fault, OllamaEmulator

GIB = 1024**3


def run(
    emu: OllamaEmulator,
    results: Path,
    *extra: str,
    llms="llama3.2:3b",
    embeddings="nomic-embed-text",
    limit="4",
    config: str = "",
    quiet=True,
) -> subprocess.CompletedProcess:
    path = results.parent / f"{results.name}.yaml"
    path.write_text(f"corpus: {REPO / 'data/demo/corpus.jsonl'}\ntestset: {REPO / 'data/demo/testset.jsonl'}\n{config}")
    args = [
        "--config",
        path,
        *ollama_flags(emu),
        "--llms",
        llms,
        "--embeddings",
        embeddings,
        "--limit",
        limit,
        "--results-dir",
        results,
        *extra,
    ]
    return run_cli(*args, *(["--quiet"] if quiet else []), env=emulated_gpu_env(emu))


def outcome(results: Path) -> tuple[list[dict], list[dict], str]:
    run_dir = latest_run_dir(results)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return list(csv.DictReader((run_dir / "samples.csv").open())), events, (run_dir / "report.md").read_text()


@pytest.mark.parametrize(
    "fault, cause",
    [
        (
            Fault(
                "/api/chat",
                500,
                "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, check "
                "ollama server logs for details",
                count=2,
            ),
            "runner_crash",
        ),
        (Fault("/api/chat", 503, "server busy, please try again.  maximum pending requests exceeded", count=2), "busy"),
        (Fault("/api/chat", kind="reset", count=1), "connection"),
    ],
)
def test_transient_faults_are_retried_and_every_sample_answered(tmp_path, fault, cause):
    with OllamaEmulator() as emu:
        emu.add_fault(fault)
        result = run(emu, tmp_path / "results")
    assert result.returncode == 0, result.stderr
    samples, events, report = outcome(tmp_path / "results")
    assert len(samples) == 4 and all(s["answer"] and not s["error"] for s in samples)
    retries = [e for e in events if e["event"] == "retry"]
    assert retries and {e["cause"] for e in retries} == {cause}
    assert "retry [attempt 1]" in report


def test_a_hang_is_cut_by_the_watchdog_reloaded_and_retried_once(tmp_path):
    with OllamaEmulator() as emu:
        emu.add_fault(Fault("/api/chat", kind="hang", hang_s=3, count=1, model="llama3.2:3b", when="work"))
        result = run(emu, tmp_path / "results", "--request-timeout", "1")
        loads = emu.state.loads["llama3.2:3b"]
    assert result.returncode == 0, result.stderr
    samples, events, report = outcome(tmp_path / "results")
    assert all(s["answer"] for s in samples)
    recovering = [e for e in events if e["event"] == "recovering"]
    assert [e["cause"] for e in recovering] == ["timeout"] and loads == 2  # cancelled, reloaded, retried
    assert "recovering: " in report and "no answer from" in report


def test_a_unit_that_hangs_twice_fails_with_cause_timeout_and_the_rest_goes_on(tmp_path):
    with OllamaEmulator() as emu:
        emu.add_fault(Fault("/api/chat", kind="hang", hang_s=3, count=2, model="llama3.2:3b", when="work"))
        result = run(emu, tmp_path / "results", config="request_timeout_s: 1\n")
    assert result.returncode == 1
    samples, _, _ = outcome(tmp_path / "results")
    failed = [s for s in samples if s["error"]]
    assert len(failed) == 1 and failed[0]["cause"] == "timeout"
    assert sum(1 for s in samples if s["answer"]) == 3


def test_ollama_down_mid_run_stops_cleanly_exit_3_and_resumes(tmp_path):
    results = tmp_path / "results"
    emu = OllamaEmulator(call_s=0.05).start()
    port = int(emu.url.rsplit(":", 1)[1])
    stopper = threading.Thread(target=lambda: (_wait(lambda: emu.state.work[("answers", "llama3.2:3b")] >= 3), emu.stop()))
    stopper.start()
    result = run(emu, results, limit="10", config="backend_retry_s: 2\n")
    stopper.join()
    assert result.returncode == 3, result.stderr
    assert "stopped: backend unreachable" in result.stdout and "run the same command again to resume" in result.stdout
    samples, events, report = outcome(results)
    done = sum(1 for s in samples if s["answer"])
    assert 3 <= done < 10 and any(e["event"] == "run_stopped" for e in events)
    assert "stopped answering" in report
    with OllamaEmulator(port=port) as again:  # Ollama is back
        rerun = run(again, results, limit="10", config="backend_retry_s: 2\n")
        assert rerun.returncode == 0, rerun.stderr
        assert again.state.work[("answers", "llama3.2:3b")] == 10 - done  # only what was left


def _wait(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_failure_budget_stops_a_run_that_fails_everything(tmp_path):
    with OllamaEmulator() as emu:
        emu.add_fault(Fault("/api/chat", 400, "invalid request", count=1000, model="llama3.2:3b", when="work"))
        result = run(emu, tmp_path / "results", "--llms", "llama3.2:3b,qwen2.5:7b", "--max-failures", "0.15", limit="10")  # 15 % of 20 = 3
    assert result.returncode == 1
    assert "stopped: failure budget" in result.stdout
    samples, events, report = outcome(tmp_path / "results")
    assert sum(1 for s in samples if s["error"]) == 3 and not any(s["llm"] == "qwen2.5:7b" for s in samples)  # stopped, not ground through
    assert "the --max-failures budget is 3" in report


def test_a_7b_that_does_not_fit_beside_a_leftover_loads_after_clean_up(tmp_path):
    with OllamaEmulator() as emu:
        emu.add_fault(Fault("/api/chat", kind="leftover", leftover="mistral:7b", model="qwen2.5:7b", count=1))
        result = run(emu, tmp_path / "results", llms="qwen2.5:7b")
        assert emu.state.runners == {} or all(r.stopping_since is not None for r in emu.state.runners.values())
    assert result.returncode == 0, result.stderr
    samples, events, report = outcome(tmp_path / "results")
    assert all(s["answer"] for s in samples)
    oom = [e for e in events if e["event"] == "out_of_memory"]
    assert [e["step"] for e in oom] == ["as configured"] and OOM_MESSAGE in oom[0]["message"]
    assert any(e["event"] == "model_unload" and e["model"] == "mistral:7b" and e.get("reason") == "leftover" for e in events)
    assert any(e["event"] == "model_load" and e.get("recovered_by") == "after clean-up" for e in events)
    assert "generate qwen2.5:7b: out of memory [as configured]" in report and "loaded after clean-up" in report


def test_out_of_memory_at_a_large_context_retries_with_half_the_context(tmp_path):
    with OllamaEmulator(total_vram=7 * GIB) as emu:  # mistral:7b at 16k context needs ~7.6 GB; at 8k ~6.5 GB
        result = run(emu, tmp_path / "results", llms="mistral:7b", config="num_ctx: 16384\n")
    assert result.returncode == 0, result.stderr
    samples, events, report = outcome(tmp_path / "results")
    assert [e["step"] for e in events if e["event"] == "out_of_memory"] == ["as configured", "after clean-up"]
    recovered = next(e for e in events if e.get("recovered_by"))
    assert recovered["recovered_by"] == "num_ctx halved" and recovered["num_ctx"] == 8192
    assert "loaded num_ctx halved (num_ctx 8192" in report


def test_memory_pressure_halves_the_embedding_batch_and_unloads_other_models(tmp_path):
    with OllamaEmulator(foreign_bytes=9 * GIB) as emu:  # another process holds 9 GiB of the 12
        result = run(emu, tmp_path / "results", embeddings="bge-m3", config="baseline_target_gb: 11\nembed_batch_size: 32\n")
    assert result.returncode == 0, result.stderr
    samples, events, report = outcome(tmp_path / "results")
    pressure = [e for e in events if e["event"] == "memory_pressure"]
    assert [(e["stage"], e["batch_size"], e["new_batch_size"]) for e in pressure] == [
        ("retrieve", 32, 16)
    ]  # once, for the rest of the stage
    assert all(s["answer"] for s in samples)
    assert "memory pressure" in report and "batch 32 → 16" in report


def test_the_plan_marks_a_model_that_cannot_fit(tmp_path):
    with OllamaEmulator(total_vram=5 * GIB) as emu:
        result = run(emu, tmp_path / "results", "--dry-run", llms="llama3.2:3b,qwen2.5:7b", quiet=False)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "qwen2.5:7b" in line)
    assert "NO (~6.3 GB > 4.5 GB a card): a smaller num_ctx or partial offload (num_gpu) may fit" in line
    assert "NO" not in next(line for line in result.stdout.splitlines() if "llama3.2:3b" in line)
