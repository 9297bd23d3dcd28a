"""The paper's speech tables as RESULTS.md sections, and the stage-8 plot.

- Table 1 (Hinton, Vinyals & Dean 2015, section 4): baseline / N x ensemble / distilled single
  model, test frame accuracy and WER, and the share of the ensemble's frame-accuracy gain that
  the distilled model keeps (the paper: 80%+).
- Table 5 (section 6): a model trained on 3% of the training data with hard targets (early
  stopping) or with the full ensemble's soft targets, beside the 100%-data hard baseline; train
  and test frame accuracy.

Our numbers come from the run; the paper's are printed beside them, cited, for comparison only
(different data, model size and senone inventory).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

PAPER_CITATION = "Hinton, Vinyals & Dean (2015), Distilling the Knowledge in a Neural Network"
# Table 1 of the paper: test frame accuracy and WER (Google voice search, 10 x 2,560-unit DNNs).
PAPER_TABLE1 = {
    "baseline": (58.9, 10.9),
    "ensemble": (61.1, 10.7),  # 10 x ensemble
    "distilled": (60.8, 10.7),
}
# Table 5 of the paper: train and test frame accuracy.
PAPER_TABLE5 = {
    "hard_100": (63.4, 58.9),
    "hard_3": (67.3, 44.5),
    "soft_3": (65.4, 57.0),
}


@dataclasses.dataclass(frozen=True)
class SystemScore:
    """One row of Table 1: a system's test frame accuracy and WER (fractions; WER with S/D/I)."""

    name: str
    frame_accuracy: float
    wer: float | None = None
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_words: int = 0
    dev_frame_accuracy: float | None = None
    # The out-of-domain test part's WER (with its word count), when the table has one.
    ood_wer: float | None = None
    ood_ref_words: int = 0
    # A student over several seeds: the numbers above are means, these their standard deviations.
    seeds: int = 1
    frame_accuracy_std: float = 0.0
    wer_std: float = 0.0
    # Decoding tuned on dev: the dev WER at the chosen scale, and the scale(s) (one per seed).
    dev_wer: float | None = None
    acoustic_scales: tuple[float, ...] = ()
    # The word insertion penalty chosen with the scale (decode.insertion_penalties; 0: none).
    insertion_penalty: float = 0.0
    # The searched grids whose edge the dev choice lies at (ScaleSweep.edges): the best may lie beyond.
    grid_edges: tuple[str, ...] = ()


