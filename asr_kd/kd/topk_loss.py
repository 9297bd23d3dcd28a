"""The distillation loss on top-k soft targets (the sparse form of ``asr_kd.kd.losses``).

Stored soft targets give, for each frame, ``k`` class ids and their probabilities (zero
elsewhere). The soft cross entropy then needs the student's log-probabilities at those ids only:
``-sum_j p_j log softmax(z / T)[ids_j]``, computed with a gather instead of a dense
``[rows, C]`` target. With ``k = C`` (or any ``k``, against the expanded top-k distribution) it
equals :func:`asr_kd.kd.losses.soft_cross_entropy`, gradients included.

Shapes: ``student_logits`` ``[..., C]`` (e.g. ``[N, C]`` or ``[B, T, C]``), ``ids`` and ``probs``
``[..., k]``; ``mask`` is an optional per-row weight or 0/1 padding mask of the leading shape,
with the reductions of :mod:`asr_kd.kd.losses` (``"mean"`` is the mask-weighted mean).
"""

from __future__ import annotations

import torch
from torch import Tensor

from asr_kd.kd.losses import _check_temperature, _reduce, hard_cross_entropy


def topk_soft_cross_entropy(
    student_logits: Tensor,
    ids: Tensor,
    probs: Tensor,
    temperature: float,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Return ``-sum_j probs_j * log softmax(student_logits / T)[ids_j]`` per row, reduced as
    ``reduction`` says. Not scaled by ``T^2`` (:func:`topk_distillation_loss` does that).
    ``probs`` may be float16 (as stored); they are used in the logits' precision."""
    _check_temperature(temperature)
    if ids.shape != probs.shape or ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"top-k ids {tuple(ids.shape)} and probs {tuple(probs.shape)} must be [..., k] with the rows of the logits {tuple(student_logits.shape)}"
        )
    log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    log_q_at_ids = torch.gather(log_q, -1, ids.long())
    per_row = -(probs.to(log_q.dtype) * log_q_at_ids).sum(dim=-1)
    return _reduce(per_row, mask, reduction)


def topk_distillation_loss(
    student_logits: Tensor,
    ids: Tensor,
    probs: Tensor,
    hard_labels: Tensor | None,
    temperature: float,
    hard_weight: float,
    soft_weight: float = 1.0,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Return ``soft_weight * T^2 * CE(top-k targets, q_student(T)) + hard_weight *
    CE(hard_labels, q_student(1))``, the objective of
    :func:`asr_kd.kd.losses.distillation_loss` with top-k soft targets.

    ``hard_labels`` (integers of the leading shape) may be None for a soft-only loss; rows with a
    negative label are left out of the hard term. ``mask`` weights both terms per row.
    """
    soft = topk_soft_cross_entropy(student_logits, ids, probs, temperature, reduction="none")
    per_row = (soft_weight * temperature**2) * soft
    if hard_labels is not None and hard_weight != 0.0:
        per_row = per_row + hard_weight * hard_cross_entropy(student_logits, hard_labels)
    return _reduce(per_row, mask, reduction)
