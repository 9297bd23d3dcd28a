"""Distillation costs, side by side on one recipe run: student training step time with stored
soft targets (a student's first epoch, and its later ones, which read the decoded targets from
memory) vs hard labels only vs online teachers, bytes per frame of the stored targets vs
dense float32, and the hybrid decoding real-time factor per core.

Needs a finished recipe run through stage 6 (``make demo``, or ``run.sh --stop-stage 6``): it
reads ``<exp>/soft_targets``, ``<exp>/teachers`` and ``<exp>/students/distilled``. Steps are
timed on the same batches (same cuts, same order) for the four kinds, in interleaved rounds
(median of the rounds), data loading and collation included: a step is "batch from the cuts ->
forward -> backward -> optimizer step". Decoding: the distilled student's test posteriors with
one process, RTF = CPU seconds of the search / seconds of audio. Writes its section of
bench/RESULTS.md.

    python bench/kd_speed.py [--data recipes/librispeech/data] [--exp recipes/librispeech/exp] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from lhotse import CutSet

from asr_kd.config import SENONES_FIELD, DecodeConfig, KdConfig, load_config
from asr_kd.data.frames import FrameDataset, make_sampler
from asr_kd.decode.hclg import load_hclg
from asr_kd.decode.hybrid import decode_posteriors_batch
from asr_kd.decode.priors import load_priors
from asr_kd.gmm.train import GmmSystem
from asr_kd.kd.ensemble import TeacherEnsemble
from asr_kd.kd.soft_targets import bytes_per_frame
from asr_kd.kd.ensemble import ensemble_log_posteriors
from asr_kd.stages.common import load_teachers, model_checkpoint, read_senones, with_recorded_alignments
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import read_record
from asr_kd.kd.student import OnlineDistillationLoss, StoredDistillationLoss
from asr_kd.models.dnn import SplicedDnn
from asr_kd.train.frame_classifier import frame_cross_entropy, load_frame_classifier
from asr_kd.train.state import seed_everything

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Distillation step time, stored targets and decoding speed (bench/kd_speed.py)"


def time_steps(kind: str, batches_cuts: list[CutSet], layout: RecipeLayout, kd: KdConfig, teachers: list[torch.nn.Module]) -> tuple[float, int]:
    """Return (seconds, frames, bytes its dataset keeps of decoded targets) of training steps of a
    fresh student on ``batches_cuts``. Kind
    ``stored-later`` is ``stored`` with the batches' decoded targets already in the dataset's
    memory (:class:`asr_kd.data.stored_targets.DecodedTargetCache`), as in every epoch after the
    first; the warm-up pass is not timed."""
    senones = read_senones(layout)
    student_cfg = load_frame_classifier(model_checkpoint(layout.student_dir("distilled"))).cfg
    seed_everything(0)
    model = SplicedDnn(student_cfg, senones.num_senones)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dataset = FrameDataset(layout.open_cmvn(layout.train_part), SENONES_FIELD, senones.num_senones, soft_targets=kind.startswith("stored"))
    if kind == "stored-later":
        for cuts in batches_cuts:
            dataset[cuts]
    if kind == "hard":
        loss_fn = frame_cross_entropy
    elif kind.startswith("stored"):
        loss_fn = StoredDistillationLoss(kd)
    else:
        loss_fn = OnlineDistillationLoss(TeacherEnsemble(teachers, kd.fusion), kd)
    frames = 0
    start = time.perf_counter()
    for cuts in batches_cuts:
        batch = dataset[cuts]
        frames += int(batch["lengths"].sum())
        loss, _ = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start, frames, dataset.target_cache.bytes


def _spread(seconds: list[float], hard: list[float]) -> str:
    """Lowest, median and highest per-round overhead of ``seconds`` over ``hard`` (same rounds)."""
    ratios = sorted(100 * (a / b - 1) for a, b in zip(seconds, hard))
    return f"{ratios[0]:+.1f} / {statistics.median(ratios):+.1f} / {ratios[-1]:+.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "recipes" / "librispeech" / "data")
    parser.add_argument("--exp", type=Path, default=ROOT / "recipes" / "librispeech" / "exp")
    parser.add_argument("--steps", type=int, default=30, help="training steps per kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-duration", type=float, default=30.0, help="seconds of audio per training batch")
    parser.add_argument("--decode-utts", type=int, default=40, help="test utterances decoded for the RTF")
    parser.add_argument("--beams", type=float, nargs="+", default=[8.0, 13.0], help="decoding beams (8: the mini recipe's; 13: Kaldi's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: per-core numbers)")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    args = parser.parse_args()
    layout = with_recorded_alignments(RecipeLayout(args.data, args.exp))
    summary = layout.student_dir("distilled") / "summary.json"
    made = json.loads(summary.read_text()).get("soft_targets") if read_record(layout.student_dir("distilled")) else None
    soft_dir = None if not made else layout.soft_dir(made["num_teachers"], made["fusion"], made["temperature"], made["top_k"],
                                                     made.get("storage", "int32-fp16"), made.get("codebooks", 8), made.get("tail", "renormalise"))
    if soft_dir is None or not layout.soft_cuts(soft_dir).is_file():
        print(f"kd_speed: skipped, the distilled student (stored soft targets) of {layout.exp_dir} is missing: run `make demo` (stages 0-6) first")
        return
    torch.set_num_threads(args.threads)
    kd = load_config(KdConfig, soft_dir / "kd.yaml")
    teachers = load_teachers(layout)
    sampler = make_sampler(CutSet.from_cuts(layout.open_cuts(layout.soft_cuts(soft_dir))), args.max_duration, shuffle=True, seed=0, bucketing=True)
    batches = [b for _, b in zip(range(args.steps), sampler)]

    kinds = ("hard", "stored", "stored-later", "online")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    frames, held = {}, {}
    for _ in range(args.rounds):
        for kind in kinds:  # interleaved, so that load changes hit every kind alike
            sec, frames[kind], held[kind] = time_steps(kind, batches, layout, kd, teachers)
            times[kind].append(sec)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_step = {k: 1000 * med[k] / len(batches) for k in kinds}

    stats = json.loads((soft_dir / "stats.json").read_text())
    # What the decoded targets take in memory (DecodedTargetCache), per frame of the timed batches.
    cache_bytes = held["stored-later"] / max(sum(c.num_frames for cuts in batches for c in cuts), 1)
    storage = soft_dir / f"storage_{layout.train_part}"
    on_disk = sum(p.stat().st_size for p in storage.rglob("*") if p.is_file()) / max(stats["frames"], 1)
    senones = read_senones(layout)
    dense = bytes_per_frame(senones.num_senones, ["float32"])  # one dense float32 posterior per frame

    model = load_frame_classifier(model_checkpoint(layout.student_dir("distilled")))
    test = CutSet.from_cuts(layout.open_cuts(layout.ali_cuts(layout.test_part))).subset(first=args.decode_utts)
    posteriors = {c.id: lp.numpy() for c, lp in ensemble_log_posteriors([model], test, layout.open_cmvn(layout.test_part))}
    audio = sum(c.duration for c in test)
    trans_model = GmmSystem.load(senones.model).tm
    hclg = load_hclg(senones.graph)
    priors = load_priors(layout.log_priors, trans_model.num_pdfs)
    decode_rows = []
    for beam in args.beams:
        cfg = DecodeConfig(num_jobs=1, beam=beam, max_active=3000 if beam < 10 else DecodeConfig().max_active)
        cpu0 = time.process_time()
        result = decode_posteriors_batch(hclg, trans_model, posteriors, priors, cfg)
        rtf = (time.process_time() - cpu0) / audio
        decode_rows.append(f"| {beam:g} | {cfg.max_active} | {rtf:.3f} | {1 / rtf:.0f} | {len(result.failed)} |\n")

    overhead = 100 * (med["stored"] / med["hard"] - 1)
    later = 100 * (med["stored-later"] / med["hard"] - 1)
    online = 100 * (med["online"] / med["hard"] - 1)
    text = (
        f"{HEADING}\n\n`python bench/kd_speed.py --data {args.data} --exp {args.exp} --steps {args.steps} --rounds {args.rounds} "
        f"--max-duration {args.max_duration:g} --threads {args.threads}` on "
        f"{platform.machine()} ({platform.processor() or 'cpu'}), torch {torch.__version__}, {args.threads} thread(s); recipe run in "
        f"`{args.exp}` ({len(teachers)} teachers, student {model.cfg.num_hidden_layers} x {model.cfg.hidden_dim}, "
        f"{senones.num_senones} senones, top-{stats['top_k']} at T = {stats['temperature']}).\n\n"
        f"Training steps ({len(batches)} batches of up to {args.max_duration:g} s, {frames['hard']} frames; median of {args.rounds} interleaved rounds; "
        "loading and collating the batch included):\n\n"
        "| Student targets | ms per step | frames/s | vs hard labels |\n|---|---|---|---|\n"
        + "".join(f"| {k} | {per_step[k]:.1f} | {frames[k] / med[k]:.0f} | {100 * (med[k] / med['hard'] - 1):+.1f}% |\n" for k in kinds)
        + f"\nStored soft targets cost {overhead:+.1f}% per step over hard labels only in a student's first epoch, "
        f"{later:+.1f}% in the later ones (`stored-later`: decoded targets kept in memory; goal: under 10%); online teachers "
        f"{online:+.1f}% ({len(teachers)} teacher forward passes per step). Round to round (each kind's time against the "
        f"hard labels' of the same round; lowest, median and highest of {args.rounds}): "
        + "; ".join(f"{k} {_spread(times[k], times['hard'])}" for k in kinds[1:]) + ".\n\n"
        f"Storage: {stats['bytes_per_frame']} bytes per frame payload (top-{stats['top_k']}, kd.storage {stats.get('storage', 'int32-fp16')}), "
        f"{on_disk:.1f} bytes per frame on disk (with .npy headers), vs {dense} bytes per frame dense float32 "
        f"({dense / stats['bytes_per_frame']:.0f}x); mean KL(stored || full) {stats['mean_kl_stored_vs_full']:.4f} nats, "
        f"mass kept {stats['mean_mass_kept']:.3f}. Decoded targets kept in memory for the later epochs: "
        f"{cache_bytes:.0f} bytes per frame ({cache_bytes * stats['frames'] / 1e9:.2f} GB for the {stats['frames']:,} training frames; "
        "a process keeps up to 2 GiB; only codes are decoded and kept, so 0 for the other formats)."
        "\n\n"
        f"Hybrid decoding of the distilled student's posteriors ({DecodeConfig().decoder} decoder, one process, acoustic scale "
        f"{DecodeConfig().acoustic_scale:g}): {len(posteriors)} test utterances, {audio:.0f} s of audio; RTF = CPU seconds / audio seconds.\n\n"
        "| beam | max active | RTF per core | x real time | failed |\n|---|---|---|---|---|\n" + "".join(decode_rows)
    )
    write_section(args.results, HEADING, text)
    print(text)


if __name__ == "__main__":
    main()
