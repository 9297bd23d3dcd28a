"""Stage 0: lhotse manifests for a corpus in the LibriSpeech layout (real or synthetic).

``prepare_manifests`` scans ``<corpus_dir>/<part>/<speaker>/<chapter>/`` the way LibriSpeech is
laid out and writes ``librispeech_recordings_<part>.jsonl.gz`` and
``librispeech_supervisions_<part>.jsonl.gz``, the same records and file names as
``lhotse.recipes.prepare_librispeech``. It does its own scan so that bad input is handled the
way users want: a transcript line without audio, audio without a transcript line, an empty
transcript or an unreadable FLAC file is skipped, counted and listed in
``<output_dir>/skipped_<part>.txt`` (and logged), never lost silently; a missing corpus directory,
a missing part, an utterance id transcribed twice or a part with no usable utterance is a one-line
:class:`DataError`. Only ``.flac`` audio is read; ``.wav`` files in a part are reported.

Transcripts are normalised here, once, to LibriSpeech's convention (:mod:`asr_kd.data.text_norm`):
the supervision ``text`` is the normalised text (a changed transcript keeps its original in the
supervision's custom field ``original_text``), and ``text_normalization_<part>.json`` beside the
manifests names the normaliser, its version and how many transcripts it changed or rejected.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import soundfile as sf
from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet, load_manifest
from lhotse.qa import validate_recordings_and_supervisions
from tqdm import tqdm

from asr_kd.data.text_norm import NORMALIZER, normalize_transcript
from asr_kd.errors import DataError, not_utf8
from asr_kd.utils import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

LIBRISPEECH_PARTS = (
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
)
# Training sets made of several parts, by their usual names; any ``a+b+...`` also combines parts.
COMBINED_PARTS = {
    "train-clean-460": ("train-clean-100", "train-clean-360"),
    "train-960": ("train-clean-100", "train-clean-360", "train-other-500"),
}


def source_parts(part: str) -> tuple[str, ...]:
    """Return the corpus folders that make up ``part``: the part itself, the parts of a combined
    name (``train-960``, ``train-clean-460``) or of an ``a+b+...`` name."""
    if part in COMBINED_PARTS:
        return COMBINED_PARTS[part]
    sources = tuple(p for p in part.split("+") if p)
    if len(set(sources)) != len(sources):
        raise DataError(f"part {part!r} names a corpus folder twice; combine distinct parts, e.g. train-clean-100+train-clean-360")
    return sources


@dataclasses.dataclass(frozen=True)
class PartReport:
    """What stage 0 found in one part of the corpus."""

    part: str
    utterances: int
    hours: float
    speakers: int
    skipped: dict[str, int]  # reason -> count


def manifest_path(output_dir: Path | str, kind: str, part: str) -> Path:
    """Path of lhotse's ``librispeech_<kind>_<part>.jsonl.gz`` (kind: recordings|supervisions)."""
    return Path(output_dir) / f"librispeech_{kind}_{part}.jsonl.gz"


def read_manifest(path: Path | str, kind: str) -> RecordingSet | SupervisionSet:
    """Read stage 0's ``kind`` (recordings|supervisions) manifest at ``path``, which must exist.

    A file that is not gzip'd JSON lines of ``kind`` records, is cut off, or holds no record
    (stage 0 never writes an empty part) is a one-line DataError naming it.
    """
    manifest_cls = {"recordings": RecordingSet, "supervisions": SupervisionSet}[kind]
    try:
        # Without a type hint lhotse reads every line before decoding, so a bad line or a cut-off
        # gzip stream raises here with its own reason instead of lhotse's "Unknown type of manifest".
        manifest = load_manifest(path)
    except (ValueError, EOFError, gzip.BadGzipFile, zlib.error) as err:  # ValueError: bad JSON, bad UTF-8, wrong records
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        reason = reason.replace(str(path), "<file>")
        raise DataError(f"manifest {path} is corrupt or truncated ({reason}); "
                        f"rerun stage 0 (asr-kd prepare-manifests) to write it again") from None
    if not isinstance(manifest, manifest_cls) or len(manifest) == 0:
        raise DataError(f"manifest {path} holds no {kind}; rerun stage 0 (asr-kd prepare-manifests) to write it again")
    return manifest


def normalization_record_path(output_dir: Path | str, part: str) -> Path:
    """Path of ``text_normalization_<part>.json``: the normaliser (name, version) that made the
    supervision texts of ``part`` and how many transcripts it changed or rejected."""
    return Path(output_dir) / f"text_normalization_{part}.json"


def _read_transcripts(trans_file: Path) -> list[tuple[str, str, int]]:
    """Return ``(utt_id, text, line_number)`` for each line of a ``*.trans.txt`` file."""
    out = []
    try:
        lines = trans_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise not_utf8(trans_file, err) from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        out.append((parts[0], parts[1].strip() if len(parts) > 1 else "", n))
    return out


