"""The one transcript normaliser: LibriSpeech's convention, applied once, at stage 0.

LibriSpeech transcripts are upper case ASCII words and apostrophes, nothing else. Every later
consumer (the lexicon lookup and the LM of stage 2, the alignment of stage 3, the WER references)
reads the supervision text of the manifests and so gets normalised text without normalising again.
A corpus with lowercase or punctuated transcripts then trains and scores exactly as its clean
upper-case twin (before this, lowercase transcripts aligned to ``<UNK>`` everywhere).

:func:`normalize_transcript`:

* Unicode is folded to ASCII where a fold exists: compatibility decomposition (NFKD) with the
  accents dropped (``café`` -> ``CAFE``), typographic apostrophes (``’``) to ``'``, and a few
  letters without a decomposition (``æ ß ø ł đ þ ð œ``) spelled out;
* upper case;
* hyphens, dashes and every other punctuation mark become word breaks; apostrophes stay inside
  a word (``DON'T``) and after a final S (``BOYS'``), other edge apostrophes are quotes and go;
* a letter that has no ASCII fold (Cyrillic, CJK, ...) makes the transcript unusable: the
  result carries those characters in ``unfoldable`` and stage 0 skips the utterance (counted,
  logged and listed in ``skipped_<part>.txt``), since its words could never be pronounced.

The name and version (:data:`NORMALIZER`) are written beside the manifests, so a data folder says
which convention its text follows.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata

NORMALIZER = {"name": "librispeech", "version": 1}

# Letters that NFKD does not decompose into ASCII, spelled as English readers spell them.
_LETTER_FOLDS = str.maketrans({
    "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ß": "ss", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L",
    "đ": "d", "Đ": "D", "þ": "th", "Þ": "TH", "ð": "dh", "Ð": "DH", "ı": "i",
    "\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'", "`": "'", "\u00b4": "'",
})
_NOT_WORD = re.compile(r"[^A-Z0-9']+")


@dataclasses.dataclass(frozen=True)
class NormalizedText:
    """A normalised transcript and the characters that had no ASCII fold (empty when usable)."""

    text: str
    unfoldable: str = ""


def _fold_to_ascii(text: str) -> tuple[str, str]:
    """Return (text folded to ASCII where possible, the letters or digits that have no fold)."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_LETTER_FOLDS))
    kept: list[str] = []
    unfoldable: list[str] = []
    for ch in decomposed:
        if ch.isascii():
            kept.append(ch)
        elif unicodedata.combining(ch):
            continue  # an accent split off its letter
        elif unicodedata.category(ch)[0] in "LN":
            unfoldable.append(ch)  # a letter or digit we cannot spell in ASCII
        else:
            kept.append(" ")  # punctuation, symbols, spaces of other scripts: a word break
    return "".join(kept), "".join(dict.fromkeys(unfoldable))


def _clean_token(token: str) -> str:
    """Drop quote-like apostrophes at the edges of a word; keep ``BOYS'`` and ``DON'T``."""
    keep_final = token.endswith("S'") and len(token.strip("'")) > 1
    token = token.strip("'")
    return token + "'" if keep_final and token else token


def normalize_transcript(text: str) -> NormalizedText:
    """Return ``text`` in LibriSpeech's convention (see the module docstring)."""
    folded, unfoldable = _fold_to_ascii(text)
    tokens = (_clean_token(t) for t in _NOT_WORD.split(folded.upper()))
    return NormalizedText(" ".join(t for t in tokens if t), unfoldable)
