"""CTC stage 7: the HLG graph of the units, and greedy, prefix-beam and HLG decoding of every
trained CTC system (teachers, ensembles, students and their seeds). Folders:
:mod:`asr_kd.stages.ctc_common`.

Decoding follows the hybrid Table 1 (:mod:`asr_kd.stages.s7_decode`): each system's scale on its
log-probabilities against HLG is chosen on the dev part (``decode.ctc_acoustic_scales``; a
student's other seeds use its first seed's scale), with ``decode.insertion_penalties`` a word
insertion penalty on every word of HLG searched beside it (:func:`asr_kd.decode.tuning.tune_decoding`,
as for HCLG), or with ``decode.ctc_blank_penalties`` a blank penalty (taken off the blank's
log-probability on every frame before the search) searched the same way, the test parts are decoded once at the choice, and every system of the table gets
the same beam and max-active. A student's seeds (folders
``students/<name>_seed<k>``, CTC stage 6) form one row: mean and standard deviation over the
seeds, and differences from the baseline student (and of each ``frame_<x>`` student, another
teacher set's, from the frame student) with paired bootstrap intervals over utterances (the
seeds' per-utterance counts averaged first).

Writes ``<root>/decode/scores.json`` (per trained model and part), ``<root>/decode/<system>_<part>/
per_utt.json`` (``{utt: [HLG word errors, reference words, greedy token errors, reference
tokens]}``), ``<root>/decode/comparisons.json`` and the RESULTS.md table, rendered from those
files (also when the stage is skipped because its record matches)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

from lhotse import CutSet

from asr_kd.config import CtcConfig, DecodeConfig
from asr_kd.ctc.model import CtcEncoder
from asr_kd.ctc.training import ctc_log_probs, hlg_wer, load_ctc_model, token_scores
from asr_kd.ctc.units import CtcUnits
from asr_kd.data.ctc_data import cut_text
from asr_kd.decode.fst_utils import write_fst
from asr_kd.decode.hlg import compile_hlg, load_hlg
from asr_kd.decode.penalty import PenalisedGraphs
from asr_kd.decode.tuning import BLANK_PENALTY, WORD_PENALTY, ScaleSweep, check_penalties, tune_decoding
from asr_kd.errors import ConfigError
from asr_kd.metrics.paired import BOOTSTRAP_RESAMPLES, bootstrap_difference
from asr_kd.metrics.wer import WerResult
from asr_kd.report.tables import (
    ONE_SEED, comparison_intro, describe_grid_edges, format_interval, ood_relative_head, relative_change, significance,
)
from asr_kd.stages.common import fmt_pct, write_results
from asr_kd.stages.ctc_common import (
    ctc_student_record, describe_teacher_set, load_ctc_teachers, prepare_units, seed_groups, teacher_set_record, teachers_of, trained_teacher_sets,
    units_record_fingerprint,
)
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageGuard, require_record
from asr_kd.stages.s7_decode import per_utterance_counts, seed_mean, seed_std
from asr_kd.utils import read_json, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

BASELINE = "student: baseline"
FRAME = "student: frame"  # its variants (student: frame_<x>) are also compared with it


def build_ctc_graph(layout: RecipeLayout, units: CtcUnits, command: str = "") -> Path:
    """Build ``<root>/graph/HLG.fst`` for the units with the lang's G (redone when the units or the
    lang change); return its path."""
    path = layout.ctc_graph / "HLG.fst"
    guard = StageGuard("CTC graph (HLG)", layout.ctc_graph, {"units": units.kind},
                       {"units": units_record_fingerprint(layout), "lang": require_record(layout.lang, "stage 2 (lang)").fingerprint}, command)
    if guard.needs_work():
        lang = units.lang
        hlg, info = compile_hlg(units.token_lexicon(), units.tokens, lang.words, lang.load_fst("G"))
        write_fst(hlg, path)
        write_text_atomic(path.with_name("hlg.json"), info.to_json())
        guard.finish([path, path.with_name("hlg.json")])
    return path


def system_slug(name: str) -> str:
    """The folder name of system ``name`` under ``<root>/decode`` (``student: frame_seed1`` ->
    ``student_frame_seed1``)."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", name).strip("_")


class SystemDecoding(NamedTuple):
    """The HLG scale and blank penalty CTC stage 7 decoded one system with (chosen on dev where it
    searched them); decode-part and the model directories decode that system the same way."""

    acoustic_scale: float
    blank_penalty: float = 0.0


