"""The lang directory: its file layout (a contract with GMM training and decoding) and loading.

```
lang/
  lexicon.txt   words.txt   phones.txt   oov.txt
  phones/{silence,nonsilence,optional_silence,disambig}.{txt,int}
  L.fst   L_disambig.fst   G.fst   lm/lm.arpa   lang.json
```

``phones.txt`` numbers ``<eps>`` 0, then the silence phones (``SIL`` 1, ``SPN`` 2), then the
non-silence phones sorted, then ``#0 .. #K``. ``words.txt`` numbers ``<eps>`` 0, then the words
sorted, then ``#0``, ``<s>``, ``</s>``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Sequence

from asr_kd.errors import DataError
from asr_kd.kaldi import kaldifst
from asr_kd.lang.lexicon import Pron, read_lexicon_txt
from asr_kd.lang.symbols import SymbolTable
from asr_kd.utils import write_text_atomic

__all__ = ["Lang", "SymbolTable", "make_phone_table", "make_word_table", "write_phone_sets", "FST_NAMES"]

EPS = "<eps>"
WORD_DISAMBIG = "#0"
BOS, EOS = "<s>", "</s>"
FST_NAMES = ("L", "L_disambig", "G")
PHONE_SETS = ("silence", "nonsilence", "optional_silence", "disambig")

_FIX = "run `asr-kd prepare-lang` (recipe stage 2) to create it"


def make_phone_table(silence_phones: Sequence[str], nonsilence_phones: Iterable[str], num_disambig: int) -> SymbolTable:
    """Return phones.txt: ``<eps>``, ``silence_phones`` in the given order, the non-silence phones
    sorted, then ``#0 .. #{num_disambig - 1}``."""
    names = [EPS, *silence_phones, *sorted(nonsilence_phones), *(f"#{k}" for k in range(num_disambig))]
    return SymbolTable.from_names(names)


def make_word_table(words: Iterable[str]) -> SymbolTable:
    """Return words.txt: ``<eps>``, the words sorted, then ``#0``, ``<s>``, ``</s>``."""
    return SymbolTable.from_names([EPS, *sorted(set(words)), WORD_DISAMBIG, BOS, EOS])


def write_phone_sets(lang_dir: Path, phones: SymbolTable, sets: dict[str, Sequence[str]]) -> None:
    """Write ``phones/<set>.txt`` (names) and ``phones/<set>.int`` (ids) for each phone set."""
    for set_name, names in sets.items():
        write_text_atomic(lang_dir / "phones" / f"{set_name}.txt", "".join(f"{p}\n" for p in names))
        write_text_atomic(lang_dir / "phones" / f"{set_name}.int", "".join(f"{phones.id(p)}\n" for p in names))


def _read_list(path: Path) -> tuple[str, ...]:
    """Return the non-empty lines of ``path``; DataError naming the file if it is missing."""
    if not path.is_file():
        raise DataError(f"{path} is missing from the lang directory; {_FIX}")
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


