"""RESULTS.md sections: each writer replaces its own section where it stands."""

from __future__ import annotations

from pathlib import Path

from asr_kd.report.results_md import read_section, write_section


def test_sections_are_replaced_in_place_and_appended_when_new(tmp_path: Path) -> None:
    md = tmp_path / "RESULTS.md"
    write_section(md, "## A", "## A\n\nfirst a\n")
    write_section(md, "## B (x)", "## B (x)\n\nfirst b\n")
    write_section(md, "## B (x, y)", "## B (x, y)\n\nb with y\n")  # a heading that extends another is its own section
    write_section(md, "## A", "## A\n\nsecond a\n")
    text = md.read_text()
    assert text == "# Results\n\n## A\n\nsecond a\n\n## B (x)\n\nfirst b\n\n## B (x, y)\n\nb with y\n"
    assert read_section(md, "## B (x)") == "## B (x)\n\nfirst b\n"
    assert read_section(md, "## C") is None
    # A file with the same section twice (written by an older version) keeps one, in the first place.
    md.write_text(text + "\n## A\n\nstale a\n")
    write_section(md, "## A", "## A\n\nthird a\n")
    assert md.read_text() == "# Results\n\n## A\n\nthird a\n\n## B (x)\n\nfirst b\n\n## B (x, y)\n\nb with y\n"
