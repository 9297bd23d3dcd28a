"""Specialist models for confusable classes (Hinton, Vinyals & Dean 2015, section 5).

Task-agnostic building blocks for any classifier with many classes:

* :func:`cluster_classes` / :func:`specialist_class_sets`: sets of classes that the generalist
  confuses, found by k-means on the columns of the covariance matrix of its predicted
  probabilities;
* :func:`specialist_labels`, :func:`aggregate_to_specialist`, :func:`specialist_training_indices`,
  :func:`specialist_output_init`, :func:`dustbin_prior_correction`,
  :func:`specialist_soft_targets`: the data, initial output layer, prior correction and soft
  targets of a specialist that predicts its classes plus a dustbin class;
* :func:`active_specialists`, :func:`combine_with_specialists`: at test time, the distribution
  ``q`` minimising ``KL(p_g || q) + sum_m w_m KL(p_m || q_m)`` over the active specialists, where
  ``q_m`` is ``q`` restricted to specialist m's classes with the rest summed into its dustbin
  and ``w_m`` 1 (the paper) or 1 / active specialists (:func:`specialist_term_weights`);
* :func:`combination_objective`: that objective, per example;
* :func:`coverage_table`: the Table 4 analogue (accuracy change grouped by how many active
  specialists cover the correct class).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from asr_kd.config_secondary import SPECIALIST_COMBINE_WEIGHTINGS
from asr_kd.errors import ConfigError

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Confusable clusters
# --------------------------------------------------------------------------------------------


def prediction_covariance(probs: np.ndarray) -> np.ndarray:
    """Return the ``[K, K]`` covariance over examples of the predicted probabilities ``[N, K]``.
    Classes that the model tends to predict together (confuses) have positive covariance."""
    probs = np.asarray(probs, dtype=np.float64)
    centred = probs - probs.mean(axis=0, keepdims=True)
    return centred.T @ centred / max(1, probs.shape[0] - 1)


def kmeans(points: np.ndarray, k: int, seed: int, iterations: int = 100, restarts: int = 4) -> np.ndarray:
    """Return a cluster index in ``0..k-1`` for each row of ``points`` ``[M, D]``: Lloyd's
    algorithm from k-means++ seeds, the best of ``restarts`` runs by within-cluster squared
    distance. Every cluster is non-empty when ``k <= M``; deterministic given ``seed``."""
    points = np.asarray(points, dtype=np.float64)
    m = points.shape[0]
    if not 1 <= k <= m:
        raise ConfigError(f"k-means needs 1 <= k <= number of points, got k={k} for {m} points")
    rng = np.random.default_rng(seed)
    best, best_cost = np.zeros(m, dtype=np.int64), np.inf
    for _ in range(restarts):
        centres = _kmeans_pp(points, k, rng)
        assign = np.full(m, -1)
        for _ in range(iterations):
            dist = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
            new = dist.argmin(axis=1)
            # an emptied cluster takes the point farthest from its centre, so none stays empty
            for c in range(k):
                if not np.any(new == c):
                    far = int(dist[np.arange(m), new].argmax())
                    new[far] = c
                    dist[far, :] = np.inf
            if np.array_equal(new, assign):
                break
            assign = new
            centres = np.stack([points[assign == c].mean(axis=0) for c in range(k)])
        cost = float(((points - centres[assign]) ** 2).sum())
        if cost < best_cost:
            best, best_cost = assign.copy(), cost
    return best


def _kmeans_pp(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Return ``k`` initial centres chosen by k-means++ (each next centre drawn with probability
    proportional to its squared distance from the nearest centre so far)."""
    centres = [points[rng.integers(points.shape[0])]]
    for _ in range(1, k):
        d2 = np.min([((points - c) ** 2).sum(-1) for c in centres], axis=0)
        total = d2.sum()
        idx = rng.integers(points.shape[0]) if total <= 0 else rng.choice(points.shape[0], p=d2 / total)
        centres.append(points[idx])
    return np.stack(centres)


def cluster_classes(probs: np.ndarray, num_clusters: int, seed: int, classes: Sequence[int] | None = None) -> list[list[int]]:
    """Return a partition of ``classes`` (default: all columns of ``probs``) into
    ``num_clusters`` non-empty sets of classes that the model confuses: k-means on the
    columns of the prediction covariance matrix, restricted to ``classes``. Sets are sorted,
    largest first."""
    cov = prediction_covariance(probs)
    classes = list(range(cov.shape[0])) if classes is None else sorted(set(int(c) for c in classes))
    if any(not 0 <= c < cov.shape[0] for c in classes):
        raise ConfigError(f"classes to cluster must lie in 0..{cov.shape[0] - 1}")
    # each class is described by its column of covariances with the requested classes
    points = cov[np.ix_(classes, classes)].T
    # normalising the columns makes classes cluster by whom they co-vary with, not by how often
    # they are predicted at all
    points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    assign = kmeans(points, num_clusters, seed)
    sets = [sorted(classes[i] for i in np.flatnonzero(assign == c)) for c in range(num_clusters)]
    return sorted(sets, key=lambda s: (-len(s), s))


