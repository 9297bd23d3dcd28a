"""Shared by the scripts under bench/: each one owns one ``## ...`` section of bench/RESULTS.md."""

from __future__ import annotations

from pathlib import Path

from asr_kd.report.results_md import write_section as _write_section
from asr_kd.stages.provenance import code_version

RESULTS_HEADER = "# Benchmarks\n\nWritten by the scripts under bench/ (`make bench`); each section names its command.\n"


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace (or append) the section of ``path`` that starts with ``heading`` by ``text``, with
    the code version that measured it (``-dirty``: uncommitted changes) as its last line unless
    its environment lines (asr_kd.stages.common.environment_lines) already name it."""
    if "(git " not in text and "Measured with asr-kd at " not in text:  # a section copied from another RESULTS.md has it
        text = f"{text.rstrip()}\n\nMeasured with asr-kd at {code_version()}.\n"
    _write_section(path, heading, text, header=RESULTS_HEADER)
