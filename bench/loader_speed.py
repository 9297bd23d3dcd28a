"""What one data-loader worker delivers to a training GPU: frames a second of stage 4's and stage 6's
batches (features, senone labels and, for a distilled student, the stored soft targets in each
``kd.storage`` format, decoded as the students read them), against the rate at which a GPU trains.

Each loader worker is one process with one torch thread (PyTorch's DataLoader sets that), so the
rate of :class:`asr_kd.data.frames.FrameDataset` on one thread in this process is a worker's rate,
and ``--gpu-frames-per-second / rate`` workers (CPU cores) are needed to keep one GPU busy. The
default GPU rate is the paper DNN's bf16 training on one H200 (bench/RESULTS.md "DNN training
throughput (paper DNN)": about 1.0 million frames a second). Synthetic cuts: random lilcom
features, random senone labels, and random posteriors stored through stage 5's own code
(:func:`asr_kd.stages.s5_soft_targets.cut_target_arrays`, the rvq codebooks fitted on a sample
of them); a fresh dataset per round, so codes are decoded each time (a loader worker keeps no
decoded targets between epochs).

    python bench/loader_speed.py                                  # 500 and 4,200 senones (make bench)
    python bench/loader_speed.py --num-classes 4200 --results /tmp/RESULTS.md
    python bench/loader_speed.py --decode-device cuda                     # on a GPU machine
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # stage5_speed and _results, beside this script

from asr_kd.config import SENONES_FIELD, KdConfig  # noqa: E402
from asr_kd.data.alignments import store_alignments  # noqa: E402
from asr_kd.data.frames import FrameDataset, make_sampler  # noqa: E402
from asr_kd.data.stored_targets import SOFT_CODEBOOK, SOFT_CODES, SOFT_DECODE_K, SOFT_TEMPERATURE, decode_batch_codes  # noqa: E402
from asr_kd.kd.soft_targets import SoftTargetStats, store_target_arrays  # noqa: E402
from asr_kd.kd.target_formats import ResidualQuantiser, storage_bytes_per_frame  # noqa: E402
from asr_kd.stages.s5_soft_targets import cut_target_arrays  # noqa: E402

from bf16_cpu import cpu_name  # noqa: E402
from stage5_speed import _sync, synthetic_cuts  # noqa: E402

# (label, kd.storage, kd.top_k: None is every senone); "hard": no soft targets (stage 4, the baseline).
FORMATS = {
    "hard": (None, None),
    "int32-fp16": ("int32-fp16", 20),
    "uint16-uint8": ("uint16-uint8", 20),
    "rvq": ("rvq", 500),
    "rvq-dense": ("rvq", None),
    "rvq-codes": ("rvq", 500),  # the codes left in the batch, decoded where the loss runs (a student on a GPU)
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-classes", type=int, nargs="+", default=[500, 4200], help="senones; one table block each (mini: 500, tri4b: 4,200)")
    p.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS),
                   help="hard: labels only; int32-fp16 and uint16-uint8: top 20; rvq: 8 codes decoded to the top 500 "
                        "(conf/kd.yaml's kd.top_k) by the loader; rvq-dense: decoded to every senone; rvq-codes: the codes left "
                        "in the batch (a student on a GPU), decoded on --decode-device")
    p.add_argument("--cuts", type=int, default=24, help="synthetic cuts")
    p.add_argument("--frames", type=int, default=1230, help="frames per cut (LibriSpeech's mean is about 1,230)")
    p.add_argument("--max-duration", type=float, default=400.0, help="seconds of audio per batch (conf/train_paper.yaml: 400)")
    p.add_argument("--rounds", type=int, default=3, help="passes over the cuts per format, interleaved; the median is reported")
    p.add_argument("--gpu-frames-per-second", type=float, default=1.0e6,
                   help="the GPU's training rate to feed (default: the paper DNN on one H200 in bf16)")
    p.add_argument("--decode-device", default="cpu",
                   help="where rvq-codes rows decode their batches' codes, as a student's loss does (cuda on a GPU machine; default cpu, one thread)")
    p.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"), help="write a section of this RESULTS.md (default bench/RESULTS.md)")
    return p.parse_args(argv)


def store_targets(cuts, folder: Path, num_classes: int, storage: str, top_k: int, seed: int = 0):
    """``cuts`` with random posteriors over ``num_classes`` stored in ``storage`` by stage 5's code."""
    kd = KdConfig(temperature=2.0, top_k=top_k, storage=storage, codebooks=8)
    g = torch.Generator().manual_seed(seed)
    log_probs = {c.id: torch.log_softmax(3.0 * torch.randn(c.num_frames, num_classes, generator=g), dim=1) for c in cuts}
    quantiser = None
    custom: dict = {SOFT_TEMPERATURE: kd.temperature}
    shared = None
    if storage == "rvq":
        sample = torch.cat([lp.exp() for lp in list(log_probs.values())[:4]])
        quantiser = ResidualQuantiser.fit(sample, kd.codebooks, seed=0, iterations=3)
        shared, custom[SOFT_DECODE_K] = {SOFT_CODEBOOK: quantiser.codebooks}, top_k
    stats = SoftTargetStats()
    arrays = ((cid, cut_target_arrays(lp, kd, quantiser, stats)) for cid, lp in log_probs.items())
    return store_target_arrays(cuts, arrays, folder / f"targets_{storage}_{top_k}", shared=shared, custom=custom)


