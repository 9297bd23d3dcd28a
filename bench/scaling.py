"""Measured scaling of the recipe: per stage, wall time, CPU time, peak memory and disk on synthetic
presets of growing size, how each grows with hours of audio, and a projection to LibriSpeech.

Every stage records what its work cost in its ``provenance.json`` (``resources``: wall and CPU
seconds of the stage's process and of the child processes it waited for, peak resident memory,
bytes on disk; asr_kd/stages/provenance.py). This script runs the recipe on each preset into its
own folder (or reads a finished run: a stage whose record matches is skipped, and its record keeps
the costs of the run that made it), sums the records per stage, and writes the table to
bench/RESULTS.md.

    python bench/scaling.py [--presets tiny mini] [--work bench/_scaling] [--stop-stage 7] [--nj 2]
    python bench/scaling.py --read NAME=DATA_DIR,EXP_DIR ...   # tabulate finished runs only

The projection to train-clean-100 (100.6 h) and all of LibriSpeech (960.9 h) scales each stage
of the largest run linearly in what drives it (:data:`DRIVERS`: the training hours, all hours, the
dev and test hours, or nothing: the lexicon and LM, the networks' size), fits peak memory as a
straight line through the two largest runs, and divides CPU time by the cores of the target
machine for the stages that run as parallel CPU jobs. The network stages (4, 5, 6, 8) are not
projected onto GPUs: no recipe stage above `tiny` has run on one (the H200 benches, bench/dnn_gpu.py
and bench/stage5_speed.py, time paper-size networks, and the README projects from them), so the
table gives the CPU time they would take at the measured rate, with the same (mini) network sizes,
and says so. With ``--project-epochs``, runs whose teachers and students (stages 4 and 6) were
configured for fewer epochs than the recipe (bench/scaling_train_1epoch.yaml: one) are projected
to the recipe's epochs (run.sh runs in recipes/librispeech, hence the paths):

    python bench/scaling.py --presets mini small --work /tmp/scaling_1epoch --run-args '--alignments gmm
        --teacher-train-config ../../bench/scaling_train_1epoch.yaml
        --student-train-config ../../bench/scaling_train_1epoch.yaml' --project-epochs 30 --title "..."
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Iterable, Sequence

from asr_kd.stages.provenance import RECORD_NAME, StageRecord

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "librispeech"
HEADING = "## Recipe scaling: cost per stage against hours of audio"
# Hours of LibriSpeech (Panayotov et al. 2015, Table 1): train-clean-100 100.6 h, train-clean-360
# 363.6 h, train-other-500 496.7 h; the recipe's dev and test parts, dev-clean and test-clean,
# 5.4 h each.
EVAL_HOURS = 5.4 + 5.4
# The download sizes of openslr.org/12 (train-clean-100 6.3 GB, train-clean-360 23 GB,
# train-other-500 30 GB; flac), which stage 0 reads instead of synthesising audio.
LIBRISPEECH_DOWNLOAD = {"train-clean-100": "6.3 GB of flac", "960 h": "59 GB of flac"}
LIBRISPEECH_HOURS = {"train-clean-100": 100.6, "960 h": 100.6 + 363.6 + 496.7}
# What each stage's cost grows with: "train" hours, "all" hours (train + eval), "eval" hours
# (the dev and test parts), or "fixed" (the lexicon and LM, not the audio).
DRIVERS = {0: "all", 1: "all", 2: "fixed", 3: "train", 4: "train", 5: "train", 6: "train", 7: "eval", 8: "train"}
# Disk that does not grow with the audio: models and graphs.
FIXED_DISK = {2, 4, 6, 7, 8}
# Stages whose peak memory grows with what drives them, from the code: stage 3 holds the
# training features and alignments in memory, stage 7 a whole part's posteriors (frames x
# senones float32). The others stream cuts (features, training) or cap their sample (stage 5's
# codebook fit: 50,000 frames), so their peak stays near the largest run's.
GROWING_MEMORY = {3, 7}
STAGE_NAMES = {0: "corpus", 1: "features", 2: "lang", 3: "GMM-HMM", 4: "teachers", 5: "soft targets", 6: "students",
               7: "decoding", 8: "3% experiment"}
# Stages whose networks' epochs --project-epochs scales (run.sh's --teacher-train-config and
# --student-train-config); stage 8's 3% runs have their own config and early stopping.
PROJECTED_STAGES = {4, 6}
# Stages whose work is shared among parallel CPU jobs (features, GMM accumulation and alignment,
# decoding): a 16-core machine runs them about 16 ways. The others are network training or
# teacher inference, for a GPU.
CPU_PARALLEL_STAGES = {0, 1, 3, 7}
GPU_STAGES = {4, 5, 6, 8}
_STAGE = re.compile(r"^stage (\d+)\b")


@dataclasses.dataclass
class StageCost:
    """The summed costs of one recipe stage (all its records: a stage may keep several)."""

    stage: int
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    disk_bytes: int = 0
    records: int = 0
    unmeasured: int = 0  # records without costs (written before costs were recorded)
    # The epochs its networks were configured for (each record's train.num_epochs; early stopping
    # may have ended one sooner), and how many of its records name none.
    num_epochs: set = dataclasses.field(default_factory=set)
    no_epochs: int = 0
    # What made its records: (code version, command) pairs.
    sources: set = dataclasses.field(default_factory=set)
    # Each measured record's (start, finish) in seconds since the epoch (finish minus its wall time),
    # or None for a record without a finish stamp.
    spans: list = dataclasses.field(default_factory=list)

    def add(self, resources: dict, config: dict | None = None, source: tuple[str, str] | None = None,
            finished: str = "") -> None:
        self.records += 1
        train = (config or {}).get("train")
        if isinstance(train, dict) and train.get("num_epochs"):
            self.num_epochs.add(int(train["num_epochs"]))
        else:
            self.no_epochs += 1
        if source is not None:
            self.sources.add(source)
        if not resources:
            self.unmeasured += 1
            return
        self.wall_s += float(resources["wall_s"])
        end = _timestamp(finished)
        self.spans.append(None if end is None else (end - float(resources["wall_s"]), end))
        self.cpu_s += float(resources["cpu_s"])
        self.peak_rss_mb = max(self.peak_rss_mb, float(resources["peak_rss_mb"]))
        self.disk_bytes += int(resources["disk_bytes"])

    @property
    def elapsed_s(self) -> float:
        """The time the stage took: the union of its records' (start, finish) spans, so that jobs
        that ran side by side count once and records made at different times add up; their summed
        wall time where a record has no finish stamp."""
        if not self.spans or any(span is None for span in self.spans):
            return self.wall_s
        total, (cur_start, cur_end) = 0.0, sorted(self.spans)[0]
        for start, end in sorted(self.spans)[1:]:
            if start > cur_end:
                total += cur_end - cur_start
                cur_start, cur_end = start, end
            else:
                cur_end = max(cur_end, end)
        return total + cur_end - cur_start


def _timestamp(stamp: str) -> float | None:
    """Return a record's ``finished`` stamp (ISO 8601, UTC) in seconds since the epoch, None if absent."""
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def stage_costs(folders: Iterable[Path]) -> dict[int, StageCost]:
    """Return the costs of the recipe stages (0-8) recorded below ``folders`` (a run's data and exp
    folders), by stage number. Records of other commands (decode-part, CTC stages) are left out."""
    costs: dict[int, StageCost] = {}
    seen: set[Path] = set()
    for folder in folders:
        for path in sorted(Path(folder).rglob(RECORD_NAME)):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            rec = StageRecord.read(path)
            m = _STAGE.match(rec.stage)
            if m and int(m.group(1)) in STAGE_NAMES:
                n = int(m.group(1))
                costs.setdefault(n, StageCost(n)).add(rec.resources, rec.config if isinstance(rec.config, dict) else None,
                                                      (rec.code_version, rec.command), rec.finished)
    return costs


