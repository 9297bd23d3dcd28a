"""CTC output units: phones from the lexicon, or BPE pieces from sentencepiece.

Both kinds share the token convention of :mod:`asr_kd.decode.hlg`: ``<blk>`` is token 0 and the
network's output column ``j`` is token ``j``.

* phones: a word is spelled with its FIRST pronunciation in the lexicon (a CTC model needs one
  target sequence; the HLG graph still accepts every pronunciation); a word missing from the
  lexicon is spelled with the OOV word's pronunciation (the spoken-noise phone, ``SPN``).
* BPE: a sentencepiece model trained on the training transcripts, vocabulary size from
  ``CtcConfig.bpe_vocab_size``, ``<blk>`` as piece 0 and ``<unk>`` as piece 1.

A units directory holds ``tokens.txt``, ``units.json`` and, for BPE, ``bpe.model``.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Iterable, Sequence

from asr_kd.decode.hlg import BLANK, bpe_tokens_and_lexicon, phone_tokens
from asr_kd.errors import DataError
from asr_kd.lang.lang_dir import Lang
from asr_kd.lang.lexicon import Pron
from asr_kd.lang.symbols import SymbolTable
from asr_kd.utils import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

TOKENS_FILE = "tokens.txt"
BPE_MODEL = "bpe.model"
UNITS_JSON = "units.json"


class CtcUnits:
    """A CTC token inventory and the map from transcripts to token ids (and back, for BPE)."""

    def __init__(self, kind: str, tokens: SymbolTable, lang: Lang, sp_model: Path | None = None) -> None:
        if tokens.get(BLANK) != 0:
            raise DataError(f"CTC token table must have {BLANK} as token 0")
        self.kind = kind
        self.tokens = tokens
        self.lang = lang
        self.sp_model = sp_model
        self._sp = None
        if kind == "bpe":
            import sentencepiece as spm

            if sp_model is None or not Path(sp_model).is_file():
                raise DataError(f"BPE model {sp_model} does not exist; rerun the CTC units step")
            self._sp = spm.SentencePieceProcessor(model_file=str(sp_model))

    @property
    def num_tokens(self) -> int:
        """Return the network's output dimension (largest token id + 1, blank included)."""
        return self.tokens.max_id() + 1

    def encode(self, text: str) -> list[int]:
        """Return the token ids (no blank) of a transcript."""
        words = text.upper().split()
        if self._sp is not None:
            return list(self._sp.encode(" ".join(words)))
        oov = self.lang.lexicon[self.lang.oov_word][0]
        out: list[int] = []
        for w in words:
            prons = self.lang.lexicon.get(w)
            out.extend(self.tokens.id(p) for p in (prons[0] if prons else oov))
        return out

    def to_text(self, ids: Sequence[int]) -> str | None:
        """Return the words spelled by ``ids`` (BPE), or None for phones (whose words need HLG)."""
        if self._sp is None:
            return None
        return self._sp.decode([int(i) for i in ids if int(i) != 0])

    def token_lexicon(self) -> list[tuple[str, Pron]]:
        """Return the ``(word, tokens)`` lexicon that HLG is built from: every pronunciation of
        every lexicon word (phones), or each word's BPE spelling (the OOV word as ``<unk>``)."""
        words = sorted(self.lang.lexicon)
        if self.kind == "phone":
            return [(w, p) for w in words for p in self.lang.lexicon[w]]
        assert self._sp is not None
        # Words with characters the pieces cannot spell (and the OOV word itself, e.g. "<UNK>")
        # would need <unk>; the OOV word is spelled <unk>, the others are left out of HLG.
        unk = self._sp.unk_id()
        spellable = [w for w in words if w != self.lang.oov_word and unk not in self._sp.encode(w)]
        skipped = len(words) - len(spellable) - (self.lang.oov_word in self.lang.lexicon)
        if skipped:
            log.warning("BPE lexicon: %d word(s) with characters outside the BPE pieces left out of HLG", skipped)
        _, lexicon = bpe_tokens_and_lexicon(self.sp_model, spellable)  # type: ignore[arg-type]
        if self.lang.oov_word in self.lang.lexicon:
            lexicon.append((self.lang.oov_word, (self._sp.id_to_piece(unk),)))
        return lexicon

    def save(self, units_dir: Path | str) -> None:
        """Write ``tokens.txt`` and ``units.json`` under ``units_dir`` (the BPE model is already there)."""
        units_dir = Path(units_dir)
        units_dir.mkdir(parents=True, exist_ok=True)
        self.tokens.to_file(units_dir / TOKENS_FILE)
        write_text_atomic(units_dir / UNITS_JSON, json.dumps({"kind": self.kind, "num_tokens": self.num_tokens,
                                                              "lang_dir": str(self.lang.lang_dir)}, indent=1) + "\n")


