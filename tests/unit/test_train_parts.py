"""Parts of the training loop: learning-rate schedule, checkpoint files, samplers and batches."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lhotse import CutSet

from asr_kd.config import TrainConfig
from asr_kd.data.alignments import load_alignment
from asr_kd.data.features import CmvnStats
from asr_kd.data.frames import IGNORE_INDEX, FrameDataset, SkipBatches, make_sampler
from asr_kd.errors import ConfigError, DataError
from asr_kd.metrics.frame_accuracy import frame_accuracy
from asr_kd.train import checkpoint as ckpt
from asr_kd.train.optim import lr_at, resolve_schedule
from asr_kd.train.state import TrainState
from tests.unit.test_train_corpus import FrameCorpus, make_frame_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> FrameCorpus:
    return make_frame_corpus(tmp_path_factory.mktemp("frames"), train_speakers=(11, 12, 13, 14, 16, 17))


# ---- learning rate ---------------------------------------------------------------------------


def test_lr_schedules() -> None:
    cfg = TrainConfig(lr=1.0, warmup_steps=4, lr_schedule="inv_sqrt")
    assert [lr_at(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(15, cfg) == pytest.approx(math.sqrt(4 / 16))
    cos = dataclasses.replace(cfg, lr_schedule="cosine", cosine_steps=14, final_lr_ratio=0.1)
    assert lr_at(3, cos) == 1.0 and lr_at(13, cos) == pytest.approx(0.1) and lr_at(100, cos) == pytest.approx(0.1)
    assert lr_at(8, cos) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert lr_at(100, dataclasses.replace(cfg, lr_schedule="constant")) == 1.0
    with pytest.raises(ConfigError, match="train.lr_schedule=cosine needs train.cosine_steps > train.warmup_steps"):
        dataclasses.replace(cfg, lr_schedule="cosine", cosine_steps=3)
    # cosine_steps=0: the whole run, counted before training (resolve_schedule); unresolved it refuses.
    whole = dataclasses.replace(cfg, lr_schedule="cosine", cosine_steps=0, num_epochs=3, final_lr_ratio=0.1)
    with pytest.raises(ValueError, match="resolve"):
        lr_at(10, whole)
    resolved = resolve_schedule(whole, lambda: 10)
    assert resolved.cosine_steps == 30 and lr_at(29, resolved) == pytest.approx(0.1) and lr_at(16, resolved) == pytest.approx(0.55)
    assert resolve_schedule(dataclasses.replace(whole, max_steps=12), lambda: 10).cosine_steps == 12
    assert resolve_schedule(cfg, lambda: 1 / 0) is cfg  # other schedules: nothing to count


@settings(max_examples=50, deadline=None)
@given(step=st.integers(0, 10**6), warmup=st.integers(0, 1000), schedule=st.sampled_from(["constant", "inv_sqrt", "cosine"]))
def test_lr_is_positive_and_at_most_peak(step: int, warmup: int, schedule: str) -> None:
    cfg = TrainConfig(lr=2e-3, warmup_steps=warmup, lr_schedule=schedule, cosine_steps=warmup + 500)
    assert 0 < lr_at(step, cfg) <= 2e-3 * (1 + 1e-12)


# ---- checkpoints -----------------------------------------------------------------------------


def test_checkpoints_are_atomic_pruned_and_ordered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for step in (5, 100, 20, 7):
        ckpt.save_checkpoint(ckpt.step_checkpoint_path(tmp_path, step), {"step": step})
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [f"step-{s:09d}.pt" for s in (5, 7, 20, 100)]
    assert ckpt.prune_checkpoints(tmp_path, keep=2) == [ckpt.step_checkpoint_path(tmp_path, s) for s in (5, 7)]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["step"] == 100

    # A crash while writing leaves the previous file intact and no partial file behind.
    real_save = torch.save

    def dying_save(obj, f):  # noqa: ANN001, ANN202
        real_save(obj, f)
        Path(f).write_bytes(Path(f).read_bytes()[:10])
        raise KeyboardInterrupt

    target = ckpt.step_checkpoint_path(tmp_path, 100)
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(target, {"step": "new"})
    monkeypatch.undo()
    assert ckpt.load_checkpoint(target)["step"] == 100
    assert sorted(p.name for p in ckpt.checkpoint_dir(tmp_path).iterdir()) == ["step-000000020.pt", "step-000000100.pt"]

    target.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"step-000000100.pt cannot be read .*; delete it and resume from an older one"):
        ckpt.load_checkpoint(target)


class _RunsAShellCommand:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_runs_no_code_and_is_refused_in_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    crafted = tmp_path / "crafted.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": _RunsAShellCommand(marker)}, crafted)
    with pytest.raises(DataError) as err:
        ckpt.load_checkpoint(crafted)
    assert not marker.exists()  # the command did not run
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"checkpoint {crafted} names Python objects other than tensors and plain values, so it was not loaded")


def test_generator_states_survive_a_safe_checkpoint(tmp_path: Path) -> None:
    import random

    from asr_kd.train.state import rng_state, set_rng_state

    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.gauss(0, 1), np.random.standard_normal()  # leave cached Gaussians in both generators
    path = ckpt.save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    set_rng_state(ckpt.load_checkpoint(path)["rng"])  # read back with weights_only=True
    assert (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expected


def test_train_state_round_trip_and_improvement() -> None:
    state = TrainState(step=7, epoch=2, batch_in_epoch=1, best_metric=0.5, history=[{"step": 3, "loss": 1.0}])
    assert TrainState.from_dict(state.to_dict()) == state
    assert state.improved(0.6, "max") and not state.improved(0.5, "max") and state.improved(0.4, "min")
    assert TrainState().improved(0.1, "min") and not TrainState().improved(float("nan"), "max")


# ---- samplers and batches --------------------------------------------------------------------


def _batches(cuts: CutSet, epoch: int, **kw) -> list[list[str]]:  # noqa: ANN003
    sampler = make_sampler(cuts, max_duration=4.5, shuffle=True, seed=5, num_buckets=2, **kw)
    sampler.set_epoch(epoch)
    return [list(b.ids) for b in sampler]


@pytest.mark.parametrize("bucketing", [True, False])
def test_sampler_is_deterministic_and_skippable(corpus: FrameCorpus, bucketing: bool) -> None:
    cuts = CutSet.from_file(corpus.train_cuts)
    first = _batches(cuts, 0, bucketing=bucketing)
    assert first == _batches(cuts, 0, bucketing=bucketing)
    assert sorted(i for b in first for i in b) == sorted(cuts.ids)  # each cut once per epoch
    assert first != _batches(cuts, 1, bucketing=bucketing)  # a new order each epoch
    sampler = make_sampler(cuts, max_duration=4.5, shuffle=True, seed=5, num_buckets=2, bucketing=bucketing)
    sampler.set_epoch(0)
    assert [list(b.ids) for b in SkipBatches(sampler, 2)] == first[2:]


def test_ranks_get_disjoint_batches_of_equal_number(corpus: FrameCorpus) -> None:
    cuts = CutSet.from_file(corpus.train_cuts)
    ranks = [_batches(cuts, 0, world_size=2, rank=r) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) > 0
    seen = [set(i for b in r for i in b) for r in ranks]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(cuts.ids)


def test_frame_batches_are_normalised_padded_and_labelled(corpus: FrameCorpus) -> None:
    cuts = CutSet.from_file(corpus.dev_cuts).to_eager()
    cmvn = CmvnStats.load(corpus.dev_cmvn)
    short = cuts[0].truncate(duration=0.5)  # a shorter cut forces padding
    short = short.with_id(cuts[0].id)
    batch = FrameDataset(cmvn, "senones", num_classes=3)[CutSet.from_cuts([cuts[1], short])]
    assert batch["features"].shape == (2, 150, 40) and batch["features"].dtype == torch.float32
    assert batch["lengths"].tolist() == [150, 50] and batch["cut_ids"] == [cuts[1].id, cuts[0].id]
    assert batch["labels"].shape == (2, 150)
    assert (batch["labels"][1, 50:] == IGNORE_INDEX).all() and (batch["features"][1, 50:] == 0).all()
    assert torch.equal(batch["labels"][0], torch.from_numpy(load_alignment(cuts[1])))
    # Speaker CMVN: the dev speaker's frames (all in this part) have zero mean, unit variance.
    all_frames = torch.cat([FrameDataset(cmvn, None)[CutSet.from_cuts([c])]["features"][0] for c in cuts])
    np.testing.assert_allclose(all_frames.mean(0).numpy(), 0.0, atol=1e-3)
    np.testing.assert_allclose(all_frames.std(0, unbiased=False).numpy(), 1.0, atol=1e-2)
    assert "labels" not in FrameDataset(cmvn, None)[CutSet.from_cuts([cuts[0]])]


def test_frame_accuracy_ignores_padding() -> None:
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [5.0, 0.0]]])
    assert frame_accuracy(logits, torch.tensor([[0, 0, IGNORE_INDEX]])) == 0.5
    assert math.isnan(frame_accuracy(logits, torch.full((1, 3), IGNORE_INDEX)))
