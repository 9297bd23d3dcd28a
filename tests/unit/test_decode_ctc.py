"""CTC decoding: the CTC topology, greedy decoding, and HLG decoding over a real lang directory."""

from __future__ import annotations

import numpy as np
import pytest
import sentencepiece as spm
from decode_toy import DEV, TRAIN, UNSEEN, make_lang
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.config import DecodeConfig
from asr_kd.decode.ctc import collapse_ctc, decode_ctc, decode_ctc_batch, greedy_ctc
from asr_kd.decode.fst_utils import input_labels
from asr_kd.decode.hlg import bpe_tokens_and_lexicon, compile_hlg, ctc_topology, load_hlg, make_phone_hlg, phone_tokens
from asr_kd.errors import DataError
from asr_kd.kaldi import kaldifst
from asr_kd.metrics.wer import compute_wer


@pytest.fixture(scope="module")
def lang(tmp_path_factory):
    return make_lang(tmp_path_factory.mktemp("ctc"))


@pytest.fixture(scope="module")
def graphs(lang):
    tokens = phone_tokens(lang)
    lexicon = [(w, p) for w in sorted(lang.lexicon) for p in lang.lexicon[w]]
    out = {}
    for sil in (0.0, 0.5):
        out[sil], _ = compile_hlg(lexicon, tokens, lang.words, lang.load_fst("G"), lang.optional_silence, sil)
    return tokens, out


def ctc_log_probs(lang, tokens, sentence: str, rng: np.random.Generator, margin: float = 8.0, silence: bool = False) -> tuple[np.ndarray, list[int]]:
    """Noisy log-softmax outputs whose best frame path spells ``sentence`` (last pronunciation of
    each word, two frames per phone, a blank after each, optional SIL between words)."""
    frames = [0]
    for w in sentence.upper().split():
        for p in lang.lexicon[w][-1]:
            frames += [tokens.id(p)] * 2 + [0]
        if silence:
            frames += [tokens.id(lang.optional_silence)] * 3
    logits = rng.normal(size=(len(frames), max(tokens.ids()) + 1))
    logits[np.arange(len(frames)), frames] += margin
    return (logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)).astype(np.float32), frames


def test_phone_tokens_share_phone_ids(lang) -> None:
    tokens = phone_tokens(lang)
    assert tokens.id("<blk>") == 0
    assert all(tokens.id(p) == lang.phones.id(p) for p in lang.nonsilence_phones)
    assert not any(n.startswith("#") for n in tokens.names())


@pytest.mark.parametrize("sentence", ["the cat sat", DEV[0], UNSEEN, "the red dog sat"])
def test_hlg_decodes_oracle_posteriors_and_agrees_with_greedy(lang, graphs, sentence) -> None:
    tokens, hlg = graphs
    log_probs, frames = ctc_log_probs(lang, tokens, sentence, np.random.default_rng(len(sentence)))
    result = decode_ctc(hlg[0.0], log_probs, DecodeConfig())
    # RED and READ share a pronunciation; the LM prefers "THE RED DOG" (in its training text).
    assert result.word_ids == lang.word_ids(sentence.upper().split())
    assert result.frame_tokens == frames
    assert collapse_ctc(result.frame_tokens) == greedy_ctc(log_probs)


def test_hlg_tokens_are_shifted_token_ids(graphs) -> None:
    tokens, hlg = graphs
    assert input_labels(hlg[0.0]) - {0} <= {t + 1 for t in tokens.ids()}


def test_silence_tokens_need_the_silence_graph(lang, graphs) -> None:
    tokens, hlg = graphs
    log_probs, _ = ctc_log_probs(lang, tokens, "the cat sat", np.random.default_rng(0), silence=True)
    with_sil = decode_ctc(hlg[0.5], log_probs, DecodeConfig())
    assert with_sil.word_ids == lang.word_ids(["THE", "CAT", "SAT"])
    assert tokens.id(lang.optional_silence) in with_sil.frame_tokens
    # Without silence in L the SIL frames must be read as something else.
    without = decode_ctc(hlg[0.0], log_probs, DecodeConfig())
    assert tokens.id(lang.optional_silence) not in without.frame_tokens
    assert without.score < with_sil.score


def test_batch_and_bad_input(lang, graphs) -> None:
    tokens, hlg = graphs
    rng = np.random.default_rng(5)
    sentences = {"a": "the cat sat", "b": UNSEEN}
    inputs = {u: ctc_log_probs(lang, tokens, s, rng)[0] for u, s in sentences.items()}
    inputs["bad"] = np.zeros((0, 5), dtype=np.float32)
    result = decode_ctc_batch(hlg[0.0], inputs, DecodeConfig())
    assert result.failed == ["bad"]
    assert compute_wer({u: s.upper() for u, s in sentences.items()}, result.texts(lang.words)).errors == 0
    with pytest.raises(DataError, match="utterance x: CTC log-probs contain NaN"):
        decode_ctc(hlg[0.0], np.full((3, 18), np.nan), DecodeConfig(), utt_id="x")


