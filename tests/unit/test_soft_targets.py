"""Tests for stored soft targets (asr_kd.kd.soft_targets) and the top-k loss (asr_kd.kd.topk_loss)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter, Recording, load_manifest

from asr_kd.config import KdConfig, config_from_dict
from asr_kd.data.array_archive import ARCHIVE_NAME
from asr_kd.errors import ConfigError, DataError
from asr_kd.kd.ensemble import TeacherEnsemble, fuse_logits
from asr_kd.kd.losses import distillation_loss, soft_cross_entropy
from asr_kd.kd.soft_targets import (
    SOFT_IDS,
    SOFT_PROBS,
    SOFT_TEMPERATURE,
    SoftTargetStats,
    bytes_per_frame,
    collate_soft_targets,
    ensemble_soft_targets,
    expand_topk,
    kl_bucketed_vs_full,
    kl_stored_vs_full,
    load_soft_targets,
    store_soft_targets,
    topk_compress,
    topk_mass,
)
from asr_kd.kd.topk_loss import fused_topk_distillation_loss, topk_distillation_loss, topk_soft_cross_entropy
from asr_kd.models.mlp import MLP


def _posteriors(seed: int, frames: int, classes: int, scale: float = 4.0, temperature: float = 1.0) -> np.ndarray:
    """Peaky posteriors: a softmax of scaled Gaussian logits."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(frames, classes, generator=g, dtype=torch.float64) / temperature, -1).numpy()


# --------------------------------------------------------------------------------------------
# Compression
# --------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), frames=st.integers(1, 20), classes=st.integers(1, 300), data=st.data())
def test_topk_keeps_the_most_probable_classes_renormalised(seed, frames, classes, data):
    k = data.draw(st.integers(1, classes))
    full = _posteriors(seed, frames, classes)
    ids, probs = topk_compress(full, k)
    assert ids.dtype == np.int32 and probs.dtype == np.float16
    assert ids.shape == probs.shape == (frames, k)
    # The kept classes are k distinct classes, none less probable than any dropped one.
    assert all(len(set(row)) == k for row in ids.tolist())
    kept = np.take_along_axis(full, ids.astype(np.int64), 1)
    dropped = full.copy()
    np.put_along_axis(dropped, ids.astype(np.int64), -1.0, 1)
    assert np.all(kept.min(1) >= dropped.max(1))
    assert np.all(np.diff(probs.astype(np.float32), axis=1) <= 0)  # decreasing order
    # Renormalised: each row sums to 1 within float16 rounding (half an ulp per value, ulp <= 2^-11 below 1).
    assert np.allclose(probs.astype(np.float64).sum(1), 1.0, atol=k * 2.0**-12 + 1e-12)
    expected = kept / kept.sum(1, keepdims=True)
    assert np.allclose(probs.astype(np.float64), expected, atol=2.0**-11, rtol=2.0**-10)


def test_k_equal_to_classes_reproduces_the_full_distribution():
    full = _posteriors(0, 50, 40)
    ids, probs = topk_compress(full, 40)
    dense = expand_topk(ids, probs, 40)
    assert dense.dtype == np.float32 and dense.shape == full.shape
    assert np.allclose(dense, full, rtol=2.0**-10, atol=1e-7)
    kl = kl_stored_vs_full(full, ids, probs)
    assert kl.shape == (50,)
    assert np.all(kl >= 0) and kl.max() < 1e-5
    assert np.allclose(topk_mass(full, ids), 1.0)


def test_kl_is_finite_from_log_probs_where_a_stored_class_underflows_in_float32():
    # A confident ensemble: class 2's log-probability (-120) is below float32's smallest value, so
    # its probability is 0. A codebook (kd.storage=rvq) can still store mass there.
    log_full = torch.log_softmax(torch.tensor([[0.0, -1.0, -120.0, -3.0]], dtype=torch.float64), dim=1).float()
    full = log_full.exp()
    assert full[0, 2].item() == 0.0
    ids = np.array([[0, 1, 2]])
    probs = np.array([[0.6, 0.3, 0.1]], dtype=np.float16)
    assert np.isinf(kl_stored_vs_full(full, ids, probs)[0])  # from probabilities alone: log(0)
    kl = kl_stored_vs_full(full, ids, probs, log_full)
    stored = probs.astype(np.float64)[0] / probs.astype(np.float64).sum()
    expected = float(np.sum(stored * (np.log(stored) - log_full.double().numpy()[0, [0, 1, 2]])))
    assert np.isfinite(kl[0]) and kl[0] == pytest.approx(expected, rel=1e-6)
    assert kl[0] > 11.0  # about 0.1 x 120 nats: the cost of the stored mass the ensemble rules out
    stats = SoftTargetStats()
    stats.update(full, ids, probs, log_full)
    assert stats.summary()["mean_kl_stored_vs_full"] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="shape of full_probs"):
        kl_stored_vs_full(full, ids, probs, log_full[:, :3])


