"""Synthetic-corpus command: ``asr-kd synth-corpus`` (stage 0 of the main recipe, offline)."""

from __future__ import annotations

import argparse
from pathlib import Path

from asr_kd.bin.common import command_line
from asr_kd.config import SYNTH_ENGINES, SYNTH_PRESETS, SynthConfig, load_config


def register(sub: argparse._SubParsersAction) -> None:
    """Add the synth-corpus command to ``sub``."""
    p = sub.add_parser(
        "synth-corpus",
        help="stage 0 offline: write a synthetic corpus (several synthesisers, speaker perturbation, noise, reverberation) "
        "in LibriSpeech's layout",
        description="Write <output-dir>/{train-clean-100,dev-clean,test-clean,test-ood}/<speaker>/<chapter>/ with 16 kHz FLAC "
        "and .trans.txt files, SPEAKERS.TXT and SYNTHETIC.json (what was generated, by which engines, and which wanted "
        "engines are missing). test-ood is spoken by a synthesiser family that no other part uses. "
        "Options given here override the --config file (YAML of SynthConfig fields: festival_share, vtlp_max, "
        "speed_factors, telephone_prob, ...); a finished corpus with the same settings is reused.",
    )
    p.add_argument("--output-dir", type=Path, required=True, help="corpus folder to write")
    p.add_argument("--preset", choices=SYNTH_PRESETS, default=None, help="corpus size (default: mini)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--difficulty", type=float, default=None, help="0 = clean ... 3 = very noisy (default 1.0)")
    p.add_argument("--num-jobs", type=int, default=None, help="worker processes (default 2)")
    p.add_argument("--engines", default=None,
                   help="comma-separated synthesiser families for train/dev/test, including espeak (default espeak,festival)")
    p.add_argument("--ood-engine", choices=SYNTH_ENGINES, default=None,
                   help="synthesiser family of test-ood, not one of --engines (default kokoro)")
    p.add_argument("--config", type=Path, default=None, help="YAML file of SynthConfig fields")
    p.set_defaults(func=_synth_corpus)


def synth_settings(args: argparse.Namespace) -> SynthConfig:
    """The SynthConfig of a parsed ``synth-corpus`` call: the --config file, then the options given."""
    given = {"preset": args.preset, "seed": args.seed, "difficulty": args.difficulty, "num_jobs": args.num_jobs,
             "engines": args.engines, "ood_engine": args.ood_engine}
    return load_config(SynthConfig, args.config, {k: v for k, v in given.items() if v is not None})


def _synth_corpus(args: argparse.Namespace) -> int:
    from asr_kd.stages.s0_corpus import synthesize

    cfg = synth_settings(args)
    summary = synthesize(args.output_dir, cfg, command=command_line())
    print(summary.format() if hasattr(summary, "format") else f"{args.output_dir}: up to date ({summary.finished})")
    return 0
