"""How stage 5 stores a frame of soft targets (``kd.storage``), and what each format costs.

Three formats, from lossless-ish to compact (reading them back, always as top-k ``(ids, probs)``,
is :mod:`asr_kd.data.stored_targets`'s job):

- ``int32-fp16``: the top k senone ids (int32) and their renormalised probabilities (float16),
  ``6 k`` bytes a frame: 120 bytes at k = 20, 41 GB for LibriSpeech's 960 h (345 million frames).
- ``uint16-uint8``: the same top k with uint16 ids (up to 65,536 senones; Kaldi's tri4b has 4,200,
  the paper's network 14,000) and the negative log-probability in uint8 steps of 1/16 nat,
  ``3 k`` bytes: 15 bytes at k = 5.
- ``rvq``: a residual vector quantiser (Juang & Gray 1982) of the square root of the whole fused
  posterior: ``n`` codebooks of 256 entries, one byte each, so ``n`` bytes a frame, like the
  8-byte codes of icefall's MVQ distillation (Guo et al. 2022, "Predicting multi-codebook vector
  quantization indexes for knowledge distillation"), but of the teachers' posteriors instead of
  an embedding, so the student's loss stays the soft cross-entropy. The square root makes the
  squared Euclidean error of the quantiser twice the squared Hellinger distance between the
  posterior and its reconstruction, a distance between distributions, which the log-posterior's
  Euclidean error is not (it would spend the codes on senones of probability 1e-9). The codebooks
  are fitted by k-means, one residual at a time, on a random sample of training frames, and
  stored once per folder (float16, ``n x 256 x C``).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Iterable, Sequence

import numpy as np
import torch
from lhotse.cut import Cut

from asr_kd.data.stored_targets import (
    CODEBOOK_SIZE, SOFT_CODES, SOFT_IDS, SOFT_PROBS, decode_codes, quantise_log_probs, stored_probs,
)
from asr_kd.errors import ConfigError

log = logging.getLogger(__name__)

KMEANS_ITERATIONS = 15
# The sample the codebooks are fitted on: at most this many frames (about 200 per codebook entry),
# and at most this many bytes of float32 posteriors (14,000 senones: about 18,000 frames; the fit
# holds about three such arrays at once).
FIT_MAX_FRAMES = 50_000
FIT_MAX_BYTES = 1_000_000_000


def storage_bytes_per_frame(storage: str, top_k: int, codebooks: int) -> int:
    """Return the payload bytes of one stored frame in format ``storage`` (module docstring)."""
    if storage == "int32-fp16":
        return 6 * top_k
    if storage == "uint16-uint8":
        return 3 * top_k
    if storage == "rvq":
        return codebooks
    raise ConfigError(f"unknown soft-target storage {storage!r}; use int32-fp16, uint16-uint8 or rvq")


def encode_topk(ids: np.ndarray, probs: np.ndarray, storage: str) -> dict[str, np.ndarray]:
    """Return the arrays that store top-k ``ids`` and ``probs`` (frames x k) in ``storage``
    (``int32-fp16`` or ``uint16-uint8``), by custom-field name."""
    if storage == "int32-fp16":
        return {SOFT_IDS: np.asarray(ids, dtype=np.int32), SOFT_PROBS: np.asarray(probs, dtype=np.float16)}
    if storage == "uint16-uint8":
        if ids.size and int(ids.max()) > np.iinfo(np.uint16).max:
            raise ConfigError(f"senone id {int(ids.max())} does not fit storage uint16-uint8 (ids < 65,536); set kd.storage=int32-fp16")
        return {SOFT_IDS: np.asarray(ids, dtype=np.uint16), SOFT_PROBS: quantise_log_probs(probs)}
    raise ConfigError(f"storage {storage!r} does not store top-k arrays")


def decode_topk(arrays: dict[str, np.ndarray], renormalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(ids, probs)`` as a student will read ``arrays`` back from storage."""
    return arrays[SOFT_IDS], stored_probs(arrays[SOFT_PROBS], renormalise)


