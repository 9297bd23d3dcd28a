"""The distilled student's wiring: stored top-k soft targets reach the batches (padded), the loss
on a batch equals topk_distillation_loss on the same tensors (and the dense loss on the expanded
targets), online teachers give the losses of asr_kd.kd.losses, and the 3% subset is a
deterministic function of the cut ids and the seed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lhotse import CutSet
from lhotse.testing.dummies import dummy_cut

from asr_kd.config import KdConfig
from asr_kd.data.features import CmvnStats
from asr_kd.data.frames import IGNORE_INDEX, OUTPUT_LENGTHS, POSITIONS, FrameDataset, subsample_frames
from asr_kd.data.stored_targets import SOFT_CODE_LENGTHS, SOFT_CODES
from asr_kd.errors import DataError
from asr_kd.kd.ensemble import TeacherEnsemble, fuse_logits
from asr_kd.kd.losses import distillation_loss, logit_matching_loss
from asr_kd.kd.soft_targets import expand_topk, store_soft_targets, topk_compress
from asr_kd.kd.student import OnlineDistillationLoss, StoredDistillationLoss, frame_mask
from asr_kd.stages.s8_three_percent import subset_cuts
from asr_kd.kd.topk_loss import topk_distillation_loss
from asr_kd.models.dnn import SplicedDnn, dnn_preset
from tests.unit.test_train_corpus import NUM_CLASSES, FrameCorpus, make_frame_corpus

K = 2  # of NUM_CLASSES = 3 classes: the stored targets really are truncated


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> FrameCorpus:
    return make_frame_corpus(tmp_path_factory.mktemp("kd_student"), train_speakers=(11, 12), dev_speakers=(15,))


@pytest.fixture(scope="module")
def soft_cuts(corpus: FrameCorpus, tmp_path_factory: pytest.TempPathFactory) -> CutSet:
    """The training cuts with random (seeded) top-K soft targets stored beside their senones."""
    cuts = CutSet.from_file(corpus.train_cuts)
    rng = np.random.default_rng(0)
    targets = []
    for cut in cuts:
        probs = torch.softmax(torch.from_numpy(rng.normal(size=(cut.num_frames, NUM_CLASSES))).float() * 3, dim=-1)
        ids, p = topk_compress(probs, K)
        targets.append((cut.id, ids, p))
    return store_soft_targets(cuts, targets, tmp_path_factory.mktemp("soft") / "storage", K, temperature=2.0)


def _batch(cuts: CutSet, corpus: FrameCorpus, **kw) -> dict:  # noqa: ANN003
    # Cuts of different lengths in one batch, so that padding is exercised.
    return FrameDataset(CmvnStats.load(corpus.train_cmvn), "senones", NUM_CLASSES, **kw)[cuts]


def test_batches_carry_padded_soft_targets(soft_cuts: CutSet, corpus: FrameCorpus) -> None:
    cuts = soft_cuts.subset(first=4)
    batch = _batch(cuts, corpus)
    b, t = batch["labels"].shape
    assert batch["soft_ids"].shape == batch["soft_probs"].shape == (b, t, K)
    assert batch["soft_ids"].dtype == torch.int64 and batch["soft_probs"].dtype == torch.float32
    for i, n in enumerate(batch["lengths"].tolist()):
        np.testing.assert_allclose(batch["soft_probs"][i, :n].sum(-1).numpy(), 1.0, atol=2e-3)
        assert (batch["soft_probs"][i, n:] == 0).all() and (batch["soft_ids"][i, n:] == 0).all()
    # Plain senone cuts get no soft-target fields (auto mode), and asking for them is an error.
    plain = CutSet.from_file(corpus.train_cuts).subset(first=2)
    assert "soft_ids" not in _batch(plain, corpus)
    assert "soft_ids" not in _batch(cuts, corpus, soft_targets=False)
    with pytest.raises(DataError, match="no stored soft targets"):
        _batch(plain, corpus, soft_targets=True)


@pytest.mark.parametrize("temperature", [1.0, 3.0])  # T = 1 takes the shared-softmax path
def test_stored_loss_equals_topk_loss_on_the_batch(soft_cuts: CutSet, corpus: FrameCorpus, temperature: float) -> None:
    kd = KdConfig(temperature=temperature, hard_weight=0.3, soft_weight=0.8, top_k=K)
    # kd.tail=bucket reaches the loss: on these (renormalised) rows the rest is 0 up to float16
    # rounding and the value the plain one; on rows scaled to keep 0.7 the rest (0.3) is a target.
    batch = _batch(soft_cuts.subset(first=4), corpus)
    torch.manual_seed(0)
    model = SplicedDnn(dnn_preset("tiny"), NUM_CLASSES)
    bucket = dataclasses.replace(kd, tail="bucket")
    torch.testing.assert_close(StoredDistillationLoss(bucket)(model, batch)[0], StoredDistillationLoss(kd)(model, batch)[0], rtol=1e-3, atol=0)
    scaled = {**batch, "soft_probs": batch["soft_probs"] * 0.7}
    logits = model(batch["features"], batch["lengths"])
    mask = frame_mask(batch["lengths"], logits.shape[1])
    torch.testing.assert_close(StoredDistillationLoss(bucket)(model, scaled)[0], topk_distillation_loss(
        logits, batch["soft_ids"], scaled["soft_probs"], batch["labels"], temperature, 0.3, 0.8, mask=mask, bucket=True))
    assert StoredDistillationLoss(bucket)(model, scaled)[0] > StoredDistillationLoss(kd)(model, scaled)[0]
    batch = _batch(soft_cuts.subset(first=4), corpus)
    torch.manual_seed(0)
    model = SplicedDnn(dnn_preset("tiny"), NUM_CLASSES)
    loss, metrics = StoredDistillationLoss(kd)(model, batch)
    logits = model(batch["features"], batch["lengths"])
    mask = frame_mask(batch["lengths"], logits.shape[1])
    expected = topk_distillation_loss(logits, batch["soft_ids"], batch["soft_probs"], batch["labels"], temperature, 0.3, 0.8, mask=mask)
    torch.testing.assert_close(loss, expected)
    # The same number from the dense loss on the expanded (zero outside the top K) targets.
    dense = torch.stack([torch.from_numpy(expand_topk(i, p, NUM_CLASSES)) for i, p in zip(batch["soft_ids"], batch["soft_probs"])])
    torch.testing.assert_close(loss, distillation_loss(logits, dense, batch["labels"], temperature, 0.3, 0.8, weight=mask), rtol=1e-5, atol=1e-6)
    # Dense batches (codes decoded to every senone: no ids, probabilities in senone order) give it too.
    dense_batch = {**batch, "soft_ids": None, "soft_probs": dense}
    torch.testing.assert_close(StoredDistillationLoss(kd)(model, dense_batch)[0], expected, rtol=1e-5, atol=1e-6)
    # And the same gradients for every weight.
    params = list(model.parameters())
    for g, g_ref in zip(torch.autograd.grad(loss, params, retain_graph=True), torch.autograd.grad(expected, params, retain_graph=True)):
        torch.testing.assert_close(g, g_ref)
    assert 0 <= float(metrics["frame_accuracy"]) <= 1
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_stored_loss_without_soft_targets_names_the_fix(corpus: FrameCorpus) -> None:
    batch = _batch(CutSet.from_file(corpus.train_cuts).subset(first=2), corpus)
    model = SplicedDnn(dnn_preset("tiny"), NUM_CLASSES)
    with pytest.raises(DataError, match="make-soft-targets"):
        StoredDistillationLoss(KdConfig())(model, batch)


def test_padding_frames_do_not_change_the_loss(soft_cuts: CutSet, corpus: FrameCorpus) -> None:
    """A cut's loss alone equals its loss in a batch with a longer cut, weighted by frames."""
    kd = KdConfig(temperature=2.0, hard_weight=0.5, top_k=K)
    cuts = sorted(soft_cuts.subset(first=4), key=lambda c: c.num_frames)
    short, long_ = cuts[0], cuts[-1]
    model = SplicedDnn(dnn_preset("tiny"), NUM_CLASSES).eval()
    loss_fn = StoredDistillationLoss(kd)
    with torch.no_grad():
        alone = [float(loss_fn(model, _batch(CutSet.from_cuts([c]), corpus))[0]) for c in (short, long_)]
        together = float(loss_fn(model, _batch(CutSet.from_cuts([short, long_]), corpus))[0])
    n_s, n_l = short.num_frames, long_.num_frames
    assert together == pytest.approx((alone[0] * n_s + alone[1] * n_l) / (n_s + n_l), rel=1e-5)


