"""Generation as a user runs it (the CLI against the emulated Ollama): requests in flight, and no prompt cut silently."""

import csv
import json
import re
import sqlite3
from pathlib import Path

from cli import emulated_gpu_env, latest_run_dir, matrix, ollama_flags, run_cli
from ollama_emulator import OllamaEmulator


def sweep(emu: OllamaEmulator, results: Path, *args: str):
    return run_cli(*ollama_flags(emu), "--results-dir", results, "--quiet", *args, env=emulated_gpu_env(emu))


def events(run_dir: Path, name: str) -> list[dict]:
    return [e for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines()) if e["event"] == name]


def samples(run_dir: Path) -> list[dict]:
    return list(csv.DictReader((run_dir / "samples.csv").open()))


def test_four_slots_are_found_used_and_reported(tmp_path):
    with OllamaEmulator(num_parallel=4, call_s=0.05) as emu:
        result = sweep(emu, tmp_path, *matrix("llama3.2:3b", "bm25,none", 30))
        assert result.returncode == 0, result.stderr
        assert emu.state.peak_decoding == 4
    run_dir = latest_run_dir(tmp_path)
    (found,) = events(run_dir, "throughput")
    assert found["in_flight"] == 4 and found["probed"] and found["speedup"] > 1.8 and found["answers_per_s"] > 0
    assert found["advice"] is None  # the server had slots: nothing to change
    report = (run_dir / "report.md").read_text()
    assert "| llama3.2:3b | 4 (found by measurement) |" in report
    rows = samples(run_dir)
    assert len(rows) == 60 and all(r["answer"] and float(r["latency_s"]) < 0.1 and r["queued_s"] != "" for r in rows)


def test_a_server_with_one_slot_gets_one_request_and_the_advice_to_add_slots(tmp_path):
    with OllamaEmulator(num_parallel=1, call_s=0.03) as emu:
        result = sweep(emu, tmp_path, *matrix("llama3.2:3b", "bm25", 20), "--num-ctx", "4096")
        assert result.returncode == 0, result.stderr
    run_dir = latest_run_dir(tmp_path)
    (found,) = events(run_dir, "throughput")
    assert found["in_flight"] == 1
    # llama3.2:3b's KV cache: 2 x 28 layers x 8 KV heads x 128 x 2 bytes = 114,688 B a token; 3 more slots x 4096 tokens
    advice = "set OLLAMA_NUM_PARALLEL=4 on the server; KV cache for 4 × 4096 tokens adds about 1.41 GB, which fits"
    assert found["advice"].startswith(advice)
    assert advice in (run_dir / "report.md").read_text()


def test_a_fixed_generation_concurrency_is_used_as_given_and_the_plan_says_so(tmp_path):
    with OllamaEmulator(num_parallel=4, call_s=0.03) as emu:
        plan = run_cli(*ollama_flags(emu), *matrix("llama3.2:3b", "bm25", 8), "--generation-concurrency", "2", "--dry-run")
        assert "generation: 2 requests in flight per LLM (generation_concurrency)" in plan.stdout
        result = sweep(emu, tmp_path, *matrix("llama3.2:3b", "bm25", 12), "--generation-concurrency", "2")
        assert result.returncode == 0, result.stderr
        assert emu.state.peak_decoding == 2
    (found,) = events(latest_run_dir(tmp_path), "throughput")
    assert found["in_flight"] == 2 and not found["probed"]


def test_a_prompt_longer_than_num_ctx_fails_as_context_overflow_once_and_is_named_in_the_report(tmp_path):
    with OllamaEmulator() as emu:
        result = sweep(emu, tmp_path, *matrix("llama3.2:3b", "bm25", 6), "--top-k", "5", "--num-ctx", "256")
        asked = emu.state.requests[("/api/chat", "llama3.2:3b")]
    assert result.returncode == 1, result.stderr
    run_dir = latest_run_dir(tmp_path)
    failed = [r for r in samples(run_dir) if r["error"]]
    assert len(failed) == 6 and {r["cause"] for r in failed} == {"context overflow"}
    assert asked == 1 + 6  # the load, then each prompt once: an overflow is not retried
    assert "llama3.2:3b: 6 prompts did not fit num_ctx 256: raise num_ctx or lower top_k" in (run_dir / "report.md").read_text()


def test_a_prompt_an_older_server_cut_silently_is_flagged_and_not_cached(tmp_path):
    with OllamaEmulator(version="0.12.5") as emu:  # before truncate: false existed: 200, the prompt cut to num_ctx
        result = sweep(emu, tmp_path, *matrix("llama3.2:3b", "bm25", 6), "--top-k", "5", "--num-ctx", "256")
    assert result.returncode == 0, result.stderr
    run_dir = latest_run_dir(tmp_path)
    rows = samples(run_dir)
    assert len(rows) == 6 and all(r["prompt_cut"] == "1" and r["prompt_tokens"] == "256" for r in rows)
    assert "llama3.2:3b: 6 answers came from a prompt that filled num_ctx 256" in (run_dir / "report.md").read_text()
    with sqlite3.connect(tmp_path / "ragsweep.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM answer_cache").fetchone()[0] == 0  # a cut answer is asked again next time


def test_num_ctx_is_sized_per_llm_to_the_longest_prompt_within_the_models_own_context(tmp_path):
    with OllamaEmulator() as emu:
        plan = run_cli(*ollama_flags(emu), *matrix("llama3.2:3b,phi3:mini", "bm25", 10), "--top-k", "12", "--dry-run")
        assert plan.returncode == 0, plan.stderr
        (note,) = re.findall(
            r"num_ctx sized per LLM for the longest prompt \(~(\d+) tokens, estimated\) \+ max_tokens 48: (.*) \(", plan.stdout
        )
        sizes = dict(pair.split() for pair in note[1].split(", "))
        need = int(note[0]) + 48
        assert int(sizes["llama3.2:3b"]) >= need and int(sizes["llama3.2:3b"]) % 1024 == 0  # room for the prompt and the answer
        assert sizes["phi3:mini"] == "4096" and need > 4096  # capped at its own context (4096), and the plan says what that means
        assert "phi3:mini: the longest prompts exceed the model's own context and will fail as context overflow" in plan.stdout
        result = sweep(emu, tmp_path, *matrix("llama3.2:3b", "bm25", 4), "--top-k", "12")
        assert result.returncode == 0, result.stderr
        assert emu.state.requests[("/api/chat", "llama3.2:3b")] == 1 + 4  # one load at the sized num_ctx, never a reload
    record = json.loads((latest_run_dir(tmp_path) / "run.json").read_text())
    assert record["plan"]["num_ctx"] == {"llama3.2:3b": int(sizes["llama3.2:3b"])}


def test_the_fit_check_counts_the_kv_cache_of_every_slot():
    with OllamaEmulator() as emu:
        one, four = (
            run_cli(*ollama_flags(emu), *matrix("llama3.2:3b", "bm25", 4), "--num-ctx", "4096", "--dry-run", *extra).stdout
            for extra in ([], ["--generation-concurrency", "4"])
        )
    need = [float(re.search(r"yes \(~([\d.]+) GB\)", out).group(1)) for out in (one, four)]
    assert round(need[1] - need[0], 1) == 1.4  # 3 more slots x 4096 tokens x 114,688 B of KV a token


def test_the_plan_says_the_local_backend_answers_one_request_at_a_time(tmp_path):
    plan = run_cli("--backend", "local", "--llms", "smollm2-135m", "--embeddings", "bm25", "--results-dir", tmp_path, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "generation: one request at a time per LLM (local backend" in plan.stdout
