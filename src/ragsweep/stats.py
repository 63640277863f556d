"""Scores you can decide on: bootstrap intervals, paired comparisons against the best, judge noise.

All resampling is over questions, with a fixed seed (a rebuilt report is identical), and is done as
one matrix product for every column at once: a bootstrap resample is a row of counts W (how often
each question was drawn), so the resampled means of all columns are (W @ X) / (W @ mask). NaN
cells (failed answers, unjudged cells) are left out column by column; the n used is returned.
Read by the report only.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000  # bootstrap resamples for every interval
PERMUTATIONS = 5000  # sign flips for every paired p-value (smallest p: 1/5001)
SEED = 0  # fixed: the same store gives the same report
LEVEL = 0.95
MIN_QUESTIONS = 10  # below this many usable questions no interval is written ("too few questions")
ALPHA = 0.05  # Holm-adjusted p below this: distinguishable
Z_POWER = 1.96 + 0.84  # two-sided 5 % test with 80 % power: n ≈ (z_a + z_b)² σ² / δ²


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float  # NaN when n < MIN_QUESTIONS
    high: float
    n: int  # usable (non-NaN) questions


@dataclass(frozen=True)
class Comparison:
    """One combination against the best on a metric, paired over the questions both have."""

    n_paired: int
    mean_diff: float  # other - best (<= 0 when the best is best)
    ci_low: float
    ci_high: float
    p_value: float  # two-sided paired sign-flip test, Holm-adjusted within the metric
    distinguishable: bool
    questions_to_separate: float | None  # ~n for a 5 % test with 80 % power at this difference; None when no difference


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, n) counts: how often each of n questions was drawn in each bootstrap resample."""
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    offsets = (np.arange(resamples) * n)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def intervals(values: np.ndarray, counts: np.ndarray | None = None) -> list[Interval]:
    """A percentile bootstrap interval for the mean of each column of `values` (questions × columns), NaN left out."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64).T).T
    usable = ~np.isnan(values)
    counts = resample_counts(values.shape[0]) if counts is None else counts
    means = _resampled_means(values, usable, counts)
    with warnings.catch_warnings():  # a column with no usable value has no interval: NaN, said in the report
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(means, [50 * (1 - LEVEL), 50 * (1 + LEVEL)], axis=0)
    found = []
    for column in range(values.shape[1]):
        n = int(usable[:, column].sum())
        mean = float(values[usable[:, column], column].mean()) if n else float("nan")
        enough = n >= MIN_QUESTIONS
        found.append(Interval(mean, float(low[column]) if enough else float("nan"), float(high[column]) if enough else float("nan"), n))
    return found


def two_level_interval(cells: np.ndarray, seed: int = SEED) -> Interval:
    """Judge repeats: questions × repeats. Resample questions, then repeats within each drawn question (two levels)."""
    cells = np.asarray(cells, dtype=np.float64)
    n, repeats = cells.shape
    per_question = _nanmean_rows(cells)
    usable = ~np.isnan(per_question)
    mean = float(per_question[usable].mean()) if usable.any() else float("nan")
    if usable.sum() < MIN_QUESTIONS:
        return Interval(mean, float("nan"), float("nan"), int(usable.sum()))
    rng = np.random.default_rng(seed)
    questions = rng.integers(0, n, size=(RESAMPLES, n))
    picks = rng.integers(0, repeats, size=(RESAMPLES, n, repeats))
    drawn = _nanmean_rows(cells[questions[..., None], picks].reshape(-1, repeats)).reshape(RESAMPLES, n)
    means = np.nanmean(drawn, axis=1)
    low, high = np.nanpercentile(means, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return Interval(mean, float(low), float(high), int(usable.sum()))


def judge_noise(cells: np.ndarray) -> tuple[float, float]:
    """(within-cell SD of repeated judgements, share of the mean's variance it explains), from questions × repeats."""
    cells = np.asarray(cells, dtype=np.float64)
    repeated = cells[(~np.isnan(cells)).sum(axis=1) >= 2]
    if len(repeated) < 2:
        return float("nan"), float("nan")
    within = float(np.nanmean(np.nanvar(repeated, axis=1, ddof=1)))
    between = float(np.nanvar(_nanmean_rows(repeated), ddof=1))
    share = min(1.0, within / cells.shape[1] / between) if between > 0 else 1.0
    return within**0.5, share


def compare_to_best(best: np.ndarray, others: np.ndarray) -> list[Comparison]:
    """Each column of `others` against `best` (both questions × ·), paired, Holm-adjusted across the columns."""
    diffs = np.atleast_2d(np.asarray(others, dtype=np.float64).T).T - np.asarray(best, dtype=np.float64)[:, None]
    paired = ~np.isnan(diffs)
    n_paired = paired.sum(axis=0)
    zeroed = np.where(paired, diffs, 0.0)
    observed = zeroed.sum(axis=0) / np.maximum(n_paired, 1)
    cis = intervals(diffs)
    signs = np.random.default_rng(SEED + 1).choice(np.array([-1.0, 1.0]), size=(PERMUTATIONS, diffs.shape[0]))
    flipped = np.abs(signs @ zeroed) / np.maximum(n_paired, 1)
    raw_p = (1 + (flipped >= np.abs(observed) - 1e-12).sum(axis=0)) / (PERMUTATIONS + 1)
    adjusted = holm(raw_p)
    sd = np.array([np.std(diffs[paired[:, c], c], ddof=1) if n_paired[c] > 1 else np.nan for c in range(diffs.shape[1])])
    found = []
    for c in range(diffs.shape[1]):
        delta = observed[c]
        separate = float(np.ceil(Z_POWER**2 * sd[c] ** 2 / delta**2)) if n_paired[c] > 1 and delta != 0 else None
        p = float(adjusted[c]) if n_paired[c] else float("nan")
        found.append(Comparison(int(n_paired[c]), float(delta), cis[c].low, cis[c].high, p, bool(p < ALPHA), separate))
    return found


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment: controls the family-wise error across one metric's comparisons."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p)
    scaled = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(scaled, 1.0)
    return adjusted


@dataclass(frozen=True)
class Separation:
    """How well scores separate items labelled 1 from items labelled 0 (a judge check, per metric)."""

    n: int
    positives: int
    auroc: float  # P(a random positive scores above a random negative), ties half; NaN without both classes
    low: float  # 95 % stratified bootstrap interval; NaN below MIN_PER_CLASS items of either class
    high: float
    balanced_accuracy: float  # (true-positive rate + true-negative rate) / 2, a score >= threshold read as "high"
    threshold: float

    @property
    def verdict(self) -> str:
        """Read from the interval alone, so a verdict never contradicts the interval beside it."""
        if math.isnan(self.low):
            return "too few labelled items"
        if self.low > 0.5:
            return "agrees"
        return "inverted" if self.high < 0.5 else "no better than chance"


MIN_PER_CLASS = 5  # labelled items of each class below which a judge check gives no interval
THRESHOLD = 0.5  # a judged score at or above this reads as "high" (balanced accuracy)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The area under the ROC curve (Mann-Whitney U / n1 n0, ties counted half); NaN without both classes."""
    found = _aurocs(np.asarray(scores, dtype=np.float64)[None, :], np.asarray(labels, dtype=bool)[None, :])
    return float(found[0])


def separation(scores: np.ndarray, labels: np.ndarray, threshold: float = THRESHOLD, seed: int = SEED) -> Separation:
    """AUROC with a stratified bootstrap interval (positives and negatives resampled apart, so each resample has both),
    and balanced accuracy at `threshold`. NaN scores (failed judge cells) are left out."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    usable = ~np.isnan(scores)
    scores, labels = scores[usable], labels[usable]
    positives, negatives = scores[labels], scores[~labels]
    area = auroc(scores, labels)
    low = high = math.nan
    if min(len(positives), len(negatives)) >= MIN_PER_CLASS:
        rng = np.random.default_rng(seed)
        drawn = np.concatenate(
            [
                positives[rng.integers(0, len(positives), (RESAMPLES, len(positives)))],
                negatives[rng.integers(0, len(negatives), (RESAMPLES, len(negatives)))],
            ],
            axis=1,
        )
        which = np.concatenate([np.ones(len(positives), bool), np.zeros(len(negatives), bool)])
        low, high = (
            float(x) for x in np.percentile(_aurocs(drawn, np.broadcast_to(which, drawn.shape)), [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
        )
    rates = [
        np.mean(positives >= threshold) if len(positives) else math.nan,
        np.mean(negatives < threshold) if len(negatives) else math.nan,
    ]
    return Separation(len(scores), len(positives), area, low, high, float(np.mean(rates)), threshold)


def _aurocs(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Row by row: the AUROC of scores[r] against labels[r] (average ranks for ties)."""
    from scipy.stats import rankdata

    n1 = labels.sum(axis=1)
    n0 = labels.shape[1] - n1
    ranks = rankdata(scores, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * labels).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


@dataclass(frozen=True)
class Corrected:
    """A judged mean corrected by a person's labels (prediction-powered inference, PPI++)."""

    mean: float
    low: float  # 95 %; NaN below MIN_QUESTIONS labels
    high: float
    n: int  # labelled samples that also have a judged score
    more_labels_to_halve: int | None  # about how many more labels would halve the interval; None: labels alone cannot


def corrected_mean(labels: np.ndarray, judged_labelled: np.ndarray, judged_unlabelled: np.ndarray) -> Corrected:
    """PPI++ for a mean (Angelopoulos, Duchi, Zrnic 2023, via ppi-python): the labels' mean plus λ × the judge's view of the
    unlabelled samples, minus λ × its view of the labelled ones. λ is tuned for the narrowest interval and lies in
    [0, 1], so a judge that says nothing (λ = 0) leaves the labels alone, never a wider interval than theirs. With every
    sample labelled it is the labels' mean."""
    from ppi_py import classical_mean_ci, ppi_mean_ci, ppi_mean_pointestimate

    y, f, f_unlabelled = (np.asarray(a, dtype=np.float64) for a in (labels, judged_labelled, judged_unlabelled))
    n, big_n = len(y), len(f_unlabelled)
    if n == 0:
        return Corrected(math.nan, math.nan, math.nan, 0, None)
    alpha = 1 - LEVEL
    lam = _power_tuning(y, f, f_unlabelled)
    if big_n == 0:
        mean, (low, high) = float(y.mean()), classical_mean_ci(y, alpha=alpha) if n >= 2 else (math.nan, math.nan)
    else:
        mean = float(np.squeeze(ppi_mean_pointestimate(y, f, f_unlabelled, lam=lam)))
        low, high = (float(np.squeeze(x)) for x in ppi_mean_ci(y, f, f_unlabelled, alpha=alpha, lam=lam))
    if n < MIN_QUESTIONS:
        return Corrected(mean, math.nan, math.nan, n, None)
    # the interval's variance: λ² Var(judge) / N + Var(label - λ judge) / n; halving it needs a quarter of the variance
    judge_part = lam**2 * float(np.var(f_unlabelled)) / big_n if big_n else 0.0
    label_part = float(np.var(y - lam * f))
    target = (label_part / n + judge_part) / 4 - judge_part
    more = math.ceil(label_part / target - n - 1e-9) if target > 0 else None  # 1e-9: 4n - n is 3n, not 3n + 1
    return Corrected(mean, float(low), float(high), n, more)


def _power_tuning(y: np.ndarray, f: np.ndarray, f_unlabelled: np.ndarray) -> float:
    """PPI++'s λ for a mean: Cov(label, judge) / ((1 + n/N) Var(judge over all samples)), clipped to [0, 1]; 0 when N = 0."""
    n, big_n = len(y), len(f_unlabelled)
    spread = float(np.var(np.concatenate([f, f_unlabelled]), ddof=1)) if n + big_n > 1 else 0.0
    if big_n == 0 or n < 2 or spread == 0:
        return 0.0
    covariance = float(np.mean((y - y.mean()) * (f - f.mean())))
    return float(np.clip(covariance / ((1 + n / big_n) * spread), 0.0, 1.0))


def _resampled_means(values: np.ndarray, usable: np.ndarray, counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ np.where(usable, values, 0.0)) / (counts @ usable.astype(np.float64))


def _nanmean_rows(rows: np.ndarray) -> np.ndarray:
    usable = ~np.isnan(rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(usable, rows, 0.0).sum(axis=1) / usable.sum(axis=1)
