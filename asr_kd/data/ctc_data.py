"""Batches for CTC models: padded CMVN-normalised fbank and token sequences, drawn by the lhotse
samplers of :mod:`asr_kd.data.frames`.

A batch is the dict of :class:`asr_kd.data.frames.FrameDataset` without frame labels
(``features`` ``[B, T, D]``, ``lengths`` ``[B]``, ``cut_ids``; plus ``soft_ids``/``soft_probs``
when the cuts carry stored soft targets) and

- ``texts``: the cuts' transcripts (their supervisions joined by spaces);
- ``targets``: int64 ``[sum of target lengths]``, the concatenated token sequences, and
  ``target_lengths`` int64 ``[B]`` (the layout ``torch.nn.functional.ctc_loss`` takes);
- with pseudo-labels (sequence-level KD): ``pseudo_targets``, ``pseudo_lengths`` (concatenated
  hypotheses, ``[sum]`` and ``[B * n]``), ``pseudo_weights`` float32 ``[B, n]`` and
  ``pseudo_count`` (``n``, the hypotheses per cut; missing ones have weight 0 and length 0).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from lhotse import CutSet
from lhotse.cut import Cut
from torch.utils.data import Dataset

from asr_kd.data.features import CmvnStats
from asr_kd.data.frames import FrameDataset
from asr_kd.errors import DataError

# cut id -> [(token ids, weight), ...]: the ensemble's hypotheses for one cut.
PseudoLabels = Mapping[str, Sequence[tuple[Sequence[int], float]]]


def cut_text(cut: Cut) -> str:
    """Return the transcript of ``cut`` (its supervisions' texts, in order); DataError if none."""
    texts = [s.text for s in cut.supervisions if s.text]
    if not texts:
        raise DataError(f"cut {cut.id} has no transcript; CTC training needs supervisions with text")
    return " ".join(texts)


class CtcDataset(Dataset):
    """Map a CutSet (one sampler batch) to a CTC batch dict (module docstring).

    ``encode`` maps a transcript to token ids (e.g. :meth:`asr_kd.ctc.units.CtcUnits.encode`);
    ``None`` leaves ``targets`` out (inference). ``pseudo_labels`` adds the pseudo-label fields;
    a cut without hypotheses is a DataError naming it.
    """

    def __init__(
        self, cmvn: CmvnStats | None, encode: Callable[[str], list[int]] | None, pseudo_labels: PseudoLabels | None = None,
        soft_targets: bool | None = False,
    ) -> None:
        self.frames = FrameDataset(cmvn, labels_name=None, soft_targets=soft_targets)
        self.encode = encode
        self.pseudo_labels = pseudo_labels

    def __getitem__(self, cuts: CutSet) -> dict[str, Any]:
        cut_list = list(cuts)
        batch = self.frames[CutSet.from_cuts(cut_list)]
        if self.encode is not None:
            texts = [cut_text(c) for c in cut_list]
            seqs = [self.encode(t) for t in texts]
            batch["texts"] = texts
            batch["targets"], batch["target_lengths"] = concat_sequences(seqs)
        if self.pseudo_labels is not None:
            batch.update(collate_pseudo_labels([c.id for c in cut_list], self.pseudo_labels))
        return batch


def concat_sequences(seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(concatenated int64 tokens, int64 lengths)`` of ``seqs``."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    flat = [int(t) for s in seqs for t in s]
    return torch.tensor(flat, dtype=torch.int64), lengths


def collate_pseudo_labels(cut_ids: Sequence[str], pseudo_labels: PseudoLabels) -> dict[str, Any]:
    """Return the pseudo-label fields of a batch of ``cut_ids`` (module docstring)."""
    missing = [c for c in cut_ids if c not in pseudo_labels]
    if missing:
        raise DataError(f"cut {missing[0]} has no pseudo-label; recompute the ensemble's hypotheses for these cuts")
    n = max(len(pseudo_labels[c]) for c in cut_ids)
    seqs: list[Sequence[int]] = []
    weights = torch.zeros(len(cut_ids), n, dtype=torch.float32)
    for b, cut_id in enumerate(cut_ids):
        hyps = list(pseudo_labels[cut_id])
        for j in range(n):
            if j < len(hyps):
                seqs.append(hyps[j][0])
                weights[b, j] = float(hyps[j][1])
            else:
                seqs.append([])
    targets, lengths = concat_sequences(seqs)
    return {"pseudo_targets": targets, "pseudo_lengths": lengths, "pseudo_weights": weights, "pseudo_count": n}
