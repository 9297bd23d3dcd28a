"""The one transcript normaliser: LibriSpeech's convention, applied once, at stage 0.

LibriSpeech transcripts are upper case ASCII words and apostrophes, nothing else. Every later
consumer (the lexicon lookup and the LM of stage 2, the alignment of stage 3, the WER references)
reads the supervision text of the manifests and so gets normalised text without normalising again.
A corpus with lowercase or punctuated transcripts then trains and scores exactly as its clean
upper-case twin (before this, lowercase transcripts aligned to ``<UNK>`` everywhere).

:func:`normalize_transcript`:

* annotations of non-speech events that other corpora write into transcripts (``[noise]``,
  ``<unk>``, ``{breath}``: up to 40 characters in square brackets, or one token in angle or curly
  brackets) are dropped: nobody said
  them, so as reference words they would count against every system;
* amounts of money and percentages are spelled as read: ``$5`` -> ``FIVE DOLLARS``, ``$1.50``
  -> ``ONE DOLLAR FIFTY CENTS``, ``$2.5 million`` -> ``TWO POINT FIVE MILLION DOLLARS``, the same
  for ``£`` (pounds, pence) and ``€`` (euros, cents); ``12%`` -> ``TWELVE PERCENT``; ``&``
  (standing alone or between letters, ``R&D``) -> ``AND``;
* Unicode is folded to ASCII where a fold exists: compatibility decomposition (NFKD) with the
  accents dropped (``café`` -> ``CAFE``), typographic apostrophes (``’``) to ``'``, and a few
  letters without a decomposition (``æ ß ø ł đ þ ð œ``) spelled out;
* upper case;
* hyphens, dashes and every other punctuation mark become word breaks; apostrophes stay inside
  a word (``DON'T``) and after a final S (``BOYS'``), other edge apostrophes are quotes and go;
* numbers written in digits are spelled out as they are read (:func:`spell_numbers`): cardinals
  (``1,250`` -> ``ONE THOUSAND TWO HUNDRED FIFTY``), years (``1995`` -> ``NINETEEN NINETY FIVE``,
  ``1900`` -> ``NINETEEN HUNDRED``, ``1905`` -> ``NINETEEN OH FIVE``, for 1100-1999 and 2010-2099),
  ordinals (``21st`` -> ``TWENTY FIRST``), decimals (``3.25`` -> ``THREE POINT TWO FIVE``) and
  numbers with leading zeros digit by digit (``007`` -> ``ZERO ZERO SEVEN``); digits inside a word
  (``3B``, ``MP3``) are left as they are. LibriSpeech's own text has no digits: its books' numbers
  were already words, and the audio says words, so a corpus with digits in its transcripts would
  otherwise score correct recognitions as errors;
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

NORMALIZER = {"name": "librispeech", "version": 3}  # 2: numbers in digits spelled out; 3: annotations dropped, money, %, &

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


def fold_word(word: str) -> str:
    """Return ``word`` (a lexicon or LM word) folded as transcripts are (accents dropped, ``æ`` ->
    ``AE``, ``’`` -> ``'``) and upper-cased, so that a lexicon's ``Café`` meets a transcript's
    ``CAFE``; characters without a fold are kept (the word then matches no transcript)."""
    decomposed = unicodedata.normalize("NFKD", word.translate(_LETTER_FOLDS))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).upper()


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


_ONES = ("ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN ELEVEN TWELVE THIRTEEN FOURTEEN FIFTEEN SIXTEEN "
         "SEVENTEEN EIGHTEEN NINETEEN").split()
_TENS = "_ _ TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split()
_SCALES = ((10**12, "TRILLION"), (10**9, "BILLION"), (10**6, "MILLION"), (10**3, "THOUSAND"))
_ORDINAL_WORDS = {"ONE": "FIRST", "TWO": "SECOND", "THREE": "THIRD", "FIVE": "FIFTH", "EIGHT": "EIGHTH", "NINE": "NINTH", "TWELVE": "TWELFTH"}
# A number in digits standing alone (not inside a word such as 3B or MP3): optional thousands
# separators, decimals and an ordinal suffix.
_NUMBER = re.compile(r"(?<![A-Za-z0-9])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+)(?![.,]?\d))?(st|nd|rd|th)?(?![A-Za-z0-9])", re.IGNORECASE)


def _cardinal(n: int) -> list[str]:
    """The words of ``n`` (0 <= n < 10**15) as read in English, without "and"."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        return [_ONES[n // 100], "HUNDRED"] + (_cardinal(n % 100) if n % 100 else [])
    for value, name in _SCALES:
        if n >= value:
            return _cardinal(n // value) + [name] + (_cardinal(n % value) if n % value else [])
    raise AssertionError(n)


def _year(n: int) -> list[str]:
    """1995 -> NINETEEN NINETY FIVE; 1900 -> NINETEEN HUNDRED; 1905 -> NINETEEN OH FIVE."""
    high, low = divmod(n, 100)
    if low == 0:
        return _cardinal(high) + ["HUNDRED"]
    return _cardinal(high) + (["OH"] if low < 10 else []) + _cardinal(low)


def _ordinal(words: list[str]) -> list[str]:
    last = words[-1]
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("Y"):
        last = last[:-1] + "IETH"
    else:
        last += "TH"
    return words[:-1] + [last]


def _spell(match: re.Match[str]) -> str:
    digits, decimals, suffix = match.group(1), match.group(2), match.group(3)
    plain = digits.replace(",", "")
    if (len(plain) > 1 and plain.startswith("0")) or len(plain) > 15:
        words = [_ONES[int(d)] for d in plain]  # an id or a code: read digit by digit
    elif "," not in digits and decimals is None and suffix is None and len(plain) == 4 and (1100 <= int(plain) <= 1999 or 2010 <= int(plain) <= 2099):
        words = _year(int(plain))
    else:
        words = _cardinal(int(plain))
    if decimals is not None:
        words += ["POINT"] + [_ONES[int(d)] for d in decimals]
    elif suffix is not None:
        words = _ordinal(words)
    return f" {' '.join(words)} "


def spell_numbers(text: str) -> str:
    """Return ``text`` with its stand-alone numbers in digits spelled out (module docstring)."""
    return _NUMBER.sub(_spell, text)


_ANNOTATION = re.compile(r"\[[^\[\]]{0,40}\]|<[^<>\s]{1,40}>|\{[^{}\s]{1,40}\}")
_SCALE_WORDS = "thousand|million|billion|trillion"
# $5, $1,250, $1.50, $.50 (the whole part may be left out before a decimal point), $2.5 million, $5million
_MONEY = re.compile(r"(?<![A-Za-z0-9])([$£€])\s?(\d{1,3}(?:,\d{3})+|\d+|(?=\.\d))(?:\.(\d+))?(?![\d.,]?\d)"
                    rf"(?:\s*({_SCALE_WORDS})(?![A-Za-z]))?", re.IGNORECASE)
# symbol: (unit, units, hundredth, hundredths)
_CURRENCIES = {"$": ("DOLLAR", "DOLLARS", "CENT", "CENTS"), "£": ("POUND", "POUNDS", "PENNY", "PENCE"),
               "€": ("EURO", "EUROS", "CENT", "CENTS")}
_PERCENT = re.compile(r"(\d)\s?%")
_AMPERSAND = re.compile(r"(?:(?<=\s)|^)&(?=\s|$)|(?<=[A-Za-z])&(?=[A-Za-z])")  # rock & roll, R&D


def _money(match: re.Match[str]) -> str:
    unit, units, hundredth, hundredths = _CURRENCIES[match.group(1)]
    whole, decimals, scale = match.group(2) or "0", match.group(3), match.group(4)
    if scale:  # $2.5 million: read the number and its scale, then the currency
        return f" {whole}{'.' + decimals if decimals else ''} {scale} {units} "
    if decimals is None or (len(decimals) == 2 and decimals == "00"):
        return f" {whole} {unit if whole == '1' else units} "
    if len(decimals) == 2:
        amount = f" {whole} {unit if whole == '1' else units} " if whole.strip("0,") else " "
        return f"{amount}{int(decimals)} {hundredth if decimals == '01' else hundredths} "
    return f" {whole}.{decimals} {units} "


def spell_symbols(text: str) -> str:
    """Return ``text`` without annotations and with amounts of money, percentages and a lone
    ``&`` written as words (numbers still in digits; module docstring)."""
    text = _ANNOTATION.sub(" ", text)
    text = _MONEY.sub(_money, text)
    text = _PERCENT.sub(r"\1 PERCENT", text)
    return _AMPERSAND.sub(" AND ", text)


def normalize_transcript(text: str) -> NormalizedText:
    """Return ``text`` in LibriSpeech's convention (see the module docstring)."""
    folded, unfoldable = _fold_to_ascii(spell_symbols(text))
    folded = spell_numbers(folded)
    tokens = (_clean_token(t) for t in _NOT_WORD.split(folded.upper()))
    return NormalizedText(" ".join(t for t in tokens if t), unfoldable)
