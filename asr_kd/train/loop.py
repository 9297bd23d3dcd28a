"""The shared training loop: any model, any loss, lhotse-style loaders, DDP, resumable.

:func:`train` knows nothing about what it trains. The caller passes

- ``make_train_loader(epoch, skip)``: an iterable of batches for ``epoch`` with its first ``skip``
  batches left out (deterministic given the seed, so a resumed epoch continues where it stopped);
- ``compute_loss(model, batch) -> (loss, metrics)``: a scalar loss to minimise and a dict of
  scalars (floats or 0-d tensors) to log;
- ``evaluate(model) -> metrics``: dev-set metrics (e.g. ``frame_accuracy``), called at the end of
  every ``eval_every_epochs``-th epoch and of the last one, on the unwrapped model in eval mode,
  or None.

With ``train.frame_subsampling`` > 1 the loop thins each training batch of a frame-level model to
every N-th frame's outputs and targets (:func:`asr_kd.data.frames.subsample_frames`, a phase
drawn per step) before ``compute_loss`` sees it.

It writes, under ``exp_dir``: ``train.yaml`` (the config), ``checkpoints/step-*.pt`` (every
``checkpoint_every_steps`` and at each epoch's end, the last ``keep_last_checkpoints`` kept),
``best.pt`` (best dev metric), ``final.pt``, ``tensorboard/`` and ``log/train.log`` entries via
logging. Under ``torchrun`` only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from asr_kd.config import TrainConfig, save_config
from asr_kd.data.frames import subsample_frames
from asr_kd.errors import ConfigError
from asr_kd.train.checkpoint import (
    copy_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    step_checkpoint_path,
)
from asr_kd.train.ddp import DistInfo, barrier, broadcast_flag
from asr_kd.train.optim import lr_at, make_optimizer, set_lr
from asr_kd.train.augment import frame_phase, spec_augment, spec_augment_enabled, step_generator
from asr_kd.train.state import TrainState, rng_state, set_rng_state
from asr_kd.train.tensorboard import TensorBoardLog

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], tuple[Tensor, Mapping[str, Any]]]
LoaderFactory = Callable[[int, int], Iterable[Any]]
EvalFn = Callable[[nn.Module], Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished run left: its final and best checkpoints and its last state."""

    exp_dir: Path
    final_path: Path
    best_path: Path | None
    state: TrainState


def to_device(batch: Any, device: torch.device) -> Any:
    """Return ``batch`` with every tensor (inside dicts, lists, tuples) moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def autocast_context(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``cfg.amp == "bf16"``, on CUDA and the CPU when it is
    ``"bf16-cpu"``; nothing otherwise (CPU runs stay float32 unless asked, which keeps the
    recipe's default results what they were)."""
    if (cfg.amp == "bf16" and device.type == "cuda") or (cfg.amp == "bf16-cpu" and device.type in ("cuda", "cpu")):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _scalar(v: Any) -> float:
    return float(v.detach().float().item()) if isinstance(v, Tensor) else float(v)


