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


def test_the_dnn_section_reports_the_dnns_scores_and_leaves_the_gmms_alone(tmp_path: Path) -> None:
    """--dnn: the same tables from the DNN's scores (dnn_view), the GMM's differences untouched."""
    import argparse

    reference = tmp_path / "corpus"
    reference.mkdir()
    speakers = [{"speaker_id": 1, "part": "train-clean-100", "engine": "espeak", "voice": "en-us+m1"},
                {"speaker_id": 2, "part": "test-clean", "engine": "espeak", "voice": "en-us+f2"},
                {"speaker_id": 3, "part": "test-clean", "engine": "festival", "voice": "kal"}]
    (reference / "SYNTHETIC.json").write_text(json.dumps({"speakers": speakers}))
    test_ids = ["2-1-0000", "2-1-0001", "3-1-0000", "3-1-0001"]

    def scores(test_errors: list[int], ood_errors: int, scale: float) -> dict:
        utts = {"dev-clean": {"9-1-0000": [1, 10]}, "test-clean": {u: [e, 10] for u, e in zip(test_ids, test_errors)},
                "test-ood": {"5-1-0000": [ood_errors, 10]}}
        wer = {part: {"wer": sum(v[0] for v in u.values()) / sum(v[1] for v in u.values()), "substitutions": 0, "deletions": 0,
                      "insertions": 0, "ref_words": sum(v[1] for v in u.values())} for part, u in utts.items()}
        return {"wer": wer, "scale": scale, "utterances": utts}

    config = {"preset": "mini", "seed": 0, "difficulty": 1.0, "engines": ["espeak", "festival"], "ood_engine": "kokoro"}
    results = {}
    for name, gmm, dnn in (("reference", [5, 5, 5, 5], [2, 2, 2, 2]), ("null_a", [6, 5, 5, 5], [2, 3, 2, 2]),
                           ("v", [5, 5, 4, 4], [1, 1, 2, 2])):
        results[name] = {"overrides": {} if name == "reference" else {"x": "1"}, "config": config, "identical_train_files": None,
                         "timings": {"total": 60.0}, **scores(gmm, 8, 0.1),
                         "dnn": {**scores(dnn, 6, 0.0833), "train_cpu_seconds": None if name == "v" else 120.0, "dnn_network": "3 x 256 ReLU", "dnn_epochs": 10}}
    args = argparse.Namespace(reference=reference, json=tmp_path / "all.json", null=["null_a"], results=tmp_path / "R.md",
                              recipe_exp=None, dnn_train_config=Path("train_mini.yaml"))
    gmm_text = BENCH["report"](args, results, "cmd")
    gmm_differences = [dict(d) for d in results["v"]["differences"]]
    view = BENCH["dnn_view"](results)
    dnn_text = BENCH["report"](args, view, "cmd", dnn=True)
    assert gmm_text.startswith(BENCH["HEADING"]) and dnn_text.startswith(BENCH["DNN_HEADING"])
    # The GMM's 50% test-clean WER in its table, the DNN's 20% (and 15% for variant v) in its own.
    assert "| reference | nothing (the reference) | all (linked) | 10.00% (0.1) | 50.00% |" in gmm_text
    assert "| reference | nothing (the reference) | all (linked) | 10.00% (0.0833) | 20.00% |" in dnn_text
    assert "| v | x=1 | all (linked) | 10.00% (0.0833) | 15.00% |" in dnn_text and "| 120 s |" in dnn_text
    # v's training was stopped after it finished (train_variant: cost None): n/a, and left out of the range.
    v_row = next(line for line in dnn_text.splitlines() if line.startswith("| v |"))
    assert v_row.endswith("| n/a |")
    assert "The DNN's training took 2.0 to 2.0 CPU minutes per variant (2 of the 3 variants; the others' n/a)." in dnn_text
    # v - reference on test-clean: the DNN's -2 errors of 40 words, the GMM's -2 of 40 too but on other talkers.
    dnn_all = next(d for d in view["v"]["differences"] if d["part"] == "test-clean" and d["talkers"] == "all")
    assert dnn_all["value"] == pytest.approx(-0.05)
    dnn_festival = next(d for d in view["v"]["differences"] if d["talkers"] == "festival")
    gmm_festival = next(d for d in results["v"]["differences"] if d["talkers"] == "festival")
    assert dnn_festival["value"] == pytest.approx(0.0) and gmm_festival["value"] == pytest.approx(-0.1)
    assert results["v"]["differences"] == gmm_differences  # the DNN's report appended nothing to the GMM's
    assert "within_null_spread" in view["v"] and "dnn" not in view["v"]
    assert "nor the DNN's sensitivity" in dnn_text and "nor the GMM's sensitivity" in gmm_text
    assert (tmp_path / "synth_ablation_dnn.png").is_file() and "synth_ablation_dnn.png" in dnn_text
