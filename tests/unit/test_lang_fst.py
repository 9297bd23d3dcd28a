"""L.fst, L_disambig.fst and G.fst checked with kaldifst on a small prepared lang directory."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.config import LangConfig
from asr_kd.kaldi import kaldifst
from asr_kd.lang.lang_dir import Lang, make_phone_table, make_word_table
from asr_kd.lang.lexicon import add_disambig_symbols
from asr_kd.lang.lexicon_fst import make_lexicon_fst, make_lexicon_fst_disambig
from asr_kd.lang.lm import load_arpa, sentence_logprob10
from asr_kd.lang.prepare import prepare_lang

LEXICON = """\
A AH0
A EY1
ABOUT AH0 B AW1 T
CAT K AE1 T
DOG D AO1 G
READ R EH1 D
READ R IY1 D
RED R EH1 D
SAT S AE1 T
THE DH AH0
THE DH IY0
"""
TRAIN = ["the cat sat", "a dog read about the cat", "the red dog sat", "read about a red cat", "the cat sat"]
DEV = ["the dog read", "a cat sat about the red dog"]
SIL_PROB = 0.3


@pytest.fixture(scope="module")
def lang(tmp_path_factory) -> Lang:
    root = tmp_path_factory.mktemp("lang_fst")
    lexicon = root / "librispeech-lexicon.txt"
    lexicon.write_text(LEXICON)
    cfg = LangConfig(silence_prob=SIL_PROB)
    prepare_lang({"train": TRAIN, "dev": DEV}, root / "lang", cfg, lexicon, train_split="train", dev_split="dev")
    return Lang.load(root / "lang")


def paths(fst: kaldifst.StdVectorFst) -> list[tuple[tuple[int, ...], tuple[int, ...], float]]:
    """Return every successful path of an acyclic FST as (ilabels, olabels, cost), epsilons dropped."""
    out = []

    def visit(state: int, ilabels: tuple[int, ...], olabels: tuple[int, ...], cost: float, depth: int) -> None:
        assert depth < 200, "FST has a cycle"
        final = fst.final(state).value
        if math.isfinite(final):
            out.append((ilabels, olabels, cost + final))
        for arc in kaldifst.ArcIterator(fst, state):
            visit(
                arc.nextstate,
                ilabels + ((arc.ilabel,) if arc.ilabel else ()),
                olabels + ((arc.olabel,) if arc.olabel else ()),
                cost + arc.weight.value,
                depth + 1,
            )

    visit(fst.start, (), (), 0.0, 0)
    return out


def phones_for_words(L: kaldifst.StdVectorFst, word_ids: list[int]) -> dict[tuple[int, ...], float]:
    """Return {phone-id sequence: cost} of every path of L whose output is ``word_ids``."""
    composed = kaldifst.compose(L, kaldifst.make_linear_acceptor(word_ids))
    result: dict[tuple[int, ...], float] = {}
    for ilabels, olabels, cost in paths(composed):
        assert list(olabels) == word_ids
        assert ilabels not in result, "two paths with the same phones"
        result[ilabels] = cost
    return result


def expected_phones(lang: Lang, words: list[str], sil_prob: float) -> dict[tuple[int, ...], float]:
    """Every pronunciation choice, with optional SIL before the first word and after each word."""
    sil = lang.phones.id("SIL")
    prons = lang.pronunciation_phone_ids(words)
    out = {}
    for choice in itertools.product(*prons):
        for sils in itertools.product([False, True], repeat=len(words) + 1):
            seq: list[int] = [sil] if sils[0] else []
            for pron, after in zip(choice, sils[1:]):
                seq += list(pron) + ([sil] if after else [])
            out[tuple(seq)] = sum(-math.log(sil_prob if s else 1.0 - sil_prob) for s in sils)
    return out


@pytest.mark.parametrize("sentence", ["CAT", "THE CAT SAT", "READ ABOUT A RED DOG", "<UNK> CAT"])
def test_words_through_L_give_their_pronunciations_with_optional_silence(lang: Lang, sentence: str) -> None:
    words = sentence.split()
    got = phones_for_words(lang.load_fst("L"), lang.word_ids(words))
    want = expected_phones(lang, words, SIL_PROB)
    assert got.keys() == want.keys()
    for seq, cost in want.items():
        assert got[seq] == pytest.approx(cost, abs=1e-4)


def test_silence_choices_form_a_distribution(lang: Lang) -> None:
    # For one fixed pronunciation the silence options' probabilities sum to one.
    got = phones_for_words(lang.load_fst("L"), lang.word_ids(["CAT", "DOG"]))
    assert sum(math.exp(-c) for c in got.values()) == pytest.approx(1.0, abs=1e-5)


def test_L_is_olabel_sorted_and_has_no_disambiguation_symbols(lang: Lang) -> None:
    L = lang.load_fst("L")
    assert L.is_olabel_sorted
    disambig = set(lang.disambig_phone_ids)
    ilabels = {a.ilabel for s in kaldifst.StateIterator(L) for a in kaldifst.ArcIterator(L, s)}
    assert not ilabels & disambig
    assert ilabels - {0} <= set(lang.real_phone_ids)


def test_L_without_silence(lang: Lang) -> None:
    entries = [(w, p) for w, prons in lang.lexicon.items() for p in prons]
    L = make_lexicon_fst(entries, lang.phones, lang.words, "SIL", silence_prob=0.0)
    got = phones_for_words(L, lang.word_ids(["THE", "CAT"]))
    want = {tuple(lang.phone_ids(t + ("K", "AE", "T"))): 0.0 for t in [("DH", "AH"), ("DH", "IY")]}
    assert got == pytest.approx(want)


def test_L_disambig_marks_homophones_and_prefixes(lang: Lang) -> None:
    L = lang.load_fst("L_disambig")
    assert L.is_olabel_sorted
    ph = lang.phone_ids
    read = phones_for_words(L, lang.word_ids(["READ"]))
    red = phones_for_words(L, lang.word_ids(["RED"]))
    no_sil = lambda d: {seq for seq in d if lang.phones.id("SIL") not in seq}  # noqa: E731
    # READ and RED share R EH D: each gets its own #k; READ's other pronunciation is unique.
    assert no_sil(read) == {tuple(ph(["R", "EH", "D", "#1"])), tuple(ph(["R", "IY", "D"]))}
    assert no_sil(red) == {tuple(ph(["R", "EH", "D", "#2"]))}
    # A (AH) is a prefix of ABOUT (AH B AW T).
    a = no_sil(phones_for_words(L, lang.word_ids(["A"])))
    assert tuple(ph(["AH", "#1"])) in a


def test_L_disambig_passes_word_disambig0_through(lang: Lang) -> None:
    L = lang.load_fst("L_disambig")
    w0, p0 = lang.words.id("#0"), lang.phones.id("#0")
    word_ids = lang.word_ids(["CAT"]) + [w0] + lang.word_ids(["DOG"])
    got = phones_for_words(L, word_ids)
    assert got, "L_disambig must accept the word #0 between words"
    cat = lang.phone_ids(["K", "AE", "T"])
    for seq in got:
        assert seq.count(p0) == 1
        i = seq.index(p0)
        assert list(seq[i - 3 : i]) == cat or list(seq[i - 4 : i - 1]) == cat  # after CAT, [SIL]


def test_G_arcs_and_symbols(lang: Lang) -> None:
    G = lang.load_fst("G")
    assert G.is_ilabel_sorted
    w0 = lang.words.id("#0")
    bos_eos = {lang.words.id("<s>"), lang.words.id("</s>")}
    n_backoff = 0
    for s in kaldifst.StateIterator(G):
        for a in kaldifst.ArcIterator(G, s):
            assert a.ilabel not in bos_eos and a.olabel not in bos_eos
            if a.ilabel == w0:
                assert a.olabel == 0
                n_backoff += 1
            else:
                assert a.ilabel == a.olabel and a.ilabel in lang.words.ids()
    assert n_backoff > 0


def walk_G(G: kaldifst.StdVectorFst, word_ids: list[int], backoff: int) -> float:
    """Score a sentence the way the ARPA model does: take the word's arc if the state has one,
    otherwise follow the back-off arc and try again; end with the final weight (backing off)."""

    def arcs(state: int) -> dict[int, tuple[float, int]]:
        return {a.ilabel: (a.weight.value, a.nextstate) for a in kaldifst.ArcIterator(G, state)}

    state, cost = G.start, 0.0
    for w in word_ids + [None]:
        while True:
            out = arcs(state)
            if w is None and math.isfinite(G.final(state).value):
                return cost + G.final(state).value
            if w is not None and w in out:
                cost += out[w][0]
                state = out[w][1]
                break
            assert backoff in out, f"no arc for word {w} and no back-off at state {state}"
            cost += out[backoff][0]
            state = out[backoff][1]
    raise AssertionError("unreachable")


@pytest.mark.parametrize("sentence", TRAIN[:3] + DEV)
def test_G_cost_matches_arpa(lang: Lang, sentence: str) -> None:
    words = sentence.upper().split()
    lm = load_arpa(lang.lang_dir / "lm" / "lm.arpa")
    arpa_cost = -math.log(10) * sentence_logprob10(lm, words)[0]
    G = lang.load_fst("G")
    assert walk_G(G, lang.word_ids(words), lang.words.id("#0")) == pytest.approx(arpa_cost, abs=1e-3)


def test_G_accepts_training_sentence(lang: Lang) -> None:
    # "<s> THE CAT SAT </s>" is in the training text, so every n-gram is explicit: G accepts the
    # words without any back-off arc, with the ARPA probability.
    words = ["THE", "CAT", "SAT"]
    G = lang.load_fst("G")
    composed = kaldifst.compose(kaldifst.make_linear_acceptor(lang.word_ids(words)), G)
    ok, _, olabels, weight = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(composed))
    assert ok and olabels == lang.word_ids(words)
    lm = load_arpa(lang.lang_dir / "lm" / "lm.arpa")
    assert weight.value == pytest.approx(-math.log(10) * sentence_logprob10(lm, words)[0], abs=1e-3)


def test_L_disambig_composes_with_G_and_determinizes(lang: Lang) -> None:
    LG = kaldifst.compose(lang.load_fst("L_disambig"), lang.load_fst("G"))
    assert LG.num_states > 0
    # determinize_star returns False when it ran to completion (True only if it hit max_states).
    assert kaldifst.determinize_star(LG, use_log=True) is False
    kaldifst.minimize_encoded(LG)
    ok, _, olabels, _ = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(LG))
    assert ok and all(o in lang.words.ids() for o in olabels)


def test_fst_files_round_trip(lang: Lang, tmp_path: Path) -> None:
    L = lang.load_fst("L")
    L.write(str(tmp_path / "copy.fst"))
    back = kaldifst.StdVectorFst.read(str(tmp_path / "copy.fst"))
    assert back.num_states == L.num_states and back.to_str() == L.to_str()


_pron = st.lists(st.sampled_from(["AA", "B", "K"]), min_size=1, max_size=3).map(tuple)


@settings(max_examples=25, deadline=None)
@given(
    lexicon=st.lists(st.lists(_pron, min_size=1, max_size=2, unique=True), min_size=1, max_size=5),
    sentence=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    sil_prob=st.sampled_from([0.0, 0.2, 0.5]),
)
def test_random_lexicons_L_and_L_disambig_agree(lexicon, sentence, sil_prob) -> None:
    words = [f"W{k}" for k in range(len(lexicon))]
    entries = [(w, p) for w, prons in zip(words, lexicon) for p in prons]
    disambiguated, max_d = add_disambig_symbols(entries)
    phones = make_phone_table(["SIL", "SPN"], ["AA", "B", "K"], max_d + 1)
    table = make_word_table(words)
    L = make_lexicon_fst(entries, phones, table, "SIL", sil_prob)
    Ld = make_lexicon_fst_disambig(disambiguated, phones, table, "SIL", sil_prob)
    sent = [words[k % len(words)] for k in sentence]
    ids = [table.id(w) for w in sent]
    # Expected: each pronunciation choice, SIL optional before the first and after every word.
    sil = phones.id("SIL")
    options = [[False, True] if sil_prob > 0 else [False]] * (len(sent) + 1)
    # A phone string may arise from several segmentations (W0 = AA | AA AA), so compare multisets
    # of (phones, rounded cost).
    want = []
    for choice in itertools.product(*(lexicon[words.index(w)] for w in sent)):
        for sils in itertools.product(*options):
            seq = [sil] if sils[0] else []
            for pron, after in zip(choice, sils[1:]):
                seq += [phones.id(p) for p in pron] + ([sil] if after else [])
            probs = [sil_prob if s else 1.0 - sil_prob for s in sils]
            want.append((tuple(seq), round(-sum(math.log(p) for p in probs), 3)))

    def got(fst, drop=frozenset()):
        composed = kaldifst.compose(fst, kaldifst.make_linear_acceptor(ids))
        out = []
        for ilabels, olabels, cost in paths(composed):
            assert list(olabels) == ids
            out.append((tuple(p for p in ilabels if p not in drop), round(cost, 3)))
        return sorted(out)

    assert got(L) == sorted(want)
    disambig = frozenset(phones.id(f"#{k}") for k in range(max_d + 1))
    assert got(Ld, disambig) == sorted(want)