def test_online_losses_match_the_dense_losses(corpus: FrameCorpus) -> None:
    batch = _batch(CutSet.from_file(corpus.train_cuts).subset(first=3), corpus)
    torch.manual_seed(1)
    teachers = [SplicedDnn(dnn_preset("tiny"), NUM_CLASSES) for _ in range(2)]
    student = SplicedDnn(dnn_preset("tiny"), NUM_CLASSES)
    ensemble = TeacherEnsemble(teachers, "arithmetic")
    feats, lengths, labels = batch["features"], batch["lengths"], batch["labels"]
    mask = frame_mask(lengths, feats.shape[1])
    z = student(feats, lengths)
    with torch.no_grad():
        tl = torch.stack([t(feats, lengths) for t in teachers])

    kd = KdConfig(temperature=2.5, hard_weight=0.5, mode="online")
    loss, _ = OnlineDistillationLoss(ensemble, kd)(student, batch)
    probs = fuse_logits(tl, 2.5, "arithmetic", mask.bool()).exp()
    torch.testing.assert_close(loss, distillation_loss(z, probs, labels, 2.5, 0.5, weight=mask))
    loss.backward()
    assert all(p.grad is None for p in ensemble.parameters())  # teachers stay frozen

    l2 = KdConfig(hard_weight=0.0, mode="online", loss="logit_l2")
    loss, _ = OnlineDistillationLoss(ensemble, l2)(student, batch)
    torch.testing.assert_close(loss, logit_matching_loss(z, tl.mean(0), weight=mask))
    # A student whose logits are the teachers' mean has nothing left to learn from logit matching.
    same = OnlineDistillationLoss(TeacherEnsemble([teachers[0]]), l2)(teachers[0], batch)[0]
    assert float(same) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("factor,offset", [(2, 0), (2, 1), (3, 2)])
