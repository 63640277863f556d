"""The oracle and closed-book baselines, end to end on the real tiny models, and the report's reading of them."""

import csv
import json

import pytest

from cli import latest_run_dir, run_cli


@pytest.fixture(scope="module")
def gemma_bracketed(tmp_path_factory):
    """gemma3-270m over 10 demo questions with bm25 between the two baselines; then the same command again."""
    results = tmp_path_factory.mktemp("baselines")
    args = [
        "--backend",
        "local",
        "--llms",
        "gemma3-270m",
        "--embeddings",
        "oracle,none,bm25",
        "--limit",
        "10",
        "--results-dir",
        results,
        "--quiet",
    ]
    first = run_cli(*args, timeout=900)
    first_dir = latest_run_dir(results)
    second = run_cli(*args, timeout=900)
    return first, first_dir, second, latest_run_dir(results)


def test_oracle_beats_closed_book_and_neither_loads_a_model(gemma_bracketed):
    first, run_dir, _, _ = gemma_bracketed
    assert first.returncode == 0, first.stderr
    summary = {row["embedding_model"]: row for row in csv.DictReader((run_dir / "summary.csv").open())}
    assert float(summary["oracle"]["token_f1"]) > float(summary["none"]["token_f1"])
    assert summary["oracle"]["recall_at_k"] == "1.0" and summary["none"]["recall_at_k"] == ""  # by construction / empty, never 0
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["model"] for e in events if e["event"] == "model_load"] == ["bm25", "gemma3-270m"]
    assert "model loads: 2 (E + L)" in first.stdout or json.loads((run_dir / "run.json").read_text())["plan"]["model_loads"] == 2


def test_the_closed_book_prompt_has_no_context_section(gemma_bracketed):
    from ragsweep.prompt import build_prompt

    closed = build_prompt("Who wrote Hamlet?", [])
    assert "Context" not in closed.completion and "context" not in closed.messages[0]["content"]
    assert "Context:\n[1] Hamlet" in build_prompt("Who wrote Hamlet?", ["Hamlet is a play."]).completion


def test_the_report_says_where_the_weakness_is(gemma_bracketed):
    _, run_dir, _, _ = gemma_bracketed
    report = (run_dir / "report.md").read_text()
    section = report.split("## Where the weakness is: retriever or LLM")[1].split("\n## ")[0]
    [row] = [line for line in section.splitlines() if line.startswith("| token_f1 | gemma3-270m | bm25 |")]
    assert "the retriever limits it" in row or "the LLM limits it" in row
    assert "oracle" not in {r["embedding_model"] for r in csv.DictReader((run_dir / "comparisons.csv").open())}  # baselines are not ranked


def test_a_rerun_costs_nothing(gemma_bracketed):
    _, first_dir, second, second_dir = gemma_bracketed
    assert second.returncode == 0, second.stderr
    events = [json.loads(line) for line in (second_dir / "events.jsonl").read_text().splitlines()]
    assert [e["model"] for e in events if e["event"] == "model_load"] == ["bm25"]  # the lexical index, no model
    first = {(r["embedding_model"], r["question_id"]): r["answer"] for r in csv.DictReader((first_dir / "samples.csv").open())}
    again = {
        (r["embedding_model"], r["question_id"]): (r["answer"], r["cached"]) for r in csv.DictReader((second_dir / "samples.csv").open())
    }
    assert again == {key: (answer, "1") for key, answer in first.items()}
