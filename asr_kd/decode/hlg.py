"""The CTC decoding graph HLG = H o L o G for a token set (phones, or BPE pieces).

Token conventions (icefall's): the network's output column ``j`` is token id ``j`` and the blank
is ``0``. In the graphs every token label is shifted by one (``token + 1``) so that label 0 stays
epsilon; the decoder's ``DecodableCtc`` reads column ``ilabel - 1``, undoing the shift.

* H is the standard CTC topology over tokens ``0..K``: one state per "last token read", every
  state final; reading token ``k`` outputs ``k`` unless ``k`` is blank or repeats the last token.
* L maps token sequences to words; homophones and prefixes get disambiguation symbols
  ``#1, #2, ...`` and G's back-off ``#0`` passes through a self-loop. H carries a ``d:d``
  self-loop for each disambiguation symbol ``d`` so that they survive H o LG, and they are
  replaced by epsilon after determinization.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

from asr_kd.decode.fst_utils import num_arcs, read_fst, shift_input_labels, write_fst, zero_input_labels
from asr_kd.decode.hclg import GraphInfo, compose_lg
from asr_kd.errors import DataError
from asr_kd.kaldi import kaldifst
from asr_kd.lang.lang_dir import Lang
from asr_kd.lang.lexicon import Pron, add_disambig_symbols
from asr_kd.lang.lexicon_fst import make_lexicon_fst_disambig
from asr_kd.lang.symbols import SymbolTable
from asr_kd.utils import write_text_atomic

logger = logging.getLogger(__name__)

BLANK = "<blk>"
HLG_FILE = "HLG.fst"
TOKENS_FILE = "tokens.txt"
INFO_FILE = "hlg.json"


def phone_tokens(lang: Lang) -> SymbolTable:
    """Return the CTC token table of ``lang``'s phones: ``<blk>`` 0, then every real phone with
    its id from phones.txt (so a phone CTC model's output column ``j`` is phone id ``j``)."""
    return SymbolTable([(BLANK, 0)] + [(p, lang.phones.id(p)) for p in (*lang.silence_phones, *lang.nonsilence_phones)])


def bpe_tokens_and_lexicon(sp_model: Path | str, words: Sequence[str]) -> tuple[SymbolTable, list[tuple[str, Pron]]]:
    """Return the token table of a sentencepiece model and a lexicon spelling each of ``words``
    in its pieces. The model must have ``<blk>`` as piece 0 (icefall's convention: train it with
    ``user_defined_symbols=<blk>`` and ``unk_id`` > 0); DataError otherwise."""
    import sentencepiece as spm

    path = Path(sp_model)
    if not path.is_file():
        raise DataError(f"BPE model {path} does not exist; train one with sentencepiece first")
    sp = spm.SentencePieceProcessor(model_file=str(path))
    if sp.id_to_piece(0) != BLANK:
        raise DataError(f"BPE model {path} has {sp.id_to_piece(0)!r} as piece 0, not {BLANK!r}; retrain it with user_defined_symbols={BLANK}")
    tokens = SymbolTable((sp.id_to_piece(i), i) for i in range(sp.get_piece_size()))
    lexicon = [(w, tuple(sp.encode(w, out_type=str))) for w in words]
    return tokens, lexicon


def ctc_topology(max_token: int, disambig_labels: Sequence[int] = ()) -> kaldifst.StdVectorFst:
    """Return H, the standard CTC topology over tokens ``0..max_token`` (0 = blank), with labels
    ``token + 1``, plus a ``d:d`` self-loop on every state for each label in ``disambig_labels``.
    Arc-sorted by output label."""
    H = kaldifst.StdVectorFst()
    for _ in range(max_token + 1):
        H.set_final(H.add_state(), 0.0)
    H.start = 0
    for src in range(max_token + 1):
        for tok in range(max_token + 1):
            emits = tok != 0 and tok != src  # blank and repeats of the last token output nothing
            H.add_arc(src, kaldifst.StdArc(tok + 1, tok + 1 if emits else 0, 0.0, tok))
        for d in disambig_labels:
            H.add_arc(src, kaldifst.StdArc(d, d, 0.0, src))
    kaldifst.arcsort(H, sort_type="olabel")
    return H


def token_lexicon_fst(
    lexicon: Sequence[tuple[str, Pron]], tokens: SymbolTable, words: SymbolTable, silence_token: str | None = None, silence_prob: float = 0.0
) -> tuple[kaldifst.StdVectorFst, list[int]]:
    """Return L_disambig over token labels ``token + 1`` (``#k`` labels follow the tokens) and the
    labels of its disambiguation symbols. ``silence_token`` with ``silence_prob`` > 0 allows an
    optional silence token between words (for models trained with silence in their targets)."""
    if tokens.get(BLANK) != 0:
        raise DataError(f"the CTC token table must have {BLANK} with id 0")
    missing = sorted({t for _, pron in lexicon for t in pron if t not in tokens})
    if missing:
        raise DataError(f"the lexicon uses tokens {missing[:5]} that the token table lacks; rebuild the tokens or the lexicon")
    entries, max_disambig = add_disambig_symbols(list(lexicon))
    table = SymbolTable((n, tokens.id(n)) for n in tokens.names())
    disambig = [table.add(f"#{k}") for k in range(max_disambig + 1)]
    if silence_prob > 0 and (silence_token is None or silence_token not in tokens):
        raise DataError(f"silence token {silence_token!r} is not in the token table; pass silence_prob=0 or a real token")
    L = make_lexicon_fst_disambig(entries, table, words, silence_token or BLANK, silence_prob)
    shift = 1
    shift_input_labels(L, shift)
    kaldifst.arcsort(L, sort_type="olabel")
    return L, [d + shift for d in disambig]


def compose_hlg(H: kaldifst.StdVectorFst, LG: kaldifst.StdVectorFst, disambig_labels: Sequence[int]) -> tuple[kaldifst.StdVectorFst, int]:
    """Return ``HLG = min(rm_disambig(det(H o LG)))``, arc-sorted by input label, and the number
    of disambiguation arcs replaced by epsilon. DataError when determinization fails or HLG is empty."""
    HLG = kaldifst.compose(H, LG)
    if kaldifst.determinize_star(HLG, use_log=True):
        raise DataError("determinization of H o L o G stopped early; the token lexicon lacks disambiguation symbols")
    removed = zero_input_labels(HLG, disambig_labels)
    kaldifst.minimize_encoded(HLG)
    kaldifst.arcsort(HLG, sort_type="ilabel")
    if HLG.num_states == 0:
        raise DataError("HLG is empty: the lexicon and G share no word; build G from the same words.txt")
    return HLG, removed


def compile_hlg(
    lexicon: Sequence[tuple[str, Pron]],
    tokens: SymbolTable,
    words: SymbolTable,
    G: kaldifst.StdVectorFst,
    silence_token: str | None = None,
    silence_prob: float = 0.0,
) -> tuple[kaldifst.StdVectorFst, GraphInfo]:
    """Build HLG for a token lexicon (``(word, tokens)`` pairs) and grammar ``G``.

    Returns the graph (input labels ``token + 1``, output labels word ids, arc-sorted by input
    label) and its :class:`GraphInfo`. Raises DataError for tokens missing from the table.
    """
    start = time.perf_counter()
    L, disambig = token_lexicon_fst(lexicon, tokens, words, silence_token, silence_prob)
    LG = compose_lg(L, G)
    max_token = max(tokens.ids())
    H = ctc_topology(max_token, disambig)
    HLG, removed = compose_hlg(H, LG, disambig)
    info = GraphInfo(
        num_states=HLG.num_states,
        num_arcs=num_arcs(HLG),
        intermediate={"LG": {"states": LG.num_states, "arcs": num_arcs(LG)}, "H": {"states": H.num_states, "arcs": num_arcs(H)}},
        seconds=round(time.perf_counter() - start, 3),
        settings={"num_tokens": max_token + 1, "silence_prob": silence_prob, "disambig_arcs_removed": removed},
    )
    logger.info("HLG: %d states, %d arcs for %d tokens in %.1f s", info.num_states, info.num_arcs, max_token + 1, info.seconds)
    return HLG, info


def make_phone_hlg(lang: Lang, graph_dir: Path | str, silence_prob: float = 0.0) -> GraphInfo:
    """Build the phone-CTC HLG of ``lang`` and write ``HLG.fst``, ``tokens.txt``, ``words.txt`` and
    ``hlg.json`` under ``graph_dir``; return the :class:`GraphInfo`."""
    graph_dir = Path(graph_dir)
    tokens = phone_tokens(lang)
    lexicon = [(w, pron) for w in sorted(lang.lexicon) for pron in lang.lexicon[w]]
    hlg, info = compile_hlg(lexicon, tokens, lang.words, lang.load_fst("G"), lang.optional_silence, silence_prob)
    write_fst(hlg, graph_dir / HLG_FILE)
    tokens.to_file(graph_dir / TOKENS_FILE)
    lang.words.to_file(graph_dir / "words.txt")
    write_text_atomic(graph_dir / INFO_FILE, info.to_json())
    return info


def load_hlg(graph_dir_or_file: Path | str) -> kaldifst.StdVectorFst:
    """Read HLG from a graph directory (``HLG.fst`` inside) or an FST file."""
    path = Path(graph_dir_or_file)
    if path.is_dir():
        path = path / HLG_FILE
    return read_fst(path, "CTC decoding graph", "build it with `asr-kd make-hlg`")
