"""Stage 1 on audio at other rates and with several channels: resampled and mixed on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import load_manifest

from asr_kd.config import FeatureConfig
from asr_kd.data.features import compute_features_for_parts, cuts_path
from asr_kd.data.librispeech import prepare_manifests
from asr_kd.errors import ConfigError

SECONDS = 5.41


def _speech_like(rate: int, seconds: float = SECONDS, f0: float = 140.0) -> np.ndarray:
    """Syllable-like bursts (3 a second) of a harmonic tone with a moving pitch, in a little
    noise: the same signal at any rate."""
    t = np.arange(int(round(rate * seconds))) / rate
    pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    envelope = np.sin(np.pi * 3 * t) ** 4
    x = envelope * sum(0.2 / k * np.sin(k * phase) for k in range(1, 6))
    return (x + 0.003 * np.random.default_rng(rate).standard_normal(t.size)).astype(np.float32)


def _write(corpus: Path, utt: str, audio: np.ndarray, rate: int) -> None:
    chapter = corpus / "train-clean-100" / utt.split("-")[0] / "100"
    chapter.mkdir(parents=True, exist_ok=True)
    sf.write(chapter / f"{utt}.flac", audio, rate, subtype="PCM_16")
    with open(chapter / f"{utt.split('-')[0]}-100.trans.txt", "a") as f:
        f.write(f"{utt} HELLO WORLD\n")


@pytest.fixture
def mixed_corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    x16 = _speech_like(16000)
    _write(corpus, "1-100-0000", x16, 16000)
    _write(corpus, "1-100-0001", _speech_like(8000), 8000)
    _write(corpus, "1-100-0002", _speech_like(44100), 44100)
    _write(corpus, "1-100-0003", np.stack([x16, x16], axis=1), 16000)  # stereo, the same in both channels
    noise = 0.3 * np.random.default_rng(1).standard_normal(x16.size).astype(np.float32)
    _write(corpus, "1-100-0004", np.stack([noise, x16], axis=1), 16000)  # the signal in channel 1 only
    return corpus


def _features(corpus: Path, out: Path, cfg: FeatureConfig) -> dict[str, np.ndarray]:
    prepare_manifests(corpus, out / "manifests", ["train-clean-100"])
    compute_features_for_parts(out / "manifests", out, ["train-clean-100"], cfg, kinds=["fbank"])
    cuts = load_manifest(cuts_path(out / "fbank", "train-clean-100"))
    assert {c.sampling_rate for c in cuts} == {cfg.sampling_rate}  # the cut manifests say what the features saw
    return {c.id: c.load_features() for c in cuts}


def test_any_rate_and_stereo_give_the_frames_of_16k_audio(mixed_corpus: Path, tmp_path: Path) -> None:
    feats = _features(mixed_corpus, tmp_path / "mix", FeatureConfig(num_jobs=2))
    assert {k: v.shape for k, v in feats.items()} == {f"1-100-000{i}": (541, 40) for i in range(5)}  # 5.41 s at 10 ms
    reference = feats["1-100-0000"]
    # Resampled audio has the spectrum of the 16 kHz original (the 8 kHz file lacks the band above 4 kHz).
    for utt in ("1-100-0001", "1-100-0002"):
        assert np.corrcoef(feats[utt][:, :30].mean(0), reference[:, :30].mean(0))[0, 1] > 0.97, utt
        # Frame by frame too: the bursts fall on the same frames as in the original (no drift,
        # no offset); the same track 3 frames (30 ms) off correlates much less.
        energy = feats[utt].mean(axis=1)
        assert np.corrcoef(energy, reference.mean(axis=1))[0, 1] > 0.98, utt
        assert np.corrcoef(energy, np.roll(reference.mean(axis=1), 3))[0, 1] < 0.85, utt
    np.testing.assert_array_equal(feats["1-100-0003"], reference)  # the mean of two equal channels
    assert np.abs(feats["1-100-0004"] - reference).mean() > 1.0  # mixed with the noise channel


def test_a_chosen_channel_is_used_and_a_missing_one_is_skipped(mixed_corpus: Path, tmp_path: Path) -> None:
    feats = _features(mixed_corpus, tmp_path / "ch1", FeatureConfig(num_jobs=1, channel="1"))
    assert len(feats) == 5  # mono files are used as they are
    np.testing.assert_array_equal(feats["1-100-0004"], feats["1-100-0000"])  # channel 1 holds the signal
    feats = _features(mixed_corpus, tmp_path / "ch2", FeatureConfig(num_jobs=1, channel="2"))
    assert sorted(feats) == ["1-100-0000", "1-100-0001", "1-100-0002"]
    skipped = (tmp_path / "ch2" / "fbank" / "skipped_train-clean-100.txt").read_text().splitlines()
    assert skipped == [f"1-100-000{i}\taudio has 2 channels, no channel 2 (features.channel)" for i in (3, 4)]
    with pytest.raises(ConfigError, match="features.channel must be 'mix' or a channel index"):
        FeatureConfig(channel="left")
