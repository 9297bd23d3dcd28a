"""Degradations and perturbations that make synthetic speech varied and hard enough for models to
err: additive noise at a chosen SNR (white, pink, brown, babble), reverberation (a statistical
decay, or a shoebox room simulated by the image method), a fixed per-speaker channel colouring
(band-pass plus resonant bumps) or a telephone band, and speaker perturbation: speed (Kaldi's
sox-style) and vocal tract length (VTLP, a warp of the spectral envelope).

All functions are pure: randomness comes in through an explicit ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from dataclasses import dataclass

import numpy as np
import scipy.signal

NOISE_KINDS = ("white", "pink", "brown", "babble")


@dataclass(frozen=True)
class ChannelRecipe:
    """A fixed microphone/channel colouring: a band-pass from ``low_hz`` to ``high_hz`` plus
    resonances at ``peak_hz`` with gains ``peak_db`` (dB, positive or negative)."""

    low_hz: float
    high_hz: float
    peak_hz: tuple[float, ...]
    peak_db: tuple[float, ...]


def random_channel(rng: np.random.Generator, sample_rate: int, *, peak_db: float, low_hz: tuple[float, ...],
                   high_hz: tuple[float, ...], peak_hz: tuple[float, ...]) -> ChannelRecipe:
    """Return a random, plausible channel: a band-pass whose low and high edges are drawn from the
    ranges ``low_hz`` and ``high_hz`` (the high one at most 0.95 x Nyquist), with two resonances at
    frequencies drawn from ``peak_hz`` (below the high edge) and gains from [-peak_db, +peak_db] dB.
    SynthConfig holds the ranges (channel_*), from telephone-like to wide-band."""
    nyquist = sample_rate / 2
    low = float(rng.uniform(low_hz[0], low_hz[1]))
    high = float(min(rng.uniform(high_hz[0], high_hz[1]), 0.95 * nyquist))
    peaks = tuple(float(f) for f in np.sort(rng.uniform(peak_hz[0], min(high, peak_hz[1]), size=2)))
    gains = tuple(float(g) for g in rng.uniform(-peak_db, peak_db, size=2))
    return ChannelRecipe(low_hz=round(low, 1), high_hz=round(high, 1), peak_hz=tuple(round(f, 1) for f in peaks), peak_db=tuple(round(g, 2) for g in gains))


def apply_channel(x: np.ndarray, channel: ChannelRecipe, sample_rate: int) -> np.ndarray:
    """Return ``x`` filtered by ``channel`` (same length, float32)."""
    sos = scipy.signal.butter(2, [channel.low_hz, channel.high_hz], btype="bandpass", fs=sample_rate, output="sos")
    y = scipy.signal.sosfilt(sos, x)
    for freq, gain_db in zip(channel.peak_hz, channel.peak_db):
        # A resonance: add (or subtract) a narrow band around ``freq``; the gain at ``freq`` is
        # 10**(gain_db/20) because the band-pass has unit gain at its centre.
        b, a = scipy.signal.iirpeak(freq, Q=2.0, fs=sample_rate)
        y = y + (10 ** (gain_db / 20.0) - 1.0) * scipy.signal.lfilter(b, a, y)
    return y.astype(np.float32)


def colored_noise(kind: str, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Return unit-power noise of ``kind`` (``white``: flat; ``pink``: power ~ 1/f; ``brown``:
    power ~ 1/f^2), shaped in the frequency domain."""
    if kind not in ("white", "pink", "brown"):
        raise ValueError(f"unknown noise kind {kind!r}")
    white = rng.standard_normal(num_samples)
    if kind == "white":
        noise = white
    else:
        spectrum = np.fft.rfft(white)
        freqs = np.arange(len(spectrum), dtype=np.float64)
        freqs[0] = 1.0  # avoid dividing by zero at DC; DC is removed below anyway
        exponent = 0.5 if kind == "pink" else 1.0  # amplitude ~ f^-exponent
        spectrum = spectrum / freqs**exponent
        spectrum[0] = 0.0
        noise = np.fft.irfft(spectrum, n=num_samples)
    power = float(np.mean(noise**2)) or 1.0
    return (noise / math.sqrt(power)).astype(np.float32)


