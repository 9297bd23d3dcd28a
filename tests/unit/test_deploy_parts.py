"""The deployment pieces on small real inputs: audio reading (formats, rates, channels), CMVN
pooling, word spans, ONNX export (PyTorch vs onnxruntime posteriors, int8), CMVN folded into the
sherpa-onnx graph, the quantisation gate and the cost table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr_kd.ctc.model import CtcEncoder
from asr_kd.data.features import CmvnStats
from asr_kd.deploy.acoustic import OnnxAcoustic, TorchAcoustic
from asr_kd.deploy.audio import load_audio
from asr_kd.deploy.model_dir import normalize_features, pooled_cmvn
from asr_kd.deploy.onnx_export import ExportableAcoustic, export_module, quantize_int8
from asr_kd.deploy.report import CostRow, SystemSpec, cost_table, macs_per_frame, plot_wer_vs_cost, quantisation_gate
from asr_kd.deploy.search import word_spans
from asr_kd.errors import ConfigError, DataError
from asr_kd.metrics.wer import compute_wer
from asr_kd.models.dnn import SplicedDnn, dnn_preset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Largest |log p_onnx - log p_torch| accepted for fp32 exports: float32 rounding of a few
# thousand multiply-adds per output; measured about 1e-6 on these models.
FP32_TOLERANCE = 1e-4


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_stereo_8k_wav_is_mixed_down_and_resampled(tmp_path: Path) -> None:
    left = _tone(1.0, 8000)
    stereo = np.stack([left, 0.5 * left], axis=1)
    sf.write(tmp_path / "a.wav", stereo, 8000)
    x = load_audio(tmp_path / "a.wav", 16000)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 16000) <= 1
    # The mix is the channel mean: a 440 Hz tone of amplitude 0.75 * 0.3 after resampling.
    assert abs(np.abs(x[1000:15000]).max() - 0.225) < 0.01
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * 16000 / len(x) - 440) < 2


def test_flac_and_mp3_read_at_the_model_rate(tmp_path: Path) -> None:
    sig = _tone(0.5, 16000, 300.0)
    sf.write(tmp_path / "a.flac", sig, 16000)
    np.testing.assert_allclose(load_audio(tmp_path / "a.flac", 16000), sig, atol=1e-4)
    sf.write(tmp_path / "a.mp3", _tone(0.5, 22050, 300.0), 22050, format="MP3")
    x = load_audio(tmp_path / "a.mp3", 16000)
    assert abs(len(x) - 8000) < 2000  # mp3 encoders pad a little
    assert abs(np.argmax(np.abs(np.fft.rfft(x))) * 16000 / len(x) - 300) < 5


def test_unreadable_and_missing_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    with pytest.raises(DataError, match=r"bad\.wav: cannot read audio"):
        load_audio(bad, 16000)
    with pytest.raises(DataError, match=r"nothere\.flac: no such audio file"):
        load_audio(tmp_path / "nothere.flac", 16000)


def test_pooled_cmvn_is_the_statistics_of_all_frames() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, (50, 4)), rng.normal(-3.0, 0.5, (30, 4))
    stats = CmvnStats.empty(4)
    stats.accumulate("spk1", a)
    stats.accumulate("spk2", b)
    mean, std = pooled_cmvn(stats).mean_std("global")
    both = np.vstack([a, b])
    np.testing.assert_allclose(mean, both.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, both.std(0), rtol=1e-6)
    utt = normalize_features(b.astype(np.float32), "utterance", None)
    np.testing.assert_allclose(utt.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(utt.std(0), 1.0, atol=1e-4)


def test_word_spans_trim_fillers_and_keep_all_filler_words() -> None:
    filler = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    # word A starts (graph label) at frame 0, B at 4, C at 8 (only filler frames left for C)
    assert word_spans(12, [(0, 7), (4, 8), (8, 9)], filler) == [(2, 4), (5, 8), (8, 12)]


def _models() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [SplicedDnn(dnn_preset("tiny"), 30).eval(), CtcEncoder(40, 20, "tiny", 4, 0.0).eval()]


@pytest.mark.parametrize("index", [0, 1], ids=["dnn", "ctc"])
def test_onnx_matches_pytorch_on_other_batch_and_time_sizes(tmp_path: Path, index: int) -> None:
    model = _models()[index]
    path = export_module(ExportableAcoustic(model), 40, tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    feats = [rng.standard_normal((n, 40)).astype(np.float32) for n in (173, 57, 9)]  # traced at 2 x 64 frames
    ours, theirs = TorchAcoustic(model)(feats), OnnxAcoustic(path)(feats)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert np.abs(a - b).max() < FP32_TOLERANCE
    int8 = OnnxAcoustic(quantize_int8(path, tmp_path / "m.int8.onnx"))(feats)
    assert (tmp_path / "m.int8.onnx").stat().st_size < 0.6 * path.stat().st_size
    # int8 weights move the posteriors, but not far: most frames keep their best class.
    agree = np.mean(np.concatenate([a.argmax(1) == b.argmax(1) for a, b in zip(ours, int8)]))
    assert agree > 0.8
    assert max(np.abs(a - b).max() for a, b in zip(ours, int8)) > 1e-6  # it did quantise


def test_folded_cmvn_equals_normalising_first(tmp_path: Path) -> None:
    model = _models()[1]
    rng = np.random.default_rng(2)
    mean, std = rng.normal(0, 3, 40).astype(np.float32), rng.uniform(0.5, 4, 40).astype(np.float32)
    folded = export_module(ExportableAcoustic(model, torch.from_numpy(mean), torch.from_numpy(std)), 40, tmp_path / "f.onnx")
    raw = [rng.normal(mean, std, (n, 40)).astype(np.float32) for n in (120, 80)]
    # Batched: the shorter input is padded, and the padding must not leak into its output.
    got = OnnxAcoustic(folded)(raw)
    want = TorchAcoustic(model)([(r - mean) / std for r in raw])
    for a, b in zip(got, want):
        assert np.abs(a - b).max() < FP32_TOLERANCE


def test_macs_of_the_dnn_are_its_weight_count_per_frame() -> None:
    model = _models()[0]
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert macs_per_frame(model, 40) == pytest.approx(weights, rel=1e-6)


def test_quantisation_gate_cost_table_and_plot(tmp_path: Path) -> None:
    refs = {f"u{i}": "a b c d e f g h i j" for i in range(10)}  # 100 words
    fp32 = compute_wer(refs, {**refs, "u0": "a b c d e f g h i x"})  # 1 error
    ok = quantisation_gate(fp32, compute_wer(refs, {**refs, "u0": "a b c d e f g h i x"}), 0.02)
    bad = quantisation_gate(fp32, compute_wer(refs, {**refs, "u0": "a b c d e f g h y x"}), 0.02)
    assert ok.passed and ok.relative == 0.0
    assert not bad.passed and bad.relative == pytest.approx(1.0)
    assert "FAIL" in bad.markdown() and "+100.0% relative" in bad.markdown()
    with pytest.raises(ConfigError, match="max_relative must be >= 0"):
        quantisation_gate(fp32, fp32, -0.1)
    rows = [CostRow("ensemble", "torch", 200, 4e6, 0.02, 0.01, 50, 0.8, 0.1, 10, 100, 0),
            CostRow("distilled", "onnx-int8", 100, 2e6, 0.005, 0.01, 20, 0.1, 0.11, 11, 100, 0)]
    png = plot_wer_vs_cost(rows, Path(tmp_path) / "wer_cost.png")
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (400, 640)
    table = cost_table(rows, baseline="ensemble").splitlines()
    assert table[2].endswith("| 1.00x |") and table[3].endswith("| 4.00x |")
    assert "| distilled | onnx-int8 | 100 | 2.00 | 0.0050 |" in table[3]


def test_system_spec_parsing() -> None:
    s = SystemSpec.parse("ensemble=a,b@torch")
    assert s.name == "ensemble" and s.model_dirs == (Path("a"), Path("b")) and s.backend == "torch"
    assert SystemSpec.parse("x=d@onnx-int8").backend == "onnx-int8"
    with pytest.raises(ConfigError, match="expected NAME=MODEL_DIR"):
        SystemSpec.parse("just-a-dir")


def test_log_axis_labels_are_plain_and_do_not_crowd() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asr_kd.report.tables import plain_log_ticks, plain_number

    assert [plain_number(v) for v in (0.0004, 2.0, 500.0, 2e5, 3e6, 1e3)] == ["0.0004", "2", "500", "200k", "3M", "1000"]
    # The deployment plot's range (as in the mini demo): default matplotlib labelled every minor
    # tick here ("2x10^-3", "3x10^-3", "4x10^-3" ran into each other).
    fig, ax = plt.subplots()
    ax.set_xscale("log")
    ax.set_xlim(3.5e-4, 6.5e-3)
    plain_log_ticks(ax.xaxis)
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    major = [t.get_text() for t in ax.xaxis.get_majorticklabels() if lo <= t.get_position()[0] <= hi]
    assert major == ["0.0005", "0.001", "0.002", "0.005"]
    assert all(not t.get_text() for t in ax.xaxis.get_minorticklabels())
    plt.close(fig)


def test_compression_line_compares_the_compressed_student_with_a_teacher_and_the_baseline() -> None:
    from asr_kd.deploy.report import compression_line

    def row(system: str, macs: float, errors: int, runtime: str = "torch") -> CostRow:
        return CostRow(system, runtime, 1, macs, 0.01, 0.01, 10, 0.1, errors / 100, errors, 100, 0)

    rows = [row("teacher0", 4e6, 30), row("baseline", 4e6, 32), row("compressed", 1e6, 31), row("compressed", 1e6, 40, "onnx-int8")]
    line = compression_line(rows)
    assert line.startswith("Compressed student: 25.0% of one teacher's multiply-adds (target: at most 25%);")
    assert "test WER 31.00% (31 errors), no worse than the full-size hard-target baseline's 32.00% (32)" in line
    over = compression_line([row("teacher0", 4e6, 30), row("baseline", 4e6, 30), row("compressed", 1.2e6, 31)])
    assert "30.0% of one teacher's multiply-adds (target: at most 25%, MISSED)" in over and "worse than the full-size" in over
    assert compression_line(rows[:2]) == ""
    # The deployable pair (per-utterance CMVN) reads its own rows and says where its interval is.
    utt = rows + [row("baseline-uttcmvn", 4e6, 29), row("compressed-uttcmvn", 1e6, 33)]
    line = compression_line(utt, "compressed-uttcmvn", baseline="baseline-uttcmvn", label="Deployable compressed student",
                            interval="one seed")
    assert line == ("Deployable compressed student: 25.0% of one teacher's multiply-adds (target: at most 25%); test WER 33.00% "
                    "(33 errors), worse than the full-size hard-target baseline-uttcmvn's 29.00% (29) on these utterances (one seed).")


def test_ensemble_line_judges_the_student_against_speed_and_the_halfway_point() -> None:
    from asr_kd.deploy.report import ensemble_line

    def row(system: str, rtf: float, errors: int, runtime: str = "torch") -> CostRow:
        return CostRow(system, runtime, 1, 1e6, rtf, 0.01, 10, 0.1, errors / 100, errors, 100, 0)

    rows = [row("ensemble", 0.004, 20), row("baseline", 0.001, 30), row("distilled", 0.001, 25), row("distilled", 0.0002, 90, "onnx-int8")]
    line = ensemble_line(rows, 4)
    assert "acoustic RTF 4.00x lower (target: at least 3.5x);" in line
    assert "test WER 25.00% (25 errors) against 25 errors, halfway between the baseline's 30 and the ensemble's 20: met on these 100 words" in line
    slow = ensemble_line([row("ensemble", 0.004, 20), row("baseline", 0.001, 30), row("distilled", 0.002, 26)], 4)
    assert "2.00x lower (target: at least 3.5x, MISSED)" in slow and ": MISSED on these 100 words" in slow
    # An ensemble worse than the baseline sets no easier target than the baseline itself.
    worse = ensemble_line([row("ensemble", 0.004, 40), row("baseline", 0.001, 30), row("distilled", 0.001, 33)], 4)
    assert "against the baseline's 30 errors (the ensemble's 40 are no better, and halfway would be easier): MISSED" in worse
    assert ensemble_line(rows[:2], 4) == ""


def test_a_gate_without_its_onnx_rows_is_refused_before_anything_is_measured(tmp_path: Path) -> None:
    from asr_kd.deploy.report import deploy_report

    missing = tmp_path / "no-such-dir"  # never opened: the refusal comes first
    systems = [SystemSpec("distilled", (missing,)), SystemSpec("distilled", (missing,), "onnx"),
               SystemSpec("distilled", (missing,), "onnx-int8"), SystemSpec("uttcmvn", (missing,), "onnx-int8")]
    for gates in ("uttcmvn", ["distilled", "uttcmvn"]):
        with pytest.raises(ConfigError, match=r"the quantisation gate needs --system uttcmvn=DIR@onnx; add it"):
            deploy_report(systems, tmp_path / "cuts.jsonl.gz", gate_system=gates)


def test_a_named_gate_says_which_system_it_judged() -> None:
    refs = {f"u{i}": "a b c d e f g h i j" for i in range(10)}
    fp32 = compute_wer(refs, refs)
    gate = quantisation_gate(fp32, compute_wer(refs, {**refs, "u0": "a b c d e f g h i x"}), 0.02, system="distilled-uttcmvn")
    assert not gate.passed and gate.markdown().startswith("Quantisation gate (distilled-uttcmvn): FAIL: int8 WER 1.00% vs fp32 0.00%")


def test_uttcmvn_comparisons_pair_each_deployable_student_with_its_counterpart() -> None:
    """The lines under the normalisation table: a ``-uttcmvn`` student's per-utterance WER against
    its counterpart's global and per-speaker WERs, and distilled against hard, each difference the
    paired bootstrap's, with its verdict."""
    from asr_kd.deploy.report import uttcmvn_comparisons
    from asr_kd.metrics.paired import wer_difference

    refs = {f"u{i:02d}": "a b c d" for i in range(40)}

    def wer(wrong: int) -> object:  # the first ``wrong`` utterances lose every word
        return compute_wer(refs, {u: ("" if i < wrong else r) for i, (u, r) in enumerate(sorted(refs.items()))})

    results = {"distilled": {"per speaker": wer(4), "global": wer(20), "per utterance": wer(15)},
               "distilled-uttcmvn": {"per speaker": wer(30), "global": wer(25), "per utterance": wer(5)},
               "baseline-uttcmvn": {"per speaker": wer(30), "global": wer(25), "per utterance": wer(6)},
               "compressed-uttcmvn": {"per speaker": wer(30), "global": wer(25), "per utterance": wer(9)},
               "teacher0": {"per speaker": wer(1), "global": wer(1), "per utterance": wer(1)}}
    text = uttcmvn_comparisons(results)
    lines = [line for line in text.splitlines() if line.startswith("- ")]
    # baseline-uttcmvn and compressed-uttcmvn have no counterpart rows here: only the lines against the baseline name them.
    assert len(lines) == 3
    assert lines[2].startswith("- Compression (a quarter of a teacher's compute or less) on per-utterance CMVN: compressed-uttcmvn minus "
                               "baseline-uttcmvn +7.50 [")
    vs_global = wer_difference(results["distilled"]["global"], results["distilled-uttcmvn"]["per utterance"])
    assert vs_global.value == pytest.approx(-0.375)
    assert f"{100 * vs_global.value:+.2f} [{100 * vs_global.low:+.2f}, {100 * vs_global.high:+.2f}] points (yes, better" in lines[0]
    assert "12.50% per utterance" in lines[0] and "(its model directory's) -37.50" in lines[0]
    assert "(the recipe's score) +2.50" in lines[0] and "no: within noise" in lines[0]
    assert lines[1].startswith("- Distillation on per-utterance CMVN: distilled-uttcmvn minus baseline-uttcmvn -2.50 [")
    assert uttcmvn_comparisons({"distilled": results["distilled"], "teacher0": results["teacher0"]}) == ""
    # Where a directory's acoustic scale came from goes on its line.
    noted = uttcmvn_comparisons(results, {"distilled-uttcmvn": "acoustic scale 0.1, tuned on dev-clean for it (word errors 0.0833: 9, 0.1: 5)"})
    assert "12.50% per utterance (acoustic scale 0.1, tuned on dev-clean for it (word errors 0.0833: 9, 0.1: 5)); minus" in noted


