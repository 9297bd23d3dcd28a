"""The synthetic corpus: speech from several synthesisers plus speaker perturbation and
degradations, written in LibriSpeech's layout.

``synthesize_corpus(corpus_dir, config)`` writes::

    corpus_dir/SPEAKERS.TXT                                   LibriSpeech's speaker table format
    corpus_dir/SYNTHETIC.json                                 what was generated, and how (written last)
    corpus_dir/<part>/<spk>/<chap>/<spk>-<chap>-<utt>.flac    16 kHz mono 16-bit FLAC
    corpus_dir/<part>/<spk>/<chap>/<spk>-<chap>.trans.txt     "<spk>-<chap>-<utt> UPPER CASE WORDS"

for the parts ``train-clean-100``, ``dev-clean``, ``test-clean`` and the out-of-domain part
``test-ood``, so that ``lhotse.recipes.prepare_librispeech`` and everything downstream treat it
exactly like the real corpus. Each speaker is a fixed recipe (synthesiser family and voice, accent,
pitch, pitch range, rate, vocal tract length warp, channel); dev and test speakers are disjoint
from the training speakers, and dev/test sentences never occur in the training text.

``test-ood`` is spoken by a synthesiser family that no other part uses (Kokoro by default; see
:func:`asr_kd.data.voices.plan_engines` for what replaces it where it is missing), with sentences
unseen in training whose words all occur in the training text where the text allows (so the
language model, trained on training transcripts, can decode them). Its WER against test-clean's
measures how far the models generalise beyond the voices they were trained on.
Everything is deterministic given ``config.seed`` and the installed engines.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import multiprocessing
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import soundfile
from tqdm import tqdm

from asr_kd.config import DEFAULT_DEV_PART, DEFAULT_TEST_PART, DEFAULT_TRAIN_PART, SynthConfig, config_from_dict, recorded_fields
from asr_kd.data import augment, festival, kokoro, voices
from asr_kd.data.espeak import get_synthesizer
from asr_kd.data.librispeech import _read_transcripts
from asr_kd.data.synth_text import (
    SentenceSplit, bigram_perplexity, generate_candidates, load_markov_chain, split_sentences, wordnet_sentences,
)
from asr_kd.data.voices import ESPEAK_ACCENTS, FEMALE_VARIANTS, KOKORO_TALKERS, MALE_VARIANTS, EnginePlan, Talker
from asr_kd.errors import DataError
from asr_kd.resource_usage import note_detached_cpu
from asr_kd.utils import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
TRAIN_PART, DEV_PART, TEST_PART = DEFAULT_TRAIN_PART, DEFAULT_DEV_PART, DEFAULT_TEST_PART  # LibriSpeech's names
OOD_PART = "test-ood"  # spoken by a synthesiser family no other part uses
PARTS = (TRAIN_PART, DEV_PART, TEST_PART, OOD_PART)
MARKER_NAME = "SYNTHETIC.json"
_IN_PROGRESS_NAME = ".synth_in_progress.json"
FORMAT_VERSION = 2


@dataclass(frozen=True)
class SynthPreset:
    """Corpus size: speakers and utterances per part, sentence lengths, vocabulary size."""

    train_speakers: int
    dev_speakers: int
    test_speakers: int
    train_utts_per_speaker: int
    eval_utts_per_speaker: int  # dev and test
    # The out-of-domain part is small: Kokoro runs at about real time per core.
    ood_speakers: int = 2
    ood_utts_per_speaker: int = 5
    train_chapters_per_speaker: int = 1
    min_words: int = 5
    max_words: int = 20
    vocab_size: int = 3000
    pool_factor: float = 6.0  # candidate sentences drawn per sentence needed

    def speakers(self, part: str) -> int:
        """Return the number of speakers of ``part``."""
        return {TRAIN_PART: self.train_speakers, DEV_PART: self.dev_speakers, TEST_PART: self.test_speakers, OOD_PART: self.ood_speakers}[part]

    def utts_per_speaker(self, part: str) -> int:
        """Return the number of utterances each speaker of ``part`` reads."""
        if part == OOD_PART:
            return self.ood_utts_per_speaker
        return self.train_utts_per_speaker if part == TRAIN_PART else self.eval_utts_per_speaker


PRESETS: dict[str, SynthPreset] = {
    # Seconds to generate (test-ood's 8 Kokoro utterances take most of them); for tests. Utterances of about 2-6 s.
    "tiny": SynthPreset(8, 2, 2, 10, 10, ood_speakers=2, ood_utts_per_speaker=4, min_words=5, max_words=14, vocab_size=2000, pool_factor=8.0),
    # The demo: about 1.2 h of training audio from 40 speakers, about 10 min each of dev and test,
    # about 4 min of test-ood (60 utterances).
    "mini": SynthPreset(40, 8, 8, 26, 20, ood_speakers=4, ood_utts_per_speaker=15, train_chapters_per_speaker=2, vocab_size=3000),
    # A larger offline run: about 10 h of training audio.
    "small": SynthPreset(200, 20, 20, 45, 30, ood_speakers=8, ood_utts_per_speaker=25, train_chapters_per_speaker=3, max_words=24,
                         vocab_size=5000, pool_factor=5.0),
}


@dataclass(frozen=True)
class SpeakerRecipe:
    """A synthetic talker: a synthesiser voice with fixed prosody, vocal tract length warp and
    channel (see :class:`asr_kd.data.voices.Talker` for the voice fields)."""

    speaker_id: int
    part: str
    sex: str  # "M" or "F", as in SPEAKERS.TXT
    engine: str  # synthesiser family: espeak | festival | kokoro
    voice: str  # the engine's voice: espeak accent+variant, Festival voice, Kokoro style blend
    rate: int  # words per minute
    pitch: int  # 0..100
    pitch_range: int  # 0..100
    word_gap: int  # extra pause between words, 10 ms units (espeak)
    volume: int  # espeak's volume (headroom for the accents that clip at 100)
    vtlp: float  # vocal tract length warp factor (1.0: none)
    telephone: bool  # heard through a narrow-band telephone channel instead of ``channel``
    channel: augment.ChannelRecipe
    chapters: tuple[int, ...]

    @property
    def name(self) -> str:
        """A readable name for SPEAKERS.TXT."""
        return f"synthetic {self.engine} {self.voice} pitch {self.pitch} rate {self.rate} vtlp {self.vtlp}"

    def talker(self) -> Talker:
        """Return the voice of this talker."""
        return Talker(engine=self.engine, voice=self.voice, rate=self.rate, pitch=self.pitch, pitch_range=self.pitch_range,
                      word_gap=self.word_gap, volume=self.volume)


@dataclass(frozen=True)
class UtteranceJob:
    """Everything a worker needs to render one utterance."""

    utt_id: str
    path: Path
    text: str
    speaker: SpeakerRecipe
    seed: tuple[int, ...]  # entropy for this utterance's numpy Generator


@dataclass(frozen=True)
class UtteranceResult:
    """What was rendered: length and the degradations drawn (None where not applied)."""

    utt_id: str
    num_samples: int
    noise: str | None
    snr_db: float | None
    rt60_s: float | None
    room: str | None = None  # "image" (image-method room) or "statistical" (noise tail) where reverberant
    speed: float | None = None  # speed perturbation factor (training utterances)


@dataclass(frozen=True)
class PartSummary:
    """Size of one corpus part."""

    name: str
    utterances: int
    hours: float
    speakers: int


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synthesize_corpus` wrote."""

    corpus_dir: Path
    parts: tuple[PartSummary, ...]
    vocabulary_size: int
    eval_oov_rate: float  # fraction of dev+test words never seen in the training text
    ood_oov_rate: float  # fraction of test-ood words never seen in the training text
    engines: tuple[str, ...]  # the families that speak train/dev/test
    ood_engine: str  # the family that speaks test-ood
    perplexity: dict[str, float]  # held-out part -> bigram perplexity of its text under the training text

    def part(self, name: str) -> PartSummary:
        """Return the summary of part ``name`` (e.g. ``train-clean-100``)."""
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(name)

    def format(self) -> str:
        """Return a short multi-line human-readable summary."""
        lines = [
            f"synthetic corpus in {self.corpus_dir}: vocabulary {self.vocabulary_size} words, "
            f"OOV rate w.r.t. train text: dev+test {100 * self.eval_oov_rate:.2f}%, {OOD_PART} {100 * self.ood_oov_rate:.2f}%",
            f"  engines: {', '.join(self.engines)} for train/dev/test; {self.ood_engine} for {OOD_PART}",
            "  bigram perplexity under the training text: " + ", ".join(f"{p} {v:.0f}" for p, v in self.perplexity.items()),
        ]
        for p in self.parts:
            lines.append(f"  {p.name:16s} {p.utterances:6d} utterances {p.hours:7.3f} h {p.speakers:4d} speakers")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Speakers and jobs
