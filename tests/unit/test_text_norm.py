"""The transcript normaliser (LibriSpeech convention) and its use at stage 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lhotse import load_manifest

from asr_kd.data.librispeech import manifest_path, normalization_record_path, prepare_manifests
from asr_kd.data.text_norm import NORMALIZER, normalize_transcript
from asr_kd.errors import DataError


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("HELLO WORLD", "HELLO WORLD"),
        ("Hello, world!", "HELLO WORLD"),
        ("  don't   stop. ", "DON'T STOP"),
        ("I don\u2019t know\u2026 \u201cReally?\u201d", "I DON'T KNOW REALLY"),  # typographic quotes and ellipsis
        ("the boys' caps and 'quoted' words", "THE BOYS' CAPS AND QUOTED WORDS"),
        ("well-known \u2014 a dash\u2013here", "WELL KNOWN A DASH HERE"),
        ("Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m", "CAFE NAIVE RESUME ANGSTROM"),
        ("\u00c6sop's stra\u00dfe \u00f8re", "AESOP'S STRASSE ORE"),
        ("\uff28\uff25\uff2c\uff2c\uff2f", "HELLO"),  # full-width letters fold by NFKD
        ("chapter 12; section 3b", "CHAPTER TWELVE SECTION 3B"),  # digits inside a word stay
        ("In 1995 he paid 1,250 for 3 books", "IN NINETEEN NINETY FIVE HE PAID ONE THOUSAND TWO HUNDRED FIFTY FOR THREE BOOKS"),
        ("the 21st, 2nd, 3rd, 11th, 12th and 100th", "THE TWENTY FIRST SECOND THIRD ELEVENTH TWELFTH AND ONE HUNDREDTH"),
        ("in 1900, 1905, 2005 and 2024", "IN NINETEEN HUNDRED NINETEEN OH FIVE TWO THOUSAND FIVE AND TWENTY TWENTY FOUR"),
        ("agent 007 ran 3.25 miles, then 40", "AGENT ZERO ZERO SEVEN RAN THREE POINT TWO FIVE MILES THEN FORTY"),
        ("12,345,678 and 1000000 and 0", "TWELVE MILLION THREE HUNDRED FORTY FIVE THOUSAND SIX HUNDRED SEVENTY EIGHT AND ONE MILLION AND ZERO"),
        ("MP3 files and 10x zoom", "MP3 FILES AND 10X ZOOM"),
        # Annotations of non-speech events are dropped: nobody said them.
        ("[noise] hello <unk> world {breath} [inaudible speech] <s>", "HELLO WORLD"),
        ("a < b and c > d", "A B AND C D"),  # angle brackets around spaces are not an annotation
        # Money, percentages and a lone ampersand, as read.
        ("$5, $1 and $1.50, $0.05, $5.00", "FIVE DOLLARS ONE DOLLAR AND ONE DOLLAR FIFTY CENTS FIVE CENTS FIVE DOLLARS"),
        ("$2.5 million and $1,250,000", "TWO POINT FIVE MILLION DOLLARS AND ONE MILLION TWO HUNDRED FIFTY THOUSAND DOLLARS"),
        ("\u00a33.01 and \u20ac1", "THREE POUNDS ONE PENNY AND ONE EURO"),
        ("12% of 3.5 % rock & roll, AT&T", "TWELVE PERCENT OF THREE POINT FIVE PERCENT ROCK AND ROLL AT AND T"),
        ("$.50, $5million and $1,000.50", "FIFTY CENTS FIVE MILLION DOLLARS AND ONE THOUSAND DOLLARS FIFTY CENTS"),
    ],
)
def test_transcripts_follow_the_librispeech_convention(raw: str, expected: str) -> None:
    assert normalize_transcript(raw).text == expected
    assert normalize_transcript(raw).unfoldable == ""


def test_letters_without_an_ascii_fold_are_reported() -> None:
    norm = normalize_transcript("hello \u043c\u0438\u0440 world \u4e16\u754c")
    assert norm.unfoldable == "\u043c\u0438\u0440\u4e16\u754c"
    assert norm.text == "HELLO WORLD"


@given(st.text(max_size=60))
def test_normalised_text_is_plain_and_normalising_again_changes_nothing(raw: str) -> None:
    text = normalize_transcript(raw).text
    assert all(c.isascii() and (c.isupper() or c.isdigit() or c in "' ") for c in text), text
    assert "  " not in text and text == text.strip()
    assert normalize_transcript(text).text == text


def test_stage0_normalises_once_and_records_it(tone_corpus: Path, tmp_path: Path) -> None:
    clean = prepare_manifests(tone_corpus, tmp_path / "clean", ["train-clean-100"])
    clean_text = {s.id: s.text for s in load_manifest(manifest_path(tmp_path / "clean", "supervisions", "train-clean-100"))}
    # The same audio with lowercase, punctuated, typographic transcripts ...
    numbers = {"ONE": "One", "TWO": "two!", "THREE": "three\u2026", "FOUR": "four?", "FIVE": "five;", "SIX": "six."}
    for trans in (tone_corpus / "train-clean-100").glob("*/*/*.trans.txt"):
        lines = []
        for line in trans.read_text().splitlines():
            utt, *words = line.split()
            lines.append(f"{utt} \u201cHello,\u201d  world \u2014 {numbers[words[2]]}")
        lines.append(f"{utt[:-4]}0099 \u041f\u0440\u0438\u0432\u0435\u0442 world")  # Cyrillic: no ASCII fold
        lines.append(f"{utt[:-4]}0098 ... !!")  # nothing left
        trans.write_text("\n".join(lines) + "\n")
        (trans.parent / f"{utt[:-4]}0099.flac").write_bytes((trans.parent / f"{utt}.flac").read_bytes())
        (trans.parent / f"{utt[:-4]}0098.flac").write_bytes((trans.parent / f"{utt}.flac").read_bytes())
    out = tmp_path / "messy"
    reports = prepare_manifests(tone_corpus, out, ["train-clean-100"])
    sups = load_manifest(manifest_path(out, "supervisions", "train-clean-100"))
    # ... gives exactly the same supervision texts, the originals kept beside them.
    assert {s.id: s.text for s in sups} == clean_text
    assert all(s.custom["original_text"].startswith("\u201cHello,") for s in sups)
    assert reports["train-clean-100"].utterances == clean["train-clean-100"].utterances == 6
    assert reports["train-clean-100"].skipped == {"transcript has characters with no ASCII spelling": 2, "utterance has no word left after normalisation": 2}
    skipped = (out / "skipped_train-clean-100.txt").read_text()
    assert "transcript has characters with no ASCII spelling (\u041f\u0440\u0438\u0432\u0435\u0442); transliterate them" in skipped
    record = json.loads(normalization_record_path(out, "train-clean-100").read_text())
    assert record == {**NORMALIZER, "part": "train-clean-100", "utterances": 6, "changed": 6, "rejected_unfoldable": 2}
    assert json.loads(normalization_record_path(tmp_path / "clean", "train-clean-100").read_text())["changed"] == 0


def test_lexicon_and_lm_words_are_folded_as_transcripts_are() -> None:
    from asr_kd.lang.lexicon import normalize_word

    # A lexicon's CAFÉ used to stay CAFÉ and never met the transcripts' CAFE.
    assert [normalize_word(w) for w in ("Caf\u00e9", "don\u2019t", "\u00c6SOP", "na\u00efve")] == ["CAFE", "DON'T", "AESOP", "NAIVE"]
    assert all(normalize_word(w) == normalize_transcript(w).text for w in ("Caf\u00e9", "don\u2019t", "\u00c6SOP", "na\u00efve"))


def test_lm_text_lines_without_an_ascii_spelling_are_skipped_and_counted(tmp_path: Path, caplog) -> None:
    from asr_kd.lang.lm import lm_text_sentences

    text = tmp_path / "lm.txt"
    text.write_text("the caf\u00e9 [noise] paid $5\n\nhello \u043c\u0438\u0440 world\n<unk>\nrock & roll\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        sentences = lm_text_sentences(text)
    # The Cyrillic line used to be kept as HELLO WORLD, a sentence nobody wrote.
    assert sentences == [["THE", "CAFE", "PAID", "FIVE", "DOLLARS"], ["ROCK", "AND", "ROLL"]]
    assert f"LM text {text}: skipped 1 line(s) with letters that have no ASCII spelling (first: line 3, '\u043c\u0438\u0440')" in caplog.text
    # Nothing usable left: said so, with why (it used to read as "no non-empty line").
    text.write_text("\u043c\u0438\u0440\n\n\u4e16\u754c\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^LM text {text} has no usable line \(all 2 of its lines with words have letters with no ASCII spelling\)"):
        lm_text_sentences(text)
