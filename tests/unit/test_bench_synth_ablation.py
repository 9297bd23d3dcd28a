"""bench/synth_ablation.py's command line: variant specs, and what it says without a corpus."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

BENCH = runpy.run_path(str(REPO_ROOT / "bench" / "synth_ablation.py"))


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("reference:", ("reference", {})),
        ("espeak_only:engines=espeak", ("espeak_only", {"engines": "espeak"})),
        ("wide:pitch_male=5,75;rate_wpm=120,220", ("wide", {"pitch_male": "5,75", "rate_wpm": "120,220"})),
    ],
)
def test_variant_specs(spec: str, expected: tuple) -> None:
    assert BENCH["parse_variant"](spec) == expected


@pytest.mark.parametrize("spec, message", [("novariant", "expected NAME:field=value"), ("a b:x=1", "the name must be"),
                                           ("v:vtlp_max", "is not field=value")])
def test_bad_variant_specs_say_why(spec: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        BENCH["parse_variant"](spec)


def test_without_a_corpus_it_says_so_and_a_partial_corpus_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--work", str(tmp_path / "w"), "--variant", "reference:", "--results", str(tmp_path / "R.md")]
    assert BENCH["main"](["--reference", str(tmp_path / "none"), *args]) == 0
    assert "run make demo (stage 0) first" in capsys.readouterr().out
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "SYNTHETIC.json").write_text(json.dumps({"config": {}, "only_parts": ["train-clean-100"]}))
    with pytest.raises(SystemExit, match="holds only"):
        BENCH["main"](["--reference", str(partial), *args])
    assert not (tmp_path / "R.md").exists()
