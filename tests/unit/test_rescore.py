"""Lattice rescoring with a larger LM over a real HCLG (the toy lang of decode_toy, its trained
trigram as the first pass's G): same LM -> same answer, exact LM cost differences, a better LM
fixes homophone errors, and bad LM files give one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from decode_toy import make_lang, monophone_model, oracle_alignment, oracle_log_posteriors, uniform_log_priors

from asr_kd.config import DecodeConfig
from asr_kd.decode.hclg import compile_hclg
from asr_kd.decode.hybrid import decode_posteriors_batch, hybrid_decodable, tid_to_pdf
from asr_kd.decode.rescore import (ArpaLm, FstLm, LatticeRescorer, RescoreConfig, graph_lm, lattice_decoder, load_rescoring_lm,
                                   make_rescorer)
from asr_kd.errors import ConfigError, DataError
from asr_kd.kaldi import kaldi_decoder
from asr_kd.lang.lang_dir import WORD_DISAMBIG
from asr_kd.lang.lm import compile_grammar_fst, train_lang_lm, train_ngram_lm
from asr_kd.metrics.wer import compute_wer

# READ and RED are homophones (R EH D): the audio is made from RED, so only an LM can say READ.
# The toy trigram saw "THE RED DOG" and "A RED CAT", never "THE READ" or "A READ".
REFS = {"u1": "THE READ CAT SAT", "u2": "A DOG READ ABOUT A READ CAT", "u3": "THE CAT SAT"}
SPOKEN = {"u1": "THE RED CAT SAT", "u2": "A DOG RED ABOUT A RED CAT", "u3": "THE CAT SAT"}
CONFIG = DecodeConfig(lattice_beam=5.0)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("rescore")
    lang = make_lang(root)
    ctx_dep, tm = monophone_model(lang)
    hclg, _ = compile_hclg(lang.load_fst("L_disambig"), lang.load_fst("G"), lang.disambig_phone_ids, ctx_dep, tm)
    posteriors = {}
    for k, (utt, text) in enumerate(SPOKEN.items()):
        ali = oracle_alignment(lang, ctx_dep, tm, text.split(), num_frames=15 * len(text.split()) + 10, seed=k)
        posteriors[utt] = oracle_log_posteriors(tm, ali, low=-8.0)
    # The larger LM: a 4-gram on the first pass's text plus the references, five times over (with
    # one copy, Kneser-Ney on a dozen sentences still prefers the RED sentences).
    refs_file = root / "refs.txt"
    refs_file.write_text("".join(f"{s}\n" for s in REFS.values()) * 5)
    train_lang_lm(lang.lang_dir, 4, root / "4gram.arpa", extra_text=refs_file)
    return root, lang, tm, hclg, posteriors


def _decodable(tm, x):
    return hybrid_decodable(x, uniform_log_priors(tm), tid_to_pdf(tm), CONFIG.acoustic_scale, "utt", kaldi_decoder.DecodableCtc)


def test_same_lm_returns_the_first_pass_best_path_and_score(toy) -> None:
    root, lang, tm, hclg, posteriors = toy
    old = graph_lm(lang)
    same = load_rescoring_lm(RescoreConfig(str(lang.lang_dir / "lm" / "lm.arpa"), method="fst"), lang, old, root)
    rescorer = LatticeRescorer(hclg, CONFIG, RescoreConfig("unused", method="fst"), old, same)
    first = decode_posteriors_batch(hclg, tm, posteriors, uniform_log_priors(tm), CONFIG)  # FasterDecoder, no lattice
    for utt, x in posteriors.items():
        lattice, hyps = rescorer.hypotheses(_decodable(tm, x), utt)
        assert len(hyps) >= 2  # homophones and optional silences: there is something to choose from
        for h in hyps:
            assert h.rescored_cost == pytest.approx(h.cost, abs=1e-4)
        # The lattice's best is the first pass's best path, words and score (acoustic scale and
        # its unscaling round trip included).
        decoder = lattice_decoder(hclg, CONFIG)
        decoder.decode(_decodable(tm, x))
        assert list(hyps[0].word_ids) == first.decoded[utt].word_ids
        assert -hyps[0].cost == pytest.approx(first.decoded[utt].score, abs=1e-2)
        rescored = rescorer.decode(_decodable(tm, x), utt)
        assert rescored.word_ids == first.decoded[utt].word_ids == rescored.first_pass
        assert rescored.score == pytest.approx(first.decoded[utt].score, abs=1e-2)
        assert len(rescored.alignment) == x.shape[0]
        assert lattice.num_arcs > 0


def test_another_lm_changes_each_path_by_exactly_its_lm_cost_difference(toy) -> None:
    """Rescoring the lattice of HCLG(G1) with G2 gives each word sequence the cost that decoding
    with HCLG(G2) gives it: the old LM's part is removed exactly."""
    root, lang, tm, hclg, posteriors = toy
    other_arpa = root / "other.arpa"
    train_ngram_lm([*(s for s in REFS.values()), *(lang.lang_dir / "lm" / "train.txt").read_text().splitlines()], 2, other_arpa)
    g2 = compile_grammar_fst(other_arpa, lang.lang_dir / "words.txt")
    ctx_dep, _ = monophone_model(lang)
    hclg2, _ = compile_hclg(lang.load_fst("L_disambig"), g2, lang.disambig_phone_ids, ctx_dep, tm)
    new = FstLm(g2, lang.words.id(WORD_DISAMBIG))
    rescored = LatticeRescorer(hclg, CONFIG, RescoreConfig("unused", method="fst"), graph_lm(lang), new)
    direct = LatticeRescorer(hclg2, CONFIG, RescoreConfig("unused", method="fst"), new, new)
    compared = 0
    for utt, x in posteriors.items():
        _, via_rescoring = rescored.hypotheses(_decodable(tm, x), utt)
        _, via_graph = direct.hypotheses(_decodable(tm, x), utt)
        costs2 = {h.word_ids: h.cost for h in via_graph}
        for h in via_rescoring:
            assert h.rescored_cost - h.cost == pytest.approx(h.new_lm_cost - h.old_lm_cost, abs=1e-9)
            if h.word_ids in costs2:
                assert h.rescored_cost == pytest.approx(costs2[h.word_ids], abs=1e-2)  # float32 sums in the decoder
                compared += 1
        assert any(h.old_lm_cost != pytest.approx(h.new_lm_cost, abs=0.1) for h in via_rescoring)  # the LMs differ
    assert compared >= 6


