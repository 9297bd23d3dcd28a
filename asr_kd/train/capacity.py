"""Named variants of the hard-target frame classifier, for measuring what width, depth, dropout,
learning rate, training length or label smoothing do to the hybrid DNN (bench/hybrid_capacity.py).

A variant is a name and overrides of :class:`~asr_kd.config.DnnConfig`, of
:class:`~asr_kd.config.TrainConfig` and of the label smoothing of the cross entropy, written on a
command line as ``name:key=value,key=value`` (e.g. ``wide4x512:hidden_dim=512,num_hidden_layers=4``).
:func:`train_variant` trains one (a job of :func:`asr_kd.launch.launch_jobs`) and returns its
training record with the CPU time it took; :func:`frame_scores` scores a model's frame accuracy
on any cuts with senone alignments, e.g. the fixed sample of training cuts that
:func:`spread_sample` draws, so that a train/dev gap shows over- or underfitting. Given a
:class:`~asr_kd.config.KdConfig`, a variant is distilled instead, from the stored soft targets of
stage 5 (the loss stage 6 trains its distilled and compressed students with).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from lhotse import CutSet
from torch import Tensor, nn

from asr_kd.config import SENONES_FIELD, DnnConfig, KdConfig, TrainConfig, _check, config_from_dict, parse_overrides
from asr_kd.data.alignments import has_alignment
from asr_kd.data.features import CmvnStats
from asr_kd.data.frames import IGNORE_INDEX, FrameDataset, frame_outputs, make_loader, make_sampler
from asr_kd.errors import ConfigError
from asr_kd.kd.student import StoredDistillationLoss
from asr_kd.train.checkpoint import checkpoint_step, latest_checkpoint
from asr_kd.train.frame_classifier import evaluate_frame_classifier, frame_cross_entropy, train_frame_classifier

LABEL_SMOOTHING = "label_smoothing"  # the one override that is neither a DnnConfig nor a TrainConfig field
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclasses.dataclass(frozen=True)
class FrameVariant:
    """One variant: its name (a folder name), the model and training configs, and the label
    smoothing of the hard-target cross entropy (0: plain cross entropy, as stages 4 and 6)."""

    name: str
    dnn: DnnConfig
    train: TrainConfig
    label_smoothing: float = 0.0
    overrides: tuple[str, ...] = ()  # the key=value items it was made from, for the tables

    def __post_init__(self) -> None:
        _check(bool(_NAME.fullmatch(self.name)), f"variant name {self.name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
        _check(0.0 <= self.label_smoothing < 1.0, f"variant {self.name}: label_smoothing must be in [0, 1), got {self.label_smoothing}")


def parse_variant(spec: str, dnn: DnnConfig, train: TrainConfig) -> FrameVariant:
    """Return the variant of ``spec`` (``name`` or ``name:key=value,...``) on top of ``dnn`` and
    ``train``; ConfigError in one line for a bad name, a key of neither config or a bad value."""
    name, _, items = spec.partition(":")
    pairs = [item for item in items.split(",") if item.strip()]
    overrides = parse_overrides(pairs)
    dnn_keys = {f.name for f in dataclasses.fields(DnnConfig)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - dnn_keys - train_keys - {LABEL_SMOOTHING})
    if unknown:
        raise ConfigError(f"--variant {spec!r}: unknown key(s) {unknown}; known: DnnConfig {sorted(dnn_keys)}, "
                          f"TrainConfig {sorted(train_keys)} and {LABEL_SMOOTHING}")
    where = f"--variant {spec!r}"
    new_dnn = config_from_dict(DnnConfig, {**dataclasses.asdict(dnn), **{k: v for k, v in overrides.items() if k in dnn_keys}}, where)
    new_train = config_from_dict(TrainConfig, {**dataclasses.asdict(train), **{k: v for k, v in overrides.items() if k in train_keys}}, where)
    try:
        smoothing = float(overrides.get(LABEL_SMOOTHING, 0.0))
    except ValueError:
        raise ConfigError(f"{where}: {LABEL_SMOOTHING} must be a number, got {overrides[LABEL_SMOOTHING]!r}") from None
    return FrameVariant(name, new_dnn, new_train, smoothing, tuple(f"{k}={v}" for k, v in overrides.items()))


def label_smoothed_frame_cross_entropy(model: nn.Module, batch: Mapping[str, Any], smoothing: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Return the label-smoothed cross entropy over labelled frames (mass ``smoothing`` spread
    evenly over the senones) and, to log, the batch's frame accuracy."""
    logits = frame_outputs(model, batch)
    labels = batch["labels"]
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, label_smoothing=smoothing)
    with torch.no_grad():
        mask = labels != IGNORE_INDEX
        acc = ((logits.argmax(-1) == labels) & mask).sum() / mask.sum().clamp(min=1)
    return loss, {"frame_accuracy": acc}


