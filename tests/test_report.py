"""The report stage straight from a store: summary means, the judge section, faults, and the files."""

import csv
import math

import pytest

from ragsweep.events import Event
from ragsweep.findings import fault_lines, load_report
from ragsweep.platform import get_platform_config
from ragsweep.report import render_markdown, write_exports
from ragsweep.runlog import RunLog
from ragsweep.store import Store
from ragsweep.testset import Question


@pytest.fixture
def store(tmp_path):
    """One run: 2 questions × 1 retriever × 2 LLMs; one answer failed, one judge cell NaN, a retry and a note."""
    store = Store(tmp_path / "db.sqlite")
    store.start_run("r1", {"backend": "ollama"}, {"judge": "openai/judge"}, {"device": "cpu"})
    store.add_questions("r1", [Question("q1", "Capital of France?", "Paris", ("d1",)), Question("q2", "Cats hunt?", "mice", ("d2",))])
    for qid, hit in (("q1", 1.0), ("q2", 0.0)):
        store.put_retrieval("r1", "bm25", qid, ["d1"], ["Paris is ..."], {"recall_at_k": hit, "mrr": hit, "ndcg_at_k": hit})
    store.put_answer("r1", "bm25", "a", "q1", {"answer": "Paris", "exact_match": 1.0, "token_f1": 1.0, "latency_s": 1.0})
    store.put_answer("r1", "bm25", "a", "q2", {"answer": "dogs", "exact_match": 0.0, "token_f1": 0.0, "latency_s": 3.0})
    store.put_answer("r1", "bm25", "b", "q1", {"answer": "Paris", "exact_match": 1.0, "token_f1": 1.0, "latency_s": 2.0})
    store.put_answer("r1", "bm25", "b", "q2", {"error": "runner crashed", "cause": "runner_crash"})
    store.put_judgement("r1", "bm25", "a", "q1", "faithfulness", {"value": 0.5})
    store.put_judgement("r1", "bm25", "a", "q2", "faithfulness", {"value": None, "cause": "timeout", "message": "no answer"})
    log = RunLog("r1", tmp_path, store, get_platform_config())
    log.event(Event.RETRY, cause="busy", attempt=1, message="server busy")
    log.event(Event.NOTE, "generate", message="b: 1 answers failed")
    log.close()
    return store


def test_summary_means_leave_out_failed_answers_but_not_their_retrieval(store):
    rows = {row["llm"]: row for row in load_report(store, "r1").summary}
    assert (rows["a"]["answered"], rows["b"]["answered"], rows["b"]["failed"]) == (2, 1, 1)
    assert rows["a"]["token_f1"] == 0.5 and rows["b"]["token_f1"] == 1.0  # b's failed sample is not a zero
    assert rows["b"]["recall_at_k"] == 0.5  # retrieval happened for both of b's questions
    assert rows["a"]["latency_s"] == 2.0
    assert rows["a"]["faithfulness"] == 0.5 and rows["a"]["faithfulness_nan_rate"] == 0.5
    assert math.isnan(rows["b"]["faithfulness"])


def test_markdown_has_the_judge_faults_and_notes(store):
    text = render_markdown(load_report(store, "r1"))
    assert "## Judge (openai/judge)" in text and "Failed cells by cause: timeout 1" in text
    assert "- retry [attempt 1]: server busy" in text  # no empty stage in front: "- : retry"
    assert "- b: 1 answers failed" in text


def test_fault_lines_name_stage_and_model_only_when_known(store):
    assert fault_lines(load_report(store, "r1")) == ["retry [attempt 1]: server busy"]


def test_exports_are_written_from_the_store_alone(store, tmp_path):
    out = tmp_path / "r1"
    summary = write_exports(store, "r1", out)
    assert {p.name for p in out.iterdir()} >= {"samples.csv", "summary.csv", "memory.csv", "judge_errors.csv", "report.md", "report.html"}
    samples = list(csv.DictReader((out / "samples.csv").open()))
    assert len(samples) == 4 and [s["cause"] for s in samples if s["error"]] == ["runner_crash"]
    assert [row["llm"] for row in summary] == ["a", "b"]


def test_per_card_peaks_samples_and_inferred_attribution_are_reported(store):
    base = {
        "stage": "generate",
        "model": "a",
        "platform": "cuda",
        "rss_bytes": 1,
        "runner_rss_bytes": None,
        "system_total_bytes": 1,
        "system_available_bytes": 1,
        "device_used_bytes": 9 * 10**9,
        "device_max_used_bytes": 7 * 10**9,
    }
    rows = [
        {**base, "label": "loaded", "t": 1.0, "devices": f"0:{7 * 10**9}/{24 * 10**9};1:{2 * 10**9}/{24 * 10**9}", "attribution": "nvml"},
        {
            **base,
            "label": "sample",
            "t": 2.0,
            "devices": f"0:{11 * 10**9}/{24 * 10**9};1:{3 * 10**9}/{24 * 10**9}",
            "attribution": "inferred",
            "device_max_used_bytes": 11 * 10**9,
        },
    ]
    for seq, row in enumerate(rows, start=100):
        store.add_snapshot("r1", seq, row)
    text = render_markdown(load_report(store, "r1"))
    assert "| 0 | 11.00 | 24.00 |" in text and "| 1 | 3.00 | 24.00 |" in text  # the sample's peak, per card
    assert "Peaks include 1 samples" in text and "inferred as the device's growth" in text
    assert "| generate | 11.00 |" in text  # the stage's peak is the fullest card at the sample


def _comparison(low: float, high: float, distinguishable: bool, llm: str = "b") -> dict:
    return {
        "metric": "exact_match",
        "best_embedding_model": "bm25",
        "best_llm": "a",
        "embedding_model": "bm25",
        "llm": llm,
        "n_paired": 20,
        "mean_diff": (low + high) / 2,
        "ci_low": low,
        "ci_high": high,
        "p_value": 0.01 if distinguishable else 0.09,
        "distinguishable": distinguishable,
        "questions_to_separate": 60.0,
    }


def test_no_tie_is_said_beside_an_interval_that_excludes_zero():
    from ragsweep.comparisons import tie_sentences

    rows = [_comparison(-0.4, -0.05, False, "b"), _comparison(-0.3, 0.1, False, "c"), _comparison(-0.5, -0.2, True, "d")]
    excluded, covered = tie_sentences(rows)
    assert "tied" not in excluded and "is worse than the best, bm25 + a, on these 20 questions" in excluded
    assert "but not after correcting for 3 comparisons (Holm-adjusted p = 0.090)" in excluded and "[-0.400, -0.050]" in excluded
    assert "bm25 + c is tied with the best" in covered and "[-0.300, +0.100]" in covered
