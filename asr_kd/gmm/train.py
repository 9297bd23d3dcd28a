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

Scale: the utterances are split into chunks of about equal frame counts (:func:`training_chunks`)
and every pass over the data (graph compilation, flat start, each EM iteration's realignment and
statistics, tree statistics, alignment conversion) runs chunk by chunk, in ``num_jobs`` forked
processes (:mod:`asr_kd.gmm.parallel`). Training graphs are compiled once and kept on disk per
chunk (:class:`asr_kd.gmm.align.GraphStore`); EM statistics are numpy sums
(:mod:`asr_kd.gmm.accumulate`) added in chunk order, so the result does not depend on
``num_jobs``.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from asr_kd.config import GmmConfig
from asr_kd.errors import DataError
from asr_kd.gmm.accumulate import EmStats, GmmParams, accumulate, ml_update
from asr_kd.gmm.align import AlignOptions, GraphCompiler, GraphStore, accumulate_tree_stats, convert_alignments, equal_alignment, flat_start_lexicon, viterbi_align
from asr_kd.gmm.mixup import mix_up
from asr_kd.gmm.parallel import frame_chunks, map_chunks
from asr_kd.gmm.questions import questions_from_stats
from asr_kd.gmm.system import GmmSystem
from asr_kd.gmm.topology import make_topology, topology_text
from asr_kd.gmm.tree import Tree, TreeStats, build_tree, leaf_statistics, monophone_tree
from asr_kd.kaldi import kaldifst, khg

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
class TrainingResult:
    """A trained system, its final alignments (int32 transition-ids per utterance id), the
    average per-frame GMM log-likelihood of every iteration, how many utterances were skipped,
    and the frames that each iteration's EM statistics counted."""

    system: GmmSystem
    alignments: dict[str, np.ndarray]
    log_likelihood_history: list[float]
    num_skipped: int
    frames_history: list[int] = dataclasses.field(default_factory=list)


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


def _compile_one(compiler: GraphCompiler, utterance: Utterance) -> kaldifst.StdVectorFst | None:
    """Return the training graph of one utterance; None (logged) where none can be built."""
    try:
        graph = compiler.compile(utterance.word_ids)
    except RuntimeError as err:
        logger.warning("utterance %s: no training graph (%s); skipped", utterance.id, str(err).splitlines()[-1])
        return None
    if graph.num_states == 0:
        logger.warning("utterance %s: empty training graph (words not in L.fst?); skipped", utterance.id)
        return None
    return graph


# --------------------------------------------------------------------------------------------
# Chunked passes over the training data (in this process or in forked workers)
# --------------------------------------------------------------------------------------------

# Training splits its utterances into chunks of about equal frame counts, as many as the data
# allows up to TRAIN_CHUNKS (4 per worker for 16 workers), each at least CHUNK_MIN_FRAMES and
# FRAMES_PER_GAUSSIAN times the number of Gaussians: a chunk's EM statistics cost a few numpy
# calls per pdf and travel back as one row per Gaussian, which small chunks do not repay. The
# split does not depend on the number of jobs, and statistics are summed chunk by chunk in chunk
# order, so a model trained with N jobs is the one trained with 1 job (to the bit, in our runs).
TRAIN_CHUNKS = 64
CHUNK_MIN_FRAMES = 2000
FRAMES_PER_GAUSSIAN = 10
TREE_CHUNKS = 16  # tree statistics return a row per context seen: fewer, larger chunks


