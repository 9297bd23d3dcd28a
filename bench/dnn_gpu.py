"""Training throughput of the paper's DNN on a GPU: frames/s and the share of peak bf16 FLOP/s.

Trains the ``paper`` SplicedDnn (26 x 40 inputs, 8 x 2,560 ReLU, 14,000 senones) for a few hundred
steps on random features and labels (no data needed) with what the training loop uses: bf16
autocast, AdamW, gradient clipping, the frame cross entropy. FLOPs are counted as
``6 x matmul weights x frames`` per step (forward 2, backward 4; splicing, ReLU, softmax and the
optimizer are not counted), against a peak given by ``--peak-tflops`` (H100 SXM dense bf16: 989).

    python bench/dnn_gpu.py                      # on a CUDA machine
    python bench/dnn_gpu.py --compile --utts 64  # torch.compile, bigger batches
    python bench/dnn_gpu.py --modes eager compile --utts 32 64 --results bench/RESULTS.md  # a table
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr_kd.config import TrainConfig  # noqa: E402
from asr_kd.models.dnn import SplicedDnn, load_dnn_config, num_linear_params  # noqa: E402
from asr_kd.train.frame_classifier import frame_cross_entropy  # noqa: E402
from asr_kd.train.loop import autocast_context  # noqa: E402
from asr_kd.train.optim import make_optimizer  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="paper", help="DNN preset or YAML (default paper)")
    p.add_argument("--num-classes", type=int, default=14000, help="senones (the paper: 14,000)")
    p.add_argument("--utts", type=int, nargs="+", default=[32], help="utterances per batch; several: one row each")
    p.add_argument("--frames", type=int, default=1000, help="frames per utterance (10 ms each)")
    p.add_argument("--steps", type=int, default=300, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first (kernels, allocator, compile)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100 SXM: 989, H200: 989)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (same as --modes compile)")
    p.add_argument("--modes", nargs="+", choices=["eager", "compile"], default=None,
                   help="eager and/or torch.compile; several: one row per mode and batch (default eager, or compile with --compile)")
    p.add_argument("--amp", default="bf16", choices=["bf16", "none"])
    p.add_argument("--allow-cpu", action="store_true", help="run on the CPU anyway (a smoke test of this script)")
    p.add_argument("--results", type=Path, default=None, help="also write a section of this RESULTS.md")
    args = p.parse_args(argv)
    if args.modes is None:
        args.modes = ["compile" if args.compile else "eager"]
    return args


def measure(args: argparse.Namespace, utts: int, compiled: bool, device: torch.device) -> dict[str, float]:
    """Time ``args.steps`` training steps of batches of ``utts`` x ``args.frames`` frames."""
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model_cfg = load_dnn_config(args.model)
    model = SplicedDnn(model_cfg, args.num_classes).to(device)
    cfg = TrainConfig(lr=1e-4, warmup_steps=0, lr_schedule="constant", amp=args.amp)
    optimizer = make_optimizer(model, cfg)
    step_model = torch.compile(model) if compiled else model
    feats = torch.randn(utts, args.frames, model_cfg.feature_dim, device=device)
    batch = {
        "features": feats,
        "lengths": torch.full((utts,), args.frames, device=device),
        "labels": torch.randint(0, args.num_classes, (utts, args.frames), device=device),
    }

    def step() -> torch.Tensor:
        with autocast_context(cfg, device):
            loss, _ = frame_cross_entropy(step_model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        return loss

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    frames = utts * args.frames * args.steps
    tflops = 6.0 * num_linear_params(model_cfg, args.num_classes) * frames / seconds / 1e12
    return {
        "utts": utts,
        "mode": "compile" if compiled else "eager",
        "frames_per_second": frames / seconds,
        "seconds_per_step": seconds / args.steps,
        "achieved_tflops": tflops,
        "peak_fraction": tflops / args.peak_tflops,
        "final_loss": float(loss.detach()),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0,
    }


def main(argv: list[str] | None = None) -> list[dict[str, float]] | None:
    """Run the benchmark; return one row of measurements per mode and batch (None when there is no CUDA device)."""
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("bench/dnn_gpu.py: no CUDA device visible; run it on a GPU machine (or pass --allow-cpu for a smoke test)")
        return None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows: list[dict[str, float]] = []
    for mode in args.modes:
        for utts in args.utts:
            rows.append(measure(args, utts, mode == "compile", device))
            report(args, rows, device)  # after every row: a run cut short keeps what it measured
    return rows


def report(args: argparse.Namespace, rows: list[dict[str, float]], device: torch.device) -> None:
    """Print the table of ``rows`` and write it to ``args.results`` if given."""
    model_cfg = load_dnn_config(args.model)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    text = (
        f"## DNN training throughput ({args.model} DNN)\n\n"
        f"`python bench/dnn_gpu.py --model {args.model} --num-classes {args.num_classes} --utts {' '.join(map(str, args.utts))} "
        f"--frames {args.frames} --steps {args.steps} --modes {' '.join(args.modes)}` on {name}, amp={args.amp}, "
        f"{num_linear_params(model_cfg, args.num_classes) / 1e6:.1f} M matmul weights; each row: {args.warmup} untimed "
        f"steps, then {args.steps} timed ones (AdamW, gradient clipping, frame cross entropy)\n\n"
        f"| mode | frames/batch | frames/s | s/step | TFLOP/s (6 x weights x frames) | share of {args.peak_tflops:g} TFLOP/s peak | peak memory | last loss |\n"
        f"|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for r in rows:
        text += (f"| {r['mode']} | {r['utts'] * args.frames} | {r['frames_per_second']:,.0f} | {r['seconds_per_step']:.4f} | "
                 f"{r['achieved_tflops']:.1f} | {100 * r['peak_fraction']:.1f}% | {r['peak_memory_gib']:.1f} GiB | {r['final_loss']:.3f} |\n")
    print(text)
    if args.results is not None:
        from _results import write_section  # bench/_results.py, beside this script

        write_section(args.results, "## DNN training throughput", text)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