def gain_kept(baseline: float, ensemble: float, student: float) -> float:
    """Return ``(student - baseline) / (ensemble - baseline)``: the share of the ensemble's
    improvement over the baseline that the student keeps (NaN when the ensemble gained nothing).
    The paper's frame accuracies give (60.8 - 58.9) / (61.1 - 58.9) = 86%."""
    gain = ensemble - baseline
    return (student - baseline) / gain if gain > 0 else math.nan


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def format_table1(
    baseline: SystemScore, ensemble: SystemScore, distilled: SystemScore, num_teachers: int,
    extra_rows: Sequence[SystemScore] = (), corpus: str = "", command: str = "", ood_part: str = "",
    share_interval: Mapping[str, Any] | None = None,
) -> str:
    """Return the markdown section ``## Table 1 analogue ...``: our rows beside the paper's, and
    the share of the ensemble's frame-accuracy gain kept by the distilled model (with its
    bootstrap interval when ``share_interval`` is given)."""
    lines = ["## Table 1 analogue: baseline, ensemble, distilled (stage 7)", ""]
    if command:
        lines += [f"Produced by `{command}`" + (f" on {corpus}." if corpus else "."), ""]
    ood_head = f" {ood_part} WER | {ood_relative_head('WER increase', ood_part)} |" if ood_part else ""
    tuned = any(r.dev_wer is not None for r in (baseline, ensemble, distilled))
    penalised = any(r.insertion_penalty for r in (baseline, ensemble, distilled, *extra_rows))
    dev_head = (" Dev WER (acoustic scale, word insertion penalty where not 0) |" if penalised else " Dev WER (acoustic scale) |") if tuned else ""
    lines += [
        "| System | Test frame accuracy | Test WER (S/D/I) | Dev frame accuracy |" + dev_head + ood_head + " Paper: frame accuracy | Paper: WER |",
        "|---|---|---|---|" + ("---|" if tuned else "") + ("---|---|" if ood_part else "") + "---|---|",
    ]
    paper = {"baseline": PAPER_TABLE1["baseline"], "ensemble": PAPER_TABLE1["ensemble"], "distilled": PAPER_TABLE1["distilled"]}
    labels = [("baseline", "Baseline (hard targets)", baseline), ("ensemble", f"{num_teachers} x Ensemble", ensemble),
              ("distilled", "Distilled single model", distilled)]
    for key, label, row in labels:
        p_acc, p_wer = paper[key]
        lines.append(f"| {_label(label, row)} | {_acc_cell(row)} | {_wer_cell(row)} | {_pct(row.dev_frame_accuracy)} |{_dev_cell(row, tuned)}"
                     f"{_ood_cells(row, ood_part)} {p_acc}% | {p_wer}% |")
    for row in extra_rows:
        lines.append(f"| {_label(row.name, row)} | {_acc_cell(row)} | {_wer_cell(row)} | {_pct(row.dev_frame_accuracy)} |{_dev_cell(row, tuned)}"
                     f"{_ood_cells(row, ood_part)} | |")
    edges = describe_grid_edges([(_label(label, row), row.grid_edges) for _, label, row in labels]
                                + [(_label(row.name, row), row.grid_edges) for row in extra_rows])
    if edges:
        lines += ["", edges]
    kept = gain_kept(baseline.frame_accuracy, ensemble.frame_accuracy, distilled.frame_accuracy)
    paper_kept = gain_kept(PAPER_TABLE1["baseline"][0], PAPER_TABLE1["ensemble"][0], PAPER_TABLE1["distilled"][0])
    shown = f"**{_pct(kept, 0)}**" if share_interval is None else f"**{format_share(share_interval)}**"
    lines += ["", f"Share of the ensemble's test frame-accuracy gain kept by the distilled model: {shown} "
              f"(paper: {_pct(paper_kept, 0)}, \"more than 80%\")."]
    if baseline.wer is not None and ensemble.wer is not None and distilled.wer is not None:
        # A share of a WER gain is meaningless when the gain is a fraction of a point (as in the
        # paper: 0.2), so the changes are shown as they are.
        lines.append(f"Test WER change from the baseline: ensemble {100 * (ensemble.wer - baseline.wer):+.2f} points, distilled "
                     f"{100 * (distilled.wer - baseline.wer):+.2f} points (paper: -0.2 and -0.2).")
    lines += ["", f"Paper numbers: {PAPER_CITATION}, Table 1 (Google voice search, 10 DNNs of 8 x 2,560 units, "
              "~14,000 senones); ours are measured by this recipe and are not comparable in absolute terms."]
    return "\n".join(lines) + "\n"


def relative_change(ood: float | None, test: float | None) -> str:
    """Return the out-of-domain number's change relative to the test part's, ``ood / test - 1``, as
    a signed whole percentage (``+52%``, ``-33%``): the cell of every table's "Relative ...,
    <ood> vs test" column. "" (an empty cell) when either number is missing, "n/a" when the test
    number is 0."""
    if ood is None or test is None or math.isnan(ood) or math.isnan(test):
        return ""
    return f"{ood / test - 1:+.0%}" if test > 0 else "n/a"


def ood_relative_head(measure: str, ood_part: str) -> str:
    """Return the heading of that column, e.g. ``Relative WER increase, test-ood vs test``."""
    return f"Relative {measure}, {ood_part} vs test"


def _ood_cells(row: SystemScore, ood_part: str) -> str:
    """The out-of-domain columns of a Table 1 row: its WER and the relative increase over test."""
    if not ood_part:
        return ""
    if row.ood_wer is None or row.wer is None:
        return " not decoded | |"
    return f" {_pct(row.ood_wer, 2)} (of {row.ood_ref_words}) | {relative_change(row.ood_wer, row.wer)} |"


def _label(label: str, row: SystemScore) -> str:
    return f"{label}, mean of {row.seeds} seeds" if row.seeds > 1 else label


