"""Decoding graphs built step by step in child processes (asr_kd.decode.graph_build) on a few
hundred CMUdict words: the same HCLG as the one-shot builder, real HLG, measured steps."""

from __future__ import annotations

import json

import pytest

from asr_kd.config import LangConfig
from asr_kd.decode.fst_utils import input_labels, num_arcs, read_fst
from asr_kd.decode.graph_build import GraphBuild, build_graphs, check_model_phones, choose_words, random_split_tree, system_with_tree
from asr_kd.decode.hclg import compile_hclg
from asr_kd.errors import DataError
from asr_kd.gmm.system import GmmSystem
from asr_kd.gmm.topology import make_topology, topology_text
from asr_kd.gmm.tree import monophone_tree
from asr_kd.kaldi import kaldifst, khg
from asr_kd.lang.lang_dir import Lang
from asr_kd.lang.lexicon import cmudict_words, normalize_word
from asr_kd.lang.lm import arpa_ngram_counts, arpa_unigrams, train_ngram_lm
from asr_kd.lang.synthetic_text import SyntheticTextConfig

NUM_WORDS = 300
HCLG_STEPS = ["LG", "CLG", "Ha", "HCLGa", "HCLG (self-loops)"]
HLG_STEPS = ["L (tokens)", "LG (tokens)", "HLG"]


def _triphone_system(lang: Lang) -> GmmSystem:
    """A context-width-3 tree with one leaf per (phone, pdf-class), one Gaussian per pdf."""
    text = topology_text(lang.nonsilence_phone_ids, lang.silence_phone_ids)
    topo = make_topology(text)
    num_classes = {p: topo.num_pdf_classes(p) for p in topo.phones}
    return system_with_tree(text, random_split_tree(num_classes, lang.real_phone_ids, depth=0))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("graph_build")
    words = choose_words(cmudict_words(), NUM_WORDS, seed=1)
    build = GraphBuild(work / "graphs", words, SyntheticTextConfig(num_sentences=400, seed=1), work / "tri.npz", LangConfig())
    made = {}

    def on_step(record):
        seen.append(record)
        if record.name.startswith("lexicon"):  # the test's model is made on the phones of the lang just built
            made["lang"] = Lang.load(build.path("lang"))
            made["system"] = _triphone_system(made["lang"])
            made["system"].save(build.model)

    seen = []
    records = build_graphs(build, on_step=on_step)
    lang, system = made["lang"], made["system"]
    return build, lang, system, records, seen


def test_every_step_is_measured_in_order(built) -> None:
    _, _, _, records, seen = built
    assert [r.name for r in records] == ["lexicon + L_disambig", "LM (synthetic text + KN)", "G"] + HLG_STEPS + HCLG_STEPS
    assert seen == records
    for r in records:
        assert r.usage.peak_rss_mb > 0 and r.usage.cpu_s >= 0


def test_lexicon_and_lm_facts(built) -> None:
    build, lang, _, records, _ = built
    lexicon, lm = records[0].output, records[1].output
    assert lexicon["words"] == NUM_WORDS + 1  # and <UNK>
    assert lexicon["prons"] == sum(len(p) for p in lang.lexicon.values()) >= NUM_WORDS
    assert lexicon["disambig"] == len(lang.disambig_phones)
    counts = arpa_ngram_counts(build.path("lm.arpa"))
    assert lm["ngrams"] == {str(n): c for n, c in counts.items()} and set(counts) == {1, 2, 3}
    assert lm["sentences"] == 400 and 400 * 4 <= lm["tokens"] <= 400 * 24


def test_step_outputs_report_the_files_they_wrote(built) -> None:
    build, _, _, records, _ = built
    files = {"G": "G.fst", "LG": "LG.fst", "CLG": "CLG.fst", "HCLG (self-loops)": "HCLG.fst", "HLG": "HLG.fst"}
    by_name = {r.name: r.output for r in records}
    for name, file in files.items():
        fst = read_fst(build.path(file))
        assert (by_name[name]["states"], by_name[name]["arcs"], by_name[name]["bytes"]) == (fst.num_states, num_arcs(fst), build.path(file).stat().st_size)


def test_steps_make_the_same_hclg_as_the_one_shot_builder(built) -> None:
    build, lang, system, _, _ = built
    hclg = read_fst(build.path("HCLG.fst"))
    reference, info = compile_hclg(read_fst(build.path("lang/L_disambig.fst")), read_fst(build.path("G.fst")), lang.disambig_phone_ids,
                                   system.ctx_dep, system.tm)
    assert (hclg.num_states, num_arcs(hclg)) == (reference.num_states, num_arcs(reference)) == (info.num_states, info.num_arcs)
    assert input_labels(hclg) - {0} <= set(range(1, system.tm.num_transition_ids + 1))
    assert json.loads(build.path("ilabels.json").read_text())  # the ilabel table went from CLG's child to Ha's


