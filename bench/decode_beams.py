"""Decoding beams of a finished recipe run: WER and CPU time of the dev part at two (beam,
max-active) settings, for the triphone GMM and the networks, side by side in one run.

The recipe decodes every system with one beam and max-active (recipes/librispeech/conf/decode.yaml)
and searches each system's acoustic scale on dev, so decoding is run many times; this measures
what the narrower setting costs in word errors against Kaldi's usual beam 13 / max-active 7000.
Each system is decoded at the acoustic scale the recipe chose for it. CPU time is the process's
(other load on the machine does not count); the ratio is measured in the same run.

    python bench/decode_beams.py --data recipes/librispeech/data --exp recipes/librispeech/exp \
        [--settings 13:7000 11:2000] [--systems tri baseline distilled ensemble] [--max-utts N] [--title T]

Needs stages 3 and 7 of a recipe run (``make demo``); without one it says so and exits 0 (so
that ``make bench`` on a fresh clone skips it).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from asr_kd.config import DecodeConfig, GmmConfig, config_from_dict
from asr_kd.decode.gmm_decode import decode_gmm_batch
from asr_kd.decode.hclg import load_hclg
from asr_kd.decode.hybrid import decode_posteriors_batch
from asr_kd.decode.priors import load_priors
from asr_kd.gmm.train import GmmSystem
from asr_kd.kd.ensemble import ensemble_log_posteriors
from asr_kd.lang.lang_dir import Lang
from asr_kd.metrics.wer import compute_wer
from asr_kd.stages.common import load_teachers, model_checkpoint, read_senones, with_recorded_alignments
from asr_kd.stages.decode_part import tuned_scale
from asr_kd.stages.layout import STUDENT_SYSTEMS, RecipeLayout
from asr_kd.stages.provenance import read_record
from asr_kd.stages.s3_gmm import load_part
from asr_kd.train.frame_classifier import load_frame_classifier

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402



def finished_run(data: Path, exp: Path, script: str) -> tuple[RecipeLayout, Lang] | None:
    """Return the layout and lang of the recipe run in ``data``/``exp``, or None (said in one line,
    so that ``make bench`` on a fresh clone skips ``script``) when stages 3 and 7 have not run."""
    layout = with_recorded_alignments(RecipeLayout(data, exp))
    if read_record(layout.gmm) is None or not (layout.decode / "table1.json").is_file():
        print(f"{script}: no finished recipe run under {exp} (stages 3 and 7); run `make demo` first. Skipped.")
        return None
    return layout, Lang.load(layout.lang)


def system_inputs(layout: RecipeLayout, name: str, lang: Lang, max_utts: int | None, part: str | None = None):
    """Return ``(refs, hclg, decode)`` of system ``name`` on ``part`` (default: the dev part):
    ``decode(config, utterance_decoder=None)`` decodes it and returns the BatchResult."""
    part = part or layout.dev_part
    senones = read_senones(layout)
    if name in ("mono", "tri"):
        gmm_cfg = config_from_dict(GmmConfig, read_record(layout.gmm).config["gmm"])
        data = load_part(layout.data_dir, part, lang, gmm_cfg)
        utts = data.utterances[:max_utts]
        system = GmmSystem.load(layout.gmm_model(name))
        hclg = load_hclg(layout.gmm_graph(name))
        feats = {u.id: u.feats for u in utts}
        return ({u.id: data.refs[u.id] for u in utts}, hclg,
                lambda cfg, utterance_decoder=None: decode_gmm_batch(hclg, system.am, system.tm, feats, cfg, utterance_decoder))
    models = load_teachers(layout) if name == "ensemble" else [load_frame_classifier(model_checkpoint(layout.student_dir(STUDENT_SYSTEMS[name])))]
    cuts = layout.open_cuts(layout.fbank_cuts(part))
    posteriors, refs = {}, {}
    for cut, log_probs in ensemble_log_posteriors(models, cuts, layout.open_cmvn(part), 1.0):
        if max_utts is not None and len(posteriors) >= max_utts:
            break
        posteriors[cut.id] = log_probs.numpy()
        refs[cut.id] = " ".join(s.text or "" for s in cut.supervisions).strip()
    trans_model = GmmSystem.load(senones.model).tm
    hclg = load_hclg(senones.graph)
    priors = load_priors(layout.log_priors, trans_model.num_pdfs)
    return refs, hclg, lambda cfg, utterance_decoder=None: decode_posteriors_batch(hclg, trans_model, posteriors, priors, cfg, utterance_decoder)


def section_heading(title: str | None) -> str:
    """The heading ``write_section`` matches: the default one, or ``## <title>`` (--title)."""
    return "## Decoding beams on a recipe run" if title is None else f"## {title}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("recipes/librispeech/data"), help="the recipe's data folder")
    p.add_argument("--exp", type=Path, default=Path("recipes/librispeech/exp"), help="the recipe's experiment folder (stages 3 and 7 done)")
    p.add_argument("--settings", nargs="+", default=["13:7000", "11:2000"], help="beam:max_active pairs (default 13:7000 11:2000)")
    p.add_argument("--systems", nargs="+", default=["tri", "baseline", "distilled"], help="systems (tri, mono, baseline, distilled, ensemble)")
    p.add_argument("--max-utts", type=int, default=None, help="the first N dev utterances only")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    p.add_argument("--title", default=None, help="the section's heading instead of the default (a run on another corpus keeps its own section)")
    args = p.parse_args(argv)
    run = finished_run(args.data, args.exp, "decode_beams")
    if run is None:
        return 0
    layout, lang = run
    settings = [tuple(float(x) for x in s.split(":")) for s in args.settings]
    rows = []
    for name in args.systems:
        refs, _, decode = system_inputs(layout, name, lang, args.max_utts)
        scale = tuned_scale(layout, name) or 0.1
        cells = []
        for beam, max_active in settings:
            cfg = DecodeConfig(beam=beam, max_active=int(max_active), acoustic_scale=scale, num_jobs=1)
            start = time.process_time()
            hyps = decode(cfg).texts(lang.words)
            cpu = time.process_time() - start
            wer = compute_wer(refs, hyps)
            cells.append((wer.errors, wer.ref_words, cpu))
            print(f"{name} beam {beam:g} max-active {int(max_active)}: {wer.summary()}, {cpu:.1f} s CPU", flush=True)
        rows.append((name, scale, len(refs), cells))
    head = " | ".join(f"beam {b:g} / {int(m)}: errors (WER), CPU s" for b, m in settings)
    lines = [f"{section_heading(args.title)} (bench/decode_beams.py)", "",
             f"`python bench/decode_beams.py --data {args.data} --exp {args.exp} --settings {' '.join(args.settings)} --systems "
             f"{' '.join(args.systems)}" + (f" --max-utts {args.max_utts}" if args.max_utts else "")
             + (f" --title {shlex.quote(args.title)}" if args.title else "") + "`: the dev part of that run, each "
             "system at its dev-tuned acoustic scale, one process (CPU seconds of this process).", "",
             f"| system | scale | utterances | {head} | CPU ratio, first / last |", "|---|---|---|" + "---|" * len(settings) + "---|"]
    for name, scale, n, cells in rows:
        body = " | ".join(f"{e} ({100 * e / max(w, 1):.2f}%), {c:.0f}" for e, w, c in cells)
        lines.append(f"| {name} | {scale:g} | {n} | {body} | {cells[0][2] / max(cells[-1][2], 1e-9):.1f}x |")
    write_section(args.results, section_heading(args.title), "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
