"""Synthetic LM text: reproducible, over the given words only, Zipfian, with repeated n-grams."""

from __future__ import annotations

from collections import Counter

import pytest

from asr_kd.errors import ConfigError
from asr_kd.lang.synthetic_text import SyntheticTextConfig, synthetic_sentences

WORDS = [f"W{i}" for i in range(2000)]


def test_same_seed_same_text_other_seed_other_text() -> None:
    config = SyntheticTextConfig(num_sentences=200, seed=3)
    first = list(synthetic_sentences(WORDS, config))
    assert first == list(synthetic_sentences(WORDS, config))
    assert first != list(synthetic_sentences(WORDS, SyntheticTextConfig(num_sentences=200, seed=4)))


def test_sentences_use_the_words_and_the_lengths_asked_for() -> None:
    config = SyntheticTextConfig(num_sentences=500, min_words=3, max_words=7)
    sentences = [s.split() for s in synthetic_sentences(WORDS, config)]
    assert len(sentences) == 500
    assert {len(s) for s in sentences} == set(range(3, 8))
    assert {w for s in sentences for w in s} <= set(WORDS)


def test_word_frequencies_are_zipfian() -> None:
    tokens = [w for s in synthetic_sentences(WORDS, SyntheticTextConfig(num_sentences=3000, successor_prob=0.0)) for w in s.split()]
    counts = sorted(Counter(tokens).values(), reverse=True)
    # Zipf with exponent 1: the top word is about twice the second and ten times the tenth.
    assert 1.5 < counts[0] / counts[1] < 2.7
    assert 6 < counts[0] / counts[9] < 15


def test_favourite_successors_repeat_bigrams() -> None:
    def distinct_bigrams(successor_prob: float) -> int:
        text = synthetic_sentences(WORDS, SyntheticTextConfig(num_sentences=2000, successor_prob=successor_prob, num_successors=4))
        return len({(a, b) for s in text for a, b in zip(s.split(), s.split()[1:])})

    # Only favourites: at most 4 successors per word; far fewer distinct bigrams than unigram draws.
    only_favourites, none = distinct_bigrams(1.0), distinct_bigrams(0.0)
    assert only_favourites <= 4 * len(WORDS)
    assert only_favourites < 0.5 * none


@pytest.mark.parametrize("kwargs, message", [
    ({"num_sentences": 0}, "synthetic text needs num_sentences >= 1, got 0"),
    ({"num_sentences": 1, "min_words": 5, "max_words": 4}, "synthetic text needs 1 <= min_words <= max_words, got 5, 4"),
    ({"num_sentences": 1, "successor_prob": 1.5}, "synthetic text needs successor_prob in [0, 1], got 1.5"),
])
def test_bad_settings_are_one_line_errors(kwargs, message) -> None:
    with pytest.raises(ConfigError) as info:
        SyntheticTextConfig(**kwargs)
    assert str(info.value) == message


def test_no_words_is_an_error() -> None:
    with pytest.raises(ConfigError, match="at least one word"):
        next(synthetic_sentences([], SyntheticTextConfig(num_sentences=1)))
