"""GMM training on a real lang directory (prepare_lang with CMUdict) and synthetic frames."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from asr_kd.config import GmmConfig, LangConfig
from asr_kd.gmm.align import alignment_to_phones, senone_alignment
from asr_kd.gmm.features import add_deltas
from asr_kd.gmm.toy import state_means, synthesize
from asr_kd.gmm.train import GraphInputs, Utterance, train_monophone, train_triphone
from asr_kd.lang.lang_dir import Lang
from asr_kd.lang.prepare import prepare_lang

SENTENCES = [
    "THE CAT SAT ON THE MAT",
    "A DOG READ THE BOOK",
    "THE RED DOG RAN TO THE CAT",
    "MY BOOK WAS ON A RED MAT",
    "THE DOG SAT",
]
CONFIG = GmmConfig(
    mono_num_iters=8, mono_realign_iters=(1, 2, 3, 4, 5, 6), mono_total_gauss=200, mono_max_iter_inc=5,
    tri_num_iters=4, tri_realign_iters=(2,), tri_total_gauss=200, tri_max_iter_inc=3, num_leaves=150, min_leaf_count=15.0,
)


@pytest.fixture(scope="module")
def lang(tmp_path_factory) -> Lang:
    out = tmp_path_factory.mktemp("gmm_lang") / "lang"
    prepare_lang({"train-clean-100": SENTENCES}, out, LangConfig(), dev_split=None)
    return Lang.load(out)


@pytest.fixture(scope="module")
def corpus(lang):
    """60 utterances of 3-6 vocabulary words, pronounced with a random one of their prons."""
    rng = np.random.default_rng(0)
    vocab = sorted({w for s in SENTENCES for w in s.split()})
    sil = lang.phones.id(lang.optional_silence)
    means = state_means(lang.real_phone_ids, lang.silence_phone_ids, dim=6, seed=1)
    utts = []
    for n in range(60):
        words = list(rng.choice(vocab, size=int(rng.integers(3, 7))))
        phones = [sil]
        for prons in lang.pronunciation_phone_ids(words):
            phones += prons[int(rng.integers(len(prons)))]
            if rng.random() < 0.2:
                phones.append(sil)
        phones += [sil] if phones[-1] != sil else []
        feats, _ = synthesize(phones, means, rng, durations=(3, 6))
        utts.append(Utterance(f"u{n}", add_deltas(feats), tuple(lang.word_ids(words))))
    return utts


def test_monophone_and_triphone_on_a_prepared_lang(lang, corpus) -> None:
    inputs = GraphInputs.from_lang(lang)
    assert inputs.edge_silence == lang.phones.id("SIL")
    mono = train_monophone(inputs, corpus, CONFIG)
    assert mono.num_skipped == 0
    hist = mono.log_likelihood_history
    assert hist[-1] > hist[0] + 3.0
    silence = set(lang.silence_phone_ids)
    words = {lang.words.id(w): w for s in SENTENCES for w in s.split()}
    correct = 0
    for u in corpus:
        aligned = [p for p in alignment_to_phones(mono.system.tm, mono.alignments[u.id]) if p not in silence]
        choices = [[list(p) for p in prons] for prons in lang.pronunciation_phone_ids([words[w] for w in u.word_ids])]
        correct += any(aligned == sum(combo, []) for combo in itertools.product(*choices))
    assert correct == len(corpus)  # every alignment spells one of the transcript's pronunciations

    tri = train_triphone(inputs, corpus, mono.system, mono.alignments, CONFIG)
    assert tri.num_skipped == 0
    assert len(lang.real_phone_ids) * 3 < tri.system.num_pdfs <= CONFIG.num_leaves
    assert tri.log_likelihood_history[-1] > tri.log_likelihood_history[0]
    senones = senone_alignment(tri.system.tm, tri.alignments[corpus[0].id])
    assert senones.shape == (corpus[0].feats.shape[0],) and senones.max() < tri.system.num_pdfs
    # Kaldi's view of our tree agrees with ours on the windows this corpus produced.
    ctx = tri.system.ctx_dep
    for tids in list(tri.alignments.values())[:10]:
        phones = alignment_to_phones(tri.system.tm, tids)
        padded = [0, *phones, 0]
        for i in range(len(phones)):
            window = padded[i : i + 3]
            for c in range(tri.system.topo.num_pdf_classes(window[1])):
                assert ctx.compute(window, c) == (True, tri.system.tree.pdf(window, c))
