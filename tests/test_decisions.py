"""Intervals, ties and judge noise through the whole run: summary.csv, comparisons.csv, judge_repeats.csv, report.md."""

import csv

from cli import emulated_gpu_env, latest_run_dir, matrix, ollama_flags, run_cli
from judge_server import JudgeFaults, JudgeServer, judge_flags
from ollama_emulator import OllamaEmulator

COMPARISON_HEADER = "metric,best_embedding_model,best_llm,embedding_model,llm,n_paired,mean_diff,ci_low,ci_high,p_value,distinguishable"


def test_every_mean_has_an_interval_and_every_combination_is_compared_with_the_best(tmp_path):
    with OllamaEmulator() as emu:
        args = [*ollama_flags(emu), "--llms", "llama3.2:3b,qwen2.5:7b", "--embeddings", "nomic-embed-text,bm25", "--limit", "12"]
        result = run_cli(*args, "--results-dir", tmp_path, env=emulated_gpu_env(emu))
    assert result.returncode == 0, result.stderr
    run_dir = latest_run_dir(tmp_path)
    summary = list(csv.DictReader((run_dir / "summary.csv").open()))
    for row in summary:
        assert float(row["token_f1_ci_low"]) <= float(row["token_f1"]) <= float(row["token_f1_ci_high"]) and row["token_f1_n"] == "12"
        assert row["latency_s_ci_low"] and row["recall_at_k_ci_high"]
    header, *rows = (run_dir / "comparisons.csv").read_text().splitlines()
    assert header.startswith(COMPARISON_HEADER)
    f1 = [r for r in csv.DictReader((run_dir / "comparisons.csv").open()) if r["metric"] == "token_f1"]
    assert len(f1) == 3 and len({(r["best_embedding_model"], r["best_llm"]) for r in f1}) == 1
    report = (run_dir / "report.md").read_text()
    assert "## What this run can and cannot tell" in report and "vs best (token_f1)" in report
    marks = [
        line.split(" | ")[4]
        for line in report.split("## Summary")[1].splitlines()
        if line.startswith("| nomic") or line.startswith("| bm25")
    ]
    assert marks.count("best") == 1 and all(mark in {"best", "≈ best", ""} for mark in marks)
    assert "±" in result.stdout  # the screen's summary shows the spread too


def test_judge_repeats_measure_the_judge_and_reuse_repeat_zero(tmp_path):
    with OllamaEmulator() as emu, JudgeServer(JudgeFaults(noisy=0.4)) as judge:
        args = [
            *ollama_flags(emu),
            *matrix("llama3.2:3b", "bm25", 10),
            "--results-dir",
            tmp_path,
            "--quiet",
            *judge_flags(judge),
        ]
        env = emulated_gpu_env(emu, OPENAI_API_KEY="sk-test")
        once = run_cli(*args, env=env)
        calls_once = judge.state.chat_requests
        thrice = run_cli(*args, "--judge-repeats", "3", env=env)
        calls_thrice = judge.state.chat_requests - calls_once
    assert once.returncode == 0 and thrice.returncode == 0, once.stderr + thrice.stderr
    assert calls_thrice == 2 * calls_once  # repeat 0 came from the cache: only repeats 1 and 2 were asked
    run_dir = latest_run_dir(tmp_path)
    repeats = list(csv.DictReader((run_dir / "judge_repeats.csv").open()))
    assert len(repeats) == 10 * 4 and all(len(r["values"].split("|")) == 3 for r in repeats)
    assert any(float(r["sd"]) > 0 for r in repeats if r["sd"])  # the noisy judge disagrees with itself
    report = (run_dir / "report.md").read_text()
    assert "### Judge noise (3 repeats per cell, judge_repeats.csv)" in report
    noise = report.split("### Judge noise")[1].split("\n## ")[0]
    assert "| faithfulness |" in noise and "%" in noise
    summary = next(csv.DictReader((run_dir / "summary.csv").open()))
    assert summary["faithfulness_ci_low"] and float(summary["faithfulness_ci_low"]) < float(summary["faithfulness_ci_high"])