def training_chunks(utterances: Sequence[Utterance], num_gauss: int = 0, max_chunks: int = TRAIN_CHUNKS) -> list[range]:
    """Return the chunks (ranges of utterance indices) that training works on, for a model
    that grows to ``num_gauss`` Gaussians."""
    frames = [u.feats.shape[0] for u in utterances]
    min_frames = max(CHUNK_MIN_FRAMES, FRAMES_PER_GAUSSIAN * num_gauss)
    return frame_chunks(frames, min(max_chunks, max(1, sum(frames) // min_frames)))


Alignments = list["np.ndarray | None"]  # per utterance index: int32 transition-ids, or None


@dataclasses.dataclass(frozen=True)
class _Data:
    """What the chunk functions of one training run read; forked workers inherit it."""

    utterances: Sequence[Utterance]
    chunks: list[range]
    graphs: GraphStore
    num_jobs: int

    @classmethod
    def of(cls, utterances: Sequence[Utterance], num_gauss: int, graph_dir: Path, num_jobs: int) -> "_Data":
        """Return the data of ``utterances`` in the chunks of a model of ``num_gauss`` Gaussians,
        with graphs to be stored in ``graph_dir``."""
        return cls(utterances, training_chunks(utterances, num_gauss), GraphStore(graph_dir), num_jobs)

    def map(self, func: Callable[[range], Any], desc: str, consume: Callable[[Any], None]) -> None:
        """Run ``func`` on every chunk (``num_jobs`` processes) and ``consume`` the results in order."""
        map_chunks(func, self.chunks, self.num_jobs, desc, consume)


def _compile_graphs(compiler: GraphCompiler, data: _Data, desc: str) -> int:
    """Compile every utterance's training graph into ``data.graphs``; return how many failed
    (counted and logged)."""
    compiled = [0]

    def run(chunk: range) -> int:
        graphs = {i: g for i in chunk if (g := _compile_one(compiler, data.utterances[i])) is not None}
        data.graphs.write(chunk, graphs)
        return len(graphs)

    data.map(run, desc, lambda n: compiled.__setitem__(0, compiled[0] + n))
    failed = len(data.utterances) - compiled[0]
    if failed:
        logger.warning("%s: %d of %d utterances have no training graph and are left out", desc, failed, len(data.utterances))
    return failed


def _align_options(config: GmmConfig, beam: float) -> AlignOptions:
    return AlignOptions(beam, config.retry_beam, config.graph_scales)


def _align_chunk(system: GmmSystem, utterances: Sequence[Utterance], graphs: Mapping[int, kaldifst.StdVectorFst], chunk: range, opts: AlignOptions) -> tuple[dict[int, np.ndarray], int]:
    """Return the Viterbi alignments (int32 transition-ids) of the utterances of ``chunk`` that
    have a graph and align, and the number that have a graph but failed to align."""
    out: dict[int, np.ndarray] = {}
    failed = 0
    for i in chunk:
        graph = graphs.get(i)
        if graph is None:
            continue
        u = utterances[i]
        ali, _ = viterbi_align(graph, system.am, system.tm, u.feats, opts, u.id)
        if ali is None:
            failed += 1
            logger.debug("utterance %s failed to align (beam %.0f, retry %.0f)", u.id, opts.beam, opts.retry_beam)
            continue
        out[i] = np.asarray(ali, dtype=np.int32)
    return out, failed


@dataclasses.dataclass(frozen=True)
class _Schedule:
    num_iters: int
    realign_iters: tuple[int, ...]
    total_gauss: int
    max_iter_inc: int
    first_beam: float  # the beam of the first realignment (Kaldi's monophones start narrower)


@dataclasses.dataclass
class _Pass:
    """The merged result of one EM pass: statistics and, if it realigned, the new alignments
    and the number of utterances that failed to align."""

    stats: EmStats
    alignments: dict[int, np.ndarray] | None = None
    failed: int = 0


def _em_pass(system: GmmSystem, data: _Data, alignments: Alignments, realign: AlignOptions | None, desc: str) -> _Pass:
    """Gather the EM statistics of every chunk under the current model, realigning the chunk
    first when ``realign`` is given; return them summed in chunk order."""
    params = GmmParams.of(system.am)
    tid_to_pdf = np.asarray(system.tm.transition_id_to_pdf_array(), dtype=np.int64)
    num_tids = system.tm.num_transition_ids

    def run(chunk: range) -> _Pass:
        if realign is not None:
            new, failed = _align_chunk(system, data.utterances, data.graphs.read(chunk), chunk, realign)
            have = sorted(new.items())
        else:
            new, failed = None, 0
            have = [(i, alignments[i]) for i in chunk if alignments[i] is not None]
        stats = accumulate(params, tid_to_pdf, num_tids, [data.utterances[i].feats for i, _ in have], [a for _, a in have])
        return _Pass(stats, new, failed)

    total = _Pass(EmStats.zeros(params.num_gauss, params.dim, num_tids, system.am.num_pdfs), {} if realign is not None else None)

    def consume(part: _Pass) -> None:
        total.stats.add(part.stats)
        total.failed += part.failed
        if total.alignments is not None and part.alignments is not None:
            total.alignments.update(part.alignments)

    data.map(run, desc, consume)
    return total


def _run_em(system: GmmSystem, data: _Data, alignments: Alignments, schedule: _Schedule, config: GmmConfig, name: str) -> TrainingResult:
    """Run the EM schedule from initial ``alignments`` (per utterance index); return the
    trained result."""
    rng = np.random.default_rng(config.seed)  # mixing up perturbs means with it
    start_gauss = system.am.num_gauss
    history: list[float] = []
    frames: list[int] = []
    utterances = data.utterances
    beam = schedule.first_beam
    for it in tqdm(range(schedule.num_iters), desc=name, disable=None):
        realign = _align_options(config, beam) if it in schedule.realign_iters else None
        result = _em_pass(system, data, alignments, realign, f"{name} {'align+acc' if realign else 'acc'} {it}")
        if result.alignments is not None:
            beam = config.beam
            alignments = [result.alignments.get(i) for i in range(len(utterances))]
            if result.failed:
                logger.warning("%d of %d utterances failed to align and are left out of this iteration", result.failed, len(utterances))
            if not result.alignments:
                raise DataError(f"{name} iteration {it}: no utterance could be aligned; check that features and transcripts belong together, or raise gmm.retry_beam")
        skipped = sum(a is None for a in alignments)  # no graph, too short, or the alignment failed
        # Kaldi lets the first update keep Gaussians with little data (flat start is crude).
        min_occ = 3.0 if it == 0 else config.min_gaussian_occupancy
        stats = result.stats
        ml_update(system.am, system.tm, stats, min_occ, config.min_variance)
        like = stats.log_like / max(stats.frames, 1)  # under the model before this update
        history.append(like)
        frames.append(int(stats.frames))
        frac = min(it + 1, schedule.max_iter_inc) / schedule.max_iter_inc if schedule.max_iter_inc else 1.0
        target = int(round(start_gauss + (schedule.total_gauss - start_gauss) * frac))
        if target > system.am.num_gauss:
            mix_up(system.am, stats.pdf_frames, target, config.power, config.perturb_factor, MIXUP_MIN_COUNT, rng)
        logger.info("%s iter %d: avg log-likelihood %.4f per frame, %d Gaussians, %d utterances skipped", name, it, like, system.am.num_gauss, skipped)
    final = {utterances[i].id: a for i, a in enumerate(alignments) if a is not None}
    return TrainingResult(system, final, history, len(utterances) - len(final), frames)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _topology_for(inputs: GraphInputs, config: GmmConfig) -> str:
    return topology_text(inputs.nonsilence_phones, inputs.silence_phones, config.num_nonsil_states, config.num_sil_states)


def _flat_start(system: GmmSystem, inputs: GraphInputs, data: _Data, config: GmmConfig) -> Alignments:
    """Return equal alignments (per utterance index; None where the utterance has no graph or
    is too short); see :func:`flat_start_lexicon` for why the graphs differ from the training
    graphs (utterances that do not fit them fall back to the training graph)."""
    flat_compiler = None
    if config.flat_start_edge_silence:
        lex = flat_start_lexicon(inputs.lexicon_fst, inputs.silence_phones, inputs.edge_silence)
        flat_compiler = GraphCompiler(system.tm, system.ctx_dep, lex, inputs.disambig_phones)

    def run(chunk: range) -> dict[int, np.ndarray]:
        graphs = data.graphs.read(chunk)
        out: dict[int, np.ndarray] = {}
        for i in chunk:
            u, graph = data.utterances[i], graphs.get(i)
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
            out[i] = np.asarray(ali, dtype=np.int32)
        return out

    alignments: Alignments = [None] * len(data.utterances)
    data.map(run, "flat start", lambda part: _put(alignments, part))
    return alignments


def _put(alignments: Alignments, part: Mapping[int, np.ndarray]) -> None:
    for i, ali in part.items():
        alignments[i] = ali


def train_monophone(inputs: GraphInputs, utterances: Sequence[Utterance], config: GmmConfig, num_jobs: int = 1, tmp_dir: Path | str | None = None) -> TrainingResult:
    """Return a monophone system trained from a flat start, with its final alignments.

    ``num_jobs`` processes compile the training graphs, align and accumulate (the result does
    not depend on it); the graphs are kept in a temporary folder under ``tmp_dir`` (default:
    the system's temporary directory) while training runs.
    """
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

    schedule = _Schedule(config.mono_num_iters, config.mono_realign_iters, max(config.mono_total_gauss, tree.num_pdfs), config.mono_max_iter_inc, config.mono_beam)
    with _graph_dir(tmp_dir) as graph_dir:
        data = _Data.of(utterances, schedule.total_gauss, graph_dir, num_jobs)
        _compile_graphs(GraphCompiler(tm, ctx_dep, inputs.lexicon_fst, inputs.disambig_phones), data, "mono graphs")
        alignments = _flat_start(system, inputs, data, config)
        if all(a is None for a in alignments):
            raise DataError("no utterance could be flat-start aligned; check that transcripts match L.fst and that features are not too short")
        return _run_em(system, data, alignments, schedule, config, "mono")


def _tree_stats(mono: GmmSystem, utterances: Sequence[Utterance], alignments: Mapping[str, Sequence[int]], num_jobs: int) -> TreeStats:
    """Return the decision-tree statistics of the aligned utterances, gathered per chunk in
    ``num_jobs`` processes and summed in chunk order."""
    have = [u for u in utterances if u.id in alignments]
    table: dict[tuple[tuple[int, ...], int], np.ndarray] = {}

    def run(chunk: range) -> TreeStats:
        return accumulate_tree_stats(mono.tm, mono.tree, mono.topo, [alignments[have[i].id] for i in chunk], [have[i].feats for i in chunk])

    def consume(part: TreeStats) -> None:
        for window, pdf_class, row in zip(part.windows.tolist(), part.pdf_classes.tolist(), part.stats):
            key = (tuple(window), pdf_class)
            table[key] = table[key] + row if key in table else row.copy()

    map_chunks(run, training_chunks(have, max_chunks=TREE_CHUNKS), num_jobs, "tree statistics", consume)
    return TreeStats.from_dict(3, 1, table, have[0].feats.shape[1] if have else 0)


def build_triphone_tree(mono: GmmSystem, utterances: Sequence[Utterance], alignments: Mapping[str, Sequence[int]], inputs: GraphInputs, config: GmmConfig, extra_questions: Iterable[Iterable[int]] = (), num_jobs: int = 1) -> tuple[Tree, TreeStats]:
    """Return a triphone tree (window of 3) built from monophone alignments, and its statistics
    (gathered in ``num_jobs`` processes)."""
    stats = _tree_stats(mono, utterances, alignments, num_jobs)
    questions = questions_from_stats(stats, edge_like_phones=inputs.silence_phones, extra_sets=extra_questions, var_floor=config.var_floor)
    no_split = () if config.split_silence else inputs.silence_phones
    tree = build_tree(stats, questions, mono.tree.num_pdf_classes, config.num_leaves, config.min_leaf_count, config.min_split_gain, config.var_floor, no_split)
    return tree, stats


def _convert_alignments(data: _Data, alignments: Mapping[str, Sequence[int]], old: GmmSystem, new: GmmSystem) -> Alignments:
    """Return the alignments of ``old``'s tree rewritten for ``new``'s (per utterance index)."""
    topo = old.topo

    def run(chunk: range) -> dict[int, np.ndarray]:
        ids = {data.utterances[i].id: i for i in chunk if data.utterances[i].id in alignments}
        converted = convert_alignments({u: alignments[u] for u in ids}, old.tm, old.tree, new.tm, new.tree, topo)
        return {ids[u]: np.asarray(ali, dtype=np.int32) for u, ali in converted.items()}

    out: Alignments = [None] * len(data.utterances)
    data.map(run, "convert alignments", lambda part: _put(out, part))
    return out


def train_triphone(inputs: GraphInputs, utterances: Sequence[Utterance], mono: GmmSystem, mono_alignments: Mapping[str, Sequence[int]], config: GmmConfig, extra_questions: Iterable[Iterable[int]] = (), num_jobs: int = 1, tmp_dir: Path | str | None = None) -> TrainingResult:
    """Return a tied-triphone system: tree from the monophone alignments, then EM training
    (``num_jobs`` and ``tmp_dir`` as in :func:`train_monophone`)."""
    _check_utterances(utterances)
    tree, stats = build_triphone_tree(mono, utterances, mono_alignments, inputs, config, extra_questions, num_jobs)
    topo = mono.topo
    ctx_dep = tree.to_context_dependency()
    tm = khg.TransitionModel(ctx_dep=ctx_dep, hmm_topo=topo)
    am = _gaussians_from_stats(leaf_statistics(tree, stats), _global_stats(utterances), config.min_variance)
    system = GmmSystem(mono.topology_text, tree, tm, am)
    logger.info("triphone system: %d pdfs (senones), %d transition-ids", tree.num_pdfs, tm.num_transition_ids)
    schedule = _Schedule(config.tri_num_iters, config.tri_realign_iters, max(config.tri_total_gauss, tree.num_pdfs), config.tri_max_iter_inc, config.beam)
    with _graph_dir(tmp_dir) as graph_dir:
        data = _Data.of(utterances, schedule.total_gauss, graph_dir, num_jobs)
        alignments = _convert_alignments(data, mono_alignments, mono, system)
        _compile_graphs(GraphCompiler(tm, ctx_dep, inputs.lexicon_fst, inputs.disambig_phones), data, "tri graphs")
        return _run_em(system, data, alignments, schedule, config, "tri")


def _graph_dir(tmp_dir: Path | str | None) -> tempfile.TemporaryDirectory:
    if tmp_dir is not None:
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix="asr_kd_graphs_", dir=tmp_dir)


def align_utterances(system: GmmSystem, inputs: GraphInputs, utterances: Sequence[Utterance], config: GmmConfig, num_jobs: int = 1, desc: str = "align") -> tuple[dict[str, np.ndarray], int]:
    """Return the final model's Viterbi alignments (int32 transition-ids per utterance id) and the
    number of utterances that could not be aligned (logged and left out), computed in
    ``num_jobs`` processes.

    Training's own alignments come from the last realignment iteration, before the final
    updates; this is the pass to run once training is over (Kaldi's align_si.sh).
    """
    _check_utterances(utterances)
    compiler = GraphCompiler(system.tm, system.ctx_dep, inputs.lexicon_fst, inputs.disambig_phones)
    opts = _align_options(config, config.beam)

    def run(chunk: range) -> tuple[dict[int, np.ndarray], int]:
        # One pass: each chunk's graphs are compiled where they are used, and never stored.
        graphs = {i: g for i in chunk if (g := _compile_one(compiler, utterances[i])) is not None}
        return _align_chunk(system, utterances, graphs, chunk, opts)

    # int32 arrays as the workers return them: 4 bytes a frame, where Python lists of ints took
    # about 36 (bench/gmm_memory.py).
    alignments: dict[str, np.ndarray] = {}
    failed = [0]

    def consume(part: tuple[dict[int, np.ndarray], int]) -> None:
        alignments.update((utterances[i].id, ali) for i, ali in part[0].items())
        failed[0] += part[1]

    chunks = frame_chunks([u.feats.shape[0] for u in utterances], max(TRAIN_CHUNKS, 4 * num_jobs))
    map_chunks(run, chunks, num_jobs, desc, consume)
    if failed[0]:
        logger.warning("%s: %d of %d utterances failed to align and are left out", desc, failed[0], len(utterances))
    missing = len(utterances) - len(alignments)
    if missing > failed[0]:
        logger.warning("%s: %d of %d utterances have no training graph and are left out", desc, missing - failed[0], len(utterances))
    return alignments, missing
