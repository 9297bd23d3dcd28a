"""Typed, frozen configuration: one dataclass per concern, read from YAML, validated, saved.

Every config class is a frozen dataclass whose ``__post_init__`` validates its fields and raises
:class:`~asr_kd.errors.ConfigError` with a one-line message. ``load_config`` reads a YAML file
(unknown keys are an error, not silently ignored) and applies ``key=value`` overrides from the
command line; ``save_config`` records the config actually used in the experiment directory.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from asr_kd.errors import ConfigError
from asr_kd.utils import write_text_atomic

C = TypeVar("C")

# The recipe's default parts: LibriSpeech's names, which the synthetic corpus uses too (the full
# list is asr_kd.data.librispeech.LIBRISPEECH_PARTS). Every command's default comes from here.
DEFAULT_TRAIN_PART, DEFAULT_DEV_PART, DEFAULT_TEST_PART = "train-clean-100", "dev-clean", "test-clean"
# The custom field of a cut that holds its senone alignment (stage 3 stores it; training, scoring
# and `asr-kd train-dnn --labels-name` read it). Here, beside the part names, so that the
# command-line modules take it without importing lhotse.
SENONES_FIELD = "senones"
# Stage 8's share of the training data: the paper's Table 5 trains on 3% of it.
THREE_PERCENT_FRACTION = 0.03
# Stage 9's quantisation gate: int8 within 2% relative of fp32 test WER (deploy --int8-max-relative, deploy-report --max-relative).
INT8_MAX_RELATIVE = 0.02
# The DNN preset (asr_kd.models.dnn.DNN_PRESETS) every command that trains one uses when given no
# --model-config: the demo's network (run.sh passes its preset's own).
DEFAULT_DNN_PRESET = "mini"


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# Field metadata of an option added to a config after runs were recorded with it: at its default
# (the old behaviour) it is left out of the stage records' configs and fingerprints
# (asr_kd.stages.provenance), so adding it does not make every finished run redo its stages.
OMIT_AT_DEFAULT = "omit_at_default"


def later_option(default: Any) -> Any:
    """Return a dataclass field with ``default`` that stage records omit while it equals
    ``default`` (see :data:`OMIT_AT_DEFAULT`); set to anything else, it is recorded as usual.

    Never change such a field's default: the records made before name no value for it, so they
    would match a config at the new default and outputs made with the old value would be reused.
    To change a default, make the field a plain one (always recorded): every old record then
    differs and its stage is redone."""
    return dataclasses.field(default=default, metadata={OMIT_AT_DEFAULT: True})


def recorded_fields(cfg: Any) -> dict[str, Any]:
    """Return the fields of the dataclass instance ``cfg`` that records and identities name: every
    field but one made by :func:`later_option` that is at its default."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if not (f.metadata.get(OMIT_AT_DEFAULT) and getattr(cfg, f.name) == f.default)}


# --------------------------------------------------------------------------------------------
# Stage 0: the synthetic corpus
# --------------------------------------------------------------------------------------------

