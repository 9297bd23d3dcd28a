"""Hybrid decoding at a lower frame rate: does decoding every f-th frame make a frame-level
student's search cheap enough, at what cost in WER (issue 15)?

Stage 9's hybrid deployable student misses the end-to-end target (0.02 CPU seconds per audio
second), and its search, not its network, is what costs. The search's work grows with the number
of frames, so one way to cut it is to decode fewer of them, as Kaldi's chain models do (frame
subsampling factor 3; Povey et al. 2016, "Purely sequence-trained neural networks for ASR based on
lattice-free MMI"). A frame-level DNN scores each frame from its own window, so a student trained at
a lower rate would output what this one outputs at those frames: this script takes a trained
student's log-posteriors and either keeps every f-th frame (``pick``) or averages each block of f
frames (``mean``), and decodes them with

- ``same``: stage 3's HCLG. Each HMM state needs one frame, so a 3-state phone now lasts at least
  3f frames of the original rate.
- ``skip``: an HCLG compiled from the same tree and pdfs with a topology in which every state of a
  left-to-right (non-silence) HMM may also jump two states ahead, so a phone can last 2 decoded
  frames. Its transition probabilities are the topology's initial ones (no training re-estimated
  them); Kaldi's chain topology goes further (one state, trained with LF-MMI).

Per variant the acoustic scale is chosen on dev from f times the model's dev-tuned scale times each
``--multipliers`` (fewer frames carry the same evidence only if each is weighted more), and the
test part is decoded once at that choice. Beside them, the full frame rate at narrower searches
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

from asr_kd.data.features import cmvn_key
from asr_kd.decode.hclg import compile_hclg, load_hclg
from asr_kd.decode.hybrid import tid_to_pdf
from asr_kd.decode.priors import load_priors
from asr_kd.deploy.acoustic import TorchAcoustic
from asr_kd.deploy.speed import SearchSetting, parse_search_grid, with_setting
from asr_kd.errors import AsrKdError, ConfigError
from asr_kd.gmm.system import GmmSystem
from asr_kd.gmm.topology import make_topology
from asr_kd.kaldi import khg
from asr_kd.metrics.paired import wer_difference
from asr_kd.metrics.wer import WerResult
from asr_kd.report.tables import format_interval
from asr_kd.stages.common import read_senones
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import code_version, environment, environment_text
from asr_kd.train.frame_classifier import load_frame_classifier
from asr_kd.utils import write_json_atomic

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402
from decode_beams import finished_run  # noqa: E402
from decode_sharpness import resolve_model, search  # noqa: E402
from hybrid_capacity import recorded_decode_config  # noqa: E402

HEADING = "## Hybrid decoding at a lower frame rate (issue 15) (bench/hybrid_frame_rate.py)"
POOLINGS = ("mean", "pick")


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


def skip_topology(text: str, skip_probability: float = 0.2) -> str:
    """Return Kaldi topology ``text`` with every left-to-right entry (each state i goes to i and
    i + 1 only) given a transition from state i to i + 2 as well (probability ``skip_probability``,
    the others scaled down to make room); other entries (silence) are returned unchanged."""

    def rewrite(entry: re.Match) -> str:
        body = entry.group(0)
        states = [(int(m.group(1)), int(m.group(2)), [int(d) for d in re.findall(r"<Transition>\s*(\d+)", m.group(3))])
                  for m in _STATE.finditer(body)]
        if not states or any(sorted(dsts) != [i, i + 1] for i, _, dsts in states):
            return body
        final = len(states)
        for i, pdf_class, _ in states:
            arcs = [(i, 0.75), (i + 1, 0.25)]
            if i + 2 <= final:
                arcs = [(d, p * (1 - skip_probability)) for d, p in arcs] + [(i + 2, skip_probability)]
            new = f"<State> {i} <PdfClass> {pdf_class} " + " ".join(f"<Transition> {d} {p:.6g}" for d, p in arcs) + " </State>"
            body = _STATE.sub(lambda m, i=i, new=new: new if int(m.group(1)) == i else m.group(0), body)
        return body

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
            return "full rate" + (f", beam {self.setting.beam:g} / max-active {self.setting.max_active}" if self.setting else "")
        return f"1 in {self.factor} frames, {self.pooling}, {self.graph} HCLG"


def part_posteriors(layout: RecipeLayout, part: str, checkpoint: Path, max_utts: int | None):
    """Return ``(log-posteriors, reference text, audio seconds)`` per utterance of ``part`` with
    stage 7's per-speaker CMVN, in manifest order."""
    cuts = layout.open_cuts(layout.fbank_cuts(part))
    stats = layout.open_cmvn(part)
    acoustic = TorchAcoustic(load_frame_classifier(checkpoint))
    post, refs, seconds = {}, {}, {}
    for cut in cuts:
        if max_utts is not None and len(post) >= max_utts:
            break
        feats = stats.normalize(cut.load_features().astype(np.float32), cmvn_key(cut, "speaker"))
        post[cut.id] = acoustic([feats])[0]
        refs[cut.id] = " ".join(s.text or "" for s in cut.supervisions).strip()
        seconds[cut.id] = float(cut.duration)
    return post, refs, seconds


