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

from asr_kd.config import DnnConfig, KdConfig, TrainConfig, save_config
from asr_kd.errors import ConfigError
from asr_kd.kd.ensemble import TeacherEnsemble
from asr_kd.kd.student import OnlineDistillationLoss, StoredDistillationLoss
from asr_kd.stages.common import STUDENT_SEED_OFFSET, describe_dnn, fmt_pct, gmm_record, load_teachers, read_senones, write_results
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageGuard, require_record
from asr_kd.stages.s5_soft_targets import find_soft_targets
from asr_kd.train.checkpoint import load_checkpoint
from asr_kd.train.frame_classifier import train_frame_classifier
from asr_kd.utils import read_json, write_json_atomic

log = logging.getLogger(__name__)
STUDENT_KINDS = ("hard", "distilled")


def train_student(
    layout: RecipeLayout, kind: str, model_config: DnnConfig, train_config: TrainConfig, kd: KdConfig,
    num_teachers: int | None = None, results_md: Path | None = None, command: str = "",
) -> dict:
    """Train the student ``kind`` ("hard" or "distilled") with seed ``train_config.seed + 1000`` in
    ``<exp>/students/<kind>``, or skip it when its record matches. Returns its summary
    (``{"steps", "stop_reason", "best_dev_frame_accuracy", "kd"}``, also in ``summary.json``)."""
    if kind not in STUDENT_KINDS:
        raise ConfigError(f"student kind must be one of {STUDENT_KINDS}, got {kind!r}")
    senones = read_senones(layout)
    cfg = dataclasses.replace(train_config, seed=train_config.seed + STUDENT_SEED_OFFSET)
    exp_dir = layout.student_dir(kind)
    train_cuts: Path = layout.ali_cuts(layout.train_part)
    config: dict = {"dnn": model_config, "train": cfg, "kind": kind, "train_part": layout.train_part, "dev_part": layout.dev_part}
    inputs = {"gmm": gmm_record(layout).fingerprint}
    soft_record = None
    if kind == "distilled":
        config["kd"] = kd
        if kd.mode == "stored":
            train_cuts, soft_record = find_soft_targets(layout, kd, num_teachers, "stage 6 (distilled student)")
            inputs["soft_targets"] = soft_record.fingerprint
        else:
            teachers = require_record(layout.teachers, "stage 4 (asr-kd train-teachers)")
            inputs["teachers"] = teachers.fingerprint
            config["num_teachers"] = num_teachers
    guard = StageGuard(f"stage 6 ({kind} student)", exp_dir, config, inputs, command)
    summary_path = exp_dir / "summary.json"
    if guard.needs_work():
        loss = None
        if kind == "distilled":
            save_config(kd, exp_dir / "kd.yaml")
            if kd.mode == "stored":
                loss = StoredDistillationLoss(kd)
            else:
                loss = OnlineDistillationLoss(TeacherEnsemble(load_teachers(layout, num_teachers), kd.fusion), kd)
        start = time.time()
        kwargs = {"compute_loss": loss} if loss is not None else {}
        result = train_frame_classifier(
            train_cuts, layout.ali_cuts(layout.dev_part), layout.cmvn(layout.train_part), layout.cmvn(layout.dev_part),
            senones.num_senones, model_config, cfg, exp_dir, resume=True, **kwargs,
        )
        log.info("student %s: %s, best dev frame accuracy %s (%.0f s)", kind, result.state.stop_reason, result.state.best_metric, time.time() - start)
        load_checkpoint(result.final_path)  # a truncated final.pt stops here, before the record is written
        summary = {"steps": result.state.step, "stop_reason": result.state.stop_reason, "best_dev_frame_accuracy": result.state.best_metric,
                   "soft_targets": None if soft_record is None else soft_record.config}
        write_json_atomic(summary_path, summary)
        guard.finish([summary_path, exp_dir / "final.pt"])
    summary = read_json(summary_path)
    assert isinstance(summary, dict)
    how = "hard targets (senone alignments)" if kind == "hard" else (
        f"distilled, kd.mode={kd.mode}, loss={kd.loss}, T={kd.temperature:g}, soft weight {kd.soft_weight:g}, hard weight {kd.hard_weight:g}"
        + (f", from `{soft_record and Path(train_cuts).parent.name}`" if soft_record is not None else ""))
    body = (f"{describe_dnn(model_config)}; {how}; {summary['steps']} steps ({summary['stop_reason']}); "
            f"best dev frame accuracy {fmt_pct(summary['best_dev_frame_accuracy'])}.\n")
    write_results(results_md, f"## Student: {kind} (stage 6)", body, command)
    return summary
