"""CTC prefix beam search: agreement with greedy where it must agree, and a case greedy gets wrong."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.ctc.beam import prefix_beam_search
from asr_kd.decode.ctc import greedy_ctc


def _peaky(seed: int, frames: int, tokens: int, top: float) -> np.ndarray:
    """Log-probabilities whose best token per frame has probability ``top`` (the rest shared at random)."""
    rng = np.random.default_rng(seed)
    best = rng.integers(0, tokens, size=frames)
    rest = rng.dirichlet(np.ones(tokens - 1), size=frames) * (1 - top)
    probs = np.zeros((frames, tokens))
    for t in range(frames):
        probs[t, np.arange(tokens) != best[t]] = rest[t]
        probs[t, best[t]] = top
    return np.log(probs)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 30), st.integers(2, 6), st.floats(0.95, 0.999))
def test_beam_one_equals_greedy_on_peaky_posteriors(seed, frames, tokens, top) -> None:
    lp = _peaky(seed, frames, tokens, top)
    (hyp,) = prefix_beam_search(lp, beam_size=1)
    assert list(hyp.tokens) == greedy_ctc(lp)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(2, 4))
def test_wide_beam_scores_are_exact_sequence_probabilities(seed, frames, tokens) -> None:
    # With a beam wider than every prefix count and no pruning the search is exact: the n-best
    # probabilities sum to 1 over all label sequences, so the list's total never exceeds 1 and
    # it is sorted best first.
    lp = np.log(np.random.default_rng(seed).dirichlet(np.ones(tokens), size=frames))
    hyps = prefix_beam_search(lp, beam_size=10_000, nbest=10_000, token_prune=math.inf)
    total = sum(math.exp(h.log_prob) for h in hyps)
    assert abs(total - 1.0) < 1e-9
    scores = [h.log_prob for h in hyps]
    assert scores == sorted(scores, reverse=True)
    assert len({h.tokens for h in hyps}) == len(hyps)


def test_beam_finds_the_sequence_greedy_misses() -> None:
    # Two frames, blank 0.6 and "1" 0.4 each. Greedy: blank blank -> "" (0.36). But "1" is spelled
    # by "1 _", "_ 1" and "1 1": 0.24 + 0.24 + 0.16 = 0.64.
    lp = np.log(np.array([[0.6, 0.4], [0.6, 0.4]]))
    assert greedy_ctc(lp) == []
    best, second = prefix_beam_search(lp, beam_size=4, nbest=2)
    assert best.tokens == (1,) and math.isclose(math.exp(best.log_prob), 0.64)
    assert second.tokens == () and math.isclose(math.exp(second.log_prob), 0.36)


def test_repeated_labels_need_a_blank_between() -> None:
    # "1 1" with no blank collapses to one label; "1 _ 1" spells two.
    one_hot = lambda path: np.log(np.eye(3)[path] * 0.98 + 0.01)  # noqa: E731
    assert prefix_beam_search(one_hot([1, 1]), 4)[0].tokens == (1,)
    assert prefix_beam_search(one_hot([1, 0, 1]), 4)[0].tokens == (1, 1)
    assert prefix_beam_search(one_hot([1, 2, 1]), 4)[0].tokens == (1, 2, 1)
