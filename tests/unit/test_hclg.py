"""HCLG construction on a real lang directory, for a monophone and a triphone tree."""

from __future__ import annotations

import json

import pytest

from asr_kd.config import DecodeConfig, GraphScales
from asr_kd.decode.fst_utils import input_labels, num_arcs
from asr_kd.decode.hclg import check_hclg, compile_hclg, compose_lg, is_deterministic_ish, load_hclg, make_hclg
from asr_kd.decode.hybrid import decode_posteriors
from asr_kd.errors import ConfigError, DataError
from asr_kd.kaldi import kaldifst

from decode_toy import DEV, UNSEEN, make_lang, monophone_model, oracle_alignment, oracle_log_posteriors, triphone_model, uniform_log_priors


@pytest.fixture(scope="module")
def lang(tmp_path_factory):
    return make_lang(tmp_path_factory.mktemp("hclg"))


@pytest.fixture(scope="module", params=["monophone", "triphone"])
def model(request, lang):
    ctx_dep, tm = monophone_model(lang) if request.param == "monophone" else triphone_model(lang)
    hclg, info = compile_hclg(lang.load_fst("L_disambig"), lang.load_fst("G"), lang.disambig_phone_ids, ctx_dep, tm)
    return ctx_dep, tm, hclg, info


def test_hclg_input_labels_are_transition_ids(lang, model) -> None:
    ctx_dep, tm, hclg, info = model
    labels = input_labels(hclg) - {0}
    # Only transition-ids: the disambiguation transition-ids (numbered above num_transition_ids)
    # are gone, and every phone of every word the LM knows is reachable.
    assert labels <= set(range(1, tm.num_transition_ids + 1))
    used = {lang.phones.id(p) for w, prons in lang.lexicon.items() if w != lang.oov_word for pron in prons for p in pron}
    assert {tm.transition_id_to_phone(t) for t in labels} == used | {lang.phones.id(lang.optional_silence)}
    assert any(tm.is_self_loop(t) for t in labels)
    assert info.settings["disambig_arcs_removed"] > 0
    check_hclg(hclg, tm)
    assert is_deterministic_ish(hclg)
    assert info.num_states == hclg.num_states and info.num_arcs == num_arcs(hclg)
    assert info.settings["context_width"] == ctx_dep.context_width


def test_hclg_outputs_words_only(lang, model) -> None:
    _, _, hclg, _ = model
    olabels = {a.olabel for s in kaldifst.StateIterator(hclg) for a in kaldifst.ArcIterator(hclg, s)} - {0}
    real_words = {lang.words.id(w) for w in lang.lexicon}
    assert olabels and olabels <= real_words


@pytest.mark.parametrize("sentence", ["the cat sat", DEV[0], UNSEEN])
def test_oracle_posteriors_decode_to_transcript(lang, model, sentence) -> None:
    ctx_dep, tm, hclg, _ = model
    words = sentence.upper().split()
    ali = oracle_alignment(lang, ctx_dep, tm, words, num_frames=12 * len(words) + 10, seed=len(words))
    d = decode_posteriors(hclg, tm, oracle_log_posteriors(tm, ali), uniform_log_priors(tm), DecodeConfig())
    word_ids, alignment, score = d.word_ids, d.alignment, d.score
    assert word_ids == lang.word_ids(words)
    assert alignment == ali  # the oracle path is the best path, frame for frame
    assert isinstance(score, float)


def test_language_model_resolves_homophones(lang, model) -> None:
    # RED and READ share R EH D; only "THE RED DOG" is in the LM's training text.
    ctx_dep, tm, hclg, _ = model
    words = ["THE", "RED", "DOG", "SAT"]
    ali = oracle_alignment(lang, ctx_dep, tm, words, num_frames=60, seed=3)
    result = decode_posteriors(hclg, tm, oracle_log_posteriors(tm, ali), uniform_log_priors(tm), DecodeConfig())
    assert result.word_ids == lang.word_ids(words)


def test_make_hclg_writes_graph_and_info(lang, tmp_path) -> None:
    ctx_dep, tm = monophone_model(lang)
    info = make_hclg(lang, ctx_dep, tm, tmp_path / "graph")
    hclg = load_hclg(tmp_path / "graph")
    assert hclg.num_states == info.num_states and num_arcs(hclg) == info.num_arcs
    saved = json.loads((tmp_path / "graph" / "hclg.json").read_text())
    assert saved["num_states"] == info.num_states and set(saved["intermediate"]) == {"LG", "CLG", "Ha", "HCLGa"}
    assert (tmp_path / "graph" / "words.txt").read_text() == lang.words.to_text()
    with pytest.raises(DataError, match="does not exist; build it with `asr-kd make-hclg`"):
        load_hclg(tmp_path / "nowhere")


def test_a_decode_config_with_other_graph_scales_is_refused(lang, tmp_path) -> None:
    """The transition and self-loop scales are baked into HCLG when it is built: decoding it with a
    config that asks for others is refused, not silently ignored (issue 10: one set of graph scales)."""
    ctx_dep, tm = monophone_model(lang)
    make_hclg(lang, ctx_dep, tm, tmp_path / "graph", GraphScales(transition=1.0, self_loop=0.1))
    same = DecodeConfig(transition_scale=1.0, self_loop_scale=0.1, acoustic_scale=0.2)  # the acoustic scale is the decoder's own
    assert load_hclg(tmp_path / "graph", same.graph_scales).num_states > 0
    with pytest.raises(ConfigError, match=r"built with self-loop scale 0\.1, the decode config asks for decode\.self_loop_scale 1; "):
        load_hclg(tmp_path / "graph", DecodeConfig(transition_scale=1.0, self_loop_scale=1.0).graph_scales)
    with pytest.raises(ConfigError, match=r"built with transition scale 1, the decode config asks for decode\.transition_scale 0\.5"):
        load_hclg(tmp_path / "graph" / "HCLG.fst", DecodeConfig(transition_scale=0.5, self_loop_scale=0.1).graph_scales)
    assert load_hclg(tmp_path / "graph").num_states > 0  # no scales given: nothing checked


def test_graph_for_another_model_is_rejected(lang) -> None:
    ctx_dep, tm = triphone_model(lang)
    hclg, _ = compile_hclg(lang.load_fst("L_disambig"), lang.load_fst("G"), lang.disambig_phone_ids, ctx_dep, tm)
    _, mono_tm = monophone_model(lang)
    assert mono_tm.num_transition_ids < tm.num_transition_ids
    with pytest.raises(DataError, match="rebuild the graph with this model"):
        check_hclg(hclg, mono_tm)


def test_lg_with_disjoint_grammar_is_an_error(lang) -> None:
    # A grammar over a word id that L never outputs: L o G is empty.
    G = kaldifst.StdVectorFst()
    s0, s1 = G.add_state(), G.add_state()
    G.start = s0
    G.set_final(s1, 0.0)
    G.add_arc(s0, kaldifst.StdArc(lang.words.max_id() + 5, lang.words.max_id() + 5, 0.0, s1))
    with pytest.raises(DataError, match="L and G share no word"):
        compose_lg(lang.load_fst("L_disambig"), G)
