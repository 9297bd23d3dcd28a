"""Shared by the scripts under bench/: each one owns one ``## ...`` section of bench/RESULTS.md."""

from __future__ import annotations

from pathlib import Path

from asr_kd.report.results_md import write_section as _write_section

RESULTS_HEADER = "# Benchmarks\n\nWritten by the scripts under bench/ (`make bench`); each section names its command.\n"


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace (or append) the section of ``path`` that starts with ``heading`` by ``text``."""
    _write_section(path, heading, text, header=RESULTS_HEADER)
