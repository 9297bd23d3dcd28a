"""Optimisers and the learning-rate schedule (a pure function of the step, so resuming needs no
scheduler state)."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import nn

from asr_kd.config import TrainConfig


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Return AdamW or SGD (Nesterov momentum) over ``model``'s parameters.

    Weight decay applies to matrices only: decaying biases is a known way to hurt small nets.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        # The fused CUDA kernel updates all parameters in a few launches instead of one per tensor.
        fused = all(p.is_cuda for p in decay + no_decay) and bool(decay + no_decay)
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Return the learning rate for optimizer step ``step`` (0-based): a linear warm-up over
    ``warmup_steps``, then constant, ``lr * sqrt(warmup / step)`` (inv_sqrt), or a cosine decay to
    ``lr * final_lr_ratio`` at ``cosine_steps`` (constant after)."""
    s = step + 1
    if cfg.warmup_steps and s <= cfg.warmup_steps:
        return cfg.lr * s / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "inv_sqrt":
        return cfg.lr * math.sqrt(max(cfg.warmup_steps, 1) / s)
    if cfg.cosine_steps <= 0:
        raise ValueError("lr_schedule=cosine with cosine_steps=0: resolve the run's length first (resolve_schedule)")
    progress = min(1.0, (s - cfg.warmup_steps) / max(cfg.cosine_steps - cfg.warmup_steps, 1))
    floor = cfg.lr * cfg.final_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def resolve_schedule(cfg: TrainConfig, batches_per_epoch: Callable[[], int]) -> TrainConfig:
    """Return ``cfg`` with ``cosine_steps`` set to the run's length when it is 0 under the cosine
    schedule: ``num_epochs`` times ``batches_per_epoch()`` (capped by ``max_steps``), so the
    learning rate reaches its floor at the last step. Other configs are returned unchanged."""
    if cfg.lr_schedule != "cosine" or cfg.cosine_steps > 0:
        return cfg
    total = cfg.num_epochs * max(int(batches_per_epoch()), 1)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    return dataclasses.replace(cfg, cosine_steps=max(total, cfg.warmup_steps + 1))
