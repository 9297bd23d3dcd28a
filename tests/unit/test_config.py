"""Configs: YAML loading, overrides, validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr_kd.config import FeatureConfig, LangConfig, SynthConfig, load_config, parse_overrides, save_config
from asr_kd.errors import ConfigError


def test_yaml_and_overrides_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("num_mel_bins: 40\nbackend: kaldi-native-fbank\n")
    cfg = load_config(FeatureConfig, path, parse_overrides(["num-jobs=3", "cmvn=global"]))
    assert (cfg.num_mel_bins, cfg.backend, cfg.num_jobs, cfg.cmvn) == (40, "kaldi-native-fbank", 3, "global")
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(FeatureConfig, tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize(
    "cls, overrides, message",
    [
        (FeatureConfig, {"backend": "htk"}, "features.backend must be one of"),
        (FeatureConfig, {"num_ceps": "50"}, "num_ceps must not exceed"),
        (FeatureConfig, {"num_jobs": "two"}, "num_jobs: expected int"),
        (SynthConfig, {"preset": "huge"}, "synth.preset must be one of"),
        (SynthConfig, {"difficulty": "7"}, r"difficulty must be in \[0, 3\]"),
        (SynthConfig, {"pitch_male": "60,15"}, r"synth.pitch_male must be \[low, high\] with 0 <= low <= high <= 100, got \[60, 15\]"),
        (SynthConfig, {"rate_wpm": "150"}, r"synth.rate_wpm must be \[low, high\]"),
        (SynthConfig, {"channel_peak_db": "30"}, r"channel_peak_db must be in \[0, 20\]"),
        (SynthConfig, {"noise_kind_weights": "1,1,1"}, "synth.noise_kind_weights must be 4 weights"),
        (SynthConfig, {"noise_kind_weights": "0,0,0,0"}, "not all 0"),
        (SynthConfig, {"pitch_range": "90,10"}, r"synth.pitch_range must be \[low, high\] with 0 <= low <= high <= 100, got \[90, 10\]"),
        (SynthConfig, {"word_gap": "-1,2"}, r"synth.word_gap must be \[low, high\]"),
        (SynthConfig, {"channel_low_hz": "60,1200"}, r"synth.channel_low_hz must be \[low, high\] with 20 <= low <= high <= 900"),
        (SynthConfig, {"channel_peak_hz": "3500,5000"}, "channel_peak_hz's low end 3500.0 must be below channel_high_hz's 3400.0"),
        (SynthConfig, {"peak_level": "0,0.5"}, r"synth.peak_level must be \[low, high\] with 0.01 <= low"),
        (SynthConfig, {"silence_s": "0.5"}, r"synth.silence_s must be \[low, high\]"),
        (SynthConfig, {"snr_spread_db": "40"}, r"synth.snr_spread_db must be in \[0, 30\]"),
        (SynthConfig, {"reverb_prob": "1.5"}, r"synth.reverb_prob must be in \[0, 1\]"),
        (SynthConfig, {"rt60_scale": "0"}, r"synth.rt60_scale must be in \[0.1, 4\]"),
        (LangConfig, {"position_dependent_phones": "maybe"}, "expected true/false"),
        (LangConfig, {"silence_probability": "0.5"}, r"unknown key\(s\) \['silence_probability'\]"),
    ],
)
def test_invalid_values_are_one_line_errors(cls: type, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config(cls, None, overrides)
    assert "\n" not in str(err.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(FeatureConfig, tmp_path / "nope.yaml")


def test_override_needs_equals() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["num_jobs"])
