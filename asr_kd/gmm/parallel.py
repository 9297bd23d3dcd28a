"""Chunked work over utterances, in this process or in forked workers.

GMM training and alignment split the utterances into contiguous chunks and run one function
per chunk. With more than one job the chunks go to a pool of processes started with ``fork``:
the workers inherit the function and everything it refers to (models, features, alignments,
the graph compiler) from the parent, so no model is ever pickled; only the index of a chunk
goes out, and the function's result (plain lists and numpy arrays) comes back. Results are
returned in chunk order whatever the number of jobs, so a caller that reduces them in that
order gets the same numbers from one job as from many.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
from tqdm import tqdm

R = TypeVar("R")

# The function and chunks of the map in progress. Set before the pool forks, so that workers
# find them here (the pool only sends chunk indices); cleared when the map ends.
_TASK: dict[str, Any] = {}


def frame_chunks(num_frames: Sequence[int], num_chunks: int) -> list[range]:
    """Return at most ``num_chunks`` non-empty contiguous ranges of utterance indices that
    cover ``range(len(num_frames))``, each holding about the same number of frames.

    The split depends on the frame counts and ``num_chunks`` only (never on the number of
    jobs), which is what keeps training results independent of the number of jobs.
    """
    n = len(num_frames)
    if n == 0:
        return []
    num_chunks = max(1, min(num_chunks, n))
    ends = np.concatenate([[0.0], np.cumsum(np.asarray(num_frames, dtype=np.float64))])
    # Boundary k goes to the utterance boundary nearest to k/num_chunks of the frames, so each
    # chunk holds its share give or take one utterance; boundaries that coincide merge.
    targets = ends[-1] * np.arange(1, num_chunks) / num_chunks
    after = np.searchsorted(ends, targets, side="left")  # first boundary at or past the target
    nearer_before = targets - ends[after - 1] < ends[after] - targets
    cuts = np.where(nearer_before, after - 1, after)
    bounds = sorted({0, n, *(int(c) for c in cuts if 0 < c < n)})
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def _init_worker() -> None:
    # A worker must not start torch's intra-op thread pool on top of the other workers.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _run_chunk(index: int) -> Any:
    return _TASK["func"](_TASK["chunks"][index])


def map_chunks(func: Callable[[range], R], chunks: Sequence[range], num_jobs: int, desc: str, consume: Callable[[R], None]) -> None:
    """Call ``consume(func(chunk))`` for every chunk, in chunk order.

    ``func`` runs in this process when ``num_jobs <= 1`` (or there is a single chunk);
    otherwise in a pool of ``min(num_jobs, len(chunks))`` forked workers, created for this call
    only so that they see the models as they are now. ``func`` may be a closure: it is
    inherited, never pickled; its result must pickle. ``consume`` always runs here, as results
    arrive, so that a reduction need not hold every chunk's result at once. A worker's
    exception is raised here.
    """
    if _TASK:
        raise RuntimeError("map_chunks: called from inside another map_chunks; chunk functions must not start maps")
    with tqdm(total=len(chunks), desc=desc, unit="chunk", leave=False, disable=None) as bar:
        if num_jobs <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                consume(func(chunk))
                bar.update()
            return
        _TASK.update(func=func, chunks=list(chunks))
        try:
            with mp.get_context("fork").Pool(min(num_jobs, len(chunks)), initializer=_init_worker) as pool:
                for result in pool.imap(_run_chunk, range(len(chunks))):
                    consume(result)
                    bar.update()
        finally:
            _TASK.clear()
