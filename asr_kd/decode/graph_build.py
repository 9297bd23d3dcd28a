"""Decoding graphs built step by step, file to file, each step measurable in its own process.

The steps are those of Kaldi's ``prepare_lang.sh`` / ``mkgraph.sh`` and of the CTC HLG, in order,
each reading its inputs from the work folder and writing its output there (as Kaldi's command-line
tools do), so that a step can run in a child process of its own and its peak memory be measured
(:func:`asr_kd.resource_usage.run_measured`):

====================  ==========================================================================
lexicon + L_disambig  the words' CMUdict pronunciations, the lang tables and ``L_disambig.fst``
LM                    synthetic text over the words (:mod:`asr_kd.lang.synthetic_text`) and a
                      Kneser-Ney n-gram LM trained on it (kaldingram), or an existing ARPA LM
                      restricted to the lexicon -> ``lm.arpa``
G                     ``G.fst`` from the ARPA file (kaldilm's arpa2fst)
L (tokens)            the phone-CTC lexicon (token labels, no optional silence)
LG (tokens)           ``min(det(L_tokens o G))``
HLG                   ``min(rm_disambig(det(H o LG)))`` with H the CTC topology
LG                    ``min(det(L_disambig o G))``
CLG                   ``C o LG`` for the tree's context (and the ilabel table)
Ha                    the HMM transducer without self-loops
HCLGa                 ``min(rm_disambig(det(Ha o CLG)))``
HCLG                  self-loops added
====================  ==========================================================================

Every step's time includes reading its inputs and writing its output (as in Kaldi's pipelines).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from asr_kd.config import GraphScales, LangConfig
from asr_kd.decode.fst_utils import num_arcs, read_fst, write_fst
from asr_kd.decode.hclg import add_self_loops, compose_clg, compose_hclga, compose_lg, make_ha
from asr_kd.decode.hlg import compose_hlg, ctc_topology, phone_tokens, token_lexicon_fst
from asr_kd.errors import ConfigError, DataError
from asr_kd.gmm.tree import Leaf, Node, Split, Tree
from asr_kd.kaldi import kaldifst
from asr_kd.lang.lang_dir import Lang
from asr_kd.lang.lexicon import add_disambig_symbols, lexicon_entries, normalize_word
from asr_kd.lang.lexicon_fst import make_lexicon_fst_disambig
from asr_kd.lang.lm import arpa_ngram_counts, compile_grammar_fst, filter_arpa, train_ngram_lm
from asr_kd.lang.synthetic_text import SyntheticTextConfig, synthetic_sentences
from asr_kd.resource_usage import StepUsage, run_measured
from asr_kd.utils import write_text_atomic

logger = logging.getLogger(__name__)

LANG_DIR = "lang"


def _written(fst: kaldifst.StdVectorFst, path: Path) -> dict[str, int]:
    """Write ``fst`` to ``path``; return its states, arcs and bytes on disk."""
    write_fst(fst, path)
    return {"states": fst.num_states, "arcs": num_arcs(fst), "bytes": path.stat().st_size}


def _load_model(model: Path):
    """Return the (ContextDependency, TransitionModel) of the GMM system file ``model``."""
    from asr_kd.gmm.system import GmmSystem

    system = GmmSystem.load(model)
    return system.ctx_dep, system.tm


def check_model_phones(lang: Lang, trans_model, model: Path | str) -> None:
    """Raise DataError unless the model's HMM topology covers exactly the lang's real phones (a
    model trained on another phone set would make a graph with the wrong phones)."""
    model_phones = set(trans_model.phones)
    lang_phones = set(lang.real_phone_ids)
    if model_phones != lang_phones:
        raise DataError(
            f"the acoustic model {model} has phones {sorted(model_phones)[:8]}... but the lang built for it has {sorted(lang_phones)[:8]}...; "
            "build the lang with the phone set (lang config) the model was trained with"
        )


@dataclasses.dataclass(frozen=True)
class GraphBuild:
    """One graph build: the words (lexicon spellings), the LM (synthetic text, or an existing ARPA
    file restricted to the lexicon), the acoustic model file (a
    :class:`~asr_kd.gmm.system.GmmSystem`), the lang settings, and the folder the steps write in.
    Pronunciations come from CMUdict, or from ``lexicon_file`` (LibriSpeech format) extending it."""

    work_dir: Path
    words: tuple[str, ...]
    text: SyntheticTextConfig | None
    model: Path
    lang_config: LangConfig
    lm_order: int = 3
    arpa: Path | None = None  # an existing LM (e.g. LibriSpeech's tgsmall) instead of synthetic text
    lexicon_file: Path | None = None
    scales: GraphScales = GraphScales()

    def path(self, name: str) -> Path:
        """Return the path of file ``name`` in the work folder."""
        return self.work_dir / name

    # ---- the steps: each returns a JSON-able dict (sizes of what it wrote, and facts) ----------

    def lexicon(self) -> dict[str, Any]:
        """Write the lang folder (tables, phone sets, lexicon) and ``L_disambig.fst``."""
        from asr_kd.lang.prepare import build_lexicon, write_lang_tables

        # No G2P: a word without a pronunciation stays out of L and G (the ARPA LM is restricted too).
        config = dataclasses.replace(self.lang_config, g2p="none")
        built = build_lexicon(self.words, config, self.lexicon_file)
        entries = lexicon_entries(built.lexicon)
        disambig_entries, max_disambig = add_disambig_symbols(entries)
        lang_dir = self.path(LANG_DIR)
        lang_dir.mkdir(parents=True, exist_ok=True)
        phones, words = write_lang_tables(lang_dir, entries, disambig_entries, max_disambig, built.nonsilence_phones, config)
        L = make_lexicon_fst_disambig(disambig_entries, phones, words, config.silence_phone, config.silence_prob)
        sizes = _written(L, lang_dir / "L_disambig.fst")
        return {**sizes, "words": len(built.lexicon), "prons": len(entries), "disambig": max_disambig + 1}

    def lm(self) -> dict[str, Any]:
        """Write ``lm.arpa``: the existing ARPA LM restricted to the lexicon's words, or a
        Kneser-Ney LM on synthetic text over them."""
        lang = Lang.load(self.path(LANG_DIR))
        if self.arpa is not None:
            stats = filter_arpa(self.arpa, self.path("lm.arpa"), set(lang.lexicon), normalize_word)
            return {"bytes": self.path("lm.arpa").stat().st_size, "ngrams": {str(n): c for n, c in stats.ngrams_kept.items()},
                    "lm_words_dropped": stats.words_dropped}
        if self.text is None:
            raise ConfigError("a graph build needs an ARPA LM or the settings of its synthetic LM text")
        vocab = sorted(w for w in lang.lexicon if w != lang.oov_word)
        sentences = list(synthetic_sentences(vocab, self.text))
        arpa = self.path("lm.arpa")
        train_ngram_lm(sentences, self.lm_order, arpa)
        counts = arpa_ngram_counts(arpa)
        return {"bytes": arpa.stat().st_size, "sentences": len(sentences), "tokens": sum(s.count(" ") + 1 for s in sentences),
                "ngrams": {str(n): c for n, c in counts.items()}}

    def grammar(self) -> dict[str, Any]:
        """Write ``G.fst`` from ``lm.arpa``."""
        G = compile_grammar_fst(self.path("lm.arpa"), self.path(LANG_DIR) / "words.txt")
        return _written(G, self.path("G.fst"))

    def lg(self) -> dict[str, Any]:
        """Write ``LG.fst`` = min(det(L_disambig o G))."""
        LG = compose_lg(read_fst(self.path(LANG_DIR) / "L_disambig.fst"), read_fst(self.path("G.fst")))
        return _written(LG, self.path("LG.fst"))

    def clg(self) -> dict[str, Any]:
        """Write ``CLG.fst`` and its ilabel table ``ilabels.json``."""
        lang = Lang.load(self.path(LANG_DIR))
        ctx_dep, tm = _load_model(self.model)
        check_model_phones(lang, tm, self.model)
        CLG, ilabel_info = compose_clg(read_fst(self.path("LG.fst")), lang.disambig_phone_ids, ctx_dep)
        write_text_atomic(self.path("ilabels.json"), json.dumps(ilabel_info))
        return {**_written(CLG, self.path("CLG.fst")), "ilabels": len(ilabel_info), "context_width": ctx_dep.context_width}

    def ha(self) -> dict[str, Any]:
        """Write ``Ha.fst`` and the disambiguation transition-ids ``disambig_tids.json``."""
        ctx_dep, tm = _load_model(self.model)
        ilabel_info = json.loads(self.path("ilabels.json").read_text())
        Ha, disambig_tids = make_ha(ilabel_info, ctx_dep, tm, self.scales.transition)
        write_text_atomic(self.path("disambig_tids.json"), json.dumps(disambig_tids))
        return {**_written(Ha, self.path("Ha.fst")), "pdfs": tm.num_pdfs}

    def hclga(self) -> dict[str, Any]:
        """Write ``HCLGa.fst`` = min(rm_disambig(det(Ha o CLG)))."""
        disambig_tids = json.loads(self.path("disambig_tids.json").read_text())
        HCLGa, removed = compose_hclga(read_fst(self.path("Ha.fst")), read_fst(self.path("CLG.fst")), disambig_tids)
        return {**_written(HCLGa, self.path("HCLGa.fst")), "disambig_arcs_removed": removed}

    def hclg(self) -> dict[str, Any]:
        """Write ``HCLG.fst``: HCLGa with self-loops."""
        _, tm = _load_model(self.model)
        return _written(add_self_loops(read_fst(self.path("HCLGa.fst")), tm, self.scales.self_loop), self.path("HCLG.fst"))

    def token_lexicon(self) -> dict[str, Any]:
        """Write the phone-CTC lexicon ``L_tokens.fst`` and its disambiguation labels."""
        lang = Lang.load(self.path(LANG_DIR))
        lexicon = [(w, pron) for w in sorted(lang.lexicon) for pron in lang.lexicon[w]]
        L, disambig = token_lexicon_fst(lexicon, phone_tokens(lang), lang.words)
        write_text_atomic(self.path("token_disambig.json"), json.dumps(disambig))
        return _written(L, self.path("L_tokens.fst"))

    def token_lg(self) -> dict[str, Any]:
        """Write ``LG_tokens.fst`` = min(det(L_tokens o G))."""
        LG = compose_lg(read_fst(self.path("L_tokens.fst")), read_fst(self.path("G.fst")))
        return _written(LG, self.path("LG_tokens.fst"))

    def hlg(self) -> dict[str, Any]:
        """Write ``HLG.fst`` = min(rm_disambig(det(H o LG_tokens)))."""
        lang = Lang.load(self.path(LANG_DIR))
        disambig = json.loads(self.path("token_disambig.json").read_text())
        H = ctc_topology(max(phone_tokens(lang).ids()), disambig)
        HLG, removed = compose_hlg(H, read_fst(self.path("LG_tokens.fst")), disambig)
        return {**_written(HLG, self.path("HLG.fst")), "disambig_arcs_removed": removed}

    def steps(self, hclg: bool = True, hlg: bool = True) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
        """Return ``(name, step)`` in build order: the lang and G steps, then HLG's and/or HCLG's."""
        lm_name = "LM (ARPA, restricted to the lexicon)" if self.arpa is not None else "LM (synthetic text + KN)"
        out = [("lexicon + L_disambig", self.lexicon), (lm_name, self.lm), ("G", self.grammar)]
        # HLG first: its steps are cheaper, and a size whose HCLG does not fit still measures HLG.
        if hlg:
            out += [("L (tokens)", self.token_lexicon), ("LG (tokens)", self.token_lg), ("HLG", self.hlg)]
        if hclg:
            out += [("LG", self.lg), ("CLG", self.clg), ("Ha", self.ha), ("HCLGa", self.hclga), ("HCLG (self-loops)", self.hclg)]
        return out


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One measured step: its name, cost and what it returned (sizes of its output and facts)."""

    name: str
    usage: StepUsage
    output: dict[str, Any]


