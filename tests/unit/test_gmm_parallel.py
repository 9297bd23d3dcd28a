"""GMM training in several processes: chunking, the fork pool, mergeable EM statistics that
match Kaldi's accumulator, and training that does not depend on the number of jobs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.config import GmmConfig
from asr_kd.gmm.accumulate import EmStats, GmmParams, accumulate, ml_update
from asr_kd.gmm.align import GraphCompiler, GraphStore
from asr_kd.gmm.parallel import frame_chunks, map_chunks
from asr_kd.gmm.topology import make_topology, topology_text
from asr_kd.gmm.toy import graph_inputs, make_corpus
from asr_kd.gmm.train import Utterance, align_utterances, train_monophone, train_triphone, training_chunks
from asr_kd.gmm.tree import monophone_tree
from asr_kd.kaldi import kaldifst, khg

MONO = dict(mono_num_iters=8, mono_realign_iters=(1, 2, 3, 4, 5, 6), mono_total_gauss=60, mono_max_iter_inc=5)
TRI = dict(tri_num_iters=6, tri_realign_iters=(2, 4), tri_total_gauss=80, tri_max_iter_inc=4, num_leaves=40, min_leaf_count=20.0)
CONFIG = GmmConfig(**MONO, **TRI)


# --------------------------------------------------------------------------------------------
# Chunks and the fork pool
# --------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 2000), min_size=1, max_size=80), st.integers(1, 70))
def test_frame_chunks_tile_the_utterances_with_balanced_frames(frames, num_chunks):
    chunks = frame_chunks(frames, num_chunks)
    assert 1 <= len(chunks) <= min(num_chunks, len(frames))
    assert chunks[0].start == 0 and chunks[-1].stop == len(frames)
    assert all(len(c) > 0 for c in chunks) and all(a.stop == b.start for a, b in zip(chunks, chunks[1:]))
    # No chunk holds more than its share plus one utterance.
    share = sum(frames) / min(num_chunks, len(frames))
    assert all(sum(frames[i] for i in c) <= share + max(frames) for c in chunks)
    assert frame_chunks(frames, num_chunks) == chunks  # a function of its inputs only


def test_map_chunks_returns_results_in_chunk_order_for_any_number_of_jobs():
    # The closure holds an FST, which cannot be pickled: the workers inherit it through fork.
    fst = kaldifst.StdVectorFst()
    for _ in range(7):
        fst.add_state()
    with pytest.raises(TypeError):
        pickle.dumps(fst)
    chunks = frame_chunks([5] * 23, 6)

    def work(chunk: range) -> list[int]:
        return [fst.num_states * i for i in chunk]

    results = {}
    for jobs in (1, 3):
        out: list[list[int]] = []
        map_chunks(work, chunks, jobs, "test", out.append)
        results[jobs] = out
    assert results[1] == results[3] == [[7 * i for i in c] for c in chunks]


def test_map_chunks_raises_a_worker_error_and_stays_usable():
    def fail_on_third(chunk: range) -> int:
        if chunk.start == 2:
            raise ValueError("chunk 2 is bad")
        return chunk.start

    chunks = [range(i, i + 1) for i in range(5)]
    for jobs in (1, 2):
        with pytest.raises(ValueError, match="chunk 2 is bad"):
            map_chunks(fail_on_third, chunks, jobs, "test", lambda _: None)
    got: list[int] = []
    map_chunks(lambda c: c.start, chunks, 2, "test", got.append)
    assert got == [0, 1, 2, 3, 4]


def test_graph_store_round_trip(tmp_path):
    corpus = make_corpus(5, seed=3)
    system = train_monophone(graph_inputs(), corpus.utterances, GmmConfig(**MONO)).system
    inputs = graph_inputs()
    compiler = GraphCompiler(system.tm, system.ctx_dep, inputs.lexicon_fst, inputs.disambig_phones)
    graphs = {i: compiler.compile(u.word_ids) for i, u in enumerate(corpus.utterances) if i != 2}
    store = GraphStore(tmp_path)
    store.write(range(0, 5), graphs)
    store.write(range(5, 7), {})
    back = store.read(range(0, 5))
    assert sorted(back) == [0, 1, 3, 4]
    assert all(back[i].to_str() == graphs[i].to_str() for i in back)
    assert store.read(range(5, 7)) == {}


# --------------------------------------------------------------------------------------------
# EM statistics
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    return make_corpus(40, seed=0)


@pytest.fixture(scope="module")
def mixture_mono(toy):
    """A monophone system with several Gaussians per pdf, and its alignments."""
    result = train_monophone(graph_inputs(), toy.utterances, GmmConfig(**MONO))
    assert result.system.am.num_gauss > 2 * result.system.num_pdfs
    return result


def _kaldi_accumulator(am: khg.AmDiagGmm, tid_to_pdf: np.ndarray, utterances, alignments) -> tuple[khg.AccumAmDiagGmm, float]:
    """The reference: Kaldi's own accumulation, one frame at a time."""
    acc = khg.AccumAmDiagGmm()
    acc.init(model=am, flags=khg.GmmUpdateFlags.kGmmAll)
    like = 0.0
    for u in utterances:
        feats = np.ascontiguousarray(u.feats, dtype=np.float32)
        for t, pdf in enumerate(tid_to_pdf[np.asarray(alignments[u.id])].tolist()):
            like += acc.accumulate_for_gmm(model=am, data=feats[t], gmm_index=pdf, weight=1.0)
    return acc, like


