"""Senone classification as a many-class task for the specialists recipe (paper section 5).

The examples are single frames of the speech recipe: stage 1's fbank features, CMVN-normalised
per speaker (or globally), spliced with ``context`` frames on each side, labelled with stage 3's
senone alignments. Train, validation and test sets come from three different parts of the
corpus (by default train-clean-100, dev-clean and test-clean), so no test speaker or utterance is
seen in training. Frames are subsampled uniformly at random within each part to keep the task
CPU-sized; a frame's context window still comes from its whole utterance.

The result is a :class:`FrameSet` per split with the same interface as the image sets of the
MNIST tasks (``inputs()``, ``targets()``, ``labels``), which is all the specialists stages use.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from asr_kd.errors import DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class FrameSet:
    """Spliced feature frames ``[N, D]`` (float32) with integer class labels ``[N]``."""

    features: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.labels.shape != (self.features.shape[0],):
            raise ValueError(f"FrameSet needs features [N, D] and labels [N], got {self.features.shape} and {self.labels.shape}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def input_dim(self) -> int:
        """Return the dimension of one (spliced) frame."""
        return int(self.features.shape[1])

    def inputs(self) -> torch.Tensor:
        """Return the frames as a float32 tensor ``[N, D]`` (shares memory with ``features``)."""
        return torch.from_numpy(np.ascontiguousarray(self.features, dtype=np.float32))

    def targets(self) -> torch.Tensor:
        """Return the labels as an int64 tensor ``[N]``."""
        return torch.from_numpy(self.labels.astype(np.int64))


def sample_frames(frame_counts: Sequence[int], max_frames: int, seed: int) -> list[np.ndarray]:
    """Return, per utterance, the sorted indices of its sampled frames: ``max_frames`` frames
    drawn uniformly without replacement from all ``sum(frame_counts)`` frames (every frame when
    ``max_frames`` is 0 or at least the total). Deterministic given ``seed``."""
    counts = np.asarray(frame_counts, dtype=np.int64)
    if counts.size and counts.min() < 0:
        raise ValueError("frame counts must be >= 0")
    total = int(counts.sum())
    if max_frames <= 0 or max_frames >= total:
        return [np.arange(c, dtype=np.int64) for c in counts]
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=max_frames, replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    # chosen is sorted, so each utterance's frames form one contiguous run of it
    bounds = np.searchsorted(chosen, starts)
    return [chosen[bounds[i] : bounds[i + 1]] - starts[i] for i in range(len(counts))]


def splice(feats: np.ndarray, frames: np.ndarray, context: int) -> np.ndarray:
    """Return ``[len(frames), (2 * context + 1) * D]``: for each index ``t`` of ``frames``, the
    rows ``t - context .. t + context`` of ``feats`` (``[T, D]``) concatenated oldest first, the
    utterance's first and last rows repeated beyond its edges (as the DNN's ``splice_frames``)."""
    if feats.shape[0] == 0:
        return np.zeros((0, (2 * context + 1) * feats.shape[1]), dtype=feats.dtype)
    idx = np.clip(np.asarray(frames)[:, None] + np.arange(-context, context + 1)[None, :], 0, feats.shape[0] - 1)
    return feats[idx].reshape(len(frames), -1)


def frames_from_cuts(
    cuts: Iterable[Any],
    normalize: Any,
    context: int,
    max_frames: int,
    seed: int,
    num_classes: int,
    desc: str = "frames",
) -> tuple[FrameSet, dict[str, int]]:
    """Return the sampled, spliced, normalised frames of ``cuts`` (lhotse cuts with features and
    a "senones" alignment) and counts ``{"cuts", "frames", "sampled", "skipped"}``.

    ``normalize(cut, feats)`` returns the cut's normalised features. A cut whose alignment
    cannot be read or does not match its features is skipped (counted and logged); a label
    outside ``0..num_classes - 1`` raises :class:`DataError`.
    """
    from asr_kd.config import SENONES_FIELD
    from asr_kd.data.alignments import load_alignment

    cut_list = list(cuts)
    picks = sample_frames([c.num_frames for c in cut_list], max_frames, seed)
    feats_out: list[np.ndarray] = []
    labels_out: list[np.ndarray] = []
    skipped: list[str] = []
    for cut, frames in zip(tqdm(cut_list, desc=desc, mininterval=5.0, leave=False), picks):
        if len(frames) == 0:
            continue
        try:
            labels = load_alignment(cut, SENONES_FIELD)
            feats = np.asarray(normalize(cut, cut.load_features()), dtype=np.float32)
        except (DataError, OSError, ValueError, KeyError) as err:
            skipped.append(f"{cut.id} ({err})")
            continue
        if feats.shape[0] != labels.shape[0]:
            skipped.append(f"{cut.id} ({feats.shape[0]} feature frames, {labels.shape[0]} labels)")
            continue
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"cut {cut.id}: senone {int(labels.max())} outside 0..{num_classes - 1}; the alignments and senones.json disagree, rerun stage 3")
        feats_out.append(splice(feats, frames, context))
        labels_out.append(labels[frames])
    if skipped:
        logger.warning("%s: skipped %d cuts whose features or senones could not be used (first: %s)", desc, len(skipped), skipped[0])
    if not feats_out:
        raise DataError(f"{desc}: no usable frame with senone labels; rerun stage 3 (alignments) for this part")
    out = FrameSet(np.concatenate(feats_out), np.concatenate(labels_out).astype(np.int64))
    counts = {"cuts": len(cut_list), "frames": int(sum(c.num_frames for c in cut_list)), "sampled": len(out), "skipped": len(skipped)}
    return out, counts


def load_senone_task(
    gmm_exp: Path | str,
    data_dir: Path | str,
    parts: Sequence[str],
    max_frames: Sequence[int],
    context: int,
    seed: int,
) -> tuple[dict[str, FrameSet], int, dict[str, Any]]:
    """Return the train / val / test :class:`FrameSet` of the senone task, the number of senones
    and a summary (parts, per-split counts, feature dimension).

    ``gmm_exp`` is the speech recipe's experiment folder holding ``gmm/`` (stage 3),
    ``data_dir`` its data folder holding ``fbank/`` (stage 1); ``parts`` names the corpus parts
    of the three splits and ``max_frames`` their frame budgets (0: all frames).
    """
    from asr_kd.data.features import cmvn_key
    from asr_kd.data.frames import cmvn_mode
    from asr_kd.stages.common import read_senones
    from asr_kd.stages.layout import RecipeLayout

    if len(parts) != len(SPLITS) or len(max_frames) != len(SPLITS):
        raise ValueError(f"need one part and one frame budget for each of {SPLITS}")
    gmm_exp, data_dir = Path(gmm_exp), Path(data_dir)
    if not (gmm_exp / "gmm").is_dir():
        raise DataError(f"{gmm_exp} has no gmm/ folder; pass --gmm-exp the speech recipe's exp folder after stage 3 (e.g. recipes/librispeech/exp)")
    if not (data_dir / "fbank").is_dir():
        raise DataError(f"{data_dir} has no fbank/ folder; pass --data-dir the speech recipe's data folder after stage 1 (e.g. recipes/librispeech/data)")
    layout = RecipeLayout(data_dir, gmm_exp)
    num_senones = read_senones(layout).num_senones
    task: dict[str, FrameSet] = {}
    counts: dict[str, dict[str, int]] = {}
    for i, (split, part, budget) in enumerate(zip(SPLITS, parts, max_frames)):
        stats = layout.open_cmvn(part)
        mode = cmvn_mode(stats)

        def normalize(cut: Any, feats: np.ndarray, stats: Any = stats, mode: str = mode) -> np.ndarray:
            return stats.normalize(feats, cmvn_key(cut, mode))

        task[split], counts[split] = frames_from_cuts(layout.open_cuts(layout.ali_cuts(part)), normalize, context, budget, seed * 10 + i, num_senones, desc=f"{split} ({part})")
        logger.info("%s (%s): %d of %d frames from %d cuts", split, part, counts[split]["sampled"], counts[split]["frames"], counts[split]["cuts"])
    summary = {"parts": dict(zip(SPLITS, parts)), "counts": counts, "context": context, "input_dim": task["train"].input_dim}
    return task, num_senones, summary


def save_frame_task(path: Path | str, task: dict[str, FrameSet], num_classes: int) -> None:
    """Write the splits and the class count to ``path`` (``.npz``, uncompressed: float frames
    barely compress), atomically."""
    from asr_kd.utils import atomic_path

    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, num_classes=np.int64(num_classes), **{f"{k}_{a}": getattr(v, a) for k, v in task.items() for a in ("features", "labels")})


def is_frame_task(path: Path | str) -> bool:
    """Return whether the task file ``path`` holds frames (written by :func:`save_frame_task`)."""
    with np.load(path) as z:
        return "train_features" in z.files


def load_frame_task(path: Path | str) -> tuple[dict[str, FrameSet], int]:
    """Return the splits and the class count written by :func:`save_frame_task`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; run the prepare stage of recipes/specialists first")
    with np.load(path) as z:
        return {k: FrameSet(z[f"{k}_features"], z[f"{k}_labels"]) for k in SPLITS}, int(z["num_classes"])
