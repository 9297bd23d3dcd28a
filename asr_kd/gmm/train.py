"""GMM-HMM training: monophone flat start, then tied triphones on our own decision tree.

Both systems are trained by the same EM loop (Kaldi's train_mono.sh / train_deltas.sh
conventions): accumulate statistics along the current alignments, re-estimate the GMMs and the
transition probabilities by maximum likelihood, add Gaussians (mixing up) towards a target total
on a linear schedule, and re-align with Viterbi on the iterations of a schedule.

* Monophones start flat: every pdf is the global mean and variance, and each utterance is
  aligned by sharing its frames equally along a path of its training graph.
* Triphones: decision-tree statistics are gathered from the monophone alignments, a tree is
  built, and the monophone alignments are *converted* to the new tree (each frame keeps its
  phone, HMM state and transition and takes the pdf that the tree gives its context); the GMMs
  start as one Gaussian per leaf from the tree's statistics.

Training takes plain data (``Utterance``: id, feature matrix, word ids) so that it runs without
lhotse; the feature pipeline (MFCC, CMVN, deltas) is the caller's (:mod:`asr_kd.gmm.features`).
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from asr_kd.config import GmmConfig
from asr_kd.errors import DataError
from asr_kd.gmm.align import AlignOptions, GraphCompiler, accumulate_tree_stats, convert_alignments, equal_alignment, flat_start_lexicon, viterbi_align
from asr_kd.gmm.mixup import mix_up
from asr_kd.gmm.questions import questions_from_stats
from asr_kd.gmm.topology import make_topology, topology_text
from asr_kd.gmm.tree import Tree, TreeStats, build_tree, leaf_statistics, monophone_tree
from asr_kd.kaldi import kaldifst, khg
from asr_kd.utils import atomic_path

if TYPE_CHECKING:
    from asr_kd.lang.lang_dir import Lang

logger = logging.getLogger(__name__)

MIXUP_MIN_COUNT = 20.0  # a pdf with fewer frames gets no extra Gaussians (Kaldi's gmm-est default)


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One training utterance: its id, GMM features (frames x dim) and transcript word ids."""

    id: str
    feats: np.ndarray
    word_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class GraphInputs:
    """What training graphs are compiled from: L.fst and the phone sets (ids)."""

    lexicon_fst: kaldifst.StdVectorFst
    silence_phones: tuple[int, ...]
    nonsilence_phones: tuple[int, ...]
    disambig_phones: tuple[int, ...]
    optional_silence: int | None = None  # the silence phone between words; default: the first

    @property
    def edge_silence(self) -> int | None:
        """The silence phone that utterances start and end with (None without silence phones)."""
        if self.optional_silence is not None:
            return self.optional_silence
        return self.silence_phones[0] if self.silence_phones else None

    @classmethod
    def from_lang(cls, lang: "Lang") -> "GraphInputs":
        """Return the graph inputs of a prepared lang directory."""
        return cls(
            lang.load_fst("L"),
            tuple(lang.silence_phone_ids),
            tuple(lang.nonsilence_phone_ids),
            tuple(lang.disambig_phone_ids),
            lang.phones.id(lang.optional_silence),
        )


