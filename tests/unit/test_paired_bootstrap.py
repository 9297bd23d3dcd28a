"""The paired bootstrap over utterances (Bisani & Ney 2004) and the choice of a decoding scale on dev."""

from __future__ import annotations

import numpy as np
import pytest

from asr_kd.decode.tuning import ScaleSweep, check_scales, choose_scale, sweep_scales
from asr_kd.errors import ConfigError
from asr_kd.metrics.paired import bootstrap_difference, bootstrap_gain_share
from asr_kd.metrics.wer import compute_wer


def _counts(rng: np.random.Generator, n: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
    words = rng.integers(5, 20, size=n).astype(float)
    return rng.binomial(words.astype(int), rate).astype(float), words


def test_identical_systems_differ_by_zero_and_not_significantly() -> None:
    errors, words = _counts(np.random.default_rng(0), 200, 0.3)
    iv = bootstrap_difference(errors, errors, words)
    assert iv.value == 0.0 and iv.low == 0.0 and iv.high == 0.0 and not iv.excludes_zero


def test_a_consistent_improvement_is_significant_and_its_value_is_the_rate_difference() -> None:
    rng = np.random.default_rng(1)
    a, words = _counts(rng, 300, 0.30)
    b = np.maximum(a - rng.binomial(2, 0.5, size=a.size), 0)  # B never worse on any utterance
    iv = bootstrap_difference(a, b, words, resamples=1000)
    assert iv.value == pytest.approx(b.sum() / words.sum() - a.sum() / words.sum())
    assert iv.high < 0 and iv.excludes_zero and iv.low < iv.value < iv.high


def test_two_noisy_systems_of_equal_rate_are_within_noise_and_the_interval_is_reproducible() -> None:
    rng = np.random.default_rng(2)
    a, words = _counts(rng, 150, 0.3)
    b = rng.binomial(words.astype(int), 0.3).astype(float)
    first, second = bootstrap_difference(a, b, words, seed=7), bootstrap_difference(a, b, words, seed=7)
    assert first == second
    assert first.low < 0 < first.high and not first.excludes_zero
    # A 95% interval is wider than a 50% one around the same value.
    narrow = bootstrap_difference(a, b, words, level=0.5, seed=7)
    assert first.low < narrow.low <= narrow.high < first.high


def test_share_of_a_gain_kept() -> None:
    frames = np.full(100, 50.0)
    base, ens, cand = frames * 0.40, frames * 0.50, frames * 0.45  # every utterance: 40%, 50%, 45%
    iv = bootstrap_gain_share(base, ens, cand, frames)
    assert iv.value == pytest.approx(0.5) and iv.low == pytest.approx(0.5) and iv.high == pytest.approx(0.5)
    assert np.isnan(bootstrap_gain_share(base, base, cand, frames).value)  # the reference gains nothing: no share


def test_bootstrap_refuses_misaligned_counts() -> None:
    with pytest.raises(ValueError, match="counts for"):
        bootstrap_difference(np.ones(3), np.ones(4), np.ones(3))
    with pytest.raises(ValueError, match="sums to 0"):
        bootstrap_difference(np.zeros(3), np.zeros(3), np.zeros(3))


def test_choose_scale_takes_the_fewest_errors_and_breaks_ties_towards_the_default() -> None:
    assert choose_scale([0.05, 0.1, 0.2], [30, 20, 25], 0.1) == 0.1
    assert choose_scale([0.05, 0.1, 0.2], [10, 20, 25], 0.1) == 0.05
    assert choose_scale([0.05, 0.08, 0.125], [10, 12, 10], 0.1) == 0.125  # |log(1.25)| < |log(2)|
    assert check_scales([0.1, 0.05, 0.1]) == (0.05, 0.1)
    with pytest.raises(ConfigError, match="acoustic_scales"):
        check_scales([])
    with pytest.raises(ConfigError, match="acoustic_scales"):
        check_scales([0.1, -1])


def test_sweep_decodes_every_scale_once_and_keeps_the_best() -> None:
    refs = {"u1": "a b c d", "u2": "e f"}
    outputs = {0.05: {"u1": "a b", "u2": "e f"}, 0.1: {"u1": "a b c d", "u2": "e"}, 0.2: {"u1": "a x c d", "u2": "e f g"}}
    calls: list[float] = []

    def decode(scale: float):
        calls.append(scale)
        return compute_wer(refs, outputs[scale])

    sweep, results = sweep_scales("dev", [0.2, 0.1, 0.05], decode)
    assert sorted(calls) == [0.05, 0.1, 0.2] and sweep.errors == (2, 1, 2) and sweep.best == 0.1 and sweep.ref_words == 6
    assert results[0.1].errors == 1
    assert ScaleSweep.from_dict(sweep.to_dict()) == sweep
    assert "0.1: 16.7%" in sweep.describe() and sweep.describe().endswith("best 0.1")


def test_the_search_walks_downhill_and_skips_the_far_end_of_the_grid() -> None:
    grid = [0.0625, 0.0714, 0.0833, 0.1, 0.125, 0.1429, 0.1667]
    errors = {0.0625: 9, 0.0714: 6, 0.0833: 5, 0.1: 7, 0.125: 8, 0.1429: 9, 0.1667: 9}
    refs = {"u": " ".join(f"w{i}" for i in range(20))}
    calls: list[float] = []

    def decode(scale: float):
        calls.append(scale)
        words = refs["u"].split()
        return compute_wer(refs, {"u": " ".join(words[errors[scale]:])})  # errors[scale] deletions

    sweep, _ = sweep_scales("dev", grid, decode)
    assert sweep.best == 0.0833 and sorted(calls) == [0.0714, 0.0833, 0.1, 0.125]
    assert sweep.scales == (0.0714, 0.0833, 0.1, 0.125) and sweep.errors == (6, 5, 7, 8)
    assert not sweep.at_grid_edge and "edge" not in sweep.describe()
    # The minimum at the end of the grid is reached too, and said to be at its edge.
    errors.update({0.0625: 1, 0.0714: 4})  # falling all the way to the end
    calls.clear()
    sweep, _ = sweep_scales("dev", grid, decode)
    assert sweep.best == 0.0625 and 0.1667 not in calls
    assert sweep.at_grid_edge and "at the edge of decode.acoustic_scales" in sweep.describe()
    assert ScaleSweep.from_dict(sweep.to_dict()).at_grid_edge
