"""Stage 8: soft targets as a regulariser (Hinton, Vinyals & Dean 2015, section 6, Table 5).

A model trained on a small share (the paper: 3%) of the training data with hard targets
overfits and needs early stopping; the same model trained on the full ensemble's soft targets
for those utterances generalises almost as well as the 100%-data baseline, without early
stopping. Three runs are compared: the stage-6 hard baseline (100%), ``<exp>/three_percent/hard``
(early stopping on dev, its best checkpoint scored) and ``<exp>/three_percent/soft`` (no early
stopping, its final checkpoint scored). Writes ``<exp>/three_percent/table5.json``, a plot of dev
frame accuracy over training and the Table 5 section of RESULTS.md.

With several seeds (run.sh's ``--num-seeds``, stage 6's), seed ``k`` draws its own subset
(``subset_seed + k``) and initialises both of its models with its own seed, in
``<exp>/three_percent/seed<k>`` (seed 0 in ``<exp>/three_percent`` itself). The table gives the
mean and standard deviation over seeds; the intervals come from the seeds' per-utterance counts
averaged (as Table 1's), and each seed's share of the gap recovered is listed.

The soft model learns from stage 5's stored targets (top-k or a codebook) or, with
``kd.mode=online``, from the ensemble's whole distribution computed in the training loop (the
teachers run forward on the subset's batches: cheap at 3%).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Mapping

import numpy as np
from lhotse import CutSet

from asr_kd.config import THREE_PERCENT_FRACTION, DnnConfig, KdConfig, TrainConfig
from asr_kd.data.alignments import load_alignment
from asr_kd.errors import ConfigError, DataError
from asr_kd.kd.ensemble import ensemble_log_posteriors
from asr_kd.launch import Launcher, launch_jobs
from asr_kd.metrics.frame_accuracy import FrameAccuracyResult, corpus_frame_accuracy
from asr_kd.metrics.paired import bootstrap_difference, bootstrap_gain_share
from asr_kd.report.results_md import write_section
from asr_kd.report.tables import SubsetRun, format_table5, plot_dev_accuracy
from asr_kd.train.checkpoint import load_checkpoint
from asr_kd.train.frame_classifier import load_frame_classifier, train_frame_classifier
from asr_kd.stages.common import (STUDENT_SEED_OFFSET, alignment_inputs, checked_num_teachers, distillation_loss_of, environment_lines,
                                  model_checkpoint, read_senones, student_record, teachers_record, trained_checkpoints)
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageGuard, read_record
from asr_kd.stages.s5_soft_targets import find_soft_targets
from asr_kd.utils import atomic_path, read_json, write_json_atomic

log = logging.getLogger(__name__)


def subset_cuts(cuts: CutSet, fraction: float, seed: int) -> CutSet:
    """Return ``ceil(fraction * len(cuts))`` cuts drawn without replacement, in their original
    order; the draw depends only on the set of cut ids and ``seed`` (not on the manifest order)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"--fraction must be in (0, 1], got {fraction}")
    cut_list = list(cuts)
    if not cut_list:
        raise DataError("cannot draw a subset of an empty cut set; check the training cuts of stage 3")
    ids = sorted(c.id for c in cut_list)
    n = max(1, math.ceil(fraction * len(ids)))
    chosen = {ids[i] for i in np.random.default_rng(seed).permutation(len(ids))[:n]}
    return CutSet.from_cuts(c for c in cut_list if c.id in chosen)


def frame_accuracy_of(checkpoint: Path, cuts: CutSet, layout: RecipeLayout, part: str, max_duration: float = 20.0) -> FrameAccuracyResult:
    """Return the frame accuracy of the model in ``checkpoint`` on ``cuts`` (with ``part``'s
    CMVN) against their senone alignments, with its per-utterance counts."""
    model = load_frame_classifier(checkpoint)
    preds, refs = {}, {}
    for cut, log_probs in ensemble_log_posteriors([model], cuts, layout.open_cmvn(part), max_duration=max_duration):
        preds[cut.id] = log_probs.argmax(-1).numpy()
        refs[cut.id] = load_alignment(cut)
    return corpus_frame_accuracy(preds, refs)


