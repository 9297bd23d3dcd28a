"""End to end: recipes/librispeech/run.sh --model-type ctc, stages 4-7 on the 'tiny' corpus."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_librispeech_recipe

pytestmark = pytest.mark.slow


def test_ctc_path_writes_models_spike_report_and_rows(tiny_stage2: tuple[Path, Path], tmp_path: Path) -> None:
    src_data, _ = tiny_stage2
    data, exp = tmp_path / "data", tmp_path / "exp"
    shutil.copytree(src_data, data, symlinks=True)
    out = run_librispeech_recipe(data, exp, "--stage", "4", "--stop-stage", "7", "--model-type", "ctc", timeout=1200)
    assert not (exp / "gmm").exists() and not (exp / "teachers").exists()  # the hybrid path did not run
    for line in ("Stage 4 (CTC): teachers", "sharing their first 15 steps", "Stage 5 (CTC)", "Stage 6 (CTC): frame student", "Stage 7 (CTC)"):
        assert line in out.stderr, line
    ctc_dir = exp / "ctc" / "phone"
    assert ctc_dir.is_dir()
    assert len(list(ctc_dir.rglob("final.pt"))) >= 2 + 2 + 3  # two teacher sets and three students
    text = (exp / "RESULTS.md").read_text()
    assert "./run.sh --preset tiny" in text and "--model-type ctc" in text
    assert "CTC" in text


def test_unknown_model_type_is_rejected(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import RUN_SH

    out = subprocess.run(["bash", str(RUN_SH), "--model-type", "rnnt"], capture_output=True, text=True)
    assert out.returncode == 1 and "--model-type takes hybrid, ctc or both" in out.stderr
