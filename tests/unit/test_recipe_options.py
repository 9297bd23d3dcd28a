"""The recipe scripts' contract: --help, option parsing, rejected options."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

RUN_SH = REPO_ROOT / "recipes" / "librispeech" / "run.sh"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RUN_SH), *args], capture_output=True, text=True, cwd=cwd, timeout=60)


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


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, expected",
    [
        # A --train-config given on the command line trains the students too (the preset's student file is not used).
        (["--train-config", "/tmp/teachers_and_students.yaml"], "/tmp/teachers_and_students.yaml"),
        (["--train-config", "/tmp/teachers.yaml", "--student-train-config", "/tmp/students.yaml"], "/tmp/students.yaml"),
        ([], str(REPO_ROOT / "recipes" / "librispeech" / "conf" / "train_students_tiny.yaml")),
    ],
)
def test_stage6_trains_the_students_with_the_student_train_config(tmp_path: Path, args: list[str], expected: str) -> None:
    # Stage 6 on an empty experiment folder: run.sh logs the students' TrainConfig, then stage 6 stops for want of stage 3.
    out = run("--preset", "tiny", "--stage", "6", "--stop-stage", "6", "--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp"),
              "--results", str(tmp_path / "RESULTS.md"), *args)
    assert out.returncode != 0
    assert f"Stage 6: hard-target and distilled students, 2 seed(s) each ({expected})" in out.stdout + out.stderr
    assert f"--config {expected} --kd-config" in out.stdout + out.stderr