def pass_rate(cuts, num_classes: int, max_duration: float, codes_in_batch: bool,
              decode_device: torch.device) -> tuple[float, float | None, int, int, int]:
    """One pass of a fresh FrameDataset over ``cuts`` in training batches: seconds, the seconds
    ``decode_device`` took to decode the codes of batches that carry them (else None), frames,
    frames that got a label, frames whose soft targets sum to 1 (the batches are checked after the
    clock stops: a pass that skipped the targets would be fast and wrong)."""
    dataset = FrameDataset(None, SENONES_FIELD, num_classes, codes_in_batch=codes_in_batch)
    batches = []
    start = time.perf_counter()
    for batch_cuts in make_sampler(cuts, max_duration, shuffle=False, seed=0, bucketing=False):
        batches.append(dataset[batch_cuts])
    seconds = time.perf_counter() - start
    decode_seconds = None
    if any(SOFT_CODES in b for b in batches):
        on_device = [{**b, SOFT_CODES: b[SOFT_CODES].to(decode_device)} for b in batches]
        decode_batch_codes(on_device[0])  # untimed: the codebook's copy and the kernels' first run
        _sync(decode_device)
        start = time.perf_counter()
        for b in on_device:
            b["soft_ids"], b["soft_probs"] = decode_batch_codes(b)
        _sync(decode_device)
        decode_seconds = time.perf_counter() - start
        batches = [{**b, "soft_probs": b["soft_probs"].cpu()} for b in on_device]
    frames = labelled = with_targets = 0
    for batch in batches:
        mask = torch.arange(batch["features"].shape[1])[None, :] < batch["lengths"][:, None]
        frames += int(mask.sum())
        labelled += int(((batch["labels"] >= 0) & mask).sum())
        if "soft_probs" in batch:
            with_targets += int(((batch["soft_probs"].sum(-1) - 1.0).abs() < 1e-2)[mask].sum())
    return seconds, decode_seconds, frames, labelled, with_targets


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark; return its rows."""
    args = parse_args(argv)
    torch.set_num_threads(1)  # a DataLoader worker's
    decode_device = torch.device(args.decode_device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for num_classes in args.num_classes:
            sub = folder / f"c{num_classes}"
            sub.mkdir()
            base = synthetic_cuts(sub, args.cuts, args.frames, 40)
            rng = np.random.default_rng(0)
            base = store_alignments(base, {c.id: rng.integers(0, num_classes, c.num_frames).astype(np.int32) for c in base}, sub / "ali")
            sets, stored = {}, {}
            ks = {name: min(FORMATS[name][1] or num_classes, num_classes) for name in args.formats}
            for name in args.formats:
                storage = FORMATS[name][0]
                if storage is not None and (storage, ks[name]) not in stored:  # rvq and rvq-codes read the same targets
                    stored[storage, ks[name]] = store_targets(base, sub, num_classes, storage, ks[name])
                sets[name] = base if storage is None else stored[storage, ks[name]]
            times: dict[str, list[float]] = {name: [] for name in sets}
            decode_times: dict[str, list[float]] = {name: [] for name in sets}
            counted: dict[str, tuple[int, int, int]] = {}
            for _ in range(args.rounds):
                for name, cuts in sets.items():
                    seconds, decode_seconds, *counts = pass_rate(cuts, num_classes, args.max_duration, name == "rvq-codes", decode_device)
                    times[name].append(seconds)
                    if decode_seconds is not None:
                        decode_times[name].append(decode_seconds)
                    counted[name] = tuple(counts)
            for name in sets:
                storage, k = FORMATS[name][0], ks[name]
                frames, labelled, with_targets = counted[name]
                rate = frames / statistics.median(times[name])
                rows.append({"num_classes": num_classes, "format": name, "storage": storage, "top_k": k if storage else None,
                             "bytes_per_frame": storage_bytes_per_frame(storage, k, 8) if storage else 0,
                             "frames": frames, "labelled_frames": labelled, "target_frames": with_targets, "frames_per_second": rate,
                             "decoded_per_second": frames / statistics.median(decode_times[name]) if decode_times[name] else None,
                             "workers_per_gpu": args.gpu_frames_per_second / rate})
    text = render(args, rows)
    print(text)
    from _results import write_section

    write_section(args.results, f"## Data loader against the GPU, codes decoded on {args.decode_device}", text)
    return rows


def render(args: argparse.Namespace, rows: list[dict]) -> str:
    words = {"hard": "senone labels only (stage 4, the baseline)", "int32-fp16": "+ top {k}, int32-fp16",
             "uint16-uint8": "+ top {k}, uint16-uint8", "rvq": "+ 8-byte rvq codes decoded to the top {k} (conf/kd.yaml's top_k)",
             "rvq-dense": "+ 8-byte rvq codes decoded to every senone",
             "rvq-codes": "+ 8-byte rvq codes left in the batch (a student on a GPU), top {k} decoded where the loss runs"}
    lines = [
        f"## Data loader against the GPU, codes decoded on {args.decode_device}: frames a second per loader worker (bench/loader_speed.py)", "",
        f"`python bench/loader_speed.py --num-classes {' '.join(map(str, args.num_classes))} --formats {' '.join(args.formats)} "
        f"--cuts {args.cuts} --frames {args.frames} --max-duration {args.max_duration:g} --rounds {args.rounds} "
        f"--gpu-frames-per-second {args.gpu_frames_per_second:g} --decode-device {args.decode_device}` on {cpu_name()}"
        f"{' and ' + torch.cuda.get_device_name(torch.device(args.decode_device)) if args.decode_device.startswith('cuda') else ''}: "
        "one torch thread (a DataLoader worker's), "
        f"batches of {args.max_duration:g} s from {args.cuts} synthetic cuts of {args.frames} frames (lilcom features, senone labels, "
        "stored soft targets), a fresh dataset per pass, median of the interleaved passes. Workers per GPU: the GPU's rate "
        f"({args.gpu_frames_per_second:,.0f} frames a second) over the row's.", "",
        f"| senones | batch content | bytes per frame stored | frames/s per worker | workers to feed one GPU | codes decoded on {args.decode_device}, frames/s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        decoded = "-" if r["decoded_per_second"] is None else f"{r['decoded_per_second']:,.0f}"
        lines.append(f"| {r['num_classes']:,} | {words[r['format']].format(k=r['top_k'])} | {r['bytes_per_frame'] or '-'} | "
                     f"{r['frames_per_second']:,.0f} | {r['workers_per_gpu']:.1f} | {decoded} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