# --------------------------------------------------------------------------------------------


def _uniform_int(rng: np.random.Generator, low: int, high: int) -> int:
    """Return an integer drawn uniformly from [low, high], consuming the generator as a range of
    more than one value does even when ``low == high`` (numpy returns a one-value range without
    drawing, which would shift every later draw: a corpus variant with a fixed rate or one speed
    factor would change every talker's voice and warp, not only what it sets)."""
    if low == high:
        rng.integers(0, 2)
        return int(low)
    return int(rng.integers(low, high + 1))


def make_speakers(preset: SynthPreset, seed: int, config: SynthConfig | None = None, plan: EnginePlan | None = None) -> list[SpeakerRecipe]:
    """Return the talkers of all parts (train first, test-ood last), with distinct speaker and
    chapter ids; deterministic given ``seed``, ``config`` (default: SynthConfig's defaults) and the
    engine ``plan`` (default: planned from ``config`` and the installed engines)."""
    config = config if config is not None else SynthConfig(seed=seed)
    plan = plan if plan is not None else voices.plan_engines(config.engines, config.ood_engine)
    rng = np.random.default_rng([seed, 101])
    total = sum(preset.speakers(p) for p in PARTS)
    chapters_per = {p: (preset.train_chapters_per_speaker if p == TRAIN_PART else 1) for p in PARTS}
    speaker_ids = sorted(int(i) for i in rng.choice(np.arange(100, 10000), size=total, replace=False))
    # Shuffle so that ids do not reveal the part, but keep them distinct across parts.
    speaker_ids = [int(i) for i in rng.permutation(speaker_ids)]
    num_chapters = sum(preset.speakers(p) * chapters_per[p] for p in PARTS)
    chapter_ids = [int(i) for i in rng.choice(np.arange(1000, 300000), size=num_chapters, replace=False)]
    male = list(rng.permutation(MALE_VARIANTS))
    female = list(rng.permutation(FEMALE_VARIANTS))
    kokoro_talkers = [str(t) for t in rng.permutation(KOKORO_TALKERS)]
    speakers: list[SpeakerRecipe] = []
    n_male = n_female = n_kokoro = n_accented = 0
    # The order in which training talkers take the non-American accents (config.cover_accents),
    # from a generator of its own so that turning it on moves no other draw.
    accent_order = [int(i) for i in np.random.default_rng([seed, 103]).permutation(len(ESPEAK_ACCENTS) - 1)]
    for part in PARTS:
        ood = part == OOD_PART
        # Accents: held-out ones speak test-ood where espeak-ng is its engine, and never train.
        accents = [a for a in ESPEAK_ACCENTS if (a[0] in plan.ood_accents) == (ood and bool(plan.ood_accents))]
        # Indices into accents of the non-American ones (accents[0] is en-us), in accent_order.
        accent_cycle = [1 + i for i in accent_order if i < len(accents) - 1]
        for i in range(preset.speakers(part)):
            sex = "M" if (i + int(rng.integers(0, 2))) % 2 == 0 else "F"
            if sex == "M":
                variant = male[n_male % len(male)]
                n_male += 1
                pitch = _uniform_int(rng, *config.pitch_male)
            else:
                variant = female[n_female % len(female)]
                n_female += 1
                pitch = _uniform_int(rng, *config.pitch_female)
            chapters = tuple(sorted(chapter_ids.pop() for _ in range(chapters_per[part])))
            rate = _uniform_int(rng, *config.rate_wpm)
            pitch_range, word_gap = _uniform_int(rng, *config.pitch_range), _uniform_int(rng, *config.word_gap)
            channel = augment.random_channel(rng, SAMPLE_RATE, peak_db=config.channel_peak_db, low_hz=config.channel_low_hz,
                                             high_hz=config.channel_high_hz, peak_hz=config.channel_peak_hz)
            # Drawn for every talker, in a fixed order, so that one talker's engine does not
            # change the draws of the next.
            u_engine, u_us, u_vtlp, u_phone = (float(u) for u in rng.random(4))
            accent, festival_voice = int(rng.integers(0, len(accents))), int(rng.integers(0, len(festival.FESTIVAL_VOICES)))
            if ood:
                engine = plan.ood
            elif "festival" in plan.train and u_engine < config.festival_share:
                engine = "festival"
            else:
                engine = "espeak"
            volume = 100
            if engine == "espeak":
                # Half the espeak-ng talkers speak American English (the lexicon's accent; most
                # LibriSpeech readers are American), the rest one of the other accents.
                if config.cover_accents and part == TRAIN_PART and u_us >= 0.5:
                    accent = accent_cycle[n_accented % len(accent_cycle)]
                    n_accented += 1
                name, volume = accents[0] if (u_us < 0.5 and not ood) else accents[accent]
                voice = f"{name}+{variant}"
            elif engine == "festival":
                voice = festival.FESTIVAL_VOICES[festival_voice]
            else:
                voice = kokoro_talkers[n_kokoro % len(kokoro_talkers)]
                n_kokoro += 1
                sex = "M" if kokoro.KokoroSettings.parse(voice).male_weight() > 0.5 else "F"
            speakers.append(
                SpeakerRecipe(
                    speaker_id=speaker_ids.pop(),
                    part=part,
                    sex=sex,
                    engine=engine,
                    voice=voice,
                    rate=rate,
                    pitch=pitch,
                    pitch_range=pitch_range,
                    word_gap=word_gap,
                    volume=volume,
                    # test-ood keeps its voices as they are: it measures another family, not our warps.
                    vtlp=1.0 if ood else round(1.0 + config.vtlp_max * (2.0 * u_vtlp - 1.0), 3),
                    telephone=not ood and u_phone < config.telephone_prob,
                    channel=channel,
                    chapters=chapters,
                )
            )
    return speakers