def test_hlg_labels_are_phone_tokens(built) -> None:
    build, lang, _, _, _ = built
    hlg = read_fst(build.path("HLG.fst"))
    # token + 1 for every real phone and the blank (token 0 -> label 1); no disambiguation label left.
    assert input_labels(hlg) - {0} <= {1} | {p + 1 for p in lang.real_phone_ids}


def test_a_model_on_other_phones_is_refused(built, tmp_path) -> None:
    _, lang, _, _, _ = built
    # A real transition model whose topology lacks the lang's last phone.
    topo = make_topology(topology_text(lang.nonsilence_phone_ids[:-1], lang.silence_phone_ids))
    tree = monophone_tree({p: topo.num_pdf_classes(p) for p in topo.phones})
    other = khg.TransitionModel(ctx_dep=tree.to_context_dependency(), hmm_topo=topo)
    with pytest.raises(DataError, match=r"m\.npz has phones .* build the lang with the phone set"):
        check_model_phones(lang, other, tmp_path / "m.npz")


def test_choose_words_is_a_seeded_subset() -> None:
    vocab = [f"W{i}" for i in range(100)]
    picked = choose_words(vocab, 10, seed=5)
    assert len(picked) == 10 and set(picked) <= set(vocab) and list(picked) == sorted(picked)
    assert picked == choose_words(vocab, 10, seed=5) != choose_words(vocab, 10, seed=6)
    assert choose_words(vocab, 0) == tuple(sorted(vocab)) == choose_words(vocab, 500)


def test_arpa_ngram_counts_reads_the_header_only(tmp_path) -> None:
    import gzip

    arpa = tmp_path / "lm.arpa.gz"
    with gzip.open(arpa, "wt") as f:
        f.write("\\data\\\nngram 1=3\nngram 2=1\n\n\\1-grams:\n-1.0\t<s>\n-1.0\t</s>\n-1.0\tA\n\n\\2-grams:\n-0.5\t<s> A\n\n\\end\\\n")
    assert arpa_ngram_counts(arpa) == {1: 3, 2: 1}
    text = tmp_path / "words.txt"
    text.write_text("HELLO 1\nWORLD 2\n")
    with pytest.raises(DataError) as info:
        arpa_ngram_counts(text)
    assert str(info.value) == f"{text} has no '\\data\\' header with 'ngram N=count' lines; pass an ARPA language model"


def test_cmudict_words_are_the_whole_dictionary_in_lexicon_spelling() -> None:
    words = cmudict_words()
    assert len(words) > 120_000 and words == sorted(words)
    assert "HELLO" in words and all(w == w.upper() for w in words)


def test_random_split_tree_has_the_leaves_asked_for(built) -> None:
    _, lang, system, _, _ = built
    topo = make_topology(system.topology_text)
    num_classes = {p: topo.num_pdf_classes(p) for p in topo.phones}
    tree = random_split_tree(num_classes, lang.real_phone_ids, depth=3, seed=2)
    roots = sum(num_classes.values())
    assert tree.num_pdfs == 8 * roots == 8 * system.tm.num_pdfs  # the depth-0 tree has one leaf per root
    bigger = system_with_tree(system.topology_text, tree)
    assert bigger.tm.num_pdfs == tree.num_pdfs and bigger.am.num_pdfs == tree.num_pdfs
    assert bigger.ctx_dep.context_width == 3 and bigger.ctx_dep.central_position == 1


def test_an_existing_arpa_lm_and_lexicon_file(tmp_path) -> None:
    arpa = tmp_path / "tg.arpa"
    train_ngram_lm(["the cat sat", "the zyxword sat on the mat", "qqqnopron the cat"], 3, arpa)
    lexicon = tmp_path / "librispeech-lexicon.txt"
    lexicon.write_text("ZYXWORD Z IH1 K S\nCAT K AE1 T\n")
    words = tuple(w for w in arpa_unigrams(arpa, normalize_word) if w not in ("<UNK>",))
    build = GraphBuild(tmp_path / "g", words, None, tmp_path / "unused.npz", LangConfig(), arpa=arpa, lexicon_file=lexicon)
    records = build_graphs(build, hclg=False, hlg=False)
    assert [r.name for r in records] == ["lexicon + L_disambig", "LM (ARPA, restricted to the lexicon)", "G"]
    lang = Lang.load(build.path("lang"))
    assert lang.lexicon["ZYXWORD"] == [("Z", "IH", "K", "S")]  # the file's pronunciation, stress removed
    assert "QQQNOPRON" not in lang.lexicon  # neither the file nor CMUdict has it, and there is no G2P
    lm = records[1].output
    assert lm["lm_words_dropped"] == 1 and lm["ngrams"] == {str(n): c for n, c in arpa_ngram_counts(build.path("lm.arpa")).items()}
    G = read_fst(build.path("G.fst"))
    olabels = {a.olabel for s in kaldifst.StateIterator(G) for a in kaldifst.ArcIterator(G, s)}
    assert lang.words.id("ZYXWORD") in olabels and lang.words.id("CAT") in olabels
