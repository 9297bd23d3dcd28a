"""The custom fields that stored soft targets occupy on cuts, and how batches read them back.

Stage 5 (:mod:`asr_kd.kd.soft_targets` writes them) attaches to every training cut its soft
targets in one of three formats (``kd.storage``), stored in one ``npy_archive`` per folder, plus
``soft_temperature``:

- ``int32-fp16``: ``soft_ids`` int32 and ``soft_probs`` float16, each (frames x k): 6 k bytes a
  frame.
- ``uint16-uint8``: ``soft_ids`` uint16 and ``soft_probs`` uint8, the negative natural log of each
  kept probability in steps of :data:`LOGPROB_STEP` nats (0..255, so down to about 1e-7): 3 k
  bytes a frame. Rounding moves a probability by at most 3.2% of itself before renormalising.
- ``rvq``: ``soft_codes`` uint8 (frames x n), one index per codebook of a residual vector
  quantiser of the square root of the whole posterior (n bytes a frame, like icefall's MVQ codes),
  ``soft_codebook`` (n x 256 x C, float16, one record shared by all cuts of the folder) and
  ``soft_decode_k``, the senones a decoded frame keeps.

With ``kd.tail: bucket`` the cuts also carry ``soft_tail: true``: their kept probabilities are the
ensemble's own (an ``rvq`` frame's: shares of its whole reconstruction), so each row sums to the
mass it keeps and ``1 - sum`` is the mass of every other senone, which the loss keeps as one more
target. Without it, rows are renormalised to sum to 1.

This module is the data layer's side: loading one cut's targets, always as top-k ``(ids, probs)``
whatever the format, and collating a batch, so that :mod:`asr_kd.data.frames` and the losses need
nothing from the KD package and nothing about formats.

Decoding ``rvq`` codes costs more than the student's step on a small network (a top-k over every
senone of every frame), and a student reads the same cuts every epoch, so a
:class:`DecodedTargetCache` keeps each cut's decoded top-k in memory for the epochs after its
first, up to a size bound; the values are the same either way. Only a dataset read in its own
process keeps them (``num_workers: 0``, the recipe's configs): a loader's worker processes live
for one epoch, so they decode every epoch, beside training, and keep nothing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from lhotse.cut import Cut
from torch.utils.data import get_worker_info

# Importing the archive module registers its lhotse storage type, so manifests that name
# ``npy_archive`` can be loaded by every reader of stored soft targets.
from asr_kd.data.array_archive import ArchiveError
from asr_kd.errors import DataError

SOFT_IDS = "soft_ids"
SOFT_PROBS = "soft_probs"
SOFT_TEMPERATURE = "soft_temperature"
SOFT_CODES = "soft_codes"
SOFT_CODEBOOK = "soft_codebook"
SOFT_DECODE_K = "soft_decode_k"
SOFT_TAIL = "soft_tail"  # true: probabilities as kept, not renormalised (kd.tail=bucket)
# uint8 quantised log-probabilities: stored value q means p = exp(-q * LOGPROB_STEP) before the
# row is renormalised. 1/16 nat keeps every kept probability within 3.2% of itself and reaches
# exp(-255/16) = 1.2e-7, far below anything a top-k of a trained ensemble keeps.
LOGPROB_STEP = 1.0 / 16.0
CODEBOOK_SIZE = 256  # entries per codebook: one uint8 code each
_CODEBOOK_CACHE: dict[tuple[str, str], np.ndarray] = {}


def has_soft_targets(cut: Cut) -> bool:
    """Return whether ``cut`` carries stored soft targets (top-k or codes)."""
    return (cut.has_custom(SOFT_IDS) and cut.has_custom(SOFT_PROBS)) or (cut.has_custom(SOFT_CODES) and cut.has_custom(SOFT_CODEBOOK))


def quantise_log_probs(probs: np.ndarray) -> np.ndarray:
    """Return ``probs`` (positive, any shape) as uint8 steps of :data:`LOGPROB_STEP` nats of
    ``-log p`` (the ``uint16-uint8`` format); probabilities below exp(-255 step) become 255."""
    with np.errstate(divide="ignore"):
        steps = np.rint(-np.log(np.asarray(probs, dtype=np.float64)) / LOGPROB_STEP)
    return np.clip(steps, 0, 255).astype(np.uint8)


def dequantise_log_probs(steps: np.ndarray, renormalise: bool = True) -> np.ndarray:
    """Return float32 probabilities from :func:`quantise_log_probs`' steps, each row renormalised
    to sum to 1 (or as stored: ``renormalise=False``)."""
    p = np.exp(-np.asarray(steps, dtype=np.float64) * LOGPROB_STEP)
    return (p / p.sum(axis=-1, keepdims=True) if renormalise else p).astype(np.float32)


def stored_probs(probs: np.ndarray, renormalise: bool = True) -> np.ndarray:
    """Stored top-k probabilities as rows that sum to 1 (or to the mass they keep:
    ``renormalise=False``, targets stored with :data:`SOFT_TAIL`): float16 as stored, uint8
    log-probability steps dequantised (:func:`dequantise_log_probs`)."""
    return dequantise_log_probs(probs, renormalise) if probs.dtype == np.uint8 else probs


def decode_codes(codes: np.ndarray, codebook: np.ndarray, k: int, renormalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return the top-``k`` ``(ids int32, probs float32)`` (frames x k) of the distributions that
    the residual codes ``codes`` (frames x n, uint8) stand for: the sum of each frame's codewords
    of ``codebook`` (n x 256 x C) approximates the square root of its posterior, so its positive
    part squared and renormalised is the posterior. The top ``k`` are renormalised to sum to 1,
    or with ``renormalise=False`` keep their shares of the whole reconstruction."""
    codes = np.asarray(codes)
    n, size, num_classes = codebook.shape
    if codes.ndim != 2 or codes.shape[1] != n:
        raise ValueError(f"codes must be (frames x {n}), got shape {codes.shape}")
    k = min(k, num_classes)
    if codes.shape[0] == 0:
        return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
    books = torch.from_numpy(np.ascontiguousarray(codebook, dtype=np.float32))
    index = torch.from_numpy(codes.astype(np.int64))
    root = books[0][index[:, 0]]  # one codebook at a time: never a (frames x n x C) tensor
    for b in range(1, n):
        root += books[b][index[:, b]]
    p = root.clamp_min(0.0).square()
    values, ids = torch.topk(p, k, dim=1)
    mass = (values if renormalise else p).sum(dim=1, keepdim=True)
    values = values / mass.clamp_min(1e-30)
    values[mass.squeeze(1) <= 0, 0] = 1.0  # a reconstruction that is all <= 0 keeps only its first id
    return ids.to(torch.int32).numpy(), values.numpy()


