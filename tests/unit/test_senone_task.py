"""Frame sampling, splicing and the frame task file of asr_kd.experiments.senone_task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.errors import DataError
from asr_kd.experiments.senone_task import FrameSet, load_frame_task, is_frame_task, sample_frames, save_frame_task, splice
from asr_kd.models.dnn import splice_frames


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=12), st.integers(0, 300), st.integers(0, 5))
def test_sample_frames_draws_distinct_frames_within_each_utterance(counts: list[int], budget: int, seed: int) -> None:
    picks = sample_frames(counts, budget, seed)
    assert len(picks) == len(counts)
    total = sum(counts)
    assert sum(len(p) for p in picks) == (total if budget == 0 else min(budget, total))
    for p, c in zip(picks, counts):
        assert np.all(np.diff(p) > 0) and (len(p) == 0 or (p.min() >= 0 and p.max() < c))
    again = sample_frames(counts, budget, seed)
    assert all(np.array_equal(a, b) for a, b in zip(picks, again))


def test_sample_frames_is_uniform_over_frames_not_utterances() -> None:
    # one long and many short utterances: the long one holds half the frames, so half the draws
    picks = sample_frames([1000] + [10] * 100, 500, seed=0)
    assert 200 < len(picks[0]) < 300


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 15), st.integers(1, 4), st.integers(0, 4), st.integers(0, 3))
def test_splice_matches_the_dnn_splicing(t: int, d: int, context: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((t, d)).astype(np.float32)
    frames = np.sort(rng.choice(t, size=rng.integers(1, t + 1), replace=False))
    ours = splice(feats, frames, context)
    theirs = splice_frames(torch.from_numpy(feats)[None], torch.tensor([t]), context, context)[0, frames].numpy()
    assert ours.shape == (len(frames), (2 * context + 1) * d)
    np.testing.assert_array_equal(ours, theirs)
    # the centre of each window is the frame itself
    np.testing.assert_array_equal(ours[:, context * d : (context + 1) * d], feats[frames])


def test_frame_task_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    task = {s: FrameSet(rng.standard_normal((n, 6)).astype(np.float32), rng.integers(0, 9, n)) for s, n in (("train", 20), ("val", 5), ("test", 7))}
    path = tmp_path / "data" / "task.npz"
    save_frame_task(path, task, 12)
    assert is_frame_task(path)
    loaded, k = load_frame_task(path)
    assert k == 12
    for s in task:
        np.testing.assert_array_equal(loaded[s].features, task[s].features)
        assert loaded[s].targets().dtype == torch.int64 and loaded[s].inputs().shape == (len(task[s]), 6)


def test_frame_set_rejects_mismatched_shapes_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FrameSet needs"):
        FrameSet(np.zeros((3, 2), np.float32), np.zeros(4, np.int64))
    with pytest.raises(DataError, match="run the prepare stage"):
        load_frame_task(tmp_path / "task.npz")
