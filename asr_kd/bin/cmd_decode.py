"""Decoding commands: build HCLG / HLG graphs, train a larger LM for lattice rescoring, and score transcripts (WER)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``make-hclg``, ``make-hlg``, ``train-lm``, ``arpa-to-const`` and ``compute-wer`` to ``sub``."""
    from asr_kd.config import GraphScales

    p = sub.add_parser(
        "make-hclg",
        help="build the hybrid decoding graph HCLG.fst for a lang directory and a GMM system",
        description=(
            "Compose L_disambig and G, determinize and minimize, add phonetic context (the model's tree), "
            "the HMM transducer and self-loops (Kaldi's mkgraph.sh steps). Writes HCLG.fst, words.txt and hclg.json."
        ),
    )
    p.add_argument("--lang-dir", type=Path, required=True, help="lang directory (words.txt, L_disambig.fst, G.fst, ...)")
    p.add_argument("--model", type=Path, required=True, help="GMM system written by GMM training (exp/gmm/tri/final.mdl: tree + transition model)")
    p.add_argument("--graph-dir", type=Path, required=True, help="output directory (e.g. exp/tri/graph)")
    p.add_argument("--transition-scale", type=float, default=GraphScales.transition,
                   help=f"scale on transition probabilities (default {GraphScales.transition})")
    p.add_argument("--self-loop-scale", type=float, default=GraphScales.self_loop,
                   help=f"scale on self-loop probabilities (default {GraphScales.self_loop})")
    p.set_defaults(func=run_make_hclg)

    p = sub.add_parser(
        "make-hlg",
        help="build the CTC decoding graph HLG.fst over the lang directory's phones",
        description="CTC topology H over <blk> + phones, the lexicon L with disambiguation symbols, and G. Writes HLG.fst, tokens.txt, words.txt and hlg.json.",
    )
    p.add_argument("--lang-dir", type=Path, required=True, help="lang directory")
    p.add_argument("--graph-dir", type=Path, required=True, help="output directory (e.g. exp/ctc/graph)")
    p.add_argument("--silence-prob", type=float, default=0.0, help="optional SIL between words (> 0 only if the CTC targets contain SIL)")
    p.set_defaults(func=run_make_hlg)

    p = sub.add_parser(
        "train-lm",
        help="train a larger n-gram LM (e.g. a 4-gram) over a lang directory's vocabulary, for lattice rescoring",
        description=(
            "Kneser-Ney on the text the lang's own LM was trained on (<lang>/lm/train.txt: the training transcripts) plus, "
            "with --text, a text file (one sentence a line; words outside words.txt become the OOV word). Writes an ARPA file "
            "to pass to `asr-kd decode-part --rescore-arpa`."
        ),
    )
    p.add_argument("--lang-dir", type=Path, required=True, help="lang directory (stage 2: data/lang)")
    p.add_argument("--order", type=int, default=4, help="n-gram order (default 4)")
    p.add_argument("--out", type=Path, required=True, help="ARPA file to write")
    p.add_argument("--text", type=Path, default=None, help="extra training text (plain or .gz), one sentence a line")
    p.set_defaults(func=run_train_lm)

    p = sub.add_parser(
        "arpa-to-const",
        help="store an ARPA LM over a lang's words as memory-mapped arrays, for rescoring with LMs too large to read (tglarge)",
        description=(
            "Kaldi's const-ARPA idea (asr_kd/lang/const_lm.py): n-grams with a word outside words.txt are dropped and counted; "
            "the folder is what `asr-kd decode-part --rescore-method const --rescore-arpa` reads, with the same scores as the ARPA."
        ),
    )
    p.add_argument("arpa", type=Path, help="ARPA LM (plain or .gz), e.g. LibriSpeech's 3-gram.arpa.gz (tglarge)")
    p.add_argument("--lang-dir", type=Path, required=True, help="lang directory whose words.txt gives the word ids (stage 2: data/lang)")
    p.add_argument("--out", type=Path, required=True, help="folder to write (the arrays and const_lm.json)")
    p.set_defaults(func=run_arpa_to_const)

    p = sub.add_parser(
        "compute-wer",
        help="score a hypothesis text file against a reference (WER, per-utterance details)",
        description="Both files hold 'UTT_ID word word ...' lines. Missing hypotheses count as deletions. Prints the %WER line. "
                    "Warns when the two sides differ in letter case or the reference has punctuation the hypothesis lacks (nothing is normalised).",
    )
    p.add_argument("--ref", type=Path, required=True, help="reference text file")
    p.add_argument("--hyp", type=Path, required=True, help="hypothesis text file")
    p.add_argument("--report", type=Path, default=None, help="write wer_details here (and the same as .json beside it)")
    p.set_defaults(func=run_compute_wer)


def run_make_hclg(args: argparse.Namespace) -> int:
    """Build HCLG and print its size."""
    from asr_kd.config import GraphScales
    from asr_kd.decode.hclg import make_hclg
    from asr_kd.gmm.train import GmmSystem
    from asr_kd.lang.lang_dir import Lang
    from asr_kd.utils import setup_logging

    setup_logging()
    system = GmmSystem.load(args.model)  # its tree and transition model
    info = make_hclg(Lang.load(args.lang_dir), system.ctx_dep, system.tm, args.graph_dir,
                     GraphScales(transition=args.transition_scale, self_loop=args.self_loop_scale))
    print(f"{args.graph_dir}/HCLG.fst: {info.num_states} states, {info.num_arcs} arcs ({info.seconds:.1f} s)")
    return 0


def run_make_hlg(args: argparse.Namespace) -> int:
    """Build the phone HLG and print its size."""
    from asr_kd.decode.hlg import make_phone_hlg
    from asr_kd.lang.lang_dir import Lang
    from asr_kd.utils import setup_logging

    setup_logging()
    info = make_phone_hlg(Lang.load(args.lang_dir), args.graph_dir, args.silence_prob)
    print(f"{args.graph_dir}/HLG.fst: {info.num_states} states, {info.num_arcs} arcs ({info.seconds:.1f} s)")
    return 0


def run_train_lm(args: argparse.Namespace) -> int:
    """Train the LM and say what was written."""
    from asr_kd.lang.lm import train_lang_lm
    from asr_kd.utils import setup_logging

    setup_logging()
    used = train_lang_lm(args.lang_dir, args.order, args.out, args.text)
    print(f"{args.out}: {args.order}-gram LM on {used} sentences")
    return 0


def run_arpa_to_const(args: argparse.Namespace) -> int:
    """Build the const LM and say what it holds."""
    from asr_kd.lang.const_lm import build_const_lm
    from asr_kd.utils import setup_logging

    setup_logging()
    info = build_const_lm(args.arpa, Path(args.lang_dir) / "words.txt", args.out)
    print(f"{args.out}: {info.order}-gram const LM, n-grams per order {info.kept} (dropped, words outside words.txt: {info.dropped})")
    return 0


def run_compute_wer(args: argparse.Namespace) -> int:
    """Score the files and print Kaldi's %WER line."""
    from asr_kd.metrics.wer import score_transcript_files

    print(score_transcript_files(args.ref, args.hyp, args.report).summary())
    return 0
