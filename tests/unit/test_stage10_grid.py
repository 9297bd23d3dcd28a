"""Stage 10's wider acoustic-scale grid for its students: only beyond stage 7's grid, and only when
stage 7's search for the baseline, replayed on the wider grid with its recorded dev errors, visits
nothing new and picks the same scale (so the baseline stays as stage 7 tuned it)."""

from __future__ import annotations

import pytest

from asr_kd.config import DecodeConfig
from asr_kd.errors import ConfigError
from asr_kd.stages.s10_temperature_sweep import _students_grid

GRID = (0.0625, 0.0714, 0.0833, 0.1, 0.125, 0.1429, 0.1667)


def _table1(scales: tuple[float, ...], errors: tuple[int, ...], best: float) -> dict:
    """table1.json as stage 7 writes it: the first baseline seed tuned on dev, the other seeds not."""
    sweep = {"part": "dev-clean", "scales": list(scales), "errors": list(errors), "ref_words": 1219, "best": best}
    return {"baseline": {"dev-clean": {"sweep": sweep, "acoustic_scale": best}}, "baseline_seed1": {"dev-clean": {"sweep": None}},
            "distilled": {"dev-clean": {"sweep": None}}}


# mini's baseline at T = 2 (exp/decode/table1.json): searched from 0.1 down to 0.0625, best 0.0714.
MINI = _table1((0.0625, 0.0714, 0.0833, 0.1, 0.125), (637, 616, 621, 630, 671), 0.0714)


def test_extra_scales_extend_the_grid_beyond_its_ends() -> None:
    config = DecodeConfig(acoustic_scales=GRID)
    assert _students_grid(config, (), MINI, "dev-clean") == GRID
    assert _students_grid(config, (0.05, 0.0556, 0.2), MINI, "dev-clean") == (0.05, 0.0556, *GRID, 0.2)


def test_extra_scales_that_could_move_the_baseline_are_refused() -> None:
    config = DecodeConfig(acoustic_scales=GRID)
    with pytest.raises(ConfigError, match=r"beyond the ends of decode.acoustic_scales \(0.0625 .. 0.1667\)"):
        _students_grid(config, (0.05, 0.09), MINI, "dev-clean")
    # The baseline chose the grid's smallest scale: its search would go on to the new one.
    edge = _table1((0.0625, 0.0714, 0.0833, 0.1, 0.125), (600, 616, 621, 630, 671), 0.0625)
    with pytest.raises(ConfigError, match=r"stage 7's baseline would also decode scale 0.0556"):
        _students_grid(config, (0.0556,), edge, "dev-clean")
    # The default scale at an end of the grid: the new scale is the start's neighbour, decoded
    # first although the baseline's best (0.125) is not at an edge (review finding).
    config = DecodeConfig(acoustic_scales=(0.1, 0.125, 0.15), acoustic_scale=0.1)
    with pytest.raises(ConfigError, match=r"would also decode scale 0.08"):
        _students_grid(config, (0.08,), _table1((0.1, 0.125, 0.15), (105, 100, 102), 0.125), "dev-clean")
    # The default outside the grid: an extra scale becomes the start of the search.
    config = DecodeConfig(acoustic_scales=(0.05, 0.06, 0.07, 0.08), acoustic_scale=0.1)
    with pytest.raises(ConfigError, match=r"would also decode scale 0.1\b"):
        _students_grid(config, (0.04, 0.1, 0.12), _table1((0.06, 0.07, 0.08), (90, 95, 99), 0.06), "dev-clean")
    with pytest.raises(ConfigError, match=r"stage 7's baseline was not tuned on dev-clean"):
        _students_grid(DecodeConfig(acoustic_scales=GRID), (0.05,), {"baseline": {"dev-clean": {}}}, "dev-clean")
