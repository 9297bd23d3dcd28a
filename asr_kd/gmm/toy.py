"""A toy language and a synthetic corpus for GMM tests, benchmarks and examples.

Real FSTs and real EM, on frames sampled from known Gaussians, so that tests can check what
training recovers (phone sequences, a planted context effect) against the truth.

Toy phones: SIL=1, A=2, B=3, C=4, D=5, disambiguation #0=6. Each HMM state of each phone has its
own mean; in :func:`make_corpus` the middle state of B moves when B's right neighbour is A or C,
so that context-dependent models pay off.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from asr_kd.gmm.features import add_deltas
from asr_kd.gmm.train import GraphInputs, Utterance
from asr_kd.kaldi import kaldifst

SIL, A, B, C, D = 1, 2, 3, 4, 5
DISAMBIG = 6
LEXICON = {1: (A, B), 2: (B, C), 3: (C, A), 4: (D, B, A), 5: (B, D)}  # word id -> phones
BASE_DIM = 4

# (phone, HMM state, right neighbour) -> mean offset
ContextEffect = Callable[[int, int, int], float]


def lexicon_fst() -> kaldifst.StdVectorFst:
    """Return the toy L.fst: words from :data:`LEXICON`, optional silence between words."""
    fst = kaldifst.StdVectorFst()
    loop = fst.add_state()
    fst.start = loop
    fst.set_final(loop, 0.0)
    fst.add_arc(loop, kaldifst.StdArc(SIL, 0, 0.7, loop))
    for word, phones in LEXICON.items():
        cur = loop
        for i, p in enumerate(phones):
            nxt = loop if i == len(phones) - 1 else fst.add_state()
            fst.add_arc(cur, kaldifst.StdArc(p, word if i == 0 else 0, 0.0, nxt))
            cur = nxt
    return fst


def graph_inputs() -> GraphInputs:
    """Return the toy language's graph inputs."""
    return GraphInputs(lexicon_fst(), (SIL,), (A, B, C, D), (DISAMBIG,))


def state_means(phones: Sequence[int], silence: Sequence[int], dim: int = BASE_DIM, seed: int = 123) -> dict[tuple[int, int], np.ndarray]:
    """Return a random mean per (phone, HMM state): 5 states for silence phones, 3 otherwise."""
    rng = np.random.default_rng(seed)
    return {(p, s): rng.normal(0.0, 3.0, size=dim) for p in phones for s in range(5 if p in silence else 3)}


def synthesize(phones: Sequence[int], means: Mapping[tuple[int, int], np.ndarray], rng: np.random.Generator, effect: ContextEffect | None = None, durations: tuple[int, int] = (2, 5)) -> tuple[np.ndarray, np.ndarray]:
    """Return frames (T x dim, float32) for a phone sequence, ``durations`` (inclusive range) frames
    per HMM state with unit noise, and each frame's true HMM state (T, int32)."""
    frames, states = [], []
    for i, p in enumerate(phones):
        right = phones[i + 1] if i + 1 < len(phones) else 0
        s = 0
        while (p, s) in means:
            mean = means[(p, s)] + (effect(p, s, right) if effect else 0.0)
            dur = int(rng.integers(durations[0], durations[1] + 1))
            frames.append(mean + rng.normal(0.0, 1.0, size=(dur, len(mean))))
            states += [s] * dur
            s += 1
    return np.concatenate(frames).astype(np.float32), np.array(states, dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class ToyCorpus:
    """Toy utterances with the truth behind them, keyed by utterance id."""

    utterances: list[Utterance]
    phones: dict[str, list[int]]  # the phone sequence, silences included
    states: dict[str, np.ndarray]  # the HMM state of every frame


def make_corpus(num_utts: int, seed: int, context_shift: float = 4.0, deltas: bool = True, durations: tuple[int, int] = (2, 5)) -> ToyCorpus:
    """Return toy utterances of 2-4 random words, silence at both ends and after 30% of words."""
    rng = np.random.default_rng(seed)
    means = state_means([SIL, A, B, C, D], [SIL])

    def effect(p: int, s: int, right: int) -> float:
        return context_shift if (p, s) == (B, 1) and right in (A, C) else 0.0

    utts, truth, true_states = [], {}, {}
    for n in range(num_utts):
        words = [int(w) for w in rng.choice(list(LEXICON), size=rng.integers(2, 5))]
        phones = [SIL]
        for w in words:
            phones += LEXICON[w]
            if rng.random() < 0.3:
                phones.append(SIL)
        if phones[-1] != SIL:
            phones.append(SIL)
        x, states = synthesize(phones, means, rng, effect, durations)
        uid = f"utt{n:03d}"
        true_states[uid] = states
        utts.append(Utterance(uid, add_deltas(x) if deltas else x, tuple(words)))
        truth[uid] = phones
    return ToyCorpus(utts, truth, true_states)
