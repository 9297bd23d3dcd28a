"""How hard a network's posteriors make the HCLG search work: sharpness and score lookups.

For the same graph, beam and max-active, the search's cost depends on how many tokens survive
each frame's pruning, and that depends on the posteriors: a flat posterior leaves many senones
close to the best, so many paths stay within the beam. Kaldi's decoders do not expose their
token counts through the Python bindings, so two measures stand in:

- :func:`posterior_sharpness`: the mean per-frame entropy and the mean largest posterior
  (cheap; a property of the network alone).
- :class:`CountingDecodable`: a decodable that serves the same scaled log-likelihoods as
  :func:`asr_kd.decode.hybrid.hybrid_decodable` and counts the decoder's lookups per frame. The
  faster decoder looks up one score per emitting arc of each token that survives the frame's
  pruning, so lookups per frame measure the work the search does (active tokens times their
  emitting arcs). Each lookup is a call into Python (a few microseconds), so count on a sample
  of utterances, never while timing.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from asr_kd.decode.decoder import Decoder
from asr_kd.errors import DataError
from asr_kd.kaldi import khg


@dataclasses.dataclass(frozen=True)
class Sharpness:
    """Per-frame posterior statistics, averaged over ``frames`` frames."""

    frames: int
    entropy: float  # nats; log(num classes) for a uniform posterior, 0 for a one-hot one
    max_posterior: float  # 1/num classes for a uniform posterior, 1 for a one-hot one


def posterior_sharpness(log_posteriors: Iterable[np.ndarray]) -> Sharpness:
    """Return the mean per-frame entropy (nats) and mean largest posterior of (T x C) log-posterior
    matrices (each row a log-softmax); DataError when there is no frame or a row is not a
    distribution (its probabilities do not sum to 1 within 1e-3)."""
    frames, entropy, top = 0, 0.0, 0.0
    for lp in log_posteriors:
        x = np.asarray(lp, dtype=np.float64)
        if x.ndim != 2:
            raise DataError(f"posterior_sharpness: expected (frames, classes) log-posteriors, got shape {x.shape}")
        if x.shape[0] == 0:
            continue
        p = np.exp(x)
        if not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
            raise DataError("posterior_sharpness: a row's probabilities do not sum to 1; pass log_softmax outputs")
        # 0 * log 0 counts as 0 (exp(-inf) = 0, and -inf * 0 would be NaN).
        entropy -= float(np.sum(p * np.where(p > 0, x, 0.0)))
        top += float(p.max(axis=1).sum())
        frames += x.shape[0]
    if frames == 0:
        raise DataError("posterior_sharpness: no frame to measure")
    return Sharpness(frames, entropy / frames, top / frames)


class CountingDecodable(khg.DecodableInterface):
    """A decodable over (T x num_transition_ids) scaled log-likelihoods, column ``tid - 1`` as
    ``DecodableCtc`` reads them, that counts the decoder's lookups per frame in ``lookups``."""

    def __init__(self, loglikes: np.ndarray) -> None:
        super().__init__()
        x = np.asarray(loglikes, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise DataError(f"CountingDecodable: expected a non-empty (frames, transition-ids) matrix, got shape {x.shape}")
        self._num_frames, self._num_indices = x.shape
        # Python floats in lists: the fastest lookup from the per-arc callback.
        self._rows = x.tolist()
        self.lookups = [0] * self._num_frames

    def log_likelihood(self, frame: int, index: int) -> float:
        self.lookups[frame] += 1
        return self._rows[frame][index - 1]

    def num_frames_ready(self) -> int:
        return self._num_frames

    def is_last_frame(self, frame: int) -> bool:
        return frame == self._num_frames - 1

    def num_indices(self) -> int:
        return self._num_indices


def count_lookups(decoder: Decoder, loglikes: np.ndarray) -> np.ndarray:
    """Decode one utterance's (T x num_transition_ids) scaled log-likelihoods with ``decoder`` (a
    faster decoder over HCLG) and return the score lookups of each frame (int64, length T)."""
    decodable = CountingDecodable(loglikes)
    decoder.decode(decodable)
    return np.asarray(decodable.lookups, dtype=np.int64)
