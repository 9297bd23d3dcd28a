"""Lang commands: lexicon, phones, L.fst, n-gram LM and G.fst (recipe stage 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from asr_kd.bin.common import command_line
from asr_kd.config import DEFAULT_DEV_PART, DEFAULT_TRAIN_PART, LangConfig, load_config, parse_overrides


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``prepare-lang`` command to ``sub``."""
    p = sub.add_parser(
        "prepare-lang",
        help="build the lang directory (lexicon, phones, L.fst, n-gram LM, G.fst)",
        description=(
            "Read lhotse supervision manifests (librispeech_supervisions_<split>.jsonl.gz), build a "
            "lexicon for the corpus vocabulary (a LibriSpeech-format lexicon file extending CMUdict, or CMUdict; "
            "transcript words in neither get espeak-ng G2P pronunciations, written to lexicon_g2p.txt; every "
            "split's words without a lexicon entry are listed in oov_<split>.txt), the phone and word tables, "
            "L.fst/L_disambig.fst, a Kneser-Ney n-gram LM on the training split and G.fst. Stops with one line "
            "when a split's OOV rate exceeds lang.max_oov_rate."
        ),
    )
    p.add_argument("--manifest-dir", type=Path, required=True, help="directory with the supervision manifests")
    p.add_argument("--output-dir", type=Path, required=True, help="lang directory to write (e.g. data/lang)")
    p.add_argument("--lexicon", type=Path, default=None, help="LibriSpeech-format lexicon file; its entries win over CMUdict, which fills the words it lacks "
                   "(--set lexicon_mode=replace: the file alone). Default: CMUdict")
    p.add_argument("--lm-text", type=Path, default=None,
                   help="extra LM training text, one sentence per line (.gz allowed), added to the training transcripts")
    p.add_argument("--lm-arpa", type=Path, default=None,
                   help="use this ARPA LM (.gz allowed, e.g. LibriSpeech's 3-gram.pruned.1e-7.arpa.gz) instead of training one; "
                   "it is restricted to the words with a pronunciation")
    p.add_argument("--train-split", default=DEFAULT_TRAIN_PART, help=f"split whose transcripts train the LM (default {DEFAULT_TRAIN_PART})")
    p.add_argument("--dev-split", default=DEFAULT_DEV_PART, help=f"split for the LM perplexity (default {DEFAULT_DEV_PART})")
    p.add_argument("--splits", nargs="+", default=None, help="splits for the vocabulary (default: every manifest found)")
    p.add_argument("--config", type=Path, default=None, help="YAML file with LangConfig fields")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--results-md", type=Path, default=None,
                   help="RESULTS.md whose language-model section (sentences, OOV rate, perplexity per evaluation part) this (re)writes")
    p.add_argument("--results-command", default=None, help="command quoted in RESULTS.md (default: this asr-kd command line)")
    p.set_defaults(func=run_prepare_lang)


def run_prepare_lang(args: argparse.Namespace) -> int:
    """Build the lang directory and print its summary."""
    from asr_kd.stages.s2_lang import prepare  # heavy imports only when used
    from asr_kd.utils import setup_logging

    setup_logging()
    config = load_config(LangConfig, args.config, parse_overrides(args.overrides))
    summary = prepare(args.manifest_dir, args.output_dir, config, args.lexicon, args.train_split, args.dev_split, args.splits, args.lm_arpa,
                      args.lm_text, command=command_line(), results_md=args.results_md, results_command=args.results_command)
    print(summary.format() if hasattr(summary, "format") else f"{args.output_dir}: up to date ({summary.finished})")
    return 0