SYNTH_PRESETS = ("tiny", "mini", "small")
# Synthesiser families (asr_kd/data/voices.py): espeak-ng, Festival's diphone voices, Kokoro-82M.
SYNTH_ENGINES = ("espeak", "festival", "kokoro")


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """The synthetic LibriSpeech-layout corpus: several synthesiser families, speaker and channel
    perturbation, noise and reverberation, and an out-of-domain test part."""

    preset: str = "mini"
    seed: int = 0
    # 0 = clean synthetic speech; 1 = the default mix of noise, reverberation and channel colouring
    # (chosen so that a small model errs noticeably); up to 3 for harder data.
    difficulty: float = 1.0
    num_jobs: int = 2
    # Families that speak train/dev/test (those installed; espeak-ng always is) and the one that
    # speaks the out-of-domain part test-ood, never a training family. Kokoro runs at about real
    # time per core against espeak-ng's ~500x and Festival's ~10x (bench/synth_speed.py), so it
    # speaks only the small test-ood part.
    engines: tuple[str, ...] = ("espeak", "festival")
    ood_engine: str = "kokoro"
    # Fraction of the train/dev/test talkers that Festival speaks when it is installed (it has two
    # English voices, made into many talkers by F0, rate and VTLP).
    festival_share: float = 0.3
    # Vocal tract length perturbation (Jaitly & Hinton 2013): each train/dev/test talker's
    # spectrum is warped by a factor drawn uniformly from [1 - vtlp_max, 1 + vtlp_max] (their
    # range, 0.9..1.1); 0 turns it off.
    vtlp_max: float = 0.1
    # Speed perturbation of training utterances (Kaldi's 0.9/1.0/1.1: tempo and pitch together);
    # each training utterance is played at one factor drawn from this list.
    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)
    # Probability that a train/dev/test talker is heard through a narrow-band telephone channel
    # (300-3400 Hz, 8 kHz sampled) instead of its wide-band channel colouring.
    telephone_prob: float = 0.1
    # Share of the reverberant utterances (see difficulty) whose room is simulated by the image
    # method (a random shoebox room, source and microphone: room-specific early reflections, and
    # direct-to-reverberant ratios from about -14 to +4 dB) instead of a statistical decay with a
    # fixed +3 dB direct path. Not tuned by a WER measurement: half of each, for variety.
    image_room_share: float = 0.5
    # Share of the candidate sentences taken from WordNet's usage examples (Debian wordnet-base;
    # 0 where it is not installed) beside essential-generators' Markov text. At 0.3 about a
    # quarter of mini's training sentences are WordNet's and the test text's bigram perplexity
    # under the training text rises from 128 to 200 (measured, seed 0): more varied text.
    wordnet_share: float = 0.3
    # Each talker's prosody, drawn uniformly from these inclusive ranges: base pitch on espeak-ng's
    # 0..100 scale (Festival maps it to a mean F0 in 80..170 Hz for male and 150..260 Hz for female
    # talkers; Kokoro's voices keep their own), and speaking rate in words per minute (175 is every
    # engine's normal speed; Kokoro's test-ood talkers follow it too). Chosen by ear for variety,
    # not tuned by a WER measurement; bench/synth_ablation.py measures a change on the training part.
    pitch_male: tuple[int, ...] = later_option((15, 60))
    pitch_female: tuple[int, ...] = later_option((35, 85))
    rate_wpm: tuple[int, ...] = later_option((140, 195))
    # How far each talker's pitch moves within an utterance (intonation; espeak-ng's 0..100 pitch
    # range, which Festival maps to its F0 spread) and espeak-ng's extra pause between words (10 ms
    # units), drawn per talker from these inclusive ranges. Chosen by ear, not by a measurement.
    pitch_range: tuple[int, ...] = later_option((25, 85))
    word_gap: tuple[int, ...] = later_option((0, 2))
    # Half the espeak-ng talkers speak American English, the rest another accent. Drawn
    # independently, the accents of mini's 40 training talkers missed 2 of the 7 others, which then
    # spoke a quarter of test-clean unseen (bench/RESULTS.md, "Synthetic corpus ablations"). True:
    # the training talkers take the other accents in turn (a shuffled cycle), so each speaks
    # training data wherever there are at least as many such talkers as accents; dev/test unchanged.
    cover_accents: bool = later_option(False)
    # True: candidate sentences holding a one-letter word other than A and I are left out of the
    # text pool: the Markov text's stray letters (4 of mini's 1420 transcripts end in one, e.g.
    # "... IN PARTICULAR J"; found by reading them). A sentence is dropped whole, never cut. False
    # keeps them: the corpora made before this option, whose text it would change.
    drop_stray_letters: bool = later_option(False)
    # Each wide-band talker's channel colouring (asr_kd.data.augment.random_channel; test-ood's
    # talkers too): two resonances whose gains are drawn from [-channel_peak_db, +channel_peak_db]
    # dB (0: a flat band-pass).
    channel_peak_db: float = later_option(6.0)
    # The same channel's band-pass edges (Hz: the low edge and the high edge, each drawn per talker
    # from its range; at most 7600, 0.95 x the Nyquist frequency at 16 kHz) and the range the two
    # resonance frequencies are drawn from (below the talker's high edge). The defaults go from
    # telephone-like to wide-band; chosen by ear, not by a measurement.
    channel_low_hz: tuple[float, ...] = later_option((60.0, 300.0))
    channel_high_hz: tuple[float, ...] = later_option((3400.0, 7600.0))
    channel_peak_hz: tuple[float, ...] = later_option((400.0, 5000.0))
    # Relative frequency of the additive noise kinds, in the order white, pink, brown, babble
    # (babble: other training sentences spoken by five of the corpus' voices at once).
    noise_kind_weights: tuple[float, ...] = later_option((0.2, 0.3, 0.2, 0.3))
    # Per recording: the silence before and after the speech (seconds, each drawn from this range)
    # and the peak level the recording is scaled to (full scale 1.0): recordings differ in level.
    silence_s: tuple[float, ...] = later_option((0.1, 0.5))
    peak_level: tuple[float, ...] = later_option((0.3, 0.9))
    # What difficulty d does (asr_kd.data.augment.degradation_ranges): every utterance is noisy at
    # d >= 1, at an SNR drawn from (28 - 12 d) +- snr_spread_db dB; a share min(1, reverb_prob x d)
    # is reverberant, with RT60 drawn from rt60_scale x (0.1 + 0.1 d .. 0.2 + 0.3 d) seconds.
    snr_spread_db: float = later_option(10.0)
    reverb_prob: float = later_option(0.6)
    rt60_scale: float = later_option(1.0)

    def __post_init__(self) -> None:
        _check(self.preset in SYNTH_PRESETS, f"synth.preset must be one of {SYNTH_PRESETS}, got {self.preset!r}")
        _check(0.0 <= self.difficulty <= 3.0, f"synth.difficulty must be in [0, 3], got {self.difficulty}")
        _check(self.num_jobs >= 1, f"synth.num_jobs must be >= 1, got {self.num_jobs}")
        bad = [e for e in (*self.engines, self.ood_engine) if e not in SYNTH_ENGINES]
        _check(not bad, f"synth engines must be among {SYNTH_ENGINES}, got {bad}")
        _check("espeak" in self.engines, f"synth.engines must include espeak (always installed), got {list(self.engines)}")
        _check("kokoro" not in self.engines,
               "synth.engines: kokoro runs at about real time per core and speaks only test-ood; train with espeak and festival")
        _check(self.ood_engine not in self.engines,
               f"synth.ood_engine {self.ood_engine!r} also speaks training parts {list(self.engines)}; pick an engine outside synth.engines")
        _check(0.0 <= self.festival_share <= 1.0, f"synth.festival_share must be in [0, 1], got {self.festival_share}")
        _check(0.0 <= self.vtlp_max < 0.5, f"synth.vtlp_max must be in [0, 0.5), got {self.vtlp_max}")
        _check(bool(self.speed_factors) and all(0.5 <= f <= 2.0 for f in self.speed_factors),
               f"synth.speed_factors must be a non-empty list of factors in [0.5, 2], got {list(self.speed_factors)}")
        _check(0.0 <= self.telephone_prob <= 1.0, f"synth.telephone_prob must be in [0, 1], got {self.telephone_prob}")
        _check(0.0 <= self.image_room_share <= 1.0, f"synth.image_room_share must be in [0, 1], got {self.image_room_share}")
        _check(0.0 <= self.wordnet_share <= 0.9, f"synth.wordnet_share must be in [0, 0.9], got {self.wordnet_share}")
        for name, lo, hi in (("pitch_male", 0, 100), ("pitch_female", 0, 100), ("rate_wpm", 80, 450), ("pitch_range", 0, 100),
                             ("word_gap", 0, 50), ("channel_low_hz", 20, 900), ("channel_high_hz", 1000, 7600),
                             ("channel_peak_hz", 100, 8000), ("silence_s", 0, 5), ("peak_level", 0.01, 1)):
            pair = getattr(self, name)
            _check(len(pair) == 2 and lo <= pair[0] <= pair[1] <= hi,
                   f"synth.{name} must be [low, high] with {lo} <= low <= high <= {hi}, got {list(pair)}")
        _check(self.channel_peak_hz[0] < self.channel_high_hz[0],
               f"synth.channel_peak_hz's low end {self.channel_peak_hz[0]} must be below channel_high_hz's {self.channel_high_hz[0]} "
               "(a resonance inside every talker's band)")
        _check(0.0 <= self.snr_spread_db <= 30.0, f"synth.snr_spread_db must be in [0, 30], got {self.snr_spread_db}")
        _check(0.0 <= self.reverb_prob <= 1.0, f"synth.reverb_prob must be in [0, 1], got {self.reverb_prob}")
        _check(0.1 <= self.rt60_scale <= 4.0, f"synth.rt60_scale must be in [0.1, 4], got {self.rt60_scale}")
        _check(0.0 <= self.channel_peak_db <= 20.0, f"synth.channel_peak_db must be in [0, 20], got {self.channel_peak_db}")
        _check(len(self.noise_kind_weights) == 4 and min(self.noise_kind_weights) >= 0 and sum(self.noise_kind_weights) > 0,
               "synth.noise_kind_weights must be 4 weights >= 0 (white, pink, brown, babble), not all 0, "
               f"got {list(self.noise_kind_weights)}")


# --------------------------------------------------------------------------------------------
# Stage 1: features
# --------------------------------------------------------------------------------------------