def build_graphs(build: GraphBuild, hclg: bool = True, hlg: bool = True, max_data_mb: float | None = None,
                 on_step: Callable[[StepRecord], None] | None = None, only: Sequence[str] | None = None) -> list[StepRecord]:
    """Run the steps of ``build`` in order (those named in ``only``, if given: the files of the
    others must be there), each in a forked child with at most ``max_data_mb`` of data memory
    (:func:`~asr_kd.resource_usage.run_measured`); return a :class:`StepRecord` per step.
    ``on_step`` sees each record as it is done. A failed step raises (StepFailed, or the step's
    DataError) after the records of the steps before it went to ``on_step``."""
    build.work_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for name, step in build.steps(hclg=hclg, hlg=hlg):
        if only is not None and name not in only:
            continue
        output, usage = run_measured(step, max_data_mb=max_data_mb)
        record = StepRecord(name, usage, output)
        logger.info("%s: %.1f s wall, %.1f s CPU, peak %.0f MiB; %s", name, usage.wall_s, usage.cpu_s, usage.peak_rss_mb, output)
        records.append(record)
        if on_step is not None:
            on_step(record)
    return records


def choose_words(vocabulary: Sequence[str], num_words: int, seed: int = 0) -> tuple[str, ...]:
    """Return ``num_words`` words of ``vocabulary`` drawn at random (seeded), sorted; all of them
    when ``num_words`` is 0 or at least the vocabulary's size."""
    import numpy as np

    vocab = sorted(set(vocabulary))
    if num_words <= 0 or num_words >= len(vocab):
        return tuple(vocab)
    picked = np.random.default_rng(seed).choice(len(vocab), size=num_words, replace=False)
    return tuple(sorted(vocab[i] for i in picked))


