"""The recipe scripts' contract: --help, option parsing, rejected options."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

RUN_SH = REPO_ROOT / "recipes" / "librispeech" / "run.sh"


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RUN_SH), *args], capture_output=True, text=True, cwd=cwd, timeout=60, env=env)


def test_help_documents_every_stage_and_option() -> None:
    out = run("--help")
    assert out.returncode == 0
    text = out.stdout
    for n in range(4):
        assert re.search(rf"^\s+{n}\s+\w", text, re.M), f"stage {n} is not documented"
    # Every option variable defined before parsing must be in the help text.
    script = RUN_SH.read_text().split(". \"$root_dir/local/parse_options.sh\"")[0]
    options = re.findall(r"^([a-z_]+)=", script, re.M)
    options = [o for o in options if o not in ("recipe_dir", "root_dir", "recipe_command", "help_message")]
    assert len(options) >= 10
    for opt in options:
        assert f"--{opt.replace('_', '-')}" in text, f"--{opt} missing from --help"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--no-such-option", "1"], "unknown option --no-such-option"),
        (["--stage"], "option --stage needs a value"),
        (["--download", "yes"], "option --download takes true or false"),
        (["--stage", "x"], "--stage and --stop-stage take integers"),
        (["extra"], "unexpected argument 'extra'"),
        (["--cmd", "sge"], "--cmd takes local, slurm or submitit-local, got 'sge'"),
        (["--three-percent-hard-weight", "-1"], "--three-percent-hard-weight takes a number >= 0, got '-1'"),
        (["--deploy-uttcmvn", ""], "--deploy-uttcmvn takes hard, distilled, compressed or none, got an empty list"),
        (["--deploy-uttcmvn", "hard teacher0"], "--deploy-uttcmvn takes hard, distilled, compressed (or none), got 'teacher0'"),
        (["--deploy-uttcmvn", "distilled hard distilled"], "--deploy-uttcmvn names 'distilled' twice"),
        (["--device", "tpu"], "--device takes auto, cpu or cuda, got 'tpu'"),
    ],
)
def test_bad_options_fail_with_a_message(args: list[str], message: str) -> None:
    out = run(*args)
    assert out.returncode == 1
    assert message in out.stderr


def test_equals_form_and_dashes_map_to_variables(tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    script.write_text(
        f"""set -euo pipefail