def test_kl_shrinks_as_k_grows_and_matches_the_dropped_mass():
    full = _posteriors(1, 200, 500, scale=3.0, temperature=2.0)
    kls = []
    for k in (1, 5, 10, 20, 50, 500):
        ids, probs = topk_compress(full, k)
        kl = kl_stored_vs_full(full, ids, probs)
        assert np.all(kl >= 0)
        # With exact renormalisation KL(stored || full) = -log(kept mass); float16 adds a little.
        assert np.allclose(kl, -np.log(topk_mass(full, ids)), atol=2e-3)
        kls.append(kl.mean())
    assert all(a > b for a, b in zip(kls, kls[1:]))
    assert kls[0] > 0.1 and kls[-1] < 1e-5


def test_statistics_read_tensors_at_the_ids_and_equal_the_numpy_ones():
    # Stage 5 hands the statistics its posteriors as tensors (on a GPU, there): they read the kept
    # ids only. The numbers must equal those of widened numpy arrays to the last bit.
    log_full = torch.log_softmax(3 * torch.randn(40, 300, generator=torch.Generator().manual_seed(0)), dim=1)
    full = log_full.exp()
    ids, probs = topk_compress(full, 7)
    for log_arg in (None, log_full):
        from_tensors = kl_stored_vs_full(full, ids, probs, log_arg)
        from_numpy = kl_stored_vs_full(full.numpy(), ids, probs, None if log_arg is None else log_arg.numpy())
        assert from_tensors.dtype == np.float64 and np.array_equal(from_tensors, from_numpy)
    widened = full.double().numpy()
    assert np.array_equal(topk_mass(full, ids), np.take_along_axis(widened, ids.astype(np.int64), axis=1).sum(axis=1))
    # Against the formula written out from the widened arrays (what the statistics computed before
    # they read the ids first): the same numbers.
    stored = probs.astype(np.float64) / probs.astype(np.float64).sum(axis=1, keepdims=True)
    assert np.array_equal(kl_stored_vs_full(full, ids, probs), np.where(stored > 0, stored * (np.log(stored) - np.take_along_axis(
        np.log(widened), ids.astype(np.int64), axis=1)), 0.0).sum(axis=1))
    assert np.array_equal(kl_stored_vs_full(full, ids, probs, log_full), np.where(stored > 0, stored * (np.log(stored) - np.take_along_axis(
        log_full.double().numpy(), ids.astype(np.int64), axis=1)), 0.0).sum(axis=1))
    # The bucketed KL (kd.tail=bucket) from tensors and from arrays, and against the rest summed in numpy.
    kept, _ = topk_compress(full, 7, renormalise=False)
    kept_probs = np.take_along_axis(widened, kept.astype(np.int64), axis=1).astype(np.float16)
    bucket_t = kl_bucketed_vs_full(full, kept, kept_probs, log_full)
    assert np.array_equal(bucket_t, kl_bucketed_vs_full(full.numpy(), kept, kept_probs, log_full.numpy()))
    outside = np.ones(widened.shape, dtype=bool)
    np.put_along_axis(outside, kept.astype(np.int64), False, axis=1)
    log_rest = np.logaddexp.reduce(np.where(outside, log_full.double().numpy(), -np.inf), axis=1)
    kept64 = kept_probs.astype(np.float64)
    rest = 1.0 - kept64.sum(axis=1)
    want = (np.where(kept64 > 0, kept64 * (np.log(kept64) - np.take_along_axis(log_full.double().numpy(), kept.astype(np.int64), axis=1)), 0.0).sum(axis=1)
            + np.where(rest > 0, rest * (np.log(np.clip(rest, 1e-300, 1)) - log_rest), 0.0))
    assert np.allclose(bucket_t, want, rtol=1e-9, atol=1e-12)
    by_tensor, by_numpy = SoftTargetStats(), SoftTargetStats()
    by_tensor.update(full, ids, probs, log_full)
    by_numpy.update(full.numpy(), ids, probs, log_full.numpy())
    assert by_tensor.summary() == by_numpy.summary() and by_tensor.summary()["frames"] == 40
    with pytest.raises(ValueError, match="frames x C"):
        kl_stored_vs_full(full[:39], ids, probs)


