"""The synthetic corpus: espeak-ng speech plus degradations, written in LibriSpeech's layout.

``synthesize_corpus(corpus_dir, config)`` writes::

    corpus_dir/SPEAKERS.TXT                                   LibriSpeech's speaker table format
    corpus_dir/SYNTHETIC.json                                 what was generated, and how (written last)
    corpus_dir/<part>/<spk>/<chap>/<spk>-<chap>-<utt>.flac    16 kHz mono 16-bit FLAC
    corpus_dir/<part>/<spk>/<chap>/<spk>-<chap>.trans.txt     "<spk>-<chap>-<utt> UPPER CASE WORDS"

for the parts ``train-clean-100``, ``dev-clean`` and ``test-clean``, so that
``lhotse.recipes.prepare_librispeech`` and everything downstream treat it exactly like the real
corpus. Each speaker is a fixed recipe (espeak-ng voice variant, pitch, pitch range, rate,
channel colouring); dev and test speakers are disjoint from the training speakers, and dev/test
sentences never occur in the training text. Everything is deterministic given ``config.seed``.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import scipy.signal
import soundfile
from tqdm import tqdm

from asr_kd.config import SynthConfig
from asr_kd.data import augment
from asr_kd.data.espeak import VoiceSettings, get_synthesizer
from asr_kd.data.synth_text import SentenceSplit, load_markov_chain, split_sentences
from asr_kd.errors import DataError
from asr_kd.utils import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
TRAIN_PART = "train-clean-100"
DEV_PART = "dev-clean"
TEST_PART = "test-clean"
PARTS = (TRAIN_PART, DEV_PART, TEST_PART)
MARKER_NAME = "SYNTHETIC.json"
_IN_PROGRESS_NAME = ".synth_in_progress.json"
FORMAT_VERSION = 1

# espeak-ng voice variants that sound like plausible talkers with American English rules and
# do not saturate at full scale (checked on the bundled espeak-ng 1.52 data); whisper, croak,
# robots and the like are left out.
MALE_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "klatt", "klatt2", "klatt3", "klatt6",
    "adam", "Andy", "Lee", "david", "edward", "edward2", "michel", "travis", "rob", "robert",
    "quincy", "benjamin", "max", "boris", "caleb", "Henrique", "victor", "miguel", "Michael", "Reed",
)
FEMALE_VARIANTS = (
    "f1", "f2", "f3", "f4", "f5", "Alicia", "Annie", "aunty", "belinda", "linda", "steph",
    "anika", "shelby", "grandma",
)


@dataclass(frozen=True)
class SynthPreset:
    """Corpus size: speakers and utterances per part, sentence lengths, vocabulary size."""

    train_speakers: int
    dev_speakers: int
    test_speakers: int
    train_utts_per_speaker: int
    eval_utts_per_speaker: int  # dev and test
    train_chapters_per_speaker: int = 1
    min_words: int = 5
    max_words: int = 20
    vocab_size: int = 3000
    pool_factor: float = 6.0  # candidate sentences drawn per sentence needed

    def speakers(self, part: str) -> int:
        """Return the number of speakers of ``part``."""
        return {TRAIN_PART: self.train_speakers, DEV_PART: self.dev_speakers, TEST_PART: self.test_speakers}[part]

    def utts_per_speaker(self, part: str) -> int:
        """Return the number of utterances each speaker of ``part`` reads."""
        return self.train_utts_per_speaker if part == TRAIN_PART else self.eval_utts_per_speaker


PRESETS: dict[str, SynthPreset] = {
    # Seconds to generate; for tests. Utterances of about 2-6 s.
    "tiny": SynthPreset(8, 2, 2, 10, 10, min_words=5, max_words=14, vocab_size=2000, pool_factor=8.0),
    # The demo: about 1.2 h of training audio from 40 speakers, about 10 min each of dev and test.
    "mini": SynthPreset(40, 8, 8, 26, 20, train_chapters_per_speaker=2, vocab_size=3000),
    # A larger offline run: about 10 h of training audio.
    "small": SynthPreset(200, 20, 20, 45, 30, train_chapters_per_speaker=3, max_words=24, vocab_size=5000, pool_factor=5.0),
}


@dataclass(frozen=True)
class SpeakerRecipe:
    """A synthetic talker: an espeak-ng voice with fixed prosody and a fixed channel."""

    speaker_id: int
    part: str
    sex: str  # "M" or "F", as in SPEAKERS.TXT
    voice: str  # espeak-ng language+variant
    rate: int  # words per minute
    pitch: int  # 0..100
    pitch_range: int  # 0..100
    word_gap: int  # extra pause between words, 10 ms units
    channel: augment.ChannelRecipe
    chapters: tuple[int, ...]

    @property
    def name(self) -> str:
        """A readable name for SPEAKERS.TXT."""
        return f"synthetic {self.voice} pitch {self.pitch} rate {self.rate}"

    def settings(self) -> VoiceSettings:
        """Return the espeak-ng settings of this talker."""
        return VoiceSettings(voice=self.voice, rate=self.rate, pitch=self.pitch, pitch_range=self.pitch_range, word_gap=self.word_gap)


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
            f"dev+test OOV rate w.r.t. train text {100 * self.eval_oov_rate:.2f}%"
        ]
        for p in self.parts:
            lines.append(f"  {p.name:16s} {p.utterances:6d} utterances {p.hours:7.3f} h {p.speakers:4d} speakers")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Speakers and jobs
# --------------------------------------------------------------------------------------------


def make_speakers(preset: SynthPreset, seed: int) -> list[SpeakerRecipe]:
    """Return the talkers of all parts (train first), with distinct speaker and chapter ids;
    deterministic given ``seed``."""
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
    speakers: list[SpeakerRecipe] = []
    n_male = n_female = 0
    for part in PARTS:
        for i in range(preset.speakers(part)):
            sex = "M" if (i + int(rng.integers(0, 2))) % 2 == 0 else "F"
            if sex == "M":
                variant = male[n_male % len(male)]
                n_male += 1
                pitch = int(rng.integers(15, 61))
            else:
                variant = female[n_female % len(female)]
                n_female += 1
                pitch = int(rng.integers(35, 86))
            chapters = tuple(sorted(chapter_ids.pop() for _ in range(chapters_per[part])))
            speakers.append(
                SpeakerRecipe(
                    speaker_id=speaker_ids.pop(),
                    part=part,
                    sex=sex,
                    voice=f"en-us+{variant}",
                    rate=int(rng.integers(140, 196)),
                    pitch=pitch,
                    pitch_range=int(rng.integers(25, 86)),
                    word_gap=int(rng.integers(0, 3)),
                    channel=augment.random_channel(rng, SAMPLE_RATE),
                    chapters=chapters,
                )
            )
    return speakers


def plan_utterances(corpus_dir: Path, preset: SynthPreset, seed: int, speakers: list[SpeakerRecipe]) -> tuple[list[UtteranceJob], SentenceSplit]:
    """Assign sentences to speakers and chapters; return the jobs (in a fixed order) and the
    sentence split they came from."""
    counts = {p: preset.speakers(p) * preset.utts_per_speaker(p) for p in PARTS}
    split = split_sentences(
        counts[TRAIN_PART], counts[DEV_PART], counts[TEST_PART], seed=seed, vocab_size=preset.vocab_size,
        min_words=preset.min_words, max_words=preset.max_words, pool_factor=preset.pool_factor,
    )
    sentences = {TRAIN_PART: list(split.train), DEV_PART: list(split.dev), TEST_PART: list(split.test)}
    jobs: list[UtteranceJob] = []
    for part_index, part in enumerate(PARTS):
        texts = iter(sentences[part])
        for spk in (s for s in speakers if s.part == part):
            n = preset.utts_per_speaker(part)
            # Spread the speaker's utterances over the chapters as evenly as possible.
            per_chapter = [n // len(spk.chapters) + (1 if c < n % len(spk.chapters) else 0) for c in range(len(spk.chapters))]
            for chapter, k in zip(spk.chapters, per_chapter):
                for utt in range(k):
                    utt_id = f"{spk.speaker_id}-{chapter}-{utt:04d}"
                    path = corpus_dir / part / str(spk.speaker_id) / str(chapter) / f"{utt_id}.flac"
                    jobs.append(UtteranceJob(utt_id, path, next(texts), spk, (seed, part_index, spk.speaker_id, chapter, utt)))
    return jobs, split


# --------------------------------------------------------------------------------------------
# Rendering (runs in worker processes)
# --------------------------------------------------------------------------------------------


@dataclass
class _WorkerState:
    difficulty: float
    babble: np.ndarray | None


_WORKER: _WorkerState | None = None  # one per process: libespeak-ng is a process-wide singleton


def _synthesize_16k(text: str, settings: VoiceSettings, seed: int) -> np.ndarray:
    """Return espeak-ng speech for ``text`` at 16 kHz, with espeak's own edge silence trimmed."""
    engine = get_synthesizer()
    audio = engine.synthesize_isolated(text.lower(), settings, seed)
    if engine.sample_rate != SAMPLE_RATE:
        g = np.gcd(SAMPLE_RATE, engine.sample_rate)
        audio = scipy.signal.resample_poly(audio, SAMPLE_RATE // g, engine.sample_rate // g).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 1e-3)
    if len(loud) == 0:
        return audio
    return audio[loud[0] : loud[-1] + 1]


def _make_babble(seed: int, texts: list[str], num_talkers: int = 5) -> np.ndarray:
    """Return about 20 s of babble: ``num_talkers`` random synthetic talkers speaking at once."""
    rng = np.random.default_rng([seed, 202])
    streams: list[np.ndarray] = []
    for _ in range(num_talkers):
        variant = str(rng.choice(MALE_VARIANTS + FEMALE_VARIANTS))
        settings = VoiceSettings(voice=f"en-us+{variant}", rate=int(rng.integers(150, 200)), pitch=int(rng.integers(20, 80)))
        picks = rng.choice(len(texts), size=min(4, len(texts)), replace=False)
        audio = np.concatenate([_synthesize_16k(texts[int(i)], settings, int(rng.integers(2**31))) for i in picks])
        audio = audio / (np.sqrt(np.mean(audio**2)) + 1e-9)  # equal loudness per talker
        streams.append(np.roll(audio, int(rng.integers(0, len(audio)))))
    length = min(len(s) for s in streams)
    return np.sum([s[:length] for s in streams], axis=0).astype(np.float32)


def _init_worker(seed: int, difficulty: float, babble_texts: list[str]) -> None:
    """Pool initializer: one espeak-ng engine and one babble bank per worker process."""
    global _WORKER  # per-process worker state, set once by the pool initializer
    # A worker forks once per utterance (EspeakSynthesizer.synthesize_isolated), and a fork
    # costs ~13 ms instead of ~3 ms while the ~400 MB text model inherited from the parent is
    # mapped: drop this process's reference to it.
    load_markov_chain.cache_clear()
    gc.collect()
    get_synthesizer()
    babble = _make_babble(seed, babble_texts) if difficulty > 0 and babble_texts else None
    _WORKER = _WorkerState(difficulty=difficulty, babble=babble)


def render_utterance(job: UtteranceJob) -> UtteranceResult:
    """Synthesise, degrade and write one utterance (atomically); return what was drawn.

    Every random draw comes from a Generator seeded by the job alone, in a fixed order, so an
    utterance is the same whichever worker renders it."""
    if _WORKER is None:
        raise RuntimeError("render_utterance needs _init_worker to run first in this process")
    rng = np.random.default_rng(list(job.seed))
    ranges = augment.degradation_ranges(_WORKER.difficulty)
    # Draw everything up front and unconditionally, so that the same seed gives the same speech,
    # silences and level at every difficulty; only the degradations differ.
    lead_s, trail_s = rng.uniform(0.1, 0.5, size=2)
    use_reverb = rng.random() < ranges.reverb_prob
    u_rt60 = float(rng.random())
    rt60 = ranges.rt60_s[0] + u_rt60 * (ranges.rt60_s[1] - ranges.rt60_s[0])
    use_noise = rng.random() < ranges.noise_prob
    kind = str(rng.choice(augment.NOISE_KINDS, p=[0.2, 0.3, 0.2, 0.3]))
    u_snr = float(rng.random())
    snr = ranges.snr_db[0] + u_snr * (ranges.snr_db[1] - ranges.snr_db[0]) if use_noise else float("inf")
    peak = float(rng.uniform(0.3, 0.9))  # a small random gain: recordings differ in level
    espeak_seed = int(rng.integers(2**31))
    noise_rng = np.random.default_rng(list(job.seed) + [1])

    speech = _synthesize_16k(job.text, job.speaker.settings(), espeak_seed)
    if len(speech) == 0:
        raise DataError(f"espeak-ng produced no audio for {job.utt_id} ({job.text!r}); check the espeakng-loader install")
    x = np.concatenate([np.zeros(int(lead_s * SAMPLE_RATE), np.float32), speech, np.zeros(int(trail_s * SAMPLE_RATE), np.float32)])
    if ranges.channel:
        x = augment.apply_channel(x, job.speaker.channel, SAMPLE_RATE)
    if use_reverb:
        x = augment.apply_rir(x, augment.synthetic_rir(rt60, SAMPLE_RATE, noise_rng))
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
    )


