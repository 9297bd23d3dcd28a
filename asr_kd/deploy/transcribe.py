"""Transcribe audio files (or a lhotse manifest's cuts) with a model directory.

Audio -> fbank (the model's FeatureConfig) -> normalisation (global CMVN or per utterance) ->
acoustic model (PyTorch or onnxruntime, in batches) -> search (HCLG, HLG, greedy or prefix beam)
-> text, JSON lines or CTM. A file that cannot be read or decoded gives an error line for that
file and the others are still transcribed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TextIO

import numpy as np
from tqdm import tqdm

from asr_kd.config import DecodeConfig
from asr_kd.data.features import make_extractor
from asr_kd.deploy.acoustic import AcousticModel, make_acoustic
from asr_kd.deploy.audio import load_audio, resample
from asr_kd.deploy.model_dir import ModelSpec, load_cmvn, load_spec, normalize_features
from asr_kd.deploy.search import Hypothesis, Searcher
from asr_kd.errors import AsrKdError, ConfigError, DataError

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("text", "jsonl", "ctm")


@dataclasses.dataclass(frozen=True)
class Transcript:
    """One input's result: its hypothesis, or the one-line reason it failed."""

    utt_id: str
    source: str
    audio_seconds: float
    hypothesis: Hypothesis | None = None
    error: str | None = None


@dataclasses.dataclass
class Timings:
    """Wall-clock seconds spent in each part of transcription (summed over inputs)."""

    audio: float = 0.0
    features: float = 0.0
    acoustic: float = 0.0
    search: float = 0.0


