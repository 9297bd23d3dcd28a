"""The distilled student's training objective on frame batches (stage 6).

Two losses plug into the shared loop as ``compute_loss(model, batch) -> (loss, metrics)``:

- :class:`StoredDistillationLoss` reads the ensemble's top-k soft targets that
  :class:`asr_kd.data.frames.FrameDataset` adds to batches of cuts carrying them (stage 5), and
  minimises ``soft_weight * T^2 * CE(soft targets, student at T) + hard_weight * CE(senones,
  student at 1)`` (:func:`asr_kd.kd.topk_loss.topk_distillation_loss`, computed by its fused form
  :func:`~asr_kd.kd.topk_loss.fused_topk_distillation_loss`);
- :class:`OnlineDistillationLoss` runs a :class:`~asr_kd.kd.ensemble.TeacherEnsemble` on the same
  batch instead (``kd.mode=online``): the dense soft cross entropy of :mod:`asr_kd.kd.losses`, or
  with ``kd.loss=logit_l2`` the regression of the student's logits on the teachers' mean logits
  (Caruana's alternative; section 2.1 of the paper shows it is the high-temperature limit).

Padding frames are masked out of both terms; frames without a senone label (``IGNORE_INDEX``)
still count in the soft term, which needs no label. Both follow a frame-subsampled batch
(``train.frame_subsampling``): the student's outputs, the targets and the masks at its positions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr_kd.config import KdConfig
from asr_kd.data.frames import IGNORE_INDEX, POSITIONS, frame_outputs, output_lengths
from asr_kd.data.stored_targets import SOFT_CODES, decode_batch_codes
from asr_kd.errors import DataError
from asr_kd.kd.ensemble import TeacherEnsemble, fuse_logits, mean_logits
from asr_kd.kd.losses import distillation_loss, logit_matching_loss
from asr_kd.kd.topk_loss import fused_topk_distillation_loss


def frame_mask(lengths: Tensor, num_frames: int) -> Tensor:
    """Return a float ``[B, T]`` mask: 1 for the first ``lengths[b]`` frames of row b, else 0."""
    steps = torch.arange(num_frames, device=lengths.device)
    return (steps[None, :] < lengths[:, None]).float()


def _hard_labels(batch: Mapping[str, Any], weight: float) -> Tensor | None:
    """Return the batch's senone labels when the hard term is used, else None."""
    if weight == 0.0:
        return None
    if "labels" not in batch:
        raise DataError("kd.hard_weight > 0 needs senone labels in the batches; train on the stage-3 alignment cuts (or set kd.hard_weight=0)")
    return batch["labels"]


def _accuracy(logits: Tensor, batch: Mapping[str, Any]) -> Tensor:
    """Return the frame accuracy of ``logits`` against the batch's labels (0 without labels)."""
    labels = batch.get("labels")
    if labels is None:
        return torch.zeros(())
    with torch.no_grad():
        mask = labels != IGNORE_INDEX
        return ((logits.argmax(-1) == labels) & mask).sum() / mask.sum().clamp(min=1)


@dataclasses.dataclass(frozen=True)
class StoredDistillationLoss:
    """``compute_loss`` of a student trained on stored top-k soft targets (``kd.mode=stored``).

    Calling it returns ``(loss, {"frame_accuracy", "soft_frames"})``; the batch must carry
    ``soft_ids``/``soft_probs`` (cuts written by stage 5), or rvq codes that it decodes where the
    batch is (:func:`asr_kd.data.stored_targets.decode_batch_codes`).
    """

    kd: KdConfig
    # Batches may bring rvq codes undecoded: train_frame_classifier asks its dataset for them on a GPU.
    decodes_codes: ClassVar[bool] = True

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        if SOFT_CODES in batch:  # codes left for the device (FrameDataset codes_in_batch)
            batch = {**batch}
            batch["soft_ids"], batch["soft_probs"] = decode_batch_codes(batch)
        if "soft_ids" not in batch:
            raise DataError(
                f"batch of cuts {list(batch.get('cut_ids', []))[:3]} has no stored soft targets; "
                "train the distilled student on the cuts written by make-soft-targets (stage 5) or set kd.mode=online"
            )
        logits = frame_outputs(model, batch).float()
        mask = frame_mask(output_lengths(batch), logits.shape[1])
        hard = _hard_labels(batch, self.kd.hard_weight)
        # The fused node: the value and gradient of topk_distillation_loss with both softmaxes
        # written once (one at T = 1); the loss is a large share of a small student's step.
        loss = fused_topk_distillation_loss(
            logits, batch["soft_ids"], batch["soft_probs"], hard, self.kd.temperature, self.kd.hard_weight,
            self.kd.soft_weight, mask=mask, bucket=self.kd.tail == "bucket",
        )
        return loss, {"frame_accuracy": _accuracy(logits, batch)}


class OnlineDistillationLoss:
    """``compute_loss`` of a student taught by teachers run inside the loop (``kd.mode=online``).

    ``kd.loss="soft_ce"``: the dense distillation loss against the fused ensemble at
    ``kd.temperature``; ``"logit_l2"``: ``soft_weight * 0.5 * ||z - mean teacher logits||^2 +
    hard_weight * CE(senones)`` per frame. The teachers follow the batch to its device.
    """

    def __init__(self, ensemble: TeacherEnsemble, kd: KdConfig) -> None:
        self.ensemble = ensemble
        self.kd = kd

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        feats, lengths = batch["features"], batch["lengths"]
        self.ensemble.to(feats.device)
        logits = frame_outputs(model, batch).float()
        mask = frame_mask(output_lengths(batch), logits.shape[1])
        # [N, B, T, C], no grad; in a frame-subsampled batch the teachers too compute the kept frames only
        kept = {"positions": batch[POSITIONS]} if POSITIONS in batch else {}
        teacher_logits = self.ensemble.teacher_logits(feats, lengths, **kept).float()
        hard = _hard_labels(batch, self.kd.hard_weight)
        if self.kd.loss == "logit_l2":
            target = mean_logits(teacher_logits, mask.bool())
            loss = self.kd.soft_weight * logit_matching_loss(logits, target, weight=mask)
            if hard is not None:
                ce = F.cross_entropy(logits.flatten(0, 1), hard.flatten(), ignore_index=IGNORE_INDEX)
                loss = loss + self.kd.hard_weight * ce
        else:
            probs = fuse_logits(teacher_logits, self.kd.temperature, self.ensemble.fusion, mask.bool()).exp()
            loss = distillation_loss(
                logits, probs, hard, self.kd.temperature, self.kd.hard_weight, self.kd.soft_weight, weight=mask,
            )
        return loss, {"frame_accuracy": _accuracy(logits, batch)}
