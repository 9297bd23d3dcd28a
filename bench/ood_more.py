"""Table 1's systems on a larger sample of the unseen voices (issue 12): more speech of the
synthetic corpus' out-of-domain family, decoded at stage 7's dev-chosen scales.

The recipe's test-ood is small (mini: 60 utterances, 452 words), so a difference between two
systems there has a wide interval. This writes another part of the same family
(``asr_kd.data.synth.synthesize_ood_part``: the engine that spoke test-ood, its voices, each with
a fresh speaking rate and channel, the corpus' degradations, sentences no part of the corpus
speaks whose words all occur in the training text), computes its features with the recipe's feature config (its own
per-speaker CMVN, as stage 1 does), decodes every system (a student: each of its seeds) as stage
7 decoded the test parts (its beam, max-active and the scale, and CTC stage 7's blank penalty, it
chose on dev for the system),
and reports each system's WER there beside Table 1's test-clean and test-ood, the ratio to
test-clean (issue 12's target: at most 2 for the distilled student), and ``--pair B A`` (repeatable; default
distilled baseline; also ensemble minus the first pair's A where the ensemble is decoded and in no pair) with
paired bootstrap intervals over utterances on the new part and on the new part pooled with the
recipe's test-ood, per talker of the new part and seed by seed. The recipe's test-ood is decoded again here, and its WER checked against
Table 1's for every seed.

    python bench/ood_more.py --data recipes/librispeech/data --exp recipes/librispeech/exp \\
        [--speakers 8] [--utts-per-speaker 50] [--seed 1] [--work /tmp/ood_more] [--seeds 3]

With ``--ctc [--units phone]`` the systems are the CTC path's (default baseline, frame and the
ensemble; pair frame baseline), decoded on HLG as CTC stage 7 decoded them and checked against
its table; the same ``--work`` serves both. Beside the HLG WER (where the n-gram LM weighs in)
each CTC system's greedy token error rate (no LM: the acoustic model alone) is reported, checked
against the table on the recipe's test-ood, with the same differences.

Needs stages 0-7 of a run on the synthetic corpus (``make demo``; with ``--ctc``, CTC stage 7
too); without them it says so and exits 0. Writes nothing under ``--data`` or ``--exp``: the audio and features go to ``--work``
(reused when rerun with the same arguments, refused when made with others).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from asr_kd.config import CtcConfig, DecodeConfig, FeatureConfig, config_from_dict, load_config
from asr_kd.data.synth import synthesize_ood_part
from asr_kd.decode.penalty import PenalisedGraphs
from asr_kd.errors import DataError
from asr_kd.metrics.paired import bootstrap_difference
from asr_kd.report.tables import format_interval
from asr_kd.lang.lang_dir import Lang
from asr_kd.stages.ctc_common import prepare_units
from asr_kd.stages.ctc_s7_decode import SystemDecoding, system_decoding
from asr_kd.stages.decode_part import prepare_part
from asr_kd.stages.layout import STUDENT_SYSTEMS, RecipeLayout
from asr_kd.stages.provenance import code_version, environment, environment_text, read_record
from asr_kd.utils import read_json, write_json_atomic

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402
from decode_beams import finished_run  # noqa: E402
from decode_penalty import ctc_part_decoder, ctc_row, finished_ctc_run, has_seeds, part_decoder, seed_errors  # noqa: E402

HEADING = "## Table 1's systems on a larger sample of the unseen voices (bench/ood_more.py, issue 12)"
CTC_HEADING = "## The CTC systems on a larger sample of the unseen voices (bench/ood_more.py --ctc, issue 12)"
PART = "test-ood-more"


def make_part(layout, work: Path, speakers: int, utts_per_speaker: int, seed: int) -> dict:
    """Synthesise the part into ``work``/corpus (``synthesize_ood_part``: reused where made with
    the same arguments, refused where made with others) and compute its features into
    ``work``/data (redone unless ``made.json`` there names the same part and feature config);
    return its size and what this run did, with the seconds each step took."""
    corpus, data = work / "corpus", work / "data"
    before = len(list((corpus / PART).glob("*/*/*.flac")))
    start = time.time()
    summary = synthesize_ood_part(layout.synthetic_corpus, corpus, PART, speakers, utts_per_speaker, seed)
    out = {"utterances": summary.utterances, "hours": summary.hours, "speakers": summary.speakers,
           "synthesised": summary.utterances - before, "synthesis_seconds": round(time.time() - start, 1)}
    feature_config = load_config(FeatureConfig, layout.feature_config)
    made = json.loads(json.dumps({"part": json.loads((corpus / f"{PART}.synth.json").read_text()),
                                  "features": dataclasses.asdict(feature_config)}))
    start = time.time()
    out["features_reused"] = (data / "made.json").is_file() and read_json(data / "made.json") == made
    if not out["features_reused"]:
        prepare_part(corpus, PART, data, feature_config, num_jobs=2)
        write_json_atomic(data / "made.json", made)
    out["features_seconds"] = round(time.time() - start, 1)
    return out


@dataclasses.dataclass
class Recorded:
    """What a run's decoding stage recorded, per system and part: stage 7's ``table1.json`` (hybrid)
    or CTC stage 7's ``scores.json``, and how to decode a system as it did."""

    layout: RecipeLayout
    entries: dict
    ctc: bool
    dev_part: str
    config: DecodeConfig
    # decoder(layout whose data_dir holds the part, system, seed, part) -> (refs, decode(scale, penalty))
    decoder: Callable[[RecipeLayout, str, int, str], tuple[dict[str, str], Callable[[float, float], dict[str, str]]]]
    # CTC: where the decoder leaves each (data_dir, system, seed, part)'s greedy token errors (a WerResult)
    greedy: dict | None = None
    cfg: CtcConfig | None = None  # CTC: the config CTC stage 7 decoded with

    def greedy_counts(self, data_dir: Path, name: str, seed: int, part: str, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """CTC: the greedy token errors and reference tokens per utterance (in the order of
        ``ids``) of a system the decoder has just scored, as CTC stage 7 counts them."""
        assert self.greedy is not None
        result = self.greedy.pop((data_dir, name, seed, part))
        by_id = {u.utt_id: (u.errors, len(u.ref)) for u in result.utterances}
        return np.array([by_id[u][0] for u in ids], dtype=np.float64), np.array([by_id[u][1] for u in ids], dtype=np.float64)

    @property
    def table(self) -> str:
        return "the CTC table" if self.ctc else "Table 1"

    @property
    def column(self) -> str:
        return "CTC table" if self.ctc else "Table 1"

    @property
    def stage(self) -> str:
        return "CTC stage 7" if self.ctc else "stage 7"

    def row(self, name: str, seed: int = 0) -> str | None:
        if self.ctc:
            assert self.cfg is not None
            return ctc_row(self.layout, self.cfg, name, seed)
        return name if seed == 0 else f"{name}_seed{seed}"

    def wer(self, name: str, seed: int, part: str) -> float:
        return float(self.entries[self.row(name, seed)][part]["hlg_wer" if self.ctc else "wer"])

    def ter(self, name: str, seed: int, part: str) -> float:
        return float(self.entries[self.row(name, seed)][part]["greedy_ter"])

    def decoding(self, name: str) -> SystemDecoding:
        """The scale (and, CTC, blank penalty) the stage decoded the system with, chosen on dev where it
        searched them; a CTC system's as decode-part and the model directories read it."""
        if self.ctc:
            found = system_decoding(self.layout, self.row(name) or "")
            if found is None:
                raise SystemExit(f"ood_more: {self.stage} of {self.layout.exp_dir} did not score {name!r}")
            return found
        return SystemDecoding(float(self.entries[self.row(name)][self.dev_part]["acoustic_scale"]))

    def scale(self, name: str) -> float:
        return self.decoding(name).acoustic_scale

    def blank_penalty(self, name: str) -> float:
        """The blank penalty CTC stage 7 chose for the system on dev (0 where it searched none, and on the hybrid path)."""
        return self.decoding(name).blank_penalty

    def check(self, systems: list[str], seeds: int) -> None:
        """SystemExit in one line for a system this bench does not decode (hybrid: the students and
        the ensemble; CTC: the students, the ensemble and the teachers), one the stage did not
        decode or decoded with a word insertion penalty, or more seeds than were trained. (A CTC
        system's blank penalty is applied, as the stage chose it.)"""
        if seeds < 1:
            raise SystemExit(f"ood_more: --seeds must be at least 1, got {seeds}")
        for name in systems:
            if not self.ctc and name not in (*STUDENT_SYSTEMS, "ensemble"):
                raise SystemExit(f"ood_more: {name!r} is not a network system of Table 1 this bench decodes; choose from "
                                 f"{', '.join((*STUDENT_SYSTEMS, 'ensemble'))}")
            if self.row(name) not in self.entries:
                raise SystemExit(f"ood_more: {self.stage} of {self.layout.exp_dir} has no system {name!r} (its rows: {sorted(self.entries)})")
            if self.entries[self.row(name)][self.dev_part].get("insertion_penalty"):
                raise SystemExit(f"ood_more: {self.stage} decoded {name} with a word insertion penalty, which this bench does not apply; "
                                 f"rerun {self.stage} with decode.insertion_penalties=[]")
            if has_seeds(name, self.ctc) and seeds > 1 and self.row(name, seeds - 1) not in self.entries:
                trained = 1 + sum(self.row(name, i) in self.entries for i in range(1, 100))
                raise SystemExit(f"ood_more: {self.stage} scored {trained} seed(s) of {name}; pass --seeds {trained} or fewer")


def hybrid_recorded(layout: RecipeLayout, lang: Lang) -> Recorded:
    stage7 = read_record(layout.decode).config
    config = dataclasses.replace(config_from_dict(DecodeConfig, stage7["decode"]), num_jobs=2, insertion_penalties=())
    graphs: dict[str, PenalisedGraphs] = {}
    return Recorded(layout, read_json(layout.decode / "table1.json"), False, layout.dev_part, config,
                    lambda part_layout, n, seed, q: part_decoder(part_layout, lang, n, seed, q, config, graphs))


def ctc_recorded(layout: RecipeLayout) -> Recorded:
    record = read_record(layout.ctc_decode)
    cfg = config_from_dict(CtcConfig, record.config["ctc"])
    units = prepare_units(layout, cfg)
    config = dataclasses.replace(config_from_dict(DecodeConfig, record.config["decode"]), insertion_penalties=(), ctc_blank_penalties=())
    graphs: dict[str, PenalisedGraphs] = {}
    greedy: dict = {}

    def decoder(part_layout: RecipeLayout, name: str, seed: int, part: str):
        # At the blank penalty the stage chose for the system on dev (its first seed's, as for the scale).
        at = dataclasses.replace(config, ctc_blank_penalty=recorded.blank_penalty(name))
        return ctc_part_decoder(part_layout, cfg, units, name, seed, part, at, graphs, greedy)

    recorded = Recorded(layout, read_json(layout.ctc_decode / "scores.json"), True, record.config.get("tuned_on") or layout.dev_part, config,
                        decoder, greedy, cfg)
    return recorded


def decode_systems(recorded: Recorded, work: Path, systems: list[str], seeds: int, oracle: list[float] | None = None) -> dict:
    """Decode each system (a student: each of its first ``seeds`` seeds) on the recipe's test-ood
    and on the new part as the decoding stage decoded the test parts: its beam and max-active, each
    system at the scale the stage chose for it on dev. Return ``{"beam", "max_active", "parts":
    {part: {"ids", "words", "systems": {name: {"wer" (seeds' mean), "errors" (per utterance,
    seeds' mean), "seeds", "scale", "seed_wers", "by_type" (substitutions, deletions and
    insertions at the scale, seeds' means)}}}}}``; with ``oracle`` (scales), each system on the
    new part also at each of those scales: ``"oracle": {"scales", "wer", "errors"}`` (seeds'
    means per scale). CTC: also ``"ter"``, ``"token_errors"``, ``"seed_ters"`` (greedy, no LM) and
    the part's ``"tokens"``. Stops when the recipe's test-ood does not decode to the stage's
    recorded WER (CTC: and greedy TER) for every seed."""
    layout = recorded.layout
    where = {layout.ood_part: layout, PART: dataclasses.replace(layout, data_dir=work / "data")}
    out: dict = {"beam": recorded.config.beam, "max_active": recorded.config.max_active, "parts": {}}
    for part, part_layout in where.items():
        entry: dict = {"systems": {}}
        for name in systems:
            scale = recorded.scale(name)
            scales = sorted({scale, *oracle}) if oracle and part == PART else [scale]
            by_type: dict = {}
            ids, words, per_scale = seed_errors(lambda n, seed, q: recorded.decoder(part_layout, n, seed, q), name, seeds, part, scales,
                                                recorded.ctc, by_type)
            per_seed = per_scale[scales.index(scale)]
            if entry.setdefault("ids", ids) != ids:
                raise SystemExit(f"ood_more: {name} was scored on other utterances of {part} than {systems[0]}")
            entry["words"] = words
            seed_wers = [float(e.sum() / sum(words)) for e in per_seed]
            if part == layout.ood_part:  # the recipe's own part: must give the stage's recorded numbers
                for seed, wer in enumerate(seed_wers):
                    if abs(wer - recorded.wer(name, seed, part)) > 1e-9:
                        raise SystemExit(f"ood_more: {recorded.row(name, seed)} on {part} decodes to {100 * wer:.2f}% here, {recorded.table} "
                                         f"says {100 * recorded.wer(name, seed, part):.2f}%; the bench does not decode as {recorded.stage} did")
            errors = np.mean(per_seed, axis=0)
            entry["systems"][name] = {"wer": float(errors.sum() / sum(words)), "errors": errors.tolist(), "seeds": len(per_seed),
                                      "scale": scale, "blank_penalty": recorded.blank_penalty(name), "seed_wers": seed_wers,
                                      "by_type": np.mean([by_type[seed, scale] for seed in range(len(per_seed))], axis=0).tolist()}
            if len(scales) > 1:
                means = [np.mean(e, axis=0) for e in per_scale]
                entry["systems"][name]["oracle"] = {"scales": scales, "wer": [float(e.sum() / sum(words)) for e in means],
                                                    "errors": [e.tolist() for e in means]}
            if recorded.ctc:
                counts = [recorded.greedy_counts(part_layout.data_dir, name, seed, part, ids) for seed in range(len(per_seed))]
                entry["tokens"] = counts[0][1].tolist()
                seed_ters = [float(e.sum() / t.sum()) for e, t in counts]
                if part == layout.ood_part:
                    for seed, ter in enumerate(seed_ters):
                        if abs(ter - recorded.ter(name, seed, part)) > 1e-9:
                            raise SystemExit(f"ood_more: {recorded.row(name, seed)}'s greedy TER on {part} is {100 * ter:.2f}% here, "
                                             f"{recorded.table} says {100 * recorded.ter(name, seed, part):.2f}%")
                token_errs = np.mean([e for e, _ in counts], axis=0)
                entry["systems"][name].update(ter=float(token_errs.sum() / sum(entry["tokens"])), token_errors=token_errs.tolist(),
                                              seed_ters=seed_ters)
            print(f"{name} {part}: {100 * entry['systems'][name]['wer']:.2f}% at {scale:g} ({len(per_seed)} seeds)", flush=True)
        out["parts"][part] = entry
    return out


def best(e: dict) -> int:
    """Index of the oracle scale with the lowest WER (ties: the smallest scale)."""
    return int(np.argmin(e["oracle"]["wer"]))


def differences(run: dict, pairs: list[tuple[str, str]], parts: list[str]) -> dict:
    """B minus A per pair on the new part alone and pooled with the recipe's test-ood; with oracle
    scales, on the new part at each one's own best scale there too."""
    out = {}
    new = run["parts"][PART]
    for b, a in pairs:
        for label, members in (("new part", [PART]), ("pooled", parts)):
            ea = np.concatenate([run["parts"][p]["systems"][a]["errors"] for p in members])
            eb = np.concatenate([run["parts"][p]["systems"][b]["errors"] for p in members])
            words = np.concatenate([run["parts"][p]["words"] for p in members]).astype(np.float64)
            out[f"{b} - {a} | {label}"] = {**bootstrap_difference(ea, eb, words).to_dict(), "words": int(words.sum()), "utterances": len(words)}
            if "ter" in new["systems"][a]:  # CTC: greedy token errors (no LM) too
                ta = np.concatenate([run["parts"][p]["systems"][a]["token_errors"] for p in members])
                tb = np.concatenate([run["parts"][p]["systems"][b]["token_errors"] for p in members])
                tokens = np.concatenate([run["parts"][p]["tokens"] for p in members]).astype(np.float64)
                out[f"{b} - {a} | {label}"]["greedy_ter"] = bootstrap_difference(ta, tb, tokens).to_dict()
        oa, ob = new["systems"][a].get("oracle"), new["systems"][b].get("oracle")
        if oa and ob:
            ia, ib = best(new["systems"][a]), best(new["systems"][b])
            words = np.array(new["words"], dtype=np.float64)
            iv = bootstrap_difference(np.array(oa["errors"][ia]), np.array(ob["errors"][ib]), words)
            out[f"{b} - {a} | own best"] = {**iv.to_dict(), "words": int(words.sum()), "utterances": len(words),
                                            "scales": [oa["scales"][ia], ob["scales"][ib]]}
    return out


def verdict_of(iv: dict) -> str:
    """The last column of a difference: whether its interval excludes 0."""
    return "significant" if iv["excludes_zero"] else "within noise"


def talkers(work: Path) -> dict[str, str]:
    """Speaker id -> voice (engine and voice name) of the new part, from its SPEAKERS.TXT."""
    out = {}
    for line in (work / "corpus" / "SPEAKERS.TXT").read_text().splitlines():
        if not line.startswith(";"):
            fields = [f.strip() for f in line.split("|")]
            out[fields[0]] = " ".join(fields[4].split()[1:3])
    return out


def per_talker(run: dict, voices: dict[str, str], systems: list[str], pairs: list[tuple[str, str]]) -> list[dict]:
    """Per talker of the new part: utterances, words, each system's WER (seeds' mean) and each
    pair's B - A (``"differences"``, keyed ``"B - A"``)."""
    new = run["parts"][PART]
    rows = []
    for spk, voice in sorted(voices.items(), key=lambda kv: kv[1]):
        idx = [i for i, u in enumerate(new["ids"]) if u.split("-")[0] == spk]
        words = sum(new["words"][i] for i in idx)
        wer = {n: sum(new["systems"][n]["errors"][i] for i in idx) / words for n in systems}
        diffs = {f"{b} - {a}": wer[b] - wer[a] for b, a in pairs}
        rows.append({"speaker": spk, "voice": voice, "utterances": len(idx), "words": words, "wer": wer, "differences": diffs})
    return rows


def rate_cells(run: dict, name: str, key: str, recorded_rate: Callable[[str, int, str], float], test: str, ood: str) -> list[str]:
    """A system's rate ``key`` (``wer`` or ``ter``) as table cells: the decoding stage's on ``test``
    (its seeds' mean), this run's on ``ood`` and on the new part (with each seed's), and the ratio
    of the new part's to ``test``'s."""
    e = run["parts"][PART]["systems"][name]
    clean = float(np.mean([recorded_rate(name, seed, test) for seed in range(e["seeds"])]))
    seeds = f" ({', '.join(f'{100 * w:.2f}' for w in e[f'seed_{key}s'])})" if e["seeds"] > 1 else ""
    return [f"{100 * clean:.2f}%", f"{100 * run['parts'][ood]['systems'][name][key]:.2f}%", f"{100 * e[key]:.2f}%{seeds}",
            f"{e[key] / clean if clean else float('nan'):.2f}"]


def format_section(run: dict, recorded: Recorded, args: argparse.Namespace) -> str:
    cmd = (f"python bench/ood_more.py{' --ctc --units ' + args.units if args.ctc else ''} --data {args.data} --exp {args.exp} --speakers "
           f"{args.speakers} --utts-per-speaker {args.utts_per_speaker} --seed {args.seed} --systems {' '.join(args.systems)} --seeds {args.seeds}"
           + "".join(f" --pair {b} {a}" for b, a in args.pair) + (" --oracle-scales" + "".join(f" {x:g}" for x in args.oracle_scales) if args.oracle_scales is not None else ""))
    layout, table, stage = recorded.layout, recorded.table, recorded.stage
    made, ood, test = run["made"], layout.ood_part, layout.test_part
    new = run["parts"][PART]
    blanked = recorded.ctc and any(new["systems"][n].get("blank_penalty") for n in args.systems)
    what = (f"{layout.ctc_units} CTC models on HLG with the recipe's n-gram LM, {stage}'s beam {run['beam']:g}, max-active {run['max_active']}, each system at the scale on "
            f"its log-probabilities{' and the blank penalty' if blanked else ''} {stage} chose for it on {recorded.dev_part}" if recorded.ctc else
            f"{stage}'s beam {run['beam']:g}, max-active {run['max_active']}, each system at the acoustic scale {stage} chose for it on "
            f"{recorded.dev_part}")
    lines = [CTC_HEADING if recorded.ctc else HEADING, "", f"`{cmd}`" + (f" (every number: `{args.json}`)" if args.json else "") + ".", "",
             f"{PART}: {made['utterances']} utterances ({sum(new['words'])} words, {60 * made['hours']:.1f} min) from {made['speakers']} "
             f"talkers of the family that speaks the recipe's {ood} (`synthesize_ood_part`: its voices, each with a fresh speaking rate and "
             f"channel, the corpus' degradations; sentences that no part of the corpus speaks, every word in the training text). The recipe's {ood}: "
             f"{len(run['parts'][ood]['ids'])} utterances, {sum(run['parts'][ood]['words'])} words, decoded again here to {table}'s WER for "
             f"every seed. Decoding: {what}; a student's WER is the mean over its seeds ({table}'s columns: the same seeds).", "",
             f"| system | seeds | scale{', blank penalty' if blanked else ''} | {test} ({recorded.column}) | {ood} ({recorded.column}) | {PART} | "
             f"{PART} / {test} |", "|---|---|---|---|---|---|---|"]
    for name in args.systems:
        e = new["systems"][name]
        at = f"{e['scale']:g}" + (f", {e.get('blank_penalty', 0.0):g}" if blanked else "")
        lines.append(f"| {name} | {e['seeds']} | {at} | " + " | ".join(rate_cells(run, name, "wer", recorded.wer, test, ood)) + " |")
    if recorded.ctc:
        lines += ["", f"Greedy token error rate (no LM: the acoustic model alone; {ood} decoded again here to {table}'s greedy TER for "
                  "every seed):", "", f"| system | {test} ({recorded.column}) | {ood} ({recorded.column}) | {PART} | {PART} / {test} |",
                  "|---|---|---|---|---|"]
        for name in args.systems:
            lines.append(f"| {name} | " + " | ".join(rate_cells(run, name, "ter", recorded.ter, test, ood)) + " |")
    ter_head = " greedy TER points, 95% CI | |" if recorded.ctc else ""
    lines += ["", f"{'HLG WER and greedy TER' if recorded.ctc else 'WER'} differences in points with a 95% paired bootstrap interval over "
              "utterances (2000 resamples; Bisani & Ney 2004; the seeds' per-utterance errors averaged first; it does not cover the seeds' "
              "training variance):", "",
              f"| difference | utterances (words) | WER points, 95% CI | |{ter_head}", "|---|---|---|---|" + ("---|---|" if recorded.ctc else "")]
    for label, d in run["differences"].items():
        pair, where = label.split(" | ")
        sb, sa = pair.split(" - ")
        where = {"new part": PART, "pooled": f"{PART} and {ood}"}.get(where) or (
            f"{PART}, each at its own best scale there ({sb} {d['scales'][1]:g}, {sa} {d['scales'][0]:g}; an oracle)")
        ter = ""
        if recorded.ctc:
            t = d.get("greedy_ter")
            ter = (f" {format_interval(t)} | {verdict_of(t)} |" if t
                   else " as on the part (greedy search has no scale) | |")
        lines.append(f"| {pair}, {where} | {d['utterances']} ({d['words']}) | {format_interval(d)} | {verdict_of(d)} |{ter}")
    ref_words = sum(new["words"])
    lines += ["", f"{'HLG word' if recorded.ctc else 'Word'} errors on {PART} by type, each system at its scale above (a student: its "
              f"seeds' mean), of {ref_words} reference words:", "",
              "| system | substitutions | deletions | insertions | hypothesis words |", "|---|---|---|---|---|"]
    for name in args.systems:
        sub, dels, ins = new["systems"][name]["by_type"]
        lines.append(f"| {name} | {sub:.1f} | {dels:.1f} | {ins:.1f} | {ref_words - dels + ins:.1f} |")
    with_oracle = [n for n in args.systems if "oracle" in new["systems"][n]]
    if with_oracle:
        lines += ["", f"Each system on {PART} at every scale of {{{', '.join(f'{x:g}' for x in new['systems'][with_oracle[0]]['oracle']['scales'])}}} "
                  f"(`--oracle-scales`): the WER at {stage}'s dev choice against the part's own best scale, an oracle chosen on the data "
                  "it scores, never a table's protocol: the gap is what the dev choice costs there at most.", "",
                  "| system | at the dev choice (scale) | best on the part (scale) | cost of the dev choice, points |", "|---|---|---|---|"]
        for name in with_oracle:
            e = new["systems"][name]
            i = best(e)
            lines.append(f"| {name} | {100 * e['wer']:.2f}% ({e['scale']:g}) | {100 * e['oracle']['wer'][i]:.2f}% ({e['oracle']['scales'][i]:g}) | "
                         f"{100 * (e['wer'] - e['oracle']['wer'][i]):+.2f} |")
    rows = run["talkers"]
    labels = [f"{b} - {a}" for b, a in args.pair]
    better = "; ".join(f"{b} better than {a} for {sum(r['differences'][f'{b} - {a}'] < 0 for r in rows)} of {len(rows)} talkers"
                       for b, a in args.pair)
    lines += ["", f"Per talker of {PART} (the bootstrap above resamples utterances, not talkers; a student's WER is its seeds' mean); "
              f"{better}:", "",
              "| talker (voice) | utterances (words) | " + " | ".join(args.systems) + "".join(f" | {x}, points" for x in labels) + " |",
              "|---|---|" + "---|" * (len(args.systems) + len(labels))]
    for r in rows:
        lines.append(f"| {r['speaker']} ({r['voice']}) | {r['utterances']} ({r['words']}) | "
                     + " | ".join(f"{100 * r['wer'][n]:.2f}%" for n in args.systems)
                     + "".join(f" | {100 * r['differences'][x]:+.2f}" for x in labels) + " |")
    for b, a in args.pair:
        if run["parts"][PART]["systems"][a]["seeds"] == run["parts"][PART]["systems"][b]["seeds"] > 1:
            diffs = [100 * (wb - wa) for wa, wb in zip(run["parts"][PART]["systems"][a]["seed_wers"], run["parts"][PART]["systems"][b]["seed_wers"])]
            lines += ["", f"Seed by seed on {PART} ({b} seed i − {a} seed i, points): {', '.join(f'{d:+.2f}' for d in diffs)}."]
    synth = (f"synthesised {made['synthesised']} utterances in {made['synthesis_seconds'] / 60:.1f} min (2 processes, "
             f"{made['synthesis_seconds'] / made['synthesised']:.2f} s of wall time per utterance)" if made["synthesised"]
             else "reused the audio of an earlier run")
    feats = "reused the features" if made["features_reused"] else f"computed the features in {made['features_seconds']:.0f} s"
    lines += ["", f"This run {synth}, {feats} and decoded in {run['decode_seconds'] / 60:.1f} min.", "",
              environment_text(environment(), code_version()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("recipes/librispeech/data"), help="the recipe's data folder (its corpus/ is stage 0's)")
    p.add_argument("--exp", type=Path, default=Path("recipes/librispeech/exp"), help="the recipe's experiment folder (stages 3-7 finished)")
    p.add_argument("--speakers", type=int, default=8, help="talkers of the out-of-domain family (Kokoro has 8 voices; default 8)")
    p.add_argument("--utts-per-speaker", type=int, default=50, help="sentences each talker reads (default 50)")
    p.add_argument("--seed", type=int, default=1, help="draws the talkers' rate and channel, the sentences and the degradations (default 1)")
    p.add_argument("--work", type=Path, default=Path("/tmp/ood_more"),
                   help="where the audio and features go (reused when rerun with the same arguments; --ctc shares it)")
    p.add_argument("--systems", nargs="+", default=None,
                   help="systems (stage 7's: baseline, ensemble, distilled, compressed; default baseline distilled ensemble); with --ctc: "
                        "ensemble, teacher<i>, a trained teacher set's folder (teachers_guided1: its ensemble) and the CTC students by their "
                        "stage-6 names (default baseline frame ensemble)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of each student (stage 6's; default 3)")
    p.add_argument("--pair", nargs=2, action="append", default=None, metavar=("B", "A"),
                   help="report B minus A (repeatable; default distilled baseline; with --ctc frame baseline); ensemble minus the first "
                        "pair's A too where listed and in no pair")
    p.add_argument("--oracle-scales", type=float, nargs="*", default=None, metavar="S",
                   help="also decode the new part at these scales (none given: the decoding stage's grid) and report each system's "
                        "WER at the part's own best scale, and B - A there (an oracle, never a table's protocol)")
    p.add_argument("--ctc", action="store_true", help="the CTC path's systems on HLG (CTC stage 7 done), not the hybrid ones")
    p.add_argument("--units", default="phone", help="with --ctc: the CTC units of the run (phone or bpe; default phone)")
    p.add_argument("--json", type=Path, default=None, help="write every number here too")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    args = p.parse_args(argv)
    args.systems = args.systems or (["baseline", "frame", "ensemble"] if args.ctc else ["baseline", "distilled", "ensemble"])
    args.pair = [tuple(x) for x in args.pair or [("frame", "baseline") if args.ctc else ("distilled", "baseline")]]
    for i, pair in enumerate(args.pair):
        if any(n not in args.systems for n in pair):
            p.error(f"--pair {' '.join(pair)}: both must be among --systems")
        if pair[0] == pair[1] or pair in args.pair[:i]:
            p.error(f"--pair {' '.join(pair)}: {'a system against itself' if pair[0] == pair[1] else 'given twice'}")
    if args.ctc:
        found_ctc = finished_ctc_run(args.data, args.exp, args.units, "ood_more")
        if found_ctc is None:
            return 0
        (layout, record), lang = found_ctc, None
        scored = record.config["parts"]
    else:
        found = finished_run(args.data, args.exp, "ood_more")
        if found is None:
            return 0
        layout, lang = found
        scored = read_record(layout.decode).config.get("test_parts") or []
    ood = [q for q in scored if q not in (layout.dev_part, layout.test_part)]
    if not ood or not (layout.synthetic_corpus / "SYNTHETIC.json").is_file():
        print(f"ood_more: the decoding stage of {args.exp} scored no out-of-domain part of a synthetic corpus (stage 0's test-ood). Skipped.")
        return 0
    layout = dataclasses.replace(layout, ood_part=ood[0])
    recorded = ctc_recorded(layout) if lang is None else hybrid_recorded(layout, lang)
    recorded.check(args.systems, args.seeds)
    oracle = args.oracle_scales
    if oracle is not None and not oracle:
        oracle = list(recorded.config.ctc_acoustic_scales if recorded.ctc else recorded.config.acoustic_scales)
        if not oracle:
            p.error(f"{recorded.stage} searched no scale grid; give --oracle-scales S ...")
    try:
        made = make_part(layout, args.work, args.speakers, args.utts_per_speaker, args.seed)
    except DataError as err:
        raise SystemExit(f"ood_more: {err}") from None
    start = time.time()
    run = decode_systems(recorded, args.work, args.systems, args.seeds, oracle)
    run["made"] = made
    in_pairs = {n for pair in args.pair for n in pair}
    pairs = list(args.pair) + ([("ensemble", args.pair[0][1])] if "ensemble" in args.systems and "ensemble" not in in_pairs else [])
    run["differences"] = differences(run, pairs, [layout.ood_part, PART])
    run["talkers"] = per_talker(run, talkers(args.work), args.systems, args.pair)
    run["decode_seconds"] = round(time.time() - start, 1)
    if args.json:
        args.json.write_text(json.dumps(run, indent=1) + "\n")
    write_section(args.results, CTC_HEADING if args.ctc else HEADING, format_section(run, recorded, args))
    print(f"ood_more: wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
