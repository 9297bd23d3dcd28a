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


@pytest.mark.parametrize(
    "variants, message",
    [
        (["espeak_only:engines=espeak"], "the first --variant is the baseline"),
        (["reference:", "other_text:wordnet_share=0"], r"\['wordnet_share'\] must stay the reference's"),
        (["reference:", "bad:vtlp_max=0.7"], r"synth.vtlp_max must be in \[0, 0.5\)"),
        (["reference:", "typo:vtlp=0"], "unknown key"),
        (["a:", "a:vtlp_max=0"], "names must differ"),
        (["reference:", "v:vtlp_max=0", "--null=w"], r"--null \['w'\]: not among the variants after the first"),
    ],
)
def test_bad_variants_are_refused_before_any_work(tmp_path: Path, variants: list[str], message: str) -> None:
    reference = tmp_path / "corpus"
    reference.mkdir()
    (reference / "SYNTHETIC.json").write_text(json.dumps({"config": {"preset": "mini"}}))
    args = ["--reference", str(reference), "--work", str(tmp_path / "w"), "--results", str(tmp_path / "R.md")]
    with pytest.raises(SystemExit, match=message) as err:
        BENCH["main"]([*args, *(x for v in variants for x in (("--variant", v) if not v.startswith("--") else (v,)))])
    assert "\n" not in str(err.value) and not (tmp_path / "w").exists()


def test_talkers_are_grouped_by_family_and_untrained_accent() -> None:
    """The per-talker columns: mini's seed-0 talkers (as SYNTHETIC.json lists them) put the test
    talkers of the two accents no training talker speaks in a group of their own; with
    cover_accents every espeak-ng talker's accent is trained on."""
    import dataclasses

    from asr_kd.config import SynthConfig
    from asr_kd.data import synth, voices

    plan = voices.EnginePlan(train=("espeak", "festival"), ood="kokoro", ood_accents=(), missing=(), notes=())
    untrained = BENCH["UNTRAINED_ACCENT"]
    for config, expected in ((SynthConfig(), {"en-029", "en-gb-x-gbcwmd"}), (SynthConfig(cover_accents=True), set())):
        speakers = [dataclasses.asdict(s) for s in synth.make_speakers(synth.PRESETS["mini"], seed=0, config=config, plan=plan)]
        groups = BENCH["talker_groups"](speakers)
        assert len(groups) == 60
        test = [s for s in speakers if s["part"] == "test-clean"]
        assert {s["voice"].split("+")[0] for s in test if groups[str(s["speaker_id"])] == untrained} == expected
        assert all(groups[str(s["speaker_id"])] == s["engine"] for s in speakers if s["engine"] != "espeak")
        assert not any(groups[str(s["speaker_id"])] == untrained for s in speakers if s["part"] == "train-clean-100")
