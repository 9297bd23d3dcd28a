"""Stage 1: acoustic features stored with lilcom through lhotse, and CMVN statistics.

Two kinds of features come out of this module, both with a 10 ms frame shift:

- ``fbank``: 40 log mel filter-bank coefficients, the input of the paper's networks;
- ``mfcc``: 13 cepstra, the input of the GMM-HMM systems (deltas are added there).

Two implementations compute them (``FeatureConfig.backend``): lhotse's Kaldi-compatible
extractors (PyTorch) and ``kaldi-native-fbank`` (C++); ``bench/feature_speed.py`` measures both
side by side. Audio that cannot be decoded, is shorter than one frame or gives non-finite
features is skipped, counted and logged, not silently lost. CMVN statistics (per speaker or
global) are accumulated on the way.

Audio of any rate and channel count goes in: a cut whose recording is not at
``FeatureConfig.sampling_rate`` is resampled on the fly (lhotse's ``Cut.resample``, recorded in
the cut manifests as a transform of the recording, so features and cuts agree), and
multi-channel audio is averaged to one channel (``channel: mix``, the default) or one channel is
taken (``channel: "1"``); a cut lacking the chosen channel is skipped and listed.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from lhotse import CutSet, Features, LilcomChunkyWriter
from lhotse.cut import Cut
from tqdm import tqdm

from asr_kd.config import FeatureConfig
from asr_kd.data.librispeech import audio_error_reason, manifest_path, read_manifest
from asr_kd.errors import DataError
from asr_kd.utils import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

FEATURE_KINDS = ("fbank", "mfcc")
FeatureFn = Callable[[np.ndarray], np.ndarray]


def feature_dim(kind: str, cfg: FeatureConfig) -> int:
    """Number of coefficients per frame of ``kind``."""
    return cfg.num_mel_bins if kind == "fbank" else cfg.num_ceps


def min_samples(cfg: FeatureConfig) -> int:
    """The fewest samples that make one feature frame: one analysis window (400 at 16 kHz with
    25 ms windows). Shorter audio crashes lhotse's extractor inside torch (under 140 samples)
    or gives frames made mostly of padding."""
    return int(round(cfg.frame_length * cfg.sampling_rate))


def make_extractor(kind: str, cfg: FeatureConfig, backend: str | None = None) -> FeatureFn:
    """Return a function mapping float32 samples in [-1, 1] (1-D) to a (frames x dim) array.

    Frames follow lhotse's convention (no edge snipping: ``round(samples / shift)`` frames).
    The function raises DataError for audio shorter than :func:`min_samples`.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; expected one of {FEATURE_KINDS}")
    backend = backend or cfg.backend
    if backend == "lhotse":
        extract = _lhotse_extractor(kind, cfg)
    elif backend == "kaldi-native-fbank":
        extract = _knf_extractor(kind, cfg)
    else:
        raise ValueError(f"unknown feature backend {backend!r}")

    def checked(samples: np.ndarray) -> np.ndarray:
        short = too_short(samples.shape[-1], cfg)
        if short is not None:
            raise DataError(short)
        return extract(samples)

    return checked


def too_short(num_samples: int, cfg: FeatureConfig) -> str | None:
    """Return why ``num_samples`` samples give no feature frame under ``cfg``, or None when they
    fill at least one window (:func:`min_samples`)."""
    if num_samples >= min_samples(cfg):
        return None
    return (f"audio too short for one frame ({num_samples} samples; one frame needs {min_samples(cfg)}, "
            f"{cfg.frame_length * 1000:g} ms at {cfg.sampling_rate} Hz)")


def _lhotse_extractor(kind: str, cfg: FeatureConfig) -> FeatureFn:
    from lhotse.features.kaldi.extractors import Fbank, FbankConfig, Mfcc, MfccConfig

    common = dict(sampling_rate=cfg.sampling_rate, frame_length=cfg.frame_length, frame_shift=cfg.frame_shift, dither=0.0)
    if kind == "fbank":
        ext = Fbank(FbankConfig(num_filters=cfg.num_mel_bins, **common))
    else:
        ext = Mfcc(MfccConfig(num_ceps=cfg.num_ceps, **common))

    def extract(samples: np.ndarray) -> np.ndarray:
        return np.asarray(ext.extract(samples, cfg.sampling_rate), dtype=np.float32)

    return extract


