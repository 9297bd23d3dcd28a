"""The CTC path: ``ctc-train-teachers``, ``ctc-spike-report``, ``ctc-train-student`` (one student),
``ctc-train-students`` (all of them, as jobs of a launcher) and ``ctc-decode`` (stage code:
:mod:`asr_kd.stages.ctc_s4_teachers` ... :mod:`asr_kd.stages.ctc_s7_decode`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from asr_kd.bin.common import add_jobs_args, add_part_args, launcher_from_args


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, required=True, help="recipe data folder (fbank cuts and CMVN of stage 1, lang of stage 2)")
    p.add_argument("--exp-dir", type=Path, required=True, help="recipe experiment folder; outputs go to <exp>/ctc/<units>/")
    add_part_args(p)
    p.add_argument("--ctc-config", type=Path, default=None, help="YAML of CtcConfig fields (conf/ctc_*.yaml)")
    p.add_argument("--ctc-set", dest="ctc_overrides", action="append", metavar="KEY=VALUE", help="override a CtcConfig field")
    p.add_argument("--results-md", type=Path, default=None, help="RESULTS.md whose section this step (re)writes")
    p.add_argument("--results-command", default=None, help="command recorded in RESULTS.md (default: this asr-kd command line)")
    p.add_argument("--num-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="YAML of TrainConfig fields (conf/ctc_train_*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="override a TrainConfig field")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the CTC commands to ``sub``."""
    p = sub.add_parser("ctc-train-teachers", help="train the CTC teacher ensemble (optionally from a shared initial checkpoint)",
                       description="Make the CTC units (phones or BPE, ctc.units), then train ctc.num_teachers CTC encoders with "
                       "seeds seed, seed+1, ... in <exp>/ctc/<units>/teachers/ (or teachers_shared<N>/ when ctc.shared_init_steps=N: "
                       "every teacher then starts from one checkpoint trained N steps; a _guided<w> suffix when ctc.guide_weight=w: "
                       "teacher0 of the unguided set guides the others' spikes with guided CTC). With BPE units and "
                       "ctc.phone_init_steps=N, one phone model of N steps is trained first in <exp>/ctc/bpe/phone_init/ and every BPE "
                       "teacher (and later student) starts from its encoder. Each teacher is a job: --jobs local "
                       "processes at a time, or a Slurm job array (--cmd slurm). Finished teachers are skipped.")
    _common_args(p)
    _train_args(p)
    add_jobs_args(p, "teachers")
    p.set_defaults(func=_train_teachers)

    p = sub.add_parser("ctc-spike-report", help="measure the CTC spike misalignment between teachers of every trained teacher set",
                       description="For each trained teacher set (independent, shared init, guided), the mean frame offset of matched "
                       "non-blank spikes and the share of frames whose argmax tokens differ, between every pair of teachers on "
                       "--part (default the dev set); writes <exp>/ctc/<units>/spike_report.json.")
    _common_args(p)
    p.add_argument("--part", default=None, help="part to measure on (default: --dev-set)")
    p.set_defaults(func=_spike_report)

    p = sub.add_parser("ctc-train-student", help="train a CTC student: baseline, frame-level KD or sequence-level KD",
                       description="--kind baseline: CTC on the transcripts. --kind frame: ctc.kd_weight * T^2 * KL(ensemble_T || "
                       "student_T) per output frame (blank frames included, excluded or down-weighted: ctc.blank_handling) + "
                       "ctc.ctc_weight * CTC; teachers online or stored top-k targets (ctc.kd_source). --kind sequence: CTC on the "
                       "ensemble's greedy or n-best hypotheses (ctc.pseudo_labels). Output: <exp>/ctc/<units>/students/<kind>[_seed<k>].")
    _common_args(p)
    _train_args(p)
    p.add_argument("--kind", choices=("baseline", "frame", "sequence"), required=True, help="which student")
    p.add_argument("--name", default=None, help="folder and RESULTS.md name of this student (default: --kind); e.g. frame_exclude")
    p.add_argument("--seed-index", type=int, default=0,
                   help="k > 0: another seed of this student (seed + 1000 + k) in students/<name>_seed<k>; ctc-decode averages a "
                   "student's seeds in one row, with intervals against the baseline [0]")
    p.set_defaults(func=_train_student)

    p = sub.add_parser("ctc-train-students", help="train every CTC student over --num-seeds seeds, as jobs of a launcher (CTC stage 6)",
                       description="ctc-train-student for each --kinds and seed (students/<kind>[_seed<k>]) and --num-seeds "
                       "frame-level students per --extra-frame, each a job: --jobs local processes at a time, or a Slurm job array (--cmd "
                       "slurm). Seed 0 of every student runs first, since it makes the stored soft targets and the pseudo-labels "
                       "that the other seeds reuse. Then (re)writes each student's RESULTS.md section.")
    _common_args(p)
    _train_args(p)
    p.add_argument("--kinds", nargs="+", choices=("baseline", "frame", "sequence"), default=["baseline", "frame", "sequence"],
                   help="which students (default all three)")
    p.add_argument("--num-seeds", type=int, default=1, help="seeds per student kind (default 1)")
    p.add_argument("--extra-frame", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE...]",
                   help="also a frame-level student students/NAME[_seed<k>] (--num-seeds seeds) with these CtcConfig overrides, "
                   "e.g. frame_shared15:shared_init_steps=15 for the teachers of that set; ctc-decode compares a "
                   "frame_<x> student with the frame student; repeatable")
    add_jobs_args(p, "students")
    p.set_defaults(func=_train_students)

    p = sub.add_parser("ctc-decode", help="greedy, prefix-beam and HLG decoding of every CTC system; WER table",
                       description="Builds HLG for the units (kaldifst) and scores each teacher, the ensemble and the trained "
                       "students (every seed) on --decode-parts: greedy and prefix-beam token error rates (and WERs for BPE), HLG "
                       "WER (kaldi-decoder); when decode.ctc_acoustic_scales is set (run.sh passes conf/decode_ctc.yaml) at each "
                       "system's scale chosen on the dev part from it, else at decode.ctc_acoustic_scale. A student's seeds make "
                       "one row (mean and deviation) and every ensemble and student is compared with the baseline student (and "
                       "each frame_<x> student with the frame student) by a paired bootstrap. Writes <exp>/ctc/<units>/decode/ (scores.json, comparisons.json, "
                       "per-utterance counts) and the CTC table of --results-md.")
    _common_args(p)
    p.add_argument("--decode-config", type=Path, default=None, help="YAML of DecodeConfig fields")
    p.add_argument("--decode-set", dest="decode_overrides", action="append", metavar="KEY=VALUE", help="override a DecodeConfig field")
    p.add_argument("--decode-parts", nargs="+", default=None, help="parts to decode (default: dev and test sets)")
    p.add_argument("--corpus", default="", help="what the numbers were measured on, for RESULTS.md")
    p.set_defaults(func=_decode)


