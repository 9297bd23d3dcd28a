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


def test_a_new_section_goes_after_its_anchor_and_then_stays_where_it_stands(tmp_path: Path) -> None:
    md = tmp_path / "RESULTS.md"
    for h in ("## A", "## B", "## C"):
        write_section(md, h, f"{h}\n\n{h[3:].lower()}\n")
    write_section(md, "## A2", "## A2\n\na2\n", after="## A")
    assert md.read_text() == "# Results\n\n## A\n\na\n\n## A2\n\na2\n\n## B\n\nb\n\n## C\n\nc\n"
    write_section(md, "## A2", "## A2\n\nnew a2\n", after="## C")  # an existing section is replaced in place
    write_section(md, "## D", "## D\n\nd\n", after="## missing")  # no anchor: at the end
    assert md.read_text() == "# Results\n\n## A\n\na\n\n## A2\n\nnew a2\n\n## B\n\nb\n\n## C\n\nc\n\n## D\n\nd\n"


def _write_many(path: str, worker: int) -> None:
    from asr_kd.report.results_md import write_section

    for i in range(40):
        write_section(path, f"## worker {worker} section {i}", f"## worker {worker} section {i}\n\n{'x' * 2000}\n")


def test_sections_written_side_by_side_are_all_kept(tmp_path) -> None:
    # CTC stage 6 trains several students at once, each writing its own section when it ends: the
    # read-edit-rename of one writer must not drop another's section.
    import concurrent.futures
    import multiprocessing

    path = tmp_path / "RESULTS.md"
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_write_many, [str(path)] * 4, range(4)))
    text = path.read_text()
    assert all(f"## worker {w} section {i}\n" in text for w in range(4) for i in range(40))


def test_a_new_section_goes_before_its_successor_when_it_has_no_predecessor(tmp_path: Path) -> None:
    md = tmp_path / "RESULTS.md"
    for h in ("## A", "## B"):
        write_section(md, h, f"{h}\n\n{h[3:].lower()}\n")
    write_section(md, "## Z", "## Z\n\nz\n", after="## missing", before="## A")
    write_section(md, "## B1", "## B1\n\nb1\n", after="## B", before="## A")  # after wins when both anchors exist
    write_section(md, "## C", "## C\n\nc\n", before="## missing")  # no anchor: at the end
    assert md.read_text() == "# Results\n\n## Z\n\nz\n\n## A\n\na\n\n## B\n\nb\n\n## B1\n\nb1\n\n## C\n\nc\n"


def test_another_runs_sections_become_one_section_above_this_files_own(tmp_path: Path) -> None:
    import pytest

    from asr_kd.errors import DataError
    from asr_kd.report.results_md import IMPORT_MARK, import_run, sections

    run, md = tmp_path / "small" / "RESULTS.md", tmp_path / "RESULTS.md"
    run.parent.mkdir()
    # The other run's file as its stages write it (the same headings as this file's stages).
    write_section(run, "## GMM-HMM (stage 3)", "## GMM-HMM (stage 3)\n\n| tri | 30.7% |\n")
    write_section(run, "## Table 1 analogue", "## Table 1 analogue\n\n| baseline | 16.3% |\n\nPaper numbers: x\n")
    write_section(md, "## GMM-HMM (stage 3)", "## GMM-HMM (stage 3)\n\n| tri | 64.3% |\n")
    write_section(md, "## Table 1 analogue", "## Table 1 analogue\n\n| baseline | 54.3% |\n")

    text = import_run(run, md, "Headline run: small", lead="Imported from small.")
    assert text == (f"## Headline run: small\n\n{IMPORT_MARK}\n\nImported from small.\n\n### GMM-HMM (stage 3)\n\n| tri | 30.7% |\n\n"
                    "### Table 1 analogue\n\n| baseline | 16.3% |\n\nPaper numbers: x\n")
    assert [s.split("\n", 1)[0] for s in sections(md)] == ["## Headline run: small", "## GMM-HMM (stage 3)", "## Table 1 analogue"]
    # This file's stages rewrite their own sections and leave the imported ones as they were.
    write_section(md, "## Table 1 analogue", "## Table 1 analogue\n\n| baseline | 52.0% |\n")
    assert read_section(md, "## Headline run") == text
    assert read_section(md, "## Table 1 analogue") == "## Table 1 analogue\n\n| baseline | 52.0% |\n"
    # Importing again replaces the section where it stands; the run's own file is never changed.
    write_section(run, "## Table 1 analogue", "## Table 1 analogue\n\n| baseline | 15.9% |\n")
    before = run.read_text()
    import_run(run, md, "Headline run: small")
    assert run.read_text() == before
    assert md.read_text().count("## Headline run") == 1 and "| baseline | 15.9% |" in sections(md)[0]
    assert "| baseline | 16.3% |" not in md.read_text()
    # Into a file without sections, and the one-line errors.
    assert import_run(run, tmp_path / "new.md", "H").startswith(f"## H\n\n{IMPORT_MARK}\n\n### GMM-HMM")
    with pytest.raises(DataError, match="no such results file"):
        import_run(tmp_path / "missing.md", md, "H")
    (tmp_path / "empty.md").write_text("# Results\n")
    with pytest.raises(DataError, match="holds no '## ' section"):
        import_run(tmp_path / "empty.md", md, "H")
    # A heading that begins like one of the file's sections (or it like the heading) is refused: the
    # stage writing that section would replace the imported one.
    from asr_kd.errors import ConfigError

    for bad in ("Table 1 analogue (small)", "GMM-HMM", "Table 1 analogue"):
        with pytest.raises(ConfigError, match="begins like"):
            import_run(run, md, bad)
    with pytest.raises(ConfigError, match="without its '#' marks"):
        import_run(run, md, "## H")
    assert [s.split("\n", 1)[0] for s in sections(md)] == ["## Headline run: small", "## GMM-HMM (stage 3)", "## Table 1 analogue"]


