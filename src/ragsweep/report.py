"""Report stage: exports of one run, read from the store only (so it can be rebuilt without models).

<run dir>/samples.csv, summary.csv, memory.csv, report.md (events.jsonl and run.json are
written as the run goes).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .store import Store

SAMPLE_COLUMNS = [
    "embedding_model", "llm", "question_id", "question", "reference", "answer", "retrieved_ids",
    "recall_at_k", "mrr", "ndcg_at_k", "exact_match", "token_f1", "latency_s", "prompt_tokens",
    "completion_tokens", "tokens_per_s", "cached", "error", "cause",
]  # fmt: skip
MEAN_COLUMNS = ["recall_at_k", "mrr", "ndcg_at_k", "exact_match", "token_f1", "latency_s", "tokens_per_s"]


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
            values = [r[column] for r in (answered if column not in {"recall_at_k", "mrr", "ndcg_at_k"} else rows) if r[column] is not None]
            entry[column] = sum(values) / len(values) if values else math.nan
        summary.append(entry)
    return summary


def write_exports(store: Store, run_id: str, run_dir: Path, notes: list[str]) -> list[dict[str, Any]]:
    samples = store.samples(run_id)
    for row in samples:
        row["retrieved_ids"] = "|".join(json.loads(row["retrieved_ids"])) if row["retrieved_ids"] else ""
    summary = summarize(samples)
    snapshots = store.snapshots(run_id)
    _write_csv(run_dir / "samples.csv", SAMPLE_COLUMNS, samples)
    _write_csv(run_dir / "summary.csv", list(summary[0]) if summary else ["embedding_model", "llm"], summary)
    _write_csv(run_dir / "memory.csv", list(snapshots[0]) if snapshots else ["stage"], snapshots)
    (run_dir / "report.md").write_text(render_markdown(run_id, summary, snapshots, store.events(run_id), notes), encoding="utf-8")
    return summary


def render_markdown(run_id: str, summary: list[dict], snapshots: list[dict], events: list[dict], notes: list[str]) -> str:
    lines = [f"# ragsweep run {run_id}", "", "## Summary (means per embedding model × LLM)", ""]
    headers = ["embedding_model", "llm", "answered", "failed"] + MEAN_COLUMNS
    lines += _md_table(headers, [[_fmt(row[h]) for h in headers] for row in summary])
    lines += ["", "## Memory", "", "Peak use per stage and the level after each unload (GB; device memory where NVML exists, else the model processes' RSS).", ""]
    lines += _md_table(["stage", "label", "model", "this process RSS", "model processes RSS", "device used", "system available"], [
        [s["stage"], s["label"], s["model"] or "", _gb(s["rss_bytes"]), _gb(s["runner_rss_bytes"]), _gb(s["device_used_bytes"]), _gb(s["system_available_bytes"])]
        for s in snapshots if s["label"] in {"loaded", "before_unload", "after_unload"}
    ])  # fmt: skip
    loads = [e for e in events if e["event"] == "model_load"]
    lines += ["", f"Model loads: {len(loads)}", ""]
    lines += _md_table(["stage", "model", "load s"], [[e["stage"], e["model"], _fmt(e.get("load_s"))] for e in loads])
    lines += ["", "## Skipped and failed", ""]
    lines += [f"- {note}" for note in notes] or ["- nothing"]
    return "\n".join(lines) + "\n"


SHORT_HEADERS = {"embedding_model": "retriever", "llm": "LLM", "answered": "ok", "failed": "failed", "recall_at_k": "R@k", "mrr": "MRR",
                 "ndcg_at_k": "nDCG@k", "exact_match": "EM", "token_f1": "F1", "latency_s": "s/answer", "tokens_per_s": "tok/s"}  # fmt: skip


def print_summary(summary: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="summary (means; R@k, MRR, nDCG: retrieval; EM, F1: answer vs reference)", title_justify="left")
    for header, short in SHORT_HEADERS.items():
        table.add_column(short, justify="left" if header in {"embedding_model", "llm"} else "right", no_wrap=True)
    for row in summary:
        table.add_row(*[_fmt(row[h], 2) for h in SHORT_HEADERS])
    console.print(table)


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()} for row in rows)


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _gb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e9:.2f}"