def test_make_phone_hlg_writes_files(lang, tmp_path) -> None:
    info = make_phone_hlg(lang, tmp_path / "g")
    hlg = load_hlg(tmp_path / "g")
    assert hlg.num_states == info.num_states
    assert (tmp_path / "g" / "tokens.txt").read_text().startswith("<blk> 0\n")
    with pytest.raises(DataError, match="make-hlg"):
        load_hlg(tmp_path / "none")


def test_lexicon_with_unknown_token_is_an_error(lang) -> None:
    with pytest.raises(DataError, match=r"tokens \['ZZ'\]"):
        compile_hlg([("CAT", ("K", "ZZ"))], phone_tokens(lang), lang.words, lang.load_fst("G"))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=12))
def test_ctc_topology_outputs_the_collapsed_sequence(frames: list[int]) -> None:
    # Reading a frame path through H outputs exactly its CTC label sequence (labels are +1).
    H = ctc_topology(3)
    kaldifst.arcsort(H, sort_type="ilabel")
    path = kaldifst.compose(kaldifst.make_linear_acceptor([t + 1 for t in frames]), H)
    ok, _, olabels, _ = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(path))
    assert ok
    assert [o - 1 for o in olabels] == collapse_ctc(frames)


def test_greedy_ctc_examples() -> None:
    assert collapse_ctc([0, 1, 1, 0, 1, 2, 2, 0]) == [1, 1, 2]
    assert collapse_ctc([0, 0, 0]) == []
    lp = np.log(np.array([[0.1, 0.9], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]]))
    assert greedy_ctc(lp) == [1, 1]


def test_bpe_hlg_decodes_oracle_pieces(lang, tmp_path) -> None:
    model = tmp_path / "bpe.model"
    with model.open("wb") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([s.upper() for s in TRAIN] * 5), model_writer=f, vocab_size=20, model_type="bpe",
            user_defined_symbols=["<blk>"], unk_id=1, bos_id=-1, eos_id=-1, hard_vocab_limit=False, minloglevel=2,
        )
    words = [w for w in sorted(lang.lexicon) if w != lang.oov_word]
    tokens, lexicon = bpe_tokens_and_lexicon(model, words)
    hlg, _ = compile_hlg(lexicon, tokens, lang.words, lang.load_fst("G"))
    pieces = dict(lexicon)
    sentence = ["DOG", "THE", "CAT", "ABOUT", "A", "DOG"]
    frames = [0] + [t for w in sentence for p in pieces[w] for t in (tokens.id(p), 0)]
    logits = np.random.default_rng(1).normal(size=(len(frames), len(tokens)))
    logits[np.arange(len(frames)), frames] += 8.0
    result = decode_ctc(hlg, logits - np.logaddexp.reduce(logits, axis=1, keepdims=True), DecodeConfig())
    assert result.word_ids == lang.word_ids(sentence)
    with pytest.raises(DataError, match="does not exist"):
        bpe_tokens_and_lexicon(tmp_path / "none.model", words)


def test_a_blank_penalty_is_taken_off_the_blank_before_the_scale(lang, graphs) -> None:
    """decode.ctc_blank_penalty: the same best path as decoding log-probs whose blank column was
    lowered by hand, its score that path's under them times the scale; a large one makes the
    search read tokens where the frames say blank, and a large negative one deletes words."""
    tokens, hlg = graphs
    log_probs, _ = ctc_log_probs(lang, tokens, "the cat sat", np.random.default_rng(3), margin=3.0)
    lowered = log_probs.copy()
    lowered[:, 0] -= 1.5
    by_hand = decode_ctc(hlg[0.0], lowered * np.float32(0.7), DecodeConfig())
    penalised = decode_ctc(hlg[0.0], log_probs, DecodeConfig(ctc_acoustic_scale=0.7, ctc_blank_penalty=1.5))
    assert penalised.frame_tokens == by_hand.frame_tokens and penalised.word_ids == by_hand.word_ids
    assert penalised.score == pytest.approx(by_hand.score, rel=1e-5)
    plain = decode_ctc(hlg[0.0], log_probs, DecodeConfig())
    assert plain.word_ids == lang.word_ids(["THE", "CAT", "SAT"]) and plain.score != pytest.approx(penalised.score)
    eager = decode_ctc(hlg[0.0], log_probs, DecodeConfig(ctc_blank_penalty=20.0))
    assert sum(t != 0 for t in eager.frame_tokens) > sum(t != 0 for t in plain.frame_tokens)
    shy = decode_ctc(hlg[0.0], log_probs, DecodeConfig(ctc_blank_penalty=-40.0))
    assert len(shy.word_ids) < 3
    batch = decode_ctc_batch(hlg[0.0], {"u": log_probs}, DecodeConfig(ctc_acoustic_scale=0.7, ctc_blank_penalty=1.5))
    assert batch.decoded["u"].frame_tokens == by_hand.frame_tokens
