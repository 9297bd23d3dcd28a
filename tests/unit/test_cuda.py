"""What a CUDA device must give: the same stage-5 targets as the CPU (the teachers' fused
posteriors, the rvq codebooks fitted and codes encoded on the GPU, each cut's stored arrays and statistics) and the
same CTC log-probabilities.
Skipped without a CUDA device;
bench/gpu_checks.sh runs this file first on a GPU machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asr_kd.kd.ensemble import ensemble_log_posteriors
from asr_kd.kd.target_formats import ResidualQuantiser
from asr_kd.models.dnn import SplicedDnn, dnn_preset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _posteriors(frames: int, classes: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(4 * torch.randn(frames, classes, generator=g), dim=-1)


def test_rvq_fitted_and_encoded_on_the_gpu_matches_the_cpu() -> None:
    sample, held_out = _posteriors(6000, 300), _posteriors(2000, 300, seed=1)
    cpu = ResidualQuantiser.fit(sample, 4, seed=0)
    gpu = ResidualQuantiser.fit(sample, 4, seed=0, device="cuda")
    assert gpu.codebooks.dtype == np.float16 and gpu.codebooks.shape == cpu.codebooks.shape
    # Lloyd's iterations from the same starts: summation order may flip a rare tie, no more.
    assert np.mean(np.abs(gpu.codebooks.astype(np.float32) - cpu.codebooks.astype(np.float32))) < 1e-3
    again = ResidualQuantiser.fit(sample, 4, seed=0, device="cuda")
    assert np.array_equal(again.codebooks, gpu.codebooks)  # the same codebooks twice: stage 5's outputs can be reused
    codes_gpu, codes_cpu = gpu.encode(held_out), ResidualQuantiser(gpu.codebooks).encode(held_out)
    assert codes_gpu.dtype == np.uint8 and np.mean(codes_gpu == codes_cpu) > 0.99


def test_the_ensembles_posteriors_on_the_gpu_equal_the_cpus(tmp_path) -> None:
    import runpy

    from tests.conftest import REPO_ROOT

    synthetic_cuts = runpy.run_path(str(REPO_ROOT / "bench" / "stage5_speed.py"))["synthetic_cuts"]
    cuts = synthetic_cuts(tmp_path, 5, 300, 40)
    torch.manual_seed(0)
    teachers = [SplicedDnn(dnn_preset("mini"), 500).eval() for _ in range(3)]
    cpu = [lp for _, lp in ensemble_log_posteriors(teachers, cuts, None, 2.0, "arithmetic", 20.0, "cpu")]
    gpu = [lp for _, lp in ensemble_log_posteriors(teachers, cuts, None, 2.0, "arithmetic", 20.0, "cuda")]
    assert [g.device.type for g in gpu] == ["cpu"] * 5  # handed back on the CPU by default
    assert max(float((a - b).abs().max()) for a, b in zip(cpu, gpu)) < 1e-3
    # Stage 5 asks for them where they were scored (on_device): its per-cut work runs there, no round trip.
    kept = [lp for _, lp in ensemble_log_posteriors(teachers, cuts, None, 2.0, "arithmetic", 20.0, "cuda", on_device=True)]
    assert [k.device.type for k in kept] == ["cuda"] * 5
    assert all(torch.equal(k.cpu(), g) for k, g in zip(kept, gpu))


def test_run_sh_device_sends_the_scoring_to_the_gpu(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run.sh --device cuda exports ASR_KD_INFERENCE_DEVICE: stages 3, 7, 8 and 10 score there without an argument.
    import runpy

    from tests.conftest import REPO_ROOT

    monkeypatch.setenv("ASR_KD_INFERENCE_DEVICE", "cuda")
    cuts = runpy.run_path(str(REPO_ROOT / "bench" / "stage5_speed.py"))["synthetic_cuts"](tmp_path, 2, 100, 40)
    model = SplicedDnn(dnn_preset("tiny"), 60).eval()
    out = list(ensemble_log_posteriors([model], cuts, None))
    assert next(model.parameters()).device.type == "cuda" and [lp.shape[0] for _, lp in out] == [100, 100]


def test_ctc_scoring_on_the_gpu_equals_the_cpus(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # CTC stages 5-7 and decode-part score through ctc_log_probs without a device: run.sh --device cuda sends them here.
    from asr_kd.ctc.model import CtcEncoder
    from asr_kd.ctc.training import ctc_log_probs
    from tests.unit.test_ctc_model import _cuts_of_lengths

    cuts = _cuts_of_lengths(tmp_path, [57, 120, 33])
    torch.manual_seed(0)
    models = [CtcEncoder(40, 11, "tiny", 4, dropout=0.0).eval() for _ in range(2)]
    cpu = [lp for _, lp in ctc_log_probs(models, cuts, None, 2.0, "arithmetic", 200.0, "cpu")]
    monkeypatch.setenv("ASR_KD_INFERENCE_DEVICE", "cuda")
    gpu = [lp for _, lp in ctc_log_probs(models, cuts, None, 2.0, "arithmetic")]
    assert next(models[0].parameters()).device.type == "cuda"
    assert [g.shape for g in gpu] == [c.shape for c in cpu]
    assert max(float(np.abs(a - b).max()) for a, b in zip(cpu, gpu)) < 1e-3


@pytest.mark.parametrize("storage, tail", [("uint16-uint8", "renormalise"), ("rvq", "renormalise"), ("rvq", "bucket")])
def test_stage5_per_cut_work_on_the_gpu_equals_the_cpus(storage: str, tail: str) -> None:
    # cut_target_arrays with device="cuda": the top-k, codes, decoding and statistics run on the GPU;
    # the stored arrays and the statistics must be those of the CPU (a rare tie or 1/16-nat step aside).
    from asr_kd.config import KdConfig
    from asr_kd.kd.soft_targets import SoftTargetStats
    from asr_kd.stages.s5_soft_targets import cut_target_arrays

    kd = KdConfig(temperature=2.0, top_k=20, storage=storage, codebooks=4, tail=tail)
    log_probs = torch.log(_posteriors(3000, 700, seed=2))
    quantiser = ResidualQuantiser.fit(log_probs[:2000].exp(), 4, seed=0) if storage == "rvq" else None
    on_gpu = ResidualQuantiser(quantiser.codebooks, "cuda") if quantiser is not None else None
    stats_cpu, stats_gpu = SoftTargetStats(bucket=tail == "bucket"), SoftTargetStats(bucket=tail == "bucket")
    cpu = cut_target_arrays(log_probs, kd, quantiser, stats_cpu)
    gpu = cut_target_arrays(log_probs, kd, on_gpu, stats_gpu, "cuda")
    assert cpu.keys() == gpu.keys()
    for name in cpu:
        assert cpu[name].dtype == gpu[name].dtype and cpu[name].shape == gpu[name].shape
        assert np.mean(cpu[name] == gpu[name]) > 0.99
    a, b = stats_cpu.summary(), stats_gpu.summary()
    assert a["frames"] == b["frames"] == 3000
    assert b["mean_mass_kept"] == pytest.approx(a["mean_mass_kept"], abs=1e-4)
    assert b["mean_kl_stored_vs_full"] == pytest.approx(a["mean_kl_stored_vs_full"], abs=1e-4)
    if tail == "bucket":  # the rest's KL, summed on the GPU
        assert b["mean_kl_bucketed_vs_full"] == pytest.approx(a["mean_kl_bucketed_vs_full"], abs=1e-4)


@pytest.mark.parametrize("decode_k", [5, 500])
def test_a_students_batch_codes_decoded_on_the_gpu_equal_the_loaders(tmp_path, decode_k: int) -> None:
    # train_frame_classifier on CUDA leaves rvq codes in the batch (FrameDataset codes_in_batch) and
    # the loss decodes them on the GPU: the same targets and loss as the loader's CPU decoding.
    import runpy

    from lhotse import CutSet

    from asr_kd.config import KdConfig
    from asr_kd.data.frames import FrameDataset
    from asr_kd.data.stored_targets import SOFT_CODEBOOK, SOFT_DECODE_K, decode_batch_codes
    from asr_kd.kd.soft_targets import store_target_arrays
    from asr_kd.kd.student import StoredDistillationLoss
    from asr_kd.train.loop import to_device
    from tests.conftest import REPO_ROOT

    bench = runpy.run_path(str(REPO_ROOT / "bench" / "stage5_speed.py"))
    cuts = bench["synthetic_cuts"](tmp_path, 3, 200, 40)
    posteriors = {c.id: _posteriors(c.num_frames, 60, seed=i) for i, c in enumerate(cuts)}
    quantiser = ResidualQuantiser.fit(torch.cat(list(posteriors.values())), 3, seed=0)
    stored = CutSet.from_cuts(store_target_arrays(cuts, ((cid, quantiser.arrays(p)) for cid, p in posteriors.items()), tmp_path / "rvq",
                                                  shared={SOFT_CODEBOOK: quantiser.codebooks}, custom={SOFT_DECODE_K: decode_k}))
    plain = FrameDataset(None, labels_name=None)[stored]
    coded = to_device(FrameDataset(None, labels_name=None, codes_in_batch=True)[stored], torch.device("cuda"))
    ids, probs = decode_batch_codes(coded)
    assert probs.device.type == "cuda"
    assert (ids is None) == (plain["soft_ids"] is None)
    if ids is not None:
        assert np.mean((ids.cpu() == plain["soft_ids"]).numpy()) > 0.99
    assert float((probs.cpu() - plain["soft_probs"]).abs().max()) < 1e-3
    model = SplicedDnn(dnn_preset("tiny"), 60)
    kd = KdConfig(temperature=2.0, hard_weight=0.0)
    loss_cpu, _ = StoredDistillationLoss(kd)(model, plain)
    loss_gpu, _ = StoredDistillationLoss(kd)(model.cuda(), coded)
    assert abs(float(loss_gpu.detach()) - float(loss_cpu.detach())) < 1e-3 * max(1.0, abs(float(loss_cpu.detach())))


def test_a_student_trains_on_rvq_codes_decoded_on_the_gpu(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stage 6's path on a GPU with the recipe's default kd.storage: train_frame_classifier on CUDA
    # sends the codes to the device and every training step's loss decodes them there.
    import runpy

    from lhotse import CutSet

    import asr_kd.kd.student as student
    from asr_kd.config import KdConfig, TrainConfig
    from asr_kd.data.alignments import store_alignments
    from asr_kd.data.stored_targets import SOFT_CODEBOOK, SOFT_DECODE_K
    from asr_kd.kd.soft_targets import store_target_arrays
    from asr_kd.train.frame_classifier import train_frame_classifier
    from tests.conftest import REPO_ROOT

    decoded = []
    real = student.decode_batch_codes
    monkeypatch.setattr(student, "decode_batch_codes", lambda batch: decoded.append(batch["soft_codes"].device.type) or real(batch))
    cuts = runpy.run_path(str(REPO_ROOT / "bench" / "stage5_speed.py"))["synthetic_cuts"](tmp_path, 4, 300, 40)
    rng = np.random.default_rng(0)
    cuts = store_alignments(cuts, {c.id: rng.integers(0, 60, c.num_frames).astype(np.int32) for c in cuts}, tmp_path / "ali")
    posteriors = {c.id: _posteriors(c.num_frames, 60, seed=i) for i, c in enumerate(cuts)}
    quantiser = ResidualQuantiser.fit(torch.cat(list(posteriors.values())), 4, seed=0)
    stored = CutSet.from_cuts(store_target_arrays(cuts, ((cid, quantiser.arrays(p)) for cid, p in posteriors.items()), tmp_path / "rvq",
                                                  shared={SOFT_CODEBOOK: quantiser.codebooks}, custom={SOFT_DECODE_K: 20}))
    kd = KdConfig(temperature=2.0, top_k=20, storage="rvq", codebooks=4)
    cfg = TrainConfig(num_epochs=2, max_duration=6.0, device="cuda", warmup_steps=0, lr_schedule="constant", log_every_steps=1,
                      bucketing=False, shuffle=False)
    result = train_frame_classifier(stored, None, None, None, 60, dnn_preset("tiny"), cfg, tmp_path / "student",
                                    compute_loss=student.StoredDistillationLoss(kd))
    assert result.state.step == 4 and result.final_path.exists()  # 2 batches of 6 s a epoch
    from asr_kd.train.frame_classifier import load_frame_classifier

    trained = load_frame_classifier(result.final_path)  # a NaN loss would have left NaN weights
    assert all(bool(torch.isfinite(w).all()) for w in trained.state_dict().values())
    assert decoded == ["cuda"] * 4
