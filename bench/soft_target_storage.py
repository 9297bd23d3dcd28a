"""Compact teacher storage against accuracy (issue 14): for each soft-target format (kd.storage,
kd.top_k, kd.codebooks) the bytes per frame, what the stored targets lose of the ensemble's
posteriors, and the dev frame accuracy and test WER of a distilled student trained from them.

It reuses a finished recipe run (``make demo``: stages 3-7): its teachers, its alignments, and its
distilled students' settings (network, training, kd, from their stage-6 records), so the only
thing that changes between rows is the format. For each format it runs stage 5's code into a
shadow experiment folder (``--work``: links to the run's stage 3/4 folders, its own soft targets
and students), trains the distilled student with seed 0 (stage 6's code), and scores it with
stage 7's code at the acoustic scale the recipe tuned for its distilled student, so every row is
decoded alike (``--tune-scale``: at its own scale tuned on dev, as stage 7 tunes each system's, which
is fairer to a format whose student's posteriors are sharper or flatter than the reference's). The reference row is the recipe's own seed-0 distilled student, trained from the
format the recipe used (a format equal to it is not trained again), and the recipe's seed-0
hard-label baseline is the control row: a format that lost the teachers' knowledge would fall
towards it. The recipe's distilled seeds give the seed-to-seed spread that "within noise" is
judged against:

- test WER: a paired bootstrap interval (per utterance) of the difference to the reference;
- dev frame accuracy: within noise when the difference is at most twice the standard deviation
  of the recipe's seeds.

Disk for LibriSpeech's 960 h: bytes per frame x 345 million 10-ms frames (plus the codebooks).

    python bench/soft_target_storage.py --data recipes/librispeech/data --exp recipes/librispeech/exp \
        [--formats int32-fp16:20 uint16-uint8:20 uint16-uint8:5 rvq:8 rvq:16] [--work DIR] [--jobs 2]

A format is ``storage:k`` for top-k formats and ``rvq:n[:k]`` (n one-byte codes, decoded to the
top k, default the run's kd.top_k: 500 since the recipe decodes every senone of mini, when the
default ``rvq:8`` is the reference itself and skipped: give ``rvq:8:20`` for the top 20). Needs
stages 3-7 of a recipe run; without one it says so and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from asr_kd.config import DecodeConfig, DnnConfig, KdConfig, TrainConfig
from asr_kd.metrics.paired import bootstrap_difference, bootstrap_gain_share
from asr_kd.stages.common import with_recorded_alignments
from asr_kd.stages.decode_part import tuned_scale
from asr_kd.stages.layout import RecipeLayout
from asr_kd.launch import launch_jobs
from asr_kd.stages.provenance import read_record
from asr_kd.stages.s5_soft_targets import make_soft_targets
from asr_kd.stages.s6_students import train_student
from asr_kd.stages.s7_decode import per_utterance_counts, per_utterance_path, score_system
from asr_kd.train.frame_classifier import load_frame_classifier
from asr_kd.utils import read_json

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

HEADING = "## Compact teacher storage against accuracy"
FRAMES_960H = 345_000_000  # LibriSpeech 960 h in 10-ms frames
SHADOWED = ("soft_targets", "students", "decode", "temperature_sweep", "three_percent", "storage_bench")


def parse_format(spec: str, base: KdConfig) -> KdConfig:
    """``storage:k`` or ``rvq:n[:k]`` -> the kd config of that format."""
    parts = spec.split(":")
    if parts[0] == "rvq":
        k = int(parts[2]) if len(parts) > 2 else base.top_k
        return dataclasses.replace(base, storage="rvq", codebooks=int(parts[1]), top_k=k)
    return dataclasses.replace(base, storage=parts[0], top_k=int(parts[1]) if len(parts) > 1 else base.top_k)


def format_name(kd: KdConfig) -> str:
    return f"rvq{kd.codebooks}_k{kd.top_k}" if kd.storage == "rvq" else f"{kd.storage}_k{kd.top_k}"


def shadow_layout(ref: RecipeLayout, work: Path) -> RecipeLayout:
    """A layout that reads the run's stage 0-4 outputs and writes its own stages 5-7."""
    exp = work / "exp"
    exp.mkdir(parents=True, exist_ok=True)
    for entry in ref.exp_dir.iterdir():
        link = exp / entry.name
        if entry.name not in SHADOWED and not link.exists():
            os.symlink(entry.resolve(), link)
    return dataclasses.replace(ref, exp_dir=exp)