def test_frame_subsampled_losses_are_the_losses_at_the_kept_frames(soft_cuts: CutSet, corpus: FrameCorpus, factor: int,
                                                                   offset: int) -> None:
    """train.frame_subsampling: each loss on a thinned batch equals that loss computed from the full
    batch's outputs, targets and padding mask at the kept frames, and costs fewer outputs."""
    from asr_kd.train.frame_classifier import frame_cross_entropy

    batch = _batch(soft_cuts.subset(first=4), corpus)  # cuts of different lengths: padding at the kept frames too
    thin = subsample_frames(batch, factor, offset)
    t = batch["features"].shape[1]
    pos = torch.arange(offset, t, factor)
    assert torch.equal(thin[POSITIONS], pos) and thin["features"] is batch["features"] and thin["lengths"] is batch["lengths"]
    full_mask = frame_mask(batch["lengths"], t)
    assert torch.equal(frame_mask(thin[OUTPUT_LENGTHS], len(pos)), full_mask[:, pos])
    torch.manual_seed(0)
    model = SplicedDnn(dnn_preset("tiny"), NUM_CLASSES)
    logits = model(batch["features"], batch["lengths"])[:, pos]
    labels, ids, probs = batch["labels"][:, pos], batch["soft_ids"][:, pos], batch["soft_probs"][:, pos]
    kd = KdConfig(temperature=2.0, hard_weight=0.5, top_k=K)
    torch.testing.assert_close(StoredDistillationLoss(kd)(model, thin)[0], topk_distillation_loss(
        logits, ids, probs, labels, 2.0, 0.5, 1.0, mask=full_mask[:, pos]))
    torch.testing.assert_close(frame_cross_entropy(model, thin)[0], torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX))
    teachers = TeacherEnsemble([SplicedDnn(dnn_preset("tiny"), NUM_CLASSES) for _ in range(2)], "arithmetic")
    with torch.no_grad():
        fused = fuse_logits(teachers.teacher_logits(batch["features"], batch["lengths"]), 2.0, "arithmetic", full_mask.bool()).exp()
    torch.testing.assert_close(OnlineDistillationLoss(teachers, dataclasses.replace(kd, mode="online"))(model, thin)[0],
                               distillation_loss(logits, fused[:, pos], labels, 2.0, 0.5, weight=full_mask[:, pos]))
    with pytest.raises(ValueError, match="already subsampled"):
        subsample_frames(thin, factor, offset)
    with pytest.raises(ValueError, match=r"offset must be in \[0, 2\), got 2"):
        subsample_frames(batch, 2, 2)


