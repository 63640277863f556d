"""Can this judge be trusted? `benchmark.py judge-check` as the README runs it, against test judges that flip coins or
read their input; the stored check in a sweep's report; a person's labels correcting a run's scores (`report --labels`)."""

import csv
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from cli import run_cli
from conftest import REPO, write_jsonl
from judge_server import JudgeFaults, JudgeServer, judge_flags
from ragsweep.findings import load_report
from ragsweep.report import write_exports
from ragsweep.store import Store
from ragsweep.testset import Question

DEFAULT = REPO / "data" / "judge-check" / "halueval-qa-labels.jsonl"
METRICS = ["faithfulness", "answer_relevancy", "context_precision", "context_recall"]


def check(server: JudgeServer, results: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("judge-check", *judge_flags(server), "--results-dir", str(results), *extra)


def check_dirs(results: Path) -> list[Path]:
    return sorted(p for p in results.iterdir() if p.name.startswith("judge-check-"))


def check_dir(results: Path) -> Path:
    (found,) = check_dirs(results)
    return found


def table(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open(encoding="utf-8")))


def test_a_coin_flipping_judge_is_no_better_than_chance_on_every_metric(tmp_path):
    with JudgeServer(JudgeFaults(mode="coin")) as server:
        result = check(server, tmp_path, "--limit", "40")
    assert result.returncode == 0, result.stderr
    rows = table(check_dir(tmp_path) / "judge_check.csv")
    assert [r["metric"] for r in rows] == METRICS
    for row in rows:
        assert row["verdict"] == "no better than chance", row
        assert float(row["auroc_ci_low"]) <= 0.5 <= float(row["auroc_ci_high"]) and row["n"] == "40" and row["positives"] == "20"
    assert "no better than chance" in result.stdout and "judge check: openai/judge" in result.stdout


def test_a_judge_that_reads_agrees_each_label_reaches_its_row_and_a_second_check_is_free(tmp_path):
    items = [json.loads(line) for line in DEFAULT.read_text(encoding="utf-8").splitlines()]
    chosen = [item for metric in METRICS for item in [i for i in items if i["metric"] == metric][:30]]
    random.Random(4).shuffle(chosen)  # labels no longer follow from the order or the ids' pattern
    for item in chosen:
        item["id"] = f"item-{random.Random(item['id']).randrange(10**9)}"
    labels = write_jsonl(tmp_path / "mine.jsonl", chosen)
    with JudgeServer(JudgeFaults(mode="reads")) as server:
        first = check(server, tmp_path / "results", "--labels", str(labels))
        calls = server.state.chat_requests
        second = check(server, tmp_path / "results", "--labels", str(labels))
        assert server.state.chat_requests == calls  # every cell from the judge cache (same identity, same inputs)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    folder, again = check_dirs(tmp_path / "results")
    rows = {r["metric"]: r for r in table(folder / "judge_check.csv")}
    assert {metric for metric, r in rows.items() if r["verdict"] == "agrees"} >= {"context_precision", "context_recall"}
    assert float(rows["context_recall"]["auroc"]) > 0.8 and float(rows["context_recall"]["balanced_accuracy"]) > 0.7
    judged = table(folder / "judge_check_items.csv")
    assert [(r["id"], r["metric"], int(r["label"])) for r in judged] == [(i["id"], i["metric"], i["label"]) for i in chosen]
    assert all(r["score"] != "" and r["cause"] == "" for r in judged)
    assert "| context_recall | 30 | 15 |" in (folder / "judge_check.md").read_text()
    assert table(again / "judge_check.csv") == list(rows.values())


def test_the_plan_estimates_calls_and_makes_none(tmp_path):
    with JudgeServer() as server:
        result = check(server, tmp_path, "--limit", "10", "--dry-run")
        assert server.state.chat_requests == 0
    assert result.returncode == 0, result.stderr
    # 10 items per metric: faithfulness 2 calls, answer_relevancy 3, context_precision 1 per passage (1), context_recall 1
    assert "40 labelled items" in result.stdout and "about 70 judge calls" in result.stdout
    assert not any(p.name.startswith("judge-check-") for p in tmp_path.iterdir())


def test_a_bad_labels_file_is_one_line_and_exit_2(tmp_path):
    labels = tmp_path / "bad.jsonl"
    labels.write_text(DEFAULT.read_text(encoding="utf-8").splitlines()[0] + "\n" + '{"id": "z", "metric": "faithfulness"}\n')
    with JudgeServer() as server:
        result = check(server, tmp_path, "--labels", str(labels))
        assert server.state.chat_requests == 0
    assert result.returncode == 2
    assert result.stderr.strip() == f"ragsweep: error: {labels}:2: missing field 'question'"