def test_compress_accepts_tensors_and_rejects_bad_input():
    full = torch.from_numpy(_posteriors(2, 3, 10)).float()
    ids, probs = topk_compress(full, 3)
    assert np.array_equal(ids, topk_compress(full.numpy(), 3)[0])
    with pytest.raises(ConfigError, match="kd.top_k"):
        topk_compress(full, 11)
    with pytest.raises(ValueError, match="non-negative"):
        topk_compress(-full, 2)
    with pytest.raises(ValueError, match="frames x classes"):
        topk_compress(full[0], 2)
    with pytest.raises(ValueError, match="class ids"):
        expand_topk(ids, probs, 5)
    empty_ids, empty_probs = topk_compress(np.zeros((0, 10)), 4)
    assert empty_ids.shape == empty_probs.shape == (0, 4)


def test_bytes_per_frame():
    assert bytes_per_frame(20) == 20 * (4 + 2)
    assert bytes_per_frame(2000, ["float32"]) == 8000
    assert bytes_per_frame(0) == 0


# --------------------------------------------------------------------------------------------
# Storage on cuts
# --------------------------------------------------------------------------------------------

DURATIONS = (1.2345, 0.8, 2.0031, 0.5)
NUM_CLASSES = 64
K = 8


@pytest.fixture(scope="module")
def fbank_cuts(tmp_path_factory) -> CutSet:
    """Cuts of real (noise) audio with real fbank features, of awkward durations."""
    root = tmp_path_factory.mktemp("cuts")
    rng = np.random.default_rng(0)
    recordings = []
    for i, seconds in enumerate(DURATIONS):
        path = root / f"utt{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(round(seconds * 16000))).astype(np.float32), 16000)
        recordings.append(Recording.from_file(path, recording_id=f"spk{i % 2}-utt{i}"))
    cuts = CutSet.from_manifests(recordings=recordings)
    with LilcomChunkyWriter(root / "feats") as writer:
        cuts = CutSet.from_cuts(c.compute_and_store_features(Fbank(FbankConfig(num_filters=40)), writer) for c in cuts)
    return cuts


