"""Report stage: a run's exports, built from the store only (so it can be rebuilt without models).

<run dir>/samples.csv, summary.csv, memory.csv, judge_errors.csv, report.md, report.html (the last
from html_report). events.jsonl and run.json are written while the run goes.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from . import comparisons, stats
from .comparisons import COMPARISON_COLUMNS
from .errors import CONTEXT_OVERFLOW
from .events import Event
from .findings import (
    CORRECTION_HEADERS,
    CORRECTION_NOTE,
    MEAN_COLUMNS,
    RunReport,
    correction_cells,
    fault_lines,
    judge_check_lines,
    judge_overlap_lines,
    judge_usage,
    load_report,
    memory_findings,
)
from .fmt import gb, interval, is_nan, number, plus_minus
from .html_report import render_html
from .metrics import JUDGE_METRICS
from .redact import redact
from .store import Store
from .tables import md_cell, md_table, write_csv
from .terminal import plain, without_controls

if TYPE_CHECKING:
    from .run import RunContext

SAMPLE_COLUMNS = [
    "embedding_model",
    "llm",
    "question_id",
    "question",
    "reference",
    "answer",
    "retrieved_ids",
    "recall_at_k",
    "mrr",
    "ndcg_at_k",
    "exact_match",
    "token_f1",
    *JUDGE_METRICS,
    "latency_s",
    "queued_s",
    "prompt_tokens",
    "completion_tokens",
    "tokens_per_s",
    "prompt_cut",
    "cached",
    "error",
    "cause",
]
JUDGE_ERROR_COLUMNS = ["question_id", "embedding_model", "llm", "metric", "repeat", "cause", "message"]
JUDGE_REPEAT_COLUMNS = ["embedding_model", "llm", "question_id", "metric", "values", "mean", "sd"]
SHORT_HEADERS = {
    "embedding_model": "retriever",
    "llm": "LLM",
    "answered": "ok",
    "failed": "failed",
    "recall_at_k": "R@k",
    "mrr": "MRR",
    "ndcg_at_k": "nDCG@k",
    "exact_match": "EM",
    "token_f1": "F1",
    "latency_s": "s/answer",
    "tokens_per_s": "tok/s",
}


def write_exports(store: Store, run_id: str, run_dir: Path, baseline_id: str | None = None) -> list[dict[str, Any]]:
    """samples.csv, summary.csv, memory.csv, judge_errors.csv, report.md and report.html of one run."""
    report = load_report(store, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_csv(run_dir / "samples.csv", SAMPLE_COLUMNS, report.samples)
    columns = list(dict.fromkeys(key for row in report.summary for key in row)) or ["embedding_model", "llm"]  # PPI: labelled rows only
    write_csv(run_dir / "summary.csv", columns, report.summary)
    write_csv(run_dir / "comparisons.csv", COMPARISON_COLUMNS, report.comparisons)
    if report.judge_repeats > 1:
        write_csv(run_dir / "judge_repeats.csv", JUDGE_REPEAT_COLUMNS, judge_repeat_rows(report))
    write_csv(run_dir / "memory.csv", list(report.snapshots[0]) if report.snapshots else ["stage"], report.snapshots)
    if report.judged:
        write_csv(run_dir / "judge_errors.csv", JUDGE_ERROR_COLUMNS, report.judge_errors)
    (run_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    baseline = load_report(store, baseline_id) if baseline_id else None
    (run_dir / "report.html").write_text(render_html(report, baseline), encoding="utf-8")
    return report.summary


def what_this_run_can_tell(report: RunReport) -> list[str]:
    """The ties with the best, and roughly how many questions would tell each pair apart at the observed difference."""
    lines = ["## What this run can and cannot tell", ""]
    if not report.comparisons:
        return lines + ["- fewer than two ranked combinations: nothing to compare"]
    lines += [comparisons.COMPARISON_NOTE, ""]
    return lines + [f"- {sentence}" for sentence in comparisons.tie_sentences(report.comparisons)]


def judge_trust_lines(report: RunReport) -> list[str]:
    """Can this judge be trusted? Its stored judge check, and the scores corrected by the user's labels (report --labels)."""
    if not report.judge_check and not report.corrections:
        return []
    lines = ["## Can this judge be trusted?", "", *(f"- {md_cell(line)}" for line in report.judge_check)]
    if report.corrections:
        lines += ["", "### Scores corrected by your labels", "", CORRECTION_NOTE, ""]
        lines += md_table(CORRECTION_HEADERS, [correction_cells(row) for row in report.corrections])
    return lines