def test_frame_subsampling_thins_undecoded_codes_and_counts_their_frames() -> None:
    # The GPU path: rvq codes travel undecoded; the frames holding codes are counted at the kept frames.
    codes = torch.arange(3 * 5 * 2, dtype=torch.uint8).reshape(3, 5, 2)
    batch = {"features": torch.zeros(3, 5, 4), "lengths": torch.tensor([5, 4, 1]), SOFT_CODES: codes,
             SOFT_CODE_LENGTHS: torch.tensor([5, 4, 1])}
    thin = subsample_frames(batch, 2, 1)
    assert torch.equal(thin[SOFT_CODES], codes[:, [1, 3]])
    assert thin[SOFT_CODE_LENGTHS].tolist() == thin[OUTPUT_LENGTHS].tolist() == [2, 2, 0]
    assert subsample_frames(batch, 2, 0)[OUTPUT_LENGTHS].tolist() == [3, 2, 1]


def test_unlabelled_frames_only_drop_out_of_the_hard_term(soft_cuts: CutSet, corpus: FrameCorpus) -> None:
    batch = _batch(soft_cuts.subset(first=2), corpus)
    model = SplicedDnn(dnn_preset("tiny"), NUM_CLASSES)
    soft_only = StoredDistillationLoss(KdConfig(hard_weight=0.0, top_k=K))
    unlabelled = {**batch, "labels": torch.full_like(batch["labels"], IGNORE_INDEX)}
    both = StoredDistillationLoss(KdConfig(hard_weight=0.7, top_k=K))
    torch.testing.assert_close(both(model, unlabelled)[0], soft_only(model, batch)[0])


def _cuts(n: int) -> CutSet:
    return CutSet.from_cuts(dummy_cut(i) for i in range(n))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 200), fraction=st.floats(0.01, 1.0), seed=st.integers(0, 2**31 - 1), perm_seed=st.integers(0, 1000))
def test_subset_is_deterministic_and_order_independent(n: int, fraction: float, seed: int, perm_seed: int) -> None:
    cuts = _cuts(n)
    sub = subset_cuts(cuts, fraction, seed)
    assert len(sub) == max(1, int(np.ceil(fraction * n)))
    assert list(sub.ids) == [c for c in cuts.ids if c in set(sub.ids)]  # original order kept
    shuffled = CutSet.from_cuts([cuts[i] for i in np.random.default_rng(perm_seed).permutation(n)])
    assert sorted(subset_cuts(shuffled, fraction, seed).ids) == sorted(sub.ids)


def test_subset_depends_on_the_seed_and_rejects_bad_fractions() -> None:
    cuts = _cuts(100)
    draws = {tuple(subset_cuts(cuts, 0.03, s).ids) for s in range(5)}
    assert len(draws) > 1 and all(len(d) == 3 for d in draws)
    with pytest.raises(Exception, match="fraction"):
        subset_cuts(cuts, 0.0, 0)
    with pytest.raises(DataError):
        subset_cuts(CutSet.from_cuts([]), 0.5, 0)


