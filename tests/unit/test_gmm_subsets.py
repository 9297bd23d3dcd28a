"""Training subsets (asr_kd/gmm/subsets.py) and the GmmConfig options that choose them."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.config import GmmConfig, config_from_dict
from asr_kd.errors import ConfigError
from asr_kd.gmm.subsets import shortest_utterances, spread_over_speakers
from asr_kd.stages.provenance import config_dict, fingerprint


def test_shortest_utterances_break_ties_by_id() -> None:
    ids = ["d", "a", "c", "b", "e"]
    frames = [300, 100, 200, 200, 50]
    assert shortest_utterances(ids, frames, 1) == {"e"}
    assert shortest_utterances(ids, frames, 3) == {"e", "a", "b"}  # b before c: same length, smaller id
    assert shortest_utterances(ids, frames, 4) == {"e", "a", "b", "c"}
    assert shortest_utterances(ids, frames, 0) == set(ids) == shortest_utterances(ids, frames, 9)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=40), st.integers(1, 40))
def test_no_left_out_utterance_is_shorter_than_a_chosen_one(frames: list[int], n: int) -> None:
    ids = [f"u{i:03d}" for i in range(len(frames))]
    chosen = shortest_utterances(ids, frames, n)
    assert len(chosen) == min(n, len(ids))
    longest_chosen = max((frames[i], ids[i]) for i in range(len(ids)) if ids[i] in chosen)
    assert all((frames[i], ids[i]) > longest_chosen for i in range(len(ids)) if ids[i] not in chosen)


def _corpus(per_speaker: dict[str, int]) -> tuple[list[str], list[str]]:
    ids, speakers = [], []
    for spk, n in per_speaker.items():
        for u in range(n):
            ids.append(f"{spk}-{u:03d}")
            speakers.append(spk)
    return ids, speakers


def test_spread_over_speakers_takes_about_as_many_from_each() -> None:
    ids, speakers = _corpus({"s1": 30, "s2": 10, "s3": 25, "s4": 3})
    spk_of = dict(zip(ids, speakers))
    chosen = spread_over_speakers(ids, speakers, 20, seed=0)
    counts = Counter(spk_of[u] for u in chosen)
    assert len(chosen) == 20 and set(counts) == {"s1", "s2", "s3", "s4"}
    # s4 has only 3: it gives them all, the others share the other 17 as evenly as can be.
    assert counts["s4"] == 3 and sorted(counts[s] for s in ("s1", "s2", "s3")) == [5, 6, 6]
    chosen = spread_over_speakers(ids, speakers, 40, seed=0)
    counts = Counter(spk_of[u] for u in chosen)
    assert counts["s4"] == 3 and counts["s2"] == 10 and sorted([counts["s1"], counts["s3"]]) == [13, 14]


def test_spread_over_speakers_is_seeded_and_ignores_input_order() -> None:
    ids, speakers = _corpus({"a": 20, "b": 20, "c": 20})
    first = spread_over_speakers(ids, speakers, 12, seed=3)
    assert first == spread_over_speakers(ids[::-1], speakers[::-1], 12, seed=3)
    assert first != spread_over_speakers(ids, speakers, 12, seed=4)
    assert spread_over_speakers(ids, speakers, 0, seed=3) == set(ids) == spread_over_speakers(ids, speakers, 60, seed=3)


@pytest.mark.parametrize("field", ["mono_subset", "tri_subset"])
@pytest.mark.parametrize("value", [-1, -2000])
def test_negative_subset_is_a_one_line_config_error(field: str, value: int) -> None:
    with pytest.raises(ConfigError) as err:
        GmmConfig(**{field: value})
    assert str(err.value) == f"gmm.{field} must be 0 (every training utterance) or a number of utterances >= 1, got {value}"


def test_subset_that_is_not_a_whole_number_is_refused() -> None:
    with pytest.raises(ConfigError, match="mono_subset"):
        config_from_dict(GmmConfig, {"mono_subset": "2k"})
    with pytest.raises(ConfigError, match="tri_subset"):
        GmmConfig(tri_subset=2.5)  # type: ignore[arg-type]


def test_subsets_enter_the_stage_record_only_when_set() -> None:
    base = {"gmm": GmmConfig()}
    assert "mono_subset" not in config_dict(base)["gmm"] and "tri_subset" not in config_dict(base)["gmm"]
    assert fingerprint(base) == fingerprint({"gmm": GmmConfig(mono_subset=0, tri_subset=0)})
    assert config_dict({"gmm": GmmConfig(mono_subset=2000)})["gmm"]["mono_subset"] == 2000
    assert fingerprint(base) != fingerprint({"gmm": GmmConfig(mono_subset=2000)}) != fingerprint({"gmm": GmmConfig(tri_subset=2000)})


def test_align_chunk_below_one_is_a_one_line_config_error(tmp_path) -> None:
    from asr_kd.stages.s3_gmm import run_gmm_stage

    with pytest.raises(ConfigError) as err:
        run_gmm_stage(tmp_path, tmp_path, tmp_path, GmmConfig(), "train-clean-100", [], align_chunk=0)
    assert str(err.value) == "align_chunk must be >= 1 cuts, got 0"
