"""The shape of a CTC model's posteriors on one utterance: how peaky they are, and how strongly
they support the reference against the model's own best path.

Greedy search reads only each frame's argmax; an HLG search weighs whole paths of the acoustic
model against the n-gram LM. Two models with the same greedy token error rate can therefore
decode to different word error rates, and these numbers say why: the share of blank frames, the
height and width of the spikes, the frame entropy, the reference's log-likelihood (every CTC path
of its tokens, what the CTC loss sums) and its best single path (what a Viterbi search such as
HLG decoding scores), and the gap between the model's best unconstrained path and the
reference's best path: the log-probability, in nats, that an LM must make up for the search to
pick the reference's tokens.

:func:`utterance_shape` returns sums over one utterance, so that a part's figures are ratios of
sums (per frame, per spike, per reference token) and a paired bootstrap over utterances
(:func:`asr_kd.metrics.paired.bootstrap_rates`) can resample them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from asr_kd.ctc.kd import BLANK
from asr_kd.errors import DataError

# The per-utterance sums of :func:`utterance_shape`, in the order the bench tables print them.
SHAPE_FIELDS = ("frames", "blank_frames", "spikes", "spike_peak_sum", "run_frames", "entropy_sum", "ref_tokens", "feasible",
                "ref_loglik", "ref_best_path", "best_path")


def ctc_path_score(log_probs: np.ndarray, tokens: Sequence[int], best: bool, blank: int = BLANK) -> float:
    """Return the log-probability of the token sequence ``tokens`` under the ``(T, V)`` CTC
    log-posteriors ``log_probs``: summed over every CTC path that collapses to it (``best`` False:
    minus the CTC loss) or of its single best path (``best`` True: the Viterbi forced alignment).
    ``-inf`` where ``T`` frames cannot hold the tokens (each repeated pair needs a blank between)."""
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[0] == 0:
        raise DataError(f"CTC log-probs have shape {lp.shape}, expected (frames > 0, tokens incl. blank)")
    ext = np.full(2 * len(tokens) + 1, blank, dtype=np.int64)  # blank, y1, blank, y2, ..., blank
    ext[1::2] = np.asarray(tokens, dtype=np.int64)
    # A state may skip the blank before it when it is a token that differs from the one two back.
    skip = np.zeros(len(ext), dtype=bool)
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    combine = np.maximum if best else np.logaddexp
    alpha = np.full(len(ext), -np.inf)
    alpha[0] = lp[0, ext[0]]
    if len(ext) > 1:
        alpha[1] = lp[0, ext[1]]
    for t in range(1, lp.shape[0]):
        prev = alpha
        alpha = prev.copy()
        alpha[1:] = combine(alpha[1:], prev[:-1])
        alpha[2:] = np.where(skip[2:], combine(alpha[2:], prev[:-2]), alpha[2:])
        alpha = alpha + lp[t, ext]
    end = alpha[-1] if len(ext) == 1 else combine(alpha[-1], alpha[-2])
    return float(end)


def utterance_shape(log_probs: np.ndarray, tokens: Sequence[int], blank: int = BLANK) -> dict[str, float]:
    """Return the sums of one utterance's ``(T, V)`` CTC log-posteriors against its reference
    ``tokens`` (no blank), keyed by :data:`SHAPE_FIELDS`:

    - ``frames``, ``blank_frames`` (argmax blank), ``spikes`` (runs of one non-blank argmax token;
      greedy search emits one token per run), ``spike_peak_sum`` (each run's highest posterior of
      its token, summed), ``run_frames`` (frames inside those runs), ``entropy_sum`` (nats);
    - ``ref_tokens``; ``feasible`` (1 when ``T`` frames can hold the reference: one frame per token
      and one more per pair of equal neighbours, which need a blank between; else 0 and the three
      log-probabilities below are 0);
    - ``ref_loglik`` (every CTC path of the reference: minus the CTC loss), ``ref_best_path`` (its
      best single path), ``best_path`` (the best path over all token sequences: each frame's
      maximum, the path greedy search reads).
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[0] == 0:
        raise DataError(f"CTC log-probs have shape {lp.shape}, expected (frames > 0, tokens incl. blank)")
    probs = np.exp(lp)
    path = lp.argmax(-1)
    starts = [t for t in range(len(path)) if path[t] != blank and (t == 0 or path[t] != path[t - 1])]
    peaks, run_frames = 0.0, 0
    for t in starts:
        end = t
        while end + 1 < len(path) and path[end + 1] == path[t]:
            end += 1
        peaks += float(probs[t:end + 1, path[t]].max())
        run_frames += end + 1 - t
    feasible = len(path) >= len(tokens) + sum(a == b for a, b in zip(tokens, tokens[1:]))
    ref_loglik = ctc_path_score(lp, tokens, best=False, blank=blank) if feasible else 0.0
    return {
        "frames": float(len(path)), "blank_frames": float((path == blank).sum()), "spikes": float(len(starts)),
        "spike_peak_sum": peaks, "run_frames": float(run_frames),
        "entropy_sum": float(-(probs * np.where(probs > 0, lp, 0.0)).sum()), "ref_tokens": float(len(tokens)), "feasible": float(feasible),
        "ref_loglik": ref_loglik,
        "ref_best_path": ctc_path_score(lp, tokens, best=True, blank=blank) if feasible else 0.0,
        "best_path": float(lp.max(-1).sum()) if feasible else 0.0,
    }
