"""Uncertainty of a difference between two systems: over seeds (a t interval) and over the
examples of one test set (McNemar's exact test on the examples where exactly one is right)."""

from __future__ import annotations

import dataclasses
import math

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
