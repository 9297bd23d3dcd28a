"""Stage 3's memory per cut and per frame as a part grows: cut manifests and alignments.

A synthetic part of N cuts is made from a finished recipe's training part (its real MFCC and
fbank cuts, replicated under new ids: real lhotse manifests pointing at real features, and the
part's CMVN statistics). Each measurement runs in a fresh child process and reports how much its
resident memory grew (``VmRSS`` after minus before, so the interpreter and libraries do not
count) and its peak (``ru_maxrss``), for:

- ``cuts, eager``: what stage 3 held per part before this bench: both manifests read with
  ``load_manifest``, a dict of the usable MFCC Cuts and their transcripts;
- ``cuts, lazy``: :class:`asr_kd.stages.s3_gmm.PartSource` as it is now (manifests read with
  ``load_manifest_lazy``; ids, transcripts, frame counts and speakers kept);
- ``chunks``: one pass of ``PartSource.chunks`` (features loaded and let go chunk by chunk);
- ``store_cutset`` / ``store_stream``: the part's alignments stored a chunk at a time and its cut
  manifest written, from one CutSet of every stored cut (before) or cut by cut (now);
- ``alignments, lists`` / ``alignments, int32``: the part's transition-id alignments held as
  Python lists (the aligner's output before) or as int32 arrays (now), from the recipe's real
  alignments (``ali/tids_<part>.txt``) replicated to N cuts.

    python bench/gmm_memory.py --data DATA --exp EXP --sizes 1000 4000 16000 64000

writes bench/RESULTS.md, section "Stage 3 memory per cut and per frame".
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._results import write_section  # noqa: E402

HEADING = "## Stage 3 memory per cut and per frame (bench/gmm_memory.py)"
KINDS = ("cuts_eager", "cuts_lazy", "chunks", "store_cutset", "store_stream", "ali_lists", "ali_lists_large", "ali_int32")
TRACED = ("cuts_eager", "cuts_lazy", "store_cutset", "store_stream", "ali_lists", "ali_lists_large", "ali_int32")  # measured again under tracemalloc
# Added to every transition-id for "ali_lists_large": a model of LibriSpeech's size (Kaldi's tri4b,
# 4,200 senones) has thousands of transition-ids, and Python shares one int object per value only
# up to 256, so each frame of a list then holds a pointer and an int object of its own.
LARGE_MODEL_TIDS = 10_000


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_part(data: Path, part: str, n: int, out: Path) -> str:
    """Write a part of ``n`` cuts (``part``'s cuts replicated under new ids) into ``out``'s
    mfcc/ and fbank/ folders with ``part``'s CMVN statistics; return its name."""
    from lhotse import CutSet, load_manifest

    from asr_kd.data.features import cmvn_path, cuts_path

    name = f"synth{n}"
    for kind in ("mfcc", "fbank"):
        cuts = list(load_manifest(cuts_path(data / kind, part)))
        copies = (cuts[i % len(cuts)] for i in range(n))
        replicated = CutSet.from_cuts(c.with_id(f"{c.id}-r{i // len(cuts)}") for i, c in zip(range(n), copies))
        (out / kind).mkdir(parents=True, exist_ok=True)
        replicated.to_file(cuts_path(out / kind, name))
        src = cmvn_path(data / kind, part)
        if src.exists():
            shutil.copy(src, cmvn_path(out / kind, name))
    return name


def measure(kind: str, data: Path, part: str, tids_path: Path, n: int, lang_dir: Path, chunk: int, trace: bool) -> dict:
    """Run one measurement in this process; return its numbers (with ``trace``, also the bytes
    that tracemalloc counts as held: exact where resident memory is coarse)."""
    import tracemalloc

    import numpy as np

    from asr_kd.stages.s3_gmm import PartSource, iter_tids

    frames = 0
    base = [a for _, a in iter_tids(tids_path)] if kind.startswith("ali") else []
    if trace:
        tracemalloc.start()
    before = _rss_mb()
    if kind.startswith("ali"):
        held = {}
        shift = LARGE_MODEL_TIDS if kind == "ali_lists_large" else 0
        for i in range(n):
            a = base[i % len(base)] + shift  # a new array, as the aligner makes one per cut
            held[f"utt{i}"] = a.tolist() if kind.startswith("ali_lists") else a  # .tolist(): what the aligner returned before
            frames += len(a)
    elif kind == "cuts_eager":
        from lhotse import load_manifest

        from asr_kd.data.features import cuts_path

        mfcc = load_manifest(cuts_path(data / "mfcc", part))
        fbank = load_manifest(cuts_path(data / "fbank", part))
        fbank_frames = {c.id: c.num_frames for c in fbank}
        by_id, refs = {}, {}
        for c in mfcc:
            if fbank_frames.get(c.id) == c.num_frames:
                by_id[c.id] = c
                refs[c.id] = " ".join(s.text for s in c.supervisions if s.text)
        held = (mfcc, fbank, by_id, refs)
    elif kind.startswith("store"):
        # The part's alignments attached to its fbank cuts, a chunk at a time: returned as one CutSet
        # and then written (before), or written to the manifest cut by cut (now).
        import itertools

        from lhotse import load_manifest_lazy

        from asr_kd.data.alignments import store_alignment_chunks, write_alignment_chunks
        from asr_kd.data.features import cuts_path

        def chunks():
            fbank = iter(load_manifest_lazy(cuts_path(data / "fbank", part)))
            while cuts := list(itertools.islice(fbank, chunk)):
                yield cuts, {c.id: np.zeros(c.num_frames, np.int32) for c in cuts}

        out = data / "stored"
        if kind == "store_cutset":
            held = store_alignment_chunks(chunks(), out / "storage")
            held.to_file(out / "cuts.jsonl.gz")
        else:
            held = write_alignment_chunks(chunks(), out / "storage", out / "cuts.jsonl.gz")
    else:
        held = PartSource(data, part)
        if kind == "chunks":
            from asr_kd.config import GmmConfig
            from asr_kd.lang.lang_dir import Lang

            lang = Lang.load(lang_dir)
            for piece in held.chunks(lang, GmmConfig(), chunk):
                frames += sum(u.feats.shape[0] for u in piece.utterances)
    grown = _rss_mb() - before
    traced, traced_peak = tracemalloc.get_traced_memory() if trace else (None, None)
    text_chars = float(np.mean([len(t) for t in held.refs.values()])) if kind == "cuts_lazy" else None
    del held
    return {"kind": kind, "n": n, "trace": trace, "frames": frames, "grown_mb": round(grown, 2), "peak_mb": round(_peak_mb(), 1),
            "before_mb": round(before, 1), "traced_bytes": traced, "traced_peak_bytes": traced_peak, "text_chars": text_chars}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a recipe's data folder (stage 1 done)")
    parser.add_argument("--exp", type=Path, required=True, help="its experiment folder (stage 3 done: gmm/ali/tids_<part>.txt)")
    parser.add_argument("--part", default="train-clean-100")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--chunk", type=int, default=500, help="cuts per chunk of the 'chunks' pass")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gmm_memory"))
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "PART", "N", "TRACE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    tids_path = args.exp / "gmm" / "ali" / f"tids_{args.part}.txt"
    if args.child:
        kind, part, n, trace = args.child
        print(json.dumps(measure(kind, args.work, part, tids_path, int(n), args.data / "lang", args.chunk, trace == "1")))
        return
    if args.work.exists():
        shutil.rmtree(args.work)
    rows = []
    for n in args.sizes:
        name = make_part(args.data, args.part, n, args.work)
        for kind, trace in [(k, "0") for k in KINDS] + [(k, "1") for k in TRACED]:
            cmd = [sys.executable, __file__, "--data", str(args.data), "--exp", str(args.exp), "--part", args.part,
                   "--work", str(args.work), "--chunk", str(args.chunk), "--child", kind, name, str(n), trace]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(row, flush=True)
            rows.append(row)
    shutil.rmtree(args.work)
    write_section(args.results, HEADING, report(rows, args))


