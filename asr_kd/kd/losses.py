"""Knowledge-distillation losses (Hinton, Vinyals & Dean 2015, section 2).

All losses take logits of shape ``[..., K]`` (e.g. ``[N, K]`` for images or ``[B, T, K]`` for
speech frames); every leading position is one "row". An optional per-row ``weight`` of the
leading shape (e.g. a 0/1 padding mask for speech frames) scales each row's loss; with
``reduction="mean"`` the result is the weighted mean ``sum(w * loss) / sum(w)``, so masked rows
neither contribute to the loss nor dilute it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from asr_kd.errors import ConfigError

REDUCTIONS = ("mean", "sum", "none")


def soften(logits: Tensor, temperature: float) -> Tensor:
    """Return ``softmax(logits / temperature)`` over the last dimension (the softened targets)."""
    _check_temperature(temperature)
    return torch.softmax(logits / temperature, dim=-1)


def soft_cross_entropy(
    student_logits: Tensor,
    teacher_probs: Tensor,
    temperature: float,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Return the cross entropy ``-sum_k p_k log softmax(z / T)_k`` of the student's softened
    distribution against the teacher's probabilities ``p`` (already softened at ``T``), reduced
    over rows as ``reduction`` says. Not scaled by ``T^2``: :func:`distillation_loss` does that."""
    _check_temperature(temperature)
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher probs {tuple(teacher_probs.shape)} differ in shape")
    log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    per_row = -(teacher_probs * log_q).sum(dim=-1)
    return _reduce(per_row, weight, reduction)


def distillation_loss(
    student_logits: Tensor,
    teacher_probs: Tensor,
    hard_labels: Tensor | None,
    temperature: float,
    hard_weight: float,
    soft_weight: float = 1.0,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """Return the distillation objective of section 2:

    ``soft_weight * T^2 * CE(p_teacher(T), q_student(T)) + hard_weight * CE(y, q_student(1))``.

    The soft term is multiplied by ``T^2`` because its gradients scale as ``1/T^2``; the scaling
    keeps the relative contribution of hard and soft targets roughly unchanged when ``T`` is
    changed. ``hard_labels`` (integer classes of the leading shape) may be None for a soft-only
    loss; rows whose label is negative are left out of the hard term (e.g. unlabelled frames).
    ``weight`` is an optional per-row weight or 0/1 mask applied to both terms.
    """
    soft = soft_cross_entropy(student_logits, teacher_probs, temperature, reduction="none")
    per_row = (soft_weight * temperature**2) * soft
    if hard_labels is not None and hard_weight != 0.0:
        per_row = per_row + hard_weight * hard_cross_entropy(student_logits, hard_labels)
    return _reduce(per_row, weight, reduction)


def hard_cross_entropy(student_logits: Tensor, hard_labels: Tensor) -> Tensor:
    """Return the per-row cross entropy of the student at T = 1 against integer labels of the
    logits' leading shape; rows with a negative label (unlabelled) get zero."""
    if hard_labels.shape != student_logits.shape[:-1]:
        raise ValueError(f"hard labels {tuple(hard_labels.shape)} do not match logits {tuple(student_logits.shape)}")
    labelled = hard_labels >= 0
    hard = F.cross_entropy(
        student_logits.reshape(-1, student_logits.shape[-1]),
        hard_labels.clamp(min=0).reshape(-1).long(),
        reduction="none",
    ).reshape(hard_labels.shape)
    return torch.where(labelled, hard, torch.zeros_like(hard))


def logit_matching_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Return ``0.5 * sum_k (z_k - v_k)^2`` per row (the logit regression of Bucilua et al. 2006
    and Ba & Caruana 2014), reduced over rows. Section 2.1 of Hinton et al. shows that the
    ``T^2``-scaled soft cross entropy approaches this loss divided by the number of classes as
    ``T`` grows, when the logits of each row have zero mean."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in shape")
    per_row = 0.5 * (student_logits - teacher_logits).pow(2).sum(dim=-1)
    return _reduce(per_row, weight, reduction)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ConfigError(f"distillation temperature must be positive, got {temperature}")


def _reduce(per_row: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    """Apply the per-row ``weight`` and reduce: the weighted mean, the weighted sum or the rows."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"loss reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if weight is not None:
        if weight.shape != per_row.shape:
            raise ValueError(f"row weight {tuple(weight.shape)} does not match rows {tuple(per_row.shape)}")
        per_row = per_row * weight.to(per_row.dtype)
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    if weight is None:
        return per_row.mean()
    # clamp: an all-masked batch gives 0 rather than NaN
    return per_row.sum() / weight.to(per_row.dtype).sum().clamp(min=1e-12)
