"""Small operations on kaldifst graphs that the decoding-graph builders share."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from asr_kd.errors import DataError
from asr_kd.kaldi import kaldifst
from asr_kd.utils import atomic_path


def num_arcs(fst: kaldifst.StdVectorFst) -> int:
    """Return the number of arcs of ``fst``."""
    return sum(fst.num_arcs(s) for s in kaldifst.StateIterator(fst))


def input_labels(fst: kaldifst.StdVectorFst) -> set[int]:
    """Return the set of input labels on the arcs of ``fst`` (0 included if present)."""
    return {arc.ilabel for s in kaldifst.StateIterator(fst) for arc in kaldifst.ArcIterator(fst, s)}


def zero_input_labels(fst: kaldifst.StdVectorFst, labels: Iterable[int]) -> int:
    """Replace every input label in ``labels`` by epsilon, in place; return how many arcs changed.

    This is what Kaldi's ``fstrmsymbols`` does to disambiguation symbols. The arcs are then
    re-sorted by input label: editing labels leaves the FST's cached epsilon counts stale, and
    ``arcsort`` recomputes them (LatticeSimpleDecoder skips epsilon arcs otherwise).
    """
    drop = set(labels)
    changed = 0
    for s in kaldifst.StateIterator(fst):
        for arc in kaldifst.ArcIterator(fst, s):
            if arc.ilabel in drop:
                arc.ilabel = 0
                changed += 1
    kaldifst.arcsort(fst, sort_type="ilabel")
    return changed


def shift_input_labels(fst: kaldifst.StdVectorFst, offset: int) -> None:
    """Add ``offset`` to every non-epsilon input label, in place (then arc-sort by input label)."""
    for s in kaldifst.StateIterator(fst):
        for arc in kaldifst.ArcIterator(fst, s):
            if arc.ilabel:
                arc.ilabel = arc.ilabel + offset
    kaldifst.arcsort(fst, sort_type="ilabel")


def nondeterministic_states(fst: kaldifst.StdVectorFst) -> int:
    """Return the number of states with two arcs carrying the same non-epsilon input label."""
    bad = 0
    for s in kaldifst.StateIterator(fst):
        labels = [arc.ilabel for arc in kaldifst.ArcIterator(fst, s) if arc.ilabel]
        bad += len(labels) != len(set(labels))
    return bad


def write_fst(fst: kaldifst.StdVectorFst, path: Path | str) -> None:
    """Write ``fst`` in OpenFst binary format, atomically (parent directories are created)."""
    with atomic_path(path) as tmp:
        fst.write(str(tmp))


def read_fst(path: Path | str, what: str = "graph", fix: str = "build it first") -> kaldifst.StdVectorFst:
    """Read an OpenFst binary file; DataError naming the file and ``fix`` if it is missing or
    unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist; {fix}")
    fst = kaldifst.StdVectorFst.read(str(path))
    if fst is None:  # OpenFst logs why (a truncated or foreign file) and returns no FST
        raise DataError(f"{what} {path} is not a readable OpenFst file (truncated or corrupt); {fix}")
    return fst


def fst_to_text(fst: kaldifst.StdVectorFst) -> str:
    """Return ``fst`` in OpenFst's text format (what ``fstprint`` writes, without symbol tables).

    One line ``src dst ilabel olabel cost`` per arc and ``state cost`` per final state; the start
    state's lines come first, because readers (``fstcompile``, ``k2.Fsa.from_openfst``) take the
    source of the first line as the start state. Costs are written with 9 significant digits, which
    round-trips every float32 exactly; ``StdVectorFst.to_str`` (fstprint) writes 6, which would move
    a long path's total cost by about 1e-6 relative per arc. An FST without a start state, or whose
    start state has neither arcs nor a final cost, accepts nothing and is written as ``""``.
    """
    start = fst.start
    if start < 0:
        return ""
    order = [start] + [s for s in kaldifst.StateIterator(fst) if s != start]
    lines: list[str] = []
    for s in order:
        for arc in kaldifst.ArcIterator(fst, s):
            lines.append(f"{s}\t{arc.nextstate}\t{arc.ilabel}\t{arc.olabel}\t{arc.weight.value:.9g}")
        final = fst.final(s).value
        if final != float("inf"):
            lines.append(f"{s}\t{final:.9g}")
    if not lines or not lines[0].startswith(f"{start}\t"):
        return ""
    return "\n".join(lines) + "\n"
