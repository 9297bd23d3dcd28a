"""The MNIST recipe's parts that need no training: the teacher grid, data set names, the premise
check, the seeds statistics and the tables that name classes."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_kd.config_secondary import MnistConfig, TeacherSetting
from asr_kd.data.mnist import FASHION_MNIST_NAMES, MNIST_5K, DatasetInfo, describe_dataset
from asr_kd.errors import ConfigError, DataError
from asr_kd.experiments.mnist import check_teacher_premise
from asr_kd.experiments.mnist_results import _omit_table, _transfer_table, gap_sentence
from asr_kd.metrics.paired import mcnemar_exact, mean_interval

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FASHION = DatasetInfo("fashion-mnist", "Fashion-MNIST", FASHION_MNIST_NAMES, False)


def test_teacher_grid_parses_and_rejects_bad_candidates() -> None:
    cfg = MnistConfig(teacher_grid=("0.5/0.2/2/40", "0/0/0/15"))
    assert cfg.teacher_candidates == (TeacherSetting(0.5, 0.2, 2, 40), TeacherSetting(0.0, 0.0, 0, 15))
    assert cfg.teacher_candidates[0].label == "dropout 0.5, input dropout 0.2, jitter 2 px, 40 epochs"
    with pytest.raises(ConfigError, match=r"^mnist.teacher_grid: '0.5/0.2/2' is not '\[conv:\]dropout/input_dropout/jitter/epochs'"):
        MnistConfig(teacher_grid=("0.5/0.2/2",))
    conv = MnistConfig(teacher_grid=("conv:0.3/0/1/20",)).teacher_candidates[0]
    assert conv == TeacherSetting(0.3, 0.0, 1, 20, "conv") and conv.label == "convnet, dropout 0.3, input dropout 0, jitter 1 px, 20 epochs"
    with pytest.raises(ConfigError, match=r"'cnn:0.3/0/1/20' is not '\[conv:\]dropout"):
        MnistConfig(teacher_grid=("cnn:0.3/0/1/20",))
    with pytest.raises(ConfigError, match=r"'1.0/0/0/5': dropout rates must be in \[0, 1\)"):
        MnistConfig(teacher_grid=("1.0/0/0/5",))
    with pytest.raises(ConfigError, match="needs at least one candidate"):
        MnistConfig(teacher_grid=())
    with pytest.raises(ConfigError, match="teacher_ensemble and mnist.gap_seeds must be >= 1"):
        MnistConfig(gap_seeds=0)


def _write_labels(folder: Path, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    raw = bytes([0, 0, 0x08, 1]) + len(labels).to_bytes(4, "big") + labels.astype(np.uint8).tobytes()
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw))


def test_class_names_come_from_the_data(tmp_path: Path) -> None:
    assert describe_dataset(None) == MNIST_5K and MNIST_5K.is_mnist
    labels = np.arange(30) % 3
    plain = tmp_path / "plain"
    _write_labels(plain, labels)
    info = describe_dataset(plain)
    # unknown IDX data: classes by number, and it is not MNIST (no paper numbers)
    assert info.class_names == ("0", "1", "2") and not info.is_mnist and info.key == "plain"
    named = tmp_path / "named"
    _write_labels(named, labels)
    (named / "class_names.txt").write_text("cat\ndog\n\nbird\n")
    assert describe_dataset(named).class_names == ("cat", "dog", "bird")
    (named / "class_names.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match=r"class_names.txt names 2 classes but the labels in .*train-labels-idx1-ubyte.gz run 0..2"):
        describe_dataset(named)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_is_recognised_by_its_labels() -> None:
    info = describe_dataset("/usr/share/datasets/fashion-mnist")
    assert info.title == "Fashion-MNIST" and not info.is_mnist
    assert [info.class_label(c) for c in (3, 7, 8)] == ["3 (Dress)", "7 (Sneaker)", "8 (Bag)"]


def test_omitted_class_and_transfer_tables_name_the_classes_and_show_paper_numbers_only_for_mnist() -> None:
    omit = {"omitted_class": 3, "transfer_size": 900, "bias_step": 0.1, "errors": 70, "errors_after": 60, "num_test": 1000, "shifted_class_errors": 30, "shifted_class_errors_after": 10, "num_shifted_test": 100, "bias": 2.0}
    text = "\n".join(_omit_table(omit, FASHION))
    assert "### Class 3 (Dress) left out of the transfer set" in text and "errors on class 3 (Dress)" in text
    assert "paper" not in text
    mnist_text = "\n".join(_omit_table(omit, MNIST_5K))
    assert "### Class 3 left out" in mnist_text and "| paper (full MNIST) | 206 -> 109 |" in mnist_text
    transfer = {**omit, "transfer_classes": [7, 8]}
    assert _transfer_table(transfer, FASHION)[0] == "### Transfer set of only 7 (Sneaker) and 8 (Bag)"
    assert "paper" not in "\n".join(_transfer_table(transfer, FASHION))


def _paired(only_teacher: int, only_small: int, both_wrong: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-example correctness of a teacher and a small net: the given discordant and
    both-wrong counts, every other example right for both."""
    teacher = np.ones(n, dtype=bool)
    small = np.ones(n, dtype=bool)
    small[:only_teacher] = False
    teacher[only_teacher : only_teacher + only_small] = False
    both = slice(only_teacher + only_small, only_teacher + only_small + both_wrong)
    teacher[both] = small[both] = False
    return teacher, small


