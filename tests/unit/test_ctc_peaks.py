"""The shape of CTC posteriors (asr_kd/ctc/peaks.py): the reference's path scores against an
enumeration of every path and against torch's CTC loss, and the peak measures on hand-made
posteriors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from asr_kd.ctc.peaks import ctc_path_score, utterance_shape
from asr_kd.errors import DataError


def _collapse(path: tuple[int, ...]) -> list[int]:
    out, prev = [], None
    for k in path:
        if k != 0 and k != prev:
            out.append(k)
        prev = k
    return out


def _log_probs(rng: np.random.Generator, frames: int, tokens: int) -> np.ndarray:
    return torch.log_softmax(torch.tensor(rng.normal(size=(frames, tokens)) * 2.0), -1).numpy()


def test_path_scores_equal_an_enumeration_of_every_ctc_path() -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(40):
        frames, reference = int(rng.integers(1, 6)), [int(k) for k in rng.integers(1, 3, size=int(rng.integers(0, 4)))]
        lp = _log_probs(rng, frames, 3)
        scores = [sum(lp[t, k] for t, k in enumerate(p)) for p in itertools.product(range(3), repeat=frames) if _collapse(p) == reference]
        if not scores:  # too few frames for the reference (a repeated token needs a blank between)
            assert ctc_path_score(lp, reference, best=False) == -math.inf == ctc_path_score(lp, reference, best=True)
            continue
        checked += 1
        assert ctc_path_score(lp, reference, best=False) == pytest.approx(float(np.logaddexp.reduce(scores)))
        assert ctc_path_score(lp, reference, best=True) == pytest.approx(max(scores))
    assert checked >= 20


def test_the_reference_log_likelihood_is_minus_torchs_ctc_loss() -> None:
    rng = np.random.default_rng(1)
    lp = _log_probs(rng, 50, 6)
    reference = [1, 1, 3, 5, 2, 2, 2, 4]
    loss = torch.nn.functional.ctc_loss(torch.tensor(lp)[:, None], torch.tensor([reference]), torch.tensor([50]), torch.tensor([8]),
                                        reduction="sum", blank=0)
    assert ctc_path_score(lp, reference, best=False) == pytest.approx(-float(loss), rel=1e-9)
    assert ctc_path_score(lp, reference, best=True) < ctc_path_score(lp, reference, best=False)


def test_peaks_blanks_and_the_gap_on_hand_made_posteriors() -> None:
    # Frames: blank, token 1 at 0.6 then 0.9 (one spike, two frames wide), blank, token 2 at 0.7, blank.
    p = np.full((6, 3), 0.05)
    for t, (k, v) in enumerate([(0, 0.9), (1, 0.6), (1, 0.9), (0, 0.9), (2, 0.7), (0, 0.9)]):
        p[t] = (1 - v) / 2
        p[t, k] = v
    lp = np.log(p)
    right = utterance_shape(lp, [1, 2])
    assert (right["frames"], right["blank_frames"], right["spikes"], right["run_frames"]) == (6, 3, 2, 3)
    assert right["spike_peak_sum"] == pytest.approx(0.9 + 0.7)
    assert right["entropy_sum"] == pytest.approx(float(-(p * lp).sum()))
    # Greedy search reads the reference here, so the reference's best path is the model's best path: no gap.
    assert right["best_path"] == pytest.approx(right["ref_best_path"]) == pytest.approx(float(lp.max(-1).sum()))
    assert right["ref_loglik"] > right["ref_best_path"]
    # Another reference: the best path stays, the reference's falls below it by what its tokens cost.
    wrong = utterance_shape(lp, [2, 1])
    assert wrong["best_path"] == right["best_path"] and wrong["best_path"] - wrong["ref_best_path"] > 1.0
    # A reference the frames cannot hold: counted as not feasible, its log-probabilities left out.
    short = utterance_shape(lp[:2], [1, 1, 1])
    assert short["feasible"] == 0 and short["ref_loglik"] == short["ref_best_path"] == short["best_path"] == 0
    # Five frames hold 1 1 2 (a blank between the two 1s) but not 1 1 1 1 2 2.
    assert utterance_shape(lp[:5], [1, 1, 2])["feasible"] == 1 and utterance_shape(lp, [1, 1, 1, 1, 2, 2])["feasible"] == 0
    assert utterance_shape(lp[:4], [1, 1, 2])["feasible"] == 1 and utterance_shape(lp[:3], [1, 1, 2])["feasible"] == 0
    with pytest.raises(DataError, match="frames > 0"):
        utterance_shape(lp[:0], [1])