def _history(exp_dir: Path) -> tuple[list[dict], str, int]:
    state = load_checkpoint(exp_dir / "final.pt")["train_state"]
    return list(state["history"]), str(state["stop_reason"]), int(state["epoch"])


def run_three_percent(
    layout: RecipeLayout, model_config: DnnConfig, train_config: TrainConfig, kd: KdConfig, fraction: float = THREE_PERCENT_FRACTION,
    subset_seed: int = 0, num_teachers: int | None = None, max_duration: float = 20.0,
    results_md: Path | None = None, command: str = "", corpus: str = "", num_seeds: int = 1, jobs: int = 1, num_threads: int = 1,
    launcher: Launcher | None = None,
) -> dict[str, SubsetRun]:
    """Train the hard (early stopping, patience ``train_config.early_stopping_patience`` or 3, dev
    evaluated every epoch) and soft (no early stopping, dev every ``train_config.eval_every_epochs``
    epochs: its curve is only plotted) models on the same ``fraction`` of the training cuts (drawn with
    ``subset_seed``); score them and the stage-6 hard baseline on their own training cuts and on
    the test part. The soft targets are stage 5's for ``kd`` and ``num_teachers`` (default: stage
    4's count), checked against their record; with ``kd.mode=online`` the ensemble of stage 4's
    first ``num_teachers`` teachers itself (its record an input instead). Returns ``{"hard_100", "hard_3", "soft_3"}`` ->
    :class:`SubsetRun` (``hard_3`` and ``soft_3`` the means over ``num_seeds`` seeds, each seed's
    two models a job of ``launcher``, ``jobs`` at a time); skipped (the table re-rendered from
    ``table5.json``) when the record matches."""
    if num_seeds < 1:
        raise ConfigError(f"stage 8 needs --num-seeds >= 1, got {num_seeds}")
    senones = read_senones(layout)
    if kd.mode == "online":  # the whole distribution from the teachers in the loop: nothing stored
        n = checked_num_teachers(layout, num_teachers)  # before any training: a count stage 4 did not train is refused now
        soft_cuts, soft_input = None, {"teachers": teachers_record(layout).fingerprint}
    else:
        soft_cuts, soft_record = find_soft_targets(layout, kd, num_teachers, "stage 8 (3% experiment)")
        n = int(soft_record.config["num_teachers"])
        soft_input = {"soft_targets": soft_record.fingerprint}
    out = layout.three_percent
    # The 100% row: stage 6's hard students of the first num_seeds seeds that stage 6 trained (seed 0 required).
    baseline_dirs = [layout.student_dir("hard")]
    while len(baseline_dirs) < num_seeds and read_record(layout.student_dir("hard", len(baseline_dirs))) is not None:
        baseline_dirs.append(layout.student_dir("hard", len(baseline_dirs)))  # seeds 0, 1, ... up to the first missing one
    if len(baseline_dirs) < num_seeds:
        log.info("stage 8: stage 6 trained %d of the %d hard seeds; the 100%% row is their mean", len(baseline_dirs), num_seeds)
    guard = StageGuard("stage 8 (3% of the data)", out,
                       {"dnn": model_config, "train": train_config, "kd": kd, "fraction": fraction, "subset_seed": subset_seed,
                        "train_part": layout.train_part, "dev_part": layout.dev_part, "test_part": layout.test_part,
                        **({"ood_part": layout.ood_part} if layout.ood_part else {}),
                        # Named only where they apply (online; an ood part; several seeds): a one-seed stored run without an
                        # ood part keeps the fingerprint it had before these keys existed, the others are redone.
                        **({"num_teachers": n} if kd.mode == "online" else {}), **({"seeds": num_seeds} if num_seeds > 1 else {})},
                       {**alignment_inputs(layout), **soft_input,
                        "student_hard": student_record(layout, baseline_dirs[0], "stage 6 (hard student)").fingerprint,
                        **{f"student_hard_seed{k}": student_record(layout, d, "stage 6 (hard student)").fingerprint
                           for k, d in enumerate(baseline_dirs) if k}}, command)
    if guard.needs_work():
        _three_percent_work(layout, out, senones.num_senones, soft_cuts, baseline_dirs, model_config, train_config, kd, fraction,
                            subset_seed, max_duration, n, num_seeds, jobs, num_threads, launcher)
        guard.finish([out / "table5.json"] + [c for k in range(num_seeds) for m in ("hard", "soft") for c in trained_checkpoints(seed_dir(out, k) / m)])
    stored = read_json(out / "table5.json")
    assert isinstance(stored, dict)
    results = {k: SubsetRun(**v) for k, v in stored["runs"].items()}
    title = f"dev frame accuracy, {100 * fraction:g}% vs 100% of the training data" + (
        f" (seed 0 of {len(stored['per_seed'])})" if len(stored.get("per_seed", [])) > 1 else "")
    plot = plot_dev_accuracy(stored["histories"], out / "dev_accuracy.png", title, stored["frames"])
    if results_md is not None:
        plot_name = "table5_dev_accuracy.png"
        plot_dev_accuracy(stored["histories"], Path(results_md).parent / plot_name, title, stored["frames"])
        per_seed = [{k: SubsetRun(**v) for k, v in runs.items()} for runs in stored.get("per_seed", [])]
        text = format_table5(results["hard_100"], results["hard_3"], results["soft_3"], fraction, n, plot_name, corpus, command,
                             stored.get("comparisons"), online=kd.mode == "online", hard_weight=kd.hard_weight, per_seed=per_seed,
                             hard_100_seeds=[SubsetRun(**v) for v in stored.get("hard_100_per_seed", [])],
                             ood_part=layout.ood_part if "ood" in stored.get("comparisons", {}) else "")
        write_section(results_md, "## Table 5 analogue", text + environment_lines([out]))
    log.info("dev accuracy plot: %s", plot)
    return results