def test_without_a_judge_it_says_how_to_name_one(tmp_path):
    result = run_cli("judge-check", "--results-dir", str(tmp_path), "--judge", "none")
    assert result.returncode == 2 and "judge-check needs a judge" in result.stderr and "--judge" in result.stderr


def test_the_default_set_rebuilds_byte_for_byte_from_its_source(tmp_path):
    out = tmp_path / "rebuilt.jsonl"
    source = REPO / "data" / "judge-check" / "halueval-qa-300.jsonl"
    subprocess.run([sys.executable, str(REPO / "data" / "judge-check" / "build_labels.py"), str(source), str(out)], check=True)
    assert out.read_bytes() == DEFAULT.read_bytes()
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2400 and {m: sum(r["metric"] == m for r in rows) for m in METRICS} == dict.fromkeys(METRICS, 600)
    first = json.loads(source.read_text(encoding="utf-8").splitlines()[0])
    right, wrong = rows[0], rows[1]
    assert (right["answer"], right["label"], wrong["answer"], wrong["label"]) == (
        first["right_answer"],
        1,
        first["hallucinated_answer"],
        0,
    )


# --- the check in a sweep's report, and a person's labels -------------------------------------------------------------


def judged_run(store: Store, run_id: str, identity: str, judge_scores: dict[str, list[float]]) -> None:
    """A stored run of 1 retriever × the given LLMs, each question's faithfulness judged as given."""
    questions = len(next(iter(judge_scores.values())))
    store.start_run(run_id, {}, {"judge": "openai/judge", "judge_identity": identity}, {"device": "cpu"})
    store.add_questions(run_id, [Question(f"q{i}", f"question {i}?", "x", ("d",)) for i in range(questions)])
    for i in range(questions):
        store.put_retrieval(run_id, "bm25", f"q{i}", ["d"], ["x"], {"recall_at_k": 1.0, "mrr": 1.0, "ndcg_at_k": 1.0})
    for llm, scores in judge_scores.items():
        for i, score in enumerate(scores):
            store.put_answer(run_id, "bm25", llm, f"q{i}", {"answer": "x", "exact_match": 1.0, "token_f1": 1.0, "latency_s": 1.0})
            store.put_judgement(run_id, "bm25", llm, f"q{i}", "faithfulness", {"value": score})


CHECK_ROWS = [
    {
        "metric": "faithfulness",
        "n": 600,
        "positives": 300,
        "auroc": 0.91,
        "auroc_ci_low": 0.88,
        "auroc_ci_high": 0.94,
        "balanced_accuracy": 0.8,
        "threshold": 0.5,
        "failed": 0,
        "verdict": "agrees",
    }
]


def test_a_sweeps_report_shows_the_check_of_its_own_judge_identity_and_not_another(tmp_path):
    store = Store(tmp_path / "ragsweep.sqlite")
    store.put_judge_check("judge-check-1", "openai/judge", "identity-A", "labels.jsonl", CHECK_ROWS)
    judged_run(store, "checked", "identity-A", {"a": [0.5] * 12})
    judged_run(store, "other", "identity-B", {"a": [0.5] * 12})
    for run_id in ("checked", "other"):
        write_exports(store, run_id, tmp_path / run_id)
    said = "judge openai/judge: faithfulness AUROC 0.91 [0.88, 0.94] on 600 labelled items (agrees; judge-check-1)"
    for name in ("report.md", "report.html"):
        checked, other = ((tmp_path / run / name).read_text() for run in ("checked", "other"))
        assert said in checked and "never checked" not in checked
        assert "AUROC" not in other and "judge openai/judge was never checked against labelled answers" in other
        assert "python src/benchmark.py judge-check --judge openai/judge" in other


def labels_file(path: Path, llm: str, labels: list[float], metric: str = "faithfulness") -> list[dict]:
    return [
        {"embedding_model": "bm25", "llm": llm, "question_id": f"q{i}", "metric": metric, "label": label} for i, label in enumerate(labels)
    ]


