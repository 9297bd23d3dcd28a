"""Stored soft targets: bytes per frame, how much of the distribution survives, load time, and
the storage layout (one archive file vs one .npy file per array).

Compresses synthetic teacher posteriors to their top k senones (int32 ids + float16
probabilities, renormalised; asr_kd.kd.soft_targets) for several k and reports, against dense
float32 posteriors: payload and on-disk bytes per frame, the mean share of probability mass kept,
the mean KL(stored || full) per frame, and the time to load a training batch of each from lhotse
array storage (the targets in one ``npy_archive`` file, dense posteriors as .npy files).

Then, on the same synthetic top-k targets (``--archive-cuts`` cuts of ``--archive-frames``
frames, k = ``--archive-k``), it compares side by side the two storages of the targets: lhotse's
``NumpyFilesWriter`` (one .npy file per array, two per cut: the layout before
asr_kd.data.array_archive) and the single-file archive (``npy_archive``): time to store, files
and directories created, bytes (file lengths and blocks allocated), and the time to load every
cut's targets in random order, with the files in the page cache and after asking the kernel to
drop them from it (``posix_fadvise(DONTNEED)``). Each part writes its own section of
bench/RESULTS.md.

The posteriors are synthetic, not a trained ensemble's: softmax(s * g / T) with Gaussian logits g
over ``--classes`` senones, at T = 1 and T = 2; ``--logit-scale`` s = 6 makes the top senone take
about 0.6 of the mass at T = 1 (peaky, like a trained acoustic model's posteriors).

    python bench/soft_targets.py [--frames 20000] [--classes 2000] [--logit-scale 6]
    python bench/soft_targets.py --storage-only [--archive-cuts 2000] [--archive-frames 500] [--archive-k 10]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from lhotse import CutSet, MonoCut, NumpyFilesWriter
from tqdm import tqdm

from asr_kd.data.array_archive import ARCHIVE_NAME, NpyArchiveWriter, close_archives
from asr_kd.kd.soft_targets import (
    ID_DTYPE,
    PROB_DTYPE,
    SOFT_IDS,
    SOFT_PROBS,
    bytes_per_frame,
    collate_soft_targets,
    kl_stored_vs_full,
    load_soft_targets,
    store_soft_targets,
    topk_compress,
    topk_mass,
)

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

HEADING = "## Stored soft targets (bench/soft_targets.py)"
STORAGE_HEADING = "## Soft-target storage: one archive file vs one .npy file per array (bench/soft_targets.py)"
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


def compression_section(args: argparse.Namespace, cmd: str) -> tuple[str, dict]:
    """Run the compression and batch-load benchmark; return its RESULTS.md section and
    ``{"compression": rows, "load": {...}}``."""
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
        close_archives()  # before the temporary directory goes

    lines = [
        HEADING,
        "",
        f"`{cmd}` on {platform.processor() or platform.machine()}. Synthetic posteriors, not a trained "
        f"ensemble's: softmax({args.logit_scale:g} * g / T) with Gaussian logits g over {args.classes} senones, "
        f"{frames} frames in {len(cuts)} cuts of {args.frames_per_cut} frames. Stored: top-k senone ids (int32) and "
        f"probabilities (float16, renormalised) as .npy records in one archive file (asr_kd.data.array_archive; on disk: "
        f"the file's length, including the .npy headers); dense: float32, {dense_bpf} bytes per frame, .npy files "
        "through lhotse's NumpyFilesWriter. "
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
    return "\n".join(lines), {"compression": rows, "load": load}


# --------------------------------------------------------------------------------------------
# One archive file vs one .npy file per array
# --------------------------------------------------------------------------------------------


def synthetic_topk(cuts: CutSet, k: int, classes: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return ``{cut_id: (ids int32, probs float16)}``: random top-k targets (distinct-enough
    ids, decreasing probabilities summing to 1) of one row per 10 ms frame of each cut."""
    rng = np.random.default_rng(seed)
    out = {}
    for cut in cuts:
        n = round(cut.duration / FRAME_SHIFT)
        probs = -np.sort(-rng.dirichlet(np.full(k, 0.3), size=n), axis=1)
        out[cut.id] = rng.integers(0, classes, size=(n, k)).astype(ID_DTYPE), probs.astype(PROB_DTYPE)
    return out


