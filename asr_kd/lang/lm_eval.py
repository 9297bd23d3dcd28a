"""The stage-2 LM measured on every evaluation part: sentences, words, OOV rate against the lang's
``words.txt`` and perplexity, with the LM's order, size and training text.

Stage 2 writes this as ``<lang>/lm/perplexity.json`` and its RESULTS.md section from it, so the
table and its tests read the same numbers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from asr_kd.errors import DataError
from asr_kd.lang.lm import arpa_ngram_counts, load_arpa, model_perplexity
from asr_kd.lang.symbols import SymbolTable

REPORT_NAME = "lm/perplexity.json"  # below the lang folder


@dataclasses.dataclass(frozen=True)
class PartLm:
    """The LM on one part. ``num_oov`` counts running words not in words.txt (mapped to the OOV
    word before scoring); ``num_unscored`` the words the LM does not know (SRILM's "OOVs": not
    scored, the n-gram context restarts after them). ``perplexity`` is None when nothing was
    scored."""

    num_sentences: int
    num_words: int
    num_oov: int
    oov_rate: float
    num_unscored: int
    perplexity: float | None


@dataclasses.dataclass(frozen=True)
class LmReport:
    """What stage 2's LM is and how it does on each evaluation part (``parts``, in order)."""

    train_split: str
    lm_source: str  # lang.json's: "training transcripts", "... + extra text <file> (N sentences)", "ARPA <file>"
    lm_order: int
    lm_ngrams: dict[str, int]  # order -> n-grams in lm/lm.arpa
    lm_train_sentences: int  # sentences of the training text (0 for an ARPA LM)
    oov_word: str
    oov_word_in_lm: bool  # whether the LM scores the OOV word (it then stands for every OOV word)
    parts: dict[str, PartLm]

    def to_json(self) -> str:
        """Return the report as indented JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LmReport":
        """Return the report of :meth:`to_json`'s dict (KeyError/TypeError if it is not one)."""
        return cls(**{**d, "parts": {p: PartLm(**v) for p, v in d["parts"].items()}})


def measure_lm(lang_dir: Path | str, sentences: Mapping[str, Sequence[Sequence[str]]], train_split: str) -> LmReport:
    """Return the :class:`LmReport` of the lang in ``lang_dir`` (lang.json, words.txt,
    lm/lm.arpa) on ``sentences`` (part -> token lists, upper case as in words.txt); every part
    but ``train_split`` is an evaluation part. The ARPA file is read once."""
    lang_dir = Path(lang_dir)
    lang_json = lang_dir / "lang.json"
    if not lang_json.is_file():
        raise DataError(f"{lang_json} does not exist; run stage 2 (asr-kd prepare-lang) into {lang_dir}")
    lang = json.loads(lang_json.read_text())
    oov_word = lang["config"]["oov_word"]
    words = set(SymbolTable.from_file(lang_dir / "words.txt").names())
    arpa = lang_dir / "lm" / "lm.arpa"
    lm = load_arpa(arpa)
    parts = {}
    for part, sents in sentences.items():
        if part == train_split:
            continue
        mapped = [[w if w in words else oov_word for w in s] for s in sents]
        num_words = sum(len(s) for s in sents)
        num_oov = sum(w not in words for s in sents for w in s)
        ppl = model_perplexity(lm, mapped)
        parts[part] = PartLm(
            num_sentences=len(sents), num_words=num_words, num_oov=num_oov, oov_rate=num_oov / num_words if num_words else 0.0,
            num_unscored=ppl.num_oov, perplexity=None if ppl.ppl == float("inf") else ppl.ppl,
        )
    return LmReport(
        train_split=train_split, lm_source=lang["lm_source"], lm_order=lang["lm_order"],
        lm_ngrams={str(n): c for n, c in sorted(arpa_ngram_counts(arpa).items())}, lm_train_sentences=lang["lm_train_sentences"],
        oov_word=oov_word, oov_word_in_lm=bool(lm.contains_word(oov_word)), parts=parts,
    )


def read_report(lang_dir: Path | str) -> LmReport | None:
    """Return the report stage 2 wrote into ``lang_dir``, or None when it has none (or one in
    another format, from older code)."""
    path = Path(lang_dir) / REPORT_NAME
    try:
        return LmReport.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def results_section(report: LmReport, heading: str, command: str = "") -> str:
    """Return the RESULTS.md section (starting with ``heading``) of ``report``."""
    ngrams = ", ".join(f"{c} {n}-grams" for n, c in report.lm_ngrams.items())
    if report.lm_source.startswith("ARPA"):
        what = f"{report.lm_order}-gram LM from {report.lm_source}, restricted to the lexicon ({ngrams})"
    else:
        what = (f"{report.lm_order}-gram Kneser-Ney LM ({ngrams}) trained on {report.lm_train_sentences} sentences: "
                f"the {report.lm_source} ({report.train_split})")
    rows = [
        f"| {part} | {p.num_sentences} | {p.num_words} | {100 * p.oov_rate:.2f}% ({p.num_oov}) | {p.num_unscored} | "
        + ("-" if p.perplexity is None else f"{p.perplexity:.1f}") + " |"
        for part, p in report.parts.items()
    ]
    unk = (f"words out of words.txt count as `{report.oov_word}`, which the LM scores" if report.oov_word_in_lm
           else f"words out of words.txt become `{report.oov_word}`, which this LM has never seen, so they are not scored either")
    return "\n".join([
        heading,
        "",
        *([f"Produced by `{command}`.", ""] if command else []),
        f"{what}.",
        "",
        "| part | sentences | words | OOV (not in words.txt) | words not scored | perplexity |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Perplexity as SRILM's `ppl`: one `</s>` per sentence is counted. Not scored: words the LM does not know (e.g. a "
        "test word with a pronunciation that the LM text never has, which decoding cannot output); they are left out of "
        f"the perplexity and the n-gram context restarts after them. {unk[0].upper()}{unk[1:]}.",
    ]) + "\n"
