"""End to end: recipes/specialists/run.sh with the tiny preset (100-class MNIST digit pairs)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_kd.data.mnist import load_splits
from asr_kd.experiments.classifier import predict_logits
from asr_kd.experiments.specialists_report import both_baselines_verdict, combination_verdict, control_verdict, longer_verdict
from asr_kd.kd.specialists import combination_objective, specialist_term_weights
from asr_kd.models.mlp import MLP
from tests.conftest import REPO_ROOT

RUN_SH = REPO_ROOT / "recipes" / "specialists" / "run.sh"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exp = tmp_path_factory.mktemp("specialists") / "exp"
    out = subprocess.run(
        ["bash", str(RUN_SH), "--preset", "tiny", "--exp", str(exp), "--results", str(exp / "RESULTS.md")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"run.sh failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return exp


def _record(exp: Path, stage: str) -> dict:
    return json.loads((exp / stage / "result.json").read_text())


def test_pairs_task_uses_each_splits_own_digits(recipe: Path) -> None:
    images = load_splits(recipe / "prepare" / "images.npz")
    task = load_splits(recipe / "prepare" / "task.npz")
    assert task["test"].images.shape[1:] == (28, 56)
    assert _record(recipe, "prepare")["num_classes"] == 100
    train_digits = {images["train"].images[i].tobytes() for i in range(len(images["train"]))}
    test_digits = {images["test"].images[i].tobytes() for i in range(len(images["test"]))}
    for i in range(0, len(task["test"]), 37):
        left, right = task["test"].images[i, :, :28], task["test"].images[i, :, 28:]
        assert left.tobytes() in test_digits and right.tobytes() in test_digits
        assert left.tobytes() not in train_digits
        label = int(task["test"].labels[i])
        assert images["test"].labels[[j for j in range(len(images["test"])) if images["test"].images[j].tobytes() == left.tobytes()][0]] == label // 10


def test_clusters_are_partitions_within_size_limits(recipe: Path) -> None:
    sets = json.loads((recipe / "clusters" / "clusters.json").read_text())
    assert sets == _record(recipe, "clusters")["class_sets"]
    assert all(2 <= len(s) <= 40 and s == sorted(set(s)) for s in sets)
    assert len({tuple(s) for s in sets}) == len(sets)
    assert all(0 <= c < 100 for s in sets for c in s)


def test_combination_is_normalised_and_only_changes_rows_with_active_specialists(recipe: Path) -> None:
    z = np.load(recipe / "combine" / "test.npz")
    q, p_g, active = z["combined"], z["generalist"], z["active"]
    assert np.allclose(q.sum(1), 1.0) and np.all(q >= 0)
    idle = ~active.any(1)
    assert np.array_equal(q[idle], p_g[idle])
    sets = json.loads((recipe / "clusters" / "clusters.json").read_text())
    with np.load(recipe / "specialists" / "probs.npz") as sp:
        spec = [torch.from_numpy(sp[f"test_{m}"]) for m in range(len(sets))]
    # the tiny preset weighs each active specialist's term by 1 / (active specialists)
    args = (torch.from_numpy(p_g), spec, sets, specialist_term_weights(torch.from_numpy(active), "mean"))
    # the optimiser lowers the KL objective on every row that has an active specialist
    before = combination_objective(torch.from_numpy(p_g), *args)
    after = combination_objective(torch.from_numpy(q), *args)
    assert torch.all(after <= before + 1e-9)
    assert torch.all(after[torch.from_numpy(active.any(1))] < before[torch.from_numpy(active.any(1))])


def test_results_tables(recipe: Path) -> None:
    combine = _record(recipe, "combine")
    assert sum(r["num_examples"] for r in combine["coverage"]) == combine["num_test"] == 600
    gen = _record(recipe, "generalist")["test_accuracy"]
    assert combine["generalist_accuracy"] == pytest.approx(gen)
    assert gen > 0.3  # far above chance (1%) for 100 classes: the generalist learned the task
    delta = sum(r["delta_correct"] for r in combine["coverage"])
    assert delta == round((combine["combined_accuracy"] - gen) * combine["num_test"])
    text = (recipe / "RESULTS.md").read_text()
    assert "run.sh --preset tiny" in text
    assert "## Combination (Table 3 analogue)" in text and "(Table 4 analogue)" in text
    # the paired test: its discordant counts explain the change in correct answers exactly
    assert combine["only_combined_right"] - combine["only_generalist_right"] == delta and 0 < combine["p_value"] <= 1
    assert combination_verdict(combine) in text and combine["weighting"] == "mean"
    rows = _record(recipe, "specialists")["rows"]
    assert len(rows) == _record(recipe, "clusters")["num_specialists"]
    assert all(0.0 <= r["specialist_accuracy"] <= 1.0 for r in rows)
    # The like-for-like comparison of the combine stage: the specialist's accuracy is the one its
    # own stage measured, and the aggregated generalist's dustbin is calibrated to the data.
    dust = combine["dustbin"]
    assert [d["specialist"] for d in dust] == [r["specialist"] for r in rows]
    for d, r in zip(dust, rows):
        assert d["specialist_accuracy"] == pytest.approx(r["specialist_accuracy"])
        assert 0.0 <= d["generalist_aggregated_accuracy"] <= 1.0 and 0.0 < d["outside_share"] < 1.0
    mean_gap = np.mean([d["generalist_mean_dustbin"] - d["outside_share"] for d in dust])
    assert abs(mean_gap) < 0.1
    assert "### Specialists against the generalist on the same footing" in text


def _load_mlp(path: Path, hidden: list[int], num_classes: int) -> MLP:
    model = MLP(2 * 28 * 28, hidden, num_classes)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def test_control_trained_the_specialists_budget_and_results_show_its_numbers(recipe: Path) -> None:
    longer, combine, gen = _record(recipe, "longer"), _record(recipe, "combine"), _record(recipe, "generalist")
    rows = _record(recipe, "specialists")["rows"]
    task = load_splits(recipe / "prepare" / "task.npz")
    # the specialists' steps, counted as they trained, are their epochs over their training sets
    assert [r["steps"] for r in rows] == [3 * math.ceil(r["train_examples"] / 100) for r in rows]  # tiny: 3 epochs, batch 100
    sets = json.loads((recipe / "clusters" / "clusters.json").read_text())
    # each trains on its classes' examples plus as many from the rest (the dustbin)
    assert [r["train_examples"] for r in rows] == [2 * int(np.isin(task["train"].labels, s).sum()) for s in sets]
    # the control took exactly that many steps more than the generalist's 6 epochs (its training's
    # own count, against the budget it read from the specialists' record)
    per_epoch = math.ceil(len(task["train"]) / 100)
    assert longer["steps"] == longer["budget_steps"] == sum(r["steps"] for r in rows) > per_epoch
    assert longer["generalist_steps"] == gen["steps"] == 6 * per_epoch == gen["epochs"] * per_epoch
    assert longer["total_steps"] == longer["generalist_steps"] + longer["steps"]
    # its accuracy and the paired counts are those of the saved model
    assert gen["hidden"] == [128]
    model = _load_mlp(recipe / "longer" / "model.pt", gen["hidden"], 100)
    logits = predict_logits(model, task["test"].inputs())
    with np.load(recipe / "longer" / "logits.npz") as z:
        assert np.allclose(z["test"], logits.numpy(), atol=1e-5)
    longer_ok = (logits.argmax(-1) == task["test"].targets()).numpy()
    assert longer["test_accuracy"] == pytest.approx(longer_ok.mean()) and combine["longer"]["accuracy"] == pytest.approx(longer_ok.mean())
    z = np.load(recipe / "combine" / "test.npz")
    comb_ok, gen_ok = z["combined"].argmax(1) == z["labels"], z["generalist"].argmax(1) == z["labels"]
    vs = combine["longer"]["combined_vs_longer"]
    assert (vs["only_a_right"], vs["only_b_right"]) == (int((comb_ok & ~longer_ok).sum()), int((longer_ok & ~comb_ok).sum()))
    assert 0 < vs["p_value"] <= 1
    vs_gen = combine["longer"]["longer_vs_generalist"]
    assert vs_gen["only_a_right"] - vs_gen["only_b_right"] == int(longer_ok.sum()) - int(gen_ok.sum())
    # RESULTS.md and the combine log say it, with the record's numbers
    text = (recipe / "RESULTS.md").read_text()
    assert f"| generalist trained longer (the control, stage 4) | {100 * longer_ok.mean():.2f}% |" in text
    assert f"for {longer['steps']} more minibatch steps" in text and f"{longer['total_steps']} steps in all" in text
    assert control_verdict(combine) in text and both_baselines_verdict(combine) in text and longer_verdict(combine) in text
    log = (recipe / "log" / "stage5_combine.log").read_text()
    assert control_verdict(combine) in log and both_baselines_verdict(combine) in log


def test_control_is_trained_not_a_copy_of_the_generalist(recipe: Path) -> None:
    # a control that silently reused the generalist would have its weights and its predictions
    gen = torch.load(recipe / "generalist" / "model.pt", weights_only=True)
    longer = torch.load(recipe / "longer" / "model.pt", weights_only=True)
    assert gen.keys() == longer.keys()
    assert all((gen[k] - longer[k]).abs().max() > 1e-3 for k in gen)
    with np.load(recipe / "generalist" / "logits.npz") as g, np.load(recipe / "longer" / "logits.npz") as c:
        assert (g["test"].argmax(1) != c["test"].argmax(1)).sum() > 0


def _run(exp: Path, *args: str) -> None:
    out = subprocess.run(
        ["bash", str(RUN_SH), "--preset", "tiny", "--exp", str(exp), "--results", str(exp / "RESULTS.md"), *args],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, f"run.sh {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"


def _combination_section(text: str) -> tuple[dict[str, str], str]:
    """The combination section of RESULTS.md: its table's accuracy by system, and its text."""
    section = text.split("### Combination (Table 3 analogue)")[1].split("### Accuracy change")[0]
    rows = {cells[1].strip(): cells[2].strip() for cells in (line.split("|") for line in section.splitlines() if line.startswith("| "))}
    rows.pop("system")
    return rows, section