def part_hours(data_dir: Path) -> dict[str, float]:
    """Return the hours of audio of each part's cuts (stage 1's fbank manifests ``cuts_<part>``)."""
    from lhotse import load_manifest_lazy

    paths = sorted((Path(data_dir) / "fbank").glob("cuts_*.jsonl.gz"))
    if not paths:
        raise SystemExit(f"{Path(data_dir) / 'fbank'} holds no cuts_<part>.jsonl.gz: the run has no stage 1 output")
    return {p.name[len("cuts_"):-len(".jsonl.gz")]: sum(c.duration for c in load_manifest_lazy(p)) / 3600 for p in paths}


def growth_exponent(h1: float, c1: float, h2: float, c2: float) -> float:
    """Return ``b`` in ``cost ~ hours^b`` through two points (nan when a cost is 0)."""
    if c1 <= 0 or c2 <= 0 or h1 == h2:
        return math.nan
    return math.log(c2 / c1) / math.log(h2 / h1)


@dataclasses.dataclass
class Run:
    name: str
    parts: dict[str, float]  # hours of audio per part
    costs: dict[int, StageCost]
    train_part: str = "train-clean-100"
    wall_total_s: float | None = None  # the run.sh process's own wall time, when this script ran it

    @property
    def hours(self) -> float:
        """Hours of training audio."""
        return self.parts[self.train_part]

    def driver_hours(self, driver: str) -> float:
        """Return the hours that drive a stage's cost (see :data:`DRIVERS`)."""
        total = sum(self.parts.values())
        return {"train": self.hours, "all": total, "eval": total - self.hours, "fixed": 1.0}[driver]


