"""What the scores say: which differences from the best are real, and whether the retriever or the LLM limits a stack.

Every comparison is paired over the questions both combinations answered. The `oracle` and `none`
baselines are never ranked: they bracket the real retrievers for the diagnosis.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from . import stats
from .fmt import estimate
from .metrics import ANSWER_METRICS, JUDGE_METRICS, RETRIEVAL_METRICS
from .retrievers import BASELINES, CLOSED_BOOK, ORACLE

QUALITY_METRICS = [*RETRIEVAL_METRICS, *ANSWER_METRICS, *JUDGE_METRICS]  # higher is better; compared against the best
DIAGNOSED_METRICS = ["token_f1", "faithfulness"]  # closed book → retriever → oracle, per LLM
ANY_LLM = "(any)"  # the llm column of a retrieval metric's comparison: retrievers are compared, whatever the LLM
HEADLINE = "token_f1"  # the metric the leaderboards' "vs best" column reads: every run has it, judged or not
CONTAMINATION_SHARE = 0.8  # closed book at >= 80 % of the oracle: the LLM may have seen the test set
COMPARISON_COLUMNS = [
    "metric",
    "best_embedding_model",
    "best_llm",
    "embedding_model",
    "llm",
    "n_paired",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_value",
    "distinguishable",
    "questions_to_separate",
]


def per_question(samples: list[dict[str, Any]], metric: str) -> dict[tuple[str, str], dict[str, float]]:
    """(retriever, LLM) -> question id -> value; a failed answer has no answer metrics (NaN), its retrieval still counts."""
    table: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for row in samples:
        value = row.get(metric)
        usable = value is not None and (metric in RETRIEVAL_METRICS or not row["error"])
        table[(row["embedding_model"], row["llm"])][row["question_id"]] = float(value) if usable else math.nan
    return table


def compare_to_best(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """comparisons.csv: per metric, every ranked combination against the best one on that metric."""
    rows = []
    for metric in QUALITY_METRICS:
        table = {combo: values for combo, values in per_question(samples, metric).items() if combo[0] not in BASELINES}
        if metric in RETRIEVAL_METRICS:  # the LLM plays no part: compare retrievers, once each
            table = {(retriever, ANY_LLM): values for (retriever, _), values in sorted(table.items(), reverse=True)}
        means = {combo: np.nanmean(list(v.values())) for combo, v in table.items() if any(not math.isnan(x) for x in v.values())}
        if len(means) < 2:
            continue
        best = max(means, key=means.get)
        others = [combo for combo in means if combo != best]
        questions = sorted(set().union(*(table[c] for c in means)))
        found = stats.compare_to_best(_column(table, best, questions), np.array([_column(table, c, questions) for c in others]).T)
        for combo, c in zip(others, found, strict=True):
            rows.append(
                {
                    "metric": metric,
                    "best_embedding_model": best[0],
                    "best_llm": best[1],
                    "embedding_model": combo[0],
                    "llm": combo[1],
                    "n_paired": c.n_paired,
                    "mean_diff": c.mean_diff,
                    "ci_low": c.ci_low,
                    "ci_high": c.ci_high,
                    "p_value": c.p_value,
                    "distinguishable": c.distinguishable,
                    "questions_to_separate": c.questions_to_separate,
                }
            )
    return rows


COMPARISON_NOTE = (
    "Each combination against the best on each metric, paired over the same questions (comparisons.csv); a tie is a "
    f"difference that a paired sign-flip test cannot tell from noise (Holm-adjusted p ≥ {stats.ALPHA})."
)


def tie_sentences(comparisons: list[dict[str, Any]]) -> list[str]:
    """One sentence per comparison the Holm-adjusted test cannot tell from noise. "Tied" only where the interval beside it
    covers zero; where the unadjusted interval excludes zero, the sentence says the difference holds on these questions
    but not after correcting for the metric's number of comparisons (a reader never sees "tied" beside such an interval)."""
    family = Counter(row["metric"] for row in comparisons)
    sentences = []
    for row in comparisons:
        if row["distinguishable"]:
            continue
        separate = row["questions_to_separate"]
        need = (
            f"you would need about {separate:.0f} questions to tell them apart" if separate else "no difference at all on these questions"
        )
        diff = f"Δ {row['mean_diff']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}], n={row['n_paired']}"
        who, best = f"{row['embedding_model']} + {row['llm']}", f"{row['best_embedding_model']} + {row['best_llm']}"
        if row["ci_high"] < 0 or row["ci_low"] > 0:
            side = "worse" if row["ci_high"] < 0 else "better"
            sentences.append(
                f"{row['metric']}: {who} is {side} than the best, {best}, on these {row['n_paired']} questions ({diff}), but not "
                f"after correcting for {family[row['metric']]} comparisons (Holm-adjusted p = {row['p_value']:.3f}); {need}"
            )
        else:
            sentences.append(f"{row['metric']}: {who} is tied with the best, {best} ({diff}); {need}")
    return sentences or ["every difference from the best is real, on every metric (no ties)"]


