"""The shape of the CTC systems' posteriors on a finished run (issues 12 and 13): why two models
with the same greedy token error rate decode to different word error rates on HLG.

For each system (a student: each of its seeds, per-utterance sums averaged over the seeds) and
each part, :func:`asr_kd.ctc.peaks.utterance_shape` measures the share of blank argmax frames,
the spikes (runs of one non-blank argmax token) per reference token, their mean peak posterior
and width, the frame entropy, the reference's CTC log-likelihood per token, its best single path
per token, and the gap between the model's best path and the reference's best path (nats per
reference token: what the LM must make up for the search to pick the reference's tokens). Each
system's spikes are also matched against those of ``--timing-ref`` models (mean absolute offset
of the matched spikes, share matched; :class:`asr_kd.ctc.kd.SpikeStats`). ``--pair B A`` reports
B minus A with paired bootstrap intervals over utterances. The greedy token error rate is
computed as CTC stage 7 computes it, and checked against its table on each part it scored.

    python bench/ctc_peaks.py --data recipes/librispeech/data --exp recipes/librispeech/exp [--units phone] \\
        [--systems baseline frame ensemble] [--seeds 3] [--more /tmp/ood_more] [--timing-ref teacher0] [--pair frame baseline]

Systems: a student by its stage-6 name, ``teacher<i>`` and ``ensemble`` of the decoded teacher
set (as CTC stage 7 fuses it), a trained teacher set's folder name (``teachers_guided1``) for its
ensemble, and ``<set folder>/teacher<i>`` for one of its teachers. ``--more`` adds the
``test-ood-more`` part that ``bench/ood_more.py --work`` made there. Needs CTC stage 7 of a
recipe run; without it, it says so and exits 0. Writes nothing under ``--data`` or ``--exp``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from asr_kd.config import CtcConfig, config_from_dict
from asr_kd.ctc.kd import SpikeStats
from asr_kd.ctc.peaks import SHAPE_FIELDS, utterance_shape
from asr_kd.ctc.training import ctc_log_probs, greedy_token_errors
from asr_kd.data.ctc_data import cut_text
from asr_kd.metrics.paired import bootstrap_rates
from asr_kd.report.tables import format_interval
from asr_kd.stages.ctc_common import ctc_student_folder, prepare_units
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import code_version, environment, environment_text, read_record
from asr_kd.utils import read_json

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402
from decode_penalty import ctc_models, ctc_row, finished_ctc_run, has_seeds  # noqa: E402

HEADING = "## The shape of the CTC systems' posteriors: peaks, blanks and the reference's best path (bench/ctc_peaks.py)"
MORE = "test-ood-more"
# The measures of a part's table: (key, column heading, numerator field, denominator field, scale, format).
MEASURES = (
    ("blank", "blank frames", "blank_frames", "frames", 100, "{:.1f}%"),
    ("spikes", "spikes per ref token", "spikes", "ref_tokens", 1, "{:.3f}"),
    ("peak", "spike peak (mean max posterior)", "spike_peak_sum", "spikes", 1, "{:.3f}"),
    ("width", "spike width (frames)", "run_frames", "spikes", 1, "{:.2f}"),
    ("entropy", "entropy (nats/frame)", "entropy_sum", "frames", 1, "{:.3f}"),
    ("loglik", "ref log-lik (nats/token)", "ref_loglik", "ref_tokens_feasible", 1, "{:.3f}"),
    ("ref_path", "ref best path (nats/token)", "ref_best_path", "ref_tokens_feasible", 1, "{:.3f}"),
    ("gap", "best path - ref best path (nats/token)", "gap", "ref_tokens_feasible", 1, "{:.3f}"),
)
PAIR_MEASURES = ("blank", "peak", "loglik", "gap")


@dataclasses.dataclass
class Run:
    """A finished CTC run: its layout, the config CTC stage 7 decoded with, and its scores."""

    layout: RecipeLayout
    cfg: CtcConfig
    scores: dict

    def models(self, name: str, seed: int) -> list:
        """The model(s) of system ``name`` (a student: its seed ``seed``), see the module docstring."""
        return ctc_models(self.layout, self.cfg, name, seed)

    def table_row(self, name: str, seed: int) -> str | None:
        """The CTC table's row of ``name``'s seed ``seed``, or None where the table has none (another set's teacher)."""
        return ctc_row(self.layout, self.cfg, name, seed)


def part_log_probs(run: Run, part_layout: RecipeLayout, part: str, models: list, refs_ids: list[str] | None = None):
    """Return ``(refs, log_probs)`` of ``models`` (fused as CTC stage 7 fuses them) on ``part``."""
    cuts = part_layout.open_cuts(part_layout.fbank_cuts(part))
    lps = {c.id: lp for c, lp in ctc_log_probs(models, cuts, part_layout.open_cmvn(part), 1.0, run.cfg.fusion)}
    if refs_ids is not None and list(lps) != refs_ids:
        raise SystemExit(f"ctc_peaks: the systems scored different utterances of {part}")
    return {c.id: cut_text(c) for c in cuts}, lps


def shape_sums(run: Run, part_layout: RecipeLayout, part: str, models: list, units, refs_ids: list[str] | None = None):
    """Return ``(ids, {field: per-utterance array}, log_probs, greedy TER)`` of ``models`` (fused as
    CTC stage 7 fuses them) on ``part``."""
    refs, lps = part_log_probs(run, part_layout, part, models, refs_ids)
    ids = list(lps)
    rows = [utterance_shape(lps[k], units.encode(refs[k])) for k in ids]
    sums = {f: np.array([r[f] for r in rows]) for f in SHAPE_FIELDS}
    ter = greedy_token_errors(lps, refs, units).wer
    return ids, sums, lps, ter


def measure(run: Run, parts: dict[str, RecipeLayout], systems: list[str], seeds: int, timing_refs: list[str]) -> dict:
    """Every system's shape sums on every part (a student: averaged over its seeds), its greedy
    TER per seed, and its spike timing against each of ``timing_refs``."""
    units = prepare_units(run.layout, run.cfg)
    out: dict = {"parts": {}}
    for part, part_layout in parts.items():
        entry: dict = {"systems": {}, "timing": {}}
        ref_lps: dict = {}
        for ref in timing_refs:  # their log-probs only
            _, ref_lps[ref] = part_log_probs(run, part_layout, part, run.models(ref, 0), entry.get("ids"))
            entry.setdefault("ids", list(ref_lps[ref]))
        for name in systems:
            per_seed, ters, timing = [], [], {ref: SpikeStats() for ref in timing_refs}
            for seed in range(seeds if has_seeds(name, True) else 1):
                if seed > 0 and read_record(run.layout.ctc_student_dir(ctc_student_folder(name, seed))) is None:
                    break  # fewer seeds trained than --seeds: the table says how many were measured
                ids, sums, lps, ter = shape_sums(run, part_layout, part, run.models(name, seed), units, entry.get("ids"))
                entry.setdefault("ids", ids)
                row = run.table_row(name, seed)
                if row is not None and part in run.scores.get(row, {}):
                    recorded = float(run.scores[row][part]["greedy_ter"])
                    if abs(ter - recorded) > 1e-9:
                        raise SystemExit(f"ctc_peaks: {row} on {part} has greedy TER {100 * ter:.2f}% here, the CTC table says "
                                         f"{100 * recorded:.2f}%; this is not the model or the data CTC stage 7 scored")
                per_seed.append(sums)
                ters.append(ter)
                for ref in timing_refs:
                    for k in ids:
                        timing[ref].update(lps[k], ref_lps[ref][k])
            mean = {f: np.mean([s[f] for s in per_seed], axis=0) for f in SHAPE_FIELDS}
            # Feasibility is the frame count's (the same for every seed); rates() keeps the utterances every system can hold.
            mean["feasible"] = np.min([s["feasible"] for s in per_seed], axis=0)
            entry["systems"][name] = {"seeds": len(per_seed), "seed_ters": ters, "sums": {f: v.tolist() for f, v in mean.items()},
                                      "timing": {ref: timing[ref].summary() for ref in timing_refs if ref != name}}
            print(f"{name} {part}: greedy TER {100 * np.mean(ters):.2f}% ({len(per_seed)} seeds)", flush=True)
        out["parts"][part] = entry
    return out


def _arrays(e: dict, feasible: np.ndarray) -> dict[str, np.ndarray]:
    s = {f: np.asarray(v, dtype=np.float64) for f, v in e["sums"].items()}
    s["gap"] = (s["best_path"] - s["ref_best_path"]) * feasible
    s["ref_tokens_feasible"] = s["ref_tokens"] * feasible
    for f in ("ref_loglik", "ref_best_path"):
        s[f] = s[f] * feasible
    return s


def rates(entry: dict) -> dict:
    """Each system's value of every measure on a part (utterances every system can align only, for
    the reference's measures), and the number of those utterances."""
    feasible = np.min([np.asarray(e["sums"]["feasible"]) for e in entry["systems"].values()], axis=0)
    out = {}
    for name, e in entry["systems"].items():
        s = _arrays(e, feasible)
        # None where nothing counts (no spike: no peak or width; no utterance every system can align)
        out[name] = {key: scale * s[num].sum() / s[den].sum() if s[den].sum() > 0 else None for key, _, num, den, scale, _ in MEASURES}
    return {"systems": out, "feasible": int(feasible.sum()), "utterances": len(feasible)}


def pair_differences(entry: dict, pairs: list[tuple[str, str]]) -> dict:
    """B minus A per pair and measure of :data:`PAIR_MEASURES`, with a paired bootstrap interval
    over utterances (each measure a ratio of sums; both systems' ratios resampled together)."""
    feasible = np.min([np.asarray(e["sums"]["feasible"]) for e in entry["systems"].values()], axis=0)
    out = {}
    for b, a in pairs:
        sa, sb = _arrays(entry["systems"][a], feasible), _arrays(entry["systems"][b], feasible)
        for key, _, num, den, scale, _ in MEASURES:
            if key not in PAIR_MEASURES:
                continue
            if sa[den].sum() <= 0 or sb[den].sum() <= 0:  # nothing to average (a system without spikes)
                out[f"{b} - {a} | {key}"] = None
                continue
            counts = {"na": sa[num], "da": sa[den], "nb": sb[num], "db": sb[den]}
            ones = np.ones_like(sa[num])
            with np.errstate(divide="ignore", invalid="ignore"):  # a resample without spikes has no rate: left out
                iv = bootstrap_rates(counts, ones, lambda r, k=scale: k * (r["nb"] / r["db"] - r["na"] / r["da"]))
            out[f"{b} - {a} | {key}"] = iv.to_dict()
    return out


def format_section(run_out: dict, args: argparse.Namespace) -> str:
    cmd = (f"python bench/ctc_peaks.py --units {args.units} --data {args.data} --exp {args.exp} --systems {' '.join(args.systems)} "
           f"--seeds {args.seeds}" + (f" --more {args.more}" if args.more else "") + "".join(f" --timing-ref {r}" for r in args.timing_ref)
           + "".join(f" --pair {b} {a}" for b, a in args.pair))
    lines = [HEADING, "", f"`{cmd}`" + (f" (every number: `{args.json}`)" if args.json else "") + ".", "",
             "Each system's posteriors (a teacher set: fused as CTC stage 7 fuses it) on each part, a student's per-utterance sums "
             "averaged over its seeds. Blank frames: argmax blank. Spikes: runs of one non-blank argmax token (greedy search emits one "
             "token each); their peak is the run's highest posterior of its token, their width the run's frames. Ref log-lik: the "
             "reference's CTC log-likelihood (every path; minus the CTC loss); ref best path: its best single path (Viterbi forced "
             "alignment); the gap: the model's best path over all token sequences (each frame's maximum) minus the reference's best "
             "path, the log-probability the LM must make up for a Viterbi search to choose the reference's tokens (0 where greedy "
             "search is right). The reference's measures count the utterances whose reference every system's frames can hold. "
             "Greedy TER: as CTC stage 7 counts it, checked against its table on each part it scored.", ""]
    for part, entry in run_out["parts"].items():
        r = entry["rates"]
        lines += [f"{part} ({r['utterances']} utterances; the reference's measures on {r['feasible']}):", "",
                  "| system | seeds | greedy TER | " + " | ".join(h for _, h, *_ in MEASURES) + " |", "|---|---|---|" + "---|" * len(MEASURES)]
        for name in args.systems:
            e, v = entry["systems"][name], r["systems"][name]
            lines.append(f"| {name} | {e['seeds']} | {100 * np.mean(e['seed_ters']):.2f}% | "
                         + " | ".join("n/a" if v[key] is None else fmt.format(v[key]) for key, _, _, _, _, fmt in MEASURES) + " |")
        timed = [n for n in args.systems if entry["systems"][n]["timing"]]
        if args.timing_ref and timed:
            lines += ["", f"Spikes on {part} matched against each reference model's (minimum edit alignment of the two spike sequences; "
                      "offset: mean absolute frame distance of the matched spikes; matched: share of the longer sequence):", "",
                      "| system | " + " | ".join(f"vs {ref}: offset (frames) | matched" for ref in args.timing_ref) + " |",
                      "|---|" + "---|---|" * len(args.timing_ref)]
            for name in timed:
                t = entry["systems"][name]["timing"]
                lines.append(f"| {name} | " + " | ".join(f"{t[ref]['mean_spike_offset_frames']:.2f} | {100 * t[ref]['spikes_matched']:.1f}%"
                                                         if ref in t else "(itself) | " for ref in args.timing_ref) + " |")
        if entry["differences"]:
            heads = {key: h for key, h, *_ in MEASURES}
            lines += ["", f"Differences on {part}, B - A with a 95% paired bootstrap interval over utterances (2000 resamples; the seeds' "
                      "per-utterance sums averaged first; it does not cover the seeds' training variance):", "",
                      "| pair | " + " | ".join(heads[k] for k in PAIR_MEASURES) + " |", "|---|" + "---|" * len(PAIR_MEASURES)]
            for b, a in args.pair:
                cells = []
                for key in PAIR_MEASURES:
                    d = entry["differences"][f"{b} - {a} | {key}"]
                    if d is None:
                        cells.append("n/a")
                        continue
                    cells.append(format_interval(d, scale=1.0, digits=2 if key == "blank" else 3) + ("" if d["excludes_zero"] else " (within noise)"))
                lines.append(f"| {b} - {a} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"Measured in {run_out['seconds'] / 60:.1f} min.", "", environment_text(environment(), code_version()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("recipes/librispeech/data"), help="the recipe's data folder")
    p.add_argument("--exp", type=Path, default=Path("recipes/librispeech/exp"), help="the recipe's experiment folder (CTC stage 7 finished)")
    p.add_argument("--units", default="phone", help="the CTC units of the run (phone or bpe; default phone)")
    p.add_argument("--systems", nargs="+", default=["baseline", "frame", "ensemble"],
                   help="students by their stage-6 names, ensemble, teacher<i>, a teacher set's folder (its ensemble) or "
                        "<set folder>/teacher<i> (default baseline frame ensemble)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of each student, at most (those trained; default 3)")
    p.add_argument("--parts", nargs="+", default=None, help="the recipe's parts (default: the test parts CTC stage 7 scored)")
    p.add_argument("--more", type=Path, default=None, help="a bench/ood_more.py --work folder: adds its test-ood-more part")
    p.add_argument("--timing-ref", action="append", default=None, help="match every system's spikes against this system's (repeatable; default teacher0)")
    p.add_argument("--pair", nargs=2, action="append", default=None, metavar=("B", "A"), help="report B minus A (repeatable; default frame baseline)")
    p.add_argument("--json", type=Path, default=None, help="write every number here too")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    args = p.parse_args(argv)
    args.timing_ref = args.timing_ref or ["teacher0"]
    args.pair = [tuple(x) for x in args.pair or [("frame", "baseline")]]
    for b, a in args.pair:
        if a not in args.systems or b not in args.systems or a == b:
            p.error(f"--pair {b} {a}: two different systems of --systems")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    found = finished_ctc_run(args.data, args.exp, args.units, "ctc_peaks")
    if found is None:
        return 0
    layout, record = found
    run = Run(layout, config_from_dict(CtcConfig, record.config["ctc"]), read_json(layout.ctc_decode / "scores.json"))
    parts = {q: layout for q in (args.parts or [q for q in record.config["parts"] if q != layout.dev_part])}
    if args.more:
        if not (args.more / "data" / "made.json").is_file():
            raise SystemExit(f"ctc_peaks: {args.more} holds no part made by bench/ood_more.py; run it with --work {args.more} first")
        parts[MORE] = dataclasses.replace(layout, data_dir=args.more / "data")
    start = time.time()
    out = measure(run, parts, args.systems, args.seeds, args.timing_ref)
    for entry in out["parts"].values():
        entry["rates"] = rates(entry)
        entry["differences"] = pair_differences(entry, args.pair)
    out["seconds"] = round(time.time() - start, 1)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    write_section(args.results, HEADING, format_section(out, args))
    print(f"ctc_peaks: wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