def test_exact_arpa_scores_are_minus_ln_p(toy) -> None:
    root, lang, _, _, _ = toy
    words = [w for w in lang.words.names() if w not in ("<eps>", "#0", "<s>", "</s>")]
    arpa = root / "uniform.arpa"
    # Every word and </s> at log10 p = -1: a sentence of n words costs (n + 1) ln 10.
    arpa.write_text(f"\\data\\\nngram 1={len(words) + 2}\n\n\\1-grams:\n-99\t<s>\n-1\t</s>\n" + "".join(f"-1\t{w}\n" for w in words) + "\n\\end\\\n")
    ids = lang.word_ids("THE CAT SAT".split())
    assert ArpaLm(arpa, lang).cost(ids) == pytest.approx(4 * math.log(10), rel=1e-6)
    fst_lm = load_rescoring_lm(RescoreConfig(str(arpa), method="fst"), lang, graph_lm(lang), root)
    assert fst_lm.cost(ids) == pytest.approx(4 * math.log(10), rel=1e-5)


@pytest.mark.parametrize("method", ["arpa", "fst", "const"])
def test_an_lm_that_knows_the_references_lowers_the_wer(toy, method) -> None:
    root, lang, tm, hclg, posteriors = toy
    rescorer = make_rescorer(hclg, lang, CONFIG, RescoreConfig(str(root / "4gram.arpa"), method=method), root)
    result = decode_posteriors_batch(hclg, tm, posteriors, uniform_log_priors(tm), CONFIG, utterance_decoder=rescorer)
    assert not result.failed
    first = compute_wer(REFS, result.first_pass_texts(lang.words))
    rescored = compute_wer(REFS, result.texts(lang.words))
    assert first.errors >= 2  # READ after THE and A is heard as RED by the first pass (after DOG it was trained)
    assert rescored.errors == 0
    for utt, d in result.decoded.items():
        assert len(d.alignment) == posteriors[utt].shape[0]