foo_bar=1; flag=false; help_message="usage"
. "{REPO_ROOT}/local/parse_options.sh"
echo "$foo_bar $flag $#"
"""
    )
    out = subprocess.run(["bash", str(script), "--foo-bar=x y", "--flag", "true", "rest"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "x y true 1"




CONF = REPO_ROOT / "recipes" / "librispeech" / "conf"


def recorded_calls(tmp_path: Path, *args: str, echo: str = "asr-kd-call $*") -> list[str]:
    """Run run.sh with ``args`` on an empty experiment folder, with an ``asr-kd`` first on PATH that
    only prints ``echo`` (its arguments): the option plumbing of the shell script, without its
    stages' work (the recipe's integration tests run the real commands)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "asr-kd"
    stub.write_text(f'#!/bin/sh\necho "{echo}"\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = run("--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp"), "--results", str(tmp_path / "RESULTS.md"), *args, env=env)
    return [line for line in out.stdout.splitlines() if line.startswith("asr-kd-call ")]


def config_of(call: str) -> str:
    return call.split(" --config ")[1].split()[0]


@pytest.mark.parametrize(
    "args, students, compressed",
    [
        # A --train-config given on the command line trains the students too (the preset's student file is not used).
        (["--preset", "tiny", "--train-config", "/tmp/a.yaml"], "/tmp/a.yaml", "/tmp/a.yaml"),
        (["--preset", "tiny", "--train-config", "/tmp/a.yaml", "--student-train-config", "/tmp/b.yaml"], "/tmp/b.yaml", "/tmp/b.yaml"),
        (["--preset", "tiny"], str(CONF / "train_students_tiny.yaml"), str(CONF / "train_students_tiny.yaml")),
        # mini names no compressed_train_config: the compressed student follows the students' file.
        (["--preset", "mini", "--student-train-config", "/tmp/b.yaml"], "/tmp/b.yaml", "/tmp/b.yaml"),
        (["--preset", "mini", "--compressed-train-config", "/tmp/c.yaml"], str(CONF / "train_students_mini.yaml"), "/tmp/c.yaml"),
    ],
)
def test_stage6_trains_the_students_with_the_student_train_config(tmp_path: Path, args: list[str], students: str, compressed: str) -> None:
    calls = recorded_calls(tmp_path, "--stage", "6", "--stop-stage", "6", *args)
    assert [c.split()[1] for c in calls] == ["train-student", "train-student"], calls
    hard_distilled, small = calls
    assert "--kind hard distilled " in hard_distilled and config_of(hard_distilled) == students
    assert "--kind compressed " in small and config_of(small) == compressed


@pytest.mark.parametrize(
    "args, teachers",
    [
        # tiny names no teacher_train_config: its teachers train with train_config.
        (["--preset", "tiny"], str(REPO_ROOT / "egs" / "tiny_kd" / "conf" / "train.yaml")),
        (["--preset", "mini"], str(CONF / "train_students_mini.yaml")),
        (["--preset", "small"], str(CONF / "train_mini.yaml")),
        # A --train-config given on the command line trains the teachers too, unless --teacher-train-config is given.
        (["--preset", "mini", "--train-config", "/tmp/a.yaml"], "/tmp/a.yaml"),
        (["--preset", "mini", "--train-config", "/tmp/a.yaml", "--teacher-train-config", "/tmp/t.yaml"], "/tmp/t.yaml"),
        (["--preset", "tiny", "--teacher-train-config", "/tmp/t.yaml", "--student-train-config", "/tmp/b.yaml"], "/tmp/t.yaml"),
    ],
)
def test_stage4_trains_the_teachers_with_the_teacher_train_config(tmp_path: Path, args: list[str], teachers: str) -> None:
    calls = recorded_calls(tmp_path, "--stage", "4", "--stop-stage", "4", *args)
    assert [c.split()[1] for c in calls] == ["train-teachers"], calls
    assert str(Path(config_of(calls[0])).resolve()) == str(Path(teachers).resolve())


def test_stage3_realigns_with_the_train_config_not_the_teachers(tmp_path: Path) -> None:
    calls = recorded_calls(tmp_path, "--preset", "mini", "--stage", "3", "--stop-stage", "3", "--teacher-train-config", "/tmp/t.yaml")
    assert [c.split()[1] for c in calls] == ["train-gmm", "realign"], calls
    assert config_of(calls[1]) == str(CONF / "train_mini.yaml")
    # The GMM table's relative WER column needs the test and out-of-domain parts (synthetic corpus: test-ood).
    assert " --test-set test-clean --ood-set test-ood " in calls[0], calls[0]


@pytest.mark.parametrize(
    "args, config, hard_weight, seeds",
    [
        # Each preset names its 3% config (tiny: the short one the tests can afford); the soft model
        # learns from the soft targets only unless --three-percent-hard-weight says otherwise; the
        # 3% subsets are stage 6's seeds (the preset's, or --num-seeds), --nj trained at once.
        (["--preset", "tiny"], str(CONF / "train_3pct_tiny.yaml"), "0", "2"),
        (["--preset", "mini"], str(CONF / "train_3pct_mini.yaml"), "0", "3"),
        (["--preset", "mini", "--train-3pct-config", "/tmp/p.yaml", "--three-percent-hard-weight", "0.5", "--num-seeds", "5"], "/tmp/p.yaml",
         "0.5", "5"),
    ],
)
def test_stage8_trains_with_the_presets_3pct_config_hard_weight_and_seeds(tmp_path: Path, args: list[str], config: str, hard_weight: str,
                                                                          seeds: str) -> None:
    calls = recorded_calls(tmp_path, "--stage", "8", "--stop-stage", "8", "--nj", "3", *args)
    assert [c.split()[1] for c in calls] == ["three-percent"], calls
    assert config_of(calls[0]) == config and f" --kd-set hard_weight={hard_weight} " in calls[0]
    assert f" --num-seeds {seeds} --jobs 3 --cmd local " in calls[0], calls[0]


def test_stage10_trains_with_the_students_file(tmp_path: Path) -> None:
    sweep = recorded_calls(tmp_path, "--preset", "tiny", "--stage", "10", "--stop-stage", "10", "--student-train-config", "/tmp/b.yaml")
    assert [c.split()[1] for c in sweep] == ["temperature-sweep"] and config_of(sweep[0]) == "/tmp/b.yaml"
    assert " --num-seeds 1 " in sweep[0] and "--extra-scales" not in sweep[0]  # one student per T unless asked


def test_stage10_passes_its_seeds_and_extra_scales(tmp_path: Path) -> None:
    sweep = recorded_calls(tmp_path, "--preset", "mini", "--stage", "10", "--stop-stage", "10", "--sweep-seeds", "3",
                           "--sweep-extra-scales", "0.05 0.0556", "--temperatures", "2 4")
    assert " --temperatures 2 4 --num-seeds 3 --extra-scales 0.05 0.0556 --jobs " in sweep[0], sweep
    refused = subprocess.run(["bash", str(RUN_SH), "--stage", "10", "--stop-stage", "10", "--sweep-seeds", "0"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "--sweep-seeds takes an integer >= 1, got '0'" in refused.stderr + refused.stdout


def test_ctc_stage6_trains_every_student_through_the_launcher(tmp_path: Path) -> None:
    # One ctc-train-students call: the preset's seeds, --nj and --cmd (a Slurm array reaches the CTC
    # students too), and one frame-level student per extra teacher set.
    calls = recorded_calls(tmp_path, "--preset", "tiny", "--model-type", "ctc", "--stage", "6", "--stop-stage", "6",
                           "--cmd", "submitit-local", "--nj", "3", "--ctc-shared-init-steps", "15", "--ctc-guide-weight", "1.0")
    assert [c.split()[1] for c in calls] == ["ctc-train-students"], calls
    assert " --num-seeds 2 --jobs 3 --cmd submitit-local --cmd-config " in calls[0]
    assert calls[0].endswith(" --extra-frame frame_shared15:shared_init_steps=15 --extra-frame frame_guided1.0:guide_weight=1.0"), calls[0]
    (tmp_path / "none").mkdir()
    calls = recorded_calls(tmp_path / "none", "--preset", "tiny", "--model-type", "ctc", "--stage", "6", "--stop-stage", "6",
                           "--ctc-shared-init-steps", "0", "--ctc-guide-weight", "0")
    assert "--extra-frame" not in calls[0] and calls[0].endswith(" --cmd local --cmd-config " + str(CONF / "slurm.yaml")), calls[0]


def deploy_settings_of(tmp_path: Path, *args: str) -> tuple:
    """Run run.sh's stage 9 with ``args`` (the stub ``asr-kd`` of :func:`recorded_calls`, which
    keeps each argument whole) and return its one call (``asr-kd deploy``) parsed by the real
    command line, with its plan and student settings as the command makes them
    (asr_kd.bin.cmd_kd.deploy_settings)."""
    from asr_kd.bin.cli import build_parser
    from asr_kd.bin.cmd_kd import deploy_settings

    calls = recorded_calls(tmp_path, "--stage", "9", "--stop-stage", "9", *args, echo="asr-kd-call $(printf '%s\\037' \"$@\")")
    assert [c.split("\037")[0].split()[1] for c in calls] == ["deploy"], calls  # the whole stage is one command now
    parsed = build_parser().parse_args(calls[0].removeprefix("asr-kd-call ").split("\037")[:-1])
    return parsed, *deploy_settings(parsed)


@pytest.mark.parametrize(
    "args, full, compressed",
    [
        (["--preset", "mini"], "hard distilled", True),
        (["--preset", "mini", "--deploy-uttcmvn", "distilled"], "distilled", False),
        (["--preset", "mini", "--deploy-uttcmvn", "none"], "", False),
        (["--preset", "mini", "--compressed-config", "none"], "hard distilled", False),
        # Teachers in the loop would see the student's per-utterance input: only the hard student is trained.
        (["--preset", "mini", "--kd-config", "ONLINE"], "hard", False),
    ],
)
def test_stage9_trains_the_deployable_students_on_per_utterance_cmvn(tmp_path: Path, args: list[str], full: str, compressed: bool) -> None:
    from asr_kd.config import TrainConfig, load_config
    from asr_kd.models.dnn import load_dnn_config

    online = tmp_path / "kd_online.yaml"
    online.write_text((CONF / "kd.yaml").read_text().replace("mode: stored", "mode: online"))
    parsed, plan, students = deploy_settings_of(tmp_path, *[str(online) if a == "ONLINE" else a for a in args])
    kinds = full.split() + (["compressed"] if compressed else [])
    assert list(plan.uttcmvn_kinds) == kinds, plan
    # The full-size ones get the preset's DNN and students' TrainConfig, the compressed one its compressed network and the
    # same TrainConfig (mini names no compressed_train_config), as in stage 6.
    students_file = load_config(TrainConfig, CONF / "train_students_mini.yaml")
    assert students_file != load_config(TrainConfig, CONF / "train_mini.yaml")  # else the check below could not tell them apart
    if kinds:
        assert students.model_config == load_dnn_config("mini") and students.train_config == students_file
        assert (students.compressed_model_config == load_dnn_config("mini-compressed-v2")) == ("--compressed-config" not in args)
        assert students.compressed_train_config in (None, students_file)
    else:
        assert students is None
    # mini's four teachers form the ensemble row; the gate's limit and the launcher reach the command.
    assert "ensemble=teacher0,teacher1,teacher2,teacher3" in plan.systems
    assert (parsed.int8_max_relative, parsed.jobs, parsed.cmd, parsed.num_teachers) == (0.02, 2, "local", 4)
    made = [job for job in plan.model_dirs if "uttcmvn" in job.system]
    assert [j.system for j in made] == [f"{k}-uttcmvn" for k in kinds] and all(j.tune_scale for j in made)
    assert [j.folder for j in made] == [f"{k}_uttcmvn" for k in kinds]
    expected = {("baseline" if k == "hard" else k) for k in kinds}
    assert {n.split("=")[0] for n in plan.systems if "uttcmvn" in n} == {f"{k}-uttcmvn" for k in expected}
    # The deployable distilled student, when there is one, is gated (fp32 ONNX beside int8) and timed end to end.
    deployable = "distilled" in full.split()
    assert list(plan.gates) == ["distilled"] + (["distilled-uttcmvn"] if deployable else [])
    assert list(plan.speed) == [("distilled-uttcmvn" if deployable else "distilled") + "@onnx-int8"]
    onnx = [n for n in plan.systems if n.startswith("distilled-uttcmvn=") and n.endswith("@onnx")]
    assert len(onnx) == int(deployable)
    # Without a compressed network, no compressed row at all.
    assert any(n.startswith("compressed=") for n in plan.systems) == ("--compressed-config" not in args)


@pytest.mark.parametrize("model_type", ["both", "ctc", "hybrid"])
def test_stage9_times_each_distilled_student_it_deploys(tmp_path: Path, model_type: str) -> None:
    """Both distilled students users deploy are timed end to end on dev-chosen pruning: the hybrid
    one (on per-utterance CMVN) and the CTC frame-level one."""
    args, plan, _ = deploy_settings_of(tmp_path, "--preset", "mini", "--model-type", model_type)
    expected = {"both": ["distilled-uttcmvn@onnx-int8", "ctc-frame@onnx-int8"], "ctc": ["ctc-frame@onnx-int8"],
                "hybrid": ["distilled-uttcmvn@onnx-int8"]}[model_type]
    assert list(plan.speed) == expected and args.dev_set == "dev-clean" and args.model_type == model_type
    # Every timed, gated or exported system is measured in the cost table too (deploy-report refuses a --speed it has no --system for).
    systems = {n.split("=")[0] + ("@" + n.rsplit("@", 1)[1] if "@" in n else "@torch") for n in plan.systems}
    assert set(expected) <= systems and all({f"{g}@onnx", f"{g}@onnx-int8"} <= systems for g in plan.gates)
    folders = {j.folder for j in plan.model_dirs}
    assert set(plan.exports) <= folders and all(d in folders for n in plan.systems for d in n.split("=")[1].split("@")[0].split(","))
    # The ensemble (hybrid) or the CTC baseline (CTC alone) is what the speed-up column divides by.
    assert plan.baseline == ("ctc-baseline" if model_type == "ctc" else "ensemble")
    assert plan.hybrid == (model_type != "ctc")  # and so scored with three normalisations
    if model_type != "hybrid":  # the CTC path's units come from the preset's CtcConfig
        from asr_kd.config import CtcConfig, load_config

        assert args.ctc_config is not None and load_config(CtcConfig, args.ctc_config).units == "phone"


@pytest.mark.parametrize("args, device", [([], "auto"), (["--device", "cpu"], "cpu"), (["--device", "cuda"], "cuda")])
def test_the_device_option_reaches_stages_5_to_7(tmp_path: Path, args: list[str], device: str) -> None:
    # run.sh exports it for asr_kd.kd.ensemble.inference_device and names it to stage 5; stages 3, 8 and 10 (not run by this
    # stub, whose missing outputs stop run.sh after stage 7) read the same exported variable.
    calls = recorded_calls(tmp_path, "--preset", "tiny", "--stage", "5", "--stop-stage", "7", *args,
                           echo="asr-kd-call [$ASR_KD_INFERENCE_DEVICE] $*")
    assert [c.split()[2] for c in calls] == ["make-soft-targets", "train-student", "train-student", "decode-hybrid"], calls
    assert all(c.split()[1] == f"[{device}]" for c in calls), calls
    assert f" --device {device}" in calls[0]


@pytest.mark.parametrize("given", [False, True])
def test_stage0_synthesises_with_the_synth_config(tmp_path: Path, given: bool) -> None:
    """--synth-config reaches synth-corpus (parsed by the real command line): the file's fields,
    with run.sh's --seed, --difficulty and --preset over them; without it, conf/synth.yaml, which
    is SynthConfig's defaults field for field (the corpus RESULTS.md was measured on)."""
    from asr_kd.bin.cli import build_parser
    from asr_kd.bin.cmd_synth import synth_settings
    from asr_kd.config import SynthConfig

    synth_yaml = tmp_path / "synth.yaml"
    synth_yaml.write_text("vtlp_max: 0.0\nspeed_factors: [1.0]\nseed: 9\ndifficulty: 2.0\n")
    args = ["--preset", "tiny", "--seed", "3", "--stage", "0", "--stop-stage", "0"] + (["--synth-config", str(synth_yaml)] if given else [])
    calls = recorded_calls(tmp_path, *args, echo="asr-kd-call $(printf '%s\\037' \"$@\")")
    assert [c.split("\037")[0].split()[1] for c in calls] == ["synth-corpus", "prepare-manifests"], calls
    config = synth_settings(build_parser().parse_args(calls[0].removeprefix("asr-kd-call ").split("\037")[:-1]))
    expected = SynthConfig(preset="tiny", seed=3, difficulty=1.0, num_jobs=2)
    if given:
        expected = dataclasses.replace(expected, vtlp_max=0.0, speed_factors=(1.0,))
    assert config == expected


def test_the_synth_config_file_lists_every_field_at_its_default() -> None:
    import yaml

    from asr_kd.config import SynthConfig, load_config

    listed = set(yaml.safe_load((CONF / "synth.yaml").read_text()))
    per_run = {"preset", "seed", "difficulty", "num_jobs"}  # run.sh's own options
    assert listed == {f.name for f in dataclasses.fields(SynthConfig)} - per_run
    assert load_config(SynthConfig, CONF / "synth.yaml") == SynthConfig()
