"""The distillation loss on top-k soft targets (the sparse form of ``asr_kd.kd.losses``).

Stored soft targets give, for each frame, ``k`` class ids and their probabilities (zero
elsewhere). The soft cross entropy then needs the student's log-probabilities at those ids only:
``-sum_j p_j log softmax(z / T)[ids_j]``, computed with a gather instead of a dense
``[rows, C]`` target. With ``k = C`` (or any ``k``, against the expanded top-k distribution) it
equals :func:`asr_kd.kd.losses.soft_cross_entropy`, gradients included.

Shapes: ``student_logits`` ``[..., C]`` (e.g. ``[N, C]`` or ``[B, T, C]``), ``ids`` and ``probs``
``[..., k]``, or ``ids`` None and ``probs`` ``[..., C]`` in class order (dense targets: codes
decoded to every senone, :mod:`asr_kd.data.stored_targets`); ``mask`` is an optional per-row weight or 0/1 padding mask of the leading shape,
with the reductions of :mod:`asr_kd.kd.losses` (``"mean"`` is the mask-weighted mean).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from asr_kd.kd.losses import _check_temperature, _reduce, hard_cross_entropy


def _check_topk_inputs(student_logits: Tensor, ids: Tensor | None, probs: Tensor, temperature: float) -> None:
    _check_temperature(temperature)
    if ids is None:
        if probs.shape != student_logits.shape:
            raise ValueError(f"dense targets {tuple(probs.shape)} must have the shape of the logits {tuple(student_logits.shape)}")
    elif ids.shape != probs.shape or ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"top-k ids {tuple(ids.shape)} and probs {tuple(probs.shape)} must be [..., k] with the rows of the logits {tuple(student_logits.shape)}"
        )


def topk_soft_cross_entropy(
    student_logits: Tensor,
    ids: Tensor | None,
    probs: Tensor,
    temperature: float,
    mask: Tensor | None = None,
    reduction: str = "mean",
    bucket: bool = False,
) -> Tensor:
    """Return ``-sum_j probs_j * log softmax(student_logits / T)[ids_j]`` per row, reduced as
    ``reduction`` says. Not scaled by ``T^2`` (:func:`topk_distillation_loss` does that).
    ``probs`` may be float16 (as stored); they are used in the logits' precision.

    ``bucket`` (``kd.tail=bucket``): ``probs`` are the teachers' own and ``r = 1 - sum_j probs_j``
    is the mass of every other class, one more target: ``- r * log(1 - sum_j q_j)``, ``q`` the
    student's softmax at T, so the student matches the kept probabilities and the rest's total."""
    _check_topk_inputs(student_logits, ids, probs, temperature)
    log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    log_q_at_ids = log_q if ids is None else torch.gather(log_q, -1, ids.long())
    p = probs.to(log_q.dtype)
    per_row = -(p * log_q_at_ids).sum(dim=-1)
    if bucket and ids is not None and ids.shape[-1] < student_logits.shape[-1]:  # with every class kept there is no rest
        rest = (1.0 - p.sum(dim=-1)).clamp(min=0.0)
        log_q_rest = torch.logsumexp(log_q.scatter(-1, ids.long(), float("-inf")), dim=-1)
        per_row = per_row - torch.where(rest > 0, rest * log_q_rest, torch.zeros_like(rest))
    return _reduce(per_row, mask, reduction)


def topk_distillation_loss(
    student_logits: Tensor,
    ids: Tensor | None,
    probs: Tensor,
    hard_labels: Tensor | None,
    temperature: float,
    hard_weight: float,
    soft_weight: float = 1.0,
    mask: Tensor | None = None,
    reduction: str = "mean",
    bucket: bool = False,
) -> Tensor:
    """Return ``soft_weight * T^2 * CE(top-k targets, q_student(T)) + hard_weight *
    CE(hard_labels, q_student(1))``, the objective of
    :func:`asr_kd.kd.losses.distillation_loss` with top-k soft targets (``bucket``: the rest of
    the mass as one more target, :func:`topk_soft_cross_entropy`).

    ``hard_labels`` (integers of the leading shape) may be None for a soft-only loss; rows with a
    negative label are left out of the hard term. ``mask`` weights both terms per row.
    """
    soft = topk_soft_cross_entropy(student_logits, ids, probs, temperature, reduction="none", bucket=bucket)
    per_row = (soft_weight * temperature**2) * soft
    if hard_labels is not None and hard_weight != 0.0:
        per_row = per_row + hard_weight * hard_cross_entropy(student_logits, hard_labels)
    return _reduce(per_row, mask, reduction)


def fused_topk_distillation_loss(
    student_logits: Tensor,
    ids: Tensor | None,
    probs: Tensor,
    hard_labels: Tensor | None,
    temperature: float,
    hard_weight: float,
    soft_weight: float = 1.0,
    mask: Tensor | None = None,
    bucket: bool = False,
) -> Tensor:
    """:func:`topk_distillation_loss` with ``reduction="mean"``, the same value and gradient, in
    one autograd node: both softmaxes (at T and at 1; one at T = 1) are computed once in place and
    the gradient is written from them directly (``T * soft_weight * (psum * softmax(z/T) - p) +
    hard_weight * (softmax(z) - onehot)`` per row; with ``bucket`` also ``T * soft_weight * r *
    (softmax(z/T) - softmax of z/T over the classes outside the ids)``), where autograd would build
    and walk a dozen ``[rows, C]`` tensors. On 'mini' the loss is a large share of a small
    network's step (bench/kd_speed.py). Dense targets (``ids`` None) need neither the gather nor
    the scatter. Computed in float32 at least (float16 logits are cast). Not twice differentiable."""
    _check_topk_inputs(student_logits, ids, probs, temperature)
    if mask is not None and mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"row weight {tuple(mask.shape)} does not match rows {tuple(student_logits.shape[:-1])}")
    num_classes, k = student_logits.shape[-1], probs.shape[-1]
    rows = student_logits.reshape(-1, num_classes)
    if rows.dtype in (torch.float16, torch.bfloat16):  # sums over every row and class: not in half precision
        rows = rows.float()
    weight = torch.ones(rows.shape[0], dtype=rows.dtype, device=rows.device) if mask is None else mask.reshape(-1).to(rows.dtype)
    use_hard = hard_labels is not None and hard_weight != 0.0
    if use_hard and hard_labels.shape != student_logits.shape[:-1]:
        raise ValueError(f"hard labels {tuple(hard_labels.shape)} do not match logits {tuple(student_logits.shape)}")
    labels = hard_labels.reshape(-1) if use_hard else None
    flat_ids = None if ids is None else ids.reshape(-1, k).long()
    return _FusedTopkDistillation.apply(rows, flat_ids, probs.reshape(-1, k), labels, weight,
                                        float(temperature), float(soft_weight), float(hard_weight),
                                        bool(bucket) and k < num_classes)  # with every class kept there is no rest


def _softmax_and_logsumexp(z: Tensor, scale: float, in_place: bool = False) -> tuple[Tensor, Tensor]:
    """Return ``(softmax(scale * z), logsumexp(scale * z))`` over the last dimension of ``z``
    ``[rows, C]``, with one new ``[rows, C]`` tensor (none with ``in_place``: ``z`` becomes the
    softmax)."""
    e = z.mul_(scale) if in_place else z * scale if scale != 1.0 else z.clone()
    top = e.amax(dim=-1, keepdim=True)
    e.sub_(top).exp_()
    total = e.sum(dim=-1, keepdim=True)
    return e.div_(total), (top + total.log()).squeeze(-1)


class _FusedTopkDistillation(torch.autograd.Function):
    """The node of :func:`fused_topk_distillation_loss` (rows flattened)."""

    @staticmethod
    def forward(ctx, z: Tensor, ids: Tensor | None, probs: Tensor, labels: Tensor | None, weight: Tensor,  # type: ignore[override]
                temperature: float, soft_weight: float, hard_weight: float, bucket: bool) -> Tensor:
        z = z.detach()
        p = probs.to(z.dtype)
        psum = p.sum(dim=-1)
        soft_t, lse_t = _softmax_and_logsumexp(z, 1.0 / temperature)
        # -sum_j p_j log softmax(z/T)_j = psum * logsumexp(z/T) - sum_j p_j z_j / T, scaled by T^2.
        z_at_ids = z if ids is None else z.gather(-1, ids)
        soft_rows = psum * lse_t - (p * z_at_ids).sum(dim=-1) / temperature
        rest = rest_soft = None
        if bucket:  # - r log(sum of q outside the ids) = r * (logsumexp(z/T) - logsumexp(z/T outside the ids))
            rest = (1.0 - psum).clamp(min=0.0)
            outside = z.scatter(-1, ids, float("-inf"))
            rest_soft, lse_rest = _softmax_and_logsumexp(outside, 1.0 / temperature, in_place=True)
            soft_rows = soft_rows + rest * (lse_t - lse_rest)
        per_row = (soft_weight * temperature**2) * soft_rows
        soft_1 = label_col = label_weight = None
        if labels is not None:
            label_col = labels.clamp(min=0).long().unsqueeze(-1)
            label_weight = hard_weight * (labels >= 0).to(z.dtype)  # rows without a label: no hard term
            if temperature == 1.0:
                lse_1 = lse_t
            else:
                soft_1, lse_1 = _softmax_and_logsumexp(z, 1.0)
            per_row = per_row + label_weight * (lse_1 - z.gather(-1, label_col).squeeze(-1))
        denom = weight.sum().clamp(min=1e-12)  # an all-masked batch gives 0, not NaN
        ctx.save_for_backward(soft_t, ids, p, psum, soft_1, label_col, label_weight, weight, denom, rest, rest_soft)
        ctx.soft_scale = soft_weight * temperature  # d/dz of T^2 * CE at T is T * (...)
        return (per_row * weight).sum() / denom

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        soft_t, ids, p, psum, soft_1, label_col, label_weight, weight, denom, rest, rest_soft = ctx.saved_tensors
        c = ctx.soft_scale
        # Soft term: c * (psum * q - p); with the bucket also c * r * (q - q outside the ids / their sum).
        coef = c * psum if rest is None else c * (psum + rest)
        if label_col is not None and soft_1 is None:  # T = 1: one softmax serves both terms
            coef = coef + label_weight
        grad = soft_t * coef.unsqueeze(-1)  # a new tensor: the saved ones stay valid for retain_graph
        if ids is None:
            grad.add_(p, alpha=-c)
        else:
            grad.scatter_add_(-1, ids, p * -c)
        if rest is not None:
            grad.addcmul_(rest_soft, (rest * -c).unsqueeze(-1))
        if label_col is not None:
            if soft_1 is not None:
                grad.addcmul_(soft_1, label_weight.unsqueeze(-1))
            grad.scatter_add_(-1, label_col, -label_weight.unsqueeze(-1))
        grad.mul_((weight * (grad_out / denom)).unsqueeze(-1))
        return grad, None, None, None, None, None, None, None, None
