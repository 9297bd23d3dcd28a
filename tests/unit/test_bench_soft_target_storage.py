"""bench/soft_target_storage.py's section heading: --title keeps a second corpus's study beside the first."""

from __future__ import annotations

import runpy
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_a_titled_study_gets_its_own_section(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    bench = runpy.run_path(str(REPO_ROOT / "bench" / "soft_target_storage.py"))
    default, small = bench["section_heading"](None), bench["section_heading"]("Teacher storage on small")
    assert (default, small) == ("## Compact teacher storage against accuracy", "## Teacher storage on small")
    assert bench["first_line"]("Teacher storage on small") == "## Teacher storage on small (bench/soft_target_storage.py)"
    # The heading is what write_section matches: rewriting the titled study leaves the default one alone.
    results = tmp_path / "RESULTS.md"
    for title, body in ((None, "mini"), ("Teacher storage on small", "small v1"), ("Teacher storage on small", "small v2")):
        bench["write_section"](results, bench["section_heading"](title), f"{bench['first_line'](title)}\n\n{body}\n")
    text = results.read_text()
    assert text.count("## ") == 2 and "mini" in text and "small v2" in text and "small v1" not in text
    # Without a finished recipe run it says so and exits 0, --title accepted.
    assert bench["main"](["--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp"), "--title", "On small"]) == 0
    assert "no finished recipe run under" in capsys.readouterr().out


def test_each_row_says_how_much_of_the_ensembles_gain_its_student_keeps(tmp_path: Path) -> None:
    import json

    import numpy as np
    import pytest

    from asr_kd.metrics.paired import bootstrap_gain_share
    from asr_kd.stages.layout import RecipeLayout

    bench = runpy.run_path(str(REPO_ROOT / "bench" / "soft_target_storage.py"))
    ref, shadow = RecipeLayout(tmp_path / "data", tmp_path / "exp"), RecipeLayout(tmp_path / "data", tmp_path / "shadow")
    rng = np.random.default_rng(1)
    frames = rng.integers(1, 4, 40) * 100  # whole counts below
    correct = {"baseline": frames * 0.40, "baseline_seed1": frames * 0.44, "ensemble": frames * 0.52,
               "distilled": frames * 0.45, "uint16-uint8_k100": frames * 0.50}
    for name, c in correct.items():
        folder = (shadow if name.startswith("uint16") else ref).decode / f"{name}_{ref.test_part}"
        folder.mkdir(parents=True)
        per_utt = {f"u{i:02d}": [0, 5, int(round(x)), int(f)] for i, (x, f) in enumerate(zip(c, frames))}
        (folder / "per_utt.json").write_text(json.dumps(per_utt))
    shares = bench["gain_shares"](ref, shadow, ["baseline", "baseline_seed1"], ["distilled", "uint16-uint8_k100"])
    r = lambda name: np.round(correct[name])  # noqa: E731 - the counts as stored
    want = [bootstrap_gain_share((r("baseline") + r("baseline_seed1")) / 2, r("ensemble"), r(s), frames.astype(float)).to_dict()
            for s in ("distilled", "uint16-uint8_k100")]
    assert shares == want
    # The baseline's mean is 0.42, the ensemble gains 0.10 over it: 0.45 keeps 30%, 0.50 keeps 80%.
    # Every utterance alike, so every resample too: the interval is the value.
    assert shares[0]["value"] == shares[0]["low"] == pytest.approx(0.3) and shares[1]["value"] == pytest.approx(0.8)
    assert bench["_share_cell"](shares[1]) == "80% [80, 80]" and bench["_share_cell"](None) == ""