def random_split_tree(num_pdf_classes: Mapping[int, int], phones: Sequence[int], depth: int, seed: int = 0) -> Tree:
    """Return a triphone tree (window 3) in which every (phone, pdf-class) root splits ``depth``
    times on a random half of ``phones`` at the left or right position, so it has
    ``2 ** depth`` leaves per root. Not a trained tree: it gives graphs of a chosen number of
    senones (e.g. Kaldi tri4b's 4,200) to measure how HCLG grows with the tree."""
    import numpy as np

    rng = np.random.default_rng(seed)
    phone_list = sorted(phones)
    next_pdf = 0

    def grow(level: int) -> Node:
        nonlocal next_pdf
        if level == depth:
            next_pdf += 1
            return Leaf(next_pdf - 1)
        half = frozenset(int(p) for p in rng.choice(phone_list, size=len(phone_list) // 2, replace=False))
        key = int(rng.choice([0, 2]))
        return Split(key=key, yes_phones=half, yes=grow(level + 1), no=grow(level + 1))

    roots = {(p, c): grow(0) for p in sorted(num_pdf_classes) for c in range(num_pdf_classes[p])}
    return Tree(context_width=3, central_position=1, num_pdf_classes=dict(num_pdf_classes), roots=roots)


def system_with_tree(topology: str, tree: Tree, feature_dim: int = 1):
    """Return a :class:`~asr_kd.gmm.system.GmmSystem` of ``tree`` with one standard-normal
    Gaussian per pdf: a real tree and transition model, enough to build graphs (not to decode)."""
    import numpy as np

    from asr_kd.gmm.system import GmmSystem
    from asr_kd.gmm.topology import make_topology
    from asr_kd.kaldi import khg

    tm = khg.TransitionModel(ctx_dep=tree.to_context_dependency(), hmm_topo=make_topology(topology))
    am = khg.AmDiagGmm()
    for _ in range(tree.num_pdfs):
        g = khg.DiagGmm(nmix=1, dim=feature_dim)
        g.set_weights(np.ones(1, dtype=np.float32))
        g.set_means(np.zeros((1, feature_dim), dtype=np.float32))
        g.set_invvars(np.ones((1, feature_dim), dtype=np.float32))
        g.compute_gconsts()
        am.add_pdf(g)
    return GmmSystem(topology, tree, tm, am)
