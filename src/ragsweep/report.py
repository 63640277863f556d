"""Report stage: a run's exports, built from the store only (so it can be rebuilt without models).

<run dir>/samples.csv, summary.csv, memory.csv, report.md. events.jsonl and run.json are written
while the run goes.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .judge_client import METRICS
from .memory import bytes_in_use
from .store import Store

JUDGE_METRICS = list(METRICS)
SAMPLE_COLUMNS = [
    "embedding_model", "llm", "question_id", "question", "reference", "answer", "retrieved_ids",
    "recall_at_k", "mrr", "ndcg_at_k", "exact_match", "token_f1", *JUDGE_METRICS, "latency_s", "prompt_tokens",
    "completion_tokens", "tokens_per_s", "cached", "error", "cause",
]  # fmt: skip
JUDGE_ERROR_COLUMNS = ["question_id", "embedding_model", "llm", "metric", "cause", "message"]
RETRIEVAL_COLUMNS = ["recall_at_k", "mrr", "ndcg_at_k"]  # known even when the answer failed
MEAN_COLUMNS = RETRIEVAL_COLUMNS + ["exact_match", "token_f1", *JUDGE_METRICS, "latency_s", "tokens_per_s"]
SHORT_HEADERS = {"embedding_model": "retriever", "llm": "LLM", "answered": "ok", "failed": "failed", "recall_at_k": "R@k", "mrr": "MRR",
                 "ndcg_at_k": "nDCG@k", "exact_match": "EM", "token_f1": "F1", "latency_s": "s/answer", "tokens_per_s": "tok/s"}  # fmt: skip


@dataclass
class RunReport:
    run_id: str
    run: dict[str, Any]
    samples: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    snapshots: list[dict[str, Any]]
    events: list[dict[str, Any]]
    judgements: list[dict[str, Any]]

    @property
    def judged(self) -> bool:
        return bool(self.judgements)

    @property
    def judge_errors(self) -> list[dict[str, Any]]:
        return [j for j in self.judgements if j["value"] is None]

    @property
    def notes(self) -> list[str]:
        return [e["message"] for e in self.events if e["event"] == "note"]


def load_report(store: Store, run_id: str) -> RunReport:
    samples = store.samples(run_id)
    judgements = store.judgements(run_id)
    scores = {(j["embedding_model"], j["llm"], j["question_id"], j["metric"]): j["value"] for j in judgements}
    for row in samples:
        row["retrieved_ids"] = "|".join(json.loads(row["retrieved_ids"])) if row["retrieved_ids"] else ""
        for metric in JUDGE_METRICS:
            key = (row["embedding_model"], row["llm"], row["question_id"], metric)
            row[metric] = (math.nan if scores[key] is None else scores[key]) if key in scores else None
    return RunReport(run_id, store.run(run_id) or {}, samples, summarize(samples), store.snapshots(run_id), store.events(run_id), judgements)


def summarize(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (embedding model, LLM): counts and the mean of each metric over answered samples."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in samples:
        groups[(row["embedding_model"], row["llm"])].append(row)
    summary = []
    for (embedding_model, llm), rows in sorted(groups.items()):
        answered = [r for r in rows if not r["error"]]
        entry = {"embedding_model": embedding_model, "llm": llm, "samples": len(rows), "answered": len(answered), "failed": len(rows) - len(answered)}
        for column in MEAN_COLUMNS:
            values = [r[column] for r in (rows if column in RETRIEVAL_COLUMNS else answered) if r[column] is not None and not _nan(r[column])]
            entry[column] = sum(values) / len(values) if values else math.nan
        for metric in JUDGE_METRICS:  # share of judged cells that got no score
            judged = [r[metric] for r in answered if r[metric] is not None]
            entry[f"{metric}_nan_rate"] = sum(1 for v in judged if _nan(v)) / len(judged) if judged else math.nan
        summary.append(entry)
    return summary


def memory_findings(report: RunReport) -> dict[str, Any]:
    """Peaks per stage, the level after each unload, load times, and the seed's targets checked."""
    platform = report.run.get("platform") or {}
    peaks: dict[str, int] = {}
    for row in report.snapshots:
        peaks[row["stage"]] = max(peaks.get(row["stage"], 0), bytes_in_use(row))
    baselines = [(row["stage"], row["model"], bytes_in_use(row)) for row in report.snapshots if row["label"] == "after_unload"]
    loads = [(e["stage"], e["model"], e.get("load_s")) for e in report.events if e["event"] == "model_load"]
    ooms = [e for e in report.events if e.get("cause") == "out_of_memory"]
    failed = sum(row["failed"] for row in report.summary)
    threshold = platform.get("pressure_threshold_bytes")
    target = platform.get("baseline_target_bytes")
    peak = max(peaks.values(), default=0)
    targets = [
        ("no out-of-memory error", not ooms, f"{len(ooms)} out-of-memory events"),
        (f"peak < {_gb(threshold)} GB", threshold is None or peak < threshold, f"peak {_gb(peak)} GB"),
        (f"baseline < {_gb(target)} GB after every unload", target is None or all(b < target for _, _, b in baselines), f"highest {_gb(max((b for _, _, b in baselines), default=0))} GB"),
        ("every combination completed", failed == 0 and not any(e["event"] == "model_failed" for e in report.events), f"{failed} failed samples"),
    ]
    source = "device memory (NVML)" if any(row.get("device_used_bytes") is not None for row in report.snapshots) else "resident memory of the model processes (no GPU)"
    return {"peaks": peaks, "baselines": baselines, "loads": loads, "targets": targets, "source": source}