def _typed(cls, data: dict):
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields})


def gain_shares(ref: RecipeLayout, layout: RecipeLayout, baselines: list[str], students: list[str]) -> list[dict]:
    """For each student (the recipe's own ``distilled`` under ``ref``, the bench's under ``layout``),
    the share of the ensemble's test frame-accuracy gain over the mean of ``baselines`` that it
    keeps: :func:`asr_kd.metrics.paired.bootstrap_gain_share` over the test utterances."""
    base = per_utterance_counts(ref, baselines, ref.test_part)
    ensemble = per_utterance_counts(ref, ["ensemble"], ref.test_part)
    out = []
    for name in students:
        student = per_utterance_counts(ref if name == "distilled" else layout, [name], ref.test_part)
        out.append(bootstrap_gain_share(base["correct"], ensemble["correct"], student["correct"], base["frames"]).to_dict())
    return out


def _share_cell(share: dict | None) -> str:
    return "" if share is None else f"{100 * share['value']:.0f}% [{100 * share['low']:.0f}, {100 * share['high']:.0f}]"


def section_heading(title: str | None) -> str:
    """The section's heading, which ``write_section`` matches: the default, or ``## <title>`` (--title)."""
    return HEADING if title is None else f"## {title}"


def first_line(title: str | None) -> str:
    """The section's first line: its heading, then the bench's name."""
    return f"{section_heading(title)} (bench/soft_target_storage.py)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("recipes/librispeech/data"), help="the recipe's data folder")
    p.add_argument("--exp", type=Path, default=Path("recipes/librispeech/exp"), help="the recipe's experiment folder (stages 3-7 done)")
    p.add_argument("--formats", nargs="+", default=["int32-fp16:20", "uint16-uint8:20", "uint16-uint8:5", "rvq:8", "rvq:16"],
                   help="formats to compare with the run's own (storage:k or rvq:n[:k])")
    p.add_argument("--work", type=Path, default=None, help="shadow experiment folder (default: <exp>/storage_bench)")
    p.add_argument("--jobs", type=int, default=2, help="students trained at once (one torch thread each)")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    p.add_argument("--tune-scale", action="store_true",
                   help="decode each format's student at its own dev-tuned acoustic scale, as stage 7 does for each system "
                        "(default: at the recipe's distilled student's scale, every row alike)")
    p.add_argument("--title", default=None,
                   help="the section's title, to keep runs on several corpora side by side (default: 'Compact teacher storage against accuracy')")
    args = p.parse_args(argv)
    ref = with_recorded_alignments(RecipeLayout(args.data, args.exp))
    table1 = ref.decode / "table1.json"
    student_rec = read_record(ref.student_dir("distilled"))
    decode_rec = read_record(ref.decode)
    if student_rec is None or decode_rec is None or not table1.is_file():
        print(f"soft_target_storage: no finished recipe run under {args.exp} (stages 3-7); run `make demo` first. Skipped.")
        return 0
    cfg = student_rec.config
    dnn, train = _typed(DnnConfig, cfg["dnn"]), _typed(TrainConfig, cfg["train"])
    train = dataclasses.replace(train, seed=train.seed - 1000)  # train_student adds the student offset back
    # Records made before kd.storage existed stored int32-fp16 targets.
    base_kd = dataclasses.replace(_typed(KdConfig, cfg["kd"]), storage=cfg["kd"].get("storage", "int32-fp16"))
    decode = _typed(DecodeConfig, decode_rec.config["decode"])
    scale = tuned_scale(ref, "distilled") or decode.acoustic_scale
    # --tune-scale: each row's own dev-tuned scale, searched over the recipe's grid and the reference's scale.
    grid = tuple(sorted({*(decode.acoustic_scales or (decode.acoustic_scale,)), scale})) if args.tune_scale else ()
    layout = shadow_layout(ref, args.work or args.exp / "storage_bench")
    kds = [kd for kd in (parse_format(s, base_kd) for s in args.formats) if format_name(kd) != format_name(base_kd)]
    command = "bench/soft_target_storage.py"
    stats = [make_soft_targets(layout, kd, command=command) for kd in kds]
    students = launch_jobs(train_student, [(layout, "distilled", dnn, train, kd, None, None, command, 0,
                                            layout.exp_dir / "students" / format_name(kd)) for kd in kds], jobs=args.jobs)
    results = [{"stats": st, "student": su} for st, su in zip(stats, students)]

    stored = read_json(table1)
    seeds = sorted(n for n in stored if n == "distilled" or n.startswith("distilled_seed"))
    seed_dev = [stored[n][ref.dev_part]["frame_accuracy"] for n in seeds]
    noise = 2 * float(np.std(seed_dev, ddof=1)) if len(seed_dev) > 1 else float("nan")
    ref_counts = read_json(per_utterance_path(ref, "distilled", ref.test_part))
    ref_summary = read_json(ref.student_dir("distilled") / "summary.json")
    ref_stats = read_json(ref.soft_root / ref_summary["soft_targets_dir"] / "stats.json")
    words = {"int32-fp16": "int32 ids + fp16", "uint16-uint8": "uint16 ids + uint8 log-probs", "rvq": "RVQ, {} codebooks"}
    rows = [(f"{words[base_kd.storage].format(base_kd.codebooks)}, top {base_kd.top_k} (the recipe's: reference)", int(ref_stats["bytes_per_frame"]),
             int(ref_stats.get("codebook_bytes", 0)), ref_stats, stored["distilled"][ref.dev_part]["frame_accuracy"],
             stored["distilled"][ref.test_part], None, None)]
    utts = sorted(ref_counts)
    denominator = np.array([ref_counts[u][1] for u in utts])
    for kd, result in zip(kds, results):
        name = format_name(kd)
        model = load_frame_classifier(layout.exp_dir / "students" / name / "final.pt")
        dev = score_system(name, [model], layout, ref.dev_part, grid, decode)
        row_scale = dev.acoustic_scale if args.tune_scale and dev.acoustic_scale is not None else scale
        test = score_system(name, [model], layout, ref.test_part, (row_scale,), decode)
        counts = read_json(per_utterance_path(layout, name, ref.test_part))
        diff = bootstrap_difference(np.array([ref_counts[u][0] for u in utts]), np.array([counts[u][0] for u in utts]), denominator)
        codebook = int(result["stats"].get("codebook_bytes", 0))
        rows.append((f"{words[kd.storage].format(kd.codebooks)}, top {kd.top_k}", int(result["stats"]["bytes_per_frame"]), codebook, result["stats"],
                     dev.frame_accuracy, dataclasses.asdict(test), diff, result["student"]))
        print(f"{name}: {result['stats']['bytes_per_frame']} B/frame, dev frame acc {dev.frame_accuracy:.4f}, test WER {test.wer:.4f} "
              f"(diff {diff.value:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}])", flush=True)

    ref_dev = rows[0][4]
    baselines = sorted(n for n in stored if n == "baseline" or n.startswith("baseline_seed"))
    shares = gain_shares(ref, layout, baselines, ["distilled", *(format_name(kd) for kd in kds)])
    hard = stored["baseline"]
    hard_diff = bootstrap_difference(np.array([ref_counts[u][0] for u in utts]),
                                     np.array([read_json(per_utterance_path(ref, "baseline", ref.test_part))[u][0] for u in utts]), denominator)
    rows.append(("no soft targets: the recipe's hard-label baseline (control)", 0, 0, None, hard[ref.dev_part]["frame_accuracy"],
                 hard[ref.test_part], hard_diff, None))
    lines = [first_line(args.title), "",
             f"`python bench/soft_target_storage.py --data {args.data} --exp {args.exp} --formats {' '.join(args.formats)}"
             + (" --tune-scale" if args.tune_scale else "") + (f" --title {shlex.quote(args.title)}" if args.title else "") + "`: the "
             f"recipe run's {len(seeds)} distilled seeds are the reference; each other row is a distilled student (seed 0, the same "
             f"network, training and kd settings: T = {base_kd.temperature:g}, {base_kd.fusion} mean of the teachers) trained from "
             f"targets stored in that format, "
             + (f"each decoded at the acoustic scale tuned for it on dev over {', '.join(f'{x:g}' for x in grid)} "
                "(the reference and the control at the scales stage 7 tuned for them), shown beside its WER. " if args.tune_scale else
                f"decoded at the distilled student's dev-tuned acoustic scale ({scale:g}). ")
             + f"Seed-to-seed spread of the reference's dev frame accuracy: {', '.join(f'{100 * a:.2f}%' for a in seed_dev)} "
             f"(within noise: a difference of at most 2 sd = {100 * noise:.2f} points).", "",
             f"Share kept: of the ensemble's {ref.test_part} frame-accuracy gain over the recipe's hard-label baseline "
             f"({len(baselines)} seeds averaged per utterance), what the row's student keeps, with its paired bootstrap interval "
             "over utterances (stage 7's share, for one student seed).", "",
             "| format | bytes / frame | 960 h on disk | mass kept | KL(stored ‖ full), nats | dev frame acc. | Δ vs ref. | "
             f"share kept [95% CI] | {ref.test_part} WER{' (scale)' if args.tune_scale else ''} | Δ WER vs ref. (95% CI) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (label, bpf, codebook, stats, dev_acc, test, diff, _), share in zip(rows, [*shares, None]):
        disk = (bpf * FRAMES_960H + codebook) / 1e9
        delta = dev_acc - ref_dev
        tuned = f" ({test['acoustic_scale']:g})" if args.tune_scale else ""
        kept = "" if stats is None else f"{stats['mean_mass_kept']:.3f} | {stats['mean_kl_stored_vs_full']:.3f}"
        if diff is None:
            d_wer, verdict, d_acc = "", "reference", ""
        else:
            d_wer = f"{100 * diff.value:+.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}]"
            acc = "within noise" if abs(delta) <= noise else ("better" if delta > 0 else "worse")
            wer = "within noise" if diff.low <= 0 <= diff.high else ("better" if diff.high < 0 else "worse")
            verdict = "within noise" if acc == wer == "within noise" else f"frame acc. {acc}, WER {wer}"
            d_acc = f"{100 * delta:+.2f}"
        lines.append(f"| {label} | {bpf} | {disk:.1f} GB | {kept or ' | '} | "
                     f"{100 * dev_acc:.2f}% | {d_acc} | {_share_cell(share)} | {100 * test['wer']:.2f}%{tuned} | {d_wer} | {verdict} |")
    lines += ["", "Mass kept and KL are of what a student reads back (decoded codes, dequantised probabilities) against the ensemble's "
              "full posterior, over all training frames. 960 h disk: bytes per frame x 345 million frames"
              + (", plus the codebooks" if any(r[2] for r in rows) else "") + "."]
    write_section(args.results, section_heading(args.title), "\n".join(lines) + "\n")
    (layout.exp_dir / "storage_bench.json").write_text(json.dumps([{"format": r[0], "bytes_per_frame": r[1], "dev_frame_accuracy": r[4],
                                                                    "test_wer": r[5]["wer"], "test_gain_share": share}
                                                                   for r, share in zip(rows, [*shares, None])], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
