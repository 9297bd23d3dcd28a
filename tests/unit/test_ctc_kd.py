"""Frame-level and sequence-level distillation for CTC: loss properties, spike misalignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.config import CtcConfig
from asr_kd.ctc.kd import (
    blank_frame_weights,
    ctc_loss,
    frame_kd_loss,
    CtcFrameKdLoss,
    CtcSequenceKdLoss,
    GuidedCtcLoss,
    guided_ctc_term,
    pseudo_labels,
    spike_misalignment,
    spikes,
    topk_to_dense,
    weighted_ctc_loss,
)
from asr_kd.errors import ConfigError
from asr_kd.kd.losses import distillation_loss


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _logits(seed: int, b: int = 2, t: int = 7, v: int = 5, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(b, t, v, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _grad(fn, z: torch.Tensor) -> torch.Tensor:
    z = z.clone().requires_grad_(True)
    fn(z).backward()
    return z.grad


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.5, 8.0), st.sampled_from(["include", "exclude", "downweight"]))
def test_zero_loss_and_gradient_when_student_equals_teacher(seed, temperature, blank) -> None:
    z = _logits(seed)
    teacher = torch.softmax(z / temperature, -1)
    mask = torch.ones(z.shape[:2], dtype=torch.bool)
    fn = lambda s: frame_kd_loss(s, teacher, mask, temperature, blank, 0.3)  # noqa: E731
    assert abs(float(fn(z))) < 1e-9
    assert _grad(fn, z).abs().max() < 1e-9


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.floats(0.5, 8.0))
def test_kl_is_positive_otherwise(seed_s, seed_t, temperature) -> None:
    if seed_s == seed_t:
        return
    s, t = _logits(seed_s), _logits(seed_t)
    mask = torch.ones(s.shape[:2], dtype=torch.bool)
    assert float(frame_kd_loss(s, torch.softmax(t / temperature, -1), mask, temperature)) > 0


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.5, 8.0))
def test_gradient_matches_the_hybrid_distillation_loss(seed, temperature) -> None:
    # With every frame included, the frame KL differs from the hybrid path's T^2-scaled soft cross
    # entropy by the teacher's entropy only: the same gradient, T^2 scaling included.
    s, t = _logits(seed), _logits(seed + 1)
    teacher = torch.softmax(t / temperature, -1)
    mask = torch.ones(s.shape[:2], dtype=torch.bool)
    ours = _grad(lambda z: frame_kd_loss(z, teacher, mask, temperature), s)
    hybrid = _grad(lambda z: distillation_loss(z, teacher, None, temperature, hard_weight=0.0), s)
    assert torch.allclose(ours, hybrid, atol=1e-10)


def test_t_squared_keeps_gradient_size_at_high_temperature() -> None:
    # Section 2.1: at high T the soft-target gradient is about (z - v) / (N T^2) per logit; the T^2
    # factor keeps it close to (z - v) / N for zero-mean logits, whatever T.
    s, t = _logits(0, scale=0.5), _logits(1, scale=0.5)
    s, t = s - s.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    mask = torch.ones(s.shape[:2], dtype=torch.bool)
    rows = s.shape[0] * s.shape[1]
    expected = (s - t) / s.shape[-1] / rows
    for temperature in (20.0, 50.0):
        g = _grad(lambda z: frame_kd_loss(z, torch.softmax(t / temperature, -1), mask, temperature), s)
        assert torch.allclose(g, expected, atol=0.05 * float(expected.abs().max()))


def _blank_heavy_teacher(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = _logits(seed)
    t[:, ::2, 0] += 20.0  # even frames: blank is the teacher's argmax
    t[:, 1::2, 0] -= 20.0
    return torch.softmax(t, -1), torch.ones(t.shape[:2], dtype=torch.bool)


def test_blank_exclusion_masks_blank_frames() -> None:
    teacher, mask = _blank_heavy_teacher(3)
    s = _logits(4)
    weights = blank_frame_weights(teacher, mask, "exclude")
    assert weights[:, ::2].sum() == 0 and (weights[:, 1::2] == 1).all()
    g = _grad(lambda z: frame_kd_loss(z, teacher, mask, 1.0, "exclude"), s)
    assert g[:, ::2].abs().max() == 0 and g[:, 1::2].abs().max() > 0
    # Changing the student on excluded frames does not change the loss.
    s2 = s.clone()
    s2[:, ::2] += torch.randn_like(s2[:, ::2])
    assert torch.isclose(frame_kd_loss(s, teacher, mask, 1.0, "exclude"), frame_kd_loss(s2, teacher, mask, 1.0, "exclude"))


def test_blank_downweighting_and_padding() -> None:
    teacher, mask = _blank_heavy_teacher(5)
    mask[1, 4:] = False
    w = blank_frame_weights(teacher, mask, "downweight", 0.25)
    assert torch.allclose(w[0, ::2], torch.full_like(w[0, ::2], 0.25))
    assert (w[0, 1::2] == 1).all() and (w[1, 4:] == 0).all()
    s = _logits(6)
    g = _grad(lambda z: frame_kd_loss(z, teacher, mask, 1.0, "downweight", 0.25), s)
    assert g[1, 4:].abs().max() == 0
    with pytest.raises(ConfigError, match="blank_handling"):
        blank_frame_weights(teacher, mask, "drop")


def test_topk_to_dense_places_the_stored_mass() -> None:
    ids = torch.tensor([[[2, 0]], [[1, 3]]])
    probs = torch.tensor([[[0.75, 0.25]], [[0.5, 0.5]]])
    dense = topk_to_dense(ids, probs, 4)
    assert dense.shape == (2, 1, 4)
    assert dense[0, 0].tolist() == [0.25, 0.0, 0.75, 0.0] and dense[1, 0].tolist() == [0.0, 0.5, 0.0, 0.5]


def test_weighted_ctc_loss_with_one_hypothesis_is_the_ctc_loss() -> None:
    logits = _logits(7, b=2, t=9, v=4).float()
    lengths = torch.tensor([9, 7])
    targets, target_lengths = torch.tensor([1, 2, 3, 2, 2]), torch.tensor([3, 2])
    plain = ctc_loss(logits, lengths, targets, target_lengths)
    weighted = weighted_ctc_loss(logits, lengths, targets, target_lengths, torch.ones(2, 1))
    assert torch.isclose(plain, weighted)
    # Two hypotheses per utterance, the second with weight 0: the second changes nothing.
    targets2 = torch.tensor([1, 2, 3, 1, 2, 2, 3])
    weighted2 = weighted_ctc_loss(logits, lengths, targets2, torch.tensor([3, 1, 2, 1]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.isclose(plain, weighted2)
    reference = F.ctc_loss(torch.log_softmax(logits, -1).transpose(0, 1), targets, lengths, target_lengths, reduction="none")
    assert torch.isclose(plain, (reference / target_lengths).mean())


def test_pseudo_labels_greedy_and_nbest() -> None:
    lp = np.log(np.array([[0.6, 0.4], [0.6, 0.4]]))
    assert pseudo_labels(lp, "greedy") == [([], 1.0)]
    nbest = pseudo_labels(lp, "nbest", nbest=2, beam_size=4)
    assert [h for h, _ in nbest] == [[1], []]
    assert math.isclose(sum(w for _, w in nbest), 1.0) and math.isclose(nbest[0][1], 0.64)
    with pytest.raises(ConfigError):
        pseudo_labels(lp, "sample")


def _spiky(path: list[int], v: int = 4) -> np.ndarray:
    return np.log(np.eye(v)[path] * 0.97 + 0.01)


def test_spikes_and_misalignment_measure_offsets() -> None:
    a = _spiky([0, 1, 0, 0, 2, 0, 3, 3, 0, 0])
    b = _spiky([0, 0, 0, 1, 0, 0, 2, 0, 0, 3])  # the same labels, spikes 2, 2 and 3 frames later
    assert spikes(a) == [(1, 1), (2, 4), (3, 6)]
    same = spike_misalignment([[a], [a]])
    assert same["mean_spike_offset_frames"] == 0 and same["argmax_disagreement"] == 0 and same["spikes_matched"] == 1
    moved = spike_misalignment([[a], [b]])
    assert math.isclose(moved["mean_spike_offset_frames"], (2 + 2 + 3) / 3)
    assert moved["spikes_matched"] == 1 and moved["argmax_disagreement"] > 0
    # An extra label in one model: three matched spikes out of four.
    c = _spiky([0, 1, 0, 0, 2, 0, 3, 0, 1, 0])
    extra = spike_misalignment([[a], [c]])
    assert extra["spikes_matched"] == 0.75 and extra["mean_spike_offset_frames"] == 0
    with pytest.raises(ConfigError):
        spike_misalignment([[a]])


def test_ctc_config_validates() -> None:
    assert CtcConfig().kd_mode == "frame"
    for bad in ({"units": "chars"}, {"blank_handling": "drop"}, {"guide_weight": -1.0}, {"nbest": 5, "beam_size": 2}, {"kd_weight": 0, "ctc_weight": 0}, {"subsampling": 3}):
        with pytest.raises(ConfigError):
            CtcConfig(**bad)


def test_guided_term_is_zero_on_the_guides_spikes_and_ignores_blank_and_padding() -> None:
    guide = torch.tensor([[0, 2, 0, 3, 3, 0], [0, 0, 1, 0, 2, 2]])
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])  # utterance 2: the 2s are padding
    # A model that is certain of the guide's token on every frame (blank included).
    logits = torch.full((2, 6, 5), -30.0).scatter(-1, guide.unsqueeze(-1), 30.0)
    assert float(guided_ctc_term(logits, guide, mask)) < 1e-6
    # Certain of blank everywhere: every guide spike is missed -> 1.
    blank = torch.full((2, 6, 5), -30.0)
    blank[..., 0] = 30.0
    assert math.isclose(float(guided_ctc_term(blank, guide, mask)), 1.0, abs_tol=1e-6)
    # Only blank frames, padding and other tokens differ: still 0.
    other = logits.clone()
    other[0, 0] = torch.tensor([-30.0, 30.0, -30.0, -30.0, -30.0])  # a guide-blank frame
    other[1, 5] = torch.tensor([-30.0, -30.0, -30.0, 30.0, -30.0])  # padding
    assert float(guided_ctc_term(other, guide, mask)) < 1e-6
    # No guide spike at all: 0, not NaN.
    assert float(guided_ctc_term(blank, torch.zeros_like(guide), mask)) == 0.0
    with pytest.raises(ConfigError, match="subsampling"):
        guided_ctc_term(logits[:, :5], guide, mask)


def test_guided_term_moves_spikes_onto_the_guides_frames() -> None:
    # Free logits whose spikes sit two frames late, pulled by the guided term alone.
    guide = torch.tensor([[0, 1, 0, 0, 2, 0, 0, 3, 0, 0]])
    late = torch.tensor([[0, 0, 0, 1, 0, 0, 2, 0, 0, 3]])
    logits = (torch.nn.functional.one_hot(late, 4).float() * 4.0).requires_grad_(True)
    mask = torch.ones(1, 10, dtype=torch.bool)
    opt = torch.optim.SGD([logits], lr=5.0)
    start = float(guided_ctc_term(logits, guide, mask).detach())
    for _ in range(50):
        opt.zero_grad()
        guided_ctc_term(logits, guide, mask).backward()
        opt.step()
    assert float(guided_ctc_term(logits, guide, mask).detach()) < 0.2 * start
    argmax = logits.argmax(-1)
    assert argmax[guide != 0].tolist() == [1, 2, 3]


def test_guided_ctc_loss_adds_the_weighted_term_to_ctc() -> None:
    from asr_kd.ctc.model import CtcEncoder

    torch.manual_seed(0)
    guide, model = CtcEncoder(20, 6, "tiny", dropout=0.0).eval(), CtcEncoder(20, 6, "tiny", dropout=0.0).eval()
    batch = {"features": torch.randn(2, 80, 20), "lengths": torch.tensor([80, 60]),
             "targets": torch.tensor([1, 2, 3, 4, 5]), "target_lengths": torch.tensor([3, 2])}
    loss0, m0 = GuidedCtcLoss(guide, 0.0)(model, batch)
    loss2, m2 = GuidedCtcLoss(guide, 2.0)(model, batch)
    loss0, loss2 = loss0.detach(), loss2.detach()
    assert torch.allclose(loss0, m0["ctc_loss"]) and torch.allclose(m0["guide_loss"], m2["guide_loss"])
    assert math.isclose(float(loss2), float(m2["ctc_loss"] + 2.0 * m2["guide_loss"]), rel_tol=1e-5)
    assert not any(p.requires_grad for p in guide.parameters())
    # Guided by itself, the term is 1 - the mean arg-max posterior over each utterance's non-blank arg-max frames.
    _, same = GuidedCtcLoss(model, 1.0)(model, batch)
    with torch.no_grad():
        probs = model(batch["features"], batch["lengths"]).softmax(-1)
    top, arg = probs.max(-1)
    keep = (arg != 0) & (torch.arange(probs.shape[1])[None] < model.output_lengths(batch["lengths"])[:, None])
    expected = torch.stack([1 - top[i][keep[i]].mean() for i in range(2) if keep[i].any()]).mean()
    assert math.isclose(float(same["guide_loss"]), float(expected), rel_tol=1e-5)


def test_losses_take_bf16_logits_from_autocast() -> None:
    # On a GPU the forward pass runs under bf16 autocast (train.amp=bf16); every CTC loss must
    # compute in float32 from bf16 logits. CPU autocast gives bf16 logits too, so it checks the
    # losses' dtype handling here: finite, close to the float32 values, gradients reach the model.
    from asr_kd.ctc.model import CtcEncoder
    from asr_kd.kd.ensemble import TeacherEnsemble

    torch.manual_seed(0)
    model, teacher = CtcEncoder(20, 6, "tiny", dropout=0.0), CtcEncoder(20, 6, "tiny", dropout=0.0).eval()
    batch = {"features": torch.randn(2, 80, 20), "lengths": torch.tensor([80, 60]),
             "targets": torch.tensor([1, 2, 3, 4, 5]), "target_lengths": torch.tensor([3, 2]),
             "pseudo_targets": torch.tensor([1, 2, 3, 4, 5]), "pseudo_lengths": torch.tensor([3, 2]),
             "pseudo_weights": torch.ones(2, 1)}
    cfg = CtcConfig(model_size="tiny", temperature=2.0)
    losses = {"frame": CtcFrameKdLoss(cfg, TeacherEnsemble([teacher], "arithmetic")), "sequence": CtcSequenceKdLoss(cfg),
              "guided": GuidedCtcLoss(teacher, 1.0)}
    for name, loss_fn in losses.items():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(batch["features"], batch["lengths"]).dtype == torch.bfloat16
            low, _ = loss_fn(model, batch)
        low.backward()
        assert low.dtype == torch.float32 and math.isfinite(float(low.detach())), name
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad), name
        full, _ = loss_fn(model, batch)
        assert math.isclose(float(low.detach()), float(full.detach()), rel_tol=0.05, abs_tol=0.02), (name, float(low), float(full))


def test_stored_frame_kd_reads_dense_targets_as_their_top_k_form() -> None:
    # Codes decoded to every token come dense (soft_ids None, data.stored_targets): the same loss
    # as the same probabilities given as k = V ids, also when the targets are a frame short of T'.
    from asr_kd.ctc.model import CtcEncoder

    torch.manual_seed(0)
    model = CtcEncoder(20, 6, "tiny", dropout=0.0)
    features, lengths = torch.randn(2, 80, 20), torch.tensor([80, 60])
    frames = model(features, lengths).shape[1]
    probs = torch.softmax(torch.randn(2, frames - 1, 6), dim=-1)
    batch = {"features": features, "lengths": lengths, "targets": torch.tensor([1, 2, 3, 4, 5]), "target_lengths": torch.tensor([3, 2])}
    loss_fn = CtcFrameKdLoss(CtcConfig(model_size="tiny", temperature=2.0, kd_source="stored"))
    sparse, _ = loss_fn(model, {**batch, "soft_ids": torch.arange(6).expand(2, frames - 1, 6), "soft_probs": probs})
    dense, _ = loss_fn(model, {**batch, "soft_ids": None, "soft_probs": probs})
    shuffled = torch.randperm(6)
    permuted, _ = loss_fn(model, {**batch, "soft_ids": shuffled.expand(2, frames - 1, 6), "soft_probs": probs[..., shuffled]})
    assert torch.allclose(dense, sparse) and torch.allclose(dense, permuted)
    other, _ = loss_fn(model, {**batch, "soft_ids": None, "soft_probs": probs.flip(-1)})
    assert not torch.allclose(dense, other)  # the dense targets are read, not ignored