def test_premise_check_is_a_paired_test_on_validation() -> None:
    # issue 16's Fashion-MNIST counts: 565 against 580 errors of 5000 is not a significant gain
    teacher, small = _paired(only_teacher=115, only_small=100, both_wrong=465, n=5000)
    noise = check_teacher_premise(teacher, small)
    assert (noise["teacher_val_errors"], noise["small_val_errors"]) == (565, 580)
    assert noise["holds"] is False and noise["verdict"] == "within noise"
    assert noise["p_value"] == pytest.approx(0.3398, abs=1e-3)  # 2 * P(X <= 100), X ~ Bin(215, 1/2)
    assert noise["text"].startswith(
        "WARNING: the teacher is better than the small net on validation only within noise (565 against 580 errors of 5000; "
        "115 examples only the teacher got right, 100 only the small net, McNemar exact p=0.34 >= 0.05)"
    )
    # the same 15-error difference on 30 discordant examples is significant: 2 * P(X <= 7), X ~ Bin(29, 1/2)
    teacher, small = _paired(only_teacher=22, only_small=7, both_wrong=0, n=500)
    better = check_teacher_premise(teacher, small)
    assert better["holds"] is True and better["verdict"] == "holds" and better["p_value"] == pytest.approx(0.00813, abs=1e-4)
    assert better["text"].endswith("McNemar exact p=0.0081 < 0.05): the premise of distillation holds.")
    teacher, small = _paired(only_teacher=30, only_small=45, both_wrong=5, n=500)
    worse = check_teacher_premise(teacher, small)
    assert worse["verdict"] == "fails" and worse["text"].startswith("WARNING: the teacher is NOT better than the small net on validation (50 against 35 errors of 500;")
    tie = check_teacher_premise(*_paired(only_teacher=10, only_small=10, both_wrong=0, n=100))
    assert tie["verdict"] == "fails" and tie["p_value"] == 1.0  # a tie is not better