def test_vectorised_statistics_and_update_match_kaldis(toy, mixture_mono):
    system = pickle.loads(pickle.dumps(mixture_mono.system))
    am, tm = system.am, system.tm
    utts = [u for u in toy.utterances if u.id in mixture_mono.alignments]
    tid_to_pdf = np.asarray(tm.transition_id_to_pdf_array(), dtype=np.int64)
    alignments = [np.asarray(mixture_mono.alignments[u.id], dtype=np.int32) for u in utts]
    ours = accumulate(GmmParams.of(am), tid_to_pdf, tm.num_transition_ids, [u.feats for u in utts], alignments)
    acc, like = _kaldi_accumulator(am, tid_to_pdf, utts, mixture_mono.alignments)

    assert ours.frames == sum(len(a) for a in alignments)
    assert ours.log_like == pytest.approx(like, rel=1e-6)
    np.testing.assert_array_equal(ours.pdf_frames, np.bincount(tid_to_pdf[np.concatenate(alignments)], minlength=am.num_pdfs))
    np.testing.assert_array_equal(ours.transitions, np.bincount(np.concatenate(alignments), minlength=tm.num_transition_ids + 1))
    params = GmmParams.of(am)
    dim = am.dim
    for pdf in range(am.num_pdfs):
        ref = acc.get_acc(pdf)  # a copy, readable
        rows = ours.gauss[params.offsets[pdf] : params.offsets[pdf + 1]]
        np.testing.assert_allclose(rows[:, 0], ref.occupancy, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(rows[:, 1 : 1 + dim], ref.mean_accumulator, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(rows[:, 1 + dim :], ref.variance_accumulator, rtol=1e-5, atol=1e-3)

    # The update from our statistics is Kaldi's update from its own, to float tolerance.
    ref_am = pickle.loads(pickle.dumps(am))
    options = khg.MleDiagGmmOptions(min_gaussian_occupancy=CONFIG.min_gaussian_occupancy, min_variance=CONFIG.min_variance)
    khg.mle_am_diag_gmm_update(config=options, amdiag_gmm_acc=acc, flags=khg.str_to_gmm_flags("mvwt"), am_gmm=ref_am)
    ml_update(am, tm, ours, CONFIG.min_gaussian_occupancy, CONFIG.min_variance)
    assert am.num_gauss == ref_am.num_gauss
    for pdf in range(am.num_pdfs):
        a, b = am.get_pdf(pdf), ref_am.get_pdf(pdf)
        np.testing.assert_allclose(a.weights, b.weights, rtol=1e-5)
        # Means compared in standard deviations (a mean near zero has no relative precision).
        assert np.max(np.abs(a.means - b.means) / np.sqrt(b.vars)) < 1e-5
        np.testing.assert_allclose(a.vars, b.vars, rtol=1e-5)


def test_statistics_add_up_over_chunks(toy, mixture_mono):
    system = mixture_mono.system
    tid_to_pdf = np.asarray(system.tm.transition_id_to_pdf_array(), dtype=np.int64)
    params = GmmParams.of(system.am)
    utts = toy.utterances
    alis = [np.asarray(mixture_mono.alignments[u.id], dtype=np.int32) for u in utts]
    num_tids = system.tm.num_transition_ids
    whole = accumulate(params, tid_to_pdf, num_tids, [u.feats for u in utts], alis)
    merged = EmStats.zeros(params.num_gauss, params.dim, num_tids, system.num_pdfs)
    for part in (slice(0, 13), slice(13, 14), slice(14, 40)):
        merged.add(accumulate(params, tid_to_pdf, num_tids, [u.feats for u in utts[part]], alis[part]))
    merged.add(accumulate(params, tid_to_pdf, num_tids, [], []))  # an empty chunk adds nothing
    assert merged.frames == whole.frames
    np.testing.assert_array_equal(merged.transitions, whole.transitions)
    np.testing.assert_array_equal(merged.pdf_frames, whole.pdf_frames)
    np.testing.assert_allclose(merged.gauss, whole.gauss, rtol=1e-12, atol=1e-9)
    assert merged.log_like == pytest.approx(whole.log_like, rel=1e-12)
    assert pickle.loads(pickle.dumps(merged)).gauss.tobytes() == merged.gauss.tobytes()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 60.0))
