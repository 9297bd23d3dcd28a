"""CTC stage 7's differences from the baseline student, on hand-written per-utterance counts (the
tiny corpus's CTC models output only blanks, so the integration test cannot tell the columns or
the seeds apart)."""

from __future__ import annotations

import json

import pytest

from asr_kd.stages.ctc_s7_decode import _compare_rows, _format_ctc_comparisons, system_slug
from asr_kd.stages.layout import RecipeLayout

# {utt: [HLG word errors, reference words, greedy token errors, reference tokens]}
BASE0 = {"u1": [2, 10, 5, 30], "u2": [0, 5, 1, 15], "u3": [4, 8, 6, 20]}
BASE1 = {"u1": [4, 10, 3, 30], "u2": [2, 5, 1, 15], "u3": [2, 8, 8, 20]}
FRAME = {"u1": [1, 10, 2, 30], "u2": [0, 5, 0, 15], "u3": [1, 8, 4, 20]}


def _write(layout: RecipeLayout, system: str, part: str, counts: dict) -> None:
    path = layout.ctc_decode / f"{system_slug(system)}_{part}" / "per_utt.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(counts))


def test_differences_average_the_baseline_seeds_and_keep_the_columns_apart(tmp_path) -> None:
    layout = RecipeLayout(tmp_path / "data", tmp_path / "exp", ctc_units="phone")
    rows = {"teacher0": ["teacher0"], "student: baseline": ["student: baseline", "student: baseline_seed1"], "student: frame": ["student: frame"]}
    for system, counts in (("teacher0", FRAME), ("student: baseline", BASE0), ("student: baseline_seed1", BASE1), ("student: frame", FRAME)):
        _write(layout, system, "test-clean", counts)
    out = _compare_rows(layout, rows, ["test-clean"])
    assert set(out["parts"]["test-clean"]) == {"student: frame - baseline"}  # teachers are not compared
    d = out["parts"]["test-clean"]["student: frame - baseline"]
    # Word errors: baseline seeds 6 and 8 of 23 words (mean 7), frame 2; tokens: 12 and 12 of 65, frame 6.
    assert d["hlg_wer"]["value"] == pytest.approx(2 / 23 - 7 / 23)
    assert d["greedy_ter"]["value"] == pytest.approx(6 / 65 - 12 / 65)
    assert d["hlg_wer"]["low"] <= d["hlg_wer"]["value"] <= d["hlg_wer"]["high"] < 0
    # Without a baseline student there is nothing to compare with.
    assert _compare_rows(layout, {"teacher0": ["teacher0"]}, ["test-clean"]) == {"parts": {}}


def test_frame_variants_are_also_compared_with_the_frame_student(tmp_path) -> None:
    # Which teacher set distils better: student: frame_<x> (another set's frame-level student) minus
    # student: frame, besides both against the baseline; other students only against the baseline.
    layout = RecipeLayout(tmp_path / "data", tmp_path / "exp", ctc_units="phone")
    rows = {"student: baseline": ["student: baseline"], "student: frame": ["student: frame"],
            "student: frame_guided1": ["student: frame_guided1", "student: frame_guided1_seed1"], "student: sequence": ["student: sequence"]}
    for system, counts in (("student: baseline", BASE0), ("student: frame", FRAME), ("student: frame_guided1", BASE1),
                           ("student: frame_guided1_seed1", BASE0), ("student: sequence", BASE1)):
        _write(layout, system, "test-clean", counts)
    out = _compare_rows(layout, rows, ["test-clean"])["parts"]["test-clean"]
    assert set(out) == {"student: frame - baseline", "student: frame_guided1 - baseline", "student: sequence - baseline",
                        "student: frame_guided1 - student: frame"}
    # frame_guided1's seeds: 8 and 6 word errors of 23 (mean 7), frame 2; tokens 12 and 12, frame 6.
    d = out["student: frame_guided1 - student: frame"]
    assert d["hlg_wer"]["value"] == pytest.approx(7 / 23 - 2 / 23) and d["greedy_ter"]["value"] == pytest.approx(12 / 65 - 6 / 65)
    assert out["student: frame_guided1 - baseline"]["hlg_wer"]["value"] == pytest.approx(7 / 23 - 6 / 23)  # baseline: 6
    # The paragraph names each comparison's reference in its verdict (every utterance has more
    # errors with frame_guided1's seeds than with frame: worse, significantly).
    text = _format_ctc_comparisons({"parts": {"test-clean": out}}, 2)
    assert "| test-clean | student: frame_guided1 − student: frame | +21.74 [" in text
    assert "| yes, worse than the frame student |" in text and "frame_<x> student from the frame student" in text
    assert "| test-clean | student: frame − baseline | -17.39 [" in text and "than the frame student" not in text.split("frame − baseline")[1].split("\n")[0]
    # Without the frame student, its variants are compared with the baseline only.
    del rows["student: frame"]
    assert set(_compare_rows(layout, rows, ["test-clean"])["parts"]["test-clean"]) == {
        "student: frame_guided1 - baseline", "student: sequence - baseline"}
