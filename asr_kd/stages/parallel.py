"""Independent trainings (the teachers of stage 4, the students' seeds of stage 6) side by side,
one process each.

The networks of the CPU recipes are small: one torch thread per model is faster than two threads
on one model, so a 2-core machine trains two models at once in about the time of one. Each job
runs in a fresh (spawned) process with ``num_threads`` torch threads; its result must be
picklable. With ``jobs=1`` the jobs run one after another in this process. Training is seeded and
deterministic on CPU, so where a job runs does not change what it produces.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


def _init_worker(num_threads: int) -> None:
    import torch

    from asr_kd.utils import setup_logging

    setup_logging()  # to stderr, which the recipe's log (run.sh's tee) captures
    if num_threads > 0:
        torch.set_num_threads(num_threads)


def run_jobs(fn: Callable[..., Any], jobs_args: Sequence[tuple], jobs: int = 1, num_threads: int = 1) -> list[Any]:
    """Return ``[fn(*args) for args in jobs_args]``, computed by up to ``jobs`` processes.

    ``fn`` must be a module-level function (spawned processes import it). The first exception
    raised by a job is raised here after the running jobs finish; jobs not yet started are
    cancelled."""
    if jobs <= 1 or len(jobs_args) <= 1:
        return [fn(*args) for args in jobs_args]
    workers = min(jobs, len(jobs_args))
    log.info("running %d jobs in %d processes (%d torch thread(s) each)", len(jobs_args), workers, num_threads)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(num_threads,)) as pool:
        futures = [pool.submit(fn, *args) for args in jobs_args]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
