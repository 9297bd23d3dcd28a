"""Specialists against the size of the training set (issue 16): does the senone task's generalist
+ specialists combination gain on the generalist alone as the training frames grow?

The paper's specialists (Hinton, Vinyals & Dean 2015, section 5) served 15,000 classes and were
trained on JFT's 100 million images; on mini's 500 senones with 120,000 training frames they lose
to the generalist. This bench runs the real recipe, ``recipes/specialists/run.sh --task senones``
(every stage, one folder ``<out>/frames<N>`` per size, its own RESULTS.md there), once per
``--train-frames`` budget with the same config otherwise, and writes one row per size to
bench/RESULTS.md: the training frames drawn (and per class), the generalist's test accuracy, the
control's (the generalist trained on for the specialists' budget), the combination's and its
relative change with McNemar's exact test against the generalist, and how many specialists tell
their own classes apart better than the generalist does (the net test examples that adds).

    python bench/specialists_scale.py --gmm-exp recipes/librispeech/exp \\
        --data-dir recipes/librispeech/data --out /tmp/spec_scale \\
        --train-frames 30000 --train-frames 120000 --train-frames 400000

A budget above the training part's frames takes them all (the row says how many were drawn).

With ``--gmm-exp`` given more than once (stage-3 folders whose decision trees have different
numbers of leaves, e.g. ``run.sh --stage 3 --stop-stage 3 --gmm-config`` with another
``num_leaves`` into another ``--exp``), the axis is the number of classes: each (senone
inventory, budget) is a run in ``<out>/senones<K>/frames<N>`` and the rows go to their own
section, "Specialists against the number of classes". The folders must come from one corpus (the
same stage-1 features and stage-2 lang in their stage-3 records). A single-folder run's
``<out>/frames<N>`` is not reused there: pass another ``--out`` or move it.

With ``--seeds N`` each (inventory, budget) runs N times with config seeds 0 .. N-1 (the draw of
the training, validation and test frames, the initialisation and the data order), seed S > 0 in
``frames<N>_seed<S>``, and the section adds each group's mean relative change. A finished run
with the same settings is reused (the recipe skips its stages), so a bench can be extended.
Not part of ``make bench``: each size is a whole recipe run (minutes on mini, 2 cores).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from asr_kd.experiments.specialists_report import better_within, mcnemar_outcome, within_gain
from asr_kd.experiments.stage_records import finished_result, stage_dir
from asr_kd.stages.common import environment_lines

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN_SH = ROOT / "recipes" / "specialists" / "run.sh"
HEADING = "## Specialists against the size of the training set (bench/specialists_scale.py)"
HEADING_CLASSES = "## Specialists against the number of classes (bench/specialists_scale.py)"


def num_senones(gmm_exp: Path, data_dir: Path) -> int:
    """The number of senones of the stage-3 folder ``gmm_exp`` (its senones.json); SystemExit naming
    the folder when stage 3 has not finished there."""
    from asr_kd.errors import DataError
    from asr_kd.stages.common import read_senones
    from asr_kd.stages.layout import RecipeLayout

    try:
        return read_senones(RecipeLayout(data_dir, gmm_exp)).num_senones
    except DataError as e:
        raise SystemExit(f"specialists_scale: --gmm-exp {gmm_exp}: {e}") from None


def corpus_inputs(gmm_exp: Path) -> dict[str, str]:
    """The input fingerprints of ``gmm_exp``'s stage-3 record (stage 1's features, stage 2's lang)."""
    from asr_kd.stages.provenance import read_record

    rec = read_record(gmm_exp / "gmm")
    return dict(rec.inputs) if rec is not None else {}


def run_size(frames: int, gmm_exp: Path, out: Path, args: argparse.Namespace, seed: int = 0) -> Path:
    """Run the senone recipe on ``gmm_exp``'s senones with ``max_train_frames=frames`` into
    ``out/frames<frames>`` (seed > 0: with ``seed=<seed>``, into ``out/frames<frames>_seed<seed>``);
    return that folder. A finished folder with the same settings is reused: the recipe skips its stages."""
    exp = out / (f"frames{frames}" + (f"_seed{seed}" if seed else ""))
    exp.mkdir(parents=True, exist_ok=True)
    overrides = " ".join([f"max_train_frames={frames}", *args.set, *([f"seed={seed}"] if seed else [])])
    cmd = ["bash", str(RUN_SH), "--task", "senones", "--preset", args.preset, "--gmm-exp", str(gmm_exp), "--data-dir",
           str(args.data_dir), "--exp", str(exp), "--results", str(exp / "RESULTS.md"), "--set", overrides,
           "--num-threads", str(args.num_threads)]
    print(f"specialists_scale: {shlex.join(cmd)}", flush=True)
    done = subprocess.run(cmd)
    if done.returncode != 0:
        raise SystemExit(f"specialists_scale: the recipe failed for --train-frames {frames} (exit {done.returncode}); "
                         f"its log is under {exp / 'log'}")
    return exp


