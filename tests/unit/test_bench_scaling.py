"""bench/scaling.py's arithmetic on real stage records: costs summed per stage, growth exponents,
and the projection's linear scaling in what drives each stage."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from asr_kd.stages.provenance import RECORD_NAME, StageGuard

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scaling", ROOT / "bench" / "scaling.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_scaling"] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


def _stage(folder: Path, name: str, cpu_s: float, disk: int, rss_mb: float, config: dict | None = None,
           command: str = "", finished: str | None = None) -> None:
    guard = StageGuard(name, folder, config or {"x": 1}, {}, command=command)
    assert guard.needs_work()
    (folder / "out.bin").write_bytes(b"x")
    guard.finish(["out.bin"])
    data = json.loads((folder / RECORD_NAME).read_text())
    data["resources"] = {"wall_s": cpu_s, "cpu_s": cpu_s, "peak_rss_mb": rss_mb, "disk_bytes": disk, "resumed": False}
    if finished is not None:
        data["finished"] = finished
    (folder / RECORD_NAME).write_text(json.dumps(data))


def test_costs_are_summed_per_stage_and_projected_in_their_driver(tmp_path: Path) -> None:
    sc = _bench()
    runs = []
    for name, hours, factor in (("small", 1.0, 1.0), ("big", 4.0, 4.0)):
        root = tmp_path / name
        _stage(root / "exp" / "gmm", "stage 3 (GMM-HMM)", 100 * factor, int(1e6 * factor), 500 + 100 * factor)
        _stage(root / "exp" / "students" / "hard", "stage 6 (hard student, seed 0)", 50 * factor, 1000, 600)
        _stage(root / "exp" / "students" / "distilled", "stage 6 (distilled student, seed 0)", 70 * factor, 1000, 700)
        _stage(root / "exp" / "decode_x", "decode-part dev", 999, 1, 1)  # not a recipe stage: left out
        costs = sc.stage_costs([root / "exp"])
        assert sorted(costs) == [3, 6]
        assert costs[6].cpu_s == pytest.approx(120 * factor) and costs[6].records == 2 and costs[6].peak_rss_mb == 700
        runs.append(sc.Run(name, {"train-clean-100": hours, "dev-clean": 0.5}, costs))
    assert sc.growth_exponent(1.0, 100.0, 4.0, 400.0) == pytest.approx(1.0)
    assert sc.growth_exponent(1.0, 100.0, 4.0, 1600.0) == pytest.approx(2.0)
    assert math.isnan(sc.growth_exponent(1.0, 0.0, 4.0, 5.0))
    text = sc.tables(runs, cores=16)
    # GMM: 400 CPU-s for 4 h -> 100.6 h takes 10060 s of CPU, over 16 cores 629 s = 10.5 min;
    # peak RSS: 600 MB at 1 h, 900 MB at 4 h -> 900 + 100 * 96.6 MB = 10.3 GB; disk 4 MB -> 100.6 MB.
    measured, rest = text.split("Growth from")
    growth, projection = rest.split("Projection (not a measurement)")
    assert "| 3 GMM-HMM | 1.7 min / 1.7 min / 0.59 GB / 1.0 MB | 6.7 min / 6.7 min / 0.88 GB / 4.0 MB |" in measured
    row = next(line for line in projection.splitlines() if line.startswith("| 3 GMM-HMM"))
    assert row.split("|")[2].strip() == "10.5 min / 10.3 GB / 100.6 MB"
    # Students: models do not grow with the audio (disk stays 2 kB); CPU 480 s per 4 h -> 3.4 h for 100.6 h.
    row = next(line for line in projection.splitlines() if line.startswith("| 6 students"))
    assert row.split("|")[2].strip() == "3.4 h CPU (GPU unmeasured) / 0.7 GB / 2.0 kB"
    assert "| 3 GMM-HMM | 1.00 | 1.00 | 1.50 |" in growth.splitlines()
    assert "peak memory a straight line through small and big in those hours" in projection


def test_a_titled_run_gets_its_own_section_beside_the_main_one(tmp_path: Path) -> None:
    from lhotse import CutSet, MonoCut

    sc = _bench()
    specs = []
    for name, hours in (("mini", 1.0), ("small", 12.0)):
        root = tmp_path / name
        (root / "data" / "fbank").mkdir(parents=True)
        for part, h in (("train-clean-100", hours), ("dev-clean", 0.1)):
            cuts = [MonoCut(id=f"{part}-{i}", start=0.0, duration=h * 3600 / 4, channel=0) for i in range(4)]
            CutSet.from_cuts(cuts).to_file(root / "data" / "fbank" / f"cuts_{part}.jsonl.gz")
        _stage(root / "exp" / "gmm", "stage 3 (GMM-HMM)", 100 * hours, 1000, 500)
        specs.append(f"{name}={root / 'data'},{root / 'exp'}")
    results = tmp_path / "RESULTS.md"
    results.write_text(f"{sc.HEADING}\n\nthe full run's table\n")
    sc.main(["--read", *specs, "--results", str(results), "--title", "Recipe scaling, stages 0-3"])
    text = results.read_text()
    assert text.startswith(f"{sc.HEADING}\n\nthe full run's table\n")  # the main section is left as it was
    section = text.split("## Recipe scaling, stages 0-3\n", 1)[1]
    assert "--title 'Recipe scaling, stages 0-3'" in section.splitlines()[1]
    assert "` (stages 0-3; costs from each stage" in section  # the stages read, not --stop-stage's default (7)
    assert "| 3 GMM-HMM | 1.00 |" in section  # 100 CPU-s per training hour in both runs: linear


def test_training_stages_run_for_fewer_epochs_are_projected_to_the_recipes(tmp_path: Path, monkeypatch) -> None:
    # Runs whose networks trained 1 epoch (bench/scaling_train_1epoch.yaml) measure how stages 4
    # and 6 grow with the audio; --project-epochs 30 multiplies their CPU time by 30 in the
    # projection only. A stage whose networks ran different epochs, and stage 8 (its own config,
    # 200 epochs), stay as measured.
    from asr_kd.stages.provenance import read_record

    sc = _bench()
    runs = []
    for name, hours in (("mini", 1.0), ("small", 10.0)):
        root = tmp_path / name
        cmd = f"./run.sh --preset {name} --teacher-train-config one_epoch.yaml"
        _stage(root / "exp" / "teachers", "stage 4 (teachers)", 60 * hours, 1000, 500, {"train": {"num_epochs": 1}}, cmd)
        _stage(root / "exp" / "students" / "hard", "stage 6 (hard student, seed 0)", 20 * hours, 1000, 500,
               {"train": {"num_epochs": 1}}, cmd)
        _stage(root / "exp" / "students" / "distilled", "stage 6 (distilled student, seed 0)", 30 * hours, 1000, 500,
               {"train": {"num_epochs": 2}}, cmd)
        _stage(root / "exp" / "three_percent", "stage 8 (3% experiment)", 10 * hours, 1000, 500, {"train": {"num_epochs": 200}}, cmd)
        costs = sc.stage_costs([root / "exp"])
        assert costs[4].num_epochs == {1} and costs[6].num_epochs == {1, 2} and costs[8].num_epochs == {200}
        runs.append(sc.Run(name, {"train-clean-100": hours}, costs))
    text = sc.tables(runs, cores=16, project_epochs=30)
    assert "small stage 4: 1; small stage 6: 1/2; small stage 8: 200" in text
    projection = text.split("Projection (not a measurement)")[1]
    # 600 CPU-s for 10 h at 1 epoch -> 100.6 h: 6036 s, times 30: 50.3 h of CPU.
    row = next(line for line in projection.splitlines() if line.startswith("| 4 teachers"))
    assert row.split("|")[2].strip() == "50.3 h CPU at 30 epochs (measured at 1; GPU unmeasured) / 0.5 GB / 1.0 kB"
    row = next(line for line in projection.splitlines() if line.startswith("| 6 students"))  # 500 s x 10.06, not scaled
    assert row.split("|")[2].strip() == "83.8 min CPU as measured (not projected: epochs 1/2; GPU unmeasured) / 0.5 GB / 2.0 kB"
    row = next(line for line in projection.splitlines() if line.startswith("| 8 3% experiment"))  # 100 s x 10.06
    assert row.split("|")[2].strip() == "16.8 min CPU (GPU unmeasured) / 0.5 GB / 1.0 kB"
    assert sc.tables(runs, cores=16).count("at 30 epochs") == 0
    version = read_record(tmp_path / "small" / "exp" / "teachers").code_version
    assert sc.record_sources(runs).splitlines()[1] == (
        f"- small, stages 4, 6, 8: `./run.sh --preset small --teacher-train-config one_epoch.yaml` ({version})")
    # A run of the presets (run.sh replaced by the records above) writes the section and scaling.json.
    monkeypatch.setattr(sc, "run_recipe", lambda preset, *a: next(r for r in runs if r.name == preset))
    results = tmp_path / "RESULTS.md"
    sc.main(["--presets", "mini", "small", "--work", str(tmp_path / "work"), "--results", str(results), "--project-epochs", "30"])
    saved = json.loads((tmp_path / "work" / "scaling.json").read_text())
    assert saved[1]["costs"]["4"]["num_epochs"] == [1]
    assert saved[1]["costs"]["4"]["sources"] == [[version, "./run.sh --preset small --teacher-train-config one_epoch.yaml"]]
    assert "50.3 h CPU at 30 epochs" in results.read_text() and "--project-epochs 30" in results.read_text()


def test_a_stages_wall_time_counts_side_by_side_jobs_once(tmp_path: Path) -> None:
    # Two students of 100 s each that ran side by side (finished 50 s apart) took 150 s, not 200;
    # a third made later (a rerun) adds its own 100 s.
    sc = _bench()
    for kind, finished in (("hard", "2026-12-05T10:00:00Z"), ("distilled", "2026-12-05T10:00:50Z"), ("compressed", "2026-12-05T11:00:00Z")):
        _stage(tmp_path / "exp" / kind, f"stage 6 ({kind} student, seed 0)", 100.0, 1000, 500, finished=finished)
    costs = sc.stage_costs([tmp_path / "exp"])
    assert costs[6].wall_s == 300.0 and costs[6].elapsed_s == 250.0
    text = sc.tables([sc.Run("mini", {"train-clean-100": 1.0}, costs)], cores=16)
    assert "| 6 students | 4.2 min / 5.0 min /" in text and "| sum of stages | 4.2 min wall |" in text
    assert "peak memory mini's for every stage (one run draws no line; stages " in text and "straight line" not in text
    _stage(tmp_path / "old" / "hard", "stage 6 (hard student, seed 0)", 100.0, 1000, 500, finished="")  # no stamp: the sum
    costs = sc.stage_costs([tmp_path / "exp", tmp_path / "old"])
    assert costs[6].elapsed_s == costs[6].wall_s == 400.0


def test_run_args_reach_run_sh_and_need_runs(tmp_path: Path) -> None:
    sc = _bench()
    cmd = sc.recipe_command("small", tmp_path, 3, 2, ["--alignments", "gmm"])
    assert cmd[:5] == ["./run.sh", "--preset", "small", "--stop-stage", "3"] and cmd[-2:] == ["--alignments", "gmm"]
    assert cmd[cmd.index("--exp") + 1] == str(tmp_path / "small" / "exp")
    with pytest.raises(SystemExit):  # --read runs nothing: options for run.sh would be silently dropped
        sc.main(["--read", f"a={tmp_path},{tmp_path}", "--run-args", "--alignments gmm"])
