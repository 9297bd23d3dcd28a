"""Move a data or experiment folder: rewrite the absolute paths its lhotse manifests hold.

lhotse manifests name audio files, feature storage and stored arrays (senone alignments, soft
targets) by absolute path, so a folder moved to another disk leaves manifests that point at the
old place. :func:`relocate_manifests` rewrites, in every ``*.jsonl.gz`` / ``*.jsonl`` manifest
under the folder, each string that is the old prefix or starts with ``<old prefix>/``; paths
outside the old prefix (e.g. a LibriSpeech copy that did not move) are left alone. Then it checks
that the rewritten paths exist.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

from asr_kd.errors import DataError
from asr_kd.utils import atomic_path, open_text

log = logging.getLogger(__name__)

PATH_KEYS = ("source", "storage_path")  # the manifest fields that hold file paths


@dataclasses.dataclass(frozen=True)
class RelocateReport:
    """What :func:`relocate_manifests` changed: manifests read and rewritten, path strings
    rewritten, and rewritten paths that do not exist at the new place (with examples)."""

    manifests: int
    manifests_changed: int
    paths_changed: int
    missing: int
    missing_examples: list[str]


def _rewrite(value: Any, fix: Callable[[str], str]) -> Any:
    """Return ``value`` (parsed JSON) with ``fix`` applied to the strings under ``PATH_KEYS``."""
    if isinstance(value, dict):
        return {k: (fix(v) if k in PATH_KEYS and isinstance(v, str) else _rewrite(v, fix)) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, fix) for v in value]
    return value


def relocate_manifests(folder: Path | str, old_prefix: Path | str, new_prefix: Path | str | None = None, dry_run: bool = False) -> RelocateReport:
    """Rewrite ``old_prefix`` to ``new_prefix`` (default: ``folder`` itself, absolute) in the path
    fields of every manifest under ``folder``; with ``dry_run``, only count. Returns the
    :class:`RelocateReport`. DataError if ``folder`` does not exist or holds no manifest."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist; pass the moved data or experiment folder")
    old = str(old_prefix).rstrip("/")
    new = str(Path(new_prefix).absolute() if new_prefix is not None else folder.absolute()).rstrip("/")
    if not old.startswith("/"):
        raise DataError(f"the old prefix {old!r} must be an absolute path (the folder's former location)")
    manifests = sorted(p for pattern in ("*.jsonl.gz", "*.jsonl") for p in folder.rglob(pattern))
    if not manifests:
        raise DataError(f"{folder} holds no lhotse manifest (*.jsonl.gz); pass the data folder (e.g. recipes/librispeech/data)")
    changed_files = changed_paths = 0
    missing: list[str] = []

    for path in manifests:
        count = 0

        def fix(s: str) -> str:
            nonlocal count
            if s != old and not s.startswith(old + "/"):
                return s
            count += 1
            moved = new + s[len(old):]
            if not Path(moved).exists():
                missing.append(moved)
            return moved

        with open_text(path) as f:
            items = [_rewrite(json.loads(line), fix) for line in f if line.strip()]
        if count and not dry_run:
            with atomic_path(path) as tmp, open_text(tmp, "w") as out:  # the temporary name keeps .gz
                for item in items:
                    out.write(json.dumps(item) + "\n")
        changed_files += bool(count)
        changed_paths += count
    report = RelocateReport(len(manifests), changed_files, changed_paths, len(missing), sorted(set(missing))[:5])
    log.info("%s: %d of %d manifests hold %d paths under %s -> %s%s", folder, changed_files, len(manifests), changed_paths, old, new,
             " (dry run)" if dry_run else "")
    if missing:
        log.warning("%d rewritten paths do not exist under %s, e.g. %s", len(missing), new, report.missing_examples)
    return report
