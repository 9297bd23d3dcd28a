"""Decision tree: planted context splits are found, limits hold, and Kaldi reads our trees."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.errors import ConfigError
from asr_kd.gmm.questions import cluster_phones, context_questions, phone_statistics, questions_from_stats
from asr_kd.gmm.topology import make_topology, topology_text
from asr_kd.gmm.tree import Leaf, Split, Tree, TreeStats, build_tree, gaussian_loglike, leaf_statistics, monophone_tree
from asr_kd.kaldi import khg

SIL, A, B, C, D = 1, 2, 3, 4, 5
NUM_CLASSES = {SIL: 5, A: 3, B: 3, C: 3, D: 3}
DIM = 4


def planted_stats(seed: int = 0, frames: int = 40, shift: float = 3.0, a_like_c: bool = False) -> TreeStats:
    """Sampled statistics where phone B's pdf-class 1 moves by ``shift`` when the right phone is A or C."""
    rng = np.random.default_rng(seed)
    means = {p: rng.normal(0, 4, size=(NUM_CLASSES[p], DIM)) for p in NUM_CLASSES}
    if a_like_c:  # make A and C alike, so that clustering proposes {A, C}
        means[C] = means[A] + 0.1
    table = {}
    for left, centre, right in itertools.product([0, *NUM_CLASSES], NUM_CLASSES, [0, *NUM_CLASSES]):
        for k in range(NUM_CLASSES[centre]):
            mean = means[centre][k] + (shift if (centre, k) == (B, 1) and right in (A, C) else 0.0)
            x = rng.normal(mean, 1.0, size=(frames, DIM))
            table[((left, centre, right), k)] = np.concatenate([[frames], x.sum(0), (x**2).sum(0)])
    return TreeStats.from_dict(3, 1, table, DIM)


def num_roots() -> int:
    return sum(NUM_CLASSES.values())


def distractor_questions() -> list[frozenset[int]]:
    sets = [[p] for p in NUM_CLASSES] + [[A, B], [C, D], [A, C, D], [A, C], [B, D], [SIL, A]]
    return context_questions(sets, edge_like_phones=[SIL])


def test_builder_finds_exactly_the_planted_split() -> None:
    stats = planted_stats()
    tree = build_tree(stats, distractor_questions(), NUM_CLASSES, num_leaves=num_roots() + 1, min_count=10)
    splits = {root: node for root, node in tree.roots.items() if isinstance(node, Split)}
    assert list(splits) == [(B, 1)]
    node = splits[(B, 1)]
    assert node.key == 2 and node.yes_phones == frozenset({A, C})
    assert tree.num_pdfs == num_roots() + 1


def test_gain_threshold_stops_at_the_planted_split_and_clustering_proposes_it() -> None:
    stats = planted_stats(seed=1, a_like_c=True)
    questions = questions_from_stats(stats, edge_like_phones=[SIL])
    assert frozenset({A, C}) in questions
    # Noise alone gains a few nats per split; the planted split gains hundreds.
    tree = build_tree(stats, questions, NUM_CLASSES, num_leaves=1000, min_count=10, min_gain=60.0)
    splits = {root: node for root, node in tree.roots.items() if isinstance(node, Split)}
    assert list(splits) == [(B, 1)]
    assert splits[(B, 1)].yes_phones == frozenset({A, C}) and splits[(B, 1)].key == 2


@pytest.mark.parametrize("num_leaves,min_count", [(30, 10.0), (60, 200.0), (200, 600.0)])
def test_leaf_count_and_min_count_respected(num_leaves: int, min_count: float) -> None:
    stats = planted_stats(seed=2)
    qs = context_questions([[p] for p in NUM_CLASSES] + [[A, B], [C, D], [A, C]], [SIL])
    tree = build_tree(stats, qs, NUM_CLASSES, num_leaves=num_leaves, min_count=min_count)
    assert num_roots() <= tree.num_pdfs <= num_leaves
    counts = leaf_statistics(tree, stats)[:, 0]
    split_roots = {r for r, n in tree.roots.items() if isinstance(n, Split)}
    owners = tree.pdf_info()
    for pdf, count in enumerate(counts):
        if owners[pdf] in split_roots:
            assert count >= min_count
    assert counts.sum() == pytest.approx(stats.stats[:, 0].sum())


def test_too_few_leaves_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="num_leaves"):
        build_tree(planted_stats(), distractor_questions(), NUM_CLASSES, num_leaves=3, min_count=10)


