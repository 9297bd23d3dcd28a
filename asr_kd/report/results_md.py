"""Sections of a RESULTS.md file, each owned by one recipe stage or benchmark.

A section starts with a ``## `` heading and runs to the next one; writing a section replaces the
old section of the same heading and keeps every other section as it was, so stages and
benchmarks can update their own tables independently.
"""

from __future__ import annotations

import re
from pathlib import Path

from asr_kd.errors import ConfigError, DataError
from asr_kd.utils import atomic_path, folder_lock, not_rank_0, write_text_atomic


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
    return next((s for s in sections(path) if s.startswith(heading)), None) if path.exists() else None


# The second paragraph of a section import_run wrote (an HTML comment, not shown by Markdown
# viewers): what tells such a section from one of the file's own with the same heading.
IMPORT_MARK = "<!-- asr-kd import-results: another run's sections, their headings one level down -->"


def sections(path: Path | str) -> list[str]:
    """Return the ``## `` sections of ``path`` in order, each from its heading line to the next
    one (the file's header before the first section left out)."""
    return ["## " + s for s in ("\n" + Path(path).read_text()).split("\n## ")[1:]]


def import_run(source: Path | str, into: Path | str, heading: str, lead: str = "") -> str:
    """Put every section of another run's RESULTS.md (``source``) into ``into`` as one section,
    ``## <heading>``, above the first section already there (where a section of that heading
    exists, in its place), and return that section's text.

    The imported sections keep every line but their headings, which go one level down (``## X``
    becomes ``### X``): the runs of ``into``'s own stages replace their ``## `` sections by heading
    (:func:`write_section`) and never touch the imported ones, even where a heading is the same.
    ``lead`` (paragraphs) comes between the heading and the imported sections. How the headline
    run of the recipe reaches RESULTS.md above the demo's sections (README, "The headline run").

    ``heading`` must not begin like a section of ``into`` (nor one of them like it): a stage that
    replaces its section by the start of its heading would replace the imported one too.

    A file the sections link to by a relative path (stage 8's ``table5_dev_accuracy.png``) is
    copied from ``source``'s folder into ``imported/<heading's slug>/`` beside ``into``, and the
    link rewritten to the copy: ``into``'s folder has files of those names, its own stages'."""
    source, into = Path(source), Path(into)
    if not source.is_file():
        raise DataError(f"{source}: no such results file; pass the RESULTS.md that the run's --results named")
    imported = sections(source)
    if not imported:
        raise DataError(f"{source}: holds no '## ' section to import; has the run finished a stage?")
    if not heading.strip() or heading.startswith("#") or "\n" in heading:
        raise ConfigError(f"the heading is one line of text without its '#' marks, got {heading!r}")
    body = [f"## {heading}\n", IMPORT_MARK + "\n"] + ([lead.strip("\n") + "\n"] if lead.strip() else [])
    body += ["#" + s.rstrip("\n") + "\n" for s in imported]
    line = f"## {heading}"
    existing = sections(into) if into.exists() else []
    # An earlier import under this heading is replaced in place; every other section must differ.
    others = [s.split("\n", 1)[0] for s in existing if not (s.split("\n", 1)[0].rstrip() == line and IMPORT_MARK in s)]
    clash = next((h for h in others if h.startswith(line) or line.startswith(h) or h.split()[:4] == line.split()[:4]), None)
    if clash is not None:
        raise ConfigError(f"heading {heading!r} begins like {into}'s section '{clash}': a stage writing that section would "
                          "replace the imported one; choose a heading of its own (e.g. 'Headline run: ...')")
    text = _copy_linked_files("\n".join(body), source, into, heading)
    first = others[0] if others else None
    write_section(into, line, text, before=first)
    return text


# A Markdown link or image's target: "](target)" or "](target "title")".
_LINK = re.compile(r"\]\(([^)\s]+)((?:\s+\"[^\"]*\")?)\)")


def _copy_linked_files(text: str, source: Path, into: Path, heading: str) -> str:
    """Copy every file that ``text`` links to by a relative path (relative to ``source``'s folder)
    into ``imported/<slug of heading>/`` beside ``into`` and point the links at the copies; links
    to web addresses, absolute paths and anchors stay as they are. A link to a file outside
    ``source``'s folder (``..``) or missing from it is a DataError."""
    slug = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")[:60].rstrip("-") or "run"
    folder = Path("imported") / slug

    def relink(m: re.Match[str]) -> str:
        target = m.group(1)
        if re.match(r"^([a-z][a-z0-9+.-]*:|/|#)", target, re.IGNORECASE):
            return m.group(0)
        origin = source.parent / target
        if ".." in Path(target).parts or not origin.is_file():
            raise DataError(f"{source}: links to {target}, which is not in {source.parent}; copy it there (or drop the link) "
                            "and import again, or the section would show the file of that name beside the file it goes into")
        copy = folder / target
        with atomic_path(into.parent / copy) as tmp:
            tmp.write_bytes(origin.read_bytes())
        return f"]({copy.as_posix()}{m.group(2)})"

    return _LINK.sub(relink, text)