def size_row(exp: Path) -> dict[str, Any]:
    """The numbers of one finished senone run (its prepare, specialists and combine records)."""
    results = {stage: finished_result(exp, stage) for stage in ("prepare", "specialists", "combine")}
    missing = [stage for stage, r in results.items() if r is None]
    if missing:
        raise SystemExit(f"{exp}: stage(s) {', '.join(missing)} have not finished; rerun the recipe there")
    prep, spec, comb = results["prepare"], results["specialists"], results["combine"]
    rows = spec["rows"]
    gained, examples = within_gain(rows)
    return {
        "train_frames": int(prep["sizes"]["train"]), "available_frames": int(prep["counts"]["train"]["frames"]),
        "num_classes": int(prep["num_classes"]), "num_test": int(comb["num_test"]),
        "generalist": float(comb["generalist_accuracy"]), "combined": float(comb["combined_accuracy"]),
        "longer": float(comb["longer"]["accuracy"]) if "longer" in comb else None,
        "only_combined_right": int(comb["only_combined_right"]), "only_generalist_right": int(comb["only_generalist_right"]),
        "p_value": float(comb["p_value"]), "specialists": len(rows),
        "better_within": better_within(rows),
        "within_net": gained, "within_examples": examples,
    }


def relative_change(r: dict[str, Any]) -> float:
    """The combination's top-1 accuracy relative to the generalist's, minus 1 (NaN for a 0% generalist)."""
    return r["combined"] / r["generalist"] - 1 if r["generalist"] > 0 else float("nan")


def outcome(r: dict[str, Any], alpha: float = 0.05) -> str:
    """The row's McNemar outcome against the generalist: "gain", "loss" or "noise" (the recipe's rule)."""
    return mcnemar_outcome(r["only_combined_right"], r["only_generalist_right"], r["p_value"], alpha)


def format_row(r: dict[str, Any], alpha: float = 0.05, classes: bool = False, seeds: bool = False) -> str:
    """One table row; ``classes``: begin with the number of senones (the class-count section);
    ``seeds``: a seed column after the training frames."""
    change = relative_change(r)
    o = outcome(r, alpha)
    verdict = "within noise" if o == "noise" else o
    longer = "n/a" if r["longer"] is None else f"{100 * r['longer']:.2f}%"
    first = f"| {r['num_classes']:,} " if classes else ""
    seed = f" {r['seed']} |" if seeds else ""
    return (f"{first}| {r['train_frames']:,} of {r['available_frames']:,} |{seed} {r['train_frames'] / r['num_classes']:.0f} | "
            f"{100 * r['generalist']:.2f}% | {longer} | {100 * r['combined']:.2f}% | {change:+.1%} | "
            f"{r['only_combined_right']} / {r['only_generalist_right']}, p={r['p_value']:.2g} ({verdict}) | "
            f"{r['better_within']} of {r['specialists']}, net {r['within_net']:+d} of {r['within_examples']} |")