class _Run:
    """One training run's moving parts (kept together so the loop body stays short)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, exp_dir: Path, info: DistInfo, extra: Mapping[str, Any]) -> None:
        self.model = model
        self.cfg = cfg
        self.exp_dir = exp_dir
        self.info = info
        self.extra = dict(extra)
        self.optimizer = make_optimizer(model, cfg)
        self.state = TrainState()
        self.writer: Any = None

    def payload(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "train_state": self.state.to_dict(),
            "rng": rng_state(),
            "config": dataclasses.asdict(self.cfg),
            "extra": self.extra,
        }

    def restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location="cpu")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState.from_dict(ckpt["train_state"])
        set_rng_state(ckpt["rng"])
        # A field missing from an older checkpoint's config had its default then (an option added later).
        was = {f.name: ckpt["config"].get(f.name, f.default) for f in dataclasses.fields(self.cfg)}
        changed = sorted(k for k, v in dataclasses.asdict(self.cfg).items() if was[k] != v)
        if changed:  # allowed (e.g. more epochs), but batches or schedule may then differ
            log.warning("resuming with changed settings %s (was %s)", changed, {k: was[k] for k in changed})
        log.info("resumed from %s: step %d, epoch %d, batch %d of the epoch", path, self.state.step, self.state.epoch, self.state.batch_in_epoch)

    def checkpoint(self) -> Path:
        """Write the periodic checkpoint of the current step (rank 0) and prune old ones."""
        path = step_checkpoint_path(self.exp_dir, self.state.step)
        if self.info.is_main:
            save_checkpoint(path, self.payload())
            prune_checkpoints(self.exp_dir, self.cfg.keep_last_checkpoints)
        return path

    def scalars(self, prefix: str, values: Mapping[str, Any]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", _scalar(v), self.state.step)

    def evaluate(self, evaluate: EvalFn | None) -> None:
        """Evaluate on dev, update the best checkpoint and the early-stopping counter."""
        if evaluate is None:
            return
        self.model.eval()
        with torch.no_grad(), autocast_context(self.cfg, self.info.device):
            metrics = {k: float(v) for k, v in evaluate(self.model).items()}
        self.model.train()
        if self.cfg.best_metric not in metrics:
            raise KeyError(f"evaluate() returned {sorted(metrics)}, without train.best_metric={self.cfg.best_metric!r}")
        self.scalars("dev", metrics)
        # Epochs since the last evaluation (1 unless train.eval_every_epochs > 1), for early stopping.
        elapsed = self.state.epoch - (self.state.history[-1]["epoch"] if self.state.history else 0)
        self.state.history.append({"step": self.state.step, "epoch": self.state.epoch, **metrics})
        value = metrics[self.cfg.best_metric]
        log.info("dev after step %d (epoch %d): %s", self.state.step, self.state.epoch, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if self.state.improved(value, self.cfg.best_mode):
            self.state.best_metric, self.state.best_step = value, self.state.step
            self.state.epochs_without_improvement = 0
            if self.info.is_main:
                save_checkpoint(self.exp_dir / "best.pt", self.payload())
        else:
            self.state.epochs_without_improvement += max(elapsed, 1)


def train(
    model: nn.Module,
    make_train_loader: LoaderFactory,
    compute_loss: LossFn,
    evaluate: EvalFn | None,
    cfg: TrainConfig,
    exp_dir: Path | str,
    info: DistInfo | None = None,
    resume: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` (already seeded and built by the caller) and return a :class:`TrainResult`.

    With ``resume``, the latest ``checkpoints/step-*.pt`` restores weights, optimizer, counters
    and generator states, and the run continues mid-epoch; on CPU the result equals an
    uninterrupted run's bit for bit. ``extra`` is stored in every checkpoint (what rebuilds the
    model). Under DDP (``info.distributed``) the model is wrapped here; every rank must call this.
    """
    info = info or DistInfo()
    exp_dir = Path(exp_dir)
    if not resume and latest_checkpoint(exp_dir) is not None:
        # Starting over here would mix two runs' checkpoints (and pruning would delete the new ones).
        raise ConfigError(f"{exp_dir} already holds checkpoints; pass --resume to continue that run, or use a new --exp-dir")
    model.to(info.device)
    run = _Run(model, cfg, exp_dir, info, extra or {})
    if info.is_main:
        exp_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, exp_dir / "train.yaml")
    if resume:
        latest = latest_checkpoint(exp_dir)
        if latest is None:
            log.info("--resume: no checkpoint under %s/checkpoints; starting from scratch", exp_dir)
        else:
            run.restore(latest)
    if run.state.finished and (exp_dir / "final.pt").is_file():
        log.info("%s: training already finished (%s); nothing to do", exp_dir, run.state.stop_reason)
        return TrainResult(exp_dir, exp_dir / "final.pt", _existing(exp_dir / "best.pt"), run.state)

    wrapped: nn.Module = model
    if info.distributed:
        wrapped = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if info.is_main:
        # purge_step drops events a crashed run logged after its last checkpoint.
        run.writer = TensorBoardLog(exp_dir / "tensorboard", purge_step=run.state.step or None)
    try:
        _train_epochs(run, wrapped, make_train_loader, compute_loss, evaluate)
        if evaluate is not None and (not run.state.history or run.state.history[-1]["step"] != run.state.step):
            run.evaluate(evaluate)  # stopped mid-epoch (max_steps): still score the final model
        run.state.finished = True
        final_ckpt = run.checkpoint()
        if info.is_main:
            copy_checkpoint(final_ckpt, exp_dir / "final.pt")
        barrier(info)
    finally:
        if run.writer is not None:
            run.writer.close()
    log.info("finished after %d steps (%s); best %s %s at step %d", run.state.step, run.state.stop_reason,
             cfg.best_metric, run.state.best_metric, run.state.best_step)
    return TrainResult(exp_dir, exp_dir / "final.pt", _existing(exp_dir / "best.pt"), run.state)


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _train_epochs(run: _Run, wrapped: nn.Module, make_train_loader: LoaderFactory, compute_loss: LossFn, evaluate: EvalFn | None) -> None:
    cfg, state, info = run.cfg, run.state, run.info
    model = run.model
    model.train()
    while state.epoch < cfg.num_epochs:
        loader = make_train_loader(state.epoch, state.batch_in_epoch)
        bar = tqdm(loader, desc=f"epoch {state.epoch}", initial=state.batch_in_epoch, disable=not info.is_main, leave=False)
        start, frames_seen = time.time(), 0
        for batch in bar:
            if isinstance(batch, dict) and "lengths" in batch:
                frames_seen += int(batch["lengths"].sum())  # on the CPU copy: no device sync
            if spec_augment_enabled(cfg) and isinstance(batch, dict) and "features" in batch and "lengths" in batch:
                batch = {**batch, "features": spec_augment(batch["features"], batch["lengths"], cfg, step_generator(cfg, state.step))}
            if cfg.frame_subsampling > 1:  # frame-level models only (train_ctc_model refuses it)
                if not (isinstance(batch, dict) and "features" in batch and "lengths" in batch):
                    raise ConfigError(f"train.frame_subsampling={cfg.frame_subsampling} thins batches of frames (features and "
                                      "lengths); this model's batches are not: set train.frame_subsampling=1")
                batch = subsample_frames(batch, cfg.frame_subsampling, frame_phase(cfg, state.step))
            batch = to_device(batch, info.device)
            lr = lr_at(state.step, cfg)
            set_lr(run.optimizer, lr)
            with autocast_context(cfg, info.device):
                loss, metrics = compute_loss(wrapped, batch)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            run.optimizer.step()
            state.step += 1
            state.batch_in_epoch += 1
            if state.step % cfg.log_every_steps == 0:
                values = {"loss": _scalar(loss), "lr": lr, "grad_norm": _scalar(grad_norm), **{k: _scalar(v) for k, v in metrics.items()}}
                if frames_seen:
                    values["frames_per_second"] = frames_seen / max(time.time() - start, 1e-9)
                run.scalars("train", values)
                bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.2e}")
            if state.step % cfg.checkpoint_every_steps == 0:
                run.checkpoint()
            if cfg.max_steps and state.step >= cfg.max_steps:
                state.stop_reason = f"max_steps={cfg.max_steps}"
                return
        bar.close()
        state.epoch += 1
        state.batch_in_epoch = 0
        if state.epoch % cfg.eval_every_epochs == 0 or state.epoch >= cfg.num_epochs:
            run.evaluate(evaluate)
        stop = cfg.early_stopping_patience > 0 and state.epochs_without_improvement >= cfg.early_stopping_patience
        stop = broadcast_flag(stop, info)  # every rank must leave the loop at the same step
        run.checkpoint()
        if stop:
            state.stop_reason = f"early stopping: no {cfg.best_metric} improvement for {state.epochs_without_improvement} epochs"
            return
    state.stop_reason = f"num_epochs={cfg.num_epochs}"
