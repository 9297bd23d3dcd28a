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


def _iv(value: float, low: float, high: float) -> dict:
    return {"value": value, "low": low, "high": high, "excludes_zero": low > 0 or high < 0, "level": 0.95, "resamples": 2000}


def _row(t: float, seeds: list[dict], **extra) -> dict:
    return {"temperature": t, "mass_kept": 0.8, "kl_stored_vs_full": 0.4, "dev_frame_accuracy": 0.39, "dev_wer": 0.5,
            "acoustic_scale": 0.0714, "scale_at_grid_edge": False, "test_frame_accuracy": 0.38, "test_frame_accuracy_std": 0.001,
            "test_wer": 0.52, "test_wer_std": 0.008, "wer_vs_baseline": _iv(-0.02, -0.04, -0.01),
            "frame_accuracy_vs_baseline": _iv(0.03, 0.02, 0.04), "gain_share": None, "seeds": seeds, **extra}


def test_sweep_section_without_a_decoded_baseline_on_the_ood_part_and_from_an_old_sweep_json() -> None:
    """format_sweep: when stage 7 did not decode the baseline on the out-of-domain part, the section
    says so (the students' own numbers stay); a sweep.json written before that part was scored
    renders without its table; seed pairs that disagree in sign make a difference seed noise."""
    from asr_kd.config import KdConfig
    from asr_kd.stages.s10_temperature_sweep import format_sweep

    ood = {"ood_wer": 0.83, "ood_wer_std": 0.004, "ood_frame_accuracy": 0.249, "ood_wer_vs_baseline": None,
           "ood_frame_accuracy_vs_baseline": _iv(0.018, 0.012, 0.024)}
    seeds = [{"student": "students/sweep_T1", "test_wer": 0.52, "test_frame_accuracy": 0.38, "ood_wer": 0.83}] * 2
    own_seeds = [{"student": "students/distilled", "test_wer": 0.51, "test_frame_accuracy": 0.381, "ood_wer": 0.82},
                 {"student": "students/distilled_seed1", "test_wer": 0.53, "test_frame_accuracy": 0.38, "ood_wer": 0.84}]
    rows = {"1": _row(1.0, seeds, **ood, wer_vs_own_temperature=_iv(0.01, 0.002, 0.02),
                      frame_accuracy_vs_own_temperature=_iv(-0.001, -0.002, 0.001), ood_wer_vs_own_temperature=_iv(0.0, -0.02, 0.02),
                      test_wer_seed_differences_vs_own=[0.01, -0.01], test_frame_accuracy_seed_differences_vs_own=[-0.001, 0.0],
                      ood_wer_seed_differences_vs_own=[0.01, -0.01]),
            "2": _row(2.0, own_seeds, **ood)}
    result = {"baseline_seeds": 3, "num_seeds": 2, "own_temperature": 2.0, "beam": 11.0, "max_active": 2000, "extra_scales": [],
              "test_part": "test-clean", "ood_part": "test-ood", "baseline_ood_wer": None, "rows": rows}
    text = format_sweep(result, KdConfig(temperature=2.0), "test-clean", "cmd")
    assert "stage 7 did not decode the baseline on test-ood (--decode-parts)" in text
    assert "| 1 | 24.9% | 83.00 ± 0.40% | +60% | baseline not decoded | +1.80 [+1.20, +2.40] (yes, better than the baseline) |" in text
    # The test-clean WER interval excludes 0 but the seed pairs disagree: not "worse".
    assert "- T = 1: WER +1.00 [+0.20, +2.00] points, seed pairs +1.00, -1.00 (within seed noise: the seed pairs disagree in sign)" in text
    assert "test-ood WER +0.00 [-2.00, +2.00] points, seed pairs +1.00, -1.00 (noise: the interval contains 0)" in text
    old = {k: v for k, v in result.items() if k not in ("test_part", "ood_part", "baseline_ood_wer")}
    old["rows"] = {t: {k: v for k, v in r.items() if not k.startswith("ood_")} for t, r in rows.items()}
    old_text = format_sweep(old, KdConfig(temperature=2.0), "test-clean", "cmd")
    assert "test-ood" not in old_text and "- T = 1: WER +1.00 [+0.20, +2.00] points" in old_text


def test_a_decode_config_with_word_insertion_penalties_is_refused() -> None:
    """Stage 10 searches its students' acoustic scale only: with decode.insertion_penalties its
    students and stage 7's baseline would be tuned differently, so it refuses in one line."""
    with pytest.raises(ConfigError, match=r"stage 10 does not search a word insertion penalty \(decode.insertion_penalties \[-1.0, 0.0\]\)"):
        _students_grid(DecodeConfig(acoustic_scales=GRID, insertion_penalties=(-1.0, 0.0)), (), MINI, "dev-clean")