def _acc_cell(row: SystemScore) -> str:
    return f"{100 * row.frame_accuracy:.1f} ± {100 * row.frame_accuracy_std:.1f}%" if row.seeds > 1 else _pct(row.frame_accuracy)


def _dev_cell(row: SystemScore, tuned: bool) -> str:
    if not tuned:
        return ""
    if row.dev_wer is None:
        return " not decoded |"
    penalty = f", word insertion penalty {row.insertion_penalty:g}" if row.insertion_penalty else ""
    edge = ", grid edge" if row.grid_edges else ""  # which grid: the sentence under the table
    return f" {_pct(row.dev_wer, 2)} ({', '.join(f'{s:g}' for s in row.acoustic_scales)}{penalty}{edge}) |"


def _wer_cell(row: SystemScore) -> str:
    if row.wer is None:
        return "not decoded"
    if row.seeds > 1:  # per-seed S/D/I: exp/decode/table1.json
        return f"{100 * row.wer:.2f} ± {100 * row.wer_std:.2f}% (of {row.ref_words})"
    return f"{_pct(row.wer, 2)} ({row.substitutions}/{row.deletions}/{row.insertions} of {row.ref_words})"


def describe_grid_edges(rows: Sequence[tuple[str, Sequence[str]]], scales_key: str = "acoustic_scales",
                        penalties_key: str = "insertion_penalties") -> str:
    """Return the sentence under a table naming each row whose dev choice lies at the edge of a
    searched grid (``rows``: ``(row, ScaleSweep.edges)`` pairs; ``scales_key`` and
    ``penalties_key``: the DecodeConfig fields of the scale and penalty grids), or "" when none does."""
    named = [f"{row} ({' and '.join(edges)})" for row, edges in rows if edges]
    if not named:
        return ""
    return (f"Dev choice at the edge of its searched grid (the best may lie beyond it; widen decode.{scales_key} or "
            f"decode.{penalties_key}): {'; '.join(named)}.")


def format_interval(iv: Mapping[str, Any], scale: float = 100.0, digits: int = 2, unit: str = "") -> str:
    """``+1.23 [+0.40, +2.05]`` of a stored :class:`asr_kd.metrics.paired.BootstrapInterval`."""
    if iv["value"] is None or (isinstance(iv["value"], float) and math.isnan(iv["value"])):
        return "n/a"
    v, lo, hi = (scale * float(iv[k]) for k in ("value", "low", "high"))
    return f"{v:+.{digits}f}{unit} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def significance(iv: Mapping[str, Any] | None, better_if_negative: bool, reference: str = "the baseline") -> str:
    """Whether the difference interval ``iv`` from ``reference`` excludes 0, and which way."""
    if iv is None:
        return "not decoded"
    if not iv["excludes_zero"]:
        return "no: within noise (the interval contains 0)"
    better = (iv["high"] < 0) == better_if_negative
    return "yes, " + ("better" if better else "worse") + f" than {reference}"


def seed_agreement(iv: Mapping[str, Any], pairs: Sequence[float] = ()) -> str:
    """Whether a paired difference counts: "noise" when its interval contains 0, "seed noise" when
    some seed pair (seed k minus seed k, the training variance the bootstrap leaves out) differs in
    sign from the interval (a pair of exactly 0 disagrees), else "higher" or "lower"."""
    if not iv["excludes_zero"]:
        return "noise"
    sign = 1.0 if iv["low"] > 0 else -1.0
    if any(x * sign <= 0 for x in pairs):
        return "seed noise"
    return "higher" if sign > 0 else "lower"


ONE_SEED = " One seed per student: the intervals cover the choice of test utterances, not of the seed."


def comparison_intro(reference: str, level: float, resamples: int, seeds: str) -> str:
    """The sentence above a table of differences from ``reference`` (e.g. "the baseline") with
    paired bootstrap intervals, followed by ``seeds`` (how seeds were pooled, or :data:`ONE_SEED`)."""
    return (f"Differences from {reference}, with {100 * level:.0f}% confidence intervals from a paired bootstrap over utterances "
            f"({resamples} resamples; Bisani & Ney 2004).{seeds}")


