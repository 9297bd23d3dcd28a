"""OpenFst text export (fst_utils.fst_to_text), the k2 lane's fixtures, and the k2 backend's
refusal to run in the main environment (k2 cannot be imported beside torch 2.11).

The k2 lane (``make test-k2``) loads our HLG into k2 from this text, so the export must be
lossless: these tests compile the text back with kaldifst (fstcompile) and compare arcs, final
costs and start state exactly, and decode with the round-tripped HLG.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.config import DecodeConfig
from asr_kd.ctc.k2_backend import ctc_loss_k2, hlg_from_openfst_text, k2_available
from asr_kd.decode.ctc import decode_ctc
from asr_kd.decode.fst_utils import fst_to_text
from asr_kd.errors import ConfigError
from asr_kd.kaldi import kaldifst
from tests.k2_lane.make_fixtures import EXACT, HLG_TEXT, RESULTS, build_fixtures

INF = float("inf")


def contents(fst: kaldifst.StdVectorFst) -> tuple[int, set, set]:
    """Return (start, {(src, dst, ilabel, olabel, cost)}, {(state, final cost)}) of ``fst``."""
    arcs = {(s, a.nextstate, a.ilabel, a.olabel, a.weight.value) for s in kaldifst.StateIterator(fst) for a in kaldifst.ArcIterator(fst, s)}
    finals = {(s, fst.final(s).value) for s in kaldifst.StateIterator(fst) if fst.final(s).value != INF}
    return fst.start, arcs, finals


def round_trip(fst: kaldifst.StdVectorFst) -> kaldifst.StdVectorFst:
    return kaldifst.compile(fst_to_text(fst), keep_state_numbering=True)


# Costs as float32 values with many digits (fstprint's 6 would not round-trip them), and zero.
costs = st.one_of(st.just(0.0), st.floats(-5.0, 50.0, width=32, allow_subnormal=False))


@st.composite
def random_fsts(draw) -> kaldifst.StdVectorFst:
    n = draw(st.integers(1, 6))
    fst = kaldifst.StdVectorFst()
    for _ in range(n):
        fst.add_state()
    fst.start = draw(st.integers(0, n - 1))
    for _ in range(draw(st.integers(0, 12))):
        src, dst = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        fst.add_arc(src, kaldifst.StdArc(draw(st.integers(0, 9)), draw(st.integers(0, 9)), draw(costs), dst))
    for s in range(n):
        if draw(st.booleans()):
            fst.set_final(s, draw(costs))
    return fst


@settings(max_examples=150, deadline=None)
@given(random_fsts())
def test_text_export_round_trips_exactly(fst) -> None:
    start, arcs, finals = contents(fst)
    if not any(a[0] == start for a in arcs) and not any(f[0] == start for f in finals):
        # A start state with nothing on it accepts nothing, and so does the empty text.
        assert fst_to_text(fst) == ""
        return
    assert contents(round_trip(fst)) == (start, arcs, finals)


def test_start_state_is_written_first() -> None:
    fst = kaldifst.StdVectorFst()
    for _ in range(3):
        fst.add_state()
    fst.start = 2
    fst.add_arc(0, kaldifst.StdArc(1, 1, 0.5, 1))
    fst.add_arc(2, kaldifst.StdArc(3, 4, 0.1234567, 0))
    fst.set_final(1, 1.5)
    lines = fst_to_text(fst).splitlines()
    assert lines[0].split("\t")[:4] == ["2", "0", "3", "4"]
    assert np.float32(lines[0].split("\t")[4]) == np.float32(0.1234567)
    assert lines[1:] == ["0\t1\t1\t1\t0.5", "1\t1.5"]
    # fstprint rounds the same cost to 6 digits.
    assert "0.123457" in fst.to_str()


def test_empty_fst_is_empty_text() -> None:
    assert fst_to_text(kaldifst.StdVectorFst()) == ""


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    out = tmp_path_factory.mktemp("k2_lane")
    return out, build_fixtures(out, seed=0)


def test_k2_lane_fixtures_hold_our_exact_decodings(fixtures) -> None:
    out, summary = fixtures
    assert json.loads((out / RESULTS).read_text()) == summary
    hlg = kaldifst.compile((out / HLG_TEXT).read_text())
    assert len(summary["matrices"]) >= 8
    oracles = 0
    for m in summary["matrices"]:
        x = np.load(out / m["file"])
        assert x.dtype == np.float32 and x.shape == (m["frames"], summary["num_tokens"])
        np.testing.assert_allclose(np.exp(x).sum(axis=1), 1.0, rtol=1e-5)
        # The HLG read back from the text decodes every matrix exactly as the one written.
        again = decode_ctc(hlg, x, EXACT, utt_id=m["name"])
        assert again.word_ids == m["word_ids"]
        assert again.score == pytest.approx(m["score"], rel=1e-6)
        if m["transcript_ids"] is not None:
            oracles += 1
            assert m["word_ids"] == m["transcript_ids"], m["name"]
    assert oracles >= 3


def test_fixture_decodings_are_exact(fixtures) -> None:
    # The default beam must not find a better path than the "exact" one (it may only lose some).
    out, summary = fixtures
    hlg = kaldifst.compile((out / HLG_TEXT).read_text())
    for m in summary["matrices"]:
        default = decode_ctc(hlg, np.load(out / m["file"]), DecodeConfig(), utt_id=m["name"])
        assert default.score <= m["score"] + 1e-4


@pytest.mark.skipif(k2_available(), reason="k2 is importable in this environment")
def test_k2_backend_says_which_environment_it_needs() -> None:
    import torch

    with pytest.raises(ConfigError, match=r"Python 3\.9 \+ torch 1\.13\.1 .*make test-k2") as err:
        ctc_loss_k2(torch.zeros(1, 4, 3), [4], [[1]])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="make test-k2"):
        hlg_from_openfst_text("0\t1\t1\t0\t0\n1\n")
