"""What the hybrid stages 4-8 share: the stage-3 senone record, trained models, RESULTS.md sections."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import torch

from asr_kd.config import DnnConfig, KdConfig
from asr_kd.errors import ConfigError, DataError
from asr_kd.models.dnn import SplicedDnn
from asr_kd.report.results_md import write_section
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageRecord, describe_environment, read_record, require_current, require_record
from asr_kd.train.frame_classifier import load_frame_classifier

# Students start from other seeds than the teachers: a baseline with teacher 0's seed would be
# teacher 0 itself (training is deterministic on CPU).
STUDENT_SEED_OFFSET = 1000


@dataclasses.dataclass(frozen=True)
class SenoneInfo:
    """What stage 3 says about its senones: their number, the GMM system and its HCLG."""

    num_senones: int
    model: Path
    graph: Path


def read_senones(layout: RecipeLayout) -> SenoneInfo:
    """Return the :class:`SenoneInfo` of ``<exp>/gmm/ali/senones.json`` (paths resolved against
    the gmm folder); DataError if stage 3 has not run or the file lacks a field."""
    path = layout.senones_json
    if not path.is_file():
        stage = ("stage 3's DNN realignment (run.sh --alignments dnn --stage 3, or asr-kd realign)" if layout.alignments == "dnn"
                 else "stage 3 (asr-kd train-gmm)")
        raise DataError(f"{path} does not exist; run {stage} first")
    try:
        info = json.loads(path.read_text())
        return SenoneInfo(int(info["num_senones"]), layout.gmm / info["model"], layout.gmm / info["graph"])
    except (KeyError, ValueError, TypeError) as err:
        raise DataError(f"{path} lacks a valid {err} field; rerun stage 3 (asr-kd train-gmm)") from None


def gmm_record(layout: RecipeLayout) -> StageRecord:
    """Return stage 3's provenance record; DataError naming stage 3 if it has not finished, or if
    stage 1's features or stage 2's lang (words, LM) were made again since (every later stage
    reads them beside stage 3's outputs)."""
    current = {}
    for key, folder in (("features", layout.features("fbank")), ("lang", layout.lang)):
        record = read_record(folder)
        if record is not None:
            current[key] = record.fingerprint
    return require_current(layout.gmm, "stage 3 (asr-kd train-gmm)", current)


def alignment_inputs(layout: RecipeLayout) -> dict[str, str]:
    """Return the input fingerprints of the senone alignments ``layout`` trains on: stage 3's
    record, and with ``alignments="dnn"`` the DNN realignment's record too (DataError naming the
    stage to run when it has not finished, or when an earlier stage was redone after it)."""
    inputs = {"gmm": gmm_record(layout).fingerprint}
    if layout.alignments == "dnn":
        inputs["realign"] = require_current(layout.realign, "the DNN realignment (run.sh --alignments dnn --stage 3)", inputs).fingerprint
    return inputs


def teachers_record(layout: RecipeLayout) -> StageRecord:
    """Return stage 4's record; DataError naming stage 4 if it has not finished, or if the
    alignments it was trained on were made again since (:func:`alignment_inputs`)."""
    return require_current(layout.teachers, "stage 4 (asr-kd train-teachers)", alignment_inputs(layout))


def student_record(layout: RecipeLayout, exp_dir: Path, stage_hint: str) -> StageRecord:
    """Return the record of the stage-6 student in ``exp_dir``; DataError naming ``stage_hint`` if
    it has not finished, or if what it was trained from was made again since: its alignments,
    stage 4's teachers (an online student) or its stored soft targets (named in its
    ``summary.json``; DataError naming stage 5 when those were made before the teachers were)."""
    current = alignment_inputs(layout)
    teachers = read_record(layout.teachers)
    if teachers is not None:
        current["teachers"] = teachers.fingerprint
    try:
        soft_name = json.loads((exp_dir / "summary.json").read_text()).get("soft_targets_dir")
    except (OSError, ValueError, AttributeError):
        soft_name = None
    if soft_name and read_record(layout.soft_root / soft_name) is not None:
        upstream = {k: v for k, v in current.items() if k == "teachers"}
        current["soft_targets"] = require_current(layout.soft_root / soft_name, "stage 5 (soft targets)", upstream).fingerprint
    return require_current(exp_dir, stage_hint, current)


def recorded_alignments(layout: RecipeLayout) -> str | None:
    """Return the alignments ("gmm" or "dnn") stage 4's teachers were trained on, from its record
    (None when stage 4 has not run): what model directories and later decodes must use."""
    record = read_record(layout.teachers)
    return None if record is None else "dnn" if "realign" in record.inputs else "gmm"


def describe_alignments(layout: RecipeLayout) -> str:
    """Return whose senone alignments ``layout`` trains and scores on, for the tables."""
    return ("the first-pass DNN's realignment (stage 3, --alignments dnn)" if layout.alignments == "dnn"
            else "the triphone GMM's senone alignments (stage 3)")


def with_recorded_alignments(layout: RecipeLayout) -> RecipeLayout:
    """Return ``layout`` reading the alignments stage 4's teachers were trained on
    (:func:`recorded_alignments`; the GMM's before stage 4 has run): what tools outside the
    recipe's own run use."""
    return dataclasses.replace(layout, alignments=recorded_alignments(layout) or "gmm")


def check_alignments(layout: RecipeLayout) -> None:
    """ConfigError when stage 4's teachers were trained on other alignments than ``layout``'s: a
    later stage would mix labels (and priors) of two aligners."""
    recorded = recorded_alignments(layout)
    if recorded is not None and recorded != layout.alignments:
        raise ConfigError(f"the teachers in {layout.teachers} were trained on the {recorded.upper()} alignments, this stage was asked "
                          f"for the {layout.alignments.upper()} ones; pass --alignments {recorded}, or rerun stage 4 "
                          f"(and stage 3 for dnn) with --alignments {layout.alignments}")


def model_checkpoint(exp_dir: Path) -> Path:
    """Return ``exp_dir/best.pt`` (best dev frame accuracy) if it exists, else ``final.pt``;
    DataError if the run never finished."""
    for name in ("best.pt", "final.pt"):
        if (exp_dir / name).is_file():
            return exp_dir / name
    raise DataError(f"{exp_dir} holds no best.pt or final.pt; train that model first (stages 4 and 6)")


def trained_checkpoints(exp_dir: Path) -> list[Path]:
    """Return a training run's checkpoints for its stage record to hash: ``final.pt`` and, where
    the run kept one, ``best.pt`` (what :func:`model_checkpoint` and later stages load)."""
    return [exp_dir / "final.pt"] + ([exp_dir / "best.pt"] if (exp_dir / "best.pt").is_file() else [])


def recorded_num_teachers(layout: RecipeLayout) -> int:
    """Return the number of teachers stage 4 trained, from its record."""
    return int(require_record(layout.teachers, "stage 4 (asr-kd train-teachers)").config["num_teachers"])


def checked_num_teachers(layout: RecipeLayout, num_teachers: int | None = None) -> int:
    """Return ``num_teachers`` (default: all that stage 4 recorded); DataError if stage 4 did not
    train that many."""
    recorded = recorded_num_teachers(layout)
    n = recorded if num_teachers is None else num_teachers
    if not 1 <= n <= recorded:
        raise DataError(f"{n} teachers asked for, but stage 4 trained {recorded} in {layout.teachers}; "
                        f"pass --num-teachers 1..{recorded} or rerun stage 4 with --num-teachers {n}")
    return n


def load_teachers(layout: RecipeLayout, num_teachers: int | None = None, device: str | torch.device = "cpu") -> list[SplicedDnn]:
    """Return the first ``num_teachers`` (default: all that stage 4 recorded) trained teachers, in
    eval mode; DataError if stage 4 has not produced them."""
    n = checked_num_teachers(layout, num_teachers)
    return [load_frame_classifier(model_checkpoint(layout.teacher_dir(i)), device) for i in range(n)]


def distillation_loss_of(layout: RecipeLayout, kd: KdConfig, num_teachers: int | None = None):
    """The ``compute_loss`` of a distilled student: stage 5's stored targets (``kd.mode=stored``,
    read from the batches) or the first ``num_teachers`` teachers run in the loop (``online``)."""
    from asr_kd.kd.ensemble import TeacherEnsemble
    from asr_kd.kd.student import OnlineDistillationLoss, StoredDistillationLoss

    if kd.mode == "stored":
        return StoredDistillationLoss(kd)
    return OnlineDistillationLoss(TeacherEnsemble(load_teachers(layout, num_teachers), kd.fusion), kd)


def describe_dnn(cfg: DnnConfig) -> str:
    return (f"{cfg.num_hidden_layers} x {cfg.hidden_dim} ReLU, window {cfg.left_context} + 1 + {cfg.right_context} "
            f"frames of {cfg.feature_dim} fbank"
            + (f" projected to {cfg.frame_projection_dim}" if cfg.frame_projection_dim else "")
            + (f", linear bottleneck of {cfg.bottleneck_dim}" if cfg.bottleneck_dim else ""))


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def write_results(results_md: Path | None, heading: str, body: str, command: str, stage_dirs: Sequence[Path] = (),
                  after: str | None = None) -> None:
    """(Re)write the RESULTS.md section ``heading``, quoting the command that produced it and
    where the stages of ``stage_dirs`` ran (from their records); a new section goes right after
    the one headed ``after`` when given."""
    if results_md is not None:
        text = f"{heading}\n\n" + (f"Produced by `{command}`.\n\n" if command else "") + body + environment_lines(stage_dirs)
        write_section(results_md, heading, text, after=after)


def environment_lines(stage_dirs: Sequence[Path]) -> str:
    """Return the distinct "Ran on ..." lines of the records in ``stage_dirs`` ("" when none)."""
    lines = dict.fromkeys(describe_environment(read_record(d)) for d in stage_dirs)
    return "".join(f"\n{line}\n" for line in lines if line)
