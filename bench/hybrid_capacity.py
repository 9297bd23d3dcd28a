"""Capacity of the hybrid DNN on a finished recipe run: named variants of the hard-target DNN
(width, depth, dropout, learning rate, epochs, label smoothing, input window), each trained on
stage 3's senone alignments and scored like stage 7 scores the students.

Per variant (and seed): multiply-adds per frame; frame accuracy on a fixed sample of training
cuts (evenly spaced through the training manifest), on dev and on the test parts, so that a gap
between train and dev shows overfitting and a small one underfitting; the dev WER at the
acoustic scale the variant chose on dev (stage 7's beam, max-active and scale grid, read from
stage 7's record, else stage 3's) and the test WERs at that scale (the test parts never choose
anything); CPU seconds per epoch; the test WER over the triphone GMM's (stage 3's record) and the
test WER difference from the first variant with its paired-bootstrap 95% interval.

    python bench/hybrid_capacity.py --data /work/scale/mini/data --exp /work/scale/mini/exp \
        --out bench/out/hybrid_capacity --variant base --variant wide4x512:hidden_dim=512,num_hidden_layers=4 --jobs 2

``--data`` and ``--exp`` are only read; every model, decode and record goes under ``--out``
(``<out>/<variant>[_seed<k>]/``: the training folder, ``decode/``, ``result.json`` and a
``provenance.json`` record: a variant whose record matches is not retrained, so variants can be
added by later runs and the last run, naming them all, writes the whole table). Also writes
``<out>/hybrid_capacity.json`` (every number) and its section of bench/RESULTS.md.

With ``--kd-config`` every variant is distilled instead, as stage 6 trains its distilled and
compressed students: from the stored soft targets of stage 5 that match the kd config (the ensemble
of ``--num-teachers``), with its loss. That measures compressed students (issue 15).
``--compare-to baseline`` adds a table of each variant over its seeds against a system stage 7
decoded (``baseline`` and its seeds ``baseline_seed<k>``, read from ``<exp>/decode``), or
against an earlier run of this bench, ``--compare-to <out>/<variant>`` (with its ``_seed<k>``
siblings; a control trained under another ``--out``, such as hard targets beside distilled): the mean
test WER with its t interval over seeds, and the paired bootstrap of the difference of the
per-utterance errors averaged over each side's seeds (as stage 7 compares its groups), on the test
part and, with ``--ood-part``, on the out-of-domain part too where stage 7 decoded the system there.
Stage 7's systems were decoded at their own dev-chosen scales with the same DecodeConfig as read here.

Cost on mini (370k training frames, one torch thread), measured: the demo's 3 x 256 DNN trains in
10-16 CPU seconds per epoch (100 s for 10 epochs on a quiet machine), 4 x 512 in 26 and 3 x 1024
in 57; scoring a run (the dev scale search and the test decodes) takes 1.5-2 minutes. One 3 x 256
variant at 10 epochs is about 5 minutes; the table in bench/RESULTS.md took over an hour on 2
cores. A compressed student (124-130k MACs a frame, ``--kd-config``) takes 7-8 CPU seconds an
epoch, about 4 CPU minutes for 30 epochs, and 1-1.5 minutes of scoring. So it is not part of
``make bench``: run it by hand after ``make demo``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from asr_kd.config import DecodeConfig, KdConfig, TrainConfig, config_from_dict, load_config
from asr_kd.errors import ConfigError, DataError
from asr_kd.launch import launch_jobs
from asr_kd.metrics.paired import bootstrap_difference, mean_interval
from asr_kd.models.dnn import load_dnn_config, num_linear_params
from asr_kd.stages.common import describe_dnn, gmm_record, model_checkpoint, read_senones, with_recorded_alignments
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageGuard, describe_environment, read_record
from asr_kd.stages.s5_soft_targets import find_soft_targets
from asr_kd.stages.s7_decode import per_utterance_path, score_system
from asr_kd.train.capacity import FrameVariant, frame_scores, parse_variant, spread_sample, train_variant, variant_loss
from asr_kd.train.frame_classifier import load_frame_classifier
from asr_kd.utils import read_json, setup_logging, write_json_atomic

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HEADING = "## Hybrid DNN capacity on a recipe run (bench/hybrid_capacity.py)"
log = logging.getLogger("hybrid_capacity")


@dataclasses.dataclass(frozen=True)
class Run:
    """One variant at one seed, trained in ``folder``."""

    name: str
    variant: FrameVariant
    seed_index: int
    folder: Path


def recorded_decode_config(layout: RecipeLayout) -> DecodeConfig:
    """The DecodeConfig stage 7 decoded the students with (its record), else stage 3's (stage3.json)."""
    record = read_record(layout.decode)
    if record is not None and "decode" in record.config:
        return config_from_dict(DecodeConfig, record.config["decode"], str(layout.decode / "provenance.json"))
    summary = read_json(layout.gmm_summary) if layout.gmm_summary.is_file() else {}
    assert isinstance(summary, dict)
    if "decode" not in summary:
        raise DataError(f"neither stage 7's record in {layout.decode} nor {layout.gmm_summary} says how the recipe decodes; "
                        "pass --decode-config")
    return config_from_dict(DecodeConfig, summary["decode"], str(layout.gmm_summary))


