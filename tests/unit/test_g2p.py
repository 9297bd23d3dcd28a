"""Words without a pronunciation: espeak-ng G2P, the OOV lists, the OOV-rate limit, extend vs replace."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr_kd.config import LangConfig
from asr_kd.errors import DataError
from asr_kd.lang.g2p import espeak_pronunciations, ipa_to_arpabet, phone_error_rate
from asr_kd.lang.lang_dir import Lang
from asr_kd.lang.lexicon import cmudict_lexicon, cmudict_phones
from asr_kd.lang.prepare import prepare_lang

TRAIN = ["the zorblax sat on the mat", "a dog read the book", "the quibbleton dog ran"]


def test_made_up_words_get_plausible_arpabet_pronunciations() -> None:
    prons, failed = espeak_pronunciations(["ZORBLAX", "QUIBBLETON", "FLURN"])
    assert failed == []
    assert prons["ZORBLAX"] == ("Z", "AO", "R", "B", "L", "AE", "K", "S")
    assert prons["FLURN"] == ("F", "L", "ER", "N")
    assert prons["QUIBBLETON"][:4] == ("K", "W", "IH", "B")
    assert all(set(p) <= set(cmudict_phones()) for p in prons.values())


def test_ipa_mapping_joins_r_colouring_and_refuses_unknown_symbols() -> None:
    assert ipa_to_arpabet("ˈɑːɹ tʃ ɚ ɹ i") == ("AA", "R", "CH", "ER", "IY")  # "archery", as CMUdict writes it
    assert ipa_to_arpabet("b ˈʌ ʔ n̩") == ("B", "AH", "T", "AH", "N")  # "button"
    assert ipa_to_arpabet("k ˈa ʁ") is None  # a uvular r: no ARPAbet phone, so no pronunciation


def test_g2p_agrees_with_cmudict_on_most_phones() -> None:
    import random

    import cmudict

    words = random.Random(5).sample(sorted(w.upper() for w in cmudict.words() if w.isalpha()), 300)
    predicted, failed = espeak_pronunciations(words)
    per, exact = phone_error_rate(predicted, cmudict_lexicon(words, max_prons=10))
    # Measured 9.5% phone errors and 62% exact words on 2000 words (python -m asr_kd.lang.g2p);
    # a wrong mapping table (e.g. vowels shifted by one) gives far more.
    assert len(failed) <= 3 and per < 0.15 and exact > 0.45, (per, exact, failed)


def test_oov_words_get_g2p_pronunciations_written_apart(tmp_path: Path) -> None:
    summary = prepare_lang({"train": TRAIN, "dev": ["the zorblax read a blorpitude"]}, tmp_path / "lang", LangConfig(), train_split="train", dev_split="dev")
    lang = Lang.load(tmp_path / "lang")
    assert lang.lexicon["ZORBLAX"] == [("Z", "AO", "R", "B", "L", "AE", "K", "S")]
    generated = (tmp_path / "lang" / "lexicon_g2p.txt").read_text().splitlines()
    assert [line.split()[0] for line in generated] == ["BLORPITUDE", "QUIBBLETON", "ZORBLAX"]  # dev words too (for alignment)
    assert (tmp_path / "lang" / "oov_train.txt").read_text() == "QUIBBLETON\t1\tg2p\nZORBLAX\t1\tg2p\n"
    assert (tmp_path / "lang" / "oov_dev.txt").read_text() == "BLORPITUDE\t1\tg2p\nZORBLAX\t1\tg2p\n"
    assert summary.oov["train"]["num_oov"] == 0 and "espeak-ng G2P (3 words)" in summary.lexicon_source


def test_a_user_lexicon_overrides_g2p_and_extends_cmudict(tmp_path: Path) -> None:
    lex = tmp_path / "lexicon.txt"
    lex.write_text("ZORBLAX Z AO1 R B L AH0 K S\nMAT M AE1 T\n")
    prepare_lang({"train": TRAIN}, tmp_path / "lang", LangConfig(), lex, train_split="train", dev_split=None)
    lang = Lang.load(tmp_path / "lang")
    assert lang.lexicon["ZORBLAX"] == [("Z", "AO", "R", "B", "L", "AH", "K", "S")]  # the user's, not espeak's
    assert lang.lexicon["DOG"] == [("D", "AO", "G")]  # from CMUdict
    assert [line.split()[0] for line in (tmp_path / "lang" / "lexicon_g2p.txt").read_text().splitlines()] == ["QUIBBLETON"]


def test_oov_rate_above_the_limit_stops_stage2_in_one_line(tmp_path: Path) -> None:
    lex = tmp_path / "two-words.txt"
    lex.write_text("THE DH AH0\nDOG D AO1 G\n")
    # The case: a 2-word lexicon that replaces CMUdict, nothing to fill the gaps.
    replace = LangConfig(lexicon_mode="replace", g2p="none")
    with pytest.raises(DataError) as err:
        prepare_lang({"train": TRAIN}, tmp_path / "lang", replace, lex, train_split="train", dev_split=None)
    assert str(err.value) == (
        f"60.0% of the words of train (9 of 15) have no pronunciation, above lang.max_oov_rate=0.05 (list: {tmp_path / 'lang' / 'oov_train.txt'}); "
        "pass a lexicon covering them with --lexicon, use lang.lexicon_mode=extend and lang.g2p=espeak, or raise lang.max_oov_rate"
    )
    assert not (tmp_path / "lang" / "L.fst").exists()  # stopped before building anything
    assert (tmp_path / "lang" / "oov_train.txt").read_text().splitlines()[0] == "A\t1\t<UNK>"  # the list to look at
    # The same lexicon extending CMUdict (the default) covers the corpus.
    summary = prepare_lang({"train": TRAIN}, tmp_path / "ext", LangConfig(g2p="none", max_oov_rate=0.2), lex, train_split="train", dev_split=None)
    assert summary.oov["train"]["num_oov"] == 2  # ZORBLAX and QUIBBLETON: in no lexicon, and G2P is off


def test_a_lexicon_with_its_own_phone_set_is_not_mixed_with_cmudict(tmp_path: Path) -> None:
    lex = tmp_path / "sampa.txt"
    lex.write_text("THE D@\nDOG dQg\n")
    with pytest.raises(DataError, match=r"60.0% of the words of train \(9 of 15\) have no pronunciation"):
        prepare_lang({"train": TRAIN}, tmp_path / "lang", LangConfig(), lex, train_split="train", dev_split=None)