FEATURE_BACKENDS = ("lhotse", "kaldi-native-fbank")


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Acoustic features: log-mel fbank for networks, MFCC for GMMs."""

    sampling_rate: int = 16000
    frame_shift: float = 0.01
    frame_length: float = 0.025
    num_mel_bins: int = 40  # the paper's input: 40 log filter-bank coefficients
    num_ceps: int = 13
    # Which implementation computes the features; bench/feature_speed.py measures both.
    backend: str = "lhotse"
    num_jobs: int = 2
    # "speaker": CMVN statistics per speaker (Kaldi's default); "global": one set for the corpus.
    cmvn: str = "speaker"
    # Multi-channel audio: "mix" averages all channels into one; "0", "1", ... takes that channel
    # only. (Audio at another rate than sampling_rate is always resampled on the fly.)
    channel: str = "mix"

    def __post_init__(self) -> None:
        _check(self.backend in FEATURE_BACKENDS, f"features.backend must be one of {FEATURE_BACKENDS}, got {self.backend!r}")
        _check(self.channel == "mix" or self.channel.isdigit(), f"features.channel must be 'mix' or a channel index (0, 1, ...), got {self.channel!r}")
        _check(self.sampling_rate >= 8000, f"features.sampling_rate must be at least 8000 Hz, got {self.sampling_rate}")
        _check(self.cmvn in ("speaker", "global"), f"features.cmvn must be 'speaker' or 'global', got {self.cmvn!r}")
        _check(self.num_mel_bins > 0 and self.num_ceps > 0, "features.num_mel_bins and num_ceps must be positive")
        _check(self.num_ceps <= self.num_mel_bins, "features.num_ceps must not exceed num_mel_bins")
        _check(0 < self.frame_shift <= self.frame_length, "features need 0 < frame_shift <= frame_length")
        _check(self.num_jobs >= 1, "features.num_jobs must be >= 1")


# --------------------------------------------------------------------------------------------
# Stage 2: lang
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LangConfig:
    """Lexicon, phone set and n-gram language model."""

    silence_phone: str = "SIL"
    oov_word: str = "<UNK>"
    oov_phone: str = "SPN"  # the spoken-noise phone that <UNK> is pronounced with
    position_dependent_phones: bool = False  # Kaldi's _B/_I/_E/_S word-position phones
    silence_prob: float = 0.5  # optional silence between words in L.fst
    lm_order: int = 3
    max_prons_per_word: int = 3  # extra pronunciations beyond this are dropped (after de-stressing)
    # A --lexicon file "extend"s CMUdict (its entries win; CMUdict fills the words it lacks) or
    # "replace"s it (only its words have pronunciations).
    lexicon_mode: str = "extend"
    # Transcript words that no lexicon has: "espeak" reads them with espeak-ng's letter-to-sound
    # rules (mapped to ARPAbet, written to data/lang/lexicon_g2p.txt); "none" leaves them <UNK>.
    g2p: str = "espeak"
    # Also read the words that only --lm-text or --lm-arpa has (they become decodable, as the LM
    # knows them): Kaldi's LibriSpeech lexicon does the same for its LM's vocabulary. espeak-ng
    # takes about 0.1 ms of CPU a word (200,000 words: ~20 s). False leaves them out of L and G.
    g2p_lm_words: bool = True
    # Stage 2 stops when more than this fraction of a split's running words still has no
    # pronunciation (after the lexicon and G2P): such a corpus would align to <UNK> silently.
    max_oov_rate: float = 0.05

    def __post_init__(self) -> None:
        _check(self.lexicon_mode in ("extend", "replace"), f"lang.lexicon_mode must be 'extend' or 'replace', got {self.lexicon_mode!r}")
        _check(self.g2p in ("espeak", "none"), f"lang.g2p must be 'espeak' or 'none', got {self.g2p!r}")
        _check(0.0 <= self.max_oov_rate <= 1.0, f"lang.max_oov_rate must be in [0, 1], got {self.max_oov_rate}")
        _check(0.0 <= self.silence_prob < 1.0, f"lang.silence_prob must be in [0, 1), got {self.silence_prob}")
        _check(1 <= self.lm_order <= 6, f"lang.lm_order must be in 1..6, got {self.lm_order}")
        _check(self.max_prons_per_word >= 1, f"lang.max_prons_per_word must be >= 1, got {self.max_prons_per_word}")
        _check(self.silence_phone != self.oov_phone, "lang.silence_phone and lang.oov_phone must differ")
        for name in (self.silence_phone, self.oov_phone, self.oov_word):
            _check(bool(name) and not any(c.isspace() for c in name) and not name.startswith("#"),
                   f"lang symbol {name!r} must be non-empty, without spaces, and not start with '#'")


# --------------------------------------------------------------------------------------------
# Loading and saving
# --------------------------------------------------------------------------------------------


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce a YAML or command-line value to the annotated type ``tp`` (str, int, float, bool,
    optional and tuple types); raise ConfigError on a mismatch."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: cannot use {value!r} as {tp}")
    if origin is tuple:
        (elem, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, elem, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return out
    if tp is str:
        return str(value)
    return value


def config_from_dict(cls: type[C], data: Mapping[str, Any], where: str = "config") -> C:
    """Build ``cls`` from a mapping; unknown keys and wrong types raise ConfigError."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}: {k}") for k, v in data.items()}
    return cls(**kwargs)


