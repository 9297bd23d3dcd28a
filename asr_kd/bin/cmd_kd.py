"""Recipe stages 3 (second half) to 10: ``realign`` (``--alignments dnn``), ``train-teachers``, ``make-soft-targets``, ``train-student``,
``decode-hybrid`` (Table 1), ``three-percent`` (Table 5), ``deploy`` (stage 9) and ``temperature-sweep``; the stage code is in
:mod:`asr_kd.stages` (s4_teachers ... s10_temperature_sweep)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from asr_kd.bin.common import add_jobs_args, add_part_args, launcher_from_args
from asr_kd.config import DEFAULT_DNN_PRESET, INT8_MAX_RELATIVE, RESCORE_METHODS, THREE_PERCENT_FRACTION, RescoreConfig


def _layout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, required=True, help="recipe data folder (fbank/cmvn_<part>.npz of stage 1)")
    p.add_argument("--exp-dir", type=Path, required=True, help="recipe experiment folder (gmm/ali of stage 3; outputs go here)")
    add_part_args(p)
    p.add_argument("--results-md", type=Path, default=None, help="RESULTS.md whose section this stage (re)writes")
    p.add_argument("--results-command", default=None, help="command recorded in RESULTS.md (default: this asr-kd command line)")
    p.add_argument("--num-threads", type=int, default=0,
                   help="torch threads (default 0: torch's own choice); 1 is faster for small DNNs on a busy machine")
    p.add_argument("--alignments", choices=("gmm", "dnn"), default=None,
                   help="the senone alignments and priors to train and score on: gmm (stage 3's triphone GMM, <exp>/gmm/ali) or dnn "
                   "(stage 3's first-pass DNN realignment, <exp>/realign/ali; asr-kd realign); default: those stage 4's teachers "
                   "were trained on (gmm before stage 4 has run). A stage after 4 refuses alignments other than the teachers'")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-config", default=DEFAULT_DNN_PRESET,
                   help=f"DNN preset (paper, mini, tiny) or YAML of DnnConfig fields (conf/dnn_*.yaml) (default {DEFAULT_DNN_PRESET})")
    p.add_argument("--model-set", dest="model_overrides", action="append", metavar="KEY=VALUE", help="override a DnnConfig field")
    p.add_argument("--config", type=Path, default=None, help="YAML of TrainConfig fields (conf/train_*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="override a TrainConfig field")


def _kd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kd-config", type=Path, default=None, help="YAML of KdConfig fields (conf/kd.yaml)")
    p.add_argument("--kd-set", dest="kd_overrides", action="append", metavar="KEY=VALUE", help="override a KdConfig field")


def _teachers_arg(p: argparse.ArgumentParser, default: int | None) -> None:
    p.add_argument("--num-teachers", type=int, default=default,
                   help=f"number of teachers{' (default: every trained teacher)' if default is None else f' (default {default})'}")


def _seeds_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-seeds", type=int, default=1,
                   help="students per kind, differing only in their seed: students/<kind> and students/<kind>_seed<k> (default 1)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the commands of stage 3's realignment and stages 4-10 to ``sub``."""
    p = sub.add_parser("realign", help="stage 3 (--alignments dnn): a first-pass DNN on the GMM's alignments realigns every part",
                       description="Train one DNN (--model-config, --config; seed + 500) on stage 3's triphone-GMM senone alignments, then "
                       "align the training, dev and test parts again through stage 3's training graphs with its posteriors divided by "
                       "stage 3's priors (Kaldi's DNN realignment): <exp>/realign/aligner/ and <exp>/realign/ali/ (cuts with the new "
                       "senones, transition ids, priors), summary.json with the share of frames whose senone changed "
                       "(asr_kd/stages/s3_realign.py). Stages 4-10 use them with --alignments dnn. Skipped when its record matches.")
    _layout_args(p)
    _model_args(p)
    p.set_defaults(func=_realign)

    p = sub.add_parser("train-teachers", help="stage 4: train N DNN teachers differing only in their seed",
                       description="Train --num-teachers DNNs on the stage-3 senone alignments (seeds seed, seed+1, ...) in "
                       "<exp>/teachers/teacher<i> (asr_kd/stages/s4_teachers.py). Skipped when <exp>/teachers/provenance.json matches the "
                       "settings and stage 3's record; an interrupted run of the same settings resumes.")
    _layout_args(p)
    _model_args(p)
    _teachers_arg(p, 4)
    add_jobs_args(p, "teachers")
    p.set_defaults(func=_train_teachers)

    p = sub.add_parser("make-soft-targets", help="stage 5: store the ensemble's top-k soft targets at temperature T on the training cuts",
                       description="Fuse the teachers' posteriors at kd.temperature for every training frame, keep the top kd.top_k "
                       "on the cuts in format kd.storage (rvq: kd.codebooks one-byte codes of the whole posterior; uint16-uint8 or int32-fp16: the "
                       "top-k ids and probabilities): <exp>/soft_targets/teachers<N>_<fusion>_T<T>_k<k>[_rvq<n>|_u16u8]/ with "
                       "cuts_<train>.jsonl.gz, stats.json (bytes per frame, KL stored vs full) and provenance.json "
                       "(asr_kd/stages/s5_soft_targets.py).")
    _layout_args(p)
    _kd_args(p)
    _teachers_arg(p, None)
    p.add_argument("--max-duration", type=float, default=20.0, help="seconds of audio per inference batch (default 20: small batches keep the fusion in cache)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None,
                   help="where the teachers score (default: $ASR_KD_INFERENCE_DEVICE, which run.sh's --device sets, else cpu; "
                        "under torchrun, cuda means each rank's own GPU)")
    p.set_defaults(func=_make_soft_targets)

    p = sub.add_parser("train-student", help="stage 6: train the hard-target baseline or the distilled student",
                       description="--kind hard: cross entropy on the senone alignments. --kind distilled: kd.soft_weight * T^2 * "
                       "CE(soft targets at T) + kd.hard_weight * CE(senones), from stored soft targets (kd.mode=stored) or "
                       "teachers run in the loop (kd.mode=online; kd.loss=logit_l2 for logit matching). Output: <exp>/students/<kind> "
                       "(asr_kd/stages/s6_students.py). Stored soft targets made with another T, top-k, fusion or teacher set are "
                       "refused in one line.")
    _layout_args(p)
    _model_args(p)
    _kd_args(p)
    _teachers_arg(p, None)
    p.add_argument("--kind", choices=("hard", "distilled", "compressed"), nargs="+", required=True,
                   help="which students: hard targets, distilled, or compressed (distilled, meant for a smaller --model-config)")
    _seeds_arg(p)
    p.add_argument("--utterance-cmvn", action="store_true",
                   help="train on features normalised per utterance instead of per speaker, in <exp>/students/<kind>_uttcmvn (recipe "
                        "stage 9's deployable students: a model directory cannot know a new file's speaker)")
    add_jobs_args(p, "students")
    p.set_defaults(func=_train_student)

    p = sub.add_parser("decode-hybrid", help="stage 7: HCLG decoding, WER and frame accuracy of baseline, ensemble and distilled (Table 1)",
                       description="Frame accuracy against the senone alignments on dev and test, hybrid HCLG decoding (posteriors "
                       "minus log priors times the acoustic scale) and WER on --decode-parts; writes <exp>/decode/ and the Table 1 "
                       "analogue to --results-md.")
    _layout_args(p)
    _kd_args(p)
    _teachers_arg(p, None)
    p.add_argument("--decode-config", type=Path, default=None, help="YAML of DecodeConfig fields")
    p.add_argument("--decode-set", dest="decode_overrides", action="append", metavar="KEY=VALUE", help="override a DecodeConfig field")
    p.add_argument("--num-jobs", type=int, default=2, help="parallel decoding processes (default 2)")
    p.add_argument("--decode-parts", nargs="+", default=None, help="parts to decode (default: the test set)")
    p.add_argument("--no-teachers", action="store_true", help="skip the per-teacher frame accuracies")
    p.add_argument("--decode-teachers", action="store_true", help="also decode each teacher on --decode-parts (N more decodings)")
    _seeds_arg(p)
    p.add_argument("--compressed", action="store_true", help="also score stage 6's compressed distilled student (students/compressed*)")
    p.add_argument("--corpus", default="", help="what the numbers were measured on, for RESULTS.md (e.g. \"the synthetic 'mini' corpus\")")
    p.add_argument("--max-posterior-mb", type=float, default=None,
                   help="largest log-posteriors of one part held in memory for the decoding passes; a larger part is decoded in "
                        "chunks, computing them again per pass (same results; default asr_kd.stages.s7_decode.MAX_POSTERIOR_MB)")
    p.set_defaults(func=_decode_hybrid)

    p = sub.add_parser("three-percent", help="stage 8: hard vs soft targets on 3%% of the training data (Table 5)",
                       description="Train on --fraction of the training cuts (seeded draw) with hard targets (early stopping on dev) "
                       "and with the ensemble's stored soft targets (no early stopping; with --kd-set mode=online its whole "
                       "distribution, computed in the training loop; hard labels weighted by kd.hard_weight beside them: run.sh "
                       "passes --kd-set hard_weight=<its --three-percent-hard-weight, default 0: soft targets only>); compare "
                       "with the stage-6 hard baseline "
                       "on train and test frame accuracy; write <exp>/three_percent/, a dev-accuracy plot and the Table 5 analogue.")
    _layout_args(p)
    _model_args(p)
    _kd_args(p)
    _teachers_arg(p, None)
    p.add_argument("--fraction", type=float, default=THREE_PERCENT_FRACTION,
                   help=f"share of the training utterances (default {THREE_PERCENT_FRACTION}: the paper's 3%%)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the subset draw (default 0; seed k draws with it + k)")
    p.add_argument("--num-seeds", type=int, default=1,
                   help="subset draws, each with its own hard and soft model (their own seed): three_percent and three_percent/seed<k> "
                        "(default 1); the table gives means, standard deviations and each seed's share")
    add_jobs_args(p, "3%% models")
    p.add_argument("--corpus", default="", help="what the numbers were measured on, for RESULTS.md")
    p.set_defaults(func=_three_percent)

    p = sub.add_parser("temperature-sweep", help="stage 10 (opt-in): one distilled student per temperature T, scored beside the baseline",
                       description="For each --temperatures T: stage 5's soft targets at T and a distilled student trained on them "
                       "(<exp>/students/sweep_T<T>/), scored on dev and test frame accuracy and test WER at its own acoustic scale chosen "
                       "on dev, with paired bootstrap intervals against the stage-7 baseline; writes <exp>/temperature_sweep/sweep.json "
                       "and its RESULTS.md section (asr_kd/stages/s10_temperature_sweep.py). With --kd-set mode=online nothing is "
                       "stored: each student learns the ensemble's whole distribution at its T in the training loop "
                       "(<exp>/students/sweep_online_T<T>/, scored in <exp>/temperature_sweep_online/, its own section). "
                       "Needs stages 4-7.")
    _layout_args(p)
    _model_args(p)
    _kd_args(p)
    _teachers_arg(p, None)
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0], help="temperatures (default 1 2 4 8)")
    p.add_argument("--num-seeds", type=int, default=1,
                   help="students per T, with stage 6's seeds (default 1); at the recipe's own T, stage 6's students are used")
    p.add_argument("--extra-scales", type=float, nargs="+", default=[],
                   help="acoustic scales beyond the ends of the decode config's grid that the students' dev search may also visit "
                   "(refused when a baseline seed's own search stopped at its grid's edge)")
    p.add_argument("--decode-config", type=Path, default=None, help="YAML of DecodeConfig fields (the beam of stage 7)")
    p.add_argument("--decode-set", dest="decode_overrides", action="append", metavar="KEY=VALUE", help="override a DecodeConfig field")
    add_jobs_args(p, "students")
    p.set_defaults(func=_temperature_sweep)

    p = sub.add_parser("deploy", help="stage 9: model directories, ONNX fp32 and int8, the cost table and the int8 gate",
                       description="Train the --uttcmvn students again on per-utterance CMVN (stage 6's code, <exp>/students/<kind>_uttcmvn), "
                       "assemble self-contained model directories of the teachers, the triphone GMM, the students (and with --model-type "
                       "ctc or both the CTC baseline and frame-level students) in <exp>/deploy/, export the distilled ones to ONNX fp32 and "
                       "int8, and measure every system side by side on the test part: parameters, multiply-adds, real-time factors, memory, "
                       "size, WER, the int8 quantisation gate and the deployable student's end-to-end speed (asr_kd/stages/s9_deploy.py). "
                       "Skipped when <exp>/deploy/provenance.json matches the settings and the records of stages 1-4, 6 and 7 (CTC: 1, 6 and 7); "
                       "the section is then written again from <exp>/deploy/section.md. Exit status 1 when a quantisation gate failed.")
    _layout_args(p)
    _model_args(p)
    _kd_args(p)
    _teachers_arg(p, None)
    p.add_argument("--model-type", choices=("hybrid", "ctc", "both"), default="hybrid",
                   help="which path's systems to deploy: the hybrid DNN-HMMs, the CTC students, or both (default hybrid)")
    p.add_argument("--compressed-config", default=None,
                   help="DnnConfig preset or YAML of stage 6's compressed student (default, or none: the run has none)")
    p.add_argument("--compressed-train-config", type=Path, default=None,
                   help="TrainConfig YAML of the compressed student (default: --config)")
    p.add_argument("--uttcmvn", nargs="+", default=["hard", "distilled", "compressed"], metavar="KIND",
                   help="students trained again on per-utterance CMVN, which a model directory can give any file: hard, distilled, "
                        "compressed, or none (default: all three; a distilled one only from stored soft targets, a compressed one "
                        "only with --compressed-config)")
    p.add_argument("--ctc-config", type=Path, default=None, help="CtcConfig YAML of the CTC path (its units; default phone)")
    p.add_argument("--int8-max-relative", type=float, default=INT8_MAX_RELATIVE,
                   help=f"largest relative test-WER increase of an int8 model over its fp32 ONNX (default {INT8_MAX_RELATIVE})")
    add_jobs_args(p, "students")
    p.set_defaults(func=_deploy)

    p = sub.add_parser("decode-part", help="decode any part (your own test set) with trained systems, beside the recipe's tables",
                       description="Prepare manifests and features of --part from --corpus-dir (LibriSpeech layout: "
                       "<corpus>/<part>/<speaker>/<chapter>/*.flac + .trans.txt) and decode it with each of --systems (tri, mono: the "
                       "stage-3 GMMs; baseline, distilled: the stage-6 students; ensemble, teacher<i>: stage 4) through the stage-3 HCLG, "
                       "and the CTC path's systems through the CTC HLG (ctc-<name> for the student <exp>/ctc/<units>/students/<name>, e.g. "
                       "ctc-frame; ctc-teacher<i> and ctc-ensemble for the independently trained teachers). "
                       "Writes <exp>/decode_parts/<part>/<system>/ (hyp.txt, wer_details, per_speaker.json) and scores.json; the "
                       "recipe's stages and RESULTS.md are not touched (asr_kd/stages/decode_part.py).")
    _layout_args(p)
    p.add_argument("--corpus-dir", type=Path, required=True, help="folder holding <part>/ in LibriSpeech's layout")
    p.add_argument("--part", required=True, help="the part's folder name (any name, e.g. my-test)")
    p.add_argument("--systems", nargs="+", default=["tri", "baseline", "ensemble", "distilled"], help="systems to decode (default: tri baseline ensemble distilled)")
    p.add_argument("--decode-config", type=Path, default=None, help="YAML of DecodeConfig fields")
    p.add_argument("--decode-set", dest="decode_overrides", action="append", metavar="KEY=VALUE", help="override a DecodeConfig field")
    p.add_argument("--num-jobs", type=int, default=2, help="parallel decoding processes (default 2)")
    p.add_argument("--align", action="store_true", help="also align the part as stage 3 aligned the recipe's parts (the triphone "
                   "GMM, or its first-pass DNN with --alignments dnn; data/tids_<part>.txt) and score the networks' frame accuracy against it")
    p.add_argument("--fixed-scale", action="store_true", help="decode every system at the decode config's acoustic_scale instead of "
                   "the scale the recipe tuned for it on dev (stages 3 and 7; CTC students: the CTC decoding stage's settings)")
    p.add_argument("--ctc-units", choices=("phone", "bpe"), default="phone", help="units of the ctc-<name> systems (default phone)")
    p.add_argument("--rescore-arpa", type=Path, default=None, help="rescore lattices of the HCLG systems with this larger ARPA LM "
                   "(e.g. from `asr-kd train-lm --order 4`, or LibriSpeech's 4-gram) or, with --rescore-method const, a folder of "
                   "`asr-kd arpa-to-const`; the lattice pass uses the decode config's beam and lattice_beam, without max-active "
                   "(asr_kd/decode/rescore.py)")
    rescore_defaults = {f.name: f.default for f in dataclasses.fields(RescoreConfig)}
    p.add_argument("--rescore-method", choices=RESCORE_METHODS, default=rescore_defaults["method"],
                   help="new LM scores: exact ARPA back-off read into memory (arpa), the same from memory-mapped arrays built "
                        f"once (const: for LibriSpeech's tglarge/fglarge), or its G.fst (fst); default {rescore_defaults['method']}")
    p.add_argument("--rescore-nbest", type=int, default=rescore_defaults["nbest"],
                   help=f"word sequences rescored per lattice (default {rescore_defaults['nbest']})")
    p.set_defaults(func=_decode_part)

    p = sub.add_parser("align", help="align any part (e.g. new training data) with the stage-3 triphone GMM, into cuts to train on",
                       description="Prepare manifests and features of --part from --corpus-dir (LibriSpeech layout) and align it with "
                       "the stage-3 triphone GMM (Viterbi, Kaldi's align_si), or, where the teachers were trained on DNN-realigned labels "
                       "(--alignments dnn), with stage 3's first-pass DNN: <exp>/align_parts/<part>/cuts_<part>.jsonl.gz carries "
                       "each aligned cut's senone alignment (field 'senones', as exp/gmm/ali/cuts_<part>.jsonl.gz), tids_<part>.txt "
                       "its transition ids; the recipe's own folders are not touched (asr_kd/stages/decode_part.py).")
    _layout_args(p)
    p.add_argument("--corpus-dir", type=Path, required=True, help="folder holding <part>/ in LibriSpeech's layout")
    p.add_argument("--part", required=True, help="the part's folder name")
    p.add_argument("--num-jobs", type=int, default=2, help="parallel alignment processes (default 2)")
    p.set_defaults(func=_align_part)


