"""The parts of the synthetic corpus: the espeak-ng binding, the text source, the degradations."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_kd.config import SynthConfig
from asr_kd.data import augment
from asr_kd.data.espeak import VoiceSettings, available_variants, get_synthesizer
from asr_kd.data.voices import FEMALE_VARIANTS, MALE_VARIANTS
from asr_kd.data.synth_text import bigram_perplexity, cmudict_words, generate_candidates, normalize_sentence, split_sentences, wordnet_sentences

# ---------------------------------------------------------------------------------- espeak-ng


def test_espeak_speaks_and_isolated_synthesis_is_repeatable() -> None:
    engine = get_synthesizer()
    assert engine.sample_rate == 22050
    text = "the quick brown fox doesn't jump over the lazy dog"
    first = engine.synthesize_isolated(text, VoiceSettings("en-us+f2", rate=170), seed=3)
    second = engine.synthesize_isolated(text, VoiceSettings("en-us+f2", rate=170), seed=3)
    assert first.dtype == np.float32 and 1.5 < len(first) / engine.sample_rate < 6.0
    assert np.array_equal(first, second)
    assert 0.05 < float(np.abs(first).max()) <= 1.0
    # Rate changes the duration; a longer text gives longer audio.
    slow = engine.synthesize_isolated(text, VoiceSettings("en-us+f2", rate=100), seed=3)
    assert len(slow) > 1.3 * len(first)
    # The breathy f2 voice draws noise from espeak's generator: the seed matters.
    other = engine.synthesize_isolated(text, VoiceSettings("en-us+f2", rate=170), seed=4)
    assert not np.array_equal(first, other)


def test_espeak_output_is_the_same_in_a_fresh_process() -> None:
    code = (
        "import hashlib; from asr_kd.data.espeak import get_synthesizer, VoiceSettings; "
        "a = get_synthesizer().synthesize_isolated('breathing softly in the klatt voice', VoiceSettings('en-us+klatt2'), seed=11); "
        "b = get_synthesizer().synthesize_isolated('and a female one', VoiceSettings('en-us+f2'), seed=11); "
        "print(hashlib.sha1(a.tobytes() + b.tobytes()).hexdigest())"
    )
    digests = {subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip() for _ in range(2)}
    engine = get_synthesizer()
    here = engine.synthesize_isolated("breathing softly in the klatt voice", VoiceSettings("en-us+klatt2"), seed=11)
    here2 = engine.synthesize_isolated("and a female one", VoiceSettings("en-us+f2"), seed=11)
    digests.add(hashlib.sha1(here.tobytes() + here2.tobytes()).hexdigest())
    assert len(digests) == 1


def test_voice_variants_exist_and_bad_voice_is_a_clear_error() -> None:
    variants = set(available_variants())
    assert set(MALE_VARIANTS) <= variants and set(FEMALE_VARIANTS) <= variants
    from asr_kd.errors import DataError

    with pytest.raises(DataError, match="no voice variant 'no-such-variant'"):
        get_synthesizer().synthesize("hello", VoiceSettings("en-us+no-such-variant"))


# ---------------------------------------------------------------------------------- text


def test_normalize_sentence_is_librispeech_style() -> None:
    lexicon = cmudict_words()
    assert normalize_sentence("Don't stop \u2014 it's here!", lexicon) == "DON'T STOP IT'S HERE"
    assert normalize_sentence("A well-known (and old) city.", lexicon) == "A WELL KNOWN AND OLD CITY"
    assert normalize_sentence("It cost 5 dollars.", lexicon) is None  # digits
    assert normalize_sentence("See <br/> here", lexicon) is None  # markup
    assert normalize_sentence("The qwzxv effect.", lexicon) is None  # not in CMUdict
    assert normalize_sentence("...", lexicon) is None


def test_candidates_are_deterministic_in_cmudict_and_of_bounded_length() -> None:
    lexicon = cmudict_words()
    a = generate_candidates(60, seed=3, min_words=5, max_words=12)
    assert a == generate_candidates(60, seed=3, min_words=5, max_words=12)
    assert a != generate_candidates(60, seed=4, min_words=5, max_words=12)
    assert len(a) == 60
    for s in a:
        words = s.split(" ")
        assert 5 <= len(words) <= 12 and all(w in lexicon for w in words)


def test_stray_letters_are_dropped_only_when_asked() -> None:
    from asr_kd.data.synth_text import has_stray_letter

    assert has_stray_letter("PUBLIC LAW INCLUDES IN PARTICULAR J") and has_stray_letter("THE OLD C WAS HERE")
    assert not has_stray_letter("I SAW A CAT") and not has_stray_letter("AN OX")
    # Seed 2 of this size draws sentences with stray letters (the Markov text's); the option drops
    # them from the pool, and without it the split is the one the corpora were made with.
    kwargs = dict(seed=2, vocab_size=2000, max_words=20, pool_factor=6.0)
    plain = split_sentences(400, 20, 20, **kwargs)
    assert split_sentences(400, 20, 20, drop_stray_letters=False, **kwargs) == plain
    assert sum(map(has_stray_letter, plain.train + plain.dev + plain.test)) == 4
    clean = split_sentences(400, 20, 20, drop_stray_letters=True, **kwargs)
    assert not any(map(has_stray_letter, clean.train + clean.dev + clean.test))
    assert len(clean.train) == 400 and len(clean.dev) == len(clean.test) == 20


def test_split_keeps_eval_sentences_out_of_train_with_known_words() -> None:
    split = split_sentences(200, 10, 10, seed=0, vocab_size=2000, max_words=12, pool_factor=6.0)
    assert (len(split.train), len(split.dev), len(split.test)) == (200, 10, 10)
    assert len(set(split.train + split.dev + split.test)) == 220
    assert split.eval_oov_rate < 0.05  # 200 training sentences cover nearly all eval words
    words = {w for s in split.train + split.dev + split.test for w in s.split()}
    assert words == set(split.vocabulary) and len(words) <= 2000


def test_ood_sentences_are_unseen_in_train_and_drawn_like_test() -> None:
    split = split_sentences(300, 10, 20, seed=1, vocab_size=2000, max_words=12, pool_factor=6.0, num_ood=20)
    assert len(split.ood) == 20 and not set(split.ood) & set(split.train + split.dev + split.test)
    train_words = {w for s in split.train for w in s.split()}
    ood_words = [w for s in split.ood for w in s.split()]
    assert split.ood_oov_rate == pytest.approx(np.mean([w not in train_words for w in ood_words]))
    assert split.ood_oov_rate < 0.05


@pytest.mark.skipif(not wordnet_sentences(5, 20), reason="WordNet is not installed (local/install_system_packages.sh installs it as root)")
def test_wordnet_examples_are_whole_sentences_and_join_the_pool() -> None:
    examples = wordnet_sentences(5, 20)
    assert len(examples) > 5000  # wordnet-base 3.0: 6,795 with these bounds
    assert "I CAN BREATHE BETTER WHEN THE AIR IS CLEAN" in examples
    assert "FORCE OUT THE AIR" not in examples  # a lower-case fragment
    lexicon = cmudict_words()
    assert all(5 <= len(s.split()) <= 20 and all(w in lexicon for w in s.split()) for s in examples)
    plain = split_sentences(300, 10, 10, seed=0, vocab_size=2000, max_words=20, pool_factor=6.0)
    mixed = split_sentences(300, 10, 10, seed=0, vocab_size=2000, max_words=20, pool_factor=6.0, wordnet_share=0.3)
    from_wordnet = set(examples)
    assert not any(s in from_wordnet for s in plain.train)
    assert 0.1 < np.mean([s in from_wordnet for s in mixed.train]) < 0.4


def test_bigram_perplexity() -> None:
    train = ("THE CAT SAT", "THE DOG SAT")
    # A sentence of the training text is more predictable than one of unseen words.
    assert bigram_perplexity(train, ("THE CAT SAT",)) < bigram_perplexity(train, ("A BIRD FLEW",))
    # With every bigram seen once from a single history, probabilities are exact enough to bound:
    # after THE, CAT and DOG each have 0.5 - 0.75/2 + a share of the unigram; PPL stays under 3.
    assert 1.0 < bigram_perplexity(train, ("THE CAT SAT",)) < 3.0
    # The unseen-word class keeps the perplexity finite.
    assert np.isfinite(bigram_perplexity(train, ("ZEBRA ZEBRA",)))


# ---------------------------------------------------------------------------------- degradations


def _band_power(x: np.ndarray, lo: float, hi: float, sr: int = 16000) -> float:
    f, p = scipy.signal.welch(x, fs=sr, nperseg=1024)
    return float(p[(f >= lo) & (f < hi)].mean())


@pytest.mark.parametrize("kind,slope_db_per_octave", [("white", 0.0), ("pink", -3.0), ("brown", -6.0)])
def test_colored_noise_has_unit_power_and_the_right_slope(kind: str, slope_db_per_octave: float) -> None:
    x = augment.colored_noise(kind, 160000, np.random.default_rng(0))
    assert np.mean(x.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-3)
    # Power in [500, 1000) Hz vs [2000, 4000) Hz: two octaves apart.
    measured = 10 * np.log10(_band_power(x, 2000, 4000) / _band_power(x, 500, 1000)) / 2
    assert measured == pytest.approx(slope_db_per_octave, abs=1.0)


def test_rir_decays_by_60_db_in_rt60() -> None:
    sr = 16000
    for rt60 in (0.3, 0.8):
        rir = augment.synthetic_rir(rt60, sr, np.random.default_rng(1))
        assert rir[0] == 1.0 and len(rir) == int(1.2 * rt60 * sr)
        # Schroeder backward integration of the tail; fit the decay between -5 and -25 dB.
        tail = rir[1:].astype(np.float64) ** 2
        edc = 10 * np.log10(np.cumsum(tail[::-1])[::-1] / tail.sum())
        t = np.arange(len(edc)) / sr
        sel = (edc < -5) & (edc > -25)
        slope = np.polyfit(t[sel], edc[sel], 1)[0]  # dB per second
        assert -60.0 / slope == pytest.approx(rt60, rel=0.15)


def _schroeder_rt60(rir: np.ndarray, sr: int) -> float:
    """RT60 from the Schroeder decay curve of the whole response, fitted between -5 and -25 dB."""
    energy = rir.astype(np.float64) ** 2
    edc = 10 * np.log10(np.cumsum(energy[::-1])[::-1] / energy.sum())
    t = np.arange(len(edc)) / sr
    sel = (edc < -5) & (edc > -25)
    return -60.0 / np.polyfit(t[sel], edc[sel], 1)[0]


def test_image_method_puts_reflections_where_the_geometry_says() -> None:
    sr = 16000
    room, source, mic = (5.0, 4.0, 3.0), (1.0, 1.0, 1.5), (3.0, 2.0, 1.5)
    rir = augment.image_method_rir(room, source, mic, rt60=0.4, sample_rate=sr, max_seconds=0.1)
    assert rir[0] == 1.0 and len(rir) == int(0.1 * sr) + 1
    # Sabine: absorption 0.161 V / (S rt60); floor and ceiling mirror the source at the same
    # distance (it is at half height), so their two paths arrive together.
    beta = np.sqrt(1 - 0.161 * 60.0 / (94.0 * 0.4))
    direct, floor = np.sqrt(5.0), np.sqrt(5.0 + 9.0)
    lag = round((floor - direct) / augment.SPEED_OF_SOUND * sr)
    assert rir[lag] == pytest.approx(2 * beta * direct / floor, rel=1e-3)
    first_wall = min(  # the nearest of the four side walls
        np.linalg.norm(np.subtract([-1.0, 1.0, 1.5], mic)), np.linalg.norm(np.subtract([1.0, -1.0, 1.5], mic)))
    assert np.flatnonzero(rir[1:])[0] + 1 == round((first_wall - direct) / augment.SPEED_OF_SOUND * sr)
    with pytest.raises(ValueError, match="must lie inside the room"):
        augment.image_method_rir(room, (6.0, 1.0, 1.0), mic, 0.4, sr)


@pytest.mark.parametrize("rt60", [0.3, 0.5, 0.8])
def test_room_rir_reverberates_for_rt60(rt60: float) -> None:
    for seed in range(3):
        rir = augment.room_rir(rt60, 16000, np.random.default_rng(seed))
        assert rir[0] == 1.0
        assert _schroeder_rt60(rir, 16000) == pytest.approx(rt60, rel=0.25)


@settings(max_examples=25, deadline=None)
@given(snr=st.floats(-10, 40), seed=st.integers(0, 2**16))
def test_noise_is_scaled_to_the_requested_snr(snr: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    speech_power = float(rng.uniform(0.001, 0.5))
    noise = augment.scale_noise_to_snr(speech_power, rng.standard_normal(4000).astype(np.float32), snr)
    assert 10 * np.log10(speech_power / np.mean(noise.astype(np.float64) ** 2)) == pytest.approx(snr, abs=1e-3)


def test_channel_is_a_band_pass_with_resonances() -> None:
    sr = 16000
    channel = augment.ChannelRecipe(low_hz=200.0, high_hz=4000.0, peak_hz=(1000.0,), peak_db=(6.0,))
    t = np.arange(sr) / sr

    def gain(freq: float) -> float:
        y = augment.apply_channel(np.sin(2 * np.pi * freq * t).astype(np.float32), channel, sr)
        return float(np.sqrt(np.mean(y[sr // 2 :] ** 2)) / np.sqrt(0.5))

    assert gain(1000.0) == pytest.approx(2.0, rel=0.15)  # +6 dB resonance
    assert gain(40.0) < 0.1 and gain(7500.0) < 0.2  # outside the band
    assert 0.5 < gain(2500.0) < 1.5
    c = SynthConfig()
    drawn = augment.random_channel(np.random.default_rng(0), sr, peak_db=c.channel_peak_db, low_hz=c.channel_low_hz, high_hz=c.channel_high_hz,
                                   peak_hz=c.channel_peak_hz)
    assert 60 <= drawn.low_hz < drawn.high_hz <= 0.95 * sr / 2


def test_active_power_ignores_pauses() -> None:
    rng = np.random.default_rng(0)
    speech = 0.1 * rng.standard_normal(16000)
    padded = np.concatenate([np.zeros(32000), speech, np.zeros(32000)])
    assert augment.active_power(padded) == pytest.approx(float(np.mean(speech**2)), rel=0.05)
    assert augment.active_power(np.zeros(1000)) == 0.0


def test_difficulty_ranges_are_monotonic() -> None:
    c = SynthConfig()
    options = {"snr_spread_db": c.snr_spread_db, "reverb_prob": c.reverb_prob, "rt60_scale": c.rt60_scale}
    clean = augment.degradation_ranges(0.0, **options)
    assert clean.noise_prob == 0.0 and clean.reverb_prob == 0.0 and not clean.channel
    levels = [augment.degradation_ranges(d, **options) for d in (0.5, 1.0, 2.0, 3.0)]
    assert all(a.snr_db[0] > b.snr_db[0] and a.snr_db[1] > b.snr_db[1] for a, b in zip(levels, levels[1:]))
    assert all(a.rt60_s[1] < b.rt60_s[1] for a, b in zip(levels, levels[1:]))
    assert levels[1].noise_prob == 1.0 and levels[1].snr_db[0] >= 5.0  # the default stays intelligible