def train_bpe(texts: Iterable[str], vocab_size: int, model_path: Path | str) -> Path:
    """Train a unigram sentencepiece model on ``texts`` with ``<blk>`` as piece 0 and ``<unk>``
    as piece 1 (no BOS/EOS); write it atomically to ``model_path`` and return the path.

    ``vocab_size`` is an upper bound: a small corpus that cannot fill it gets fewer pieces
    (sentencepiece's ``hard_vocab_limit=False``) rather than an error. Deterministic: one
    training thread, no sampling.
    """
    import sentencepiece as spm

    corpus = [" ".join(t.upper().split()) for t in texts if t and t.strip()]
    if not corpus:
        raise DataError("no training transcript to train BPE units on; check the training cuts' supervisions")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=proto, vocab_size=vocab_size, model_type="unigram",
        user_defined_symbols=[BLANK], unk_id=1, bos_id=-1, eos_id=-1, hard_vocab_limit=False,
        character_coverage=1.0, minloglevel=2, num_threads=1,
    )
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(model_path) as tmp:
        Path(tmp).write_bytes(proto.getvalue())
    return model_path


def make_units(kind: str, lang: Lang, units_dir: Path | str, texts: Iterable[str] = (), bpe_vocab_size: int = 200) -> CtcUnits:
    """Build the units of ``kind`` ("phone" or "bpe"; BPE is trained on ``texts``), save them in
    ``units_dir`` and return them. Existing units of the same kind are reused (not retrained)."""
    units_dir = Path(units_dir)
    if (units_dir / UNITS_JSON).is_file():
        existing = json.loads((units_dir / UNITS_JSON).read_text())
        if existing.get("kind") == kind:
            return load_units(units_dir, lang)
        raise DataError(f"{units_dir} holds {existing.get('kind')} units, not {kind}; use another experiment folder or remove it")
    if kind == "phone":
        units = CtcUnits("phone", phone_tokens(lang), lang)
    elif kind == "bpe":
        sp_model = train_bpe(texts, bpe_vocab_size, units_dir / BPE_MODEL)
        tokens, _ = bpe_tokens_and_lexicon(sp_model, [])
        units = CtcUnits("bpe", tokens, lang, sp_model)
    else:
        raise DataError(f"unknown CTC units {kind!r}; use phone or bpe")
    units.save(units_dir)
    log.info("CTC units: %s, %d tokens (blank included) in %s", kind, units.num_tokens, units_dir)
    return units


def load_units(units_dir: Path | str, lang: Lang) -> CtcUnits:
    """Return the units saved in ``units_dir``; DataError if they are missing."""
    units_dir = Path(units_dir)
    path = units_dir / UNITS_JSON
    if not path.is_file():
        raise DataError(f"{path} does not exist; train the CTC teachers (asr-kd ctc-train-teachers) first")
    kind = json.loads(path.read_text())["kind"]
    tokens = SymbolTable.from_file(units_dir / TOKENS_FILE)
    return CtcUnits(kind, tokens, lang, units_dir / BPE_MODEL if kind == "bpe" else None)
