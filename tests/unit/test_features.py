"""Stage 1: features, their storage, CMVN, and audio that fails to decode."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from lhotse import load_manifest

from asr_kd.config import FeatureConfig
from asr_kd.data.features import CmvnStats, cmvn_path, compute_features_for_parts, cuts_path, make_extractor
from asr_kd.data.librispeech import prepare_manifests
from asr_kd.errors import DataError


@pytest.fixture
def manifests(tone_corpus: Path, tmp_path: Path) -> Path:
    out = tmp_path / "manifests"
    prepare_manifests(tone_corpus, out, ["train-clean-100", "dev-clean"])
    return out


@pytest.mark.parametrize("backend", ["lhotse", "kaldi-native-fbank"])
def test_features_stored_with_shapes_and_no_nans(manifests: Path, tmp_path: Path, backend: str) -> None:
    cfg = FeatureConfig(backend=backend, num_jobs=2)
    reports = compute_features_for_parts(manifests, tmp_path / "feats", ["train-clean-100"], cfg)
    assert {(r.kind, r.dim, r.cuts, r.skipped) for r in reports} == {("fbank", 40, 6, 0), ("mfcc", 13, 6, 0)}
    for kind, dim in (("fbank", 40), ("mfcc", 13)):
        cuts = load_manifest(cuts_path(tmp_path / "feats" / kind, "train-clean-100"))
        assert len(cuts) == 6
        for cut in cuts:
            feats = cut.load_features()
            assert feats.shape == (150, dim)  # 1.5 s at a 10 ms shift
            assert np.isfinite(feats).all()
            assert feats.std(axis=0).mean() > 0.01  # not a constant matrix
    cuts = load_manifest(cuts_path(tmp_path / "feats" / "fbank", "train-clean-100"))
    # Different tones give different spectra: the storage keeps utterances apart.
    a, b = cuts[0].load_features(), cuts[2].load_features()
    assert np.abs(a - b).mean() > 0.1


def test_backends_agree_on_spectral_shape() -> None:
    cfg = FeatureConfig()
    t = np.arange(16000) / 16000
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)
    a = make_extractor("fbank", cfg, "lhotse")(x)
    b = make_extractor("fbank", cfg, "kaldi-native-fbank")(x)
    assert a.shape == b.shape == (100, 40)
    # The two use slightly different mel scales; their mean spectra must still match closely.
    assert np.corrcoef(a.mean(0), b.mean(0))[0, 1] > 0.98
    assert a.mean(0).argmax() == b.mean(0).argmax()


def test_cmvn_normalises_each_speaker(manifests: Path, tmp_path: Path) -> None:
    compute_features_for_parts(manifests, tmp_path / "feats", ["train-clean-100"], FeatureConfig(), kinds=["mfcc"])
    stats = CmvnStats.load(cmvn_path(tmp_path / "feats" / "mfcc", "train-clean-100"))
    assert sorted(stats.keys) == ["11", "12"]
    cuts = load_manifest(cuts_path(tmp_path / "feats" / "mfcc", "train-clean-100"))
    frames = np.concatenate([stats.normalize(c.load_features(), c.supervisions[0].speaker) for c in cuts if c.supervisions[0].speaker == "12"])
    np.testing.assert_allclose(frames.mean(0), 0.0, atol=1e-2)
    np.testing.assert_allclose(frames.std(0), 1.0, atol=1e-2)
    with pytest.raises(DataError, match="no CMVN statistics for '99'"):
        stats.normalize(frames, "99")


def test_global_cmvn_has_one_key(manifests: Path, tmp_path: Path) -> None:
    compute_features_for_parts(manifests, tmp_path / "f", ["dev-clean"], FeatureConfig(cmvn="global"), kinds=["fbank"])
    assert CmvnStats.load(cmvn_path(tmp_path / "f" / "fbank", "dev-clean")).keys == ["global"]


def test_audio_broken_after_stage0_is_skipped_and_listed(manifests: Path, tone_corpus: Path, tmp_path: Path) -> None:
    bad = tone_corpus / "train-clean-100" / "12" / "100" / "12-100-0001.flac"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # truncated after its header was read in stage 0
    reports = compute_features_for_parts(manifests, tmp_path / "feats", ["train-clean-100"], FeatureConfig(num_jobs=1), kinds=["fbank"])
    listed = (tmp_path / "feats" / "fbank" / "skipped_train-clean-100.txt").read_text()
    if reports[0].skipped:  # libsndfile may decode a truncated FLAC up to the cut
        assert reports[0].cuts == 5 and "12-100-0001\t" in listed
    bad.write_bytes(b"garbage")
    reports = compute_features_for_parts(manifests, tmp_path / "feats2", ["train-clean-100"], FeatureConfig(num_jobs=2), kinds=["fbank"])
    assert (reports[0].cuts, reports[0].skipped) == (5, 1)
    assert "12-100-0001\tcannot decode audio" in (tmp_path / "feats2" / "fbank" / "skipped_train-clean-100.txt").read_text()


def test_missing_manifest_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"librispeech_recordings_dev-clean.jsonl.gz does not exist; run stage 0"):
        compute_features_for_parts(tmp_path, tmp_path / "f", ["dev-clean"], FeatureConfig())


@pytest.mark.parametrize("backend", ["lhotse", "kaldi-native-fbank"])
def test_extractor_refuses_audio_shorter_than_one_frame(backend: str) -> None:
    extract = make_extractor("fbank", FeatureConfig(), backend)
    with pytest.raises(DataError, match=r"audio too short for one frame \(1 samples; one frame needs 400, 25 ms at 16000 Hz\)"):
        extract(np.zeros(1, dtype=np.float32))
    assert extract(np.zeros(400, dtype=np.float32)).shape == (3, 40)


def test_audio_shorter_than_one_frame_is_skipped_and_listed(tone_corpus: Path, tmp_path: Path) -> None:
    import soundfile as sf

    short = tone_corpus / "dev-clean" / "21" / "100" / "21-100-0001.flac"
    sf.write(short, np.full(1, 0.1, dtype=np.float32), 16000, subtype="PCM_16")
    prepare_manifests(tone_corpus, tmp_path / "m", ["dev-clean"])  # one sample passes stage 0
    reports = compute_features_for_parts(tmp_path / "m", tmp_path / "f", ["dev-clean"], FeatureConfig(num_jobs=1), kinds=["fbank"])
    assert (reports[0].cuts, reports[0].skipped) == (2, 1)
    listed = (tmp_path / "f" / "fbank" / "skipped_dev-clean.txt").read_text()
    assert listed == "21-100-0001\taudio too short for one frame (1 samples; one frame needs 400, 25 ms at 16000 Hz)\n"


@pytest.mark.parametrize("content, reason", [
    (b"not json at all\n", "Not a gzipped file"),
    (gzip.compress(b"not json at all\n"), "Expecting value"),
    ("cut", "Compressed file ended before the end-of-stream marker"),
    (b"", "holds no recordings"),
], ids=["not-gzip", "bad-json", "truncated", "empty"])
def test_corrupt_manifest_is_one_line_error(manifests: Path, tmp_path: Path, content, reason: str) -> None:
    path = manifests / "librispeech_recordings_dev-clean.jsonl.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if content == "cut" else content)
    with pytest.raises(DataError, match=rf"manifest {path} .*{reason}.*; rerun stage 0 \(asr-kd prepare-manifests\)") as err:
        compute_features_for_parts(manifests, tmp_path / "f", ["dev-clean"], FeatureConfig(), kinds=["fbank"])
    assert "\n" not in str(err.value)


def test_stage1_features_yaml_describes_the_fbank_features_only(manifests: Path, tmp_path: Path) -> None:
    """data/features.yaml is what decode-part and the model directories read as the networks'
    front end: written by a run that made the fbank features, vouched for by its record, and left
    alone by an MFCC-only run with other settings (which used to overwrite it first)."""
    from asr_kd.config import load_config
    from asr_kd.stages.provenance import read_record
    from asr_kd.stages.s1_features import compute

    out = tmp_path / "data"
    compute(manifests, out, ["dev-clean"], FeatureConfig(num_mel_bins=30), kinds=["fbank"])
    assert load_config(FeatureConfig, out / "features.yaml").num_mel_bins == 30
    assert "../features.yaml" in read_record(out / "fbank").outputs
    compute(manifests, out, ["dev-clean"], FeatureConfig(num_mel_bins=50, num_ceps=12), kinds=["mfcc"])
    assert read_record(out / "mfcc").config["features"]["num_mel_bins"] == 50
    assert load_config(FeatureConfig, out / "features.yaml").num_mel_bins == 30