def test_an_imported_sections_pictures_are_the_runs_own(tmp_path: Path) -> None:
    """A file the other run's sections link to (stage 8's plot) is copied beside the file it goes
    into, under imported/<slug>/, and the link points there: the demo's plot of the same name
    stays the demo's. Web links stay; a link to a file the run's folder lacks is refused."""
    import pytest

    from asr_kd.errors import DataError
    from asr_kd.report.results_md import import_run

    run, md = tmp_path / "small" / "RESULTS.md", tmp_path / "recipe" / "RESULTS.md"
    run.parent.mkdir()
    md.parent.mkdir()
    (run.parent / "table5_dev_accuracy.png").write_bytes(b"the small run's plot")
    (run.parent / "plots").mkdir()
    (run.parent / "plots" / "cost.png").write_bytes(b"cost")
    (md.parent / "table5_dev_accuracy.png").write_bytes(b"the demo's plot")
    write_section(run, "## Table 5 analogue", "## Table 5 analogue\n\n![dev accuracy](table5_dev_accuracy.png)\n\n"
                  "[paper](https://arxiv.org/abs/1503.02531), ![cost](plots/cost.png \"cost\") and [top](#top)\n")
    write_section(md, "## Table 5 analogue", "## Table 5 analogue\n\n![dev accuracy](table5_dev_accuracy.png)\n")

    text = import_run(run, md, "Headline run: small (issue 13)")
    assert ("![dev accuracy](imported/headline-run-small-issue-13/table5_dev_accuracy.png)\n\n[paper](https://arxiv.org/abs/1503.02531), "
            "![cost](imported/headline-run-small-issue-13/plots/cost.png \"cost\") and [top](#top)\n") in text
    assert (md.parent / "imported/headline-run-small-issue-13/table5_dev_accuracy.png").read_bytes() == b"the small run's plot"
    assert (md.parent / "imported/headline-run-small-issue-13/plots/cost.png").read_bytes() == b"cost"
    assert (md.parent / "table5_dev_accuracy.png").read_bytes() == b"the demo's plot"
    assert read_section(md, "## Table 5 analogue") == "## Table 5 analogue\n\n![dev accuracy](table5_dev_accuracy.png)\n"
    # Importing again after the run redrew its plot brings the new one.
    (run.parent / "table5_dev_accuracy.png").write_bytes(b"redrawn")
    import_run(run, md, "Headline run: small (issue 13)")
    assert (md.parent / "imported/headline-run-small-issue-13/table5_dev_accuracy.png").read_bytes() == b"redrawn"
    (run.parent / "plots" / "cost.png").unlink()
    before = md.read_text()
    with pytest.raises(DataError, match=r"links to plots/cost.png, which is not in .*small"):
        import_run(run, md, "Headline run: small (issue 13)")
    assert md.read_text() == before
    # A link out of the run's folder is refused too, though the file exists: its copy could not
    # keep the path, and two such links of one name would overwrite each other.
    (run.parent / "plots" / "cost.png").write_bytes(b"cost")
    (tmp_path / "elsewhere.png").write_bytes(b"not the run's")
    write_section(run, "## Table 5 analogue", "## Table 5 analogue\n\n![other](../elsewhere.png)\n")
    with pytest.raises(DataError, match=r"links to \.\./elsewhere.png, which is not in .*small"):
        import_run(run, md, "Headline run: small (issue 13)")
    assert md.read_text() == before and not (md.parent / "imported/headline-run-small-issue-13/elsewhere.png").exists()