def audio_error_reason(err: Exception, what: str = "unreadable audio") -> str:
    """A short one-line reason for an audio decoding error, without quoted file names
    (the caller names the file)."""
    text = " ".join(str(err).split()) or type(err).__name__
    text = re.sub(r"'[^']*/[^']*'", "<file>", text)
    return f"{what} ({text[:200]})"


def _probe(audio: Path, utt_id: str) -> Recording | str:
    """Return the Recording of ``audio``, or a reason string when it cannot be read."""
    try:
        if audio.stat().st_size == 0:
            return "audio file is empty (0 bytes)"
        info = sf.info(str(audio))
    except Exception as err:  # soundfile raises several types for corrupt files
        return audio_error_reason(err)
    if info.frames == 0:
        return "audio has no samples"
    try:
        return Recording.from_file(audio, recording_id=utt_id)
    except Exception as err:
        return audio_error_reason(err)


def scan_part(corpus_dir: Path, part: str, num_jobs: int = 1) -> tuple[RecordingSet, SupervisionSet, list[tuple[str, str]]]:
    """Scan one LibriSpeech-layout part.

    Returns the recordings, the supervisions, and the skipped items as ``(path, reason)``.
    Raises DataError when the part directory is missing.
    """
    part_dir = corpus_dir / part
    if not part_dir.is_dir():
        available = sorted(p.name for p in corpus_dir.iterdir() if p.is_dir()) if corpus_dir.is_dir() else []
        raise DataError(
            f"part directory {part_dir} does not exist (found: {', '.join(available) or 'nothing'}); "
            f"choose existing parts with --train-set/--dev-set/--test-set"
        )
    skipped: list[tuple[str, str]] = []
    items: list[tuple[str, str, Path]] = []
    referenced: set[Path] = set()
    original: dict[str, str] = {}  # utterance id -> transcript before normalisation, where it changed
    # Where each utterance id was read. A repeated id is an error, not a skip: nothing says which
    # of the two transcripts belongs to the audio, so keeping either could train on a wrong one.
    seen: dict[str, tuple[Path, int]] = {}
    for trans_file in sorted(part_dir.glob("*/*/*.trans.txt")):
        for utt_id, raw_text, line_no in _read_transcripts(trans_file):
            if utt_id in seen:
                first_file, first_line = seen[utt_id]
                where = f"lines {first_line} and {line_no}" if first_file == trans_file else f"line {line_no} and {first_file}:{first_line}"
                raise DataError(f"{trans_file}: utterance {utt_id} is transcribed twice ({where}); keep one line per utterance")
            seen[utt_id] = (trans_file, line_no)
            audio = trans_file.parent / f"{utt_id}.flac"
            referenced.add(audio)
            norm = normalize_transcript(raw_text)
            text = norm.text
            if norm.unfoldable:
                skipped.append((f"{trans_file}:{line_no}", f"transcript has characters with no ASCII spelling ({norm.unfoldable[:20]}); transliterate them"))
            elif not text:
                what = "an empty transcript" if not raw_text else "no word left after normalisation"
                skipped.append((f"{trans_file}:{line_no}", f"utterance has {what}"))
            elif not audio.is_file():
                wav = audio.with_suffix(".wav")
                note = f" ({wav.name} exists, but LibriSpeech parts are read as .flac)" if wav.is_file() else ""
                skipped.append((str(audio), f"transcript line without audio file{note}"))
            else:
                items.append((utt_id, text, audio))
                if text != raw_text:
                    original[utt_id] = raw_text
    for audio in sorted(part_dir.glob("*/*/*.flac")):
        if audio not in referenced:
            skipped.append((str(audio), "audio file without transcript line"))
    num_wav = sum(1 for _ in part_dir.glob("*/*/*.wav"))
    if num_wav:
        log.warning("%s holds %d .wav file(s), but LibriSpeech parts are read as .flac only; convert them to FLAC "
                    "(e.g. sox a.wav a.flac) to use them", part_dir, num_wav)

    recordings: list[Recording] = []
    supervisions: list[SupervisionSegment] = []
    with ThreadPoolExecutor(max(1, num_jobs)) as pool:
        probes = pool.map(lambda it: _probe(it[2], it[0]), items)
        for (utt_id, text, audio), rec in tqdm(zip(items, probes), total=len(items), desc=f"scan {part}", leave=False):
            if isinstance(rec, str):
                skipped.append((str(audio), rec))
                continue
            recordings.append(rec)
            supervisions.append(
                SupervisionSegment(
                    id=utt_id,
                    recording_id=utt_id,
                    start=0.0,
                    duration=rec.duration,
                    channel=0,
                    language="English",
                    speaker=utt_id.split("-")[0],
                    text=text,
                    custom={"original_text": original[utt_id]} if utt_id in original else None,
                )
            )
    return RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions), skipped