def _setup(args: argparse.Namespace, name: str, after_teachers: bool = True) -> dict[str, Any]:
    """Log to <exp>/log/<name>.log; return the layout and RESULTS.md arguments common to all
    stages. ``after_teachers``: a stage that uses stage 4's teachers, refused (ConfigError) when
    --alignments names other labels than theirs."""
    from asr_kd.stages.common import check_alignments, recorded_alignments
    from asr_kd.stages.layout import RecipeLayout
    from asr_kd.utils import setup_logging

    setup_logging(args.exp_dir / "log" / f"{name}.log")
    if args.num_threads > 0:
        import torch

        torch.set_num_threads(args.num_threads)
    command = args.results_command or shlex.join(["asr-kd", *sys.argv[1:]])
    layout = RecipeLayout(args.data_dir, args.exp_dir, args.train_set, args.dev_set, args.test_set, ood_part=args.ood_set)
    layout = dataclasses.replace(layout, alignments=args.alignments or recorded_alignments(layout) or "gmm")
    if after_teachers:
        check_alignments(layout)
    return {"layout": layout, "results_md": args.results_md, "command": command}


def _configs(args: argparse.Namespace) -> tuple[Any, Any]:
    from asr_kd.config import TrainConfig, load_config, parse_overrides
    from asr_kd.models.dnn import load_dnn_config

    return load_dnn_config(args.model_config, parse_overrides(args.model_overrides)), load_config(TrainConfig, args.config, parse_overrides(args.overrides))


