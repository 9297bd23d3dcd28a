"""Word n-gram language model: Kneser-Ney training (kaldingram), an existing ARPA file, perplexity,
and G.fst.

A trained LM sees the training transcripts (plus optional extra text), after mapping words
outside the lexicon to the OOV word (``<UNK>``), so the model and G.fst share the vocabulary of
``words.txt``. An existing ARPA LM (e.g. LibriSpeech's ``3-gram.pruned.1e-7.arpa.gz`` from
openslr.org/11) is restricted to the words that have a pronunciation (:func:`filter_arpa`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

from kaldingram.prune import ArpaParser
from kaldingram.train import NgramCounts

from asr_kd.data.text_norm import normalize_transcript
from asr_kd.errors import ConfigError, DataError, not_utf8
from asr_kd.kaldi import kaldifst, load_kaldilm, plain_native_logs
from asr_kd.utils import atomic_path, open_text

logger = logging.getLogger(__name__)

BOS, EOS = "<s>", "</s>"
MAX_DISCOUNT = 0.9  # Kneser-Ney discount cap, see train_ngram_lm


def train_ngram_lm(sentences: Iterable[str], order: int, arpa_path: Path | str) -> int:
    """Train an interpolated Kneser-Ney ``order``-gram LM on ``sentences`` (one space-separated
    sentence each; ``<s>``/``</s>`` are added) and write it as ARPA to ``arpa_path`` atomically.

    Returns the number of sentences used. Raises DataError if there is no non-empty sentence.
    """
    counts = NgramCounts(order, bos_symbol=BOS, eos_symbol=EOS)
    used = 0
    for sentence in sentences:
        sentence = " ".join(sentence.split())
        if not sentence:
            continue  # an empty line would add a bare "<s> </s>" count
        counts.add_raw_counts_from_line(sentence)
        used += 1
    if used == 0:
        raise DataError(f"no LM training text for {arpa_path}: every training sentence was empty")
    with plain_native_logs(logger, "kaldingram"):  # its tqdm bars, as plain log lines
        _estimate(counts, arpa_path)
    return used


def _estimate(counts: NgramCounts, arpa_path: Path | str) -> None:
    """Discount, smooth and write the LM of ``counts`` to ``arpa_path`` atomically."""
    counts.cal_discounting_constants()
    # kaldingram estimates D = n1 / (n1 + 2 n2); a small corpus with no n-gram seen twice gives
    # D = 1, i.e. zero probability for every singleton n-gram (written as log10 = -99, which
    # G.fst then prefers over backing off). Capping D keeps those n-grams; on real corpora D is
    # well below the cap and nothing changes.
    counts.d = [min(d, MAX_DISCOUNT) for d in counts.d]
    counts.cal_f()
    counts.cal_bow()
    with atomic_path(arpa_path) as tmp, tmp.open("w", encoding="utf-8") as f:
        counts.print_as_arpa(fout=f)


@dataclasses.dataclass(frozen=True)
class Perplexity:
    """Perplexity of an LM on some text (SRILM's conventions).

    ``ppl`` counts one ``</s>`` per sentence in the denominator; words outside the LM vocabulary
    (``num_oov``) are not scored, and the n-gram context restarts after them.
    """

    ppl: float
    logprob10: float
    num_sentences: int
    num_words: int
    num_oov: int


def load_arpa(arpa_path: Path | str):
    """Return the kaldingram ``Arpa`` model read from ``arpa_path`` (DataError if missing)."""
    arpa_path = Path(arpa_path)
    if not arpa_path.is_file():
        raise DataError(f"ARPA LM {arpa_path} does not exist; run `asr-kd prepare-lang` to train it")
    with plain_native_logs(logger, "kaldingram"):
        return ArpaParser().loadf(str(arpa_path), encoding="utf-8")[0]


def sentence_logprob10(lm, words: list[str]) -> tuple[float, int, int]:
    """Score ``<s> words </s>`` with the ``Arpa`` model ``lm``.

    Returns ``(log10 probability, number of scored tokens incl. </s>, number of OOV words)``.
    """
    order = lm.order()
    history: list[str] = [BOS]
    logprob, scored, oov = 0.0, 0, 0
    for w in words + [EOS]:
        if not lm.contains_word(w):
            oov += 1
            history = []  # an unknown word breaks the n-gram context
            continue
        ngram = tuple(history[-(order - 1):] + [w]) if order > 1 else (w,)
        logprob += lm.log_p_raw(ngram)
        scored += 1
        history.append(w)
    return logprob, scored, oov


def perplexity(arpa_path: Path | str, sentences: Iterable[list[str]]) -> Perplexity:
    """Return the perplexity of the ARPA LM at ``arpa_path`` on ``sentences`` (token lists).

    ``ppl`` is ``inf`` when nothing could be scored.
    """
    return model_perplexity(load_arpa(arpa_path), sentences)


def model_perplexity(lm, sentences: Iterable[list[str]]) -> Perplexity:
    """Return the perplexity of the loaded ``Arpa`` model ``lm`` (:func:`load_arpa`) on
    ``sentences``, as :func:`perplexity` does (so one LM read serves several texts)."""
    total, scored, oov, n_sent, n_words = 0.0, 0, 0, 0, 0
    for words in sentences:
        lp, sc, ov = sentence_logprob10(lm, list(words))
        total += lp
        scored += sc
        oov += ov
        n_sent += 1
        n_words += len(words)
    ppl = 10.0 ** (-total / scored) if scored else math.inf
    return Perplexity(ppl=ppl, logprob10=total, num_sentences=n_sent, num_words=n_words, num_oov=oov)


def compile_grammar_fst(arpa_path: Path | str, words_txt: Path | str, disambig_symbol: str = "#0") -> kaldifst.StdVectorFst:
    """Compile the ARPA LM into G.fst with kaldilm's arpa2fst.

    Back-off arcs carry ``disambig_symbol`` on the input side; ``<s>``/``</s>`` become epsilon
    (start state and final weights). ``words_txt`` must contain ``disambig_symbol``, ``<s>`` and
    ``</s>``. Returns G arc-sorted by input label (weights are natural-log costs).
    """
    kaldilm = load_kaldilm()
    with plain_native_logs(logger, "arpa2fst"):  # its C++ log lines carry source locations
        text = kaldilm.arpa2fst(
            input_arpa=str(arpa_path),
            disambig_symbol=disambig_symbol,
            read_symbol_table=str(words_txt),
            max_arpa_warnings=-1,
        )
    fst = kaldifst.compile(s=text.strip() + "\n", acceptor=False)
    kaldifst.arcsort(fst, sort_type="ilabel")
    return fst


# --------------------------------------------------------------------------------------------
# Existing ARPA files and extra LM text
# --------------------------------------------------------------------------------------------


def open_input(path: Path | str) -> TextIO:
    """Open a UTF-8 text file for reading, gzip-compressed if its name ends in ``.gz``; DataError
    naming the file if it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass an existing file")
    return open_text(path)


def input_lines(path: Path | str) -> Iterator[str]:
    """Yield the lines of a UTF-8 text file (``.gz`` allowed); DataError naming the file if it
    does not exist or is not UTF-8."""
    with open_input(path) as f:
        try:
            yield from f
        except UnicodeDecodeError as err:  # text is decoded by the chunk: no reliable line number
            raise not_utf8(path, err) from None


def lm_text_sentences(path: Path | str) -> list[list[str]]:
    """Return the non-empty lines of an LM text file (``.gz`` allowed), each normalised as stage 0
    normalises transcripts (:func:`asr_kd.data.text_norm.normalize_transcript`), as lists of
    words. A line with letters that have no ASCII spelling is skipped, as stage 0 skips such a
    transcript (its other words would make a sentence nobody wrote), and the skips are counted
    and logged with the first one's line number. DataError naming the file when no line is left."""
    sentences: list[list[str]] = []
    skipped: list[tuple[int, str]] = []
    for lineno, line in enumerate(input_lines(path), 1):
        norm = normalize_transcript(line)
        if norm.unfoldable:
            skipped.append((lineno, norm.unfoldable))
        elif norm.text:
            sentences.append(norm.text.split())
    if skipped:
        logger.warning("LM text %s: skipped %d line(s) with letters that have no ASCII spelling (first: line %d, %r)",
                       path, len(skipped), *skipped[0])
    if not sentences:
        why = f"all {len(skipped)} of its lines with words have letters with no ASCII spelling" if skipped else "every line is empty"
        raise DataError(f"LM text {path} has no usable line ({why}); pass a file with one English sentence per line")
    return sentences


_NGRAM_HEADER = re.compile(r"\\(\d+)-grams:")


@dataclasses.dataclass(frozen=True)
class ArpaFilterStats:
    """What :func:`filter_arpa` kept of an ARPA file: n-grams per order before and after, and the
    unigram words dropped (without a pronunciation), with a few examples."""

    order: int
    ngrams_in: dict[int, int]
    ngrams_kept: dict[int, int]
    words_dropped: int
    examples_dropped: list[str]


def _arpa_lines(path: Path | str) -> Iterator[tuple[int, str]]:
    for lineno, line in enumerate(input_lines(path), 1):  # DataError naming a missing or non-UTF-8 file
        yield lineno, line.strip()


def arpa_ngrams(path: Path | str) -> Iterator[tuple[int, list[str] | None]]:
    """Yield ``(order, fields)`` for each n-gram line of an ARPA file (``.gz`` allowed), after a
    ``(order, None)`` at the start of each ``\\N-grams:`` section; the fields are the
    log-probability, the words and the back-off weight if any. DataError naming the file (and
    line) for a line too short for its order, and for a file with no ``\\data\\`` or n-gram section."""
    section: int | None = None
    seen_data = False
    for lineno, line in _arpa_lines(path):
        if line == "\\data\\":
            seen_data = True
            continue
        m = _NGRAM_HEADER.fullmatch(line)
        if m:
            section = int(m.group(1))
            yield section, None
            continue
        if line == "\\end\\":
            break
        if section is None or not line:
            continue
        fields = line.split()
        if len(fields) < section + 1:
            raise DataError(f"{path}:{lineno}: a {section}-gram line needs a log-probability and {section} words; is this an ARPA file?")
        yield section, fields
    if not seen_data or section is None:
        raise DataError(f"{path} is not an ARPA language model (no \\data\\ section or no n-gram section)")


def arpa_unigrams(path: Path | str, normalize: Callable[[str], str]) -> list[str]:
    """Return the normalized words of an ARPA file's unigram section, without ``<s>``/``</s>``.
    DataError naming the file if it has no ``\\1-grams:`` section."""
    words, section = [], None
    for lineno, line in _arpa_lines(path):
        m = _NGRAM_HEADER.fullmatch(line)
        if m:
            section = int(m.group(1))
            if section > 1:
                break
            continue
        if section == 1 and line and not line.startswith("\\"):
            fields = line.split()
            if len(fields) < 2:
                raise DataError(f"{path}:{lineno}: a unigram line needs a log-probability and a word; is this an ARPA file?")
            if fields[1] not in (BOS, EOS):
                words.append(normalize(fields[1]))
    if section is None:
        raise DataError(f"{path} has no \\1-grams: section; pass an ARPA language model")
    return words


def filter_arpa(src: Path | str, dst: Path | str, vocabulary: set[str], normalize: Callable[[str], str]) -> ArpaFilterStats:
    """Write to ``dst`` (atomically, plain text) the ARPA LM ``src`` (``.gz`` allowed) restricted to
    ``vocabulary``: every n-gram with a word outside it (after ``normalize``; ``<s>`` and ``</s>``
    always kept) is dropped and the ``\\data\\`` counts are rewritten. The remaining
    probabilities are not renormalised (the vocabulary restriction of SRILM's ``-limit-vocab``):
    the mass of dropped words is simply lost, which costs nothing when decoding.

    Returns the :class:`ArpaFilterStats`. DataError for a file that is not ARPA, or when no
    unigram survives (the LM and the lexicon share no word: check their spelling).
    """
    keep = vocabulary | {BOS, EOS}
    kept: dict[int, list[str]] = {}
    counts_in: dict[int, int] = {}
    dropped: list[str] = []
    for section, fields in arpa_ngrams(src):
        if fields is None:
            kept[section], counts_in[section] = [], 0
            continue
        counts_in[section] += 1
        words = [w if w in (BOS, EOS) else normalize(w) for w in fields[1 : section + 1]]
        if all(w in keep for w in words):
            kept[section].append("\t".join([fields[0], " ".join(words), *fields[section + 1 :]]))  # SRILM's layout
        elif section == 1:
            dropped.append(words[0])
    if not any(line.split("\t")[1] not in (BOS, EOS) for line in kept.get(1, [])):
        raise DataError(f"no word of the ARPA LM {src} is in the lexicon; check that both use the same spelling (upper case)")
    order = max(kept)
    with atomic_path(dst) as tmp, tmp.open("w", encoding="utf-8") as f:
        f.write("\\data\\\n" + "".join(f"ngram {n}={len(kept[n])}\n" for n in sorted(kept)) + "\n")
        for n in sorted(kept):
            f.write(f"\\{n}-grams:\n" + "".join(f"{line}\n" for line in kept[n]) + "\n")
        f.write("\\end\\\n")
    stats = ArpaFilterStats(order, counts_in, {n: len(v) for n, v in kept.items()}, len(dropped), dropped[:10])
    logger.info("ARPA LM %s: kept %s of %s n-grams per order; %d words without a pronunciation dropped, e.g. %s",
                src, stats.ngrams_kept, stats.ngrams_in, stats.words_dropped, stats.examples_dropped[:5])
    return stats


def arpa_ngram_counts(path: Path | str) -> dict[int, int]:
    """Return the n-gram counts per order from the ``\\data\\`` header of an ARPA file (``.gz``
    allowed), without reading the n-grams. DataError naming the file if it has no such header."""
    counts: dict[int, int] = {}
    header = re.compile(r"ngram (\d+)\s*=\s*(\d+)")
    for lineno, line in _arpa_lines(path):
        m = header.fullmatch(line)
        if m:
            counts[int(m.group(1))] = int(m.group(2))
        elif line.startswith("\\") and line != "\\data\\":
            break  # the first n-gram section: the header is over
        if lineno > 100 and not counts:
            break
    if not counts:
        raise DataError(f"{path} has no '\\data\\' header with 'ngram N=count' lines; pass an ARPA language model")
    return counts


# --------------------------------------------------------------------------------------------
# A larger LM for lattice rescoring, on the text of a lang directory's own LM
# --------------------------------------------------------------------------------------------


def train_lang_lm(lang_dir: Path | str, order: int, arpa_path: Path | str, extra_text: Path | str | None = None) -> int:
    """Train an ``order``-gram Kneser-Ney LM on the text stage 2 trained the lang's LM on
    (``<lang>/lm/train.txt``: the training transcripts, OOV words already mapped) plus, with
    ``extra_text``, the lines of that file (normalized like transcripts, words outside
    ``words.txt`` mapped to the lang's OOV word); write it as ARPA to ``arpa_path``.

    This is the larger LM of lattice rescoring (e.g. a 4-gram over a first pass with a 3-gram):
    its vocabulary is the lang's. Returns the number of sentences used. DataError naming the
    file when ``lm/train.txt`` is missing (a lang built from an existing ARPA LM has none: pass
    ``extra_text``); ConfigError for ``order`` < 1.
    """
    lang_dir = Path(lang_dir)
    if order < 1:
        raise ConfigError(f"LM order must be >= 1, got {order}")
    train = lang_dir / "lm" / "train.txt"
    if not train.is_file() and extra_text is None:
        raise DataError(f"{train} does not exist (the lang's LM came from an ARPA file); pass a text file to train on")
    sentences = train.read_text(encoding="utf-8").splitlines() if train.is_file() else []
    if extra_text is not None:
        words = {line.split()[0] for line in (lang_dir / "words.txt").read_text(encoding="utf-8").splitlines() if line.strip()}
        oov = (lang_dir / "oov.txt").read_text(encoding="utf-8").strip()
        sentences += [" ".join(w if w in words else oov for w in s)
                      for s in lm_text_sentences(extra_text)]
    return train_ngram_lm(sentences, order, arpa_path)