def specialist_class_sets(
    probs: np.ndarray,
    num_clusters: int,
    num_clusterings: int,
    seed: int,
    min_size: int = 2,
    max_size: int | None = None,
) -> list[list[int]]:
    """Return the class sets of the specialists: the union of ``num_clusterings`` k-means
    partitions (different seeds; repeats dropped), keeping sets of ``min_size`` to ``max_size``
    classes. Several partitions let a class be covered by more than one specialist."""
    seen: set[tuple[int, ...]] = set()
    out: list[list[int]] = []
    for i in range(num_clusterings):
        for s in cluster_classes(probs, num_clusters, seed + i):
            key = tuple(s)
            if key in seen or len(s) < min_size or (max_size is not None and len(s) > max_size):
                continue
            seen.add(key)
            out.append(s)
    return out


# --------------------------------------------------------------------------------------------
# Training a specialist
# --------------------------------------------------------------------------------------------


def specialist_labels(labels: Tensor, classes: Sequence[int]) -> Tensor:
    """Return the specialist's targets for full-task ``labels``: the position of the label in
    ``classes``, or ``len(classes)`` (the dustbin) for every other class."""
    lookup = torch.full((int(max(int(labels.max()), max(classes))) + 1,), len(classes), dtype=torch.long)
    lookup[torch.as_tensor(list(classes))] = torch.arange(len(classes))
    return lookup[labels]


def specialist_training_indices(labels: np.ndarray, classes: Sequence[int], seed: int, outside_ratio: float = 1.0) -> np.ndarray:
    """Return indices of a specialist's training set: every example of its ``classes`` plus
    ``round(outside_ratio * inside)`` drawn at random (without replacement where possible) from
    the remaining examples: with the default ratio 1 (the paper's), half the set is from its
    classes. Sorted; deterministic given ``seed``."""
    labels = np.asarray(labels)
    inside = np.flatnonzero(np.isin(labels, classes))
    outside = np.flatnonzero(~np.isin(labels, classes))
    if len(inside) == 0 or len(outside) == 0:
        raise ConfigError(f"a specialist needs training examples inside and outside its classes {list(classes)}")
    if outside_ratio <= 0:
        raise ConfigError(f"a specialist's outside_ratio must be > 0, got {outside_ratio}")
    rng = np.random.default_rng(seed)
    size = max(1, int(round(outside_ratio * len(inside))))
    extra = rng.choice(outside, size=size, replace=size > len(outside))
    return np.sort(np.concatenate([inside, extra]))


