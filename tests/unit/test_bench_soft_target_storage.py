"""bench/soft_target_storage.py's section heading: --title keeps a second corpus's study beside the first."""

from __future__ import annotations

import runpy
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_a_titled_study_gets_its_own_section(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    bench = runpy.run_path(str(REPO_ROOT / "bench" / "soft_target_storage.py"))
    assert bench["section_heading"](None) == "## Compact teacher storage against accuracy (bench/soft_target_storage.py)"
    assert bench["section_heading"]("Teacher storage on small") == "## Teacher storage on small (bench/soft_target_storage.py)"
    # Without a finished recipe run it says so and exits 0, --title accepted.
    assert bench["main"](["--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp"), "--title", "On small"]) == 0
    assert "no finished recipe run under" in capsys.readouterr().out
