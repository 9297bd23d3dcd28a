"""Frame accuracy: the share of labelled frames whose arg-max class equals the label."""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)


def frame_accuracy_counts(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> tuple[int, int]:
    """Return ``(correct, counted)`` over the frames of ``logits`` (``[..., C]``) whose label
    (``[...]``) is not ``ignore_index``; sums of these give a corpus-level accuracy."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    mask = labels != ignore_index
    correct = (logits.argmax(dim=-1) == labels) & mask
    return int(correct.sum()), int(mask.sum())


def frame_accuracy(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> float:
    """Return the frame accuracy in [0, 1] (NaN when no frame is labelled)."""
    correct, counted = frame_accuracy_counts(logits, labels, ignore_index)
    return correct / counted if counted else float("nan")



# ---- corpus level, over utterances (numpy or torch), e.g. decoded senones vs GMM alignments ----


@dataclasses.dataclass(frozen=True)
class FrameAccuracyResult:
    """Frame accuracy over a corpus and the utterances that could not be compared."""

    correct: int
    counted: int
    missing: tuple[str, ...]  # references without a prediction (not counted)
    length_mismatch: tuple[str, ...]  # predictions with another number of frames (not counted)
    # {utt_id: (correct, counted)} of every compared utterance: what a paired bootstrap resamples.
    per_utterance: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def accuracy(self) -> float:
        """Return correct / counted (NaN when no frame was counted)."""
        return self.correct / self.counted if self.counted else float("nan")


def corpus_frame_accuracy(
    predictions: Mapping[str, np.ndarray | Tensor], references: Mapping[str, np.ndarray | Tensor], ignore_index: int = -100
) -> FrameAccuracyResult:
    """Return the frame accuracy of ``predictions`` against ``references`` (``{utt_id: array}``).

    A prediction is either per-frame class ids (``[T]``) or scores (``[T, C]``, arg-max taken);
    references are ``[T]`` senone ids with ``ignore_index`` for unlabelled frames. Utterances
    without a prediction, or whose frame counts differ, are listed, logged and not counted.
    """
    correct = counted = 0
    missing, mismatch = [], []
    per_utt: dict[str, tuple[int, int]] = {}
    for utt_id, ref in references.items():
        if utt_id not in predictions:
            missing.append(utt_id)
            continue
        labels = torch.as_tensor(np.asarray(ref)).long()
        pred = torch.as_tensor(np.asarray(predictions[utt_id]))
        if pred.ndim == labels.ndim + 1:
            pred = pred.argmax(dim=-1)
        if pred.shape != labels.shape:
            mismatch.append(utt_id)
            continue
        mask = labels != ignore_index
        utt_correct, utt_counted = int(((pred.long() == labels) & mask).sum()), int(mask.sum())
        per_utt[utt_id] = (utt_correct, utt_counted)
        correct += utt_correct
        counted += utt_counted
    if missing or mismatch:
        logger.warning(
            "frame accuracy: %d utterances without prediction (e.g. %s), %d with a different frame count (e.g. %s); not counted",
            len(missing), missing[:3], len(mismatch), mismatch[:3],
        )
    return FrameAccuracyResult(correct, counted, tuple(missing), tuple(mismatch), per_utt)


__all__ = ["frame_accuracy", "frame_accuracy_counts", "corpus_frame_accuracy", "FrameAccuracyResult"]