def specialist_output_init(weight: Tensor, bias: Tensor, classes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Return the initial output layer ``(W [|S|+1, H], b [|S|+1])`` of a specialist from the
    generalist's output layer ``weight [K, H]``, ``bias [K]``: its classes keep their rows; the
    dustbin row is the mean of the other rows with ``log(number of other classes)`` added to the
    bias, so that it starts near the summed probability of the classes it stands for."""
    idx = torch.as_tensor(list(classes))
    others = torch.ones(weight.shape[0], dtype=torch.bool)
    others[idx] = False
    w = torch.cat([weight[idx], weight[others].mean(dim=0, keepdim=True)])
    b = torch.cat([bias[idx], (bias[others].mean() + torch.log(others.sum().to(bias.dtype))).reshape(1)])
    return w.detach().clone(), b.detach().clone()


def aggregate_to_specialist(probs: Tensor, classes: Sequence[int]) -> Tensor:
    """Return full-task distributions ``[N, K]`` restricted to ``classes`` with the mass of every
    other class summed into a last, dustbin column: ``[N, |S| + 1]``."""
    inside = probs[:, list(classes)]
    return torch.cat([inside, (1.0 - inside.sum(dim=-1, keepdim=True)).clamp(min=0.0)], dim=-1)


def dustbin_prior_correction(class_fraction: float, outside_ratio: float = 1.0) -> float:
    """Return the amount to add to the dustbin's logit after training on a set with
    ``outside_ratio`` dustbin examples per example of the specialist's classes (1: half and
    half), when those classes make up ``class_fraction`` f of the natural data:
    ``log((1 - f) / f) - log(outside_ratio)``, which restores the natural ratio of dustbin to
    specialist classes."""
    if not 0.0 < class_fraction < 1.0:
        raise ConfigError(f"the specialist classes' share of the data must be in (0, 1), got {class_fraction}")
    return float(np.log((1.0 - class_fraction) / class_fraction) - np.log(outside_ratio))


def specialist_soft_targets(
    generalist_logits: Tensor, classes: Sequence[int], temperature: float, class_fraction: float | None = None, outside_ratio: float = 1.0
) -> Tensor:
    """Return a specialist's soft targets ``[N, |S| + 1]`` from the generalist's logits
    ``[N, K]``: the generalist's distribution aggregated to ``classes`` plus dustbin at
    temperature 1, then softened at ``temperature``.

    Aggregating first matters: summing the *softened* probabilities of hundreds of dustbin
    classes would give the dustbin far more mass than the generalist does (each small
    probability grows under softening), and the specialist would learn that inflated dustbin.
    With ``class_fraction`` (the classes' share f of the natural data) the dustbin's log-odds
    are lowered by :func:`dustbin_prior_correction` (``log((1 - f) / f)`` for a training set
    half from its classes, ``outside_ratio`` 1) before softening, so that the targets match the
    specialist's training set; adding it back after training undoes exactly that shift.
    """
    if temperature <= 0:
        raise ConfigError(f"the soft targets' temperature must be > 0, got {temperature}")
    log_p = torch.log_softmax(generalist_logits.detach().to(torch.float64), dim=-1)
    idx = torch.as_tensor(list(classes))
    others = torch.ones(log_p.shape[-1], dtype=torch.bool)
    others[idx] = False
    dustbin = torch.logsumexp(log_p[:, others], dim=-1, keepdim=True)
    if class_fraction is not None:
        dustbin = dustbin - dustbin_prior_correction(class_fraction, outside_ratio)
    aggregated = torch.cat([log_p[:, idx], dustbin], dim=-1)
    return torch.softmax(aggregated / temperature, dim=-1).to(generalist_logits.dtype)


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def active_specialists(generalist_probs: Tensor, class_sets: Sequence[Sequence[int]], top_n: int) -> Tensor:
    """Return a boolean ``[N, M]`` matrix: specialist m is active for example n when its class
    set contains one of the generalist's ``top_n`` most probable classes for n."""
    num_classes = generalist_probs.shape[-1]
    top = generalist_probs.topk(min(top_n, num_classes), dim=-1).indices  # [N, n]
    member = torch.zeros(len(class_sets), num_classes, dtype=torch.bool)
    for m, s in enumerate(class_sets):
        member[m, list(s)] = True
    # member[:, top] is [M, N, n]: any of the top classes in the set
    return member[:, top].any(dim=-1).T.contiguous()


def specialist_term_weights(active: Tensor, weighting: str) -> Tensor:
    """Return the weight ``[N, M]`` (float64) of each specialist's KL term in the combination
    objective from the boolean ``active`` matrix: 1 for every active specialist (``"sum"``, the
    paper's objective) or 1 / (number of active specialists in the row) (``"mean"``).

    Why "mean": with overlapping clusterings a class covered by two active specialists has its
    evidence counted twice against the generalist's once; on the MNIST pairs those examples lost
    77 correct answers (issue 16). With one active specialist per row both are the same."""
    if weighting not in SPECIALIST_COMBINE_WEIGHTINGS:
        raise ConfigError(f"the specialists' combination weighting must be one of {SPECIALIST_COMBINE_WEIGHTINGS}, got {weighting!r}")
    weights = active.to(torch.float64)
    if weighting == "mean":
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    return weights


def combine_with_specialists(
    generalist_probs: Tensor,
    specialist_probs: Sequence[Tensor],
    class_sets: Sequence[Sequence[int]],
    active: Tensor,
    steps: int = 300,
    learning_rate: float = 0.1,
) -> Tensor:
    """Return the full distributions ``q`` ``[N, K]`` that minimise, row by row,

    ``KL(p_g || q) + sum_{m active} w_m KL(p_m || q_m)``

    where ``p_g`` is the generalist's distribution, ``p_m`` (``[N, |S_m| + 1]``, dustbin last)
    specialist m's, and ``q_m`` is ``q`` on S_m with the mass of every other class summed into
    the dustbin. ``active`` is boolean ``[N, M]`` (every weight 1, the paper's objective) or the
    weights ``w`` themselves (:func:`specialist_term_weights`; 0 where inactive). Found by Adam on the logits of ``q``, started from ``log p_g``: a row with no
    active specialist is at the optimum already and is returned unchanged.
    """
    if len(specialist_probs) != len(class_sets) or active.shape != (generalist_probs.shape[0], len(class_sets)):
        raise ValueError("need one probability matrix and one active column per specialist class set")
    p_g = generalist_probs.detach().to(torch.float64)
    n, k = p_g.shape
    rows = active.any(dim=1)
    if not bool(rows.any()) or not class_sets:
        return p_g.clone().to(generalist_probs.dtype)
    # The specialists' terms, summed over the active ones, are linear in log q on the classes
    # inside their sets, so they fold into one target matrix; only each dustbin needs its own
    # column: log of the mass q puts outside the set, (q @ outside^T)[n, m].
    weight = active.to(torch.float64)  # [N, M]
    inside_target = torch.zeros(n, k, dtype=torch.float64)
    outside = torch.ones(len(class_sets), k, dtype=torch.float64)
    dustbin_target = torch.zeros(n, len(class_sets), dtype=torch.float64)
    for m, s in enumerate(class_sets):
        p_m = specialist_probs[m].detach().to(torch.float64)
        idx = torch.as_tensor(list(s))
        inside_target[:, idx] += weight[:, m : m + 1] * p_m[:, :-1]
        outside[m, idx] = 0.0
        dustbin_target[:, m] = weight[:, m] * p_m[:, -1]
    target = p_g + inside_target
    z = torch.log(p_g.clamp(min=1e-300)).requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=learning_rate)
    for _ in range(steps):
        log_q = torch.log_softmax(z, dim=-1)
        log_dustbin = torch.log((log_q.exp() @ outside.T).clamp(min=1e-300))
        # cross entropies: the KL divergences minus the (constant) entropies of the targets;
        # rows are independent, so the summed loss gives each row its own gradient
        loss = -(target * log_q).sum() - (dustbin_target * log_dustbin).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    q = torch.softmax(z.detach(), dim=-1)
    # rows without an active specialist keep p_g exactly (their gradient is zero anyway)
    q = torch.where(rows[:, None], q, p_g)
    return q.to(generalist_probs.dtype)


