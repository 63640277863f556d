"""report.html: one self-contained page (inline CSS and JS, plots as embedded PNG) read in a browser the next morning.

Built from a RunReport (the store only). Everything that comes from the test set or a model is
HTML-escaped: a question containing <script> shows as text.
"""

from __future__ import annotations

import math
from collections import Counter
from html import escape
from typing import Any

from . import comparisons, plots
from .events import Event
from .findings import CORRECTION_HEADERS, CORRECTION_NOTE, RunReport, correction_cells, fault_lines, judge_overlap_lines, memory_findings
from .fmt import is_nan
from .memory import bytes_in_use
from .metrics import ANSWER_METRICS, JUDGE_METRICS, RETRIEVAL_METRICS

SCORE_METRICS = [*RETRIEVAL_METRICS, *ANSWER_METRICS]
LEADERBOARD = ["embedding_model", "llm", "answered", "failed", *SCORE_METRICS, *JUDGE_METRICS, "latency_s", "tokens_per_s", "peak_gb"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:right;vertical-align:top}
th{background:#f4f4f4;cursor:pointer;user-select:none}td.text,th.text{text-align:left}tr:nth-child(even){background:#fafafa}
.pass{color:#137333;font-weight:600}.fail{color:#b3261e;font-weight:600}.muted{color:#666}.grid{display:flex;flex-wrap:wrap;gap:1rem}
img{max-width:100%;border:1px solid #eee}details{margin:.5rem 0}code{background:#f4f4f4;padding:0 .2rem}
.up{color:#137333}.down{color:#b3261e}
"""

SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, i){th.addEventListener('click', function(){
  var body = th.closest('table').tBodies[0], rows = Array.from(body.rows), asc = th.dataset.order !== 'asc';
  th.dataset.order = asc ? 'asc' : 'desc';
  rows.sort(function(a, b){var x = a.cells[i].dataset.v || a.cells[i].textContent, y = b.cells[i].dataset.v || b.cells[i].textContent;
    var nx = parseFloat(x), ny = parseFloat(y), c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y); return asc ? c : -c;});
  rows.forEach(function(r){body.appendChild(r);});});});
"""


def render_html(report: RunReport, baseline: RunReport | None = None) -> str:
    memory = memory_findings(report)
    peaks = _combination_peaks(report)
    rows = [{**row, "peak_gb": peaks.get((row["embedding_model"], row["llm"]))} for row in report.summary]
    sections = [
        _header(report),
        _targets(memory),
        _leaderboard(rows, report.judged, comparisons.standing(report.comparisons, comparisons.HEADLINE)),
        _section(
            "What this run can and cannot tell",
            f'<p class="muted">{escape(comparisons.COMPARISON_NOTE)}</p>'
            + _list(comparisons.tie_sentences(report.comparisons) if report.comparisons else ["fewer than two ranked combinations"]),
        ),
        _diagnosis(report),
        _judge_trust(report),
        _heatmaps(report),
        _tradeoffs(rows, report.judged),
        _memory(report, memory),
        _failures(report),
        _section("Faults and recoveries", _list(fault_lines(report))),
        _section("Notes", _list(report.notes)),
        _comparison(report, baseline) if baseline else "",
        _samples(report),
    ]
    body = "\n".join(s for s in sections if s)
    head = f'<meta charset="utf-8"><title>ragsweep {escape(report.run_id)}</title><style>{CSS}</style>'
    return f'<!doctype html>\n<html lang="en"><head>{head}</head>\n<body>\n{body}\n<script>{SORT_JS}</script>\n</body></html>\n'


def _header(report: RunReport) -> str:
    run, config = report.run, report.run.get("config") or {}
    facts = [
        f"status <b>{escape(str(run.get('status')))}</b>",
        f"backend {escape(str(config.get('backend')))}",
        f"platform {escape(str((run.get('platform') or {}).get('device')))}",
        f"top-k {escape(str(config.get('top_k')))}",
        f"judge {escape(str((run.get('plan') or {}).get('judge') or 'none'))}",
    ]
    return f'<h1>ragsweep run {escape(report.run_id)}</h1><p class="muted">{" · ".join(facts)}</p>'


def _targets(memory: dict) -> str:
    items = "".join(
        f'<li><span class="{"pass" if ok else "fail"}">{"PASS" if ok else "FAIL"}</span> {escape(name)} <span '
        f'class="muted">({escape(detail)})</span></li>'
        for name, ok, detail in memory["targets"]
    )
    return _section("The seed's targets", f"<ul>{items}</ul>")


def _leaderboard(rows: list[dict], judged: bool, standing: dict[tuple[str, str], str]) -> str:
    columns = [c for c in LEADERBOARD if judged or c not in JUDGE_METRICS]
    head = "".join(f'<th class="{"text" if c in {"embedding_model", "llm"} else ""}">{escape(c)}</th>' for c in columns)
    head = head.replace("<th", f'<th class="text">vs best ({comparisons.HEADLINE})</th><th', 1)
    body = "".join(
        "<tr>"
        + f'<td class="text">{escape(standing.get((row["embedding_model"], row["llm"]), "-"))}</td>'
        + "".join(_estimate_cell(row, c) for c in columns)
        + "</tr>"
        for row in rows
    )
    return _section(
        "Leaderboard",
        '<p class="muted">Click a column to sort. Means ± half the 95 % bootstrap interval over questions; "≈ best": statistically '
        "tied with the best on the headline metric (see below). peak_gb is the larger of its two models' peaks.</p>"
        f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>',
    )


def _estimate_cell(row: dict, column: str) -> str:
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    if low is None or is_nan(low) or is_nan(row.get(column)):
        return _cell(row.get(column), column)
    return f'<td data-v="{row[column]}">{row[column]:.3f} <span class="muted">±{(high - low) / 2:.3f}</span></td>'


def _diagnosis(report: RunReport) -> str:
    if not report.diagnosis:
        return _section("Where the weakness is: retriever or LLM", "<p>Add the baselines to see it: --embeddings …,oracle,none.</p>")
    rows = [comparisons.diagnosis_cells(d) for d in report.diagnosis]
    warnings = [
        f"{d['llm']} may have seen this test set: closed book reaches ≥ 80 % of its oracle {d['metric']}"
        for d in report.diagnosis
        if d["contamination"]
    ]
    return _section(
        "Where the weakness is: retriever or LLM", _table(comparisons.DIAGNOSIS_HEADERS, rows) + (_list(warnings) if warnings else "")
    )


def _judge_trust(report: RunReport) -> str:
    """Can this judge be trusted? Its stored judge check, and the scores corrected by the user's labels."""
    if not report.judge_check and not report.corrections:
        return ""
    content = _list(report.judge_check)
    if report.corrections:
        content += f'<h3>Scores corrected by your labels</h3><p class="muted">{escape(CORRECTION_NOTE)}</p>'
        content += _table(CORRECTION_HEADERS, [correction_cells(row) for row in report.corrections])
    return _section("Can this judge be trusted?", content)


def _heatmaps(report: RunReport) -> str:
    metrics = SCORE_METRICS + (list(JUDGE_METRICS) if report.judged else [])
    images = []
    for metric in metrics:
        values = {(row["embedding_model"], row["llm"]): row[metric] for row in report.summary}
        spreads = {
            key: (row[f"{metric}_ci_high"] - row[f"{metric}_ci_low"]) / 2
            for row in report.summary
            if not is_nan(row.get(f"{metric}_ci_low", math.nan))
            for key in [(row["embedding_model"], row["llm"])]
        }
        if values and not all(is_nan(v) for v in values.values()):
            images.append(f'<img alt="{escape(metric)} heatmap" src="{plots.heatmap(values, metric, spreads)}">')
    return _section("Matrix (LLM × embedding model)", f'<div class="grid">{"".join(images)}</div>') if images else ""


def _tradeoffs(rows: list[dict], judged: bool) -> str:
    quality_label = "RAGAS mean" if judged else "token F1"
    points = []
    for row in rows:
        quality = _mean([row[m] for m in JUDGE_METRICS]) if judged else row["token_f1"]
        points.append(
            {
                "label": f"{row['llm']} + {row['embedding_model']}",
                "quality": quality,
                "tokens_per_s": row["tokens_per_s"],
                "peak_gb": row["peak_gb"],
            }
        )
    images = []
    if any(not is_nan(p["tokens_per_s"]) for p in points):
        images.append(
            plots.tradeoff(
                points, "tokens_per_s", "tokens/s", quality_label, plots.pareto_front(points, "tokens_per_s", higher_x_is_better=True)
            )
        )
    if any(p["peak_gb"] is not None for p in points):
        usable = [p for p in points if p["peak_gb"] is not None]
        images.append(
            plots.tradeoff(
                usable, "peak_gb", "peak memory (GB)", quality_label, plots.pareto_front(usable, "peak_gb", higher_x_is_better=False)
            )
        )
    return (
        _section(
            "Quality against speed and memory",
            '<div class="grid">' + "".join(f'<img alt="trade-off" src="{uri}">' for uri in images) + "</div>",
        )
        if images
        else ""
    )


def _memory(report: RunReport, memory: dict) -> str:
    if not report.snapshots:
        return ""
    start = min(s["t"] for s in report.snapshots)
    points = [(s["t"] - start, bytes_in_use(s) / 1e9, s["stage"]) for s in report.snapshots]
    marks = [
        (e["t"] - start, "load" if e["event"] == Event.MODEL_LOAD else "unload", e["model"] or "")
        for e in report.events
        if e["event"] in {Event.MODEL_LOAD, Event.MODEL_UNLOAD} and e["t"] >= start
    ]
    platform = report.run.get("platform") or {}
    budget = platform.get("pressure_threshold_bytes")
    baseline = platform.get("baseline_target_bytes")
    timeline = plots.memory_timeline(
        points, marks, budget / 1e9 if budget else None, baseline / 1e9 if baseline else None, memory["source"], stage_spans(report, start)
    )
    loads = [(f"{stage}: {model}", seconds or 0.0) for stage, model, seconds in memory["loads"]]
    bars = f'<img alt="load times" src="{plots.load_times(loads)}">' if loads else ""
    return _section(
        "Memory",
        f'<p class="muted">Measured as {escape(memory["source"])}; {memory["samples"]} samples between the fixed snapshots.</p>'
        f'<img alt="memory timeline" src="{timeline}">'
        + "".join(f"<p>{escape(line)}</p>" for line in judge_overlap_lines(report))
        + f"{_cards(memory)}<h3>Model load times</h3>{bars}",
    )


def stage_spans(report: RunReport, start: float) -> list[tuple[float, float, str]]:
    """(from, to, label) in seconds since `start`: generation, and the judge's calls (overlapping it when it ran beside)."""
    spans = []
    for stage, label in (("generate", "generation"), ("judge", "judge calls")):
        begun = [e for e in report.events if e["event"] == Event.STAGE_START and e["stage"] == stage]
        ended = [e for e in report.events if e["event"] == Event.STAGE_END and e["stage"] == stage]
        if not (begun and ended):
            continue
        first = min(e["t"] for e in begun)
        if stage == "judge":
            first = min((e["first_call_t"] for e in ended if e.get("first_call_t")), default=first)
        spans.append((first - start, max(e["t"] for e in ended) - start, label))
    return spans


def _cards(memory: dict) -> str:
    """Per-card peaks on a box with several GPUs, and whether per-process attribution had to be inferred."""
    parts = []
    if memory["boxes"]:
        parts.append(
            "<h3>Per box</h3>" + _table(["box", "peak GB", "highest after an unload GB", "peak and baseline targets"], memory["boxes"])
        )
    if len(memory["cards"]) > 1:
        rows = [[index, f"{peak / 1e9:.2f}", f"{total / 1e9:.2f}"] for index, (peak, total) in sorted(memory["cards"].items())]
        parts.append("<h3>Peak per card</h3>" + _table(["card (NVML index)", "peak GB", "of GB"], rows))
    if memory["inferred"]:
        parts.append(
            '<p class="muted">NVML listed no model process (a container): GPU use per model is inferred from the growth since its load.</p>'
        )
    return "".join(parts)


def _failures(report: RunReport) -> str:
    failed = [s for s in report.samples if s["error"]]
    parts = []
    if failed:
        causes = Counter(s["cause"] for s in failed)
        parts.append(
            "<p>Failed samples by cause: " + ", ".join(f"<code>{escape(str(c))}</code> {n}" for c, n in causes.most_common()) + "</p>"
        )
        parts.append(
            _table(
                ["embedding_model", "llm", "question_id", "cause", "error"],
                [[s["embedding_model"], s["llm"], s["question_id"], s["cause"], s["error"]] for s in failed[:200]],
            )
        )
    if report.judged:
        nan_rows = [
            [m, sum(1 for j in report.judgements if j["metric"] == m), sum(1 for j in report.judge_errors if j["metric"] == m)]
            for m in JUDGE_METRICS
        ]
        parts.append("<h3>Judge: NaN per metric</h3>" + _table(["metric", "cells", "NaN"], nan_rows))
        if report.judge_errors:
            causes = Counter(j["cause"] for j in report.judge_errors)
            parts.append(
                "<p>Judge failures by cause: " + ", ".join(f"<code>{escape(str(c))}</code> {n}" for c, n in causes.most_common()) + "</p>"
            )
            parts.append(
                _table(
                    ["question_id", "embedding_model", "llm", "metric", "cause", "message"],
                    [
                        [j["question_id"], j["embedding_model"], j["llm"], j["metric"], j["cause"], j["message"]]
                        for j in report.judge_errors[:200]
                    ],
                )
            )
    return _section("Failures and NaN", "".join(parts) or "<p>none</p>")


def _comparison(report: RunReport, baseline: RunReport) -> str:
    metrics = [m for m in [*SCORE_METRICS, *JUDGE_METRICS] if any(not is_nan(r[m]) for r in report.summary)]
    before = {(r["embedding_model"], r["llm"]): r for r in baseline.summary}
    rows = []
    for row in report.summary:
        old = before.get((row["embedding_model"], row["llm"]))
        rows.append([row["embedding_model"], row["llm"]] + [_delta(row[m], old[m] if old else None) for m in metrics])
    changes = _changed_samples(report, baseline)
    table = _table(["embedding_model", "llm", *[f"Δ {m}" for m in metrics]], rows)
    changed = (
        _table(["embedding_model", "llm", "question", f"answer in {baseline.run_id}", "answer now", "Δ token_f1"], changes)
        if changes
        else "<p>no sample changed</p>"
    )
    return _section(f"Compared with {escape(baseline.run_id)}", table + "<h3>Samples that changed most</h3>" + changed)


def _changed_samples(report: RunReport, baseline: RunReport, limit: int = 10) -> list[list]:
    old = {(s["embedding_model"], s["llm"], s["question_id"]): s for s in baseline.samples}
    deltas = []
    for s in report.samples:
        o = old.get((s["embedding_model"], s["llm"], s["question_id"]))
        if o and s["token_f1"] is not None and o["token_f1"] is not None and s["answer"] != o["answer"]:
            deltas.append(
                (
                    abs(s["token_f1"] - o["token_f1"]),
                    [s["embedding_model"], s["llm"], s["question"], o["answer"], s["answer"], f"{s['token_f1'] - o['token_f1']:+.3f}"],
                )
            )
    return [row for _, row in sorted(deltas, key=lambda d: -d[0])[:limit]]


def _samples(report: RunReport) -> str:
    columns = [
        "embedding_model",
        "llm",
        "question",
        "reference",
        "answer",
        "retrieved_ids",
        "token_f1",
        *(JUDGE_METRICS if report.judged else []),
    ]
    rows = [[s.get(c) for c in columns] for s in report.samples]
    return _section(
        "Samples",
        f"<details><summary>{len(rows)} samples (question, reference, answer as "
        f"given)</summary>{_table(columns, rows, sortable=True)}</details>",
    )


def _combination_peaks(report: RunReport) -> dict[tuple[str, str], float]:
    per_model: dict[str, int] = {}
    for s in report.snapshots:
        if s["model"] and s["label"] in {"loaded", "sample", "before_unload"}:
            per_model[s["model"]] = max(per_model.get(s["model"], 0), bytes_in_use(s))
    peaks = {}
    for row in report.summary:
        known = [per_model[m] for m in (row["embedding_model"], row["llm"]) if m in per_model]
        if known:
            peaks[(row["embedding_model"], row["llm"])] = max(known) / 1e9
    return peaks


def _section(title: str, content: str) -> str:
    return f"<h2>{escape(title)}</h2>\n{content}"


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>" if items else "<p>none</p>"


class Html(str):
    """A fragment ragsweep made itself: a table cell shows it as HTML. Every other value, a model name included, is escaped."""


def _table(headers: list[str], rows: list[list], sortable: bool = True) -> str:
    head = "".join(f'<th class="text">{escape(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{v}</td>" if isinstance(v, Html) else _cell(v, "") for v in row) + "</tr>" for row in rows)
    return f'<table class="{"sortable" if sortable else ""}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(value: Any, column: str) -> str:
    if value is None or is_nan(value):
        return '<td data-v="" class="muted">NaN</td>' if is_nan(value) else '<td class="muted">-</td>'
    if isinstance(value, float):
        return f'<td data-v="{value}">{value:.3f}</td>'
    if isinstance(value, int):
        return f'<td data-v="{value}">{value}</td>'
    return f'<td class="text">{escape(str(value))}</td>'


def _delta(now: Any, before: Any) -> Html:
    if now is None or before is None or is_nan(now) or is_nan(before):
        return Html('<span class="muted">-</span>')
    change = now - before
    return Html(f'<span class="{"up" if change > 0 else "down" if change < 0 else "muted"}">{change:+.3f}</span>')


def _mean(values: list[Any]) -> float:
    known = [v for v in values if v is not None and not is_nan(v)]
    return sum(known) / len(known) if known else math.nan
