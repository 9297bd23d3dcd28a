"""bench/loader_speed.py, what one data-loader worker feeds a GPU: its passes read every frame's label
and, per format, soft targets that sum to 1, at the bytes per frame of the stored format."""

from __future__ import annotations

import runpy

import pytest

from tests.conftest import REPO_ROOT


def test_the_loader_bench_reads_labels_and_targets_of_every_frame(tmp_path) -> None:
    bench = runpy.run_path(str(REPO_ROOT / "bench" / "loader_speed.py"))
    rows = bench["main"](["--num-classes", "40", "--cuts", "3", "--frames", "120", "--max-duration", "2", "--rounds", "2",
                          "--gpu-frames-per-second", "1000", "--results", str(tmp_path / "RESULTS.md")])
    by_format = {r["format"]: r for r in rows}
    assert list(by_format) == ["hard", "int32-fp16", "uint16-uint8", "rvq", "rvq-dense", "rvq-codes"]
    for name, row in by_format.items():
        assert row["frames"] == row["labelled_frames"] == 360  # 3 cuts x 120 frames, each labelled, in batches of 2 s
        assert row["target_frames"] == (0 if name == "hard" else 360)
        assert row["workers_per_gpu"] == pytest.approx(1000 / row["frames_per_second"])
    assert [by_format[n]["bytes_per_frame"] for n in by_format] == [0, 120, 60, 8, 8, 8]
    assert by_format["rvq"]["top_k"] == by_format["rvq-dense"]["top_k"] == by_format["rvq-codes"]["top_k"] == 40  # 500 asked, 40 senones
    # Only the codes left in the batch are decoded apart (here on the CPU, as a student's loss would).
    assert [n for n, r in by_format.items() if r["decoded_per_second"] is not None] == ["rvq-codes"]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Data loader against the GPU, codes decoded on cpu:" in text
    rate = f"{by_format['uint16-uint8']['frames_per_second']:,.0f}"
    assert f"| 40 | + top 20, uint16-uint8 | 60 | {rate} | {1000 / by_format['uint16-uint8']['frames_per_second']:.1f} | - |" in text


def test_the_gpu_checks_tiny_kd_config_is_tinys_with_rvq_codes() -> None:
    # bench/gpu_checks.sh trains tiny's students from it on the GPU: it must differ from tiny's own
    # kd config only in the storage, so that a CPU run with the same --kd-config is its control,
    # and it must decode fewer senones than tiny's tree has (the top-k path of the GPU decoder).
    from asr_kd.config import KdConfig, load_config

    gpu = load_config(KdConfig, REPO_ROOT / "bench" / "gpu_tiny_kd.yaml")
    tiny = load_config(KdConfig, REPO_ROOT / "egs" / "tiny_kd" / "conf" / "kd.yaml")
    assert gpu.storage == "rvq" and tiny.storage != "rvq"
    assert {**vars(gpu), "storage": tiny.storage, "codebooks": tiny.codebooks} == vars(tiny)
    assert gpu.top_k < 150  # tiny's senones (conf/gmm_tiny.yaml)
