"""A compact back-off LM for rescoring with LibriSpeech-size ARPA files (Kaldi's const-ARPA idea).

Kaldi rescores lattices with LibriSpeech's large LMs (tglarge: about 3 GB of ARPA text; fglarge)
through ``arpa-to-const-arpa``, a binary form that is built once and read without parsing. An
ARPA file read into Python objects takes many times its text size, so the rescoring of
:mod:`asr_kd.decode.rescore` could not use those LMs here. This module stores an ARPA LM over a
lang's ``words.txt`` as flat numpy arrays, memory-mapped when read:

- order 1: ``log10 p`` and back-off weight per word id (NaN: no unigram);
- order n >= 2: the n-grams sorted by a 64-bit key ``(index of the (n-1)-gram prefix) << 32 |
  last word id``, with ``log10 p`` and back-off weight (float32) in the same order. An n-gram is
  found by walking its prefixes with binary searches (:func:`numpy.searchsorted`).

That is 16 bytes per n-gram of orders 2 and above (12 for the highest order), against the ARPA
text's ~30. N-grams with a word outside ``words.txt`` are dropped and counted (no lattice can
hold them), as :func:`asr_kd.lang.lm.filter_arpa` does. A well-formed back-off ARPA file holds
every n-gram's prefix as an (n-1)-gram (SRILM, KenLM and kaldingram write them so); one that
does not is refused in one line naming the n-gram.
"""

from __future__ import annotations

import array
import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from asr_kd.errors import DataError
from asr_kd.lang.lm import BOS, EOS, arpa_ngrams
from asr_kd.lang.symbols import SymbolTable
from asr_kd.utils import file_sha256, write_text_atomic

logger = logging.getLogger(__name__)

META_NAME = "const_lm.json"
FORMAT_VERSION = 1
LN10 = math.log(10.0)


@dataclasses.dataclass(frozen=True)
class ConstLmInfo:
    """What a const LM folder holds: its order, n-grams kept and dropped per order, and the
    fingerprints of the ARPA file and ``words.txt`` it was built from."""

    order: int
    kept: dict[int, int]
    dropped: dict[int, int]
    arpa: str
    arpa_sha256: str
    words_sha256: str
    version: int = FORMAT_VERSION

    @property
    def bytes_per_ngram(self) -> dict[int, int]:
        """Bytes stored per n-gram of each order (key, log-probability, back-off weight)."""
        return {n: (8 if n > 1 else 0) + 4 + (4 if n < self.order else 0) for n in self.kept}


def _key(prefix: np.ndarray, word: np.ndarray) -> np.ndarray:
    return (prefix.astype(np.uint64) << np.uint64(32)) | word.astype(np.uint64)


