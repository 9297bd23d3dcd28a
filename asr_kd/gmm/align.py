"""Training graphs, flat-start and Viterbi alignment, and what alignments are turned into.

An alignment is a list of transition-ids, one per frame (Kaldi's convention: the transition
taken out of the state that emitted the frame). From it follow the phone sequence, the senone
(pdf) sequence and, together with the phone context, the decision tree's statistics.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from asr_kd.config import GraphScales
from asr_kd.gmm.topology import pdf_class_to_hmm_state
from asr_kd.gmm.tree import Tree, TreeStats
from asr_kd.kaldi import kaldifst, khg
from asr_kd.utils import storage_error

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AlignOptions:
    """Viterbi alignment settings (Kaldi's gmm-align-compiled conventions)."""

    beam: float = 10.0
    retry_beam: float = 40.0
    scales: GraphScales = GraphScales()


class GraphCompiler:
    """Kaldi's training-graph compiler together with the models it reads.

    The binding keeps only C++ references to the transition model and the tree, so this object
    holds the Python objects too: they must outlive the compiler (a dangling tree segfaults).
    Graphs are compiled with transition and self-loop scales of 0 (Kaldi's compile-train-graphs
    convention): the transition probabilities are added at alignment time, from the current model.
    """

    def __init__(self, tm: khg.TransitionModel, ctx_dep: khg.ContextDependency, lexicon_fst: kaldifst.StdVectorFst, disambig_phones: Sequence[int]) -> None:
        self.tm, self.ctx_dep = tm, ctx_dep
        lex = lexicon_fst.copy()
        kaldifst.arcsort(lex, sort_type="olabel")
        opts = khg.TrainingGraphCompilerOptions(transition_scale=0.0, self_loop_scale=0.0)
        self._compiler = khg.TrainingGraphCompiler(trans_model=tm, ctx_dep=ctx_dep, lex_fst=lex, disambig_syms=list(disambig_phones), opts=opts)

    def compile(self, word_ids: Sequence[int]) -> kaldifst.StdVectorFst:
        """Return the training graph (transition-ids in, words out) of a transcript; raises
        RuntimeError if the words cannot be spelled with the lexicon."""
        return self._compiler.compile_graph_from_text(list(word_ids))


class GraphStore:
    """Training graphs kept on disk, one Kaldi archive per chunk of utterances (keys: the
    utterance's index), so that neither the trainer nor its workers hold every graph in memory.

    Measured on the synthetic 'mini' corpus: in memory the graphs take about 120 bytes per
    frame (the 39-dim float32 features: 156), on disk about 45; reading a chunk back is about
    15 times faster than compiling it again.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def _path(self, chunk: range) -> Path:
        return self.directory / f"graphs.{chunk.start}-{chunk.stop}.ark"

    def write(self, chunk: range, graphs: Mapping[int, kaldifst.StdVectorFst]) -> None:
        """Write the graphs of ``chunk`` (utterance index -> graph; missing ones are absent); a
        full disk raises an OSError naming the archive (Kaldi's writer says only "Write failed")."""
        path = self._path(chunk)
        try:
            with kaldifst.VectorFstWriter(f"ark:{path}") as writer:
                for index in sorted(graphs):
                    writer.write(str(index), graphs[index])
        except (OSError, RuntimeError) as err:
            storage = storage_error(err, path)
            if storage is not None:
                raise storage from None
            raise

    def read(self, chunk: range) -> dict[int, kaldifst.StdVectorFst]:
        """Return the graphs written for ``chunk`` (utterance index -> graph)."""
        out: dict[int, kaldifst.StdVectorFst] = {}
        with kaldifst.SequentialVectorFstReader(f"ark:{self._path(chunk)}") as reader:
            for key, fst in reader:
                out[int(key)] = fst.copy()  # the reader reuses (and frees) the object it yields
        return out


def flat_start_lexicon(lexicon_fst: kaldifst.StdVectorFst, silence_phones: Sequence[int], edge_silence: int | None) -> kaldifst.StdVectorFst:
    """Return a lexicon FST for flat-start alignment: ``lexicon_fst`` without its optional
    silences, framed by one obligatory ``edge_silence`` at each end (none if None).

    Why: equal alignment stretches a *random* path of the training graph, and with optional
    silence after every word a random path holds a silence at about every other word boundary
    (each wandering through the silence HMM's fully connected states), which then takes half the
    frames. From such a start EM settles with every phone's states shifted by one. Utterances
    do start and end in silence, so this path is a far better first guess; realignment then
    uses the real lexicon with its optional silences.
    """
    sil = set(silence_phones)
    fst = lexicon_fst.copy()
    for state in range(fst.num_states):
        keep = [a for a in kaldifst.ArcIterator(fst, state) if not (a.ilabel in sil and a.olabel == 0)]
        fst.delete_arcs(state, fst.num_arcs(state))
        for a in keep:
            fst.add_arc(state, kaldifst.StdArc(a.ilabel, a.olabel, a.weight, a.nextstate))
    if edge_silence is not None:
        old_start = fst.start
        finals = [s for s in range(fst.num_states) if fst.final(s) != kaldifst.TropicalWeight.zero]
        start, end = fst.add_state(), fst.add_state()
        fst.add_arc(start, kaldifst.StdArc(edge_silence, 0, 0.0, old_start))
        for s in finals:
            fst.add_arc(s, kaldifst.StdArc(edge_silence, 0, fst.final(s), end))
            fst.set_final(s, kaldifst.TropicalWeight.zero)
        fst.start = start
        fst.set_final(end, 0.0)
    kaldifst.connect(fst)
    return fst


def equal_alignment(graph: kaldifst.StdVectorFst, num_frames: int, seed: int) -> list[int] | None:
    """Return a flat-start alignment (frames shared equally along a random path), or None if the
    utterance is shorter than every path through its graph."""
    ok, path = kaldifst.equal_align(ifst=graph, length=num_frames, rand_seed=seed, num_retries=10)
    if not ok:
        return None
    ok, tids, _, _ = kaldifst.get_linear_symbol_sequence(path)
    if not ok or len(tids) != num_frames:
        return None
    return list(tids)


def viterbi_align(
    graph: kaldifst.StdVectorFst,
    am: khg.AmDiagGmm,
    tm: khg.TransitionModel,
    feats: np.ndarray,
    opts: AlignOptions,
    utt_id: str = "utt",
) -> tuple[list[int] | None, float]:
    """Return (transition-ids, log-likelihood) of the best path, or (None, 0.0) if alignment
    failed even with the retry beam. The log-likelihood includes transition log-probabilities."""
    decodable = khg.DecodableAmDiagGmmScaled(am=am, tm=tm, feats=np.ascontiguousarray(feats, dtype=np.float32), scale=opts.scales.acoustic)
    return _align(graph, tm, decodable, feats.shape[0], opts, utt_id)


def _align(graph: kaldifst.StdVectorFst, tm: khg.TransitionModel, decodable: khg.DecodableInterface, num_frames: int,
           opts: AlignOptions, utt_id: str) -> tuple[list[int] | None, float]:
    """The Viterbi alignment both aligners share: the training graph with the model's transition
    log-probabilities, searched with ``opts``' beams; (None, 0.0) unless every frame is aligned."""
    fst = graph.copy()  # add_transition_probs edits the graph in place
    khg.add_transition_probs(trans_model=tm, transition_scale=opts.scales.transition, self_loop_scale=opts.scales.self_loop, fst=fst)
    config = khg.AlignConfig(beam=opts.beam, retry_beam=opts.retry_beam, careful=False)
    num_done, _, _, tot_like, _, ali, _ = khg.align_utterance_wrapper(
        config=config, utt=utt_id, acoustic_scale=opts.scales.acoustic, fst=fst, decodable=decodable,
        num_done=0, num_error=0, num_retried=0, tot_like=0.0, frame_count=0,
    )
    if num_done != 1 or len(ali) != num_frames:
        return None, 0.0
    return list(ali), float(tot_like)


def viterbi_align_loglikes(
    graph: kaldifst.StdVectorFst,
    tm: khg.TransitionModel,
    loglikes: np.ndarray,
    tid2pdf: np.ndarray,
    opts: AlignOptions,
    utt_id: str = "utt",
) -> tuple[list[int] | None, float]:
    """:func:`viterbi_align` with any acoustic model: ``loglikes`` (frames x pdfs, unscaled) are
    per-pdf log-likelihoods, e.g. a DNN's log posteriors minus the log priors (Kaldi's nnet
    alignment, ``align.sh`` with a DNN) or :meth:`asr_kd.decode.gmm_decode.GmmScorer.loglikes`;
    ``tid2pdf`` maps transition-id - 1 to its pdf. Returns (transition-ids, log-likelihood), or
    (None, 0.0) if alignment failed even with the retry beam."""
    x = np.asarray(loglikes, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] <= int(tid2pdf.max()):
        raise ValueError(f"utterance {utt_id}: log-likelihoods of shape {x.shape} do not cover the model's {int(tid2pdf.max()) + 1} pdfs")
    decodable = khg.DecodableCtc(np.ascontiguousarray(opts.scales.acoustic * x[:, tid2pdf]))
    return _align(graph, tm, decodable, x.shape[0], opts, utt_id)


# --------------------------------------------------------------------------------------------
# Reading alignments
# --------------------------------------------------------------------------------------------


def phone_segments(tm: khg.TransitionModel, tids: Sequence[int]) -> list[tuple[int, int, int]]:
    """Return the phone instances of an alignment as (phone, first frame, end frame) triples.

    Training graphs are compiled with Kaldi's default ``reorder``: a state's forward transition
    sits on its first frame and its self-loops follow. So a phone ends after the transition
    into the HMM's final state *and* the self-loops of that same state that follow it (Kaldi's
    SplitToPhones rule); this also separates two instances of the same phone in a row.
    """
    if isinstance(tids, np.ndarray):
        tids = tids.tolist()  # one conversion: the per-frame calls below are slower on numpy scalars
    out: list[tuple[int, int, int]] = []
    start = 0
    final_state = -1  # transition state whose exit to the final state has been seen
    for t, tid in enumerate(tids):
        if final_state >= 0 and not (tm.is_self_loop(tid) and tm.id2state[tid] == final_state):
            out.append((tm.transition_id_to_phone(tids[t - 1]), start, t))
            start, final_state = t, -1
        if tm.is_final(tid):
            final_state = tm.id2state[tid]
    if final_state >= 0:
        out.append((tm.transition_id_to_phone(tids[-1]), start, len(tids)))
        start = len(tids)
    if start != len(tids):
        raise ValueError(f"alignment of {len(tids)} frames ends inside a phone (frame {start} on)")
    return out


def alignment_to_phones(tm: khg.TransitionModel, tids: Sequence[int]) -> list[int]:
    """Return the sequence of phone ids (one per phone instance) of an alignment."""
    return [p for p, _, _ in phone_segments(tm, tids)]


def senone_alignment(tm: khg.TransitionModel, tids: Sequence[int]) -> np.ndarray:
    """Return the pdf (senone) id of every frame, as an int32 array."""
    table = np.asarray(tm.transition_id_to_pdf_array(), dtype=np.int32)  # indexed by tid
    return table[np.asarray(tids, dtype=np.int64)]


def senone_alignments(tm: khg.TransitionModel, alignments: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Return {utterance id: per-frame pdf ids (int32)} for transition-id alignments."""
    return {utt_id: senone_alignment(tm, tids) for utt_id, tids in alignments.items()}


def frame_accuracy(reference: np.ndarray, hypothesis: np.ndarray) -> float:
    """Return the fraction of frames whose ids agree (e.g. senone alignments)."""
    reference, hypothesis = np.asarray(reference), np.asarray(hypothesis)
    if reference.shape != hypothesis.shape or reference.size == 0:
        raise ValueError(f"need two non-empty alignments of one length, got {reference.shape} and {hypothesis.shape}")
    return float(np.mean(reference == hypothesis))


def context_windows(phones: Sequence[int], context_width: int, central_position: int) -> list[tuple[int, ...]]:
    """Return each phone's context window, with 0 beyond the utterance edges."""
    padded = [0] * central_position + list(phones) + [0] * (context_width - 1 - central_position)
    return [tuple(padded[i : i + context_width]) for i in range(len(phones))]


@dataclasses.dataclass(frozen=True)
class TransitionIdInfo:
    """Lookup tables indexed by transition-id (entry 0 unused): its phone, pdf-class and HMM
    state, and its index among its transition state's transitions."""

    phone: np.ndarray
    pdf_class: np.ndarray
    hmm_state: np.ndarray
    trans_index: np.ndarray


def transition_id_info(tm: khg.TransitionModel, tree: Tree, topo: khg.HmmTopology) -> TransitionIdInfo:
    """Return the per-transition-id tables of a model built on our ``tree``.

    The binding does not expose Kaldi's transition tuples, so the pdf-class comes from the tree
    (each pdf belongs to one (phone, pdf-class) root) and the HMM state from the topology.
    """
    n = tm.num_transition_ids + 1
    owners = tree.pdf_info()
    pdfs = tm.transition_id_to_pdf_array()
    id2state, state2id = tm.id2state, tm.state2id
    phone = np.zeros(n, np.int32)
    pdf_class = np.full(n, -1, np.int32)
    hmm_state = np.full(n, -1, np.int32)
    index = np.zeros(n, np.int32)
    class_to_state = {p: pdf_class_to_hmm_state(topo, p) for p in tree.num_pdf_classes}
    for tid in range(1, n):
        p, c = owners[pdfs[tid]]
        phone[tid], pdf_class[tid] = p, c
        hmm_state[tid] = class_to_state[p][c]
        index[tid] = tid - state2id[id2state[tid]]
    return TransitionIdInfo(phone, pdf_class, hmm_state, index)


def accumulate_tree_stats(
    tm: khg.TransitionModel,
    tree: Tree,
    topo: khg.HmmTopology,
    alignments: Sequence[Sequence[int]],
    features: Sequence[np.ndarray],
    context_width: int = 3,
    central_position: int = 1,
) -> TreeStats:
    """Return the decision tree's statistics: a single Gaussian's sums per (context window,
    pdf-class), from alignments made with ``tm``/``tree`` and the matching features."""
    info = transition_id_info(tm, tree, topo)
    dim = features[0].shape[1] if features else 0
    table: dict[tuple[tuple[int, ...], int], np.ndarray] = {}
    for tids, feats in zip(alignments, features):
        segs = phone_segments(tm, tids)
        windows = context_windows([p for p, _, _ in segs], context_width, central_position)
        x = np.asarray(feats, dtype=np.float64)
        classes = info.pdf_class[np.asarray(tids)]
        for window, (_, start, end) in zip(windows, segs):
            for c in np.unique(classes[start:end]):
                rows = x[start:end][classes[start:end] == c]
                row = np.concatenate([[len(rows)], rows.sum(0), (rows**2).sum(0)])
                key = (window, int(c))
                table[key] = table[key] + row if key in table else row
    return TreeStats.from_dict(context_width, central_position, table, dim)


def convert_alignments(
    alignments: Mapping[str, Sequence[int]],
    old_tm: khg.TransitionModel,
    old_tree: Tree,
    new_tm: khg.TransitionModel,
    new_tree: Tree,
    topo: khg.HmmTopology,
) -> dict[str, list[int]]:
    """Return the alignments rewritten for a new tree (same topology): every frame keeps its
    phone, HMM state and transition, and gets the pdf that the new tree gives its context
    window (Kaldi's convert-ali, for our trees)."""
    old = transition_id_info(old_tm, old_tree, topo)
    new = transition_id_info(new_tm, new_tree, topo)
    new_pdfs = new_tm.transition_id_to_pdf_array()
    # (phone, pdf) names a transition state of the new model: its first transition-id.
    first_tid = {}
    for tid in range(1, new_tm.num_transition_ids + 1):
        if new.trans_index[tid] == 0:
            first_tid[(int(new.phone[tid]), new_pdfs[tid])] = tid
    out: dict[str, list[int]] = {}
    for utt_id, tids in alignments.items():
        tids = np.asarray(tids).tolist()
        segs = phone_segments(old_tm, tids)
        windows = context_windows([p for p, _, _ in segs], new_tree.context_width, new_tree.central_position)
        conv: list[int] = []
        for window, (phone, start, end) in zip(windows, segs):
            for tid in tids[start:end]:
                pdf = new_tree.pdf(window, int(old.pdf_class[tid]))
                conv.append(first_tid[(phone, pdf)] + int(old.trans_index[tid]))
        out[utt_id] = conv
    return out
