"""Mixing up: adding Gaussians to the GMMs of an acoustic model, deterministically.

Kaldi's own ``AmDiagGmm.split_by_count`` perturbs the new means with a random generator seeded
from ``std::random_device``, so two runs differ. This module does the same job with a numpy
generator that the caller seeds: first decide how many Gaussians each pdf should have (more data,
more Gaussians, growing as occupancy ** power), then split each pdf's heaviest Gaussian into two
halves whose means move apart by ``perturb_factor`` standard deviations in a random direction,
until the pdf has its share.
"""

from __future__ import annotations

import heapq

import numpy as np

from asr_kd.kaldi import khg


def gaussian_targets(current: np.ndarray, occupancy: np.ndarray, total: int, power: float, min_count: float) -> np.ndarray:
    """Return the number of Gaussians each pdf should have, summing to at most ``total``.

    Gaussians are handed out one at a time to the pdf with the most ``occupancy ** power`` per
    Gaussian; a pdf is not given a Gaussian that would leave fewer than ``min_count`` frames per
    Gaussian. Pdfs never lose Gaussians.
    """
    targets = np.asarray(current, dtype=np.int64).copy()
    occupancy = np.asarray(occupancy, dtype=np.float64)
    weight = np.maximum(occupancy, 0.0) ** power
    heap = [(-weight[i] / targets[i], i) for i in range(len(targets)) if occupancy[i] / (targets[i] + 1) >= min_count]
    heapq.heapify(heap)
    remaining = total - int(targets.sum())
    while remaining > 0 and heap:
        _, i = heapq.heappop(heap)
        targets[i] += 1
        remaining -= 1
        if occupancy[i] / (targets[i] + 1) >= min_count:
            heapq.heappush(heap, (-weight[i] / targets[i], i))
    return targets


def split_gmm(gmm: khg.DiagGmm, target: int, perturb_factor: float, rng: np.random.Generator) -> None:
    """Grow ``gmm`` in place to ``target`` Gaussians by splitting its heaviest ones."""
    weights = np.array(gmm.weights, dtype=np.float64)
    means = np.array(gmm.means, dtype=np.float64)
    variances = np.array(gmm.vars, dtype=np.float64)
    while len(weights) < target:
        k = int(np.argmax(weights))
        shift = perturb_factor * np.sqrt(variances[k]) * rng.standard_normal(means.shape[1])
        weights[k] /= 2.0
        weights = np.append(weights, weights[k])
        means = np.vstack([means, means[k] - shift])
        means[k] += shift
        variances = np.vstack([variances, variances[k]])
    gmm.resize(len(weights), means.shape[1])
    gmm.set_weights(weights.astype(np.float32))
    gmm.set_invvars_and_means(inv_vars=(1.0 / variances).astype(np.float32), means=means.astype(np.float32))
    gmm.compute_gconsts()


def mix_up(am: khg.AmDiagGmm, occupancy: np.ndarray, total: int, power: float, perturb_factor: float, min_count: float, rng: np.random.Generator) -> int:
    """Add Gaussians to ``am`` (in place) towards ``total``; return the new number of Gaussians."""
    current = np.array([am.num_gauss_in_pdf(i) for i in range(am.num_pdfs)])
    targets = gaussian_targets(current, occupancy, total, power, min_count)
    for pdf in np.nonzero(targets > current)[0]:
        split_gmm(am.get_pdf(int(pdf)), int(targets[pdf]), perturb_factor, rng)
    return am.num_gauss