def _render_all(jobs: list[UtteranceJob], config: SynthConfig, babble_texts: list[str]) -> Iterator[UtteranceResult]:
    """Yield the results of ``jobs`` (in completion order) using ``config.num_jobs`` processes."""
    initargs = (config.seed, config.difficulty, babble_texts)
    if config.num_jobs == 1 or len(jobs) <= 1:
        _init_worker(*initargs)
        yield from map(render_utterance, jobs)
        return
    # 'fork' starts workers in milliseconds and shares the loaded modules; each worker then
    # initialises its own espeak-ng engine (the library is a process-wide singleton).
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(config.num_jobs, initializer=_init_worker, initargs=initargs) as pool:
        yield from pool.imap_unordered(render_utterance, jobs, chunksize=4)


# --------------------------------------------------------------------------------------------
# Writing the corpus
# --------------------------------------------------------------------------------------------


def _speakers_txt(speakers: list[SpeakerRecipe], seconds: dict[int, float]) -> str:
    """Return SPEAKERS.TXT in LibriSpeech's format."""
    lines = [
        "; Synthetic speakers (espeak-ng voices) in the format of LibriSpeech's SPEAKERS.TXT.",
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


def _identity(config: SynthConfig, preset: SynthPreset) -> dict[str, Any]:
    """What determines the corpus: a finished or half-finished corpus is reused only if equal."""
    return {"format_version": FORMAT_VERSION, "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "num_jobs"}, "preset": dataclasses.asdict(preset)}


def _summary_from_marker(corpus_dir: Path, marker: dict[str, Any]) -> SynthSummary:
    parts = tuple(
        PartSummary(name=p, utterances=int(v["utterances"]), hours=float(v["seconds"]) / 3600.0, speakers=len(v["speakers"]))
        for p, v in marker["parts"].items()
    )
    return SynthSummary(
        corpus_dir=corpus_dir, parts=parts, vocabulary_size=int(marker["vocabulary_size"]), eval_oov_rate=float(marker["eval_oov_rate"])
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
        found = {k: data.get(k) for k in identity}
        if found != identity:
            raise DataError(
                f"{corpus_dir} holds a synthetic corpus made with different settings ({path.name}); "
                "use another --output-dir or delete it"
            )
        if path == marker_path:
            return data
    if marker_path.exists() is False and any(corpus_dir.glob("*/*/*/*.flac")) and not progress_path.is_file():
        raise DataError(f"{corpus_dir} already holds audio that this program did not write; use another --output-dir")
    return None


def synthesize_corpus(corpus_dir: Path, config: SynthConfig, *, preset: SynthPreset | None = None) -> SynthSummary:
    """Write the synthetic corpus for ``config`` into ``corpus_dir`` (see the module docstring);
    return its summary. ``preset`` overrides the sizes of ``config.preset`` (for tests).

    If ``corpus_dir`` already holds the finished corpus for the same settings (its
    ``SYNTHETIC.json`` is written last), nothing is redone; an interrupted run is resumed,
    reusing the utterances already written (each was written atomically)."""
    corpus_dir = Path(corpus_dir)
    sizes = preset if preset is not None else PRESETS[config.preset]
    identity = _identity(config, sizes)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    done = _check_reusable(corpus_dir, identity)
    if done is not None:
        logger.info("synthetic corpus in %s is complete; reusing it", corpus_dir)
        return _summary_from_marker(corpus_dir, done)
    write_text_atomic(corpus_dir / _IN_PROGRESS_NAME, json.dumps(identity, indent=1))

    start = time.perf_counter()
    speakers = make_speakers(sizes, config.seed)
    jobs, split = plan_utterances(corpus_dir, sizes, config.seed, speakers)
    logger.info("synthesising %d utterances from %d speakers with %d jobs", len(jobs), len(speakers), config.num_jobs)

    results: dict[str, UtteranceResult] = {}
    todo = []
    for job in jobs:
        if job.path.is_file():  # written (atomically) by an interrupted earlier run
            results[job.utt_id] = UtteranceResult(job.utt_id, soundfile.info(str(job.path)).frames, None, None, None)
        else:
            todo.append(job)
    if results:
        logger.info("resuming: %d utterances already written", len(results))
    # Babble is made of training sentences spoken by random voices (never dev/test text).
    babble_texts = [j.text for j in jobs if j.speaker.part == TRAIN_PART][:20]
    for res in tqdm(_render_all(todo, config, babble_texts), total=len(todo), desc="synthesising", unit="utt"):
        results[res.utt_id] = res

    _write_transcripts(jobs)
    seconds_per_speaker: dict[int, float] = {}
    parts: dict[str, dict[str, Any]] = {}
    for part in PARTS:
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
            "degradation": dataclasses.asdict(augment.degradation_ranges(config.difficulty)),
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
