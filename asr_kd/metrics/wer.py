"""Word error rate with jiwer: totals, per-utterance alignments, and Kaldi-like reports.

References and hypotheses are ``{utterance id: transcript}`` maps; transcripts are split on
whitespace and compared as given (normalise case beforehand if needed). An utterance with a
reference but no hypothesis is scored as if the hypothesis were empty (all deletions) and listed
in :attr:`WerResult.missing`; a hypothesis without a reference cannot be scored, so it is listed
in :attr:`WerResult.extra` and logged. Nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Mapping

import jiwer

from asr_kd.errors import DataError
from asr_kd.utils import write_text_atomic

logger = logging.getLogger(__name__)

# Kaldi's one-letter codes for an aligned word pair: correct, substitution, insertion, deletion.
_OP_CODES = {"equal": "C", "substitute": "S", "insert": "I", "delete": "D"}
GAP = "***"


@dataclasses.dataclass(frozen=True)
class UttWer:
    """The scoring of one utterance.

    ``alignment`` lists ``(op, ref_word, hyp_word)`` with op one of C/S/I/D and ``None`` for the
    missing side of an insertion or deletion.
    """

    utt_id: str
    ref: tuple[str, ...]
    hyp: tuple[str, ...]
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    alignment: tuple[tuple[str, str | None, str | None], ...]
    missing_hyp: bool = False

    @property
    def errors(self) -> int:
        """Return substitutions + deletions + insertions."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        """Return this utterance's WER (inf for an empty reference with insertions, 0 if both empty)."""
        return _ratio(self.errors, len(self.ref))