@dataclasses.dataclass
class GmmSystem:
    """A trained GMM-HMM: topology, tree (ours and Kaldi's), transition model and GMMs. Pickles."""

    topology_text: str
    tree: Tree
    tm: khg.TransitionModel
    am: khg.AmDiagGmm

    @property
    def topo(self) -> khg.HmmTopology:
        """The HMM topology (parsed from ``topology_text``)."""
        return make_topology(self.topology_text)

    @property
    def ctx_dep(self) -> khg.ContextDependency:
        """The tree as Kaldi's ``ContextDependency``."""
        return self.tree.to_context_dependency()

    @property
    def num_pdfs(self) -> int:
        """The number of pdfs (senones)."""
        return self.am.num_pdfs

    def save(self, path: Path | str) -> None:
        """Pickle the system to ``path`` atomically."""
        with atomic_path(path) as tmp:
            tmp.write_bytes(pickle.dumps(self))

    @staticmethod
    def load(path: Path | str) -> "GmmSystem":
        """Return the system pickled at ``path``."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"GMM system {path} does not exist; run GMM training (recipe stage 3) first")
        system = pickle.loads(path.read_bytes())
        if not isinstance(system, GmmSystem):
            raise DataError(f"{path} does not hold a GmmSystem; point to a file written by GmmSystem.save")
        return system


@dataclasses.dataclass
class TrainingResult:
    """A trained system, its final alignments (transition-ids per utterance id), the average
    per-frame GMM log-likelihood of every iteration, and how many utterances were skipped."""

    system: GmmSystem
    alignments: dict[str, list[int]]
    log_likelihood_history: list[float]
    num_skipped: int


# --------------------------------------------------------------------------------------------
# Model pieces
# --------------------------------------------------------------------------------------------


def _single_gaussian(mean: np.ndarray, var: np.ndarray) -> khg.DiagGmm:
    gmm = khg.DiagGmm(nmix=1, dim=len(mean))
    gmm.set_weights(np.ones(1, dtype=np.float32))
    gmm.set_invvars_and_means(inv_vars=(1.0 / var)[None, :].astype(np.float32), means=mean[None, :].astype(np.float32))
    gmm.compute_gconsts()
    return gmm


def _gaussians_from_stats(stats: np.ndarray, fallback: np.ndarray, min_variance: float) -> khg.AmDiagGmm:
    """Return one Gaussian per row of [count, sum x, sum x^2]; rows with too few frames get
    ``fallback`` (the global statistics)."""
    am = khg.AmDiagGmm()
    dim = (stats.shape[1] - 1) // 2
    for row in stats:
        src = row if row[0] >= 2 else fallback
        mean = src[1 : 1 + dim] / src[0]
        var = np.maximum(src[1 + dim :] / src[0] - mean**2, min_variance)
        am.add_pdf(_single_gaussian(mean, var))
    return am


def _global_stats(utterances: Sequence[Utterance]) -> np.ndarray:
    dim = utterances[0].feats.shape[1]
    out = np.zeros(1 + 2 * dim)
    for u in utterances:
        x = np.asarray(u.feats, dtype=np.float64)
        out += np.concatenate([[len(x)], x.sum(0), (x**2).sum(0)])
    return out


def _check_utterances(utterances: Sequence[Utterance]) -> None:
    if not utterances:
        raise DataError("GMM training got no utterances; check the training cuts and their features")
    dim = utterances[0].feats.shape[1] if utterances[0].feats.ndim == 2 else -1
    for u in utterances:
        if u.feats.ndim != 2 or u.feats.shape[1] != dim or not np.all(np.isfinite(u.feats)):
            raise DataError(f"utterance {u.id}: features must be a finite (frames x {dim}) matrix like the first utterance's, got shape {u.feats.shape}; recompute its features")


def _compile_graphs(compiler: GraphCompiler, utterances: Sequence[Utterance]) -> list[kaldifst.StdVectorFst | None]:
    """Return one training graph per utterance; None (counted, logged) where none can be built."""
    graphs: list[kaldifst.StdVectorFst | None] = []
    for u in tqdm(utterances, desc="training graphs", leave=False, disable=None):
        try:
            g = compiler.compile(u.word_ids)
        except RuntimeError as err:
            logger.warning("utterance %s: no training graph (%s); skipped", u.id, str(err).splitlines()[-1])
            g = None
        if g is not None and g.num_states == 0:
            logger.warning("utterance %s: empty training graph (words not in L.fst?); skipped", u.id)
            g = None
        graphs.append(g)
    return graphs


# --------------------------------------------------------------------------------------------
# The EM loop
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Schedule:
    num_iters: int
    realign_iters: tuple[int, ...]
    total_gauss: int
    max_iter_inc: int
    first_beam: float  # the beam of the first realignment (Kaldi's monophones start narrower)


def _accumulate_and_update(system: GmmSystem, utterances: Sequence[Utterance], alignments: dict[str, list[int]], config: GmmConfig, min_occupancy: float) -> tuple[float, np.ndarray]:
    """One ML re-estimation of GMMs and transitions from Viterbi alignments.

    Returns the average per-frame log-likelihood under the model *before* the update and the
    frame count of each pdf (for mixing up).
    """
    am, tm = system.am, system.tm
    acc = khg.AccumAmDiagGmm()
    acc.init(model=am, flags=khg.GmmUpdateFlags.kGmmAll)
    tid2pdf = np.asarray(tm.transition_id_to_pdf_array(), dtype=np.int64)
    trans_stats = np.zeros(tm.num_transition_ids + 1)
    occs = np.zeros(am.num_pdfs)
    tot_like, frames = 0.0, 0
    for u in utterances:
        tids = alignments.get(u.id)
        if tids is None:
            continue
        tid_arr = np.asarray(tids, dtype=np.int64)
        # Transition statistics are counts per transition-id (Kaldi's vector layout).
        trans_stats += np.bincount(tid_arr, minlength=len(trans_stats))
        pdfs = tid2pdf[tid_arr]
        occs += np.bincount(pdfs, minlength=len(occs))
        feats = np.ascontiguousarray(u.feats, dtype=np.float32)
        for t, pdf in enumerate(pdfs.tolist()):
            tot_like += acc.accumulate_for_gmm(model=am, data=feats[t], gmm_index=pdf, weight=1.0)
        frames += len(tids)
    tm.mle_update(trans_stats, khg.MleTransitionUpdateConfig())
    opts = khg.MleDiagGmmOptions(min_gaussian_occupancy=min_occupancy, min_variance=config.min_variance)
    khg.mle_am_diag_gmm_update(config=opts, amdiag_gmm_acc=acc, flags=khg.str_to_gmm_flags("mvwt"), am_gmm=am)
    return tot_like / max(frames, 1), occs


def _realign(system: GmmSystem, graphs: Sequence[kaldifst.StdVectorFst | None], utterances: Sequence[Utterance], opts: AlignOptions, desc: str) -> tuple[dict[str, list[int]], int]:
    """Return Viterbi alignments of all utterances and the number that failed (skipped)."""
    out: dict[str, list[int]] = {}
    failed = 0
    for u, g in tqdm(list(zip(utterances, graphs)), desc=desc, leave=False, disable=None):
        if g is None:
            continue
        ali, _ = viterbi_align(g, system.am, system.tm, u.feats, opts, u.id)
        if ali is None:
            failed += 1
            logger.debug("utterance %s failed to align (beam %.0f, retry %.0f)", u.id, opts.beam, opts.retry_beam)
            continue
        out[u.id] = ali
    if failed:
        logger.warning("%d of %d utterances failed to align and are left out of this iteration", failed, len(utterances))
    return out, failed


def _run_em(system: GmmSystem, graphs: Sequence[kaldifst.StdVectorFst | None], utterances: Sequence[Utterance], alignments: dict[str, list[int]], schedule: _Schedule, config: GmmConfig, name: str) -> TrainingResult:
    """Run the EM schedule from initial ``alignments``; return the trained result."""
    rng = np.random.default_rng(config.seed)  # mixing up perturbs means with it
    start_gauss = system.am.num_gauss
    history: list[float] = []
    skipped = len(utterances) - len(alignments)
    beam = schedule.first_beam
    for it in tqdm(range(schedule.num_iters), desc=name, disable=None):
        if it in schedule.realign_iters:
            opts = AlignOptions(beam, config.retry_beam, config.acoustic_scale, config.transition_scale, config.self_loop_scale)
            alignments, _ = _realign(system, graphs, utterances, opts, f"{name} align {it}")
            skipped = len(utterances) - len(alignments)  # no graph, or the alignment failed
            beam = config.beam
            if not alignments:
                raise DataError(f"{name} iteration {it}: no utterance could be aligned; check that features and transcripts belong together, or raise gmm.retry_beam")
        # Kaldi lets the first update keep Gaussians with little data (flat start is crude).
        min_occ = 3.0 if it == 0 else config.min_gaussian_occupancy
        like, occs = _accumulate_and_update(system, utterances, alignments, config, min_occ)
        history.append(like)
        frac = min(it + 1, schedule.max_iter_inc) / schedule.max_iter_inc if schedule.max_iter_inc else 1.0
        target = int(round(start_gauss + (schedule.total_gauss - start_gauss) * frac))
        if target > system.am.num_gauss:
            mix_up(system.am, occs, target, config.power, config.perturb_factor, MIXUP_MIN_COUNT, rng)
        logger.info("%s iter %d: avg log-likelihood %.4f per frame, %d Gaussians, %d utterances skipped", name, it, like, system.am.num_gauss, skipped)
    return TrainingResult(system, alignments, history, skipped)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _topology_for(inputs: GraphInputs, config: GmmConfig) -> str:
    return topology_text(inputs.nonsilence_phones, inputs.silence_phones, config.num_nonsil_states, config.num_sil_states)


def _flat_start(system: GmmSystem, inputs: GraphInputs, utterances: Sequence[Utterance], graphs: Sequence[kaldifst.StdVectorFst | None], config: GmmConfig) -> dict[str, list[int]]:
    """Return equal alignments; see :func:`flat_start_lexicon` for why the graphs differ from
    the training graphs (utterances that do not fit them fall back to the training graph)."""
    flat_compiler = None
    if config.flat_start_edge_silence:
        lex = flat_start_lexicon(inputs.lexicon_fst, inputs.silence_phones, inputs.edge_silence)
        flat_compiler = GraphCompiler(system.tm, system.ctx_dep, lex, inputs.disambig_phones)
    alignments: dict[str, list[int]] = {}
    for i, (u, graph) in enumerate(zip(utterances, graphs)):
        if graph is None:
            continue  # already counted and logged
        ali = None
        if flat_compiler is not None:
            try:
                ali = equal_alignment(flat_compiler.compile(u.word_ids), u.feats.shape[0], seed=config.seed + i)
            except RuntimeError:
                ali = None
        if ali is None:
            ali = equal_alignment(graph, u.feats.shape[0], seed=config.seed + i)
        if ali is None:
            logger.warning("utterance %s (%d frames) is too short for its transcript; skipped", u.id, u.feats.shape[0])
            continue
        alignments[u.id] = ali
    return alignments


def train_monophone(inputs: GraphInputs, utterances: Sequence[Utterance], config: GmmConfig) -> TrainingResult:
    """Return a monophone system trained from a flat start, with its final alignments."""
    _check_utterances(utterances)
    text = _topology_for(inputs, config)
    topo = make_topology(text)
    num_classes = dict(zip(topo.phones, (topo.num_pdf_classes(p) for p in topo.phones)))
    tree = monophone_tree(num_classes)
    ctx_dep = tree.to_context_dependency()
    tm = khg.TransitionModel(ctx_dep=ctx_dep, hmm_topo=topo)
    glob = _global_stats(utterances)
    am = _gaussians_from_stats(np.tile(glob, (tree.num_pdfs, 1)), glob, config.min_variance)
    system = GmmSystem(text, tree, tm, am)
    logger.info("monophone system: %d phones, %d pdfs, %d transition-ids, feature dim %d", len(topo.phones), tree.num_pdfs, tm.num_transition_ids, am.dim)

    graphs = _compile_graphs(GraphCompiler(tm, ctx_dep, inputs.lexicon_fst, inputs.disambig_phones), utterances)
    alignments = _flat_start(system, inputs, utterances, graphs, config)
    if not alignments:
        raise DataError("no utterance could be flat-start aligned; check that transcripts match L.fst and that features are not too short")
    schedule = _Schedule(config.mono_num_iters, config.mono_realign_iters, max(config.mono_total_gauss, tree.num_pdfs), config.mono_max_iter_inc, config.mono_beam)
    return _run_em(system, graphs, utterances, alignments, schedule, config, "mono")


def build_triphone_tree(mono: GmmSystem, utterances: Sequence[Utterance], alignments: dict[str, list[int]], inputs: GraphInputs, config: GmmConfig, extra_questions: Iterable[Iterable[int]] = ()) -> tuple[Tree, TreeStats]:
    """Return a triphone tree (window of 3) built from monophone alignments, and its statistics."""
    have = [u for u in utterances if u.id in alignments]
    stats = accumulate_tree_stats(mono.tm, mono.tree, mono.topo, [alignments[u.id] for u in have], [u.feats for u in have])
    questions = questions_from_stats(stats, edge_like_phones=inputs.silence_phones, extra_sets=extra_questions, var_floor=config.var_floor)
    no_split = () if config.split_silence else inputs.silence_phones
    tree = build_tree(stats, questions, mono.tree.num_pdf_classes, config.num_leaves, config.min_leaf_count, config.min_split_gain, config.var_floor, no_split)
    return tree, stats


def train_triphone(inputs: GraphInputs, utterances: Sequence[Utterance], mono: GmmSystem, mono_alignments: dict[str, list[int]], config: GmmConfig, extra_questions: Iterable[Iterable[int]] = ()) -> TrainingResult:
    """Return a tied-triphone system: tree from the monophone alignments, then EM training."""
    _check_utterances(utterances)
    tree, stats = build_triphone_tree(mono, utterances, mono_alignments, inputs, config, extra_questions)
    topo = mono.topo
    ctx_dep = tree.to_context_dependency()
    tm = khg.TransitionModel(ctx_dep=ctx_dep, hmm_topo=topo)
    am = _gaussians_from_stats(leaf_statistics(tree, stats), _global_stats(utterances), config.min_variance)
    system = GmmSystem(mono.topology_text, tree, tm, am)
    logger.info("triphone system: %d pdfs (senones), %d transition-ids", tree.num_pdfs, tm.num_transition_ids)
    alignments = convert_alignments(mono_alignments, mono.tm, mono.tree, tm, tree, topo)
    graphs = _compile_graphs(GraphCompiler(tm, ctx_dep, inputs.lexicon_fst, inputs.disambig_phones), utterances)
    schedule = _Schedule(config.tri_num_iters, config.tri_realign_iters, max(config.tri_total_gauss, tree.num_pdfs), config.tri_max_iter_inc, config.beam)
    return _run_em(system, graphs, utterances, alignments, schedule, config, "tri")


def align_utterances(system: GmmSystem, inputs: GraphInputs, utterances: Sequence[Utterance], config: GmmConfig) -> tuple[dict[str, list[int]], int]:
    """Return the final model's Viterbi alignments (transition-ids per utterance id) and the
    number of utterances that could not be aligned (logged and left out).

    Training's own alignments come from the last realignment iteration, before the final
    updates; this is the pass to run once training is over (Kaldi's align_si.sh).
    """
    _check_utterances(utterances)
    graphs = _compile_graphs(GraphCompiler(system.tm, system.ctx_dep, inputs.lexicon_fst, inputs.disambig_phones), utterances)
    opts = AlignOptions(config.beam, config.retry_beam, config.acoustic_scale, config.transition_scale, config.self_loop_scale)
    alignments, _ = _realign(system, graphs, utterances, opts, "align")
    return alignments, len(utterances) - len(alignments)