def test_stage_commands_fail_with_one_line_naming_the_missing_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from asr_kd.bin.cli import main

    common = ["--data-dir", str(tmp_path / "data"), "--exp-dir", str(tmp_path / "exp")]
    assert main(["train-teachers", *common, "--num-teachers", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "senones.json" in err and "train-gmm" in err
    assert main(["make-soft-targets", *common]) == 1
    assert "run stage 4" in capsys.readouterr().err
    assert main(["train-student", *common, "--kind", "distilled", "--kd-set", "loss=logit_l2"]) == 1
    assert "kd.mode=online" in capsys.readouterr().err  # logit matching needs the teachers' logits


def test_make_soft_targets_checks_the_inference_device_it_inherits(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # run.sh exports ASR_KD_INFERENCE_DEVICE; a bad value stops stage 5 in one line, as it stops stages 3, 7, 8 and 10.
    from asr_kd.bin.cli import main

    monkeypatch.setenv("ASR_KD_INFERENCE_DEVICE", "tpu")
    assert main(["make-soft-targets", "--data-dir", str(tmp_path / "data"), "--exp-dir", str(tmp_path / "exp")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ASR_KD_INFERENCE_DEVICE must be auto, cpu or cuda, got 'tpu'" in err


def test_tables_show_ours_beside_the_papers_and_the_gain_kept(tmp_path: Path) -> None:
    from asr_kd.report.tables import SubsetRun, SystemScore, format_table1, format_table5, gain_kept, plot_dev_accuracy

    assert gain_kept(58.9, 61.1, 60.8) == pytest.approx(1.9 / 2.2)  # the paper's 86%
    assert np.isnan(gain_kept(0.5, 0.5, 0.6))  # no ensemble gain: no share to speak of
    rows = [SystemScore(n, acc, wer, 3, 2, 1, 100, acc + 0.01) for n, acc, wer in
            (("baseline", 0.40, 0.30), ("ensemble", 0.44, 0.26), ("distilled", 0.43, 0.27))]
    text = format_table1(*rows, num_teachers=4, command="./run.sh --stage 7")
    assert text.startswith("## Table 1 analogue") and "| 4 x Ensemble | 44.0% | 26.00% (3/2/1 of 100) |" in text
    assert "**75%**" in text and "(paper: 86%" in text and "`./run.sh --stage 7`" in text
    assert "ensemble -4.00 points, distilled -3.00 points" in text
    runs = [SubsetRun(n, a, b, 5, "early stopping") for n, a, b in (("100", 0.5, 0.4), ("3h", 0.7, 0.2), ("3s", 0.45, 0.35))]
    text5 = format_table5(*runs, fraction=0.03, num_teachers=4, plot_name="p.png", hard_weight=0.5)
    assert "3% of the training set" in text5 and "| 70.0% | 20.0% | 5 (early stopping) | 67.3% | 44.5% |" in text5
    assert "soft targets of the 4 x ensemble plus 0.5 x hard labels (no early stopping)" in text5
    assert "soft targets of the 4 x ensemble only (no early stopping)" in format_table5(*runs, fraction=0.03, num_teachers=4, hard_weight=0.0)
    png = plot_dev_accuracy({"a": [{"epoch": 1, "frame_accuracy": 0.2}, {"epoch": 2, "frame_accuracy": 0.3}]}, tmp_path / "p.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_table5_with_seeds_gives_means_deviations_epochs_and_each_seeds_share() -> None:
    from asr_kd.report.tables import SubsetRun, format_table5

    full = SubsetRun("100% hard", 0.6, 0.34, 30, "num_epochs=30")
    seeds = [{"hard_3": SubsetRun("3% hard", tr, te, ep, "early stopping"), "soft_3": SubsetRun("3% soft", 0.6, st, 200, "num_epochs=200")}
             for tr, te, ep, st in ((0.70, 0.12, 40, 0.24), (0.74, 0.14, 52, 0.26), (0.72, 0.13, 45, 0.25))]
    share = {"value": 0.5, "low": 0.4, "high": 0.6, "level": 0.95, "resamples": 2000, "excludes_zero": True}
    comparisons = {"soft_vs_hard": {**share, "value": 0.12, "low": 0.1, "high": 0.14}, "gap_recovered": share,
                   "gap_recovered_per_seed": [{**share, "value": v} for v in (0.55, 0.57, 0.62)]}
    mean = {k: SubsetRun(k, 0.0, 0.0, 0, "") for k in ("hard_3", "soft_3")}  # the rows come from per_seed
    text = format_table5(full, mean["hard_3"], mean["soft_3"], 0.03, 4, comparisons=comparisons, hard_weight=0.0, per_seed=seeds)
    # hard: train 70/74/72 -> 72.0 ± 2.0; test 12/14/13 -> 13.0 ± 1.0; soft test 24/26/25 -> 25.0 ± 1.0
    assert "| 72.0% ± 2.0 | 13.0% ± 1.0 | 40 / 52 / 45 (early stopping) | 67.3% | 44.5% |" in text
    assert "| 60.0% ± 0.0 | 25.0% ± 1.0 | 200 / 200 / 200 (num_epochs=200) |" in text
    assert "seed 0: 55% (95% CI 40% to 60%); seed 1: 57%" in text and "mean of the 3 seeds' shares 58%, standard deviation 4 points" in text
    assert "the 3 seeds' correct frames per utterance averaged" in text and "one seed per model" not in text
    # Each seed's soft − hard (24-12, 26-14, 25-13 points) agrees with the interval's sign.
    assert "yes, better than hard targets, and so does every seed (per seed: +12.00, +12.00, +12.00 points)" in text
    worse = [dict(s) for s in seeds]
    worse[2]["soft_3"] = dataclasses.replace(worse[2]["soft_3"], test_frame_accuracy=0.12)  # seed 2: soft below hard (13%)
    assert "but the seeds disagree in sign (per seed: +12.00, +12.00, -1.00 points): seed noise" in format_table5(
        full, mean["hard_3"], mean["soft_3"], 0.03, 4, comparisons=comparisons, hard_weight=0.0, per_seed=worse)
    # A seed whose 3% hard model gains nothing has no share: the spread is over the others.
    nan = {**comparisons, "gap_recovered_per_seed": [{**share, "value": v} for v in (0.55, float("nan"), 0.61)]}
    text_nan = format_table5(full, mean["hard_3"], mean["soft_3"], 0.03, 4, comparisons=nan, hard_weight=0.0, per_seed=seeds)
    assert "seed 1: n/a" in text_nan and "mean of the 2 seeds' shares 58%, standard deviation 4 points" in text_nan and "nan" not in text_nan
    seeds[1]["hard_3"] = dataclasses.replace(seeds[1]["hard_3"], stop_reason="num_epochs=200")
    text = format_table5(full, mean["hard_3"], mean["soft_3"], 0.03, 4, comparisons=comparisons, hard_weight=0.0, per_seed=seeds)
    assert "| 40 (early stopping); 52 (num_epochs=200); 45 (early stopping) |" in text  # differing stops: each seed's
    one = format_table5(full, seeds[0]["hard_3"], seeds[0]["soft_3"], 0.03, 4, comparisons=comparisons, hard_weight=0.0, per_seed=seeds[:1])
    assert "| 70.0% | 12.0% | 40 (early stopping) |" in one and "one seed per model" in one and "Share recovered by each seed" not in one
    # The out-of-domain part: its own column (mean ± sd over seeds) and its own intervals.
    seeds = [{k: dataclasses.replace(r, ood_frame_accuracy=r.test_frame_accuracy / 2) for k, r in s.items()} for s in seeds]
    ood = {"part": "test-ood", "soft_vs_hard": {**share, "value": 0.05, "low": 0.01, "high": 0.09},
           "gap_recovered": {**share, "value": 0.31, "low": 0.22, "high": 0.4}}
    full = dataclasses.replace(full, ood_frame_accuracy=0.2)
    text = format_table5(full, mean["hard_3"], mean["soft_3"], 0.03, 4, comparisons={**comparisons, "ood": ood}, hard_weight=0.0,
                         per_seed=seeds, ood_part="test-ood")
    assert "| Test frame accuracy | test-ood frame accuracy | Relative frame-accuracy change, test-ood vs test | Epochs (stop) |" in text
    # Each row's test-ood accuracy relative to its test accuracy: 20/34 - 1 = -41%; the seeds' means 6.5/13 - 1 = -50%.
    assert "| 60.0% | 34.0% | 20.0% | -41% | 30 (num_epochs=30) |" in text and "| 13.0% ± 1.0 | 6.5% ± 0.5 | -50% | 40 (early stopping); 52" in text
    assert all(line.count("|") == 9 for line in text.splitlines() if line.startswith("| ") and "frame accuracy" not in line[:40])
    assert "On test-ood, soft minus hard targets: +5.00 [+1.00, +9.00] points" in text and "recovered there: **31% (95% CI 22% to 40%)**" in text
    # Stage 6's hard seeds as the 100% row: their mean ± sd, each one's epochs, and the text names them.
    fulls = [dataclasses.replace(full, train_frame_accuracy=tr, test_frame_accuracy=te, ood_frame_accuracy=o)
             for tr, te, o in ((0.62, 0.33, 0.21), (0.64, 0.35, 0.23), (0.63, 0.34, 0.22))]
    text = format_table5(full, mean["hard_3"], mean["soft_3"], 0.03, 4, comparisons=comparisons, hard_weight=0.0, per_seed=seeds,
                         ood_part="test-ood", hard_100_seeds=fulls)
    assert ("| Baseline, 100% of the training set, hard targets | 63.0% ± 1.0 | 34.0% ± 1.0 | 22.0% ± 1.0 | -35% | 30 / 30 / 30 (num_epochs=30) |"
            in text)  # 22/34 - 1 of the means
    # One seed, a row without a test-ood number: "n/a" and an empty relative cell; a gain shows as +.
    one = format_table5(dataclasses.replace(full, test_frame_accuracy=0.5, ood_frame_accuracy=0.75), seeds[0]["hard_3"],
                        dataclasses.replace(seeds[0]["soft_3"], ood_frame_accuracy=None), 0.03, 4, hard_weight=0.0, ood_part="test-ood")
    assert "| 60.0% | 50.0% | 75.0% | +50% | 30 (num_epochs=30) |" in one and "| 70.0% | 12.0% | 6.0% | -50% | 40 (early stopping) |" in one
    assert "| 60.0% | 24.0% | n/a |  | 200 (num_epochs=200) |" in one
    assert "The 100% baseline is the mean of stage 6's hard students of seeds 0-2 (the shares below use their averaged" in text
    assert "Share recovered by each seed (its 3% models against stage 6's hard student of the same seed): seed 0:" in text
    two = format_table5(full, mean["hard_3"], mean["soft_3"], 0.03, 4, comparisons=comparisons, hard_weight=0.0, per_seed=seeds,
                        hard_100_seeds=fulls[:2])
    assert "(its 3% models against stage 6's hard student of the same seed; seeds 2 and above against the mean of stage 6's 2)" in two
    assert "The 100% baseline is stage 6's hard student of seed 0;" in format_table5(
        full, mean["hard_3"], mean["soft_3"], 0.03, 4, comparisons=comparisons, hard_weight=0.0, per_seed=seeds, hard_100_seeds=fulls[:1])


def test_table1_has_the_out_of_domain_column_with_the_relative_increase() -> None:
    import dataclasses

    from asr_kd.report.tables import SystemScore, format_table1

    rows = [SystemScore(n, 0.4, wer, 3, 2, 1, 100, 0.41, ood, 120) for n, wer, ood in
            (("baseline", 0.30, 0.60), ("ensemble", 0.25, 0.45), ("distilled", 0.20, None))]
    text = format_table1(*rows, num_teachers=4, ood_part="test-ood")
    assert "| test-ood WER | Relative WER increase, test-ood vs test |" in text
    assert "| 60.00% (of 120) | +100% |" in text and "| 45.00% (of 120) | +80% |" in text
    assert "| 41.0% | not decoded | |" in text  # the distilled row has no test-ood decode
    # Without an out-of-domain part the table keeps its six columns.
    plain = format_table1(*[dataclasses.replace(r, ood_wer=None) for r in rows], num_teachers=4)
    assert "test-ood" not in plain and plain.splitlines()[2].count("|") == 7
