"""Stage entry points refuse wrong arguments in one line, before reading anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr_kd.config import DecodeConfig
from asr_kd.errors import ConfigError, DataError
from asr_kd.stages.layout import RecipeLayout


def test_decode_hybrid_names_decode_part_for_another_part(tmp_path: Path) -> None:
    from asr_kd.stages.s7_decode import evaluate_systems

    with pytest.raises(ConfigError, match=r"--decode-parts my-test: .* asr-kd decode-part"):
        evaluate_systems(RecipeLayout(tmp_path / "data", tmp_path / "exp"), DecodeConfig(), decode_parts=["my-test"])

    # A posterior budget of 0 or less is refused before anything is read.
    for bad in (0.0, -1.0):
        with pytest.raises(ConfigError, match=rf"--max-posterior-mb must be > 0, got {bad}"):
            evaluate_systems(RecipeLayout(tmp_path / "data", tmp_path / "exp"), DecodeConfig(), max_posterior_mb=bad)


def test_stage_6_without_stage_3_names_stage_3(tmp_path: Path) -> None:
    from asr_kd.config import DnnConfig, KdConfig, TrainConfig
    from asr_kd.stages.s6_students import train_student

    with pytest.raises(DataError, match=r"senones.json does not exist; run stage 3"):
        train_student(RecipeLayout(tmp_path / "data", tmp_path / "exp"), "hard", DnnConfig(), TrainConfig(), KdConfig())
    with pytest.raises(ConfigError, match=r"student kind must be one of"):
        train_student(RecipeLayout(tmp_path / "data", tmp_path / "exp"), "soft", DnnConfig(), TrainConfig(), KdConfig())
