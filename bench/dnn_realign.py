"""Kaldi's DNN realignment, as a measurement: align every part again with the teacher ensemble
instead of the triphone GMM, through the same training graphs, and write a copy of the run whose
stage-3 alignments and senone priors are the new ones.

Why: on the synthetic mini corpus the hybrid DNNs reach about 32% dev frame accuracy against the
GMM's alignments whatever their size (bench/RESULTS.md, "Hybrid DNN capacity"), while their
training frame accuracy keeps rising: the labels, made by a GMM at 64% WER, may be what limits
them. Kaldi's recipes realign with the first DNN and retrain. This script makes the realigned
copy; train and score a DNN on it with ``bench/hybrid_capacity.py --exp OUT`` and compare its WER
with the same variant on the original run (frame accuracies are against different labels, so only
WER compares).

The copy (``--out``) links ``--exp``'s stage-3 folder except ``gmm/ali``, its teachers and stage 7's
record (:func:`link_run`; never run the recipe on it), and writes ``gmm/ali``: per part
the cuts with the new senone alignments, the transition-ids, and ``log_priors.txt`` counted on
the new training alignments. The ensemble's posteriors are divided by stage 3's priors for the
alignment (scaled likelihoods), with stage 3's beams and graph scales. Writes its section of
bench/RESULTS.md: per part, utterances aligned and the share of frames whose senone changed.

    python bench/dnn_realign.py --data recipes/librispeech/data --exp recipes/librispeech/exp --out /tmp/exp_realigned
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from asr_kd.metrics.paired import bootstrap_difference
from asr_kd.metrics.wer import score_transcript_files
from asr_kd.report.tables import format_interval, significance
from asr_kd.stages.common import load_teachers
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.s3_realign import realign_parts

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## DNN realignment (bench/dnn_realign.py)"
COMPARE_HEADING = "## DNN realignment: the same DNN trained on both labels (bench/dnn_realign.py --compare)"


def link_run(exp: Path, out: Path) -> None:
    """Make ``out`` the copy benches read: links to ``exp``'s stage-3 folder (all but ``ali``, left
    empty), its teachers, and stage 7's record (how the recipe decodes). Nothing else is linked,
    so no stage can write into ``exp`` through the copy; do not run the recipe on it."""
    out.mkdir(parents=True, exist_ok=False)
    (out / "teachers").symlink_to((exp / "teachers").resolve())
    if (exp / "decode" / "provenance.json").is_file():
        (out / "decode").mkdir()
        (out / "decode" / "provenance.json").symlink_to((exp / "decode" / "provenance.json").resolve())
    (out / "gmm").mkdir()
    for p in (exp / "gmm").iterdir():
        if p.name != "ali":
            (out / "gmm" / p.name).symlink_to(p.resolve())
    (out / "gmm" / "ali").mkdir()


def realign(data: Path, exp: Path, out: Path, num_teachers: int | None = None, max_duration: float = 20.0, ood_part: str = "") -> list[dict]:
    """Write the realigned copy of the run (see the module docstring); return per-part statistics
    (:func:`asr_kd.stages.s3_realign.realign_parts`, the recipe's realignment)."""
    old = RecipeLayout(data, exp, ood_part=ood_part)
    link_run(exp, out)
    new = RecipeLayout(data, out, ood_part=ood_part)
    return realign_parts(old, load_teachers(old, num_teachers), new.ali, (old.train_part, old.dev_part, *old.test_parts), max_duration)


def seed_runs(out: Path, variant: str) -> list[Path]:
    """Return the run folders of ``variant`` in a ``bench/hybrid_capacity.py --out`` folder
    (``variant``, ``variant_seed1``, ...), in seed order."""
    runs = [out / variant] + sorted(out.glob(f"{variant}_seed*"), key=lambda p: int(p.name.rsplit("seed", 1)[1]))
    return [r for r in runs if (r / "decode").is_dir()]


def compare(gmm_runs: Path, realigned_runs: Path, variant: str, parts: list[str]) -> list[dict]:
    """Per part: each seed's WER with GMM labels and with realigned labels, and the difference of
    the seed-averaged per-utterance errors with its paired bootstrap interval."""
    rows = []
    for part in parts:
        sides = {}
        for name, out in (("gmm", gmm_runs), ("realigned", realigned_runs)):
            results = [score_transcript_files(r / "decode" / f"{r.name}_{part}" / "ref.txt", r / "decode" / f"{r.name}_{part}" / "hyp.txt")
                       for r in seed_runs(out, variant)]
            if not results:
                raise SystemExit(f"{out} holds no decoded run of {variant} on {part}; run bench/hybrid_capacity.py --out {out} first")
            ids = sorted(u.utt_id for u in results[0].utterances)
            errors = np.mean([[{u.utt_id: u.errors for u in r.utterances}[i] for i in ids] for r in results], axis=0)
            words = np.array([{u.utt_id: len(u.ref) for u in results[0].utterances}[i] for i in ids])
            sides[name] = (ids, errors, words, [r.wer for r in results])
        assert sides["gmm"][0] == sides["realigned"][0], f"{part}: the two runs scored different utterances"
        diff = bootstrap_difference(sides["gmm"][1], sides["realigned"][1], sides["gmm"][2])
        rows.append({"part": part, "gmm": sides["gmm"][3], "realigned": sides["realigned"][3], "diff": diff})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "recipes" / "librispeech" / "data")
    parser.add_argument("--exp", type=Path, default=ROOT / "recipes" / "librispeech" / "exp", help="a run finished through stage 4")
    parser.add_argument("--out", type=Path, default=None, help="the realigned copy to write (must not exist)")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("GMM_RUNS", "REALIGNED_RUNS"), default=None,
                        help="instead: compare two bench/hybrid_capacity.py --out folders, one trained on the run's GMM labels, one on "
                             "the realigned copy (per seed WER, and the seed-averaged difference with a paired bootstrap interval)")
    parser.add_argument("--title", default=None, help="--compare: a section of its own, '## DNN realignment: TITLE (...)' "
                        "(default: the section of the ensemble's realignment)")
    parser.add_argument("--aligner", default="ensemble's", help="--compare: who realigned, as the section says it (default ensemble's)")
    parser.add_argument("--variant", default="base", help="the hybrid_capacity variant --compare reads (default base)")
    parser.add_argument("--num-teachers", type=int, default=None, help="teachers in the aligning ensemble (default: all of stage 4)")
    parser.add_argument("--ood-part", default="test-ood", help="the out-of-domain test part, realigned too where its cuts exist (default test-ood)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    if args.compare:
        main_compare(args)
        return
    if args.out is None:
        parser.error("--out is required (or --compare)")
    ood = args.ood_part if (args.data / "fbank" / f"cuts_{args.ood_part}.jsonl.gz").is_file() else ""
    stats = realign(args.data.resolve(), args.exp.resolve(), args.out.resolve(), args.num_teachers, ood_part=ood)
    lines = [HEADING, "", f"Produced by `{command_line()}`: every part "
             "aligned again through stage 3's training graphs with the teacher ensemble's posteriors divided by stage 3's priors "
             "(stage 3's beams and graph scales), against the triphone GMM's alignments.", "",
             "| Part | Cuts | Aligned (GMM) | Aligned (ensemble) | Frames compared | Senone changed | CPU s |", "|---|---|---|---|---|---|---|"]
    for s in stats:
        lines.append(f"| {s['part']} | {s['cuts']} | {s['gmm_aligned']} | {s['aligned']} | {s['frames']} | "
                     f"{100 * s['changed'] / max(s['frames'], 1):.1f}% | {s['cpu_s']} |")
    lines += ["", "What the new labels do to a DNN trained on them is measured by `bench/hybrid_capacity.py --exp <the copy>` "
              "(WER only: frame accuracies are against different labels).", ""]
    publish(args.results, HEADING, lines)


def command_line() -> str:
    """The command this script was run with, as the sections quote it."""
    return "python bench/dnn_realign.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def publish(results: Path, heading: str, lines: list[str]) -> None:
    """Write the section to ``results`` and print it."""
    write_section(results, heading, "\n".join(lines))
    print("\n".join(lines))



def main_compare(args: argparse.Namespace) -> None:
    """``--compare``: write the comparison section."""
    gmm_runs, realigned_runs = args.compare
    layout = RecipeLayout(args.data, args.exp)
    parts = [layout.dev_part, layout.test_part, args.ood_part]
    rows = compare(gmm_runs, realigned_runs, args.variant, parts)
    heading = COMPARE_HEADING if args.title is None else f"## DNN realignment: {args.title} (bench/dnn_realign.py --compare)"
    lines = [heading, "", f"Produced by `{command_line()}`: "
             f"the `{args.variant}` DNN of bench/hybrid_capacity.py trained on the run's triphone-GMM alignments and on the "
             f"{args.aligner} "
             "realignment (each scored with its own priors and its own dev-tuned acoustic scale). Difference: realigned − GMM labels, "
             "per-utterance errors averaged over the seeds first, 95% paired bootstrap over utterances (2000 resamples); it does not "
             "include seed-to-seed variation beyond the averaging.", "",
             "| Part | WER per seed, GMM labels | WER per seed, realigned | Mean, GMM labels | Mean, realigned | Realigned − GMM, points | Significant? |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r["diff"].to_dict()
        verdict = significance(d, better_if_negative=True).replace(" than the baseline", " than GMM labels")
        lines.append(f"| {r['part']} | {', '.join(f'{100 * w:.2f}%' for w in r['gmm'])} | {', '.join(f'{100 * w:.2f}%' for w in r['realigned'])} | "
                     f"{100 * np.mean(r['gmm']):.2f}% | {100 * np.mean(r['realigned']):.2f}% | {format_interval(d)} | {verdict} |")
    lines += ["", "The dev part chose each model's epoch and acoustic scale, so dev flatters both sides alike; test-clean and the "
              "out-of-domain part are the fair comparison.", ""]
    publish(args.results, heading, lines)


if __name__ == "__main__":
    main()
