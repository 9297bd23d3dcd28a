"""Small parts of the GMM library: deltas, CMVN, topologies, mixing up, the GmmConfig checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from asr_kd.config import GmmConfig, config_from_dict
from asr_kd.errors import ConfigError, DataError
from asr_kd.gmm.features import add_deltas, apply_utterance_cmvn, delta_filters, gmm_features
from asr_kd.gmm.mixup import gaussian_targets, mix_up, split_gmm
from asr_kd.gmm.topology import make_topology, pdf_class_to_hmm_state, topology_text
from asr_kd.kaldi import khg

# ---- deltas ---------------------------------------------------------------------------------


def first_delta_by_loop(x: np.ndarray, window: int) -> np.ndarray:
    """The regression formula written out frame by frame, edges replicated."""
    t_max = len(x) - 1
    denom = 2 * sum(n * n for n in range(1, window + 1))
    out = np.zeros_like(x, dtype=np.float64)
    for t in range(len(x)):
        for n in range(1, window + 1):
            out[t] += n * (x[min(t + n, t_max)] - x[max(t - n, 0)])
    return out / denom


@settings(max_examples=30, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 30), st.integers(1, 5)), elements=st.floats(-100, 100, width=32)), st.integers(1, 3))
def test_first_deltas_follow_the_regression_formula(x: np.ndarray, window: int) -> None:
    out = add_deltas(x, order=1, window=window)
    assert out.shape == (x.shape[0], 2 * x.shape[1]) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, : x.shape[1]], x)
    np.testing.assert_allclose(out[:, x.shape[1] :], first_delta_by_loop(x.astype(np.float64), window), atol=1e-3, rtol=1e-4)


def test_second_deltas_are_the_filter_applied_twice_away_from_the_edges() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    out = add_deltas(x, order=2, window=2)
    d1 = first_delta_by_loop(x, 2)
    d2 = first_delta_by_loop(d1, 2)
    # Edge replication differs (Kaldi replicates input frames, not first deltas): compare inside.
    np.testing.assert_allclose(out[4:-4, 6:], d2[4:-4], atol=1e-5)
    assert len(delta_filters(2, 2)[2]) == 9


def test_deltas_of_a_ramp_and_a_constant() -> None:
    ramp = np.arange(20, dtype=np.float32)[:, None] * 0.5
    out = add_deltas(ramp, order=2, window=2)
    np.testing.assert_allclose(out[4:-4, 1], 0.5, atol=1e-6)  # slope
    np.testing.assert_allclose(out[4:-4, 2], 0.0, atol=1e-6)  # no curvature
    const = np.full((7, 2), 3.0, dtype=np.float32)
    np.testing.assert_allclose(add_deltas(const)[:, 2:], 0.0, atol=1e-6)
    with pytest.raises(DataError):
        add_deltas(np.zeros(5))


def test_cmvn_and_the_gmm_feature_pipeline() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 2.0, size=(50, 13)).astype(np.float32)
    np.testing.assert_allclose(apply_utterance_cmvn(x).mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(apply_utterance_cmvn(x, normalize_variance=True).std(axis=0), 1.0, atol=1e-4)
    feats = gmm_features(x, delta_order=2, delta_window=2, utterance_cmvn=True)
    assert feats.shape == (50, 39)
    np.testing.assert_allclose(feats[:, :13].mean(axis=0), 0.0, atol=1e-5)
    with pytest.raises(DataError):
        apply_utterance_cmvn(np.zeros((0, 13)))


# ---- topology -------------------------------------------------------------------------------


def test_topology_follows_kaldi_conventions() -> None:
    topo = make_topology(topology_text([3, 4, 5], [1, 2]))
    assert list(topo.phones) == [1, 2, 3, 4, 5]
    assert [topo.num_pdf_classes(p) for p in topo.phones] == [5, 5, 3, 3, 3]
    assert topo.min_length(3) == 3 and topo.min_length(1) == 3  # silence can skip two states
    for phone in topo.phones:
        states = topo.topology_for_phone(phone)
        assert states[-1].forward_pdf_class == -1  # final, non-emitting
        for i, state in enumerate(states[:-1]):
            assert sum(p for _, p in state.transitions) == pytest.approx(1.0, abs=1e-5)
            assert all(dst >= min(i, 1) for dst, _ in state.transitions)
        assert pdf_class_to_hmm_state(topo, phone) == {k: k for k in range(len(states) - 1)}
    sil = topo.topology_for_phone(1)
    assert [dst for dst, _ in sil[0].transitions] == [0, 1, 2, 3]
    assert [dst for dst, _ in sil[4].transitions] == [4, 5]
    # Non-default sizes parse too.
    small = make_topology(topology_text([2], [1], num_nonsil_states=1, num_sil_states=2))
    assert small.num_pdf_classes(2) == 1 and small.num_pdf_classes(1) == 2


def test_topology_rejects_bad_phone_lists() -> None:
    with pytest.raises(ConfigError, match="distinct"):
        topology_text([2, 2], [1])
    with pytest.raises(ConfigError, match="positive"):
        topology_text([0, 2], [1])


# ---- mixing up ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 5000), min_size=1, max_size=20), st.integers(0, 200), st.floats(0, 1), st.floats(1, 50))
def test_gaussian_targets(occs: list[float], extra: int, power: float, min_count: float) -> None:
    occ = np.array(occs)
    current = np.ones(len(occ), dtype=int)
    targets = gaussian_targets(current, occ, len(occ) + extra, power, min_count)
    assert np.all(targets >= current)
    assert targets.sum() <= len(occ) + extra
    grown = targets > current
    assert np.all(occ[grown] / targets[grown] >= min_count)
    if targets.sum() < len(occ) + extra:  # stopped early: nobody could take another Gaussian
        assert np.all(occ / (targets + 1) < min_count)


def test_split_gmm_keeps_the_mixture_mean_and_is_seeded() -> None:
    def gmm() -> khg.DiagGmm:
        g = khg.DiagGmm(nmix=2, dim=3)
        g.set_weights(np.array([0.7, 0.3], dtype=np.float32))
        g.set_means(np.array([[0, 1, 2], [3, 4, 5]], dtype=np.float32))
        g.set_invvars(np.full((2, 3), 0.5, dtype=np.float32))
        g.compute_gconsts()
        return g

    a, b = gmm(), gmm()
    split_gmm(a, 5, 0.1, np.random.default_rng(3))
    split_gmm(b, 5, 0.1, np.random.default_rng(3))
    wa, ma = np.array(a.weights), np.array(a.means)
    assert a.num_gauss == 5 and wa.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(wa @ ma, np.array([0.7, 0.3]) @ np.array([[0, 1, 2], [3, 4, 5]]), atol=1e-5)
    np.testing.assert_array_equal(ma, np.array(b.means))
    assert len({tuple(m) for m in ma.round(6)}) == 5  # the halves moved apart


def test_mix_up_grows_an_acoustic_model_towards_the_total() -> None:
    am = khg.AmDiagGmm()
    for _ in range(3):
        g = khg.DiagGmm(nmix=1, dim=2)
        g.set_weights(np.ones(1, dtype=np.float32))
        g.set_means(np.zeros((1, 2), dtype=np.float32))
        g.set_invvars(np.ones((1, 2), dtype=np.float32))
        g.compute_gconsts()
        am.add_pdf(g)
    total = mix_up(am, np.array([1000.0, 100.0, 5.0]), 10, 0.25, 0.01, 20.0, np.random.default_rng(0))
    assert total == am.num_gauss == 10
    counts = [am.num_gauss_in_pdf(i) for i in range(3)]
    assert counts[0] > counts[1] > counts[2] == 1  # more data, more Gaussians; 5 frames: none


# ---- config ---------------------------------------------------------------------------------


def test_gmm_config_validation() -> None:
    cfg = config_from_dict(GmmConfig, {"num_leaves": "300", "tri_total_gauss": 3000, "mono_realign_iters": "1,2,5"})
    assert cfg.num_leaves == 300 and cfg.mono_realign_iters == (1, 2, 5)
    for bad, match in [
        ({"mono_realign_iters": (0, 2)}, "mono_realign_iters"),
        ({"tri_realign_iters": (5, 3)}, "increasing"),
        ({"num_leaves": 5000, "tri_total_gauss": 100}, "tri_total_gauss"),
        ({"retry_beam": 5.0}, "retry_beam"),
        ({"acoustic_scale": 0.0}, "acoustic_scale"),
        ({"num_sil_states": 1}, "num_sil_states"),
    ]:
        with pytest.raises(ConfigError, match=match):
            GmmConfig(**bad)