def mean_changes(rows: list[dict[str, Any]], by_classes: bool, alpha: float = 0.05) -> str:
    """One sentence: per (inventory, budget), the combination's relative change over the seeds and
    how many seeds' McNemar tests found a significant gain or loss."""
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in rows:  # by the budget asked for: two budgets above the part's frames draw the same frames
        groups.setdefault((r["num_classes"], r["budget"]), []).append(r)
    parts = []
    for (k, n), rs in groups.items():
        changes = [relative_change(r) for r in rs]
        gains, losses = (sum(outcome(r, alpha) == o for r in rs) for o in ("gain", "loss"))
        name = ", ".join([f"{k:,} senones"] * by_classes + [f"budget {n:,} frames"] * (not by_classes or len({g[1] for g in groups}) > 1))
        parts.append(f"{name}: {sum(changes) / len(changes):+.1%} ({', '.join(f'{c:+.1%}' for c in changes)}; "
                     f"significant gain in {gains}, loss in {losses} of {len(rs)} seeds)")
    return "Combination against the generalist, mean relative change over the seeds: " + "; ".join(parts) + "."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gmm-exp", type=Path, action="append", required=True,
                   help="the speech recipe's exp folder after stage 3; repeat with folders of other senone counts for the class axis")
    p.add_argument("--data-dir", type=Path, required=True, help="the speech recipe's data folder after stage 1")
    p.add_argument("--out", type=Path, required=True, help="where each run's experiment folder goes ([senones<K>/]frames<N>/)")
    p.add_argument("--train-frames", type=int, action="append", required=True, help="a max_train_frames budget (repeat)")
    p.add_argument("--preset", default="default", help="the senone preset of recipes/specialists (default or tiny) [%(default)s]")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another config override for every size (repeat)")
    p.add_argument("--seeds", type=int, default=1, help="runs per (inventory, budget), config seed 0 .. N-1 [%(default)s]")
    p.add_argument("--num-threads", type=int, default=1, help="torch threads of each run [%(default)s]")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = p.parse_args(argv)
    sizes = sorted(set(args.train_frames))
    if sizes[0] < 1:
        raise SystemExit(f"--train-frames takes budgets >= 1, got {sizes}")
    keys = {kv.split("=", 1)[0] for s in args.set for kv in s.split()}  # run.sh splits --set on spaces
    if "max_train_frames" in keys:
        raise SystemExit("--set max_train_frames=...: give the sizes with --train-frames")
    if args.seeds < 1 or (args.seeds > 1 and "seed" in keys):
        raise SystemExit(f"--seeds {args.seeds}: give at least 1, and no --set seed=... beside more than one (they are seeds 0 .. N-1)")
    by_classes = len(args.gmm_exp) > 1
    counts = {g: num_senones(g, args.data_dir) for g in args.gmm_exp}
    inventories = {k: g for g, k in counts.items()}
    if len(inventories) < len(args.gmm_exp):
        raise SystemExit(f"--gmm-exp: {len(args.gmm_exp)} folders but only {len(inventories)} different senone counts "
                         f"({', '.join(f'{g}: {k}' for g, k in counts.items())}); give stage-3 folders whose trees differ in size")
    if by_classes and len({tuple(sorted(corpus_inputs(g).items())) for g in args.gmm_exp}) > 1:
        raise SystemExit("--gmm-exp: the stage-3 folders were made from different features or lang (their provenance.json "
                         "inputs differ); the class axis needs one corpus")
    runs = [(run_size(n, gmm_exp, args.out / f"senones{k}" if by_classes else args.out, args, seed), n, seed)
            for k, gmm_exp in sorted(inventories.items()) for n in sizes for seed in range(args.seeds)]
    exps = [exp for exp, _, _ in runs]
    rows = [{**size_row(exp), "budget": n, "seed": seed} for exp, n, seed in runs]
    tests = sorted({r["num_test"] for r in rows})
    with_seeds = args.seeds > 1
    command = "python bench/specialists_scale.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    overrides = f" ({' '.join(args.set)})" if args.set else ""
    folder_seed = "[_seed<S>]" if with_seeds else ""
    if by_classes:
        heading, what = HEADING_CLASSES, (
            f"once per senone inventory (decision trees of one corpus's stage 3: "
            f"{', '.join(f'`{g}` ({k} senones)' for k, g in sorted(inventories.items()))}) and training budget "
            f"(`max_train_frames`), the same config otherwise{overrides}; each run's own RESULTS.md and records are in "
            f"`<out>/senones<K>/frames<N>{folder_seed}/`.")
        columns, rule = "| senones | training frames drawn ", "|---|---"
        classes = (f"{tests[0]:,} test frames per run" if len(tests) == 1 else f"{' / '.join(f'{t:,}' for t in tests)} test frames (runs differ)") + (
            ". Frames per class: the budget over the senones, a mean over skewed senone frequencies; at one budget it falls as the "
            "senones grow, so the rows change the class count and the data per class together")
    else:
        heading, what = HEADING, (
            f"once per training budget (`max_train_frames`), the same config otherwise{overrides}; each run's own RESULTS.md and "
            f"records are in `<out>/frames<N>{folder_seed}/`.")
        columns, rule = "| training frames drawn ", "|---"
        classes = f"{rows[0]['num_test']:,} test frames ({rows[0]['num_classes']} senones)"
    if with_seeds:
        columns, rule = columns + "| seed ", rule + "|---"
    text = "\n".join([
        heading, "",
        f"Produced by `{command}`: `recipes/specialists/run.sh --task senones --preset {args.preset}` (all its stages) {what}", "",
        f"{columns}| frames per class | generalist | generalist trained longer (control) | generalist + specialists | "
        "relative change | only combination / only generalist right, McNemar exact p | specialists better within their classes |",
        f"{rule}|---|---|---|---|---|---|---|",
        *(format_row(r, classes=by_classes, seeds=with_seeds) for r in rows), "",
        *([mean_changes(rows, by_classes), ""] if with_seeds else []),
        f"Test top-1 accuracy over {classes}. \"Within their classes\": "
        "a specialist's and the generalist's arg-max over the specialist's classes only, on the test frames of those classes "
        "(telling confusable classes apart, what the specialists are for); net: the test frames that adds, counted once per "
        "specialist. " + (f"{args.seeds} seeds per row group (config `seed`: the draw of the training, validation and test frames, the "
        "initialisation and the data order, so each seed's McNemar test is on its own test frames); "
        if with_seeds else "One seed per size; ") + "the draw of the frames changes with the budget. Paper (Hinton, Vinyals & Dean 2015, "
        "Table 4): 61 specialists on JFT (100 million images, 15,000 classes), +4.4% relative top-1 accuracy.",
        environment_lines([stage_dir(exp, "combine") for exp in exps]).rstrip(), "",
    ])
    print(text)
    write_section(args.results, heading, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
