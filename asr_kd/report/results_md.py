"""Sections of a RESULTS.md file, each owned by one recipe stage or benchmark.

A section starts with a ``## `` heading and runs to the next one; writing a section replaces the
old section of the same heading and keeps every other section as it was, so stages and
benchmarks can update their own tables independently.
"""

from __future__ import annotations

from pathlib import Path

from asr_kd.utils import folder_lock, not_rank_0, write_text_atomic


def write_section(path: Path | str, heading: str, text: str, header: str = "# Results\n", after: str | None = None,
                  before: str | None = None) -> None:
    """Replace, where it stands, the section of ``path`` whose heading line starts with
    ``heading`` (or, when there is none, put it right after the section whose heading starts with
    ``after``, else right before the one whose heading starts with ``before``, else at the end;
    duplicates of it are dropped).

    ``text`` must itself start with the heading line; ``header`` is the file's first lines when
    the file does not exist yet.
    """
    if not_rank_0():  # under torchrun every rank runs the stage; rank 0 writes RESULTS.md
        return
    path = Path(path)
    # Stages may finish side by side (CTC stage 6 trains --nj students at once): the read, edit and
    # rename below run under a lock on the folder, so no writer drops another's section.
    with folder_lock(path.parent):
        _replace_section(path, heading, text, header, after, before)


def _replace_section(path: Path, heading: str, text: str, header: str, after: str | None, before: str | None) -> None:
    old = path.read_text() if path.exists() else header
    sections = old.split("\n## ")
    out = [sections[0]]
    placed = False
    for s in ("## " + s for s in sections[1:]):
        if not s.startswith(heading):
            out.append(s)
        elif not placed:
            out.append(text)
            placed = True
    if not placed:
        anchor = next((i + 1 for i, sec in enumerate(out) if i > 0 and after is not None and sec.startswith(after)), None)
        if anchor is None:
            anchor = next((i for i, sec in enumerate(out) if i > 0 and before is not None and sec.startswith(before)), len(out))
        out.insert(anchor, text)
    write_text_atomic(path, "\n".join(s.rstrip("\n") + "\n" for s in out))


def read_section(path: Path | str, heading: str) -> str | None:
    """Return the section of ``path`` that starts with ``heading``, or None."""
    path = Path(path)
    if not path.exists():
        return None
    for s in path.read_text().split("\n## "):
        s = s if s.startswith("## ") else "## " + s
        if s.startswith(heading):
            return s
    return None