@dataclasses.dataclass
class Row:
    variant: Variant
    scale: float
    dev_grid: list[tuple[float, int]]  # (acoustic scale, dev word errors)
    dev: WerResult
    dev_rtf: float
    test: WerResult
    test_rtf: float
    frames: int  # dev frames decoded
    failed: int


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
    graphs = {"same": (load_hclg(senones.graph), system.tm)}
    start = time.process_time()
    skip_tm = khg.TransitionModel(ctx_dep=system.ctx_dep, hmm_topo=make_topology(skip_topology(system.topology_text)))
    skip_hclg, _ = compile_hclg(lang.load_fst("L_disambig"), lang.load_fst("G"), lang.disambig_phone_ids, system.ctx_dep, skip_tm,
                                base.graph_scales)
    skip_seconds = time.process_time() - start
    if skip_tm.num_pdfs != system.tm.num_pdfs:
        raise RuntimeError(f"the skip topology changed the pdfs: {skip_tm.num_pdfs} against {system.tm.num_pdfs}")
    graphs["skip"] = (skip_hclg, skip_tm)
    parts = {name: part_posteriors(layout, part, model.checkpoint, args.max_utts) for name, part in
             (("dev", layout.dev_part), ("test", layout.test_part))}
    print(f"{model.name}: dev {len(parts['dev'][0])} and test {len(parts['test'][0])} utterances; HCLG {graphs['same'][0].num_states} "
          f"states, skip HCLG {skip_hclg.num_states} ({skip_seconds:.0f} CPU s to build)", flush=True)

    def decode(variant: Variant, part: str, scale: float):
        post, refs, seconds = parts[part]
        hclg, tm = graphs[variant.graph]
        cfg = dataclasses.replace(base, acoustic_scale=scale)
        cfg = with_setting(cfg, variant.setting) if variant.setting is not None else cfg
        pooled = {u: pool_frames(x, variant.factor, variant.pooling) for u, x in post.items()}
        wer, failed, cpu = search(pooled, refs, lang.words, hclg, tm, priors, tid_to_pdf(tm), cfg)
        return wer, failed, sum(cpu.values()) / sum(seconds.values()), sum(len(x) for x in pooled.values())

    variants = [Variant(1, "mean", "same")] + [Variant(1, "mean", "same", s) for s in narrow]
    variants += [Variant(f, how, graph) for f in args.factors for how, graph in (("mean", "same"), ("pick", "same"), ("mean", "skip"))]
    rows: list[Row] = []
    for v in variants:
        scales = [model.scale] if v.factor == 1 else [round(model.scale * v.factor * m, 4) for m in args.multipliers]
        grid = []
        for s in scales:
            dev, dev_failed, dev_rtf, frames = decode(v, "dev", s)
            grid.append((s, dev, dev_failed, dev_rtf, frames))
            print(f"{v.name}, scale {s:g}: dev {dev.summary()}, search RTF {dev_rtf:.4f}", flush=True)
        s, dev, dev_failed, dev_rtf, frames = min(grid, key=lambda g: (g[1].errors, g[0]))
        test, test_failed, test_rtf, _ = decode(v, "test", s)
        rows.append(Row(v, s, [(g[0], g[1].errors) for g in grid], dev, dev_rtf, test, test_rtf, frames, dev_failed + test_failed))
        print(f"{v.name}: scale {s:g}, test {test.summary()}, search RTF {test_rtf:.4f}", flush=True)
    text = report(args, model, rows, graphs, skip_seconds)
    print(text)
    if args.json is not None:
        write_json_atomic(args.json, {"model": model.name, "scale": model.scale, "rows": [
            {"name": r.variant.name, "factor": r.variant.factor, "pooling": r.variant.pooling, "graph": r.variant.graph,
             "acoustic_scale": r.scale, "dev_grid": r.dev_grid, "dev_errors": r.dev.errors, "dev_ref_words": r.dev.ref_words,
             "dev_frames": r.frames, "test_errors": r.test.errors, "test_ref_words": r.test.ref_words, "failed": r.failed,
             "dev_search_rtf": r.dev_rtf, "test_search_rtf": r.test_rtf} for r in rows]})
    write_section(args.results, HEADING.split(" (bench/")[0], text)
    return 0