def test_results_stay_consistent_when_the_control_runs_after_the_combination(recipe: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    subprocess.run(["cp", "-r", str(recipe), str(exp)], check=True)  # stages 0-3 match as they are
    subprocess.run(["rm", "-r", str(exp / "longer"), str(exp / "combine")], check=True)
    _run(exp, "--stage", "5", "--stop-stage", "5")  # the combination, before any control
    _run(exp, "--stage", "4", "--stop-stage", "4")  # then the control
    combine, longer = _record(exp, "combine"), _record(exp, "longer")
    text = (exp / "RESULTS.md").read_text()
    acc = f"{100 * longer['test_accuracy']:.2f}%"
    assert f"Test accuracy {acc}." in text  # the control's section
    rows, section = _combination_section(text)
    # the combination ran without the control: its table and verdicts are against the generalist
    # only, and it says it predates the control above, not that the control has not run
    assert rows == {"generalist": f"{100 * combine['generalist_accuracy']:.2f}%",
                    "generalist + specialists": f"{100 * combine['combined_accuracy']:.2f}%",
                    "paper, JFT (61 specialists)": "25.0% -> 26.1%"}
    assert "has not run" not in text and "The combination (stage 5) ran before the control (stage 4, above) finished" in section
    assert "Against the generalist trained longer" not in section and "Out of date" not in text
    log = (exp / "log" / "stage4_longer.log").read_text()  # and the control's log warns in the same words
    assert "The combination (stage 5) ran before the control (stage 4, above) finished" in log and "Out of date" not in log

    # the combination redone: compared with this control, its number in both sections
    _run(exp, "--stage", "5", "--stop-stage", "5")
    combine = _record(exp, "combine")
    assert combine["longer"]["accuracy"] == pytest.approx(longer["test_accuracy"])
    text = (exp / "RESULTS.md").read_text()
    rows, section = _combination_section(text)
    assert rows["generalist trained longer (the control, stage 4)"] == acc and f"Test accuracy {acc}." in text
    assert control_verdict(combine) in section and "ran before the control" not in text and "has been redone" not in text

    # the control redone with another learning rate: the combination's comparisons were with the
    # earlier control, so they are left out, and its number appears only where it was measured
    _run(exp, "--stage", "4", "--stop-stage", "4", "--set", "learning_rate=0.005")
    redone = _record(exp, "longer")
    assert redone["learning_rate"] == 0.005 and redone["steps"] == longer["steps"]
    text = (exp / "RESULTS.md").read_text()
    rows, section = _combination_section(text)
    assert f"Test accuracy {100 * redone['test_accuracy']:.2f}%." in text
    assert set(rows) == {"generalist", "generalist + specialists", "paper, JFT (61 specialists)"}
    assert "was compared with a control (stage 4) that has been redone or removed since" in section
    assert control_verdict(combine) not in section and both_baselines_verdict(combine) not in section
    if redone["test_accuracy"] != longer["test_accuracy"]:
        assert acc not in section and f"Test accuracy {acc}." not in text  # the earlier control's accuracy is gone
