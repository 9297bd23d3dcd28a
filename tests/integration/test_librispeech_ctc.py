"""End to end: recipes/librispeech/run.sh --model-type ctc, stages 4-7 on the 'tiny' corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from asr_kd.report.results_md import read_section
from tests.conftest import RUN_SH, run_librispeech_recipe

pytestmark = pytest.mark.slow


def test_ctc_path_writes_models_spike_report_and_rows(tiny_stage2: tuple[Path, Path], tmp_path: Path) -> None:
    src_data, _ = tiny_stage2
    data, exp = tmp_path / "data", tmp_path / "exp"
    shutil.copytree(src_data, data, symlinks=True)
    out = run_librispeech_recipe(data, exp, "--stage", "4", "--stop-stage", "9", "--model-type", "ctc", "--int8-max-relative", "0.5",
                                 timeout=1500)
    assert not (exp / "gmm").exists() and not (exp / "teachers").exists()  # the hybrid path did not run
    for line in ("Stage 4 (CTC): teachers", "teachers with shared_init_steps=15", "teachers with guide_weight=1.0", "Stage 5 (CTC)",
                 "Stage 6 (CTC): students baseline, frame and sequence (and the extra sets' frame students), 2 seeds each", "frame_guided1.0 student", "Stage 7 (CTC)"):
        assert line in out.stderr, line
    ctc_dir = exp / "ctc" / "phone"
    # tiny's preset asks for 2 seeds per student kind; the extra teacher sets' students get one.
    for model in ("teachers/teacher1", "teachers_shared15/teacher1", "teachers_guided1/teacher1", "students/baseline",
                  "students/sequence", "students/frame", "students/baseline_seed1", "students/sequence_seed1", "students/frame_seed1",
                  "students/frame_shared15", "students/frame_guided1.0", "students/frame_shared15_seed1", "students/frame_guided1.0_seed1"):
        assert (ctc_dir / model / "final.pt").is_file(), model
    assert not (ctc_dir / "students" / "frame_seed2").exists() and not (ctc_dir / "students" / "frame_guided1.0_seed2").exists()
    assert set(json.loads((ctc_dir / "spikes" / "spike_report.json").read_text())) == {"independent", "shared init 15 steps", "independent, guided 1"}
    text = (exp / "RESULTS.md").read_text()
    assert "./run.sh --preset tiny" in text and "--model-type ctc" in text
    # Stage 7 decoded with conf/decode_ctc.yaml: its grid searched on dev, a student's seeds one row.
    from asr_kd.config import DecodeConfig, load_config
    from asr_kd.stages.provenance import read_record

    conf = load_config(DecodeConfig, RUN_SH.parent / "conf" / "decode_ctc.yaml")
    grid = conf.ctc_acoustic_scales
    recorded = read_record(ctc_dir / "decode").config["decode"]
    assert len(grid) > 2 and recorded["ctc_acoustic_scales"] == list(grid)
    assert len(conf.ctc_blank_penalties) > 2 and recorded["ctc_blank_penalties"] == list(conf.ctc_blank_penalties)
    scores = json.loads((ctc_dir / "decode" / "scores.json").read_text())
    assert scores["student: frame_seed1"]["test-clean"]["acoustic_scale"] == scores["student: frame"]["dev-clean"]["sweep"]["best"] in grid
    section = read_section(exp / "RESULTS.md", "## CTC results (phone)")
    for row in ("student: baseline", "student: frame", "student: sequence"):
        assert f"| {row} | 2 | test-clean |" in section, row
    assert "| test-clean | student: frame − baseline |" in section and "| student: frame_guided1.0 | 2 | test-clean |" in section
    # Which teacher set distils better: each extra set's frame student against the frame student.
    diffs = json.loads((ctc_dir / "decode" / "comparisons.json").read_text())["parts"]["test-clean"]
    d = diffs["student: frame_guided1.0 - student: frame"]["hlg_wer"]
    mean = lambda row: sum(scores[f"student: {m}"]["test-clean"]["hlg_wer"] for m in (row, f"{row}_seed1")) / 2  # noqa: E731
    assert d["value"] == pytest.approx(mean("frame_guided1.0") - mean("frame"))
    assert "| test-clean | student: frame_shared15 − student: frame |" in section
    # Stage 9 without the hybrid path: the CTC students' model directories decode at the scale and
    # blank penalty CTC stage 7 chose on dev, the frame-level student is exported and gated, and the
    # cost table has them.
    from asr_kd.decode.tuning import ScaleSweep

    decode7 = read_record(ctc_dir / "decode").config["decode"]
    for kind in ("baseline", "frame"):
        decoding = json.loads((exp / "deploy" / f"ctc_{kind}" / "model.json").read_text())["decoding"]
        sweep = ScaleSweep.from_dict(scores[f"student: {kind}"]["dev-clean"]["sweep"])
        assert sweep.penalty_name == "blank penalty" and sweep.penalty == scores[f"student: {kind}"]["test-clean"].get("blank_penalty", 0.0)
        assert (decoding["ctc_acoustic_scale"], decoding.get("ctc_blank_penalty", 0.0)) == (sweep.best, sweep.penalty), kind
        assert (decoding["beam"], decoding["max_active"]) == (decode7["beam"], decode7["max_active"])
    deploy = read_section(exp / "RESULTS.md", "## Deployment: cost table and quantisation gate")
    rows = {tuple(r.strip("| ").split(" | ")[:2]): r.strip("| ").split(" | ") for r in deploy.splitlines() if r.startswith("| ctc-")}
    assert set(rows) == {("ctc-baseline", "torch"), ("ctc-frame", "torch"), ("ctc-frame", "onnx"), ("ctc-frame", "onnx-int8")}
    int8_wer = rows[("ctc-frame", "onnx-int8")][8].split(" ")[0]
    assert f"int8 WER {int8_wer} vs fp32 {rows[('ctc-frame', 'onnx')][8].split(' ')[0]}" in deploy
    assert rows[("ctc-baseline", "torch")][9] == "1.00x"  # the speed-up column divides by the CTC baseline
    # Stage 9's record chains to the CTC students and decoding it read (and to no hybrid stage).
    record = read_record(exp / "deploy")
    assert record.inputs == {"features": read_record(data / "fbank").fingerprint, "ctc_decode": read_record(ctc_dir / "decode").fingerprint,
                             "ctc_baseline": read_record(ctc_dir / "students" / "baseline").fingerprint,
                             "ctc_frame": read_record(ctc_dir / "students" / "frame").fingerprint}
    assert record.config["ctc_units"] == "phone" and record.config["plan"]["gates"] == ["ctc-frame"]


def test_unknown_model_type_is_rejected(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import RUN_SH

    out = subprocess.run(["bash", str(RUN_SH), "--model-type", "rnnt"], capture_output=True, text=True)
    assert out.returncode == 1 and "--model-type takes hybrid, ctc or both" in out.stderr
    out = subprocess.run(["bash", str(RUN_SH), "--ctc-guide-weight", "-1"], capture_output=True, text=True)
    assert out.returncode == 1 and "--ctc-guide-weight takes a number >= 0" in out.stderr
