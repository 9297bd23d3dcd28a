"""Tests for asr_kd.kd.ensemble: fusion of the teachers' posteriors (arithmetic and geometric)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.errors import ConfigError
from asr_kd.kd.ensemble import TeacherEnsemble, fuse_log_probs, fuse_logits, mean_logits
from asr_kd.models.mlp import MLP

FUSIONS = ("arithmetic", "geometric")


def _logits(seed: int, *shape: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 5), rows=st.integers(1, 6), classes=st.integers(2, 30),
       fusion=st.sampled_from(FUSIONS))
def test_identical_teachers_fuse_to_each_teacher(seed, n, rows, classes, fusion):
    log_p = torch.log_softmax(_logits(seed, rows, classes), dim=-1)
    fused = fuse_log_probs(log_p.expand(n, rows, classes), fusion)
    assert torch.allclose(fused, log_p, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), classes=st.integers(2, 40), fusion=st.sampled_from(FUSIONS),
       temperature=st.floats(0.3, 20.0))
def test_fused_posteriors_are_normalised_distributions(seed, n, classes, fusion, temperature):
    fused = fuse_logits(_logits(seed, n, 2, 3, classes, scale=8.0), temperature, fusion)
    assert fused.shape == (2, 3, classes)
    assert torch.allclose(fused.exp().sum(-1), torch.ones(2, 3, dtype=fused.dtype), atol=1e-12)
    assert torch.all(fused <= 1e-12)


def test_arithmetic_fusion_is_the_mean_of_probabilities():
    z = _logits(1, 4, 7, 50)
    fused = fuse_logits(z, temperature=2.0, fusion="arithmetic")
    expected = torch.softmax(z / 2.0, dim=-1).mean(dim=0)
    assert torch.allclose(fused.exp(), expected, atol=1e-14)


def test_geometric_fusion_of_softened_logits_is_softmax_of_mean_logit():
    z = _logits(2, 5, 9, 40)
    for t in (1.0, 3.0):
        fused = fuse_logits(z, temperature=t, fusion="geometric")
        assert torch.allclose(fused, torch.log_softmax(mean_logits(z) / t, dim=-1), atol=1e-12)


def test_arithmetic_fusion_keeps_tiny_posteriors_exact():
    # exp(-800) underflows in float64; the log-sum-exp fusion must still give log(mean).
    log_p = torch.tensor([[[0.0, -800.0]], [[0.0, -802.0]]], dtype=torch.float64)
    log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
    fused = fuse_log_probs(log_p, "arithmetic")
    expected = -800.0 + math.log((1 + math.exp(-2.0)) / 2)
    assert torch.isfinite(fused).all()
    assert fused[0, 1].item() == pytest.approx(expected, abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 6), classes=st.integers(2, 30))
def test_arithmetic_ensemble_is_at_least_as_uncertain_as_its_teachers_on_average(seed, n, classes):
    # Entropy is concave: H(mean p_i) >= mean H(p_i).
    log_p = torch.log_softmax(_logits(seed, n, 4, classes), dim=-1)
    fused = fuse_log_probs(log_p, "arithmetic")

    def entropy(lp: torch.Tensor) -> torch.Tensor:
        return -(lp.exp() * lp).sum(-1)

    assert torch.all(entropy(fused) >= entropy(log_p).mean(0) - 1e-12)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_ignores_teacher_order_and_accepts_a_list(fusion):
    log_p = torch.log_softmax(_logits(3, 4, 6, 11), dim=-1)
    fused = fuse_log_probs(log_p, fusion)
    assert torch.allclose(fuse_log_probs(log_p[[2, 0, 3, 1]], fusion), fused, atol=1e-12)
    assert torch.equal(fuse_log_probs(list(log_p), fusion), fused)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_masked_frames_of_a_padded_batch_are_uniform_and_isolated(fusion):
    n, b, t, c = 3, 2, 5, 8
    z = _logits(4, n, b, t, c)
    lengths = torch.tensor([5, 2])
    mask = torch.arange(t)[None, :] < lengths[:, None]
    garbage = z.clone()
    garbage[:, 1, 2:] = float("nan")  # padding may hold anything
    garbage[0, 1, 3, 0] = float("inf")
    fused = fuse_logits(garbage, temperature=2.0, fusion=fusion, mask=mask)
    assert torch.isfinite(fused).all()
    assert torch.allclose(fused[~mask], torch.full((int((~mask).sum()), c), -math.log(c), dtype=fused.dtype))
    unmasked = fuse_logits(z, temperature=2.0, fusion=fusion)
    assert torch.allclose(fused[mask], unmasked[mask], atol=1e-12)
    # Each valid frame depends on that frame only: the (frames x classes) form gives the same.
    flat = fuse_logits(z[:, 0], temperature=2.0, fusion=fusion)
    assert torch.allclose(fused[0], flat, atol=1e-12)


def test_mean_logits_zeroes_masked_rows():
    z = _logits(5, 3, 2, 4, 6)
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    out = mean_logits(z, mask)
    assert torch.equal(out[~mask], torch.zeros(int((~mask).sum()), 6, dtype=out.dtype))
    assert torch.allclose(out[mask], z.mean(0)[mask])


def test_bad_inputs_raise_clear_errors():
    z = _logits(6, 2, 3, 4)
    with pytest.raises(ConfigError, match="fusion"):
        fuse_logits(z, fusion="harmonic")
    with pytest.raises(ConfigError, match="temperature"):
        fuse_logits(z, temperature=0.0)
    with pytest.raises(ValueError, match="mask"):
        fuse_logits(z, mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        fuse_log_probs([z[0], z[1, :2]])
    with pytest.raises(ConfigError, match="at least one teacher"):
        TeacherEnsemble([])


def _teachers(num: int, dropout: float) -> list[MLP]:
    out = []
    for seed in range(num):
        torch.manual_seed(seed)  # teachers that differ only in their seed, as in the paper
        out.append(MLP(12, (16,), 9, dropout=dropout))
    return out


@pytest.mark.parametrize("fusion", FUSIONS)
def test_teacher_ensemble_fuses_frozen_teachers_in_eval_mode(fusion):
    teachers = _teachers(3, dropout=0.5)
    ensemble = TeacherEnsemble(teachers, fusion)
    parent = torch.nn.Sequential(ensemble)
    parent.train()  # a student's training mode must not switch the teachers' dropout on
    assert not any(t.training for t in teachers)
    x = torch.randn(2, 7, 12)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    out = ensemble(x, temperature=2.0, mask=mask)
    assert torch.equal(out, ensemble(x, temperature=2.0, mask=mask))  # no dropout: deterministic
    with torch.no_grad():
        expected = fuse_logits([t(x) for t in teachers], 2.0, fusion, mask)
    assert torch.allclose(out, expected)
    assert not out.requires_grad
    assert all(not p.requires_grad for p in ensemble.parameters())
    assert ensemble.teacher_logits(x).shape == (3, 2, 7, 9)


def test_the_inference_device_comes_from_the_argument_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from asr_kd.kd.ensemble import INFERENCE_DEVICE_ENV, inference_device

    monkeypatch.delenv(INFERENCE_DEVICE_ENV, raising=False)
    assert inference_device() == torch.device("cpu")
    monkeypatch.setenv(INFERENCE_DEVICE_ENV, "auto")
    assert inference_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert inference_device("cpu") == torch.device("cpu")  # an explicit device wins
    monkeypatch.setenv(INFERENCE_DEVICE_ENV, "tpu")
    with pytest.raises(ConfigError, match="ASR_KD_INFERENCE_DEVICE must be auto, cpu or cuda, got 'tpu'"):
        inference_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv(INFERENCE_DEVICE_ENV, "cuda")
        with pytest.raises(ConfigError, match=r"ASR_KD_INFERENCE_DEVICE=cuda \(run.sh --device cuda\) but no CUDA device is visible"):
            inference_device()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_ensemble_log_posteriors_give_each_cut_its_own_frames_wherever_it_is_batched(tmp_path, fusion) -> None:
    # Stage 5, 7 and 8 read the teachers through ensemble_log_posteriors; the CTC models share its batching
    # (score_cuts). A cut's posteriors must not depend on the cuts padded into its batch.
    from asr_kd.kd.ensemble import ensemble_log_posteriors
    from asr_kd.models.dnn import SplicedDnn, dnn_preset
    from tests.unit.test_ctc_model import _cuts_of_lengths

    cuts = _cuts_of_lengths(tmp_path, [57, 120, 33])
    torch.manual_seed(0)
    teachers = [SplicedDnn(dnn_preset("tiny"), 60).eval() for _ in range(2)]
    batched = list(ensemble_log_posteriors(teachers, cuts, None, 2.0, fusion, 20.0, "cpu"))
    alone = [lp for cut in cuts for _, lp in ensemble_log_posteriors(teachers, [cut], None, 2.0, fusion, 20.0, "cpu")]
    assert [c.id for c, _ in batched] == [c.id for c in cuts]
    assert [tuple(lp.shape) for _, lp in batched] == [(57, 60), (120, 60), (33, 60)]
    assert max(float((lp - a).abs().max()) for (_, lp), a in zip(batched, alone)) < 1e-5
    assert max(float(torch.logsumexp(lp, -1).abs().max()) for _, lp in batched) < 1e-4  # distributions, padding unused
    kept = list(ensemble_log_posteriors(teachers, cuts, None, 2.0, fusion, 20.0, "cpu", on_device=True))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(kept, batched))
    with pytest.raises(ConfigError, match="per-utterance CMVN"):  # refused when called, before any batch is scored
        teachers[0].input_normalization = "utterance"
        ensemble_log_posteriors(teachers, cuts, None)
