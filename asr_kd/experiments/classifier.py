"""Training and evaluation of small classifiers on in-memory tensors, with hard or soft targets.

Shared by the MNIST experiments and the specialist experiments: one training function that
either minimises the cross entropy with hard labels or the distillation loss of
:mod:`asr_kd.kd.losses`, plus the bias-shift helpers of section 3 (raising the biases of classes
that the transfer set lacked).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from asr_kd.data.mnist import jitter_with_shifts
from asr_kd.kd.losses import distillation_loss

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """How to train one classifier (Adam with a cosine-decayed learning rate)."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    jitter_pixels: int = 0
    image_shape: tuple[int, int] = (28, 28)
    temperature: float = 1.0  # used only with soft targets
    hard_weight: float = 1.0  # weight of the hard-label term when soft targets are given
    # > 0: train exactly this many minibatch steps instead of ``epochs`` epochs (the last epoch
    # partial; the cosine decay spans these steps): a budget counted in steps, e.g. the
    # specialists' for the generalist trained longer
    max_steps: int = 0


@dataclasses.dataclass(frozen=True)
class Training:
    """What :func:`train_classifier` did: the mean loss of each epoch and the minibatch steps it
    took (the optimiser steps, counted as they were taken: the budget one model's training
    hands to another's, as the specialists' to the generalist trained longer)."""

    losses: list[float]
    steps: int


def train_classifier(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    spec: TrainSpec,
    teacher_probs: Tensor | None = None,
    writer: Any | None = None,
    desc: str = "train",
    row_weight: Tensor | None = None,
) -> Training:
    """Train ``model`` in place on ``inputs`` ``[N, D]``; return the mean loss of each epoch and
    the number of minibatch steps taken (:class:`Training`).

    Without ``teacher_probs`` the loss is the cross entropy with ``labels``; with them (``[N, K]``,
    softened at ``spec.temperature``) it is the distillation loss with hard weight
    ``spec.hard_weight``. With ``spec.jitter_pixels`` the soft targets must be given per shift,
    ``[S, N, K]`` in the shift order of :func:`asr_kd.data.mnist.translate_all`: each jittered
    image is taught the teacher's output on that same shifted image (:func:`jittered_batch`).
    ``row_weight`` (``[N]``) optionally weights examples. ``writer`` is a TensorBoard
    ``SummaryWriter`` (or None). Deterministic given ``spec.seed``.
    """
    if teacher_probs is not None and teacher_probs.ndim != (3 if spec.jitter_pixels else 2):
        raise ValueError(f"teacher_probs must be [shifts, N, K] with jitter and [N, K] without, got shape {tuple(teacher_probs.shape)}")
    torch.manual_seed(spec.seed)  # dropout masks draw from the global generator
    gen = torch.Generator().manual_seed(spec.seed)
    n = inputs.shape[0]
    steps_per_epoch = max(1, math.ceil(n / spec.batch_size))
    total_steps = spec.max_steps if spec.max_steps > 0 else spec.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.learning_rate)
    # cosine decay to zero: the last epochs settle instead of bouncing around at a high rate
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    model.train()
    losses: list[float] = []
    step = 0
    for epoch in tqdm(range(epochs), desc=desc, leave=False, mininterval=5.0):
        order = torch.randperm(n, generator=gen)
        total, seen = 0.0, 0
        for start in range(0, n, spec.batch_size):
            if step == total_steps:
                break
            idx = order[start : start + spec.batch_size]
            x, targets = jittered_batch(inputs, teacher_probs, idx, spec, gen)
            logits = model(x)
            w = row_weight[idx] if row_weight is not None else None
            if teacher_probs is None:
                per_row = F.cross_entropy(logits, labels[idx], reduction="none")
                loss = (per_row * w).sum() / w.sum().clamp(min=1e-12) if w is not None else per_row.mean()
            else:
                loss = distillation_loss(logits, targets, labels[idx], spec.temperature, spec.hard_weight, weight=w)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            total += loss.item() * len(idx)
            seen += len(idx)
        losses.append(total / seen)
        if writer is not None:
            writer.add_scalar(f"{desc}/loss", losses[-1], epoch)
    model.eval()
    logger.info("%s: %d epochs (%d steps), final loss %.4f", desc, epochs, step, losses[-1])
    return Training(losses, step)


def jittered_batch(inputs: Tensor, teacher_probs: Tensor | None, idx: Tensor, spec: TrainSpec, gen: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """Return the training batch of rows ``idx``, each image randomly shifted by up to
    ``spec.jitter_pixels`` (none when 0), and its soft targets: ``teacher_probs[idx]`` without
    jitter, else each row's entry ``teacher_probs[shift, row]`` for the shift that image got (the
    teacher's output on the same shifted image, not on the original). None without teacher."""
    x, shift = jitter_with_shifts(inputs[idx], spec.image_shape[0], spec.image_shape[1], spec.jitter_pixels, gen)
    if teacher_probs is None:
        return x, None
    return x, (teacher_probs[shift, idx] if spec.jitter_pixels else teacher_probs[idx])


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: Tensor, batch_size: int = 2000) -> Tensor:
    """Return the model's logits ``[N, K]`` in evaluation mode (no dropout)."""
    model.eval()
    return torch.cat([model(inputs[i : i + batch_size]) for i in range(0, inputs.shape[0], batch_size)])


def count_errors(logits: Tensor, labels: Tensor) -> int:
    """Return the number of rows whose arg-max differs from the label."""
    return int((logits.argmax(dim=-1) != labels).sum())


def shift_bias(logits: Tensor, classes: tuple[int, ...] | list[int], amount: float) -> Tensor:
    """Return a copy of ``logits`` with ``amount`` added to the given classes' columns (the same
    as raising those classes' output biases)."""
    out = logits.clone()
    out[:, list(classes)] += amount
    return out


def choose_bias_shift(logits: Tensor, labels: Tensor, classes: tuple[int, ...] | list[int], grid: np.ndarray) -> float:
    """Return the shift from ``grid`` that minimises the errors of :func:`shift_bias` on held-out
    ``logits``/``labels`` (the smallest such shift on ties)."""
    errors = [count_errors(shift_bias(logits, classes, float(b)), labels) for b in grid]
    return float(grid[int(np.argmin(errors))])
