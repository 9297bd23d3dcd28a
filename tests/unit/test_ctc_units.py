"""CTC units: phones from the lexicon, BPE pieces round trip, and HLG over BPE units."""

from __future__ import annotations

import numpy as np
import pytest
from decode_toy import DEV, TRAIN, UNSEEN, make_lang

from asr_kd.config import DecodeConfig
from asr_kd.ctc.units import load_units, make_units
from asr_kd.decode.ctc import decode_ctc, greedy_ctc
from asr_kd.decode.hlg import compile_hlg
from asr_kd.errors import DataError


@pytest.fixture(scope="module")
def lang(tmp_path_factory):
    return make_lang(tmp_path_factory.mktemp("ctc_units_lang"))


@pytest.fixture(scope="module")
def bpe(lang, tmp_path_factory):
    return make_units("bpe", lang, tmp_path_factory.mktemp("bpe"), texts=TRAIN * 3, bpe_vocab_size=30)


def test_phone_units_use_the_first_pronunciation_and_spn_for_oov(lang, tmp_path) -> None:
    units = make_units("phone", lang, tmp_path / "units")
    assert units.tokens.id("<blk>") == 0 and units.num_tokens == max(units.tokens.ids()) + 1
    first = [units.tokens.id(p) for p in lang.lexicon["READ"][0]]
    oov = [units.tokens.id(p) for p in lang.lexicon[lang.oov_word][0]]
    assert lang.lexicon[lang.oov_word][0] == ("SPN",)
    assert units.encode("read zebra") == first + oov
    assert units.encode("the cat") == [units.tokens.id(p) for w in ("THE", "CAT") for p in lang.lexicon[w][0]]
    assert units.to_text(units.encode("the cat")) is None  # phone strings need HLG to become words
    assert 0 not in units.encode(" ".join(TRAIN))


def test_bpe_units_round_trip(bpe, lang, tmp_path) -> None:
    assert bpe.tokens.name(0) == "<blk>" and bpe.tokens.name(1) == "<unk>"
    assert bpe.num_tokens <= 30
    for text in [*TRAIN, *DEV, UNSEEN]:
        ids = bpe.encode(text)
        assert ids and 0 not in ids
        assert bpe.to_text(ids) == text.upper()
    again = load_units(bpe.sp_model.parent, lang)
    assert again.kind == "bpe" and again.encode(UNSEEN) == bpe.encode(UNSEEN)


def test_units_directory_is_reused_and_checked(lang, bpe) -> None:
    same = make_units("bpe", lang, bpe.sp_model.parent, texts=["SOMETHING ELSE ENTIRELY"], bpe_vocab_size=30)
    assert same.encode(DEV[0]) == bpe.encode(DEV[0])  # not retrained
    with pytest.raises(DataError, match="holds bpe units"):
        make_units("phone", lang, bpe.sp_model.parent)
    with pytest.raises(DataError, match="no training transcript"):
        make_units("bpe", lang, bpe.sp_model.parent.parent / "empty_bpe", texts=[])


@pytest.mark.parametrize("sentence", [DEV[0], UNSEEN])
def test_bpe_hlg_decodes_oracle_posteriors_like_greedy(bpe, lang, sentence) -> None:
    # The phone-unit version of this check is tests/unit/test_decode_ctc.py.
    hlg, _ = compile_hlg(bpe.token_lexicon(), bpe.tokens, lang.words, lang.load_fst("G"))
    frames = [0]
    for tok in bpe.encode(sentence):
        frames += [tok, tok, 0]
    rng = np.random.default_rng(len(sentence))
    logits = rng.normal(size=(len(frames), bpe.num_tokens))
    logits[np.arange(len(frames)), frames] += 8.0
    log_probs = (logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)).astype(np.float32)
    result = decode_ctc(hlg, log_probs, DecodeConfig())
    assert result.word_ids == lang.word_ids(sentence.upper().split())
    assert bpe.to_text(greedy_ctc(log_probs)) == sentence.upper()
