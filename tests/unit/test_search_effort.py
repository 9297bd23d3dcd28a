"""Search effort: posterior sharpness on known distributions, and the counting decodable over a
real HCLG (same best path as Kaldi's own decodable; flatter posteriors cost more lookups)."""

from __future__ import annotations

import numpy as np
import pytest
from decode_toy import make_lang, monophone_model, oracle_alignment, uniform_log_priors

from asr_kd.config import DecodeConfig
from asr_kd.decode.decoder import decode_one, make_decoder
from asr_kd.decode.hclg import compile_hclg
from asr_kd.decode.hybrid import tid_to_pdf, transition_loglikes
from asr_kd.decode.search_effort import CountingDecodable, count_lookups, posterior_sharpness
from asr_kd.errors import DataError
from asr_kd.kaldi import khg


def test_sharpness_of_uniform_one_hot_and_two_point_posteriors() -> None:
    uniform = np.full((4, 8), -np.log(8.0))
    s = posterior_sharpness([uniform])
    assert s.frames == 4 and s.entropy == pytest.approx(np.log(8.0)) and s.max_posterior == pytest.approx(1 / 8)
    one_hot = np.full((3, 8), -np.inf)
    one_hot[:, 2] = 0.0
    s = posterior_sharpness([one_hot])
    assert (s.frames, s.entropy, s.max_posterior) == (3, 0.0, 1.0)
    # (0.9, 0.1): entropy -0.9 ln 0.9 - 0.1 ln 0.1 = 0.3251 nats.
    two = np.log(np.array([[0.9, 0.1]]))
    s = posterior_sharpness([two])
    assert s.entropy == pytest.approx(0.325083, abs=1e-6) and s.max_posterior == pytest.approx(0.9)
    # Averages are over frames, pooled across matrices (an empty one adds nothing).
    s = posterior_sharpness([uniform, one_hot, np.zeros((0, 8))])
    assert s.frames == 7 and s.entropy == pytest.approx(4 * np.log(8.0) / 7) and s.max_posterior == pytest.approx((4 / 8 + 3) / 7)


def test_sharpness_refuses_what_is_not_a_distribution() -> None:
    with pytest.raises(DataError, match="do not sum to 1; pass log_softmax outputs"):
        posterior_sharpness([np.zeros((2, 3))])
    with pytest.raises(DataError, match="no frame to measure"):
        posterior_sharpness([np.zeros((0, 3))])
    with pytest.raises(DataError, match=r"got shape \(3,\)"):
        posterior_sharpness([np.zeros(3)])


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    lang = make_lang(tmp_path_factory.mktemp("effort"))
    ctx_dep, tm = monophone_model(lang)
    hclg, _ = compile_hclg(lang.load_fst("L_disambig"), lang.load_fst("G"), lang.disambig_phone_ids, ctx_dep, tm)
    ali = oracle_alignment(lang, ctx_dep, tm, "THE CAT SAT".split(), num_frames=72, seed=3)
    return lang, tm, hclg, ali


def _log_posteriors(tm, ali, margin: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, size=(len(ali), tm.num_pdfs))
    logits[np.arange(len(ali)), [tm.transition_id_to_pdf(t) for t in ali]] += margin
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def test_counting_decodable_serves_kaldis_scores_and_counts_more_for_flat_posteriors(toy) -> None:
    lang, tm, hclg, ali = toy
    cfg = DecodeConfig(beam=11.0, max_active=2000, min_active=200, acoustic_scale=0.1, decoder="faster")
    tid2pdf, priors = tid_to_pdf(tm), uniform_log_priors(tm)
    sharp = transition_loglikes(_log_posteriors(tm, ali, 8.0), priors, tid2pdf, cfg.acoustic_scale)
    flat = transition_loglikes(_log_posteriors(tm, ali, 2.0), priors, tid2pdf, cfg.acoustic_scale)
    decoder = make_decoder(hclg, cfg)
    for loglikes in (sharp, flat):
        # The same best path (words and transition-ids) as through Kaldi's own DecodableCtc.
        counted = CountingDecodable(loglikes)
        assert decode_one(decoder, counted, tm).alignment == decode_one(decoder, khg.DecodableCtc(loglikes), tm).alignment
        assert counted.lookups[0] > 0 and len(counted.lookups) == len(ali)
    assert decode_one(decoder, khg.DecodableCtc(sharp), tm).word_ids == lang.word_ids("THE CAT SAT".split())
    sharp_n, flat_n = count_lookups(decoder, sharp), count_lookups(decoder, flat)
    assert sharp_n.shape == flat_n.shape == (len(ali),)
    assert flat_n.sum() > 1.2 * sharp_n.sum()
    # A narrower beam searches less on the same scores.
    narrow = make_decoder(hclg, DecodeConfig(beam=4.0, max_active=2000, min_active=20, acoustic_scale=0.1, decoder="faster"))
    assert count_lookups(narrow, flat).sum() < flat_n.sum()
    with pytest.raises(DataError, match="non-empty"):
        CountingDecodable(np.zeros((0, 5)))
