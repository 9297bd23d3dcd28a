"""A word insertion penalty on a decoding graph (Kaldi's ``lattice-add-penalty``, which
``local/score.sh`` sweeps beside the LM weight: ``--word_ins_penalty 0.0,0.5,1.0``).

Kaldi adds the penalty to every word of a lattice after scaling its acoustic costs; our decoders
keep the best path only, so the penalty goes into the graph instead: the graph is composed with
a one-state acceptor whose self-loops carry ``penalty`` for every word, which adds ``penalty``
(a cost, natural-log units like the graph's) to each arc that emits a word and leaves every other
arc, each state's arcs in their order and the final weights as they were; the states are numbered
again in the order the composition reaches them from the start (no decoder depends on the
numbers). The best path then minimises

    graph cost + acoustic_scale * acoustic cost + penalty * number of words,

Kaldi's criterion (for HLG, CTC stage 7, the scale is on the log-probabilities: the same form).
A negative penalty is a bonus: it trades deletions for insertions. The
composed graph is a second copy in memory while it is used (a LibriSpeech HCLG of several GB
needs that much again; :class:`PenalisedGraphs` keeps one such copy at a time); composing mini's
tri HCLG (245k states, 574k arcs) takes about 0.2 s.
"""

from __future__ import annotations

import math
from typing import Iterable

from asr_kd.decode.fst_utils import num_arcs
from asr_kd.errors import ConfigError, DataError
from asr_kd.kaldi import kaldifst


def penalty_acceptor(word_ids: Iterable[int], penalty: float) -> kaldifst.StdVectorFst:
    """Return the one-state acceptor of every word in ``word_ids`` (0, epsilon, is left out),
    each self-loop weighted ``penalty``."""
    fst = kaldifst.StdVectorFst()
    state = fst.add_state()
    fst.start = state
    fst.set_final(state, 0.0)
    for w in sorted({int(w) for w in word_ids if int(w) != 0}):
        fst.add_arc(state, kaldifst.StdArc(w, w, float(penalty), state))
    return fst


def add_word_penalty(graph: kaldifst.StdVectorFst, penalty: float, word_ids: Iterable[int]) -> kaldifst.StdVectorFst:
    """Return ``graph`` with ``penalty`` added to every arc whose output label is a word (``graph``
    itself when the penalty is 0). ``word_ids`` must hold every output label of the graph (the
    graph's words.txt): a path through a word missing from it would be lost, which is refused
    (the arc count is compared) rather than decoded silently without it."""
    penalty = float(penalty)
    if not math.isfinite(penalty):
        raise ConfigError(f"a word insertion penalty must be a finite number, got {penalty}")
    if penalty == 0.0:
        return graph
    out = kaldifst.compose(graph, penalty_acceptor(word_ids, penalty), match_side="right", connect=False)
    if out.num_states != graph.num_states or num_arcs(out) != num_arcs(graph):
        raise DataError(f"adding a word insertion penalty changed the graph's shape ({graph.num_states} -> {out.num_states} states): "
                        "its output labels are not all in the word list given; pass the graph's own words.txt")
    return out


class PenalisedGraphs:
    """One decoding graph at several word insertion penalties: 0 is the graph itself, another
    penalty a composed copy, made on first use and kept until another penalty is asked for (a
    search decodes each penalty several times in a row, then moves on), so at most two graphs are
    held at once."""

    def __init__(self, graph: kaldifst.StdVectorFst, word_ids: Iterable[int]) -> None:
        self.graph = graph
        self.word_ids = sorted({int(w) for w in word_ids if int(w) != 0})
        self._last: tuple[float, kaldifst.StdVectorFst] | None = None

    def at(self, penalty: float) -> kaldifst.StdVectorFst:
        """Return the graph with ``penalty`` on every word."""
        key = float(penalty)
        if key == 0.0:
            return self.graph
        if self._last is None or self._last[0] != key:
            self._last = None  # the previous copy goes before the next one is made
            self._last = (key, add_word_penalty(self.graph, key, self.word_ids))
        return self._last[1]
