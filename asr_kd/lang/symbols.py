"""Kaldi-format symbol tables (``words.txt``, ``phones.txt``): a name <-> integer id mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from asr_kd.errors import DataError
from asr_kd.utils import write_text_atomic


class SymbolTable:
    """A bijection between symbol names and non-negative integer ids.

    The text format is Kaldi's: one ``NAME ID`` pair per line, names without whitespace. Ids need
    not be contiguous, but names and ids must both be unique.
    """

    def __init__(self, pairs: Iterable[tuple[str, int]] = ()) -> None:
        self._name2id: dict[str, int] = {}
        self._id2name: dict[int, str] = {}
        for name, i in pairs:
            self.add(name, i)

    @classmethod
    def from_names(cls, names: Iterable[str], start: int = 0) -> "SymbolTable":
        """Return a table numbering ``names`` consecutively from ``start``."""
        return cls((name, start + k) for k, name in enumerate(names))

    def add(self, name: str, i: int | None = None) -> int:
        """Add ``name`` with id ``i`` (default: one past the largest id); return its id.

        Raises ValueError for a name with whitespace, a negative id, or a duplicate name or id.
        """
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"symbol {name!r} is empty or contains whitespace")
        if i is None:
            i = max(self._id2name, default=-1) + 1
        if i < 0:
            raise ValueError(f"symbol {name!r} has negative id {i}")
        if name in self._name2id:
            raise ValueError(f"duplicate symbol {name!r}")
        if i in self._id2name:
            raise ValueError(f"duplicate id {i} (for {name!r} and {self._id2name[i]!r})")
        self._name2id[name] = i
        self._id2name[i] = name
        return i

    @classmethod
    def from_file(cls, path: Path | str) -> "SymbolTable":
        """Read a Kaldi symbol table; raise DataError naming the file and line if it is malformed."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"symbol table {path} does not exist; run `asr-kd prepare-lang` to create it")
        table = cls()
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or not fields[1].isdigit():
                raise DataError(f"{path}:{lineno}: expected 'NAME ID', got {line!r}; fix or regenerate the file")
            try:
                table.add(fields[0], int(fields[1]))
            except ValueError as err:
                raise DataError(f"{path}:{lineno}: {err}; fix or regenerate the file") from None
        return table

    def to_text(self) -> str:
        """Return the table in Kaldi text format, ordered by id."""
        return "".join(f"{name} {i}\n" for i, name in sorted(self._id2name.items()))

    def to_file(self, path: Path | str) -> None:
        """Write the table in Kaldi text format (atomically)."""
        write_text_atomic(path, self.to_text())

    def id(self, name: str) -> int:
        """Return the id of ``name``; KeyError if absent."""
        return self._name2id[name]

    def name(self, i: int) -> str:
        """Return the name with id ``i``; KeyError if absent."""
        return self._id2name[i]

    def get(self, name: str, default: int | None = None) -> int | None:
        """Return the id of ``name``, or ``default`` if absent."""
        return self._name2id.get(name, default)

    def names(self) -> list[str]:
        """Return all names, ordered by id."""
        return [name for _, name in sorted(self._id2name.items())]

    def ids(self) -> list[int]:
        """Return all ids, ascending."""
        return sorted(self._id2name)

    def max_id(self) -> int:
        """Return the largest id (-1 for an empty table)."""
        return max(self._id2name, default=-1)

    def __contains__(self, name: object) -> bool:
        return name in self._name2id

    def __len__(self) -> int:
        return len(self._name2id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SymbolTable) and self._name2id == other._name2id

    def __repr__(self) -> str:
        return f"SymbolTable({len(self)} symbols)"