def test_splits_only_increase_likelihood() -> None:
    stats = planted_stats(seed=3)
    qs = distractor_questions()
    small = build_tree(stats, qs, NUM_CLASSES, num_leaves=num_roots() + 2, min_count=10)
    large = build_tree(stats, qs, NUM_CLASSES, num_leaves=num_roots() + 12, min_count=10)

    def total(tree: Tree) -> float:
        return float(gaussian_loglike(leaf_statistics(tree, stats), 0.01).sum())

    assert total(large) > total(small) > total(monophone_like(stats))


def monophone_like(stats: TreeStats) -> Tree:
    return build_tree(stats, [], NUM_CLASSES, num_leaves=num_roots(), min_count=1)


def test_no_split_phones_keep_one_leaf_per_root() -> None:
    stats = planted_stats(seed=4)
    tree = build_tree(stats, distractor_questions(), NUM_CLASSES, num_leaves=80, min_count=10, no_split_phones=[SIL, B])
    for (phone, _), node in tree.roots.items():
        if phone in (SIL, B):
            assert isinstance(node, Leaf)


def kaldi_topology() -> khg.HmmTopology:
    return make_topology(topology_text([A, B, C, D], [SIL]))


def all_windows(width: int) -> list[tuple[int, ...]]:
    phones = [0, *NUM_CLASSES]
    return [w for w in itertools.product(phones, repeat=width) if w[width // 2] != 0]


def assert_kaldi_agrees(tree: Tree) -> None:
    ctx = tree.to_context_dependency()
    assert (ctx.context_width, ctx.central_position, ctx.num_pdfs) == (tree.context_width, tree.central_position, tree.num_pdfs)
    for window in all_windows(tree.context_width):
        for k in range(NUM_CLASSES[window[tree.central_position]]):
            ok, pdf = ctx.compute(list(window), k)
            assert ok and pdf == tree.pdf(window, k), (window, k)


def test_kaldi_maps_every_window_like_our_tree() -> None:
    stats = planted_stats(seed=5)
    tree = build_tree(stats, questions_from_stats(stats, [SIL]), NUM_CLASSES, num_leaves=70, min_count=20)
    assert tree.num_pdfs > num_roots() + 10  # a bushy tree, not only the planted split
    assert_kaldi_agrees(tree)
    # Kaldi builds a transition model on it, and the tree survives a pickle round trip.
    tm = khg.TransitionModel(ctx_dep=tree.to_context_dependency(), hmm_topo=kaldi_topology())
    assert tm.num_pdfs == tree.num_pdfs
    again = pickle.loads(pickle.dumps(tree))
    assert again.to_kaldi_bytes() == tree.to_kaldi_bytes()


def test_monophone_tree_matches_kaldis_own() -> None:
    ours = monophone_tree(NUM_CLASSES)
    topo = kaldi_topology()
    theirs = khg.monophone_context_dependency(phones=topo.phones, phone2num_pdf_classes=topo.get_phone_to_num_pdf_classes())
    assert_kaldi_agrees(ours)
    for phone, n in NUM_CLASSES.items():
        for k in range(n):
            assert theirs.compute([phone], k) == (True, ours.pdf((phone,), k))


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(22, 60))
def test_random_trees_round_trip_through_kaldi(seed: int, num_leaves: int) -> None:
    stats = planted_stats(seed=seed, frames=8)
    rng = np.random.default_rng(seed)
    qs = context_questions([rng.choice([0, *NUM_CLASSES], size=rng.integers(1, 4), replace=False) for _ in range(8)], [SIL])
    tree = build_tree(stats, qs, NUM_CLASSES, num_leaves=num_leaves, min_count=5)
    assert tree.num_pdfs <= num_leaves
    assert_kaldi_agrees(tree)


def test_cluster_phones_gives_a_binary_hierarchy() -> None:
    stats = planted_stats(seed=6, a_like_c=True)
    clusters = cluster_phones(phone_statistics(stats))
    assert len(clusters) == 2 * len(NUM_CLASSES) - 1
    assert clusters[-1] == frozenset(NUM_CLASSES)
    assert clusters[len(NUM_CLASSES)] == frozenset({A, C})  # the most similar pair merges first
    qs = context_questions(clusters, edge_like_phones=[SIL])
    assert frozenset({0}) in qs and all(0 in q for q in qs if SIL in q)
