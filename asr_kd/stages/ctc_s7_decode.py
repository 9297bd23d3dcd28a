"""CTC stage 7: the HLG graph of the units, and greedy, prefix-beam and HLG decoding of every
trained CTC system (teachers, ensembles, students). Folders: :mod:`asr_kd.stages.ctc_common`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from lhotse import CutSet

from asr_kd.config import CtcConfig, DecodeConfig
from asr_kd.ctc.model import CtcEncoder
from asr_kd.ctc.training import ctc_log_probs, load_ctc_model, score_log_probs
from asr_kd.ctc.units import CtcUnits
from asr_kd.data.ctc_data import cut_text
from asr_kd.decode.fst_utils import write_fst
from asr_kd.decode.hlg import compile_hlg, load_hlg
from asr_kd.stages.common import fmt_pct, write_results
from asr_kd.stages.ctc_common import (
    STUDENT_KINDS, describe_teacher_set, load_ctc_teachers, prepare_units, teacher_set_record, teachers_of, trained_teacher_sets,
    units_record_fingerprint,
)
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageGuard, read_record, require_record
from asr_kd.utils import write_text_atomic

log = logging.getLogger(__name__)


def build_ctc_graph(layout: RecipeLayout, units: CtcUnits) -> Path:
    """Build ``<root>/graph/HLG.fst`` for the units with the lang's G (redone when the units or the
    lang change); return its path."""
    path = layout.ctc_graph / "HLG.fst"
    guard = StageGuard("CTC graph (HLG)", layout.ctc_graph, {"units": units.kind},
                       {"units": units_record_fingerprint(layout), "lang": require_record(layout.lang, "stage 2 (lang)").fingerprint})
    if guard.needs_work():
        lang = units.lang
        hlg, info = compile_hlg(units.token_lexicon(), units.tokens, lang.words, lang.load_fst("G"))
        write_fst(hlg, path)
        write_text_atomic(path.with_name("hlg.json"), info.to_json())
        guard.finish([path, path.with_name("hlg.json")])
    return path


def decode_ctc_systems(
    layout: RecipeLayout, cfg: CtcConfig, decode_config: DecodeConfig, parts: Sequence[str] | None = None, results_md: Path | None = None,
    command: str = "", corpus: str = "",
) -> dict[str, dict[str, dict[str, float]]]:
    """Score every trained CTC system on ``parts`` (default dev and test): each teacher of
    ``cfg``'s set, its ensemble (arithmetic/geometric per ``cfg.fusion``, T = 1), the ensembles of
    the other trained teacher sets, and the students that exist. Writes
    ``<root>/decode/scores.json`` and the RESULTS.md table; returns ``{system: {part: scores}}``."""
    units = prepare_units(layout, cfg)
    graph = build_ctc_graph(layout, units)
    sets = [cfg, *(o for o in trained_teacher_sets(layout, cfg) if teachers_of(layout, o) != teachers_of(layout, cfg))]
    students = sorted((d for d in (layout.ctc_root / "students").glob("*") if read_record(d) is not None),
                      key=lambda p: (p.name not in STUDENT_KINDS, p.name))  # baseline, frame, sequence first, then variants
    parts = list(parts or [layout.dev_part, *layout.test_parts])
    inputs = {"graph": require_record(layout.ctc_graph, "the CTC graph").fingerprint,
              **{f"set {teachers_of(layout, c).name}": teacher_set_record(layout, c).fingerprint for c in sets},
              **{f"student {d.name}": require_record(d, "asr-kd ctc-train-student").fingerprint for d in students}}
    guard = StageGuard("CTC stage 7 (decoding)", layout.ctc_decode, {"decode": decode_config, "ctc": cfg, "parts": parts}, inputs, command)
    scores_path = layout.ctc_decode / "scores.json"
    if guard.needs_work():
        hlg = load_hlg(graph)
        teachers = load_ctc_teachers(layout, cfg)
        systems: dict[str, list[CtcEncoder]] = {f"teacher{i}": [t] for i, t in enumerate(teachers)}
        systems[f"ensemble of {len(teachers)}"] = teachers
        for other in sets[1:]:  # the other sets' ensembles: does aligning spikes help fusion?
            systems[f"ensemble of {other.num_teachers} ({describe_teacher_set(other.shared_init_steps, other.guide_weight)})"] = load_ctc_teachers(layout, other)
        for d in students:
            systems[f"student: {d.name}"] = [load_ctc_model(d)]
        computed: dict[str, dict[str, dict[str, float]]] = {}
        for part in parts:
            cuts, cmvn = CutSet.from_cuts(layout.open_cuts(layout.fbank_cuts(part))), layout.open_cmvn(part)
            refs = {c.id: cut_text(c) for c in cuts}
            for name, models in systems.items():
                lps = {cut.id: lp for cut, lp in ctc_log_probs(models, cuts, cmvn, 1.0, cfg.fusion)}
                computed.setdefault(name, {})[part] = score_log_probs(lps, refs, units, hlg, decode_config, cfg.beam_size)
                log.info("%s on %s: %s", name, part, computed[name][part])
        write_text_atomic(scores_path, json.dumps(computed, indent=1) + "\n")
        guard.finish([scores_path])
    scores: dict[str, dict[str, dict[str, float]]] = json.loads(scores_path.read_text())
    wer_cols = ["greedy_wer", "beam_wer"] if units.kind == "bpe" else []
    cols = ["greedy_ter", "beam_ter", *wer_cols, "hlg_wer"]
    names = {"greedy_ter": "Greedy TER", "beam_ter": f"Beam-{cfg.beam_size} TER", "greedy_wer": "Greedy WER", "beam_wer": "Beam WER", "hlg_wer": "HLG WER"}
    header = "| System | Part | " + " | ".join(names[c] for c in cols) + " |\n|" + "---|" * (len(cols) + 2) + "\n"
    rows = [f"| {name} | {part} | " + " | ".join(fmt_pct(s[c]) for c in cols) + " |" for name, by_part in scores.items() for part, s in by_part.items()]
    body = (f"CTC {cfg.model_size} encoders, {units.num_tokens} {cfg.units} tokens{f', on {corpus}' if corpus else ''}; "
            f"teachers: {describe_teacher_set(cfg.shared_init_steps, cfg.guide_weight)}; each student's settings are in its own section. TER = token error rate "
            "(prefix beam search without LM); HLG WER = kaldi-decoder over H o L o G with the recipe's n-gram LM.\n\n" + header + "\n".join(rows) + "\n")
    write_results(results_md, f"## CTC results ({cfg.units})", body, command, [layout.ctc_decode])
    return scores