def system_decoding(layout: RecipeLayout, name: str) -> SystemDecoding | None:
    """The scale and blank penalty CTC stage 7 decoded system ``name`` (a row name of its table,
    e.g. ``student: frame``) with, from its ``scores.json``; None when the stage has not scored
    it. A system it decoded with a word insertion penalty is refused (ConfigError): the callers,
    decode-part and the model directories of stage 9, search HLG without one, so they would not
    match the table."""
    path = layout.ctc_decode / "scores.json"
    if not path.is_file():
        return None
    data = read_json(path)
    entries = data.get(name, {}) if isinstance(data, dict) else {}
    penalised = next((e for e in entries.values() if isinstance(e, dict) and e.get("insertion_penalty")), None)
    if penalised is not None:
        raise ConfigError(f"{name} was decoded by CTC stage 7 with a word insertion penalty ({penalised['insertion_penalty']:g}, "
                          "decode.insertion_penalties), which decode-part and the model directories (stage 9) do not apply yet; rerun "
                          "CTC stage 7 with decode.insertion_penalties=[] to decode it here as the table did")
    entry = next((e for e in entries.values() if isinstance(e, dict) and "acoustic_scale" in e), None)
    return None if entry is None else SystemDecoding(float(entry["acoustic_scale"]), float(entry.get("blank_penalty", 0.0)))


def decode_ctc_systems(
    layout: RecipeLayout, cfg: CtcConfig, decode_config: DecodeConfig, parts: Sequence[str] | None = None, results_md: Path | None = None,
    command: str = "", corpus: str = "",
) -> dict[str, dict[str, dict]]:
    """Score every trained CTC system on ``parts`` (default dev and test): each teacher of
    ``cfg``'s set, its ensemble (arithmetic/geometric per ``cfg.fusion``, T = 1), the ensembles of
    the other trained teacher sets, and every seed of the students that exist. With
    ``decode_config.ctc_acoustic_scales`` (or several ``insertion_penalties`` or
    ``ctc_blank_penalties``), each system's HLG scale (and word insertion or blank penalty) is
    chosen on the dev part first (decoded even when ``parts`` leaves it out). Writes the files named in the module docstring
    and the RESULTS.md table; returns ``{system: {part: scores}}``."""
    units = prepare_units(layout, cfg, command)
    graph = build_ctc_graph(layout, units, command)
    sets = [cfg, *(o for o in trained_teacher_sets(layout, cfg) if teachers_of(layout, o) != teachers_of(layout, cfg))]
    groups, left_out = seed_groups(layout)
    for m in left_out:
        log.warning("CTC stage 7: student %s left out: its settings differ from its first seed's (retrain it with "
                    "ctc-train-student --seed-index, or delete %s)", m, layout.ctc_student_dir(m))
    tune = (bool(decode_config.ctc_acoustic_scales) or len(check_penalties(decode_config.insertion_penalties)) > 1
            or len(check_penalties(decode_config.ctc_blank_penalties)) > 1)
    parts = list(parts or [layout.dev_part, *layout.test_parts])
    if tune:  # the dev part first: every other part is decoded at the scale chosen there
        parts = [layout.dev_part, *(p for p in parts if p != layout.dev_part)]
    inputs = {"graph": require_record(layout.ctc_graph, "the CTC graph").fingerprint,
              **{f"set {teachers_of(layout, c).name}": teacher_set_record(layout, c).fingerprint for c in sets},
              **{f"student {name}": ctc_student_record(layout, name, "asr-kd ctc-train-student").fingerprint
                 for members in groups.values() for name in members}}
    settings = {"decode": decode_config, "ctc": cfg, "parts": parts, "tuned_on": layout.dev_part if tune else None}
    guard = StageGuard("CTC stage 7 (decoding)", layout.ctc_decode, settings, inputs, command)
    scores_path, comparisons_path = layout.ctc_decode / "scores.json", layout.ctc_decode / "comparisons.json"
    # Rows of the table: a teacher or an ensemble is a group of one; a student's seeds are one group.
    other_sets = {f"ensemble of {o.num_teachers} ({describe_teacher_set(o.shared_init_steps, o.guide_weight)})": o for o in sets[1:]}
    rows: dict[str, list[str]] = {f"teacher{i}": [f"teacher{i}"] for i in range(cfg.num_teachers)}
    rows[f"ensemble of {cfg.num_teachers}"] = [f"ensemble of {cfg.num_teachers}"]
    rows.update({name: [name] for name in other_sets})  # the other sets' ensembles: does aligning spikes help fusion?
    rows.update({f"student: {base}": [f"student: {m}" for m in members] for base, members in groups.items()})
    if guard.needs_work():
        teachers = load_ctc_teachers(layout, cfg)
        models: dict[str, list[CtcEncoder]] = {f"teacher{i}": [t] for i, t in enumerate(teachers)}
        models[f"ensemble of {cfg.num_teachers}"] = teachers
        models.update({name: load_ctc_teachers(layout, o) for name, o in other_sets.items()})
        models.update({f"student: {m}": [load_ctc_model(layout.ctc_student_dir(m))] for members in groups.values() for m in members})
        computed = _score_rows(layout, cfg, decode_config, units, load_hlg(graph), rows, models, parts)
        write_json_atomic(scores_path, computed)
        write_json_atomic(comparisons_path, _compare_rows(layout, rows, [p for p in layout.test_parts if p in parts]))
        guard.finish([scores_path, comparisons_path, *sorted(layout.ctc_decode.glob("*/per_utt.json"))])
    scores = read_json(scores_path)
    assert isinstance(scores, dict)
    comparisons = read_json(comparisons_path)
    assert isinstance(comparisons, dict)
    body = _render(layout, cfg, decode_config, units, corpus, rows, scores, comparisons, left_out)
    write_results(results_md, f"## CTC results ({cfg.units})", body, command, [layout.ctc_decode])
    return scores


