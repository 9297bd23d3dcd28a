"""Stage 6: the students, a hard-target baseline and the distilled model of the same architecture.

``hard``: cross entropy on the stage-3 senone alignments. ``distilled``: ``kd.soft_weight * T^2 *
CE(soft targets at T) + kd.hard_weight * CE(senones)``, from the stored soft targets of stage 5
(``kd.mode=stored``, found by :func:`asr_kd.stages.s5_soft_targets.find_soft_targets`, which
refuses targets made with another T, top-k, fusion or teacher set) or with the teachers run in
the loop (``kd.mode=online``). Writes ``<exp>/students/<kind>/`` with its ``provenance.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from asr_kd.config import DnnConfig, KdConfig, TrainConfig, save_config
from asr_kd.errors import ConfigError
from asr_kd.launch import Launcher, launch_jobs
from asr_kd.stages.common import (STUDENT_SEED_OFFSET, alignment_inputs, describe_dnn, distillation_loss_of, fmt_pct, read_senones,
                                  teachers_record, trained_checkpoints, write_results)
from asr_kd.stages.layout import STUDENT_KINDS, RecipeLayout
from asr_kd.stages.provenance import StageGuard, check_outputs, config_dict, differences, read_record
from asr_kd.stages.s5_soft_targets import find_soft_targets
from asr_kd.train.checkpoint import load_checkpoint
from asr_kd.train.frame_classifier import train_frame_classifier
from asr_kd.utils import read_json, write_json_atomic

log = logging.getLogger(__name__)
# Students trained on the ensemble's soft targets: "compressed" is a distilled student of a
# smaller network (a quarter of a teacher's compute or less; run.sh --compressed-config).
DISTILLED_KINDS = ("distilled", "compressed")


def train_students(
    layout: RecipeLayout, kinds: Sequence[str], model_config: DnnConfig, train_config: TrainConfig, kd: KdConfig,
    num_teachers: int | None = None, results_md: Path | None = None, command: str = "", num_seeds: int = 1, jobs: int = 1,
    num_threads: int = 1, launcher: Launcher | None = None, per_utterance_cmvn: bool = False,
) -> dict[str, list[dict]]:
    """Train every student of ``kinds`` over ``num_seeds`` seeds (:func:`train_student`), one job
    each of ``launcher`` (default: local processes, ``jobs`` at a time), then write each kind's RESULTS.md section. Returns ``{kind:
    [summary of seed 0, seed 1, ...]}``. ``per_utterance_cmvn``: the deployable students of
    stage 9 instead (:func:`train_student`), whose section stage 9's cost table is."""
    if num_seeds < 1:
        raise ConfigError(f"--num-seeds must be >= 1, got {num_seeds}")
    runs = [(kind, i) for kind in kinds for i in range(num_seeds)]
    stage = "stage 9 ({kind} student on per-utterance CMVN, seed {i})" if per_utterance_cmvn else ""
    summaries = launch_jobs(train_student, [(layout, kind, model_config, train_config, kd, num_teachers, None, command, i, None,
                                             stage.format(kind=kind, i=i), per_utterance_cmvn) for kind, i in runs],
                            launcher, jobs, num_threads, layout.exp_dir / "log", "stage9_uttcmvn_students" if per_utterance_cmvn else "stage6_students")
    out: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for (kind, _), summary in zip(runs, summaries):
        out[kind].append(summary)
    for kind in kinds if not per_utterance_cmvn else ():
        _write_section(kind, model_config, kd, out[kind], results_md, command, [layout.student_dir(kind, i) for i in range(num_seeds)])
    return out


def train_student(
    layout: RecipeLayout, kind: str, model_config: DnnConfig, train_config: TrainConfig, kd: KdConfig,
    num_teachers: int | None = None, results_md: Path | None = None, command: str = "", seed_index: int = 0,
    out_dir: Path | None = None, stage: str = "", per_utterance_cmvn: bool = False,
) -> dict:
    """Train the student ``kind`` ("hard", "distilled" or "compressed": distilled too, meant for a
    smaller ``model_config``) with seed ``train_config.seed + 1000 +
    seed_index`` in ``<exp>/students/<kind>[_seed<k>]`` (or ``out_dir``), or skip it when its
    record matches. ``stage`` names it in the log and its record (default: stage 6's name).
    ``per_utterance_cmvn``: trained on features normalised per utterance (not with the training
    part's per-speaker statistics), in ``<kind>_uttcmvn``: a student that a model directory can
    give any file without losing accuracy to a normalisation it never saw (stage 9); the soft
    targets stay the ensemble's on per-speaker normalised features, so distillation carries them
    across the change of input (whether they do is what stage 9 measures).
    Returns its summary (``{"steps", "stop_reason", "best_dev_frame_accuracy", "soft_targets",
    "seed", "soft_targets_dir"}``, also in ``summary.json``)."""
    _check_student(kind, seed_index)
    senones = read_senones(layout)  # before the inputs: without stage 3, the error names its senones.json
    cfg, config, inputs, train_cuts, soft_record = _student_settings(layout, kind, train_config, model_config, kd, num_teachers, seed_index,
                                                                     per_utterance_cmvn)
    exp_dir = out_dir or layout.student_dir(kind, seed_index, per_utterance_cmvn)
    guard = StageGuard(stage or f"stage 6 ({kind} student, seed {seed_index})", exp_dir, config, inputs, command)
    summary_path = exp_dir / "summary.json"
    if guard.needs_work():
        loss = None
        if kind in DISTILLED_KINDS:
            if guard.is_main:  # under torchrun the other ranks read rank 0's files (the record hashes them)
                save_config(kd, exp_dir / "kd.yaml")
            loss = distillation_loss_of(layout, kd, num_teachers)
        start = time.time()
        kwargs = {"compute_loss": loss} if loss is not None else {}
        cmvns = (None, None) if per_utterance_cmvn else (layout.cmvn(layout.train_part), layout.cmvn(layout.dev_part))
        result = train_frame_classifier(
            train_cuts, layout.ali_cuts(layout.dev_part), *cmvns, senones.num_senones, model_config, cfg, exp_dir, resume=True,
            per_utterance_cmvn=per_utterance_cmvn, **kwargs,
        )
        log.info("student %s: %s, best dev frame accuracy %s (%.0f s)", kind, result.state.stop_reason, result.state.best_metric, time.time() - start)
        load_checkpoint(result.final_path)  # a truncated final.pt stops here, before the record is written
        summary = {"steps": result.state.step, "stop_reason": result.state.stop_reason, "best_dev_frame_accuracy": result.state.best_metric,
                   "soft_targets": None if soft_record is None else soft_record.config, "seed": cfg.seed,
                   "soft_targets_dir": None if soft_record is None else Path(train_cuts).parent.name, "train_seconds": round(time.time() - start, 1)}
        if guard.is_main:
            write_json_atomic(summary_path, summary)
        guard.finish([summary_path, *trained_checkpoints(exp_dir)])
    summary = read_json(summary_path)
    assert isinstance(summary, dict)
    if results_md is not None:
        _write_section(kind, model_config, kd, [summary], results_md, command, [exp_dir])
    return summary