def gmm_test_wers(layout: RecipeLayout) -> dict[str, float]:
    """The triphone GMM's WER of every part stage 3 decoded (its stage3.json)."""
    summary = read_json(layout.gmm_summary)
    assert isinstance(summary, dict)
    return {part: float(s["wer"]) for part, s in summary.get("wers", {}).get("tri", {}).items() if s.get("wer") is not None}


def evaluate_run(run: Run, layout: RecipeLayout, decode: DecodeConfig, train_sample, num_classes: int) -> dict:
    """Score the run's best.pt like stage 7 (score_system): frame accuracy on the train sample,
    dev (with the acoustic-scale search) and the test parts (at the dev-chosen scale)."""
    model = load_frame_classifier(model_checkpoint(run.folder))
    root = run.folder / "decode"
    train = frame_scores(model, train_sample, layout.open_cmvn(layout.train_part), num_classes)
    scales = decode.acoustic_scales or (decode.acoustic_scale,)
    dev = score_system(run.name, [model], layout, layout.dev_part, scales, decode, root=root)
    tests = {p: score_system(run.name, [model], layout, p, (dev.acoustic_scale,), decode, root=root) for p in layout.test_parts}
    return {"train_sample": train, "dev": dataclasses.asdict(dev), "test": {p: dataclasses.asdict(s) for p, s in tests.items()}}


def wer_difference(first: Run, run: Run, layout: RecipeLayout, part: str) -> dict:
    """Test WER of ``run`` minus that of ``first`` on ``part``, paired bootstrap over utterances."""
    a = read_json(per_utterance_path(layout, first.name, part, first.folder / "decode"))
    b = read_json(per_utterance_path(layout, run.name, part, run.folder / "decode"))
    assert isinstance(a, dict) and isinstance(b, dict)
    ids = sorted(a)
    return bootstrap_difference(np.array([a[u][0] for u in ids], float), np.array([b[u][0] for u in ids], float),
                                np.array([a[u][1] for u in ids], float)).to_dict()


