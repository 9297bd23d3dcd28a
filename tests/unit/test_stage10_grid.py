"""Stage 10's wider acoustic-scale grid for its students: only beyond stage 7's grid, and only
while the baseline's own search stopped inside it (so the baseline stays as stage 7 tuned it)."""

from __future__ import annotations

import pytest

from asr_kd.config import DecodeConfig
from asr_kd.errors import ConfigError
from asr_kd.stages.s10_temperature_sweep import _students_grid

GRID = (0.0625, 0.0714, 0.0833, 0.1, 0.125)


def _table1(*bests: float) -> dict:
    """table1.json with one baseline seed per best scale, each searched around its best."""
    out = {}
    for i, best in enumerate(bests):
        k = GRID.index(best)
        scales = GRID[max(k - 1, 0): k + 2]
        out["baseline" if i == 0 else f"baseline_seed{i}"] = {
            "dev-clean": {"sweep": {"part": "dev-clean", "scales": list(scales), "errors": [100 if s != best else 90 for s in scales],
                                    "ref_words": 1000, "best": best}}}
    out["distilled"] = {"dev-clean": {"sweep": None}}  # other systems are not looked at
    return out


def test_extra_scales_extend_the_grid_beyond_its_ends() -> None:
    config = DecodeConfig(acoustic_scales=GRID)
    assert _students_grid(config, (), _table1(0.0714), "dev-clean") == GRID
    assert _students_grid(config, (0.05, 0.0556, 0.2), _table1(0.0714, 0.0833), "dev-clean") == (0.05, 0.0556, *GRID, 0.2)


def test_extra_scales_inside_the_grid_or_with_a_baseline_at_its_edge_are_refused() -> None:
    config = DecodeConfig(acoustic_scales=GRID)
    with pytest.raises(ConfigError, match=r"beyond the ends of decode.acoustic_scales \(0.0625 .. 0.125\)"):
        _students_grid(config, (0.05, 0.09), _table1(0.0714), "dev-clean")
    # The second seed's search stopped at the grid's end: a wider grid could move the baseline.
    with pytest.raises(ConfigError, match=r"stage 7's baseline_seed1 chose a scale at the edge of its grid"):
        _students_grid(config, (0.05,), _table1(0.0714, 0.0625), "dev-clean")
    with pytest.raises(ConfigError, match=r"stage 7's baseline was not tuned on dev-clean"):
        _students_grid(DecodeConfig(acoustic_scales=GRID), (0.05,), {"baseline": {"dev-clean": {}}}, "dev-clean")
