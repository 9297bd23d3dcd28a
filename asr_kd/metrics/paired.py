"""Uncertainty of a difference between two systems: over seeds (a t interval), over the
examples of one test set (McNemar's exact test on the examples where exactly one is right), and
over the utterances of a speech test set (the paired bootstrap of Bisani & Ney 2004, "Bootstrap
estimates for confidence intervals in ASR performance evaluation", ICASSP).

The bootstrap treats a rate as a ratio of sums over utterances (word errors / reference words,
correct frames / frames): each resample draws the utterances with replacement, the *same* draw
for every system, so the interval of a difference reflects how the systems differ utterance by
utterance, not how hard the test set happens to be."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import numpy as np
from scipy import stats


def mean_interval(values: list[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Return ``(mean, half_width)`` of the Student-t confidence interval of the mean of
    ``values`` at ``level``; the half width is ``nan`` for fewer than two values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_interval needs at least one value")
    if x.size < 2:
        return float(x.mean()), math.nan
    sem = float(x.std(ddof=1)) / math.sqrt(x.size)
    return float(x.mean()), float(stats.t.ppf(0.5 + level / 2.0, x.size - 1)) * sem


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """Systems A and B on the same examples: how many only A got right, only B, and the
    two-sided exact McNemar p value (a binomial test on those discordant examples)."""

    only_a: int
    only_b: int
    p_value: float


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> PairedComparison:
    """Return the paired comparison of two systems from their per-example correctness
    (boolean arrays of equal length)."""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs equal shapes, got {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(stats.binomtest(only_a, n, 0.5).pvalue)
    return PairedComparison(only_a, only_b, p)


BOOTSTRAP_RESAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class BootstrapInterval:
    """A statistic on the whole test set and its percentile confidence interval over paired
    bootstrap resamples of the utterances."""

    value: float
    low: float
    high: float
    level: float
    resamples: int

    @property
    def excludes_zero(self) -> bool:
        """Return whether the interval lies entirely on one side of 0 (a significant difference)."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float | int | bool]:
        """Return the interval as a JSON-serialisable dict."""
        return {**dataclasses.asdict(self), "excludes_zero": self.excludes_zero}


def bootstrap_rates(
    numerators: Mapping[str, np.ndarray], denominator: np.ndarray, statistic: Callable[[Mapping[str, np.ndarray]], np.ndarray],
    resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95, seed: int = 0,
) -> BootstrapInterval:
    """Return ``statistic`` of the systems' rates and its paired bootstrap interval.

    ``numerators`` maps a system to its per-utterance counts (word errors, correct frames; means
    over seeds are fine), all aligned with ``denominator`` (reference words, frames per
    utterance). ``statistic`` receives ``{system: rates}`` as arrays (one rate per resample, or one
    element for the full set) and returns an array of the same length, e.g. ``r["b"] - r["a"]``.
    The resampling generator is seeded, so the interval is reproducible.
    """
    den = np.asarray(denominator, dtype=np.float64)
    nums = {k: np.asarray(v, dtype=np.float64) for k, v in numerators.items()}
    if den.ndim != 1 or den.size == 0:
        raise ValueError(f"bootstrap needs a non-empty 1-d denominator, got shape {den.shape}")
    for k, v in nums.items():
        if v.shape != den.shape:
            raise ValueError(f"bootstrap: system {k!r} has {v.shape} counts for {den.shape} utterances")
    if den.sum() <= 0:
        raise ValueError("bootstrap: the denominator sums to 0 (no reference word or frame)")
    value = float(np.asarray(statistic({k: np.array([v.sum() / den.sum()]) for k, v in nums.items()}))[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, den.size, size=(resamples, den.size))
    den_r = den[idx].sum(axis=1)
    den_r[den_r == 0] = np.nan  # a resample without a reference word has no rate
    rates = {k: v[idx].sum(axis=1) / den_r for k, v in nums.items()}
    stats_r = np.asarray(statistic(rates), dtype=np.float64)
    stats_r = stats_r[np.isfinite(stats_r)]
    if stats_r.size == 0:
        return BootstrapInterval(value, math.nan, math.nan, level, resamples)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats_r, [alpha, 1.0 - alpha])
    return BootstrapInterval(value, float(low), float(high), level, resamples)


def bootstrap_difference(
    a: np.ndarray, b: np.ndarray, denominator: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95, seed: int = 0,
) -> BootstrapInterval:
    """Return rate(b) - rate(a) with its paired bootstrap interval (per-utterance counts ``a`` and
    ``b`` over the same ``denominator``); see :func:`bootstrap_rates`."""
    return bootstrap_rates({"a": a, "b": b}, denominator, lambda r: r["b"] - r["a"], resamples, level, seed)


def bootstrap_gain_share(
    baseline: np.ndarray, reference: np.ndarray, candidate: np.ndarray, denominator: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95, seed: int = 0,
) -> BootstrapInterval:
    """Return ``(rate(candidate) - rate(baseline)) / (rate(reference) - rate(baseline))``, the share
    of the reference's gain over the baseline that the candidate keeps (the distilled model's
    share of the ensemble's gain; the 3% soft model's share of the full data's), with its paired
    bootstrap interval. Resamples where the reference gains nothing are left out of the interval;
    the share is NaN when it gains nothing on the full set."""

    def share(r: Mapping[str, np.ndarray]) -> np.ndarray:
        gain = r["reference"] - r["baseline"]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gain > 0, (r["candidate"] - r["baseline"]) / gain, np.nan)

    return bootstrap_rates({"baseline": baseline, "reference": reference, "candidate": candidate}, denominator, share,
                           resamples, level, seed)


def wer_difference(a, b, resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95, seed: int = 0) -> BootstrapInterval:
    """Return WER(b) - WER(a) with its paired bootstrap interval, from two
    :class:`asr_kd.metrics.wer.WerResult` of the same utterances (e.g. first pass and rescored)."""
    errors_a = {u.utt_id: u.errors for u in a.utterances}
    errors_b = {u.utt_id: u.errors for u in b.utterances}
    if set(errors_a) != set(errors_b):
        raise ValueError(f"wer_difference needs the same utterances, got {len(errors_a)} and {len(errors_b)} (differing ids)")
    ids = sorted(errors_a)
    words = {u.utt_id: len(u.ref) for u in a.utterances}
    return bootstrap_difference(np.array([errors_a[u] for u in ids]), np.array([errors_b[u] for u in ids]), np.array([words[u] for u in ids]),
                                resamples, level, seed)