def _store_with(writer, cuts: CutSet, targets: dict[str, tuple[np.ndarray, np.ndarray]]) -> list:
    """Store each cut's ids and probs with ``writer``; return the cuts with their two fields."""
    out = []
    for cut in tqdm(cuts, desc=writer.name, leave=False):
        for name, value in zip((SOFT_IDS, SOFT_PROBS), targets[cut.id]):
            cut = cut.with_custom(name, writer.store_array(f"{cut.id}.{name}", value, frame_shift=FRAME_SHIFT, temporal_dim=0))
        out.append(cut)
    return out


def store_numpy_files(cuts: CutSet, targets: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> list:
    """Store the targets the way store_soft_targets did before the archive: lhotse's
    NumpyFilesWriter, one .npy file per array (two per cut); return the cuts with their fields."""
    return _store_with(NumpyFilesWriter(path), cuts, targets)


def store_archive(cuts: CutSet, targets: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> list:
    """Store the targets with the archive writer alone, in the same loop (closing it includes
    the fsync); return the cuts with their fields."""
    with NpyArchiveWriter(path / ARCHIVE_NAME) as writer:
        return _store_with(writer, cuts, targets)


def disk_usage(path: Path) -> dict[str, int]:
    """Files and directories under ``path`` (itself included), their total length, and the
    bytes the filesystem allocated for them (``st_blocks``: whole blocks per small file)."""
    entries = [path, *path.rglob("*")]
    return {
        "files": sum(p.is_file() for p in entries),
        "dirs": sum(p.is_dir() for p in entries),
        "bytes": sum(p.stat().st_size for p in entries if p.is_file()),
        "allocated": sum(p.stat().st_blocks * 512 for p in entries),
    }


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to drop the cached pages of every file under ``path`` (no root needed;
    effective for clean pages on local filesystems such as ext4 and xfs)."""
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)  # written pages must be clean to be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def time_random_loads(cuts: list, seed: int, before: Callable[[], None] | None = None) -> float:
    """Seconds per cut to load every cut's ids and probs (load_soft_targets) in a random order
    (``seed``); ``before`` runs first, untimed."""
    order = list(cuts)
    random.Random(seed).shuffle(order)
    if before is not None:
        before()
    start = time.perf_counter()
    for cut in order:
        load_soft_targets(cut)
    return (time.perf_counter() - start) / len(order)


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def storage_section(args: argparse.Namespace, cmd: str) -> tuple[str, dict]:
    """Compare the two storages of the same top-k targets; return the RESULTS.md section and
    ``{storage: {store_s, files, dirs, bytes, allocated, load_warm_s, load_cold_s}}``."""
    cuts = make_cuts(args.archive_cuts * args.archive_frames, args.archive_frames)
    targets = synthetic_topk(cuts, args.archive_k, args.classes, args.seed)
    payload = sum(ids.nbytes + probs.nbytes for ids, probs in targets.values())
    kinds: dict[str, Callable[[CutSet, dict, Path], list]] = {"numpy_files": store_numpy_files, "npy_archive": store_archive}
    res: dict[str, dict[str, Any]] = {name: {"store_s": [], "load_warm_s": [], "load_cold_s": []} for name in kinds}
    library: list[float] = []
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        stored: dict[str, list] = {}
        for r in range(args.rounds):  # interleaved rounds, fresh directories; medians reported
            for name, store in kinds.items():
                path = Path(tmp) / name
                if path.exists():
                    shutil.rmtree(path)
                close_archives()
                seconds, stored[name] = _timed(lambda: store(cuts, targets, path))
                res[name]["store_s"].append(seconds)
            # The library function: the archive plus its checks and the atomic rename.
            seconds, _ = _timed(lambda: store_soft_targets(cuts, ((c, *t) for c, t in targets.items()), Path(tmp) / "lib",
                                                          args.archive_k))
            library.append(seconds)
        for name in kinds:
            res[name].update(disk_usage(Path(tmp) / name))
        for r in range(args.rounds):
            for name in kinds:
                path = Path(tmp) / name
                res[name]["load_warm_s"].append(time_random_loads(stored[name], args.seed + r))
                evict = functools.partial(drop_from_page_cache, path)
                res[name]["load_cold_s"].append(time_random_loads(stored[name], args.seed + r, evict))
        close_archives()
    for name in kinds:
        for key in ("store_s", "load_warm_s", "load_cold_s"):
            res[name][key] = statistics.median(res[name][key])
    res["store_soft_targets"] = {"store_s": statistics.median(library)}

    old, new = res["numpy_files"], res["npy_archive"]
    frames = args.archive_cuts * args.archive_frames
    lines = [
        STORAGE_HEADING,
        "",
        f"`{cmd}` on {platform.processor() or platform.machine()}, one process, the temporary folder on "
        f"{_filesystem(args.tmp_dir)}. The same synthetic top-{args.archive_k} targets (int32 ids + float16 probabilities) "
        f"for {args.archive_cuts} cuts of {args.archive_frames} frames ({frames} frames, {payload / 1e6:.1f} MB of payload), "
        "stored two ways: lhotse's `NumpyFilesWriter` (one .npy file per array, two per cut: the layout before "
        "`asr_kd.data.array_archive`) and the single archive file (`npy_archive`: the same .npy bytes, one after the other; "
        "closing it includes an fsync, which the per-file writer does not do). Store: the writer loop over all cuts. "
        "Load: `load_soft_targets` on every cut in a random order, through the lhotse manifests; cold = after "
        "`posix_fadvise(DONTNEED)` on every file. Medians of "
        f"{args.rounds} interleaved rounds.",
        "",
        "| storage | store (s) | files | directories | bytes (lengths) | bytes allocated | load, warm (µs/cut) "
        "| load, cold (µs/cut) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in kinds:
        r = res[name]
        lines.append(f"| {name} | {r['store_s']:.2f} | {r['files']} | {r['dirs']} | {r['bytes']:,} | {r['allocated']:,} | "
                     f"{1e6 * r['load_warm_s']:.0f} | {1e6 * r['load_cold_s']:.0f} |")
    lines.append(f"| numpy_files / npy_archive | {old['store_s'] / new['store_s']:.1f}x | {old['files'] / new['files']:.0f}x | "
                 f"{old['dirs'] / new['dirs']:.0f}x | {old['bytes'] / new['bytes']:.2f}x | {old['allocated'] / new['allocated']:.2f}x | "
                 f"{old['load_warm_s'] / new['load_warm_s']:.1f}x | {old['load_cold_s'] / new['load_cold_s']:.1f}x |")
    lines += [
        "",
        f"`store_soft_targets` (the archive with its shape checks, the temporary directory and the rename): "
        f"{res['store_soft_targets']['store_s']:.2f} s. At LibriSpeech scale the per-file layout means about 85,000 files "
        "for train-clean-100 and 850,000 for the 960 h set (alignments and soft targets); the archive is one file per "
        "storage directory.",
        "",
    ]
    return "\n".join(lines), res


def _filesystem(path: str | None) -> str:
    """The filesystem type of ``path`` (default: the temporary folder), from /proc/mounts."""
    target = os.path.realpath(path or tempfile.gettempdir())
    best, kind = "", "an unknown filesystem"
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 3 or len(fields[1]) <= len(best):
                continue
            if target == fields[1] or target.startswith(fields[1].rstrip("/") + "/"):  # the longest mount point wins
                best, kind = fields[1], fields[2]
    return kind


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmarks; return ``{"compression": rows, "load": {...}, "storage": {...}}``
    (without the first two under ``--storage-only``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--classes", type=int, default=2000)
    parser.add_argument("--logit-scale", type=float, default=6.0)
    parser.add_argument("--frames-per-cut", type=int, default=1000, help="10 s utterances")
    parser.add_argument("--batch-cuts", type=int, default=8)
    parser.add_argument("--load-k", type=int, default=20, help="k of the stored targets in the load-time test")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--archive-cuts", type=int, default=2000, help="cuts in the storage comparison")
    parser.add_argument("--archive-frames", type=int, default=500, help="frames per cut in the storage comparison")
    parser.add_argument("--archive-k", type=int, default=10, help="k of the targets in the storage comparison")
    parser.add_argument("--tmp-dir", default=None, help="where the storage comparison writes (default: the system's)")
    parser.add_argument("--storage-only", action="store_true", help="run only the storage comparison")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    cmd = " ".join(["python", "bench/soft_targets.py", *(argv if argv is not None else sys.argv[1:])])
    out: dict = {}
    sections: list[tuple[str, str]] = []
    if not args.storage_only:
        text, result = compression_section(args, cmd)
        out.update(result)
        sections.append((HEADING, text))
    text, out["storage"] = storage_section(args, cmd)
    sections.append((STORAGE_HEADING, text))
    for heading, text in sections:
        print(text)
        write_section(args.results, heading, text)
    return out


if __name__ == "__main__":
    main()
