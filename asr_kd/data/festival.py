"""The Festival speech synthesiser (Debian's ``festival`` with its diphone voices), driven through
``text2wave``: a second synthesiser family beside espeak-ng, so that the corpus does not teach
one engine's artefacts.

Only the American English diphone voices ``kal_diphone`` and ``ked_diphone`` are used
(Debian ``festvox-kallpc16k``, ``festvox-kdlpc16k``). Voices built from the CMU ARCTIC recordings
(``us-slt-hts``, ``cmu_us_*``) and Debian's ``flite`` are reserved for evaluation and must never
be used here; :func:`check_voice` refuses them. Festival is optional: :func:`available_voices`
returns what is installed, and ``local/install_system_packages.sh`` installs it.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr_kd.errors import DataError

# The English voices the corpus may use, with the speaker's natural mean F0 in Hz (measured on
# their output) so that a requested pitch is a shift from it.
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone")
# Never: reserved for evaluation (CMU ARCTIC-derived voices and anything flite-based).
_FORBIDDEN = ("arctic", "cmu_us", "slt", "flite")
_VOICE_DIRS = (Path("/usr/share/festival/voices/english"), Path("/usr/lib/festival/voices/english"))
SAMPLE_RATE = 16000
_TIMEOUT_S = 60


@dataclass(frozen=True)
class FestivalSettings:
    """How Festival should speak: ``voice`` one of :data:`FESTIVAL_VOICES`; ``duration_stretch``
    > 1 is slower; ``f0_mean`` and ``f0_std`` (Hz) are the targets of the voice's intonation
    model (linear-regression F0 targets, mapped from the model's own mean and deviation)."""

    voice: str = "kal_diphone"
    duration_stretch: float = 1.0
    f0_mean: float = 105.0
    f0_std: float = 15.0


def check_voice(voice: str) -> None:
    """Raise DataError unless ``voice`` is one of the allowed Festival voices."""
    if any(bad in voice.lower() for bad in _FORBIDDEN):
        raise DataError(f"Festival voice {voice!r} is reserved for evaluation (CMU ARCTIC / flite) and must not be used for training data")
    if voice not in FESTIVAL_VOICES:
        raise DataError(f"unknown Festival voice {voice!r}; use one of {FESTIVAL_VOICES}")


@functools.lru_cache(maxsize=1)
def available_voices() -> tuple[str, ...]:
    """Return the allowed Festival voices installed on this machine (empty without
    ``text2wave``)."""
    if shutil.which("text2wave") is None:
        return ()
    return tuple(v for v in FESTIVAL_VOICES if any((d / v).is_dir() for d in _VOICE_DIRS))


def synthesize(text: str, settings: FestivalSettings) -> np.ndarray:
    """Speak ``text`` with Festival; return float32 samples at :data:`SAMPLE_RATE`. Festival is
    deterministic, so no seed is needed."""
    check_voice(settings.voice)
    if settings.voice not in available_voices():
        raise DataError(f"Festival voice {settings.voice} is not installed; run local/install_system_packages.sh (as root)")
    # int_lr_params maps the voice model's F0 statistics onto the targets: the whole contour moves
    # to the new mean and is scaled to the new deviation.
    commands = [
        f"(voice_{settings.voice})",
        f"(Parameter.set 'Duration_Stretch {settings.duration_stretch:.4f})",
        "(set! int_lr_params (list (list 'target_f0_mean "
        f"{settings.f0_mean:.2f}) (list 'target_f0_std {settings.f0_std:.2f}) "
        "(list 'model_f0_mean 170) (list 'model_f0_std 34)))",
    ]
    argv = ["text2wave", "-otype", "raw", "-F", str(SAMPLE_RATE), "-o", "-"]
    for command in commands:
        argv += ["-eval", command]
    try:
        proc = subprocess.run(argv, input=text.encode("utf-8"), capture_output=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataError(f"Festival's text2wave failed on {text[:60]!r} ({err}); check the festival install") from None
    if proc.returncode != 0 or not proc.stdout:
        message = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no audio"]
        raise DataError(f"Festival's text2wave failed on {text[:60]!r} with voice {settings.voice}: {message[0]}")
    # Raw output is 16-bit samples in the machine's byte order.
    samples = np.frombuffer(proc.stdout, dtype=np.int16)
    return (samples.astype(np.float32) / 32768.0).astype(np.float32)