def format_comparisons(comparisons: Mapping[str, Any], test_part: str, ood_part: str = "", num_seeds: int = 1) -> str:
    """Return the paragraph under Table 1 that says which differences are significant: WER and
    frame-accuracy differences from the baseline with 95% paired bootstrap intervals (from
    ``<exp>/decode/comparisons.json``, :func:`asr_kd.stages.s7_decode.compare_groups`)."""
    parts = [p for p in (test_part, ood_part) if p and p in comparisons["parts"]]
    if not parts:
        return ""
    first = comparisons["parts"][parts[0]]
    level = next((iv["level"] for d in first["differences"].values() for iv in d.values()), 0.95)
    resamples = next((iv["resamples"] for d in first["differences"].values() for iv in d.values()), 0)
    seeds = (f" The students' per-utterance counts are averaged over their {num_seeds} seeds first; ± is the standard deviation over seeds."
             if num_seeds > 1 else ONE_SEED)
    lines = ["", comparison_intro("the baseline", level, resamples, seeds), "",
             "| Part | Comparison | WER difference, points | Significant? | Frame accuracy difference, points | Significant? |",
             "|---|---|---|---|---|---|"]
    for part in parts:
        diffs = comparisons["parts"][part]["differences"]
        for key, label in (("ensemble-baseline", "Ensemble − baseline"), ("distilled-baseline", "Distilled − baseline"),
                           ("compressed-baseline", "Compressed distilled − baseline")):
            if key not in diffs and key == "compressed-baseline":
                continue  # a run without the compressed student
            d = diffs.get(key, {})
            wer, acc = d.get("wer"), d.get("frame_accuracy")
            lines.append(f"| {part} | {label} | {format_interval(wer) if wer else 'not decoded'} | {significance(wer, True)} | "
                         f"{format_interval(acc) if acc else 'n/a'} | {significance(acc, False) if acc else 'n/a'} |")
    return "\n".join(lines) + "\n"


def format_share(iv: Mapping[str, Any]) -> str:
    """``61% (95% CI 40% to 85%)`` of a stored share interval (resamples in which the reference
    gained nothing have no share and are left out)."""
    if iv["value"] is None or (isinstance(iv["value"], float) and math.isnan(iv["value"])):
        return "n/a (no gain to share)"
    if iv["low"] is None or (isinstance(iv["low"], float) and math.isnan(iv["low"])):
        return f"{100 * iv['value']:.0f}%"
    return f"{100 * iv['value']:.0f}% ({100 * iv['level']:.0f}% CI {100 * iv['low']:.0f}% to {100 * iv['high']:.0f}%)"


@dataclasses.dataclass(frozen=True)
class SubsetRun:
    """One row of Table 5: train frame accuracy (on the run's own training cuts), test and (where
    the recipe has one) the out-of-domain test part."""

    name: str
    train_frame_accuracy: float
    test_frame_accuracy: float
    epochs: int = 0
    stop_reason: str = ""
    ood_frame_accuracy: float | None = None