def _kd(args: argparse.Namespace) -> Any:
    from asr_kd.config import KdConfig, load_config, parse_overrides

    return load_config(KdConfig, args.kd_config, parse_overrides(args.kd_overrides))


def _realign(args: argparse.Namespace) -> int:
    from asr_kd.stages.s3_realign import realign_with_dnn

    common = _setup(args, "realign", after_teachers=False)
    model_cfg, train_cfg = _configs(args)
    summary = realign_with_dnn(model_config=model_cfg, train_config=train_cfg, **common)
    for part in summary["parts"]:
        print(f"{part['part']}: {part['aligned']} of {part['cuts']} cuts realigned, "
              f"{100 * part['changed'] / max(part['frames'], 1):.1f}% of frames changed senone")
    return 0


def _train_teachers(args: argparse.Namespace) -> int:
    from asr_kd.stages.s4_teachers import train_teachers

    common = _setup(args, "train_teachers", after_teachers=False)
    model_cfg, train_cfg = _configs(args)
    summary = train_teachers(num_teachers=args.num_teachers, model_config=model_cfg, train_config=train_cfg, jobs=args.jobs,
                             num_threads=max(args.num_threads, 1), launcher=launcher_from_args(args), **common)
    for i, t in enumerate(summary["teachers"]):
        print(f"teacher{i} (seed {t['seed']}): best dev frame accuracy {t['best_dev_frame_accuracy']}")
    return 0