@dataclasses.dataclass(frozen=True)
class Lang:
    """A prepared lang directory, loaded: symbol tables, lexicon and phone sets."""

    lang_dir: Path
    phones: SymbolTable
    words: SymbolTable
    lexicon: dict[str, list[Pron]]  # word -> pronunciations (phone names, no disambig symbols)
    silence_phones: tuple[str, ...]
    nonsilence_phones: tuple[str, ...]
    optional_silence: str
    disambig_phones: tuple[str, ...]
    oov_word: str

    @classmethod
    def load(cls, lang_dir: Path | str) -> "Lang":
        """Read ``lang_dir``; raise DataError naming the first missing or malformed file."""
        lang_dir = Path(lang_dir)
        if not lang_dir.is_dir():
            raise DataError(f"lang directory {lang_dir} does not exist; {_FIX}")
        phones = SymbolTable.from_file(lang_dir / "phones.txt")
        words = SymbolTable.from_file(lang_dir / "words.txt")
        lexicon: dict[str, list[Pron]] = {}
        for word, pron in read_lexicon_txt(lang_dir / "lexicon.txt"):
            lexicon.setdefault(word, []).append(pron)
        sets = {name: _read_list(lang_dir / "phones" / f"{name}.txt") for name in PHONE_SETS}
        oov = _read_list(lang_dir / "oov.txt")
        if len(sets["optional_silence"]) != 1 or len(oov) != 1:
            raise DataError(f"{lang_dir}: phones/optional_silence.txt and oov.txt must hold one symbol each; {_FIX}")
        lang = cls(
            lang_dir=lang_dir,
            phones=phones,
            words=words,
            lexicon=lexicon,
            silence_phones=sets["silence"],
            nonsilence_phones=sets["nonsilence"],
            optional_silence=sets["optional_silence"][0],
            disambig_phones=sets["disambig"],
            oov_word=oov[0],
        )
        lang._validate()
        return lang

    def _validate(self) -> None:
        """Check that the files agree with each other; DataError naming the file otherwise."""
        for name in (*self.silence_phones, *self.nonsilence_phones, *self.disambig_phones):
            if name not in self.phones:
                raise DataError(f"{self.lang_dir}/phones.txt lacks phone {name!r} listed under phones/; {_FIX}")
        for word, prons in self.lexicon.items():
            if word not in self.words:
                raise DataError(f"{self.lang_dir}/words.txt lacks lexicon word {word!r}; {_FIX}")
            for pron in prons:
                missing = [p for p in pron if p not in self.phones]
                if missing:
                    raise DataError(f"{self.lang_dir}/lexicon.txt: {word} uses unknown phone(s) {missing}; {_FIX}")
        if self.oov_word not in self.words:
            raise DataError(f"{self.lang_dir}/words.txt lacks the OOV word {self.oov_word!r} from oov.txt; {_FIX}")

    # ---- ids ----------------------------------------------------------------------------------

    @property
    def oov_id(self) -> int:
        """Return the id of the OOV word."""
        return self.words.id(self.oov_word)

    def word_ids(self, words: Sequence[str]) -> list[int]:
        """Return the ids of ``words``; words not in words.txt map to the OOV word's id."""
        oov = self.oov_id
        return [self.words.get(w, oov) for w in words]  # type: ignore[misc]

    def phone_ids(self, names: Iterable[str]) -> list[int]:
        """Return the ids of phone ``names`` (KeyError for an unknown phone)."""
        return [self.phones.id(p) for p in names]

    @property
    def disambig_phone_ids(self) -> list[int]:
        """Return the ids of ``#0 .. #K`` in phones.txt."""
        return self.phone_ids(self.disambig_phones)

    @property
    def silence_phone_ids(self) -> list[int]:
        """Return the ids of the silence phones (SIL, SPN)."""
        return self.phone_ids(self.silence_phones)

    @property
    def nonsilence_phone_ids(self) -> list[int]:
        """Return the ids of the non-silence phones."""
        return self.phone_ids(self.nonsilence_phones)

    @property
    def real_phone_ids(self) -> list[int]:
        """Return the ids of all phones that are neither ``<eps>`` nor disambiguation symbols."""
        return self.silence_phone_ids + self.nonsilence_phone_ids

    def pronunciation_phone_ids(self, words: Sequence[str]) -> list[list[tuple[int, ...]]]:
        """Return, for each word, its pronunciations as phone-id tuples (OOV words get the
        OOV word's pronunciations)."""
        out = []
        for w in words:
            prons = self.lexicon.get(w) or self.lexicon[self.oov_word]
            out.append([tuple(self.phone_ids(p)) for p in prons])
        return out

    # ---- graphs -------------------------------------------------------------------------------

    def fst_path(self, name: str) -> Path:
        """Return the path of graph ``name`` (one of L, L_disambig, G)."""
        if name not in FST_NAMES:
            raise ValueError(f"unknown lang FST {name!r}; expected one of {FST_NAMES}")
        return self.lang_dir / f"{name}.fst"

    def load_fst(self, name: str) -> kaldifst.StdVectorFst:
        """Read graph ``name`` (L, L_disambig or G); DataError naming the file if missing."""
        path = self.fst_path(name)
        if not path.is_file():
            raise DataError(f"{path} does not exist; {_FIX}")
        return kaldifst.StdVectorFst.read(str(path))
