"""Lexicon parsing, stress removal, word-position phones, disambiguation symbols, symbol tables."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.errors import DataError
from asr_kd.lang.lexicon import (
    add_disambig_symbols,
    add_word_position,
    cmudict_lexicon,
    cmudict_phones,
    position_dependent_phones,
    read_lexicon_txt,
    read_librispeech_lexicon,
    restrict_lexicon,
    strip_stress,
    write_lexicon,
)
from asr_kd.lang.lm import arpa_unigrams, lm_text_sentences
from asr_kd.lang.symbols import SymbolTable


def test_strip_stress() -> None:
    assert [strip_stress(p) for p in ["AH0", "EY1", "ER2", "K", "SIL", "SPN"]] == ["AH", "EY", "ER", "K", "SIL", "SPN"]


def test_read_librispeech_lexicon_tabs_spaces_stress_and_dedupe(tmp_path) -> None:
    path = tmp_path / "librispeech-lexicon.txt"
    path.write_text(
        "A\tAH0\n"
        "A\tEY1\n"
        "READ  R EH1 D\n"
        "READ R EH0 D\n"  # same phones once stress is removed: dropped
        "READ R IY1 D\n"
        "don't D OW1 N T\n"
        "\n"
        "MANY M EH1 N IY0\nMANY M AE1 N IY0\nMANY M IH1 N IY0\nMANY M AH1 N IY0\n"
    )
    lex = read_librispeech_lexicon(path, max_prons=3)
    assert lex["A"] == [("AH",), ("EY",)]
    assert lex["READ"] == [("R", "EH", "D"), ("R", "IY", "D")]
    assert lex["DON'T"] == [("D", "OW", "N", "T")]  # upper-cased
    assert len(lex["MANY"]) == 3  # max_prons
    assert all(not re.search(r"\d", p) for prons in lex.values() for pron in prons for p in pron)


def test_read_librispeech_lexicon_errors(tmp_path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="nope.txt"):
        read_librispeech_lexicon(missing)
    bad = tmp_path / "bad.txt"
    bad.write_text("A AH0\nLONELY\n")
    with pytest.raises(DataError, match=r"bad.txt:2: word 'LONELY' has no phones"):
        read_librispeech_lexicon(bad)


def test_lexicon_and_lm_text_not_utf8_are_one_line_errors(tmp_path) -> None:
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_bytes("CAF\u00c9 K AE0 F EY1\n".encode("latin-1"))
    with pytest.raises(DataError, match=rf"^{re.escape(str(lexicon))}: not UTF-8 text \(invalid continuation byte\); re-encode it as UTF-8$"):
        read_librispeech_lexicon(lexicon)
    text = tmp_path / "lm.txt"
    text.write_bytes(b"THE CAT\n" + "THE CAF\u00c9\n".encode("latin-1"))
    with pytest.raises(DataError, match=rf"^{re.escape(str(text))}: not UTF-8 text \(.*\); re-encode it as UTF-8$"):
        lm_text_sentences(text)
    arpa = tmp_path / "lm.arpa"
    arpa.write_bytes("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0 CAF\u00c9\n\n\\end\\\n".encode("latin-1"))
    with pytest.raises(DataError, match=rf"^{re.escape(str(arpa))}: not UTF-8 text"):
        arpa_unigrams(arpa, str.upper)


def test_cmudict_lexicon_is_restricted_upper_case_and_unstressed() -> None:
    lex = cmudict_lexicon(["THE", "CAT", "XQZXQZ"], max_prons=3)
    assert set(lex) == {"THE", "CAT"}
    assert lex["CAT"] == [("K", "AE", "T")]
    assert ("DH", "AH") in lex["THE"]
    phones = set(cmudict_phones())
    assert len(phones) == 39
    assert all(p in phones for prons in lex.values() for pron in prons for p in pron)


def test_restrict_lexicon_keeps_vocabulary_only() -> None:
    lex = {"A": [("AH",)], "B": [("B", "IY")], "C": [("S", "IY")]}
    assert restrict_lexicon(lex, ["C", "A", "Z"]) == {"A": [("AH",)], "C": [("S", "IY")]}


def test_word_position_phones() -> None:
    assert add_word_position(("K", "AE", "T")) == ("K_B", "AE_I", "T_E")
    assert add_word_position(("AH",)) == ("AH_S",)
    assert add_word_position(("SPN",), silence_phones=["SIL", "SPN"]) == ("SPN",)
    assert position_dependent_phones(["AH"]) == ["AH_B", "AH_E", "AH_I", "AH_S"]


def test_disambig_homophones_and_prefixes() -> None:
    entries = [
        ("A", ("AH",)),
        ("ABOUT", ("AH", "B", "AW", "T")),
        ("CAT", ("K", "AE", "T")),
        ("READ", ("R", "EH", "D")),
        ("RED", ("R", "EH", "D")),
        ("REDO", ("R", "EH", "D", "UW")),
    ]
    out, max_used = add_disambig_symbols(entries)
    got = dict((w, p) for w, p in out)
    assert got["A"] == ("AH", "#1")  # prefix of ABOUT
    assert got["ABOUT"] == ("AH", "B", "AW", "T")
    assert got["CAT"] == ("K", "AE", "T")  # unambiguous: untouched
    assert got["READ"] == ("R", "EH", "D", "#1")  # homophone and prefix of REDO
    assert got["RED"] == ("R", "EH", "D", "#2")
    assert got["REDO"] == ("R", "EH", "D", "UW")
    assert max_used == 2


def test_disambig_none_needed() -> None:
    out, max_used = add_disambig_symbols([("A", ("AH",)), ("B", ("B", "IY"))])
    assert max_used == 0
    assert out == [("A", ("AH",)), ("B", ("B", "IY"))]


_prons = st.lists(st.sampled_from(["AH", "B", "K", "T"]), min_size=1, max_size=3).map(tuple)


@settings(max_examples=60, deadline=None)
@given(st.lists(_prons, min_size=1, max_size=12))
def test_disambig_makes_pronunciations_prefix_free(prons) -> None:
    entries = [(f"W{k}", p) for k, p in enumerate(prons)]
    out, max_used = add_disambig_symbols(entries)
    seqs = [p for _, p in out]
    # Distinct, and none is a proper prefix of another: L o G can be determinized.
    assert len(set(seqs)) == len(seqs)
    for a in seqs:
        for b in seqs:
            assert a == b or b[: len(a)] != a
    # Only the disambiguation symbol is appended; numbering stays within #1..#max_used.
    for (_, before), (_, after) in zip(entries, out):
        assert after[: len(before)] == before
        assert len(after) - len(before) in (0, 1)
        if len(after) > len(before):
            assert 1 <= int(after[-1][1:]) <= max_used


def test_lexicon_txt_round_trip(tmp_path) -> None:
    entries = [("<UNK>", ("SPN",)), ("A", ("AH",)), ("A", ("EY",)), ("CAT", ("K", "AE", "T"))]
    write_lexicon(tmp_path / "lexicon.txt", entries)
    assert read_lexicon_txt(tmp_path / "lexicon.txt") == entries
    with pytest.raises(DataError, match="missing.txt"):
        read_lexicon_txt(tmp_path / "missing.txt")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet="ABC<>#'_", min_size=1, max_size=5), unique=True, max_size=20))
def test_symbol_table_round_trip(tmp_path_factory, names) -> None:
    table = SymbolTable.from_names(names)
    path = tmp_path_factory.mktemp("sym") / "t.txt"
    table.to_file(path)
    back = SymbolTable.from_file(path)
    assert back == table and back.names() == names and len(back) == len(names)
    for k, n in enumerate(names):
        assert back.id(n) == k and back.name(k) == n and n in back


def test_symbol_table_errors(tmp_path) -> None:
    table = SymbolTable.from_names(["<eps>", "A"])
    with pytest.raises(ValueError, match="duplicate symbol"):
        table.add("A")
    with pytest.raises(ValueError, match="duplicate id"):
        table.add("B", 1)
    assert table.add("B") == 2
    bad = tmp_path / "words.txt"
    bad.write_text("<eps> 0\nA one\n")
    with pytest.raises(DataError, match=r"words.txt:2"):
        SymbolTable.from_file(bad)
    with pytest.raises(DataError, match="nothere.txt"):
        SymbolTable.from_file(tmp_path / "nothere.txt")