def standing(comparisons: list[dict[str, Any]], metric: str) -> dict[tuple[str, str], str]:
    """(retriever, LLM) -> "best" | "≈ best" (statistically tied) | "" on one metric."""
    marks = {}
    for row in comparisons:
        if row["metric"] == metric:
            marks[(row["best_embedding_model"], row["best_llm"])] = "best"
            marks[(row["embedding_model"], row["llm"])] = "" if row["distinguishable"] else "≈ best"
    return marks


def diagnose(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per LLM and real retriever: closed book → retriever → oracle, the retrieval gain and the headroom, in one sentence."""
    rows = []
    for metric in DIAGNOSED_METRICS:
        table = per_question(samples, metric)
        for (retriever, llm), values in sorted(table.items()):
            if retriever in BASELINES or not any(not math.isnan(v) for v in values.values()):
                continue
            closed, oracle = table.get((CLOSED_BOOK, llm)), table.get((ORACLE, llm))
            if closed is None and oracle is None:
                continue
            rows.append(_diagnosis(metric, retriever, llm, values, closed, oracle))
    return rows


DIAGNOSIS_HEADERS = [
    "metric",
    "LLM",
    "retriever",
    "closed book",
    "with retriever",
    "oracle",
    "retrieval gain",
    "headroom",
    "what limits it",
]


def diagnosis_cells(d: dict[str, Any]) -> list[str]:
    """One diagnosis row as table cells, intervals written out (report.md and report.html)."""
    scores = [estimate(d[k]) for k in ("closed_book", "rag", "oracle")] + [
        estimate(d[k], signed=True) for k in ("retrieval_gain", "headroom")
    ]
    return [d["metric"], d["llm"], d["embedding_model"], *scores, d["verdict"]]


def _diagnosis(metric: str, retriever: str, llm: str, rag: dict, closed: dict | None, oracle: dict | None) -> dict[str, Any]:
    questions = sorted(rag)
    vector = lambda table: np.array([table.get(q, math.nan) for q in questions]) if table is not None else None  # noqa: E731
    rag_v, closed_v, oracle_v = vector(rag), vector(closed), vector(oracle)
    present = [v for v in (closed_v, rag_v, oracle_v) if v is not None and not np.isnan(v).all()]
    scores = dict(
        zip(
            ("closed_book", "rag", "oracle"),
            stats.intervals(np.array([_or_nan(v, rag_v) for v in (closed_v, rag_v, oracle_v)]).T),
            strict=True,
        )
    )
    gain = stats.intervals((rag_v - closed_v)[:, None])[0] if closed_v is not None else None
    headroom = stats.intervals((oracle_v - rag_v)[:, None])[0] if oracle_v is not None else None
    row = {"metric": metric, "llm": llm, "embedding_model": retriever, **scores, "retrieval_gain": gain, "headroom": headroom}
    row["verdict"] = _verdict(metric, headroom, scores["oracle"]) if len(present) > 1 else "no baseline scored on this metric"
    closed_mean, oracle_mean = scores["closed_book"].mean, scores["oracle"].mean
    row["contamination"] = bool(oracle_mean > 0 and closed_mean >= CONTAMINATION_SHARE * oracle_mean)
    return row


def _verdict(metric: str, headroom: stats.Interval | None, oracle: stats.Interval) -> str:
    if headroom is None or math.isnan(headroom.mean):
        return "run the oracle baseline to see whether better retrieval would help"
    if math.isnan(headroom.low):
        return "too few questions to say what limits it"
    if headroom.low > 0:
        gap = f"{headroom.mean:+.2f} {metric} [{headroom.low:+.2f}, {headroom.high:+.2f}]"
        return f"the retriever limits it: the reference passages would add {gap}"
    return f"the LLM limits it: even with the reference passages it scores {oracle.mean:.2f} {metric}, not reliably more"


def _column(table: dict, combo: tuple[str, str], questions: list[str]) -> np.ndarray:
    return np.array([table[combo].get(q, math.nan) for q in questions])


def _or_nan(vector: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    return np.full_like(like, math.nan) if vector is None else vector
