"""Synthetic LM training text over a whole lexicon, for sizing decoding graphs.

No large English text installs offline here, so a LibriSpeech-size G is trained on sentences
drawn from a simple random process over the lexicon's words. The text has the right *size* of
statistics (a Zipfian vocabulary whose n-gram counts grow with the amount of text, the way
tgsmall's do), not realistic ones: its perplexity and which n-grams exist mean nothing.

The process (all randomness from one seed): every word gets a random frequency rank, unigram
probability ``1 / (rank + 1) ** zipf_exponent``; a word follows the previous one either from the
previous word's own short list of ``num_successors`` favourite successors (probability
``successor_prob``; the list is drawn from the unigram distribution, chosen among the list with a
Zipf law too), or from the unigram distribution. The favourites give the repeated bigrams and
trigrams that Kneser-Ney discounting needs (real text has them); the unigram draws give the long
tail of n-grams seen once.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from asr_kd.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SyntheticTextConfig:
    """Settings of :func:`synthetic_sentences` (see the module docstring)."""

    num_sentences: int
    min_words: int = 4
    max_words: int = 24  # LibriSpeech's LM text sentences have about 20 words
    zipf_exponent: float = 1.0
    num_successors: int = 32
    successor_prob: float = 0.6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_sentences < 1:
            raise ConfigError(f"synthetic text needs num_sentences >= 1, got {self.num_sentences}")
        if not 1 <= self.min_words <= self.max_words:
            raise ConfigError(f"synthetic text needs 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        if not 0.0 <= self.successor_prob <= 1.0:
            raise ConfigError(f"synthetic text needs successor_prob in [0, 1], got {self.successor_prob}")
        if self.num_successors < 1 or self.zipf_exponent <= 0:
            raise ConfigError(f"synthetic text needs num_successors >= 1 and zipf_exponent > 0, got {self.num_successors}, {self.zipf_exponent}")


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    """Return the cumulative distribution of ranks ``0..n-1`` under ``1 / (rank + 1) ** exponent``."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def synthetic_sentences(words: Sequence[str], config: SyntheticTextConfig) -> Iterator[str]:
    """Yield ``config.num_sentences`` space-separated sentences over ``words`` (see the module
    docstring); the same words and config always give the same text. ConfigError for an empty
    word list."""
    vocab = list(words)
    if not vocab:
        raise ConfigError("synthetic text needs at least one word")
    rng = np.random.default_rng(config.seed)
    by_rank = [vocab[i] for i in rng.permutation(len(vocab))]
    unigram_cdf = _zipf_cdf(len(vocab), config.zipf_exponent)
    successor_cdf = _zipf_cdf(config.num_successors, config.zipf_exponent)
    # Each word's favourite successors (ranks), drawn from the unigram distribution.
    successors = np.searchsorted(unigram_cdf, rng.random((len(vocab), config.num_successors)), side="right")
    lengths = rng.integers(config.min_words, config.max_words + 1, size=config.num_sentences)
    total = int(lengths.sum())
    # All random draws up front, in blocks: one Python step per word then stays cheap.
    from_unigram = np.searchsorted(unigram_cdf, rng.random(total), side="right")
    favourite = np.searchsorted(successor_cdf, rng.random(total), side="right")
    use_successor = rng.random(total) < config.successor_prob
    pos = 0
    for length in lengths.tolist():
        rank = int(from_unigram[pos])
        sentence = [by_rank[rank]]
        for t in range(pos + 1, pos + length):
            rank = int(successors[rank, favourite[t]]) if use_successor[t] else int(from_unigram[t])
            sentence.append(by_rank[rank])
        pos += length
        yield " ".join(sentence)
