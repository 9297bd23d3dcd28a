"""CPU of pool workers this process does not wait for (a forkserver pool's) reaches the stage records."""

from __future__ import annotations

import multiprocessing
import os
import time

from asr_kd.resource_usage import detached_cpu_seconds, note_detached_cpu, process_cpu_seconds
from asr_kd.stages.provenance import _Usage


def _spin(seconds: float) -> float:
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
    return time.process_time() - start


def test_forkserver_workers_cpu_is_counted_once_noted() -> None:
    start = _Usage.now()
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(2) as pool:
        spent = sum(pool.map(_spin, [0.3, 0.3, 0.3, 0.3]))
        before_note = _Usage.now()
        added = note_detached_cpu([p.pid for p in pool._pool])
    after = _Usage.now()
    assert spent >= 1.2
    # RUSAGE_CHILDREN does not see the forkserver's children: nearly nothing of the work shows...
    assert before_note.cpu - start.cpu < 0.5 * spent
    # ...until the workers' own counters are noted.
    assert added >= 0.95 * spent and detached_cpu_seconds() >= added
    assert after.cpu - start.cpu >= 0.95 * spent


def test_process_cpu_seconds_of_this_process_and_a_gone_one() -> None:
    _spin(0.2)
    assert process_cpu_seconds(os.getpid()) >= 0.2
    assert process_cpu_seconds(2**22 + 12345) == 0.0  # beyond pid_max: no such process