def _make_soft_targets(args: argparse.Namespace) -> int:
    from asr_kd.stages.s5_soft_targets import make_soft_targets, stage5_work

    from asr_kd.kd.ensemble import inference_device
    from asr_kd.kd.sharded_targets import ShardedPosteriors, serve_posteriors
    from asr_kd.train.ddp import init_distributed

    common, kd = _setup(args, "make_soft_targets"), _kd(args)
    # Under torchrun every rank scores a share of the training cuts and works them into stored arrays; rank 0 stores.
    info = init_distributed(args.device or inference_device().type)  # the variable checked, auto resolved
    # What every rank must agree on (each builds its per-cut work from its own kd config): checked by serve_posteriors.
    settings = json.dumps({"kd": dataclasses.asdict(kd), "num_teachers": args.num_teachers, "max_duration": args.max_duration},
                          sort_keys=True, default=str)
    if info.rank > 0:
        scored = serve_posteriors(lambda: _stage5_inputs(common["layout"], args.num_teachers), kd.temperature, kd.fusion, args.max_duration, info,
                                  make_work=lambda shared: stage5_work(kd, shared, info.device), settings=settings)
        print(f"rank {info.rank}: scored {scored} training cuts for rank 0")
        return 0
    posteriors = ShardedPosteriors(info, settings)
    try:
        summary = make_soft_targets(kd=kd, num_teachers=args.num_teachers, max_duration=args.max_duration, sharded=posteriors,
                                    device=info.device, **common)
    finally:
        posteriors.release()
    print(f"{summary['frames']} frames: {summary['bytes_per_frame']} bytes/frame stored vs {summary['dense_float32_bytes_per_frame']} dense; "
          f"mean KL(stored || full) {summary['mean_kl_stored_vs_full']:.4f} nats")
    return 0


