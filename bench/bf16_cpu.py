"""bf16 training on the CPU (``train.amp: bf16-cpu``) against float32, side by side in one run.

For each network (mini's teacher, the compressed student, and the paper's DNN) it times training
steps (forward, loss, backward, AdamW step) on one thread, on random features of a 20-second batch
(8 utterances of 250 frames), alternating float32 and bf16 autocast rounds; the median of the
rounds is reported with the ratio. Whether bf16 is faster depends on the CPU: with AMX or AVX512-BF16
(listed in the section) oneDNN runs bf16 matrix products natively; without them it may be slower.
Whether it trains as well is a separate measurement on real data: the dev frame accuracy of the
same network trained both ways (bench/hybrid_capacity.py with a variant ``amp=bf16-cpu``).

A fixed batch shape flatters bf16: oneDNN prepares its kernels per shape, and a recipe's batches
(whole utterances, bucketed by duration) change shape at every step. With ``--data`` and ``--exp``
(a recipe run's folders, stage 3 done) the script also times the real thing: the stage-4 training
loop (``train_frame_classifier``, its data loader and sampler, ``--train-config``'s batches) of
mini's DNN on that run's alignments, ``--loop-steps`` steps per round, float32 and bf16 rounds
alternating, CPU seconds of the process (the loader runs in it: ``num_workers`` 0).

    python bench/bf16_cpu.py [--rounds 5] [--steps 10] [--no-paper]
        [--data recipes/librispeech/data --exp recipes/librispeech/exp [--alignments dnn]]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from asr_kd.config import TrainConfig, load_config
from asr_kd.models.dnn import SplicedDnn, dnn_preset
from asr_kd.stages.common import read_senones
from asr_kd.stages.layout import RecipeLayout
from asr_kd.train.frame_classifier import train_frame_classifier
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
    return {"network": name, "classes": num_classes,
            **alternate(rounds, lambda: step_seconds(model, opt, x, lens, y, steps, False),
                        lambda: step_seconds(model, opt, x, lens, y, steps, True))}


def alternate(rounds: int, fp32_round, bf16_round) -> dict:
    """Run ``rounds`` float32 and bf16 rounds in turn (each returns seconds per step); return their
    medians in ms, the ratio of the medians and the spread of the rounds' own ratios."""
    fp32, bf16 = [], []
    for _ in range(rounds):
        fp32.append(fp32_round())
        bf16.append(bf16_round())
    a, b = statistics.median(fp32), statistics.median(bf16)
    # Each round's own ratio (its float32 and bf16 steps ran back to back): their spread is the noise.
    ratios = [f / g for f, g in zip(fp32, bf16)]
    return {"fp32_ms": 1000 * a, "bf16_ms": 1000 * b, "speedup": a / b, "speedup_min": min(ratios), "speedup_max": max(ratios)}


def loop_seconds(layout: RecipeLayout, num_classes: int, train_config: TrainConfig, steps: int, amp: str) -> float:
    """Return the CPU seconds per step of ``steps`` steps of stage 4's training loop (mini's DNN,
    no dev scoring, no checkpoint before the end) with ``train.amp`` = ``amp``. ``max_steps`` ends
    the run (as many epochs as it takes), so every round trains exactly ``steps`` steps."""
    cfg = dataclasses.replace(train_config, amp=amp, num_epochs=10**6, max_steps=steps, num_workers=0, checkpoint_every_steps=10**9,
                              log_every_steps=10**9, device="cpu")
    with tempfile.TemporaryDirectory() as exp_dir:
        start = time.process_time()
        train_frame_classifier(layout.ali_cuts(layout.train_part), None, layout.cmvn(layout.train_part), None, num_classes,
                               dnn_preset("mini"), cfg, exp_dir)
        return (time.process_time() - start) / steps