def write_exports(store: Store, run_id: str, run_dir: Path, baseline_id: str | None = None) -> list[dict[str, Any]]:
    """samples.csv, summary.csv, memory.csv, judge_errors.csv, report.md and report.html of one run."""
    from .html_report import render_html  # matplotlib: imported only when a report is written

    report = load_report(store, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(run_dir / "samples.csv", SAMPLE_COLUMNS, report.samples)
    _write_csv(run_dir / "summary.csv", list(report.summary[0]) if report.summary else ["embedding_model", "llm"], report.summary)
    _write_csv(run_dir / "memory.csv", list(report.snapshots[0]) if report.snapshots else ["stage"], report.snapshots)
    if report.judged:
        _write_csv(run_dir / "judge_errors.csv", JUDGE_ERROR_COLUMNS, report.judge_errors)
    (run_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    baseline = load_report(store, baseline_id) if baseline_id else None
    (run_dir / "report.html").write_text(render_html(report, baseline), encoding="utf-8")
    return report.summary


def judge_usage(report: RunReport) -> list[dict[str, Any]]:
    """Per metric: cells, failures, calls' tokens and cost (what this run paid, cached cells are free)."""
    rows = []
    for metric in JUDGE_METRICS:
        cells = [j for j in report.judgements if j["metric"] == metric]
        costs = [j["cost_usd"] for j in cells if j["cost_usd"] is not None and not j["cached"]]
        rows.append({
            "metric": metric, "cells": len(cells), "nan": sum(1 for j in cells if j["value"] is None), "cached": sum(1 for j in cells if j["cached"]),
            "prompt_tokens": sum(j["prompt_tokens"] or 0 for j in cells if not j["cached"]),
            "completion_tokens": sum(j["completion_tokens"] or 0 for j in cells if not j["cached"]),
            "cost_usd": sum(costs) if costs else None,
        })  # fmt: skip
    return rows


FAULT_EVENTS = {"retry", "recovering", "out_of_memory", "memory_pressure", "memory_not_released", "model_failed", "run_stopped", "judge_cost_cap"}


def fault_lines(report: RunReport) -> list[str]:
    """One line per fault event and per recovery, in order (events.jsonl has the details)."""
    lines = []
    for e in report.events:
        where = " ".join(part for part in (e.get("stage"), e.get("model")) if part)
        if e["event"] == "model_load" and e.get("recovered_by"):
            lines.append(f"{where}: loaded {e['recovered_by']} (num_ctx {e.get('num_ctx')}, num_gpu {e.get('num_gpu')})")
        elif e["event"] == "memory_pressure":
            change = f"batch {e['batch_size']} → {e['new_batch_size']}" if "batch_size" in e else f"judge concurrency {e['judge_concurrency']} → {e['new_judge_concurrency']}"
            lines.append(f"{where}: memory pressure ({_gb(e['used_bytes'])} GB in use): other models unloaded, {change}")
        elif e["event"] in FAULT_EVENTS:
            detail = e.get("message") or e.get("cause") or ""
            step = f" [{e['step']}]" if e.get("step") else f" [attempt {e['attempt']}]" if e.get("attempt") else ""
            lines.append(f"{where}: {e['event'].replace('_', ' ')}{step}: {str(detail)[:200]}".replace(": : ", ": "))
    return lines


def render_markdown(report: RunReport) -> str:
    headers = ["embedding_model", "llm", "answered", "failed"] + [c for c in MEAN_COLUMNS if report.judged or c not in JUDGE_METRICS]
    memory = memory_findings(report)
    lines = [f"# ragsweep run {report.run_id}", "", "## Summary (means per embedding model × LLM)", ""]
    lines += _md_table(headers, [[_fmt(row[h]) for h in headers] for row in report.summary])
    if report.judged:
        lines += ["", f"## Judge ({(report.run.get('plan') or {}).get('judge') or 'LLM'})", "", "NaN rate per metric and what this run's calls used (cached cells cost nothing).", ""]
        usage = judge_usage(report)
        lines += _md_table(["metric", "cells", "NaN", "NaN rate", "cached", "prompt tokens", "completion tokens", "cost USD"], [
            [u["metric"], u["cells"], u["nan"], _fmt(u["nan"] / u["cells"] if u["cells"] else math.nan), u["cached"], u["prompt_tokens"], u["completion_tokens"], _fmt(u["cost_usd"], 4)]
            for u in usage
        ])  # fmt: skip
        causes = Counter(j["cause"] for j in report.judge_errors)
        lines += ["", "Failed cells by cause: " + (", ".join(f"{cause} {n}" for cause, n in causes.most_common()) or "none") + " (judge_errors.csv"
                  + ("; retry them with --retry-failed)" if causes else ")")]
    lines += ["", "## Memory", "", f"Measured as {memory['source']}, in GB.", "", "### Targets", ""]
    lines += [f"- [{'x' if ok else ' '}] {name} ({detail})" for name, ok, detail in memory["targets"]]
    lines += ["", "### Peak per stage", ""]
    lines += _md_table(["stage", "peak GB"], [[stage, _gb(peak)] for stage, peak in memory["peaks"].items()])
    lines += ["", "### After each unload", ""]
    lines += _md_table(["stage", "model", "GB in use"], [[stage, model, _gb(level)] for stage, model, level in memory["baselines"]])
    lines += ["", f"### Model loads ({len(memory['loads'])})", ""]
    lines += _md_table(["stage", "model", "load s"], [[stage, model, _fmt(seconds)] for stage, model, seconds in memory["loads"]])
    lines += ["", "## Faults and recoveries", ""]
    lines += [f"- {line}" for line in fault_lines(report)] or ["- none"]
    lines += ["", "## Skipped and failed", ""]
    lines += [f"- {note}" for note in report.notes] or ["- nothing"]
    return "\n".join(lines) + "\n"


JUDGE_HEADERS = {"faithfulness": "faith", "answer_relevancy": "ans.rel", "context_precision": "ctx.prec", "context_recall": "ctx.rec"}


def print_summary(summary: list[dict[str, Any]], console: Console) -> None:
    judged = any(not _nan(row[m]) for row in summary for m in JUDGE_METRICS)
    headers = {**SHORT_HEADERS, **(JUDGE_HEADERS if judged else {})}
    title = "summary (means; R@k, MRR, nDCG: retrieval; EM, F1: answer vs reference" + ("; faith … ctx.rec: RAGAS judge)" if judged else ")")
    table = Table(title=title, title_justify="left")
    for header, short in headers.items():
        table.add_column(short, justify="left" if header in {"embedding_model", "llm"} else "right", no_wrap=True)
    for row in summary:
        table.add_row(*[_fmt(row[h], 2) for h in headers])
    console.print(table)


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()} for row in rows)


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _gb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e9:.2f}"
