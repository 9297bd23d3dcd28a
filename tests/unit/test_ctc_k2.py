"""The optional k2 backend (``asr_kd.ctc.k2_backend``) against our own code on the same inputs.

* CTC loss and its gradient: k2's against torch's ``ctc_loss``.
* HLG decoding: our HLG exported as OpenFst text, loaded into k2, and k2's exact best path over
  log-prob matrices against kaldi-decoder's (ours), word ids and total scores.

k2 1.23.4 exists only for Python 3.9 with torch 1.13.1 and cannot be imported beside the
project's torch 2.11, so this file skips where k2 is missing and runs in its own environment:
``make test-k2`` (which builds ``.venv-k2`` and runs pytest with ``--noconftest``, because
tests/conftest.py needs the main environment's packages). Our side of the decoding comparison
runs in the main environment as a subprocess: ``tests/k2_lane/make_fixtures.py`` with the
interpreter named by ``ASR_KD_PYTHON`` (default ``.venv/bin/python`` under the repository root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # conftest.py is not loaded, and asr_kd is not installed here
    sys.path.insert(0, str(REPO_ROOT))

torch = pytest.importorskip("torch")
k2 = pytest.importorskip("k2")

from asr_kd.ctc.k2_backend import ctc_loss_k2, decode_hlg_k2, hlg_from_openfst_text, k2_available  # noqa: E402
from asr_kd.errors import DataError  # noqa: E402

FIXTURE_SCRIPT = REPO_ROOT / "tests" / "k2_lane" / "make_fixtures.py"


def _inputs(seed: int, lengths: list[int], batch: int = 3, frames: int = 30, tokens: int = 6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, tokens, generator=g, dtype=torch.float32)  # k2 takes float32 only
    targets = [[1, 2, 2, 3], [4, 5], [1, 1, 1]]  # repeats need a blank between them
    return logits, torch.tensor(lengths), targets


def _torch_ctc(log_probs, lengths, targets, reduction: str = "none"):
    flat = torch.tensor([t for seq in targets for t in seq])
    return torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), flat, lengths.long(), torch.tensor([len(t) for t in targets]),
                                        blank=0, reduction=reduction)


def test_k2_is_available_here() -> None:
    assert k2_available()


# Decreasing lengths (k2's own order) and any other order (the backend sorts and unsorts).
@pytest.mark.parametrize("seed,lengths", [(0, [30, 25, 19]), (1, [19, 30, 25]), (2, [12, 12, 30])])
def test_k2_ctc_loss_equals_torch_ctc_loss(seed, lengths) -> None:
    logits, lengths, targets = _inputs(seed, lengths)
    log_probs = logits.log_softmax(-1)
    ours = ctc_loss_k2(log_probs, lengths, targets)
    assert ours.shape == (3,)
    assert torch.allclose(ours.float(), _torch_ctc(log_probs, lengths, targets), rtol=1e-5, atol=1e-4)


def test_k2_ctc_gradient_equals_torch_gradient() -> None:
    # Compared with respect to the logits: torch's CTC backward returns a gradient that is only
    # right after log_softmax's backward (it adds exp(log_probs), which log_softmax cancels).
    logits, lengths, targets = _inputs(7, [22, 30, 17])
    a = logits.clone().requires_grad_(True)
    ctc_loss_k2(a.log_softmax(-1), lengths, targets).sum().backward()
    b = logits.clone().requires_grad_(True)
    _torch_ctc(b.log_softmax(-1), lengths, targets, reduction="sum").backward()
    assert a.grad.abs().sum() > 0
    assert torch.allclose(a.grad, b.grad, atol=1e-5)


def test_k2_ctc_loss_rejects_the_blank_as_a_target() -> None:
    logits, lengths, targets = _inputs(0, [30, 25, 19])
    with pytest.raises(DataError, match="target ids must be in 1..5"):
        ctc_loss_k2(logits.log_softmax(-1), lengths, [[0, 1], [2], [3]])


# --- conventions, on a graph small enough to check by hand ---------------------------------------

# Start state 2 (not 0), an input epsilon carrying word 7, a final cost, blank = our label 1.
TINY = """2\t1\t0\t7\t0.5
1\t0\t3\t0\t1.25
0\t0\t1\t0\t0
0\t0.75
"""


def test_openfst_text_becomes_an_epsilon_free_k2_graph_with_scores_minus_costs() -> None:
    hlg = hlg_from_openfst_text(TINY)
    arcs = sorted(zip(hlg.labels.tolist(), hlg.scores.tolist()))
    # eps:7/0.5 then 3:0/1.25 merge into one arc reading token 2 with score -1.75; the blank loop
    # reads token 0; the final cost 0.75 becomes the -1 arc's score.
    assert arcs == [(-1, -0.75), (0, 0.0), (2, -1.75)]
    assert (hlg.labels != 0).sum() == 2 and 7 in hlg.aux_labels.values.tolist()


def test_tiny_graph_decodes_to_its_word_with_graph_plus_acoustic_score() -> None:
    hlg = hlg_from_openfst_text(TINY)
    x = np.log(np.array([[0.2, 0.1, 0.7], [0.6, 0.3, 0.1], [0.5, 0.25, 0.25]], dtype=np.float32))
    words, score = decode_hlg_k2(hlg, x)
    assert words == [7]
    # token 2, blank, blank; graph costs 0.5 + 1.25 + 0.75.
    assert score == pytest.approx(np.log(0.7) + np.log(0.6) + np.log(0.5) - 2.5, abs=1e-5)


def test_decode_rejects_a_matrix_narrower_than_the_graph() -> None:
    with pytest.raises(DataError, match="only 2 columns"):
        decode_hlg_k2(hlg_from_openfst_text(TINY), np.zeros((3, 2), dtype=np.float32))


def test_empty_hlg_text_is_an_error() -> None:
    with pytest.raises(DataError, match="empty"):
        hlg_from_openfst_text("\n")


# --- our HLG and decoder against k2's ------------------------------------------------------------


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    """Run tests/k2_lane/make_fixtures.py with the main environment's Python; return its folder."""
    python = Path(os.environ.get("ASR_KD_PYTHON", REPO_ROOT / ".venv" / "bin" / "python"))
    if not python.exists():
        pytest.skip(f"the main environment's Python {python} is missing: run `make venv` or set ASR_KD_PYTHON")
    out = tmp_path_factory.mktemp("k2_lane")
    proc = subprocess.run([str(python), str(FIXTURE_SCRIPT), str(out), "--seed", "0"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{FIXTURE_SCRIPT.name} failed:\n{proc.stderr[-3000:]}"
    return out


def test_k2_decodes_our_hlg_like_our_decoder(fixtures) -> None:
    ours = json.loads((fixtures / "ours.json").read_text())
    hlg = hlg_from_openfst_text((fixtures / ours["hlg"]).read_text())
    assert int(hlg.labels.max()) < ours["num_tokens"]
    matrices = ours["matrices"]
    assert len(matrices) >= 8
    worst = 0.0
    for m in matrices:
        x = np.load(fixtures / m["file"])
        assert x.shape == (m["frames"], ours["num_tokens"])
        words, score = decode_hlg_k2(hlg, x)
        assert words == m["word_ids"], m["name"]
        worst = max(worst, abs(score - m["score"]) / max(1.0, abs(m["score"])))
        if m["transcript_ids"] is not None:
            assert words == m["transcript_ids"], m["name"]
    print(f"k2 vs ours: {len(matrices)} matrices, same words, max relative score difference {worst:.2e}")
    assert worst < 1e-3


def test_output_beam_does_not_change_the_best_path(fixtures) -> None:
    ours = json.loads((fixtures / "ours.json").read_text())
    hlg = hlg_from_openfst_text((fixtures / ours["hlg"]).read_text())
    x = np.load(fixtures / "random_60.npy")
    assert decode_hlg_k2(hlg, x, output_beam=0.5) == decode_hlg_k2(hlg, x, output_beam=1e4)