def plan_utterances(
    corpus_dir: Path, preset: SynthPreset, seed: int, speakers: list[SpeakerRecipe], wordnet_share: float = 0.0,
    drop_stray_letters: bool = False,
) -> tuple[list[UtteranceJob], SentenceSplit]:
    """Assign sentences to speakers and chapters; return the jobs (in a fixed order) and the
    sentence split they came from (``wordnet_share`` of its candidates from WordNet; with
    ``drop_stray_letters`` none with a stray letter, SynthConfig.drop_stray_letters)."""
    counts = {p: preset.speakers(p) * preset.utts_per_speaker(p) for p in PARTS}
    split = split_sentences(
        counts[TRAIN_PART], counts[DEV_PART], counts[TEST_PART], seed=seed, vocab_size=preset.vocab_size,
        min_words=preset.min_words, max_words=preset.max_words, pool_factor=preset.pool_factor, num_ood=counts[OOD_PART],
        wordnet_share=wordnet_share, drop_stray_letters=drop_stray_letters,
    )
    sentences = {TRAIN_PART: list(split.train), DEV_PART: list(split.dev), TEST_PART: list(split.test), OOD_PART: list(split.ood)}
    jobs: list[UtteranceJob] = []
    for part_index, part in enumerate(PARTS):
        texts = iter(sentences[part])
        for spk in (s for s in speakers if s.part == part):
            jobs.extend(_speaker_jobs(corpus_dir / part, spk, preset.utts_per_speaker(part), texts, (seed, part_index)))
    return jobs, split


