"""End to end on the GMM toy corpus: EM-trained monophone and triphone systems (our own
decision tree), HCLG for each, GMM decoding of held-out utterances, WER."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asr_kd.config import DecodeConfig, GmmConfig
from asr_kd.decode.gmm_decode import decode_gmm_batch
from asr_kd.decode.hclg import check_hclg, compile_hclg
from asr_kd.gmm.align import alignment_to_phones
from asr_kd.gmm.toy import DISAMBIG, LEXICON, graph_inputs, lexicon_fst, make_corpus
from asr_kd.gmm.train import train_monophone, train_triphone
from asr_kd.kaldi import kaldifst, khg
from asr_kd.metrics.wer import compute_wer

MONO = dict(mono_num_iters=10, mono_realign_iters=(1, 2, 3, 4, 5, 6, 7, 8), mono_total_gauss=60, mono_max_iter_inc=6)
TRI = dict(tri_num_iters=8, tri_realign_iters=(2, 4, 6), tri_total_gauss=80, tri_max_iter_inc=5, num_leaves=40, min_leaf_count=20.0)
WORD_DISAMBIG = max(LEXICON) + 1  # #0 on the word side of the toy L


def toy_graph_inputs() -> tuple[kaldifst.StdVectorFst, kaldifst.StdVectorFst]:
    """L_disambig (the toy L with #0:#0 self-loops) and a uniform word-loop grammar G."""
    L = lexicon_fst()
    kaldifst.add_self_loops(L, isyms=[DISAMBIG], osyms=[WORD_DISAMBIG])
    G = kaldifst.StdVectorFst()
    s = G.add_state()
    G.start = s
    G.set_final(s, 0.0)
    for w in LEXICON:
        G.add_arc(s, kaldifst.StdArc(w, w, math.log(len(LEXICON)), s))
    return L, G


@pytest.fixture(scope="module")
def systems():
    train = make_corpus(40, seed=0)
    config = GmmConfig(**MONO, **TRI)
    mono = train_monophone(graph_inputs(), train.utterances, config)
    tri = train_triphone(graph_inputs(), train.utterances, mono.system, mono.alignments, config)
    return {"monophone": mono.system, "triphone": tri.system}


def _shuffled(am: khg.AmDiagGmm, seed: int) -> khg.AmDiagGmm:
    """The same GMMs attached to the wrong pdfs (a broken model)."""
    perm = np.random.default_rng(seed).permutation(am.num_pdfs)
    out = khg.AmDiagGmm()
    for p in perm:
        out.add_pdf(am.get_pdf(int(p)))
    return out


@pytest.mark.parametrize("name", ["monophone", "triphone"])
def test_trained_system_decodes_held_out_utterances(systems, name) -> None:
    system = systems[name]
    L, G = toy_graph_inputs()
    hclg, info = compile_hclg(L, G, [DISAMBIG], system.ctx_dep, system.tm)
    check_hclg(hclg, system.tm)
    assert info.settings["context_width"] == (1 if name == "monophone" else 3)
    test = make_corpus(15, seed=1)
    refs = {u.id: " ".join(map(str, u.word_ids)) for u in test.utterances}
    feats = {u.id: u.feats for u in test.utterances}
    result = decode_gmm_batch(hclg, system.am, system.tm, feats, DecodeConfig())
    wer = compute_wer(refs, {u: " ".join(map(str, d.word_ids)) for u, d in result.decoded.items()})
    assert not result.failed
    assert wer.wer <= 0.05, wer.summary()  # measured 0 % for both systems
    # Every frame is decoded, and the alignment's phones are the true ones (silences included).
    for u in test.utterances:
        ali = result.decoded[u.id].alignment
        assert len(ali) == u.feats.shape[0]
        assert alignment_to_phones(system.tm, ali) == test.phones[u.id]
    # Control: the same GMMs on the wrong pdfs must do much worse, or the check above is empty.
    broken = decode_gmm_batch(hclg, _shuffled(system.am, seed=0), system.tm, feats, DecodeConfig())
    broken_wer = compute_wer(refs, {u: " ".join(map(str, d.word_ids)) for u, d in broken.decoded.items()})
    assert broken_wer.wer > 0.3, broken_wer.summary()