def _knf_extractor(kind: str, cfg: FeatureConfig) -> FeatureFn:
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions() if kind == "fbank" else knf.MfccOptions()
    opts.frame_opts.samp_freq = float(cfg.sampling_rate)
    opts.frame_opts.frame_shift_ms = cfg.frame_shift * 1000.0
    opts.frame_opts.frame_length_ms = cfg.frame_length * 1000.0
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    if kind == "fbank":
        opts.mel_opts.num_bins = cfg.num_mel_bins
    else:
        opts.num_ceps = cfg.num_ceps
    make = knf.OnlineFbank if kind == "fbank" else knf.OnlineMfcc

    def extract(samples: np.ndarray) -> np.ndarray:
        comp = make(opts)
        comp.accept_waveform(float(cfg.sampling_rate), samples)
        comp.input_finished()
        n = comp.num_frames_ready
        if n == 0:
            return np.zeros((0, feature_dim(kind, cfg)), dtype=np.float32)
        return np.stack([comp.get_frame(i) for i in range(n)]).astype(np.float32)

    return extract


# --------------------------------------------------------------------------------------------
# CMVN
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CmvnStats:
    """Per-key (speaker, or ``"global"``) counts, sums and sums of squares of feature frames."""

    keys: list[str]
    count: np.ndarray  # (K,)
    sum: np.ndarray  # (K, D)
    sumsq: np.ndarray  # (K, D)

    @classmethod
    def empty(cls, dim: int) -> "CmvnStats":
        """Return statistics with no key yet."""
        return cls([], np.zeros(0), np.zeros((0, dim)), np.zeros((0, dim)))

    def accumulate(self, key: str, feats: np.ndarray) -> None:
        """Add the frames of ``feats`` (T x D) to ``key``'s statistics."""
        if key not in self.keys:
            self.keys.append(key)
            dim = self.sum.shape[1]
            self.count = np.append(self.count, 0.0)
            self.sum = np.vstack([self.sum, np.zeros((1, dim))])
            self.sumsq = np.vstack([self.sumsq, np.zeros((1, dim))])
        i = self.keys.index(key)
        x = feats.astype(np.float64)
        self.count[i] += x.shape[0]
        self.sum[i] += x.sum(0)
        self.sumsq[i] += (x * x).sum(0)

    def mean_std(self, key: str, floor: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """Return the mean and standard deviation (floored) of ``key``'s frames."""
        if key not in self.keys:
            raise DataError(f"no CMVN statistics for {key!r}; recompute features (stage 1) for its part")
        i = self.keys.index(key)
        n = max(self.count[i], 1.0)
        mean = self.sum[i] / n
        var = np.maximum(self.sumsq[i] / n - mean * mean, floor * floor)
        return mean, np.sqrt(var)

    def normalize(self, feats: np.ndarray, key: str, variance: bool = True) -> np.ndarray:
        """Return ``feats`` with ``key``'s mean removed (and variance scaled to one)."""
        mean, std = self.mean_std(key)
        out = feats - mean.astype(feats.dtype)
        if variance:
            out = out / std.astype(feats.dtype)
        return out

    def save(self, path: Path | str) -> None:
        """Write the statistics to an ``.npz`` file atomically."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, keys=np.array(self.keys), count=self.count, sum=self.sum, sumsq=self.sumsq)

    @classmethod
    def load(cls, path: Path | str) -> "CmvnStats":
        """Read statistics written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"CMVN statistics {path} do not exist; run stage 1 (features) first")
        d = np.load(path)
        return cls([str(k) for k in d["keys"]], d["count"], d["sum"], d["sumsq"])


def utterance_normalize(feats: np.ndarray, variance: bool = True) -> np.ndarray:
    """Return ``feats`` (T x D) normalised by its own mean (and standard deviation): per-utterance
    CMVN, which needs no statistics from elsewhere, so a model trained on it can be given any
    file (the deployable students of recipe stage 9, :mod:`asr_kd.deploy`)."""
    stats = CmvnStats.empty(feats.shape[1])
    stats.accumulate("global", feats)
    return stats.normalize(feats, "global", variance)


def cmvn_key(cut: Cut, mode: str) -> str:
    """The CMVN statistics key of a cut: its speaker, or ``"global"``."""
    if mode == "global":
        return "global"
    return cut.supervisions[0].speaker if cut.supervisions and cut.supervisions[0].speaker else cut.recording_id


# --------------------------------------------------------------------------------------------
# Computing and storing
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FeatureReport:
    """What stage 1 did for one part and one kind of feature."""

    part: str
    kind: str
    cuts: int
    frames: int
    dim: int
    audio_seconds: float
    wall_seconds: float
    skipped: int


_WORKER_FN: FeatureFn | None = None
_WORKER_CFG: FeatureConfig | None = None