def _check_student(kind: str, seed_index: int) -> None:
    if kind not in STUDENT_KINDS:
        raise ConfigError(f"student kind must be one of {STUDENT_KINDS}, got {kind!r}")
    if seed_index < 0:
        raise ConfigError(f"seed index must be >= 0, got {seed_index}")


def _student_settings(
    layout: RecipeLayout, kind: str, train_config: TrainConfig, model_config: DnnConfig, kd: KdConfig, num_teachers: int | None,
    seed_index: int, per_utterance_cmvn: bool = False,
) -> tuple[TrainConfig, dict, dict, Path, Any]:
    """What the student ``kind`` of seed ``seed_index`` is made from: its TrainConfig (the seed
    set), the config and inputs its record holds, its training cuts and the soft targets' record."""
    _check_student(kind, seed_index)
    if per_utterance_cmvn and kind in DISTILLED_KINDS and kd.mode != "stored":
        raise ConfigError("a student on per-utterance CMVN learns from stored soft targets (kd.mode=stored): teachers run in the loop "
                          "would see its per-utterance normalised input, not the per-speaker one they were trained on; use a kd config "
                          "with mode: stored, or train only --kind hard on it (run.sh --deploy-uttcmvn hard)")
    cfg = dataclasses.replace(train_config, seed=train_config.seed + STUDENT_SEED_OFFSET + seed_index)
    train_cuts: Path = layout.ali_cuts(layout.train_part)
    config: dict = {"dnn": model_config, "train": cfg, "kind": kind, "train_part": layout.train_part, "dev_part": layout.dev_part}
    if per_utterance_cmvn:  # only when set: stage 6's own students keep their records
        config["cmvn"] = "utterance"
    inputs = alignment_inputs(layout)
    soft_record = None
    if kind in DISTILLED_KINDS:
        config["kd"] = kd
        if kd.mode == "stored":
            train_cuts, soft_record = find_soft_targets(layout, kd, num_teachers, "stage 6 (distilled student)")
            inputs["soft_targets"] = soft_record.fingerprint
        else:
            teachers = teachers_record(layout)
            inputs["teachers"] = teachers.fingerprint
            config["num_teachers"] = num_teachers
    return cfg, config, inputs, train_cuts, soft_record


def matching_student(
    folders: Sequence[Path], layout: RecipeLayout, kind: str, model_config: DnnConfig, train_config: TrainConfig, kd: KdConfig,
    num_teachers: int | None = None, seed_index: int = 0,
) -> Path | None:
    """The first of ``folders`` that holds a finished student whose record names exactly the
    settings and inputs :func:`train_student` would train ``kind`` of seed ``seed_index`` with now,
    its outputs intact (the rule of :class:`StageGuard`), so another stage can use it without
    training it again; None when none does."""
    _, config, inputs, _, _ = _student_settings(layout, kind, train_config, model_config, kd, num_teachers, seed_index)
    wanted = config_dict(config)
    for folder in folders:
        record = read_record(folder)
        if record is not None and not differences(record.config, wanted, record.inputs, inputs) and check_outputs(folder, record.outputs) is None:
            return folder
    return None


def _write_section(kind: str, model_config: DnnConfig, kd: KdConfig, summaries: Sequence[dict], results_md: Path | None, command: str,
                   dirs: Sequence[Path]) -> None:
    """The RESULTS.md section of the ``kind`` students, one line per seed, from their summaries."""
    first = summaries[0]
    how = "hard targets (senone alignments)" if kind == "hard" else (
        f"distilled, kd.mode={kd.mode}, loss={kd.loss}, T={kd.temperature:g}, soft weight {kd.soft_weight:g}, hard weight {kd.hard_weight:g}"
        + (f", from `{first.get('soft_targets_dir')}`" if first.get("soft_targets_dir") else ""))
    seeds = "; ".join(f"seed {s.get('seed', '?')}: {s['steps']} steps ({s['stop_reason']}), best dev frame accuracy "
                      f"{fmt_pct(s['best_dev_frame_accuracy'])}" for s in summaries)
    body = f"{describe_dnn(model_config)}; {how}. {seeds}.\n"
    write_results(results_md, f"## Student: {kind} (stage 6)", body, command, dirs)
