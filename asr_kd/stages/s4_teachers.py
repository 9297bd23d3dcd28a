"""Stage 4: the teacher ensemble, N spliced-frame DNNs trained on the stage-3 senone alignments,
differing only in their seed (the paper's speech ensemble, section 4).

Reads ``<exp>/gmm`` (stage 3: alignment cuts, senone count; its record) and stage 1's CMVN;
writes ``<exp>/teachers/teacher<i>/`` (train_frame_classifier's layout: final.pt, best.pt, ...)
and ``<exp>/teachers/provenance.json``. Skipped when that record matches; an interrupted run of
the same settings resumes from its checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from asr_kd.config import DnnConfig, TrainConfig, save_config
from asr_kd.errors import ConfigError
from asr_kd.launch import Launcher, describe_launch, launch_jobs
from asr_kd.stages.common import alignment_inputs, describe_alignments, describe_dnn, fmt_pct, read_senones, trained_checkpoints, write_results
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageGuard
from asr_kd.train.checkpoint import load_checkpoint
from asr_kd.train.frame_classifier import train_frame_classifier
from asr_kd.utils import read_json, write_json_atomic

log = logging.getLogger(__name__)
HEADING = "## Teacher ensemble (stage 4)"


def _train_teacher(layout: RecipeLayout, i: int, num_teachers: int, num_senones: int, model_config: DnnConfig, train_config: TrainConfig) -> dict:
    """Train (or resume) teacher ``i`` with seed ``train_config.seed + i``; return its summary entry."""
    cfg = dataclasses.replace(train_config, seed=train_config.seed + i)
    start = time.time()
    log.info("teacher %d of %d: seed %d -> %s", i + 1, num_teachers, cfg.seed, layout.teacher_dir(i))
    result = train_frame_classifier(
        layout.ali_cuts(layout.train_part), layout.ali_cuts(layout.dev_part), layout.cmvn(layout.train_part),
        layout.cmvn(layout.dev_part), num_senones, model_config, cfg, layout.teacher_dir(i), resume=True,
    )
    seconds = time.time() - start
    log.info("teacher %d: %s, best dev frame accuracy %s (%.0f s)", i, result.state.stop_reason, result.state.best_metric, seconds)
    load_checkpoint(result.final_path)  # a truncated final.pt stops here, before the record is written
    return {"seed": cfg.seed, "steps": result.state.step, "best_dev_frame_accuracy": result.state.best_metric,
            "stop_reason": result.state.stop_reason, "train_seconds": round(seconds, 1)}


def train_teachers(
    layout: RecipeLayout, num_teachers: int, model_config: DnnConfig, train_config: TrainConfig,
    results_md: Path | None = None, command: str = "", jobs: int = 1, num_threads: int = 1, launcher: Launcher | None = None,
) -> dict:
    """Train ``num_teachers`` DNNs (seeds ``train_config.seed + i``) in ``<exp>/teachers``, one
    job each of ``launcher`` (default: local processes, ``jobs`` at a time, of ``num_threads`` torch
    threads), or skip them when the stage's record matches. Returns ``{"teachers": [{"seed", "steps", "best_dev_frame_accuracy",
    "stop_reason", "train_seconds"}, ...]}`` (also stored in ``summary.json``)."""
    if num_teachers < 1:
        raise ConfigError(f"--num-teachers must be >= 1, got {num_teachers}")
    senones = read_senones(layout)
    guard = StageGuard("stage 4 (teachers)", layout.teachers,
                       {"dnn": model_config, "train": train_config, "num_teachers": num_teachers, "train_part": layout.train_part,
                        "dev_part": layout.dev_part},
                       alignment_inputs(layout), command)
    summary_path = layout.teachers / "summary.json"
    if guard.needs_work():
        start = time.time()
        teachers = launch_jobs(_train_teacher, [(layout, i, num_teachers, senones.num_senones, model_config, train_config) for i in range(num_teachers)],
                               launcher, jobs, num_threads, layout.exp_dir / "log", "stage4_teachers")
        log.info("%d teacher%s trained in %.0f s %s", num_teachers, "" if num_teachers == 1 else "s", time.time() - start,
                 describe_launch(launcher, jobs, num_teachers))
        if guard.is_main:  # under torchrun the other ranks read rank 0's files (the record hashes them)
            save_config(model_config, layout.teachers / "dnn.yaml")
            save_config(train_config, layout.teachers / "train.yaml")
            write_json_atomic(summary_path, {"num_senones": senones.num_senones, "teachers": teachers})
        guard.finish([summary_path, *(c for i in range(num_teachers) for c in trained_checkpoints(layout.teacher_dir(i)))])
    summary = read_json(summary_path)
    assert isinstance(summary, dict)
    rows = [f"| teacher{i} | {t['seed']} | {t['steps']} | {fmt_pct(t['best_dev_frame_accuracy'])} |" for i, t in enumerate(summary["teachers"])]
    body = (f"{num_teachers} DNNs ({describe_dnn(model_config)}), {summary['num_senones']} senones, differing only in the seed, trained on "
            f"{describe_alignments(layout)}.\n\n"
            "| Teacher | Seed | Steps | Best dev frame accuracy |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    write_results(results_md, HEADING, body, command, [layout.teachers])
    return summary

