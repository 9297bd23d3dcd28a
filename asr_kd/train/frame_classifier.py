"""Frame-level acoustic models trained with cross entropy on frame labels (senone alignments):
the teachers of stage 4, the hard-target baseline of stage 6, and inference for both.

:func:`train_frame_classifier` wires the spliced DNN, the lhotse frame batches and the shared
loop together; :func:`predict_log_posteriors` streams per-frame log-posteriors of a trained model
(used for decoding and for soft targets).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from lhotse import CutSet, load_manifest_lazy
from lhotse.cut import Cut
from torch import Tensor, nn

from asr_kd.config import SENONES_FIELD, DnnConfig, TrainConfig, config_from_dict, save_config
from asr_kd.data.features import CmvnStats
from asr_kd.data.frames import IGNORE_INDEX, FrameDataset, SkipBatches, frame_outputs, make_loader, make_sampler
from asr_kd.errors import ConfigError, DataError
from asr_kd.metrics.frame_accuracy import frame_accuracy_counts
from asr_kd.models.dnn import SplicedDnn
from asr_kd.train.checkpoint import load_checkpoint
from asr_kd.train.ddp import DistInfo, init_distributed
from asr_kd.train.loop import LossFn, TrainResult, autocast_context, to_device, train
from asr_kd.train.optim import resolve_schedule
from asr_kd.train.state import seed_everything

log = logging.getLogger(__name__)


def frame_cross_entropy(model: nn.Module, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    """Return the mean cross entropy over labelled frames and, to log, the batch's frame accuracy
    (at the batch's subsampled frames where it is one: :func:`asr_kd.data.frames.subsample_frames`)."""
    logits = frame_outputs(model, batch)
    labels = batch["labels"]
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
    with torch.no_grad():
        mask = labels != IGNORE_INDEX
        acc = ((logits.argmax(-1) == labels) & mask).sum() / mask.sum().clamp(min=1)
    return loss, {"frame_accuracy": acc}


def evaluate_frame_classifier(model: nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
    """Return ``{"loss": mean frame cross entropy, "frame_accuracy": ...}`` over every labelled
    frame of ``loader``'s batches (model in eval mode, gradients off: the caller's job)."""
    loss_sum, correct, counted = 0.0, 0, 0
    for batch in loader:
        batch = to_device(batch, device)
        logits = model(batch["features"], batch["lengths"]).float()
        labels = batch["labels"]
        loss_sum += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"))
        c, n = frame_accuracy_counts(logits, labels, IGNORE_INDEX)
        correct, counted = correct + c, counted + n
    if counted == 0:
        raise DataError("the dev set has no labelled frame; pass dev cuts with frame labels")
    return {"loss": loss_sum / counted, "frame_accuracy": correct / counted}


def _open_cuts(cuts: CutSet | Path | str) -> CutSet:
    if isinstance(cuts, CutSet):
        return cuts
    path = Path(cuts)
    if not path.is_file():
        raise DataError(f"cut manifest {path} does not exist; run stage 1 (features) and the stage that stores labels first")
    return load_manifest_lazy(path) if str(path).endswith(".jsonl.gz") or str(path).endswith(".jsonl") else CutSet.from_file(path)


def _open_cmvn(cmvn: CmvnStats | Path | str | None) -> CmvnStats | None:
    if cmvn is None or isinstance(cmvn, CmvnStats):
        return cmvn
    return CmvnStats.load(cmvn)


def train_frame_classifier(
    train_cuts: CutSet | Path | str,
    dev_cuts: CutSet | Path | str | None,
    train_cmvn: CmvnStats | Path | str | None,
    dev_cmvn: CmvnStats | Path | str | None,
    num_classes: int,
    model_config: DnnConfig,
    train_config: TrainConfig,
    exp_dir: Path | str,
    labels_name: str = SENONES_FIELD,
    resume: bool = False,
    info: DistInfo | None = None,
    compute_loss: LossFn = frame_cross_entropy,
    per_utterance_cmvn: bool = False,
) -> TrainResult:
    """Train a :class:`SplicedDnn` on ``train_cuts``' frame labels ``labels_name`` (cross entropy),
    scoring frame accuracy on ``dev_cuts`` each epoch; return the run's :class:`TrainResult`
    (``exp_dir/final.pt``, ``exp_dir/best.pt``).

    Cuts are CutSets or manifest paths; CMVN statistics come from stage 1 (``cmvn_<part>.npz``).
    Started by ``torchrun``, each process joins the DDP job (``info`` overrides the detection).
    Different ``train_config.seed`` values give the different teachers of an ensemble.
    ``compute_loss`` replaces the hard-target cross entropy (e.g. by a distillation loss).
    ``per_utterance_cmvn`` normalises every cut (train and dev) by its own statistics instead of
    ``train_cmvn``/``dev_cmvn`` (pass None for those) and records ``input_normalization:
    "utterance"`` in the checkpoints, which a model directory then follows.
    """
    if per_utterance_cmvn and (train_cmvn is not None or dev_cmvn is not None):
        raise ConfigError("per-utterance CMVN takes no CMVN statistics; pass train_cmvn=None and dev_cmvn=None")
    info = info or init_distributed(train_config.device)  # the group stays for the next model
    cuts = _open_cuts(train_cuts)
    # On a GPU, rvq-coded soft targets travel as codes and a loss that can decode them (its
    # ``decodes_codes``) does so there: a loader worker decodes only about 10,000 frames a second
    # with 4,200 senones (bench/RESULTS.md "Data loader against the GPU").
    dataset = FrameDataset(_open_cmvn(train_cmvn), labels_name, num_classes, per_utterance=per_utterance_cmvn,
                           codes_in_batch=info.device.type == "cuda" and getattr(compute_loss, "decodes_codes", False))
    exp_dir = Path(exp_dir)
    if info.is_main:
        exp_dir.mkdir(parents=True, exist_ok=True)
        save_config(model_config, exp_dir / "model.yaml")

    def train_sampler(epoch: int) -> Any:
        sampler = make_sampler(
            cuts, train_config.max_duration, train_config.shuffle, train_config.seed, train_config.bucketing,
            train_config.num_buckets, world_size=info.world_size, rank=info.rank,
        )
        sampler.set_epoch(epoch)
        return sampler

    def make_train_loader(epoch: int, skip: int) -> Any:
        return make_loader(dataset, SkipBatches(train_sampler(epoch), skip), train_config.num_workers, seed=train_config.seed * 100003 + epoch)

    # A cosine schedule over the whole run: count the first epoch's batches (cut metadata only).
    train_config = resolve_schedule(train_config, lambda: sum(1 for _ in train_sampler(0)))

    evaluate = None
    if dev_cuts is not None:
        dev_set = _open_cuts(dev_cuts)
        dev_dataset = FrameDataset(_open_cmvn(dev_cmvn), labels_name, num_classes, per_utterance=per_utterance_cmvn)

        def evaluate(model: nn.Module) -> dict[str, float]:
            # Every rank scores the whole dev set: identical weights give identical numbers,
            # and no collective can hang on ranks holding different numbers of dev batches.
            sampler = make_sampler(dev_set, train_config.max_duration, shuffle=False, seed=0, bucketing=False)
            return evaluate_frame_classifier(model, make_loader(dev_dataset, sampler, train_config.num_workers), info.device)

    seed_everything(train_config.seed)
    model = SplicedDnn(model_config, num_classes)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("DNN %s: %d parameters, %d classes, window %d", model_config, n_params, num_classes, model.window)
    return train(model, make_train_loader, compute_loss, evaluate, train_config, exp_dir,
                 info=info, resume=resume, extra={**model.describe(), **({"input_normalization": "utterance"} if per_utterance_cmvn else {})})


def load_frame_classifier(checkpoint: Path | str, device: torch.device | str = "cpu") -> SplicedDnn:
    """Return the :class:`SplicedDnn` saved in ``checkpoint`` (``final.pt``, ``best.pt`` or a
    periodic one), in eval mode on ``device``."""
    ckpt = load_checkpoint(checkpoint)
    extra = ckpt.get("extra", {})
    if "model_config" not in extra:
        raise DataError(f"checkpoint {checkpoint} holds no DNN description; pass a checkpoint written by train-dnn")
    model = SplicedDnn(config_from_dict(DnnConfig, extra["model_config"], str(checkpoint)), int(extra["num_classes"]))
    model.load_state_dict(ckpt["model"])
    model.input_normalization = extra.get("input_normalization")  # "utterance": :func:`predict_log_posteriors` follows it
    return model.to(device).eval()


@torch.no_grad()
def predict_log_posteriors(
    model: nn.Module,
    cuts: CutSet | Path | str,
    cmvn: CmvnStats | Path | str | None,
    max_duration: float = 200.0,
    device: torch.device | str | None = None,
    amp: str = "bf16",
) -> Iterator[tuple[Cut, np.ndarray]]:
    """Yield ``(cut, log_posteriors)`` for every cut in manifest order, ``log_posteriors`` a float32
    ``[num_frames, num_classes]`` array of ``log_softmax`` outputs.

    A generator, because a corpus' posteriors over thousands of senones do not fit in memory.
    A network loaded by :func:`load_frame_classifier` that was trained on per-utterance CMVN is fed
    per-utterance normalised features whatever ``cmvn`` says.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval().to(device)
    if getattr(model, "input_normalization", None) == "utterance":
        # A network trained on per-utterance CMVN (load_frame_classifier says so) is fed that, never ``cmvn``.
        dataset = FrameDataset(None, labels_name=None, per_utterance=True)
    else:
        dataset = FrameDataset(_open_cmvn(cmvn), labels_name=None)
    sampler = make_sampler(_open_cuts(cuts), max_duration, shuffle=False, seed=0, bucketing=False)
    amp_cfg = dataclasses.replace(TrainConfig(), amp=amp)
    for cut_batch in sampler:
        batch = to_device(dataset[cut_batch], device)
        with autocast_context(amp_cfg, device):
            logits = model(batch["features"], batch["lengths"])
        logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        for i, cut in enumerate(cut_batch):
            yield cut, logp[i, : int(batch["lengths"][i])]
