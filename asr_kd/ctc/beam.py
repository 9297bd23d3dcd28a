"""CTC prefix beam search (Hannun et al. 2014, without a language model).

Greedy decoding keeps the best token of each frame, which is the best *frame path*; a label
sequence's probability is the sum over all frame paths that collapse to it, and the best label
sequence can differ from the collapse of the best path. Prefix beam search keeps, for each
surviving prefix, the probability of its paths that end in blank and of those that end in its
last label, and extends the ``beam_size`` best prefixes frame by frame.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

NEG_INF = -math.inf


class Hypothesis(NamedTuple):
    """A label sequence and its total log-probability (summed over its CTC frame paths)."""

    tokens: tuple[int, ...]
    log_prob: float


def _logadd(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def prefix_beam_search(
    log_probs: np.ndarray, beam_size: int = 8, nbest: int = 1, blank: int = 0, token_prune: float = 12.0,
) -> list[Hypothesis]:
    """Return the ``nbest`` best label sequences of a ``(T, V)`` log-probability matrix, best first.

    ``token_prune``: per frame, tokens more than this many nats below the frame's best token are
    not tried (they cannot change the beam in practice and skipping them keeps the search linear
    in the few likely tokens). With ``beam_size = 1`` the search keeps one prefix scored by the
    sum over its paths, which equals greedy decoding on peaky posteriors (a trained CTC model's)
    but not on every matrix: a prefix whose paths are individually unlikely can still win.
    """
    if beam_size < 1 or nbest < 1:
        raise ValueError(f"beam_size and nbest must be >= 1, got {beam_size}, {nbest}")
    x = np.asarray(log_probs, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"log_probs must be (frames x tokens), got shape {x.shape}")
    # prefix -> (log p ending in blank, log p ending in its last label)
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, NEG_INF)}
    for frame in x:
        best = frame.max()
        candidates = [int(k) for k in np.flatnonzero(frame >= best - token_prune)]
        nxt: dict[tuple[int, ...], list[float]] = {}

        def add(prefix: tuple[int, ...], pb: float, pnb: float) -> None:
            cur = nxt.setdefault(prefix, [NEG_INF, NEG_INF])
            cur[0], cur[1] = _logadd(cur[0], pb), _logadd(cur[1], pnb)

        for prefix, (pb, pnb) in beams.items():
            total = _logadd(pb, pnb)
            last = prefix[-1] if prefix else None
            for k in candidates:
                p = float(frame[k])
                if k == blank:
                    add(prefix, total + p, NEG_INF)
                elif k == last:
                    add(prefix, NEG_INF, pnb + p)  # the repeat collapses into the same label
                    add(prefix + (k,), NEG_INF, pb + p)  # a blank in between: a new label
                else:
                    add(prefix + (k,), NEG_INF, total + p)
        ranked = sorted(nxt.items(), key=lambda kv: _logadd(*kv[1]), reverse=True)[:beam_size]
        beams = {prefix: (v[0], v[1]) for prefix, v in ranked}
    ranked_final = sorted(((p, _logadd(*v)) for p, v in beams.items()), key=lambda kv: kv[1], reverse=True)
    return [Hypothesis(p, s) for p, s in ranked_final[:nbest]]