def _score_rows(
    layout: RecipeLayout, cfg: CtcConfig, decode_config: DecodeConfig, units: CtcUnits, hlg, rows: Mapping[str, Sequence[str]],
    models: Mapping[str, Sequence[CtcEncoder]], parts: Sequence[str],
) -> dict[str, dict[str, dict]]:
    """Decode and score every member of every row on ``parts`` (the dev part first when tuning);
    write each member's per-utterance counts; return ``{member: {part: scores}}``."""
    grid = decode_config.ctc_acoustic_scales
    penalties = check_penalties(decode_config.insertion_penalties) or (0.0,)
    blanks = check_penalties(decode_config.ctc_blank_penalties) or (decode_config.ctc_blank_penalty,)
    search = bool(grid) or len(penalties) > 1 or len(blanks) > 1
    graphs = PenalisedGraphs(hlg, units.lang.words.ids())
    # The scale and one penalty are searched together: the blank penalty where it has a grid, else the word penalty.
    by_blank = len(blanks) > 1
    fixed = (decode_config.ctc_acoustic_scale, penalties[0], blanks[0])  # without a search: the configured scale and penalties
    chosen: dict[str, tuple[float, float, float]] = {}  # row -> the scale and penalties its first member chose on dev
    computed: dict[str, dict[str, dict]] = {}
    for part in parts:
        cuts, cmvn = CutSet.from_cuts(layout.open_cuts(layout.fbank_cuts(part))), layout.open_cmvn(part)
        refs = {c.id: cut_text(c) for c in cuts}
        for row, members in rows.items():
            for i, member in enumerate(members):
                lps = {cut.id: lp for cut, lp in ctc_log_probs(models[member], cuts, cmvn, 1.0, cfg.fusion)}
                tokens = token_scores(lps, refs, units, cfg.beam_size)
                entry: dict = dict(tokens.rates)
                if search and part == layout.dev_part and i == 0:

                    def decode(s: float, p: float) -> WerResult:  # p: the searched penalty
                        word, blank = (penalties[0], p) if by_blank else (p, blanks[0])
                        return hlg_wer(lps, refs, units, graphs.at(word), decode_config, s, blank)

                    sweep, scale, searched, results = tune_decoding(
                        part, grid or (decode_config.ctc_acoustic_scale,), blanks if by_blank else penalties, decode,
                        decode_config.ctc_acoustic_scale, BLANK_PENALTY if by_blank else WORD_PENALTY)
                    chosen[row] = (scale, penalties[0], searched) if by_blank else (scale, searched, blanks[0])
                    words = results[scale, searched]
                    if sweep is not None:
                        entry["sweep"] = sweep.to_dict()
                    scale, penalty, blank = chosen[row]
                else:
                    scale, penalty, blank = chosen.get(row, fixed)
                    words = hlg_wer(lps, refs, units, graphs.at(penalty), decode_config, scale, blank)
                entry.update(hlg_wer=words.wer, acoustic_scale=scale, ref_words=words.ref_words, utterances=len(words.utterances))
                if penalty:  # only where one was used: records made without a penalty read as before
                    entry["insertion_penalty"] = penalty
                if blank:
                    entry["blank_penalty"] = blank
                per_utt = {u.utt_id: [u.errors, len(u.ref), tokens.token_errors[u.utt_id], tokens.ref_tokens[u.utt_id]]
                           for u in words.utterances}
                write_json_atomic(layout.ctc_decode / f"{system_slug(member)}_{part}" / "per_utt.json", per_utt)
                computed.setdefault(member, {})[part] = entry
                log.info("%s on %s: %s", member, part, {k: v for k, v in entry.items() if k != "sweep"})
    return computed


