"""k2's CTC loss against torch's on the same inputs (the optional k2 backend, issue part 6).

k2 1.23.4 exists only for Python 3.9 with torch 1.13.1 and cannot be imported beside the
project's torch 2.11, so this file is self-contained (no asr_kd import) and skips where k2 is
missing. Run it in its own environment (the proposed ``make test-k2``):

    python3.9 -m venv .venv-k2
    .venv-k2/bin/pip install torch==1.13.1 k2==1.23.4 "numpy<2" pytest
    .venv-k2/bin/python -m pytest -q --noconftest tests/unit/test_ctc_k2.py

(``--noconftest``: tests/conftest.py needs the main environment's packages.) Verified here with
k2 1.23.4 and torch 1.13.1 on Python 3.9.18, CPU: losses agree to 1e-5 relative, gradients with
respect to the logits to 1e-5.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
k2 = pytest.importorskip("k2")


def _inputs(seed: int, batch: int = 3, frames: int = 30, tokens: int = 6):
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(batch, frames, tokens, generator=g, dtype=torch.float32).log_softmax(-1)  # k2 takes float32 only
    lengths = torch.tensor([frames, frames - 5, frames - 11], dtype=torch.int32)
    targets = [[1, 2, 2, 3], [4, 5], [1, 1, 1]]  # repeats need a blank between them
    return log_probs, lengths, targets


def _k2_ctc(log_probs, lengths, targets):
    """Per-utterance negative log-likelihoods from k2: CTC topology composed with each target."""
    graph = k2.ctc_graph(targets, modified=False)
    # k2 wants the segments sorted by decreasing length; these already are.
    supervision = torch.stack([torch.arange(len(targets)), torch.zeros(len(targets), dtype=torch.int32), lengths], 1).to(torch.int32)
    dense = k2.DenseFsaVec(log_probs, supervision)
    return k2.ctc_loss(graph, dense, output_beam=1e4, reduction="none", use_double_scores=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k2_ctc_loss_equals_torch_ctc_loss(seed) -> None:
    log_probs, lengths, targets = _inputs(seed)
    ours = _k2_ctc(log_probs, lengths, targets)
    flat = torch.tensor([t for seq in targets for t in seq])
    theirs = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), flat, lengths.long(), torch.tensor([len(t) for t in targets]),
                                          blank=0, reduction="none")
    assert torch.allclose(ours.float(), theirs, rtol=1e-5, atol=1e-4)


def test_k2_ctc_gradient_equals_torch_gradient() -> None:
    # Compared with respect to the logits: torch's CTC backward returns a gradient that is only
    # right after log_softmax's backward (it adds exp(log_probs), which log_softmax cancels).
    log_probs, lengths, targets = _inputs(7)
    flat = torch.tensor([t for seq in targets for t in seq])
    a = log_probs.clone().requires_grad_(True)
    _k2_ctc(a.log_softmax(-1), lengths, targets).sum().backward()
    b = log_probs.clone().requires_grad_(True)
    torch.nn.functional.ctc_loss(b.log_softmax(-1).transpose(0, 1), flat, lengths.long(), torch.tensor([len(t) for t in targets]),
                                 blank=0, reduction="sum").backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-5)
