"""bench/hybrid_frame_rate.py's parts that need no recipe run: frame pooling by value, the skip
topology (Kaldi's own minimum phone length, probabilities, silence untouched) and the skip
without a finished run."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from asr_kd.errors import ConfigError
from asr_kd.gmm.topology import make_topology, topology_text

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_hybrid_frame_rate", ROOT / "bench" / "hybrid_frame_rate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_hybrid_frame_rate"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_pooling_means_blocks_and_picks_rows() -> None:
    bench = _bench()
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    # Blocks (0, 1), (2, 3) and (4, 4 repeated): the last block is filled with the last row.
    np.testing.assert_array_equal(bench.pool_frames(x, 2, "mean"), [[1, 2], [5, 6], [8, 9]])
    np.testing.assert_allclose(bench.pool_frames(x, 3, "mean"), [[2, 3], [22 / 3, 25 / 3]], rtol=1e-6)  # rows 3, 4, 4
    np.testing.assert_array_equal(bench.pool_frames(x, 2, "pick"), [[0, 1], [4, 5], [8, 9]])
    assert bench.pool_frames(x, 1, "mean") is x
    for factor, how in ((0, "mean"), (2, "max")):
        with pytest.raises(ConfigError):
            bench.pool_frames(x, factor, how)


def _transitions(entry: str) -> dict[int, dict[int, float]]:
    return {int(m.group(1)): {int(d): float(p) for d, p in re.findall(r"<Transition>\s*(\d+)\s*([-+.eE\d]+)", m.group(2))}
            for m in re.finditer(r"<State>\s*(\d+)\s*<PdfClass>\s*\d+(.*?)</State>", entry)}


@pytest.mark.parametrize("states, sil_states", [(3, 5), (4, 5), (3, 2)])
def test_skip_topology_halves_the_shortest_phone_and_keeps_silence(states: int, sil_states: int) -> None:
    bench = _bench()
    text = topology_text([1, 2, 3], [4], num_nonsil_states=states, num_sil_states=sil_states)
    skipped = bench.skip_topology(text, silence_phones=[4])
    before, after = make_topology(text), make_topology(skipped)
    # Kaldi's own count: a phone of n states needs n frames; with jumps of two, ceil(n / 2).
    assert [before.min_length(p) for p in (1, 2, 3)] == [states] * 3
    assert [after.min_length(p) for p in (1, 2, 3)] == [(states + 1) // 2] * 3
    # Silence keeps its HMM, also when it is left to right (2 states).
    assert after.min_length(4) == before.min_length(4) and after.num_pdf_classes(1) == states
    entries = re.findall(r"<TopologyEntry>.*?</TopologyEntry>", skipped, re.S)
    assert entries[1] == re.findall(r"<TopologyEntry>.*?</TopologyEntry>", text, re.S)[1]
    arcs = _transitions(entries[0])
    assert all(abs(sum(a.values()) - 1) < 1e-6 for a in arcs.values())
    # The topology's own 0.75 / 0.25 keep their ratio in the remaining 0.8.
    assert arcs[0] == {0: 0.6, 1: 0.2, 2: 0.2} and arcs[states - 1] == {states - 1: 0.75, states: 0.25}
    assert _transitions(bench.skip_topology(text, [4], skip_probability=0.5).split("</TopologyEntry>")[0])[0] == {0: 0.375, 1: 0.125, 2: 0.5}


def test_skip_topology_leaves_an_entry_naming_a_silence_phone() -> None:
    text = topology_text([1, 2, 3], [4])
    assert _bench().skip_topology(text, silence_phones=[2, 4]) == text


def test_skips_without_a_run_and_refuses_a_factor_of_one(tmp_path: Path, capsys) -> None:
    bench = _bench()
    results = tmp_path / "RESULTS.md"
    assert bench.main(["--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp"), "--results", str(results)]) == 0
    out = capsys.readouterr()
    assert "hybrid_frame_rate" in out.out + out.err and not results.exists()
    for bad in (["--factors", "1"], ["--multipliers", "0"]):
        with pytest.raises(SystemExit) as exit_:
            bench.main([*bad, "--exp", str(tmp_path / "exp")])
        assert exit_.value.code == 2