def variant_loss(variant: FrameVariant, kd: KdConfig | None = None) -> Any:
    """Return the ``compute_loss`` that trains ``variant``: stage 6's stored-target distillation
    loss when ``kd`` is given (``kd.mode`` must be "stored"; the variant's label smoothing must be
    0, the hard term being kd's), else the (label-smoothed) hard-target cross entropy."""
    if kd is None:
        return frame_cross_entropy if variant.label_smoothing == 0 else functools.partial(
            label_smoothed_frame_cross_entropy, smoothing=variant.label_smoothing)
    _check(kd.mode == "stored", f"variant {variant.name}: distilled variants learn from stored soft targets; set kd.mode=stored, got {kd.mode!r}")
    _check(variant.label_smoothing == 0, f"variant {variant.name}: label_smoothing applies to hard targets only; drop it or the kd config")
    return StoredDistillationLoss(kd)


def train_variant(
    variant: FrameVariant, train_cuts: Path, dev_cuts: Path, train_cmvn: Path, dev_cmvn: Path, num_classes: int, exp_dir: Path,
    kd: KdConfig | None = None,
) -> dict:
    """Train ``variant`` in ``exp_dir`` (train_frame_classifier's layout: best.pt, final.pt, ...),
    from scratch or from the latest periodic checkpoint an interrupted run left there (the caller's
    StageGuard has emptied the folder unless that run had the same settings); return ``{"steps",
    "epochs", "stop_reason", "best_dev_frame_accuracy", "history" (dev loss and frame accuracy after
    each epoch, "epoch" counting the epochs done), "cpu_seconds", "wall_seconds",
    "cpu_seconds_per_epoch", "resumed_at_step"}``. CPU seconds are this process's (other load on
    the machine does not count), the dev scoring after each epoch included; after a resume
    (``resumed_at_step`` > 0) the interrupted process's time is gone, so ``cpu_seconds`` and
    ``wall_seconds`` are this process's scaled by all steps over the steps it ran, and None (with
    ``cpu_seconds_per_epoch``) when that process had finished training and was stopped later.
    With ``kd`` it is distilled (:func:`variant_loss`) and ``train_cuts`` must be stage 5's cuts
    with the stored soft targets."""
    loss = variant_loss(variant, kd)
    latest = latest_checkpoint(exp_dir)
    start_step = 0 if latest is None else checkpoint_step(latest)
    cpu, wall = time.process_time(), time.time()
    result = train_frame_classifier(train_cuts, dev_cuts, train_cmvn, dev_cmvn, num_classes, variant.dnn, variant.train, exp_dir,
                                    resume=True, compute_loss=loss)
    cpu, wall = time.process_time() - cpu, time.time() - wall
    steps_run = result.state.step - start_step
    cost: tuple[float | None, float | None] = (round(cpu, 1), round(wall, 1))
    if start_step and steps_run > 0:
        cost = (round(cpu * result.state.step / steps_run, 1), round(wall * result.state.step / steps_run, 1))
    elif start_step:  # nothing left to train: the cost was the interrupted process's, and is unknown
        cost = (None, None)
    history = [{"epoch": int(h["epoch"]), "step": int(h["step"]), "frame_accuracy": float(h["frame_accuracy"]), "loss": float(h["loss"])}
               for h in result.state.history]
    # Epochs done, a partial last one (a max_steps stop) counted; not the evaluations, fewer with
    # train.eval_every_epochs > 1.
    epochs_done = result.state.epoch + (1 if result.state.batch_in_epoch else 0)
    return {"steps": result.state.step, "epochs": epochs_done, "stop_reason": result.state.stop_reason,
            "best_dev_frame_accuracy": result.state.best_metric, "history": history, "cpu_seconds": cost[0], "wall_seconds": cost[1],
            "cpu_seconds_per_epoch": None if cost[0] is None else round(cost[0] / max(epochs_done, 1), 1),
            "resumed_at_step": start_step}


def spread_sample(cuts: CutSet, count: int) -> CutSet:
    """Return ``count`` of the cuts with senone alignments, evenly spaced through the manifest's
    order (all of them if there are fewer): a fixed sample that spans every speaker and source."""
    if count < 1:
        raise ConfigError(f"the sample needs at least 1 cut, got {count}")
    aligned = [c for c in cuts if has_alignment(c)]
    if len(aligned) <= count:
        return CutSet.from_cuts(aligned)
    return CutSet.from_cuts(aligned[i * len(aligned) // count] for i in range(count))


@torch.no_grad()
def frame_scores(model: nn.Module, cuts: CutSet, cmvn: CmvnStats | None, num_classes: int, max_duration: float = 20.0) -> dict[str, float]:
    """Return ``{"loss", "frame_accuracy", "cuts"}`` of ``model`` (eval mode, on the CPU) on
    every labelled frame of ``cuts``, scored as training scores its dev set."""
    model.eval()
    loader = make_loader(FrameDataset(cmvn, SENONES_FIELD, num_classes), make_sampler(cuts, max_duration, shuffle=False, seed=0, bucketing=False))
    return {**evaluate_frame_classifier(model, loader, torch.device("cpu")), "cuts": len(cuts)}