class Transcriber:
    """A loaded model directory: features, normalisation, acoustic back end and search."""

    def __init__(
        self, model_dir: Path | str, backend: str = "torch", method: str | None = None, decode_config: DecodeConfig | None = None,
        device: str = "cpu", num_threads: int = 1, acoustic: AcousticModel | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.spec: ModelSpec = load_spec(model_dir)
        self.cmvn = load_cmvn(model_dir, self.spec)
        self.extract = make_extractor("mfcc" if self.spec.kind == "gmm" else "fbank", self.spec.features)
        self.acoustic = acoustic or make_acoustic(model_dir, backend, device, num_threads)
        self.search = Searcher(model_dir, self.spec, method, decode_config)
        self.timings = Timings()

    @property
    def sampling_rate(self) -> int:
        return self.spec.features.sampling_rate

    def features(self, samples: np.ndarray) -> np.ndarray:
        """Return the normalised features (T x D) of 1-D samples at the model's rate: fbank for a
        network, MFCC with the mean removed and deltas for a GMM-HMM."""
        start = time.perf_counter()
        feats = self.extract(samples)  # DataError for audio shorter than one window
        if self.spec.kind == "gmm":  # mean removal only, then deltas: stage 3's GMM input
            from asr_kd.gmm.features import gmm_features

            g = self.spec.gmm_features
            out = gmm_features(normalize_features(feats, self.spec.normalization, self.cmvn, variance=False),
                               int(g.get("delta_order", 2)), int(g.get("delta_window", 2)), bool(g.get("utterance_cmvn", False)))
        else:
            out = normalize_features(feats, self.spec.normalization, self.cmvn)
        self.timings.features += time.perf_counter() - start
        return out

    def log_probs(self, feats: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Return the acoustic model's log-probabilities of a batch of feature matrices."""
        start = time.perf_counter()
        out = self.acoustic(feats)
        self.timings.acoustic += time.perf_counter() - start
        return out

    def decode(self, log_probs: np.ndarray, utt_id: str) -> Hypothesis:
        start = time.perf_counter()
        try:
            return self.search(log_probs, utt_id)
        finally:
            self.timings.search += time.perf_counter() - start

    def transcribe(self, items: Iterable[tuple[str, str, np.ndarray | Exception]], batch_size: int = 8) -> Iterator[Transcript]:
        """Yield a :class:`Transcript` per ``(utt_id, source, samples or the error reading
        them)``, in order; inputs are run through the acoustic model ``batch_size`` at a time."""
        batch: list[tuple[str, str, float, np.ndarray]] = []
        for utt_id, source, samples in items:
            if isinstance(samples, Exception):
                yield Transcript(utt_id, source, 0.0, error=str(samples))
                continue
            seconds = len(samples) / self.sampling_rate
            try:
                batch.append((utt_id, source, seconds, self.features(samples)))
            except AsrKdError as err:
                yield Transcript(utt_id, source, seconds, error=f"{_where(utt_id, source)}: {err}")
                continue
            if len(batch) >= batch_size:
                yield from self._run(batch)
                batch = []
        if batch:
            yield from self._run(batch)

    def _run(self, batch: list[tuple[str, str, float, np.ndarray]]) -> Iterator[Transcript]:
        log_probs = self.log_probs([f for *_, f in batch])
        for (utt_id, source, seconds, _), lp in zip(batch, log_probs):
            try:
                yield Transcript(utt_id, source, seconds, self.decode(lp, utt_id))
            except AsrKdError as err:
                yield Transcript(utt_id, source, seconds, error=f"{_where(utt_id, source)}: {err}")


def _where(utt_id: str, source: str) -> str:
    """Name an input in an error line: its file, or a manifest and the id of the cut in it."""
    return source if Path(source).stem == utt_id else f"{source} ({utt_id})"


def file_items(paths: Sequence[Path | str], sampling_rate: int, timings: Timings | None = None) -> Iterator[tuple[str, str, np.ndarray | Exception]]:
    """Yield ``(utt_id, path, samples or the DataError reading them)`` per audio file; the id is
    the file name without its extension."""
    for p in paths:
        start = time.perf_counter()
        try:
            samples: np.ndarray | Exception = load_audio(p, sampling_rate)
        except DataError as err:
            samples = err
        if timings is not None:
            timings.audio += time.perf_counter() - start
        yield Path(p).stem, str(p), samples


def check_unique_ids(paths: Sequence[Path | str]) -> None:
    """ConfigError naming two of ``paths`` that give the same id (file name without extension):
    their output lines could not be told apart."""
    seen: dict[str, Path | str] = {}
    for p in paths:
        stem = Path(p).stem
        if stem in seen:
            raise ConfigError(f"{seen[stem]} and {p} would both be transcribed as '{stem}' (the id is the file name without "
                              "its extension); pass one of them, or rename or copy one to another name")
        seen[stem] = p


def manifest_items(manifest: Path | str, sampling_rate: int) -> Iterator[tuple[str, str, np.ndarray | Exception]]:
    """Return an iterator of ``(id, manifest, samples or the error)`` per cut of a lhotse cut
    manifest, or per recording of a recordings manifest, channels averaged and resampled to
    ``sampling_rate``. The id is the cut id, or the recording id (as stage 1 names a recording's
    cut, and as references are keyed); DataError, at once, for a missing or empty manifest or one
    of another kind (supervisions)."""
    from lhotse import CutSet, RecordingSet, load_manifest_lazy

    path = Path(manifest)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist; pass a lhotse cuts or recordings .jsonl.gz")
    try:
        m = load_manifest_lazy(path)
    except _MANIFEST_ERRORS as err:
        raise _corrupt_manifest(path, err, 0) from None
    if m is None:  # lhotse's answer for a file with no line
        raise DataError(f"manifest {path} holds no cut or recording; pass the manifest of a part that has audio")
    if not isinstance(m, (CutSet, RecordingSet)):
        raise DataError(f"manifest {path} is a {type(m).__name__}, which holds no audio; pass the recordings (or cuts) manifest of the part")
    from_recordings = isinstance(m, RecordingSet)
    # lhotse names a recording's cut "<recording id>-<index>": keep the recording id instead.
    try:
        cuts = CutSet.from_manifests(recordings=m) if from_recordings else m  # reads a recordings manifest whole
    except _MANIFEST_ERRORS as err:
        raise _corrupt_manifest(path, err, 0) from None
    return _cut_items(cuts, from_recordings, path, sampling_rate)


# What reading a cut-off or garbled .jsonl.gz raises (gzip's BadGzipFile is an OSError; bad JSON a ValueError).
_MANIFEST_ERRORS = (EOFError, OSError, ValueError, zlib.error)


def _corrupt_manifest(path: Path, err: BaseException, done: int) -> DataError:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
    where = f" after {done} item(s)" if done else ""
    return DataError(f"manifest {path} is corrupt or cut off{where} ({reason}); write it again "
                     "(a lhotse cuts or recordings .jsonl.gz)")


def _cut_items(cuts, from_recordings: bool, path: Path, sampling_rate: int) -> Iterator[tuple[str, str, np.ndarray | Exception]]:
    it, done = iter(cuts), 0
    while True:
        try:
            cut = next(it)
        except StopIteration:
            return
        except _MANIFEST_ERRORS as err:  # read lazily: a cut-off file fails part of the way through
            raise _corrupt_manifest(path, err, done) from None
        done += 1
        utt_id = cut.recording_id if from_recordings else cut.id
        try:
            audio = cut.load_audio()
            samples: np.ndarray | Exception = np.asarray(audio, dtype=np.float32).mean(axis=0)
            if cut.sampling_rate != sampling_rate:
                samples = resample(samples, cut.sampling_rate, sampling_rate)
        except Exception as err:  # lhotse raises many error types for unreadable audio
            samples = DataError(f"{path} ({utt_id}): cannot load audio ({str(err).splitlines()[0][:120]})")
        yield utt_id, str(path), samples


def write_transcript(t: Transcript, fmt: str, out: TextIO) -> None:
    """Write one transcript: ``text`` ("<id> <words>"), ``jsonl`` (one object) or ``ctm`` (one
    line per word: "<id> 1 <start> <duration> <word>", Kaldi's format)."""
    assert t.hypothesis is not None
    h = t.hypothesis
    if fmt == "text":
        out.write(f"{t.utt_id} {h.text}".rstrip() + "\n")
    elif fmt == "jsonl":
        d = {"id": t.utt_id, "source": t.source, "text": h.text, "duration": round(t.audio_seconds, 3)}
        if h.timings is not None:
            d["words"] = [{"word": w.word, "start": w.start, "end": round(w.start + w.duration, 3)} for w in h.timings]
        out.write(json.dumps(d) + "\n")
    elif fmt == "ctm":
        for w in h.timings or []:
            out.write(f"{t.utt_id} 1 {w.start:.2f} {w.duration:.2f} {w.word}\n")
    else:
        raise ConfigError(f"--format must be one of {OUTPUT_FORMATS}, got {fmt!r}")


@dataclasses.dataclass(frozen=True)
class TranscribeSummary:
    """What a transcription run did: counts, failures (with reasons) and timings."""

    transcribed: int
    failed: list[str]
    audio_seconds: float
    timings: Timings


def transcribe_to(
    transcriber: Transcriber, items: Iterable[tuple[str, str, np.ndarray | Exception]], out: TextIO, fmt: str = "text",
    batch_size: int = 8, total: int | None = None,
) -> TranscribeSummary:
    """Transcribe ``items`` and write each result to ``out`` in ``fmt`` with a progress bar;
    each failure is logged as one line and counted. Returns a :class:`TranscribeSummary`."""
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"--format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
    if fmt == "ctm" and transcriber.search.method == "beam":
        raise ConfigError("prefix beam search keeps no frame path, so it gives no CTM timings; use --method greedy or hlg")
    failed: list[str] = []
    done, audio = 0, 0.0
    for t in tqdm(transcriber.transcribe(items, batch_size), total=total, desc="transcribe", unit="file", leave=False):
        audio += t.audio_seconds
        if t.error is not None:
            log.error("%s", t.error)
            failed.append(t.error)
            continue
        write_transcript(t, fmt, out)
        done += 1
    return TranscribeSummary(done, failed, audio, transcriber.timings)
