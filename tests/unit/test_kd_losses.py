"""Tests for asr_kd.kd.losses: the distillation objective of Hinton et al. (2015), section 2."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.errors import ConfigError
from asr_kd.kd.losses import distillation_loss, logit_matching_loss, soft_cross_entropy, soften




pytestmark = pytest.mark.usefixtures("one_torch_thread")

def _logits(seed: int, rows: int, classes: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(rows, classes, generator=g, dtype=torch.float64)


def _grad(fn, z: torch.Tensor) -> torch.Tensor:
    z = z.clone().requires_grad_(True)
    fn(z).backward()
    return z.grad


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(1, 6),
    classes=st.integers(2, 12),
    temperature=st.floats(0.5, 30.0),
)
def test_soft_term_has_zero_gradient_when_student_equals_teacher(seed, rows, classes, temperature):
    v = _logits(seed, rows, classes, scale=3.0)
    p = soften(v, temperature)
    grad = _grad(lambda z: distillation_loss(z, p, None, temperature, hard_weight=0.0), v)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), temperature=st.floats(0.5, 30.0))
def test_soften_is_a_distribution(seed, temperature):
    p = soften(_logits(seed, 4, 7, scale=5.0), temperature)
    assert torch.all(p > 0)
    assert torch.allclose(p.sum(-1), torch.ones(4, dtype=p.dtype))


def test_t_squared_scaling_keeps_gradient_magnitude_comparable():
    # Unscaled, the soft gradient shrinks like 1/T^2 (a factor ~100 from T=2 to T=20); with the
    # T^2 factor the two norms stay within a factor of 2 for logits of unit scale.
    for seed in range(10):
        z, v = _logits(seed, 8, 10), _logits(seed + 100, 8, 10)
        norms = {}
        for t in (2.0, 20.0):
            p = soften(v, t)
            norms[t] = _grad(lambda x: distillation_loss(x, p, None, t, hard_weight=0.0), z).norm().item()
            unscaled = _grad(lambda x: soft_cross_entropy(x, p, t), z).norm().item()
            assert unscaled == pytest.approx(norms[t] / t**2)
        ratio = norms[2.0] / norms[20.0]
        assert 0.5 < ratio < 2.0, ratio


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), classes=st.integers(3, 20))
def test_high_temperature_limit_of_section_2_1(seed, classes):
    # The paper's limit for the UNSCALED soft cross entropy of one row (so N = number of
    # classes): with zero-mean logits, dC/dz_i -> (z_i - v_i) / (N T^2) as T grows.
    z = _logits(seed, 1, classes, scale=2.0)
    v = _logits(seed + 1, 1, classes, scale=2.0)
    z, v = z - z.mean(), v - v.mean()
    t = 1000.0
    grad = _grad(lambda x: soft_cross_entropy(x, soften(v, t), t), z)
    limit = (z - v) / (classes * t**2)
    # the neglected terms are O(max|z| / T) relative to the limit
    assert (grad - limit).norm() <= 0.02 * limit.norm()
    # ... and the T^2-scaled loss's gradient approaches that of the logit regression divided by N
    scaled = _grad(lambda x: distillation_loss(x, soften(v, t), None, t, hard_weight=0.0), z)
    l2 = _grad(lambda x: logit_matching_loss(x, v), z) / classes
    assert (scaled - l2).norm() <= 0.02 * l2.norm()


def test_hand_computed_example():
    # Teacher logits (0, ln 3) at T=1 give p = (1/4, 3/4); a student with equal logits at T=2
    # gives q = (1/2, 1/2). Soft CE = -(1/4 ln 1/2 + 3/4 ln 1/2) = ln 2; scaled by T^2 = 4 ln 2.
    # Hard label 1 at T=1: CE = -ln(1/2) = ln 2, weight 0.5 -> total 4 ln 2 + 0.5 ln 2.
    z = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    p = soften(torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64), 1.0)
    assert torch.allclose(p, torch.tensor([[0.25, 0.75]], dtype=p.dtype))
    assert soft_cross_entropy(z, p, 2.0).item() == pytest.approx(math.log(2))
    total = distillation_loss(z, p, torch.tensor([1]), 2.0, hard_weight=0.5)
    assert total.item() == pytest.approx(4.5 * math.log(2))
    # d/dz of the unscaled soft CE at T: (q - p) / T = (1/2 - 1/4, 1/2 - 3/4) / 2
    grad = _grad(lambda x: soft_cross_entropy(x, p, 2.0), z)
    assert torch.allclose(grad, torch.tensor([[0.125, -0.125]], dtype=grad.dtype))
    assert logit_matching_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])).item() == pytest.approx(2.5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), hard_weight=st.floats(0.01, 2.0))
def test_hard_term_equals_cross_entropy(seed, hard_weight):
    z = _logits(seed, 6, 5, scale=2.0)
    labels = torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(seed))
    # soft_weight=0 leaves only the hard term
    got = distillation_loss(z, soften(z, 3.0), labels, 3.0, hard_weight=hard_weight, soft_weight=0.0)
    assert got.item() == pytest.approx(hard_weight * F.cross_entropy(z, labels).item())


def test_mask_excludes_rows_and_supports_sequences():
    z = _logits(1, 2 * 5, 4).reshape(2, 5, 4)
    v = _logits(2, 2 * 5, 4).reshape(2, 5, 4)
    labels = torch.randint(0, 4, (2, 5), generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    p = soften(v, 2.0)
    masked = distillation_loss(z, p, labels, 2.0, hard_weight=0.3, weight=mask)
    kept = distillation_loss(z[mask], p[mask], labels[mask], 2.0, hard_weight=0.3)
    assert masked.item() == pytest.approx(kept.item())
    # changing a padded row's logits changes neither the loss nor any gradient
    z2 = z.clone()
    z2[0, 4] += 10.0
    assert distillation_loss(z2, p, labels, 2.0, hard_weight=0.3, weight=mask).item() == pytest.approx(masked.item())
    grad = _grad(lambda x: distillation_loss(x, p, labels, 2.0, hard_weight=0.3, weight=mask), z)
    assert torch.all(grad[0, 3:] == 0)
    assert logit_matching_loss(z, v, weight=mask).item() == pytest.approx(logit_matching_loss(z[mask], v[mask]).item())
    # a negative label leaves that row out of the hard term only
    unlabelled = labels.clone()
    unlabelled[1, 0] = -1
    only_soft = distillation_loss(z[1:, :1], p[1:, :1], None, 2.0, hard_weight=0.0, reduction="sum")
    assert distillation_loss(z[1:, :1], p[1:, :1], unlabelled[1:, :1], 2.0, hard_weight=0.3, reduction="sum").item() == pytest.approx(only_soft.item())


def test_reductions_and_bad_arguments():
    z, v = _logits(5, 3, 4), _logits(6, 3, 4)
    p = soften(v, 1.0)
    rows = soft_cross_entropy(z, p, 1.0, reduction="none")
    assert rows.shape == (3,)
    assert soft_cross_entropy(z, p, 1.0, reduction="sum").item() == pytest.approx(rows.sum().item())
    with pytest.raises(ConfigError, match="temperature must be positive"):
        soften(z, 0.0)
    with pytest.raises(ConfigError, match="reduction"):
        soft_cross_entropy(z, p, 1.0, reduction="avg")
    with pytest.raises(ValueError, match="differ in shape"):
        soft_cross_entropy(z, p[:, :3], 1.0)