@dataclasses.dataclass(frozen=True)
class WerResult:
    """Corpus-level WER and the per-utterance details it was summed from."""

    wer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    ref_words: int
    utterances: tuple[UttWer, ...]
    missing: tuple[str, ...]  # utterances scored with an empty hypothesis because none was given
    extra: tuple[str, ...]  # hypotheses without a reference (not scored)

    @property
    def errors(self) -> int:
        """Return the total number of word errors."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def sentence_errors(self) -> int:
        """Return the number of utterances with at least one error."""
        return sum(1 for u in self.utterances if u.errors)

    @property
    def ser(self) -> float:
        """Return the sentence error rate (0 for no utterance)."""
        return self.sentence_errors / len(self.utterances) if self.utterances else 0.0

    def summary(self) -> str:
        """Return Kaldi's one-line summary, e.g. ``%WER 12.50 [ 5 / 40, 1 ins, 2 del, 2 sub ]``."""
        return (
            f"%WER {100 * self.wer:.2f} [ {self.errors} / {self.ref_words}, {self.insertions} ins, "
            f"{self.deletions} del, {self.substitutions} sub ]"
        )

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict: totals plus one entry per utterance."""
        return {
            "wer": self.wer if math.isfinite(self.wer) else None,
            "ser": self.ser,
            "errors": self.errors,
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "hits": self.hits,
            "ref_words": self.ref_words,
            "num_utterances": len(self.utterances),
            "missing": list(self.missing),
            "extra": list(self.extra),
            "utterances": [
                {
                    "utt_id": u.utt_id,
                    "ref": " ".join(u.ref),
                    "hyp": " ".join(u.hyp),
                    "hits": u.hits,
                    "substitutions": u.substitutions,
                    "deletions": u.deletions,
                    "insertions": u.insertions,
                    "missing_hyp": u.missing_hyp,
                    "alignment": [list(a) for a in u.alignment],
                }
                for u in self.utterances
            ],
        }


def _ratio(errors: int, ref_words: int) -> float:
    """Return errors / ref_words, with 0/0 = 0 and n/0 = inf."""
    if ref_words:
        return errors / ref_words
    return 0.0 if errors == 0 else math.inf


def score_utterance(utt_id: str, ref: str, hyp: str, missing_hyp: bool = False) -> UttWer:
    """Align ``hyp`` to ``ref`` with jiwer (words split on whitespace); return the counts and the
    word-by-word alignment."""
    ref_words, hyp_words = ref.split(), hyp.split()
    if not ref_words and not hyp_words:
        return UttWer(utt_id, (), (), 0, 0, 0, 0, (), missing_hyp)
    out = jiwer.process_words(" ".join(ref_words), " ".join(hyp_words))
    alignment: list[tuple[str, str | None, str | None]] = []
    for chunk in out.alignments[0]:
        op = _OP_CODES[chunk.type]
        refs = ref_words[chunk.ref_start_idx : chunk.ref_end_idx]
        hyps = hyp_words[chunk.hyp_start_idx : chunk.hyp_end_idx]
        if op == "I":
            alignment += [("I", None, h) for h in hyps]
        elif op == "D":
            alignment += [("D", r, None) for r in refs]
        else:
            alignment += [(op, r, h) for r, h in zip(refs, hyps)]
    return UttWer(
        utt_id=utt_id,
        ref=tuple(ref_words),
        hyp=tuple(hyp_words),
        hits=out.hits,
        substitutions=out.substitutions,
        deletions=out.deletions,
        insertions=out.insertions,
        alignment=tuple(alignment),
        missing_hyp=missing_hyp,
    )


def compute_wer(refs: Mapping[str, str], hyps: Mapping[str, str]) -> WerResult:
    """Score ``hyps`` against ``refs`` (both ``{utt_id: transcript}``); return a :class:`WerResult`.

    Every reference utterance is scored, in sorted id order; a missing hypothesis counts as empty
    (all deletions) and is named in ``missing``. Hypotheses without a reference go to ``extra``.
    Raises DataError if there is no reference at all.
    """
    if not refs:
        raise DataError("no reference transcripts to score against; check the reference text file")
    missing = tuple(sorted(u for u in refs if u not in hyps))
    extra = tuple(sorted(u for u in hyps if u not in refs))
    if missing:
        logger.warning("%d of %d utterances have no hypothesis and are scored as all deletions, e.g. %s", len(missing), len(refs), missing[:5])
    if extra:
        logger.warning("%d hypotheses have no reference and are not scored, e.g. %s", len(extra), extra[:5])
    utts = tuple(score_utterance(u, refs[u], hyps.get(u, ""), missing_hyp=u not in hyps) for u in sorted(refs))
    sub = sum(u.substitutions for u in utts)
    dele = sum(u.deletions for u in utts)
    ins = sum(u.insertions for u in utts)
    ref_words = sum(len(u.ref) for u in utts)
    return WerResult(
        wer=_ratio(sub + dele + ins, ref_words),
        substitutions=sub,
        deletions=dele,
        insertions=ins,
        hits=sum(u.hits for u in utts),
        ref_words=ref_words,
        utterances=utts,
        missing=missing,
        extra=extra,
    )


def _aligned_columns(u: UttWer) -> tuple[str, str, str]:
    """Return the ref, hyp and op rows of ``u``'s alignment, columns padded to equal width."""
    refs, hyps, ops = [], [], []
    for op, r, h in u.alignment:
        r, h = r or GAP, h or GAP
        width = max(len(r), len(h), 1)
        refs.append(r.ljust(width))
        hyps.append(h.ljust(width))
        ops.append(op.ljust(width))
    return "  ".join(refs).rstrip(), "  ".join(hyps).rstrip(), "  ".join(ops).rstrip()


def format_wer_report(result: WerResult) -> str:
    """Return a Kaldi-like ``wer_details`` text: the summary lines, then four lines per utterance
    (``ref``, ``hyp``, ``op`` aligned word by word with ``***`` for gaps, and ``#csid`` counts)."""
    lines = [
        result.summary(),
        f"%SER {100 * result.ser:.2f} [ {result.sentence_errors} / {len(result.utterances)} ]",
        f"Scored {len(result.utterances)} utterances; {len(result.missing)} had no hypothesis "
        f"(scored as deletions); {len(result.extra)} hypotheses had no reference (not scored).",
        "",
    ]
    for u in result.utterances:
        ref, hyp, ops = _aligned_columns(u)
        note = "  (no hypothesis)" if u.missing_hyp else ""
        lines += [
            f"{u.utt_id} ref  {ref}",
            f"{u.utt_id} hyp  {hyp}{note}",
            f"{u.utt_id} op   {ops}",
            f"{u.utt_id} #csid {u.hits} {u.substitutions} {u.insertions} {u.deletions}",
        ]
    for utt in result.extra:
        lines.append(f"{utt} not-scored (no reference)")
    return "\n".join(lines) + "\n"