def per_utterance_errors(paths: list[Path]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return ``(utterance ids, word errors averaged over the files, reference words)`` of the
    per_utt.json files of the seeds of one system on one part, ids sorted."""
    tables = []
    for path in paths:
        table = read_json(path)
        assert isinstance(table, dict)
        tables.append(table)
    ids = sorted(tables[0])
    if any(sorted(t) != ids for t in tables):
        raise DataError(f"{paths} do not score the same utterances; decode every seed on the same part")
    return ids, np.mean([[t[u][0] for u in ids] for t in tables], axis=0), np.array([tables[0][u][1] for u in ids], float)


def recipe_seeds(layout: RecipeLayout, system: str, part: str) -> list[str]:
    """The stage-7 systems ``system``, ``system_seed1``, ... with per-utterance counts on ``part``;
    DataError when stage 7 has not decoded ``system``."""
    names = [system]
    while per_utterance_path(layout, f"{system}_seed{len(names)}", part).is_file():
        names.append(f"{system}_seed{len(names)}")
    if not per_utterance_path(layout, system, part).is_file():
        raise DataError(f"--compare-to {system}: {per_utterance_path(layout, system, part)} does not exist; "
                        "name a system stage 7 decoded (baseline, distilled, compressed) or a hybrid_capacity run folder")
    return names


@dataclasses.dataclass(frozen=True)
class Reference:
    """What ``--compare-to`` names: stage 7's system and its seeds, or a run folder of an earlier
    hybrid_capacity (another ``--out``) and its ``_seed<k>`` siblings; each seed's decodings
    are ``<root>/<seed>_<part>/per_utt.json``."""

    name: str
    described: str
    seeds: list[str]
    roots: list[Path]
    test_wer: list[float]

    def per_utt(self, part: str) -> list[Path]:
        return [per_utterance_path(None, seed, part, root) for seed, root in zip(self.seeds, self.roots)]


def find_reference(layout: RecipeLayout, value: str) -> Reference:
    """The :class:`Reference` ``--compare-to value`` names: a folder holding a ``result.json``
    (a hybrid_capacity run), else a stage-7 system; DataError when it is neither."""
    folder, part = Path(value), layout.test_part
    if (folder / "result.json").is_file():
        folders = [folder]
        while (folder.parent / f"{folder.name}_seed{len(folders)}" / "result.json").is_file():
            folders.append(folder.parent / f"{folder.name}_seed{len(folders)}")
        return Reference(folder.name, f"hybrid_capacity's run `{folder.name}` ({folder})", [f.name for f in folders],
                         [f / "decode" for f in folders], [float(read_json(f / "result.json")["test"][part]["wer"]) for f in folders])
    if folder.is_dir() or "/" in value:
        raise DataError(f"--compare-to {value}: {folder / 'result.json'} does not exist; name a finished hybrid_capacity run "
                        "folder (<out>/<variant>) or a system stage 7 decoded (baseline, distilled, compressed)")
    names = recipe_seeds(layout, value, part)
    return Reference(value, f"stage 7's `{value}`", names, [layout.decode] * len(names),
                     [float(read_json(layout.decode / f"{n}_{part}" / "scores.json")["wer"]) for n in names])  # type: ignore[index]


def compare_to_recipe(layout: RecipeLayout, runs: list[Run], results: list[dict], system: str, teacher_macs: int) -> list[dict]:
    """Per variant over its seeds: MACs (and share of one teacher's), mean dev and test WER with
    the test WER's t interval over seeds, and the paired bootstrap of its seed-averaged test errors
    minus those of the reference ``system`` names (:func:`find_reference`: stage 7's system or an
    earlier hybrid_capacity run, averaged over its seeds). The out-of-domain part, where the layout
    has one and the reference was decoded on it, gets its own difference (``minus_reference_ood``)."""
    part = layout.test_part
    ref = find_reference(layout, system)
    parts = [part]
    for p in layout.test_parts[1:]:
        missing = [seed for seed, path in zip(ref.seeds, ref.per_utt(p)) if not path.is_file()]
        if missing:
            log.info("no %s column against %s: %s not decoded on it", p, ref.name, ", ".join(missing))
        else:
            parts.append(p)
    refs = {p: per_utterance_errors(ref.per_utt(p)) for p in parts}
    rows = []
    for name in dict.fromkeys(r.variant.name for r in runs):
        members = [(run, res) for run, res in zip(runs, results) if run.variant.name == name]
        diffs = {}
        for p in parts:
            ref_ids, ref_errors, ref_words = refs[p]
            ids, errors, _ = per_utterance_errors([per_utterance_path(layout, run.name, p, run.folder / "decode") for run, _ in members])
            if ids != ref_ids:
                raise DataError(f"variant {name} and {ref.described} were decoded on different utterances of {p}")
            diffs[p] = bootstrap_difference(ref_errors, errors, ref_words).to_dict()
        test = [res["test"][part]["wer"] for _, res in members]
        mean, half = mean_interval(test)
        row = {"variant": name, "seeds": [res["seed"] for _, res in members], "macs_per_frame": members[0][1]["macs_per_frame"],
               "teacher_share": members[0][1]["macs_per_frame"] / teacher_macs, "dev_wer": [res["dev"]["wer"] for _, res in members],
               "test_wer": test, "test_wer_mean": mean, "test_wer_half_width": half, "reference": ref.name,
               "reference_described": ref.described, "reference_seeds": ref.seeds, "reference_test_wer": ref.test_wer,
               "minus_reference": diffs[part]}
        if len(parts) > 1:
            row.update(ood_part=parts[1], minus_reference_ood=diffs[parts[1]])
        rows.append(row)
    return rows


def _difference_cell(d: dict) -> str:
    verdict = "below 0" if d["high"] < 0 else ("above 0" if d["low"] > 0 else "holds 0: within noise")
    return f"{100 * d['value']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}], {verdict}"


def format_comparison(rows: list[dict], layout: RecipeLayout, teacher_macs: int) -> list[str]:
    """The section's table of variants (over their seeds) against the reference (compare_to_recipe)."""
    ref = rows[0]
    ref_mean, ref_half = mean_interval(ref["reference_test_wer"])
    ood = ref.get("ood_part")
    seeds = len(ref["reference_seeds"])
    spread = f"test WER {100 * ref_mean:.2f} ± {100 * ref_half:.2f}%, mean ± 95% t over seeds" if seeds > 1 else f"test WER {100 * ref_mean:.2f}%"
    lines = [f"Against {ref.get('reference_described', ref['reference'])} ({seeds} seed{'s' if seeds > 1 else ''}, {spread}; one teacher: "
             f"{teacher_macs:,} MACs / frame):", "",
             f"| variant | MACs / frame (share of a teacher) | seeds | dev WER by seed | {layout.test_part} WER, mean ± 95% t (by seed) "
             f"| − {ref['reference']}, points [95% paired bootstrap CI] |" + (f" {ood}: − {ref['reference']}, points [95% CI] |" if ood else ""),
             "|---|---|---|---|---|---|" + ("---|" if ood else "")]
    for r in rows:
        half = "" if np.isnan(r["test_wer_half_width"]) else f" ± {100 * r['test_wer_half_width']:.2f}"
        lines.append(f"| {r['variant']} | {r['macs_per_frame']:,} ({100 * r['teacher_share']:.1f}%) | {len(r['seeds'])} | "
                     f"{' '.join(_pct(w) for w in r['dev_wer'])} | {100 * r['test_wer_mean']:.2f}{half}% ({' '.join(_pct(w) for w in r['test_wer'])}) | "
                     f"{_difference_cell(r['minus_reference'])} |" + (f" {_difference_cell(r['minus_reference_ood'])} |" if ood else ""))
    lines += ["", "Each side's per-utterance word errors are averaged over its seeds before the bootstrap (stage 7's comparison); "
              f"the interval covers the utterances of its part ({layout.test_part}{', ' + ood if ood else ''}), the seeds enter through "
              "the averaging.", ""]
    return lines


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _resumed_note(results: list[dict]) -> str:
    """The sentences that say which runs resumed an interrupted training (their CPU seconds are
    scaled from the steps the resuming process ran) and which were stopped after their training
    had finished (their training cost is unknown, "n/a"); "" when none."""
    resumed = [r for r in results if r["training"].get("resumed_at_step")]
    scaled = [f"{r['run']} (at step {r['training']['resumed_at_step']} of {r['training']['steps']})"
              for r in resumed if r["training"].get("cpu_seconds", 0) is not None]
    unknown = [r["run"] for r in resumed if r["training"].get("cpu_seconds", 0) is None]
    return ((" Resumed after an interruption: " + ", ".join(scaled) + "; their CPU and wall seconds are the resuming "
             "process's scaled by all steps over the steps it ran." if scaled else "")
            + (" Stopped after their training had finished, and scored by a second process: " + ", ".join(unknown)
               + "; their training's CPU seconds went with the stopped process (n/a), and the cost below leaves them out."
               if unknown else ""))


def _cpu_cell(training: dict) -> str:
    """``<CPU s per epoch> (<total>)``, or n/a when the training's cost is unknown (_resumed_note)."""
    if training.get("cpu_seconds") is None:
        return "n/a"
    return f"{training['cpu_seconds_per_epoch']:.0f} ({training['cpu_seconds']:.0f})"


def cost_sentence(results: list[dict]) -> str:
    """The "Cost of this table: ..." sentence: training CPU minutes over the runs whose cost is known (n/a:
    _resumed_note), and decoding minutes."""
    known = [r["training"]["cpu_seconds"] for r in results if r["training"].get("cpu_seconds") is not None]
    training = f"{sum(known) / 60:.0f} CPU minutes of training"
    if not known:
        training = "unknown CPU minutes of training (n/a above)"
    elif len(known) < len(results):
        training += f" ({len(known)} of the {len(results)} runs; the others' are n/a)"
    return (f"Cost of this table: {training} and {sum(decode_seconds(r) for r in results) / 60:.0f} minutes of decoding "
            f"(each run's dev scale search and test decodes) over {len(results)} runs.")


def decode_seconds(result: dict) -> float:
    """Seconds a run's decoding took: its dev scale search and its test parts."""
    return float(result["dev"]["decode_seconds"] + sum(t["decode_seconds"] for t in result["test"].values()))


def format_section(results: list[dict], command: str, layout: RecipeLayout, decode: DecodeConfig, sample_cuts: int, env: str,
                   heading: str = HEADING) -> str:
    """The RESULTS.md section: one row per run, then how it was measured."""
    test, ood = layout.test_part, layout.ood_part
    lines = [heading, "", f"Produced by `{command}`.", "",
             f"| variant | overrides | network | MMACs / frame | epochs (best) | train-sample frame acc. | dev frame acc. | test frame acc. "
             f"| train − dev, points | dev frame acc. by epoch | dev WER (scale) | test WER | {ood + ' WER | ' if ood else ''}"
             f"test WER / GMM tri | test WER − {results[0]['run']}, points [95% CI] | training CPU s / epoch (total) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if ood else "") + "---|---|---|"]
    for r in results:
        t, tr, dev = r["test"][test], r["training"], r["dev"]
        gap = 100 * (r["train_sample"]["frame_accuracy"] - dev["frame_accuracy"])
        every_epoch = [h["epoch"] for h in tr["history"]] == list(range(1, len(tr["history"]) + 1))
        # Epoch-labelled points when dev was not evaluated after every epoch (train.eval_every_epochs > 1).
        curve = " ".join(f"{100 * h['frame_accuracy']:.1f}" if every_epoch else f"{h['epoch']}:{100 * h['frame_accuracy']:.1f}"
                         for h in tr["history"])
        diff = r.get("test_wer_minus_first")
        diff_cell = "" if diff is None else f"{100 * diff['value']:+.2f} [{100 * diff['low']:+.2f}, {100 * diff['high']:+.2f}]"
        ratio = "n/a" if r["test_wer_over_gmm"] is None else f"{r['test_wer_over_gmm']:.2f}"
        lines.append(
            f"| {r['run']} | {', '.join(r['overrides']) or '(none)'} | {r['network']} | {r['macs_per_frame'] / 1e6:.3f} | {tr['epochs']} "
            f"({tr['best_epoch']}) | {_pct(r['train_sample']['frame_accuracy'])} | {_pct(dev['frame_accuracy'])} | {_pct(t['frame_accuracy'])} "
            f"| {gap:+.1f} | {curve} | {_pct(dev['wer'])} ({dev['acoustic_scale']:g}) | {_pct(t['wer'])} (of {t['ref_words']}) | "
            + (f"{_pct(r['test'][ood]['wer'])} | " if ood else "") + f"{ratio} | {diff_cell} | {_cpu_cell(tr)} |")
    gmm = results[0]["gmm_tri_wer"]
    lines += ["", f"Each network is scored at its best dev epoch (best.pt), as stage 7 scores the students. Train-sample frame accuracy: "
              f"{sample_cuts} {layout.train_part} cuts evenly spaced through its manifest (seen in training); dev and test frame "
              f"accuracy are over every cut stage 3 aligned. The GMM tri's test WER is stage 3's: {_pct(gmm)}. "
              f"Differences from {results[0]['run']}: paired bootstrap over the {test} utterances (2000 resamples); an interval "
              "that contains 0 is within noise; it does not cover seed-to-seed variation (one seed per row unless a row says "
              "`_seed<k>`).", "",
              describe_decoding_line(decode, layout.dev_part), "",
              "CPU seconds: the training process's own, dev scoring after each epoch included, one torch thread unless the "
              "environment line says otherwise; they grow with the load on the machine (other processes share its caches and "
              "cores), so compare runs made side by side. Every number: `<out>/hybrid_capacity.json`."
              + _resumed_note(results), "",
              cost_sentence(results), ""]
    if env:
        lines += [env, ""]
    return "\n".join(lines)


def describe_decoding_line(decode: DecodeConfig, dev_part: str) -> str:
    """How every run was decoded (stage 7's settings, each run's own scale search on dev)."""
    grid = ", ".join(f"{s:g}" for s in decode.acoustic_scales) or f"{decode.acoustic_scale:g} only"
    return (f"Decoding as stage 7: HCLG with the stage-2 LM, beam {decode.beam:g}, max-active {decode.max_active}, {decode.decoder} decoder; "
            f"each run's acoustic scale searched on {dev_part} over {{{grid}}} (the fewest word errors; the test parts are never used to "
            "choose it); log posteriors minus the stage-3 log senone priors, times the scale.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", type=Path, required=True, help="the recipe's data folder (read only)")
    p.add_argument("--exp", type=Path, required=True, help="the recipe's experiment folder, stage 3 done (read only)")
    p.add_argument("--out", type=Path, required=True, help="where the variants' models, decodes and records go")
    p.add_argument("--variant", action="append", default=[], metavar="NAME[:key=value,...]",
                   help="a variant: DnnConfig / TrainConfig overrides and label_smoothing (repeat; default: base)")
    p.add_argument("--dnn-config", default="mini", help="DNN preset or YAML the variants start from (default mini)")
    p.add_argument("--train-config", type=Path, default=REPO / "recipes" / "librispeech" / "conf" / "train_mini.yaml",
                   help="TrainConfig YAML the variants start from (default recipes/librispeech/conf/train_mini.yaml)")
    p.add_argument("--decode-config", type=Path, default=None, help="DecodeConfig YAML (default: stage 7's record, else stage 3's)")
    p.add_argument("--kd-config", type=Path, default=None,
                   help="KdConfig YAML (kd.mode stored): distil every variant from stage 5's matching soft targets, as stage 6 does")
    p.add_argument("--num-teachers", type=int, default=None, help="with --kd-config: the ensemble's size (default: stage 4's count)")
    p.add_argument("--compare-to", action="append", default=[], metavar="SYSTEM|RUN",
                   help="a system stage 7 decoded (e.g. baseline), or the folder of an earlier hybrid_capacity run "
                        "(<out>/<variant>, e.g. a hard-target control of the same size): compare each variant, over its seeds, "
                        "with it and its seeds (on the test part, and on --ood-part where the reference was decoded there); "
                        "repeat it for a table against each")
    p.add_argument("--seeds", type=int, default=1, help="seeds per variant (train seed + 0, 1, ...)")
    p.add_argument("--jobs", type=int, default=1, help="variants trained at once, each in its own process")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    p.add_argument("--train-sample", type=int, default=160, help="training cuts in the fixed train-frame-accuracy sample")
    p.add_argument("--train-part", default="train-clean-100")
    p.add_argument("--dev-part", default="dev-clean")
    p.add_argument("--test-part", default="test-clean")
    p.add_argument("--ood-part", default="test-ood", help="a second test part, if stage 3 aligned it ('' for none)")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    p.add_argument("--title", default=None,
                   help="the section's title, to keep several studies side by side (default: 'Hybrid DNN capacity on a recipe run')")
    args = p.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    command = "python bench/hybrid_capacity.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    try:
        return run_bench(args, command)
    except (ConfigError, DataError) as err:
        print(f"hybrid_capacity: {err}", file=sys.stderr)
        return 2


def run_bench(args: argparse.Namespace, command: str) -> int:
    """Train what needs training, score it, write the JSON and the section; return 0."""
    if args.seeds < 1 or args.jobs < 1:
        raise ConfigError(f"--seeds and --jobs must be >= 1, got {args.seeds} and {args.jobs}")
    layout = with_recorded_alignments(RecipeLayout(args.data, args.exp, args.train_part, args.dev_part, args.test_part))
    senones = read_senones(layout)  # DataError naming stage 3 when it has not run
    aligned = read_json(layout.senones_json)
    assert isinstance(aligned, dict)
    if args.ood_part and args.ood_part in aligned.get("parts", {}):
        layout = dataclasses.replace(layout, ood_part=args.ood_part)
    out = args.out.resolve()
    for ro in (layout.data_dir.resolve(), layout.exp_dir.resolve()):
        if out == ro or ro in out.parents:
            raise ConfigError(f"--out {args.out} lies inside {ro}, which this bench only reads; pass a folder elsewhere")
    stage3 = gmm_record(layout).fingerprint
    decode = load_config(DecodeConfig, args.decode_config) if args.decode_config else recorded_decode_config(layout)
    decode = dataclasses.replace(decode, num_jobs=1)  # one process per decoding: what runs at once is --jobs' business
    base_dnn, base_train = load_dnn_config(args.dnn_config), load_config(TrainConfig, args.train_config)
    variants = [parse_variant(spec, base_dnn, base_train) for spec in (args.variant or ["base"])]
    if len({v.name for v in variants}) != len(variants):
        raise ConfigError(f"--variant names must differ, got {[v.name for v in variants]}")
    runs = [Run(v.name if k == 0 else f"{v.name}_seed{k}", dataclasses.replace(v, train=dataclasses.replace(v.train, seed=v.train.seed + k)),
                k, out / (v.name if k == 0 else f"{v.name}_seed{k}")) for v in variants for k in range(args.seeds)]
    train_sample = spread_sample(layout.open_cuts(layout.ali_cuts(layout.train_part)), args.train_sample)
    kd = load_config(KdConfig, args.kd_config) if args.kd_config else None
    train_cuts, inputs = layout.ali_cuts(layout.train_part), {"gmm": stage3}
    if kd is not None:
        for v in variants:
            variant_loss(v, kd)  # a ConfigError now, not in a training process
        train_cuts, soft = find_soft_targets(layout, kd, args.num_teachers, "hybrid_capacity --kd-config")
        inputs["soft_targets"] = soft.fingerprint
    guards = {}
    for run in runs:
        config = {"variant": run.variant, "decode": decode, "train_sample": args.train_sample, "parts": [layout.train_part, layout.dev_part, *layout.test_parts]}
        if kd is not None:
            config["kd"] = kd
        guard = StageGuard(f"hybrid_capacity {run.name}", run.folder, config, inputs, command)
        if guard.needs_work():
            guards[run.name] = guard
    todo = [r for r in runs if r.name in guards]
    log.info("%d of %d runs to train (%s)", len(todo), len(runs), ", ".join(r.name for r in todo) or "none")
    start = time.time()
    trained = launch_jobs(train_variant, [(r.variant, train_cuts, layout.ali_cuts(layout.dev_part), layout.cmvn(layout.train_part),
                                           layout.cmvn(layout.dev_part), senones.num_senones, r.folder, kd) for r in todo],
                          None, args.jobs, args.threads, out / "log", "hybrid_capacity")
    for run, training in zip(todo, trained):
        result = {"run": run.name, "variant": run.variant.name, "overrides": list(run.variant.overrides), "seed": run.variant.train.seed,
                  "label_smoothing": run.variant.label_smoothing, "kd": None if kd is None else dataclasses.asdict(kd), "dnn": dataclasses.asdict(run.variant.dnn),
                  "train": dataclasses.asdict(run.variant.train), "network": describe_dnn(run.variant.dnn),
                  "macs_per_frame": num_linear_params(run.variant.dnn, senones.num_senones), "training": training,
                  **evaluate_run(run, layout, decode, train_sample, senones.num_senones)}
        write_json_atomic(run.folder / "result.json", result)
        guards[run.name].finish([run.folder / "result.json", model_checkpoint(run.folder)])
    log.info("trained and scored %d runs in %.0f s", len(todo), time.time() - start)
    gmm = gmm_test_wers(layout)
    results = []
    for run in runs:
        r = read_json(run.folder / "result.json")
        assert isinstance(r, dict)
        history = r["training"]["history"]
        r["training"]["best_epoch"] = max(history, key=lambda h: h["frame_accuracy"])["epoch"] if history else None
        r["gmm_tri_wer"] = gmm.get(layout.test_part)
        t = r["test"][layout.test_part]["wer"]
        r["test_wer_over_gmm"] = None if t is None or not r["gmm_tri_wer"] else t / r["gmm_tri_wer"]
        r["test_wer_minus_first"] = None if run is runs[0] else wer_difference(runs[0], run, layout, layout.test_part)
        results.append(r)
    comparison, extra = None, []
    if args.compare_to:
        teacher = load_frame_classifier(model_checkpoint(layout.teacher_dir(0)))
        teacher_macs = num_linear_params(teacher.cfg, senones.num_senones)
        comparison = []
        for reference in args.compare_to:  # one table per reference, in the order given
            rows = compare_to_recipe(layout, runs, results, reference, teacher_macs)
            comparison += rows
            extra += format_comparison(rows, layout, teacher_macs)
    write_json_atomic(out / "hybrid_capacity.json", {"command": command, "decode": dataclasses.asdict(decode), "gmm_tri_wer": gmm,
                                                     "runs": results, "comparison": comparison})
    env = describe_environment(read_record(runs[0].folder))
    heading = HEADING if args.title is None else f"## {args.title} (bench/hybrid_capacity.py)"
    section = format_section(results, command, layout, decode, args.train_sample, env, heading)
    write_section(args.results, heading, section + ("\n" + "\n".join(extra) if extra else ""))
    for r in results:
        print(f"{r['run']}: dev frame accuracy {_pct(r['dev']['frame_accuracy'])}, test WER {_pct(r['test'][layout.test_part]['wer'])}, "
              f"training CPU s / epoch (total): {_cpu_cell(r['training'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
