"""Crash safety: a killed or interrupted run loses nothing finished and resumes with exactly the work left."""

import csv
import json
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from cli import emulated_gpu_env, latest_run_dir, ollama_flags, run_cli, start_cli
from conftest import REPO
from ollama_emulator import CATALOGUE, OllamaEmulator

LLMS = "llama3.2:3b,qwen2.5:7b"
EMBEDDINGS = "nomic-embed-text,all-minilm"
QUESTIONS = 10
TEXTS = 319 + QUESTIONS  # demo chunks + questions, each embedded once per embedding model
RESULT_FIELDS = [
    "embedding_model",
    "llm",
    "question_id",
    "answer",
    "retrieved_ids",
    "recall_at_k",
    "mrr",
    "ndcg_at_k",
    "exact_match",
    "token_f1",
]


def command(emu: OllamaEmulator, results: Path, config: Path) -> tuple[list[str], dict]:
    args = [
        "--config",
        config,
        *ollama_flags(emu),
        "--llms",
        LLMS,
        "--embeddings",
        EMBEDDINGS,
        "--limit",
        QUESTIONS,
        "--results-dir",
        results,
        "--quiet",
    ]
    return args, emulated_gpu_env(emu)


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(f"embed_batch_size: 8\ncorpus: {REPO / 'data/demo/corpus.jsonl'}\ntestset: {REPO / 'data/demo/testset.jsonl'}\n")
    return path


def run_to_end(emu, results, config) -> subprocess.CompletedProcess:
    args, env = command(emu, results, config)
    return run_cli(*args, env=env)


def start_and_stop_when(emu, results, config, condition, stop_signal) -> subprocess.Popen:
    args, env = command(emu, results, config)
    process = start_cli(*args, env=env)
    deadline = time.monotonic() + 120
    while not condition(emu.state.work):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached the point to stop it"
        time.sleep(0.005)
    process.send_signal(stop_signal)
    process.wait(timeout=120)
    emu.wait_idle()  # the killed client's last request may still be running in the emulator
    return process


def results_of(results: Path) -> list[dict]:
    run_dir = latest_run_dir(results)
    rows = [{k: r[k] for k in RESULT_FIELDS} for r in csv.DictReader((run_dir / "samples.csv").open())]
    return sorted(rows, key=lambda r: (r["embedding_model"], r["llm"], r["question_id"]))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[list[dict], int]:
    """The reference: results of a run that was never stopped, and how many answers it generated."""
    tmp = tmp_path_factory.mktemp("reference")
    config = tmp / "run.yaml"
    config.write_text(f"embed_batch_size: 8\ncorpus: {REPO / 'data/demo/corpus.jsonl'}\ntestset: {REPO / 'data/demo/testset.jsonl'}\n")
    with OllamaEmulator() as emu:
        assert run_to_end(emu, tmp / "results", config).returncode == 0
        generated = answers(emu.state.work)
    assert 2 * QUESTIONS < generated <= 2 * 2 * QUESTIONS  # retrievers that return the same passages share an answer
    return results_of(tmp / "results"), generated


def answers(work: Counter) -> int:
    return sum(n for (kind, _), n in work.items() if kind == "answers")


def cached(results: Path, sql: str, *params) -> int:
    with sqlite3.connect(results / "ragsweep.sqlite") as db:
        return db.execute(sql, params).fetchone()[0]


def test_sigkill_during_embedding_resumes_with_exactly_the_texts_left(tmp_path, config, uninterrupted):
    nomic = CATALOGUE["nomic-embed-text:latest"]
    results = tmp_path / "results"
    with OllamaEmulator(call_s=0.03) as emu:
        killed = start_and_stop_when(emu, results, config, lambda work: work[("embedded", nomic.name)] >= 80, signal.SIGKILL)
        assert killed.returncode == -signal.SIGKILL
        done = cached(results, "SELECT COUNT(*) FROM embedding_cache WHERE model_digest = ?", nomic.digest)
        assert 80 - 8 <= done < TEXTS  # committed batch by batch (the batch in flight may be lost), not at the end
        before = Counter(emu.state.work)
        rerun = run_to_end(emu, results, config)  # the killed run's lock is gone with its process
        assert rerun.returncode == 0, rerun.stderr
        after = Counter(emu.state.work) - before
    assert after[("embedded", nomic.name)] == TEXTS - done
    assert after[("embedded", "all-minilm:latest")] == TEXTS
    reference, generated = uninterrupted
    assert answers(after) == generated
    assert results_of(results) == reference
    assert cached(results, "SELECT COUNT(*) FROM runs WHERE status = 'crashed'") == 1


