"""bench/graph_push.py's tropical weight pushing: the same best path, every complete path cheaper by
V(start), and each state's cheapest way on free (a pushed graph is stochastic in the tropical semiring)."""

from __future__ import annotations

import runpy

import pytest

from asr_kd.kaldi import kaldifst
from tests.conftest import REPO_ROOT

# A small transducer with what HCLG has: a self-loop, a cycle, a negative weight (determinization leaves
# some), an epsilon arc, two final states, and a state (5) from which no final state is reachable.
TEXT = """0 1 1 1 0.5
0 2 2 2 1.0
1 1 3 0 0.2
1 3 4 3 -0.3
2 3 0 0 2.0
3 2 5 0 0.7
3 4 6 4 1.5
2 5 7 0 0.1
5 5 8 0 0.1
3 2.5
4 0.25
"""


def _best(fst: kaldifst.StdVectorFst) -> tuple[list[int], list[int], float]:
    ok, ilabels, olabels, weight = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(fst))
    assert ok
    return list(ilabels), list(olabels), float(weight.value)


def test_pushing_keeps_the_best_path_and_leaves_every_state_a_free_way_on() -> None:
    bench = runpy.run_path(str(REPO_ROOT / "bench" / "graph_push.py"))
    plain, pushed = kaldifst.compile(TEXT), kaldifst.compile(TEXT)
    cost = bench["costs_to_end"](plain)
    # By hand: 4 ends at 0.25; 3 at min(2.5, 1.5 + 0.25) = 1.75; 1 at -0.3 + 1.75; 2 at 2 + 1.75; 0 at 0.5 + 1.45; 5 never.
    assert cost.tolist() == pytest.approx([1.95, 1.45, 3.75, 1.75, 0.25, float("inf")])
    offset = bench["push_to_start"](pushed)
    assert offset == pytest.approx(1.95)
    ilabels, olabels, weight = _best(plain)
    assert (ilabels, olabels, weight) == ([1, 4, 6], [1, 3, 4], pytest.approx(1.95))
    assert _best(pushed) == (ilabels, olabels, pytest.approx(0.0, abs=1e-6))
    for s in range(4 + 1):  # every state that reaches the end: its cheapest arc or final weight costs nothing more
        ways = [a.weight.value for a in kaldifst.ArcIterator(pushed, s) if cost[a.nextstate] != float("inf")] + [pushed.final(s).value]
        assert min(ways) == pytest.approx(0.0, abs=1e-6)
    assert [a.weight.value for a in kaldifst.ArcIterator(pushed, 5)] == pytest.approx([0.1])  # unreachable end: untouched


def test_a_negative_cycle_is_refused() -> None:
    bench = runpy.run_path(str(REPO_ROOT / "bench" / "graph_push.py"))
    with pytest.raises(RuntimeError, match="negative-cost cycle"):
        bench["costs_to_end"](kaldifst.compile("0 1 1 1 1.0\n1 0 2 2 -2.0\n1 0.0\n"))


def test_search_errors_allow_float32_rounding_and_the_verdict_reads_the_table() -> None:
    bench = runpy.run_path(str(REPO_ROOT / "bench" / "graph_push.py"))
    best = {"a": 10.0, "b": 20.0, "c": 30.0}
    frames = {"a": 100, "b": 3000, "c": 100}
    # Pushed costs are V(start) = 4 lower: b is 0.002 over after the shift, within 1e-3 + 3000 x 1e-6; c is a real error.
    assert bench["search_errors"]({"a": 6.0, "b": 16.002, "c": 26.5}, best, frames, shift=4.0) == (1, 0)
    assert bench["search_errors"]({"a": 10.0, "b": 20.0, "c": 30.0}, best, frames, shift=4.0) == (3, 0)  # the shift's sign matters
    assert bench["search_errors"]({"a": 6.0, "b": 16.0, "c": 26.0}, best, frames, shift=-4.0) == (0, 3)
    rows = [(10.0, {"plain": (1.00, 30, 0), "pushed": (0.80, 60, 0)}), (11.0, {"plain": (1.20, 28, 0), "pushed": (1.02, 50, 0)})]
    text = bench["verdict"](rows)
    assert "pushed at beam 10 (60 search errors): no unpushed row here is as fast" in text
    assert "pushed at beam 11 (50 search errors) loses to unpushed at beam 10 (30 errors, 0.98 of its CPU time)" in text
