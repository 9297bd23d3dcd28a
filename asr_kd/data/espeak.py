"""A minimal ctypes binding to the libespeak-ng bundled in the ``espeakng-loader`` wheel.

Only what the synthetic corpus and the lexicon need: initialise once per process in synchronous
mode, pick a voice (language plus variant, e.g. ``en-us+m3``), set rate/pitch/range, synthesise a
string into a float32 waveform collected by a callback, and turn text into IPA phonemes
(:meth:`EspeakSynthesizer.phonemize`, the grapheme-to-phoneme fallback of stage 2).

libespeak-ng keeps global state (one current voice, one set of parameters, one callback), so a
process must never synthesise from two threads at once; use one process per worker instead.
"""

from __future__ import annotations

import ctypes
import logging
import os
import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from asr_kd.errors import DataError

logger = logging.getLogger(__name__)

# Values of the enums in espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_ESPEAK_VOLUME = 2
_ESPEAK_PITCH = 3
_ESPEAK_RANGE = 4
_ESPEAK_WORDGAP = 7
_EE_OK = 0
# espeak_TextToPhonemes' phonememode: bit 1 asks for IPA (UTF-8); bits 8-23 hold the character
# written between phonemes (see EspeakSynthesizer.phonemize's ``separator``).
_PHONEMES_IPA = 0x02

# int callback(short *wav, int numsamples, espeak_EVENT *events); events are not needed here.
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class VoiceSettings:
    """How espeak-ng should speak: ``voice`` is ``language+variant`` (e.g. ``en-us+f2``);
    ``rate`` in words per minute (80..450), ``pitch`` and ``pitch_range`` in 0..100 (50 is the
    voice's default), ``word_gap`` extra pause between words in units of 10 ms, ``volume`` in
    0..200 (100 is espeak's default; the British and Caribbean accents clip a few samples at 100)."""

    voice: str = "en-us"
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0
    volume: int = 100