def _speaker_jobs(part_dir: Path, spk: SpeakerRecipe, n: int, texts: Iterator[str], seed: tuple[int, int]) -> list[UtteranceJob]:
    """The jobs of ``spk`` reading the next ``n`` sentences of ``texts`` into ``part_dir``, spread
    over its chapters as evenly as possible; each job's entropy is ``seed`` plus its ids."""
    jobs = []
    per_chapter = [n // len(spk.chapters) + (1 if c < n % len(spk.chapters) else 0) for c in range(len(spk.chapters))]
    for chapter, k in zip(spk.chapters, per_chapter):
        for utt in range(k):
            utt_id = f"{spk.speaker_id}-{chapter}-{utt:04d}"
            path = part_dir / str(spk.speaker_id) / str(chapter) / f"{utt_id}.flac"
            jobs.append(UtteranceJob(utt_id, path, next(texts), spk, (*seed, spk.speaker_id, chapter, utt)))
    return jobs


# --------------------------------------------------------------------------------------------
# Rendering (runs in worker processes)
# --------------------------------------------------------------------------------------------


@dataclass
class _WorkerState:
    config: SynthConfig
    babble: np.ndarray | None


_WORKER: _WorkerState | None = None  # one per process: libespeak-ng is a process-wide singleton


def _make_babble(seed: int, texts: list[str], engines: tuple[str, ...], num_talkers: int = 5) -> np.ndarray:
    """Return about 20 s of babble: ``num_talkers`` random synthetic talkers of the training
    families ``engines`` speaking at once."""
    rng = np.random.default_rng([seed, 202])
    streams: list[np.ndarray] = []
    for k in range(num_talkers):
        variant = str(rng.choice(MALE_VARIANTS + FEMALE_VARIANTS))
        rate, pitch = int(rng.integers(150, 200)), int(rng.integers(20, 80))
        # Every other talker is Festival's where it speaks training parts: babble of both families.
        if "festival" in engines and k % 2 == 1:
            talker = Talker("festival", festival.FESTIVAL_VOICES[k // 2 % len(festival.FESTIVAL_VOICES)], rate=rate, pitch=pitch)
        else:
            talker = Talker("espeak", f"en-us+{variant}", rate=rate, pitch=pitch)
        picks = rng.choice(len(texts), size=min(4, len(texts)), replace=False)
        audio = np.concatenate([voices.speak_16k(talker, texts[int(i)], int(rng.integers(2**31))) for i in picks])
        audio = audio / (np.sqrt(np.mean(audio**2)) + 1e-9)  # equal loudness per talker
        streams.append(np.roll(audio, int(rng.integers(0, len(audio)))))
    length = min(len(s) for s in streams)
    return np.sum([s[:length] for s in streams], axis=0).astype(np.float32)


def _init_worker(config: SynthConfig, babble_texts: list[str], train_engines: tuple[str, ...]) -> None:
    """Pool initializer: one espeak-ng engine and one babble bank per worker process."""
    global _WORKER  # per-process worker state, set once by the pool initializer
    # A worker forks once per utterance (EspeakSynthesizer.synthesize_isolated), and a fork
    # costs ~13 ms instead of ~3 ms while the ~400 MB text model inherited from the parent is
    # mapped: drop this process's reference to it.
    load_markov_chain.cache_clear()
    gc.collect()
    get_synthesizer()
    babble = _make_babble(config.seed, babble_texts, train_engines) if config.difficulty > 0 and babble_texts else None
    _WORKER = _WorkerState(config=config, babble=babble)


def _degradation(config: SynthConfig) -> augment.DegradationRanges:
    """Return the noise and reverberation ranges that ``config``'s difficulty and options give."""
    return augment.degradation_ranges(config.difficulty, snr_spread_db=config.snr_spread_db, reverb_prob=config.reverb_prob,
                                      rt60_scale=config.rt60_scale)


def render_utterance(job: UtteranceJob) -> UtteranceResult:
    """Synthesise, perturb, degrade and write one utterance (atomically); return what was drawn.

    Every random draw comes from a Generator seeded by the job alone, in a fixed order, so an
    utterance is the same whichever worker renders it."""
    if _WORKER is None:
        raise RuntimeError("render_utterance needs _init_worker to run first in this process")
    config = _WORKER.config
    rng = np.random.default_rng(list(job.seed))
    ranges = _degradation(config)
    # Draw everything up front and unconditionally, so that the same seed gives the same speech,
    # silences and level at every difficulty; only the degradations differ.
    lead_s, trail_s = rng.uniform(config.silence_s[0], config.silence_s[1], size=2)
    use_reverb = rng.random() < ranges.reverb_prob
    u_rt60 = float(rng.random())
    rt60 = ranges.rt60_s[0] + u_rt60 * (ranges.rt60_s[1] - ranges.rt60_s[0])
    use_noise = rng.random() < ranges.noise_prob
    weights = np.asarray(config.noise_kind_weights, dtype=np.float64)
    kind = str(rng.choice(augment.NOISE_KINDS, p=weights / weights.sum()))
    u_snr = float(rng.random())
    snr = ranges.snr_db[0] + u_snr * (ranges.snr_db[1] - ranges.snr_db[0]) if use_noise else float("inf")
    peak = float(rng.uniform(config.peak_level[0], config.peak_level[1]))  # recordings differ in level
    espeak_seed = int(rng.integers(2**31))
    noise_rng = np.random.default_rng(list(job.seed) + [1])
    # Speed perturbation is data augmentation: training utterances only, as in Kaldi recipes.
    speed = float(config.speed_factors[_uniform_int(rng, 0, len(config.speed_factors) - 1)]) if job.speaker.part == TRAIN_PART else 1.0
    room = "image" if rng.random() < config.image_room_share else "statistical"

    speaker = job.speaker
    speech = voices.speak_16k(speaker.talker(), job.text, espeak_seed, speaker.sex)
    if len(speech) == 0:
        raise DataError(f"{speaker.engine} produced no audio for {job.utt_id} ({job.text!r}); check its install")
    speech = augment.speed_perturb(augment.vtlp(speech, speaker.vtlp, SAMPLE_RATE), speed)
    x = np.concatenate([np.zeros(int(lead_s * SAMPLE_RATE), np.float32), speech, np.zeros(int(trail_s * SAMPLE_RATE), np.float32)])
    if ranges.channel:
        x = augment.telephone_band(x, SAMPLE_RATE) if speaker.telephone else augment.apply_channel(x, speaker.channel, SAMPLE_RATE)
    if use_reverb:
        rir = augment.room_rir(rt60, SAMPLE_RATE, noise_rng) if room == "image" else augment.synthetic_rir(rt60, SAMPLE_RATE, noise_rng)
        x = augment.apply_rir(x, rir)
    noise_kind: str | None = None
    if use_noise:
        if kind == "babble" and _WORKER.babble is not None:
            noise = augment.loop_segment(_WORKER.babble, len(x), noise_rng)
        else:
            kind = "pink" if kind == "babble" else kind
            noise = augment.colored_noise(kind, len(x), noise_rng)
        x = x + augment.scale_noise_to_snr(augment.active_power(x), noise, snr)
        noise_kind = kind
    x = x * (peak / (float(np.max(np.abs(x))) + 1e-9))
    pcm = np.round(x * 32767.0).clip(-32768, 32767).astype(np.int16)
    with atomic_path(job.path) as tmp:
        soundfile.write(str(tmp), pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return UtteranceResult(
        utt_id=job.utt_id,
        num_samples=len(pcm),
        noise=noise_kind,
        snr_db=round(snr, 2) if use_noise else None,
        rt60_s=round(rt60, 3) if use_reverb else None,
        room=room if use_reverb else None,
        speed=speed if job.speaker.part == TRAIN_PART else None,
    )


def _render_all(jobs: list[UtteranceJob], config: SynthConfig, babble_texts: list[str], plan: EnginePlan) -> Iterator[UtteranceResult]:
    """Yield the results of ``jobs`` (in completion order) using ``config.num_jobs`` processes."""
    initargs = (config, babble_texts, plan.train)
    # Workers start from a 'forkserver' that never touched espeak-ng, even with one job: libespeak-ng
    # is a process-wide singleton whose state (pitch-flutter phase, filter memories) survives a
    # fork, so a worker forked from a process that already spoke or phonemised (stage 2's G2P, a
    # test before this one) would render other samples. Each worker initialises its own engine
    # and, for test-ood, its own single-threaded Kokoro session.
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(max(1, min(config.num_jobs, len(jobs))), initializer=_init_worker, initargs=initargs) as pool:
        yield from pool.imap_unordered(render_utterance, jobs, chunksize=4)
        # The workers are the forkserver's children: count their CPU (and Festival's) before they end.
        note_detached_cpu([p.pid for p in pool._pool if p.pid is not None])


# --------------------------------------------------------------------------------------------
# Writing the corpus
# --------------------------------------------------------------------------------------------


def _speakers_txt(speakers: list[SpeakerRecipe], seconds: dict[int, float]) -> str:
    """Return SPEAKERS.TXT in LibriSpeech's format."""
    lines = [
        "; Synthetic speakers (espeak-ng, Festival and Kokoro voices) in the format of LibriSpeech's SPEAKERS.TXT.",
        "; Fields: reader ID | sex (F/M) | subset | minutes of audio | name",
        ";ID  |SEX| SUBSET           |MINUTES| NAME",
    ]
    for spk in sorted(speakers, key=lambda s: s.speaker_id):
        minutes = seconds.get(spk.speaker_id, 0.0) / 60.0
        lines.append(f"{spk.speaker_id:<5d}| {spk.sex} | {spk.part:<17s}| {minutes:5.2f} | {spk.name}")
    return "\n".join(lines) + "\n"


def _write_transcripts(jobs: Iterable[UtteranceJob]) -> None:
    """Write one ``<spk>-<chap>.trans.txt`` per chapter, lines sorted by utterance id."""
    by_chapter: dict[Path, list[UtteranceJob]] = {}
    for job in jobs:
        by_chapter.setdefault(job.path.parent, []).append(job)
    for chapter_dir, chapter_jobs in by_chapter.items():
        spk, chap = chapter_dir.parent.name, chapter_dir.name
        lines = [f"{j.utt_id} {j.text}" for j in sorted(chapter_jobs, key=lambda j: j.utt_id)]
        write_text_atomic(chapter_dir / f"{spk}-{chap}.trans.txt", "\n".join(lines) + "\n")


def _text_report(split: SentenceSplit, preset: SynthPreset) -> dict[str, Any]:
    """Return, per held-out part, the bigram perplexity of its text under the training text and
    how many of each part's sentences come from WordNet."""
    wordnet = set(wordnet_sentences(preset.min_words, preset.max_words))
    parts = {TRAIN_PART: split.train, DEV_PART: split.dev, TEST_PART: split.test, OOD_PART: split.ood}
    return {
        "bigram_perplexity": {p: round(bigram_perplexity(split.train, parts[p]), 1) for p in (DEV_PART, TEST_PART, OOD_PART)},
        "wordnet_sentences": {p: sum(s in wordnet for s in sentences) for p, sentences in parts.items()},
    }


def _identity(config: SynthConfig, preset: SynthPreset, plan: EnginePlan, wordnet_share: float,
              parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """What determines the corpus: a finished or half-finished corpus is reused only if equal.
    The engines and text sources actually used are part of it: installing Festival or WordNet
    later makes a new corpus. ``parts`` is recorded only when it is not every part (so that the
    markers of whole corpora stay as they were)."""
    identity = {
        "format_version": FORMAT_VERSION,
        # A later_option field is left out at its default, as in stage records: corpora made before it stay valid.
        "config": {k: v for k, v in recorded_fields(config).items() if k != "num_jobs"},
        "preset": dataclasses.asdict(preset),
        "engines": {"train": plan.train, "ood": plan.ood, "ood_accents": plan.ood_accents},
        "wordnet_share": wordnet_share,
    }
    if parts != PARTS:
        identity["only_parts"] = list(parts)
    # As it reads back from JSON (tuples become lists), so that it compares equal to a marker.
    return json.loads(json.dumps(identity))


def _summary_from_marker(corpus_dir: Path, marker: dict[str, Any]) -> SynthSummary:
    parts = tuple(
        PartSummary(name=p, utterances=int(v["utterances"]), hours=float(v["seconds"]) / 3600.0, speakers=len(v["speakers"]))
        for p, v in marker["parts"].items()
    )
    return SynthSummary(
        corpus_dir=corpus_dir, parts=parts, vocabulary_size=int(marker["vocabulary_size"]), eval_oov_rate=float(marker["eval_oov_rate"]),
        ood_oov_rate=float(marker["ood_oov_rate"]), engines=tuple(marker["engines"]["train"]), ood_engine=str(marker["engines"]["ood"]),
        perplexity={p: float(v) for p, v in marker["text"]["bigram_perplexity"].items()},
    )


def _check_reusable(corpus_dir: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """Return the marker of a finished corpus made with ``identity``, None if there is nothing
    (or only a resumable part) there; raise DataError if the directory holds a different corpus."""
    marker_path = corpus_dir / MARKER_NAME
    progress_path = corpus_dir / _IN_PROGRESS_NAME
    for path in (marker_path, progress_path):
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise DataError(f"{path} is not valid JSON; delete {corpus_dir} and run again") from None
        keys = {*identity, "only_parts"}  # a corpus of some parts never passes for a whole one
        if {k: data.get(k) for k in keys} != {k: identity.get(k) for k in keys}:
            raise DataError(
                f"{corpus_dir} holds a synthetic corpus made with different settings ({path.name}); "
                "use another --output-dir or delete it"
            )
        if path == marker_path:
            return data
    if marker_path.exists() is False and any(corpus_dir.glob("*/*/*/*.flac")) and not progress_path.is_file():
        raise DataError(f"{corpus_dir} already holds audio that this program did not write; use another --output-dir")
    return None


def synthesize_corpus(corpus_dir: Path, config: SynthConfig, *, preset: SynthPreset | None = None,
                      parts: Sequence[str] = PARTS) -> SynthSummary:
    """Write the synthetic corpus for ``config`` into ``corpus_dir`` (see the module docstring);
    return its summary. ``preset`` overrides the sizes of ``config.preset`` (for tests).
    ``parts`` (default: all) renders only those parts, each exactly as the whole corpus has it
    (the same talkers, sentences and draws): bench/synth_ablation.py trains on one variant's
    training part and tests on another corpus's test parts.

    If ``corpus_dir`` already holds the finished corpus for the same settings (its
    ``SYNTHETIC.json`` is written last), nothing is redone; an interrupted run is resumed,
    reusing the utterances already written (each was written atomically)."""
    corpus_dir = Path(corpus_dir)
    sizes = preset if preset is not None else PRESETS[config.preset]
    plan = voices.plan_engines(config.engines, config.ood_engine)
    notes = list(plan.notes)
    wordnet_share = config.wordnet_share if wordnet_sentences(sizes.min_words, sizes.max_words) else 0.0
    if config.wordnet_share > 0 and not wordnet_share:
        notes.append("WordNet is not installed (run local/install_system_packages.sh as root): text from essential-generators only")
    for note in notes:
        logger.warning("synthetic corpus: %s", note)
    wanted = tuple(p for p in PARTS if p in parts)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not wanted:
        raise ValueError(f"synthesize_corpus: parts must be among {list(PARTS)}, got {list(parts)}")
    identity = _identity(config, sizes, plan, wordnet_share, wanted)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    done = _check_reusable(corpus_dir, identity)
    if done is not None:
        logger.info("synthetic corpus in %s is complete; reusing it", corpus_dir)
        return _summary_from_marker(corpus_dir, done)
    write_text_atomic(corpus_dir / _IN_PROGRESS_NAME, json.dumps(identity, indent=1))

    start = time.perf_counter()
    speakers = make_speakers(sizes, config.seed, config, plan)
    jobs, split = plan_utterances(corpus_dir, sizes, config.seed, speakers, wordnet_share, config.drop_stray_letters)
    # Babble is made of training sentences spoken by random voices (never dev/test text), the same
    # whichever parts are rendered.
    babble_texts = [j.text for j in jobs if j.speaker.part == TRAIN_PART][:20]
    jobs = [j for j in jobs if j.speaker.part in wanted]
    speakers = [s for s in speakers if s.part in wanted]
    logger.info("synthesising %d utterances from %d speakers with %d jobs", len(jobs), len(speakers), config.num_jobs)

    results: dict[str, UtteranceResult] = {}
    todo = []
    for job in jobs:
        if job.path.is_file():  # written (atomically) by an interrupted earlier run
            results[job.utt_id] = UtteranceResult(job.utt_id, soundfile.info(str(job.path)).frames, None, None, None, None)
        else:
            todo.append(job)
    if results:
        logger.info("resuming: %d utterances already written", len(results))
    for res in tqdm(_render_all(todo, config, babble_texts, plan), total=len(todo), desc="synthesising", unit="utt"):
        results[res.utt_id] = res

    _write_transcripts(jobs)
    seconds_per_speaker: dict[int, float] = {}
    parts: dict[str, dict[str, Any]] = {}
    for part in wanted:
        part_jobs = [j for j in jobs if j.speaker.part == part]
        seconds = 0.0
        for j in part_jobs:
            dur = results[j.utt_id].num_samples / SAMPLE_RATE
            seconds += dur
            seconds_per_speaker[j.speaker.speaker_id] = seconds_per_speaker.get(j.speaker.speaker_id, 0.0) + dur
        parts[part] = {
            "utterances": len(part_jobs),
            "seconds": round(seconds, 3),
            "speakers": sorted({j.speaker.speaker_id for j in part_jobs}),
        }
    write_text_atomic(corpus_dir / "SPEAKERS.TXT", _speakers_txt(speakers, seconds_per_speaker))
    marker = dict(identity)
    marker.update(
        {
            "sample_rate": SAMPLE_RATE,
            "parts": parts,
            "vocabulary_size": len(split.vocabulary),
            "eval_oov_rate": round(split.eval_oov_rate, 5),
            "ood_oov_rate": round(split.ood_oov_rate, 5),
            "engine_notes": notes,
            "text": _text_report(split, sizes),
            "engines_missing": list(plan.missing),
            "degradation": dataclasses.asdict(_degradation(config)),
            "speakers": [dataclasses.asdict(s) for s in speakers],
            "utterances": {uid: {k: v for k, v in dataclasses.asdict(r).items() if k != "utt_id"} for uid, r in sorted(results.items())},
            "generation_seconds": round(time.perf_counter() - start, 2),
        }
    )
    # Infinite SNR bounds (difficulty 0) are not valid JSON: store them as null.
    marker["degradation"]["snr_db"] = [None if not np.isfinite(v) else v for v in marker["degradation"]["snr_db"]]
    write_text_atomic(corpus_dir / MARKER_NAME, json.dumps(marker, indent=1))
    (corpus_dir / _IN_PROGRESS_NAME).unlink(missing_ok=True)
    summary = _summary_from_marker(corpus_dir, marker)
    logger.info("%s", summary.format())
    return summary


# --------------------------------------------------------------------------------------------
# More of the unseen voices, for measurements
# --------------------------------------------------------------------------------------------


def _corpus_texts(corpus_dir: Path, marker: dict[str, Any]) -> tuple[set[str], list[str]]:
    """Return every transcript of the finished corpus in ``corpus_dir`` (``marker``: its
    SYNTHETIC.json) and its training part's in the order the corpus rendered them (its talkers,
    chapters and utterances in turn), the order its babble was drawn from."""
    used = {text for path in corpus_dir.glob("*/*/*/*.trans.txt") for _, text, _ in _read_transcripts(path)}
    train = [text for spk in marker["speakers"] if spk["part"] == TRAIN_PART for chapter in spk["chapters"]
             for _, text, _ in _read_transcripts(corpus_dir / TRAIN_PART / str(spk["speaker_id"]) / str(chapter)
                                                 / f"{spk['speaker_id']}-{chapter}.trans.txt")]
    return used, train


def unseen_sentences(used: set[str], train_words: set[str], count: int, seed: int, min_words: int, max_words: int,
                     wordnet_share: float, where: str = "the corpus") -> list[str]:
    """Return ``count`` distinct sentences of ``min_words``..``max_words`` words that are not in
    ``used`` (a corpus' transcripts) and whose words are all in ``train_words`` (its training
    text, so that the recipe's LM can decode every word), ``wordnet_share`` of them from WordNet's
    usage examples as far as those allow, the rest from the corpus' sentence generator;
    deterministic given the arguments. DataError naming ``where`` when the candidates run out."""
    def fits(s: str) -> bool:
        return s not in used and all(w in train_words for w in s.split())

    examples = [s for s in wordnet_sentences(min_words, max_words) if fits(s)] if wordnet_share > 0 else []
    picked = random.Random(seed + 2).sample(examples, min(len(examples), int(round(wordnet_share * count))))
    chosen = set(picked)
    rest: list[str] = []
    pool = 20 * count + 1000
    for attempt in range(4):  # about one candidate in ten fits mini's 2,000 training words
        rest = [s for s in dict.fromkeys(generate_candidates(pool, seed + attempt, min_words, max_words)) if fits(s) and s not in chosen]
        if len(rest) >= count - len(picked):
            break
        pool *= 2
    else:
        raise DataError(f"only {len(rest) + len(picked)} unseen sentences within the training words of {where} for {count}; ask for fewer")
    out = picked + rest[: count - len(picked)]
    random.Random(seed + 1).shuffle(out)
    return out


def synthesize_ood_part(corpus_dir: Path, out_dir: Path, part: str, num_speakers: int, utts_per_speaker: int, seed: int,
                        num_jobs: int = 2) -> PartSummary:
    """Write ``part`` into ``out_dir`` (LibriSpeech's layout): more speech of the out-of-domain
    family of the finished synthetic corpus in ``corpus_dir``, for measurements on a larger sample
    than its test-ood. ``num_speakers`` talkers drawn as test-ood's are (its engine and voices, each
    with a fresh speaking rate and channel; Kokoro has 8 voices, so more speakers repeat voices), each reading
    ``utts_per_speaker`` sentences from :func:`unseen_sentences`, degraded as the corpus' parts
    are (its difficulty). Deterministic given the arguments and the corpus; an interrupted run
    resumes (each utterance is written atomically; ``<part>.synth.json`` beside the part records the
    arguments). DataError when the corpus is unfinished, another engine than the one that spoke its
    test-ood would speak it here, WordNet is missing where the corpus' text drew on it, the
    sentences within its training words run out, or ``out_dir`` holds that part made with other
    arguments (or not made by this function)."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    marker_path = corpus_dir / MARKER_NAME
    if not marker_path.is_file():
        raise DataError(f"{marker_path} does not exist: {corpus_dir} is not a finished synthetic corpus (run stage 0 first)")
    marker = json.loads(marker_path.read_text())
    config = dataclasses.replace(config_from_dict(SynthConfig, marker["config"], str(marker_path)), num_jobs=num_jobs)
    sizes = SynthPreset(**marker["preset"])
    plan = voices.plan_engines(config.engines, config.ood_engine)
    wordnet_share = float(marker.get("wordnet_share", 0.0))
    if wordnet_share > 0 and not wordnet_sentences(sizes.min_words, sizes.max_words):
        raise DataError(f"{corpus_dir}'s text drew on WordNet, which is not installed here; run local/install_system_packages.sh as root")
    if plan.ood != marker["engines"]["ood"]:
        raise DataError(f"{corpus_dir}'s {OOD_PART} was spoken by {marker['engines']['ood']}, but {plan.ood} would speak it here"
                        + (f" ({'; '.join(plan.notes)})" if plan.notes else "") + "; install the corpus' engines or use its own machine")
    # What the part is made of: rerun with other arguments (or for another corpus), the folder is refused
    # rather than mixing its utterances with the new ones.
    identity = json.loads(json.dumps({"corpus": {k: marker[k] for k in ("config", "preset", "engines", "format_version") if k in marker},
                                      "part": part, "num_speakers": num_speakers, "utts_per_speaker": utts_per_speaker, "seed": seed}))
    identity_path = out_dir / f"{part}.synth.json"
    if identity_path.is_file():
        if json.loads(identity_path.read_text()) != identity:
            raise DataError(f"{out_dir / part} was made with other settings ({identity_path}); use another folder or delete it")
    elif (out_dir / part).exists():
        raise DataError(f"{out_dir / part} already exists and this program did not write it; use another folder")
    only_ood = dataclasses.replace(sizes, train_speakers=0, dev_speakers=0, test_speakers=0, ood_speakers=num_speakers,
                                   ood_utts_per_speaker=utts_per_speaker, train_chapters_per_speaker=1)
    speakers = [dataclasses.replace(s, part=part) for s in make_speakers(only_ood, seed, config, plan)]
    used, train = _corpus_texts(corpus_dir, marker)
    train_words = {w for t in train for w in t.split()}
    texts = iter(unseen_sentences(used, train_words, num_speakers * utts_per_speaker, seed, sizes.min_words, sizes.max_words,
                                  wordnet_share, where=str(corpus_dir)))
    jobs = [j for spk in speakers for j in _speaker_jobs(out_dir / part, spk, utts_per_speaker, texts, (seed, PARTS.index(OOD_PART)))]
    # Written once the sentences are drawn (which can fail) and before the first utterance is.
    write_text_atomic(identity_path, json.dumps(identity, indent=1) + "\n")
    todo = [j for j in jobs if not j.path.is_file()]
    babble_texts = train[:20]  # the corpus' babble: its first 20 training sentences, spoken by random training-family talkers
    for _ in tqdm(_render_all(todo, config, babble_texts, plan), total=len(todo), desc=f"synthesising {part}", unit="utt"):
        pass
    _write_transcripts(jobs)
    seconds: dict[int, float] = {}
    for j in jobs:
        seconds[j.speaker.speaker_id] = seconds.get(j.speaker.speaker_id, 0.0) + soundfile.info(str(j.path)).duration
    write_text_atomic(out_dir / "SPEAKERS.TXT", _speakers_txt(speakers, seconds))
    return PartSummary(name=part, utterances=len(jobs), hours=sum(seconds.values()) / 3600.0, speakers=len(speakers))
