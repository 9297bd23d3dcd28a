"""Hybrid (posterior) and GMM decoding over a real HCLG; senone priors."""

from __future__ import annotations

import numpy as np
import pytest
from decode_toy import DEV, UNSEEN, make_lang, monophone_model, oracle_alignment, oracle_log_posteriors, uniform_log_priors
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.config import DecodeConfig
from asr_kd.decode.decoder import DecodeFailure
from asr_kd.decode.gmm_decode import decode_gmm, decode_gmm_batch
from asr_kd.decode.hclg import compile_hclg
from asr_kd.decode.hybrid import decode_posteriors, decode_posteriors_batch, scaled_loglikes, tid_to_pdf
from asr_kd.decode.priors import count_senones, load_priors, log_priors_from_counts, priors_from_alignments, priors_from_posteriors, save_priors
from asr_kd.errors import DataError
from asr_kd.kaldi import khg
from asr_kd.metrics.frame_accuracy import corpus_frame_accuracy
from asr_kd.metrics.wer import compute_wer

SENTENCES = {"u1": "the cat sat", "u2": DEV[0], "u3": UNSEEN, "u4": "a dog sat"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    lang = make_lang(tmp_path_factory.mktemp("hybrid"))
    ctx_dep, tm = monophone_model(lang)
    hclg, _ = compile_hclg(lang.load_fst("L_disambig"), lang.load_fst("G"), lang.disambig_phone_ids, ctx_dep, tm)
    alignments = {
        u: oracle_alignment(lang, ctx_dep, tm, s.upper().split(), num_frames=20 * len(s.split()) + 12, seed=k)
        for k, (u, s) in enumerate(SENTENCES.items())
    }
    return lang, ctx_dep, tm, hclg, alignments


def test_tid_to_pdf_matches_transition_model(setup) -> None:
    _, _, tm, _, _ = setup
    table = tid_to_pdf(tm)
    assert table.shape == (tm.num_transition_ids,)
    assert all(table[t - 1] == tm.transition_id_to_pdf(t) for t in range(1, tm.num_transition_ids + 1))


@pytest.mark.parametrize("num_jobs", [1, 2])
def test_batch_decoding_of_noisy_posteriors_gives_zero_wer(setup, num_jobs) -> None:
    lang, _, tm, hclg, alignments = setup
    rng = np.random.default_rng(0)
    posts = {}
    for u, ali in alignments.items():
        logits = rng.normal(0.0, 1.0, size=(len(ali), tm.num_pdfs))
        logits[np.arange(len(ali)), [tm.transition_id_to_pdf(t) for t in ali]] += 6.0
        posts[u] = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)  # proper log-softmax
    posts["empty"] = np.zeros((0, tm.num_pdfs), dtype=np.float32)  # a bad input: counted, not fatal
    result = decode_posteriors_batch(hclg, tm, posts, uniform_log_priors(tm), DecodeConfig(num_jobs=num_jobs))
    assert result.failed == ["empty"]
    assert set(result.decoded) == set(alignments)
    wer = compute_wer({u: s.upper() for u, s in SENTENCES.items()}, result.texts(lang.words))
    assert wer.errors == 0 and wer.ref_words == sum(len(s.split()) for s in SENTENCES.values())
    for u, d in result.decoded.items():
        assert len(d.alignment) == len(alignments[u])


def test_priors_change_the_decision(setup) -> None:
    # Posteriors are divided by the priors: a pdf made to look e^25 times more frequent than the
    # others loses frames whose posterior margin (20 nats here) is smaller than that.
    lang, _, tm, hclg, alignments = setup
    ali = alignments["u1"]
    posts = oracle_log_posteriors(tm, ali)
    priors = uniform_log_priors(tm)
    base = decode_posteriors(hclg, tm, posts, priors, DecodeConfig())
    assert base.word_ids == lang.word_ids("THE CAT SAT".split())
    # log(0) = -inf posteriors are fine (kept finite inside); -inf priors are not.
    assert decode_posteriors(hclg, tm, oracle_log_posteriors(tm, ali, low=-np.inf), priors, DecodeConfig()).alignment == base.alignment
    with pytest.raises(DataError, match="priors contain -inf"):
        decode_posteriors(hclg, tm, posts, np.full_like(priors, -np.inf), DecodeConfig())
    cat_pdfs = {tm.transition_id_to_pdf(t) for t in ali if lang.phones.name(tm.transition_id_to_phone(t)) in ("K", "AE")}
    skewed = priors.copy()
    skewed[list(cat_pdfs)] += 25.0
    changed = decode_posteriors(hclg, tm, posts, skewed, DecodeConfig(acoustic_scale=1.0))
    assert changed.word_ids != base.word_ids