def write_wer_report(result: WerResult, path: Path | str) -> None:
    """Write :func:`format_wer_report` to ``path`` and the same details as JSON beside it
    (``path`` with suffix ``.json``), both atomically."""
    path = Path(path)
    write_text_atomic(path, format_wer_report(result))
    write_text_atomic(path.with_suffix(".json"), json.dumps(result.to_dict(), indent=1) + "\n")


def read_transcripts(path: Path | str) -> dict[str, str]:
    """Read a Kaldi ``text`` file (``UTT_ID word word ...`` per line); return ``{utt_id: text}``.

    A line with only an id is an empty transcript. Raises DataError naming the file for a missing
    file or a repeated utterance id.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"transcript file {path} does not exist; write one 'UTT_ID WORDS...' line per utterance")
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split(maxsplit=1)
        if not fields:
            continue
        if fields[0] in out:
            raise DataError(f"{path}:{lineno}: utterance {fields[0]!r} appears twice; keep one line per utterance")
        out[fields[0]] = fields[1].strip() if len(fields) > 1 else ""
    return out


def write_transcripts(path: Path | str, texts: Mapping[str, str]) -> None:
    """Write ``{utt_id: text}`` as a Kaldi ``text`` file, sorted by id, atomically."""
    write_text_atomic(path, "".join(f"{u} {texts[u]}".rstrip() + "\n" for u in sorted(texts)))


# Characters that are part of words in this project's transcripts (LibriSpeech's apostrophes,
# hyphenated words, <unk> and [noise] tokens); any other punctuation is not.
_WORD_MARKS = frozenset("'-<>[]_")


def convention_mismatches(refs: Mapping[str, str], hyps: Mapping[str, str], ref_name: object = "the reference",
                          hyp_name: object = "the hypothesis") -> list[str]:
    """Return one warning per way the two sides are written differently (letter case, punctuation
    the reference has and the hypothesis lacks), each of which makes words count as errors that a
    reader would call right; nothing is normalised. Empty when they agree."""
    ref_text, hyp_text = " ".join(refs.values()), " ".join(hyps.values())
    warnings = []
    if hyp_text.strip():
        def cases(text: str) -> tuple[bool, bool]:
            return any(c.islower() for c in text), any(c.isupper() for c in text)

        (ref_lower, ref_upper), (hyp_lower, hyp_upper) = cases(ref_text), cases(hyp_text)
        if (ref_lower and not hyp_lower and hyp_upper) or (hyp_lower and not ref_lower and ref_upper):
            side = ("lower", "upper") if ref_lower else ("upper", "lower")
            warnings.append(f"{ref_name} has {side[0]}-case letters and {hyp_name} only {side[1]}-case ones: words that differ only "
                            "in case count as errors; write both sides in one case (nothing is normalised here)")
        marks = sorted({c for c in ref_text if not c.isalnum() and not c.isspace() and c not in _WORD_MARKS} - set(hyp_text))
        if marks:
            warnings.append(f"{ref_name} has punctuation that {hyp_name} lacks ({' '.join(marks)}): words carrying it count as "
                            "errors; remove it from the reference (nothing is normalised here)")
    return warnings


def score_transcript_files(ref_path: Path | str, hyp_path: Path | str, report_path: Path | str | None = None) -> WerResult:
    """Score a hypothesis ``text`` file against a reference one; write the report (and its JSON)
    to ``report_path`` if given; return the :class:`WerResult`."""
    refs, hyps = read_transcripts(ref_path), read_transcripts(hyp_path)
    if not refs:
        raise DataError(f"reference file {ref_path} holds no transcript; pass a Kaldi text file with one 'UTT_ID WORDS...' line per utterance")
    for warning in convention_mismatches(refs, hyps, ref_path, hyp_path):
        logger.warning("%s", warning)
    result = compute_wer(refs, hyps)
    if report_path is not None:
        write_wer_report(result, report_path)
    return result
