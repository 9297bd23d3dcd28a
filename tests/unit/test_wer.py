"""WER: hand-computed examples, missing/extra hypotheses, the report files, and properties."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.errors import DataError
from asr_kd.metrics.wer import compute_wer, format_wer_report, read_transcripts, score_utterance, write_transcripts, write_wer_report


def test_hand_computed_counts() -> None:
    # ref: the cat sat on a mat (6 words); hyp: the bat sat a mat today. The longest common
    # subsequence (the sat a mat) has 4 words, so the only 3-error alignment is cat->bat (S),
    # "on" deleted (D), "today" inserted (I).
    refs = {"u1": "the cat sat on a mat", "u2": "hello world"}
    hyps = {"u1": "the bat sat a mat today", "u2": "hello world"}
    r = compute_wer(refs, hyps)
    assert (r.substitutions, r.deletions, r.insertions, r.hits) == (1, 1, 1, 6)
    assert r.ref_words == 8
    assert r.wer == pytest.approx(3 / 8)
    assert r.sentence_errors == 1 and r.ser == pytest.approx(0.5)
    u1 = r.utterances[0]
    assert u1.utt_id == "u1"
    assert [op for op, _, _ in u1.alignment].count("C") == 4
    assert ("S", "cat", "bat") in u1.alignment and ("D", "on", None) in u1.alignment
    assert r.summary() == "%WER 37.50 [ 3 / 8, 1 ins, 1 del, 1 sub ]"


def test_missing_hypothesis_counts_as_deletions_and_is_reported() -> None:
    refs = {"a": "one two three", "b": "four five"}
    r = compute_wer(refs, {"a": "one two three", "zzz": "stray words"})
    assert r.missing == ("b",)
    assert r.extra == ("zzz",)
    assert (r.deletions, r.substitutions, r.insertions) == (2, 0, 0)
    assert r.wer == pytest.approx(2 / 5)
    assert r.utterances[1].missing_hyp
    text = format_wer_report(r)
    assert "(no hypothesis)" in text and "zzz not-scored" in text


def test_empty_reference_and_hypothesis() -> None:
    assert score_utterance("x", "", "").wer == 0.0
    u = score_utterance("x", "", "oops extra")
    assert u.insertions == 2 and math.isinf(u.wer)
    assert compute_wer({"x": ""}, {"x": ""}).wer == 0.0


def test_no_reference_is_an_error() -> None:
    with pytest.raises(DataError, match="no reference"):
        compute_wer({}, {"a": "b"})


def test_report_and_json(tmp_path) -> None:
    r = compute_wer({"u1": "a b c"}, {"u1": "a x c d"})
    path = tmp_path / "wer_details"
    write_wer_report(r, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "%WER 66.67 [ 2 / 3, 1 ins, 0 del, 1 sub ]"
    assert "u1 ref  a  b  c  ***" in lines
    assert "u1 hyp  a  x  c  d" in lines
    assert "u1 op   C  S  C  I" in lines
    assert "u1 #csid 2 1 1 0" in lines
    data = json.loads(path.with_suffix(".json").read_text())
    assert data["errors"] == 2 and data["utterances"][0]["alignment"][1] == ["S", "b", "x"]


def test_transcript_files_round_trip(tmp_path) -> None:
    texts = {"b": "HELLO  WORLD", "a": "", "c": "X"}
    write_transcripts(tmp_path / "text", texts)
    assert read_transcripts(tmp_path / "text") == {"a": "", "b": "HELLO  WORLD", "c": "X"}
    (tmp_path / "dup").write_text("a X\na Y\n")
    with pytest.raises(DataError, match="dup:2: utterance 'a' appears twice"):
        read_transcripts(tmp_path / "dup")
    with pytest.raises(DataError, match="does not exist"):
        read_transcripts(tmp_path / "nope")


words = st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=8)


@settings(max_examples=60, deadline=None)
@given(ref=words, hyp=words)
def test_counts_are_consistent(ref: list[str], hyp: list[str]) -> None:
    u = score_utterance("u", " ".join(ref), " ".join(hyp))
    # Every reference word is a hit, a substitution or a deletion; every hypothesis word a hit,
    # a substitution or an insertion; the alignment spells both sides back.
    assert u.hits + u.substitutions + u.deletions == len(ref)
    assert u.hits + u.substitutions + u.insertions == len(hyp)
    assert [r for _, r, _ in u.alignment if r is not None] == ref
    assert [h for _, _, h in u.alignment if h is not None] == hyp
    # Edit distance bounds: never more than max(len), zero iff equal.
    assert u.errors <= max(len(ref), len(hyp))
    assert (u.errors == 0) == (ref == hyp)