def test_update_carries_the_statistics_exactly_enough(seed, offset):
    """Statistics enter Kaldi's accumulator as weighted float32 pseudo-frames; the update must
    still give the Gaussians the statistics' own means and variances to float32 precision, also
    for means many standard deviations from zero (where float32 x^2 would lose the variance)."""
    rng = np.random.default_rng(seed)
    dim, sizes = 4, (1, 3, 2)
    am = khg.AmDiagGmm()
    for k in sizes:
        gmm = khg.DiagGmm(nmix=k, dim=dim)
        gmm.set_weights(np.full(k, 1.0 / k, dtype=np.float32))
        gmm.set_invvars_and_means(inv_vars=np.ones((k, dim), np.float32), means=np.zeros((k, dim), np.float32))
        gmm.compute_gconsts()
        am.add_pdf(gmm)
    total = sum(sizes)
    occ = rng.uniform(20.0, 5000.0, total)
    mean = offset + rng.normal(0.0, 3.0, (total, dim))
    var = rng.uniform(0.05, 4.0, (total, dim))
    gauss = np.hstack([occ[:, None], occ[:, None] * mean, occ[:, None] * (var + mean**2)])
    tm = _one_phone_transition_model()
    stats = EmStats(gauss, np.ones(tm.num_transition_ids + 1), np.zeros(len(sizes)))
    ml_update(am, tm, stats, min_gaussian_occupancy=10.0, min_variance=1e-3)
    start = 0
    for pdf, k in enumerate(sizes):
        gmm = am.get_pdf(pdf)
        rows = slice(start, start + k)
        # Float32 parameters: a few ulps, however far the mean is from zero in standard deviations.
        np.testing.assert_allclose(gmm.means, mean[rows], rtol=3e-7, atol=1e-7)
        np.testing.assert_allclose(gmm.vars, var[rows], rtol=5e-7)
        np.testing.assert_allclose(gmm.weights, occ[rows] / occ[rows].sum(), rtol=1e-6)
        start += k


def _one_phone_transition_model() -> khg.TransitionModel:
    topo = make_topology(topology_text([1], [2], 3, 5))
    return khg.TransitionModel(ctx_dep=monophone_tree({1: 3, 2: 5}).to_context_dependency(), hmm_topo=topo)


# --------------------------------------------------------------------------------------------
# Training with several jobs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_with_bad_utterances():
    utts = make_corpus(200, seed=1).utterances
    short = Utterance("short", utts[0].feats[:3], (1, 2, 3))  # too short for its transcript
    unknown = Utterance("unknown", utts[1].feats, (1, 99))  # word 99 is not in L.fst
    return [*utts[:60], short, *utts[60:120], unknown, *utts[120:]]


@pytest.fixture(scope="module")
def trained(corpus_with_bad_utterances):
    """Monophone and triphone training with 1 and with 2 jobs."""
    utts = corpus_with_bad_utterances
    out = {}
    for jobs in (1, 2):
        mono = train_monophone(graph_inputs(), utts, CONFIG, num_jobs=jobs)
        tri = train_triphone(graph_inputs(), utts, mono.system, mono.alignments, CONFIG, num_jobs=jobs)
        out[jobs] = (mono, tri)
    return out


def _gaussians(am: khg.AmDiagGmm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pdfs = [am.get_pdf(p) for p in range(am.num_pdfs)]
    return tuple(np.concatenate([np.asarray(getattr(g, name)).reshape(g.num_gauss, -1) for g in pdfs]) for name in ("means", "vars", "weights"))


def test_training_with_two_jobs_equals_training_with_one(corpus_with_bad_utterances, trained):
    assert len(training_chunks(corpus_with_bad_utterances, CONFIG.tri_total_gauss)) > 4  # the workers really share the data
    for one, two in zip(trained[1], trained[2]):
        assert one.num_skipped == two.num_skipped == 2
        assert "short" not in two.alignments and "unknown" not in two.alignments
        assert {u: a.tolist() for u, a in one.alignments.items()} == {u: a.tolist() for u, a in two.alignments.items()}
        np.testing.assert_allclose(one.log_likelihood_history, two.log_likelihood_history, rtol=1e-9)
        assert one.system.tree.to_kaldi_bytes() == two.system.tree.to_kaldi_bytes()
        assert one.system.am.num_gauss == two.system.am.num_gauss
        for a, b in zip(_gaussians(one.system.am), _gaussians(two.system.am)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    mono, tri = trained[2]
    assert all(b > a for a, b in zip(mono.log_likelihood_history, mono.log_likelihood_history[1:]))
    assert tri.log_likelihood_history[-1] > tri.log_likelihood_history[0]


def test_final_alignment_with_two_jobs(corpus_with_bad_utterances, trained):
    system = trained[1][1].system
    utts = corpus_with_bad_utterances[55:75]
    serial, failed_serial = align_utterances(system, graph_inputs(), utts, CONFIG, num_jobs=1)
    parallel, failed_parallel = align_utterances(system, graph_inputs(), utts, CONFIG, num_jobs=2)
    assert {u: a.tolist() for u, a in serial.items()} == {u: a.tolist() for u, a in parallel.items()} and failed_serial == failed_parallel == 1  # "short" has a graph but cannot align
    assert all(len(parallel[u.id]) == u.feats.shape[0] for u in utts if u.id in parallel)