def test_seed_interval_and_mcnemar_values() -> None:
    mean, half = mean_interval([10, 12, 14])
    # sd 2, sem 2/sqrt(3), t(0.975, 2) = 4.3027
    assert mean == 12 and half == pytest.approx(4.3027 * 2 / math.sqrt(3), rel=1e-4)
    assert math.isnan(mean_interval([5])[1])
    a = np.array([True] * 10 + [False] * 2 + [True] * 5)
    b = np.array([False] * 10 + [True] * 2 + [True] * 5)
    paired = mcnemar_exact(a, b)
    assert (paired.only_a, paired.only_b) == (10, 2)
    assert paired.p_value == pytest.approx(0.03857, abs=1e-4)  # 2 * P(X <= 2), X ~ Bin(12, 1/2)
    assert mcnemar_exact(a, a).p_value == 1.0
    rows = [{"hard_errors": 60, "distilled_errors": 50}, {"hard_errors": 58, "distilled_errors": 49}]
    assert "distillation helps" in gap_sentence({"rows": rows, "mean_gap": 9.5, "gap_ci95": 6.35})
    assert "within noise: the interval includes zero" in gap_sentence({"rows": rows, "mean_gap": 1.0, "gap_ci95": 3.0})
    assert "distillation hurts" in gap_sentence({"rows": rows, "mean_gap": -5.0, "gap_ci95": 3.0})


def _write_splits(path: Path, rng: np.random.Generator) -> None:
    """Tiny splits of 8x8 images whose class is the bright row (easy to learn)."""
    arrays = {}
    for split, n in (("train", 200), ("val", 50), ("test", 50)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, (n, 8, 8)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, c % 8, :] = 255 if c < 8 else 0
            images[i, :, 7] = 255 if c >= 8 else images[i, :, 7]
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, source=np.array("synthetic"), **arrays)


def test_teacher_grid_keeps_the_best_on_validation_and_averages_an_ensemble(tmp_path: Path) -> None:
    from asr_kd.experiments.mnist import _teacher_logits, train_teacher

    _write_splits(tmp_path / "prepare" / "splits.npz", np.random.default_rng(0))
    # the second candidate cannot learn in one epoch with 95% dropout on inputs and units
    cfg = MnistConfig(teacher_hidden=(32,), teacher_grid=("0/0/0/8", "0.95/0.95/0/1"), teacher_ensemble=2, batch_size=20, learning_rate=0.01)
    record = train_teacher(cfg, tmp_path)
    val = [g["val_errors"] for g in record["grid"]]
    assert record["chosen"] == 0 and val[0] < val[1] and val[0] <= 5
    assert record["setting"] == "dropout 0, input dropout 0, jitter 0 px, 8 epochs" and record["ensemble"] == 2
    logits = _teacher_logits(tmp_path)
    assert tuple(logits["train"].shape) == (2, 200, 10)  # two members of the chosen setting
    assert not np.allclose(logits["train"][0].numpy(), logits["train"][1].numpy())  # different seeds
    assert (tmp_path / "teacher" / "model_1.pt").is_file()


def test_a_conv_candidate_trains_a_convnet_teacher_that_learns(tmp_path: Path) -> None:
    from asr_kd.experiments.mnist import _teacher_logits, train_teacher

    _write_splits(tmp_path / "prepare" / "splits.npz", np.random.default_rng(1))
    cfg = MnistConfig(teacher_hidden=(32,), teacher_grid=("0.95/0.95/0/1", "conv:0/0/0/8"), batch_size=20, learning_rate=0.01)
    record = train_teacher(cfg, tmp_path)
    assert record["chosen"] == 1 and record["arch"] == "conv"
    assert record["setting"] == "convnet, dropout 0, input dropout 0, jitter 0 px, 8 epochs"
    assert record["val_errors"] <= 5  # of 50; an untrained net gets ~45 wrong
    state = torch.load(tmp_path / "teacher" / "model.pt", weights_only=True)
    assert any(w.ndim == 4 for w in state.values())  # convolution kernels were saved
    assert tuple(_teacher_logits(tmp_path)["val"].shape) == (1, 50, 10)


def test_student_jitter_is_validated_in_one_line() -> None:
    assert MnistConfig().student_jitter == 0  # MNIST's default: the paper's unjittered transfer set
    assert MnistConfig(student_jitter=2).student_jitter == 2
    for bad in (-1, 5):
        with pytest.raises(ConfigError, match=rf"^mnist.student_jitter must be 0..4 pixels, got {bad}$"):
            MnistConfig(student_jitter=bad)


