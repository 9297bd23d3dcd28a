"""Hybrid decoding at a lower frame rate: does decoding every f-th frame make a frame-level
student's search cheap enough, at what cost in WER (issue 15)?

Stage 9's hybrid deployable student misses the end-to-end target (0.02 CPU seconds per audio
second), and its search, not its network, is what costs. The search's work grows with the number
of frames, so one way to cut it is to decode fewer of them, as Kaldi's chain models do (frame
subsampling factor 3; Povey et al. 2016, "Purely sequence-trained neural networks for ASR based on
lattice-free MMI"). This script takes a trained student's log-posteriors and either keeps every
f-th frame (``pick``: what running this frame-level network on every f-th frame gives, so its
network cost falls too) or averages each block of f frames (``mean``: the network still runs at the
full rate; only the search is saved). A student trained for the lower rate would be another
network; this measures what the search and the graph make of fewer frames. It decodes them with

- ``same``: stage 3's HCLG. Each HMM state needs one frame, so a 3-state phone now lasts at least
  3f frames of the original rate.
- ``initial``: the same topology, tree and pdfs, compiled with the topology's initial transition
  probabilities instead of stage 3's trained ones: the control for ``skip``.
- ``skip``: an HCLG compiled from the same tree and pdfs with a topology in which every state of a
  left-to-right non-silence HMM may also jump two states ahead, so a 3-state phone can last 2
  decoded frames; silence keeps its HMM. Its transition probabilities are initial ones too (no
  training re-estimated them). Kaldi's chain topology goes further: one state with two
  pdf-classes (the first frame and the self-loop), so a phone can pass in one frame, trained with
  LF-MMI at the lower rate.

Per variant the acoustic scale is chosen on dev from f times the model's dev-tuned scale times each
``--multipliers`` (fewer frames carry the same evidence only if each is weighted more) by the
recipe's rule (``asr_kd.decode.tuning.choose_scale``), and the test part is decoded once at that
choice. Beside them, the full frame rate at narrower searches
(``--narrow``), the other way to buy speed: every row gives its WER difference from the full rate
at the tables' search (paired bootstrap, 95%) and its search CPU seconds per audio second
(one thread, one timed run: the ratios between rows measured in one process are what to read).

    python bench/hybrid_frame_rate.py --data recipes/librispeech/data --exp recipes/librispeech/exp \\
        [--model distilled] [--factors 2] [--multipliers 0.75 1 1.5 2 3] [--narrow 10:1000 9:500]

Needs stages 3 and 7 of a recipe run; without one it says so and exits 0. Cost on mini (160 dev and
160 test utterances): about 15 CPU seconds per decode of a part, about 5 minutes in all.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from asr_kd.decode.hclg import compile_hclg, load_hclg
from asr_kd.decode.hybrid import tid_to_pdf
from asr_kd.decode.priors import load_priors
from asr_kd.decode.tuning import ScaleSweep, choose_scale
from asr_kd.deploy.acoustic import TorchAcoustic
from asr_kd.deploy.speed import SearchSetting, parse_search_grid, with_setting
from asr_kd.errors import AsrKdError, ConfigError
from asr_kd.gmm.system import GmmSystem
from asr_kd.gmm.topology import make_topology
from asr_kd.kaldi import khg
from asr_kd.metrics.paired import wer_difference
from asr_kd.metrics.wer import WerResult
from asr_kd.report.tables import format_interval, significance
from asr_kd.stages.common import read_senones
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import code_version, environment, environment_text
from asr_kd.train.frame_classifier import load_frame_classifier
from asr_kd.utils import write_json_atomic

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402
from decode_beams import finished_run  # noqa: E402
from decode_sharpness import dev_features, resolve_model, search  # noqa: E402
from hybrid_capacity import recorded_decode_config  # noqa: E402

HEADING = "## Hybrid decoding at a lower frame rate (issue 15) (bench/hybrid_frame_rate.py)"
POOLINGS = ("mean", "pick")
GRAPHS = ("same", "initial", "skip")


def pool_frames(log_probs: np.ndarray, factor: int, how: str) -> np.ndarray:
    """Return one row per ``factor`` frames of ``log_probs`` (frames x pdfs): every factor-th row
    (``pick``), or the mean of each block of ``factor`` rows, the last block filled up with copies
    of the last row (``mean``)."""
    if factor < 1 or how not in POOLINGS:
        raise ConfigError(f"frame pooling needs a factor >= 1 and one of {POOLINGS}, got {factor} and {how!r}")
    if factor == 1:
        return log_probs
    if how == "pick":
        return np.ascontiguousarray(log_probs[::factor])
    pad = (-len(log_probs)) % factor
    full = np.concatenate([log_probs, np.repeat(log_probs[-1:], pad, axis=0)]) if pad else log_probs
    return full.reshape(-1, factor, log_probs.shape[1]).mean(axis=1)


_STATE = re.compile(r"<State>\s*(\d+)\s*<PdfClass>\s*(\d+)((?:\s*<Transition>\s*\d+\s*[-+.eE\d]+)*)\s*</State>")
_ARC = re.compile(r"<Transition>\s*(\d+)\s*([-+.eE\d]+)")


def skip_topology(text: str, silence_phones: list[int], skip_probability: float = 0.2) -> str:
    """Return Kaldi topology ``text`` with every left-to-right entry (each state i goes to i and
    i + 1 only) for phones other than ``silence_phones`` given a transition from state i to i + 2
    as well (probability ``skip_probability``; the state's other transitions keep their ratio and
    make up the rest). Entries naming a silence phone, and entries of any other shape, are returned
    unchanged."""
    silence = set(silence_phones)

    def rewrite(entry: re.Match) -> str:
        body = entry.group(0)
        phones = {int(p) for p in re.search(r"<ForPhones>(.*?)</ForPhones>", body, re.S).group(1).split()}
        states = {int(m.group(1)): [int(d) for d, _ in _ARC.findall(m.group(3))] for m in _STATE.finditer(body)}
        if phones & silence or not states or any(sorted(dsts) != [i, i + 1] for i, dsts in states.items()):
            return body
        final = len(states)

        def state(m: re.Match) -> str:
            i = int(m.group(1))
            arcs = [(int(d), float(p)) for d, p in _ARC.findall(m.group(3))]
            if i + 2 <= final:
                arcs = [(d, p * (1 - skip_probability)) for d, p in arcs] + [(i + 2, skip_probability)]
            return f"<State> {i} <PdfClass> {m.group(2)} " + " ".join(f"<Transition> {d} {p:.6g}" for d, p in arcs) + " </State>"

        return _STATE.sub(state, body)

    return re.sub(r"<TopologyEntry>.*?</TopologyEntry>", rewrite, text, flags=re.S)


@dataclasses.dataclass(frozen=True)
class Variant:
    """How a row decodes: frames pooled by ``factor`` (``pooling``), graph ``same`` or ``skip``, and
    the search setting (None: the tables')."""

    factor: int
    pooling: str
    graph: str
    setting: SearchSetting | None = None

    @property
    def name(self) -> str:
        if self.factor == 1:
            return "full rate" + (f", {self.setting}" if self.setting else "")
        return f"1 in {self.factor} frames, {self.pooling}, {self.graph} HCLG"


def part_posteriors(layout: RecipeLayout, part: str, checkpoint: Path, max_utts: int | None):
    """Return ``(log-posteriors, reference text, audio seconds)`` per utterance of ``part`` with
    stage 7's per-speaker CMVN, in manifest order."""
    feats, refs, seconds = dev_features(layout, "speaker", max_utts, part)
    acoustic = TorchAcoustic(load_frame_classifier(checkpoint))
    return {u: acoustic([f])[0] for u, f in feats.items()}, refs, seconds


@dataclasses.dataclass
class Row:
    variant: Variant
    sweep: ScaleSweep  # the dev errors at each acoustic scale tried; its best is the row's scale
    dev: WerResult
    dev_rtf: float
    test: WerResult
    test_rtf: float
    frames: int  # dev frames decoded
    dev_failed: int
    test_failed: int


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("recipes/librispeech/data"), help="the recipe's data folder")
    p.add_argument("--exp", type=Path, default=Path("recipes/librispeech/exp"), help="the recipe's experiment folder (stages 3 and 7 done)")
    p.add_argument("--model", default="distilled", help="a stage-7 student (baseline, distilled, compressed) or NAME=FOLDER (default distilled)")
    p.add_argument("--factors", type=int, nargs="+", default=[2], help="frame-rate reductions to try (default 2)")
    p.add_argument("--multipliers", type=float, nargs="+", default=[0.75, 1.0, 1.5, 2.0, 3.0],
                   help="acoustic scales tried on dev, as multiples of factor x the model's dev-tuned scale")
    p.add_argument("--narrow", nargs="*", default=["10:1000", "9:500"], help="beam:max_active searches at the full rate to compare with")
    p.add_argument("--max-utts", type=int, default=None, help="the first N utterances of each part only")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    p.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = p.parse_args(argv)
    if any(f < 2 for f in args.factors) or any(m <= 0 for m in args.multipliers):
        p.error("--factors must be >= 2 and --multipliers > 0")
    run = finished_run(args.data, args.exp, "hybrid_frame_rate")
    if run is None:
        return 0
    layout, lang = run
    try:
        model = resolve_model(args.model, layout, None)
        narrow = list(parse_search_grid(",".join(args.narrow))) if args.narrow else []
    except AsrKdError as err:
        print(f"hybrid_frame_rate: {err}", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    base = dataclasses.replace(recorded_decode_config(layout), decoder="faster", num_jobs=1)
    senones = read_senones(layout)
    system = GmmSystem.load(senones.model)
    priors = load_priors(layout.log_priors, system.tm.num_pdfs)
    graphs = {"same": (load_hclg(senones.graph), system.tm, tid_to_pdf(system.tm))}
    compile_seconds = {}
    for name, text in (("initial", system.topology_text), ("skip", skip_topology(system.topology_text, lang.silence_phone_ids))):
        start = time.process_time()
        tm = khg.TransitionModel(ctx_dep=system.ctx_dep, hmm_topo=make_topology(text))
        if tm.num_pdfs != system.tm.num_pdfs:
            raise RuntimeError(f"the {name} topology changed the pdfs: {tm.num_pdfs} against {system.tm.num_pdfs}")
        hclg, _ = compile_hclg(lang.load_fst("L_disambig"), lang.load_fst("G"), lang.disambig_phone_ids, system.ctx_dep, tm, base.graph_scales)
        graphs[name] = (hclg, tm, tid_to_pdf(tm))
        compile_seconds[name] = time.process_time() - start
    parts = {name: part_posteriors(layout, part, model.checkpoint, args.max_utts) for name, part in
             (("dev", layout.dev_part), ("test", layout.test_part))}
    print(f"{model.name}: dev {len(parts['dev'][0])} and test {len(parts['test'][0])} utterances; HCLG states: "
          + ", ".join(f"{g} {graphs[g][0].num_states}" for g in GRAPHS), flush=True)

    pooled_parts: dict[tuple[str, int, str], dict[str, np.ndarray]] = {}  # pooled once, decoded at every scale and graph

    def decode(variant: Variant, part: str, scale: float):
        post, refs, seconds = parts[part]
        hclg, tm, tid2pdf = graphs[variant.graph]
        cfg = dataclasses.replace(base, acoustic_scale=scale)
        cfg = with_setting(cfg, variant.setting) if variant.setting is not None else cfg
        key = (part, variant.factor, variant.pooling)
        if key not in pooled_parts:
            pooled_parts[key] = {u: pool_frames(x, variant.factor, variant.pooling) for u, x in post.items()}
        pooled = pooled_parts[key]
        wer, failed, cpu = search(pooled, refs, lang.words, hclg, tm, priors, tid2pdf, cfg)
        return wer, failed, sum(cpu.values()) / sum(seconds.values()), sum(len(x) for x in pooled.values())

    variants = [Variant(1, "mean", "same")] + [Variant(1, "mean", "same", s) for s in narrow]
    variants += [Variant(f, how, graph) for f in args.factors
                 for how, graph in (("mean", "same"), ("pick", "same"), ("mean", "initial"), ("mean", "skip"))]
    rows: list[Row] = []
    for v in variants:
        default = model.scale * v.factor
        scales = [model.scale] if v.factor == 1 else sorted({round(default * m, 4) for m in args.multipliers})
        grid = {}
        for s in scales:
            grid[s] = decode(v, "dev", s)
            print(f"{v.name}, scale {s:g}: dev {grid[s][0].summary()}, search RTF {grid[s][2]:.4f}", flush=True)
        best = choose_scale(scales, [grid[s][0].errors for s in scales], default)
        dev, dev_failed, dev_rtf, frames = grid[best]
        sweep = ScaleSweep(layout.dev_part, tuple(scales), tuple(grid[s][0].errors for s in scales), dev.ref_words, best)
        test, test_failed, test_rtf, _ = decode(v, "test", best)
        rows.append(Row(v, sweep, dev, dev_rtf, test, test_rtf, frames, dev_failed, test_failed))
        print(f"{v.name}: scale {best:g}, test {test.summary()}, search RTF {test_rtf:.4f}", flush=True)
    text = report(args, model, rows, graphs, compile_seconds)
    print(text)
    if args.json is not None:
        write_json_atomic(args.json, {"model": model.name, "scale": model.scale, "rows": [row_dict(r, rows[0]) for r in rows]})
    write_section(args.results, HEADING.split(" (bench/")[0], text)
    return 0


def row_dict(r: Row, ref: Row) -> dict:
    """Return one row as JSON data, with its WER differences from the full rate (``ref``)."""
    setting = r.variant.setting
    return {"name": r.variant.name, "factor": r.variant.factor, "pooling": r.variant.pooling, "graph": r.variant.graph,
            "beam": setting.beam if setting else None, "max_active": setting.max_active if setting else None,
            "acoustic_scale": r.sweep.best, "sweep": r.sweep.to_dict(), "dev_frames": r.frames,
            "dev_errors": r.dev.errors, "dev_ref_words": r.dev.ref_words, "dev_failed": r.dev_failed, "dev_search_rtf": r.dev_rtf,
            "test_errors": r.test.errors, "test_ref_words": r.test.ref_words, "test_failed": r.test_failed, "test_search_rtf": r.test_rtf,
            "dev_difference": None if r is ref else wer_difference(ref.dev, r.dev).to_dict(),
            "test_difference": None if r is ref else wer_difference(ref.test, r.test).to_dict()}


def report(args, model, rows: list[Row], graphs, compile_seconds: dict[str, float]) -> str:
    """Return the bench/RESULTS.md section."""
    command = ["python", "bench/hybrid_frame_rate.py", "--data", str(args.data), "--exp", str(args.exp), "--model", args.model,
               "--factors", *map(str, args.factors), "--multipliers", *(f"{m:g}" for m in args.multipliers), "--narrow", *args.narrow]
    command += ["--max-utts", str(args.max_utts)] if args.max_utts else []
    ref = rows[0]
    lines = [HEADING, "", f"`{shlex.join(command)}`: {model.name} ({model.checkpoint}, dev-tuned acoustic scale {model.scale:g} from "
             f"{model.scale_from}), per-speaker CMVN as stage 7 scores, PyTorch fp32, stage 9's faster decoder on one thread. "
             f"HCLG states: stage 3's (same) {graphs['same'][0].num_states}; the same topology with initial transition probabilities "
             f"(initial) {graphs['initial'][0].num_states}, {compile_seconds['initial']:.0f} CPU s to compile; the topology whose "
             f"non-silence states may skip one (skip) {graphs['skip'][0].num_states}, {compile_seconds['skip']:.0f} CPU s. "
             "Search RTF = CPU seconds of the search per audio second, one timed run. Differences are from the first row, in WER "
             "points with 95% paired bootstrap intervals over utterances; each reduced-rate row's acoustic scale is chosen on dev "
             "by the recipe's rule (the fewest errors, ties to the scale nearest f times the model's; scales tried: errors), the "
             "test part decoded once at it.", "",
             "| Decoding | Dev frames | Acoustic scale (dev: errors) | Dev WER | − full rate, points | Dev search RTF | Test WER | "
             "− full rate, points | Test search RTF |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.variant.factor == 1:
            grid = model.scale_from
        else:
            grid = ", ".join(f"{s:g}: {e}" for s, e in zip(r.sweep.scales, r.sweep.errors))
            grid += "; at the grid's edge: the best may lie beyond it" if r.sweep.at_grid_edge else ""
        dd = "–" if r is ref else format_interval(wer_difference(ref.dev, r.dev).to_dict())
        td = "–" if r is ref else format_interval(wer_difference(ref.test, r.test).to_dict())
        failed = f" ({r.dev_failed} dev and {r.test_failed} test utterances failed)" if r.dev_failed or r.test_failed else ""
        lines.append(f"| {r.variant.name}{failed} | {r.frames} | {r.sweep.best:g} ({grid}) | {100 * r.dev.wer:.2f}% ({r.dev.errors}/{r.dev.ref_words}) | "
                     f"{dd} | {r.dev_rtf:.4f} | {100 * r.test.wer:.2f}% ({r.test.errors}/{r.test.ref_words}) | {td} | {r.test_rtf:.4f} |")
    lines += ["", *summary(rows), "", environment_text(environment(), code_version())]
    return "\n".join(lines) + "\n"


def summary(rows: list[Row]) -> list[str]:
    """One line per reduced-rate row: its test cost, and against it the full-rate narrowed search
    with the fewest dev errors among those no slower on test, if any (speed bought either way)."""
    ref, out = rows[0], []
    narrowed = [r for r in rows[1:] if r.variant.factor == 1]
    for r in (r for r in rows if r.variant.factor > 1):
        diff = wer_difference(ref.test, r.test).to_dict()
        rival = min((n for n in narrowed if n.test_rtf <= r.test_rtf), key=lambda n: n.dev.errors, default=None)
        line = (f"- {r.variant.name}: test search {r.test_rtf / ref.test_rtf:.2f} times the full rate's, test WER "
                f"{format_interval(diff)} points ({significance(diff, better_if_negative=True, reference='the full rate')})")
        if rival is not None:
            line += (f"; the full rate at {rival.variant.setting}, no slower "
                     f"({rival.test_rtf / ref.test_rtf:.2f} times), has a test WER {format_interval(wer_difference(r.test, rival.test).to_dict())} "
                     "points from this row's")
        out.append(line + ".")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