def seed_dir(out: Path, seed_index: int) -> Path:
    """Where stage 8's seed ``seed_index`` keeps its subset and models: ``out`` itself for seed 0
    (the one-seed layout), ``out/seed<k>`` for the others."""
    return out if seed_index == 0 else out / f"seed{seed_index}"


def train_subset_model(
    layout: RecipeLayout, run_dir: Path, kind: str, num_senones: int, model_config: DnnConfig, train_config: TrainConfig, kd: KdConfig,
    num_teachers: int,
) -> str:
    """One job of stage 8: train its ``kind`` model ("hard": the subset's senone labels; "soft":
    the soft targets, ``kd``) on ``run_dir``'s subset into ``run_dir/<kind>``; return ``kind``."""
    common = (layout.ali_cuts(layout.dev_part), layout.cmvn(layout.train_part), layout.cmvn(layout.dev_part), num_senones, model_config)
    if kind == "hard":
        train_frame_classifier(run_dir / "cuts_subset.jsonl.gz", *common, train_config, run_dir / "hard", resume=True)
    elif kind == "soft":
        train_frame_classifier(run_dir / "cuts_soft_subset.jsonl.gz", *common, train_config, run_dir / "soft", resume=True,
                               compute_loss=distillation_loss_of(layout, kd, num_teachers))
    else:
        raise ConfigError(f"stage 8 trains a hard or a soft model, not {kind!r}")
    return kind