def test_a_tuned_acoustic_scale_is_kept_with_its_sweep(tmp_path) -> None:
    """record_tuned_scale: model.json decodes at the sweep's best scale and keeps the sweep, which
    the report's note quotes; a directory without one says its scale is the tables'."""
    from asr_kd.config import FeatureConfig
    from asr_kd.decode.tuning import ScaleSweep
    from asr_kd.deploy.model_dir import MODEL_JSON, ModelSpec, load_spec, record_tuned_scale
    from asr_kd.deploy.report import scale_note

    spec = ModelSpec("hybrid", FeatureConfig(), "utterance", decoding={"beam": 11.0, "max_active": 2000, "acoustic_scale": 0.0833})
    old = json.loads(spec.to_json())
    del old["scale_sweep"]  # a directory made before the field existed
    (tmp_path / MODEL_JSON).write_text(json.dumps(old))
    assert load_spec(tmp_path) == spec
    assert scale_note(load_spec(tmp_path)) == "acoustic scale 0.0833, the recipe tables' for its kind"
    sweep = ScaleSweep("dev-clean", (0.0714, 0.0833, 0.1), (610, 600, 590), 1219, 0.1)
    record_tuned_scale(tmp_path, sweep)
    back = load_spec(tmp_path)
    assert back.decode_config().acoustic_scale == 0.1 and back.decode_config().beam == 11.0
    assert ScaleSweep.from_dict(back.scale_sweep) == sweep
    assert scale_note(back) == "acoustic scale 0.1, tuned on dev-clean for it (word errors 0.0714: 610, 0.0833: 600, 0.1: 590; at the grid's edge)"
    gmm = dataclasses.replace(spec, kind="gmm")
    (tmp_path / MODEL_JSON).write_text(gmm.to_json())
    with pytest.raises(ConfigError, match="hybrid"):
        record_tuned_scale(tmp_path, sweep)