def _setup(args: argparse.Namespace, name: str) -> tuple[Any, dict[str, Any]]:
    """Log to <exp>/log/<name>.log; return the CtcConfig and the layout / RESULTS.md arguments."""
    from asr_kd.config import CtcConfig, load_config, parse_overrides
    from asr_kd.stages.layout import RecipeLayout
    from asr_kd.utils import setup_logging

    setup_logging(args.exp_dir / "log" / f"{name}.log")
    if args.num_threads > 0:
        import torch

        torch.set_num_threads(args.num_threads)
    cfg = load_config(CtcConfig, args.ctc_config, parse_overrides(args.ctc_overrides))
    layout = RecipeLayout(args.data_dir, args.exp_dir, args.train_set, args.dev_set, args.test_set, ctc_units=cfg.units, ood_part=args.ood_set)
    command = args.results_command or shlex.join(["asr-kd", *sys.argv[1:]])
    return cfg, {"layout": layout, "results_md": args.results_md, "command": command}


def _train_config(args: argparse.Namespace) -> Any:
    from asr_kd.config import TrainConfig, load_config, parse_overrides

    return load_config(TrainConfig, args.config, parse_overrides(args.overrides))


def _train_teachers(args: argparse.Namespace) -> int:
    from asr_kd.stages.ctc_s4_teachers import train_ctc_teachers

    cfg, common = _setup(args, "ctc_train_teachers")
    teachers = train_ctc_teachers(cfg=cfg, train_config=_train_config(args), jobs=args.jobs, num_threads=max(args.num_threads, 1),
                                  launcher=launcher_from_args(args), **common)
    for i, t in enumerate(teachers):
        print(f"teacher{i}: best dev token error rate {t['best_dev_ter']}")
    return 0


