"""A small prepared lang directory and HMM models for the decoding tests (real FSTs, real LM).

The lexicon has multiple pronunciations and a homophone pair (READ/RED share R EH D), so the
graphs need real disambiguation symbols. Test sentences avoid READ and RED where the acoustics
alone must decide the words.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asr_kd.config import LangConfig
from asr_kd.gmm.topology import make_topology, topology_text
from asr_kd.gmm.tree import Leaf, Split, Tree
from asr_kd.kaldi import kaldifst, khg
from asr_kd.lang.lang_dir import Lang
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
DEV = ["the dog sat about a cat"]
# In the vocabulary, never seen by the LM in this order.
UNSEEN = "dog the cat about a dog"


def make_lang(root: Path, silence_prob: float = 0.5) -> Lang:
    """Prepare and load the toy lang directory under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "lexicon.txt").write_text(LEXICON)
    # The toy lexicon is the whole world: it replaces CMUdict, so the phone set stays its own.
    config = LangConfig(silence_prob=silence_prob, lexicon_mode="replace")
    prepare_lang({"train": TRAIN, "dev": DEV}, root / "lang", config, root / "lexicon.txt", train_split="train", dev_split="dev")
    return Lang.load(root / "lang")


def topology(lang: Lang) -> khg.HmmTopology:
    """Return the 3-state (non-silence) / 5-state (silence) topology for ``lang``'s phones."""
    return make_topology(topology_text(lang.nonsilence_phone_ids, lang.silence_phone_ids))


def monophone_model(lang: Lang) -> tuple[khg.ContextDependency, khg.TransitionModel]:
    """Return Kaldi's monophone context dependency and the transition model for ``lang``."""
    topo = topology(lang)
    ctx_dep = khg.monophone_context_dependency(phones=topo.phones, phone2num_pdf_classes=topo.get_phone_to_num_pdf_classes())
    return ctx_dep, khg.TransitionModel(ctx_dep=ctx_dep, hmm_topo=topo)


def triphone_model(lang: Lang) -> tuple[khg.ContextDependency, khg.TransitionModel]:
    """Return a hand-made triphone tree (window 3): every (phone, state) is one leaf, except that
    the middle state of each non-silence phone splits on whether its right neighbour is silence."""
    topo = topology(lang)
    num_classes = dict(zip(topo.phones, (topo.num_pdf_classes(p) for p in topo.phones)))
    silence = frozenset(lang.silence_phone_ids)
    roots = {}
    pdf = 0
    for phone in sorted(num_classes):
        for c in range(num_classes[phone]):
            if phone not in silence and c == 1:
                roots[(phone, c)] = Split(key=2, yes_phones=silence, yes=Leaf(pdf), no=Leaf(pdf + 1))
                pdf += 2
            else:
                roots[(phone, c)] = Leaf(pdf)
                pdf += 1
    ctx_dep = Tree(context_width=3, central_position=1, num_pdf_classes=num_classes, roots=roots).to_context_dependency()
    return ctx_dep, khg.TransitionModel(ctx_dep=ctx_dep, hmm_topo=topo)


def oracle_alignment(lang: Lang, ctx_dep: khg.ContextDependency, tm: khg.TransitionModel, words: list[str], num_frames: int, seed: int = 0) -> list[int]:
    """Return a transition-id alignment of ``words`` (frames shared equally along a random path of
    the training graph, which may include optional silences)."""
    L = lang.load_fst("L")
    kaldifst.arcsort(L, sort_type="olabel")
    opts = khg.TrainingGraphCompilerOptions(transition_scale=0.0, self_loop_scale=0.0)
    compiler = khg.TrainingGraphCompiler(trans_model=tm, ctx_dep=ctx_dep, lex_fst=L, disambig_syms=lang.disambig_phone_ids, opts=opts)
    graph = compiler.compile_graph_from_text(lang.word_ids(words))
    ok, path = kaldifst.equal_align(ifst=graph, length=num_frames, rand_seed=seed, num_retries=10)
    assert ok, "utterance too short for its transcript"
    ok, tids, _, _ = kaldifst.get_linear_symbol_sequence(path)
    assert ok and len(tids) == num_frames
    return list(tids)


def oracle_log_posteriors(tm: khg.TransitionModel, alignment: list[int], low: float = -20.0) -> np.ndarray:
    """Return a (T x num_pdfs) matrix with 0 at each frame's aligned pdf and ``low`` elsewhere."""
    pdfs = [tm.transition_id_to_pdf(t) for t in alignment]
    x = np.full((len(pdfs), tm.num_pdfs), low, dtype=np.float32)
    x[np.arange(len(pdfs)), pdfs] = 0.0
    return x


def uniform_log_priors(tm: khg.TransitionModel) -> np.ndarray:
    """Return log(1 / num_pdfs) for every pdf."""
    return np.full(tm.num_pdfs, -np.log(tm.num_pdfs), dtype=np.float32)
