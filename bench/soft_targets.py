"""Stored soft targets: bytes per frame, how much of the distribution survives, and load time.

Compresses synthetic teacher posteriors to their top k senones (int32 ids + float16
probabilities, renormalised; asr_kd.kd.soft_targets) for several k and reports, against dense
float32 posteriors: payload and on-disk bytes per frame, the mean share of probability mass kept,
the mean KL(stored || full) per frame, and the time to load a training batch of each from lhotse
array storage (.npy files). Appends its section to bench/RESULTS.md.

The posteriors are synthetic, not a trained ensemble's: softmax(s * g / T) with Gaussian logits g
over ``--classes`` senones, at T = 1 and T = 2; ``--logit-scale`` s = 6 makes the top senone take
about 0.6 of the mass at T = 1 (peaky, like a trained acoustic model's posteriors).

    python bench/soft_targets.py [--frames 20000] [--classes 2000] [--logit-scale 6]
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet, MonoCut, NumpyFilesWriter

from asr_kd.kd.soft_targets import (
    bytes_per_frame,
    collate_soft_targets,
    kl_stored_vs_full,
    store_soft_targets,
    topk_compress,
    topk_mass,
)

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

HEADING = "## Stored soft targets (bench/soft_targets.py)"
KS = (1, 5, 10, 20, 50)
TEMPERATURES = (1.0, 2.0)
FRAME_SHIFT = 0.01
DENSE = "soft_dense"


def synthetic_posteriors(frames: int, classes: int, scale: float, temperature: float, seed: int) -> np.ndarray:
    """Return float32 (frames x classes) posteriors ``softmax(scale * g / temperature)``, g ~ N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(frames, classes, generator=g)
    return torch.softmax(logits / temperature, dim=-1).numpy()


def make_cuts(frames: int, frames_per_cut: int) -> CutSet:
    """Cuts of ``frames_per_cut`` frames each (no audio needed: targets are keyed by cut id)."""
    n = frames // frames_per_cut
    return CutSet.from_cuts(
        MonoCut(id=f"utt-{i:05d}", start=0.0, duration=frames_per_cut * FRAME_SHIFT, channel=0) for i in range(n)
    )


def split(full: np.ndarray, cuts: CutSet) -> list[tuple[str, np.ndarray]]:
    """Cut the (frames x C) matrix into the cuts' consecutive spans."""
    out, start = [], 0
    for cut in cuts:
        n = round(cut.duration / FRAME_SHIFT)
        out.append((cut.id, full[start : start + n]))
        start += n
    return out


def store_dense(cuts: CutSet, spans: list[tuple[str, np.ndarray]], path: Path) -> CutSet:
    """Store dense float32 posteriors the same way (lhotse .npy arrays on the cuts), for comparison."""
    by_id = dict(spans)
    writer = NumpyFilesWriter(path)
    out = []
    for cut in cuts:
        arr = writer.store_array(f"{cut.id}.{DENSE}", by_id[cut.id], frame_shift=FRAME_SHIFT, temporal_dim=0, start=0.0)
        out.append(cut.with_custom(DENSE, arr))
    return CutSet.from_cuts(out)


def dir_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (their lengths, not the blocks they occupy)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def load_dense(cuts: list) -> torch.Tensor:
    """Load dense posteriors of a batch into one padded [B, T, C] tensor."""
    arrays = [c.load_custom(DENSE) for c in cuts]
    out = torch.zeros(len(arrays), max(a.shape[0] for a in arrays), arrays[0].shape[1])
    for b, a in enumerate(arrays):
        out[b, : a.shape[0]] = torch.from_numpy(a)
    return out