def _three_percent_work(
    layout: RecipeLayout, out: Path, num_senones: int, soft_cuts: Path | None, baseline_dirs: list[Path], model_config: DnnConfig,
    train_config: TrainConfig, kd: KdConfig, fraction: float, subset_seed: int, max_duration: float, num_teachers: int,
    num_seeds: int = 1, jobs: int = 1, num_threads: int = 1, launcher: Launcher | None = None,
) -> None:
    """Train and score the runs of stage 8; write ``table5.json`` (runs, dev histories, frames,
    comparisons; with several seeds also ``per_seed``; with several of stage 6's hard students in
    ``baseline_dirs``, ``hard_100_per_seed``, and the 100% row and the shares from their mean).
    ``soft_cuts`` None: the soft model learns online from the first ``num_teachers`` teachers."""
    full_train = CutSet.from_cuts(layout.open_cuts(layout.ali_cuts(layout.train_part)))
    soft_all = None if soft_cuts is None else list(layout.open_cuts(soft_cuts))
    subsets = []
    for k in range(num_seeds):
        subset = subset_cuts(full_train, fraction, subset_seed + k)
        chosen = frozenset(subset.ids)
        # Online, the soft model trains on the subset's own cuts (the teachers label them in the loop).
        soft_subset = subset if soft_all is None else CutSet.from_cuts(c for c in soft_all if c.id in chosen)
        if len(soft_subset) != len(subset):
            raise DataError(f"{len(subset) - len(soft_subset)} of the {len(subset)} subset cuts lack soft targets in {soft_cuts}; rerun stage 5")
        log.info("seed %d: %g of the training data: %d of %d cuts, %d frames", k, fraction, len(subset), len(full_train),
                 sum(c.num_frames for c in subset))
        seed_dir(out, k).mkdir(parents=True, exist_ok=True)
        for name, cuts in (("subset", subset), ("soft_subset", soft_subset)):
            with atomic_path(seed_dir(out, k) / f"cuts_{name}.jsonl.gz") as tmp:
                cuts.to_file(tmp)
        subsets.append(subset)
    patience = train_config.early_stopping_patience or 3
    models = []
    for k, subset in enumerate(subsets):
        # lhotse's bucketing sampler needs at least as many cuts as buckets.
        small = dataclasses.replace(train_config, seed=train_config.seed + STUDENT_SEED_OFFSET + k,
                                    num_buckets=min(train_config.num_buckets, len(subset)))
        # The hard model's early stopping and best checkpoint look at every epoch; the soft model's last
        # checkpoint is scored, so its dev curve (only plotted) may be thinned by train.eval_every_epochs.
        hard = dataclasses.replace(small, early_stopping_patience=patience, eval_every_epochs=1)
        models += [(layout, seed_dir(out, k), "hard", num_senones, model_config, hard, kd, num_teachers),
                   (layout, seed_dir(out, k), "soft", num_senones, model_config, dataclasses.replace(small, early_stopping_patience=0),
                    kd, num_teachers)]
    launch_jobs(train_subset_model, models, launcher, jobs, num_threads, layout.exp_dir / "log", "stage8_three_percent")

    parts = [layout.test_part, *([layout.ood_part] if layout.ood_part else [])]
    part_cuts = {part: CutSet.from_cuts(layout.open_cuts(layout.ali_cuts(part))) for part in parts}
    labels = {"hard_100": "100% hard", "hard_3": f"{100 * fraction:g}% hard", "soft_3": f"{100 * fraction:g}% soft"}

    def score(key: str, ckpt: Path, run_dir: Path, train_cuts: CutSet) -> tuple[SubsetRun, dict[str, Mapping[str, tuple[int, int]]], list[dict]]:
        """The run's row, its per-utterance (correct, frames) of every scored part, its dev history."""
        history, stop, epochs = _history(run_dir)
        train_acc = frame_accuracy_of(ckpt, train_cuts, layout, layout.train_part, max_duration).accuracy
        scored = {part: frame_accuracy_of(ckpt, cuts, layout, part, max_duration) for part, cuts in part_cuts.items()}
        test, ood = scored[layout.test_part].accuracy, scored[layout.ood_part].accuracy if layout.ood_part else None
        log.info("%s: train frame accuracy %.4f, test %.4f%s (%s)", labels[key], train_acc, test,
                 f", {layout.ood_part} {ood:.4f}" if ood is not None else "", stop)
        return (SubsetRun(labels[key], train_acc, test, epochs, stop, ood), {part: r.per_utterance for part, r in scored.items()}, history)

    baselines = [score("hard_100", model_checkpoint(d), d, full_train) for d in baseline_dirs]
    hard_100_history = baselines[0][2]  # the plot shows seed 0
    ids = {part: sorted(baselines[0][1][part]) for part in parts}
    frames_of = {part: np.array([baselines[0][1][part][u][1] for u in ids[part]], dtype=np.float64) for part in parts}

    def counts(per_utt: Mapping[str, Mapping[str, tuple[int, int]]], part: str) -> np.ndarray:
        return np.array([per_utt[part][u][0] for u in ids[part]], dtype=np.float64)

    # The 100% model's correct frames per utterance: the mean over stage 6's hard seeds (one seed: its own).
    hard_100_counts = {part: np.mean([counts(utt, part) for _, utt, _ in baselines], axis=0) for part in parts}

    per_seed: list[dict[str, SubsetRun]] = []
    correct: dict[str, dict[str, list[np.ndarray]]] = {part: {"hard_3": [], "soft_3": []} for part in parts}
    seed_comparisons = []
    histories: dict[str, list[dict]] = {labels["hard_100"]: hard_100_history}
    for k, subset in enumerate(subsets):
        runs = {}
        for key, run_dir in (("hard_3", seed_dir(out, k) / "hard"), ("soft_3", seed_dir(out, k) / "soft")):
            # The hard model's best dev checkpoint (early stopping), the soft model's last.
            ckpt = model_checkpoint(run_dir) if key == "hard_3" else run_dir / "final.pt"
            runs[key], per_utt, history = score(key, ckpt, run_dir, subset)
            for part in parts:
                correct[part][key].append(counts(per_utt, part))
            if k == 0:  # the plot shows seed 0
                histories[labels[key]] = history
        per_seed.append(runs)
        test = correct[layout.test_part]
        # Seed k's share: its 3% models against stage 6's hard student of seed k (a replicate of the whole
        # experiment; seed 0 is the one-seed run's), or their mean where stage 6 has no seed k.
        own_100 = counts(baselines[k][1], layout.test_part) if k < len(baselines) else hard_100_counts[layout.test_part]
        seed_comparisons.append(bootstrap_gain_share(test["hard_3"][k], own_100, test["soft_3"][k],
                                                     frames_of[layout.test_part]).to_dict())

    def compare(part: str) -> dict[str, dict]:
        """Soft minus hard on ``part`` and the share of the gap recovered, from the seeds' averaged counts."""
        mean_correct = {key: np.mean(v, axis=0) for key, v in correct[part].items()}
        return {"soft_vs_hard": bootstrap_difference(mean_correct["hard_3"], mean_correct["soft_3"], frames_of[part]).to_dict(),
                "gap_recovered": bootstrap_gain_share(mean_correct["hard_3"], hard_100_counts[part], mean_correct["soft_3"],
                                                      frames_of[part]).to_dict()}

    comparisons: dict[str, object] = compare(layout.test_part)
    if layout.ood_part:
        comparisons["ood"] = {"part": layout.ood_part, **compare(layout.ood_part)}
    results = {"hard_100": _mean_run([run for run, _, _ in baselines]),
               **{key: _mean_run([runs[key] for runs in per_seed]) for key in ("hard_3", "soft_3")}}
    frames = {labels["hard_100"]: sum(c.num_frames for c in full_train),
              **{labels[key]: sum(c.num_frames for c in subsets[0]) for key in ("hard_3", "soft_3")}}
    record = {"runs": {k: dataclasses.asdict(v) for k, v in results.items()}, "histories": histories, "frames": frames, "comparisons": comparisons}
    if num_seeds > 1:
        record["per_seed"] = [{k: dataclasses.asdict(v) for k, v in runs.items()} for runs in per_seed]
        comparisons["gap_recovered_per_seed"] = seed_comparisons
    if len(baselines) > 1:
        record["hard_100_per_seed"] = [dataclasses.asdict(run) for run, _, _ in baselines]
    write_json_atomic(out / "table5.json", record)


def _mean_run(runs: list[SubsetRun]) -> SubsetRun:
    """One seed's run as it is, or the mean over seeds (epochs rounded; the stop reason when all agree)."""
    if len(runs) == 1:
        return runs[0]
    reasons = {r.stop_reason for r in runs}
    ood = [r.ood_frame_accuracy for r in runs if r.ood_frame_accuracy is not None]
    return SubsetRun(runs[0].name, float(np.mean([r.train_frame_accuracy for r in runs])), float(np.mean([r.test_frame_accuracy for r in runs])),
                     int(round(float(np.mean([r.epochs for r in runs])))), reasons.pop() if len(reasons) == 1 else "",
                     float(np.mean(ood)) if len(ood) == len(runs) else None)