def test_sigkill_during_generation_resumes_with_exactly_the_answers_left(tmp_path, config, uninterrupted):
    results = tmp_path / "results"
    with OllamaEmulator(call_s=0.03) as emu:
        start_and_stop_when(emu, results, config, lambda work: work[("answers", "qwen2.5:7b")] >= 7, signal.SIGKILL)
        done = cached(results, "SELECT COUNT(*) FROM answer_cache")
        reference, generated = uninterrupted
        assert 0 < done < generated  # answer by answer, not at the end
        before = Counter(emu.state.work)
        assert run_to_end(emu, results, config).returncode == 0
        after = Counter(emu.state.work) - before
    assert answers(after) == generated - done
    assert not any(kind == "embedded" for kind, _ in after)  # retrieval was finished: no embedding model loaded
    rows = results_of(results)
    assert rows == reference and len({(r["embedding_model"], r["llm"], r["question_id"]) for r in rows}) == len(rows) == 40


def test_sigkill_with_four_requests_in_flight_resumes_with_exactly_the_answers_left(tmp_path, config, uninterrupted):
    """Answers come back out of order from four slots: each is committed as it lands, and a resume asks only for the rest."""
    results = tmp_path / "results"
    with OllamaEmulator(num_parallel=4, call_s=0.05) as emu:
        start_and_stop_when(emu, results, config, lambda work: work[("answers", "llama3.2:3b")] >= 9, signal.SIGKILL)
        assert emu.state.peak_decoding > 1  # it was killed with several requests in flight
        done = cached(results, "SELECT COUNT(*) FROM answer_cache")
        reference, generated = uninterrupted
        assert 0 < done < generated
        before = Counter(emu.state.work)
        assert run_to_end(emu, results, config).returncode == 0
        after = Counter(emu.state.work) - before
    assert answers(after) == generated - done  # nothing finished is asked again
    assert results_of(results) == reference


@pytest.mark.parametrize("stop_signal, exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupt_writes_partial_exports_and_says_how_to_resume(tmp_path, config, stop_signal, exit_code):
    results = tmp_path / "results"
    with OllamaEmulator(call_s=0.03) as emu:
        process = start_and_stop_when(emu, results, config, lambda work: work[("answers", "llama3.2:3b")] >= 5, stop_signal)
        out, err = process.communicate()
        assert process.returncode == exit_code, err
        assert "interrupted" in out and "run the same command again to resume" in out
        assert "/40 samples answered" in out  # counted against the plan, not against what finished
        assert emu.state.runners == {} or all(r.stopping_since is not None for r in emu.state.runners.values())  # unloaded on the way out
    run_dir = latest_run_dir(results)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted" and record["exit_code"] == exit_code
    answered = [r for r in csv.DictReader((run_dir / "samples.csv").open()) if r["answer"]]
    assert 3 <= len(answered) < 40  # what finished before the signal, no more
    assert "run interrupted" in (run_dir / "report.md").read_text()


def test_fresh_recomputes_everything(tmp_path, config):
    results = tmp_path / "results"
    with OllamaEmulator() as emu:
        assert run_to_end(emu, results, config).returncode == 0
        first = Counter(emu.state.work)
        args, env = command(emu, results, config)
        assert run_cli(*args, "--fresh", env=env).returncode == 0
        assert Counter(emu.state.work) - first == first  # the same work again


def test_sigkill_during_judging_resumes_with_exactly_the_cells_left(tmp_path, config):
    """Calls after the restart = the calls of the cells not yet scored (faithfulness 2, answer_relevancy 3, context_precision "
    "k, context_recall 1)."""
    from judge_server import JudgeFaults, JudgeServer, judge_flags

    calls_per_metric = {"faithfulness": 2, "answer_relevancy": 3, "context_precision": 3, "context_recall": 1}
    results = tmp_path / "results"
    with OllamaEmulator() as emu, JudgeServer(JudgeFaults(latency_s=0.01)) as judge:
        args, env = command(emu, results, config)
        args += [
            *judge_flags(judge),
            "--judge-concurrency",
            "2",
        ]
        process = start_cli(*args, env=env)
        deadline = time.monotonic() + 180
        while judge.state.chat_requests < 60:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.005)
        process.kill()
        process.wait()
        time.sleep(0.3)  # the judge server finishes what the killed client had in flight
        with sqlite3.connect(results / "ragsweep.sqlite") as db:
            scored = dict(db.execute("SELECT metric, COUNT(*) FROM judge_cache GROUP BY metric").fetchall())
        before_calls, before_work = judge.state.chat_requests, Counter(emu.state.work)
        rerun = run_cli(*args, env=env)
        assert rerun.returncode == 0, rerun.stderr
        with sqlite3.connect(results / "ragsweep.sqlite") as db:
            total = dict(db.execute("SELECT metric, COUNT(*) FROM judge_cache GROUP BY metric").fetchall())
        assert Counter(emu.state.work) == before_work  # retrieval and generation came from the store
        left_calls = sum((total[m] - scored.get(m, 0)) * calls_per_metric[m] for m in calls_per_metric)
        assert judge.state.chat_requests - before_calls == left_calls > 0
    run_dir = latest_run_dir(results)
    samples = list(csv.DictReader((run_dir / "samples.csv").open()))
    assert len(samples) == 40 and all(s[m] for s in samples for m in calls_per_metric)  # every cell scored, none twice