def sample_for_fitting(cuts: Sequence[Cut], num_classes: int, seed: int = 0) -> list[Cut]:
    """Return a seeded random subset of ``cuts`` holding at most :data:`FIT_MAX_FRAMES` frames
    (fewer for many classes: :data:`FIT_MAX_BYTES` of float32 posteriors), at least one cut."""
    budget = max(1, min(FIT_MAX_FRAMES, FIT_MAX_BYTES // (4 * max(num_classes, 1))))
    order = list(cuts)
    random.Random(seed).shuffle(order)
    chosen, frames = [], 0
    for cut in order:
        n = int(cut.num_frames) if cut.has_features else int(round(cut.duration * 100))
        if chosen and frames + n > budget:
            continue
        chosen.append(cut)
        frames += n
    return chosen


@dataclasses.dataclass
class ResidualQuantiser:
    """Residual vector quantiser of square-rooted posteriors: ``codebooks`` (n x 256 x C, the
    float16-rounded values that are stored); ``device``: where it encodes (stage 5 on a GPU: 8 x
    256 x C multiply-adds a frame, 17 million with 4,200 senones, too many for the CPU at 960 h)."""

    codebooks: np.ndarray
    device: str | torch.device = "cpu"
    _books: torch.Tensor | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def fit(cls, posteriors: torch.Tensor, num_books: int, seed: int = 0, iterations: int = KMEANS_ITERATIONS,
            device: str | torch.device = "cpu") -> "ResidualQuantiser":
        """Fit ``num_books`` codebooks to ``posteriors`` (frames x C probabilities) by k-means on
        the square root, each codebook on what the previous ones left (greedy residual VQ), on
        ``device`` (the random draws come from a CPU generator: the same starts on any device)."""
        if posteriors.dim() != 2 or posteriors.shape[0] == 0:
            raise ValueError(f"need a non-empty (frames x classes) sample to fit codebooks, got shape {tuple(posteriors.shape)}")
        generator = torch.Generator().manual_seed(seed)
        residual = posteriors.to(device).float().clamp_min(0).sqrt()
        books = []
        for b in range(num_books):
            book = _kmeans(residual, CODEBOOK_SIZE, iterations, generator).half().float()
            codes = _nearest(residual, book)
            residual = residual - book[codes]
            books.append(book)
            log.info("codebook %d/%d fitted: mean squared residual %.5f", b + 1, num_books, float(residual.square().sum(1).mean()))
        return cls(torch.stack(books).cpu().numpy().astype(np.float16), device)

    @property
    def num_books(self) -> int:
        return int(self.codebooks.shape[0])

    def books(self) -> torch.Tensor:
        """The codebooks as float32 on ``device``, converted and copied there once (stage 5 encodes
        and decodes every cut with them: 34 MB with 4,200 senones)."""
        if self._books is None:
            self._books = torch.from_numpy(self.codebooks.astype(np.float32)).to(self.device)
        return self._books

    def encode(self, posteriors: torch.Tensor) -> np.ndarray:
        """Return the uint8 codes (frames x n) of ``posteriors`` (frames x C probabilities)."""
        books = self.books()
        if posteriors.shape[1] != books.shape[2]:
            raise ValueError(f"posteriors over {posteriors.shape[1]} classes, codebooks over {books.shape[2]}")
        residual = posteriors.to(self.device).float().clamp_min(0).sqrt()
        codes = torch.empty(residual.shape[0], self.num_books, dtype=torch.uint8, device=residual.device)
        for b in range(self.num_books):
            index = _nearest(residual, books[b])
            codes[:, b] = index.to(torch.uint8)
            residual = residual - books[b][index]
        return codes.cpu().numpy()

    def decode(self, codes: np.ndarray, k: int, renormalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Return the top-``k`` ``(ids, probs)`` a student reads for ``codes``, computed on ``device``."""
        return decode_codes(codes, self.books(), k, renormalise)

    def arrays(self, posteriors: torch.Tensor) -> dict[str, np.ndarray]:
        """The stored arrays of one cut, by custom-field name."""
        return {SOFT_CODES: self.encode(posteriors)}


def fit_quantiser(posteriors: Iterable[torch.Tensor], num_books: int, seed: int = 0, device: str | torch.device = "cpu") -> ResidualQuantiser:
    """Fit a :class:`ResidualQuantiser` on the concatenated ``posteriors`` (each frames x C), on ``device``."""
    return ResidualQuantiser.fit(torch.cat([p.float() for p in posteriors]), num_books, seed, device=device)


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Index of the nearest centroid (squared Euclidean) of each row of ``x``."""
    norms = centroids.square().sum(1)
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for start in range(0, x.shape[0], chunk):
        block = x[start:start + chunk]
        out[start:start + chunk] = (norms - 2.0 * block @ centroids.T).argmin(1)
    return out


def _kmeans(x: torch.Tensor, size: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Return ``size`` centroids of the rows of ``x`` after Lloyd's iterations from a random
    start; a centroid that loses all its rows is moved onto a random row."""
    n = x.shape[0]
    start = torch.randint(n, (size,), generator=generator) if n < size else torch.randperm(n, generator=generator)[:size]
    centroids = x[start.to(x.device)].clone()
    for _ in range(iterations):
        assign = _nearest(x, centroids)
        if x.device.type == "cuda":  # index_add_ adds atomically there, in no fixed order: a one-hot product sums the same twice
            onehot = torch.zeros(size, n, dtype=x.dtype, device=x.device)
            onehot[assign, torch.arange(n, device=x.device)] = 1.0
            sums = onehot @ x
        else:
            sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=size)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
        empty = int((~filled).sum())
        if empty:
            centroids[~filled] = x[torch.randint(n, (empty,), generator=generator).to(x.device)]
    return centroids
