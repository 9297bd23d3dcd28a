"""bf16 training on the CPU (``train.amp: bf16-cpu``) against float32, side by side in one run.

For each network (mini's teacher, the compressed student, and the paper's DNN) it times training
steps (forward, loss, backward, AdamW step) on one thread, on random features of a 20-second batch
(8 utterances of 250 frames), alternating float32 and bf16 autocast rounds; the median of the
rounds is reported with the ratio. Whether bf16 is faster depends on the CPU: with AMX or AVX512-BF16
(listed in the section) oneDNN runs bf16 matrix products natively; without them it may be slower.
Whether it trains as well is a separate measurement on real data: the dev frame accuracy of the
same network trained both ways (bench/hybrid_capacity.py with a variant ``amp=bf16-cpu``).

    python bench/bf16_cpu.py [--rounds 5] [--steps 10] [--no-paper]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from asr_kd.models.dnn import SplicedDnn, dnn_preset
from asr_kd.train.state import seed_everything

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## bf16 training on the CPU (bench/bf16_cpu.py)"
NETWORKS = {"mini": 500, "mini-compressed": 500, "paper": 4200}
BATCH, FRAMES = 8, 250


def cpu_flags() -> str:
    """Return the CPU's bf16-related feature flags (Linux), or "unknown"."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in flags if f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")]
    return ", ".join(wanted) or "none of amx_bf16, avx512_bf16, avx512f, avx2"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def step_seconds(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, lens: torch.Tensor, y: torch.Tensor,
                 steps: int, bf16: bool) -> float:
    """Return the CPU seconds per training step (``steps`` of them) with or without bf16 autocast."""
    start = time.process_time()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x, lens)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.process_time() - start) / steps


def measure(name: str, num_classes: int, rounds: int, steps: int) -> dict:
    seed_everything(0)
    cfg = dnn_preset(name)
    model = SplicedDnn(cfg, num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, FRAMES, cfg.feature_dim, generator=gen)
    lens = torch.full((BATCH,), FRAMES)
    y = torch.randint(0, num_classes, (BATCH, FRAMES), generator=gen)
    step_seconds(model, opt, x, lens, y, 1, False)  # warm-up of both kernels
    step_seconds(model, opt, x, lens, y, 1, True)
    fp32, bf16 = [], []
    for _ in range(rounds):
        fp32.append(step_seconds(model, opt, x, lens, y, steps, False))
        bf16.append(step_seconds(model, opt, x, lens, y, steps, True))
    a, b = statistics.median(fp32), statistics.median(bf16)
    # Each round's own ratio (its float32 and bf16 steps ran back to back): their spread is the noise.
    ratios = [f / g for f, g in zip(fp32, bf16)]
    return {"network": name, "classes": num_classes, "fp32_ms": 1000 * a, "bf16_ms": 1000 * b, "speedup": a / b,
            "speedup_min": min(ratios), "speedup_max": max(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating float32/bf16 rounds (median reported; default 5)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per round (default 10; the paper DNN takes 2)")
    parser.add_argument("--no-paper", action="store_true", help="skip the paper-sized DNN (about a minute)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, classes in NETWORKS.items():
        if name == "paper" and args.no_paper:
            continue
        rows.append(measure(name, classes, args.rounds, 2 if name == "paper" else args.steps))
        r = rows[-1]
        print(f"{name}: float32 {r['fp32_ms']:.1f} ms/step, bf16 {r['bf16_ms']:.1f} ms/step, {r['speedup']:.2f}x", flush=True)
    command = " ".join(["python bench/bf16_cpu.py", *sys.argv[1:]])
    lines = [HEADING, "", f"Produced by `{command}` on {cpu_name()} (flags: {cpu_flags()}), one thread, torch {torch.__version__}. "
             f"A training step on random features of a 20-second batch ({BATCH} x {FRAMES} frames): forward, cross-entropy, backward, "
             f"AdamW; median of {args.rounds} alternating rounds; float32 against bf16 autocast (`train.amp: bf16-cpu`).", "",
             "| Network | Senones | float32 ms / step | bf16 ms / step | Speed-up | Rounds' speed-ups (min-max) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['classes']} | {r['fp32_ms']:.1f} | {r['bf16_ms']:.1f} | {r['speedup']:.2f}x "
                     f"| {r['speedup_min']:.2f}-{r['speedup_max']:.2f}x |")
    lines += ["", "The speed-up holds on CPUs that run bf16 natively (the flags above); elsewhere measure before choosing "
              "`bf16-cpu`. The recipe's configs train in float32 unless a config says `amp: bf16-cpu`. Random features and "
              "weights: this measures speed only, not what bf16 does to accuracy.", ""]
    write_section(args.results, HEADING, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
