"""Word n-gram language model: Kneser-Ney training (kaldingram), perplexity, and G.fst.

The LM is trained on the training transcripts only, after mapping words outside the lexicon to
the OOV word (``<UNK>``), so the model and G.fst share the vocabulary of ``words.txt``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Iterable

from kaldingram.prune import ArpaParser
from kaldingram.train import NgramCounts

from asr_kd.errors import DataError
from asr_kd.kaldi import kaldifst, load_kaldilm
from asr_kd.utils import atomic_path

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
    return used


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
    lm = load_arpa(arpa_path)
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
    text = kaldilm.arpa2fst(
        input_arpa=str(arpa_path),
        disambig_symbol=disambig_symbol,
        read_symbol_table=str(words_txt),
        max_arpa_warnings=-1,
    )
    fst = kaldifst.compile(s=text.strip() + "\n", acceptor=False)
    kaldifst.arcsort(fst, sort_type="ilabel")
    return fst