def _stage5_inputs(layout: Any, num_teachers: int | None) -> tuple[Any, Any, Any]:
    """Stage 5's teachers, training cuts and CMVN, as :func:`make_soft_targets` reads them (for the other ranks)."""
    from lhotse import CutSet

    from asr_kd.stages.common import load_teachers

    cuts = CutSet.from_cuts(layout.open_cuts(layout.ali_cuts(layout.train_part)))
    return load_teachers(layout, num_teachers), cuts, layout.open_cmvn(layout.train_part)


def _train_student(args: argparse.Namespace) -> int:
    from asr_kd.stages.s6_students import train_students

    common = _setup(args, f"train_student_{'_'.join(args.kind)}{'_uttcmvn' if args.utterance_cmvn else ''}")
    model_cfg, train_cfg = _configs(args)
    runs = train_students(kinds=args.kind, model_config=model_cfg, train_config=train_cfg, kd=_kd(args), num_teachers=args.num_teachers,
                          num_seeds=args.num_seeds, jobs=args.jobs, num_threads=max(args.num_threads, 1), launcher=launcher_from_args(args),
                          per_utterance_cmvn=args.utterance_cmvn, **common)
    for kind, summaries in runs.items():
        for r in summaries:
            print(f"{kind} student, seed {r.get('seed')} ({r['stop_reason']}); best dev frame accuracy {r['best_dev_frame_accuracy']}")
    return 0