def _codebook(cut: Cut) -> np.ndarray:
    """The codebook of ``cut`` (shared by every cut of its folder: read once per process)."""
    manifest = cut.custom[SOFT_CODEBOOK]
    key = (str(manifest.storage_path), str(manifest.storage_key))
    if key not in _CODEBOOK_CACHE:
        if len(_CODEBOOK_CACHE) >= 8:
            _CODEBOOK_CACHE.clear()
        _CODEBOOK_CACHE[key] = cut.load_custom(SOFT_CODEBOOK).astype(np.float32)
    return _CODEBOOK_CACHE[key]


def load_soft_targets(cut: Cut) -> tuple[np.ndarray, np.ndarray]:
    """Return the stored targets of ``cut`` as top-k ``(ids, probs)``, each (frames x k), for the
    cut's own time span (a truncated cut gets the matching frames): ids int32 or uint16, probs
    float16 or float32 whose rows sum to 1 (to the mass kept where the cut has
    :data:`SOFT_TAIL`), whatever the stored format (module docstring).

    Raises :class:`DataError` (one line naming the cut and the file) when the cut has no stored
    targets or their storage is missing, truncated or corrupt."""
    if not has_soft_targets(cut):
        raise DataError(f"cut {cut.id} has no stored soft targets; run stage 5 (soft targets) on these cuts or set kd.mode=online")
    try:
        renormalise = not (cut.custom or {}).get(SOFT_TAIL, False)
        if cut.has_custom(SOFT_CODES):
            k = int(cut.custom.get(SOFT_DECODE_K, CODEBOOK_SIZE))
            return decode_codes(cut.load_custom(SOFT_CODES), _codebook(cut), k, renormalise)
        ids, probs = cut.load_custom(SOFT_IDS), cut.load_custom(SOFT_PROBS)
        return ids, stored_probs(probs, renormalise)
    except ArchiveError as err:  # its message names the archive and the fix
        raise DataError(f"cut {cut.id}: cannot read its stored soft targets: {err}") from None
    except (OSError, ValueError) as err:
        raise DataError(
            f"cut {cut.id}: cannot read its stored soft targets ({err}); rerun the stage that stored them (soft targets)"
        ) from None


class DecodedTargetCache:
    """The decoded top-k targets of ``rvq``-coded cuts, kept in memory up to ``max_bytes``.

    A cut's targets are added the first time they are decoded while there is room, and never
    evicted: a training epoch reads every cut once, so a full cache still saves the decoding of
    the cuts it holds, where an evicting one would drop each cut just before its next use. Cuts
    stored as plain top-k are read from their archive each time (no decoding to save), and so is
    every cut inside a DataLoader worker process, whose copy of the cache would go with it at the
    end of the epoch. The key is the cut's id and span, since a truncated cut loads other frames.
    Under DDP each rank keeps its own (up to ``max_bytes`` each)."""

    def __init__(self, max_bytes: int = 2 << 30) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: dict[tuple[str, float, float], tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, cut: Cut) -> tuple[np.ndarray, np.ndarray]:
        """:func:`load_soft_targets` of ``cut``, from memory where it was decoded before."""
        key = (cut.id, cut.start, cut.duration)
        hit = self._entries.get(key)
        if hit is not None:
            return hit
        ids, probs = load_soft_targets(cut)
        size = ids.nbytes + probs.nbytes
        if cut.has_custom(SOFT_CODES) and self.bytes + size <= self.max_bytes and get_worker_info() is None:
            ids.setflags(write=False)  # shared by every later batch: nothing may write into it
            probs.setflags(write=False)
            self._entries[key] = (ids, probs)
            self.bytes += size
        return ids, probs


def collate_soft_targets(cuts: Sequence[Cut], num_frames: int | None = None,
                         cache: DecodedTargetCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return a padded batch of the cuts' soft targets: ``ids`` int64 and ``probs`` float32, both
    ``[B, T, k]`` with ``T = num_frames`` (default: the longest cut). Padding frames have id 0
    and probability 0, so they add nothing to a top-k loss (with ``kd.tail=bucket`` their rest
    is 1: the loss's frame mask must leave them out, as the students' does); frames beyond ``num_frames`` are
    cut off (to match features padded or truncated to that length). ``cache`` keeps decoded
    targets between calls."""
    loaded = [load_soft_targets(c) if cache is None else cache.load(c) for c in cuts]
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