def test_jittered_soft_targets_are_the_teachers_on_the_shifted_images(tmp_path: Path) -> None:
    from asr_kd.experiments.classifier import TrainSpec, jittered_batch, predict_logits, train_classifier
    from asr_kd.experiments.mnist import _splits, _teacher_logits, shifted_teacher_logits, teacher_models, train_teacher
    from asr_kd.kd.losses import soften

    _write_splits(tmp_path / "prepare" / "splits.npz", np.random.default_rng(2))
    record = train_teacher(MnistConfig(teacher_hidden=(32,), teacher_grid=("conv:0/0/0/3",), batch_size=20, learning_rate=0.01), tmp_path)
    splits = _splits(tmp_path)
    models = teacher_models(tmp_path, splits, record)  # rebuilt from the teacher stage's files
    shifted = shifted_teacher_logits(models, splits["train"], 2)
    assert tuple(shifted.shape) == (25, 1, 200, 10)
    # the middle shift is no shift: the saved model reproduces the teacher stage's own logits
    assert torch.allclose(shifted[12], _teacher_logits(tmp_path)["train"], atol=1e-5)
    probs = soften(shifted, 2.0).mean(dim=1)  # [shifts, N, K], as the students get them
    inputs, idx = splits["train"].inputs(), torch.arange(40, 80)
    spec = TrainSpec(1, 40, 0.01, seed=0, jitter_pixels=2, image_shape=(8, 8), temperature=2.0)
    x, targets = jittered_batch(inputs, probs, idx, spec, torch.Generator().manual_seed(3))
    assert targets is not None and tuple(targets.shape) == (40, 10)
    assert not torch.equal(x, inputs[idx])  # the images were moved
    on_shifted = soften(predict_logits(models[0], x), 2.0)
    assert torch.allclose(targets, on_shifted, atol=1e-5)
    # ... and the targets of the originals would differ for the moved images
    assert not torch.allclose(targets, soften(predict_logits(models[0], inputs[idx]), 2.0), atol=1e-3)
    with pytest.raises(ValueError, match=r"teacher_probs must be \[shifts, N, K\] with jitter"):
        train_classifier(torch.nn.Linear(64, 10), inputs, splits["train"].targets(), spec, teacher_probs=probs[12])


def test_gap_table_with_jitter_reports_the_jittered_hard_label_control() -> None:
    from asr_kd.experiments.mnist_results import _gap_table

    def row(seed: int, hard: int, distilled: int, hard_jitter: int, distilled_jitter: int) -> dict:
        errors = {"hard_errors": hard, "distilled_errors": distilled, "hard_jitter_errors": hard_jitter, "distilled_jitter_errors": distilled_jitter}
        return {"seed": seed, **errors, "p_value": 0.04, "jitter_p_value": 0.5}

    rows = [row(2, 130, 120, 110, 105), row(12, 128, 119, 112, 110)]
    record = {"rows": rows, "hidden": [800, 800], "num_test": 1000, "temperature": 2.0, "hard_weight": 0.1, "epochs": 40, "jitter": 1}
    record.update(mean_gap=9.5, gap_ci95=6.35, jitter_mean_gap=3.5, jitter_gap_ci95=19.1)
    text = "\n".join(_gap_table(record))
    assert "| 2 | 130 (13.00%) | 120 (12.00%) | 0.04 | 110 (11.00%) | 105 (10.50%) | 0.5 |" in text
    assert "Mean gap (hard minus distilled test errors) over 2 seeds: +9.5 errors, 95% t interval [+3.2, +15.8] (distillation helps" in text
    assert "Mean gap (hard-label + jitter minus distilled + jitter test errors) over 2 seeds: +3.5 errors, 95% t interval [-15.6, +22.6] (within noise" in text
    assert "hard-label 129.0, distilled 119.5, hard-label + jitter 111.0, distilled + jitter 107.5." in text
