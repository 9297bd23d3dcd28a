"""Training subsets of utterances, as Kaldi's LibriSpeech recipe makes them.

Kaldi trains its monophones on the 2,000 shortest utterances of train-clean-100
(``utils/subset_data_dir.sh --shortest``), its first triphone passes on 5,000 and 10,000
utterances, and only its larger systems on everything: EM over short, well-aligned utterances
converges as well from a flat start, and the cost and memory of early systems stop growing with
the corpus. These functions choose the utterances from their ids, lengths and speakers only, so
that a caller loads the features of the chosen utterances and nothing else.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def shortest_utterances(ids: Sequence[str], num_frames: Sequence[int], n: int) -> set[str]:
    """Return the ids of the ``n`` shortest utterances (fewest frames, ties broken by id, as
    ``subset_data_dir.sh --shortest`` sorts them); every id when ``n`` is 0 or at least their
    number."""
    if len(ids) != len(num_frames):
        raise ValueError(f"{len(ids)} ids but {len(num_frames)} frame counts")
    if n <= 0 or n >= len(ids):
        return set(ids)
    order = sorted(range(len(ids)), key=lambda i: (num_frames[i], ids[i]))
    return {ids[i] for i in order[:n]}


def spread_over_speakers(ids: Sequence[str], speakers: Sequence[str], n: int, seed: int) -> set[str]:
    """Return the ids of ``n`` utterances drawn with ``seed`` and spread as evenly as possible over
    the speakers: the speakers (in a seeded random order) take turns giving one utterance each,
    drawn at random from theirs, until ``n`` are chosen, so every speaker gives ``n / speakers``
    give or take one where it has that many. Every id when ``n`` is 0 or at least their number."""
    if len(ids) != len(speakers):
        raise ValueError(f"{len(ids)} ids but {len(speakers)} speakers")
    if n <= 0 or n >= len(ids):
        return set(ids)
    rng = np.random.default_rng(seed)
    by_speaker: dict[str, list[str]] = {}
    for utt, spk in sorted(zip(ids, speakers)):  # sorted: the draw does not depend on the input order
        by_speaker.setdefault(spk, []).append(utt)
    names = sorted(by_speaker)
    queues = [[by_speaker[names[k]][j] for j in rng.permutation(len(by_speaker[names[k]]))] for k in rng.permutation(len(names))]
    chosen: list[str] = []
    turn = 0
    while len(chosen) < n:
        # One round: each speaker that has utterances left gives its next one.
        for queue in queues:
            if turn < len(queue):
                chosen.append(queue[turn])
                if len(chosen) == n:
                    break
        turn += 1
    return set(chosen)