def _init_worker(kind: str, cfg: FeatureConfig) -> None:
    global _WORKER_FN, _WORKER_CFG
    import torch

    torch.set_num_threads(1)
    _WORKER_FN = make_extractor(kind, cfg)
    _WORKER_CFG = cfg


def load_single_channel(cut: Cut, channel: str) -> np.ndarray:
    """Return the cut's audio as one channel, (1, samples): the mean of all of its recording's
    channels (``channel="mix"``) or the channel with that index; ValueError where it is missing."""
    recording = cut.recording
    if recording is None or recording.num_channels == 1:
        return cut.load_audio()
    if channel != "mix" and int(channel) >= recording.num_channels:
        raise ValueError(f"audio has {recording.num_channels} channels, no channel {channel} (features.channel)")
    channels = None if channel == "mix" else int(channel)
    audio = recording.load_audio(channels=channels, offset=cut.start, duration=cut.duration)
    return audio.mean(axis=0, keepdims=True) if channel == "mix" else audio


def _extract_one(cut: Cut) -> tuple[str, np.ndarray | None, str | None]:
    """Return ``(cut id, features, None)`` or ``(cut id, None, reason)``."""
    assert _WORKER_FN is not None and _WORKER_CFG is not None
    try:
        audio = load_single_channel(cut, _WORKER_CFG.channel)
    except ValueError as err:
        if "(features.channel)" in str(err):
            return cut.id, None, str(err)
        return cut.id, None, audio_error_reason(err, "cannot decode audio")
    except Exception as err:
        return cut.id, None, audio_error_reason(err, "cannot decode audio")
    if audio.size == 0:
        return cut.id, None, "audio has no samples"
    if not np.all(np.isfinite(audio)):
        return cut.id, None, "audio has NaN or infinite samples"
    try:
        feats = _WORKER_FN(audio[0].astype(np.float32))
    except DataError as err:  # audio shorter than one window (make_extractor's check)
        return cut.id, None, str(err)
    if not np.all(np.isfinite(feats)):
        return cut.id, None, "features have NaN or infinite values"
    return cut.id, feats, None


def _extract_all(cuts: Sequence[Cut], kind: str, cfg: FeatureConfig, desc: str) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    if cfg.num_jobs == 1:
        _init_worker(kind, cfg)
        for cut in tqdm(cuts, desc=desc, leave=False):
            yield _extract_one(cut)
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(cfg.num_jobs, initializer=_init_worker, initargs=(kind, cfg)) as pool:
        yield from tqdm(pool.imap(_extract_one, cuts, chunksize=8), total=len(cuts), desc=desc, leave=False)


def at_sampling_rate(cuts: Iterable[Cut], sampling_rate: int, what: str) -> list[Cut]:
    """Return the cuts, each resampled on the fly to ``sampling_rate`` where its recording has
    another rate (logged with a count per original rate)."""
    out: list[Cut] = []
    resampled: dict[int, int] = {}
    for cut in cuts:
        if cut.sampling_rate != sampling_rate:
            resampled[cut.sampling_rate] = resampled.get(cut.sampling_rate, 0) + 1
            cut = cut.resample(sampling_rate)
        out.append(cut)
    for rate, count in sorted(resampled.items()):
        log.info("%s: %d cut(s) recorded at %d Hz resampled to %d Hz", what, count, rate, sampling_rate)
    return out


def cuts_path(feature_dir: Path | str, part: str) -> Path:
    """Path of the cut manifest with features of ``part`` in ``feature_dir``."""
    return Path(feature_dir) / f"cuts_{part}.jsonl.gz"


def cmvn_path(feature_dir: Path | str, part: str) -> Path:
    """Path of the CMVN statistics of ``part`` in ``feature_dir``."""
    return Path(feature_dir) / f"cmvn_{part}.npz"


