"""Two finished recipe runs on the same corpus, compared system by system: test WER and frame
accuracy of each run's stage-7 systems, and run B minus run A with a paired bootstrap interval
over the utterances (Bisani & Ney 2004), as Table 1 does within one run.

Use it for an A/B of a setting that Table 1 cannot show by itself (teachers trained longer, another
kd config): copy the experiment folder, change the setting, rerun the stages it invalidates, then

    python bench/compare_runs.py --exp-a /work/runs/a/exp --exp-b /work/runs/b/exp \
        --label-a "teachers 10 epochs" --label-b "teachers 30 epochs" \
        [--parts test-clean test-ood] [--systems baseline ensemble distilled compressed] [--title ...]

or, within one run, stage 10's two sweeps at the same temperatures (stored top-k targets against
the whole distribution computed online: what storage costs the student):

    python bench/compare_runs.py --exp-a EXP --dir-a temperature_sweep --exp-b EXP \
        --dir-b temperature_sweep_online --systems distilled_T2 distilled_T4 \
        --label-a "stored targets" --label-b "online targets"

A student kind's seeds (``distilled``, ``distilled_seed1``, ...) are averaged utterance by utterance
first, as Table 1 does; with as many seeds on both sides, seed k is also compared with seed k. Both runs must have decoded the same utterances with the same references
and alignments (the same stages 0-3): otherwise it stops with the first difference. Without
stage-7 outputs in both runs it says so and exits 0. Not part of ``make bench`` (it needs two
runs).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from asr_kd.errors import DataError
from asr_kd.metrics.paired import bootstrap_difference
from asr_kd.report.tables import seed_agreement
from asr_kd.stages.s7_decode import per_utterance_counts, per_utterance_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402

def system_members(decode_dir: Path, system: str) -> list[str]:
    """Return the decodes that make up ``system`` in a run: its seeds as stage 7 grouped them
    (``decode/comparisons.json``: ``distilled``, ``distilled_seed1``, ...), or, in a stage-10
    sweep's folder (``sweep.json``), the seeds of a T's students (``distilled_T2``,
    ``distilled_T2_seed1``, ... up to its ``num_seeds``), else ``system`` alone. Taken from the
    run's own record, so a leftover folder of a seed the run no longer has is not averaged in."""
    sweep = decode_dir / "sweep.json"
    if sweep.is_file():
        n = int(json.loads(sweep.read_text()).get("num_seeds", 1))
        return [system, *(f"{system}_seed{k}" for k in range(1, n))]
    path = decode_dir / "comparisons.json"
    groups = json.loads(path.read_text()).get("groups", {}) if path.is_file() else {}
    return list(groups.get(system, [system]))


def system_counts(decode_dir: Path, system: str, part: str) -> tuple[list[str], np.ndarray, int, list[tuple[float, float]]] | None:
    """Return ``(utterance ids, counts, seeds, per-seed rates)`` of ``system`` on ``part`` under a
    run's ``exp/decode`` (or a stage-10 sweep's folder): counts (utterances x 4: word errors,
    reference words, correct frames, aligned frames) averaged over the system's seeds
    (:func:`system_members`), and each seed's (WER, frame accuracy) in percent; None when the run
    did not decode it. Seeds must cover the same utterances."""
    members = system_members(decode_dir, system)
    if not per_utterance_path(None, members[0], part, root=decode_dir).is_file():
        return None
    try:  # stage 7's own reader: the same averaging and the same refusals as Table 1's intervals
        c = per_utterance_counts(None, members, part, root=decode_dir)
    except DataError as e:
        raise SystemExit(f"{e} (in the run whose decodes are under {decode_dir})") from None
    ids = [str(u) for u in c["ids"]]
    counts = np.stack([c["errors"], c["ref_words"], c["correct"], c["frames"]], axis=1)
    rates = []
    for m in members:  # each seed alone: the seed-k-against-seed-k differences the bootstrap leaves out
        one = per_utterance_counts(None, [m], part, root=decode_dir)
        words = one["ref_words"].sum()  # 0 where stage 7 scored the part for frame accuracy only (--decode-parts)
        rates.append((100 * one["errors"].sum() / words if words > 0 else None, 100 * one["correct"].sum() / max(one["frames"].sum(), 1)))
    return ids, counts, len(members), rates


def compare_system(a: tuple, b: tuple, what: str) -> dict:
    """Return both runs' test WER and frame accuracy of one system and B − A with paired bootstrap
    intervals (percentage points), and, when both have the same number of seeds (more than one),
    seed k of B minus seed k of A; ``what`` names the system and part in errors."""
    (ids_a, ca, seeds_a, rates_a), (ids_b, cb, seeds_b, rates_b) = a, b
    if ids_a != ids_b:
        raise SystemExit(f"{what}: the two runs decoded different utterances ({len(ids_a)} against {len(ids_b)}); "
                         "compare runs that share stages 0-3")
    # WER only where both runs decoded the part (a part scored for frame accuracy only has no reference words).
    decoded = ca[:, 1].sum() > 0 and cb[:, 1].sum() > 0
    for col, name in ((1, "reference words"), (3, "aligned frames"))[0 if decoded else 1:]:
        diff = np.flatnonzero(ca[:, col] != cb[:, col])
        if diff.size:
            raise SystemExit(f"{what}: {name} differ at utterance {ids_a[diff[0]]} ({ca[diff[0], col]:g} against "
                             f"{cb[diff[0], col]:g}); compare runs that share stages 0-3")
    wer = bootstrap_difference(ca[:, 0], cb[:, 0], ca[:, 1]) if decoded else None
    fa = bootstrap_difference(ca[:, 2], cb[:, 2], ca[:, 3])
    paired = seeds_a == seeds_b > 1
    return {
        "seeds_a": seeds_a, "seeds_b": seeds_b, "utterances": len(ids_a), "words": int(ca[:, 1].sum()),
        "wer_a": 100 * ca[:, 0].sum() / ca[:, 1].sum() if decoded else None, "wer_b": 100 * cb[:, 0].sum() / cb[:, 1].sum() if decoded else None,
        "fa_a": 100 * ca[:, 2].sum() / ca[:, 3].sum(), "fa_b": 100 * cb[:, 2].sum() / cb[:, 3].sum(),
        "wer_diff": None if wer is None else {k: 100 * v if isinstance(v, float) else v for k, v in wer.to_dict().items()},
        "fa_diff": {k: 100 * v if isinstance(v, float) else v for k, v in fa.to_dict().items()},
        "wer_seed_differences": [rb[0] - ra[0] for ra, rb in zip(rates_a, rates_b)] if paired and decoded else [],
        "fa_seed_differences": [rb[1] - ra[1] for ra, rb in zip(rates_a, rates_b)] if paired else [],
    }


