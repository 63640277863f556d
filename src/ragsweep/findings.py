"""What a run found, read from the store only: the data model every report (screen, report.md, report.html) renders.

Nothing here loads a model, so a report can be rebuilt at any time with `benchmark.py report`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import fmt, stats
from .comparisons import compare_to_best, diagnose
from .events import Event
from .fmt import gb, is_nan
from .memory import bytes_in_use
from .metrics import ANSWER_METRICS, JUDGE_METRICS, RETRIEVAL_METRICS
from .platform import card_targets
from .store import Store

MEAN_COLUMNS = [*RETRIEVAL_METRICS, *ANSWER_METRICS, *JUDGE_METRICS, "latency_s", "tokens_per_s"]


@dataclass
class RunReport:
    run_id: str
    run: dict[str, Any]
    samples: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    snapshots: list[dict[str, Any]]
    events: list[dict[str, Any]]
    judgements: list[dict[str, Any]]  # one row per judgement (several per cell with --judge-repeats)
    repeats: dict[tuple, list[float]] = field(default_factory=dict)  # (retriever, llm, question, metric) -> value per repeat
    comparisons: list[dict[str, Any]] = field(default_factory=list)  # every combination against the best, per metric (comparisons.csv)
    diagnosis: list[dict[str, Any]] = field(default_factory=list)  # closed book → retriever → oracle, per LLM
    judge_check: list[str] = field(default_factory=list)  # the stored judge check of this run's judge, or how to make one
    corrections: list[dict[str, Any]] = field(default_factory=list)  # per combination and metric with labels: PPI vs judge

    @property
    def judge_repeats(self) -> int:
        return max((len(values) for values in self.repeats.values()), default=0)

    @property
    def judged(self) -> bool:
        return bool(self.judgements)

    @property
    def judge_errors(self) -> list[dict[str, Any]]:
        return [j for j in self.judgements if j["value"] is None]

    @property
    def notes(self) -> list[str]:
        return [e["message"] for e in self.events if e["event"] == Event.NOTE]


def load_report(store: Store, run_id: str) -> RunReport:
    samples = store.samples(run_id)
    judgements = store.judgements(run_id)
    repeats: dict[tuple, list[float]] = defaultdict(list)  # (retriever, llm, question, metric) -> one value per repeat (NaN: failed)
    for j in judgements:
        repeats[(j["embedding_model"], j["llm"], j["question_id"], j["metric"])].append(math.nan if j["value"] is None else j["value"])
    for row in samples:
        row["retrieved_ids"] = "|".join(json.loads(row["retrieved_ids"])) if row["retrieved_ids"] else ""
        for metric in JUDGE_METRICS:  # the mean over repeats; None: never judged (no answer, or a closed-book context metric)
            values = repeats.get((row["embedding_model"], row["llm"], row["question_id"], metric))
            row[metric] = None if values is None else _nanmean(values)
    summary = summarize(samples, repeats)
    corrections = correct_by_labels(summary, samples, store.labels(run_id))
    run = store.run(run_id) or {}
    report = RunReport(
        run_id,
        run,
        samples,
        summary,
        store.snapshots(run_id),
        store.events(run_id),
        judgements,
        repeats,
        compare_to_best(samples),
        diagnose(samples),
        judge_check_lines(store, run.get("plan") or {}),
        corrections,
    )
    return report


def judge_check_lines(store: Store, plan: dict[str, Any]) -> list[str]:
    """What a report says about its judge: the latest stored check of that judge identity per metric, or how to check it."""
    judge, identity = plan.get("judge"), plan.get("judge_identity")
    if not judge:
        return []
    check = store.judge_check(identity) if identity else None
    if check is None:
        return [
            f"judge {judge} was never checked against labelled answers — run: python src/benchmark.py judge-check --judge {judge} "
            "(with this run's other judge flags) to see how well it separates good answers from bad"
        ]
    return [
        f"judge {judge}: {r['metric']} AUROC {fmt.number(r['auroc'], 2)} [{fmt.number(r['auroc_ci_low'], 2)}, "
        f"{fmt.number(r['auroc_ci_high'], 2)}] on {r['n']} labelled items ({r['verdict']}; {check['check_id']})"
        for r in check["rows"]
    ]


CORRECTION_HEADERS = ["retriever", "LLM", "metric", "judge", "corrected by your labels", "labels", "more labels to halve it", "ranking"]
CORRECTION_NOTE = (
    "Prediction-powered inference (PPI++, Angelopoulos et al. 2023): your labels correct the judge's bias, and the judge's "
    "scores of the samples you did not label narrow the interval as far as it agrees with you. Both intervals are 95 %; "
    "with every sample labelled the corrected score is your labels' mean."
)


def correction_cells(row: dict[str, Any]) -> list[str]:
    """One row of the corrections table (report.md and report.html)."""
    found = row["corrected"]
    more = found.more_labels_to_halve
    halve = (
        "-"
        if is_nan(found.low)
        else (f"about {more}" if more is not None else "not by labels: the unlabelled samples' spread dominates; more questions would")
    )
    judge = fmt.interval(row["judge"], row["metric"])
    ranking = "changed after correction" if row["rank_changed"] else ""
    return [row["embedding_model"], row["llm"], row["metric"], judge, fmt.estimate(found), str(found.n), halve, ranking]


def correct_by_labels(summary: list[dict[str, Any]], samples: list[dict[str, Any]], labels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scores corrected by a person's labels (PPI++): `<metric>_ppi`, its interval and `_ppi_n` join each summary row that has
    labels; the returned rows say, per combination and metric, the judge's score beside the corrected one, how many more
    labels would halve the interval, and whether the combination's rank among the labelled ones changed."""
    if not labels:
        return []
    given = {(x["embedding_model"], x["llm"], x["question_id"], x["metric"]): x["label"] for x in labels}
    rows = []
    for entry in summary:
        combo = (entry["embedding_model"], entry["llm"])
        for metric in JUDGE_METRICS:
            judged = [
                (r["question_id"], r[metric])
                for r in samples
                if (r["embedding_model"], r["llm"]) == combo and not r["error"] and r[metric] is not None and not is_nan(r[metric])
            ]
            labelled = [(given[(*combo, q, metric)], value) for q, value in judged if (*combo, q, metric) in given]
            if not labelled:
                continue
            unlabelled = [value for q, value in judged if (*combo, q, metric) not in given]
            found = stats.corrected_mean(*(np.array(column) for column in zip(*labelled, strict=True)), np.array(unlabelled))
            entry.update(
                {
                    f"{metric}_ppi": found.mean,
                    f"{metric}_ppi_ci_low": found.low,
                    f"{metric}_ppi_ci_high": found.high,
                    f"{metric}_ppi_n": found.n,
                }
            )
            rows.append({"embedding_model": combo[0], "llm": combo[1], "metric": metric, "judge": entry, "corrected": found})
    for metric in JUDGE_METRICS:
        ranked = [r for r in rows if r["metric"] == metric]
        by_judge = sorted(ranked, key=lambda r: -r["judge"][metric])
        by_labels = sorted(ranked, key=lambda r: -r["corrected"].mean)
        for row in ranked:
            row["rank_changed"] = len(ranked) > 1 and by_judge.index(row) != by_labels.index(row)
    return rows


