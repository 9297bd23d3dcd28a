"""Which decoding a CTC model directory takes from the recipe (asr_kd.deploy.recipe_paths.ctc_decoding),
on real stage records written by StageGuard in an empty experiment folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from asr_kd.deploy.recipe_paths import ctc_decoding
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageGuard


def _finish(folder: Path, config: dict, inputs: dict | None = None) -> str:
    guard = StageGuard("test", folder, config, inputs or {})
    assert guard.needs_work()
    return guard.finish([]).fingerprint


def test_ctc_decoding_follows_stage_7_only_while_its_inputs_are_current(tmp_path: Path, caplog) -> None:
    layout = RecipeLayout(tmp_path / "data", tmp_path / "exp", ctc_units="phone")
    student = _finish(layout.ctc_student_dir("frame"), {"kind": "frame"})
    graph = _finish(layout.ctc_graph, {"units": "phone"})
    decode = {"beam": 12.0, "max_active": 3000, "min_active": 200, "ctc_acoustic_scale": 1.0, "ctc_acoustic_scales": [0.5, 2.0]}
    _finish(layout.ctc_decode, {"decode": decode}, {"student frame": student, "graph": graph})
    (layout.ctc_decode / "scores.json").write_text(json.dumps({"student: frame": {"dev-clean": {"acoustic_scale": 0.5, "hlg_wer": 0.4}}}))
    assert ctc_decoding(layout, "frame") == {"beam": 12.0, "max_active": 3000, "min_active": 200, "ctc_acoustic_scale": 0.5}
    # A blank penalty the stage chose on dev travels with the scale (the grid the stage searched does not).
    (layout.ctc_decode / "scores.json").write_text(json.dumps({"student: frame": {"dev-clean": {"acoustic_scale": 0.7, "blank_penalty": 2.5}}}))
    assert ctc_decoding(layout, "frame") == {"beam": 12.0, "max_active": 3000, "min_active": 200, "ctc_acoustic_scale": 0.7,
                                             "ctc_blank_penalty": 2.5}
    # The HLG remade after stage 7 (another record): its scale was tuned on another graph.
    (layout.ctc_graph / "provenance.json").unlink()
    _finish(layout.ctc_graph, {"units": "phone", "lm": "other"})
    with caplog.at_level(logging.WARNING):
        assert ctc_decoding(layout, "frame") == {}
    assert "did not decode the CTC student frame with its HLG as they are now" in caplog.text
    # A student stage 7 never decoded (here: none of its seeds) gets the defaults as well.
    assert ctc_decoding(layout, "baseline") == {}
