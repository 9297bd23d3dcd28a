"""Errors every system shares: on one part of a finished recipe run, the reference words each
system misses (substituted or deleted, by jiwer's alignment of its hyp.txt against ref.txt), how
many of them every network misses, and how many of those the triphone GMM misses too (issue 13).

A frame-accuracy gain that does not become a WER gain (Table 1 on small: the ensemble's test
frame accuracy 4 points above the baseline's, its WER within noise of it) meets the errors that
no acoustic model of the run moves; this counts them. On the synthetic corpus, whose
SYNTHETIC.json records the noise and SNR put on each utterance, it also gives each system's WER
per noise type and SNR band.

    python bench/shared_errors.py --data D --exp E [--part dev-clean] \\
        [--systems tri baseline distilled ensemble] [--run NAME=FOLDER ...] [--title T]

``--run`` adds any decoding folder that holds hyp.txt and ref.txt, such as a hybrid_capacity run's
``<out>/<variant>/decode/<variant>_<part>``. "tri" and "mono" are stage 3's GMMs; the others
stage 7's systems (seed 0). Needs stages 3 and 7 of a recipe run; without one it says so and
exits 0 (so that ``make bench`` on a fresh clone skips it).
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
import sys
from pathlib import Path
from typing import Mapping

import jiwer

from asr_kd.errors import DataError
from asr_kd.data.synth import MARKER_NAME
from asr_kd.metrics.wer import read_transcripts
from asr_kd.stages.layout import GMM_SYSTEMS, RecipeLayout

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402
from decode_beams import finished_run  # noqa: E402

HEADING = "## Errors every system shares on a recipe run"  # no titled section's heading may start with it
WORST = 20  # utterances named in the concentration sentence


def missed_words(refs: Mapping[str, str], hyps: Mapping[str, str]) -> tuple[set[tuple[str, int]], dict[str, int]]:
    """The reference words a hypothesis set misses, as ``(utterance, word index)`` (substituted or
    deleted in jiwer's alignment), and the insertions per utterance. An utterance without a
    hypothesis misses every word."""
    missed: set[tuple[str, int]] = set()
    inserted: dict[str, int] = {}
    for utt, ref in refs.items():
        words = ref.split()
        hyp = hyps.get(utt, "")
        inserted[utt] = 0
        if not words:
            inserted[utt] = len(hyp.split())
            continue
        if not hyp.strip():
            missed.update((utt, i) for i in range(len(words)))
            continue
        for chunk in jiwer.process_words(ref, hyp).alignments[0]:
            if chunk.type in ("substitute", "delete"):
                missed.update((utt, i) for i in range(chunk.ref_start_idx, chunk.ref_end_idx))
            elif chunk.type == "insert":
                inserted[utt] += chunk.hyp_end_idx - chunk.hyp_start_idx
    return missed, inserted


def shared_counts(missed: Mapping[str, set], networks: list[str], gmm: str | None) -> dict:
    """Per network, the share of its misses that every other network misses too; the words every
    network misses, those the GMM misses as well, the utterances they lie in and how many of them
    the ``WORST`` utterances hold."""
    common = set.intersection(*(set(missed[n]) for n in networks)) if networks else set()
    shares = {}
    for n in networks:
        others = [set(missed[o]) for o in networks if o != n]
        shared = set(missed[n]).intersection(*others) if others else set(missed[n])
        shares[n] = len(shared) / len(missed[n]) if missed[n] else 0.0
    per_utt = collections.Counter(u for u, _ in common)
    return {"common": len(common), "common_with_gmm": None if gmm is None else len(common & set(missed[gmm])),
            "utterances": len(per_utt), "worst": sum(k for _, k in per_utt.most_common(WORST)), "shared_share": shares}


def noise_band(meta: Mapping) -> str:
    """An utterance's degradation as SYNTHETIC.json records it: "clean", or the noise type and an
    SNR band (below 12 dB, 12 to 19 dB, 19 dB and above)."""
    if not meta.get("noise"):
        return "clean"
    snr = float(meta["snr_db"])
    return f"{meta['noise']}, " + ("< 12 dB" if snr < 12 else "12-19 dB" if snr < 19 else ">= 19 dB")


def band_wers(refs: Mapping[str, str], errors: Mapping[str, Mapping[str, int]], meta: Mapping[str, Mapping]) -> list[tuple]:
    """``(band, utterances, reference words, {system: WER})`` per noise band, worst first (the
    first system's WER); utterances SYNTHETIC.json does not name are left out."""
    rows: dict[str, list] = {}
    for utt, ref in refs.items():
        if utt not in meta:
            continue
        row = rows.setdefault(noise_band(meta[utt]), [0, 0, collections.Counter()])
        row[0] += 1
        row[1] += len(ref.split())
        for system, per_utt in errors.items():
            row[2][system] += per_utt.get(utt, 0)
    out = [(band, n, words, {s: count[s] / max(words, 1) for s in errors}) for band, (n, words, count) in rows.items()]
    first = next(iter(errors), None)
    return sorted(out, key=lambda r: -r[3][first] if first else 0)


def decode_folder(layout: RecipeLayout, name: str, part: str) -> Path:
    return layout.gmm_decode(name, part) if name in GMM_SYSTEMS else layout.decode / f"{name}_{part}"


def section_heading(title: str | None) -> str:
    return HEADING if title is None else f"## {title}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", type=Path, default=Path("recipes/librispeech/data"), help="the recipe's data folder")
    p.add_argument("--exp", type=Path, default=Path("recipes/librispeech/exp"), help="the recipe's experiment folder (stages 3 and 7 done)")
    p.add_argument("--part", default=None, help="the part (default: the run's dev part)")
    p.add_argument("--systems", nargs="+", default=["tri", "baseline", "distilled", "ensemble"],
                   help="stage 3's GMMs (tri, mono) and stage 7's systems (default tri baseline distilled ensemble)")
    p.add_argument("--run", action="append", default=[], metavar="NAME=FOLDER", help="another decoding folder (hyp.txt, ref.txt) named NAME")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    p.add_argument("--title", default=None, help="the section's heading instead of the default")
    args = p.parse_args(argv)
    run = finished_run(args.data, args.exp, "shared_errors")
    if run is None:
        return 0
    layout, _ = run
    part = args.part or layout.dev_part
    folders = {name: decode_folder(layout, name, part) for name in args.systems}
    for spec in args.run:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise DataError(f"--run {spec!r}: write NAME=FOLDER, the folder holding hyp.txt and ref.txt")
        folders[name] = Path(folder)
    for name, folder in folders.items():
        for f in ("hyp.txt", "ref.txt"):
            if not (folder / f).is_file():
                raise DataError(f"{name}: {folder / f} does not exist; decode {name} on {part} first (stage 3 or 7, or the bench that made it)")
    refs = read_transcripts(folders[next(iter(folders))] / "ref.txt")
    missed, errors = {}, {}
    for name, folder in folders.items():
        if read_transcripts(folder / "ref.txt") != refs:
            raise DataError(f"{folder / 'ref.txt'} differs from {folders[next(iter(folders))] / 'ref.txt'}: the systems were scored on other references")
        missed[name], inserted = missed_words(refs, read_transcripts(folder / "hyp.txt"))
        per_utt = collections.Counter(u for u, _ in missed[name])
        errors[name] = {u: per_utt[u] + inserted[u] for u in refs}
    gmm = next((n for n in folders if n in GMM_SYSTEMS), None)
    networks = [n for n in folders if n not in GMM_SYSTEMS]
    counts = shared_counts(missed, networks, gmm)
    words = sum(len(r.split()) for r in refs.values())
    command = (f"python bench/shared_errors.py --data {args.data} --exp {args.exp} --part {part} --systems {' '.join(args.systems)}"
               + "".join(f" --run {shlex.quote(r)}" for r in args.run) + (f" --title {shlex.quote(args.title)}" if args.title else ""))
    lines = [f"{section_heading(args.title)} (bench/shared_errors.py)", "", f"`{command}`: {len(refs)} utterances, {words} reference words.", "",
             "| system | words missed (substituted or deleted) | insertions | WER | its misses that every other network misses too |",
             "|---|---|---|---|---|"]
    for name in folders:
        ins = sum(errors[name].values()) - len(missed[name])
        share = f"{100 * counts['shared_share'][name]:.1f}%" if name in counts["shared_share"] and len(networks) > 1 else "(a GMM)" if name == gmm else "n/a"
        lines.append(f"| {name} | {len(missed[name])} | {ins} | {100 * sum(errors[name].values()) / words:.2f}% | {share} |")
    mean_missed = sum(len(missed[n]) for n in networks) / max(len(networks), 1)
    lines += ["", f"Missed by every network ({', '.join(networks)}): **{counts['common']}** reference words, "
              f"{100 * counts['common'] / max(mean_missed, 1):.0f}% of a network's {mean_missed:.0f} misses on average"
              + (f"; {counts['common_with_gmm']} of them the {gmm} GMM misses too" if gmm else "")
              + f". They lie in {counts['utterances']} of the {len(refs)} utterances; the {WORST} utterances with the most hold "
              f"{counts['worst']}. A network's gain elsewhere can only move the rest of its errors.", ""]
    synthetic = layout.synthetic_corpus / MARKER_NAME
    if synthetic.is_file():
        meta = json.loads(synthetic.read_text()).get("utterances", {})
        bands = band_wers(refs, errors, meta)
        if bands:
            lines += ["WER by the degradation SYNTHETIC.json records for each utterance (noise type, SNR band), worst first:", "",
                      "| noise, SNR | utterances | words | " + " | ".join(folders) + " |", "|---|---|---|" + "---|" * len(folders)]
            lines += [f"| {band} | {n} | {w} | " + " | ".join(f"{100 * wer[s]:.1f}%" for s in folders) + " |" for band, n, w, wer in bands]
            lines.append("")
    write_section(args.results, section_heading(args.title), "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
