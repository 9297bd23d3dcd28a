"""End to end: recipes/specialists/run.sh --task senones on the stage-3 outputs of the tiny corpus."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_kd.data.alignments import load_alignment
from asr_kd.experiments.senone_task import load_frame_task
from asr_kd.experiments.specialists_report import combination_verdict
from asr_kd.kd.specialists import combination_objective, specialist_term_weights
from tests.conftest import REPO_ROOT

RUN_SH = REPO_ROOT / "recipes" / "specialists" / "run.sh"

pytestmark = pytest.mark.slow


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RUN_SH), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def recipe(tiny_stage3: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(exp, results)`` after the whole senone recipe (tiny preset) into a fresh folder, with a
    RESULTS.md that already holds another task's section."""
    data, _, gmm_exp = tiny_stage3
    root = tmp_path_factory.mktemp("specialists_senones")
    exp, results = root / "exp", root / "RESULTS.md"
    results.write_text("# Generalist and specialist models (Hinton, Vinyals & Dean 2015, section 5)\n\n## Task: pairs (MNIST digit pairs)\n\nkept as it is\n")
    out = _run("--task", "senones", "--preset", "tiny", "--gmm-exp", str(gmm_exp), "--data-dir", str(data), "--exp", str(exp), "--results", str(results))
    assert out.returncode == 0, f"run.sh failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return exp, results


def _record(exp: Path, stage: str) -> dict:
    return json.loads((exp / stage / "result.json").read_text())


def test_frames_are_spliced_normalised_and_labelled_with_senones(recipe: tuple[Path, Path], tiny_stage3: tuple[Path, Path, Path]) -> None:
    exp, _ = recipe
    _, _, gmm_exp = tiny_stage3
    task, k = load_frame_task(exp / "prepare" / "task.npz")
    assert k == json.loads((gmm_exp / "gmm" / "ali" / "senones.json").read_text())["num_senones"]
    prep = _record(exp, "prepare")
    context = prep["context"]
    assert prep["num_classes"] == k and prep["input_dim"] == 40 * (2 * context + 1)
    for split, budget in (("train", 6000), ("val", 2000), ("test", 2000)):
        s = task[split]
        counts = prep["counts"][split]
        assert len(s) == prep["sizes"][split] == min(budget, counts["frames"]) == counts["sampled"]
        assert s.features.dtype == np.float32 and s.features.shape == (len(s), prep["input_dim"])
        assert s.labels.min() >= 0 and s.labels.max() < k
    # CMVN per speaker: the centre frames of the training set have mean near 0 and std near 1
    centre = task["train"].features.reshape(len(task["train"]), 2 * context + 1, 40)[:, context]
    assert np.abs(centre.mean(0)).max() < 0.3 and np.all(np.abs(centre.std(0) - 1.0) < 0.3)
    # every training label is a senone the alignments actually use
    from lhotse import load_manifest_lazy

    used = set()
    for cut in load_manifest_lazy(gmm_exp / "gmm" / "ali" / "cuts_train-clean-100.jsonl.gz"):
        used.update(load_alignment(cut).tolist())
    assert set(task["train"].labels.tolist()) <= used


def test_combination_is_normalised_and_lowers_the_objective(recipe: tuple[Path, Path]) -> None:
    exp, _ = recipe
    z = np.load(exp / "combine" / "test.npz")
    q, p_g, active, labels = z["combined"], z["generalist"], z["active"], z["labels"]
    assert np.allclose(q.sum(1), 1.0) and np.all(q >= 0)
    assert np.allclose(p_g.sum(1), 1.0)
    idle = ~active.any(1)
    assert np.array_equal(q[idle], p_g[idle])
    sets = json.loads((exp / "clusters" / "clusters.json").read_text())
    assert sets and all(2 <= len(s) <= 60 and s == sorted(set(s)) for s in sets)
    with np.load(exp / "specialists" / "probs.npz") as sp:
        spec = [torch.from_numpy(sp[f"test_{m}"]) for m in range(len(sets))]
    assert all(np.allclose(p.sum(1).numpy(), 1.0) and p.shape == (len(labels), len(s) + 1) for p, s in zip(spec, sets))
    # the preset weighs each active specialist's term by 1 / (active specialists)
    args = (torch.from_numpy(p_g), spec, sets, specialist_term_weights(torch.from_numpy(active), "mean"))
    before, after = combination_objective(torch.from_numpy(p_g), *args), combination_objective(torch.from_numpy(q), *args)
    on = torch.from_numpy(active.any(1))
    assert bool(on.any()) and torch.all(after <= before + 1e-9) and torch.all(after[on] < before[on])


