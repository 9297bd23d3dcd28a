"""Search cost against posterior sharpness: hybrid students decoded side by side on the dev part of
a finished recipe run, at the deployment search's (beam, max-active) settings (issue 15).

Stage 9 narrows the search on dev and measures the real-time factor; its cost depends on the
machine and on the network's posteriors (a flatter posterior keeps more tokens within the beam).
This decodes the same dev utterances with each ``--model`` in one process, on one thread, and
reports per model and setting: the dev WER and its difference from the first setting (paired
bootstrap, as stage 9's non-inferiority test), the search's CPU seconds per audio second in each
of ``--repeats`` interleaved runs, and the decoder's score lookups per frame on the first
``--count-utts`` utterances (one per emitting arc of each token that survives pruning: the work
of the search; see asr_kd/decode/search_effort.py). Per model: the mean per-frame posterior
entropy and largest posterior over every dev frame. Between models: the search-time ratio per
setting and run, with a 95% bootstrap interval over utterances. Then the choice stage 9's rule
(``asr_kd.deploy.speed.choose_setting``, 2% of the first setting's dev word errors) makes for each
model, and the choice with an allowance stated in WER points (``--points``) instead.

The search is stage 9's: the faster decoder over stage 3's HCLG, the realignment priors, scores as
``asr_kd.decode.hybrid.hybrid_decodable``; features are the stored fbank, normalised as a model
directory does (``--cmvn global``: the training part's pooled statistics) or as stage 7 scores
(``--cmvn speaker``); the networks run in PyTorch fp32 (stage 9 timed its int8 ONNX export: the
search, not the network, is timed here).

    python bench/decode_sharpness.py --data /work/scale/mini/data --exp /work/scale/mini/exp \\
        --model distilled --model kd_e10=/work/scale/ab/kd/kd_e10 \\
        [--settings 11:2000 11:1500 10:1500 10:1000] [--repeats 2] [--scale S] [--max-utts N]

A ``--model`` is a stage-7 student (baseline, distilled, compressed; its dev-tuned acoustic scale
from stage 7) or NAME=FOLDER (a training folder with best.pt or final.pt; its scale from
FOLDER/result.json as bench/hybrid_capacity.py writes it), unless ``--scale`` sets one for all.
Needs stages 3 and 7 of a recipe run; without one it says so and exits 0. Cost on mini (160 dev
utterances, 508 s of audio): about 15 CPU seconds per model, setting and run (270-280 CPU s in all for the section in bench/RESULTS.md, two full runs), plus the lookup
counts (a Python call per lookup: keep ``--count-utts`` small).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from asr_kd.config import DecodeConfig
from asr_kd.data.features import CmvnStats, cmvn_key
from asr_kd.decode.decoder import decode_one, ids_to_text, make_decoder
from asr_kd.decode.hclg import load_hclg
from asr_kd.decode.hybrid import hybrid_decodable, tid_to_pdf, transition_loglikes
from asr_kd.decode.priors import load_priors
from asr_kd.decode.search_effort import Sharpness, count_lookups, posterior_sharpness
from asr_kd.deploy.acoustic import TorchAcoustic
from asr_kd.deploy.model_dir import pooled_cmvn
from asr_kd.deploy.speed import (DEFAULT_TOLERANCE, END_TO_END_TARGET, SearchPoint, SearchSetting, choose_setting, compare_to_reference,
                                 parse_search_grid, tolerance_for_points, with_setting)
from asr_kd.errors import AsrKdError, ConfigError
from asr_kd.gmm.train import GmmSystem
from asr_kd.metrics.paired import BootstrapInterval, bootstrap_rates, wer_difference
from asr_kd.metrics.wer import WerResult, compute_wer
from asr_kd.report.tables import format_interval
from asr_kd.stages.common import model_checkpoint, read_senones
from asr_kd.stages.decode_part import tuned_scale
from asr_kd.stages.layout import STUDENT_SYSTEMS, RecipeLayout
from asr_kd.stages.provenance import code_version, environment, environment_text
from asr_kd.train.frame_classifier import load_frame_classifier
from asr_kd.utils import read_json, write_json_atomic

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402
from decode_beams import finished_run  # noqa: E402
from hybrid_capacity import recorded_decode_config  # noqa: E402

HEADING = "## Search cost against posterior sharpness (issue 15) (bench/decode_sharpness.py)"


@dataclasses.dataclass(frozen=True)
class Model:
    """A network to decode: its name, checkpoint and acoustic scale (and where the scale came from)."""

    name: str
    checkpoint: Path
    scale: float
    scale_from: str


def resolve_model(text: str, layout: RecipeLayout, common_scale: float | None) -> Model:
    """Parse ``NAME`` (a stage-7 student) or ``NAME=FOLDER``; ConfigError naming the fix."""
    name, sep, folder = text.partition("=")
    if not sep:
        if name not in STUDENT_SYSTEMS:
            raise ConfigError(f"--model {text}: name a stage-7 student ({', '.join(STUDENT_SYSTEMS)}) or pass NAME=FOLDER")
        path = layout.student_dir(STUDENT_SYSTEMS[name])
    else:
        path = Path(folder)
    checkpoint = model_checkpoint(path)
    if common_scale is not None:
        return Model(name, checkpoint, common_scale, "--scale")
    if not sep:
        scale = tuned_scale(layout, name)
        where = "stage 7, tuned on dev"
    else:
        result = read_json(path / "result.json") if (path / "result.json").is_file() else {}
        assert isinstance(result, dict)
        scale = result.get("dev", {}).get("acoustic_scale")
        where = "its result.json, tuned on dev"
    if scale is None:
        raise ConfigError(f"--model {text}: no dev-tuned acoustic scale found for it; pass --scale")
    return Model(name, checkpoint, float(scale), where)


def dev_features(layout: RecipeLayout, cmvn: str, max_utts: int | None, part: str | None = None):
    """Return ``(normalised fbank, reference text, audio seconds)`` per utterance of ``part``
    (default: the dev part), in manifest order."""
    part = part or layout.dev_part
    cuts = layout.open_cuts(layout.fbank_cuts(part))
    if cmvn == "global":  # what a model directory does: the training speakers' statistics pooled
        stats = pooled_cmvn(CmvnStats.load(layout.cmvn(layout.train_part)))
        norm = lambda c, f: stats.normalize(f, "global")  # noqa: E731
    else:
        stats = layout.open_cmvn(part)
        norm = lambda c, f: stats.normalize(f, cmvn_key(c, "speaker"))  # noqa: E731
    feats, refs, seconds = {}, {}, {}
    for cut in cuts:
        if max_utts is not None and len(feats) >= max_utts:
            break
        feats[cut.id] = norm(cut, cut.load_features().astype(np.float32))
        refs[cut.id] = " ".join(s.text or "" for s in cut.supervisions).strip()
        seconds[cut.id] = float(cut.duration)
    return feats, refs, seconds


@dataclasses.dataclass
class Cell:
    """One model at one setting: its WER details, per-utterance search CPU seconds per run, and
    lookups per frame on the counted sample (None when not counted)."""

    wer: WerResult
    failed: int
    cpu: list[dict[str, float]]
    lookups_per_frame: float | None = None


def search(posteriors, refs, words, hclg, tm, priors, tid2pdf, config: DecodeConfig) -> tuple[WerResult, int, dict[str, float]]:
    """Decode every utterance with ``config``; return the WER, the failures (all deletions) and
    each utterance's search CPU seconds (scores, search and the best path's word ids; stage 9's
    Searcher also builds word timings from the best path, so its times can read a little higher)."""
    decoder = make_decoder(hclg, config)
    hyps, cpu, failed = {}, {}, 0
    for utt, lp in posteriors.items():
        start = time.process_time()
        try:
            decoded = decode_one(decoder, hybrid_decodable(lp, priors, tid2pdf, config.acoustic_scale, utt), tm, utt, config.allow_partial)
            hyps[utt] = ids_to_text(decoded.word_ids, words)
        except AsrKdError:
            failed += 1
        cpu[utt] = time.process_time() - start
    return compute_wer(refs, hyps), failed, cpu


def time_ratio(first: dict[str, float], other: dict[str, float], seconds: dict[str, float]) -> BootstrapInterval:
    """Return the search time of ``other`` over that of ``first`` (CPU per audio second, same
    utterances) with its 95% paired bootstrap interval over utterances."""
    ids = sorted(seconds)
    return bootstrap_rates({"a": np.array([first[u] for u in ids]), "b": np.array([other[u] for u in ids])},
                           np.array([seconds[u] for u in ids]), lambda r: r["b"] / r["a"])


def ratio_text(iv: BootstrapInterval) -> str:
    return f"{iv.value:.3f} [{iv.low:.3f}, {iv.high:.3f}]"


def rule_choices(cells: dict[SearchSetting, Cell], reference: SearchSetting, points: list[float]) -> list[tuple[str, SearchSetting, float]]:
    """Return ``(rule, chosen setting, allowance in points)``: stage 9's rule, then one per ``points``."""
    pts = compare_to_reference([SearchPoint(s, c.wer.errors, c.wer.ref_words, 0.0, c.failed, details=c.wer) for s, c in cells.items()], reference)
    ref = next(p for p in pts if p.setting == reference)
    out = [(f"stage 9's: {100 * DEFAULT_TOLERANCE:g}% of dev errors", choose_setting(pts, reference, DEFAULT_TOLERANCE).setting,
            100 * DEFAULT_TOLERANCE * max(ref.errors, 1) / max(ref.ref_words, 1))]
    for p in points:
        out.append((f"{p:g} WER points", choose_setting(pts, reference, tolerance_for_points(p, pts, reference)).setting, p))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("recipes/librispeech/data"), help="the recipe's data folder")
    p.add_argument("--exp", type=Path, default=Path("recipes/librispeech/exp"), help="the recipe's experiment folder (stages 3 and 7 done)")
    p.add_argument("--model", action="append", default=None,
                   help="a stage-7 student (baseline, distilled, compressed) or NAME=FOLDER (best.pt or final.pt); repeat; "
                        "the first is the one the others are compared with (default: distilled)")
    p.add_argument("--settings", nargs="+", default=["11:2000", "11:1500", "10:1500", "10:1000"],
                   help="beam:max_active pairs; the first is the reference of the WER differences (default: stage 9's tables' "
                        "setting and its first grid points)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each model and setting, interleaved (default 2)")
    p.add_argument("--scale", type=float, default=None, help="one acoustic scale for every model (default: each its dev-tuned one)")
    p.add_argument("--cmvn", choices=("global", "speaker"), default="global",
                   help="feature normalisation: global = a model directory's (stage 9), speaker = stage 7's (default global)")
    p.add_argument("--max-utts", type=int, default=None, help="the first N dev utterances only (the same for every model)")
    p.add_argument("--count-utts", type=int, default=3, help="utterances on which the decoder's lookups are counted (0: none)")
    p.add_argument("--points", type=float, nargs="*", default=[1.0, 1.5], help="allowances in WER points to compare with stage 9's rule")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    p.add_argument("--json", type=Path, default=None, help="also write every measurement here (per-utterance search times too)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.count_utts < 0:
        p.error("--repeats must be >= 1 and --count-utts >= 0")
    run = finished_run(args.data, args.exp, "decode_sharpness")
    if run is None:
        return 0
    layout, lang = run
    try:
        models = [resolve_model(m, layout, args.scale) for m in (args.model or ["distilled"])]
        settings = list(parse_search_grid(",".join(args.settings)))
    except AsrKdError as err:
        print(f"decode_sharpness: {err}", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    base = dataclasses.replace(recorded_decode_config(layout), decoder="faster", num_jobs=1)
    senones = read_senones(layout)
    tm = GmmSystem.load(senones.model).tm
    hclg = load_hclg(senones.graph)
    priors = load_priors(layout.log_priors, tm.num_pdfs)
    tid2pdf = tid_to_pdf(tm)
    feats, refs, seconds = dev_features(layout, args.cmvn, args.max_utts)
    audio = sum(seconds.values())
    print(f"{len(feats)} dev utterances, {audio:.1f} s; HCLG {hclg.num_states} states", flush=True)

    posteriors: dict[str, dict[str, np.ndarray]] = {}
    sharpness: dict[str, Sharpness] = {}
    for m in models:
        acoustic = TorchAcoustic(load_frame_classifier(m.checkpoint))
        posteriors[m.name] = {u: acoustic([f])[0] for u, f in feats.items()}
        sharpness[m.name] = posterior_sharpness(posteriors[m.name].values())
        print(f"{m.name}: {sharpness[m.name]}", flush=True)

    cells: dict[str, dict[SearchSetting, Cell]] = {m.name: {} for m in models}
    for rep in range(args.repeats):  # interleaved, so that a change of load on the machine hits every model
        for s in settings:
            for m in models:
                cfg = with_setting(dataclasses.replace(base, acoustic_scale=m.scale), s)
                wer, failed, cpu = search(posteriors[m.name], refs, lang.words, hclg, tm, priors, tid2pdf, cfg)
                cell = cells[m.name].setdefault(s, Cell(wer, failed, []))
                if wer.errors != cell.wer.errors:  # the search is deterministic; a difference is a bug
                    raise RuntimeError(f"{m.name} at {s}: {wer.errors} errors in run {rep + 1}, {cell.wer.errors} in run 1")
                cell.cpu.append(cpu)
                print(f"run {rep + 1}, {s}, {m.name}: {wer.summary()}, search RTF {sum(cpu.values()) / audio:.4f}", flush=True)
    counted = list(feats)[: args.count_utts]
    count_seconds = time.process_time()
    for s in settings if counted else []:
        for m in models:
            decoder = make_decoder(hclg, with_setting(dataclasses.replace(base, acoustic_scale=m.scale), s))
            n = [count_lookups(decoder, transition_loglikes(posteriors[m.name][u], priors, tid2pdf, m.scale, u)) for u in counted]
            cells[m.name][s].lookups_per_frame = float(np.concatenate(n).mean())
            print(f"{s}, {m.name}: {cells[m.name][s].lookups_per_frame:.0f} lookups per frame", flush=True)
    count_seconds = time.process_time() - count_seconds
    text = report(args, models, settings, cells, sharpness, seconds, counted, count_seconds, hclg.num_states)
    print(text)
    if args.json is not None:
        write_json(args.json, models, settings, cells, sharpness, seconds)
    write_section(args.results, HEADING.split(" (bench/")[0], text)
    return 0


def report(args, models: list[Model], settings: list[SearchSetting], cells, sharpness, seconds, counted, count_seconds: float,
           hclg_states: int) -> str:
    """Return the bench/RESULTS.md section."""
    audio = sum(seconds.values())
    runs = range(args.repeats)
    command = ["python", "bench/decode_sharpness.py", "--data", str(args.data), "--exp", str(args.exp)]
    for m in args.model or ["distilled"]:
        command += ["--model", m]
    command += ["--settings", *args.settings, "--repeats", str(args.repeats), "--cmvn", args.cmvn, "--count-utts", str(args.count_utts)]
    command += (["--scale", f"{args.scale:g}"] if args.scale is not None else []) + (["--max-utts", str(args.max_utts)] if args.max_utts else [])
    command += ["--points", *(f"{x:g}" for x in args.points)] if args.points else []
    command += ["--json", str(args.json)] if args.json is not None else []
    reference = settings[0]
    lines = [HEADING, "", f"`{shlex.join(command)}`: {len(seconds)} dev utterances ({audio:.0f} s) of that run, {args.cmvn} CMVN, "
             f"networks in PyTorch fp32, stage 9's search (faster decoder, HCLG of {hclg_states} states), one thread, "
             f"{args.repeats} timed runs interleaved over models and settings. Search RTF = CPU seconds of the search per audio "
             f"second. Lookups = the decoder's score lookups per frame (one per emitting arc of each token that survives pruning) "
             f"on the first {len(counted)} utterances ({count_seconds:.0f} CPU s to count).", "",
             "| Model | Checkpoint | Acoustic scale | Frames | Mean entropy (nats) | Mean max posterior |", "|---|---|---|---|---|---|"]
    for m in models:
        s = sharpness[m.name]
        lines.append(f"| {m.name} | {m.checkpoint} | {m.scale:g} ({m.scale_from}) | {s.frames} | {s.entropy:.3f} | {s.max_posterior:.3f} |")
    run_heads = " | ".join(f"search RTF, run {r + 1}" for r in runs)
    lines += ["", f"| Model | Beam / max-active | Dev WER | − {reference.beam:g} / {reference.max_active}, points (95% CI) | {run_heads} | "
              "Lookups per frame |", "|---|---|---|---|" + "---|" * args.repeats + "---|"]
    for m in models:
        row = cells[m.name]
        ref_wer = row[reference].wer
        for s in settings:
            c = row[s]
            diff = "–" if s == reference else format_interval(wer_difference(ref_wer, c.wer).to_dict())
            failed = f", {c.failed} failed" if c.failed else ""
            rtfs = " | ".join(f"{sum(c.cpu[r].values()) / audio:.4f}" for r in runs)
            lookups = f"{c.lookups_per_frame:.0f}" if c.lookups_per_frame is not None else "–"
            lines.append(f"| {m.name} | {s.beam:g} / {s.max_active} | {100 * c.wer.wer:.2f}% ({c.wer.errors}/{c.wer.ref_words}{failed}) | "
                         f"{diff} | {rtfs} | {lookups} |")
    first = models[0]
    for m in models[1:]:
        lines += ["", f"Search time of {m.name} over {first.name}, same utterances and setting (95% bootstrap interval over "
                  "utterances, per run: it covers the choice of utterances, not the load on the machine, which changes between runs); "
                  "lookups per frame, the same ratio:", "",
                  "| Beam / max-active | " + " | ".join(f"run {r + 1}" for r in runs) + " | Lookups |", "|---|" + "---|" * args.repeats + "---|"]
        for s in settings:
            a, b = cells[first.name][s], cells[m.name][s]
            ratios = " | ".join(ratio_text(time_ratio(a.cpu[r], b.cpu[r], seconds)) for r in runs)
            lookups = f"{b.lookups_per_frame / a.lookups_per_frame:.3f}" if a.lookups_per_frame and b.lookups_per_frame else "–"
            lines.append(f"| {s.beam:g} / {s.max_active} | {ratios} | {lookups} |")
    lines += ["", "The setting each rule chooses on these dev decodes (the narrowest, by max-active then beam, whose word errors "
              "and whose WER difference's upper 95% bound stay within the allowance; stage 9's rule states it in percent of the "
              f"{reference.beam:g} / {reference.max_active} dev word errors, the others in WER points):", "",
              "| Model | Rule | Allowance, points | Chosen beam / max-active | Its search RTF, runs |", "|---|---|---|---|---|"]
    for m in models:
        for rule, chosen, allowance in rule_choices(cells[m.name], reference, args.points):
            c = cells[m.name][chosen]
            rtfs = ", ".join(f"{sum(c.cpu[r].values()) / audio:.4f}" for r in runs)
            lines.append(f"| {m.name} | {rule} | {allowance:.2f} | {chosen.beam:g} / {chosen.max_active} | {rtfs} |")
    lines += ["", *summary(models, settings, cells, sharpness, seconds, args.repeats), "", environment_text(environment(), code_version())]
    return "\n".join(lines) + "\n"


def summary(models: list[Model], settings: list[SearchSetting], cells, sharpness, seconds, repeats: int) -> list[str]:
    """Return the section's closing lines: each model's search time and lookups over the first
    model's (range over settings and runs), and the settings whose search alone stays within
    stage 9's end-to-end target in every run."""
    first = models[0]
    out = []
    for m in models[1:]:
        ivs = [time_ratio(cells[first.name][s].cpu[r], cells[m.name][s].cpu[r], seconds) for s in settings for r in range(repeats)]
        values = [iv.value for iv in ivs]
        lookups = [cells[m.name][s].lookups_per_frame / cells[first.name][s].lookups_per_frame for s in settings
                   if cells[m.name][s].lookups_per_frame and cells[first.name][s].lookups_per_frame]
        a, b = sharpness[first.name], sharpness[m.name]
        out.append(f"- {m.name} over {first.name}: search time {min(values):.3f}-{max(values):.3f} times over {len(ivs)} "
                   f"(setting, run) pairs, {sum(iv.low > 1 for iv in ivs)} of them with the 95% interval above 1 and "
                   f"{sum(iv.high < 1 for iv in ivs)} below"
                   + (f"; lookups per frame {min(lookups):.3f}-{max(lookups):.3f} times" if lookups else "")
                   + f"; mean entropy {b.entropy:.3f} against {a.entropy:.3f} nats, mean max posterior {b.max_posterior:.3f} "
                   f"against {a.max_posterior:.3f}.")
    audio = sum(seconds.values())
    for m in models:
        fast = [s for s in settings if all(sum(c.values()) / audio <= END_TO_END_TARGET for c in cells[m.name][s].cpu)]
        out.append(f"- {m.name}: settings whose search alone stays within stage 9's end-to-end target ({END_TO_END_TARGET:g}) in every "
                   f"run: {', '.join(f'{s.beam:g} / {s.max_active}' for s in fast) or 'none'}.")
    return out


def write_json(path: Path, models: list[Model], settings: list[SearchSetting], cells, sharpness, seconds) -> None:
    """Write every measurement (per-utterance search CPU seconds per run included) to ``path``."""
    data = {"seconds": seconds, "models": [{**dataclasses.asdict(m), "checkpoint": str(m.checkpoint),
                                            "sharpness": dataclasses.asdict(sharpness[m.name]),
                                            "settings": [{"beam": s.beam, "max_active": s.max_active, "errors": c.wer.errors,
                                                          "ref_words": c.wer.ref_words, "failed": c.failed, "cpu": c.cpu,
                                                          "lookups_per_frame": c.lookups_per_frame}
                                                         for s, c in cells[m.name].items()]} for m in models]}
    write_json_atomic(path, data)


if __name__ == "__main__":
    raise SystemExit(main())