def format_table5(
    hard_100: SubsetRun, hard_3: SubsetRun, soft_3: SubsetRun, fraction: float, num_teachers: int,
    plot_name: str = "", corpus: str = "", command: str = "", comparisons: Mapping[str, Any] | None = None, online: bool = False,
    *, hard_weight: float, per_seed: Sequence[Mapping[str, SubsetRun]] = (), ood_part: str = "",
    hard_100_seeds: Sequence[SubsetRun] = (),
) -> str:
    """Return the markdown section ``## Table 5 analogue ...`` with the paper's numbers beside
    ours and, if given, a link to the dev-accuracy plot (relative to RESULTS.md) and the paired
    bootstrap intervals of ``comparisons`` (``soft_vs_hard``: soft minus hard on the subset;
    ``gap_recovered``: the share of the hard subset-to-full gap the soft targets recover).
    ``online``: the soft targets were the ensemble's whole distribution, computed in the loop;
    ``hard_weight``: the soft model's weight of the hard labels (0: soft targets only).
    ``per_seed``: with two or more seeds, each seed's ``hard_3`` and ``soft_3`` runs; their rows
    then give the mean ± standard deviation over seeds and every seed's epochs, and
    ``comparisons["gap_recovered_per_seed"]`` each seed's share. ``ood_part``: the out-of-domain
    test part, columns of its frame accuracy and of that accuracy's change relative to the test
    part's, and (``comparisons["ood"]``) its own intervals.
    ``hard_100_seeds``: with two or more, stage 6's hard students whose mean ``hard_100`` is; the
    100% row then gives their mean ± standard deviation."""
    seeds = len(per_seed) if len(per_seed) > 1 else 1
    pct = f"{100 * fraction:g}%"
    lines = [f"## Table 5 analogue: {pct} of the training data, hard vs soft targets (stage 8)", ""]
    if command:
        lines += [f"Produced by `{command}`" + (f" on {corpus}." if corpus else "."), ""]
    lines += [
        "| System and training set | Train frame accuracy | Test frame accuracy |"
        + (f" {ood_part} frame accuracy | {ood_relative_head('frame-accuracy change', ood_part)} |" if ood_part else "")
        + " Epochs (stop) | Paper: train | Paper: test |",
        "|---|---|---|" + ("---|---|" if ood_part else "") + "---|---|---|",
    ]
    rows = [
        ("hard_100", "Baseline, 100% of the training set, hard targets", hard_100),
        ("hard_3", f"Baseline, {pct} of the training set, hard targets (early stopping on dev)", hard_3),
        ("soft_3", f"{pct} of the training set, soft targets of the {num_teachers} x ensemble "
                   + ("only" if hard_weight == 0 else f"plus {hard_weight:g} x hard labels")
                   + f" ({'its whole distribution, computed in the training loop; ' if online else ''}no early stopping)", soft_3),
    ]
    for key, label, run in rows:
        p_train, p_test = PAPER_TABLE5[key]
        train, test, ood = _pct(run.train_frame_accuracy), _pct(run.test_frame_accuracy), _pct(run.ood_frame_accuracy)
        change = relative_change(run.ood_frame_accuracy, run.test_frame_accuracy)
        stop = _epochs_and_stop([run])
        runs = list(hard_100_seeds) if key == "hard_100" else [s[key] for s in per_seed] if seeds > 1 else []
        if len(runs) > 1:
            train = _mean_sd_pct([r.train_frame_accuracy for r in runs])
            test = _mean_sd_pct([r.test_frame_accuracy for r in runs])
            change = ""
            if all(r.ood_frame_accuracy is not None for r in runs):
                ood = _mean_sd_pct([r.ood_frame_accuracy for r in runs])
                # The change of the means: the row's own two columns.
                change = relative_change(float(np.mean([r.ood_frame_accuracy for r in runs])),
                                         float(np.mean([r.test_frame_accuracy for r in runs])))
            stop = _epochs_and_stop(runs)
        lines.append(f"| {label} | {train} | {test} |" + (f" {ood} | {change} |" if ood_part else "") + f" {stop} | {p_train}% | {p_test}% |")
    lines += ["", "Train frame accuracy is measured on each model's own training cuts. The paper's point: the "
              f"soft targets let a model trained on {pct} of the data generalise almost as well as the full "
              "baseline without early stopping, while hard targets overfit."]
    if seeds > 1:
        lines += ["", f"{seeds} seeds of the {pct} models: seed k draws its own {pct} subset and initialises both models with its "
                  "own seed; their rows give the mean ± standard deviation over seeds and each seed's epochs. The 100% baseline "
                  + (f"is the mean of stage 6's hard students of seeds 0-{len(hard_100_seeds) - 1} (the shares below use their "
                     "averaged correct frames per utterance)" if len(hard_100_seeds) > 1 else "is stage 6's hard student of seed 0")
                  + "; the plot shows seed 0."]
    if comparisons:
        diff, share = comparisons["soft_vs_hard"], comparisons["gap_recovered"]
        paper_share = (PAPER_TABLE5["soft_3"][1] - PAPER_TABLE5["hard_3"][1]) / (PAPER_TABLE5["hard_100"][1] - PAPER_TABLE5["hard_3"][1])
        lines += ["", f"Test frame accuracy, soft minus hard targets on {pct}: {format_interval(diff)} points, "
                  f"{significance(diff, False, 'hard targets')}{_seed_clause(diff, per_seed, 'test_frame_accuracy')}. Share of the gap "
                  f"between {pct} hard and 100% hard that the soft targets recover: **{format_share(share)}** (paper: "
                  f"{100 * paper_share:.0f}%). {100 * diff['level']:.0f}% confidence intervals from a paired bootstrap over the test "
                  f"utterances ({diff['resamples']} resamples; Bisani & Ney 2004), "
                  + ("one seed per model: they cover the choice of test utterances, not of the subset or the seed." if seeds == 1 else
                     f"the {seeds} seeds' correct frames per utterance averaged: they cover the choice of test utterances, not of the "
                     "subset or the seed, whose spread the ± and the per-seed values show.")]
        other = comparisons.get("ood")
        if ood_part and other:
            lines += ["", f"On {ood_part}, soft minus hard targets: {format_interval(other['soft_vs_hard'])} points, "
                      f"{significance(other['soft_vs_hard'], False, 'hard targets')}"
                      f"{_seed_clause(other['soft_vs_hard'], per_seed, 'ood_frame_accuracy')}; share of the gap recovered there: "
                      f"**{format_share(other['gap_recovered'])}**."]
        per = comparisons.get("gap_recovered_per_seed") or []
        if seeds > 1 and per:
            values = [100 * iv["value"] for iv in per if iv["value"] is not None and math.isfinite(iv["value"])]
            spread = (f"; mean of the {len(values)} seeds' shares {np.mean(values):.0f}%, standard deviation {np.std(values, ddof=1):.0f} "
                      "points (the bold share above is that of their averaged counts)" if len(values) > 1 else "")
            paired = min(len(hard_100_seeds), len(per))
            against = (f" (its {pct} models against stage 6's hard student of the same seed"
                       + (f"; seeds {paired} and above against the mean of stage 6's {paired}" if paired < len(per) else "") + ")"
                       if len(hard_100_seeds) > 1 else "")
            lines += ["", f"Share recovered by each seed{against}: " + "; ".join(f"seed {k}: {format_share(iv)}" for k, iv in enumerate(per))
                      + spread + "."]
    if plot_name:
        lines += ["", f"![dev frame accuracy during training]({plot_name})"]
    lines += ["", f"Paper numbers: {PAPER_CITATION}, Table 5 (3% of the voice-search training frames)."]
    return "\n".join(lines) + "\n"