def report(args, model, rows: list[Row], graphs, skip_seconds: float) -> str:
    """Return the bench/RESULTS.md section."""
    command = ["python", "bench/hybrid_frame_rate.py", "--data", str(args.data), "--exp", str(args.exp), "--model", args.model,
               "--factors", *map(str, args.factors), "--multipliers", *(f"{m:g}" for m in args.multipliers), "--narrow", *args.narrow]
    command += ["--max-utts", str(args.max_utts)] if args.max_utts else []
    ref = rows[0]
    lines = [HEADING, "", f"`{shlex.join(command)}`: {model.name} ({model.checkpoint}, dev-tuned acoustic scale {model.scale:g} from "
             f"{model.scale_from}), per-speaker CMVN as stage 7 scores, PyTorch fp32, stage 9's faster decoder on one thread. "
             f"HCLG: stage 3's, {graphs['same'][0].num_states} states; the skip topology's, {graphs['skip'][0].num_states} states "
             f"({skip_seconds:.0f} CPU s to compile). Search RTF = CPU seconds of the search per audio second, one timed run. "
             "Differences are from the first row, in WER points with 95% paired bootstrap intervals over utterances; each "
             "reduced-rate row's acoustic scale is its best on dev (scales tried: errors), test decoded once at it.", "",
             "| Decoding | Dev frames | Acoustic scale (dev grid: errors) | Dev WER | − full rate, points | Dev search RTF | Test WER | "
             "− full rate, points | Test search RTF |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        grid = ", ".join(f"{s:g}: {e}" for s, e in r.dev_grid) if len(r.dev_grid) > 1 else "stage 7's"
        dd = "–" if r is ref else format_interval(wer_difference(ref.dev, r.dev).to_dict())
        td = "–" if r is ref else format_interval(wer_difference(ref.test, r.test).to_dict())
        failed = f" ({r.failed} failed)" if r.failed else ""
        lines.append(f"| {r.variant.name}{failed} | {r.frames} | {r.scale:g} ({grid}) | {100 * r.dev.wer:.2f}% ({r.dev.errors}/{r.dev.ref_words}) | "
                     f"{dd} | {r.dev_rtf:.4f} | {100 * r.test.wer:.2f}% ({r.test.errors}/{r.test.ref_words}) | {td} | {r.test_rtf:.4f} |")
    lines += ["", *summary(rows), "", environment_text(environment(), code_version())]
    return "\n".join(lines) + "\n"


def summary(rows: list[Row]) -> list[str]:
    """One line per reduced-rate row: its test cost against the full-rate narrowed search that is
    at least as fast on test, if any (speed bought either way, side by side)."""
    ref, out = rows[0], []
    narrowed = [r for r in rows[1:] if r.variant.factor == 1]
    for r in (r for r in rows if r.variant.factor > 1):
        diff = wer_difference(ref.test, r.test)
        verdict = "worse than the full rate" if diff.low > 0 else "not shown different from the full rate"
        rival = min((n for n in narrowed if n.test_rtf <= r.test_rtf), key=lambda n: n.test.errors, default=None)
        line = (f"- {r.variant.name}: test search {r.test_rtf / ref.test_rtf:.2f} times the full rate's, test WER "
                f"{format_interval(diff.to_dict())} points ({verdict})")
        if rival is not None:
            line += (f"; the full rate at beam {rival.variant.setting.beam:g} / max-active {rival.variant.setting.max_active}, no slower "
                     f"({rival.test_rtf / ref.test_rtf:.2f} times), has a test WER {format_interval(wer_difference(r.test, rival.test).to_dict())} "
                     "points from this row's")
        out.append(line + ".")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