def _compare_rows(layout: RecipeLayout, rows: Mapping[str, Sequence[str]], parts: Sequence[str]) -> dict:
    """Per test part, each ensemble's and student group's HLG WER and greedy TER minus the
    baseline student's, and each variant of the frame-level student (``student: frame_<x>``: the
    students of the other teacher sets, named variants) minus the frame-level student's, with
    paired bootstrap intervals over utterances (a group's seeds' per-utterance counts averaged
    first); empty without a baseline student."""
    out: dict = {"parts": {}}
    if BASELINE not in rows:
        return out
    others = [r for r in rows if r != BASELINE and not r.startswith("teacher")]
    pairs = [(r, BASELINE, f"{r} - baseline") for r in others]
    if FRAME in rows:
        pairs += [(r, FRAME, f"{r} - {FRAME}") for r in others if r.startswith(f"{FRAME}_")]
    for part in parts:
        # per_utt.json columns: HLG word errors, reference words, greedy token errors, reference
        # tokens; per_utterance_counts calls the last two "correct" and "frames" (its hybrid names).
        counts = {r: per_utterance_counts(None, [system_slug(m) for m in rows[r]], part, layout.ctc_decode) for r in [BASELINE, *others]}
        out["parts"][part] = {
            key: {"hlg_wer": bootstrap_difference(counts[ref]["errors"], counts[r]["errors"], counts[ref]["ref_words"]).to_dict(),
                  "greedy_ter": bootstrap_difference(counts[ref]["correct"], counts[r]["correct"], counts[ref]["frames"]).to_dict()}
            for r, ref, key in pairs}
    return out


