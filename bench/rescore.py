"""LM rescoring of lattices on a recipe run: first-pass vs rescored WER and what the lattices cost.

For each system and part: the recipe's first pass (FasterDecoder at the recipe's beam), then one
lattice pass (``LatticeSimpleDecoder`` at ``--lattice-beam``, the only lattice decoder the
installed packages expose: no max-active) whose n-best is rescored with several LMs on the same
lattice: the larger LM (``--order``-gram trained by ``asr-kd train-lm`` on the lang's LM text,
i.e. the training transcripts) by exact ARPA back-off scores and by its G.fst, and, as a control,
the first pass's own LM by exact ARPA scores (the difference between G.fst's cheapest path and
exact back-off alone). WER differences carry paired-bootstrap 95% intervals (asr_kd/metrics/paired.py)
against the lattice's own first-pass best path. CPU seconds are this process's.

    python bench/rescore.py --data recipes/librispeech/data --exp recipes/librispeech/exp \
        [--out /tmp/rescore] [--systems tri distilled] [--parts dev-clean test-clean] [--lattice-beams 8 10]

Needs stages 3 and 7 of a recipe run (``make demo``); without one it says so and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from asr_kd.config import DecodeConfig
from asr_kd.decode.decoder import Decoded
from asr_kd.decode.rescore import (ArpaLm, RescoreConfig, decode_lattice, graph_lm, lattice_decoder, load_rescoring_lm, nbest)
from asr_kd.kaldi import kaldi_decoder
from asr_kd.lang.lm import perplexity, train_lang_lm
from asr_kd.metrics.paired import wer_difference
from asr_kd.metrics.wer import compute_wer
from asr_kd.stages.decode_part import tuned_scale

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402
from decode_beams import finished_run, system_inputs  # noqa: E402


class MultiLmRescorer:
    """One lattice per utterance, its n-best rescored by every LM of ``new_lms``; keeps what each
    chose and the CPU seconds of the lattice and of the rescoring (one process only)."""

    decodable_type = kaldi_decoder.DecodableCtc

    def __init__(self, hclg, config: DecodeConfig, n: int, old_lm, new_lms: dict) -> None:
        self.hclg, self.config, self.n, self.old_lm, self.new_lms = hclg, config, n, old_lm, new_lms
        self.decoder = lattice_decoder(hclg, config)
        self.chosen: dict[str, dict[str, list[int]]] = {name: {} for name in ["first pass", *new_lms]}
        self.cpu = {"lattice": 0.0, "nbest": 0.0, **{name: 0.0 for name in new_lms}}
        self.nbest_sizes: list[int] = []

    def decode(self, decodable, utt_id: str) -> Decoded:
        t0 = time.process_time()
        lattice = decode_lattice(self.decoder, decodable, self.config.acoustic_scale, utt_id, self.config.allow_partial)
        t1 = time.process_time()
        hyps = nbest(lattice, self.config.acoustic_scale, self.n, self.config.lattice_beam)
        t2 = time.process_time()
        self.cpu["lattice"] += t1 - t0
        self.cpu["nbest"] += t2 - t1
        self.nbest_sizes.append(len(hyps))
        self.chosen["first pass"][utt_id] = list(hyps[0][0])
        for name, lm in self.new_lms.items():
            t = time.process_time()
            best = min(hyps, key=lambda h: h[1] - self.old_lm.cost(h[0]) + lm.cost(h[0]))
            self.cpu[name] += time.process_time() - t
            self.chosen[name][utt_id] = list(best[0])
        return Decoded(list(hyps[0][0]), [], -hyps[0][1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("recipes/librispeech/data"), help="the recipe's data folder")
    p.add_argument("--exp", type=Path, default=Path("recipes/librispeech/exp"), help="the recipe's experiment folder (stages 3 and 7 done)")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "asr_kd_rescore",
                   help="folder for the larger LM and rescore.json, never inside the recipe's folders (default: <tmp>/asr_kd_rescore)")
    p.add_argument("--systems", nargs="+", default=["tri", "distilled"], help="systems (tri, mono, baseline, distilled, ensemble)")
    p.add_argument("--parts", nargs="+", default=["dev-clean", "test-clean"], help="parts to decode")
    p.add_argument("--order", type=int, default=4, help="order of the larger LM (default 4)")
    p.add_argument("--lattice-beams", "--lattice-beam", type=float, nargs="+", default=[8.0], help="search beams of the lattice pass, one row each (default 8; no max-active)")
    p.add_argument("--nbest", type=int, default=100, help="word sequences rescored per lattice (default 100)")
    p.add_argument("--max-utts", type=int, default=None, help="the first N utterances of each part only")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md", help="where to write the section")
    p.add_argument("--section", default="", help="suffix of the section's heading, so that a second measurement gets its own section")
    args = p.parse_args(argv)

    run = finished_run(args.data, args.exp, "rescore")
    if run is None:
        return 0
    layout, lang = run
    args.out.mkdir(parents=True, exist_ok=True)
    larger = args.out / f"{args.order}gram.arpa"
    t = time.process_time()
    sentences = train_lang_lm(layout.lang, args.order, larger)
    lm_cpu = time.process_time() - t
    first_arpa = layout.lang / "lm" / "lm.arpa"
    old_lm = graph_lm(lang)
    new_lms = {f"{args.order}-gram, exact": ArpaLm(larger, lang),
               f"{args.order}-gram, G.fst": load_rescoring_lm(RescoreConfig(str(larger), method="fst"), lang, old_lm, args.out),
               "first-pass LM, exact (control)": ArpaLm(first_arpa, lang)}
    load_rescoring_lm(RescoreConfig(str(larger)), lang, old_lm, args.out)  # the vocabulary check of the CLI path
    report: dict = {"lm": {"order": args.order, "sentences": sentences, "train_cpu_s": lm_cpu}, "runs": []}
    for name in args.systems:
        scale = tuned_scale(layout, name) or 0.1
        for part in args.parts:
            refs, hclg, decode = system_inputs(layout, name, lang, args.max_utts, part)
            words = [refs[u].split() for u in sorted(refs)]
            report["lm"][f"ppl_{part}"] = {"first": perplexity(first_arpa, words).ppl, "larger": perplexity(larger, words).ppl}
            recipe_cfg = DecodeConfig(acoustic_scale=scale, num_jobs=1)
            t = time.process_time()
            recipe = compute_wer(refs, decode(recipe_cfg).texts(lang.words))
            recipe_cpu = time.process_time() - t
            for beam in args.lattice_beams:
                lat_cfg = dataclasses.replace(recipe_cfg, beam=beam)
                rescorer = MultiLmRescorer(hclg, lat_cfg, args.nbest, old_lm, new_lms)
                batch = decode(lat_cfg, rescorer)
                texts = {k: {u: " ".join(lang.words.name(w) for w in v) for u, v in chosen.items()} for k, chosen in rescorer.chosen.items()}
                first = compute_wer(refs, texts["first pass"])
                row = {"system": name, "part": part, "scale": scale, "utterances": len(refs), "failed": len(batch.failed),
                       "recipe_first_pass": {"beam": recipe_cfg.beam, "errors": recipe.errors, "wer": recipe.wer, "cpu_s": recipe_cpu},
                       "lattice_first_pass": {"beam": beam, "errors": first.errors, "wer": first.wer},
                       "cpu_s": rescorer.cpu, "nbest_mean": float(np.mean(rescorer.nbest_sizes)), "rescored": {}}
                for lm_name in new_lms:
                    res = compute_wer(refs, texts[lm_name])
                    row["rescored"][lm_name] = {"errors": res.errors, "wer": res.wer, "vs_first": wer_difference(first, res).to_dict()}
                print(json.dumps(row), flush=True)
                report["runs"].append(row)
    (args.out / "rescore.json").write_text(json.dumps(report, indent=1))
    _write(args, report, list(new_lms))
    return 0


def _write(args: argparse.Namespace, report: dict, lm_names: list[str]) -> None:
    command = (f"python bench/rescore.py --data {args.data} --exp {args.exp} --out {args.out} --systems {' '.join(args.systems)} "
               f"--parts {' '.join(args.parts)} --order {args.order} --lattice-beams {' '.join(f'{b:g}' for b in args.lattice_beams)} "
               f"--nbest {args.nbest}" + (f" --max-utts {args.max_utts}" if args.max_utts else "")
               + (f" --section '{args.section}'" if args.section else ""))
    heading = "## LM rescoring of lattices" + (f": {args.section}" if args.section else "")
    lm = report["lm"]
    ppl = "; ".join(f"{k[4:]}: {v['first']:.1f} -> {v['larger']:.1f}" for k, v in lm.items() if k.startswith("ppl_"))
    lines = [f"{heading} (bench/rescore.py)", "", f"`{command}`", "",
             f"Larger LM: a {lm['order']}-gram trained (`asr-kd train-lm`) on the lang's LM text, {lm['sentences']} training "
             f"transcripts of the synthetic corpus, the same text as the first pass's 3-gram, so the gain it can bring is small "
             f"by construction (perplexity first-pass LM -> larger: {ppl}). Lattices: LatticeSimpleDecoder at the beam shown "
             f"(no max-active), lattice beam {DecodeConfig().lattice_beam:g}, n-best as below; each system at its dev-tuned acoustic scale; one process. "
             "Differences: rescored minus the lattice's own first-pass best path, WER points with a paired-bootstrap 95% interval.", "",
             "| system | part | first pass, recipe beam 13: WER, CPU s | lattice first pass: beam, WER | "
             + " | ".join(f"rescored, {n}: WER, diff [95% CI]" for n in lm_names) + " | CPU s: lattices, n-best, LM scoring | mean n-best |",
             "|---|---|---|---|" + "---|" * len(lm_names) + "---|---|"]
    for r in report["runs"]:
        cells = " | ".join(f"{100 * v['wer']:.2f}%, {100 * v['vs_first']['value']:+.2f} [{100 * v['vs_first']['low']:+.2f}, "
                           f"{100 * v['vs_first']['high']:+.2f}]" for v in r["rescored"].values())
        cpu = r["cpu_s"]
        lines.append(f"| {r['system']} | {r['part']} ({r['utterances']} utts) | {100 * r['recipe_first_pass']['wer']:.2f}%, "
                     f"{r['recipe_first_pass']['cpu_s']:.0f} | {r['lattice_first_pass']['beam']:g}, {100 * r['lattice_first_pass']['wer']:.2f}% | "
                     f"{cells} | {cpu['lattice']:.0f}, {cpu['nbest']:.0f}, {sum(v for k, v in cpu.items() if k not in ('lattice', 'nbest')):.1f} | "
                     f"{r['nbest_mean']:.1f} |")
    write_section(args.results, f"{heading} (bench/rescore.py)", "\n".join(lines) + "\n")  # the full heading: one is a prefix of the other


if __name__ == "__main__":
    raise SystemExit(main())
