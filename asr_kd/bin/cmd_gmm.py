"""GMM-HMM command: recipe stage 3 (training, senone alignments, HCLG, GMM decoding, WER)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from asr_kd.bin.common import add_part_args
from asr_kd.config import GMM_ALIGN_CHUNK, DecodeConfig, GmmConfig, load_config, parse_overrides


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train-gmm`` command to ``sub``."""
    p = sub.add_parser(
        "train-gmm",
        help="stage 3: train GMM-HMMs, align every cut to senones, build HCLG, decode and score",
        description=(
            "Train a monophone GMM-HMM from a flat start and tied triphones on our own decision tree "
            "(MFCC + per-speaker CMN + deltas), align every part with the triphone system and attach the "
            "senone alignments to the fbank cuts (EXP/gmm/ali), count the senone priors, build HCLG for "
            "both systems and decode the non-training parts (WER). Stage code: asr_kd/stages/s3_gmm.py. Skipped when "
            "EXP/gmm/provenance.json matches the settings and stages 1-2; an interrupted run resumes after its last sub-step."
        ),
    )
    p.add_argument("--data-dir", type=Path, required=True, help="data directory of stages 1-2 (mfcc/, fbank/)")
    p.add_argument("--lang-dir", type=Path, required=True, help="lang directory of stage 2 (e.g. data/lang)")
    p.add_argument("--exp-dir", type=Path, required=True, help="experiment directory; outputs go to EXP/gmm")
    add_part_args(p)  # --test-set and --ood-set: only the RESULTS.md table's relative WER column uses them
    p.add_argument("--parts", nargs="+", required=True, help="parts to align (and, except the training part, decode)")
    p.add_argument("--decode-config", type=Path, default=None, help="YAML of DecodeConfig fields (beam, max_active, acoustic_scales: "
                   "the grid each system's acoustic scale is tuned from on --dev-set); default: gmm.acoustic_scale, not tuned")
    p.add_argument("--decode-set", dest="decode_overrides", action="append", default=[], metavar="KEY=VALUE", help="override a DecodeConfig field")
    p.add_argument("--config", type=Path, default=None, help="YAML file with GmmConfig fields (e.g. conf/gmm.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a GmmConfig field")
    p.add_argument("--num-jobs", type=int, default=2, help="processes for training passes (alignment, statistics), final alignment and decoding (default 2)")
    p.add_argument("--align-chunk", type=int, default=GMM_ALIGN_CHUNK, metavar="CUTS",
                   help="align and decode each part this many cuts at a time, so that memory holds one chunk's features "
                        f"(default {GMM_ALIGN_CHUNK}; the results do not depend on it)")
    p.add_argument("--results-md", type=Path, default=None, help="RESULTS.md whose GMM section to write")
    p.add_argument("--recipe-command", default=None, help="the command to quote in RESULTS.md (default: this asr-kd command line)")
    p.set_defaults(func=run_train_gmm)


def run_train_gmm(args: argparse.Namespace) -> int:
    """Run stage 3 and print its summary."""
    from asr_kd.stages.s3_gmm import run_gmm_stage  # heavy imports only when used

    config = load_config(GmmConfig, args.config, parse_overrides(args.overrides))
    # Without a decode config the GMMs decode at the scale they were aligned with (gmm.acoustic_scale).
    default_scale = {} if args.decode_config else {"acoustic_scale": config.acoustic_scale}
    decode_config = load_config(DecodeConfig, args.decode_config, {**default_scale, "num_jobs": args.num_jobs, **parse_overrides(args.decode_overrides)})
    command = args.recipe_command or "asr-kd " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = run_gmm_stage(args.data_dir, args.lang_dir, args.exp_dir, config, args.train_set, args.parts, args.num_jobs, args.results_md,
                            decode_config, command=command, dev_part=args.dev_set, align_chunk=args.align_chunk,
                            test_part=args.test_set, ood_part=args.ood_set)
    print(summary.format())
    return 0