def deploy_settings(args: argparse.Namespace) -> tuple[Any, Any]:
    """Return stage 9's plan and student settings from ``asr-kd deploy``'s arguments (no stage is
    read but stage 4's record, for the teacher count when --num-teachers is left out)."""
    from asr_kd.config import TrainConfig, load_config
    from asr_kd.models.dnn import load_dnn_config
    from asr_kd.stages.common import recorded_num_teachers
    from asr_kd.stages.layout import RecipeLayout
    from asr_kd.stages.s9_deploy import StudentSettings, deploy_plan, deployable_kinds

    hybrid = args.model_type != "ctc"
    kd = _kd(args)
    compressed = args.compressed_config not in (None, "none")
    requested = [] if args.uttcmvn == ["none"] else list(args.uttcmvn)
    kinds = deployable_kinds(requested, kd.mode, compressed)  # checked on every path, used on the hybrid one
    if not hybrid:
        kinds = ()
    num_teachers = args.num_teachers
    if hybrid and num_teachers is None:
        num_teachers = recorded_num_teachers(RecipeLayout(args.data_dir, args.exp_dir))
    plan = deploy_plan(args.model_type, num_teachers if hybrid else 1, compressed, kinds)
    students = None
    if kinds:
        model_cfg, train_cfg = _configs(args)
        students = StudentSettings(model_cfg, train_cfg, kd, load_dnn_config(args.compressed_config) if compressed else None,
                                   load_config(TrainConfig, args.compressed_train_config) if args.compressed_train_config else None)
    return plan, students