def _targets_for(cuts: CutSet, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {c.id: topk_compress(_posteriors(seed + i, c.num_frames, NUM_CLASSES), K) for i, c in enumerate(cuts)}


def test_stored_targets_round_trip_bit_for_bit_and_survive_shuffling(fbank_cuts, tmp_path):
    targets = _targets_for(fbank_cuts)
    stored = store_soft_targets(fbank_cuts, ((cid, *t) for cid, t in targets.items()), tmp_path / "soft", K, temperature=2.0)
    # One archive holds both arrays of every cut (it used to be 2 .npy files per cut).
    assert [p.name for p in (tmp_path / "soft").iterdir()] == [ARCHIVE_NAME]
    keys = {c.custom[name].array.storage_key for c in stored for name in (SOFT_IDS, SOFT_PROBS)}
    assert len(keys) == 2 * len(fbank_cuts)
    assert [c.id for c in stored] == [c.id for c in fbank_cuts]
    manifest = tmp_path / "cuts_soft.jsonl.gz"
    stored.to_file(manifest)
    reloaded = load_manifest(manifest)
    shuffled = reloaded.shuffle(random.Random(3))
    assert [c.id for c in shuffled] != [c.id for c in reloaded]
    for cut in shuffled:
        ids, probs = load_soft_targets(cut)
        assert ids.dtype == np.int32 and probs.dtype == np.float16
        assert ids.shape[0] == cut.num_frames
        assert np.array_equal(ids, targets[cut.id][0])
        assert np.array_equal(probs.view(np.uint16), targets[cut.id][1].view(np.uint16))  # bit for bit
        assert cut.custom[SOFT_TEMPERATURE] == 2.0


def test_truncated_cut_loads_the_matching_frames(fbank_cuts, tmp_path):
    targets = _targets_for(fbank_cuts, seed=10)
    stored = store_soft_targets(fbank_cuts, ((cid, *t) for cid, t in targets.items()), tmp_path / "soft", K)
    cut = stored[fbank_cuts[0].id]
    part = cut.truncate(offset=0.3, duration=0.5)
    ids, probs = load_soft_targets(part)
    assert np.array_equal(ids, targets[cut.id][0][30:80])
    assert np.array_equal(probs, targets[cut.id][1][30:80])
    assert ids.shape[0] == part.load_features().shape[0]


def test_rewriting_the_same_path_serves_the_new_targets(fbank_cuts, tmp_path):
    for seed in (0, 100):  # the second write replaces the first
        targets = _targets_for(fbank_cuts, seed)
        stored = store_soft_targets(fbank_cuts, ((cid, *t) for cid, t in targets.items()), tmp_path / "soft", K)
        for cut in stored:
            assert np.array_equal(load_soft_targets(cut)[1], targets[cut.id][1])


def test_unknown_and_missing_cuts_are_skipped_and_counted(fbank_cuts, tmp_path, caplog):
    targets = _targets_for(fbank_cuts)
    kept = [c.id for c in fbank_cuts][1:]
    given = [(cid, *targets[cid]) for cid in kept] + [("no-such-cut", *targets[kept[0]])]
    stored = store_soft_targets(fbank_cuts, given, tmp_path / "soft", K)
    assert [c.id for c in stored] == kept
    assert "1 cut(s) without targets left out, 1 target(s) for unknown cuts skipped" in caplog.text


def test_bad_targets_raise_one_line_errors_naming_the_cut(fbank_cuts, tmp_path):
    cut = fbank_cuts[0]
    ids, probs = _targets_for(fbank_cuts)[cut.id]
    with pytest.raises(DataError, match=f"cut {cut.id} have {cut.num_frames - 1} frames but the cut has {cut.num_frames}"):
        store_soft_targets(fbank_cuts, [(cut.id, ids[:-1], probs[:-1])], tmp_path / "a", K)
    with pytest.raises(DataError, match=f"cut {cut.id} were given twice"):
        store_soft_targets(fbank_cuts, [(cut.id, ids, probs)] * 2, tmp_path / "b", K)
    with pytest.raises(DataError, match=r"shape \(frames x 4\)"):
        store_soft_targets(fbank_cuts, [(cut.id, ids, probs)], tmp_path / "c", 4)
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind
    with pytest.raises(DataError, match=f"cut {cut.id} has no stored soft targets; run stage 5"):
        load_soft_targets(cut)


def test_corrupt_or_truncated_storage_is_a_one_line_error_naming_the_file(fbank_cuts, tmp_path):
    targets = _targets_for(fbank_cuts, seed=20)
    stored = list(store_soft_targets(fbank_cuts, ((cid, *t) for cid, t in targets.items()), tmp_path / "soft", K))
    archive = tmp_path / "soft" / ARCHIVE_NAME
    victim = stored[1]
    offset = int(victim.custom[SOFT_PROBS].array.storage_key.split(",")[0])
    with open(archive, "r+b") as f:  # garble the header of the victim's probabilities
        f.seek(offset)
        f.write(b"garbage!")
    with pytest.raises(DataError, match=f"cut {victim.id}: cannot read its stored soft targets: .* is corrupt") as err:
        load_soft_targets(victim)
    assert "\n" not in str(err.value) and str(archive) in str(err.value) and "rerun the stage" in str(err.value)
    assert np.array_equal(load_soft_targets(stored[0])[0], targets[stored[0].id][0])  # the others still load
    os.truncate(archive, offset)
    with pytest.raises(DataError, match=f"cut {victim.id}: cannot read its stored soft targets: .* is truncated") as err:
        collate_soft_targets(stored)  # the training path reports the first broken cut the same way
    assert str(archive) in str(err.value)


def _load_in_worker(cut):
    ids, probs = load_soft_targets(cut)
    return cut.id, ids, probs


def test_forked_dataloader_workers_load_the_right_targets(fbank_cuts, tmp_path):
    targets = _targets_for(fbank_cuts, seed=30)
    stored = list(store_soft_targets(fbank_cuts, ((cid, *t) for cid, t in targets.items()), tmp_path / "soft", K))
    load_soft_targets(stored[0])  # the parent's open archive is inherited by the workers
    picks = [stored[i] for i in np.random.default_rng(0).integers(0, len(stored), 64)]
    loader = torch.utils.data.DataLoader(
        picks, batch_size=None, num_workers=2, multiprocessing_context="fork", collate_fn=_load_in_worker
    )
    seen = 0
    for cut_id, ids, probs in loader:
        assert np.array_equal(ids, targets[cut_id][0]) and np.array_equal(probs.view(np.uint16), targets[cut_id][1].view(np.uint16))
        seen += 1
    assert seen == len(picks)


def test_collate_pads_with_zero_probability(fbank_cuts, tmp_path):
    targets = _targets_for(fbank_cuts)
    stored = store_soft_targets(fbank_cuts, ((cid, *t) for cid, t in targets.items()), tmp_path / "soft", K)
    cuts = list(stored)
    ids, probs = collate_soft_targets(cuts)
    longest = max(c.num_frames for c in cuts)
    assert ids.shape == probs.shape == (len(cuts), longest, K)
    assert ids.dtype == torch.int64 and probs.dtype == torch.float32
    for b, cut in enumerate(cuts):
        n = cut.num_frames
        assert torch.equal(ids[b, :n], torch.from_numpy(targets[cut.id][0]).long())
        assert torch.all(probs[b, n:] == 0)
    short_ids, _ = collate_soft_targets(cuts, num_frames=10)
    assert short_ids.shape == (len(cuts), 10, K)
    assert cuts[0].has_custom(SOFT_IDS)


def _feats(cut) -> torch.Tensor:
    x = torch.from_numpy(cut.load_features())
    return (x - x.mean(0)) / x.std(0).clamp(min=1e-3)  # per-utterance CMVN


def test_ensemble_targets_stored_then_distilled_into_a_student(fbank_cuts, tmp_path):
    """Stage 5 then 6 in miniature: real teachers -> stored top-k targets -> a student learns them."""
    teachers = []
    for seed in range(3):
        torch.manual_seed(seed)
        teachers.append(MLP(40, (32,), NUM_CLASSES))
    ensemble = TeacherEnsemble(teachers, "arithmetic")
    stats = SoftTargetStats()
    targets = ensemble_soft_targets(fbank_cuts, ensemble, _feats, temperature=2.0, k=K, stats=stats)
    stored = list(store_soft_targets(fbank_cuts, targets, tmp_path / "soft", K, temperature=2.0))
    assert len(stored) == len(fbank_cuts)
    summary = stats.summary()
    assert summary["frames"] == sum(c.num_frames for c in fbank_cuts)
    assert summary["bytes_per_frame"] == 6 * K and summary["dense_float32_bytes_per_frame"] == 4 * NUM_CLASSES
    assert 0 < summary["mean_mass_kept"] < 1
    # KL = -log(mass kept) per frame, so by Jensen its mean is at least -log(mean mass kept).
    assert summary["mean_kl_stored_vs_full"] >= -np.log(summary["mean_mass_kept"]) - 1e-3
    for cut in stored:
        with torch.no_grad():
            expected = topk_compress(fuse_logits([t(_feats(cut)) for t in teachers], 2.0, "arithmetic").exp(), K)
        ids, probs = load_soft_targets(cut)
        assert np.array_equal(ids, expected[0]) and np.array_equal(probs, expected[1])

    torch.manual_seed(10)
    student = MLP(40, (16,), NUM_CLASSES)
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    x = torch.cat([_feats(c) for c in stored])
    ids, probs = (torch.cat(t) for t in zip(*(map(torch.from_numpy, load_soft_targets(c)) for c in stored)))
    losses = []
    for _ in range(150):
        loss = topk_distillation_loss(student(x), ids, probs, None, temperature=2.0, hard_weight=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # The loss is T^2 times a cross entropy whose floor is the targets' entropy.
    entropy = -(probs.float() * probs.float().clamp(min=1e-12).log()).sum(-1).mean().item()
    floor = 4.0 * entropy
    assert losses[-1] >= floor - 1e-3
    assert losses[-1] - floor < 0.5 * (losses[0] - floor), (losses[0], losses[-1], floor)


# --------------------------------------------------------------------------------------------
# The top-k loss
# --------------------------------------------------------------------------------------------


def _grad(fn, z: torch.Tensor) -> torch.Tensor:
    z = z.clone().requires_grad_(True)
    fn(z).backward()
    return z.grad


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 8), classes=st.integers(2, 40), temperature=st.floats(0.5, 10.0),
       data=st.data())