def test_bad_rescoring_lms_give_one_line_errors(toy) -> None:
    root, lang, tm, hclg, _ = toy
    with pytest.raises(DataError, match=r"rescoring ARPA LM .*missing\.arpa does not exist; build one with `asr-kd train-lm`"):
        make_rescorer(hclg, lang, CONFIG, RescoreConfig(str(root / "missing.arpa")), root)
    small = root / "small.arpa"
    train_ngram_lm(["THE CAT SAT"], 2, small)  # lacks DOG, ABOUT, ... of the first-pass graph
    with pytest.raises(DataError, match=r"small\.arpa has no unigram for \d+ of the \d+ words the first-pass graph can output \(e\.g\. A, ABOUT"):
        make_rescorer(hclg, lang, CONFIG, RescoreConfig(str(small)), root)
    lower = root / "lower.arpa"
    lower.write_text((root / "4gram.arpa").read_text().replace("THE", "the"))
    with pytest.raises(DataError, match="has no unigram for 1 of"):
        make_rescorer(hclg, lang, CONFIG, RescoreConfig(str(lower)), root)
    with pytest.raises(ConfigError, match="rescore method must be one of arpa, fst, const, got 'lattice'"):
        RescoreConfig(str(small), method="lattice")
    with pytest.raises(ConfigError, match="LM order must be >= 1, got 0"):
        train_lang_lm(lang.lang_dir, 0, root / "x.arpa")


def test_train_lang_lm_writes_a_4gram_over_the_lang_vocabulary(toy) -> None:
    root, lang, _, _, _ = toy
    text = (root / "4gram.arpa").read_text()
    header = dict(line.split("=") for line in text.split("\n\n")[0].splitlines()[1:])
    assert set(header) == {"ngram 1", "ngram 2", "ngram 3", "ngram 4"} and int(header["ngram 4"]) > 0
    # Its words are the lang's: the extra text's words were all in words.txt.
    unigrams = {line.split("\t")[1] for line in text.split("\\1-grams:\n")[1].split("\n\n")[0].splitlines()}
    assert unigrams - {"<s>", "</s>"} <= set(lang.words.names())
    assert np.isfinite(ArpaLm(root / "4gram.arpa", lang).cost(lang.word_ids(REFS["u2"].split())))


def test_train_lm_command_and_paired_wer_difference(toy, tmp_path, capsys) -> None:
    from asr_kd.bin.cli import main
    from asr_kd.metrics.paired import wer_difference

    _, lang, _, _, _ = toy
    text = tmp_path / "extra.txt"
    text.write_text("the read cat sat\nthe zebra sat\n")  # ZEBRA is outside words.txt: it becomes the OOV word
    assert main(["train-lm", "--lang-dir", str(lang.lang_dir), "--order", "3", "--out", str(tmp_path / "3gram.arpa"), "--text", str(text)]) == 0
    assert capsys.readouterr().out.strip() == f"{tmp_path / '3gram.arpa'}: 3-gram LM on {len(_train_lines(lang)) + 2} sentences"
    arpa = (tmp_path / "3gram.arpa").read_text()
    assert "\t<UNK>" in arpa and "ZEBRA" not in arpa
    first = compute_wer(REFS, {u: SPOKEN[u] for u in REFS})
    rescored = compute_wer(REFS, dict(REFS))
    diff = wer_difference(first, rescored)
    assert diff.value == pytest.approx(-3 / 14) and diff.low <= diff.value <= diff.high <= 0  # 3 utterances: a resample may hold only u3


