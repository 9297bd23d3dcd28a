"""Feature post-processing for GMM-HMMs: delta coefficients and per-utterance CMVN.

The delta formula is the regression one Kaldi uses (``add-deltas``): the first-order delta at
frame t is ``sum_{n=1..W} n (x[t+n] - x[t-n]) / (2 sum_{n=1..W} n^2)``; higher orders apply the
same filter again (the filters are convolved, then applied once to the input, with frames beyond
either end replaced by the first or last frame).
"""

from __future__ import annotations

import numpy as np

from asr_kd.errors import DataError


def delta_filters(order: int, window: int) -> list[np.ndarray]:
    """Return the ``order + 1`` filters (order 0 is the identity), each of length ``2*i*window+1``."""
    if order < 0 or window < 1:
        raise ValueError(f"need order >= 0 and window >= 1, got order={order}, window={window}")
    base = np.arange(-window, window + 1, dtype=np.float64)
    base /= 2.0 * np.sum(np.arange(1, window + 1, dtype=np.float64) ** 2)
    filters = [np.ones(1)]
    for _ in range(order):
        filters.append(np.convolve(filters[-1], base))
    return filters


def add_deltas(feats: np.ndarray, order: int = 2, window: int = 2) -> np.ndarray:
    """Return ``feats`` (T x D) with deltas appended: a float32 array T x D*(order+1)."""
    feats = np.asarray(feats)
    if feats.ndim != 2:
        raise DataError(f"add_deltas expects a (frames x dims) matrix, got shape {feats.shape}")
    num_frames = feats.shape[0]
    x = feats.astype(np.float64)
    blocks = []
    for filt in delta_filters(order, window):
        half = (len(filt) - 1) // 2
        # Replicate the edge frames: the index of each tap, clamped into [0, T).
        idx = np.clip(np.arange(num_frames)[:, None] + np.arange(-half, half + 1)[None, :], 0, num_frames - 1)
        blocks.append(np.einsum("tkd,k->td", x[idx], filt))
    return np.concatenate(blocks, axis=1).astype(np.float32)


def apply_utterance_cmvn(feats: np.ndarray, normalize_variance: bool = False) -> np.ndarray:
    """Return ``feats`` with its own per-dimension mean (and optionally variance) normalised away."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise DataError(f"CMVN expects a non-empty (frames x dims) matrix, got shape {feats.shape}")
    out = feats - feats.mean(axis=0, keepdims=True)
    if normalize_variance:
        out /= np.maximum(feats.std(axis=0, keepdims=True), 1e-10)
    return out.astype(np.float32)


def gmm_features(mfcc: np.ndarray, delta_order: int = 2, delta_window: int = 2, utterance_cmvn: bool = False) -> np.ndarray:
    """Return the GMM input for one utterance: MFCC, optional utterance CMVN, then deltas (float32)."""
    x = apply_utterance_cmvn(mfcc) if utterance_cmvn else np.asarray(mfcc, dtype=np.float32)
    return add_deltas(x, delta_order, delta_window)
