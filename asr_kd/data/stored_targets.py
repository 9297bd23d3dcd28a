"""The custom fields that stored soft targets occupy on cuts, and how batches read them back.

Stage 5 (:mod:`asr_kd.kd.soft_targets` writes them) attaches to every training cut ``soft_ids``
(int32) and ``soft_probs`` (float16), each (frames x k), stored in one ``npy_archive`` per folder,
plus ``soft_temperature``. This module is the data layer's side: loading one cut's targets and
collating a batch, so that :mod:`asr_kd.data.frames` needs nothing from the KD package.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from lhotse.cut import Cut

# Importing the archive module registers its lhotse storage type, so manifests that name
# ``npy_archive`` can be loaded by every reader of stored soft targets.
from asr_kd.data.array_archive import ArchiveError
from asr_kd.errors import DataError

SOFT_IDS = "soft_ids"
SOFT_PROBS = "soft_probs"
SOFT_TEMPERATURE = "soft_temperature"


def has_soft_targets(cut: Cut) -> bool:
    """Return whether ``cut`` carries stored soft targets."""
    return cut.has_custom(SOFT_IDS) and cut.has_custom(SOFT_PROBS)


def load_soft_targets(cut: Cut) -> tuple[np.ndarray, np.ndarray]:
    """Return the stored ``(ids int32, probs float16)`` of ``cut``, each (frames x k), for the
    cut's own time span (a truncated cut gets the matching frames).

    Raises :class:`DataError` (one line naming the cut and the file) when the cut has no stored
    targets or their storage is missing, truncated or corrupt."""
    if not has_soft_targets(cut):
        raise DataError(f"cut {cut.id} has no stored soft targets; run stage 5 (soft targets) on these cuts or set kd.mode=online")
    try:
        return cut.load_custom(SOFT_IDS), cut.load_custom(SOFT_PROBS)
    except ArchiveError as err:  # its message names the archive and the fix
        raise DataError(f"cut {cut.id}: cannot read its stored soft targets: {err}") from None
    except (OSError, ValueError) as err:
        raise DataError(
            f"cut {cut.id}: cannot read its stored soft targets ({err}); rerun the stage that stored them (soft targets)"
        ) from None


def collate_soft_targets(cuts: Sequence[Cut], num_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return a padded batch of the cuts' soft targets: ``ids`` int64 and ``probs`` float32, both
    ``[B, T, k]`` with ``T = num_frames`` (default: the longest cut). Padding frames have id 0
    and probability 0, so they add nothing to a top-k loss; frames beyond ``num_frames`` are
    cut off (to match features padded or truncated to that length)."""
    loaded = [load_soft_targets(c) for c in cuts]
    if not loaded:
        raise ValueError("cannot collate soft targets of an empty batch")
    ks = {ids.shape[1] for ids, _ in loaded}
    if len(ks) != 1:
        raise DataError(f"cuts in one batch carry soft targets of different k {sorted(ks)}; store all cuts with one kd.top_k")
    (k,) = ks
    length = num_frames if num_frames is not None else max(ids.shape[0] for ids, _ in loaded)
    ids_out = torch.zeros(len(loaded), length, k, dtype=torch.int64)
    probs_out = torch.zeros(len(loaded), length, k, dtype=torch.float32)
    for b, (ids, probs) in enumerate(loaded):
        n = min(length, ids.shape[0])
        ids_out[b, :n] = torch.from_numpy(ids[:n].astype(np.int64))
        probs_out[b, :n] = torch.from_numpy(probs[:n].astype(np.float32))
    return ids_out, probs_out