def test_bad_inputs_are_named(setup) -> None:
    _, _, tm, hclg, _ = setup
    priors = uniform_log_priors(tm)
    with pytest.raises(DataError, match=r"utterance x: log-posteriors have shape \(5, 3\)"):
        decode_posteriors(hclg, tm, np.zeros((5, 3)), priors, DecodeConfig(), utt_id="x")
    with pytest.raises(DataError, match="NaN"):
        decode_posteriors(hclg, tm, np.full((5, tm.num_pdfs), np.nan), priors, DecodeConfig())
    with pytest.raises(DataError, match="priors have shape"):
        decode_posteriors(hclg, tm, np.zeros((5, tm.num_pdfs)), priors[:-1], DecodeConfig())


def test_too_few_frames_for_any_word_fails_cleanly(setup) -> None:
    _, _, tm, hclg, _ = setup
    # One frame cannot reach a final state: every path through a word takes >= 3 frames.
    with pytest.raises(DecodeFailure, match="utterance short: the decoder found no path"):
        decode_posteriors(hclg, tm, np.zeros((1, tm.num_pdfs)), uniform_log_priors(tm), DecodeConfig(allow_partial=False), utt_id="short")


def _gaussian_model(tm: khg.TransitionModel, dim: int, seed: int) -> tuple[khg.AmDiagGmm, np.ndarray]:
    """One unit-variance Gaussian per pdf, means far apart; returns the model and the means."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 4.0, size=(tm.num_pdfs, dim)).astype(np.float32)
    am = khg.AmDiagGmm()
    for m in means:
        g = khg.DiagGmm(nmix=1, dim=dim)
        g.set_weights(np.ones(1, dtype=np.float32))
        g.set_means(m[None, :])
        g.set_invvars(np.ones((1, dim), dtype=np.float32))
        g.compute_gconsts()
        am.add_pdf(g)
    return am, means


def test_gmm_decoding_of_sampled_features(setup) -> None:
    lang, _, tm, hclg, alignments = setup
    am, means = _gaussian_model(tm, dim=6, seed=1)
    rng = np.random.default_rng(2)
    feats = {u: means[[tm.transition_id_to_pdf(t) for t in ali]] + rng.normal(0, 1.0, size=(len(ali), 6)).astype(np.float32) for u, ali in alignments.items()}
    one = decode_gmm(hclg, am, tm, feats["u1"], DecodeConfig())
    assert one.word_ids == lang.word_ids("THE CAT SAT".split())
    result = decode_gmm_batch(hclg, am, tm, {**feats, "bad": np.zeros((9, 5), dtype=np.float32)}, DecodeConfig())
    assert result.failed == ["bad"]
    assert compute_wer({u: s.upper() for u, s in SENTENCES.items()}, result.texts(lang.words)).errors == 0
    with pytest.raises(DataError, match="GMMs expect dimension 6"):
        decode_gmm(hclg, am, tm, np.zeros((9, 5)), DecodeConfig())


def test_gmm_scorer_equals_kaldis_decodable(setup) -> None:
    """The numpy matrix path scores every (frame, transition-id) as Kaldi's DecodableAmDiagGmmScaled,
    with several Gaussians per pdf (a logsumexp over components)."""
    from asr_kd.decode.gmm_decode import GmmScorer
    from asr_kd.decode.hybrid import tid_to_pdf

    _, _, tm, _, _ = setup
    rng = np.random.default_rng(3)
    am = khg.AmDiagGmm()
    for _ in range(tm.num_pdfs):
        k = int(rng.integers(1, 4))
        g = khg.DiagGmm(nmix=k, dim=4)
        g.set_weights((rng.dirichlet(np.ones(k))).astype(np.float32))
        g.set_means(rng.normal(0, 2, size=(k, 4)).astype(np.float32))
        g.set_invvars(rng.uniform(0.5, 2.0, size=(k, 4)).astype(np.float32))
        g.compute_gconsts()
        am.add_pdf(g)
    feats = rng.normal(0, 2, size=(7, 4)).astype(np.float32)
    ours = 0.3 * GmmScorer(am).loglikes(feats)[:, tid_to_pdf(tm)]
    kaldi = khg.DecodableAmDiagGmmScaled(am=am, tm=tm, feats=feats, scale=0.3)
    expected = np.array([[kaldi.log_likelihood(t, tid) for tid in range(1, tm.num_transition_ids + 1)] for t in range(7)])
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


# ---- priors ------------------------------------------------------------------------------------


def test_priors_from_alignments_hand_computed(tmp_path) -> None:
    counts = count_senones([[0, 0, 1, -100], np.array([2, 0])], num_pdfs=4)
    assert counts.tolist() == [3, 1, 1, 0]
    lp = log_priors_from_counts(counts, smoothing=1.0)
    assert np.allclose(np.exp(lp), np.array([4, 2, 2, 1]) / 9)
    assert np.allclose(priors_from_alignments([[0, 0, 1], [2, 0]], 4, smoothing=0.0, floor=1e-3), np.log(np.maximum([0.6, 0.2, 0.2, 1e-3], 0) / 1.001), atol=1e-6)
    save_priors(tmp_path / "priors.txt", lp)
    assert np.allclose(load_priors(tmp_path / "priors.txt", 4), lp, atol=1e-6)
    with pytest.raises(DataError, match="have 4 values but the model has 5 pdfs"):
        load_priors(tmp_path / "priors.txt", 5)
    with pytest.raises(DataError, match="outside 0..3"):
        count_senones([[4]], 4)


def test_the_recipe_names_its_text_priors_txt_and_still_reads_an_older_runs_npy(tmp_path) -> None:
    from asr_kd.stages.layout import RecipeLayout

    layout = RecipeLayout(tmp_path / "data", tmp_path / "exp")
    assert layout.log_priors == tmp_path / "exp" / "gmm" / "ali" / "log_priors.txt"  # a new run's
    layout.ali.mkdir(parents=True)
    old = layout.ali / "log_priors.npy"  # what runs before the rename wrote: text under a .npy name
    save_priors(old, np.log(np.full(4, 0.25)))
    assert layout.log_priors == old and np.allclose(load_priors(layout.log_priors, 4), np.log(0.25))
    save_priors(layout.ali / "log_priors.txt", np.log([0.4, 0.2, 0.2, 0.2]))  # rewritten since: the new file wins
    assert layout.log_priors.name == "log_priors.txt" and np.allclose(np.exp(load_priors(layout.log_priors, 4)), [0.4, 0.2, 0.2, 0.2])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=20), min_size=1, max_size=5), st.floats(0.0, 3.0))
def test_priors_are_a_distribution(alignments, smoothing) -> None:
    lp = priors_from_alignments(alignments, 6, smoothing=smoothing)
    assert np.all(np.isfinite(lp)) and np.isclose(np.exp(lp.astype(np.float64)).sum(), 1.0, atol=1e-5)
    counts = count_senones(alignments, 6)
    # More frequent senones never get a lower prior.
    order = np.argsort(counts, kind="stable")
    assert np.all(np.diff(lp[order]) >= -1e-6)


def test_priors_from_posteriors_average() -> None:
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    lp = priors_from_posteriors([np.log(np.maximum(p, 1e-30))], floor=1e-8)
    assert np.allclose(np.exp(lp), [0.75, 0.25, 1e-8], atol=1e-6)


def test_scaled_loglikes() -> None:
    x = np.log(np.array([[0.2, 0.8]], dtype=np.float32))
    priors = np.log(np.array([0.5, 0.5], dtype=np.float32))
    assert np.allclose(scaled_loglikes(x, priors, 0.1), 0.1 * np.log([[0.4, 1.6]]))


def test_frame_accuracy_of_decoded_senones(setup) -> None:
    _, _, tm, hclg, alignments = setup
    table = tid_to_pdf(tm)
    refs = {u: table[np.asarray(ali) - 1] for u, ali in alignments.items()}
    posts = {u: oracle_log_posteriors(tm, ali) for u, ali in alignments.items()}
    decoded = decode_posteriors_batch(hclg, tm, posts, uniform_log_priors(tm), DecodeConfig()).decoded
    hyps = {u: table[np.asarray(d.alignment) - 1] for u, d in decoded.items()}
    assert corpus_frame_accuracy(hyps, refs).accuracy == 1.0
    # Network scores (T x C) are arg-maxed; a shifted prediction and a missing one are handled.
    shifted = {u: np.roll(h, 3) for u, h in hyps.items()}
    partial = corpus_frame_accuracy({**shifted, "u1": posts["u1"]}, {**refs, "nohyp": refs["u1"]})
    assert partial.missing == ("nohyp",) and 0.0 < partial.accuracy < 1.0
    assert partial.counted == sum(len(r) for r in refs.values())


def test_frame_accuracy_hand_computed() -> None:
    r = corpus_frame_accuracy({"a": np.array([1, 2, 3]), "b": np.eye(3), "c": np.array([1, 2])}, {"a": np.array([1, 2, -100]), "b": np.array([0, 1, 1]), "c": np.array([1])})
    assert (r.correct, r.counted, r.length_mismatch) == (4, 5, ("c",))
    assert r.accuracy == pytest.approx(0.8)


def test_faster_and_lattice_decoders_agree(setup) -> None:
    _, _, tm, hclg, alignments = setup
    rng = np.random.default_rng(7)
    for u, ali in alignments.items():
        logits = rng.normal(0.0, 1.0, size=(len(ali), tm.num_pdfs))
        logits[np.arange(len(ali)), [tm.transition_id_to_pdf(t) for t in ali]] += 3.0  # hard: errors likely
        posts = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        fast = decode_posteriors(hclg, tm, posts, uniform_log_priors(tm), DecodeConfig(decoder="faster"))
        lat = decode_posteriors(hclg, tm, posts, uniform_log_priors(tm), DecodeConfig(decoder="lattice"))
        assert fast.word_ids == lat.word_ids and fast.alignment == lat.alignment
        assert fast.score == pytest.approx(lat.score, abs=1e-3)
