"""Tests for asr_kd.kd.specialists: confusable clusters, specialist data and the KL combination."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.errors import ConfigError
from asr_kd.kd.specialists import (
    active_specialists,
    aggregate_to_specialist,
    cluster_classes,
    combination_objective,
    combine_with_specialists,
    coverage_table,
    dustbin_prior_correction,
    kmeans,
    prediction_covariance,
    specialist_class_sets,
    specialist_labels,
    specialist_output_init,
    specialist_term_weights,
    specialist_training_indices,
)
from asr_kd.models.mlp import MLP


pytestmark = pytest.mark.usefixtures("one_torch_thread")

def _confusable_probs(groups: list[list[int]], num_classes: int, n: int, seed: int) -> np.ndarray:
    """Predictions of a model that spreads its mass within one group of classes per example."""
    rng = np.random.default_rng(seed)
    probs = np.full((n, num_classes), 1e-3)
    for i in range(n):
        g = groups[rng.integers(len(groups))]
        probs[i, g] += rng.dirichlet(np.ones(len(g)))
    return probs / probs.sum(1, keepdims=True)


def _random_probs(rows: int, classes: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(rows, classes, generator=g, dtype=torch.float64), dim=-1)


def test_covariance_is_symmetric_and_clusters_recover_confused_groups():
    groups = [[0, 5, 7], [1, 2], [3, 4, 6, 8, 9]]
    probs = _confusable_probs(groups, 10, 600, seed=0)
    cov = prediction_covariance(probs)
    assert cov.shape == (10, 10) and np.allclose(cov, cov.T)
    assert cov[0, 5] > 0 > cov[0, 1]
    found = cluster_classes(probs, 3, seed=1)
    assert sorted(map(sorted, found)) == sorted(map(sorted, groups))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 1000),
    num_classes=st.integers(3, 15),
    data=st.data(),
)
def test_clustering_returns_a_partition_of_the_requested_classes(seed, num_classes, data):
    requested = data.draw(st.lists(st.integers(0, num_classes - 1), min_size=1, max_size=num_classes, unique=True))
    k = data.draw(st.integers(1, len(requested)))
    probs = _random_probs(50, num_classes, seed).numpy()
    sets = cluster_classes(probs, k, seed, classes=requested)
    assert len(sets) == k
    assert all(len(s) > 0 for s in sets)
    flat = [c for s in sets for c in s]
    assert sorted(flat) == sorted(requested)  # disjoint and complete


def test_kmeans_is_deterministic_and_rejects_bad_k():
    pts = np.random.default_rng(0).normal(size=(30, 4))
    assert np.array_equal(kmeans(pts, 4, seed=3), kmeans(pts, 4, seed=3))
    with pytest.raises(ConfigError, match="k-means"):
        kmeans(pts, 31, seed=0)


def test_specialist_class_sets_drop_small_and_repeated_sets():
    probs = _confusable_probs([[0, 5, 7], [1, 2], [3, 4, 6, 8, 9]], 10, 600, seed=0)
    sets = specialist_class_sets(probs, num_clusters=3, num_clusterings=3, seed=0, min_size=3)
    assert sorted(map(tuple, sets)) == [(0, 5, 7), (3, 4, 6, 8, 9)]


def test_specialist_labels_indices_and_output_init():
    labels = torch.tensor([4, 1, 7, 4, 0, 9])
    assert specialist_labels(labels, [7, 4]).tolist() == [1, 2, 0, 1, 2, 2]
    np_labels = np.array([0] * 10 + [1] * 40 + [2] * 50)
    idx = specialist_training_indices(np_labels, [0], seed=0)
    assert len(idx) == 20 and (np_labels[idx] == 0).sum() == 10 and len(set(idx.tolist())) == 20
    w, b = torch.randn(5, 3), torch.randn(5)
    w2, b2 = specialist_output_init(w, b, [3, 1])
    assert w2.shape == (3, 3) and torch.equal(w2[0], w[3]) and torch.equal(b2[1], b[1])
    assert torch.allclose(w2[2], w[[0, 2, 4]].mean(0))
    assert b2[2].item() == pytest.approx(b[[0, 2, 4]].mean().item() + np.log(3), rel=1e-5)
    assert dustbin_prior_correction(0.5) == pytest.approx(0.0)
    assert dustbin_prior_correction(0.1) == pytest.approx(np.log(9))


def test_active_specialists_follow_the_generalist_top_classes():
    p = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.1, 0.1, 0.2, 0.6]], dtype=torch.float64)
    sets = [[0, 1], [2, 3], [1, 2]]
    assert active_specialists(p, sets, top_n=1).tolist() == [[True, False, False], [False, True, False]]
    assert active_specialists(p, sets, top_n=2).tolist() == [[True, False, True], [False, True, True]]


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000), rows=st.integers(1, 5), classes=st.integers(4, 10))
def test_kl_combination_is_normalised(seed, rows, classes):
    p_g = _random_probs(rows, classes, seed)
    sets = [[0, 1], list(range(2, classes))[:3]]
    spec = [_random_probs(rows, len(s) + 1, seed + 1 + m) for m, s in enumerate(sets)]
    active = torch.ones(rows, len(sets), dtype=torch.bool)
    q = combine_with_specialists(p_g, spec, sets, active, steps=30)
    assert q.shape == p_g.shape
    assert torch.all(q >= 0)
    assert torch.allclose(q.sum(-1), torch.ones(rows, dtype=q.dtype))


def test_kl_combination_equals_generalist_when_no_specialist_applies():
    p_g = _random_probs(4, 6, 0)
    sets = [[0, 1], [2, 3]]
    spec = [_random_probs(4, 3, 1), _random_probs(4, 3, 2)]
    active = torch.tensor([[False, False], [True, False], [False, False], [False, True]])
    q = combine_with_specialists(p_g, spec, sets, active, steps=50)
    assert torch.equal(q[0], p_g[0]) and torch.equal(q[2], p_g[2])
    assert not torch.allclose(q[1], p_g[1])
    none = combine_with_specialists(p_g, spec, sets, torch.zeros(4, 2, dtype=torch.bool))
    assert torch.equal(none, p_g)


def test_confident_correct_specialist_moves_mass_to_the_correct_class():
    # The generalist hesitates between classes 2 and 3 (and prefers the wrong one, 2); a
    # specialist for {2, 3} is confident that the answer is 3.
    p_g = torch.tensor([[0.05, 0.05, 0.48, 0.40, 0.02]], dtype=torch.float64)
    p_spec = torch.tensor([[0.001, 0.989, 0.01]], dtype=torch.float64)  # classes 2, 3, dustbin
    q = combine_with_specialists(p_g, [p_spec], [[2, 3]], torch.tensor([[True]]), steps=500)
    assert q[0].argmax().item() == 3
    assert q[0, 3] > p_g[0, 3] + 0.2
    assert q[0, 2] < p_g[0, 2]
    # the dustbin's share (classes 0, 1, 4) moves between the generalist's 0.12 and the
    # specialist's 0.01, and the ratios inside it keep the generalist's proportions
    assert 0.01 < q[0, [0, 1, 4]].sum() < 0.12
    assert (q[0, 0] / q[0, 4]).item() == pytest.approx((p_g[0, 0] / p_g[0, 4]).item(), rel=1e-3)


def test_mean_weighting_does_not_count_overlapping_specialists_twice():
    # Two clusterings gave the same confusable pair two specialists; with the paper's sum their
    # shared opinion outweighs the generalist twice, with "mean" it weighs as much as one.
    active = torch.tensor([[True, True, False], [False, False, False], [True, False, False]])
    assert specialist_term_weights(active, "sum").tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    assert specialist_term_weights(active, "mean").tolist() == [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    with pytest.raises(ConfigError, match=r"weighting must be one of \('sum', 'mean'\), got 'max'"):
        specialist_term_weights(active, "max")
    p_g = torch.tensor([[0.05, 0.05, 0.48, 0.40, 0.02]], dtype=torch.float64)
    p_spec = torch.tensor([[0.2, 0.7, 0.1]], dtype=torch.float64)  # classes 2, 3, dustbin
    both = torch.tensor([[True, True]])
    one = combine_with_specialists(p_g, [p_spec], [[2, 3]], torch.tensor([[True]]), steps=800)
    mean = combine_with_specialists(p_g, [p_spec, p_spec], [[2, 3], [2, 3]], specialist_term_weights(both, "mean"), steps=800)
    summed = combine_with_specialists(p_g, [p_spec, p_spec], [[2, 3], [2, 3]], specialist_term_weights(both, "sum"), steps=800)
    assert torch.allclose(mean, one, atol=1e-6)
    assert summed[0, 3] > one[0, 3] + 0.02  # the doubled term pulls q further towards the specialist


def test_combination_verdict_says_gain_loss_or_noise():
    from asr_kd.experiments.specialists_report import combination_verdict

    base = {"num_test": 5000}
    noise = combination_verdict({**base, "only_combined_right": 60, "only_generalist_right": 56, "p_value": 0.78})
    assert noise == (
        "Paired test on the 5000 test examples: 60 only the combination gets right, 56 only the generalist (net +4), "
        "McNemar exact p=0.78; within noise (p >= 0.05): no evidence that the specialists help."
    )
    gain = combination_verdict({**base, "only_combined_right": 90, "only_generalist_right": 50, "p_value": 0.00095})
    assert gain.endswith("(net +40), McNemar exact p=0.00095; a significant gain (p < 0.05): the specialists earn their place.")
    loss = combination_verdict({**base, "only_combined_right": 50, "only_generalist_right": 127, "p_value": 1e-8})
    assert "(net -77)" in loss and loss.endswith("a significant loss (p < 0.05): the specialists cost accuracy.")


def test_coverage_table_counts_every_example():
    p_g = torch.tensor([[0.6, 0.4, 0.0], [0.2, 0.8, 0.0], [0.1, 0.1, 0.8]], dtype=torch.float64)
    q = torch.tensor([[0.3, 0.7, 0.0], [0.2, 0.8, 0.0], [0.1, 0.1, 0.8]], dtype=torch.float64)
    labels = torch.tensor([1, 1, 2])
    sets = [[0, 1], [1, 2]]
    active = active_specialists(p_g, sets, top_n=1)
    rows = coverage_table(p_g, q, labels, sets, active)
    assert sum(r["num_examples"] for r in rows) == 3
    by_c = {r["num_covering"]: r for r in rows}
    # example 0: top class 0 -> spec 0 active, covers label 1; example 1: top 1 -> both active,
    # both cover label 1; example 2: top 2 -> spec 1, covers label 2
    assert by_c[1]["num_examples"] == 2 and by_c[1]["delta_correct"] == 1
    assert by_c[2]["num_examples"] == 1 and by_c[2]["delta_correct"] == 0


def test_combination_lowers_the_objective():
    p_g = _random_probs(6, 8, 3)
    sets = [[0, 1, 2], [2, 5], [6, 7]]
    spec = [_random_probs(6, len(s) + 1, 10 + m, scale=4.0) for m, s in enumerate(sets)]
    active = torch.rand(6, 3, generator=torch.Generator().manual_seed(0)) < 0.7
    q = combine_with_specialists(p_g, spec, sets, active, steps=300)
    before = combination_objective(p_g, p_g, spec, sets, active)
    after = combination_objective(q, p_g, spec, sets, active)
    assert torch.all(after <= before + 1e-12)
    assert torch.all(after[active.any(1)] < before[active.any(1)])
    # the objective is zero when every distribution agrees with q
    assert torch.allclose(combination_objective(p_g, p_g, spec, sets, torch.zeros_like(active)), torch.zeros(6, dtype=torch.float64))


def test_aggregate_to_specialist_keeps_mass():
    p = _random_probs(5, 9, 4)
    agg = aggregate_to_specialist(p, [7, 2])
    assert agg.shape == (5, 3)
    assert torch.allclose(agg[:, 0], p[:, 7]) and torch.allclose(agg.sum(-1), torch.ones(5, dtype=p.dtype))


def test_specialist_network_starts_from_the_generalist_without_sharing_weights():
    torch.manual_seed(0)
    generalist = MLP(12, (8, 6), 5)
    w, b = specialist_output_init(generalist.output.weight, generalist.output.bias, [1, 3])
    special = generalist.with_output_layer(w, b)
    x = torch.randn(4, 12)
    with torch.no_grad():
        g, s = generalist(x), special(x)
    assert s.shape == (4, 3)
    assert torch.allclose(s[:, :2], g[:, [1, 3]])  # its classes start with the generalist's logits
    with torch.no_grad():
        special.body[0].weight.add_(1.0)
    with torch.no_grad():
        assert torch.equal(generalist(x), g)  # the generalist is untouched


def test_dustbin_comparison_puts_both_models_on_the_same_footing() -> None:
    from asr_kd.experiments.specialists import dustbin_comparison

    labels = torch.tensor([0, 1, 2, 3, 4, 5, 2, 2])
    classes = [2, 3]  # test examples 2, 3, 6, 7 are inside; half the examples are outside
    perfect = torch.nn.functional.one_hot(labels, 6).double()
    # A specialist over [2, 3, dustbin] that always says dustbin.
    always_dustbin = torch.tensor([[0.1, 0.1, 0.8]], dtype=torch.float64).repeat(8, 1)
    row = dustbin_comparison(0, classes, always_dustbin, perfect, labels)
    assert row["generalist_aggregated_accuracy"] == 1.0 and row["specialist_accuracy"] == 0.0
    assert row["outside_share"] == 0.5 and row["generalist_mean_dustbin"] == pytest.approx(0.5)
    assert row["specialist_mean_dustbin"] == pytest.approx(0.8)
    # A uniform generalist: every class at 1/6, so the aggregated dustbin (4/6) wins every example.
    uniform = torch.full((8, 6), 1 / 6, dtype=torch.float64)
    row = dustbin_comparison(0, classes, always_dustbin, uniform, labels)
    assert row["generalist_aggregated_accuracy"] == 0.0 and row["generalist_mean_dustbin"] == pytest.approx(4 / 6)


def test_dustbin_share_of_the_training_set_and_its_prior_correction():
    labels = np.repeat(np.arange(10), 100)  # class 0 is 10% of the data
    idx = specialist_training_indices(labels, [0], seed=0, outside_ratio=3.0)
    assert len(idx) == 400 and int((labels[idx] == 0).sum()) == 100  # 300 from the dustbin: three quarters
    # trained with 3 dustbin examples per class example, the natural odds are 9:1, so the
    # dustbin logit gains log(9) - log(3) = log(3)
    assert dustbin_prior_correction(0.1, 3.0) == pytest.approx(np.log(3.0))
    with pytest.raises(ConfigError, match="outside_ratio must be > 0, got 0"):
        specialist_training_indices(labels, [0], seed=0, outside_ratio=0)


def test_control_verdicts_need_a_significant_gain_over_both_baselines():
    from asr_kd.experiments.specialists_report import both_baselines_verdict, control_verdict

    # Fashion-MNIST-like: a gain over the generalist, none over the generalist trained longer
    r = {"num_test": 10000, "only_combined_right": 190, "only_generalist_right": 120, "p_value": 8.6e-5,
         "longer": {"accuracy": 0.885, "combined_vs_longer": {"only_a_right": 100, "only_b_right": 130, "p_value": 0.056}}}
    assert control_verdict(r) == (
        "Against the generalist trained longer: 100 only the combination gets right, 130 only the longer generalist (net -30), "
        "McNemar exact p=0.056; within noise (p >= 0.05): the specialists add nothing that training the generalist as long does not."
    )
    assert both_baselines_verdict(r) == "The combination does not significantly beat the generalist trained longer: the specialists do not earn their place here."
    r["longer"]["combined_vs_longer"] = {"only_a_right": 160, "only_b_right": 100, "p_value": 2.5e-4}
    assert control_verdict(r).endswith("a significant gain (p < 0.05): the specialists add more than the same extra training of the generalist.")
    assert both_baselines_verdict(r) == "The combination significantly beats both baselines: the specialists earn their place."
    r["p_value"] = 0.3
    assert both_baselines_verdict(r).startswith("The combination does not significantly beat the generalist:")
    r["longer"]["combined_vs_longer"] = {"only_a_right": 50, "only_b_right": 120, "p_value": 1e-7}
    assert control_verdict(r).endswith("a significant loss (p < 0.05): training the generalist longer beats adding the specialists.")
    assert both_baselines_verdict(r).startswith("The combination does not significantly beat the generalist or the generalist trained longer:")


def test_a_step_budget_trains_exactly_that_many_steps_with_a_partial_last_epoch():
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from asr_kd.experiments.classifier import TrainSpec, train_classifier

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(250, 6, generator=g), torch.randint(0, 3, (250,), generator=g)
    model = MLP(6, [8], 3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # the steps the training reports are the optimiser's: count them apart, in the optimiser itself
    counted = [0]
    hook = register_optimizer_step_post_hook(lambda *_: counted.__setitem__(0, counted[0] + 1))
    try:
        trained = train_classifier(model, x, y, TrainSpec(1, 100, 1e-2, 0, max_steps=7))  # 3 steps an epoch: 3 + 3 + 1
        assert trained.steps == counted[0] == 7 and len(trained.losses) == 3 and all(np.isfinite(trained.losses))
        assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items())
        assert train_classifier(model, x, y, TrainSpec(2, 100, 1e-2, 0)).steps == counted[0] - 7 == 6  # no budget: whole epochs
    finally:
        hook.remove()


def test_longer_verdict_reports_what_the_extra_training_alone_changed():
    from asr_kd.experiments.specialists_report import longer_verdict

    r = {"longer": {"longer_vs_generalist": {"only_a_right": 130, "only_b_right": 125, "p_value": 0.8}}}
    assert longer_verdict(r) == (
        "The extra training alone (the control against the generalist): 130 only the longer generalist gets right, 125 only the "
        "generalist (net +5), McNemar exact p=0.8; within noise (p >= 0.05)."
    )
    r["longer"]["longer_vs_generalist"]["p_value"] = 0.01
    assert longer_verdict(r).endswith("p=0.01; a significant gain (p < 0.05).")
    r["longer"]["longer_vs_generalist"]["only_a_right"] = 90
    assert longer_verdict(r).endswith("(net -35), McNemar exact p=0.01; a significant loss (p < 0.05).")