def combination_objective(
    q: Tensor,
    generalist_probs: Tensor,
    specialist_probs: Sequence[Tensor],
    class_sets: Sequence[Sequence[int]],
    active: Tensor,
) -> Tensor:
    """Return, per row, ``KL(p_g || q) + sum_{m active} w_m KL(p_m || q_m)`` (``[N]``): the
    quantity that :func:`combine_with_specialists` minimises (``active``: boolean, or the
    weights ``w``)."""
    eps = 1e-300
    q = q.to(torch.float64).clamp(min=eps)
    p_g = generalist_probs.to(torch.float64)
    out = (p_g * (p_g.clamp(min=eps).log() - q.log())).sum(-1)
    for m, s in enumerate(class_sets):
        idx = torch.as_tensor(list(s))
        q_m = torch.cat([q[:, idx], (1.0 - q[:, idx].sum(-1, keepdim=True)).clamp(min=eps)], dim=-1)
        p_m = specialist_probs[m].to(torch.float64)
        out = out + active[:, m].to(torch.float64) * (p_m * (p_m.clamp(min=eps).log() - q_m.log())).sum(-1)
    return out


def coverage_table(
    generalist_probs: Tensor,
    combined_probs: Tensor,
    labels: Tensor,
    class_sets: Sequence[Sequence[int]],
    active: Tensor,
) -> list[dict[str, float | int | None]]:
    """Return the Table 4 analogue: one row per number ``c`` of active specialists whose class
    set contains the correct class, with the number of test examples, the number the
    generalist and the combination get right (top-1), their difference and the relative
    accuracy change. Rows sum to all examples."""
    member = torch.zeros(len(class_sets), generalist_probs.shape[-1], dtype=torch.bool)
    for m, s in enumerate(class_sets):
        member[m, list(s)] = True
    covering = (active & member[:, labels].T).sum(dim=1)  # [N]
    gen_ok = generalist_probs.argmax(-1) == labels
    comb_ok = combined_probs.argmax(-1) == labels
    out: list[dict[str, float | int | None]] = []
    for c in sorted(set(covering.tolist())):
        sel = covering == c
        g, q = int(gen_ok[sel].sum()), int(comb_ok[sel].sum())
        out.append({
            "num_covering": int(c),
            "num_examples": int(sel.sum()),
            "generalist_correct": g,
            "combined_correct": q,
            "delta_correct": q - g,
            # undefined when the generalist gets none of them right (None in the record)
            "relative_accuracy_change": (q - g) / g if g else None,
        })
    return out
