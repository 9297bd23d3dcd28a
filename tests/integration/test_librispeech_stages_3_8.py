"""End to end: recipes/librispeech/run.sh stages 3-8 on the 'tiny' corpus, the path `make demo`
takes on 'mini' (there with larger configs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_librispeech_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recipe(tiny_stage2: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    src_data, _ = tiny_stage2
    root = tmp_path_factory.mktemp("stages_3_8")
    data, exp = root / "data", root / "exp"
    # The recipe's stage-1 features name their storage by absolute path: keep the source folder
    # readable (it is) and copy only what stage 3+ must not share.
    shutil.copytree(src_data, data, symlinks=True)
    out = run_librispeech_recipe(data, exp, "--stage", "3", "--stop-stage", "8", "--num-teachers", "2", timeout=1200)
    return data, exp, out


def test_every_stage_marks_its_outputs(recipe) -> None:
    _, exp, _ = recipe
    for folder in ("gmm", "teachers", "soft_targets", "students/hard", "students/distilled"):
        assert (exp / folder / ".done").is_file(), folder
    assert (exp / "gmm" / "ali" / "senones.json").is_file()
    assert len(list((exp / "teachers").glob("teacher*/final.pt"))) == 2


def test_results_md_holds_every_table_with_its_command(recipe) -> None:
    _, exp, out = recipe
    text = (exp / "RESULTS.md").read_text()
    for heading in ("## GMM-HMM (stage 3)", "## Table 1 analogue", "## Table 5 analogue"):
        assert heading in text, heading
    assert "./run.sh --preset tiny" in text  # the command that produced the numbers
    # The recipe prints both tables at the end of stages 7 and 8.
    assert "Table 1 analogue" in out.stdout and "Table 5 analogue" in out.stdout
    table1 = json.loads((exp / "decode" / "table1.json").read_text()) if (exp / "decode" / "table1.json").is_file() else None
    assert table1 is not None


def test_rerun_skips_finished_stages(recipe) -> None:
    data, exp, _ = recipe
    out = run_librispeech_recipe(data, exp, "--stage", "3", "--stop-stage", "6", "--num-teachers", "2")
    for line in ("Stage 3: GMM-HMM systems exist", "Stage 4: teachers exist", "Stage 5: soft targets exist",
                 "Stage 6: hard student exists", "Stage 6: distilled student exists"):
        assert line in out.stderr, line
