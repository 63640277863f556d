"""The user's command, end to end, with the real tiny models (run as a subprocess, like a user)."""

import csv
import json
from pathlib import Path

import pytest

import benchmark
from cli import run_cli


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory):
    """One 2 x 2 run over 2 questions of a tiny corpus, then the same command again."""
    tmp = tmp_path_factory.mktemp("matrix")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"id": "d1", "title": "Cats", "text": "Cats sleep most of the day and hunt mice at night."},
                {"id": "d2", "title": "Paris", "text": "Paris is the capital of France, on the river Seine."},
                {"id": "d3", "title": "Rust", "text": "Rust is a systems programming language focused on memory safety."},
            ]
        )
    )
    testset = tmp / "testset.jsonl"
    testset.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"id": "q1", "question": "What is the capital of France?", "reference": "Paris", "reference_context_ids": ["d2"]},
                {"id": "q2", "question": "What do cats hunt at night?", "reference": "mice", "reference_context_ids": ["d1"]},
            ]
        )
    )
    args = ["--corpus", str(corpus), "--testset", str(testset), "--top-k", "2", "--results-dir", str(tmp / "results")]
    first = run_cli(*args)
    second = run_cli(*args, "--quiet")
    runs = sorted(p for p in (tmp / "results").iterdir() if p.is_dir())
    return first, second, runs


def test_two_by_two_matrix_completes_with_every_output(matrix_run):
    first, _, runs = matrix_run
    assert first.returncode == 0, first.stderr
    run_dir = runs[0]
    for name in ("samples.csv", "summary.csv", "memory.csv", "events.jsonl", "run.json", "report.md", "run.log"):
        assert (run_dir / name).is_file(), name
    samples = list(csv.DictReader((run_dir / "samples.csv").open()))
    assert len(samples) == 2 * 2 * 2
    assert {(s["embedding_model"], s["llm"]) for s in samples} == {
        (e, llm) for e in ("all-minilm-l6-v2", "bm25") for llm in ("smollm2-135m", "gemma3-270m")
    }
    for sample in samples:
        assert sample["answer"].strip() and not sample["error"]
        assert float(sample["recall_at_k"]) == 1.0  # three documents, top-2, the gold one is obvious
        assert 0.0 <= float(sample["token_f1"]) <= 1.0 and int(sample["completion_tokens"]) >= 1
    assert "summary" in first.stdout and "results in" in first.stdout


def test_each_model_loaded_once_e_plus_l(matrix_run):
    _, _, runs = matrix_run
    loads = [e for e in events(runs[0]) if e["event"] == "model_load"]
    assert sorted(e["model"] for e in loads) == sorted(["all-minilm-l6-v2", "bm25", "smollm2-135m", "gemma3-270m"])
    unloads = [e["model"] for e in events(runs[0]) if e["event"] == "unload_verified"]
    assert sorted(unloads) == sorted(["all-minilm-l6-v2", "smollm2-135m", "gemma3-270m"])


def test_unload_brings_model_memory_back(matrix_run):
    _, _, runs = matrix_run
    ledger = list(csv.DictReader((runs[0] / "memory.csv").open()))
    for model in ("all-minilm-l6-v2", "smollm2-135m", "gemma3-270m"):
        loaded = next(r for r in ledger if r["model"] == model and r["label"] == "loaded")
        after = next(r for r in ledger if r["model"] == model and r["label"] == "after_unload")
        assert int(loaded["runner_rss_bytes"]) > 50e6  # the model process really held the weights
        assert int(after["runner_rss_bytes"]) == 0 and after["backend_models"] == ""
        assert abs(int(after["rss_bytes"]) - int(loaded["rss_bytes"])) < 50e6  # this process never held them
        assert loaded["device_used_bytes"] == ""  # no NVML here: recorded as absent, not as zero


def test_run_json_records_config_digests_and_licenses(matrix_run):
    _, _, runs = matrix_run
    record = json.loads((runs[0] / "run.json").read_text())
    assert record["exit_code"] == 0 and record["config"]["top_k"] == 2
    assert record["models"]["gemma3-270m"]["license"] == "Gemma Terms of Use"
    assert len(record["models"]["smollm2-135m"]["digest"]) == 64
    assert record["timings"]["model_call_s"] > 0


def test_second_identical_run_loads_no_model(matrix_run):
    first, second, runs = matrix_run
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("\n") == 1 and "8/8 samples answered" in second.stdout  # --quiet: one line
    assert [e for e in events(runs[1]) if e["event"] == "model_load" and e["model"] != "bm25"] == []
    first_rows = list(csv.DictReader((runs[0] / "samples.csv").open()))
    second_rows = list(csv.DictReader((runs[1] / "samples.csv").open()))
    assert [r["answer"] for r in first_rows] == [r["answer"] for r in second_rows]


def test_dry_run_prints_plan_and_starts_nothing(tmp_path):
    result = run_cli("--dry-run", "--results-dir", str(tmp_path), "--limit", "5")
    assert result.returncode == 0, result.stderr
    assert "2 retrievers × 2 LLMs × 5 questions = 20 samples" in result.stdout and "model loads: 4 (E + L)" in result.stdout
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--llms", "smollm3-135m"], "unknown local llm model 'smollm3-135m' — did you mean 'smollm2-135m'?"),
        (["--llms", "all-minilm-l6-v2"], "'all-minilm-l6-v2' is an embedding model, not an llm model"),
        (["--top-k", "0"], "--top-k: Input should be greater than or equal to 1"),
        (["--judge", "openai/my-judge"], "--judge openai/my-judge: an openai/ judge needs --judge-base-url"),
    ],
)
def test_input_errors_are_one_line_exit_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code = benchmark.main([*args, "--results-dir", str(tmp_path), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("ragsweep: error: ")


def test_bad_testset_line_exit_2(tmp_path, tiny_corpus, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "q1", "question": "Q?", "reference": "A", "reference_context_ids": ["d1"]}\n{"id": "q2", "question": "Q?"}\n')
    code = benchmark.main(["--corpus", str(tiny_corpus), "--testset", str(bad), "--results-dir", str(tmp_path), "--dry-run"])
    assert code == 2
    assert f"{bad}:2: missing field 'reference'" in capsys.readouterr().err


def test_locked_results_dir_exit_4(tmp_path, capsys):
    from ragsweep.lock import results_lock

    with results_lock(tmp_path, "other-run"):
        code = benchmark.main(["--results-dir", str(tmp_path), "--limit", "1"])
    err = capsys.readouterr().err
    assert code == 4
    assert f"another ragsweep run is using {tmp_path} (run other-run, pid" in err
