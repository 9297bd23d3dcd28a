"""Lattice rescoring with a larger language model (Kaldi's tgsmall -> tglarge / const-ARPA practice).

The first pass decodes with HCLG built from the lang directory's G (a small or pruned LM). Here an
utterance is decoded into a lattice instead of a best path, and every hypothesis of the lattice gets
a new score

    new cost = graph cost + acoustic_scale * acoustic cost - old LM cost + new LM cost

and the cheapest hypothesis is the answer, as Kaldi's ``lmrescore.sh`` / ``lmrescore_const_arpa.sh``.

Choices and their limits:

- Lattices come from ``kaldi_decoder.LatticeSimpleDecoder`` (``get_raw_lattice``): the installed
  ``kaldi-hmm-gmm`` 1.1.4 runs ``LatticeFasterDecoder`` but returns only its best path, and
  ``kaldi-decoder`` (0.2.11 here, 0.3.2 the newest on PyPI, checked 2026-11-30) has no other
  lattice decoder. The simple decoder has a beam but no max-active, so its cost grows steeply
  with the beam: on mini (bench/RESULTS.md, "LM rescoring of lattices") a lattice pass at beam 8
  costs about what the first pass costs at beam 13 (and its best path is 0.7-1.9 WER points
  worse); on 10 dev utterances of the triphone GMM, beam 10 costs 4 times beam 8 and beam 13
  about 20 times (the first pass at beam 13 costs what beam 8 does). A smaller ``beam`` is the dial.
- The raw (state-level) lattice keeps each arc's weight as a pair (graph cost, acoustic cost); the
  acoustic part is stored unscaled (divided by the decoding scale, Kaldi's convention), so
  rescoring may apply another acoustic scale without decoding again.
- Rescoring is **n-best** rescoring of the word lattice: the lattice's words are determinized
  (tropical: each word sequence keeps its cheapest path; sequences more than ``lattice_beam``
  worse than the best are pruned inside the determinization, as Kaldi's pruned lattice
  determinization does), its ``nbest`` cheapest word sequences are scored by both LMs. Hypotheses beyond the n-best are not considered (Kaldi's exact lattice
  composition would reach them; with nbest >= the number of distinct word sequences in the
  lattice the two agree).
- The old LM cost is what the graph paid: the cheapest path through the lang's G.fst for the
  words, with its back-off (``#0``) arcs taken as epsilon, as in Kaldi's G.fst; so the
  subtraction removes exactly the G part of the graph cost (up to G paths that HCLG's log-semiring
  determinization merged, which needs identical phone and disambiguation sequences: rare).
- The new LM cost is either ``method="arpa"``, the ARPA LM's exact back-off probability
  (``-ln p``; Kaldi's const-ARPA rescoring) or ``method="fst"``, the cheapest path through the
  G.fst compiled from the new ARPA (the same approximation as the first pass: a back-off path may
  win where the n-gram exists). With ``fst`` and the first pass's own LM, rescoring changes
  nothing, which the tests check.
- The ARPA LM is read into Python (kaldingram), fine for the demo's LMs and tgsmall-size ones;
  LibriSpeech's 4-gram (about 1.5 GB of text) would need a compiled const-ARPA, which no
  installed package offers.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from asr_kd.config import DecodeConfig, RescoreConfig
from asr_kd.decode.decoder import Decoded, DecodeFailure
from asr_kd.decode.fst_utils import input_labels
from asr_kd.errors import DataError
from asr_kd.kaldi import kaldi_decoder, kaldifst
from asr_kd.lang.const_lm import META_NAME, ConstArpaLm, build_const_lm, read_const_lm_info
from asr_kd.lang.lang_dir import BOS, EOS, EPS, WORD_DISAMBIG, Lang
from asr_kd.lang.lm import arpa_unigrams, compile_grammar_fst, filter_arpa, load_arpa, sentence_logprob10
from asr_kd.utils import file_sha256

logger = logging.getLogger(__name__)

LN10 = math.log(10.0)
class LmScorer(Protocol):
    """An LM that gives a word-id sequence its cost (``-ln p(<s> words </s>)``)."""

    def cost(self, word_ids: Sequence[int]) -> float: ...


class FstLm:
    """Costs from a G.fst: the cheapest path for the words, back-off (``#0``) arcs as epsilon."""

    def __init__(self, grammar: kaldifst.StdVectorFst, disambig_id: int) -> None:
        self.grammar = grammar
        kaldifst.arcsort(self.grammar, sort_type="ilabel")
        self.disambig_id = disambig_id
        self._cache: dict[tuple[int, ...], float] = {}

    def cost(self, word_ids: Sequence[int]) -> float:
        """Return the cheapest path cost of ``word_ids`` through G (``inf`` if G has none)."""
        key = tuple(word_ids)
        if key not in self._cache:
            # A #0 self-loop on every state lets G take any number of back-off arcs between words.
            self._cache[key] = _path_cost(kaldifst.compose(linear_acceptor(key, loop=self.disambig_id), self.grammar))
        return self._cache[key]


class ArpaLm:
    """Exact back-off costs of an ARPA LM (``-ln 10 * log10 p``), through kaldingram."""

    def __init__(self, arpa_path: Path | str, lang: Lang) -> None:
        self.lm = load_arpa(arpa_path)
        self.names = lang.words
        self._cache: dict[tuple[int, ...], float] = {}

    def cost(self, word_ids: Sequence[int]) -> float:
        """Return ``-ln p(<s> words </s>)`` (every word is in the LM: :func:`load_rescoring_lm` checked)."""
        key = tuple(word_ids)
        if key not in self._cache:
            logprob10, _, _ = sentence_logprob10(self.lm, [self.names.name(w) for w in key])
            self._cache[key] = -LN10 * logprob10
        return self._cache[key]


def _path_cost(fst: kaldifst.StdVectorFst) -> float:
    """Return the cost of the cheapest path of ``fst`` (``inf`` when it has no path)."""
    best = kaldifst.shortest_path(fst, n=1)
    if best.num_states == 0:
        return math.inf
    ok, _, _, weight = kaldifst.get_linear_symbol_sequence(best)
    return float(weight.value) if ok else math.inf


def graph_lm(lang: Lang) -> FstLm:
    """Return the first pass's LM as a scorer: the lang directory's G.fst."""
    return FstLm(lang.load_fst("G"), lang.words.id(WORD_DISAMBIG))


def check_rescoring_arpa(config: RescoreConfig) -> Path:
    """Return the path of ``config``'s ARPA LM (or const LM folder, for method "const"); DataError
    naming it if it does not exist."""
    arpa = Path(config.arpa)
    if arpa.is_dir():
        if read_const_lm_info(arpa) is None:
            raise DataError(f"rescoring LM {arpa} is a folder without a const LM of this version ({META_NAME}); build one with "
                            "`asr-kd arpa-to-const`, or pass an ARPA file")
        if config.method != "const":
            raise DataError(f"rescoring LM {arpa} is a const LM folder; a const LM folder needs --rescore-method const")
        return arpa
    if not arpa.is_file():
        raise DataError(f"rescoring ARPA LM {arpa} does not exist; build one with `asr-kd train-lm` or download one (e.g. openslr.org/11)")
    return arpa


def load_rescoring_lm(config: RescoreConfig, lang: Lang, old_lm: FstLm, work_dir: Path | str) -> LmScorer:
    """Return the scorer of ``config.arpa`` for hypotheses over ``lang``'s words.

    DataError (one line, naming the file) when the file is missing or not ARPA, or when it lacks a
    word the first-pass graph can output (the two LMs must share the lang's vocabulary). Words of
    the ARPA LM outside words.txt are ignored (counted in the log): no lattice can contain them.
    ``work_dir`` receives the vocabulary-filtered ARPA that ``method="fst"`` compiles.
    """
    arpa = check_rescoring_arpa(config)
    graph_words = {lang.words.name(i) for i in input_labels(old_lm.grammar) if i not in (0, old_lm.disambig_id)}
    if config.method == "const":
        lm = _const_lm(arpa, lang, Path(work_dir))
        _require_graph_words(arpa, graph_words, {w for w in graph_words if lm.has_word(lang.words.id(w))})
        return lm
    vocabulary = set(arpa_unigrams(arpa, lambda w: w))
    _require_graph_words(arpa, graph_words, vocabulary)
    known = {w for w in lang.words.names() if w not in (EPS, WORD_DISAMBIG, BOS, EOS)}
    outside = len(vocabulary - known)
    if outside:
        logger.info("rescoring LM %s: %d of its %d words are not in words.txt and cannot occur in a lattice", arpa, outside, len(vocabulary))
    if config.method == "arpa":
        return ArpaLm(arpa, lang)
    filtered = Path(work_dir) / "rescore_lm.arpa"
    filter_arpa(arpa, filtered, known, lambda w: w)
    return FstLm(compile_grammar_fst(filtered, lang.lang_dir / "words.txt"), lang.words.id(WORD_DISAMBIG))


def _require_graph_words(lm_path: Path, graph_words: set[str], covered: set[str]) -> None:
    """DataError (one line) unless the rescoring LM at ``lm_path`` has every word the first-pass
    graph can output (``covered``: those it has)."""
    missing = sorted(graph_words - covered)
    if missing:
        raise DataError(f"rescoring LM {lm_path} has no unigram for {len(missing)} of the {len(graph_words)} words the first-pass "
                        f"graph can output (e.g. {', '.join(missing[:5])}); use an LM over the lang's vocabulary (same spelling), e.g. `asr-kd train-lm`")


def _const_lm(source: Path, lang: Lang, work_dir: Path) -> ConstArpaLm:
    """The const LM of ``source``: a const LM folder as it is, or an ARPA file built once into
    ``<work_dir>/const_lm`` (rebuilt when the ARPA file's or words.txt's content differs). DataError
    when it was built over another words.txt."""
    words_txt = lang.lang_dir / "words.txt"
    words_sha = file_sha256(words_txt)
    folder = source if source.is_dir() else work_dir / "const_lm"
    info = read_const_lm_info(folder)
    if not source.is_dir() and (info is None or info.words_sha256 != words_sha or info.arpa_sha256 != file_sha256(source)):
        info = build_const_lm(source, words_txt, folder)
    assert info is not None
    if info.words_sha256 != words_sha:
        raise DataError(f"const LM {folder} was built over another words.txt than {words_txt}; build it again with "
                        f"`asr-kd arpa-to-const --lang-dir {lang.lang_dir}`")
    return ConstArpaLm(folder, lang.words)


# --------------------------------------------------------------------------------------------
# Lattices
# --------------------------------------------------------------------------------------------


def lattice_decoder(hclg: kaldifst.StdVectorFst, config: DecodeConfig) -> kaldi_decoder.LatticeSimpleDecoder:
    """Return a lattice-generating decoder over ``hclg`` with ``config``'s beam and lattice beam
    (no max-active: the simple decoder has none)."""
    return kaldi_decoder.LatticeSimpleDecoder(hclg, kaldi_decoder.LatticeSimpleDecoderConfig(beam=config.beam, lattice_beam=config.lattice_beam))


@dataclasses.dataclass(frozen=True)
class RawLattice:
    """A state-level lattice (transition-ids in, words out; 0: none) with the two parts of every
    weight kept apart: graph cost and unscaled acoustic cost, per arc and per final state."""

    start: int
    src: np.ndarray
    dst: np.ndarray
    tid: np.ndarray
    word: np.ndarray
    graph: np.ndarray
    acoustic: np.ndarray
    final_state: np.ndarray
    final_graph: np.ndarray
    final_acoustic: np.ndarray

    @property
    def num_arcs(self) -> int:
        """Return the number of arcs."""
        return int(self.src.size)

    def pruned(self, acoustic_scale: float, beam: float) -> RawLattice:
        """Return the lattice without the arcs and final states that lie on no path within
        ``beam`` of the best (costs ``graph + acoustic_scale * acoustic``; Kaldi's PruneLattice)."""
        cost = (self.graph + acoustic_scale * self.acoustic).tolist()
        src, dst = self.src.tolist(), self.dst.tolist()
        num_states = 1 + max(self.start, max(src, default=0), max(dst, default=0), int(self.final_state.max(initial=0)))
        rank = _topological_rank(num_states, src, dst)
        by_src = sorted(range(len(src)), key=lambda i: rank[src[i]])
        alpha = [math.inf] * num_states  # cheapest cost from the start
        alpha[self.start] = 0.0
        for i in by_src:
            a = alpha[src[i]] + cost[i]
            if a < alpha[dst[i]]:
                alpha[dst[i]] = a
        beta = [math.inf] * num_states  # cheapest cost to the end
        final_cost = (self.final_graph + acoustic_scale * self.final_acoustic).tolist()
        for s, c in zip(self.final_state.tolist(), final_cost):
            beta[s] = c
        for i in reversed(by_src):
            b = cost[i] + beta[dst[i]]
            if b < beta[src[i]]:
                beta[src[i]] = b
        limit = beta[self.start] + beam + 1e-4  # 1e-4: float32 sums in the decoder vs float64 here
        keep = np.array([alpha[s] + c + beta[d] <= limit for s, d, c in zip(src, dst, cost)], dtype=bool)
        keep_final = np.array([alpha[s] + c <= limit for s, c in zip(self.final_state.tolist(), final_cost)], dtype=bool)
        return RawLattice(self.start, self.src[keep], self.dst[keep], self.tid[keep], self.word[keep], self.graph[keep],
                          self.acoustic[keep], self.final_state[keep_final], self.final_graph[keep_final], self.final_acoustic[keep_final])

    def _fst_text(self, acoustic_scale: float, with_tids: bool) -> str:
        # OpenFst's text format takes the first line's source state as the start state.
        cost = self.graph + acoustic_scale * self.acoustic
        ilabels = self.tid if with_tids else self.word
        first = np.argsort(self.src != self.start, kind="stable")
        lines = [f"{s} {d} {i} {o} {c!r}" for s, d, i, o, c in zip(self.src[first].tolist(), self.dst[first].tolist(), ilabels[first].tolist(),
                                                                     self.word[first].tolist(), cost[first].tolist())]
        final_cost = self.final_graph + acoustic_scale * self.final_acoustic
        lines += [f"{s} {c!r}" for s, c in zip(self.final_state.tolist(), final_cost.tolist())]
        return "\n".join(lines) + "\n"

    def word_fst(self, acoustic_scale: float, beam: float) -> kaldifst.StdVectorFst:
        """Return the word acceptor (epsilon-free, deterministic) whose cost for each word
        sequence is its cheapest path's ``graph + acoustic_scale * acoustic``; word sequences
        costing more than the best plus ``beam`` are left out."""
        fst = kaldifst.compile(s=self.pruned(acoustic_scale, beam)._fst_text(acoustic_scale, with_tids=False), acceptor=False)
        kaldifst.rmepsilon(fst)
        # Determinizing a whole raw lattice can blow up (gigabytes on a 3-word toy utterance):
        # the lattice is pruned first and the determinization prunes too (Kaldi prunes both ways).
        return kaldifst.determinize(fst, weight=repr(float(beam)))

    def alignment(self, word_ids: Sequence[int], acoustic_scale: float) -> tuple[list[int], float]:
        """Return the transition-ids of the cheapest path of ``word_ids`` and its cost."""
        fst = kaldifst.compile(s=self._fst_text(acoustic_scale, with_tids=True), acceptor=False)
        kaldifst.arcsort(fst, sort_type="olabel")
        best = kaldifst.shortest_path(kaldifst.compose(fst, linear_acceptor(word_ids)), n=1)
        ok, tids, _, weight = kaldifst.get_linear_symbol_sequence(best)
        if not ok or best.num_states == 0:
            raise DecodeFailure(f"hypothesis {list(word_ids)} is not in the lattice")
        return [t for t in tids if t], float(weight.value)


def linear_acceptor(labels: Sequence[int], loop: int | None = None) -> kaldifst.StdVectorFst:
    """Return the acceptor of exactly ``labels`` (with a ``loop`` self-loop on every state when
    given), arc-sorted by output label."""
    fst = kaldifst.StdVectorFst()
    states = [fst.add_state() for _ in range(len(labels) + 1)]
    fst.start = states[0]
    for i, s in enumerate(states):
        if i < len(labels):
            fst.add_arc(s, kaldifst.StdArc(labels[i], labels[i], 0.0, states[i + 1]))
        if loop is not None:
            fst.add_arc(s, kaldifst.StdArc(loop, loop, 0.0, s))
    fst.set_final(states[-1], 0.0)
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


def _topological_rank(num_states: int, src: list[int], dst: list[int]) -> list[int]:
    """Return each state's position in a topological order of the acyclic graph ``src -> dst``
    (the decoder numbers lattice states in no such order)."""
    out: list[list[int]] = [[] for _ in range(num_states)]
    indegree = [0] * num_states
    for s, d in zip(src, dst):
        out[s].append(d)
        indegree[d] += 1
    ready = [s for s in range(num_states) if indegree[s] == 0]
    rank = [0] * num_states
    position = 0
    while ready:
        s = ready.pop()
        rank[s] = position
        position += 1
        for d in out[s]:
            indegree[d] -= 1
            if indegree[d] == 0:
                ready.append(d)
    if position != num_states:
        raise DecodeFailure("the lattice has a cycle; it cannot be pruned")
    return rank


def read_raw_lattice(lattice: kaldifst.Lattice, decode_scale: float) -> RawLattice:
    """Return ``lattice`` (from the decoder, acoustic costs times ``decode_scale``) as a
    :class:`RawLattice` with unscaled acoustic costs."""
    # Text lines: "src dst ilabel olabel graph,acoustic" and "state graph,acoustic"; OpenFst leaves
    # out a weight equal to One (0,0).
    rows = [line.split() for line in lattice.to_str().replace(",", " ").splitlines()]
    arcs = np.array([r if len(r) == 6 else r + ["0", "0"] for r in rows if len(r) >= 4], dtype=np.float64).reshape(-1, 6)
    finals = np.array([r if len(r) == 3 else r + ["0", "0"] for r in rows if 0 < len(r) < 4], dtype=np.float64).reshape(-1, 3)
    ints = arcs[:, :4].astype(np.int64)
    return RawLattice(int(lattice.start), ints[:, 0], ints[:, 1], ints[:, 2], ints[:, 3], arcs[:, 4], arcs[:, 5] / decode_scale,
                      finals[:, 0].astype(np.int64), finals[:, 1], finals[:, 2] / decode_scale)


def decode_lattice(decoder: kaldi_decoder.LatticeSimpleDecoder, decodable: kaldi_decoder.DecodableCtc, decode_scale: float,
                   utt_id: str = "utt", allow_partial: bool = True) -> RawLattice:
    """Decode one utterance into its raw lattice (``decode_scale``: the acoustic scale already in
    ``decodable``). DecodeFailure when no path survives (or, without ``allow_partial``, when none
    reaches a final state)."""
    decoder.decode(decodable)
    ok, lattice = decoder.get_raw_lattice(use_final_probs=True)
    if (not ok or lattice.num_states == 0) and allow_partial:
        logger.warning("utterance %s: no final state reached; rescoring the partial lattice", utt_id)
        ok, lattice = decoder.get_raw_lattice(use_final_probs=False)
    if not ok or lattice.num_states == 0:
        raise DecodeFailure(f"utterance {utt_id}: the lattice decoder found no path (try a larger beam, or check the inputs)")
    return read_raw_lattice(lattice, decode_scale)


# --------------------------------------------------------------------------------------------
# Rescoring
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    """One word sequence of a lattice: its first-pass cost (graph + scaled acoustic), the old
    LM's part of it and the new LM's cost; :attr:`rescored_cost` replaces the one by the other."""

    word_ids: tuple[int, ...]
    cost: float
    old_lm_cost: float
    new_lm_cost: float

    @property
    def rescored_cost(self) -> float:
        """Return ``cost - old_lm_cost + new_lm_cost``."""
        return self.cost - self.old_lm_cost + self.new_lm_cost


def nbest(lattice: RawLattice, acoustic_scale: float, n: int, beam: float) -> list[tuple[tuple[int, ...], float]]:
    """Return the ``n`` cheapest distinct word sequences of ``lattice`` within ``beam`` of the best,
    with their costs, cheapest first."""
    paths = kaldifst.convert_nbest_to_vector(kaldifst.shortest_path(lattice.word_fst(acoustic_scale, beam), n=n))
    out = []
    for path in paths:
        ok, _, words, weight = kaldifst.get_linear_symbol_sequence(path)
        if ok:
            out.append((tuple(w for w in words if w), float(weight.value)))
    return sorted(out, key=lambda h: h[1])


def rescore_hypotheses(lattice: RawLattice, acoustic_scale: float, n: int, beam: float, old_lm: LmScorer, new_lm: LmScorer) -> list[Hypothesis]:
    """Return the n-best of ``lattice`` (within ``beam``) scored by both LMs, in first-pass order
    (cheapest first)."""
    return [Hypothesis(words, cost, old_lm.cost(words), new_lm.cost(words)) for words, cost in nbest(lattice, acoustic_scale, n, beam)]


class LatticeRescorer:
    """Decodes an utterance into a lattice and returns its best path under the new LM.

    Call :meth:`decode` per utterance; the decoder is made on first use (so forked workers of
    :func:`asr_kd.decode.decoder.decode_batch` each make their own)."""

    decodable_type = kaldi_decoder.DecodableCtc  # what the lattice decoder reads

    def __init__(self, hclg: kaldifst.StdVectorFst, decode_config: DecodeConfig, config: RescoreConfig, old_lm: LmScorer,
                 new_lm: LmScorer, acoustic_scale: float | None = None) -> None:
        self.hclg, self.decode_config, self.config = hclg, decode_config, config
        self.old_lm, self.new_lm = old_lm, new_lm
        self.acoustic_scale = decode_config.acoustic_scale if acoustic_scale is None else acoustic_scale
        self._decoder: kaldi_decoder.LatticeSimpleDecoder | None = None

    def hypotheses(self, decodable: kaldi_decoder.DecodableCtc, utt_id: str = "utt") -> tuple[RawLattice, list[Hypothesis]]:
        """Return the lattice of one utterance and its rescored n-best (first-pass order)."""
        if self._decoder is None:
            self._decoder = lattice_decoder(self.hclg, self.decode_config)
        lattice = decode_lattice(self._decoder, decodable, self.decode_config.acoustic_scale, utt_id, self.decode_config.allow_partial)
        hyps = rescore_hypotheses(lattice, self.acoustic_scale, self.config.nbest, self.decode_config.lattice_beam, self.old_lm, self.new_lm)
        if not hyps:
            raise DecodeFailure(f"utterance {utt_id}: the lattice has no complete word sequence")
        return lattice, hyps

    def decode(self, decodable: kaldi_decoder.DecodableCtc, utt_id: str = "utt") -> Decoded:
        """Return the rescored best path (its score is minus its rescored cost), with the
        first-pass best words in ``first_pass``."""
        lattice, hyps = self.hypotheses(decodable, utt_id)
        best = min(hyps, key=lambda h: h.rescored_cost)
        alignment, _ = lattice.alignment(best.word_ids, self.acoustic_scale)
        return Decoded(list(best.word_ids), alignment, -best.rescored_cost, list(hyps[0].word_ids))


def make_rescorer(hclg: kaldifst.StdVectorFst, lang: Lang, decode_config: DecodeConfig, config: RescoreConfig,
                  work_dir: Path | str) -> LatticeRescorer:
    """Return the rescorer of ``config`` for graphs built from ``lang`` (old LM: its G.fst);
    DataError for a missing or mismatched ARPA LM (see :func:`load_rescoring_lm`)."""
    old_lm = graph_lm(lang)
    return LatticeRescorer(hclg, decode_config, config, old_lm, load_rescoring_lm(config, lang, old_lm, work_dir))