def _spike_report(args: argparse.Namespace) -> int:
    from asr_kd.stages.ctc_s5_spikes import spike_report

    cfg, common = _setup(args, "ctc_spike_report")
    for name, s in spike_report(cfg=cfg, part=args.part, **common).items():
        print(f"{name}: mean spike offset {s['mean_spike_offset_frames']:.2f} frames, argmax disagreement {s['argmax_disagreement']:.3f}")
    return 0


def _train_student(args: argparse.Namespace) -> int:
    from asr_kd.stages.ctc_s6_students import train_ctc_student

    name = args.name or args.kind
    cfg, common = _setup(args, f"ctc_train_student_{name}" + (f"_seed{args.seed_index}" if args.seed_index else ""))
    r = train_ctc_student(kind=args.kind, name=args.name, cfg=cfg, train_config=_train_config(args), seed_index=args.seed_index, **common)
    print(f"{name} seed {r['seed']} ({r['stop_reason']}); best dev token error rate {r['best_dev_ter']}")
    return 0


def _train_students(args: argparse.Namespace) -> int:
    from asr_kd.config import CtcConfig, load_config, parse_overrides
    from asr_kd.errors import ConfigError
    from asr_kd.stages.ctc_s6_students import train_ctc_students

    cfg, common = _setup(args, "ctc_train_students")
    extra = {}
    for spec in args.extra_frame:
        name, sep, sets = spec.partition(":")
        if not sep or not name or not sets:
            raise ConfigError(f"--extra-frame {spec!r}: give NAME:KEY=VALUE[,KEY=VALUE...], e.g. frame_shared15:shared_init_steps=15")
        if name in extra:
            raise ConfigError(f"--extra-frame names {name!r} twice; give each extra student its own name")
        extra[name] = load_config(CtcConfig, args.ctc_config, parse_overrides([*(args.ctc_overrides or []), *sets.split(",")]))
    out = train_ctc_students(cfg=cfg, train_config=_train_config(args), kinds=args.kinds, num_seeds=args.num_seeds, extra_frame=extra,
                             jobs=args.jobs, num_threads=max(args.num_threads, 1), launcher=launcher_from_args(args), **common)
    for name, summaries in out.items():
        print(f"{name}: best dev token error rate " + ", ".join(f"{r['best_dev_ter']} (seed {r['seed']})" for r in summaries))
    return 0


def _decode(args: argparse.Namespace) -> int:
    from asr_kd.config import DecodeConfig, load_config, parse_overrides
    from asr_kd.stages.ctc_s7_decode import decode_ctc_systems

    cfg, common = _setup(args, "ctc_decode")
    decode_cfg = load_config(DecodeConfig, args.decode_config, parse_overrides(args.decode_overrides))
    scores = decode_ctc_systems(cfg=cfg, decode_config=decode_cfg, parts=args.decode_parts, corpus=args.corpus, **common)
    for name, by_part in scores.items():
        print(name + ": " + ", ".join(f"{p} HLG WER {s['hlg_wer']:.4f}" for p, s in by_part.items()))
    return 0
