#!/usr/bin/env python
"""Time the report's statistics on a large sweep: 12 combinations × 1,000 questions × 10 metrics.

Intervals for every mean (2,000 bootstrap resamples) and the paired comparisons against the best
(5,000 sign flips, Holm) run on every report rebuild, so they must stay instant.
Target: under 3 s on a 2-core machine. Usage: python bench/bench_stats.py
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ragsweep import stats  # noqa: E402
from ragsweep.comparisons import compare_to_best, diagnose  # noqa: E402
from ragsweep.findings import MEAN_COLUMNS, summarize  # noqa: E402
from ragsweep.metrics import ANSWER_METRICS, JUDGE_METRICS, RETRIEVAL_METRICS  # noqa: E402

TARGET_S = 3.0
METRICS = [*RETRIEVAL_METRICS, *ANSWER_METRICS, *JUDGE_METRICS, "latency_s"]  # 10 metrics


def synthetic_samples(combinations: int = 12, questions: int = 1000) -> list[dict]:
    rng = np.random.default_rng(0)
    samples = []
    for c in range(combinations):
        retriever, llm = f"retriever-{c % 3}", f"llm-{c // 3}"
        for q in range(questions):
            row = {"embedding_model": retriever, "llm": llm, "question_id": f"q{q}", "error": None, "tokens_per_s": rng.uniform(20, 80)}
            row.update({m: float(rng.beta(2 + c % 4, 3)) for m in METRICS})
            samples.append(row)
    return samples


def main() -> None:
    samples = synthetic_samples()
    start = time.perf_counter()
    summary = summarize(samples)
    intervals_s = time.perf_counter() - start
    start = time.perf_counter()
    comparisons = compare_to_best(samples)
    diagnose(samples)
    compare_s = time.perf_counter() - start
    total = intervals_s + compare_s
    print(f"12 combinations × 1000 questions × {len(METRICS)} metrics ({stats.RESAMPLES} resamples, {stats.PERMUTATIONS} sign flips)")
    print(f"  intervals for {len(summary)} × {len(MEAN_COLUMNS)} means: {intervals_s:.2f} s")
    print(f"  paired comparisons ({len(comparisons)} against the best, Holm): {compare_s:.2f} s")
    verdict = "PASS" if total < TARGET_S else "FAIL"
    print(f"  total {total:.2f} s — target < {TARGET_S:.0f} s: {verdict} ({total / TARGET_S:.0%} of the budget)")


if __name__ == "__main__":
    main()