class EspeakSynthesizer:
    """The process-wide espeak-ng engine. Create it once per process (see :func:`get_synthesizer`)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:  # pragma: no cover - a declared dependency
            raise DataError("the espeakng-loader package is missing; run `pip install -e .` in the repository") from err
        lib_path = Path(espeakng_loader.get_library_path())
        data_path = Path(espeakng_loader.get_data_path())
        if not lib_path.is_file():
            raise DataError(f"{lib_path} is missing; reinstall espeakng-loader (`pip install --force-reinstall espeakng-loader`)")
        self._lib = ctypes.CDLL(str(lib_path))
        self._declare_functions()
        # Synchronous mode: espeak_Synth returns only when the whole text is synthesised, having
        # delivered the audio through the callback in chunks of ``buflength`` ms.
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 200, str(data_path).encode(), 0)
        if rate <= 0:
            raise DataError(f"espeak-ng failed to initialise with data {data_path}; reinstall espeakng-loader")
        self.sample_rate: int = int(rate)
        self._chunks: list[np.ndarray] = []
        # Keep a reference: ctypes would otherwise free the trampoline while C still holds it.
        self._callback = _SYNTH_CALLBACK(self._collect)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()
        self._current: VoiceSettings | None = None
        self._data_path = data_path
        self._variants = frozenset(available_variants())

    def _declare_functions(self) -> None:
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), numsamples: int, events: int) -> int:  # type: ignore[valid-type]
        # A NULL buffer marks the end of synthesis; otherwise copy the chunk out of C memory.
        if wav and numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0  # 0 = continue synthesis

    def _apply(self, settings: VoiceSettings) -> None:
        if settings == self._current:
            return
        # espeak-ng silently falls back to the plain voice for an unknown variant: check it here.
        _, _, variant = settings.voice.partition("+")
        if variant and variant not in self._variants:
            raise DataError(f"espeak-ng has no voice variant {variant!r}; use a name from {self._data_path / 'voices' / '!v'}")
        if self._lib.espeak_SetVoiceByName(settings.voice.encode()) != _EE_OK:
            raise DataError(f"espeak-ng has no voice {settings.voice!r}; use a name from espeak-ng-data/voices/!v")
        for param, value in (
            (_ESPEAK_RATE, settings.rate),
            (_ESPEAK_PITCH, settings.pitch),
            (_ESPEAK_RANGE, settings.pitch_range),
            (_ESPEAK_WORDGAP, settings.word_gap),
            (_ESPEAK_VOLUME, settings.volume),
        ):
            self._lib.espeak_SetParameter(param, int(value), 0)
        self._current = settings

    def synthesize(self, text: str, settings: VoiceSettings, seed: int = 0) -> np.ndarray:
        """Speak ``text`` with ``settings``; return float32 samples in [-1, 1] at
        :attr:`sample_rate` (22050 Hz for the bundled data). ``seed`` seeds espeak-ng's own
        random generator (breathy voices such as ``f2`` and the Klatt voices draw noise from it;
        it is otherwise seeded from the clock)."""
        with self._lock:
            self._apply(settings)
            self._lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
            self._chunks = []
            data = text.encode("utf-8") + b"\0"
            buf = ctypes.create_string_buffer(data, len(data))
            err = self._lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
            if err != _EE_OK:
                raise DataError(f"espeak-ng failed (error {err}) on text {text[:60]!r}")
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return (np.concatenate(chunks).astype(np.float32) / 32768.0).astype(np.float32)

    def phonemize(self, text: str, voice: str = "en-us", separator: str = " ") -> str:
        """Return espeak-ng's IPA phonemes of ``text`` read with ``voice``'s rules: phonemes
        separated by ``separator`` (a space by default, so that multi-letter phonemes such as
        "tʃ" stay whole; "" writes each word's phonemes together, words then separated by
        spaces), stress marks (ˈ ˌ) before stressed vowels, clauses by spaces."""
        mode = _PHONEMES_IPA | (ord(separator) << 8 if separator else 0)
        with self._lock:
            self._apply(dataclasses.replace(self._current or VoiceSettings(), voice=voice))
            buf = ctypes.create_string_buffer(text.encode("utf-8") + b"\0")
            cursor = ctypes.c_void_p(ctypes.addressof(buf))
            clauses = []
            # Each call reads one clause and moves the cursor on; it becomes NULL at the end.
            while cursor.value:
                out = self._lib.espeak_TextToPhonemes(ctypes.byref(cursor), _ESPEAK_CHARS_UTF8, mode)
                if out:
                    clauses.append(out.decode("utf-8").strip())
        return " ".join(c for c in clauses if c)

    def synthesize_isolated(self, text: str, settings: VoiceSettings, seed: int = 0) -> np.ndarray:
        """Like :meth:`synthesize`, but in a forked child process, so that this process's engine
        state stays as it was after initialisation; return float32 samples.

        libespeak-ng carries state from one utterance to the next (pitch-flutter phase, wave
        phase, filter memories), so the same text twice in one process gives slightly different
        samples. Synthesising every utterance from the same pristine state makes the corpus
        deterministic whatever the order and the process that renders each utterance.
        """

        def child() -> bytes:
            audio = self.synthesize(text, settings, seed)
            return np.round(audio * 32768.0).clip(-32768, 32767).astype("<i2").tobytes()

        data = _in_child(child, f"espeak-ng synthesis failed in a child process for text {text[:60]!r} with voice {settings.voice!r}")
        samples = np.frombuffer(data, dtype="<i2")
        return (samples.astype(np.float32) / 32768.0).astype(np.float32)

    def phonemize_isolated(self, text: str, voice: str = "en-us", separator: str = " ") -> str:
        """Like :meth:`phonemize`, in a forked child, so that the engine state (which the
        translator changes) stays as it was and synthesis stays deterministic."""
        data = _in_child(lambda: self.phonemize(text, voice, separator).encode("utf-8"),
                         f"espeak-ng phonemisation failed for text {text[:60]!r}")
        return data.decode("utf-8")


def _in_child(work: Callable[[], bytes], error: str) -> bytes:
    """Run ``work`` in a forked child process and return the bytes it produced; raise DataError
    with ``error`` if the child fails. The child exits without running any Python clean-up."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 1
        try:
            os.close(read_fd)
            view = memoryview(work())
            while view:
                view = view[os.write(write_fd, view):]
            os.close(write_fd)
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as pipe:
        while chunk := pipe.read(1 << 20):
            chunks.append(chunk)
    _, wait_status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(wait_status) != 0:
        raise DataError(error)
    return b"".join(chunks)


_SYNTHESIZER: EspeakSynthesizer | None = None


def get_synthesizer() -> EspeakSynthesizer:
    """Return this process's espeak-ng engine, initialising it on first use."""
    global _SYNTHESIZER  # one engine per process: libespeak-ng itself is a process-wide singleton
    if _SYNTHESIZER is None:
        _SYNTHESIZER = EspeakSynthesizer()
    return _SYNTHESIZER


def available_variants() -> list[str]:
    """Return the names of the voice variants shipped in the bundled espeak-ng data (``m1``,
    ``f2``, ``klatt``...), sorted."""
    import espeakng_loader

    vdir = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return sorted(p.name for p in vdir.iterdir() if p.is_file())
