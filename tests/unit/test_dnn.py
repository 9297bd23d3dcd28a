"""The spliced-frame DNN: splicing equals a naive per-frame reference, shapes, presets."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.config import DnnConfig
from asr_kd.errors import ConfigError
from asr_kd.models.dnn import DNN_PRESETS, SplicedDnn, dnn_preset, num_linear_params, splice_frames


def naive_splice(x: torch.Tensor, lengths: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reference: loop over utterances and frames, clamping window indices to the utterance."""
    b, t, d = x.shape
    out = torch.empty(b, t, (left + 1 + right) * d, dtype=x.dtype)
    for i in range(b):
        last = max(int(lengths[i]), 1) - 1
        for j in range(t):
            window = [x[i, min(max(j + o, 0), last)] for o in range(-left, right + 1)]
            out[i, j] = torch.cat(window)
    return out


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    extra_pad=st.integers(0, 3),
    left=st.integers(0, 6),
    right=st.integers(0, 4),
    dim=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_splicing_equals_naive_reference(lengths: list[int], extra_pad: int, left: int, right: int, dim: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    t = max(lengths) + extra_pad
    x = torch.randn(len(lengths), t, dim, generator=g)
    lens = torch.tensor(lengths)
    got = splice_frames(x, lens, left, right)
    assert got.shape == (len(lengths), t, (left + 1 + right) * dim)
    assert torch.equal(got, naive_splice(x, lens, left, right))


def test_paper_window_predicts_the_21st_of_26_frames() -> None:
    cfg = dnn_preset("paper")
    assert (cfg.left_context + 1 + cfg.right_context, cfg.left_context + 1) == (26, 21)
    assert (cfg.feature_dim, cfg.hidden_dim, cfg.num_hidden_layers) == (40, 2560, 8)
    # Frame t's window is frames t-20 .. t+5: with x[t] = t the centre of the window is t.
    x = torch.arange(60, dtype=torch.float32).reshape(1, 60, 1)
    w = splice_frames(x, torch.tensor([60]), cfg.left_context, cfg.right_context)
    assert w[0, 30].tolist() == list(range(10, 36))
    assert w[0, 30, cfg.left_context].item() == 30


def test_paper_model_size() -> None:
    with torch.device("meta"):
        model = SplicedDnn(dnn_preset("paper"), 14000)
        logits = model(torch.empty(2, 7, 40), torch.tensor([7, 5]))
    assert logits.shape == (2, 7, 14000)
    weights = sum(p.numel() for p in model.parameters() if p.ndim == 2)
    assert weights == num_linear_params(dnn_preset("paper"), 14000) == 1040 * 2560 + 7 * 2560 * 2560 + 2560 * 14000


@pytest.mark.parametrize("preset", sorted(DNN_PRESETS))
def test_output_shape_and_padding_independence(preset: str) -> None:
    torch.manual_seed(0)
    cfg = DNN_PRESETS[preset]
    if preset == "paper":  # same structure, CPU-sized width
        cfg = dataclasses.replace(cfg, hidden_dim=32)
    model = SplicedDnn(cfg, num_classes=11).eval()
    lengths = torch.tensor([9, 4, 1])
    x = torch.randn(3, 9, 40)
    with torch.no_grad():
        logits = model(x, lengths)
        assert logits.shape == (3, 9, 11)
        # A cut's logits do not depend on the padding or the other cuts of its batch.
        alone = model(x[1:2, :4], torch.tensor([4]))
        garbage = x.clone()
        garbage[1, 4:] = 1e3
        padded = model(garbage, lengths)
    torch.testing.assert_close(logits[1, :4], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[1, :4], logits[1, :4], rtol=0, atol=0)


def test_model_equals_naive_spliced_mlp() -> None:
    torch.manual_seed(1)
    cfg = DnnConfig(feature_dim=5, left_context=3, right_context=2, hidden_dim=16, num_hidden_layers=2)
    model = SplicedDnn(cfg, 7).eval()
    x, lengths = torch.randn(2, 10, 5), torch.tensor([10, 6])
    spliced = naive_splice(x, lengths, 3, 2)
    with torch.no_grad():
        expected = model.output(model.hidden(spliced))
        torch.testing.assert_close(model(x, lengths), expected, rtol=0, atol=0)


@pytest.mark.parametrize("projection", [0, 3])
def test_outputs_at_positions_equal_the_full_outputs_there(projection: int) -> None:
    # Frame-subsampled training (train.frame_subsampling) computes only the kept frames' outputs.
    torch.manual_seed(2)
    model = SplicedDnn(DnnConfig(feature_dim=5, left_context=3, right_context=2, hidden_dim=16, num_hidden_layers=2,
                                 frame_projection_dim=projection), 7).eval()
    x, lengths = torch.randn(2, 11, 5), torch.tensor([11, 6])
    positions = torch.tensor([1, 4, 7, 10])  # the last one is padding in the short cut: its edge, as at full rate
    with torch.no_grad():
        torch.testing.assert_close(model(x, lengths, positions=positions), model(x, lengths)[:, positions], rtol=1e-6, atol=1e-6)
    assert splice_frames(x, lengths, 3, 2, positions).shape == (2, 4, 30)


def test_bad_configs_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown DNN preset 'huge'"):
        dnn_preset("huge")
    with pytest.raises(ConfigError, match="model.left_context and model.right_context must be >= 0"):
        DnnConfig(left_context=-1)
    with pytest.raises(ConfigError, match="num_classes must be >= 1"):
        SplicedDnn(dnn_preset("tiny"), 0)
    with pytest.raises(ValueError, match="expected 40 features per frame, got 13"):
        SplicedDnn(dnn_preset("tiny"), 3)(torch.zeros(1, 5, 13), torch.tensor([5]))


def test_gpu_benchmark_script_runs(capsys: pytest.CaptureFixture[str]) -> None:
    # The script's CPU smoke mode: it must keep working for the GPU run the lead does.
    import runpy

    bench = runpy.run_path(str(__import__("tests.conftest").conftest.REPO_ROOT / "bench" / "dnn_gpu.py"))
    rows = bench["main"](["--allow-cpu", "--model", "tiny", "--num-classes", "10", "--utts", "2", "3", "--frames", "30",
                          "--steps", "2", "--warmup", "1", "--amp", "none"])
    assert [(r["mode"], r["utts"]) for r in rows] == [("eager", 2), ("eager", 3)]
    assert all(math.isfinite(r["final_loss"]) and r["frames_per_second"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "| eager | 60 |" in out and "| eager | 90 |" in out


@pytest.mark.parametrize("teacher,student,senones", [("mini", "mini-compressed", 500), ("mini", "mini-compressed-v2", 500),
                                                      ("tiny", "tiny-compressed", 60)])
def test_compressed_presets_cost_at_most_a_quarter_of_their_teacher(teacher: str, student: str, senones: int) -> None:
    from asr_kd.deploy.report import macs_per_frame
    from asr_kd.models.dnn import DNN_PRESETS, SplicedDnn

    t, s = SplicedDnn(DNN_PRESETS[teacher], senones), SplicedDnn(DNN_PRESETS[student], senones)
    share = macs_per_frame(s, 40) / macs_per_frame(t, 40)
    assert share <= 0.25
    if teacher == "mini":  # the figures the presets' comments give: 525,312, 124,000 and 130,272 MACs a frame
        want = {"mini-compressed": 124_000, "mini-compressed-v2": 800 + 26 * 20 * 128 + 2 * 128 * 128 + 128 * 48 + 48 * 500}[student]
        assert macs_per_frame(t, 40) == pytest.approx(525_312) and macs_per_frame(s, 40) == pytest.approx(want)
        assert want == num_linear_params(DNN_PRESETS[student], senones) and (student != "mini-compressed-v2" or want == 130_272)


def test_compressed_paper_config_is_under_a_quarter_of_the_paper_dnn_at_tri4b_size() -> None:
    from asr_kd.models.dnn import load_dnn_config

    paper = load_dnn_config(str(Path(__file__).resolve().parents[2] / "recipes/librispeech/conf/dnn_paper.yaml"))
    small = load_dnn_config(str(Path(__file__).resolve().parents[2] / "recipes/librispeech/conf/dnn_compressed_paper.yaml"))

    def macs(c, senones: int = 4200) -> int:  # the layers' matrix sizes
        width = (c.left_context + 1 + c.right_context) * c.feature_dim
        return width * c.hidden_dim + (c.num_hidden_layers - 1) * c.hidden_dim ** 2 + c.hidden_dim * senones

    assert macs(small) / macs(paper) <= 0.25
    assert macs(paper) == 59_289_600  # the README's "Real LibriSpeech" section quotes it


# The compression options (issue 15): a frame-shared linear projection before splicing and a
# linear bottleneck before the senone layer.
COMPRESSED = DnnConfig(feature_dim=6, left_context=3, right_context=2, hidden_dim=16, num_hidden_layers=2, frame_projection_dim=4,
                       bottleneck_dim=5)


def test_compression_options_are_the_matrices_applied_by_hand() -> None:
    torch.manual_seed(2)
    model = SplicedDnn(COMPRESSED, 9).eval()
    x, lengths = torch.randn(2, 11, 6), torch.tensor([11, 7])
    p, b, out = model.projection.weight, model.bottleneck.weight, model.output
    assert (p.shape, b.shape, out.weight.shape) == ((4, 6), (5, 16), (9, 5))
    assert model.projection.bias is None and model.bottleneck.bias is None
    h = naive_splice(x @ p.T, lengths, 3, 2)  # each frame projected, then the 6-frame window of projections
    for i in (0, 2):
        layer = model.hidden[i]
        h = torch.relu(h @ layer.weight.T + layer.bias)
    expected = (h @ b.T) @ out.weight.T + out.bias
    with torch.no_grad():
        torch.testing.assert_close(model(x, lengths), expected, rtol=1e-5, atol=1e-5)
    # A rank-5 output layer: the product of the two matrices has rank 5, not min(16, 9).
    assert int(torch.linalg.matrix_rank(out.weight @ b).item()) == 5


def test_macs_of_the_compression_options_are_the_layer_arithmetic() -> None:
    from asr_kd.deploy.report import macs_per_frame

    by_hand = 6 * 4 + 6 * 4 * 16 + 16 * 16 + 16 * 5 + 5 * 9  # projection once per frame, window of 6 projected frames
    assert num_linear_params(COMPRESSED, 9) == by_hand
    assert macs_per_frame(SplicedDnn(COMPRESSED, 9), 6) == pytest.approx(by_hand)  # torch's FLOP counter, as the cost table counts
    plain = dataclasses.replace(COMPRESSED, frame_projection_dim=0, bottleneck_dim=0)
    assert num_linear_params(plain, 9) == 36 * 16 + 16 * 16 + 16 * 9


def test_without_the_options_the_model_and_its_records_are_unchanged() -> None:
    from asr_kd.config import config_from_dict
    from asr_kd.stages.provenance import config_dict

    cfg = dnn_preset("mini")
    # Checkpoints written before the options existed hold exactly these tensors and this config.
    assert sorted(SplicedDnn(cfg, 5).state_dict()) == ["hidden.0.bias", "hidden.0.weight", "hidden.2.bias", "hidden.2.weight",
                                                        "hidden.4.bias", "hidden.4.weight", "output.bias", "output.weight"]
    old = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("bottleneck_dim", "frame_projection_dim")}
    assert config_from_dict(DnnConfig, old, "an old checkpoint") == cfg
    assert config_dict({"dnn": cfg})["dnn"] == old  # stage records (and fingerprints) of finished runs stay as they were
    assert config_dict({"dnn": dataclasses.replace(cfg, bottleneck_dim=64)})["dnn"]["bottleneck_dim"] == 64


def test_bad_compression_options_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"model.bottleneck_dim must be >= 0 \(0: no bottleneck\), got -1"):
        DnnConfig(bottleneck_dim=-1)
    with pytest.raises(ConfigError, match=r"model.frame_projection_dim must be >= 0 \(0: no projection\), got -3"):
        DnnConfig(frame_projection_dim=-3)


def test_compressed_model_exports_to_onnx_with_the_same_posteriors(tmp_path: Path) -> None:
    import numpy as np

    from asr_kd.deploy.acoustic import OnnxAcoustic, TorchAcoustic
    from asr_kd.deploy.onnx_export import ExportableAcoustic, export_module

    torch.manual_seed(3)
    model = SplicedDnn(dataclasses.replace(COMPRESSED, feature_dim=40), 30).eval()
    path = export_module(ExportableAcoustic(model), 40, tmp_path / "c.onnx")
    rng = np.random.default_rng(4)
    feats = [rng.standard_normal((n, 40)).astype(np.float32) for n in (97, 5)]  # traced at 2 x 64 frames
    for a, b in zip(TorchAcoustic(model)(feats), OnnxAcoustic(path)(feats)):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-4


def test_a_compressed_checkpoint_loads_back_as_the_same_network(tmp_path: Path) -> None:
    from asr_kd.train.checkpoint import save_checkpoint
    from asr_kd.train.frame_classifier import load_frame_classifier

    torch.manual_seed(5)
    model = SplicedDnn(DNN_PRESETS["mini-compressed-v2"], 50).eval()
    save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "extra": model.describe()})  # as the training loop writes it
    loaded = load_frame_classifier(tmp_path / "best.pt")
    assert loaded.cfg == DNN_PRESETS["mini-compressed-v2"] and loaded.cfg.frame_projection_dim == 20
    x, lengths = torch.randn(2, 30, 40), torch.tensor([30, 12])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, lengths), model(x, lengths), rtol=0, atol=0)