def compute_features(cuts: CutSet, kind: str, cfg: FeatureConfig, feature_dir: Path | str, part: str) -> tuple[CutSet, FeatureReport]:
    """Compute ``kind`` features for ``cuts``, store them under ``feature_dir`` and return the
    cuts with features attached plus a report. Writes ``cuts_<part>.jsonl.gz``,
    ``feats_<part>.lca``, ``cmvn_<part>.npz`` and ``skipped_<part>.txt``."""
    feature_dir = Path(feature_dir)
    feature_dir.mkdir(parents=True, exist_ok=True)
    by_id = {c.id: c for c in at_sampling_rate(cuts, cfg.sampling_rate, f"{kind} {part}")}
    dim = feature_dim(kind, cfg)
    stats = CmvnStats.empty(dim)
    out_cuts: list[Cut] = []
    skipped: list[tuple[str, str]] = []
    frames = 0
    start = time.time()
    storage = feature_dir / f"feats_{part}.lca"
    with atomic_path(storage) as tmp_storage:
        with LilcomChunkyWriter(tmp_storage) as writer:
            for cut_id, feats, reason in _extract_all(list(by_id.values()), kind, cfg, f"{kind} {part}"):
                cut = by_id[cut_id]
                if feats is None:
                    skipped.append((cut_id, reason or "unknown"))
                    log.warning("%s %s: skipped cut %s (%s): %s", kind, part, cut_id, _source(cut), reason)
                    continue
                key = writer.write(cut_id, feats)
                out_cuts.append(_with_features(cut, feats, key, storage, kind, cfg))
                stats.accumulate(cmvn_key(cut, cfg.cmvn), feats)
                frames += feats.shape[0]
    wall = time.time() - start
    write_text_atomic(feature_dir / f"skipped_{part}.txt", "".join(f"{c}\t{r}\n" for c, r in skipped))
    if not out_cuts:
        raise DataError(f"no cut of part {part} gave features ({len(skipped)} skipped, see {feature_dir}/skipped_{part}.txt); check its audio files")
    result = CutSet.from_cuts(out_cuts)
    with atomic_path(cuts_path(feature_dir, part)) as tmp:
        result.to_file(tmp)
    stats.save(cmvn_path(feature_dir, part))
    report = FeatureReport(
        part=part,
        kind=kind,
        cuts=len(out_cuts),
        frames=frames,
        dim=dim,
        audio_seconds=sum(c.duration for c in out_cuts),
        wall_seconds=wall,
        skipped=len(skipped),
    )
    return result, report


def _source(cut: Cut) -> str:
    try:
        return ",".join(s.source for s in cut.recording.sources)
    except AttributeError:
        return cut.id


def _with_features(cut: Cut, feats: np.ndarray, key: str, storage: Path, kind: str, cfg: FeatureConfig) -> Cut:
    features = Features(
        type=f"{kind}-{cfg.backend}",
        num_frames=int(feats.shape[0]),
        num_features=int(feats.shape[1]),
        frame_shift=cfg.frame_shift,
        sampling_rate=cfg.sampling_rate,
        start=cut.start,
        duration=cut.duration,
        storage_type=LilcomChunkyWriter.name,
        storage_path=str(storage),
        storage_key=key,
        recording_id=cut.recording_id,
        channels=cut.channel if isinstance(cut.channel, int) else None,
    )
    return dataclasses.replace(cut, features=features)


def load_part_cuts(manifest_dir: Path | str, part: str) -> CutSet:
    """Build the cuts of ``part`` from stage 0's recordings and supervisions manifests."""
    paths = {k: manifest_path(manifest_dir, k, part) for k in ("recordings", "supervisions")}
    for p in paths.values():
        if not p.is_file():
            raise DataError(f"manifest {p} does not exist; run stage 0 (corpus preparation) first")
    cuts = CutSet.from_manifests(
        recordings=read_manifest(paths["recordings"], "recordings"), supervisions=read_manifest(paths["supervisions"], "supervisions")
    )
    # One recording per utterance in LibriSpeech: the cut takes the utterance id.
    return CutSet.from_cuts(dataclasses.replace(c, id=c.recording_id) for c in cuts)


def compute_features_for_parts(
    manifest_dir: Path | str,
    output_dir: Path | str,
    parts: Iterable[str],
    cfg: FeatureConfig,
    kinds: Sequence[str] = FEATURE_KINDS,
) -> list[FeatureReport]:
    """Stage 1: compute every kind of features for every part.

    Writes ``output_dir/<kind>/cuts_<part>.jsonl.gz`` (cuts with features attached),
    ``feats_<part>.lca`` (lilcom storage) and ``cmvn_<part>.npz``; returns one report per
    (part, kind).
    """
    reports = []
    for part in parts:
        cuts = load_part_cuts(manifest_dir, part)
        for kind in kinds:
            _, report = compute_features(cuts, kind, cfg, Path(output_dir) / kind, part)
            log.info(
                "%s %s: %d cuts, %d frames x %d, %.1f s of audio in %.1f s (%.0fx real time)%s",
                kind, part, report.cuts, report.frames, report.dim, report.audio_seconds, report.wall_seconds,
                report.audio_seconds / max(report.wall_seconds, 1e-9),
                f", {report.skipped} skipped" if report.skipped else "",
            )
            reports.append(report)
    return reports