def test_topk_loss_and_gradient_equal_the_dense_loss_on_the_expanded_targets(seed, rows, classes, temperature, data):
    k = data.draw(st.integers(1, classes))
    z = torch.from_numpy(_posteriors(seed + 1, rows, classes)).log()  # any logits
    ids, probs = topk_compress(_posteriors(seed, rows, classes, temperature=temperature), k)
    dense = torch.from_numpy(expand_topk(ids, probs, classes)).double()
    ids_t, probs_t = torch.from_numpy(ids), torch.from_numpy(probs)  # int32 and float16, as stored
    mask = torch.from_numpy(np.random.default_rng(seed).integers(0, 2, rows)).double()
    mask[0] = 1.0

    def sparse(x):
        return topk_soft_cross_entropy(x, ids_t, probs_t, temperature, mask=mask)

    def full(x):
        return soft_cross_entropy(x, dense, temperature, weight=mask)

    assert torch.allclose(sparse(z), full(z), atol=1e-12)
    assert torch.allclose(_grad(sparse, z), _grad(full, z), atol=1e-12)


def test_topk_distillation_loss_with_k_equal_classes_is_the_dense_objective():
    rows, classes, t = 12, 30, 3.0
    z = torch.randn(rows, classes, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    teacher = torch.from_numpy(_posteriors(5, rows, classes, temperature=t))
    ids, probs = topk_compress(teacher, classes)
    labels = torch.randint(0, classes, (rows,), generator=torch.Generator().manual_seed(1))
    labels[3] = -1  # an unlabelled frame: left out of the hard term
    mask = torch.ones(rows)
    mask[-2:] = 0
    kwargs = dict(temperature=t, hard_weight=0.5, soft_weight=1.0)
    sparse = topk_distillation_loss(z, torch.from_numpy(ids), torch.from_numpy(probs), labels, mask=mask, **kwargs)
    dense = distillation_loss(z, teacher, labels, weight=mask, **kwargs)
    # float16 storage of the targets is the only difference.
    assert sparse.item() == pytest.approx(dense.item(), rel=2e-3)
    exact = distillation_loss(z, torch.from_numpy(expand_topk(ids, probs, classes)).double(), labels, weight=mask, **kwargs)
    assert sparse.item() == pytest.approx(exact.item(), rel=1e-12)
    for reduction in ("sum", "none"):
        a = topk_distillation_loss(z, torch.from_numpy(ids), torch.from_numpy(probs), labels, reduction=reduction, **kwargs)
        b = distillation_loss(z, torch.from_numpy(expand_topk(ids, probs, classes)).double(), labels, reduction=reduction, **kwargs)
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("bucket", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("hard", ["labels", "none", "weight 0"])
def test_fused_topk_loss_equals_the_reference_in_value_and_gradient(temperature, hard, bucket):
    # Padded [B, T, C] logits as a student gives them, float16 stored targets, a padding mask,
    # unlabelled frames: the fused node against topk_distillation_loss's autograd graph.
    gen = torch.Generator().manual_seed(int(temperature * 10) + len(hard))
    b, t, classes, k = 3, 7, 40, 6
    z = torch.randn(b, t, classes, dtype=torch.float64, generator=gen) * 4
    ids = torch.stack([torch.randperm(classes, generator=gen)[:k] for _ in range(b * t)]).reshape(b, t, k).int()
    probs = torch.rand(b, t, k, generator=gen)
    probs = (probs / probs.sum(-1, keepdim=True) * 0.9)  # rows need not sum to 1
    probs[0, 1] = probs[0, 1] / 0.9  # one row with no rest
    probs = probs.half()
    labels = torch.randint(0, classes, (b, t), generator=gen)
    labels[0, 2] = labels[2, 0] = -1
    mask = torch.ones(b, t)
    mask[1, 5:] = 0
    hard_labels, hard_weight = {"labels": (labels, 0.5), "none": (None, 0.5), "weight 0": (labels, 0.0)}[hard]
    kwargs = dict(temperature=temperature, hard_weight=hard_weight, soft_weight=0.7, mask=mask, bucket=bucket)
    values, grads = [], []
    for fn in (topk_distillation_loss, fused_topk_distillation_loss):
        x = z.clone().requires_grad_(True)
        loss = fn(x, ids, probs, hard_labels, **kwargs)
        (loss * 3.0).backward()  # an upstream gradient other than 1
        values.append(loss.item())
        grads.append(x.grad)
    assert values[1] == pytest.approx(values[0], rel=1e-12)
    assert torch.allclose(grads[1], grads[0], rtol=1e-10, atol=1e-14)
    assert grads[1][1, 5:].abs().max() == 0  # padded frames get no gradient
    # Without a mask: the plain mean over rows; an all-masked batch: 0 and no NaN.
    x = z.clone().requires_grad_(True)
    a = fused_topk_distillation_loss(x, ids, probs, labels, temperature, 0.5, bucket=bucket)
    assert a.item() == pytest.approx(topk_distillation_loss(z, ids, probs, labels, temperature, 0.5, bucket=bucket).item(), rel=1e-12)
    empty = fused_topk_distillation_loss(x, ids, probs, labels, temperature, 0.5, mask=torch.zeros(b, t), bucket=bucket)
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(x.grad).all()
    # Every class kept (k = C): no rest to learn, with or without the bucket.
    every = torch.argsort(torch.rand(b, t, classes, generator=gen), dim=-1)
    full = torch.softmax(torch.randn(b, t, classes, generator=gen), -1) * 0.95
    with_bucket = fused_topk_distillation_loss(z, every, full, labels, temperature, 0.5, bucket=True)
    assert with_bucket.item() == pytest.approx(fused_topk_distillation_loss(z, every, full, labels, temperature, 0.5).item(), rel=1e-12)
    # Dense targets (ids None: every class in class order, as codes decoded to every senone come)
    # give the sparse form's value and gradient, in both the fused node and the reference.
    dense = torch.zeros_like(full).scatter_(-1, every, full)
    outs = []
    for fn, target_ids, target in ((fused_topk_distillation_loss, every, full), (fused_topk_distillation_loss, None, dense),
                                   (topk_distillation_loss, None, dense)):
        x = z.clone().requires_grad_(True)
        loss = fn(x, target_ids, target, hard_labels, **kwargs)
        loss.backward()
        outs.append((loss.item(), x.grad))
    for value, grad in outs[1:]:
        assert value == pytest.approx(outs[0][0], rel=1e-12) and torch.allclose(grad, outs[0][1], rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="dense targets"):
        fused_topk_distillation_loss(z, None, dense[..., :-1], labels, temperature, 0.5)
    # float16 logits (a student under autocast) give the float32 value, not an overflow.
    half = fused_topk_distillation_loss(z.half(), ids, probs, labels, temperature, 0.5, bucket=bucket)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(a.item(), rel=1e-2)
    with pytest.raises(ValueError, match="row weight"):
        fused_topk_distillation_loss(z, ids, probs, labels, temperature, 0.5, mask=torch.ones(b))


def test_bucket_tail_teaches_the_kept_probabilities_and_the_rest_renormalising_does_not():
    # A student free to take any distribution (one row of logits), fitted to top-3 targets that
    # keep 0.8 of the mass: with kd.tail=bucket it ends at the teacher's own probabilities on the
    # kept ids and 0.2 on the rest; renormalised, it ends at the kept ones scaled to sum to 1.
    ids = torch.tensor([[4, 0, 7]])
    kept = torch.tensor([[0.5, 0.2, 0.1]])
    for bucket, want_kept, want_rest in ((True, [0.5, 0.2, 0.1], 0.2), (False, [0.625, 0.25, 0.125], 0.0)):
        probs = kept if bucket else kept / kept.sum()
        z = torch.zeros(1, 10, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([z], lr=0.5, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

        def closure():
            opt.zero_grad()
            loss = fused_topk_distillation_loss(z, ids, probs, None, 2.0, 0.0, bucket=bucket)
            loss.backward()
            return loss

        opt.step(closure)
        q = torch.softmax(z.detach() / 2.0, dim=-1)[0]
        assert q[[4, 0, 7]].tolist() == pytest.approx(want_kept, abs=2e-3)
        assert 1 - q[[4, 0, 7]].sum().item() == pytest.approx(want_rest, abs=2e-3)


def test_fused_topk_loss_is_exact_for_extreme_logits():
    # Logits far apart (a confident student): the reference's log_softmax and the fused
    # logsumexp agree, with no inf or NaN in value or gradient.
    z = torch.tensor([[300.0, -300.0, 0.0, 50.0]], dtype=torch.float32)
    ids, probs = torch.tensor([[1, 2]]), torch.tensor([[0.5, 0.5]])
    labels = torch.tensor([1])
    ref = topk_distillation_loss(z, ids, probs, labels, 2.0, 0.5)
    x = z.clone().requires_grad_(True)
    got = fused_topk_distillation_loss(x, ids, probs, labels, 2.0, 0.5)
    got.backward()
    assert got.item() == pytest.approx(ref.item(), rel=1e-6) and torch.isfinite(x.grad).all()


def test_topk_loss_on_padded_batches_from_storage_shapes(fbank_cuts, tmp_path):
    targets = _targets_for(fbank_cuts)
    stored = list(store_soft_targets(fbank_cuts, ((cid, *t) for cid, t in targets.items()), tmp_path / "soft", K))
    ids, probs = collate_soft_targets(stored)
    lengths = torch.tensor([c.num_frames for c in stored])
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).float()
    logits = torch.randn(*ids.shape[:2], NUM_CLASSES, requires_grad=True)
    loss = topk_distillation_loss(logits, ids, probs, None, temperature=2.0, hard_weight=0.0, mask=mask)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.all(logits.grad[mask == 0] == 0)  # padding frames get no gradient


def test_topk_loss_rejects_mismatched_shapes():
    z = torch.randn(4, 10)
    with pytest.raises(ValueError, match="top-k ids"):
        topk_soft_cross_entropy(z, torch.zeros(4, 3, dtype=torch.int64), torch.zeros(4, 2), 1.0)
    with pytest.raises(ConfigError, match="temperature"):
        topk_soft_cross_entropy(z, torch.zeros(4, 3, dtype=torch.int64), torch.zeros(4, 3), 0.0)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def test_kd_config_validates_and_reads_overrides():
    cfg = config_from_dict(KdConfig, {"temperature": "3", "top_k": "10", "fusion": "geometric"})
    assert (cfg.temperature, cfg.top_k, cfg.fusion) == (3.0, 10, "geometric")
    assert KdConfig().hard_weight < 1.0
    with pytest.raises(ConfigError, match="kd.mode=online"):
        KdConfig(loss="logit_l2")
    assert KdConfig(loss="logit_l2", mode="online").loss == "logit_l2"
    for bad in ({"fusion": "harmonic"}, {"top_k": 0}, {"temperature": 0}, {"hard_weight": 0, "soft_weight": 0}):
        with pytest.raises(ConfigError, match="kd."):
            KdConfig(**bad)


@pytest.mark.parametrize("bucket", [False, True])
def test_per_cut_totals_added_in_order_equal_the_running_update_bit_for_bit(bucket) -> None:
    # Stage 5 under torchrun: each rank sends its cuts' totals, rank 0 adds them in manifest order.
    running, added = SoftTargetStats(bucket=bucket), SoftTargetStats(bucket=bucket)
    for seed, frames in enumerate([7, 30, 1, 12]):
        full = torch.from_numpy(_posteriors(seed, frames, 50)).float()
        ids, probs = topk_compress(full, 5, renormalise=not bucket)
        running.update(full, ids, probs, full.log())
        one = SoftTargetStats(bucket=bucket)
        one.update(full, ids, probs, full.log())
        added.add(one.totals())
    assert running.summary() == added.summary() and added.frames == 50 and (added.k, added.num_classes) == (5, 50)
    assert running.totals().tobytes() == added.totals().tobytes()
    assert (added.kl_bucket_sum > 0) == bucket
