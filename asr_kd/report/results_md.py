"""Sections of a RESULTS.md file, each owned by one recipe stage or benchmark.

A section starts with a ``## `` heading and runs to the next one; writing a section replaces the
old section of the same heading and keeps every other section as it was, so stages and
benchmarks can update their own tables independently.
"""

from __future__ import annotations

from pathlib import Path

from asr_kd.utils import write_text_atomic


def write_section(path: Path | str, heading: str, text: str, header: str = "# Results\n") -> None:
    """Replace (or append) the section of ``path`` whose heading line starts with ``heading``.

    ``text`` must itself start with the heading line; ``header`` is the file's first lines when
    the file does not exist yet.
    """
    path = Path(path)
    old = path.read_text() if path.exists() else header
    sections = old.split("\n## ")
    kept = [sections[0]] + ["## " + s for s in sections[1:] if not ("## " + s).startswith(heading)]
    write_text_atomic(path, "\n".join(s.rstrip("\n") + "\n" for s in kept) + "\n" + text.rstrip("\n") + "\n")


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
