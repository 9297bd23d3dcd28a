"""bench/decode_beams.py: --title keeps a second corpus's measurement in its own section."""

from __future__ import annotations

import runpy
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_a_titled_run_gets_its_own_section(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    bench = runpy.run_path(str(REPO_ROOT / "bench" / "decode_beams.py"))
    default, small = bench["section_heading"](None), bench["section_heading"]("Decoding beams on small")
    assert (default, small) == ("## Decoding beams on a recipe run", "## Decoding beams on small")
    results = tmp_path / "RESULTS.md"
    for heading, body in ((default, "mini"), (small, "small v1"), (small, "small v2")):
        bench["write_section"](results, heading, f"{heading} (bench/decode_beams.py)\n\n{body}\n")
    text = results.read_text()
    assert text.count("## ") == 2 and "mini" in text and "small v2" in text and "small v1" not in text
    # Without a finished recipe run it says so and exits 0, --title accepted.
    assert bench["main"](["--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp"), "--title", "On small"]) == 0
    assert "decode_beams" in capsys.readouterr().out
