"""The CTC encoder family: shapes, output lengths, padding invariance, and a CTC loss that falls."""

from __future__ import annotations

import pytest
import torch

from asr_kd.ctc.kd import ctc_loss
from asr_kd.ctc.model import CTC_MODEL_PRESETS, CtcEncoder, subsampled_lengths
from asr_kd.errors import ConfigError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("subsampling", [2, 4])
def test_output_shapes_and_lengths(subsampling) -> None:
    torch.manual_seed(0)
    model = CtcEncoder(40, 11, "tiny", subsampling).eval()
    lengths = torch.tensor([57, 40, 1])
    logits = model(torch.randn(3, 57, 40), lengths)
    out = model.output_lengths(lengths)
    assert logits.shape == (3, int(out.max()), 11)
    assert out.tolist() == [-(-n // subsampling) for n in lengths.tolist()]  # ceil(n / subsampling)
    assert subsampled_lengths(torch.tensor([8]), 4).item() == 2


def test_a_cut_does_not_depend_on_its_batch_mates() -> None:
    torch.manual_seed(1)
    model = CtcEncoder(40, 9, "tiny").eval()
    x = torch.randn(2, 90, 40)
    x[1, 61:] = 0.0
    both = model(x, torch.tensor([90, 61]))
    alone = model(x[1:, :61], torch.tensor([61]))
    n = int(model.output_lengths(torch.tensor([61])))
    assert torch.allclose(both[1, :n], alone[0, :n], atol=1e-5)


def test_description_rebuilds_the_model() -> None:
    model = CtcEncoder(40, 7, "tiny", 2, 0.0)
    again = CtcEncoder.from_description(model.describe())
    again.load_state_dict(model.state_dict())
    x, n = torch.randn(1, 30, 40), torch.tensor([30])
    assert torch.equal(model.eval()(x, n), again.eval()(x, n))
    assert set(CTC_MODEL_PRESETS) == {"tiny", "mini", "librispeech"}
    with pytest.raises(ConfigError):
        CtcEncoder(40, 7, "huge")
    with pytest.raises(ConfigError):
        CtcEncoder(40, 7, "tiny", subsampling=3)


def test_ctc_loss_decreases_when_fitting_a_batch() -> None:
    torch.manual_seed(2)
    model = CtcEncoder(40, 6, "tiny", dropout=0.0)
    x, lengths = torch.randn(3, 80, 40), torch.tensor([80, 72, 64])
    targets, target_lengths = torch.tensor([1, 2, 3, 4, 5, 1, 1, 2, 3, 2]), torch.tensor([4, 3, 3])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = ctc_loss(model(x, lengths), model.output_lengths(lengths), targets, target_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