def test_report_labels_correct_a_lenient_judge_and_flag_the_ranking_it_changes(tmp_path):
    rng = random.Random(2)
    truth_a = [rng.choice([0.0, 0.25, 0.5]) for _ in range(60)]  # a is worse than b by a person's labels
    truth_b = [rng.choice([0.5, 0.75, 1.0]) for _ in range(60)]
    judge_a = [min(1.0, t + 0.6) for t in truth_a]  # the judge is lenient with a, strict with b: it ranks a first
    judge_b = [t * 0.6 for t in truth_b]
    store = Store(tmp_path / "ragsweep.sqlite")
    judged_run(store, "r1", "identity-A", {"a": judge_a, "b": judge_b})
    labels = write_jsonl(tmp_path / "labels.jsonl", labels_file(tmp_path, "a", truth_a[:30]) + labels_file(tmp_path, "b", truth_b))
    result = run_cli("report", "r1", "--labels", str(labels), "--results-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    summary = {row["llm"]: row for row in table(tmp_path / "r1" / "summary.csv")}
    a, b = summary["a"], summary["b"]
    assert a["faithfulness_ppi_n"] == "30" and b["faithfulness_ppi_n"] == "60"
    assert float(b["faithfulness_ppi"]) == pytest.approx(sum(truth_b) / 60)  # every sample labelled: the labels' mean
    truth_mean_a, judge_mean_a = sum(truth_a) / 60, sum(judge_a) / 60
    assert abs(float(a["faithfulness_ppi"]) - truth_mean_a) < abs(judge_mean_a - truth_mean_a) / 3  # moved toward the labels
    assert float(a["faithfulness_ppi_ci_low"]) < float(a["faithfulness_ppi"]) < float(a["faithfulness_ppi_ci_high"])
    report = (tmp_path / "r1" / "report.md").read_text()
    assert "### Scores corrected by your labels" in report
    rows = [line for line in report.splitlines() if line.startswith("| bm25 | ")]
    corrected = [line for line in rows if "faithfulness" in line]
    assert len(corrected) == 2 and all("changed after correction" in line for line in corrected)
    assert "| 60 | about 180 |" in corrected[1]  # every sample labelled: 4 × the labels halve the interval
    assert "more questions would" in corrected[0]  # a: the judged spread of the 30 unlabelled samples dominates
    assert "Scores corrected by your labels" in (tmp_path / "r1" / "report.html").read_text()
    again = run_cli("report", "r1", "--results-dir", str(tmp_path))  # the labels are kept in the store
    assert again.returncode == 0 and table(tmp_path / "r1" / "summary.csv") == list(summary.values())


def test_labels_of_samples_the_run_does_not_have_are_one_line_naming_it(tmp_path):
    store = Store(tmp_path / "ragsweep.sqlite")
    judged_run(store, "r1", "identity-A", {"a": [0.5] * 12})
    rows = labels_file(tmp_path, "a", [1.0] * 3)
    rows[2]["question_id"] = "q99"
    labels = write_jsonl(tmp_path / "labels.jsonl", rows)
    result = run_cli("report", "r1", "--labels", str(labels), "--results-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"ragsweep: error: {labels}:3: no answered sample 'bm25' + 'a', question 'q99'")
    assert store.labels("r1") == []  # nothing half-stored
    assert not math.isnan(load_report(store, "r1").summary[0]["faithfulness"])


def test_a_check_then_a_sweep_by_the_same_judge_shows_the_check_on_screen_and_in_the_report(emulator, tmp_path):
    from cli import emulated_gpu_env, latest_run_dir, matrix, ollama_flags

    with JudgeServer(JudgeFaults(mode="reads")) as server:
        checked = check(server, tmp_path, "--limit", "10")
        sweep = run_cli(
            *ollama_flags(emulator),
            *matrix("llama3.2:3b", "bm25", 2),
            "--results-dir",
            str(tmp_path),
            *judge_flags(server),
            env=emulated_gpu_env(emulator),
        )
    assert checked.returncode == 0 and sweep.returncode == 0, checked.stderr + sweep.stderr
    check_id = check_dir(tmp_path).name
    line = f"judge openai/judge: context_recall AUROC 1.00 [1.00, 1.00] on 10 labelled items (agrees; {check_id})"
    assert f"note: {line}" in sweep.stdout
    assert line in (latest_run_dir(tmp_path) / "report.md").read_text()


def test_ctrl_c_stops_a_check_that_the_same_command_finishes_without_paying_twice(tmp_path):
    import signal
    import time

    from cli import start_cli

    with JudgeServer(JudgeFaults(latency_s=0.3)) as server:
        flags = ["judge-check", *judge_flags(server), "--results-dir", str(tmp_path), "--limit", "6", "--judge-concurrency", "2"]
        run = start_cli(*flags)
        deadline = time.monotonic() + 120
        while server.state.chat_requests < 8:
            assert time.monotonic() < deadline and run.poll() is None, run.communicate()
            time.sleep(0.1)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
        assert run.returncode == 130 and "judged items are cached — run the same command again to go on" in err, out + err
        paid = server.state.chat_requests
        again = run_cli(*flags)
        assert again.returncode == 0, again.stderr
        assert server.state.chat_requests - paid < 42  # the whole check is 6 × (2 + 3 + 1 + 1) = 42 calls
    (folder,) = [d for d in check_dirs(tmp_path) if (d / "judge_check.csv").exists()]
    assert all(r["failed"] == "0" for r in table(folder / "judge_check.csv"))
