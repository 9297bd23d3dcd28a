"""bench/shared_errors.py: which reference words each system misses, which every network shares,
and WER per noise band, counted by hand on small made-up decodings."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

BENCH = runpy.run_path(str(REPO_ROOT / "bench" / "shared_errors.py"))


def test_missed_words_are_the_substituted_and_deleted_reference_words() -> None:
    refs = {"u1": "A B C D", "u2": "E F", "u3": "G", "u4": ""}
    hyps = {"u1": "A X C", "u2": "E F H", "u4": "I J"}  # B substituted, D deleted; H inserted; u3 never decoded
    missed, inserted = BENCH["missed_words"](refs, hyps)
    assert missed == {("u1", 1), ("u1", 3), ("u3", 0)}
    assert inserted == {"u1": 0, "u2": 1, "u3": 0, "u4": 2}


def test_shared_counts_by_hand() -> None:
    missed = {"a": {("u1", 0), ("u1", 1), ("u2", 0), ("u3", 2)}, "b": {("u1", 0), ("u1", 1), ("u2", 1)},
              "c": {("u1", 0), ("u1", 1), ("u3", 2)}, "gmm": {("u1", 1), ("u4", 0)}}
    got = BENCH["shared_counts"](missed, ["a", "b", "c"], "gmm")
    # Every network misses u1:0 and u1:1; the GMM only u1:1 of them.
    assert (got["common"], got["common_with_gmm"], got["utterances"], got["worst"]) == (2, 1, 1, 2)
    assert got["shared_share"] == {"a": pytest.approx(2 / 4), "b": pytest.approx(2 / 3), "c": pytest.approx(2 / 3)}


def test_wer_per_noise_band_worst_first() -> None:
    assert [BENCH["noise_band"](m) for m in ({}, {"noise": "babble", "snr_db": 8.2}, {"noise": "pink", "snr_db": 12.0},
                                             {"noise": "pink", "snr_db": 19.0})] == ["clean", "babble, < 12 dB", "pink, 12-19 dB", "pink, >= 19 dB"]
    refs = {"u1": "A B C D", "u2": "E F", "u3": "G H", "u9": "X"}
    meta = {"u1": {"noise": "babble", "snr_db": 6.0}, "u2": {"noise": "babble", "snr_db": 7.0}, "u3": {}}  # u9: not in the corpus record
    errors = {"s": {"u1": 3, "u2": 0, "u3": 0, "u9": 1}, "t": {"u1": 0, "u2": 1, "u3": 1, "u9": 0}}
    assert BENCH["band_wers"](refs, errors, meta) == [("babble, < 12 dB", 2, 6, {"s": 0.5, "t": pytest.approx(1 / 6)}),
                                                      ("clean", 1, 2, {"s": 0.0, "t": 0.5})]


def test_the_default_section_leaves_titled_ones_alone(tmp_path: Path) -> None:
    """write_section replaces the section whose heading starts with the one given: the default
    heading must not be the start of a titled one (it was, and a default run deleted them)."""
    results = tmp_path / "RESULTS.md"
    titles = ("Errors every system shares on small, dev-clean", "Errors every system shares on small, test-clean", None)
    for title in (*titles, None):
        heading = BENCH["section_heading"](title)
        BENCH["write_section"](results, heading, f"{heading} (bench/shared_errors.py)\n\n{title}\n")
    text = results.read_text()
    assert text.count("## ") == 3 and all(f"\n{t}\n" in text for t in titles)


def test_without_a_finished_run_it_says_so(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert BENCH["main"](["--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp")]) == 0
    assert "shared_errors: no finished recipe run under" in capsys.readouterr().out
