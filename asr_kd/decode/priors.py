"""Senone (pdf) priors for hybrid decoding: counted from alignments, smoothed, floored.

A hybrid network outputs posteriors p(senone | x); the HMM decoder needs likelihoods, which are
proportional to p(senone | x) / p(senone). The priors p(senone) are the senones' relative
frequencies in the training alignments, with add-``smoothing`` counts so that a senone never seen
in training does not get an infinite bonus, and a ``floor`` on the probability.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from asr_kd.errors import DataError
from asr_kd.utils import atomic_path


def count_senones(alignments: Iterable[Sequence[int] | np.ndarray], num_pdfs: int, ignore_index: int = -100) -> np.ndarray:
    """Return the number of frames of each pdf (float64, length ``num_pdfs``) over the pdf-id
    ``alignments``; frames labelled ``ignore_index`` are skipped. DataError for an id out of range."""
    counts = np.zeros(num_pdfs, dtype=np.float64)
    for ali in alignments:
        a = np.asarray(ali, dtype=np.int64)
        a = a[a != ignore_index]
        if a.size and (a.min() < 0 or a.max() >= num_pdfs):
            raise DataError(f"senone alignment has pdf ids outside 0..{num_pdfs - 1} (got {a.min()}..{a.max()}); the alignments belong to another model")
        counts += np.bincount(a, minlength=num_pdfs)
    return counts


def log_priors_from_counts(counts: np.ndarray, smoothing: float = 1.0, floor: float = 1e-8) -> np.ndarray:
    """Return log priors (float32): ``log(max((count + smoothing) / total, floor))`` renormalised.

    Raises DataError if there are no counts at all and no smoothing.
    """
    counts = np.asarray(counts, dtype=np.float64) + smoothing
    total = counts.sum()
    if total <= 0:
        raise DataError("cannot estimate senone priors from zero frames; check that the alignments are not empty")
    probs = np.maximum(counts / total, floor)
    probs /= probs.sum()
    return np.log(probs).astype(np.float32)


def priors_from_alignments(alignments: Iterable[Sequence[int] | np.ndarray], num_pdfs: int, smoothing: float = 1.0, floor: float = 1e-8) -> np.ndarray:
    """Return smoothed log priors of ``num_pdfs`` senones counted from pdf-id alignments."""
    return log_priors_from_counts(count_senones(alignments, num_pdfs), smoothing, floor)


def priors_from_posteriors(log_posteriors: Iterable[np.ndarray], floor: float = 1e-8) -> np.ndarray:
    """Return log priors as the network's average posterior over frames (an alternative when
    no alignment is at hand); each item is a (T x num_pdfs) log-posterior matrix."""
    total, frames = None, 0
    for lp in log_posteriors:
        p = np.exp(np.asarray(lp, dtype=np.float64)).sum(axis=0)
        total = p if total is None else total + p
        frames += lp.shape[0]
    if total is None or frames == 0:
        raise DataError("cannot estimate senone priors from zero frames of posteriors")
    probs = np.maximum(total / frames, floor)
    probs /= probs.sum()
    return np.log(probs).astype(np.float32)


def save_priors(path: Path | str, log_priors: np.ndarray) -> None:
    """Write log priors as a text file (one value per line, pdf order), atomically."""
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.asarray(log_priors, dtype=np.float64), fmt="%.8g")


def load_priors(path: Path | str, num_pdfs: int | None = None) -> np.ndarray:
    """Read log priors written by :func:`save_priors`; DataError if missing, non-finite, or not
    ``num_pdfs`` long."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"senone priors {path} do not exist; compute them from the training alignments first")
    priors = np.atleast_1d(np.loadtxt(path, dtype=np.float64)).astype(np.float32)
    if not np.all(np.isfinite(priors)):
        raise DataError(f"senone priors {path} contain non-finite values; recompute them with a positive floor")
    if num_pdfs is not None and priors.shape != (num_pdfs,):
        raise DataError(f"senone priors {path} have {priors.size} values but the model has {num_pdfs} pdfs; recompute them for this model")
    return priors
