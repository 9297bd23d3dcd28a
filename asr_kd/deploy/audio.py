"""Reading audio files for transcription: any format libsndfile reads (wav, flac, ogg, mp3 with
libsndfile >= 1.1), any sample rate (resampled), mono or multi-channel (averaged to mono)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from asr_kd.errors import DataError


def load_audio(path: Path | str, sampling_rate: int) -> np.ndarray:
    """Return the samples of ``path`` as float32 in [-1, 1], mono, at ``sampling_rate``.

    Channels are averaged; another sample rate is resampled (polyphase filter). Raises DataError naming the file for a missing, unreadable or empty file.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory, not an audio file; pass the files in it (e.g. {path}/*.wav)")
    if not path.is_file():
        raise DataError(f"{path}: no such audio file")
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile raises its own error types for every kind of bad file
        raise DataError(f"{path}: cannot read audio ({str(err).splitlines()[0][:120]}); convert it to wav or flac") from None
    if samples.shape[0] == 0:
        raise DataError(f"{path}: the file holds no audio samples")
    mono = samples.mean(axis=1)
    if not np.all(np.isfinite(mono)):
        raise DataError(f"{path}: the audio has NaN or infinite samples")
    if rate != sampling_rate:
        mono = resample(mono, rate, sampling_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Return ``samples`` (1-D float32) resampled from ``from_rate`` to ``to_rate`` Hz by a
    polyphase filter (scipy; torchaudio's native library does not load beside every torch build)."""
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(from_rate), int(to_rate))
    return resample_poly(samples.astype(np.float64), int(to_rate) // g, int(from_rate) // g).astype(np.float32)