def _train_lines(lang) -> list[str]:
    return (lang.lang_dir / "lm" / "train.txt").read_text().splitlines()


def test_const_lm_scores_every_sentence_as_the_arpa_lm(toy, tmp_path) -> None:
    """The memory-mapped const LM gives kaldingram's back-off costs: for the trained 4-gram, on
    the references, the first pass's text and random word strings (unseen n-grams, so every
    back-off path is taken)."""
    from asr_kd.lang.const_lm import ConstArpaLm, build_const_lm

    root, lang, _, _, _ = toy
    arpa = root / "4gram.arpa"
    info = build_const_lm(arpa, lang.lang_dir / "words.txt", tmp_path / "const")
    header = dict(line.split("=") for line in arpa.read_text().split("\n\n")[0].splitlines()[1:])
    assert info.order == 4 and info.kept == {n: int(header[f"ngram {n}"]) for n in range(1, 5)}
    assert info.dropped == {1: 0, 2: 0, 3: 0, 4: 0} and info.bytes_per_ngram == {1: 8, 2: 16, 3: 16, 4: 12}
    exact, const = ArpaLm(arpa, lang), ConstArpaLm(tmp_path / "const", lang.words)
    words = [w for w in lang.words.names() if w not in ("<eps>", "#0", "<s>", "</s>")]
    rng = np.random.default_rng(0)
    sentences = [s.split() for s in (*REFS.values(), *_train_lines(lang))]
    sentences += [list(rng.choice(words, size=rng.integers(1, 9))) for _ in range(200)]
    for s in sentences:
        ids = lang.word_ids(s)
        assert const.cost(ids) == pytest.approx(exact.cost(ids), abs=1e-4), s
    # The back-off paths are exercised: most random strings' trigrams are not in the LM.
    unseen = sum(const._index(lang.word_ids(s[i:i + 3])) < 0 for s in sentences[-200:] for i in range(len(s) - 2))
    assert unseen > 300


