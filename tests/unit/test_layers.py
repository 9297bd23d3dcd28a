"""The layering rule of issue 10: the library packages never import a stage module (asr_kd.stages)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

LIBRARY_PACKAGES = ("gmm", "kd", "ctc", "data", "decode", "lang", "models", "train", "metrics")


def _stage_imports(path: Path, text: str | None = None) -> list[str]:
    """Return ``line: module`` for every import of asr_kd.stages in ``path`` (top level or in a function)."""
    package = list(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])  # e.g. ["asr_kd", "decode"]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8") if text is None else text)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):  # a relative import (from ..stages import x) made absolute
            base = package[: len(package) - node.level + 1] if node.level else []
            names = [".".join(base + ([node.module] if node.module else []))]
            names += [f"{names[0]}.{a.name}" for a in node.names] if not node.module else []
        else:
            names = []
        found += [f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {n}" for n in names if n == "asr_kd.stages" or n.startswith("asr_kd.stages.")]
    return found


def test_library_packages_never_import_a_stage() -> None:
    files = [p for pkg in LIBRARY_PACKAGES for p in sorted((REPO_ROOT / "asr_kd" / pkg).rglob("*.py"))]
    assert len(files) > 20
    assert [hit for p in files for hit in _stage_imports(p)] == []
    # The scan sees imports inside functions too (deploy, not a library package, has one there),
    # and relative ones.
    assert _stage_imports(REPO_ROOT / "asr_kd" / "deploy" / "recipe_paths.py")


def test_the_scan_resolves_relative_imports() -> None:
    text = "from ..stages import common\nfrom ..stages.layout import A\nfrom . import hlg\nfrom .. import stages\n"
    hits = _stage_imports(REPO_ROOT / "asr_kd" / "decode" / "x.py", text)  # the path only names the package
    assert [h.split(": ")[1] for h in hits] == ["asr_kd.stages", "asr_kd.stages.layout", "asr_kd.stages"]
