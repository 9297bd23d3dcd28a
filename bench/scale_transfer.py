"""Does the acoustic scale chosen on dev suit the other parts? Each system of a finished recipe run
decoded on each part at every acoustic scale of stage 7's grid (issue 12: the unseen voices of
test-ood).

Stage 7 chooses each system's scale (1 / the LM weight) on the dev part and decodes the test
parts once at it. A system whose posteriors are sharper or flatter on unseen voices than on dev
may want another scale there, and a comparison of two systems on test-ood then mixes their
acoustic models with how well their dev choice transfers. This decodes every (system, seed, part)
at every scale of the grid and reports, per system and part: the WER at stage 7's choice, the
part's own best scale (an oracle: chosen on the part it scores, so never a table's protocol, only
a bound on what a better choice could give) and the WER there. For ``--pair B A`` (default
distilled baseline): B minus A at the dev choices (what Table 1 reports) and at each one's own
best scale on the part, with paired bootstrap intervals over utterances (each student's seeds
averaged per utterance first, at the scale shared by its seeds).

    python bench/scale_transfer.py --data recipes/librispeech/data --exp demo=recipes/librispeech/exp \\
        [--exp other=/path/to/another/exp] [--systems baseline distilled] [--seeds 3] \\
        [--parts dev-clean test-ood] [--pair distilled baseline]

Needs stages 3 and 7 of each run (``make demo``); without them it says so and exits 0. Writes
nothing under ``--exp``; its numbers go to ``--json`` and the section of ``--results``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from asr_kd.config import DecodeConfig, config_from_dict
from asr_kd.decode.penalty import PenalisedGraphs
from asr_kd.metrics.paired import bootstrap_difference
from asr_kd.stages.provenance import code_version, environment, environment_text, read_record
from asr_kd.utils import read_json

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402
from decode_beams import finished_run  # noqa: E402
from decode_penalty import part_decoder, seed_errors  # noqa: E402

HEADING = "## Acoustic scale chosen on dev against each part's own best scale (bench/scale_transfer.py)"


def measure_run(data: Path, exp: Path, systems: list[str], seeds: int, parts: list[str] | None) -> dict | None:
    """Decode every system (its seeds), part and grid scale of the run in ``data``/``exp``; return
    ``{"scales", "parts", "systems": {name: {"dev_choice", "seeds", "parts": {part: {"wer":
    [per scale, mean over seeds], "errors": [per scale: per-utterance errors averaged over seeds],
    "words": [...], "ids": [...]}}}}}`` or None when stages 3 and 7 have not run."""
    run = finished_run(data, exp, "scale_transfer")
    if run is None:
        return None
    layout, lang = run
    stage7 = read_record(layout.decode).config
    config = dataclasses.replace(config_from_dict(DecodeConfig, stage7["decode"]), num_jobs=2, insertion_penalties=())
    scales = list(config.acoustic_scales or (config.acoustic_scale,))
    recorded = [layout.dev_part, *(stage7.get("test_parts") or [layout.test_part])]
    parts = parts or recorded
    missing = [q for q in parts if q not in recorded]
    if missing:
        raise SystemExit(f"scale_transfer: stage 7 of {exp} scored {recorded}, not {missing}; pass --parts from those")
    table1 = read_json(layout.decode / "table1.json")
    assert isinstance(table1, dict)
    graphs: dict[str, PenalisedGraphs] = {}
    out: dict = {"scales": scales, "parts": parts, "beam": config.beam, "max_active": config.max_active, "systems": {}}
    for name in systems:
        if name not in table1:
            raise SystemExit(f"scale_transfer: {exp} has no stage-7 system {name!r} (it has {sorted(table1)})")
        entry: dict = {"dev_choice": float(table1[name][layout.dev_part]["acoustic_scale"]), "parts": {}}
        penalty = table1[name][layout.dev_part].get("insertion_penalty") or 0.0
        if penalty:
            raise SystemExit(f"scale_transfer: stage 7 decoded {name} with a word insertion penalty ({penalty:g}), which this bench "
                             "does not apply; rerun stage 7 with decode.insertion_penalties=[] (or compare with bench/decode_penalty.py)")
        if entry["dev_choice"] not in scales:
            raise SystemExit(f"scale_transfer: stage 7 decoded {name} at {entry['dev_choice']:g}, outside its grid {scales} (not tuned); nothing to compare")
        for part in parts:
            ids, words, per_scale = seed_errors(lambda n, seed, q: part_decoder(layout, lang, n, seed, q, config, graphs),
                                                name, seeds, part, scales)
            entry["seeds"] = len(per_scale[0])  # a student's seeds, another system's 1 (seed_errors decides)
            errors = [np.mean(e, axis=0) for e in per_scale]
            entry["parts"][part] = {"wer": [float(e.sum() / sum(words)) for e in errors], "errors": [e.tolist() for e in errors],
                                    "words": words, "ids": ids}
            print(f"{exp} {name} {part}: " + ", ".join(f"{s:g}: {100 * w:.2f}%" for s, w in zip(scales, entry["parts"][part]["wer"])),
                  flush=True)
        out["systems"][name] = entry
    return out


def best_scale(run: dict, name: str, part: str) -> int:
    """Index of the scale with the lowest WER of ``name`` on ``part`` (ties: the first, the smallest scale)."""
    wers = run["systems"][name]["parts"][part]["wer"]
    return int(np.argmin(wers))


def pair_differences(run: dict, b: str, a: str, part: str) -> dict:
    """B minus A on ``part``: at each one's dev choice and at each one's own best scale on the part."""
    sa, sb = run["systems"][a]["parts"][part], run["systems"][b]["parts"][part]
    if sa["ids"] != sb["ids"]:
        raise SystemExit(f"scale_transfer: {a} and {b} were scored on different utterances of {part}")
    words = np.array(sa["words"], dtype=np.float64)
    scales = run["scales"]
    at_dev = [scales.index(run["systems"][n]["dev_choice"]) for n in (a, b)]
    at_best = [best_scale(run, n, part) for n in (a, b)]
    return {
        "dev_choice": bootstrap_difference(np.array(sa["errors"][at_dev[0]]), np.array(sb["errors"][at_dev[1]]), words).to_dict(),
        "own_best": bootstrap_difference(np.array(sa["errors"][at_best[0]]), np.array(sb["errors"][at_best[1]]), words).to_dict(),
        "scales_dev": [scales[i] for i in at_dev], "scales_best": [scales[i] for i in at_best],
    }


def format_section(runs: dict[str, dict], args: argparse.Namespace) -> str:
    exps = " ".join(f"--exp {shlex.quote(f'{label}={path}')}" for label, path in args.exp)
    cmd = (f"python bench/scale_transfer.py --data {args.data} {exps} --systems {' '.join(args.systems)} --seeds {args.seeds}"
           + (f" --parts {' '.join(args.parts)}" if args.parts else "") + f" --pair {' '.join(args.pair)}")
    def search(run: dict) -> str:
        return f"beam {run['beam']:g}, max-active {run['max_active']}, grid {{{', '.join(f'{s:g}' for s in run['scales'])}}}"

    settings = {search(r) for r in runs.values()}
    how = (next(iter(settings)) if len(settings) == 1 else "; ".join(f"{label}: {search(r)}" for label, r in runs.items()))
    lines = [HEADING, "", f"`{cmd}`" + (f" (every number: `{args.json}`)" if args.json else "") + ".", "",
             f"Stage 7's decoding ({how}) at every acoustic scale of its grid. \"Dev choice\": the scale stage 7 chose on the dev part (a student's "
             "seeds share it); \"best on the part\": the part's own lowest WER over the grid, an oracle chosen on the data it scores, "
             "never a table's protocol: the gap between the two is what the dev choice costs on that part at most. A student's WER is "
             "the mean over its seeds.", "",
             "| run | system | seeds | part | WER at the dev choice (scale) | best on the part (scale) | cost of the dev choice, points |",
             "|---|---|---|---|---|---|---|"]
    for label, run in runs.items():
        scales = run["scales"]
        for name, e in run["systems"].items():
            for part in run["parts"]:
                wers = e["parts"][part]["wer"]
                dev, best = scales.index(e["dev_choice"]), best_scale(run, name, part)
                lines.append(f"| {label} | {name} | {e['seeds']} | {part} | {100 * wers[dev]:.2f}% ({scales[dev]:g}) | "
                             f"{100 * wers[best]:.2f}% ({scales[best]:g}) | {100 * (wers[dev] - wers[best]):+.2f} |")
    b, a = args.pair
    lines += ["", f"{b} − {a}, WER points with a 95% paired bootstrap interval over utterances (2000 resamples; Bisani & Ney 2004; "
              "the seeds' per-utterance errors averaged first; it does not cover the seeds' training variance): at the scales stage 7 "
              "chose on dev (as Table 1), and at each system's own best scale on the part (the oracle above).", "",
              "| run | part | at the dev choices (scales) | at each one's best on the part (scales) |", "|---|---|---|---|"]
    for label, run in runs.items():
        for part, d in run.get("pairs", {}).items():
            def cell(iv: dict, used: list[float]) -> str:
                verdict = "significant" if iv["excludes_zero"] else "within noise"
                return (f"{100 * iv['value']:+.2f} [{100 * iv['low']:+.2f}, {100 * iv['high']:+.2f}], {verdict} "
                        f"({a} {used[0]:g}, {b} {used[1]:g})")
            lines.append(f"| {label} | {part} | {cell(d['dev_choice'], d['scales_dev'])} | {cell(d['own_best'], d['scales_best'])} |")
    seconds = sum(r["seconds"] for r in runs.values())
    lines += ["", f"Decoding took {seconds / 60:.0f} minutes (2 processes).", "", environment_text(environment(), code_version()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("recipes/librispeech/data"), help="the recipe's data folder (shared by the runs)")
    p.add_argument("--exp", action="append", default=None, metavar="LABEL=PATH",
                   help="a finished run's experiment folder and its label (repeat for several; default demo=recipes/librispeech/exp)")
    p.add_argument("--systems", nargs="+", default=["baseline", "distilled"], help="stage-7 systems (baseline, ensemble, distilled, compressed)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of each student (stage 6's; default 3)")
    p.add_argument("--parts", nargs="+", default=None, help="parts stage 7 scored (default: all of them)")
    p.add_argument("--pair", nargs=2, default=["distilled", "baseline"], metavar=("B", "A"), help="report B minus A (default distilled baseline)")
    p.add_argument("--json", type=Path, default=None, help="write every number here too")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    args = p.parse_args(argv)
    given = args.exp or ["demo=recipes/librispeech/exp"]
    bad = [e for e in given if "=" not in e]
    if bad:
        p.error(f"--exp takes LABEL=PATH, got {bad[0]!r}")
    args.exp = [(label, Path(path)) for label, path in (e.split("=", 1) for e in given)]
    if any(n not in args.systems for n in args.pair):
        p.error(f"--pair {' '.join(args.pair)}: both must be among --systems")
    runs: dict[str, dict] = {}
    for label, exp in args.exp:
        start = time.time()
        run = measure_run(args.data, exp, args.systems, args.seeds, args.parts)
        if run is None:
            return 0
        b, a = args.pair
        run["pairs"] = {part: pair_differences(run, b, a, part) for part in run["parts"]}
        run["seconds"] = round(time.time() - start, 1)
        runs[label] = run
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1) + "\n")
    write_section(args.results, HEADING, format_section(runs, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
