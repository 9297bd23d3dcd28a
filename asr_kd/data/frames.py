"""Batches of whole utterances for frame-level classifiers: padded CMVN-normalised fbank and
per-frame labels, drawn by lhotse samplers.

A batch is a dict:

- ``features``: float32 ``[B, T, D]``, CMVN-normalised, zero beyond each cut's length;
- ``lengths``: int64 ``[B]`` frames per cut;
- ``labels``: int64 ``[B, T]`` (only when a label name is given), ``IGNORE_INDEX`` beyond the
  length, ready for ``F.cross_entropy(..., ignore_index=IGNORE_INDEX)``;
- ``cut_ids``: the cuts' ids, in batch order;
- ``soft_ids`` int64 and ``soft_probs`` float32, both ``[B, T, k]`` (only when the cuts carry
  stored soft targets, :mod:`asr_kd.data.stored_targets`): the ensemble's top-k senones per frame,
  id 0 and probability 0 beyond each cut's length; where the codes were decoded to every senone,
  ``soft_ids`` is None and ``soft_probs`` is ``[B, T, C]`` in senone order;
- or, from a dataset made with ``codes_in_batch`` (a student training on a GPU) and cuts carrying
  rvq codes, the codes undecoded (``soft_codes`` uint8 ``[B, T, n]`` and what decoding needs,
  :func:`asr_kd.data.stored_targets.collate_soft_codes`), which the loss decodes on the device
  into the same ``soft_ids``/``soft_probs`` (:func:`asr_kd.data.stored_targets.decode_batch_codes`).

Splicing the context window happens in the model (:mod:`asr_kd.models.dnn`), so batches hold each
frame once. Samplers are lhotse's (``DynamicBucketingSampler`` or ``SimpleCutSampler``), which
split batches between DDP ranks; their order is a function of (seed, epoch), which lets training
resume mid-epoch by skipping the batches already consumed (:class:`SkipBatches`).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler
from lhotse.dataset.sampling.base import CutSampler
from torch.utils.data import DataLoader, Dataset

from asr_kd.config import SENONES_FIELD
from asr_kd.data.alignments import load_alignment
from asr_kd.data.features import CmvnStats, cmvn_key, utterance_normalize
from asr_kd.data.stored_targets import (
    SOFT_CODE_LENGTHS, SOFT_CODES, SOFT_IDS, SOFT_PROBS, DecodedTargetCache, collate_soft_codes, collate_soft_targets,
    has_soft_targets,
)
from asr_kd.errors import DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def cmvn_mode(stats: CmvnStats) -> str:
    """Return ``"global"`` for corpus-level statistics, else ``"speaker"``."""
    return "global" if stats.keys == ["global"] else "speaker"


class FrameDataset(Dataset):
    """Map a CutSet (one batch from a lhotse sampler) to a padded batch dict (module docstring).

    ``cmvn`` normalises each cut with its speaker's (or the global) statistics; ``None`` leaves
    the features as stored, or, with ``per_utterance``, normalises each cut by its own mean and
    variance (:func:`asr_kd.data.features.utterance_normalize`, what a model directory of
    normalisation "utterance" does to any file). ``labels_name`` names the cuts' custom field of frame labels (see
    :mod:`asr_kd.data.alignments`); ``None`` gives batches without labels (inference).
    ``soft_targets``: True adds the stored soft targets to every batch (a cut without them is an
    error), False never reads them, None (default) adds them when every cut of the batch has them
    (so the distilled student's cuts bring them and plain senone cuts cost nothing extra).
    Codebook-coded targets, once decoded, stay in memory for the next epochs when the dataset is
    read without loader workers (up to 2 GiB, :class:`asr_kd.data.stored_targets.DecodedTargetCache`).
    ``codes_in_batch``: leave such codes undecoded in the batch, for the loss to decode on its
    device (module docstring; what a student training on a GPU wants: decoding is most of a loader
    worker's work).
    """

    def __init__(
        self, cmvn: CmvnStats | None, labels_name: str | None = SENONES_FIELD, num_classes: int | None = None,
        soft_targets: bool | None = None, per_utterance: bool = False, codes_in_batch: bool = False,
    ) -> None:
        if per_utterance and cmvn is not None:
            raise ValueError("per-utterance normalisation takes no CMVN statistics")
        self.cmvn = cmvn
        self.per_utterance = per_utterance
        self.mode = cmvn_mode(cmvn) if cmvn is not None else "global"
        self.labels_name = labels_name
        self.num_classes = num_classes
        self.soft_targets = soft_targets
        self.codes_in_batch = codes_in_batch
        self.target_cache = DecodedTargetCache()

    def _features(self, cut: Any) -> np.ndarray:
        try:
            feats = cut.load_features()
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"cut {cut.id}: cannot read its features ({err}); rerun stage 1 (features)") from None
        if self.cmvn is not None:
            feats = self.cmvn.normalize(feats, cmvn_key(cut, self.mode))
        elif self.per_utterance:
            feats = utterance_normalize(feats)
        return feats.astype(np.float32, copy=False)

    def __getitem__(self, cuts: CutSet) -> dict[str, Any]:
        cut_list = list(cuts)
        feats = [self._features(c) for c in cut_list]
        lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
        batch_t = int(lengths.max()) if len(feats) else 0
        dim = feats[0].shape[1] if feats else 0
        x = torch.zeros(len(feats), batch_t, dim, dtype=torch.float32)
        for i, f in enumerate(feats):
            x[i, : f.shape[0]] = torch.from_numpy(f)
        batch: dict[str, Any] = {"features": x, "lengths": lengths, "cut_ids": [c.id for c in cut_list]}
        if self.labels_name is not None:
            y = torch.full((len(feats), batch_t), IGNORE_INDEX, dtype=torch.int64)
            for i, cut in enumerate(cut_list):
                labels = load_alignment(cut, self.labels_name)
                if self.num_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                    raise DataError(
                        f"cut {cut.id}: {self.labels_name} label {int(labels.max())} outside 0..{self.num_classes - 1}; "
                        "pass --num-classes equal to the number of senones of the alignments"
                    )
                y[i, : labels.shape[0]] = torch.from_numpy(labels)
            batch["labels"] = y
        if self._wants_soft_targets(cut_list):
            codes = collate_soft_codes(cut_list, batch_t) if self.codes_in_batch else None
            if codes is not None:
                batch.update(codes)
            else:
                batch["soft_ids"], batch["soft_probs"] = collate_soft_targets(cut_list, batch_t, self.target_cache)
        return batch

    def _wants_soft_targets(self, cuts: list[Any]) -> bool:
        if self.soft_targets is False or not cuts:
            return False
        if self.soft_targets:
            return True
        return all(has_soft_targets(c) for c in cuts)


# A frame-subsampled training batch (:func:`subsample_frames`): the frames whose outputs the step
# computes ([P] indices into the batch's frames) and, per cut, how many of them lie inside it.
POSITIONS = "positions"
OUTPUT_LENGTHS = "output_lengths"
# Per-frame entries of a batch, [B, T, ...]: what subsample_frames keeps at the positions.
_PER_FRAME = ("labels", SOFT_IDS, SOFT_PROBS, SOFT_CODES)


def subsample_frames(batch: dict[str, Any], factor: int, offset: int) -> dict[str, Any]:
    """Return ``batch`` whose outputs are computed at frames ``offset, offset + factor, ...`` only
    (``TrainConfig.frame_subsampling``): its labels and soft targets (decoded or rvq codes) at
    those frames, :data:`POSITIONS` for the network (:func:`frame_outputs`) and
    :data:`OUTPUT_LENGTHS` for the loss masks (:func:`output_lengths`). The features and their
    lengths are kept whole: each output's input window still sees every frame."""
    if not 0 <= offset < factor:
        raise ValueError(f"offset must be in [0, {factor}), got {offset}")
    if POSITIONS in batch:
        raise ValueError("the batch is already subsampled")
    def kept(lengths: torch.Tensor) -> torch.Tensor:  # positions below each length
        return torch.div(lengths - offset + factor - 1, factor, rounding_mode="floor").clamp(min=0)

    positions = torch.arange(offset, batch["features"].shape[1], factor)
    out = {**batch, POSITIONS: positions, OUTPUT_LENGTHS: kept(batch["lengths"])}
    for key in _PER_FRAME:
        if out.get(key) is not None:
            out[key] = out[key][:, positions]
    if SOFT_CODE_LENGTHS in out:  # the frames that hold codes, counted at the positions
        out[SOFT_CODE_LENGTHS] = kept(out[SOFT_CODE_LENGTHS])
    return out


def frame_outputs(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Return the network's logits for ``batch``: ``[B, T, C]``, or at its :data:`POSITIONS` only
    (``[B, P, C]``) in a frame-subsampled training batch."""
    positions = batch.get(POSITIONS)
    if positions is None:
        return model(batch["features"], batch["lengths"])
    return model(batch["features"], batch["lengths"], positions=positions)


def output_lengths(batch: dict[str, Any]) -> torch.Tensor:
    """Return how many of each cut's outputs are real frames (the rest is padding): its length, or
    in a frame-subsampled batch its count of positions."""
    return batch.get(OUTPUT_LENGTHS, batch["lengths"])


def make_sampler(
    cuts: CutSet,
    max_duration: float,
    shuffle: bool,
    seed: int,
    bucketing: bool = True,
    num_buckets: int = 10,
    world_size: int = 1,
    rank: int = 0,
) -> CutSampler:
    """Return a lhotse sampler of batches of at most ``max_duration`` seconds of audio.

    With ``world_size > 1`` each rank gets its own, disjoint share of each step's batches, and
    every rank the same number of batches (lhotse's guarantee). Call ``set_epoch`` before each
    epoch; the order is a deterministic function of (seed, epoch).
    """
    if bucketing:
        return DynamicBucketingSampler(
            cuts, max_duration=max_duration, shuffle=shuffle, num_buckets=num_buckets, seed=seed,
            world_size=world_size, rank=rank, drop_last=False,
        )
    return SimpleCutSampler(cuts, max_duration=max_duration, shuffle=shuffle, seed=seed, world_size=world_size, rank=rank, drop_last=False)


class SkipBatches:
    """Iterate over ``sampler`` after discarding its first ``skip`` batches.

    Why not lhotse's own ``sampler.state_dict()``: DataLoader workers prefetch batches, so the
    sampler's state runs ahead of what training has consumed; skipping exactly the number of
    batches that took an optimizer step makes a resumed epoch continue where it stopped.
    Skipping only reads manifests, not features.
    """

    def __init__(self, sampler: Iterable[CutSet], skip: int = 0) -> None:
        self.sampler = sampler
        self.skip = skip

    def __iter__(self) -> Iterator[CutSet]:
        return itertools.islice(iter(self.sampler), self.skip, None)


def make_loader(dataset: FrameDataset, sampler: Iterable[CutSet], num_workers: int = 0, seed: int = 0) -> DataLoader:
    """Return a DataLoader that turns each CutSet of ``sampler`` into a batch of ``dataset``.

    The loader draws its workers' base seed from its own generator seeded with ``seed``: left to
    itself it would draw from torch's global generator each time an iterator starts, and a
    resumed run (which starts its iterator at another point) would then see different dropout.
    """
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, sampler=sampler, batch_size=None, num_workers=num_workers, generator=generator,
        pin_memory=torch.cuda.is_available(),  # lets the host-to-device copy run asynchronously
        persistent_workers=False, prefetch_factor=2 if num_workers > 0 else None,
    )