def _render(
    layout: RecipeLayout, cfg: CtcConfig, decode_config: DecodeConfig, units: CtcUnits, corpus: str, rows: Mapping[str, Sequence[str]],
    scores: Mapping[str, Mapping[str, Mapping]], comparisons: Mapping, left_out: Sequence[str] = (),
) -> str:
    """The RESULTS.md section: one line per row and part (means ± standard deviations over a
    student's seeds; on the out-of-domain part's line, the relative increase of the mean HLG WER
    from the test part's), how the scales were chosen, and the differences from the baseline."""
    wer_cols = ["greedy_wer", "beam_wer"] if units.kind == "bpe" else []
    cols = ["greedy_ter", "beam_ter", *wer_cols, "hlg_wer"]
    names = {"greedy_ter": "Greedy TER", "beam_ter": f"Beam-{cfg.beam_size} TER", "greedy_wer": "Greedy WER", "beam_wer": "Beam WER", "hlg_wer": "HLG WER"}
    lines, edges = [], []
    penalised = False
    parts = list(next(iter(scores.values()), {}))
    relative = bool(layout.ood_part) and layout.ood_part in parts and layout.test_part in parts
    # A column for the blank penalty where any system was decoded with one (then the word penalty is printed as well where used).
    blanked = any(e.get("blank_penalty") for by_part in scores.values() for e in by_part.values())
    worded = any(e.get("insertion_penalty") for by_part in scores.values() for e in by_part.values())
    for row, members in rows.items():
        if any(m not in scores for m in members):
            continue
        for part in parts:
            cells = []
            for c in cols:
                values = [scores[m][part].get(c) for m in members]
                mean, std = seed_mean(values), seed_std(values)
                cells.append(fmt_pct(mean) + (f" ± {100 * std:.1f}" if len(members) > 1 and mean is not None else ""))
            if relative:
                change = ""
                if part == layout.ood_part:
                    ood, test = (seed_mean([scores[m].get(p, {}).get("hlg_wer") for m in members]) for p in (part, layout.test_part))
                    change = relative_change(ood, test)
                cells.append(change)
            first = scores[members[0]][part]
            penalty = f", {first['insertion_penalty']:g}" if first.get("insertion_penalty") else ""
            if blanked:
                penalty = (f", {first.get('insertion_penalty', 0.0):g}" if worded else "") + f", {first.get('blank_penalty', 0.0):g}"
            lines.append(f"| {row} | {len(members)} | {part} | " + " | ".join(cells)
                         + f" | {first.get('acoustic_scale', decode_config.ctc_acoustic_scale):g}{penalty} |")
            penalised = penalised or bool(penalty)
            if "sweep" in first:
                edges.append((row, ScaleSweep.from_dict(first["sweep"]).edges))
    scale_head = "Scale, word insertion penalty where not 0" if penalised else "Scale"
    if blanked:
        scale_head = "Scale" + (", word insertion penalty" if worded else "") + ", blank penalty"
    heads = [names[c] for c in cols] + ([ood_relative_head("HLG WER increase", layout.ood_part)] if relative else [])
    header = "| System | Seeds | Part | " + " | ".join(heads) + f" | {scale_head} |\n|" + "---|" * (len(heads) + 4) + "\n"
    grid = decode_config.ctc_acoustic_scales
    how = (f"the scale on the log-probabilities (1 / the LM weight) chosen per system on {layout.dev_part} by searching "
           f"{{{', '.join(f'{s:g}' for s in grid)}}} (the fewest word errors; a student's other seeds use its first seed's scale; "
           "the test parts are never used to choose it)" if grid else f"scale {decode_config.ctc_acoustic_scale:g} on the log-probabilities (not tuned)")
    penalties = check_penalties(decode_config.insertion_penalties)
    if len(penalties) > 1:
        how += (f"; with it a word insertion penalty (a cost on every word of HLG, Kaldi's word_ins_penalty) searched on {layout.dev_part} "
                f"from {{{', '.join(f'{p:g}' for p in penalties)}}} the same way")
    elif penalties and penalties[0]:
        how += f"; a word insertion penalty of {penalties[0]:g} on every word of HLG (not tuned)"
    blanks = check_penalties(decode_config.ctc_blank_penalties) or (decode_config.ctc_blank_penalty,)
    if len(blanks) > 1:
        how += (f"; with it a blank penalty (taken off the blank's log-probability on every frame before the search, icefall's and "
                f"sherpa-onnx's blank_penalty) searched on {layout.dev_part} from {{{', '.join(f'{p:g}' for p in blanks)}}} the same way")
    elif blanks[0]:
        how += f"; a blank penalty of {blanks[0]:g} on every frame (not tuned)"
    edge = describe_grid_edges(edges, "ctc_acoustic_scales", "ctc_blank_penalties" if len(blanks) > 1 else "insertion_penalties")
    edge = f" {edge}" if edge else ""
    if left_out:
        edge += f" Left out, their settings differing from their first seed's: {', '.join(left_out)}."
    body = (f"CTC {cfg.model_size} encoders, {units.num_tokens} {cfg.units} tokens{f', on {corpus}' if corpus else ''}; "
            f"teachers: {describe_teacher_set(cfg.shared_init_steps, cfg.guide_weight)}; each student's settings are in its own section. TER = token error rate "
            "(prefix beam search without LM); HLG WER = kaldi-decoder over H o L o G with the recipe's n-gram LM, "
            f"beam {decode_config.beam:g}, max-active {decode_config.max_active}, {how}.{edge} "
            "A student with several seeds is one row: mean ± standard deviation (points) over its seeds.\n\n" + header + "\n".join(lines) + "\n")
    return body + _format_ctc_comparisons(comparisons, max((len(m) for r, m in rows.items() if r.startswith("student")), default=1))


def _format_ctc_comparisons(comparisons: Mapping, num_seeds: int) -> str:
    """The paragraph under the CTC table: differences from the baseline student with intervals."""
    diffs = [(part, key, d) for part, by_key in comparisons.get("parts", {}).items() for key, d in by_key.items()]
    if not diffs:
        return ""
    seeds = f" A student's per-utterance counts are averaged over its seeds first (up to {num_seeds})." if num_seeds > 1 else ONE_SEED
    first = diffs[0][2]["hlg_wer"]
    reference = "the baseline student"
    if any(not key.endswith(" - baseline") for _, key, _ in diffs):
        reference += ", and of each frame_<x> student from the frame student (which teacher set distils better)"
    lines = ["", comparison_intro(reference, first["level"], first.get("resamples", BOOTSTRAP_RESAMPLES), seeds), "",
             "| Part | Comparison | HLG WER difference, points | Significant? | Greedy TER difference, points | Significant? |",
             "|---|---|---|---|---|---|"]
    for part, key, d in diffs:
        label = key.replace(" - ", " − ")
        ref = "the frame student" if key.endswith(f" - {FRAME}") else "the baseline"
        lines.append(f"| {part} | {label} | {format_interval(d['hlg_wer'])} | {significance(d['hlg_wer'], True, ref)} | "
                     f"{format_interval(d['greedy_ter'])} | {significance(d['greedy_ter'], True, ref)} |")
    return "\n".join(lines) + "\n"