def time_load(fn, batches: list[list], rounds: int) -> float:
    """Median seconds to load one batch with ``fn`` (every batch once per round)."""
    fn(batches[0])  # warm up
    times = []
    for _ in range(rounds):
        for batch in batches:
            start = time.perf_counter()
            fn(batch)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return ``{"compression": rows, "load": {...}}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--classes", type=int, default=2000)
    parser.add_argument("--logit-scale", type=float, default=6.0)
    parser.add_argument("--frames-per-cut", type=int, default=1000, help="10 s utterances")
    parser.add_argument("--batch-cuts", type=int, default=8)
    parser.add_argument("--load-k", type=int, default=20, help="k of the stored targets in the load-time test")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    cuts = make_cuts(args.frames, args.frames_per_cut)
    frames = len(cuts) * args.frames_per_cut
    dense_bpf = bytes_per_frame(args.classes, ["float32"])

    rows = []
    load: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for temperature in TEMPERATURES:
            full = synthetic_posteriors(frames, args.classes, args.logit_scale, temperature, args.seed)
            spans = split(full, cuts)
            for k in KS:
                ids, probs = topk_compress(full, k)
                out_dir = Path(tmp) / f"soft_T{temperature:g}_k{k}"
                stored = store_soft_targets(cuts, ((cid, *topk_compress(p, k)) for cid, p in spans), out_dir, k, temperature)
                disk = dir_bytes(out_dir) / frames
                kl = kl_stored_vs_full(full, ids, probs)
                rows.append(dict(T=temperature, k=k, payload=bytes_per_frame(k), disk=disk,
                                 ratio=dense_bpf / bytes_per_frame(k), mass=float(topk_mass(full, ids).mean()),
                                 kl=float(kl.mean()), kl95=float(np.percentile(kl, 95))))
                if temperature == TEMPERATURES[-1] and k == args.load_k:
                    topk_cuts = list(stored)
            if temperature == TEMPERATURES[-1]:
                dense_path = Path(tmp) / "dense"
                dense_cuts = list(store_dense(cuts, spans, dense_path))
                load["dense_disk"] = dir_bytes(dense_path) / frames
            del full, spans
        b = min(args.batch_cuts, len(cuts))
        load["batch_cuts"] = b
        topk_batches = [topk_cuts[i : i + b] for i in range(0, len(topk_cuts) - b + 1, b)]
        dense_batches = [dense_cuts[i : i + b] for i in range(0, len(dense_cuts) - b + 1, b)]
        load["topk_s"] = time_load(collate_soft_targets, topk_batches, args.rounds)
        load["dense_s"] = time_load(load_dense, dense_batches, args.rounds)

    cmd = " ".join(["python", "bench/soft_targets.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        HEADING,
        "",
        f"`{cmd}` on {platform.processor() or platform.machine()}. Synthetic posteriors, not a trained "
        f"ensemble's: softmax({args.logit_scale:g} * g / T) with Gaussian logits g over {args.classes} senones, "
        f"{frames} frames in {len(cuts)} cuts of {args.frames_per_cut} frames. Stored: top-k senone ids (int32) and "
        f"probabilities (float16, renormalised) as .npy files through lhotse's NumpyFilesWriter (on disk: file lengths, "
        f"including the .npy headers); dense: float32, {dense_bpf} bytes per frame. "
        "KL is KL(stored || full) in nats per frame (the other direction is infinite: stored targets are zero "
        "outside the top k); with exact renormalisation it equals -log(mass kept).",
        "",
        "| T | k | bytes/frame (payload) | bytes/frame (on disk) | dense / stored | mass kept (mean) | KL mean | KL 95th pct |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['T']:g} | {r['k']} | {r['payload']} | {r['disk']:.1f} | {r['ratio']:.0f}x | {r['mass']:.3f} | "
                     f"{r['kl']:.4f} | {r['kl95']:.4f} |")
    lines += [
        "",
        f"Loading a batch of {load['batch_cuts']} cuts ({load['batch_cuts'] * args.frames_per_cut} frames) into padded tensors, "
        f"one thread, files in the page cache, median of {args.rounds} rounds: top-{args.load_k} "
        f"{1000 * load['topk_s']:.1f} ms, dense float32 {1000 * load['dense_s']:.1f} ms "
        f"({load['dense_s'] / load['topk_s']:.1f}x); dense on disk {load['dense_disk']:.0f} bytes/frame.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    write_section(args.results, HEADING, text)
    return {"compression": rows, "load": load}


if __name__ == "__main__":
    main()