def _seed_clause(iv: Mapping[str, Any], per_seed: Sequence[Mapping[str, SubsetRun]], field: str) -> str:
    """With two or more seeds, each seed's soft − hard difference of ``field`` (points) and whether
    they agree with the interval ``iv`` in sign (:func:`seed_agreement`)."""
    if len(per_seed) < 2:
        return ""
    pairs = [(getattr(s["soft_3"], field), getattr(s["hard_3"], field)) for s in per_seed]
    if any(a is None or b is None for a, b in pairs):  # a seed without the part's scores
        return ""
    diffs = [a - b for a, b in pairs]
    listed = ", ".join(f"{100 * d:+.2f}" for d in diffs)
    verdict = seed_agreement(iv, diffs)
    if verdict == "seed noise":
        return f", but the seeds disagree in sign (per seed: {listed} points): seed noise"
    if verdict == "noise":
        return f" (per seed: {listed} points)"
    return f", and so does every seed (per seed: {listed} points)"


def _epochs_and_stop(runs: Sequence[SubsetRun]) -> str:
    """``40 / 50 (early stopping ...)``: each seed's epochs and their stop reason when they share
    one, else each seed's own (``40 (early stopping ...); 200 (num_epochs=200)``)."""
    reasons = {r.stop_reason for r in runs}
    if len(reasons) == 1:
        reason = reasons.pop()
        return " / ".join(str(r.epochs) for r in runs) + (f" ({reason})" if reason else "")
    return "; ".join(f"{r.epochs} ({r.stop_reason})" if r.stop_reason else str(r.epochs) for r in runs)


def _mean_sd_pct(values: Sequence[float]) -> str:
    """``61.4% ± 1.2`` (mean and sample standard deviation over seeds, in points)."""
    return f"{100 * np.mean(values):.1f}% ± {100 * np.std(values, ddof=1):.1f}"