def _deploy(args: argparse.Namespace) -> int:
    from asr_kd.config import CtcConfig, load_config
    from asr_kd.stages.s9_deploy import SECTION_NAME, gates_passed, run_deploy

    common = _setup(args, "deploy", after_teachers=args.model_type != "ctc")
    if args.model_type != "hybrid":
        units = load_config(CtcConfig, args.ctc_config).units
        common["layout"] = dataclasses.replace(common["layout"], ctc_units=units)
    plan, students = deploy_settings(args)
    report = run_deploy(plan=plan, students=students, num_teachers=args.num_teachers, max_relative=args.int8_max_relative,
                        jobs=args.jobs, num_threads=max(args.num_threads, 1), launcher=launcher_from_args(args), **common)
    print((common["layout"].deploy / SECTION_NAME).read_text())  # run.sh shows it through the log
    return 0 if gates_passed(report) else 1


def _decode_hybrid(args: argparse.Namespace) -> int:
    from asr_kd.config import DecodeConfig, load_config, parse_overrides
    from asr_kd.stages.s7_decode import evaluate_systems

    common = _setup(args, "decode_hybrid")
    decode_cfg = load_config(DecodeConfig, args.decode_config, {"num_jobs": args.num_jobs, **parse_overrides(args.decode_overrides)})
    scores = evaluate_systems(decode_config=decode_cfg, fusion=_kd(args).fusion, num_teachers=args.num_teachers,
                              decode_parts=args.decode_parts, score_teachers=not args.no_teachers, corpus=args.corpus,
                              decode_teachers=args.decode_teachers, num_seeds=args.num_seeds, compressed=args.compressed,
                              **({} if args.max_posterior_mb is None else {"max_posterior_mb": args.max_posterior_mb}), **common)
    for name, by_part in scores.items():
        print(name + ": " + ", ".join(f"{p} frame accuracy {s.frame_accuracy:.4f}" + (f" WER {s.wer:.4f}" if s.wer is not None else "")
                                      for p, s in by_part.items()))
    return 0