def _interval(d: dict | None) -> str:
    return "not decoded" if d is None else f"{d['value']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def _rate(x: float | None, digits: int) -> str:
    return "not decoded" if x is None else f"{x:.{digits}f}%"


def _verdict(d: dict | None, lower_is_better: bool, pairs: list[float] = ()) -> str:
    """"B better"/"B worse" when the interval excludes 0 and every seed pair (if any) has its sign."""
    if d is None:
        return "not decoded"
    outcome = seed_agreement(d, pairs)
    if outcome == "noise":
        return "within noise"
    if outcome == "seed noise":
        return "within seed noise (the seed pairs disagree in sign)"
    return "B better" if (outcome == "lower") == lower_is_better else "B worse"


def _pairs(values: list[float]) -> str:
    return f"<br>seed pairs {', '.join(f'{x:+.2f}' for x in values)}" if values else ""


def section(rows: list[tuple[str, str, dict]], label_a: str, label_b: str, command: str, title: str) -> str:
    lines = [
        f"## {title}", "",
        f"`{command}`", "",
        f"A: {label_a}. B: {label_b}. Differences are B − A in percentage points with 95% intervals from a paired "
        "bootstrap over the utterances (2000 resamples; Bisani & Ney 2004); a student kind's seeds are averaged "
        "utterance by utterance first. With as many seeds in B as in A (more than one), seed k of B minus seed k of A is shown "
        "too (the training variance the bootstrap leaves out), and a difference counts only when its interval excludes 0 and "
        "every seed pair agrees in sign (with unequal seed counts, the interval alone decides). WER is \"not decoded\" where a "
        "run scored the part for frame accuracy only.", "",
        "| Part | System | Seeds A / B | WER A | WER B | WER B − A | | Frame acc. A | Frame acc. B | Frame acc. B − A | |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for part, system, r in rows:
        lines.append(
            f"| {part} | {system} | {r['seeds_a']} / {r['seeds_b']} | {_rate(r['wer_a'], 2)} | {_rate(r['wer_b'], 2)} | "
            f"{_interval(r['wer_diff'])}{_pairs(r.get('wer_seed_differences', []))} | "
            f"{_verdict(r['wer_diff'], True, r.get('wer_seed_differences', []))} | {r['fa_a']:.1f}% | {r['fa_b']:.1f}% | "
            f"{_interval(r['fa_diff'])}{_pairs(r.get('fa_seed_differences', []))} | "
            f"{_verdict(r['fa_diff'], False, r.get('fa_seed_differences', []))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-a", type=Path, required=True, help="experiment folder of run A (its decode/ holds stage 7's outputs)")
    p.add_argument("--dir-a", default="decode", help="the scoring folder under --exp-a: decode (stage 7) or a stage-10 sweep's, "
                   "temperature_sweep or temperature_sweep_online, whose systems are distilled_T<T> [%(default)s]")
    p.add_argument("--dir-b", default="decode", help="the same under --exp-b [%(default)s]")
    p.add_argument("--exp-b", type=Path, required=True, help="experiment folder of run B, on the same corpus")
    p.add_argument("--label-a", required=True, help="what run A is, for the table")
    p.add_argument("--label-b", required=True, help="what run B is, for the table")
    p.add_argument("--parts", nargs="+", default=["test-clean", "test-ood"], help="parts to compare [%(default)s]")
    p.add_argument("--systems", nargs="+", default=["baseline", "ensemble", "distilled", "compressed"],
                   help="systems to compare: stage 7's, or distilled_T<T> in a stage-10 sweep folder [%(default)s]")
    p.add_argument("--title", default="Two recipe runs compared", help="the bench/RESULTS.md section heading")
    p.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md",
                   help="where the section goes [%(default)s]")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    rows = []
    for part in args.parts:
        for system in args.systems:
            a = system_counts(args.exp_a / args.dir_a, system, part)
            b = system_counts(args.exp_b / args.dir_b, system, part)
            if a is None or b is None:
                missing = args.exp_a / args.dir_a if a is None else args.exp_b / args.dir_b
                print(f"compare_runs: {missing} has no {system} on {part} (run stage 7 or 10 there); skipped")
                continue
            rows.append((part, system, compare_system(a, b, f"{system} on {part}")))
    if not rows:
        print("compare_runs: nothing to compare (no stage-7 or stage-10 outputs of these systems in both folders); skipping")
        return 0
    command = shlex.join(["python", "bench/compare_runs.py", *(argv if argv is not None else sys.argv[1:])])
    text = section(rows, args.label_a, args.label_b, command, args.title)
    print(text)
    write_section(args.results, f"## {args.title}", text)
    if args.json:
        args.json.write_text(json.dumps([{"part": p_, "system": s, **r} for p_, s, r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