def measure_loop(layout: RecipeLayout, train_config: TrainConfig, rounds: int, steps: int) -> dict:
    num_classes = read_senones(layout).num_senones
    loop_seconds(layout, num_classes, train_config, 2, "none")  # warm-up: imports, manifests, both kernels
    loop_seconds(layout, num_classes, train_config, 2, "bf16-cpu")
    return {"classes": num_classes, **alternate(rounds, lambda: loop_seconds(layout, num_classes, train_config, steps, "none"),
                                                lambda: loop_seconds(layout, num_classes, train_config, steps, "bf16-cpu"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating float32/bf16 rounds (median reported; default 5)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per round (default 10; the paper DNN takes 2)")
    parser.add_argument("--no-paper", action="store_true", help="skip the paper-sized DNN (about a minute)")
    parser.add_argument("--data", type=Path, default=None, help="a recipe run's data folder: also time its real training loop")
    parser.add_argument("--exp", type=Path, default=None, help="that run's experiment folder (stage 3 done)")
    parser.add_argument("--alignments", choices=("gmm", "dnn"), default="dnn",
                        help="whose alignments the loop trains on (run.sh's --alignments; default dnn, as the presets)")
    parser.add_argument("--train-config", type=Path, default=ROOT / "recipes" / "librispeech" / "conf" / "train_students_mini.yaml",
                        help="TrainConfig of the loop (its batches and optimiser; default the mini teachers' and students')")
    parser.add_argument("--loop-rounds", type=int, default=3, help="alternating float32/bf16 rounds of the loop (default 3)")
    parser.add_argument("--loop-steps", type=int, default=100, help="training steps per round of the loop (default 100)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    if (args.data is None) != (args.exp is None):
        parser.error("--data and --exp go together")
    torch.set_num_threads(1)
    rows = []
    for name, classes in NETWORKS.items():
        if name == "paper" and args.no_paper:
            continue
        rows.append(measure(name, classes, args.rounds, 2 if name == "paper" else args.steps))
        r = rows[-1]
        print(f"{name}: float32 {r['fp32_ms']:.1f} ms/step, bf16 {r['bf16_ms']:.1f} ms/step, {r['speedup']:.2f}x", flush=True)
    loop = None
    if args.data is not None:
        logging.getLogger("asr_kd").setLevel(logging.WARNING)
        layout = RecipeLayout(args.data, args.exp, alignments=args.alignments)
        loop = measure_loop(layout, load_config(TrainConfig, args.train_config), args.loop_rounds, args.loop_steps)
        print(f"training loop: float32 {loop['fp32_ms']:.1f} ms/step, bf16 {loop['bf16_ms']:.1f} ms/step, {loop['speedup']:.2f}x", flush=True)
    command = " ".join(["python bench/bf16_cpu.py", *sys.argv[1:]])
    lines = [HEADING, "", f"Produced by `{command}` on {cpu_name()} (flags: {cpu_flags()}), one thread, torch {torch.__version__}. "
             f"A training step on random features of a 20-second batch ({BATCH} x {FRAMES} frames): forward, cross-entropy, backward, "
             f"AdamW; median of {args.rounds} alternating rounds; float32 against bf16 autocast (`train.amp: bf16-cpu`).", "",
             "| Network | Senones | float32 ms / step | bf16 ms / step | Speed-up | Rounds' speed-ups (min-max) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['classes']} | {r['fp32_ms']:.1f} | {r['bf16_ms']:.1f} | {r['speedup']:.2f}x "
                     f"| {r['speedup_min']:.2f}-{r['speedup_max']:.2f}x |")
    if loop is not None:
        rel = args.train_config.resolve().relative_to(ROOT) if args.train_config.resolve().is_relative_to(ROOT) else args.train_config
        lines += ["", f"The real training loop: stage 4's `train_frame_classifier` with its data loader (in the process) on "
                  f"{args.exp}'s {args.alignments} alignments of {layout.train_part}, mini's DNN, {loop['classes']} senones, `{rel}`'s "
                  f"batches (whole utterances bucketed by duration, so the batch shape changes at every step); "
                  f"{args.loop_steps} steps a round, median of {args.loop_rounds} alternating rounds, CPU ms per step (building the "
                  f"network and writing its final checkpoint included, which pulls the ratio towards 1).", "",
                  "| Network | Senones | float32 ms / step | bf16 ms / step | Speed-up | Rounds' speed-ups (min-max) |",
                  "|---|---|---|---|---|---|",
                  f"| mini, training loop | {loop['classes']} | {loop['fp32_ms']:.1f} | {loop['bf16_ms']:.1f} | {loop['speedup']:.2f}x "
                  f"| {loop['speedup_min']:.2f}-{loop['speedup_max']:.2f}x |"]
    lines += ["", "The speed-up holds on CPUs that run bf16 natively (the flags above); elsewhere measure before choosing "
              "`bf16-cpu`. The recipe's configs train in float32 unless a config says `amp: bf16-cpu`. Random features and "
              "weights: this measures speed only, not what bf16 does to accuracy.", ""]
    write_section(args.results, HEADING, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
