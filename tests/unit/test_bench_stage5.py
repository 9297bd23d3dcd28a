"""bench/stage5_speed.py, stage 5's throughput on a GPU machine: its CPU smoke run stores what stage
5 stores, and its per-cut work is the stage's own (asr_kd.stages.s5_soft_targets.cut_target_arrays)."""

from __future__ import annotations

import runpy

import numpy as np
import pytest
import torch

from asr_kd.config import KdConfig
from asr_kd.data.stored_targets import SOFT_CODES
from asr_kd.kd.soft_targets import SoftTargetStats, topk_compress
from asr_kd.stages.s5_soft_targets import cut_target_arrays
from asr_kd.kd.target_formats import decode_topk
from tests.conftest import REPO_ROOT


def test_the_stage5_bench_runs_on_the_cpu_and_keeps_what_the_targets_hold(capsys: pytest.CaptureFixture[str]) -> None:
    bench = runpy.run_path(str(REPO_ROOT / "bench" / "stage5_speed.py"))
    out = bench["main"](["--model", "tiny", "--num-classes", "30", "--teachers", "2", "--cuts", "3", "--frames", "150",
                         "--max-duration", "1", "20", "--storage", "rvq", "uint16-uint8", "--top-k", "30", "--device", "cpu", "--rounds", "2"])
    assert [r["max_duration"] for r in out["inference"]] == [1.0, 20.0]
    assert all(r["frames_per_second"] > 0 for r in out["inference"] + out["storing"])
    rows = {r["storage"]: r for r in out["storing"]}
    # top-30 of 30 senones keeps all of the mass (up to uint8 rounding); rvq's codes keep most of it.
    assert rows["uint16-uint8"]["mean_mass_kept"] == pytest.approx(1.0, abs=1e-6)
    assert 0.5 < rows["rvq"]["mean_mass_kept"] <= 1.0 + 1e-6
    text = capsys.readouterr().out
    assert "| 1 s of audio |" in text and "| 20 s of audio |" in text and "| rvq |" in text


def test_a_cuts_stored_arrays_decode_to_its_top_k() -> None:
    torch.manual_seed(0)
    log_probs = torch.log_softmax(3 * torch.randn(40, 50), dim=-1)
    kd = KdConfig(top_k=5, storage="uint16-uint8")
    stats = SoftTargetStats()
    arrays = cut_target_arrays(log_probs, kd, None, stats)
    ids, probs = decode_topk(arrays)
    want_ids, _ = topk_compress(log_probs.exp(), 5)
    assert np.array_equal(np.sort(ids, axis=1), np.sort(want_ids, axis=1)) and stats.frames == 40
    assert SOFT_CODES not in arrays and np.allclose(probs.sum(axis=1), 1.0, atol=1e-2)
