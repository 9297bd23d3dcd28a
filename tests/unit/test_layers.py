"""The layering rule of issue 10: the library packages never import a stage module (asr_kd.stages)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

LIBRARY_PACKAGES = ("gmm", "kd", "ctc", "data", "decode", "lang", "models", "train", "metrics")


def _stage_imports(path: Path) -> list[str]:
    """Return ``line: module`` for every import of asr_kd.stages in ``path`` (top level or in a function)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        found += [f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {n}" for n in names if n == "asr_kd.stages" or n.startswith("asr_kd.stages.")]
    return found


def test_library_packages_never_import_a_stage() -> None:
    files = [p for pkg in LIBRARY_PACKAGES for p in sorted((REPO_ROOT / "asr_kd" / pkg).rglob("*.py"))]
    assert len(files) > 20
    assert [hit for p in files for hit in _stage_imports(p)] == []
    # The scan sees imports inside functions too: deploy (not a library package) has one there.
    assert _stage_imports(REPO_ROOT / "asr_kd" / "deploy" / "recipe_paths.py")
