"""bench/decode_penalty.py's rule for which of its two decodings must reproduce CTC stage 7's
table, and at which blank penalty, without a recipe run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from asr_kd.config import DecodeConfig

ROOT = Path(__file__).resolve().parents[2]
GRID = (-1.0, 0.0, 2.0, 4.0)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_decode_penalty", ROOT / "bench" / "decode_penalty.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_decode_penalty"] = mod
    spec.loader.exec_module(mod)
    return mod


def _scores(**entry) -> dict:
    return {"student: frame": {"dev-clean": {"acoustic_scale": 0.5, **entry}, "test-clean": {"acoustic_scale": 0.5, **entry}}}


def test_a_stage_without_penalties_is_reproduced_by_the_scale_alone() -> None:
    way = _bench().table_way
    plain = DecodeConfig()
    assert way(plain, _scores(), blank=False, penalties=(-1.0, 0.0, 1.0)) == ("scale", True)
    assert way(plain, _scores(), blank=True, penalties=GRID) == ("scale", False)


def test_a_searched_blank_grid_is_reproduced_by_the_same_grid_or_held_for_word_penalties() -> None:
    way = _bench().table_way
    searched = DecodeConfig(ctc_blank_penalties=GRID)
    scores = _scores(blank_penalty=2.0)
    # --blank with the stage's own grid: the scale-and-penalty side is the table.
    assert way(searched, scores, blank=True, penalties=GRID) == ("scale+penalty", False)
    # Word penalties: each system's blank penalty held at the stage's choice, the scale alone is the table.
    assert way(searched, scores, blank=False, penalties=(-1.0, 0.0, 1.0)) == ("scale", True)
    # --blank with another grid reproduces neither way: refused, naming the grid the stage searched.
    with pytest.raises(SystemExit, match=r"pass --blank --penalties -1 0 2 4 \(the grid it searched\)"):
        way(searched, scores, blank=True, penalties=(0.0, 1.0))


def test_a_stage_that_searched_word_penalties_is_refused_both_ways() -> None:
    way = _bench().table_way
    searched = DecodeConfig(insertion_penalties=(-1.0, 0.0, 1.0))
    for blank, grid in ((False, (-1.0, 0.0, 1.0)), (True, GRID)):
        with pytest.raises(SystemExit, match="decoded student: frame with a penalty.*decode.insertion_penalties=\\[\\]"):
            way(searched, _scores(insertion_penalty=1.0), blank=blank, penalties=grid)
