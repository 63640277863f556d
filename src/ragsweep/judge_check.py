"""Can this judge be trusted? It scores answers whose right score people know, and the check says how well it separates
the good from the bad, per metric: AUROC with a 95 % interval, balanced accuracy at the report's threshold, a verdict.

Each labelled item is a judge cell like a sweep's: the same client, retries, cache (keyed by judge identity), adaptive
concurrency and cost accounting, so a second check of the same judge costs nothing. The per-metric table is stored
against the judge's identity; every later sweep judged by that identity shows it beside its judged metrics.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import stats
from .config import REPO_ROOT
from .fmt import number
from .judge import Cell, cell_key, judge
from .judge_client import JudgeSpec
from .labels import LabelledItem
from .metrics import JUDGE_METRICS
from .plan import judge_calls, judge_cost_usd
from .run import RunContext
from .store import Store
from .tables import md_table, write_csv
from .terminal import plain, without_controls

DEFAULT_LABELS = REPO_ROOT / "data" / "judge-check" / "halueval-qa-labels.jsonl"
CHECK_PREFIX = "judge-check-"
RETRIEVER, LLM = "judge-check", "labelled"  # where a check's judgements sit in the judgements table (its own run id)
CHECK_COLUMNS = [
    "metric",
    "n",
    "positives",
    "auroc",
    "auroc_ci_low",
    "auroc_ci_high",
    "balanced_accuracy",
    "threshold",
    "failed",
    "verdict",
]
ITEM_COLUMNS = ["id", "metric", "label", "score", "cause"]


def cells(items: list[LabelledItem], spec: JudgeSpec) -> list[Cell]:
    """One judge cell per item and repeat, keyed exactly as a sweep's cell with the same inputs would be."""
    found = []
    for item in items:
        inputs = item.judge_inputs()
        for repeat in range(spec.repeats):
            found.append(Cell(RETRIEVER, LLM, item.id, item.metric, repeat, inputs, cell_key(spec, item.metric, inputs, repeat)))
    return found


def estimate_line(items: list[LabelledItem], spec: JudgeSpec, labels: Path) -> str:
    """The check's plan: items per metric, judge calls and cost, as a sweep's plan says them."""
    per_metric = defaultdict(int)
    for item in items:
        per_metric[item.metric] += 1
    calls = sum(judge_calls(item.metric, len(item.contexts)) for item in items) * spec.repeats
    cost = judge_cost_usd(spec, calls)
    spent = f"estimated cost ≤ ${cost:.2f} (cached cells are free)" if cost is not None else "cost unknown to LiteLLM (local judge: free)"
    counts = ", ".join(f"{metric} {per_metric[metric]}" for metric in JUDGE_METRICS if per_metric[metric])
    return (
        f"judge-check: {len(items)} labelled items from {labels} ({counts}); judge {spec.model} "
        f"(embeddings {spec.embeddings}): about {calls} judge calls, at most {spec.concurrency} in flight; {spent}"
    )


def run_check(ctx: RunContext, spec: JudgeSpec, items: list[LabelledItem]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Judge every item (cached ones are free), then the per-metric table and the per-item rows, from the store."""
    judge(ctx, spec, cells=cells(items, spec))
    return results(ctx.store, ctx.run_id, items)


def results(store: Store, check_id: str, items: list[LabelledItem]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    judged: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in store.judgements(check_id):
        judged[(row["question_id"], row["metric"])].append(row)
    item_rows = []
    for item in items:
        rows = judged.get((item.id, item.metric), [])
        values = [r["value"] for r in rows if r["value"] is not None]
        causes = [r["cause"] for r in rows if r["cause"]]
        score = sum(values) / len(values) if values else math.nan  # the mean over repeats
        cause = None if values else (causes or ["not judged"])[0]
        item_rows.append({"id": item.id, "metric": item.metric, "label": item.label, "score": score, "cause": cause})
    metrics = [metric for metric in JUDGE_METRICS if any(r["metric"] == metric for r in item_rows)]
    return [_metric_row(metric, [r for r in item_rows if r["metric"] == metric]) for metric in metrics], item_rows


def _metric_row(metric: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    found = stats.separation([r["score"] for r in rows], [r["label"] == 1 for r in rows])
    return {
        "metric": metric,
        "n": found.n,
        "positives": found.positives,
        "auroc": found.auroc,
        "auroc_ci_low": found.low,
        "auroc_ci_high": found.high,
        "balanced_accuracy": found.balanced_accuracy,
        "threshold": found.threshold,
        "failed": sum(1 for r in rows if math.isnan(r["score"])),
        "verdict": found.verdict,
    }


def write_check(run_dir: Path, judge_model: str, labels: Path, rows: list[dict[str, Any]], item_rows: list[dict[str, Any]]) -> None:
    """judge_check.csv (per metric), judge_check_items.csv (per item) and judge_check.md."""
    write_csv(run_dir / "judge_check.csv", CHECK_COLUMNS, rows)
    write_csv(run_dir / "judge_check_items.csv", ITEM_COLUMNS, item_rows)
    lines = [
        f"# Judge check: {judge_model}",
        "",
        f"Labelled items: `{labels}`. AUROC: the chance that the judge scores an item labelled good above one labelled bad "
        "(0.5 is a coin; 1 separates them perfectly), with a 95 % stratified bootstrap interval. Balanced accuracy reads a "
        f"score ≥ {stats.THRESHOLD} as high. Verdict: *agrees* when the interval lies above 0.5, *inverted* when below, "
        "*no better than chance* when it covers 0.5.",
        "",
        *md_table(["metric", "n", "positives", "AUROC [95 % CI]", "balanced accuracy", "failed", "verdict"], [_cells(r) for r in rows]),
        "",
    ]
    (run_dir / "judge_check.md").write_text("\n".join(lines), encoding="utf-8")


def print_check(rows: list[dict[str, Any]], judge_model: str, console: Console) -> None:
    table = Table(title=f"judge check: {without_controls(judge_model)}")
    for header in ("metric", "n", "positives", "AUROC [95 % CI]", "balanced accuracy", "failed", "verdict"):
        table.add_column(header)
    for row in rows:
        table.add_row(*[plain(cell) for cell in _cells(row)])
    console.print(table)


def _cells(row: dict[str, Any]) -> list[str]:
    auroc = f"{number(row['auroc'], 2)} [{number(row['auroc_ci_low'], 2)}, {number(row['auroc_ci_high'], 2)}]"
    accuracy = number(row["balanced_accuracy"], 2)
    return [row["metric"], str(row["n"]), str(row["positives"]), auroc, accuracy, str(row["failed"]), row["verdict"]]