def diagnosis_lines(report: RunReport) -> list[str]:
    """Where the weakness is: closed book → retriever → oracle per LLM, with the gain and the headroom."""
    lines = ["## Where the weakness is: retriever or LLM", ""]
    if not report.diagnosis:
        return lines + ["- add the baselines to see it: --embeddings ...,oracle,none (oracle: the reference passages; none: closed book)"]
    rows = [comparisons.diagnosis_cells(d) for d in report.diagnosis]
    lines += md_table(comparisons.DIAGNOSIS_HEADERS, rows)
    for d in report.diagnosis:
        if d["contamination"]:
            closed = f"{d['closed_book'].mean:.2f} {d['metric']}"
            lines.append(
                f"\n- warning: {d['llm']} scores {closed} closed book, ≥ 80 % of its oracle score "
                f"({d['oracle'].mean:.2f}): it may have seen this test set"
            )
    return lines


def throughput_lines(report: RunReport) -> list[str]:
    """Per LLM: the requests in flight and what they bought; prompts that did not fit num_ctx, and answers whose prompt was cut."""
    lines = ["## Throughput (generation)", ""]
    rows = [
        [
            e["model"],
            f"{e['in_flight']} ({'found by measurement' if e['probed'] else 'fixed'})",
            "-" if e.get("speedup") is None else f"{e['speedup']:.1f}×",
            number(e.get("answers_per_s"), 2),
            number(e.get("tokens_per_s"), 1),
        ]
        for e in report.events
        if e["event"] == Event.THROUGHPUT
    ]
    lines += md_table(["LLM", "requests in flight", "vs one stream", "answers/s", "tokens/s (all streams)"], rows) if rows else []
    lines += [f"\n- {md_cell(e['model'])}: {e['advice']}" for e in report.events if e["event"] == Event.THROUGHPUT and e.get("advice")]
    num_ctx = (report.run.get("plan") or {}).get("num_ctx") or {}
    overflow = Counter(row["llm"] for row in report.samples if row.get("cause") == CONTEXT_OVERFLOW)
    lines += [
        f"\n- {md_cell(llm)}: {n} prompts did not fit num_ctx {num_ctx.get(llm)}: raise num_ctx or lower top_k"
        for llm, n in overflow.items()
    ]
    cut = Counter(row["llm"] for row in report.samples if row.get("prompt_cut"))
    lines += [
        f"\n- {md_cell(llm)}: {n} answers came from a prompt that filled num_ctx {num_ctx.get(llm)}: the server probably cut it "
        "(prompt_cut in samples.csv; servers before Ollama 0.12.6 cut silently) — raise num_ctx or lower top_k"
        for llm, n in cut.items()
    ]
    lines += [f"\n- {line}" for line in judge_overlap_lines(report)]
    return lines if len(lines) > 2 else lines + ["- no generation in this run"]


def judge_noise_lines(report: RunReport) -> list[str]:
    """With --judge-repeats: per metric, the judge's within-cell SD and the share of the interval's variance it explains."""
    if report.judge_repeats < 2:
        return []
    lines = ["", f"### Judge noise ({report.judge_repeats} repeats per cell, judge_repeats.csv)", ""]
    rows = []
    for metric in JUDGE_METRICS:
        cells = [values for key, values in report.repeats.items() if key[3] == metric]
        width = max((len(v) for v in cells), default=0)
        sd, share = stats.judge_noise(np.array([v + [math.nan] * (width - len(v)) for v in cells])) if cells else (math.nan, math.nan)
        rows.append([metric, number(sd), "-" if is_nan(share) else f"{share:.0%}"])
    return lines + md_table(["metric", "within-cell SD", "share of the interval's variance"], rows)


