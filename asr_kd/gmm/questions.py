"""Phone questions for the decision tree, from clustering the phones' own statistics.

Bottom-up (agglomerative) clustering: start with one cluster per phone, each a diagonal
Gaussian of all the frames of that phone; repeatedly merge the two clusters whose merge loses the
least log-likelihood. Every cluster formed on the way (the nodes of the resulting binary tree,
singletons included) becomes a question set, so the question sets run from single phones to
broad classes of similar-sounding phones. Given phonetic classes can be added to them.
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping, Sequence

import numpy as np

from asr_kd.gmm.tree import TreeStats, gaussian_loglike

logger = logging.getLogger(__name__)


def phone_statistics(stats: TreeStats) -> dict[int, np.ndarray]:
    """Return {central phone: summed [count, sum x, sum x^2]} over all contexts and pdf-classes."""
    out: dict[int, np.ndarray] = {}
    for phone, row in zip(stats.windows[:, stats.central_position], stats.stats):
        out[int(phone)] = out.get(int(phone), 0.0) + row
    return out


def cluster_phones(phone_stats: Mapping[int, np.ndarray], var_floor: float = 0.01) -> list[frozenset[int]]:
    """Return the clusters of an agglomerative clustering of the phones (all 2P-1 nodes).

    The cost of merging two clusters is the log-likelihood lost by modelling their frames with
    one Gaussian instead of two. Ties are broken by phone ids, so the result is deterministic.
    """
    members: list[frozenset[int]] = [frozenset([p]) for p in sorted(phone_stats)]
    sums: list[np.ndarray] = [np.asarray(phone_stats[p], dtype=np.float64) for p in sorted(phone_stats)]
    out = list(members)
    while len(members) > 1:
        n = len(members)
        s = np.stack(sums)
        own = gaussian_loglike(s, var_floor)
        merged = gaussian_loglike((s[:, None, :] + s[None, :, :]).reshape(n * n, -1), var_floor).reshape(n, n)
        loss = own[:, None] + own[None, :] - merged
        loss[np.tril_indices(n)] = np.inf
        i, j = np.unravel_index(int(np.argmin(loss)), loss.shape)
        new_members, new_sum = members[i] | members[j], sums[i] + sums[j]
        members = [m for k, m in enumerate(members) if k not in (i, j)] + [new_members]
        sums = [x for k, x in enumerate(sums) if k not in (i, j)] + [new_sum]
        out.append(new_members)
    return out


def context_questions(phone_sets: Iterable[Iterable[int]], edge_like_phones: Sequence[int] = ()) -> list[frozenset[int]]:
    """Return the deduplicated question sets to ask about context positions.

    Phone 0 (beyond the utterance edge) joins every set that contains one of
    ``edge_like_phones`` (normally the silence phones, which the edge resembles) and is asked
    about alone too. Empty sets are dropped; the order is deterministic.
    """
    edge = set(edge_like_phones)
    seen: dict[frozenset[int], None] = {}
    for s in phone_sets:
        q = frozenset(int(p) for p in s)
        if not q:
            continue
        if q & edge:
            q = q | {0}
        seen.setdefault(q, None)
    seen.setdefault(frozenset([0]), None)
    return sorted(seen, key=lambda q: (len(q), sorted(q)))


def questions_from_stats(stats: TreeStats, edge_like_phones: Sequence[int] = (), extra_sets: Iterable[Iterable[int]] = (), var_floor: float = 0.01) -> list[frozenset[int]]:
    """Return context questions: clusters of the phones' statistics plus ``extra_sets``."""
    clusters = cluster_phones(phone_statistics(stats), var_floor)
    qs = context_questions(list(clusters) + [list(s) for s in extra_sets], edge_like_phones)
    logger.info("%d phone questions (%d from clustering)", len(qs), len(clusters))
    return qs