def load_config(cls: type[C], path: Path | str | None = None, overrides: Mapping[str, Any] | None = None) -> C:
    """Read ``cls`` from a YAML file (if given) and apply ``overrides`` on top."""
    data: dict[str, Any] = {}
    where = cls.__name__
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
        data.update(loaded)
        where = str(path)
    data.update(overrides or {})
    return config_from_dict(cls, data, where)


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """Turn ``["a=1", "b=x"]`` into ``{"a": "1", "b": "x"}``; values are coerced later."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = v
    return out


def save_config(cfg: Any, path: Path | str) -> None:
    """Write a config as YAML (atomically), so an experiment records what it ran with."""
    write_text_atomic(path, yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


# --------------------------------------------------------------------------------------------
# Kaldi's graph scales: one class for HCLG building, alignment and decoding
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GraphScales:
    """The three scales Kaldi puts on an HMM graph's scores, in one place for HCLG building
    (transition and self-loop), GMM alignment (all three) and decoding (the acoustic scale).

    ``acoustic``: on acoustic log-likelihoods, relative to the graph (Kaldi's ``acwt``, 0.1).
    ``transition``: on the HMM's non-self-loop transition log-probabilities (mkgraph.sh: 1.0).
    ``self_loop``: on the self-loop log-probabilities (mkgraph.sh: 0.1).
    GmmConfig and DecodeConfig keep them as flat fields (their recorded form); ``graph_scales``
    on either returns them as this class.
    """

    acoustic: float = 0.1
    transition: float = 1.0
    self_loop: float = 0.1

    def __post_init__(self) -> None:
        _check(self.acoustic > 0, f"the acoustic scale must be > 0, got {self.acoustic}")
        _check(self.transition >= 0 and self.self_loop >= 0,
               f"the transition and self-loop scales must be >= 0, got {self.transition}, {self.self_loop}")


# --------------------------------------------------------------------------------------------
# Stage 3: GMM-HMM (monophone flat start, tied triphones with our own decision tree)
# --------------------------------------------------------------------------------------------


# Cuts that stage 3 aligns or decodes at a time (Kaldi splits a part into jobs for the same
# reason; `asr-kd train-gmm --align-chunk`): the features of 5,000 LibriSpeech utterances (12.3 s
# on average, 39 float32 a frame) take about 1 GB; a part of that size or less is loaded once.
GMM_ALIGN_CHUNK = 5000


@dataclasses.dataclass(frozen=True)
class GmmConfig:
    """GMM-HMM training: topology, EM schedule, mixing up, decision tree, alignment beams.

    Defaults follow Kaldi's train_mono.sh / train_deltas.sh conventions; a recipe's YAML sets
    the sizes (a few hundred leaves for ``mini``, thousands for LibriSpeech).
    """

    num_nonsil_states: int = 3
    num_sil_states: int = 5
    # Monophone flat start.
    mono_num_iters: int = 40
    mono_realign_iters: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 23, 26, 29, 32, 35, 38)
    mono_total_gauss: int = 1000
    mono_max_iter_inc: int = 30  # Gaussians are added up to this iteration, then the count stays
    mono_beam: float = 6.0
    # Flat start along "silence, words without optional silences, silence" rather than a random
    # path of the full training graph (Kaldi's way), which on short utterances settles badly.
    flat_start_edge_silence: bool = True
    # Tied triphones.
    tri_num_iters: int = 35
    tri_realign_iters: tuple[int, ...] = (10, 20, 30)
    tri_total_gauss: int = 10000
    tri_max_iter_inc: int = 25
    num_leaves: int = 2000
    min_leaf_count: float = 100.0  # frames per tree leaf, at least
    min_split_gain: float = 0.0  # stop splitting once the best log-likelihood gain is below this
    split_silence: bool = True  # let the tree ask about the context of silence phones too
    # Alignment and graph scales (Kaldi conventions).
    beam: float = 10.0
    retry_beam: float = 40.0
    acoustic_scale: float = GraphScales.acoustic
    self_loop_scale: float = GraphScales.self_loop
    transition_scale: float = GraphScales.transition
    # ML update and mixing up.
    power: float = 0.25  # Gaussians per state grow as occupancy ** power
    perturb_factor: float = 0.01
    min_gaussian_occupancy: float = 10.0
    min_variance: float = 0.001
    var_floor: float = 0.01  # variance floor of the tree's single-Gaussian likelihoods
    # Features handed to the GMMs: MFCC, optional per-utterance CMVN, then deltas.
    delta_order: int = 2
    delta_window: int = 2
    utterance_cmvn: bool = False
    seed: int = 0
    # Training subsets (Kaldi's LibriSpeech recipe: utils/subset_data_dir.sh). 0 = every training
    # utterance. mono_subset = N: the monophone trains on the N shortest utterances (ties broken by
    # id; Kaldi's --shortest). tri_subset = N: the triphones train on N utterances drawn with
    # ``seed``, spread evenly over the speakers, after the monophone has aligned them (align_si.sh).
    # Only the subsets' features are held in memory; every utterance is still aligned by the
    # triphones. A subset larger than the part is the whole part.
    mono_subset: int = later_option(0)
    tri_subset: int = later_option(0)

    def __post_init__(self) -> None:
        for name in ("mono_subset", "tri_subset"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                   f"gmm.{name} must be 0 (every training utterance) or a number of utterances >= 1, got {value!r}")
        _check(self.num_nonsil_states >= 1, f"gmm.num_nonsil_states must be >= 1, got {self.num_nonsil_states}")
        _check(self.num_sil_states >= 2, f"gmm.num_sil_states must be >= 2 (Kaldi's silence topology), got {self.num_sil_states}")
        for name in ("mono_num_iters", "tri_num_iters"):
            _check(getattr(self, name) >= 1, f"gmm.{name} must be >= 1, got {getattr(self, name)}")
        for name, n in (("mono_realign_iters", self.mono_num_iters), ("tri_realign_iters", self.tri_num_iters)):
            its = getattr(self, name)
            _check(all(0 < i < n for i in its), f"gmm.{name} must lie in 1..{n - 1}, got {list(its)}")
            _check(list(its) == sorted(set(its)), f"gmm.{name} must be increasing without repeats, got {list(its)}")
        for name in ("mono_total_gauss", "tri_total_gauss", "num_leaves"):
            _check(getattr(self, name) >= 1, f"gmm.{name} must be >= 1, got {getattr(self, name)}")
        _check(self.tri_total_gauss >= self.num_leaves, f"gmm.tri_total_gauss ({self.tri_total_gauss}) must be >= gmm.num_leaves ({self.num_leaves})")
        _check(self.mono_max_iter_inc >= 0 and self.tri_max_iter_inc >= 0, "gmm.*_max_iter_inc must be >= 0")
        _check(self.min_leaf_count > 0, f"gmm.min_leaf_count must be > 0, got {self.min_leaf_count}")
        _check(self.min_split_gain >= 0, f"gmm.min_split_gain must be >= 0, got {self.min_split_gain}")
        _check(0 < self.mono_beam and 0 < self.beam, "gmm.beam and gmm.mono_beam must be > 0")
        _check(self.retry_beam == 0 or self.retry_beam > max(self.beam, self.mono_beam), f"gmm.retry_beam must be 0 (no retry) or larger than the beams, got {self.retry_beam}")
        for name in ("acoustic_scale", "self_loop_scale", "transition_scale"):
            _check(0 < getattr(self, name) <= 1, f"gmm.{name} must be in (0, 1], got {getattr(self, name)}")
        _check(0 <= self.power <= 1, f"gmm.power must be in [0, 1], got {self.power}")
        _check(self.perturb_factor >= 0, "gmm.perturb_factor must be >= 0")
        _check(self.min_variance > 0 and self.var_floor > 0, "gmm.min_variance and gmm.var_floor must be > 0")
        _check(self.min_gaussian_occupancy > 0, "gmm.min_gaussian_occupancy must be > 0")
        _check(self.delta_order in (0, 1, 2, 3), f"gmm.delta_order must be 0..3, got {self.delta_order}")
        _check(self.delta_window >= 1, f"gmm.delta_window must be >= 1, got {self.delta_window}")

    @property
    def graph_scales(self) -> GraphScales:
        """The acoustic, transition and self-loop scales of alignment (training graphs)."""
        return GraphScales(self.acoustic_scale, self.transition_scale, self.self_loop_scale)


# --------------------------------------------------------------------------------------------
# Stages 4-6: teacher ensemble fusion, soft targets, distillation loss
# --------------------------------------------------------------------------------------------

KD_FUSIONS = ("arithmetic", "geometric")
KD_MODES = ("stored", "online")
KD_LOSSES = ("soft_ce", "logit_l2")
# How stage 5 stores each frame (asr_kd.data.stored_targets): top-k int32 ids + float16
# probabilities (6 k bytes), top-k uint16 ids + uint8 log-probabilities (3 k bytes), or the codes
# of a residual vector quantiser of the whole posterior (kd.codebooks bytes).
KD_STORAGES = ("int32-fp16", "uint16-uint8", "rvq")
# What the student learns of the mass outside the stored top k: nothing, the kept probabilities
# renormalised to sum to 1 (a sharper distribution than the ensemble's), or the rest as one more
# target, "any other senone", which the student's probability outside the top k must match.
KD_TAILS = ("renormalise", "bucket")


@dataclasses.dataclass(frozen=True)
class KdConfig:
    """How the ensemble's knowledge reaches the student (Hinton et al. 2015, sections 2 and 4).

    ``fusion``: "arithmetic" averages the teachers' probabilities (the paper's ensemble);
    "geometric" averages their log-probabilities and renormalises. ``mode``: "stored" reads top-k
    soft targets attached to the cuts (stage 5); "online" runs the teachers in the student's loop.
    ``loss``: "soft_ce" is ``soft_weight * T^2 * CE(soft targets, student at T) + hard_weight *
    CE(labels, student at 1)``; "logit_l2" regresses the student's logits on the teachers'.
    ``storage``: how stage 5 stores a frame (:data:`KD_STORAGES`); ``top_k`` senones are kept per
    frame, and with "rvq" the frame is ``codebooks`` one-byte codes whose decoding keeps ``top_k``.
    ``tail``: what the student learns of the mass outside the top k (:data:`KD_TAILS`).
    """

    temperature: float = 2.0
    hard_weight: float = 0.5  # relative to the soft term; the paper keeps it well below 1
    soft_weight: float = 1.0
    top_k: int = 20  # senones kept per frame in stored soft targets (the recipe's conf/kd.yaml: 500, every senone of mini)
    fusion: str = "arithmetic"
    mode: str = "stored"
    loss: str = "soft_ce"
    # 8 one-byte codes a frame: within noise of 120-byte top-20 targets on mini (bench/RESULTS.md,
    # "Compact teacher storage against accuracy"); 2.8 GB instead of 41 GB for 960 h.
    storage: str = "rvq"
    codebooks: int = 8  # bytes per frame of storage "rvq"
    tail: str = later_option("renormalise")  # recorded only when set: records made before it stay valid

    def __post_init__(self) -> None:
        _check(self.temperature > 0, f"kd.temperature must be > 0, got {self.temperature}")
        _check(self.hard_weight >= 0 and self.soft_weight >= 0, "kd.hard_weight and kd.soft_weight must be >= 0")
        _check(self.hard_weight + self.soft_weight > 0, "kd.hard_weight and kd.soft_weight cannot both be 0")
        _check(self.top_k >= 1, f"kd.top_k must be >= 1, got {self.top_k}")
        _check(self.fusion in KD_FUSIONS, f"kd.fusion must be one of {KD_FUSIONS}, got {self.fusion!r}")
        _check(self.mode in KD_MODES, f"kd.mode must be one of {KD_MODES}, got {self.mode!r}")
        _check(self.loss in KD_LOSSES, f"kd.loss must be one of {KD_LOSSES}, got {self.loss!r}")
        _check(self.storage in KD_STORAGES, f"kd.storage must be one of {KD_STORAGES}, got {self.storage!r}")
        _check(1 <= self.codebooks <= 64, f"kd.codebooks must be in 1..64 (bytes per frame of storage rvq), got {self.codebooks}")
        _check(self.tail in KD_TAILS, f"kd.tail must be one of {KD_TAILS}, got {self.tail!r}")
        _check(self.tail == "renormalise" or self.mode == "stored",
               "kd.tail=bucket is about stored top-k targets; online teachers give the whole distribution: set kd.tail=renormalise")
        # uint8 log-probability steps move each kept probability by up to 3.2% of itself, and the
        # rest (1 - their sum) would inherit those errors: a confident frame's small rest drowns.
        _check(self.tail == "renormalise" or self.storage != "uint16-uint8",
               "kd.tail=bucket needs the kept probabilities to 0.1%: use kd.storage int32-fp16 or rvq, not uint16-uint8")
        # Stored targets keep top-k probabilities only; the teachers' logits cannot be recovered.
        _check(self.loss != "logit_l2" or self.mode == "online",
               "kd.loss=logit_l2 needs the teachers' logits: set kd.mode=online (stored targets keep top-k probabilities only)")


# --------------------------------------------------------------------------------------------
# Stages 4 and 6: the frame-level DNN acoustic model and the shared training loop
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DnnConfig:
    """The spliced-frame DNN: a window of ``left_context + 1 + right_context`` frames predicts
    the senone of one frame. The paper (Hinton et al. 2015, section 4): 26 frames, the 21st
    predicted (20 left, 5 right), 8 hidden ReLU layers of 2,560 units. Presets are in
    :data:`asr_kd.models.dnn.DNN_PRESETS`."""

    feature_dim: int = 40
    left_context: int = 20
    right_context: int = 5
    hidden_dim: int = 2560
    num_hidden_layers: int = 8
    dropout: float = 0.0
    # Compression (issue 15), both off at 0. bottleneck_dim: a linear layer of that many units
    # (no bias, no nonlinearity) between the last hidden layer and the senones, a low-rank
    # factorisation of the output matrix (Sainath et al. 2013, "Low-rank matrix factorization for
    # DNN training with high-dimensional output targets"), which is most of a small net's cost.
    # frame_projection_dim: each frame's feature_dim features are first projected linearly to that
    # many, once per frame and shared by every window that holds it, so a long window costs
    # window x frame_projection_dim inputs to the first hidden layer instead of window x feature_dim.
    bottleneck_dim: int = later_option(0)
    frame_projection_dim: int = later_option(0)

    def __post_init__(self) -> None:
        _check(self.bottleneck_dim >= 0, f"model.bottleneck_dim must be >= 0 (0: no bottleneck), got {self.bottleneck_dim}")
        _check(self.frame_projection_dim >= 0, f"model.frame_projection_dim must be >= 0 (0: no projection), got {self.frame_projection_dim}")
        _check(self.feature_dim >= 1, f"model.feature_dim must be >= 1, got {self.feature_dim}")
        _check(self.left_context >= 0 and self.right_context >= 0, f"model.left_context and model.right_context must be >= 0, got {self.left_context}, {self.right_context}")
        _check(self.hidden_dim >= 1, f"model.hidden_dim must be >= 1, got {self.hidden_dim}")
        _check(self.num_hidden_layers >= 0, f"model.num_hidden_layers must be >= 0, got {self.num_hidden_layers}")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")


OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("constant", "inv_sqrt", "cosine")


AMP_MODES = ("bf16", "bf16-cpu", "none")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the shared training loop (never mutable training state: that is
    :class:`asr_kd.train.state.TrainState`)."""

    seed: int = 0
    num_epochs: int = 10
    max_steps: int = 0  # > 0: stop after this many optimizer steps (counted over all epochs)
    # Batches: lhotse samplers, sized by total audio seconds.
    max_duration: float = 200.0
    bucketing: bool = True  # DynamicBucketingSampler (similar lengths together) or SimpleCutSampler
    num_buckets: int = 10
    shuffle: bool = True
    num_workers: int = 0  # DataLoader worker processes
    # Optimiser and learning-rate schedule: linear warm-up, then constant, inverse square root
    # or cosine decay (to lr * final_lr_ratio at cosine_steps; 0: at the end of the run, counted
    # from the training sampler before training starts, so the rate reaches its floor).
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    warmup_steps: int = 500
    lr_schedule: str = "inv_sqrt"
    cosine_steps: int = 0
    final_lr_ratio: float = 0.01
    grad_clip: float = 5.0  # max gradient norm; 0 = no clipping
    # "bf16": autocast on CUDA (a no-op on CPU); "bf16-cpu": autocast on CPU too (with AMX or
    # AVX512-BF16, 2.0-2.3x faster steps for mini's DNN on one fixed batch shape, bench/RESULTS.md "bf16
    # training on the CPU"; but a whole mini training run, whose batch shapes vary, was no faster);
    # "none": float32 everywhere.
    amp: str = "bf16"
    # SpecAugment (Park et al. 2019) on training batches only (never dev): per utterance, this many
    # masks of up to specaug_freq_width feature bins and of up to specaug_time_width frames (at
    # most a fifth of the utterance each), set to 0, the mean after CMVN (online teachers see the
    # same masked input). 0 masks: off. asr_kd/train/augment.py.
    specaug_freq_masks: int = 0
    specaug_freq_width: int = 8
    specaug_time_masks: int = 0
    specaug_time_width: int = 20
    # Checkpoints: every N steps and at each epoch's end, the last K kept.
    checkpoint_every_steps: int = 1000
    keep_last_checkpoints: int = 3
    log_every_steps: int = 20
    # Model selection on the dev set (evaluated at each epoch's end).
    best_metric: str = "frame_accuracy"
    best_mode: str = "max"
    early_stopping_patience: int = 0  # > 0: stop after this many epochs without improvement
    # Dev is evaluated after every N-th epoch and after the last one (N > 1 thins the dev curve and
    # the best-checkpoint choice to every N-th epoch; early stopping still counts epochs, so the
    # patience is in effect rounded up to a multiple of N). Training itself does not depend on it:
    # the same weights at every N, bit for bit on the CPU.
    eval_every_epochs: int = later_option(1)
    # Frame-level training only (the hybrid DNNs): each training step computes the network's
    # outputs, and the loss, at every N-th frame of its batch (a random phase per step; the input
    # windows keep every frame), so a step costs about 1/N of the arithmetic. Adjacent 10 ms
    # frames share 25 of a window's 26 input frames and mostly their senone; Kaldi's chain models
    # likewise compute outputs at a third of the frame rate. Dev scoring and inference use every
    # frame. 1: every frame, the recipe's choice: on mini, every 2nd or 3rd frame kept the hard-target
    # students' WER within noise at 0.58x / 0.44x the CPU but made the distilled students worse on
    # test-ood (bench/RESULTS.md "Frame-subsampled training: ...").
    frame_subsampling: int = later_option(1)
    device: str = "auto"  # "auto" (CUDA if present), "cpu", "cuda"

    def __post_init__(self) -> None:
        _check(self.num_epochs >= 1, f"train.num_epochs must be >= 1, got {self.num_epochs}")
        _check(self.max_steps >= 0, f"train.max_steps must be >= 0, got {self.max_steps}")
        _check(self.max_duration > 0, f"train.max_duration must be > 0 seconds, got {self.max_duration}")
        _check(self.num_buckets >= 1, f"train.num_buckets must be >= 1, got {self.num_buckets}")
        _check(self.num_workers >= 0, f"train.num_workers must be >= 0, got {self.num_workers}")
        _check(self.optimizer in OPTIMIZERS, f"train.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _check(0 <= self.momentum < 1, f"train.momentum must be in [0, 1), got {self.momentum}")
        _check(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.lr_schedule in LR_SCHEDULES, f"train.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        _check(self.lr_schedule != "cosine" or self.cosine_steps == 0 or self.cosine_steps > self.warmup_steps,
               f"train.lr_schedule=cosine needs train.cosine_steps > train.warmup_steps (or 0: the whole run), got {self.cosine_steps}")
        _check(0 <= self.final_lr_ratio <= 1, f"train.final_lr_ratio must be in [0, 1], got {self.final_lr_ratio}")
        _check(self.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        _check(self.amp in AMP_MODES, f"train.amp must be one of {AMP_MODES}, got {self.amp!r}")
        for name in ("specaug_freq_masks", "specaug_freq_width", "specaug_time_masks", "specaug_time_width"):
            _check(getattr(self, name) >= 0, f"train.{name} must be >= 0, got {getattr(self, name)}")
        _check(self.checkpoint_every_steps >= 1, f"train.checkpoint_every_steps must be >= 1, got {self.checkpoint_every_steps}")
        _check(self.keep_last_checkpoints >= 1, f"train.keep_last_checkpoints must be >= 1, got {self.keep_last_checkpoints}")
        _check(self.log_every_steps >= 1, f"train.log_every_steps must be >= 1, got {self.log_every_steps}")
        _check(self.best_mode in ("max", "min"), f"train.best_mode must be 'max' or 'min', got {self.best_mode!r}")
        _check(self.early_stopping_patience >= 0, f"train.early_stopping_patience must be >= 0, got {self.early_stopping_patience}")
        _check(self.eval_every_epochs >= 1, f"train.eval_every_epochs must be >= 1, got {self.eval_every_epochs}")
        _check(self.frame_subsampling >= 1, f"train.frame_subsampling must be >= 1 (1 = every frame), got {self.frame_subsampling}")
        _check(self.device in ("auto", "cpu", "cuda"), f"train.device must be auto, cpu or cuda, got {self.device!r}")


# --------------------------------------------------------------------------------------------
# Decoding (HCLG / HLG graphs, hybrid, GMM and CTC decoders)
# --------------------------------------------------------------------------------------------


RESCORE_METHODS = ("arpa", "fst", "const")


@dataclasses.dataclass(frozen=True)
class RescoreConfig:
    """LM rescoring of lattices: the larger LM, how it scores, and how many hypotheses it sees.

    Its own config (not DecodeConfig, whose fields the recipe's stages fingerprint); the lattice's
    beams are DecodeConfig's ``beam`` and ``lattice_beam``. Used by asr_kd.decode.rescore and
    ``asr-kd decode-part --rescore-*`` (whose defaults are these)."""

    arpa: str  # the larger ARPA LM (plain or .gz), with the lang's spelling of words, or a const LM folder
    # "arpa": exact back-off scores (kaldingram, the ARPA read into memory); "const": the same scores
    # from memory-mapped arrays (asr_kd.lang.const_lm, Kaldi's const-ARPA idea: for tglarge-size LMs);
    # "fst": its G.fst, tropical
    method: str = "arpa"
    nbest: int = 100  # word sequences per lattice that are rescored

    def __post_init__(self) -> None:
        if self.method not in RESCORE_METHODS:
            raise ConfigError(f"rescore method must be one of {', '.join(RESCORE_METHODS)}, got {self.method!r}")
        if self.nbest < 1:
            raise ConfigError(f"rescore nbest must be >= 1, got {self.nbest}")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Decoding graphs, the lattice decoder's pruning, and how acoustic scores are scaled."""

    beam: float = 13.0
    max_active: int = 7000
    min_active: int = 200
    lattice_beam: float = 6.0
    # Scale on hybrid/GMM acoustic log-likelihoods relative to the graph (Kaldi's acwt 0.1).
    acoustic_scale: float = GraphScales.acoustic
    # Non-empty: the recipe's stages decode the dev part at each of these scales, keep the one with
    # the fewest word errors per system and decode the test parts with it (asr_kd/decode/tuning.py;
    # Kaldi's score.sh sweeps the LM weight, its inverse, the same way). Empty: acoustic_scale.
    acoustic_scales: tuple[float, ...] = ()
    # Non-empty: a word insertion penalty (a cost added to every word of the decoding graph;
    # negative: a bonus) searched on the dev part beside the acoustic scale, per system, as Kaldi's
    # score.sh sweeps word_ins_penalty (asr_kd/decode/penalty.py, tuning.py): stages 3 and 7 on
    # HCLG, CTC stage 7 on HLG; one value: that penalty, not searched. decode-part and stage 10
    # refuse any value here, decode-part and stage 9 a system decoded with a penalty other than 0.
    # Empty: none.
    insertion_penalties: tuple[float, ...] = later_option(())
    # CTC log-probabilities are usually used unscaled against HLG.
    ctc_acoustic_scale: float = 1.0
    # The same search for the CTC systems' scale on HLG (CTC stage 7): non-empty, each system's
    # scale is chosen on the dev part from these; empty: ctc_acoustic_scale.
    ctc_acoustic_scales: tuple[float, ...] = later_option(())
    # A blank penalty on HLG: subtracted from the blank's log-probability on every frame before the
    # search (icefall's and sherpa-onnx's blank_penalty; positive: emitting a token is cheaper).
    # ctc_blank_penalty is the one applied; ctc_blank_penalties, non-empty, a grid CTC stage 7
    # searches on the dev part beside the scale, per system, the way it searches
    # insertion_penalties (one of the two grids at a time; not beside a ctc_blank_penalty other than
    # 0). decode-part, the model directories of stage 9 (model.json's ctc_blank_penalty) and the
    # sherpa-onnx export decode each system at the one CTC stage 7 chose for it. bench/RESULTS.md
    # "Blank penalty on HLG".
    ctc_blank_penalty: float = later_option(0.0)
    ctc_blank_penalties: tuple[float, ...] = later_option(())
    # Graph construction (Kaldi's mkgraph.sh defaults).
    transition_scale: float = GraphScales.transition
    self_loop_scale: float = GraphScales.self_loop
    # Senone priors: add-count smoothing per senone, then a floor on the probability.
    prior_smoothing: float = 1.0
    prior_floor: float = 1e-8
    # Output the best partial hypothesis when no final state survives (counted, logged).
    allow_partial: bool = True
    num_jobs: int = 1
    # "faster": best path only (FasterDecoder); "lattice": LatticeFasterDecoder. Same best paths;
    # bench/decode_speed.py found "faster" about twice as fast at beam 13.
    decoder: str = "faster"

    def __post_init__(self) -> None:
        _check(self.beam > 0 and self.lattice_beam > 0, f"decode.beam and decode.lattice_beam must be > 0, got {self.beam}, {self.lattice_beam}")
        # Kaldi's decoders check min_active < max_active (an equal pair aborts in C++).
        _check(1 <= self.min_active < self.max_active, f"decode needs 1 <= min_active < max_active, got {self.min_active}, {self.max_active}")
        _check(self.acoustic_scale > 0 and self.ctc_acoustic_scale > 0, "decode.acoustic_scale and decode.ctc_acoustic_scale must be > 0")
        _check(all(s > 0 for s in self.acoustic_scales), f"decode.acoustic_scales must all be > 0, got {list(self.acoustic_scales)}")
        _check(all(s > 0 for s in self.ctc_acoustic_scales), f"decode.ctc_acoustic_scales must all be > 0, got {list(self.ctc_acoustic_scales)}")
        _check(all(math.isfinite(p) for p in self.insertion_penalties),
               f"decode.insertion_penalties must be finite numbers, got {list(self.insertion_penalties)}")
        _check(all(math.isfinite(p) for p in (self.ctc_blank_penalty, *self.ctc_blank_penalties)),
               f"decode.ctc_blank_penalty and decode.ctc_blank_penalties must be finite numbers, got {self.ctc_blank_penalty}, "
               f"{list(self.ctc_blank_penalties)}")
        _check(not (self.ctc_blank_penalties and self.ctc_blank_penalty),
               f"decode.ctc_blank_penalty ({self.ctc_blank_penalty:g}) is set beside the grid decode.ctc_blank_penalties; give one of them")
        _check(len(set(self.insertion_penalties)) < 2 or len(set(self.ctc_blank_penalties)) < 2,
               "decode.insertion_penalties and decode.ctc_blank_penalties are both grids; CTC stage 7 searches one of them beside the "
               "scale: give the other one value (or none)")
        _check(self.transition_scale >= 0 and self.self_loop_scale >= 0, "decode.transition_scale and decode.self_loop_scale must be >= 0")
        _check(self.prior_smoothing >= 0, f"decode.prior_smoothing must be >= 0, got {self.prior_smoothing}")
        _check(0 < self.prior_floor < 1, f"decode.prior_floor must be in (0, 1), got {self.prior_floor}")
        _check(self.num_jobs >= 1, f"decode.num_jobs must be >= 1, got {self.num_jobs}")
        _check(self.decoder in ("faster", "lattice"), f"decode.decoder must be 'faster' or 'lattice', got {self.decoder!r}")

    @property
    def graph_scales(self) -> GraphScales:
        """The acoustic, transition and self-loop scales of HCLG building and decoding."""
        return GraphScales(self.acoustic_scale, self.transition_scale, self.self_loop_scale)


# --------------------------------------------------------------------------------------------
# CTC teachers and students (asr_kd/ctc)
# --------------------------------------------------------------------------------------------

CTC_UNITS = ("phone", "bpe")
CTC_MODEL_SIZES = ("tiny", "mini", "librispeech")
CTC_BLANK_HANDLING = ("include", "exclude", "downweight")
CTC_KD_MODES = ("frame", "sequence")
CTC_KD_SOURCES = ("online", "stored")
CTC_PSEUDO_LABELS = ("greedy", "nbest")


@dataclasses.dataclass(frozen=True)
class CtcConfig:
    """CTC units, the encoder family, the teacher ensemble and how a student learns from it.

    ``units``: "phone" (first pronunciation of each word in the lexicon, OOV words as the OOV
    phone) or "bpe" (sentencepiece pieces trained on the training transcripts). ``kd_mode``:
    "frame" is the paper's recipe on CTC posteriors (``kd_weight * T^2 * KL(teacher_T ||
    student_T)`` per output frame plus ``ctc_weight * CTC(transcript)``), "sequence" trains on the
    ensemble's greedy or n-best hypotheses as pseudo-labels (plus ``ctc_weight`` on the transcript).
    ``blank_handling`` says what the frame-level KL does with frames whose fused teacher argmax is
    blank: "include", "exclude" or "downweight" (weight ``blank_weight``). ``shared_init_steps`` > 0
    trains one checkpoint for that many steps and starts every teacher from it (different seeds
    afterwards), which keeps the teachers' CTC spikes at the same frames. ``guide_weight`` > 0
    trains teachers 1, 2, ... with guided CTC (Kurata & Audhkhasi, "Guiding CTC Posterior Spike
    Timings for Improved Posterior Fusion and Knowledge Distillation", Interspeech 2019): CTC plus
    ``guide_weight *`` (1 - the teacher's mean posterior of the guide's arg-max token on the frames
    where teacher 0, the guide, spikes), which pulls their spikes onto the guide's frames.
    ``phone_init_steps`` > 0 (``units: bpe`` only) trains one phone CTC model for that many steps
    and starts every BPE model of the path (teachers of every set, students of every kind and
    seed) from its encoder, the output layer new: from scratch, BPE models of this size stay on
    CTC's all-blank plateau where phone models leave it within a few hundred steps.
    """

    units: str = "phone"
    bpe_vocab_size: int = 200
    model_size: str = "mini"
    subsampling: int = 4
    dropout: float = 0.1
    num_teachers: int = 2
    shared_init_steps: int = 0
    guide_weight: float = 0.0
    phone_init_steps: int = later_option(0)
    kd_mode: str = "frame"
    kd_source: str = "online"  # "stored": top-k soft targets on the cuts (the hybrid path's storage)
    top_k: int = 10
    fusion: str = "arithmetic"
    temperature: float = 2.0
    kd_weight: float = 1.0
    ctc_weight: float = 0.5
    blank_handling: str = "include"
    blank_weight: float = 0.1
    pseudo_labels: str = "greedy"
    nbest: int = 4
    beam_size: int = 8

    def __post_init__(self) -> None:
        _check(self.units in CTC_UNITS, f"ctc.units must be one of {CTC_UNITS}, got {self.units!r}")
        _check(self.bpe_vocab_size >= 8, f"ctc.bpe_vocab_size must be >= 8, got {self.bpe_vocab_size}")
        _check(self.model_size in CTC_MODEL_SIZES, f"ctc.model_size must be one of {CTC_MODEL_SIZES}, got {self.model_size!r}")
        _check(self.subsampling in (2, 4), f"ctc.subsampling must be 2 or 4, got {self.subsampling}")
        _check(0.0 <= self.dropout < 1.0, f"ctc.dropout must be in [0, 1), got {self.dropout}")
        _check(self.num_teachers >= 1, f"ctc.num_teachers must be >= 1, got {self.num_teachers}")
        _check(self.shared_init_steps >= 0, f"ctc.shared_init_steps must be >= 0, got {self.shared_init_steps}")
        _check(self.guide_weight >= 0, f"ctc.guide_weight must be >= 0, got {self.guide_weight}")
        _check(self.phone_init_steps >= 0, f"ctc.phone_init_steps must be >= 0, got {self.phone_init_steps}")
        _check(self.phone_init_steps == 0 or self.units == "bpe",
               f"ctc.phone_init_steps={self.phone_init_steps} starts BPE models from a phone encoder; with units: {self.units} set it to 0")
        _check(self.kd_mode in CTC_KD_MODES, f"ctc.kd_mode must be one of {CTC_KD_MODES}, got {self.kd_mode!r}")
        _check(self.kd_source in CTC_KD_SOURCES, f"ctc.kd_source must be one of {CTC_KD_SOURCES}, got {self.kd_source!r}")
        _check(self.top_k >= 1, f"ctc.top_k must be >= 1, got {self.top_k}")
        _check(self.fusion in KD_FUSIONS, f"ctc.fusion must be one of {KD_FUSIONS}, got {self.fusion!r}")
        _check(self.temperature > 0, f"ctc.temperature must be > 0, got {self.temperature}")
        _check(self.kd_weight >= 0 and self.ctc_weight >= 0 and self.kd_weight + self.ctc_weight > 0,
               "ctc.kd_weight and ctc.ctc_weight must be >= 0 and not both 0")
        _check(self.blank_handling in CTC_BLANK_HANDLING, f"ctc.blank_handling must be one of {CTC_BLANK_HANDLING}, got {self.blank_handling!r}")
        _check(0.0 <= self.blank_weight <= 1.0, f"ctc.blank_weight must be in [0, 1], got {self.blank_weight}")
        _check(self.pseudo_labels in CTC_PSEUDO_LABELS, f"ctc.pseudo_labels must be one of {CTC_PSEUDO_LABELS}, got {self.pseudo_labels!r}")
        _check(self.nbest >= 1 and self.beam_size >= self.nbest, f"ctc needs 1 <= nbest <= beam_size, got {self.nbest}, {self.beam_size}")