def judge_repeat_rows(report: RunReport) -> list[dict[str, Any]]:
    rows = []
    for (retriever, llm, question, metric), values in sorted(report.repeats.items()):
        known = [v for v in values if not math.isnan(v)]
        sd = float(np.std(known, ddof=1)) if len(known) > 1 else math.nan
        rows.append(
            {
                "embedding_model": retriever,
                "llm": llm,
                "question_id": question,
                "metric": metric,
                "values": "|".join("" if math.isnan(v) else f"{v:.4f}" for v in values),
                "mean": sum(known) / len(known) if known else math.nan,
                "sd": sd,
            }
        )
    return rows


def render_markdown(report: RunReport) -> str:
    metrics = [c for c in MEAN_COLUMNS if report.judged or c not in JUDGE_METRICS]
    memory = memory_findings(report)
    standing = comparisons.standing(report.comparisons, comparisons.HEADLINE)
    lines = [
        f"# ragsweep run {report.run_id}",
        "",
        "## Summary (means per embedding model × LLM, 95 % bootstrap intervals over questions)",
        "",
    ]
    lines += md_table(
        ["embedding_model", "llm", "answered", "failed", f"vs best ({comparisons.HEADLINE})", *metrics],
        [
            [
                row["embedding_model"],
                row["llm"],
                row["answered"],
                row["failed"],
                standing.get((row["embedding_model"], row["llm"]), "-"),
                *(interval(row, m) for m in metrics),
            ]
            for row in report.summary
        ],
    )
    lines += ["", *what_this_run_can_tell(report), "", *diagnosis_lines(report), "", *throughput_lines(report)]
    lines += ["", *judge_trust_lines(report)] if report.judge_check or report.corrections else []
    if report.judged:
        lines += [
            "",
            f"## Judge ({(report.run.get('plan') or {}).get('judge') or 'LLM'})",
            "",
            "NaN rate per metric and what this run's calls used (cached cells cost nothing).",
            "",
        ]
        usage = judge_usage(report)
        lines += md_table(
            ["metric", "cells", "NaN", "NaN rate", "cached", "prompt tokens", "completion tokens", "cost USD"],
            [
                [
                    u["metric"],
                    u["cells"],
                    u["nan"],
                    number(u["nan"] / u["cells"] if u["cells"] else math.nan),
                    u["cached"],
                    u["prompt_tokens"],
                    u["completion_tokens"],
                    number(u["cost_usd"], 4),
                ]
                for u in usage
            ],
        )
        causes = Counter(j["cause"] for j in report.judge_errors)
        lines += [
            "",
            "Failed cells by cause: "
            + (", ".join(f"{cause} {n}" for cause, n in causes.most_common()) or "none")
            + " (judge_errors.csv"
            + ("; retry them with --retry-failed)" if causes else ")"),
        ]
        lines += judge_noise_lines(report)
    lines += ["", "## Memory", "", f"Measured as {memory['source']}, in GB."]
    plan = report.run.get("plan") or {}
    managed = [m["name"] for m in plan.get("llms", []) + plan.get("retrievers", []) if (m.get("details") or {}).get("server") == "attached"]
    if managed:
        lines += [
            "",
            f"Server-managed (an attached server: its memory is its own, never unloaded by ragsweep): {md_cell(', '.join(managed))}.",
        ]
    lines += ["", "### Targets", ""]
    lines += [f"- [{'x' if ok else ' '}] {name} ({detail})" for name, ok, detail in memory["targets"]]
    if memory["samples"]:
        lines += ["", f"Peaks include {memory['samples']} samples taken while models were resident, between the fixed snapshots."]
    if memory["inferred"]:
        lines += [
            "",
            "NVML listed no model process (a container's pid namespace): each model's GPU use is inferred as the "
            "device's growth since just before its load (attribution 'inferred' in memory.csv).",
        ]
    if memory["boxes"]:
        lines += ["", "### Per box", ""]
        lines += md_table(["box", "peak GB", "highest after an unload GB", "peak and baseline targets"], memory["boxes"])
    if len(memory["cards"]) > 1:
        lines += ["", "### Peak per card", ""]
        lines += md_table(
            ["card (NVML index)", "peak GB", "of GB"], [[i, gb(peak), gb(total)] for i, (peak, total) in sorted(memory["cards"].items())]
        )
    lines += ["", "### Peak per stage", ""]
    lines += md_table(["stage", "peak GB"], [[stage, gb(peak)] for stage, peak in memory["peaks"].items()])
    lines += ["", "### After each unload", ""]
    lines += md_table(["stage", "model", "GB in use"], [[stage, model, gb(level)] for stage, model, level in memory["baselines"]])
    lines += ["", f"### Model loads ({len(memory['loads'])})", ""]
    lines += md_table(["stage", "model", "load s"], [[stage, model, number(seconds)] for stage, model, seconds in memory["loads"]])
    lines += ["", "## Faults and recoveries", ""]
    lines += [f"- {md_cell(line)}" for line in fault_lines(report)] or ["- none"]
    lines += ["", "## Skipped and failed", ""]
    lines += [f"- {md_cell(note)}" for note in report.notes] or ["- nothing"]
    return "\n".join(lines) + "\n"


