"""Stage 10 (opt-in): the distilled student at several temperatures (Hinton, Vinyals & Dean 2015,
section 2: raising T softens the ensemble's distribution and carries more of its similarity
structure; the T^2 factor keeps the soft term's gradients comparable across temperatures).

For each T of the sweep, stage 5's soft targets at that T (their own folder, checked by their
record) and ``num_seeds`` distilled students trained on them with the recipe's settings otherwise
(seed k as stage 6's student of seed k) in ``<exp>/students/sweep_T<T>[_seed<k>]/`` (each its own
record, as stage 6's students have), trained ``jobs`` at a time; a student whose settings and
inputs equal those of stage 6's distilled student of its seed (the recipe's own T) is that
student, not trained again. Each student is scored on dev and test frame accuracy and decoded as
stage 7 decodes every system: the acoustic scale of a T's first seed chosen on dev from the decode
config's ``acoustic_scales`` (never on test; with no grid, the decode config's one scale), and the
test part of every seed decoded at that scale (as stage 7 decodes the seeds of a system), and
so is the out-of-domain test part when the layout has one (issue 12: does T move the students'
generalisation to unseen voices?). Each T's students (their per-utterance counts averaged over the seeds, as
in Table 1) are compared with the stage-7 baseline (its seeds averaged) by a paired bootstrap over
utterances, and, when the recipe's own T is swept, with the students at that T the same way.
(Decoding every student at the scale stage 7 chose for the recipe's own distilled student
favoured the T it was trained at: on mini, the T = 1 student's test WER was 56.38% at the T = 2
student's scale 0.0714 and 54.40% at its own, 0.1.) Writes
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
from asr_kd.decode.tuning import ScaleSweep, sweep_scales
from asr_kd.errors import ConfigError, DataError
from asr_kd.launch import Launcher, launch_jobs
from asr_kd.metrics.wer import WerResult
from asr_kd.metrics.paired import bootstrap_difference, bootstrap_gain_share
from asr_kd.report.results_md import write_section
from asr_kd.stages.common import environment_lines, model_checkpoint, teachers_record
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageGuard, config_dict, differences, require_record
from asr_kd.stages.s5_soft_targets import make_soft_targets, soft_dir_of, storage_label
from asr_kd.stages.s6_students import matching_student, train_student
from asr_kd.stages.s7_decode import per_utterance_counts, score_system, seed_mean, seed_std
from asr_kd.train.frame_classifier import load_frame_classifier
from asr_kd.utils import read_json, write_json_atomic

log = logging.getLogger(__name__)
HEADING = "## Temperature sweep: the distilled student at several T (stage 10)"
ONLINE_HEADING = "## Temperature sweep with online teachers: the whole soft distribution at several T (stage 10)"


def temperature_sweep(
    layout: RecipeLayout, temperatures: Sequence[float], model_config: DnnConfig, train_config: TrainConfig, kd: KdConfig,
    decode_config: DecodeConfig, num_teachers: int | None = None, jobs: int = 1, num_threads: int = 1,
    results_md: Path | None = None, command: str = "", launcher: Launcher | None = None, num_seeds: int = 1,
    extra_scales: Sequence[float] = (),
) -> dict:
    """Run the sweep over ``temperatures`` (``kd`` otherwise as stage 6's), ``num_seeds`` students
    per T, and return ``sweep.json``'s contents: per T the soft targets' statistics, each seed's dev
    and test frame accuracy, dev WER, acoustic scale and test WER, their means, and the paired
    bootstrap intervals of the seeds' mean differences from the baseline (and from the student at
    ``kd``'s own T when it is swept). ``extra_scales``: acoustic scales beyond both ends of the
    decode config's grid, searched for the students only (:func:`_students_grid`)."""
    temps = sorted({float(t) for t in temperatures})
    if not temps or temps[0] <= 0:
        raise ConfigError(f"--temperatures takes numbers > 0, got {list(temperatures)}")
    if num_seeds < 1:
        raise ConfigError(f"--num-seeds must be >= 1, got {num_seeds}")
    table1 = layout.decode / "table1.json"
    decode_rec = require_record(layout.decode, "stage 7 (decode-hybrid: the baseline and the distilled student's scale)")
    _check_same_decoding(decode_rec.config.get("decode"), decode_config)
    stored = read_json(table1)
    assert isinstance(stored, dict)
    grid = _students_grid(decode_config, extra_scales, stored, layout.dev_part)
    online = kd.mode == "online"
    out = layout.exp_dir / ("temperature_sweep_online" if online else "temperature_sweep")
    if online:  # the whole distribution, from the teachers in the loop: nothing stored, nothing lost
        soft: dict[float, dict] = {t: {"mean_mass_kept": None, "mean_kl_stored_vs_full": None} for t in temps}
        upstream = {"teachers": teachers_record(layout).fingerprint}
    else:  # soft targets first (stage 5's code and folders; each is its own recorded stage)
        soft = {t: make_soft_targets(layout, dataclasses.replace(kd, temperature=t), num_teachers, command=command) for t in temps}
        upstream = {f"soft_targets_T{t:g}": require_record(soft_dir_of(layout, dataclasses.replace(kd, temperature=t),
                                                                       int(soft[t]["num_teachers"])), "stage 5").fingerprint for t in temps}
    # The students are trained first, each skipped when its own record matches; the sweep's record
    # covers the scoring (their final.pt among its inputs), so a new decode config only rescores.
    # Seed k of a T is trained with stage 6's seed k; where stage 6's distilled student of that seed
    # was made with exactly these settings (the recipe's own T), it is used, not trained again.
    # Only students whose folder has no matching record are launched (a re-rendering starts no job).
    runs = [(t, k) for t in temps for k in range(num_seeds)]
    student_dirs: dict[tuple[float, int], Path] = {}
    to_train = []
    for t, k in runs:
        stage6, own = layout.student_dir("distilled", k), layout.sweep_student_dir(t, online, k)
        found = matching_student([stage6, own], layout, "distilled", model_config, train_config, dataclasses.replace(kd, temperature=t),
                                 num_teachers, k)
        if found == stage6:
            log.info("stage 10: T = %g, seed %d is stage 6's distilled student (%s, same settings); not trained again", t, k, stage6)
        student_dirs[t, k] = found or own
        if found is None:
            to_train.append((t, k))
    if to_train:
        launch_jobs(train_student, [(layout, "distilled", model_config, train_config, dataclasses.replace(kd, temperature=t), num_teachers,
                                     None, command, k, student_dirs[t, k], f"stage 10 (distilled student at T = {t:g}, seed {k})") for t, k in to_train],
                    launcher, jobs, num_threads, layout.exp_dir / "log", "stage10_students")
    students = {_seed_name("student", t, k): require_record(student_dirs[t, k], f"stage 10's student at T = {t:g}, seed {k}").fingerprint
                for t, k in runs}
    guard = StageGuard("stage 10 (temperature sweep)", out,
                       {"temperatures": temps, "kd": kd, "dnn": model_config, "train": train_config, "decode": decode_config,
                        "num_teachers": num_teachers, "scale": "each student's own, chosen on dev",
                        # Named only when set, so a finished one-seed sweep keeps its fingerprint.
                        **({"num_seeds": num_seeds} if num_seeds > 1 else {}),
                        **({"extra_scales": sorted(float(x) for x in extra_scales)} if extra_scales else {}),
                        # Named only when there is one (a sweep without it keeps its fingerprint); a sweep
                        # finished before the out-of-domain part was scored is scored again, not retrained.
                        **({"ood_part": layout.ood_part} if layout.ood_part else {})},
                       {"decode": decode_rec.fingerprint, **upstream, **students}, command)
    sweep_path = out / "sweep.json"
    if guard.needs_work():
        base_members = [n for n in stored if n == "baseline" or n.startswith("baseline_seed")]
        base = per_utterance_counts(layout, base_members, layout.test_part)
        # The ensemble's frame-accuracy gain over the baseline: the share each T's students keep.
        ens = per_utterance_counts(layout, ["ensemble"], layout.test_part) if "ensemble" in stored else None
        if ens is not None and not np.array_equal(base["ids"], ens["ids"]):
            raise DataError(f"{layout.decode}: the ensemble's and the baseline's {layout.test_part} utterances differ; rerun stage 7")
        ood_part = layout.ood_part or None
        base_ood = per_utterance_counts(layout, base_members, ood_part) if ood_part else None
        # The baseline's out-of-domain WER exists only where stage 7 decoded that part (--decode-parts).
        ood_decoded = ood_part is not None and all((stored[n].get(ood_part) or {}).get("wer") is not None for n in base_members)
        rows, counts, ood_counts = {}, {}, {}
        for t in temps:
            seeds = []
            for k in range(num_seeds):
                model = [load_frame_classifier(model_checkpoint(student_dirs[t, k]))]
                name = _seed_name("distilled", t, k)
                # As stage 7 does: the first seed's scale is tuned on dev, the other seeds are decoded
                # at it (their dev part scored for frame accuracy only), as the baseline's seeds were.
                dev = score_system(name, model, layout, layout.dev_part, grid if k == 0 else (), decode_config, root=out)
                if k == 0:
                    scale, edge = dev.acoustic_scale, dev.sweep is not None and ScaleSweep.from_dict(dev.sweep).at_grid_edge
                test = score_system(name, model, layout, layout.test_part, (scale,), decode_config, root=out)
                ood = score_system(name, model, layout, ood_part, (scale,), decode_config, root=out) if ood_part else None
                summary = read_json(student_dirs[t, k] / "summary.json")
                assert isinstance(summary, dict)
                seeds.append({"seed": summary["seed"], "student": student_dirs[t, k].relative_to(layout.exp_dir).as_posix(),
                              "steps": summary["steps"], "dev_frame_accuracy": dev.frame_accuracy, "test_frame_accuracy": test.frame_accuracy,
                              "dev_wer": dev.wer, "acoustic_scale": scale, "test_wer": test.wer,
                              **({"ood_wer": ood.wer, "ood_frame_accuracy": ood.frame_accuracy} if ood is not None else {})})
            first = seeds[0]
            names = [_seed_name("distilled", t, k) for k in range(num_seeds)]
            counts[t] = mine = per_utterance_counts(layout, names, layout.test_part, root=out)
            if not np.array_equal(base["ids"], mine["ids"]):
                raise DataError(f"{out / (names[0] + '_' + layout.test_part)}: its utterances differ from the stage-7 baseline's on "
                                f"{layout.test_part}; rerun stage 7, then stage 10")
            rows[f"{t:g}"] = {"temperature": t, "mass_kept": soft[t]["mean_mass_kept"], "kl_stored_vs_full": soft[t]["mean_kl_stored_vs_full"],
                              **{key: seed_mean([s[key] for s in seeds]) for key in ("dev_frame_accuracy", "test_frame_accuracy", "test_wer")},
                              "dev_wer": first["dev_wer"], "acoustic_scale": first["acoustic_scale"],
                              "scale_at_grid_edge": edge,
                              "test_wer_std": seed_std([s["test_wer"] for s in seeds]),
                              "test_frame_accuracy_std": seed_std([s["test_frame_accuracy"] for s in seeds]), "seeds": seeds,
                              "wer_vs_baseline": bootstrap_difference(base["errors"], mine["errors"], base["ref_words"]).to_dict(),
                              "frame_accuracy_vs_baseline": bootstrap_difference(base["correct"], mine["correct"], base["frames"]).to_dict(),
                              "gain_share": None if ens is None else
                              bootstrap_gain_share(base["correct"], ens["correct"], mine["correct"], base["frames"]).to_dict()}
            if ood_part:
                ood_counts[t] = theirs = per_utterance_counts(layout, names, ood_part, root=out)
                if not np.array_equal(base_ood["ids"], theirs["ids"]):
                    raise DataError(f"{out / (names[0] + '_' + ood_part)}: its utterances differ from the stage-7 baseline's on "
                                    f"{ood_part}; rerun stage 7, then stage 10")
                rows[f"{t:g}"].update({
                    "ood_wer": seed_mean([s["ood_wer"] for s in seeds]), "ood_wer_std": seed_std([s["ood_wer"] for s in seeds]),
                    "ood_frame_accuracy": seed_mean([s["ood_frame_accuracy"] for s in seeds]),
                    "ood_wer_vs_baseline": bootstrap_difference(base_ood["errors"], theirs["errors"], base_ood["ref_words"]).to_dict()
                    if ood_decoded else None,
                    "ood_frame_accuracy_vs_baseline": bootstrap_difference(base_ood["correct"], theirs["correct"],
                                                                           base_ood["frames"]).to_dict()})
        own = kd.temperature if kd.temperature in counts and len(temps) > 1 else None
        for t in temps if own is not None else ():
            if t != own:  # each T against the recipe's own, paired over the same utterances, seeds averaged
                row, mine = rows[f"{t:g}"], rows[f"{own:g}"]
                row["wer_vs_own_temperature"] = bootstrap_difference(counts[own]["errors"], counts[t]["errors"], base["ref_words"]).to_dict()
                row["frame_accuracy_vs_own_temperature"] = bootstrap_difference(counts[own]["correct"], counts[t]["correct"],
                                                                                base["frames"]).to_dict()
                # and seed k against seed k (same initial seed): the training variance the bootstrap leaves out
                for key in ("test_wer", "test_frame_accuracy"):
                    row[f"{key}_seed_differences_vs_own"] = [a[key] - b[key] for a, b in zip(row["seeds"], mine["seeds"])]
                if ood_part:  # the out-of-domain WER too: does T move generalisation to unseen voices?
                    a, b = ood_counts[own], ood_counts[t]
                    row["ood_wer_vs_own_temperature"] = bootstrap_difference(a["errors"], b["errors"], a["ref_words"]).to_dict()
                    row["ood_wer_seed_differences_vs_own"] = [x["ood_wer"] - y["ood_wer"] for x, y in zip(row["seeds"], mine["seeds"])]
        base_ood_wer = seed_mean([stored[n][ood_part]["wer"] for n in base_members]) if ood_decoded else None
        write_json_atomic(sweep_path, {"baseline_seeds": len(base_members), "num_seeds": num_seeds, "own_temperature": own,
                                       "test_part": layout.test_part, "ood_part": ood_part, "baseline_ood_wer": base_ood_wer,
                                       "beam": decode_config.beam, "max_active": decode_config.max_active,
                                       "extra_scales": sorted(float(x) for x in extra_scales), "rows": rows})
        guard.finish([sweep_path])
    result = read_json(sweep_path)
    assert isinstance(result, dict)
    if results_md is not None:
        heading = ONLINE_HEADING if online else HEADING
        write_section(results_md, heading, format_sweep(result, kd, layout.test_part, command) + environment_lines([out]))
    return result


def _seed_name(prefix: str, temperature: float, seed_index: int) -> str:
    return f"{prefix}_T{temperature:g}" + (f"_seed{seed_index}" if seed_index else "")


def _students_grid(decode_config: DecodeConfig, extra_scales: Sequence[float], table1: dict, dev_part: str) -> tuple[float, ...]:
    """The acoustic scales the students' dev search may visit: the decode config's grid (stage 7's)
    and ``extra_scales``, each beyond an end of that grid. Allowed only when stage 7's own search
    for the baseline, replayed on the wider grid with the dev errors stage 7 recorded, visits no
    scale stage 7 did not decode and picks the same one: then the baseline the students are
    compared with is what the wider grid would have given it too. Otherwise ConfigError."""
    if decode_config.insertion_penalties:
        raise ConfigError(f"stage 10 does not search a word insertion penalty (decode.insertion_penalties {list(decode_config.insertion_penalties)}) "
                          "for its students yet; rerun stage 7 with decode.insertion_penalties=[] and give stage 10 the same")
    grid = tuple(decode_config.acoustic_scales) or (decode_config.acoustic_scale,)
    extra = sorted({float(x) for x in extra_scales})
    if not extra:
        return grid
    if extra[0] <= 0 or any(min(grid) <= x <= max(grid) for x in extra):
        raise ConfigError(f"--extra-scales {extra}: each must be > 0 and beyond the ends of decode.acoustic_scales ({min(grid):g} .. "
                          f"{max(grid):g}); to change scales inside it, change the decode config and rerun stage 7")
    wider = tuple(sorted(set(grid) | set(extra)))
    # Stage 7 tunes a student's first seed; its other seeds are decoded at that scale (no dev sweep).
    tuned = {n: (table1[n].get(dev_part) or {}).get("sweep") for n in table1 if n == "baseline" or n.startswith("baseline_seed")}
    if not any(tuned.values()):
        raise ConfigError(f"--extra-scales: stage 7's baseline was not tuned on {dev_part} (no acoustic_scales grid), so a wider grid "
                          "could change it; widen decode.acoustic_scales and rerun stage 7 instead")
    for name, recorded in tuned.items():
        if recorded is None:
            continue
        old = ScaleSweep.from_dict(recorded)
        errors = dict(zip(old.scales, old.errors))

        def replay(scale: float, errors: dict = errors, name: str = name) -> WerResult:
            if scale not in errors:
                raise ConfigError(f"--extra-scales: on the wider grid the search for stage 7's {name} would also decode scale {scale:g}, "
                                  "which stage 7 did not, so the baseline could change; widen decode.acoustic_scales and rerun stage 7 "
                                  "instead")
            return WerResult(errors[scale] / max(old.ref_words, 1), errors[scale], 0, 0, 0, old.ref_words, (), (), ())

        again, _ = sweep_scales(dev_part, wider, replay, default=decode_config.acoustic_scale)
        if again.best != old.best:
            raise ConfigError(f"--extra-scales: on the wider grid stage 7's {name} would choose scale {again.best:g}, not {old.best:g}; "
                              "widen decode.acoustic_scales and rerun stage 7 instead")
    return wider


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
    from asr_kd.report.tables import format_interval, format_share, significance

    online = kd.mode == "online"
    n = int(result.get("num_seeds", 1))
    lines = [ONLINE_HEADING if online else HEADING, ""]
    if command:
        lines += [f"Produced by `{command}`.", ""]
    targets = "the ensemble's whole distribution computed in the training loop (online)" if online else f"top-{kd.top_k}, storage {storage_label(kd)}"
    reused = sum(not s["student"].startswith("students/sweep") for row in result["rows"].values() for s in row.get("seeds", []))
    seeds = ("One distilled student per T (seed of the first stage-6 student" if n == 1 else
             f"{n} distilled students per T (stage 6's seeds")
    if reused:
        seeds += f"; {reused} of them stage 6's own distilled students, made with exactly these settings, not trained again"
    search = f" at beam {result['beam']:g}, max-active {result['max_active']}" if "beam" in result else ""
    extra = result.get("extra_scales") or []
    if extra:
        search += (f" (the students' scale search could also visit {', '.join(f'{x:g}' for x in extra)}, beyond stage 7's grid; "
                   "stage 7's search for the baseline, replayed on that wider grid with its recorded dev errors, picks the same scale)")
    noise = ("One seed per T: the intervals cover the sampling of utterances, not the variance of training." if n == 1 else
             f"Test frame accuracy and test WER: mean ± standard deviation over the {n} seeds (dev frame accuracy: "
             "their mean); dev WER and acoustic scale: the first seed's, the other seeds decoded at its scale, as stage 7 decodes the "
             "baseline's seeds; the intervals are "
             "over utterances of the seeds' averaged counts, as Table 1's.")
    lines += [f"{seeds}; soft weight {kd.soft_weight:g}, hard weight {kd.hard_weight:g}, {targets}), each decoded as stage 7 decodes "
              f"every system{',' if search else ''}{search}: its acoustic scale chosen on dev, {test_part} decoded at it; differences "
              f"from the baseline (mean of its {result['baseline_seeds']} seeds) with 95% paired bootstrap intervals over utterances, and the "
              "share of the stage-7 ensemble's test frame-accuracy gain over the baseline that the students keep (Table 1's measure). "
              f"{noise}", "",
              "| T | soft-target mass kept (top-k) | KL(stored ‖ full), nats | dev frame accuracy | dev WER (acoustic scale) | "
              "test frame accuracy | test WER | WER − baseline, points | frame accuracy − baseline, points | share of the ensemble's "
              "frame-accuracy gain kept |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"].values():
        wer, acc = row["wer_vs_baseline"], row["frame_accuracy_vs_baseline"]
        kept = "1 (all)" if row["mass_kept"] is None else f"{row['mass_kept']:.3f}"
        kl = "0 (all)" if row["kl_stored_vs_full"] is None else f"{row['kl_stored_vs_full']:.3f}"
        scales = f"{row['acoustic_scale']:g}"
        test_acc = f"{100 * row['test_frame_accuracy']:.1f}%" if n == 1 else \
            f"{100 * row['test_frame_accuracy']:.1f} ± {100 * row['test_frame_accuracy_std']:.1f}%"
        test_wer = f"{100 * row['test_wer']:.2f}%" if n == 1 else f"{100 * row['test_wer']:.2f} ± {100 * row['test_wer_std']:.2f}%"
        lines.append(f"| {row['temperature']:g} | {kept} | {kl} | {100 * row['dev_frame_accuracy']:.1f}% | "
                     f"{100 * row['dev_wer']:.2f}% ({scales}{', grid edge' if row.get('scale_at_grid_edge') else ''}) | "
                     f"{test_acc} | {test_wer} | {format_interval(wer)} ({significance(wer, True)}) | "
                     f"{format_interval(acc)} ({significance(acc, False)}) | "
                     f"{'n/a' if row.get('gain_share') is None else format_share(row['gain_share'])} |")
    ood = result.get("ood_part")
    if ood:
        base_ood = result.get("baseline_ood_wer")
        baseline_text = (f"the baseline's {ood} WER (stage 7, mean of its {result['baseline_seeds']} seeds) is {100 * base_ood:.2f}%"
                         if base_ood is not None else f"stage 7 did not decode the baseline on {ood} (--decode-parts), so the WER "
                         f"differences from it are missing; rerun stage 7 with {ood} among its decode parts for them")
        lines += ["", f"On {ood}, the out-of-domain test part, each T's students decoded at the scale above; {baseline_text}:", "",
                  f"| T | {ood} frame accuracy | {ood} WER | relative WER increase, {ood} vs {test_part} | WER − baseline on {ood}, points | "
                  f"frame accuracy − baseline on {ood}, points |", "|---|---|---|---|---|---|"]
        for row in result["rows"].values():
            wer, acc = row.get("ood_wer_vs_baseline"), row["ood_frame_accuracy_vs_baseline"]
            ood_wer = f"{100 * row['ood_wer']:.2f}%" if n == 1 else f"{100 * row['ood_wer']:.2f} ± {100 * row['ood_wer_std']:.2f}%"
            increase = f"{row['ood_wer'] / row['test_wer'] - 1:+.0%}" if row["test_wer"] else "n/a"
            lines.append(f"| {row['temperature']:g} | {100 * row['ood_frame_accuracy']:.1f}% | {ood_wer} | {increase} | "
                         f"{'baseline not decoded' if wer is None else f'{format_interval(wer)} ({significance(wer, True)})'} | "
                         f"{format_interval(acc)} ({significance(acc, False)}) |")
    own = result.get("own_temperature")
    if own is not None:
        lines += ["", f"Against the students at the recipe's own T = {own:g}: the same paired bootstrap over utterances (negative WER, "
                  "positive frame accuracy: better than it)" + (", and seed k against seed k, which carries the training variance the "
                  "bootstrap leaves out; a difference counts only when its interval excludes 0 and every seed pair agrees in sign:" if n > 1
                  else "; one seed per T, so the variance of training is in neither:"), ""]
        for row in result["rows"].values():
            if "wer_vs_own_temperature" in row:
                parts = []
                measures = [("WER", "test_wer", "wer", True), ("frame accuracy", "test_frame_accuracy", "frame_accuracy", False)]
                if "ood_wer_vs_own_temperature" in row:
                    measures.append((f"{ood} WER", "ood_wer", "ood_wer", True))
                for what, key, compared, better_if_negative in measures:
                    iv = row[f"{compared}_vs_own_temperature"]
                    pairs = row.get(f"{key}_seed_differences_vs_own") or []
                    seeds_text = f", seed pairs {', '.join(f'{100 * d:+.2f}' for d in pairs)}" if len(pairs) > 1 else ""
                    parts.append(f"{what} {format_interval(iv)} points{seeds_text} ({_verdict(iv, better_if_negative, pairs)})")
                lines.append(f"- T = {row['temperature']:g}: " + "; ".join(parts))
    if any(row.get("scale_at_grid_edge") for row in result["rows"].values()):
        lines += ["", "A row marked \"grid edge\" chose the smallest or largest scale of the grid searched "
                  f"(the decode config's acoustic_scales{' and the extra scales' if extra else ''}): its best scale may lie beyond "
                  "the grid: its dev WER there would be no higher, its test WER could move either way."]
    return "\n".join(lines) + "\n"


def _verdict(iv: dict, better_if_negative: bool, pairs: Sequence[float] = ()) -> str:
    """"better"/"worse" when the interval excludes 0 and, with several seeds, every seed pair's
    difference has the interval's sign; otherwise why it is noise."""
    from asr_kd.report.tables import seed_agreement

    outcome = seed_agreement(iv, pairs if len(pairs) > 1 else ())
    if outcome == "noise":
        return "noise: the interval contains 0"
    if outcome == "seed noise":
        return "within seed noise: the seed pairs disagree in sign"
    return "better" if (outcome == "lower") == better_if_negative else "worse"
