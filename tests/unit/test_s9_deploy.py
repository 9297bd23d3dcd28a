"""Stage 9's plan (asr_kd/stages/s9_deploy.py): which systems it builds, exports, gates and times,
and its refusal to deploy from stages that have not run. The stage itself runs in the recipe's
integration tests (tests/integration/test_librispeech_stages_3_8.py, test_librispeech_ctc.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr_kd.errors import ConfigError, DataError
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.s9_deploy import deploy_inputs, deploy_plan, deployable_kinds


def test_the_hybrid_plan_measures_the_ensemble_against_its_students() -> None:
    plan = deploy_plan("hybrid", 3, compressed=False)
    assert [j.system for j in plan.model_dirs] == ["teacher0", "teacher1", "teacher2", "tri", "hard", "distilled"]
    assert "ensemble=teacher0,teacher1,teacher2" in plan.systems and plan.baseline == "ensemble"
    assert plan.exports == ("distilled",) and plan.gates == ("distilled",) and plan.speed == ("distilled@onnx-int8",)
    assert plan.hybrid and not plan.ctc and not any("compressed" in s for s in plan.systems)
    both = deploy_plan("both", 2, compressed=True, uttcmvn_kinds=("hard", "compressed"))
    assert both.hybrid and both.ctc and both.exports == ("distilled", "compressed", "compressed_uttcmvn", "ctc_frame")
    # No deployable distilled student asked for: the stage-6 distilled one stays the gated and timed one.
    assert both.gates == ("distilled",) and both.speed == ("distilled@onnx-int8", "ctc-frame@onnx-int8")
    assert [j.folder for j in both.model_dirs if j.tune_scale] == ["hard_uttcmvn", "compressed_uttcmvn"]
    assert "baseline-uttcmvn=hard_uttcmvn" in both.systems and "compressed-uttcmvn=compressed_uttcmvn@onnx-int8" in both.systems


def test_the_ctc_plan_gates_the_frame_student_against_the_ctc_baseline() -> None:
    plan = deploy_plan("ctc", 4, compressed=True, uttcmvn_kinds=())
    assert [j.system for j in plan.model_dirs] == ["ctc-baseline", "ctc-frame"] and not plan.hybrid
    assert plan.gates == ("ctc-frame",) and plan.baseline == "ctc-baseline" and plan.exports == ("ctc_frame",)


def test_bad_settings_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="--model-type takes hybrid, ctc, both, got 'gmm'"):
        deploy_plan("gmm", 2, False)
    with pytest.raises(ConfigError, match="--num-teachers must be >= 1, got 0"):
        deploy_plan("hybrid", 0, False)
    with pytest.raises(ConfigError, match="--uttcmvn takes hard, distilled, compressed \\(or none\\), got 'teacher0'"):
        deployable_kinds(["hard", "teacher0"], "stored", True)
    with pytest.raises(ConfigError, match="--uttcmvn names 'hard' twice"):
        deployable_kinds(["hard", "distilled", "hard"], "stored", True)


def test_students_that_cannot_be_trained_again_are_left_out_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert deployable_kinds(["compressed", "distilled", "hard"], "stored", True) == ("compressed", "distilled", "hard")
    with caplog.at_level("INFO"):
        # Teachers in the loop (online) would see the student's per-utterance input; no compressed network, no compressed student.
        assert deployable_kinds(["hard", "distilled", "compressed"], "online", True) == ("hard",)
        assert deployable_kinds(["hard", "compressed"], "stored", False) == ("hard",)
    assert "no distilled student on per-utterance CMVN" in caplog.text and "no compressed student (no compressed network" in caplog.text


@pytest.mark.parametrize("model_type, stage", [("hybrid", "run stage 3 (asr-kd train-gmm) first"),
                                               ("ctc", "run CTC stage 6 (asr-kd ctc-train-students) first")])
def test_nothing_is_deployed_from_stages_that_have_not_run(tmp_path: Path, model_type: str, stage: str) -> None:
    layout = RecipeLayout(tmp_path / "data", tmp_path / "exp")
    with pytest.raises(DataError, match=f"holds no finished stage .*; {stage.replace('(', '[(]').replace(')', '[)]')}"):
        deploy_inputs(layout, deploy_plan(model_type, 2, False))


def _record(folder: Path, config: dict, inputs: dict[str, str]) -> str:
    """Write a real stage record (no outputs) in ``folder``; return its fingerprint."""
    from asr_kd.stages.provenance import StageGuard

    folder.mkdir(parents=True, exist_ok=True)
    guard = StageGuard(f"test stage {folder.name}", folder, config, inputs, on_change="redo")
    assert guard.needs_work()
    return guard.finish([]).fingerprint


def test_a_decoding_record_that_did_not_tune_a_deployed_system_is_refused(tmp_path: Path) -> None:
    from asr_kd.stages.s9_deploy import _decoded_current

    decode = tmp_path / "decode"
    _record(decode, {"compressed": False}, {"student_baseline": "a", "student_distilled": "b"})
    assert _decoded_current(decode, "stage 7", {"student_baseline": "a"}).inputs["student_distilled"] == "b"
    # Stage 7 run without --compressed: the compressed student's directory would decode at an untuned scale.
    with pytest.raises(DataError, match=r"decode did not decode compressed, whose tuned scale a model directory needs; run stage 7 again"):
        _decoded_current(decode, "stage 7", {"student_baseline": "a", "student_compressed": "c"})
    with pytest.raises(DataError, match="made from an earlier run of its input 'student_baseline'"):
        _decoded_current(decode, "stage 7", {"student_baseline": "retrained"})


def test_stage_3_is_refused_after_the_lang_was_made_again(tmp_path: Path) -> None:
    """Every stage after 3 (stage 9 included) reads stage 2's words and LM beside stage 3's graph."""
    from asr_kd.stages.common import gmm_record

    layout = RecipeLayout(tmp_path / "data", tmp_path / "exp")
    features = _record(layout.features("fbank"), {"kind": "fbank"}, {})
    lang = _record(layout.lang, {"order": 3}, {})
    _record(layout.gmm, {"gmm": 1}, {"features": features, "lang": lang})
    assert gmm_record(layout).inputs == {"features": features, "lang": lang}
    _record(layout.lang, {"order": 4}, {})  # stage 2 redone, stage 3 not
    with pytest.raises(DataError, match=r"gmm was made from an earlier run of its input 'lang' .*run stage 3 \(asr-kd train-gmm\) again"):
        gmm_record(layout)


def test_the_command_line_settings(tmp_path: Path) -> None:
    from asr_kd.bin.cli import build_parser
    from asr_kd.bin.cmd_kd import deploy_settings

    common = ["deploy", "--data-dir", str(tmp_path / "data"), "--exp-dir", str(tmp_path / "exp"), "--num-teachers", "2"]
    plan, students = deploy_settings(build_parser().parse_args(common + ["--compressed-config", "none", "--uttcmvn", "hard", "compressed"]))
    assert plan.uttcmvn_kinds == ("hard",) and not any(s.startswith("compressed") for s in plan.systems) and students.compressed_model_config is None
    plan, students = deploy_settings(build_parser().parse_args(common + ["--uttcmvn", "none"]))
    assert plan.uttcmvn_kinds == () and students is None
    # The CTC path trains no per-utterance student, but a misspelt kind is still refused, and --num-teachers plays no part.
    plan, _ = deploy_settings(build_parser().parse_args(common[:5] + ["--model-type", "ctc"]))
    assert plan.uttcmvn_kinds == () and plan.gates == ("ctc-frame",)
    with pytest.raises(ConfigError, match="--uttcmvn takes hard, distilled, compressed"):
        deploy_settings(build_parser().parse_args(common + ["--model-type", "ctc", "--uttcmvn", "teacher0"]))
    with pytest.raises(ConfigError, match="--num-teachers must be >= 1, got 0"):
        deploy_settings(build_parser().parse_args(common[:5] + ["--num-teachers", "0"]))


def test_a_failed_gate_fails_the_command() -> None:
    from asr_kd.stages.s9_deploy import gates_passed

    assert gates_passed({"gates": [{"passed": True}, {"passed": True}]}) and gates_passed({"gates": []})
    assert not gates_passed({"gates": [{"passed": True}, {"passed": False}]})