def _three_percent(args: argparse.Namespace) -> int:
    from asr_kd.stages.s8_three_percent import run_three_percent

    common = _setup(args, "three_percent")
    model_cfg, train_cfg = _configs(args)
    runs = run_three_percent(model_config=model_cfg, train_config=train_cfg, kd=_kd(args), fraction=args.fraction, num_teachers=args.num_teachers,
                             subset_seed=args.subset_seed, corpus=args.corpus, num_seeds=args.num_seeds, jobs=args.jobs,
                             num_threads=max(args.num_threads, 1), launcher=launcher_from_args(args), **common)
    for run in runs.values():
        print(f"{run.name}: train frame accuracy {run.train_frame_accuracy:.4f}, test {run.test_frame_accuracy:.4f}")
    return 0


def _temperature_sweep(args: argparse.Namespace) -> int:
    from asr_kd.config import DecodeConfig, load_config, parse_overrides
    from asr_kd.stages.s10_temperature_sweep import temperature_sweep

    common = _setup(args, "temperature_sweep")
    model_cfg, train_cfg = _configs(args)
    decode_cfg = load_config(DecodeConfig, args.decode_config, {"num_jobs": 1, **parse_overrides(args.decode_overrides)})
    result = temperature_sweep(temperatures=args.temperatures, model_config=model_cfg, train_config=train_cfg, kd=_kd(args),
                               decode_config=decode_cfg, num_teachers=args.num_teachers, jobs=args.jobs, num_seeds=args.num_seeds,
                               extra_scales=args.extra_scales,
                               num_threads=max(args.num_threads, 1), launcher=launcher_from_args(args), **common)
    for t, row in result["rows"].items():
        print(f"T={t}: test frame accuracy {row['test_frame_accuracy']:.4f}, test WER {row['test_wer']:.4f}")
    return 0


def _align_part(args: argparse.Namespace) -> int:
    from asr_kd.stages.decode_part import align_part

    common = _setup(args, f"align_{args.part}")
    summary = align_part(common["layout"], args.corpus_dir, args.part, args.num_jobs, common["command"])
    print(f"{args.part}: {summary['aligned']} of {summary['cuts']} cuts aligned ({summary['frames']} frames) -> "
          f"{args.exp_dir / 'align_parts' / args.part / f'cuts_{args.part}.jsonl.gz'}")
    return 0


def _decode_part(args: argparse.Namespace) -> int:
    from asr_kd.config import DecodeConfig, load_config, parse_overrides
    from asr_kd.stages.decode_part import decode_part

    common = _setup(args, f"decode_part_{args.part}")
    common["layout"] = dataclasses.replace(common["layout"], ctc_units=args.ctc_units)
    decode_cfg = load_config(DecodeConfig, args.decode_config, {"num_jobs": args.num_jobs, **parse_overrides(args.decode_overrides)})
    rescore = None
    if args.rescore_arpa is not None:
        rescore = RescoreConfig(str(args.rescore_arpa), args.rescore_method, args.rescore_nbest)
    scores = decode_part(common["layout"], args.corpus_dir, args.part, args.systems, decode_cfg, args.num_jobs, common["command"], args.align,
                         tune_scale=not args.fixed_scale, rescore=rescore)
    for name, s in scores.items():
        worst = max(s["per_speaker"].items(), key=lambda kv: kv[1]["wer"])
        print(f"{name}: {args.part} WER {100 * s['wer']:.2f}% ({s['substitutions']}/{s['deletions']}/{s['insertions']} of {s['ref_words']}), "
              f"{s['utterances']} utterances; worst speaker {worst[0]} {100 * worst[1]['wer']:.1f}%"
              + (f"; frame accuracy {100 * s['frame_accuracy']:.1f}% on {s['aligned_utterances']} aligned" if "frame_accuracy" in s else "")
              + (f"; first pass {100 * s['first_pass']['wer']:.2f}%, rescored minus first pass "
                 f"{100 * s['rescored_minus_first_pass']['value']:+.2f} [{100 * s['rescored_minus_first_pass']['low']:+.2f}, "
                 f"{100 * s['rescored_minus_first_pass']['high']:+.2f}]" if "first_pass" in s else ""))
    return 0