def summarize(samples: list[dict[str, Any]], repeats: dict[tuple, list[float]] | None = None) -> list[dict[str, Any]]:
    """Per (embedding model, LLM): counts, and each metric's mean with a 95 % bootstrap interval over questions.

    Retrieval metrics count every question; the others only answered ones. NaN cells are left out
    and `<metric>_n` says how many questions were used. With judge repeats, judge metrics get a
    two-level interval (questions, then repeats), so the judge's own noise widens it.
    """
    repeats = repeats or {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in samples:
        groups[(row["embedding_model"], row["llm"])].append(row)
    counts: dict[int, np.ndarray] = {}  # the same resamples for every group of the same size
    summary = []
    for (embedding_model, llm), rows in sorted(groups.items()):
        answered = [r for r in rows if not r["error"]]
        entry = {
            "embedding_model": embedding_model,
            "llm": llm,
            "samples": len(rows),
            "answered": len(answered),
            "failed": len(rows) - len(answered),
        }
        matrix = np.array([[_number(r[c]) if (c in RETRIEVAL_METRICS or not r["error"]) else math.nan for c in MEAN_COLUMNS] for r in rows])
        if len(rows) not in counts:
            counts[len(rows)] = stats.resample_counts(len(rows))
        for column, interval in zip(MEAN_COLUMNS, stats.intervals(matrix, counts[len(rows)]), strict=True):
            cells = _repeat_matrix(repeats, embedding_model, llm, answered, column)
            if cells is not None:
                interval = stats.two_level_interval(cells)
            entry.update(
                {column: interval.mean, f"{column}_ci_low": interval.low, f"{column}_ci_high": interval.high, f"{column}_n": interval.n}
            )
        for metric in JUDGE_METRICS:  # share of judged cells that got no score
            judged = [r[metric] for r in answered if r[metric] is not None]
            entry[f"{metric}_nan_rate"] = sum(1 for v in judged if is_nan(v)) / len(judged) if judged else math.nan
        summary.append(entry)
    return summary


def _repeat_matrix(repeats: dict, embedding_model: str, llm: str, answered: list[dict], metric: str) -> np.ndarray | None:
    """questions × repeats of one judge metric, when the cells were judged more than once; else None."""
    if metric not in JUDGE_METRICS:
        return None
    rows = [repeats[key] for r in answered if (key := (embedding_model, llm, r["question_id"], metric)) in repeats]
    width = max((len(values) for values in rows), default=0)
    if width < 2:
        return None
    return np.array([values + [math.nan] * (width - len(values)) for values in rows])


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _nanmean(values: list[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return sum(known) / len(known) if known else math.nan


def memory_findings(report: RunReport) -> dict[str, Any]:
    """Peaks per stage, the level after each unload, load times, and the seed's targets checked."""
    platform = report.run.get("platform") or {}
    peaks: dict[str, int] = {}
    for row in report.snapshots:
        peaks[row["stage"]] = max(peaks.get(row["stage"], 0), bytes_in_use(row))
    baselines = [(row["stage"], row["model"], bytes_in_use(row)) for row in report.snapshots if row["label"] == "after_unload"]
    loads = [(e["stage"], e["model"], e.get("load_s")) for e in report.events if e["event"] == Event.MODEL_LOAD]
    ooms = [e for e in report.events if e.get("cause") == "out_of_memory"]
    failed = sum(row["failed"] for row in report.summary)
    threshold = platform.get("pressure_threshold_bytes")
    target = platform.get("baseline_target_bytes")
    peak = max(peaks.values(), default=0)
    targets = [
        ("no out-of-memory error", not ooms, f"{len(ooms)} out-of-memory events"),
        (f"peak < {gb(threshold)} GB", threshold is None or peak < threshold, f"peak {gb(peak)} GB"),
        (
            f"baseline < {gb(target)} GB after every unload",
            target is None or all(b < target for _, _, b in baselines),
            f"highest {gb(max((b for _, _, b in baselines), default=0))} GB",
        ),
        (
            "every combination completed",
            failed == 0 and not any(e["event"] == Event.MODEL_FAILED for e in report.events),
            f"{failed} failed samples",
        ),
    ]
    source = (
        "device memory (NVML) on the fullest card"
        if any(row.get("device_used_bytes") is not None for row in report.snapshots)
        else "resident memory of the model processes (no GPU)"
    )
    inferred = any(row.get("attribution") == "inferred" for row in report.snapshots)
    samples = sum(1 for row in report.snapshots if row["label"] == "sample")
    return {
        "boxes": box_targets(report.snapshots, threshold, target),
        "peaks": peaks,
        "baselines": baselines,
        "loads": loads,
        "targets": targets,
        "source": source,
        "cards": card_peaks(report.snapshots),
        "inferred": inferred,
        "samples": samples,
    }


def box_targets(snapshots: list[dict[str, Any]], threshold: int | None, target: int | None) -> list[list[Any]]:
    """Per box of a cluster run: peak, highest level after an unload, and the seed's two memory targets for that box's cards."""
    boxes = sorted({row.get("box") for row in snapshots if row.get("box")})
    if len(boxes) < 2:
        return []
    rows = []
    for box in boxes:
        mine = [row for row in snapshots if row.get("box") == box]
        cards = card_peaks(mine)
        if cards:  # the box's own cards set its targets, not the head's
            threshold, target = card_targets(min(total for _, total in cards.values()))
        peak = max(bytes_in_use(row) for row in mine)
        after = max((bytes_in_use(row) for row in mine if row["label"] == "after_unload"), default=0)
        ok = (threshold is None or peak < threshold) and (target is None or after < target)
        rows.append([box, gb(peak), gb(after), "PASS" if ok else "FAIL"])
    return rows


def card_peaks(snapshots: list[dict[str, Any]]) -> dict[int, tuple[int, int]]:
    """NVML index -> (peak bytes in use, total bytes), from the ledger's per-card column."""
    cards: dict[int, tuple[int, int]] = {}
    for row in snapshots:
        for part in filter(None, (row.get("devices") or "").split(";")):
            index, usage = part.split(":")
            used, total = map(int, usage.split("/"))
            cards[int(index)] = (max(used, cards.get(int(index), (0, 0))[0]), total)
    return cards


def judge_usage(report: RunReport) -> list[dict[str, Any]]:
    """Per metric: cells, failures, calls' tokens and cost (what this run paid, cached cells are free)."""
    rows = []
    for metric in JUDGE_METRICS:
        cells = [j for j in report.judgements if j["metric"] == metric]
        costs = [j["cost_usd"] for j in cells if j["cost_usd"] is not None and not j["cached"]]
        rows.append(
            {
                "metric": metric,
                "cells": len(cells),
                "nan": sum(1 for j in cells if j["value"] is None),
                "cached": sum(1 for j in cells if j["cached"]),
                "prompt_tokens": sum(j["prompt_tokens"] or 0 for j in cells if not j["cached"]),
                "completion_tokens": sum(j["completion_tokens"] or 0 for j in cells if not j["cached"]),
                "cost_usd": sum(costs) if costs else None,
            }
        )
    return rows


FAULT_EVENTS = {
    Event.RETRY,
    Event.RECOVERING,
    Event.OUT_OF_MEMORY,
    Event.MEMORY_PRESSURE,
    Event.MEMORY_NOT_RELEASED,
    Event.MODEL_FAILED,
    Event.RUN_STOPPED,
    Event.JUDGE_COST_CAP,
    Event.STAGE_MOVED,
    Event.BOX_LOST,
    Event.BOX_REFUSED,
}


def fault_lines(report: RunReport) -> list[str]:
    """One line per fault event and per recovery, in order (events.jsonl has the details)."""
    lines = []
    for e in report.events:
        place = " ".join(part for part in (e.get("stage"), e.get("model")) if part)
        where = f"{place}: " if place else ""  # a retry of a server-wide call has no stage or model
        if e["event"] == Event.MODEL_LOAD and e.get("recovered_by"):
            placement = f" (num_ctx {e.get('num_ctx')}, num_gpu {e.get('num_gpu')})" if "num_ctx" in e else ""
            lines.append(f"{where}loaded {e['recovered_by']}{placement}")
        elif e["event"] == Event.MEMORY_PRESSURE:
            change = (
                f"batch {e['batch_size']} → {e['new_batch_size']}"
                if "batch_size" in e
                else f"judge concurrency {e['judge_concurrency']} → {e['new_judge_concurrency']}"
            )
            lines.append(f"{where}memory pressure ({gb(e['used_bytes'])} GB in use): other models unloaded, {change}")
        elif e["event"] in FAULT_EVENTS:
            detail = e.get("message") or e.get("cause") or ""
            step = f" [{e['step']}]" if e.get("step") else f" [attempt {e['attempt']}]" if e.get("attempt") else ""
            lines.append(f"{where}{e['event'].replace('_', ' ')}{step}: {str(detail)[:200]}".removesuffix(": "))
    return lines


def judge_overlap_lines(report: RunReport) -> list[str]:
    """When the judge ran beside generation: how much of it did, and the tail it left after the last answer."""
    started = [e for e in report.events if e["event"] == Event.STAGE_START and e["stage"] == "judge" and e.get("overlapped")]
    ended = [e for e in report.events if e["event"] == Event.STAGE_END and e["stage"] == "judge"]
    answers_done = [e["t"] for e in report.events if e["event"] == Event.STAGE_END and e["stage"] == "generate"]
    if not (started and ended and answers_done and ended[-1].get("first_call_t")):
        return []
    last_answer, first_call, end = max(answers_done), ended[-1]["first_call_t"], ended[-1]["t"]
    beside, tail = max(0.0, last_answer - first_call), max(0.0, end - last_answer)
    return [
        f"judge: ran beside generation for {beside:.1f} s of its {end - first_call:.1f} s, and ended {tail:.1f} s after the "
        f"last answer; at most {ended[-1].get('peak_in_flight')} calls in flight, {ended[-1].get('throttled', 0)} refused "
        "(429 or timeout)"
    ]