def report(rows: list[dict], args: argparse.Namespace) -> str:
    """Return the RESULTS.md section."""
    command = "python bench/gmm_memory.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    rss = {(r["kind"], r["n"]): r for r in rows if not r["trace"]}
    traced = {(r["kind"], r["n"]): r for r in rows if r["trace"]}
    sizes = sorted({r["n"] for r in rows})

    def cell(kind: str, n: int) -> str:
        return f"{rss[(kind, n)]['grown_mb']:.1f} / {traced[(kind, n)]['traced_bytes'] / 2**20:.1f}"

    lines = [HEADING, "", f"Written by `{command}`.", "",
             "Each cell is a fresh process: resident memory after minus before (MiB) / what tracemalloc counts as held (MiB). "
             "'Before' is what stage 3 held until this change (the eager Cut objects; alignments as Python lists), "
             f"'now' what it holds; 'lists, large model' are the same alignments with every transition-id raised by {LARGE_MODEL_TIDS:,} "
             "(the values a LibriSpeech-size model has; this corpus's model has 336 transition-ids, mostly below Python's "
             f"shared small ints). The chunks pass ({args.chunk} cuts a chunk) loads every cut's features once, and storing "
             "attaches an alignment to every fbank cut, a chunk at a time, and writes the cut manifest: their peak "
             "resident memory above the start / tracemalloc's peak (MiB).", "",
             "| cuts | frames | cuts: eager (before) | cuts: lazy PartSource (now) | chunks pass: peak | storing: one CutSet, peak (before) | storing: streamed, peak (now) | alignments: lists (before) | lists, large model (before) | int32 arrays (now) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        def peak(kind: str) -> str:
            r = rss[(kind, n)]
            traced_peak = f" / {traced[(kind, n)]['traced_peak_bytes'] / 2**20:.1f}" if (kind, n) in traced else ""
            return f"{r['peak_mb'] - r['before_mb']:.1f}{traced_peak}"

        lines.append(f"| {n} | {rss[('ali_int32', n)]['frames']} | {cell('cuts_eager', n)} | {cell('cuts_lazy', n)} | {peak('chunks')} | "
                     f"{peak('store_cutset')} | {peak('store_stream')} | {cell('ali_lists', n)} | {cell('ali_lists_large', n)} | {cell('ali_int32', n)} |")
    lo, hi = sizes[0], sizes[-1]
    if hi > lo:
        # Per cut and per frame: tracemalloc's slope between the smallest and the largest part (fixed costs cancel).
        def slope(kind: str, per: str) -> float:
            a, b = traced[(kind, lo)], traced[(kind, hi)]
            units = (b["frames"] - a["frames"]) if per == "frame" else (hi - lo)
            return (b["traced_bytes"] - a["traced_bytes"]) / units

        eager, lazy = slope("cuts_eager", "cut"), slope("cuts_lazy", "cut")
        small, large, arrays = slope("ali_lists", "frame"), slope("ali_lists_large", "frame"), slope("ali_int32", "frame")
        chars = traced[("cuts_lazy", hi)]["text_chars"]
        def peak_slope(kind: str) -> float:
            return (traced[(kind, hi)]["traced_peak_bytes"] - traced[(kind, lo)]["traced_peak_bytes"]) / (hi - lo)

        lines += ["", f"Per cut (tracemalloc, {lo} to {hi} cuts): {eager:.0f} bytes eager, {lazy:.0f} lazy; storing's peak "
                  f"{peak_slope('store_cutset'):.0f} bytes as one CutSet, {peak_slope('store_stream'):.0f} streamed. Per frame: {small:.1f} bytes as lists "
                  f"({large:.1f} with a large model's transition-ids), {arrays:.1f} as int32 arrays (4 a frame plus each array's header).",
                  f"Projected to LibriSpeech 960 h (281,241 training cuts, about 345M frames): {eager * 281241 / 2**30:.2f} GiB of Cuts eager, "
                  f"{lazy * 281241 / 2**30:.2f} GiB lazy; {peak_slope('store_cutset') * 281241 / 2**30:.2f} GiB of stored Cuts as one CutSet, "
                  f"{peak_slope('store_stream') * 281241 / 2**30:.2f} GiB streamed; {large * 345e6 / 2**30:.1f} GiB of alignments as lists, {arrays * 345e6 / 2**30:.1f} GiB "
                  f"as int32, were they all held at once (stage 3 holds one chunk's, and the monophone's of the triphones' subset). These transcripts average {chars:.0f} characters and LibriSpeech's roughly 180 (an estimate: 12.3 s an "
                  "utterance, about 33 words), which adds about the difference in bytes per cut to both the eager and the lazy cost."]
    from asr_kd.stages.provenance import code_version, environment, environment_text

    lines += ["", environment_text(environment(), code_version())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
