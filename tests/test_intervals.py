"""Bootstrap intervals and verdicts against simulations and plain resampling loops."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from utils.intervals import Interval, bootstrap_counts, paired_interval, score_interval, verdict


def test_interval_covers_the_true_accuracy_at_its_nominal_rate():
    """Test sets drawn from a known accuracy: the 95% interval covers it in 93-97% of 1,000 repetitions."""
    rng = np.random.default_rng(1)
    p, n, reps = 0.85, 400, 1000
    covered = 0
    for r in range(reps):
        y = np.zeros(n, dtype=int)
        pred = np.where(rng.random(n) < p, 0, 1)  # correct with probability p
        ci = score_interval(y, pred, n_boot=1000, random_state=r)
        covered += ci.low <= p <= ci.high
    assert 0.93 <= covered / reps <= 0.97


def test_weighted_replicates_equal_explicit_resampling():
    """The multiplicity form of a replicate equals scoring the explicitly resampled sentences."""
    rng = np.random.default_rng(2)
    sizes = rng.integers(1, 30, size=40)
    groups = np.repeat(np.arange(40), sizes)
    y = rng.integers(0, 4, size=len(groups))
    pred = np.where(rng.random(len(groups)) < 0.7, y, rng.integers(0, 4, size=len(groups)))
    counts = bootstrap_counts(40, n_boot=200, random_state=5)
    assert counts.shape == (200, 40) and (counts.sum(axis=1) == 40).all()
    acc, f1 = [], []
    for row in counts:
        idx = np.concatenate([np.flatnonzero(groups == g) for g in np.repeat(np.arange(40), row)])
        acc.append(np.mean(y[idx] == pred[idx]))
        f1.append(f1_score(y[idx], pred[idx], average="macro", labels=np.unique(np.r_[y[idx], pred[idx]])))
    for metric, stats in (("accuracy", acc), ("macro_f1", f1)):
        ci = score_interval(y, pred, metric=metric, groups=groups, n_boot=200, random_state=5)
        low, high = np.nanquantile(stats, [0.025, 0.975])
        assert ci.low == pytest.approx(low, abs=1e-12) and ci.high == pytest.approx(high, abs=1e-12)
    assert score_interval(y, pred, metric="macro_f1").estimate == pytest.approx(f1_score(y, pred, average="macro"))


def test_sentence_bootstrap_is_wider_when_words_of_a_sentence_share_their_fate():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(200), 20)
    sentence_ok = rng.random(200) < 0.8  # whole sentences right or wrong: strong within-group correlation
    y = np.zeros(len(groups), dtype=int)
    pred = np.where(sentence_ok[groups], 0, 1)
    by_word = score_interval(y, pred)
    by_sentence = score_interval(y, pred, groups=groups)
    assert by_word.estimate == by_sentence.estimate
    assert (by_sentence.high - by_sentence.low) > 3 * (by_word.high - by_word.low)


def test_paired_interval_is_narrower_than_unpaired_on_correlated_predictions():
    rng = np.random.default_rng(4)
    n = 1000
    y = rng.integers(0, 3, size=n)
    a = np.where(rng.random(n) < 0.8, y, (y + 1) % 3)
    b = np.where(rng.random(n) < 0.05, (a + 1) % 3, a)  # b = a with 5% of its predictions changed
    paired = paired_interval(y, a, b, n_boot=2000, random_state=0)
    # Unpaired: each score resampled on its own, independently drawn items.
    ca, cb = (bootstrap_counts(n, n_boot=2000, random_state=s) for s in (10, 11))
    diff = ca @ (a == y) / n - cb @ (b == y) / n
    unpaired_low, unpaired_high = np.quantile(diff, [0.025, 0.975])
    assert paired.estimate == pytest.approx(np.mean(a == y) - np.mean(b == y))
    assert paired.high - paired.low < 0.5 * (unpaired_high - unpaired_low)

    ratio = paired_interval(y, a, b, compare="ratio", n_boot=2000, random_state=0)
    assert ratio.estimate == pytest.approx(np.mean(a == y) / np.mean(b == y))
    assert ratio.low < ratio.estimate < ratio.high


@pytest.mark.parametrize(
    ("interval", "bound", "direction", "expected"),
    [
        ((0.97, 0.99), 0.97, "at_least", "holds"),
        ((0.95, 0.96), 0.97, "at_least", "does not hold"),
        ((0.95, 0.98), 0.97, "at_least", "inconclusive"),
        ((0.05, 0.09), 0.10, "at_most", "holds"),
        ((0.08, 0.12), 0.10, "at_most", "inconclusive"),
        ((0.11, 0.12), 0.10, "at_most", "does not hold"),
    ],
)
def test_verdict_reads_the_interval_against_the_bound(interval, bound, direction, expected):
    assert verdict(interval, bound, direction=direction) == expected
    assert verdict(Interval(0.0, *interval, 0.95), bound, direction=direction) == expected


def test_bad_inputs_say_what_to_fix():
    with pytest.raises(ValueError, match="one group id per item"):
        score_interval([0, 1, 1], [0, 1, 0], groups=[0, 0])
    with pytest.raises(ValueError, match="empty"):
        score_interval([], [])
    with pytest.raises(ValueError, match="low <= high"):
        verdict((0.9, 0.8), 0.85)
    with pytest.raises(ValueError, match="unknown metric"):
        score_interval([0, 1], [0, 1], metric="f2")
