"""The lexicon transducer L (phones -> words) with optional silence, and its disambiguated form.

Layout of L (three special states, then one chain of states per pronunciation):

* ``start``: the initial state. It goes to ``loop`` either directly (cost -log(1 - p)) or by
  reading one silence phone (cost -log p), so an utterance may begin with silence.
* ``loop``: the only final state; every pronunciation starts here. The first arc of a
  pronunciation outputs the word, the others output epsilon.
* ``silence``: the last phone of a pronunciation has two arcs, one back to ``loop``
  (cost -log(1 - p), no silence after the word) and one to ``silence`` (cost -log p), whose only
  arc reads the silence phone and returns to ``loop``.

So every word is followed by optional silence with probability ``p`` and the silence choices of a
path multiply to a proper distribution. With ``p == 0`` there are no silence arcs at all.
L_disambig is the same graph built from pronunciations that end in ``#1``, ``#2``, ...
(see :func:`asr_kd.lang.lexicon.add_disambig_symbols`) plus a ``#0:#0`` self-loop wherever a word
can start or the path can end, so that G's back-off arcs (input ``#0``) pass through L o G.
"""

from __future__ import annotations

import math
from typing import Iterable

from asr_kd.kaldi import kaldifst
from asr_kd.lang.lexicon import Pron
from asr_kd.lang.symbols import SymbolTable

EPS = 0


def _cost(prob: float) -> float:
    """Return the tropical cost -log(prob)."""
    return -math.log(prob)


def make_lexicon_fst(
    entries: Iterable[tuple[str, Pron]],
    phones: SymbolTable,
    words: SymbolTable,
    silence_phone: str,
    silence_prob: float,
) -> kaldifst.StdVectorFst:
    """Build L: input phones, output words, optional ``silence_phone`` at the start and after
    every word with probability ``silence_prob``.

    ``entries`` are ``(word, pron)`` pairs; pronunciations may end in disambiguation symbols,
    which must then be in ``phones``. Returns an FST arc-sorted by output label. Raises KeyError
    for a word or phone missing from the symbol tables, ValueError for an empty pronunciation.
    """
    if not 0.0 <= silence_prob < 1.0:
        raise ValueError(f"silence_prob must be in [0, 1), got {silence_prob}")
    fst = kaldifst.StdVectorFst()
    start = fst.add_state()
    fst.start = start
    use_silence = silence_prob > 0.0
    if use_silence:
        loop = fst.add_state()
        sil_state = fst.add_state()
        sil = phones.id(silence_phone)
        no_sil_cost, sil_cost = _cost(1.0 - silence_prob), _cost(silence_prob)
        fst.add_arc(start, kaldifst.StdArc(EPS, EPS, no_sil_cost, loop))
        fst.add_arc(start, kaldifst.StdArc(sil, EPS, sil_cost, loop))
        fst.add_arc(sil_state, kaldifst.StdArc(sil, EPS, 0.0, loop))
    else:
        loop = start
    fst.set_final(loop, 0.0)

    for word, pron in entries:
        if not pron:
            raise ValueError(f"word {word!r} has an empty pronunciation")
        word_id = words.id(word)
        phone_ids = [phones.id(p) for p in pron]
        src = loop
        for k, phone_id in enumerate(phone_ids[:-1]):
            dst = fst.add_state()
            fst.add_arc(src, kaldifst.StdArc(phone_id, word_id if k == 0 else EPS, 0.0, dst))
            src = dst
        olabel = word_id if len(phone_ids) == 1 else EPS
        if use_silence:
            fst.add_arc(src, kaldifst.StdArc(phone_ids[-1], olabel, no_sil_cost, loop))
            fst.add_arc(src, kaldifst.StdArc(phone_ids[-1], olabel, sil_cost, sil_state))
        else:
            fst.add_arc(src, kaldifst.StdArc(phone_ids[-1], olabel, 0.0, loop))

    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


def make_lexicon_fst_disambig(
    entries_with_disambig: Iterable[tuple[str, Pron]],
    phones: SymbolTable,
    words: SymbolTable,
    silence_phone: str,
    silence_prob: float,
    phone_disambig0: str = "#0",
    word_disambig0: str = "#0",
) -> kaldifst.StdVectorFst:
    """Build L_disambig: :func:`make_lexicon_fst` on disambiguated pronunciations plus a
    ``phone #0 : word #0`` self-loop at every state that outputs words or is final.

    Returns an FST arc-sorted by output label.
    """
    fst = make_lexicon_fst(entries_with_disambig, phones, words, silence_phone, silence_prob)
    kaldifst.add_self_loops(fst, isyms=[phones.id(phone_disambig0)], osyms=[words.id(word_disambig0)])
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst
