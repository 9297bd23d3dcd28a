"""run_measured: a step's result, CPU time and peak memory from a forked child, and its failures."""

from __future__ import annotations

import numpy as np
import pytest

from asr_kd.errors import ConfigError, DataError
from asr_kd.resource_usage import StepFailed, run_measured


def _allocate(mb: int) -> int:
    block = np.ones(mb * 2**20, dtype=np.uint8)  # ones: every page is touched, so resident
    return int(block.sum())


def _spin(n: int) -> int:
    return sum(i * i for i in range(n))


def _fail(kind: str) -> None:
    if kind == "data":
        raise DataError("lexicon.txt is empty; pass a lexicon")
    if kind == "config":
        raise ConfigError("bad size 0")
    raise ValueError("boom")


def test_result_comes_back_as_json() -> None:
    result, usage = run_measured(lambda a, b=0: {"sum": a + b, "pair": (a, b)}, 2, b=3)
    assert result == {"sum": 5, "pair": [2, 3]}  # a tuple comes back as a list
    assert usage.peak_rss_mb > 0 and usage.cpu_s >= 0 and usage.wall_s >= 0


def test_peak_memory_is_the_steps_own() -> None:
    _, floor = run_measured(lambda: None)
    total, big = run_measured(_allocate, 300)
    assert total == 300 * 2**20
    # The child touched 300 MiB on top of what a step that does nothing holds.
    assert big.peak_rss_mb - floor.peak_rss_mb >= 290
    assert big.peak_rss_mb - floor.peak_rss_mb < 400


def test_cpu_time_counts_the_child() -> None:
    _, idle = run_measured(lambda: None)
    _, busy = run_measured(_spin, 3_000_000)
    assert busy.cpu_s > idle.cpu_s
    assert busy.cpu_s > 0.01


@pytest.mark.parametrize("kind, error, message", [
    ("data", DataError, "lexicon.txt is empty; pass a lexicon"),
    ("config", ConfigError, "bad size 0"),
    ("other", StepFailed, "step _fail failed: ValueError: boom"),
])
def test_errors_are_raised_in_the_parent(kind, error, message) -> None:
    with pytest.raises(error) as info:
        run_measured(_fail, kind)
    assert str(info.value) == message


def test_memory_cap_makes_a_step_fail_instead_of_the_machine() -> None:
    with pytest.raises(StepFailed, match="MemoryError"):
        run_measured(_allocate, 2048, max_data_mb=1024)
    # Under the cap the same kind of step runs.
    assert run_measured(_allocate, 50, max_data_mb=1024)[0] == 50 * 2**20


def test_the_cap_counts_from_what_the_parent_holds() -> None:
    # A long-lived parent (a test runner that has loaded torch, a recipe) may hold more data memory
    # than the cap itself; the step's own growth is what the cap bounds. np.empty reserves 600 MiB
    # of data memory without touching it, so it costs no resident memory here (kept small so that
    # a machine without memory overcommit can reserve it too).
    held = np.empty(600 * 2**20, dtype=np.uint8)
    assert run_measured(_allocate, 50, max_data_mb=300)[0] == 50 * 2**20
    with pytest.raises(StepFailed, match="MemoryError"):
        run_measured(_allocate, 600, max_data_mb=300)
    del held


def _oom_score_adj() -> int:
    with open("/proc/self/oom_score_adj", encoding="ascii") as f:
        return int(f.read())


def test_a_capped_step_is_the_oom_killers_first_choice() -> None:
    assert run_measured(_oom_score_adj, max_data_mb=1024)[0] == 1000
    assert run_measured(_oom_score_adj)[0] == _oom_score_adj()
