"""Stage 10 (opt-in): the distilled student at several temperatures (Hinton, Vinyals & Dean 2015,
section 2: raising T softens the ensemble's distribution and carries more of its similarity
structure; the T^2 factor keeps the soft term's gradients comparable across temperatures).

For each T of the sweep, stage 5's soft targets at that T (their own folder, checked by their
record) and one distilled student trained on them with the recipe's settings otherwise (seed of
the first stage-6 student) in ``<exp>/students/sweep_T<T>/`` (its own record, as stage 6's
students have), trained ``jobs`` at a time. Each student is scored on dev and test frame accuracy
and decoded as stage 7 decodes every system: its acoustic scale chosen on dev from the decode
config's ``acoustic_scales`` (never on test; with no grid, the decode config's one scale), the test
part decoded at that scale, and compared with the stage-7 baseline (its seeds averaged) by a
paired bootstrap over utterances. (Decoding every student at the scale stage 7 chose for the
recipe's own distilled student favoured the T it was trained at: on mini, the T = 1 student's
test WER was 56.38% at the T = 2 student's scale 0.0714 and 54.40% at its own, 0.1.) Writes
``<exp>/temperature_sweep/sweep.json`` and its RESULTS.md section; skipped (re-rendered) when the
record matches. The students are decoded with stage 7's decode config (another is refused: each
difference from the baseline would compare two searches); after stage 7 is rerun with a new one,
stage 10 rescores the students without training them again.

With ``kd.mode=online`` (``--kd-set mode=online``) no soft targets are stored: each student
learns from the whole ensemble distribution at its T, computed in the training loop. Stored
targets keep the top-k senones (or a codebook), which at T >= 2 loses much of the soft
distribution (their mass kept and KL are in the table); the online sweep shows what T does without
that loss. It writes ``<exp>/temperature_sweep_online/`` and its own RESULTS.md section, so both
sweeps can stand side by side.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from asr_kd.config import DecodeConfig, DnnConfig, KdConfig, TrainConfig
from asr_kd.decode.tuning import ScaleSweep
from asr_kd.errors import ConfigError, DataError
from asr_kd.launch import Launcher, launch_jobs
from asr_kd.metrics.paired import bootstrap_difference
from asr_kd.report.results_md import write_section
from asr_kd.stages.common import environment_lines, model_checkpoint
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageGuard, config_dict, differences, require_record
from asr_kd.stages.s5_soft_targets import make_soft_targets, soft_dir_of, storage_label
from asr_kd.stages.s6_students import train_student
from asr_kd.stages.s7_decode import per_utterance_counts, score_system
from asr_kd.train.frame_classifier import load_frame_classifier
from asr_kd.utils import read_json, write_json_atomic

log = logging.getLogger(__name__)
HEADING = "## Temperature sweep: the distilled student at several T (stage 10)"
ONLINE_HEADING = "## Temperature sweep with online teachers: the whole soft distribution at several T (stage 10)"


def temperature_sweep(
    layout: RecipeLayout, temperatures: Sequence[float], model_config: DnnConfig, train_config: TrainConfig, kd: KdConfig,
    decode_config: DecodeConfig, num_teachers: int | None = None, jobs: int = 1, num_threads: int = 1,
    results_md: Path | None = None, command: str = "", launcher: Launcher | None = None,
) -> dict:
    """Run the sweep over ``temperatures`` (``kd`` otherwise as stage 6's) and return ``sweep.json``'s
    contents: per T the soft targets' statistics, the student's dev and test frame accuracy, its
    test WER and the paired bootstrap intervals of its differences from the baseline."""
    temps = sorted({float(t) for t in temperatures})
    if not temps or temps[0] <= 0:
        raise ConfigError(f"--temperatures takes numbers > 0, got {list(temperatures)}")
    table1 = layout.decode / "table1.json"
    decode_rec = require_record(layout.decode, "stage 7 (decode-hybrid: the baseline and the distilled student's scale)")
    _check_same_decoding(decode_rec.config.get("decode"), decode_config)
    online = kd.mode == "online"
    out = layout.exp_dir / ("temperature_sweep_online" if online else "temperature_sweep")
    if online:  # the whole distribution, from the teachers in the loop: nothing stored, nothing lost
        soft: dict[float, dict] = {t: {"mean_mass_kept": None, "mean_kl_stored_vs_full": None} for t in temps}
        upstream = {"teachers": require_record(layout.teachers, "stage 4 (asr-kd train-teachers)").fingerprint}
    else:  # soft targets first (stage 5's code and folders; each is its own recorded stage)
        soft = {t: make_soft_targets(layout, dataclasses.replace(kd, temperature=t), num_teachers, command=command) for t in temps}
        upstream = {f"soft_targets_T{t:g}": require_record(soft_dir_of(layout, dataclasses.replace(kd, temperature=t),
                                                                       int(soft[t]["num_teachers"])), "stage 5").fingerprint for t in temps}
    # The students are trained first, each skipped when its own record matches; the sweep's record
    # covers the scoring (their final.pt among its inputs), so a new decode config only rescores.
    student_dirs = {t: layout.sweep_student_dir(t, online) for t in temps}
    runs = [(layout, "distilled", model_config, train_config, dataclasses.replace(kd, temperature=t), num_teachers, None, command, 0,
             student_dirs[t]) for t in temps]
    summaries = launch_jobs(train_student, runs, launcher, jobs, num_threads, layout.exp_dir / "log", "stage10_students")
    students = {f"student_T{t:g}": require_record(student_dirs[t], f"stage 10's student at T = {t:g}").fingerprint for t in temps}
    guard = StageGuard("stage 10 (temperature sweep)", out,
                       {"temperatures": temps, "kd": kd, "dnn": model_config, "train": train_config, "decode": decode_config,
                        "num_teachers": num_teachers, "scale": "each student's own, chosen on dev"},
                       {"decode": decode_rec.fingerprint, **upstream, **students}, command)
    sweep_path = out / "sweep.json"
    if guard.needs_work():
        stored = read_json(table1)
        assert isinstance(stored, dict)
        base_members = [n for n in stored if n == "baseline" or n.startswith("baseline_seed")]
        base = per_utterance_counts(layout, base_members, layout.test_part)
        rows = {}
        for t, summary in zip(temps, summaries):
            model = [load_frame_classifier(model_checkpoint(student_dirs[t]))]
            name = f"distilled_T{t:g}"
            dev = score_system(name, model, layout, layout.dev_part, decode_config.acoustic_scales or (decode_config.acoustic_scale,),
                               decode_config, root=out)
            test = score_system(name, model, layout, layout.test_part, (dev.acoustic_scale,), decode_config, root=out)
            mine = per_utterance_counts(layout, [name], layout.test_part, root=out)
            if not np.array_equal(base["ids"], mine["ids"]):
                raise DataError(f"{out / (name + '_' + layout.test_part)}: its utterances differ from the stage-7 baseline's on "
                                f"{layout.test_part}; rerun stage 7, then stage 10")
            rows[f"{t:g}"] = {"temperature": t, "mass_kept": soft[t]["mean_mass_kept"], "kl_stored_vs_full": soft[t]["mean_kl_stored_vs_full"],
                              "dev_frame_accuracy": dev.frame_accuracy, "test_frame_accuracy": test.frame_accuracy,
                              "dev_wer": dev.wer, "acoustic_scale": dev.acoustic_scale, "test_wer": test.wer, "steps": summary["steps"],
                              "scale_at_grid_edge": dev.sweep is not None and ScaleSweep.from_dict(dev.sweep).at_grid_edge,
                              "wer_vs_baseline": bootstrap_difference(base["errors"], mine["errors"], base["ref_words"]).to_dict(),
                              "frame_accuracy_vs_baseline": bootstrap_difference(base["correct"], mine["correct"], base["frames"]).to_dict()}
        write_json_atomic(sweep_path, {"baseline_seeds": len(base_members), "rows": rows})
        guard.finish([sweep_path])
    result = read_json(sweep_path)
    assert isinstance(result, dict)
    if results_md is not None:
        heading = ONLINE_HEADING if online else HEADING
        write_section(results_md, heading, format_sweep(result, kd, layout.test_part, command) + environment_lines([out]))
    return result


def _check_same_decoding(recorded: dict | None, decode_config: DecodeConfig) -> None:
    """ConfigError unless stage 10 decodes as stage 7 decoded the baseline it is compared with
    (``recorded``: stage 7's decode config): otherwise each difference from the baseline would
    compare two search settings, not two models."""
    if recorded is None:
        return
    changes = "; ".join(differences(recorded, config_dict({"decode": decode_config})["decode"], {}, {}))
    if changes:
        raise ConfigError(f"stage 10 would decode with other settings than stage 7's baseline ({changes}); rerun stage 7 "
                          "with the same decode config first, or give stage 10 stage 7's")


def format_sweep(result: dict, kd: KdConfig, test_part: str, command: str) -> str:
    """The RESULTS.md section of the sweep."""
    from asr_kd.report.tables import format_interval, significance

    online = kd.mode == "online"
    lines = [ONLINE_HEADING if online else HEADING, ""]
    if command:
        lines += [f"Produced by `{command}`.", ""]
    targets = "the ensemble's whole distribution computed in the training loop (online)" if online else f"top-{kd.top_k}, storage {storage_label(kd)}"
    lines += [f"One distilled student per T (seed of the first stage-6 student; soft weight {kd.soft_weight:g}, hard weight "
              f"{kd.hard_weight:g}, {targets}), each decoded as stage 7 decodes every system: its acoustic scale chosen on dev, "
              f"{test_part} decoded at it; differences from the baseline (mean of its {result['baseline_seeds']} seeds) with 95% "
              "paired bootstrap intervals over utterances. One seed per T: differences between temperatures smaller than the "
              "intervals are noise.", "",
              "| T | soft-target mass kept (top-k) | KL(stored ‖ full), nats | dev frame accuracy | dev WER (acoustic scale) | "
              "test frame accuracy | test WER | WER − baseline, points | frame accuracy − baseline, points |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"].values():
        wer, acc = row["wer_vs_baseline"], row["frame_accuracy_vs_baseline"]
        kept = "1 (all)" if row["mass_kept"] is None else f"{row['mass_kept']:.3f}"
        kl = "0 (all)" if row["kl_stored_vs_full"] is None else f"{row['kl_stored_vs_full']:.3f}"
        lines.append(f"| {row['temperature']:g} | {kept} | {kl} | {100 * row['dev_frame_accuracy']:.1f}% | "
                     f"{100 * row['dev_wer']:.2f}% ({row['acoustic_scale']:g}{', grid edge' if row.get('scale_at_grid_edge') else ''}) | "
                     f"{100 * row['test_frame_accuracy']:.1f}% | {100 * row['test_wer']:.2f}% | {format_interval(wer)} ({significance(wer, True)}) | "
                     f"{format_interval(acc)} ({significance(acc, False)}) |")
    if any(row.get("scale_at_grid_edge") for row in result["rows"].values()):
        lines += ["", "A scale marked \"grid edge\" is the smallest or largest of the decode config's acoustic_scales: that "
                  "student's best scale may lie beyond the grid: its dev WER there would be no higher than the row's, its "
                  "test WER could move either way."]
    return "\n".join(lines) + "\n"