def target_hours(name: str, driver: str) -> float:
    """Return the hours of LibriSpeech target ``name`` that drive a stage's cost."""
    train = LIBRISPEECH_HOURS[name]
    return {"train": train, "all": train + EVAL_HOURS, "eval": EVAL_HOURS, "fixed": 1.0}[driver]


def recipe_command(preset: str, work: Path, stop_stage: int, nj: int, run_args: Sequence[str] = ()) -> list[str]:
    """Return the run.sh command of ``preset`` (stages 0..stop_stage, and ``run_args``) into ``work/preset``."""
    data, exp = work / preset / "data", work / preset / "exp"
    return ["./run.sh", "--preset", preset, "--stop-stage", str(stop_stage), "--nj", str(nj), "--data", str(data), "--exp", str(exp),
            "--results", str(work / preset / "RESULTS.md"), *run_args]


def run_recipe(preset: str, work: Path, stop_stage: int, nj: int, run_args: Sequence[str] = ()) -> Run:
    """Run :func:`recipe_command` in the recipe folder; return the run's costs."""
    import time

    cmd = recipe_command(preset, work, stop_stage, nj, run_args)
    data, exp = work / preset / "data", work / preset / "exp"
    print(f"[{preset}] {' '.join(cmd)} (in {RECIPE})", flush=True)
    start = time.monotonic()
    with open(work / f"{preset}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=RECIPE, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"the {preset} run failed (exit {proc.returncode}); see {work / f'{preset}.log'}")
    run = read_run(preset, data, exp)
    run.wall_total_s = time.monotonic() - start
    return run


def read_run(name: str, data: Path, exp: Path) -> Run:
    return Run(name, part_hours(data), stage_costs([data, exp]))


def _fmt_s(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 * 1.5 else (f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s")


def _fmt_bytes(b: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b:.0f} B"


def record_sources(runs: list[Run]) -> str:
    """Return, per run, the commands (and code versions) its stage records say made them, with their stages."""
    lines = []
    for r in runs:
        by: dict[tuple[str, str], list[int]] = {}
        for n, c in sorted(r.costs.items()):
            for key in sorted(c.sources):
                by.setdefault(key, []).append(n)
        for (version, command), stages in by.items():
            lines.append(f"- {r.name}, stage{'s' if len(stages) > 1 else ''} {', '.join(map(str, stages))}: "
                         f"`{command or 'no command recorded'}` ({version or 'no code version recorded'})")
    return "\n".join(lines)


def projectable_epochs(c: StageCost, project_epochs: int | None) -> int | None:
    """Return the one epoch count E of stage ``c``'s networks when ``--project-epochs`` scales it
    (stage 4 or 6, every record naming the same E < project_epochs), else None."""
    if not project_epochs or c.stage not in PROJECTED_STAGES or c.no_epochs or len(c.num_epochs) != 1:
        return None
    e = next(iter(c.num_epochs))
    return e if e < project_epochs else None


def tables(runs: list[Run], cores: int = 16, project_epochs: int | None = None) -> str:
    """Return the markdown of the per-stage table, the growth exponents and the projection.

    With ``project_epochs``, the projection scales the CPU time of a training stage whose networks
    all ran the same number of epochs E (their records' ``train.num_epochs``) by ``project_epochs / E``:
    runs trained for fewer epochs than the recipe's measure the growth with the audio, and the
    projection is for the recipe's training length (an upper bound: the first epoch also carries the
    set-up and the final scoring, which do not repeat). Only stages 4 and 6, only when E is smaller
    and every record names it; the others stay as measured, and say so."""
    stages = sorted({n for r in runs for n in r.costs})
    head = "| stage | " + " | ".join(f"{r.name}: wall / CPU / peak RSS / disk" for r in runs) + " |"
    lines = [head, "|---|" + "---|" * len(runs)]
    for n in stages:
        cells = []
        for r in runs:
            c = r.costs.get(n)
            if c is None or c.records == c.unmeasured:
                cells.append("not measured")
            else:
                cells.append(f"{_fmt_s(c.elapsed_s)} / {_fmt_s(c.cpu_s)} / {c.peak_rss_mb / 1024:.2f} GB / {_fmt_bytes(c.disk_bytes)}")
        lines.append(f"| {n} {STAGE_NAMES[n]} | " + " | ".join(cells) + " |")
    tot = [sum(c.elapsed_s for c in r.costs.values()) for r in runs]
    lines.append("| sum of stages | " + " | ".join(f"{_fmt_s(t)} wall" for t in tot) + " |")
    lines.append("")
    lines.append("Hours of training audio: " + ", ".join(f"{r.name} {r.hours:.2f} h" for r in runs) + ".")
    trained = [f"{r.name} stage {n}: {'/'.join(map(str, sorted(c.num_epochs)))}" for r in runs for n, c in sorted(r.costs.items())
               if c.num_epochs and n in GPU_STAGES]
    if trained:
        lines.append("Epochs each network of a training stage was configured for (its record's train.num_epochs): "
                     + "; ".join(trained) + ".")
    if len(runs) >= 2:
        a, b = runs[-2], runs[-1]
        lines += ["", f"Growth from {a.name} to {b.name} ({b.hours / a.hours:.1f}x the training audio): exponent b of cost ~ hours^b, "
                  "hours being what drives the stage (training, all, or dev+test audio); 1 = linear, below 1 fixed costs still "
                  "dominate the smaller run, above 1 the stage grows faster than its data. Only runs with the same configs measure "
                  "growth: tiny has smaller networks, GMMs and training runs than mini and small (conf/presets/), so from tiny the "
                  "exponents of stages 3-8 mix data growth with model growth; mini and small share their configs."
                  + "".join(f" Stage {n}'s networks were configured for other epochs in the two runs, so its exponent mixes "
                            "training length in." for n in stages if n in a.costs and n in b.costs
                            and a.costs[n].num_epochs != b.costs[n].num_epochs), "",
                  "| stage | CPU time b | disk b | peak RSS ratio |", "|---|---|---|---|"]
        for n in stages:
            ca, cb = a.costs.get(n), b.costs.get(n)
            if ca is None or cb is None or ca.unmeasured or cb.unmeasured:
                continue
            d = DRIVERS[n]
            if d == "fixed":
                lines.append(f"| {n} {STAGE_NAMES[n]} | CPU x{cb.cpu_s / max(ca.cpu_s, 1e-9):.2f} (grows with the lexicon and LM, not the audio) | "
                             f"x{cb.disk_bytes / max(ca.disk_bytes, 1):.2f} | {cb.peak_rss_mb / ca.peak_rss_mb:.2f} |")
                continue
            ha, hb = a.driver_hours(d), b.driver_hours(d)
            bc = growth_exponent(ha, ca.cpu_s, hb, cb.cpu_s)
            bd = growth_exponent(ha, ca.disk_bytes, hb, cb.disk_bytes)
            ratio = cb.peak_rss_mb / ca.peak_rss_mb if ca.peak_rss_mb else math.nan
            lines.append(f"| {n} {STAGE_NAMES[n]} | {bc:.2f} | {bd:.2f} | {ratio:.2f} |")
    big = runs[-1]
    small = runs[-2] if len(runs) >= 2 else None
    lines += ["", f"Projection (not a measurement) from {big.name}: each stage's CPU time and disk scaled linearly in what drives it "
              f"(training hours; all hours; dev + test hours, LibriSpeech's dev-clean and test-clean being {EVAL_HOURS:g} h; models, "
              "lexicon and LM do not grow with the audio), with the same configs (mini's networks); "
              + (f"peak memory a straight line through {small.name} and {big.name} in those hours for the stages that hold their data "
                 f"in memory ({', '.join(str(s) for s in sorted(GROWING_MEMORY))}: the training features, a part's posteriors), "
                 f"{big.name}'s peak for the others (they stream cuts or cap their samples)" if small else
                 f"peak memory {big.name}'s for every stage (one run draws no line; stages "
                 f"{', '.join(str(s) for s in sorted(GROWING_MEMORY))} hold their data in memory and will need more)")
              + ". Wall time: the CPU-parallel stages "
              f"({', '.join(str(s) for s in sorted(CPU_PARALLEL_STAGES))}) spread over {cores} cores; the network stages at the CPU rate "
              "measured here, one core, as no recipe stage was measured on a GPU; the lang stage as measured (it depends on the lexicon and LM: "
              "see the graph-building bench)."
              + (f" Stages {' and '.join(map(str, sorted(PROJECTED_STAGES)))} at {project_epochs} epochs a network: the "
                 f"measured CPU time times {project_epochs} over the epochs the run's networks were configured for (a "
                 "training's steps, shapes and dev scoring repeat each epoch), where every record names the same, smaller "
                 "number; an upper bound, as the first epoch also carries the set-up and the final scoring, which do not "
                 "repeat." if project_epochs else ""), "",
              "| stage | " + " | ".join(f"{k}: {cores}-core wall / peak RSS / disk" for k in LIBRISPEECH_HOURS) + " |",
              "|---|" + "---|" * len(LIBRISPEECH_HOURS)]
    for n in stages:
        c = big.costs.get(n)
        if c is None or c.unmeasured or big.hours <= 0:
            continue
        d = DRIVERS[n]
        cells = []
        for target in LIBRISPEECH_HOURS:
            f = target_hours(target, d) / big.driver_hours(d)
            disk = c.disk_bytes * (1.0 if n in FIXED_DISK else f)
            rss = c.peak_rss_mb
            cs = small.costs.get(n) if small else None
            if n in GROWING_MEMORY and cs is not None and not cs.unmeasured and big.driver_hours(d) > small.driver_hours(d):
                slope = (c.peak_rss_mb - cs.peak_rss_mb) / (big.driver_hours(d) - small.driver_hours(d))
                rss = c.peak_rss_mb + max(slope, 0.0) * (target_hours(target, d) - big.driver_hours(d))
            if n == 0:
                cells.append(f"real data: the corpus itself ({LIBRISPEECH_DOWNLOAD[target]}), manifests in minutes")
                continue
            elif n in CPU_PARALLEL_STAGES:
                wall = _fmt_s(c.cpu_s * f / cores)
            elif e := projectable_epochs(c, project_epochs):
                wall = f"{_fmt_s(c.cpu_s * f * project_epochs / e)} CPU at {project_epochs} epochs (measured at {e}; GPU unmeasured)"
            elif project_epochs and n in PROJECTED_STAGES and c.num_epochs != {project_epochs}:
                why = ("epochs " + "/".join(map(str, sorted(c.num_epochs))) if c.num_epochs else "no epochs recorded") + (
                    f", {c.no_epochs} record(s) without" if c.num_epochs and c.no_epochs else "")
                wall = f"{_fmt_s(c.cpu_s * f)} CPU as measured (not projected: {why}; GPU unmeasured)"
            elif n in GPU_STAGES:
                wall = f"{_fmt_s(c.cpu_s * f)} CPU (GPU unmeasured)"
            else:
                wall = _fmt_s(c.elapsed_s)
            cells.append(f"{wall} / {rss / 1024:.1f} GB / {_fmt_bytes(disk)}")
        lines.append(f"| {n} {STAGE_NAMES[n]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "mini"], help="synthetic presets to run, smallest first")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "_scaling", help="one folder per preset is made here")
    ap.add_argument("--stop-stage", type=int, default=7)
    ap.add_argument("--nj", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--read", nargs="*", default=[], metavar="NAME=DATA,EXP", help="tabulate finished runs instead of running presets")
    ap.add_argument("--cores", type=int, default=16, help="cores of the machine the projection is for")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    ap.add_argument("--run-args", default="", help="more run.sh options for every preset, as one string (for example "
                    "'--alignments gmm': stage 3 as on real LibriSpeech, without the synthetic presets' DNN realignment); "
                    "runs with other options need their own --work, or run.sh redoes the stages whose settings differ")
    ap.add_argument("--project-epochs", type=int, help="project stages 4 and 6 (teachers, students) to this many epochs a "
                    "network (the recipe's 30 on mini and small) when the runs' networks were configured for fewer "
                    "(bench/scaling_train_1epoch.yaml)")
    ap.add_argument("--title", help="heading of the section written (default: the main scaling section's); another title "
                    "keeps a partial run, such as stages 0-3 of larger presets, beside it in --results (give it its own --work)")
    args = ap.parse_args(argv)
    if args.read and args.run_args:
        ap.error("--run-args passes options to the runs this script makes; with --read it runs nothing")
    heading = f"## {args.title}" if args.title else HEADING
    if args.read:
        runs = []
        for spec in args.read:
            name, _, dirs = spec.partition("=")
            data, _, exp = dirs.partition(",")
            runs.append(read_run(name, Path(data), Path(exp)))
        command = "python bench/scaling.py --read " + " ".join(args.read)
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        runs = [run_recipe(p, args.work, args.stop_stage, args.nj, shlex.split(args.run_args)) for p in args.presets]
        command = f"python bench/scaling.py --presets {' '.join(args.presets)} --stop-stage {args.stop_stage} --nj {args.nj}"
        if args.run_args:
            command += f" --run-args {shlex.quote(args.run_args)}"
    if args.project_epochs:
        command += f" --project-epochs {args.project_epochs}"
    if args.title:
        command += f" --title {shlex.quote(args.title)}"
    runs.sort(key=lambda r: r.hours)
    walls = [f"{r.name} {_fmt_s(r.wall_total_s)}" for r in runs if r.wall_total_s is not None]
    last_stage = max((n for r in runs for n in r.costs), default=args.stop_stage) if args.read else args.stop_stage
    text = (f"{heading}\n\n`{command}` (stages 0-{last_stage}; costs from each stage's provenance record; "
            f"{os.cpu_count()} CPUs{', run.sh wall: ' + ', '.join(walls) if walls else ''}). A stage's wall time is the union of its "
            "records' spans (each record's finish stamp minus its wall time), so jobs that ran side by side count once. "
            "CPU time counts the stage's process, "
            "the children it waited for, and stage 0's synthesis workers, which run under a multiprocessing forkserver and are "
            "counted apart (asr_kd.resource_usage.note_detached_cpu; records written before 9e2ce6a missed them, so their "
            f"stage-0 CPU is too low).\n\nWhat made each stage's records (their command and code version):\n{record_sources(runs)}\n\n"
            f"{tables(runs, args.cores, args.project_epochs)}")
    print(text)
    if not args.read:  # what was measured, beside the runs
        costs = [{"name": r.name, "parts": r.parts, "costs": {n: dataclasses.asdict(c) for n, c in r.costs.items()}} for r in runs]
        (args.work / "scaling.json").write_text(json.dumps(costs, indent=1, default=sorted))  # the sets as sorted lists
    write_section(args.results, heading, text)


if __name__ == "__main__":
    main()