def loop_segment(source: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Return ``num_samples`` samples of ``source`` from a random offset, wrapping around."""
    offset = int(rng.integers(0, len(source)))
    idx = (offset + np.arange(num_samples)) % len(source)
    return source[idx]


def synthetic_rir(rt60: float, sample_rate: int, rng: np.random.Generator, direct_to_reverb_db: float = 3.0) -> np.ndarray:
    """Return a room impulse response: a unit direct path followed (after a short pre-delay) by
    exponentially decaying Gaussian noise whose energy falls by 60 dB in ``rt60`` seconds, scaled
    so that the direct path carries ``direct_to_reverb_db`` more energy than the tail."""
    length = max(int(1.2 * rt60 * sample_rate), 2)
    t = np.arange(length) / sample_rate
    # Energy decays as exp(-13.8 t / rt60) (60 dB = ln(10^6) = 13.8 nepers); amplitude at half that rate.
    tail = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)
    predelay = int(rng.uniform(0.002, 0.01) * sample_rate)
    tail[: predelay + 1] = 0.0
    tail_energy = float(np.sum(tail**2)) or 1.0
    tail *= math.sqrt(10 ** (-direct_to_reverb_db / 10.0) / tail_energy)
    rir = tail
    rir[0] = 1.0
    return rir.astype(np.float32)


def apply_rir(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Return ``x`` convolved with ``rir``, cut to the length of ``x`` (the tail that would run
    past the end is dropped, as a recording would stop)."""
    return scipy.signal.fftconvolve(x, rir, mode="full")[: len(x)].astype(np.float32)


def scale_noise_to_snr(signal_power: float, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Return ``noise`` scaled so that 10*log10(signal_power / noise power) equals ``snr_db``."""
    noise_power = float(np.mean(noise.astype(np.float64) ** 2))
    if noise_power <= 0.0:
        return noise
    target = signal_power / (10 ** (snr_db / 10.0))
    return (noise * math.sqrt(target / noise_power)).astype(np.float32)


def active_power(x: np.ndarray, frame: int = 400, floor_db: float = -40.0) -> float:
    """Return the mean power of the frames of ``x`` within ``floor_db`` of its loudest frame, i.e.
    the power of the speech itself rather than of the pauses (0.0 for silence)."""
    n = len(x) // frame
    if n == 0:
        return float(np.mean(x.astype(np.float64) ** 2)) if len(x) else 0.0
    frames = x[: n * frame].astype(np.float64).reshape(n, frame)
    powers = np.mean(frames**2, axis=1)
    peak = float(powers.max())
    if peak <= 0.0:
        return 0.0
    active = powers[powers >= peak * 10 ** (floor_db / 10.0)]
    return float(active.mean())


@dataclass(frozen=True)
class DegradationRanges:
    """What ``difficulty`` means, as ranges to draw from per utterance."""

    noise_prob: float
    snr_db: tuple[float, float]
    reverb_prob: float
    rt60_s: tuple[float, float]
    channel: bool


def degradation_ranges(difficulty: float, *, snr_spread_db: float, reverb_prob: float, rt60_scale: float) -> DegradationRanges:
    """Return the degradation ranges for ``difficulty`` d in [0, 3]: 0 is clean; from d = 1 every
    utterance is noisy (a share d below), at an SNR drawn from (28 - 12 d) +- ``snr_spread_db`` dB,
    and a share min(1, ``reverb_prob`` x d) is reverberant, with RT60 drawn from ``rt60_scale`` x
    (0.1 + 0.1 d .. 0.2 + 0.3 d) s. SynthConfig's defaults give, at d = 1, SNR 6..26 dB, 60%
    reverberant, RT60 0.2..0.5 s."""
    d = float(difficulty)
    if d <= 0.0:
        return DegradationRanges(noise_prob=0.0, snr_db=(math.inf, math.inf), reverb_prob=0.0, rt60_s=(0.0, 0.0), channel=False)
    centre = 28.0 - 12.0 * d
    return DegradationRanges(
        noise_prob=min(1.0, d),
        snr_db=(centre - snr_spread_db, centre + snr_spread_db),
        reverb_prob=min(1.0, reverb_prob * d),
        rt60_s=(rt60_scale * (0.1 + 0.1 * d), rt60_scale * (0.2 + 0.3 * d)),
        channel=True,
    )


# --------------------------------------------------------------------------------------------
# Speaker perturbation: speed and vocal tract length
# --------------------------------------------------------------------------------------------


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """Return ``x`` played ``factor`` times faster, as Kaldi's speed perturbation (sox ``speed``):
    the length becomes ``len(x) / factor`` and every frequency (pitch and formants) is multiplied
    by ``factor``."""
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    if factor == 1.0:
        return x.astype(np.float32)
    ratio = Fraction(factor).limit_denominator(100)
    # Resampling by q/p and reading the result at the original rate plays it p/q times faster.
    return scipy.signal.resample_poly(x, ratio.denominator, ratio.numerator).astype(np.float32)


def vtlp_warp_frequencies(freqs: np.ndarray, alpha: float, sample_rate: int, boundary_hz: float = 4800.0) -> np.ndarray:
    """Return the warped frequencies of vocal tract length perturbation (Jaitly & Hinton 2013):
    ``alpha * f`` below a boundary ``boundary_hz * min(alpha, 1) / alpha``, then the straight
    line that maps the Nyquist frequency onto itself, so the warp stays inside the band."""
    nyquist = sample_rate / 2.0
    f_hi = boundary_hz * min(alpha, 1.0) / alpha
    upper = nyquist - (nyquist - alpha * f_hi) * (nyquist - freqs) / (nyquist - f_hi)
    return np.where(freqs <= f_hi, alpha * freqs, upper)


def vtlp(x: np.ndarray, alpha: float, sample_rate: int, n_fft: int = 512, lifter: int = 30) -> np.ndarray:
    """Return ``x`` with its spectral envelope warped by ``alpha`` (> 1 moves formants up, as a
    shorter vocal tract; < 1 down), pitch and length unchanged.

    Each STFT frame is split into a smooth envelope (the first ``lifter`` cepstral coefficients,
    under 2 ms of quefrency, below any voice's pitch period) and the rest (harmonics); the frame
    is multiplied by ``E(w^-1(f)) / E(f)``, so the envelope moves along the warp ``w``
    (:func:`vtlp_warp_frequencies`) while the harmonics stay where the pitch puts them. Warping
    the magnitude itself would also stretch the harmonic comb and sample it between harmonics."""
    if alpha == 1.0 or len(x) < n_fft:
        return x.astype(np.float32)
    hop = n_fft // 4
    _, _, spec = scipy.signal.stft(x, fs=sample_rate, nperseg=n_fft, noverlap=n_fft - hop)
    log_mag = np.log(np.abs(spec) + 1e-8)
    cepstrum = np.fft.irfft(log_mag, n=n_fft, axis=0)
    cepstrum[lifter : n_fft - lifter + 1] = 0.0
    envelope = np.fft.rfft(cepstrum, axis=0).real  # log envelope, one column per frame
    freqs = np.linspace(0.0, sample_rate / 2.0, spec.shape[0])
    # The warp is monotonic: the envelope at output frequency g is the input's at w^-1(g).
    source = np.interp(freqs, vtlp_warp_frequencies(freqs, alpha, sample_rate), freqs) / freqs[1]
    lo = np.clip(np.floor(source).astype(int), 0, len(freqs) - 2)
    frac = (source - lo)[:, None]
    warped = envelope[lo] * (1.0 - frac) + envelope[lo + 1] * frac
    _, y = scipy.signal.istft(spec * np.exp(warped - envelope), fs=sample_rate, nperseg=n_fft, noverlap=n_fft - hop)
    return y[: len(x)].astype(np.float32)


def telephone_band(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Return ``x`` as through a narrow-band telephone channel: 300-3400 Hz band-pass and a trip
    through 8 kHz sampling (nothing above 4 kHz survives); same length."""
    sos = scipy.signal.butter(4, [300.0, 3400.0], btype="bandpass", fs=sample_rate, output="sos")
    y = scipy.signal.sosfilt(sos, x)
    g = np.gcd(sample_rate, 8000)
    narrow = scipy.signal.resample_poly(y, 8000 // g, sample_rate // g)
    back = scipy.signal.resample_poly(narrow, sample_rate // g, 8000 // g)
    out = np.zeros(len(x), dtype=np.float32)
    out[: min(len(x), len(back))] = back[: len(x)]
    return out


# --------------------------------------------------------------------------------------------
# Simulated rooms: the image method (Allen & Berkley 1979) for a shoebox room
# --------------------------------------------------------------------------------------------

SPEED_OF_SOUND = 343.0  # m/s


def image_method_rir(
    room: tuple[float, float, float], source: tuple[float, float, float], mic: tuple[float, float, float],
    rt60: float, sample_rate: int, max_seconds: float | None = None,
) -> np.ndarray:
    """Return the impulse response from ``source`` to ``mic`` (metres) in a shoebox ``room``
    whose six walls share one reflection coefficient, chosen by Sabine's formula so that the
    reverberation time is ``rt60`` seconds; the direct path has amplitude 1 at sample 0 (the
    propagation delay to the nearest path is removed). Every mirror image of the source up to
    the order whose delay exceeds ``max_seconds`` (default ``rt60``) is summed, each delayed by
    its distance over the speed of sound (to the nearest sample) and scaled by
    ``beta ** reflections / distance``."""
    dims = np.asarray(room, dtype=np.float64)
    src, dst = np.asarray(source, dtype=np.float64), np.asarray(mic, dtype=np.float64)
    if np.any(src <= 0) or np.any(src >= dims) or np.any(dst <= 0) or np.any(dst >= dims):
        raise ValueError(f"source {source} and microphone {mic} must lie inside the room {room}")
    volume = float(np.prod(dims))
    surface = 2.0 * (dims[0] * dims[1] + dims[0] * dims[2] + dims[1] * dims[2])
    # Sabine: rt60 = 0.161 V / (S a) with absorption a = 1 - beta^2.
    absorption = min(0.161 * volume / (surface * rt60), 0.99)
    beta = math.sqrt(1.0 - absorption)
    max_seconds = rt60 if max_seconds is None else max_seconds
    order = np.ceil(max_seconds * SPEED_OF_SOUND / dims).astype(int)
    # Image positions per axis: 2 n L + s and 2 n L - s, with |2n| and |2n - 1| wall reflections.
    axes = []
    for k in range(3):
        n = np.arange(-order[k], order[k] + 1)
        positions = np.concatenate([2 * n * dims[k] + src[k], 2 * n * dims[k] - src[k]])
        reflections = np.concatenate([np.abs(2 * n), np.abs(2 * n - 1)])
        axes.append((positions - dst[k], reflections))
    dx, dy, dz = (a[0] for a in axes)
    rx, ry, rz = (a[1] for a in axes)
    distance = np.sqrt(dx[:, None, None] ** 2 + dy[None, :, None] ** 2 + dz[None, None, :] ** 2).ravel()
    reflections = (rx[:, None, None] + ry[None, :, None] + rz[None, None, :]).ravel()
    nearest = float(distance.min())
    delay = np.round((distance - nearest) / SPEED_OF_SOUND * sample_rate).astype(int)
    length = int(max_seconds * sample_rate) + 1
    keep = delay < length
    gains = beta ** reflections[keep] * (nearest / distance[keep])
    rir = np.bincount(delay[keep], weights=gains, minlength=length)[:length]
    return rir.astype(np.float32)


def random_room(rng: np.random.Generator) -> tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]:
    """Return a random living-room to hall sized shoebox (3x3x2.4 to 10x8x4 m) and a source and
    microphone in it, at least 0.5 m from the walls and 0.5 to 3 m apart (as ``(room, source,
    mic)``, metres)."""
    room = tuple(float(v) for v in (rng.uniform(3.0, 10.0), rng.uniform(3.0, 8.0), rng.uniform(2.4, 4.0)))
    dims = np.asarray(room)
    source = rng.uniform(0.5, dims - 0.5)
    source[2] = rng.uniform(1.2, min(1.9, dims[2] - 0.3))  # a talker's mouth height
    for _ in range(100):  # draw the microphone until it is 0.5-3 m away and inside the room
        direction = rng.normal(size=3)
        direction[2] *= 0.3
        mic = source + rng.uniform(0.5, 3.0) * direction / np.linalg.norm(direction)
        if np.all(mic > 0.3) and np.all(mic < dims - 0.3):
            break
    else:
        mic = dims / 2.0
    return room, tuple(float(v) for v in source), tuple(float(v) for v in mic)  # type: ignore[return-value]


def room_rir(rt60: float, sample_rate: int, rng: np.random.Generator, early_seconds: float = 0.05) -> np.ndarray:
    """Return the impulse response of a random room (:func:`random_room`) with reverberation time
    ``rt60``: the image method for the first ``early_seconds`` (the room's own pattern of early
    reflections) and, after it, a statistical tail of Gaussian noise decaying by 60 dB in ``rt60``
    that starts at the level of the last 10 ms of the early part. The image method alone would
    need thousands of images per utterance for the tail and, with Sabine's wall coefficient,
    decays too slowly in long narrow rooms; the noise tail has the requested decay by construction."""
    room, source, mic = random_room(rng)
    early = image_method_rir(room, source, mic, rt60, sample_rate, max_seconds=early_seconds)
    length = max(int(1.2 * rt60 * sample_rate), len(early) + 1)
    t = np.arange(length - len(early)) / sample_rate
    window = early[-int(0.01 * sample_rate):]
    level = math.sqrt(float(np.mean(window.astype(np.float64) ** 2)))
    tail = rng.standard_normal(len(t)) * level * np.exp(-6.9 * t / rt60)
    return np.concatenate([early, tail]).astype(np.float32)
