"""Stage 5's throughput: the teachers' inference over the training set and the storing of its soft targets.

Runs what ``asr-kd make-soft-targets`` runs per cut, on synthetic cuts of lhotse features (random
log-mel-like frames, stored with lhotse's LilcomChunkyWriter) and randomly initialised teachers of
``--model`` (the paper's DNN by default, with tri4b's 4,200 senones): the ensemble's fused
posteriors at T (:func:`asr_kd.kd.ensemble.ensemble_log_posteriors`, batches of ``--max-duration``
seconds on ``--device``), then, per storage format, the codebook fit (``rvq``) and the per-cut
encoding, the statistics and the archive (:func:`asr_kd.stages.s5_soft_targets.cut_target_arrays`,
:func:`asr_kd.kd.soft_targets.store_target_arrays`). Untrained teachers give flatter posteriors than
trained ones; the network arithmetic and the top-k work per frame do not depend on that.

Each row gives frames per second and what that means for 960 h of LibriSpeech (about 345 million
frames) on one device.

    python bench/stage5_speed.py --device cuda --results bench/RESULTS.md       # on a GPU machine
    python bench/stage5_speed.py --model tiny --num-classes 60 --cuts 4 --frames 200  # a CPU smoke run
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

from lhotse import CutSet, Features, LilcomChunkyWriter, MonoCut  # noqa: E402

from asr_kd.config import KdConfig  # noqa: E402
from asr_kd.kd.ensemble import ensemble_log_posteriors  # noqa: E402
from asr_kd.kd.soft_targets import SoftTargetStats, store_target_arrays  # noqa: E402
from asr_kd.models.dnn import SplicedDnn, load_dnn_config  # noqa: E402
from asr_kd.stages.s5_soft_targets import _fit_quantiser, cut_target_arrays  # noqa: E402

FRAMES_960H = 345e6  # 960 h of 10-ms frames


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="paper", help="teacher DNN preset or YAML (default paper)")
    p.add_argument("--num-classes", type=int, default=4200, help="senones (default 4200, Kaldi's tri4b)")
    p.add_argument("--teachers", type=int, default=4, help="teachers in the ensemble (default 4)")
    p.add_argument("--cuts", type=int, default=96, help="synthetic cuts (default 96)")
    p.add_argument("--frames", type=int, default=1230, help="frames per cut (default 1230: LibriSpeech's mean of about 12.3 s)")
    p.add_argument("--max-duration", type=float, nargs="+", default=[20.0, 200.0],
                   help="seconds of audio per inference batch; several: one inference row each (stage 5's default: 20)")
    p.add_argument("--storage", nargs="+", default=["rvq", "uint16-uint8"], help="kd.storage formats to time (default rvq uint16-uint8)")
    p.add_argument("--top-k", type=int, default=20, help="kd.top_k (default 20)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where the teachers score (default cuda if present)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds, every row once per round, interleaved; the median is shown (default 3)")
    p.add_argument("--results", type=Path, default=None, help="also write a section of this RESULTS.md")
    return p.parse_args(argv)


def synthetic_cuts(folder: Path, n: int, frames: int, dim: int, seed: int = 0) -> CutSet:
    """``n`` cuts of ``frames`` random feature frames each, stored in ``folder`` through lhotse."""
    rng = np.random.default_rng(seed)
    cuts = []
    storage = folder / "feats.lca"
    with LilcomChunkyWriter(storage) as writer:
        for i in range(n):
            feats = rng.standard_normal((frames, dim)).astype(np.float32)
            key = writer.write(f"utt-{i:05d}", feats)
            duration = frames * 0.01
            features = Features(type="fbank", num_frames=frames, num_features=dim, frame_shift=0.01, sampling_rate=16000,
                                start=0.0, duration=duration, storage_type=LilcomChunkyWriter.name, storage_path=str(storage),
                                storage_key=key, recording_id=f"rec-{i:05d}", channels=0)
            cuts.append(MonoCut(id=f"utt-{i:05d}", start=0.0, duration=duration, channel=0, features=features))
    return CutSet.from_cuts(cuts)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return its rows."""
    args = parse_args(argv)
    device = torch.device(args.device)
    cfg = load_dnn_config(args.model)
    torch.manual_seed(0)
    teachers = [SplicedDnn(cfg, args.num_classes).eval() for _ in range(args.teachers)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cuts = synthetic_cuts(folder, args.cuts, args.frames, cfg.feature_dim)
        frames = args.cuts * args.frames
        # Untimed: the first batch loads the kernels and fills the allocator.
        for _ in zip(range(1), ensemble_log_posteriors(teachers, cuts.subset(first=1), None, 2.0, "arithmetic", args.max_duration[0], device)):
            pass
        inference_times: dict[float, list[float]] = {m: [] for m in args.max_duration}
        store_times: dict[str, list[float]] = {storage: [] for storage in args.storage}
        kds = {storage: KdConfig(temperature=2.0, top_k=args.top_k, storage=storage) for storage in args.storage}
        quantisers, fit_seconds, mass = {}, {}, {}
        for storage, kd in kds.items():
            start = time.perf_counter()
            quantisers[storage] = (_fit_quantiser(teachers, cuts, None, kd, args.max_duration[0], args.num_classes, device)
                                   if storage == "rvq" else None)
            fit_seconds[storage] = time.perf_counter() - start
        for r in range(args.rounds):
            for max_duration in args.max_duration:
                _sync(device)
                start = time.perf_counter()
                for _cut, log_probs in ensemble_log_posteriors(teachers, cuts, None, 2.0, "arithmetic", max_duration, device):
                    pass
                _sync(device)
                inference_times[max_duration].append(time.perf_counter() - start)
            for storage, kd in kds.items():
                stats = SoftTargetStats()
                start = time.perf_counter()
                posteriors = ensemble_log_posteriors(teachers, cuts, None, kd.temperature, kd.fusion, args.max_duration[0], device)
                stored = store_target_arrays(cuts, ((c.id, cut_target_arrays(lp, kd, quantisers[storage], stats, device)) for c, lp in posteriors),
                                             folder / f"targets_{storage}_{r}")
                store_times[storage].append(time.perf_counter() - start)
                assert len(stored) == args.cuts
                mass[storage] = stats.summary(0)["mean_mass_kept"]
        inference = [{"max_duration": m, "seconds": statistics.median(t), "frames_per_second": frames / statistics.median(t)}
                     for m, t in inference_times.items()]
        storing = [{"storage": st, "fit_seconds": fit_seconds[st], "seconds": statistics.median(t),
                    "frames_per_second": frames / statistics.median(t), "mean_mass_kept": mass[st]} for st, t in store_times.items()]
        best = args.max_duration[0]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"the CPU ({torch.get_num_threads()} torch threads)"
    storage_list = " ".join(args.storage)
    text = (
        f"## Stage 5 throughput on {'a GPU' if device.type == 'cuda' else 'the CPU'}, {args.model} teachers: inference and stored soft targets (bench/stage5_speed.py)\n\n"
        f"`python bench/stage5_speed.py --model {args.model} --num-classes {args.num_classes} --teachers {args.teachers} "
        f"--cuts {args.cuts} --frames {args.frames} --max-duration {' '.join(f'{m:g}' for m in args.max_duration)} "
        f"--storage {storage_list} --top-k {args.top_k} --device {args.device} --rounds {args.rounds}` on {name}: {args.teachers} randomly initialised "
        f"{args.model} teachers over {args.num_classes} senones, fp32, {frames:,} synthetic feature frames in lhotse cuts. "
        f"Medians of {args.rounds} interleaved rounds. 960 h: 345 million frames at the rate of the row, one device.\n\n"
        "| inference batch | frames/s | 960 h would take |\n|---|---:|---:|\n"
    )
    for r in inference:
        text += f"| {r['max_duration']:g} s of audio | {r['frames_per_second']:,.0f} | {FRAMES_960H / r['frames_per_second'] / 3600:.2f} h |\n"
    text += (f"\nThe whole per-cut work of stage 5 (inference in batches of {best:g} s, the first --max-duration, then encoding, statistics and the archive; "
             f"rvq: after fitting its codebooks on a sample):\n\n"
             "| kd.storage | codebook fit (scoring its sample included) | frames/s | 960 h would take | mean mass kept |\n|---|---:|---:|---:|---:|\n")
    for r in storing:
        fit = f"{r['fit_seconds']:.1f} s" if r["storage"] == "rvq" else "-"
        text += (f"| {r['storage']} | {fit} | {r['frames_per_second']:,.0f} | {FRAMES_960H / r['frames_per_second'] / 3600:.2f} h | "
                 f"{r['mean_mass_kept']:.3f} |\n")
    print(text)
    if args.results is not None:
        from _results import write_section  # bench/_results.py, beside this script

        write_section(args.results, f"## Stage 5 throughput on {'a GPU' if device.type == 'cuda' else 'the CPU'}, {args.model} teachers", text)
    return {"inference": inference, "storing": storing}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
