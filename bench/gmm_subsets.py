"""Stage 3 with and without GMM training subsets: peak memory, time and the triphones' WER.

Each variant (GmmConfig overrides, e.g. ``mono500:mono_subset=500``) runs stage 3's training and
alignment (asr_kd/stages/s3_gmm.py, one process, ``--num-jobs 1``) on a finished recipe's data,
in a fresh process so that its peak resident memory is its own; then the triphone system decodes
the dev and test parts at one fixed acoustic scale (no sweep, to keep the bench short; the scale
is a flag). The data folder is only read; everything is written under ``--out``.

    python bench/gmm_subsets.py --data /work/scale/mini/data --out /tmp/gmm_subsets \\
        --variant all: --variant mono500:mono_subset=500 --variant mono500_tri600:mono_subset=500,tri_subset=600,align_chunk=100

writes bench/RESULTS.md, section "GMM training subsets".
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HEADING = "## GMM training subsets (stage 3)"
BYTES_PER_FEATURE_FRAME = 39 * 4  # MFCC + deltas + delta-deltas, float32


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(args: argparse.Namespace, name: str, overrides: dict[str, str]) -> dict:
    """Run one variant in this process; return its measurements."""
    import numpy as np

    from asr_kd.config import DecodeConfig, GmmConfig, load_config
    from asr_kd.decode.hclg import make_hclg
    from asr_kd.gmm.train import GraphInputs
    from asr_kd.lang.lang_dir import Lang
    from asr_kd.stages.layout import RecipeLayout
    from asr_kd.stages.s3_gmm import PartSource, _align_part, _decode_part, _train_systems

    overrides = dict(overrides)
    align_chunk = int(overrides.pop("align_chunk", args.align_chunk))  # a stage option, not a GmmConfig field
    config = load_config(GmmConfig, args.config, overrides)
    decode_config = load_config(DecodeConfig, args.decode_config, {"num_jobs": 1, "acoustic_scales": [], "acoustic_scale": args.acoustic_scale})
    layout = RecipeLayout(args.data, args.out / name, args.train_part)
    layout.gmm.mkdir(parents=True, exist_ok=True)
    lang = Lang.load(args.data / "lang")
    inputs = GraphInputs.from_lang(lang)
    parts = [args.train_part, args.dev_part, args.test_part]
    timings: dict[str, float] = {}
    history: dict[str, list[float]] = {}
    subsets: dict[str, dict] = {}
    rss_before = round(_peak_rss_mb(), 1)  # interpreter, libraries, lang: before any feature is read
    start, cpu = time.perf_counter(), time.process_time()
    sources = {p: PartSource(args.data, p) for p in parts}
    tri = _train_systems(layout, inputs, lang, sources[args.train_part], config, timings, history, subsets, num_jobs=1)
    counts = np.zeros(tri.num_pdfs)
    aligned = {p: _align_part(layout, tri, inputs, lang, sources[p], config, 1, align_chunk, counts if p == args.train_part else None)
               for p in parts}
    train_align = {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(time.process_time() - cpu, 1), "peak_rss_mb": round(_peak_rss_mb(), 1),
                   "rss_before_mb": rss_before}
    make_hclg(lang, tri.ctx_dep, tri.tm, layout.gmm_graph("tri"), decode_config.graph_scales)
    wers = {}
    for p in (args.dev_part, args.test_part):
        entry, _ = _decode_part(layout, "tri", lang, sources[p], config, decode_config, (args.acoustic_scale,), align_chunk)
        wers[p] = {k: entry[k] for k in ("wer", "substitutions", "deletions", "insertions", "ref_words")}
    # The frames of each system's training utterances, whose features EM holds (without subsets,
    # every usable utterance of the training part).
    train = sources[args.train_part]
    every = int(train.num_frames.sum())
    em_frames = {s: info["frames"] for s, info in subsets.items()} or {"mono": every, "tri": every}
    return {"name": name, "overrides": overrides, "align_chunk": align_chunk, "train_align": train_align, "timings": timings, "em_frames": em_frames,
            "subsets": subsets, "aligned": aligned, "tri_wer": wers, "num_senones": tri.num_pdfs, "peak_rss_mb_total": round(_peak_rss_mb(), 1)}


def _ci(errors: int, words: int) -> str:
    """A binomial 95% interval of a WER in points (a rough one: word errors are not independent)."""
    p = errors / words
    half = 1.96 * (p * (1 - p) / words) ** 0.5
    return f"{100 * p:.2f}% (+-{100 * half:.1f})"


def _difference(args: argparse.Namespace, first: str, name: str, part: str) -> str:
    """Return WER(name) - WER(first) on ``part`` in points with its 95% paired bootstrap interval."""
    from asr_kd.metrics.paired import wer_difference
    from asr_kd.metrics.wer import score_transcript_files

    def scored(variant: str):
        out = args.out / variant / "gmm" / f"decode_tri_{part}"
        return score_transcript_files(out / "ref.txt", out / "hyp.txt")

    diff = wer_difference(scored(first), scored(name))
    return f"{100 * diff.value:+.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}]"


def section(results: list[dict], args: argparse.Namespace, command: str) -> str:
    """Return the bench/RESULTS.md section of ``results``."""
    head = ["variant", "settings", "align chunk", "mono training frames", "tri training frames", "EM features (MB)", "train+align wall s", "CPU s", "peak RSS MB (before)",
            f"tri WER {args.dev_part}", f"tri WER {args.test_part}", f"difference {args.dev_part}", f"difference {args.test_part}"]
    rows = []
    for r in results:
        mb = max(r["em_frames"].values()) * BYTES_PER_FEATURE_FRAME / 2**20
        w = r["tri_wer"]
        settings = ", ".join(f"{k}={v}" for k, v in r["overrides"].items() if k != "align_chunk") or "(no subsets)"
        rows.append([r["name"], settings, str(r["align_chunk"]),
                     str(r["em_frames"]["mono"]), str(r["em_frames"]["tri"]), f"{mb:.0f}", f"{r['train_align']['wall_s']:.0f}",
                     f"{r['train_align']['cpu_s']:.0f}",
                     f"{r['train_align']['peak_rss_mb']:.0f} ({r['train_align']['rss_before_mb']:.0f})",
                     *(_ci(int(w[p]["substitutions"] + w[p]["deletions"] + w[p]["insertions"]), int(w[p]["ref_words"])) for p in (args.dev_part, args.test_part)),
                     *(_difference(args, results[0]["name"], r["name"], p) if r is not results[0] else "-" for p in (args.dev_part, args.test_part))])
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([
        HEADING, "",
        f"Produced by `{command}` (one process, `nice`, one torch thread, on a 2-core machine shared with other work: times are rough).",
        f"Stage 3's training and alignment of {args.train_part}, {args.dev_part} and {args.test_part} (align chunk: cuts aligned and decoded at a time), then the "
        f"triphones decode {args.dev_part} and {args.test_part} at acoustic scale {args.acoustic_scale:g} (fixed, not tuned per variant). "
        "EM features: the largest training set's MFCC + deltas that EM holds in memory (39 float32 a frame); peak RSS: the process's "
        "peak resident memory after training and alignment, and in brackets before any feature was read (the interpreter, the libraries, "
        "the lang), which on this small corpus is most of it. "
        "WER intervals: binomial 95%, a rough guide (word errors are not independent); differences: WER minus the first row's, "
        "in points, with the 95% paired bootstrap interval over utterances (an interval that includes 0 is within noise).",
        "", *table, ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="data folder of a finished recipe (stages 1-2); only read")
    parser.add_argument("--out", type=Path, required=True, help="folder for the variants' experiment folders and results.json")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...", help="GmmConfig overrides of one variant (and align_chunk, the stage's option)")
    parser.add_argument("--config", type=Path, default=REPO / "recipes/librispeech/conf/gmm.yaml")
    parser.add_argument("--decode-config", type=Path, default=REPO / "recipes/librispeech/conf/decode.yaml")
    parser.add_argument("--acoustic-scale", type=float, default=0.0714, help="the triphones' decoding scale (mini's tuned choice)")
    parser.add_argument("--align-chunk", type=int, default=5000)
    parser.add_argument("--train-part", default="train-clean-100")
    parser.add_argument("--dev-part", default="dev-clean")
    parser.add_argument("--test-part", default="test-clean")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run this variant here, print JSON
    args = parser.parse_args()
    variants = {}
    for spec in args.variant or ["all:"]:
        name, _, sets = spec.partition(":")
        variants[name] = dict(kv.split("=", 1) for kv in sets.split(",") if kv)
    if args.one is not None:
        print("RESULT " + json.dumps(run_variant(args, args.one, variants[args.one])))
        return 0
    command = "python bench/gmm_subsets.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in variants:
        # A fresh process per variant: ru_maxrss is a process's peak, never lowered.
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", name], capture_output=True, text=True)
        (args.out / f"{name}.log").write_text(out.stdout + out.stderr)
        if out.returncode != 0:
            print(f"variant {name} failed; see {args.out / (name + '.log')}", file=sys.stderr)
            return 1
        results.append(json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:]))
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps({k: results[-1][k] for k in ("name", "train_align", "em_frames", "tri_wer")}))
    from bench._results import write_section

    write_section(args.results, HEADING, section(results, args, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