def test_results_section_and_accuracies(recipe: tuple[Path, Path]) -> None:
    exp, results = recipe
    combine = _record(exp, "combine")
    k = _record(exp, "prepare")["num_classes"]
    gen = _record(exp, "generalist")["test_accuracy"]
    assert combine["generalist_accuracy"] == pytest.approx(gen)
    # far above chance (1 / number of senones) yet a probability
    assert 3.0 / k < gen <= 1.0 and 0.0 <= combine["combined_accuracy"] <= 1.0
    assert sum(r["num_examples"] for r in combine["coverage"]) == combine["num_test"] == 2000
    rows = _record(exp, "specialists")["rows"]
    assert len(rows) == _record(exp, "clusters")["num_specialists"]
    keys = ("specialist_accuracy", "generalist_accuracy", "specialist_within_accuracy", "generalist_within_accuracy")
    assert all(0.0 <= r[key] <= 1.0 for r in rows if r["num_test"] for key in keys)
    # telling fewer classes apart is easier: within-set accuracy is at least the full arg-max's
    assert all(r["generalist_within_accuracy"] >= r["generalist_accuracy"] for r in rows if r["num_test"])
    text = results.read_text()
    assert "## Task: pairs (MNIST digit pairs)\n\nkept as it is" in text
    assert text.count("## Task: senones") == 1 and "--task senones --preset tiny" in text
    senones = text[text.index("## Task: senones"):]
    assert f"Task: {k} classes" in senones and "### Combination (Table 3 analogue)" in senones
    assert f"| generalist | {100 * gen:.2f}% |" in senones and combination_verdict(combine) in senones
    assert "| specialist | classes | test examples | specialist accuracy | generalist accuracy | specialist within | generalist within |" in senones


def test_rerun_skips_finished_stages_and_keeps_one_section(recipe: tuple[Path, Path], tiny_stage3: tuple[Path, Path, Path]) -> None:
    exp, results = recipe
    data, _, gmm_exp = tiny_stage3
    before = (exp / "combine" / "test.npz").stat().st_mtime_ns
    out = _run("--task", "senones", "--preset", "tiny", "--gmm-exp", str(gmm_exp), "--data-dir", str(data), "--exp", str(exp), "--results", str(results))
    assert out.returncode == 0 and (out.stdout + out.stderr).count("matches its config and inputs); skipping") == 6
    assert (exp / "combine" / "test.npz").stat().st_mtime_ns == before
    assert results.read_text().count("## Task: senones") == 1


