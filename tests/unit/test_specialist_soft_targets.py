"""The soft targets of a specialist (asr_kd.kd.specialists.specialist_soft_targets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.errors import ConfigError
from asr_kd.kd.specialists import aggregate_to_specialist, dustbin_prior_correction, specialist_soft_targets


def _case(seed: int, n: int = 16, k: int = 30) -> tuple[torch.Tensor, list[int]]:
    gen = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(n, k, generator=gen, dtype=torch.float64)
    classes = sorted(torch.randperm(k, generator=gen)[: 1 + seed % 7].tolist())
    return logits, classes


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 1000), st.floats(1.0, 10.0))
def test_targets_are_distributions_that_keep_the_aggregated_arg_max(seed: int, temperature: float) -> None:
    logits, classes = _case(seed)
    soft = specialist_soft_targets(logits, classes, temperature)
    assert soft.shape == (logits.shape[0], len(classes) + 1)
    assert torch.allclose(soft.sum(-1), torch.ones(logits.shape[0], dtype=torch.float64))
    # softening after aggregating is monotone: the most probable of (classes, dustbin) is kept
    aggregated = aggregate_to_specialist(torch.softmax(logits, -1), classes)
    assert torch.equal(soft.argmax(-1), aggregated.argmax(-1))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 1000), st.floats(0.01, 0.9), st.sampled_from([1.0, 0.5, 3.0]))
def test_at_temperature_one_the_prior_shift_is_exactly_undone_by_the_correction(seed: int, fraction: float, outside_ratio: float) -> None:
    logits, classes = _case(seed)
    aggregated = aggregate_to_specialist(torch.softmax(logits, -1), classes)
    assert torch.allclose(specialist_soft_targets(logits, classes, 1.0), aggregated)
    shifted = torch.log(specialist_soft_targets(logits, classes, 1.0, fraction, outside_ratio))
    shifted[:, -1] += dustbin_prior_correction(fraction, outside_ratio)
    assert torch.allclose(torch.softmax(shifted, -1), aggregated)


def test_many_small_classes_do_not_inflate_the_dustbin() -> None:
    # one specialist class at logit 0, 400 others at -5: the generalist gives the dustbin 73%;
    # summing the classes' probabilities softened at T=2 would give it 97%
    logits = torch.cat([torch.zeros(1, 1), torch.full((1, 400), -5.0)], dim=-1).double()
    p_dustbin = 1.0 - float(torch.softmax(logits, -1)[0, 0])
    assert p_dustbin == pytest.approx(0.73, abs=0.01)
    naive = float(aggregate_to_specialist(torch.softmax(logits / 2.0, -1), [0])[0, -1])
    ours = float(specialist_soft_targets(logits, [0], 2.0)[0, -1])
    assert naive > 0.96 and 0.5 < ours < p_dustbin
    assert ours == pytest.approx(1.0 / (1.0 + np.sqrt((1.0 - p_dustbin) / p_dustbin)))


def test_temperature_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        specialist_soft_targets(torch.zeros(2, 5), [1, 2], 0.0)