def _scan_combined(corpus_dir: Path, part: str, num_jobs: int) -> tuple[RecordingSet, SupervisionSet, list[tuple[str, str]]]:
    """:func:`scan_part` over every source folder of ``part``, concatenated; DataError for an
    utterance id found in two of them."""
    sources = source_parts(part)
    if len(sources) == 1:
        return scan_part(corpus_dir, sources[0], num_jobs)
    recordings: list[Recording] = []
    supervisions: list[SupervisionSegment] = []
    skipped: list[tuple[str, str]] = []
    for source in sources:
        recs, sups, skip = scan_part(corpus_dir, source, num_jobs)
        recordings.extend(recs)
        supervisions.extend(sups)
        skipped.extend(skip)
    seen: set[str] = set()
    for rec in recordings:
        if rec.id in seen:
            raise DataError(f"utterance {rec.id} is in more than one of {', '.join(sources)}; combined parts need unique utterance ids")
        seen.add(rec.id)
    log.info("%s = %s", part, " + ".join(sources))
    return RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions), skipped


def prepare_manifests(
    corpus_dir: Path | str,
    output_dir: Path | str,
    parts: Sequence[str],
    num_jobs: int = 1,
) -> dict[str, PartReport]:
    """Write validated lhotse manifests for ``parts`` of a LibriSpeech-layout corpus.

    A combined part (``train-960``, ``train-clean-460`` or ``a+b+...``, see :func:`source_parts`)
    gets one manifest pair holding the utterances of all its folders (LibriSpeech utterance ids
    are unique across parts). Returns a report per part. Skipped items are listed in
    ``output_dir/skipped_<part>.txt``.
    """
    corpus_dir = Path(corpus_dir)
    output_dir = Path(output_dir)
    if not corpus_dir.is_dir():
        problem = "is a file, not a directory" if corpus_dir.exists() else "does not exist"
        raise DataError(
            f"corpus directory {corpus_dir} {problem}; pass --corpus-dir pointing at the folder "
            f"that holds train-clean-100/, dev-clean/, ... (or leave it out to use the synthetic corpus)"
        )
    if not parts:
        raise DataError("no corpus parts requested; name at least one, e.g. --train-set train-clean-100")
    output_dir.mkdir(parents=True, exist_ok=True)
    reports: dict[str, PartReport] = {}
    for part in parts:
        recordings, supervisions, skipped = _scan_combined(corpus_dir, part, num_jobs)
        reasons: dict[str, int] = {}
        for path, reason in skipped:
            key = reason.split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
            log.warning("%s: skipped %s: %s", part, path, reason)
        skip_file = output_dir / f"skipped_{part}.txt"
        write_text_atomic(skip_file, "".join(f"{p}\t{r}\n" for p, r in skipped))
        if skipped:
            log.warning("%s: skipped %d item(s), listed in %s", part, len(skipped), skip_file)
        if len(recordings) == 0:
            num_wav = sum("but LibriSpeech parts are read as .flac" in reason for _, reason in skipped)
            raise DataError(
                f"part {corpus_dir / part} has no usable utterance ({len(skipped)} skipped, see {skip_file}); "
                + (f"{num_wav} of them have .wav audio, but LibriSpeech parts are read as .flac: convert them to FLAC" if num_wav
                   else "fix the data or leave the part out")
            )
        validate_recordings_and_supervisions(recordings, supervisions)
        for kind, manifest in (("recordings", recordings), ("supervisions", supervisions)):
            with atomic_path(manifest_path(output_dir, kind, part)) as tmp:
                manifest.to_file(tmp)
        changed = sum(1 for sup in supervisions if sup.custom and "original_text" in sup.custom)
        rejected = sum(1 for _, reason in skipped if reason.startswith("transcript has characters with no ASCII"))
        record = {**NORMALIZER, "part": part, "utterances": len(supervisions), "changed": changed, "rejected_unfoldable": rejected}
        write_text_atomic(normalization_record_path(output_dir, part), json.dumps(record, indent=2) + "\n")
        if changed:
            log.info("%s: %d of %d transcripts normalised to the LibriSpeech convention (originals kept as original_text)", part, changed, len(supervisions))
        hours = sum(r.duration for r in recordings) / 3600.0
        reports[part] = PartReport(
            part=part,
            utterances=len(recordings),
            hours=hours,
            speakers=len({s.speaker for s in supervisions}),
            skipped=reasons,
        )
        log.info("%s: %d utterances, %.2f h, %d speakers", part, len(recordings), hours, reports[part].speakers)
    return reports


def download_librispeech(target_dir: Path | str, parts: Sequence[str]) -> Path:
    """Download and unpack LibriSpeech parts with lhotse (needs internet); return the corpus dir."""
    from lhotse.recipes import download_librispeech as _download

    wanted = list(dict.fromkeys(src for p in parts for src in source_parts(p)))
    unknown = [p for p in wanted if p not in LIBRISPEECH_PARTS]
    if unknown:
        raise DataError(f"cannot download unknown LibriSpeech part(s) {unknown}; known parts: {list(LIBRISPEECH_PARTS)} "
                        f"and the combinations {sorted(COMBINED_PARTS)} or a+b")
    try:
        return Path(_download(target_dir, dataset_parts=wanted))
    except OSError as err:
        raise DataError(
            f"downloading LibriSpeech into {target_dir} failed ({err}); download it by hand and pass --corpus-dir"
        ) from None