def test_missing_stage3_is_a_one_line_error(tmp_path: Path, tiny_stage3: tuple[Path, Path, Path]) -> None:
    data, _, _ = tiny_stage3
    out = _run("--task", "senones", "--gmm-exp", str(tmp_path), "--data-dir", str(data), "--exp", str(tmp_path / "exp"))
    assert out.returncode == 1
    assert "--gmm-exp" in out.stderr and "stage 3" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_scale_bench_runs_the_recipe_per_size_and_quotes_its_records(tiny_stage3: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """bench/specialists_scale.py: one whole senone run per --train-frames budget, each drawing
    that many training frames, and a row per size holding the numbers of that run's records."""
    import runpy

    data, _, gmm_exp = tiny_stage3
    results = tmp_path / "RESULTS.md"
    main = runpy.run_path(str(REPO_ROOT / "bench" / "specialists_scale.py"))["main"]
    assert main(["--gmm-exp", str(gmm_exp), "--data-dir", str(data), "--out", str(tmp_path / "out"), "--preset", "tiny",
                 "--train-frames", "6000", "--train-frames", "2000", "--results", str(results)]) == 0
    text = results.read_text()
    for frames in (2000, 6000):
        exp = tmp_path / "out" / f"frames{frames}"
        prep, comb = _record(exp, "prepare"), _record(exp, "combine")
        assert prep["sizes"]["train"] == frames == prep["counts"]["train"]["sampled"]
        row = text.split(f"\n| {frames:,} of {prep['counts']['train']['frames']:,} |")[1].split("\n")[0]
        change = comb["combined_accuracy"] / comb["generalist_accuracy"] - 1
        assert (f" {100 * comb['generalist_accuracy']:.2f}% | {100 * comb['longer']['accuracy']:.2f}% | "
                f"{100 * comb['combined_accuracy']:.2f}% | {change:+.1%} | "
                f"{comb['only_combined_right']} / {comb['only_generalist_right']}, p={comb['p_value']:.2g} (") in row
    assert text.index("\n| 2,000 of ") < text.index("\n| 6,000 of ")  # rows in size order
    with pytest.raises(SystemExit, match="give the sizes with --train-frames"):
        main(["--gmm-exp", str(gmm_exp), "--data-dir", str(data), "--out", str(tmp_path / "x"), "--train-frames", "10",
              "--set", "max_train_frames=5"])


def test_scale_bench_class_axis_runs_each_senone_inventory(tiny_stage3: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """bench/specialists_scale.py with two stage-3 folders (decision trees of different sizes on
    the same corpus) and two seeds: one run per inventory and seed in senones<K>/frames<N>[_seed1],
    each labelled with its own tree's senones, a row per run in the class-count section, in class
    order, and the mean relative change over the seeds computed from the runs' records."""
    import dataclasses
    import runpy

    from asr_kd.config import GmmConfig, load_config
    from asr_kd.stages.s3_gmm import run_gmm_stage
    from tests.conftest import TINY_GMM_CONFIG

    data, _, gmm_exp = tiny_stage3
    # a larger tree on the same corpus: twice the leaves, half the occupancy each leaf needs
    base = load_config(GmmConfig, TINY_GMM_CONFIG)
    big_exp = tmp_path / "big" / "exp"
    big = dataclasses.replace(base, num_leaves=2 * base.num_leaves, min_leaf_count=base.min_leaf_count / 4,
                              tri_total_gauss=2 * base.tri_total_gauss)
    run_gmm_stage(data, data / "lang", big_exp, big, "train-clean-100", ["train-clean-100", "dev-clean", "test-clean"], num_jobs=2)
    senones = {exp: json.loads((exp / "gmm" / "ali" / "senones.json").read_text())["num_senones"] for exp in (gmm_exp, big_exp)}
    assert senones[big_exp] > senones[gmm_exp], senones

    results = tmp_path / "RESULTS.md"
    main = runpy.run_path(str(REPO_ROOT / "bench" / "specialists_scale.py"))["main"]
    assert main(["--gmm-exp", str(big_exp), "--gmm-exp", str(gmm_exp), "--data-dir", str(data), "--out", str(tmp_path / "out"),
                 "--preset", "tiny", "--train-frames", "3000", "--seeds", "2", "--results", str(results)]) == 0
    text = results.read_text()
    assert "## Specialists against the number of classes" in text and "## Specialists against the size" not in text
    starts = []
    for exp_dir, k in senones.items():
        changes = []
        for seed in (0, 1):
            exp = tmp_path / "out" / f"senones{k}" / ("frames3000" + ("_seed1" if seed else ""))
            prep, comb = _record(exp, "prepare"), _record(exp, "combine")
            task, classes = load_frame_task(exp / "prepare" / "task.npz")
            assert prep["num_classes"] == classes == k and task["train"].labels.max() < k
            assert json.loads((exp / "prepare" / "provenance.json").read_text())["config"]["seed"] == seed
            starts.append(text.index(f"\n| {k:,} | 3,000 of {prep['counts']['train']['frames']:,} | {seed} | {3000 / k:.0f} |"))
            row = text[starts[-1]:].split("\n")[1]
            assert f" {100 * comb['generalist_accuracy']:.2f}% | {100 * comb['longer']['accuracy']:.2f}% | {100 * comb['combined_accuracy']:.2f}% |" in row
            changes.append(comb["combined_accuracy"] / comb["generalist_accuracy"] - 1)
        assert f"{k:,} senones: {sum(changes) / 2:+.1%} ({changes[0]:+.1%}, {changes[1]:+.1%}; significant gain in " in text
    assert starts == sorted(starts)  # the smaller inventory (tiny_stage3's) first, seed 0 before seed 1
    assert f"`{gmm_exp}` ({senones[gmm_exp]} senones), `{big_exp}` ({senones[big_exp]} senones)" in text
    for bad in (["--seeds", "0"], ["--seeds", "2", "--set", "specialist_epochs=1 seed=3"]):
        with pytest.raises(SystemExit, match="--seeds"):
            main(["--gmm-exp", str(gmm_exp), "--data-dir", str(data), "--out", str(tmp_path / "x"), "--train-frames", "10", *bad])
    with pytest.raises(SystemExit, match="only 1 different senone counts"):
        main(["--gmm-exp", str(gmm_exp), "--gmm-exp", str(gmm_exp), "--data-dir", str(data), "--out", str(tmp_path / "x"),
              "--train-frames", "10"])