def test_const_lm_refuses_broken_arpa_files_and_other_vocabularies(toy, tmp_path) -> None:
    from asr_kd.lang.const_lm import build_const_lm, read_const_lm_info

    root, lang, tm, hclg, _ = toy
    words_txt = lang.lang_dir / "words.txt"
    text = (root / "4gram.arpa").read_text()
    # A trigram whose bigram prefix is missing: not a back-off LM.
    bigrams = text.split("\\2-grams:\n")[1].split("\n\n")[0].splitlines()
    trigram = text.split("\\3-grams:\n")[1].splitlines()[0]
    prefix = " ".join(trigram.split("\t")[1].split()[:2])
    orphan = text.replace(next(b for b in bigrams if b.split("\t")[1] == prefix) + "\n", "")
    (tmp_path / "orphan.arpa").write_text(orphan)
    with pytest.raises(DataError, match=rf"orphan\.arpa: the 3-gram '{prefix} \S+' has no 2-gram prefix in the LM"):
        build_const_lm(tmp_path / "orphan.arpa", words_txt, tmp_path / "c1")
    # A failed rebuild leaves the LM that was there intact (and nothing half-written beside it).
    good = build_const_lm(root / "4gram.arpa", words_txt, tmp_path / "c1")
    keys = np.load(tmp_path / "c1" / "order3_keys.npy")
    with pytest.raises(DataError, match="has no 2-gram prefix"):
        build_const_lm(tmp_path / "orphan.arpa", words_txt, tmp_path / "c1")
    assert read_const_lm_info(tmp_path / "c1") == good and np.array_equal(np.load(tmp_path / "c1" / "order3_keys.npy"), keys)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("c1")) == ["c1"]
    (tmp_path / "nan.arpa").write_text(text.replace("\\1-grams:\n", "\\1-grams:\nabc\tTHE\n", 1))
    with pytest.raises(DataError, match=r"nan\.arpa: the 1-gram line 'abc THE' has a log-probability or back-off that is not a number"):
        build_const_lm(tmp_path / "nan.arpa", words_txt, tmp_path / "c5")
    (tmp_path / "c5").mkdir()  # the failed build left nothing; an empty folder is what a user might pass
    with pytest.raises(DataError, match=r"is a folder without a const LM of this version \(const_lm\.json\); build one with `asr-kd arpa-to-const`"):
        make_rescorer(hclg, lang, CONFIG, RescoreConfig(str(tmp_path / "c5"), method="const"), tmp_path)
    with pytest.raises(DataError, match=r"c1 is a const LM folder; a const LM folder needs --rescore-method const"):
        make_rescorer(hclg, lang, CONFIG, RescoreConfig(str(tmp_path / "c1")), tmp_path)
    (tmp_path / "words.arpa").write_text("just some words\n")
    with pytest.raises(DataError, match=r"words\.arpa is not an ARPA language model"):
        build_const_lm(tmp_path / "words.arpa", words_txt, tmp_path / "c2")
    # Words outside words.txt are dropped and counted, per order.
    (tmp_path / "zebra.arpa").write_text(text.replace("\\2-grams:\n", "\\2-grams:\n-1.5\tZEBRA THE\n").replace(
        "\\1-grams:\n", "\\1-grams:\n-3.0\tZEBRA\t-0.2\n"))
    info = build_const_lm(tmp_path / "zebra.arpa", words_txt, tmp_path / "c3")
    assert info.dropped[1] == 1 and info.dropped[2] == 1 and info.dropped[3] == 0
    # A const LM folder made over another words.txt is refused when rescoring.
    other = tmp_path / "other_words.txt"
    other.write_text(words_txt.read_text() + f"ZEBRA {lang.words.max_id() + 1}\n")
    build_const_lm(root / "4gram.arpa", other, tmp_path / "c4")
    with pytest.raises(DataError, match=r"const LM .*c4 was built over another words\.txt"):
        make_rescorer(hclg, lang, CONFIG, RescoreConfig(str(tmp_path / "c4"), method="const"), tmp_path)


def test_const_lm_from_an_arpa_file_is_built_once_and_again_when_the_file_changes(toy, tmp_path, capsys) -> None:
    from asr_kd.bin.cli import main
    from asr_kd.lang.const_lm import read_const_lm_info

    root, lang, tm, hclg, _ = toy
    arpa = tmp_path / "lm.arpa"
    arpa.write_text((root / "4gram.arpa").read_text())
    make_rescorer(hclg, lang, CONFIG, RescoreConfig(str(arpa), method="const"), tmp_path / "work")
    meta = tmp_path / "work" / "const_lm" / "const_lm.json"
    built = (meta.stat().st_ino, meta.stat().st_mtime_ns)
    make_rescorer(hclg, lang, CONFIG, RescoreConfig(str(arpa), method="const"), tmp_path / "work")
    assert (meta.stat().st_ino, meta.stat().st_mtime_ns) == built  # the same content: reused, not written again
    train_lang_lm(lang.lang_dir, 2, arpa)
    make_rescorer(hclg, lang, CONFIG, RescoreConfig(str(arpa), method="const"), tmp_path / "work")
    assert read_const_lm_info(tmp_path / "work" / "const_lm").order == 2  # another LM: built again
    # The command writes a folder that rescoring reads as it is.
    assert main(["arpa-to-const", str(root / "4gram.arpa"), "--lang-dir", str(lang.lang_dir), "--out", str(tmp_path / "cmd")]) == 0
    assert "4-gram const LM" in capsys.readouterr().out
    make_rescorer(hclg, lang, CONFIG, RescoreConfig(str(tmp_path / "cmd"), method="const"), tmp_path / "unused")
