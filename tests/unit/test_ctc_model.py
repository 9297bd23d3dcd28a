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


def _cuts_of_lengths(folder, frames: list[int], dim: int = 40):
    """Stored lhotse feature cuts, one of each length in ``frames`` (bench/stage5_speed.py's maker)."""
    import runpy

    from lhotse import CutSet

    from tests.conftest import REPO_ROOT

    synthetic_cuts = runpy.run_path(str(REPO_ROOT / "bench" / "stage5_speed.py"))["synthetic_cuts"]
    cuts = []
    for i, n in enumerate(frames):
        (folder / str(i)).mkdir()
        cuts += [c.with_id(f"len{n}-{i}") for c in synthetic_cuts(folder / str(i), 1, n, dim, seed=i)]
    return CutSet.from_cuts(cuts)


def test_ctc_log_probs_cut_each_utterance_to_its_own_output_length(tmp_path) -> None:
    from asr_kd.ctc.training import ctc_log_probs

    cuts = _cuts_of_lengths(tmp_path, [57, 120, 33, 90])
    torch.manual_seed(0)
    models = [CtcEncoder(40, 11, "tiny", 4, dropout=0.0).eval() for _ in range(2)]
    batched = list(ctc_log_probs(models, cuts, None, 1.5, "arithmetic", 200.0, "cpu"))
    alone = [lp for cut in cuts for _, lp in ctc_log_probs(models, [cut], None, 1.5, "arithmetic", 200.0, "cpu")]
    assert [c.id for c, _ in batched] == [c.id for c in cuts]
    assert [lp.shape for _, lp in batched] == [(int(subsampled_lengths(torch.tensor(n), 4)), 11) for n in (57, 120, 33, 90)]
    assert max(float(abs(lp - a).max()) for (_, lp), a in zip(batched, alone)) < 1e-4  # a cut's scores ignore its batch's padding


def test_ctc_log_probs_score_where_run_sh_device_says(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run.sh --device exports ASR_KD_INFERENCE_DEVICE; CTC stages 5-7 and decode-part pass no device.
    from asr_kd.ctc.training import ctc_log_probs

    cuts = _cuts_of_lengths(tmp_path, [40])
    model = CtcEncoder(40, 11, "tiny", 4, dropout=0.0).eval()
    monkeypatch.setenv("ASR_KD_INFERENCE_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="ASR_KD_INFERENCE_DEVICE must be auto, cpu or cuda"):
        next(ctc_log_probs([model], cuts, None))
    if not torch.cuda.is_available():
        monkeypatch.setenv("ASR_KD_INFERENCE_DEVICE", "cuda")
        with pytest.raises(ConfigError, match="no CUDA device is visible"):
            next(ctc_log_probs([model], cuts, None))
    monkeypatch.setenv("ASR_KD_INFERENCE_DEVICE", "cpu")
    assert [lp.shape for _, lp in ctc_log_probs([model], cuts, None)] == [(10, 11)]


def test_ctc_training_refuses_frame_subsampling(tmp_path) -> None:
    # train.frame_subsampling thins frame-level (hybrid) batches; a CTC model's rate is its encoder's.
    from asr_kd.config import CtcConfig, TrainConfig
    from asr_kd.ctc.training import train_ctc_model

    with pytest.raises(ConfigError, match=r"train.frame_subsampling=2 is for the frame-level \(hybrid\) DNNs; .*set train.frame_subsampling=1"):
        train_ctc_model(None, None, None, None, None, CtcConfig(), TrainConfig(frame_subsampling=2), tmp_path / "ctc")
    assert not (tmp_path / "ctc").exists()


def test_load_encoder_copies_all_but_the_output_layer() -> None:
    from asr_kd.ctc.training import load_encoder

    torch.manual_seed(2)
    phone = CtcEncoder(40, 12, "tiny").state_dict()
    bpe = CtcEncoder(40, 30, "tiny")
    output_before = bpe.output.weight.detach().clone()
    load_encoder(bpe, phone, "phone.pt")
    state = bpe.state_dict()
    assert all(torch.equal(state[k], phone[k]) for k in state if not k.startswith("output."))
    assert torch.equal(state["output.weight"], output_before) and state["output.weight"].shape == (30, 64)
    # Another encoder size (or feature dimension) is named in one line, with the file.
    with pytest.raises(ConfigError, match=r"cannot start from the encoder in phone.pt: its .* is of shape"):
        load_encoder(CtcEncoder(40, 30, "mini"), phone, "phone.pt")
    with pytest.raises(ConfigError, match="missing"):
        load_encoder(bpe, {k: v for k, v in phone.items() if not k.startswith("blocks.1.")}, "phone.pt")


def test_phone_init_steps_is_for_bpe_units() -> None:
    from asr_kd.config import CtcConfig

    assert CtcConfig(units="bpe", phone_init_steps=100).phone_init_steps == 100
    with pytest.raises(ConfigError, match="phone_init_steps=100 starts BPE models from a phone encoder; with units: phone set it to 0"):
        CtcConfig(units="phone", phone_init_steps=100)
    with pytest.raises(ConfigError, match="must be >= 0"):
        CtcConfig(units="bpe", phone_init_steps=-1)


def test_the_small_bpe_config_is_the_mini_one_with_a_phone_start() -> None:
    import dataclasses
    from pathlib import Path

    from asr_kd.config import CtcConfig, load_config

    conf = Path(__file__).resolve().parents[2] / "recipes" / "librispeech" / "conf"
    small, mini = load_config(CtcConfig, conf / "ctc_bpe_small.yaml"), load_config(CtcConfig, conf / "ctc_bpe_mini.yaml")
    assert (small.units, small.phone_init_steps, mini.phone_init_steps) == ("bpe", 1500, 0)
    assert dataclasses.replace(small, phone_init_steps=0) == mini