def plot_dev_accuracy(
    histories: Mapping[str, Sequence[Mapping[str, float]]], path: Path | str, title: str = "",
    frames_per_epoch: Mapping[str, int] | None = None,
) -> Path:
    """Plot dev frame accuracy during training for each named run (``history`` entries as in
    :class:`asr_kd.train.state.TrainState`: dicts with ``epoch`` and ``frame_accuracy``); write a
    PNG to ``path`` (Agg backend, no display needed) and return the path.

    The x axis is the epoch or, when ``frames_per_epoch`` gives every run's training frames, the
    training frames processed on a log scale (which puts a 3% run's many short epochs and a full
    run's few long ones on one comparable axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for name, history in histories.items():
        scale = frames_per_epoch[name] if frames_per_epoch else 1
        points = [(h["epoch"] * scale, 100 * h["frame_accuracy"]) for h in history if "frame_accuracy" in h]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, label=name)
    if frames_per_epoch:
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
        ax.set_xlabel("training frames processed (epochs x the run's training frames)")
    else:
        ax.set_xlabel("epoch (passes over the run's own training cuts)")
    ax.set_ylabel("dev frame accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_spike_timings(
    per_set: Mapping[str, Sequence[np.ndarray]], path: Path | str, title: str = "", frame_ms: int = 40,
) -> Path:
    """Plot, for one utterance, each teacher's non-blank probability ``1 - P(blank)`` over the
    output frames, one panel per teacher set (``{set name: [(T', V) log-probs per teacher]}``,
    blank at column 0), with a tick at each teacher's spikes (first frame of each run of a
    non-blank arg-max). Spikes of aligned teachers coincide; misaligned ones alternate. Writes
    a PNG (Agg backend) to ``path`` and returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(per_set), 1, figsize=(9.0, 1.9 * len(per_set) + 0.6), dpi=100, sharex=True, squeeze=False)
    for ax, (name, models) in zip(axes[:, 0], per_set.items()):
        for i, log_probs in enumerate(models):
            probs = np.exp(np.asarray(log_probs, dtype=np.float64))
            ms = np.arange(probs.shape[0]) * frame_ms
            line, = ax.plot(ms, 1.0 - probs[:, 0], linewidth=1.0, label=f"teacher{i}")
            arg = probs.argmax(axis=1)
            first = [t for t in range(len(arg)) if arg[t] != 0 and (t == 0 or arg[t - 1] != arg[t])]
            ax.plot(ms[first], np.full(len(first), 1.04 + 0.06 * i), "|", color=line.get_color(), markersize=8)
        ax.set_ylim(0, 1.05 + 0.06 * len(models))
        ax.set_ylabel("1 - P(blank)")
        ax.set_title(name, fontsize=9, loc="left")
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(loc="upper right", fontsize=8, ncol=len(next(iter(per_set.values()))))
    axes[-1, 0].set_xlabel("time (ms); ticks: spikes (first frame of each non-blank arg-max run)")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plain_number(v: float) -> str:
    """Return a tick label for ``v`` without exponents where one reads well: ``0.0004``, ``2``,
    ``500``, ``200k``, ``3M``."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= 10 * size or (abs(v) >= size and suffix != "k"):
            return f"{v / size:g}{suffix}"
    return f"{v:g}"


def plain_log_ticks(axis: Any) -> None:
    """Label a matplotlib log ``axis`` (``ax.xaxis``) at 1, 2 and 5 times powers of ten with
    :func:`plain_number` and leave the other minor ticks unlabelled: matplotlib's default labels
    every minor tick of a short log axis in 10^x form, and the labels overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: plain_number(v)))
    axis.set_minor_formatter(NullFormatter())


def save_figure(fig: Any, path: Path | str, dpi: float | None = None) -> Path:
    """Lay out the matplotlib figure ``fig``, write it as PNG to ``path`` atomically, close it;
    return ``path``."""
    import matplotlib.pyplot as plt

    from asr_kd.utils import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **({"dpi": dpi} if dpi else {}))
    plt.close(fig)
    return Path(path)