def _find(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions of ``wanted`` in the sorted ``keys`` (-1 where absent)."""
    pos = np.searchsorted(keys, wanted)
    found = pos < len(keys)
    found[found] = keys[pos[found]] == wanted[found]
    return np.where(found, pos, -1)


class _Order:
    """The n-grams of one order as they are read: word ids, log-probabilities, back-offs."""

    def __init__(self, n: int) -> None:
        self.n, self.ids, self.logprob, self.backoff = n, array.array("i"), array.array("f"), array.array("f")


def build_const_lm(arpa_path: Path | str, words_txt: Path | str, out_dir: Path | str) -> ConstLmInfo:
    """Read the ARPA LM ``arpa_path`` (``.gz`` allowed) over the words of ``words_txt`` and write
    its const form to ``out_dir`` (the arrays, then ``const_lm.json`` last). Returns its
    :class:`ConstLmInfo`. DataError naming the file for a file that is not ARPA, an n-gram
    without its prefix, or an LM that shares no word with ``words_txt``."""
    arpa_path, out_dir = Path(arpa_path), Path(out_dir)
    words = SymbolTable.from_file(words_txt)
    ids = {w: i for w, i in zip(words.names(), words.ids())}
    vocab = words.max_id() + 1
    uni_lp = np.full(vocab, np.nan, dtype=np.float32)
    uni_bo = np.zeros(vocab, dtype=np.float32)
    orders: dict[int, _Order] = {}
    dropped: dict[int, int] = {}
    for section, fields in arpa_ngrams(arpa_path):
        if fields is None:
            dropped[section] = 0
            if section > 1:
                orders[section] = _Order(section)
            continue
        try:
            word_ids = [ids[w] for w in fields[1 : section + 1]]
        except KeyError:
            dropped[section] += 1
            continue
        try:
            logprob = float(fields[0])
            backoff = float(fields[section + 1]) if len(fields) > section + 1 else 0.0
        except ValueError:
            raise DataError(f"{arpa_path}: the {section}-gram line '{' '.join(fields)}' has a log-probability or back-off that is not "
                            "a number; is this an ARPA file?") from None
        if section == 1:
            uni_lp[word_ids[0]], uni_bo[word_ids[0]] = logprob, backoff
        else:
            o = orders[section]
            o.ids.extend(word_ids)
            o.logprob.append(logprob)
            o.backoff.append(backoff)
    if not np.isfinite(uni_lp[[i for w, i in ids.items() if w not in (BOS, EOS)]]).any():
        raise DataError(f"no word of the ARPA LM {arpa_path} is in {words_txt}; check that both use the same spelling (upper case)")
    order = max(dropped)
    # Built in a folder of its own and swapped in whole at the end: a failed rebuild leaves the old
    # LM as it was, and a process that has the old arrays memory-mapped keeps reading them.
    final_dir, out_dir = out_dir, out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    try:
        info = _write_orders(arpa_path, words, words_txt, out_dir, order, uni_lp, uni_bo, orders, dropped)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    shutil.rmtree(final_dir, ignore_errors=True)
    out_dir.rename(final_dir)
    logger.info("const LM %s from %s: order %d, kept %s n-grams per order, dropped %s (words outside %s)",
                final_dir, arpa_path, order, info.kept, dropped, words_txt)
    return info


def _write_orders(arpa_path: Path, words: SymbolTable, words_txt: Path | str, out_dir: Path, order: int, uni_lp: np.ndarray,
                  uni_bo: np.ndarray, orders: dict[int, "_Order"], dropped: dict[int, int]) -> ConstLmInfo:
    """Write the arrays of every order and then ``const_lm.json`` to ``out_dir``; DataError for an
    n-gram without its prefix or one that appears twice."""
    np.save(out_dir / "order1_logprob.npy", uni_lp)
    np.save(out_dir / "order1_backoff.npy", uni_bo)
    kept = {1: int(np.isfinite(uni_lp).sum())}
    keys_below: dict[int, np.ndarray] = {}
    for n in range(2, order + 1):
        o = orders.get(n) or _Order(n)
        grams = np.frombuffer(o.ids, dtype=np.int32).reshape(-1, n)
        # Walk each n-gram's prefix down the orders below: its index there makes the key here.
        index = grams[:, 0].astype(np.int64)
        missing = ~np.isfinite(uni_lp[index])
        for k in range(1, n - 1):
            pos = _find(keys_below[k + 1], _key(index, grams[:, k]))
            missing |= pos < 0
            index = pos
        if missing.any():
            bad = grams[np.argmax(missing)]
            text = " ".join(words.name(int(i)) for i in bad)
            raise DataError(f"{arpa_path}: the {n}-gram '{text}' has no {n - 1}-gram prefix in the LM; a back-off ARPA file must "
                            "hold every n-gram's prefix (write it with SRILM, KenLM or `asr-kd train-lm`)")
        keys = _key(index, grams[:, n - 1])
        sort = np.argsort(keys, kind="stable")
        keys = keys[sort]
        if len(keys) > 1 and (keys[1:] == keys[:-1]).any():
            raise DataError(f"{arpa_path}: an {n}-gram appears twice; pass a well-formed ARPA file")
        np.save(out_dir / f"order{n}_keys.npy", keys)
        np.save(out_dir / f"order{n}_logprob.npy", np.frombuffer(o.logprob, dtype=np.float32)[sort])
        if n < order:
            np.save(out_dir / f"order{n}_backoff.npy", np.frombuffer(o.backoff, dtype=np.float32)[sort])
        keys_below[n] = keys
        kept[n] = len(keys)
    info = ConstLmInfo(order, kept, dropped, str(arpa_path), file_sha256(arpa_path), file_sha256(words_txt))
    write_text_atomic(out_dir / META_NAME, json.dumps(dataclasses.asdict(info), indent=1) + "\n")
    return info


def read_const_lm_info(directory: Path | str) -> ConstLmInfo | None:
    """Return the info of the const LM in ``directory``, or None when it holds none (or one of
    another format version)."""
    path = Path(directory) / META_NAME
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("version") != FORMAT_VERSION:
        return None
    data["kept"] = {int(k): v for k, v in data["kept"].items()}
    data["dropped"] = {int(k): v for k, v in data["dropped"].items()}
    return ConstLmInfo(**data)


class ConstArpaLm:
    """Back-off scores of a const LM (memory-mapped arrays), over a lang's word ids."""

    def __init__(self, directory: Path | str, words: SymbolTable) -> None:
        directory = Path(directory)
        info = read_const_lm_info(directory)
        if info is None:
            raise DataError(f"{directory} holds no const LM ({META_NAME}, format {FORMAT_VERSION}); build it with `asr-kd arpa-to-const`")
        self.info, self.order = info, info.order
        load = lambda name: np.load(directory / name, mmap_mode="r", allow_pickle=False)  # noqa: E731
        self.logprob = {n: load(f"order{n}_logprob.npy") for n in range(1, self.order + 1)}
        self.backoff = {n: load(f"order{n}_backoff.npy") for n in range(1, self.order)}
        self.keys = {n: load(f"order{n}_keys.npy") for n in range(2, self.order + 1)}
        self.bos, self.eos = words.id(BOS), words.id(EOS)
        self._cache: dict[tuple[int, ...], float] = {}

    def has_word(self, word_id: int) -> bool:
        """Return whether the LM has a unigram for ``word_id``."""
        return 0 <= word_id < len(self.logprob[1]) and bool(np.isfinite(self.logprob[1][word_id]))

    def _index(self, gram: Sequence[int]) -> int:
        """Index of ``gram`` in its order's arrays (-1 if the LM lacks it)."""
        if not self.has_word(gram[0]):
            return -1
        index = gram[0]
        for n in range(2, len(gram) + 1):
            keys = self.keys[n]
            key = np.uint64((index << 32) | gram[n - 1])
            pos = int(np.searchsorted(keys, key))
            if pos >= len(keys) or keys[pos] != key:
                return -1
            index = pos
        return index

    def log10_prob(self, history: Sequence[int], word: int) -> float:
        """Return ``log10 p(word | history)`` by back-off (the last ``order - 1`` words of
        ``history`` count); ``-inf`` for a word without a unigram."""
        context = tuple(history[max(0, len(history) - (self.order - 1)):])
        backoff = 0.0
        for start in range(len(context) + 1):
            ctx = context[start:]
            i = self._index((*ctx, word))
            if i >= 0:
                return backoff + float(self.logprob[len(ctx) + 1][i])
            if ctx:
                j = self._index(ctx)
                if j >= 0:
                    backoff += float(self.backoff[len(ctx)][j])
        return -math.inf

    def cost(self, word_ids: Sequence[int]) -> float:
        """Return ``-ln p(<s> words </s>)``, as :class:`asr_kd.decode.rescore.ArpaLm` does (SRILM's
        convention: a word the LM lacks is not scored, and the context starts again after it)."""
        key = tuple(word_ids)
        if key not in self._cache:
            history: list[int] = [self.bos]
            total = 0.0
            for w in (*key, self.eos):
                if not self.has_word(w):
                    history = []
                    continue
                total += self.log10_prob(history, w)
                history.append(w)
            self._cache[key] = -LN10 * total
        return self._cache[key]
