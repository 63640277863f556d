"""Intervals, paired comparisons and judge noise: checked against scipy and against planted effects."""

import math

import numpy as np
import pytest
import scipy.stats

from ragsweep import stats


@pytest.fixture
def scores():
    return np.random.default_rng(11).beta(0.5, 0.5, size=30)  # scores in [0, 1], piled at both ends like F1


def test_intervals_match_scipy_bootstrap(scores):
    mine = stats.intervals(scores[:, None])[0]
    theirs = scipy.stats.bootstrap((scores,), np.mean, n_resamples=10_000, method="percentile", random_state=3).confidence_interval
    assert abs(mine.low - theirs.low) < 0.01 and abs(mine.high - theirs.high) < 0.01
    assert mine.mean == pytest.approx(scores.mean()) and mine.n == 30


def test_nan_cells_are_left_out_per_column_and_the_n_is_kept(scores):
    column = scores.copy()
    column[:10] = np.nan
    both = stats.intervals(np.stack([scores, column], axis=1))
    alone = stats.intervals(scores[10:, None])[0]
    assert both[1].n == 20 and both[1].mean == pytest.approx(alone.mean)
    theirs = scipy.stats.bootstrap((scores[10:],), np.mean, n_resamples=10_000, method="percentile", random_state=3).confidence_interval
    assert abs(both[1].low - theirs.low) < 0.015 and abs(both[1].high - theirs.high) < 0.015


def test_below_ten_questions_there_is_no_interval(scores):
    few = stats.intervals(scores[:9, None])[0]
    assert few.n == 9 and np.isnan(few.low) and np.isnan(few.high) and not np.isnan(few.mean)
    assert not np.isnan(stats.intervals(scores[:10, None])[0].low)


def test_same_seed_same_interval(scores):
    assert stats.intervals(scores[:, None]) == stats.intervals(scores[:, None])


def test_the_paired_test_finds_a_planted_difference_and_passes_a_null_one():
    rng = np.random.default_rng(5)
    best = rng.uniform(0.3, 0.9, 80)
    worse = best - 0.08 + rng.normal(0, 0.05, 80)  # a real, small, consistent difference
    same = best + rng.normal(0, 0.05, 80)  # no difference, only noise
    planted, null = stats.compare_to_best(best, np.stack([worse, same], axis=1))
    assert planted.distinguishable and planted.p_value < 0.01 and planted.ci_high < 0
    assert not null.distinguishable and null.p_value > 0.05 and null.ci_low < 0 < null.ci_high
    assert null.questions_to_separate > 80 and planted.n_paired == 80


def test_pairs_use_only_questions_both_answered():
    best = np.linspace(0.2, 0.8, 30)
    other = best - 0.1
    other[:10] = np.nan
    [result] = stats.compare_to_best(best, other[:, None])
    assert result.n_paired == 20 and result.mean_diff == pytest.approx(-0.1)


def test_holm_adjustment():
    assert np.allclose(stats.holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])


def test_judge_repeats_widen_the_interval_and_their_noise_is_measured():
    rng = np.random.default_rng(2)
    truth = rng.uniform(0.2, 0.8, 40)
    calm = np.repeat(truth[:, None], 3, axis=1)
    noisy = np.clip(truth[:, None] + rng.normal(0, 0.3, (40, 3)), 0, 1)
    calm_interval, noisy_interval = stats.two_level_interval(calm), stats.two_level_interval(noisy)
    assert noisy_interval.high - noisy_interval.low > calm_interval.high - calm_interval.low
    calm_one_level = stats.intervals(truth[:, None])[0]
    assert abs(calm_interval.low - calm_one_level.low) < 0.02  # no noise: the second level adds nothing
    sd, share = stats.judge_noise(noisy)
    assert 0.15 < sd < 0.35 and 0.1 < share <= 1.0
    assert stats.judge_noise(calm) == pytest.approx((0.0, 0.0), abs=1e-9)


def _scored(seed: int = 3, n: int = 120, shift: float = 0.25):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(bool)
    scores = np.round(rng.random(n) + shift * labels, 1)  # rounded: many ties, counted half
    return scores, labels


def test_auroc_and_its_interval_match_scikit_learn_and_a_plain_bootstrap():
    from sklearn.metrics import roc_auc_score

    scores, labels = _scored()
    found = stats.separation(scores, labels)
    assert found.auroc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    rng = np.random.default_rng(99)  # another seed, resampled one at a time, each class apart
    positives, negatives = scores[labels], scores[~labels]
    areas = []
    for _ in range(2000):
        p, q = rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))
        areas.append(roc_auc_score([1] * len(p) + [0] * len(q), np.concatenate([p, q])))
    low, high = np.percentile(areas, [2.5, 97.5])
    assert found.low == pytest.approx(low, abs=0.02) and found.high == pytest.approx(high, abs=0.02)
    assert found.low < found.auroc < found.high and found.n == len(scores) and found.positives == labels.sum()


def test_balanced_accuracy_reads_a_score_at_the_threshold_as_high():
    found = stats.separation(np.array([0.5, 0.9, 0.2, 0.49, 0.7, 0.1]), np.array([1, 1, 1, 0, 0, 0], bool))
    assert found.balanced_accuracy == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_verdicts_follow_the_interval():
    make = lambda low, high: stats.Separation(40, 20, (low + high) / 2, low, high, 0.5, 0.5)  # noqa: E731
    assert make(0.55, 0.9).verdict == "agrees"
    assert make(0.45, 0.9).verdict == "no better than chance"
    assert make(0.1, 0.45).verdict == "inverted"
    assert make(math.nan, math.nan).verdict == "too few labelled items"


def test_failed_cells_are_left_out_of_the_auroc():
    scores, labels = _scored()
    holed = scores.copy()
    holed[:10] = np.nan
    found = stats.separation(holed, labels)
    assert found.n == len(scores) - 10 and found.auroc == pytest.approx(stats.auroc(scores[10:], labels[10:]))


def test_ppi_with_every_sample_labelled_is_the_labels_mean():
    rng = np.random.default_rng(5)
    labels = rng.random(40)
    found = stats.corrected_mean(labels, np.clip(labels + 0.3, 0, 1), np.array([]))
    assert found.mean == pytest.approx(labels.mean()) and found.n == 40 and found.low < labels.mean() < found.high


def test_ppi_moves_toward_the_labels_when_the_judge_is_biased():
    rng = np.random.default_rng(6)
    truth = rng.random(400)
    judge = np.clip(truth * 0.5 + 0.45, 0, 1)  # a lenient judge: its mean is about 0.70, the truth's about 0.5
    labelled = rng.choice(400, 60, replace=False)
    rest = np.setdiff1d(np.arange(400), labelled)
    found = stats.corrected_mean(truth[labelled], judge[labelled], judge[rest])
    assert abs(found.mean - truth.mean()) < 0.05 < abs(judge.mean() - truth.mean())
    assert found.low < truth.mean() < found.high
    classical = stats.corrected_mean(truth[labelled], judge[labelled], np.array([]))
    assert found.high - found.low < classical.high - classical.low  # an informative judge narrows the labels' interval
    assert found.more_labels_to_halve is not None and found.more_labels_to_halve > 60


def test_ppi_never_widens_the_interval_for_a_judge_that_says_nothing():
    rng = np.random.default_rng(7)
    truth = rng.random(200)
    noise = rng.random(200)  # unrelated to the truth
    found = stats.corrected_mean(truth[:50], noise[:50], noise[50:])
    classical = stats.corrected_mean(truth[:50], noise[:50], np.array([]))
    assert found.high - found.low <= (classical.high - classical.low) * 1.05