JUDGE_HEADERS = {"faithfulness": "faith", "answer_relevancy": "ans.rel", "context_precision": "ctx.prec", "context_recall": "ctx.rec"}


def print_summary(summary: list[dict[str, Any]], console: Console) -> None:
    judged = any(not is_nan(row[m]) for row in summary for m in JUDGE_METRICS)
    headers = {**SHORT_HEADERS, **(JUDGE_HEADERS if judged else {})}
    title = "summary (mean±half the 95 % interval; R@k, MRR, nDCG: retrieval; EM, F1: answer vs reference" + (
        "; faith … ctx.rec: RAGAS judge)" if judged else ")"
    )
    table = Table(title=title, title_justify="left")
    for header, short in headers.items():
        table.add_column(short, justify="left" if header in {"embedding_model", "llm"} else "right", no_wrap=True)
    for row in summary:
        table.add_row(*[plain(plus_minus(row, h) if f"{h}_ci_low" in row else number(row[h], 2)) for h in headers])
    console.print(table)


def print_outcome(run: RunContext, console: Console) -> None:
    """The end of a run on screen: the summary and what to look at, then the one closing line (printed even under --quiet)."""
    if not console.quiet:
        print_summary(run.summary, console)
        for note in run.notes:
            console.print(f"note: {without_controls(note)}", markup=False, highlight=False)
        for event in run.store.events(run.run_id):
            if event["event"] == Event.MEMORY_NOT_RELEASED:
                console.print(without_controls(f"note: {event['model'] or 'clean-up'}: {event['message']}"), markup=False, highlight=False)
        for line in judge_check_lines(run.store, run.store.run(run.run_id)["plan"]):
            console.print(f"note: {without_controls(line)}", markup=False, highlight=False)
        unjudged = sum(1 for j in run.store.judgements(run.run_id) if j["value"] is None)
        if unjudged:
            console.print(f"note: {unjudged} judge cells failed (NaN): see judge_errors.csv; retry them with --retry-failed")
    elif run.outcome.resumable and run.outcome.reason:  # cron's mail: why it stopped, above the closing line
        print(f"ragsweep: {without_controls(redact(run.outcome.reason))}", file=sys.stderr)
    print(without_controls(run.outcome.line(run.run_id, run.timings.get("wall_s", 0.0), run.run_dir)))
