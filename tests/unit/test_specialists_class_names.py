"""The specialists recipe names an image data set's classes and keeps one section per data set."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from asr_kd.config import load_config
from asr_kd.config_secondary import SpecialistConfig
from asr_kd.data.mnist import CLASS_NAMES_FILE, FASHION_MNIST_NAMES, MNIST_5K, DatasetInfo
from asr_kd.experiments.specialists import run_specialists_stage
from asr_kd.experiments.specialists_report import class_label, class_set_line, task_title, within_gain

FASHION = DatasetInfo("fashion-mnist", "Fashion-MNIST", FASHION_MNIST_NAMES, False)


def test_class_labels_use_the_data_sets_names_where_it_has_them() -> None:
    assert class_label(6, "single", FASHION) == "6 (Shirt)"
    # a pair's class is 10 x left + right
    assert class_label(64, "pairs", FASHION) == "64 (Shirt | Coat)"
    assert class_label(7, "pairs", FASHION) == "7 (T-shirt/top | Sneaker)"
    assert class_label(64, "pairs", MNIST_5K) == "64" and class_label(6, "single", MNIST_5K) == "6"
    assert class_set_line(1, [2, 4, 6], "single", FASHION) == "- specialist 1: 2 (Pullover), 4 (Coat), 6 (Shirt)"
    assert class_set_line(0, [3, 13], "pairs", MNIST_5K) == "- specialist 0: [3, 13]"  # digits: as before
    assert class_set_line(2, [40, 42], "senones", FASHION) == "- specialist 2: [40, 42]"


def test_task_titles_tell_data_sets_apart() -> None:
    assert task_title("pairs", MNIST_5K) == "MNIST digit pairs"  # the existing section keeps its heading
    assert task_title("pairs", FASHION) == "Fashion-MNIST pairs"
    assert task_title("single", FASHION) == "Fashion-MNIST, its own 10 classes"


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_a_named_idx_folder_gets_its_own_section_with_named_classes(tmp_path: Path) -> None:
    data = tmp_path / "clothes"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        _write_idx(data / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(data / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    names = [f"item{c}" for c in range(10)]
    (data / CLASS_NAMES_FILE).write_text("\n".join(names) + "\n")
    results = tmp_path / "RESULTS.md"
    results.write_text("# Generalist and specialist models (Hinton, Vinyals & Dean 2015, section 5)\n\n## Task: pairs (MNIST digit pairs)\n\nkept as it is\n")
    for task in ("pairs", "single"):
        cfg = SpecialistConfig(task=task, num_test_images=0, num_val_images=10, num_train_pairs=30, num_val_pairs=10, num_test_pairs=10)
        record = run_specialists_stage("prepare", cfg, tmp_path / f"exp_{task}", data_dir=data, results_file=results, command=f"run.sh {task}")
        assert record["dataset"]["class_names"] == names
    text = results.read_text()
    # the digits' section is not overwritten by pairs of another data set, each has its own
    assert "## Task: pairs (MNIST digit pairs)\n\nkept as it is" in text
    assert text.count("## Task: pairs (IDX data in clothes pairs)") == 1
    assert text.count("## Task: single (IDX data in clothes, its own 10 classes)") == 1


RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "specialists"


def test_fashion_preset_uses_all_images_and_needs_the_data(tmp_path: Path) -> None:
    cfg = load_config(SpecialistConfig, RECIPE / "conf" / "fashion.yaml")
    # all official test images, 5,000 validation images held out of the 60,000, a small generalist
    assert (cfg.task, cfg.num_test_images, cfg.num_val_images, cfg.max_train_images) == ("single", 0, 5000, 0)
    assert cfg.generalist_hidden == (64,) and cfg.specialist_soft_temperature == 0.0
    out = subprocess.run(["bash", str(RECIPE / "run.sh"), "--preset", "fashion", "--exp", str(tmp_path / "exp")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "--preset fashion needs --data-dir" in out.stderr
    assert not (tmp_path / "exp").exists()  # refused before anything was written


def test_within_gain_counts_examples_the_specialists_tell_apart_better() -> None:
    rows = [
        {"num_test": 2000, "specialist_within_accuracy": 0.887, "generalist_within_accuracy": 0.878},  # +18
        {"num_test": 3000, "specialist_within_accuracy": 0.870, "generalist_within_accuracy": 0.8767},  # -20.1
        {"num_test": 100, "specialist_accuracy": 0.5, "generalist_accuracy": 0.4},  # an old record: no within columns
    ]
    assert within_gain(rows) == (-2, 5000)
