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
first, up to a size bound; the values are the same either way. Codes decoded to every senone
(``soft_decode_k`` >= the number of senones, the recipe's default) are kept *dense*: float16
probabilities in senone order and no ids (2 bytes per senone and frame, where ids and float32
probabilities took 8), and a batch of them collates to ``ids = None`` with ``probs`` ``[B, T, C]``,
which the losses read without a gather or a scatter. Only a dataset read in its own
process keeps them (``num_workers: 0``, the recipe's configs): a loader's worker processes live
for one epoch, so they decode every epoch, beside training, and keep nothing.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Sequence

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
_CODEBOOK_CACHE: dict[tuple[str, str, str | None], np.ndarray | torch.Tensor] = {}  # codebooks by file, key and device


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


def _reconstruct(codes: np.ndarray | torch.Tensor, codebook: np.ndarray | torch.Tensor) -> torch.Tensor | None:
    """The sum of each frame's codewords (frames x C, float32), which approximates the square root
    of its posterior; None for no frames. Checks that ``codes`` is (frames x n) for ``codebook``'s n.
    A ``codebook`` tensor (float32) is used where it is (stage 5's quantiser and a student's batch
    on a GPU), and tensor ``codes`` are moved there."""
    if not isinstance(codes, torch.Tensor):
        codes = np.asarray(codes)
    n = codebook.shape[0]
    if codes.ndim != 2 or codes.shape[1] != n:
        raise ValueError(f"codes must be (frames x {n}), got shape {tuple(codes.shape)}")
    if codes.shape[0] == 0:
        return None
    books = codebook if isinstance(codebook, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(codebook, dtype=np.float32))
    index = (codes.to(books.device, torch.int64) if isinstance(codes, torch.Tensor)
             else torch.from_numpy(codes.astype(np.int64)).to(books.device))
    root = books[0][index[:, 0]]  # one codebook at a time: never a (frames x n x C) tensor
    for b in range(1, n):
        root += books[b][index[:, b]]
    return root


def _topk_of_root(root: torch.Tensor, k: int, renormalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-``k`` ``(ids int64, probs float32)`` of reconstructions ``root`` (:func:`decode_codes`);
    ``root`` is overwritten (one frames x C tensor at a time)."""
    p = root.clamp_(min=0.0).square_()
    values, ids = torch.topk(p, k, dim=1)
    mass = (values if renormalise else p).sum(dim=1, keepdim=True)
    values = values / mass.clamp_min(1e-30)
    values[mass.squeeze(1) <= 0, 0] = 1.0  # a reconstruction that is all <= 0 keeps only its first id
    return ids, values


def _dense_of_root(root: torch.Tensor) -> torch.Tensor:
    """Every senone's probability (float16) of reconstructions ``root`` (:func:`decode_codes_dense`);
    ``root`` is overwritten."""
    # All <= 0 (rare): the least negative senone gets everything (decode_codes' top-k picks one of
    # the tied zeros instead, so such frames may differ between the two).
    empty = (root <= 0).all(dim=1)
    first = root.argmax(dim=1)
    p = root.clamp_(min=0.0).square_()
    p /= p.sum(dim=1, keepdim=True).clamp_min(1e-30)
    p[empty, first[empty]] = 1.0
    return p.to(torch.float16)


def decode_codes(codes: np.ndarray, codebook: np.ndarray | torch.Tensor, k: int, renormalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return the top-``k`` ``(ids int32, probs float32)`` (frames x k) of the distributions that
    the residual codes ``codes`` (frames x n, uint8) stand for: the sum of each frame's codewords
    of ``codebook`` (n x 256 x C) approximates the square root of its posterior, so its positive
    part squared and renormalised is the posterior. The top ``k`` are renormalised to sum to 1,
    or with ``renormalise=False`` keep their shares of the whole reconstruction."""
    k = min(k, codebook.shape[2])
    root = _reconstruct(codes, codebook)
    if root is None:
        return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
    ids, values = _topk_of_root(root, k, renormalise)
    return ids.to(torch.int32).cpu().numpy(), values.cpu().numpy()


def decode_codes_dense(codes: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Return the whole distributions (frames x C, float16, in senone order) that the residual
    codes ``codes`` (frames x n, uint8) stand for: :func:`decode_codes` with every senone kept
    (then renormalising and keeping the shares of the whole reconstruction are the same), without
    its sort. Float16 keeps every probability within 0.05% of itself (down to 6e-5; smaller ones
    within 6e-8 absolute), as the ``int32-fp16`` format stores them."""
    root = _reconstruct(codes, codebook)
    if root is None:
        return np.zeros((0, codebook.shape[2]), np.float16)
    return _dense_of_root(root).cpu().numpy()


def _codebook(cut: Cut) -> np.ndarray:
    """The codebook of ``cut`` (shared by every cut of its folder: read once per process)."""
    return _codebook_of(cut.custom[SOFT_CODEBOOK])


def _codebook_of(manifest, device: torch.device | None = None) -> np.ndarray | torch.Tensor:
    """The float32 codebook that ``manifest`` (a cut's ``soft_codebook``) names: an array, or a
    tensor on ``device``; read (and copied there) once per process."""
    key = (str(manifest.storage_path), str(manifest.storage_key), None if device is None else str(device))
    if key not in _CODEBOOK_CACHE:
        book = (np.asarray(manifest.load(), dtype=np.float32) if device is None
                else torch.from_numpy(_codebook_of(manifest)).to(device))
        if len(_CODEBOOK_CACHE) >= 8:
            _CODEBOOK_CACHE.clear()
        _CODEBOOK_CACHE[key] = book
    return _CODEBOOK_CACHE[key]


def _decode_settings(cut: Cut) -> tuple[int, bool]:
    """``(k, renormalise)``: how many senones a coded cut decodes to, and whether its rows are
    renormalised (not with :data:`SOFT_TAIL`)."""
    return int(cut.custom.get(SOFT_DECODE_K, CODEBOOK_SIZE)), not (cut.custom or {}).get(SOFT_TAIL, False)


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    """Turn a failure to read stored soft targets into a one-line DataError naming ``what`` (a cut,
    a codebook) and, from the archive's own message, the file and the fix."""
    try:
        yield
    except ArchiveError as err:
        raise DataError(f"{what}: cannot read its stored soft targets: {err}") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{what}: cannot read its stored soft targets ({err}); rerun the stage that stored them (soft targets)") from None


def load_soft_targets(cut: Cut) -> tuple[np.ndarray, np.ndarray]:
    """Return the stored targets of ``cut`` as top-k ``(ids, probs)``, each (frames x k), for the
    cut's own time span (a truncated cut gets the matching frames): ids int32 or uint16, probs
    float16 or float32 whose rows sum to 1 (to the mass kept where the cut has
    :data:`SOFT_TAIL`), whatever the stored format (module docstring). Codes decoded to every
    senone give ``k = C`` with the ids in senone order (a read-only view, no memory).

    Raises :class:`DataError` (one line naming the cut and the file) when the cut has no stored
    targets or their storage is missing, truncated or corrupt."""
    ids, probs = load_targets(cut)
    if ids is None:
        ids = np.broadcast_to(np.arange(probs.shape[1], dtype=np.int32), probs.shape)
    return ids, probs


def load_targets(cut: Cut) -> tuple[np.ndarray | None, np.ndarray]:
    """:func:`load_soft_targets` as batches read it: ``ids`` is None where the targets are dense
    (codes decoded to every senone: ``probs`` frames x C float16, in senone order)."""
    if not has_soft_targets(cut):
        raise DataError(f"cut {cut.id} has no stored soft targets; run stage 5 (soft targets) on these cuts or set kd.mode=online")
    k, renormalise = _decode_settings(cut)
    with _reading(f"cut {cut.id}"):
        if cut.has_custom(SOFT_CODES):
            codebook = _codebook(cut)
            if k >= codebook.shape[2]:
                return None, decode_codes_dense(cut.load_custom(SOFT_CODES), codebook)
            return decode_codes(cut.load_custom(SOFT_CODES), codebook, k, renormalise)
        return cut.load_custom(SOFT_IDS), stored_probs(cut.load_custom(SOFT_PROBS), renormalise)


class DecodedTargetCache:
    """The decoded targets of ``rvq``-coded cuts (as :func:`load_targets` gives them: dense where
    every senone is decoded), kept in memory up to ``max_bytes``.

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
        self._entries: dict[tuple[str, float, float], tuple[np.ndarray | None, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, cut: Cut) -> tuple[np.ndarray | None, np.ndarray]:
        """:func:`load_targets` of ``cut``, from memory where it was decoded before."""
        key = (cut.id, cut.start, cut.duration)
        hit = self._entries.get(key)
        if hit is not None:
            return hit
        ids, probs = load_targets(cut)
        size = (0 if ids is None else ids.nbytes) + probs.nbytes
        if cut.has_custom(SOFT_CODES) and self.bytes + size <= self.max_bytes and get_worker_info() is None:
            for array in (ids, probs):  # shared by every later batch: nothing may write into them
                if array is not None:
                    array.setflags(write=False)
            self._entries[key] = (ids, probs)
            self.bytes += size
        return ids, probs


def collate_soft_targets(cuts: Sequence[Cut], num_frames: int | None = None,
                         cache: DecodedTargetCache | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Return a padded batch of the cuts' soft targets: ``ids`` int64 and ``probs`` float32, both
    ``[B, T, k]`` with ``T = num_frames`` (default: the longest cut); where every cut's targets
    are dense (codes decoded to every senone) ``ids`` is None and ``probs`` is ``[B, T, C]`` in
    senone order. Padding frames have id 0 and probability 0, so they add nothing to a top-k loss
    (with ``kd.tail=bucket`` their rest is 1: the loss's frame mask must leave them out, as the
    students' does); frames beyond ``num_frames`` are cut off (to match features padded or
    truncated to that length). ``cache`` keeps decoded targets between calls."""
    loaded = [load_targets(c) if cache is None else cache.load(c) for c in cuts]
    if not loaded:
        raise ValueError("cannot collate soft targets of an empty batch")
    ks = {probs.shape[1] for _, probs in loaded}
    if len(ks) != 1:
        raise DataError(f"cuts in one batch carry soft targets of different k {sorted(ks)}; store all cuts with one kd.top_k")
    (k,) = ks
    length = num_frames if num_frames is not None else max(probs.shape[0] for _, probs in loaded)
    dense = all(ids is None for ids, _ in loaded)
    ids_out = None if dense else torch.zeros(len(loaded), length, k, dtype=torch.int64)
    probs_out = torch.empty(len(loaded), length, k, dtype=torch.float32)  # each row written once below
    with warnings.catch_warnings():  # the cache's arrays are read-only; these copies only read them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for b, (ids, probs) in enumerate(loaded):
            n = min(length, probs.shape[0])
            # torch converts float16 in hardware; numpy's conversion is 40x slower on the subnormal
            # values of small probabilities.
            probs_out[b, :n] = torch.from_numpy(probs[:n])
            probs_out[b, n:] = 0.0
            if ids_out is not None:  # a dense cut among top-k ones (k = C): its ids are the senones in order
                ids_out[b, :n] = torch.arange(k) if ids is None else torch.from_numpy(ids[:n].astype(np.int64))
    return ids_out, probs_out


# --------------------------------------------------------------------------------------------
# Codes decoded where the student trains
# --------------------------------------------------------------------------------------------

SOFT_CODE_LENGTHS = "soft_code_lengths"
SOFT_RENORMALISE = "soft_renormalise"
# Frames decoded at once by decode_batch_codes: (CPU, GPU). 2,048 x 4,200 senones x 4 bytes is 34 MB;
# a GPU takes 32,768 (550 MB), most of a 400-s batch.
DECODE_CHUNK_FRAMES = (2048, 32768)


def collate_soft_codes(cuts: Sequence[Cut], num_frames: int) -> dict | None:
    """Return a batch's rvq codes undecoded, for :func:`decode_batch_codes` to decode on the
    training device: ``soft_codes`` uint8 ``[B, num_frames, n]`` (padding 0), ``soft_code_lengths``
    (each cut's frames that hold codes), ``soft_codebook`` (the cuts' shared codebook manifest,
    read once per process where it is decoded), ``soft_decode_k`` and ``soft_renormalise``.
    None unless every cut carries codes of one codebook with one decode k and one tail setting
    (the batch then takes :func:`collate_soft_targets`' decoded form).

    A loader worker decodes about 10,000 frames a second with 4,200 senones decoded to the top 500
    (bench/RESULTS.md "Data loader against the GPU"), where one GPU trains the paper's network on a
    million; the codes are 8 bytes a frame, the decoded targets 6 kB."""
    if not cuts or not all(c.has_custom(SOFT_CODES) and c.has_custom(SOFT_CODEBOOK) for c in cuts):
        return None
    def settings(cut: Cut) -> tuple:
        book = cut.custom[SOFT_CODEBOOK]
        return (str(book.storage_path), str(book.storage_key), *_decode_settings(cut))
    first = settings(cuts[0])
    if any(settings(c) != first for c in cuts[1:]):
        return None
    codes = []
    for cut in cuts:
        with _reading(f"cut {cut.id}"):
            codes.append(cut.load_custom(SOFT_CODES))
    n = codes[0].shape[1]
    out = torch.zeros(len(cuts), num_frames, n, dtype=torch.uint8)
    lengths = torch.zeros(len(cuts), dtype=torch.int64)
    for b, c in enumerate(codes):
        m = min(num_frames, c.shape[0])
        out[b, :m] = torch.from_numpy(np.ascontiguousarray(c[:m], dtype=np.uint8))
        lengths[b] = m
    return {SOFT_CODES: out, SOFT_CODE_LENGTHS: lengths, SOFT_CODEBOOK: cuts[0].custom[SOFT_CODEBOOK],
            SOFT_DECODE_K: first[2], SOFT_RENORMALISE: first[3]}


def device_codebook(manifest, device: torch.device) -> torch.Tensor:
    """The codebook of ``manifest`` (a cut's ``soft_codebook``) as float32 on ``device``, read and
    copied once per process."""
    with _reading(f"codebook {manifest.storage_path}"):
        return _codebook_of(manifest, device)


def decode_batch_codes(batch: dict) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The ``(ids, probs)`` that :func:`collate_soft_targets` gives for a batch of
    :func:`collate_soft_codes`, computed where ``batch["soft_codes"]`` is (the training device),
    with the same arithmetic: the same values on the CPU, bit for bit. Only the frames that hold
    codes are decoded, :data:`DECODE_CHUNK_FRAMES` at a time (one chunk's frames x senones in
    memory, not the batch's; on the CPU a chunk small enough for the caches)."""
    codes = batch[SOFT_CODES]
    b, t, n = codes.shape
    device = codes.device
    books = device_codebook(batch[SOFT_CODEBOOK], device)
    num_classes = books.shape[2]
    k = min(int(batch[SOFT_DECODE_K]), num_classes)
    dense = k >= num_classes
    valid = torch.arange(t, device=device)[None, :] < batch[SOFT_CODE_LENGTHS].to(device)[:, None]
    rows = valid.reshape(-1).nonzero().squeeze(1)
    flat = codes.reshape(b * t, n)
    # Padding stays id 0 and probability 0, as collate_soft_targets pads.
    ids = None if dense else torch.zeros(b * t, k, dtype=torch.int64, device=device)
    probs = torch.zeros(b * t, k, dtype=torch.float32, device=device)
    chunk = DECODE_CHUNK_FRAMES[device.type == "cuda"]
    for start in range(0, rows.numel(), chunk):
        part = rows[start:start + chunk]
        root = _reconstruct(flat[part], books)
        if dense:
            probs[part] = _dense_of_root(root).float()
        else:
            part_ids, part_probs = _topk_of_root(root, k, bool(batch[SOFT_RENORMALISE]))
            ids[part], probs[part] = part_ids, part_probs
    return (None if ids is None else ids.reshape(b, t, k)), probs.reshape(b, t, k)
