"""The launcher of the recipe's independent jobs (asr_kd/launch.py): jobs cross the boundary as
JSON, the submitit path (its local executor) gives the local backend's results, errors come back
as one line naming the job's log, and the Slurm backend builds its executor as configured."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from asr_kd.config import DnnConfig, TrainConfig, parse_overrides
from asr_kd.errors import ConfigError
from asr_kd.launch import BACKENDS, ClusterConfig, Launcher, build_executor, decode, describe_launch, encode, launch_jobs, load_launcher
from asr_kd.models.dnn import dnn_preset
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import config_dict, fingerprint
from tests.conftest import REPO_ROOT

SLURM_YAML = REPO_ROOT / "recipes" / "librispeech" / "conf" / "slurm.yaml"


def test_job_arguments_survive_json_and_only_asr_kd_is_rebuilt() -> None:
    value = (RecipeLayout("/d", "/e", ood_part="test-ood"), TrainConfig(seed=5), dnn_preset("tiny"),
             {"a": [1, 2.5, None, Path("x")], "b": (True, "s")}, 3)
    back = decode(encode(value))
    assert back == value and isinstance(back[0].data_dir, Path) and isinstance(back[3]["b"], tuple)
    with pytest.raises(TypeError, match="a Linear cannot cross a job boundary"):
        encode((torch.nn.Linear(2, 2),))
    with pytest.raises(TypeError, match="a job must be a module-level function of asr_kd"):
        launch_jobs(lambda x: x, [(1,)])
    # A job file naming anything outside asr_kd is refused before anything is imported or called.
    for ref in ("os:system", "builtins:eval", "asr_kd.config:a.b"):
        with pytest.raises(ValueError, match="may only name a module-level function or dataclass of asr_kd"):
            decode({"$dataclass": ref, "fields": {}})
    # Rebuilding a config runs its validation.
    bad = encode(TrainConfig())
    bad["fields"]["lr"] = -1.0
    with pytest.raises(ConfigError):
        decode(bad)


def test_describe_launch_says_where_the_jobs_ran() -> None:
    # A stage's log line: one job, or --jobs 1, in this process; several local jobs in at most
    # --jobs processes; a submitit backend as a job array, whatever --jobs says.
    assert describe_launch(None, 2, 1) == describe_launch(Launcher("local"), 1, 4) == "in this process"
    assert describe_launch(Launcher("local"), 2, 4) == "in 2 local processes"
    assert describe_launch(Launcher("local"), 8, 3) == "in 3 local processes"
    assert describe_launch(Launcher("slurm"), 1, 4) == "as a slurm job array"


def test_several_jobs_under_torchrun_are_refused_before_any_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under torchrun each local job process would join the job's process group as a duplicate
    # rank (and a submitit backend would submit every model once per rank).
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    for jobs, backend in ((2, "local"), (1, "submitit-local")):
        with pytest.raises(ConfigError, match=f"WORLD_SIZE=2.*--jobs 1 --cmd local \\(got --jobs {jobs} --cmd {backend}\\)"):
            launch_jobs(parse_overrides, [(["lr=0.5"],), (["seed=3"],)], Launcher(backend), jobs=jobs)
    # One job at a time in this process is each rank's share of the DDP job: allowed.
    assert launch_jobs(parse_overrides, [(["lr=0.5"],), (["seed=3"],)], jobs=1) == [{"lr": "0.5"}, {"seed": "3"}]
    assert launch_jobs(parse_overrides, [(["lr=0.5"],)], jobs=4) == [{"lr": "0.5"}]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_submitit_local_returns_the_local_results_and_names_a_failed_jobs_log(tmp_path: Path) -> None:
    args = [(["a=1", "b-c=x"],), (["d=2"],)]
    expected = [parse_overrides(*a) for a in args]
    assert launch_jobs(parse_overrides, args) == expected  # local, in this process
    assert launch_jobs(parse_overrides, args, jobs=2) == expected  # local, two spawned processes
    logs = tmp_path / "log"
    assert launch_jobs(parse_overrides, args, Launcher("submitit-local"), log_dir=logs, name="overrides") == expected
    with pytest.raises(ConfigError, match=r"^override 'oops' is not of the form key=value \[job 1 of 2 \(overrides, submitit job \d+; "
                       r"log .*_log\.err\)\]$") as err:
        launch_jobs(parse_overrides, [(["a=1"],), (["oops"],)], Launcher("submitit-local"), log_dir=logs, name="overrides")
    log_file = Path(str(err.value).rsplit("log ", 1)[1].rstrip(")]"))
    assert "not of the form key=value" in log_file.read_text()  # the job's own traceback
    assert not list((logs / "overrides").rglob("*.pkl"))  # submitit's transport files are gone
    with pytest.raises(ConfigError, match="needs a log folder"):
        launch_jobs(parse_overrides, args, Launcher("submitit-local"))


def test_cluster_config_is_validated_in_one_line(tmp_path: Path) -> None:
    shipped = load_launcher("slurm", SLURM_YAML)
    assert shipped.cluster == ClusterConfig()  # the recipe's file states the defaults
    bad = tmp_path / "slurm.yaml"
    bad.write_text("time_min: 0\n")
    with pytest.raises(ConfigError, match=rf"^time_min must be >= 1 \(minutes\), got 0 \(in {bad}; see recipes/librispeech/conf/slurm.yaml\)$"):
        load_launcher("slurm", bad)
    bad.write_text("partitions: gpu\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['partitions'\] for ClusterConfig; known: \['account', 'array_parallelism'"):
        load_launcher("slurm", bad)
    with pytest.raises(ConfigError, match=r"^--cmd takes local, slurm, submitit-local, got 'sge'$"):
        Launcher("sge")
    assert BACKENDS == ("local", "slurm", "submitit-local")


def test_the_launcher_changes_no_stage_fingerprint() -> None:
    settings = {"dnn": dnn_preset("tiny"), "num_teachers": 2}
    assert fingerprint(config_dict({**settings, "launcher": Launcher("slurm")})) == fingerprint(config_dict(settings))


def test_slurm_backend_builds_submitits_executor_with_the_configured_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Slurm cannot run here. Without srun the backend stops in one line; with an `srun` on PATH
    # (submitit checks only that it exists; nothing is submitted) it builds submitit's
    # SlurmExecutor, whose own sbatch script must carry the settings of the YAML.
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text("partition: cpu\ntime_min: 90\nmem_gb: 6\ncpus_per_task: 2\ngpus_per_node: 1\narray_parallelism: 3\n"
                   "account: speech\nsetup: ['source /opt/venv/bin/activate']\n")
    launcher = load_launcher("slurm", cfg)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    assert shutil.which("srun") is None
    with pytest.raises(ConfigError, match=r"^--cmd slurm: no `srun` on PATH .*use --cmd local$"):
        build_executor(launcher, tmp_path / "jobs", "stage4_teachers")
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    executor = build_executor(launcher, tmp_path / "jobs", "stage4_teachers")
    assert executor.cluster == "slurm"
    from submitit.slurm.slurm import _make_sbatch_string

    script = _make_sbatch_string(command="python -m job", folder=tmp_path / "jobs", map_count=10, **executor._executor.parameters)
    for line in ("#SBATCH --partition=cpu", "#SBATCH --time=90", "#SBATCH --mem=6GB", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --account=speech", "#SBATCH --job-name=stage4_teachers",
                 "#SBATCH --array=0-9%3", "source /opt/venv/bin/activate"):
        assert line in script.splitlines(), (line, script)


def _frame_layout(root: Path) -> tuple[RecipeLayout, int]:
    """A recipe layout whose stage-3 alignments and stage-1 CMVN are the small labelled tone corpus."""
    from tests.unit.test_train_corpus import DEV_PART, NUM_CLASSES, TRAIN_PART, make_frame_corpus

    corpus = make_frame_corpus(root / "corpus", train_speakers=(11, 12))
    layout = RecipeLayout(root / "corpus" / "feats", root / "exp")
    layout.ali.mkdir(parents=True)
    shutil.copy(corpus.train_cuts, layout.ali_cuts(TRAIN_PART))
    shutil.copy(corpus.dev_cuts, layout.ali_cuts(DEV_PART))
    assert layout.cmvn(TRAIN_PART) == corpus.train_cmvn
    return layout, NUM_CLASSES


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stage4_teachers_through_submitit_equal_the_local_ones(tmp_path: Path) -> None:
    from asr_kd.stages.s4_teachers import _train_teacher

    layout, num_classes = _frame_layout(tmp_path)
    train = TrainConfig(num_epochs=1, max_duration=4.5, num_buckets=2, warmup_steps=2, lr=3e-3, checkpoint_every_steps=100, seed=3,
                        device="cpu")
    model: DnnConfig = dnn_preset("tiny")
    other = RecipeLayout(layout.data_dir, tmp_path / "exp_submitit")
    other.ali.parent.mkdir(parents=True)
    os.symlink(layout.ali, other.ali)
    runs = {}
    for name, lay, launcher in (("local", layout, Launcher()), ("submitit", other, Launcher("submitit-local"))):
        runs[name] = launch_jobs(_train_teacher, [(lay, i, 2, num_classes, model, train) for i in range(2)], launcher, jobs=2,
                                 log_dir=lay.exp_dir / "log", name="stage4_teachers")
    for summary in runs.values():
        for s in summary:
            s.pop("train_seconds")
    assert runs["submitit"] == runs["local"]
    assert [s["seed"] for s in runs["local"]] == [3, 4] and all(s["steps"] > 0 for s in runs["local"])
    for i in range(2):
        a = torch.load(layout.teacher_dir(i) / "final.pt", weights_only=True)["model"]
        b = torch.load(other.teacher_dir(i) / "final.pt", weights_only=True)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    w0 = torch.load(layout.teacher_dir(0) / "final.pt", weights_only=True)["model"]
    w1 = torch.load(layout.teacher_dir(1) / "final.pt", weights_only=True)["model"]
    assert not all(torch.equal(w0[k], w1[k]) for k in w0)  # the seeds differ, so the models do
