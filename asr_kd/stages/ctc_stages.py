"""CTC stages 4-7 (the ``--model-type ctc`` path): teacher sets, the spike report, students,
decoding. Training and running one model is library code (:mod:`asr_kd.ctc.training`).

Input: stages 0-2 (``<data>/fbank/cuts_<part>.jsonl.gz`` and ``cmvn_<part>.npz``, ``<data>/lang``
with ``G.fst``). Everything is written under ``<exp>/ctc/<units>/``:

```
units/                 tokens.txt, units.json (and bpe.model)
teachers/teacher<i>/   independent teachers (seeds seed+i), or, with ctc.shared_init_steps = N,
teachers_shared<N>/    init/ (one run of N steps) and teacher<i>/ started from it; with
teachers[_shared<N>]_guided<w>/   ctc.guide_weight = w, teacher0 links to the unguided set's
                       teacher0 (the guide) and teacher1... are trained with guided CTC
soft_targets/<set>_<fusion>_T<T>_k<k>/   the ensemble's top-k CTC posteriors on the training cuts
students/<name>/       baseline (CTC on transcripts), frame (frame-level KD), sequence (pseudo-labels),
                       or a named variant of one of them (e.g. frame_exclude)
spikes/                the spike misalignment report and plot
graph/HLG.fst          the CTC decoding graph of the units
decode/                per-system scores.json
```

Each of those folders (every teacher set, soft-target set and student, the units, the graph, the
spike report and the decoding) keeps its own ``provenance.json`` and is skipped only while it
matches (:mod:`asr_kd.stages.provenance`); an interrupted run of the same settings resumes.
With ``results_md``, each function (re)writes its own section of RESULTS.md from its recorded
outputs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from lhotse import CutSet, load_manifest_lazy
from lhotse.array import seconds_to_frames
from tqdm import tqdm

from asr_kd.config import CtcConfig, DecodeConfig, TrainConfig
from asr_kd.ctc.kd import CtcFrameKdLoss, CtcSequenceKdLoss, GuidedCtcLoss, ctc_hard_loss, pseudo_labels, spike_misalignment
from asr_kd.ctc.model import CtcEncoder
from asr_kd.ctc.training import ctc_log_probs, load_ctc_model, score_log_probs, token_error_rate, train_ctc_model
from asr_kd.ctc.units import CtcUnits, load_units, make_units
from asr_kd.data.ctc_data import cut_text
from asr_kd.decode.fst_utils import write_fst
from asr_kd.decode.hlg import compile_hlg, load_hlg
from asr_kd.errors import ConfigError, DataError
from asr_kd.kd.ensemble import TeacherEnsemble
from asr_kd.kd.soft_targets import SOFT_IDS, SOFT_PROBS, SOFT_TEMPERATURE, SoftTargetStats, store_soft_targets, topk_compress
from asr_kd.lang.lang_dir import Lang
from asr_kd.report.results_md import write_section
from asr_kd.report.tables import plot_spike_timings
from asr_kd.train.checkpoint import load_checkpoint
from asr_kd.train.loop import LossFn
from asr_kd.stages.layout import RecipeLayout, parse_ctc_teacher_set_name
from asr_kd.stages.provenance import StageGuard, StageRecord, read_record, require_record
from asr_kd.utils import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

STUDENT_KINDS = ("baseline", "frame", "sequence")
STUDENT_SEED_OFFSET = 1000  # students never share a seed with a teacher


def teachers_of(layout: RecipeLayout, cfg: CtcConfig) -> Path:
    """The folder of ``cfg``'s CTC teacher set."""
    return layout.ctc_teacher_set(cfg.shared_init_steps, cfg.guide_weight)


def ctc_soft_dir(layout: RecipeLayout, cfg: CtcConfig) -> Path:
    """Stored CTC soft targets of ``cfg``'s teacher set, fusion, temperature and top-k."""
    return layout.ctc_soft_dir(teachers_of(layout, cfg).name, cfg.fusion, cfg.temperature, cfg.top_k)


def ctc_soft_cuts(layout: RecipeLayout, cfg: CtcConfig) -> Path:
    return layout.soft_cuts(ctc_soft_dir(layout, cfg))


def _write_results(results_md: Path | None, heading: str, body: str, command: str) -> None:
    if results_md is not None:
        write_section(results_md, heading, f"{heading}\n\n" + (f"Produced by `{command}`.\n\n" if command else "") + body)


def prepare_units(layout: RecipeLayout, cfg: CtcConfig) -> CtcUnits:
    """Return the CTC units of ``cfg.units`` (made once per lang and setting, saved with their
    record in ``<root>/units``)."""
    if cfg.units != layout.ctc_units:
        raise ConfigError(f"ctc.units={cfg.units} but the layout is for {layout.ctc_units} units; pass the same units to both")
    lang_rec = require_record(layout.lang, "stage 2 (lang)")
    settings = {"units": cfg.units, "bpe_vocab_size": cfg.bpe_vocab_size if cfg.units == "bpe" else None, "train_part": layout.train_part}
    inputs = {"lang": lang_rec.fingerprint}
    if cfg.units == "bpe":
        inputs["features"] = require_record(layout.features("fbank"), "stage 1 (features)").fingerprint
    guard = StageGuard("CTC units", layout.ctc_units_dir, settings, inputs)
    if guard.needs_work():
        texts: Iterable[str] = ()
        if cfg.units == "bpe":  # read only if the BPE model must be trained
            texts = (cut_text(c) for c in layout.open_cuts(layout.fbank_cuts(layout.train_part)))
        make_units(cfg.units, Lang.load(layout.lang), layout.ctc_units_dir, texts, cfg.bpe_vocab_size)
        guard.finish(guard.all_files())
    return load_units(layout.ctc_units_dir, Lang.load(layout.lang))


def units_record_fingerprint(layout: RecipeLayout) -> str:
    return require_record(layout.ctc_units_dir, "the CTC teachers (asr-kd ctc-train-teachers)").fingerprint


# --------------------------------------------------------------------------------------------
# Training one CTC model with the shared loop
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Teachers and the ensemble
# --------------------------------------------------------------------------------------------


def teacher_set_settings(cfg: CtcConfig, train_config: TrainConfig, layout: RecipeLayout) -> dict:
    """The settings that make a CTC teacher set what it is (its stage-4 config)."""
    model = {k: getattr(cfg, k) for k in ("units", "bpe_vocab_size", "model_size", "subsampling", "dropout", "num_teachers",
                                          "shared_init_steps", "guide_weight")}
    return {"ctc": model, "train": train_config, "train_part": layout.train_part, "dev_part": layout.dev_part}


def train_ctc_teachers(
    layout: RecipeLayout, cfg: CtcConfig, train_config: TrainConfig, results_md: Path | None = None, command: str = "",
) -> list[dict]:
    """Train ``cfg.num_teachers`` CTC teachers (seeds ``seed + i``) in ``teachers_of(layout, cfg)``,
    or skip them when the set's record matches.

    With ``shared_init_steps`` > 0, one run of that many steps (seed ``seed``) is trained first in
    the set's ``init/`` and every teacher starts from its weights. With ``guide_weight`` > 0,
    teacher 0 is the finished unguided set's teacher 0 (linked here; train that set first) and
    guides the others (:class:`GuidedCtcLoss`). Returns the teachers' summaries in order."""
    units = prepare_units(layout, cfg)
    base_dir, set_dir = layout.ctc_teacher_set(cfg.shared_init_steps), teachers_of(layout, cfg)
    inputs = {"units": units_record_fingerprint(layout), "features": require_record(layout.features("fbank"), "stage 1 (features)").fingerprint}
    if cfg.guide_weight > 0:
        inputs["guide_set"] = require_record(base_dir, f"the unguided teacher set {base_dir.name} (asr-kd ctc-train-teachers without guide_weight)").fingerprint
    guard = StageGuard(f"CTC stage 4 ({set_dir.name})", set_dir, teacher_set_settings(cfg, train_config, layout), inputs, command)
    summary_path = set_dir / "summary.json"
    if guard.needs_work():
        train_cuts, dev_cuts = layout.open_cuts(layout.fbank_cuts(layout.train_part)), layout.open_cuts(layout.fbank_cuts(layout.dev_part))
        train_cmvn, dev_cmvn = layout.open_cmvn(layout.train_part), layout.open_cmvn(layout.dev_part)
        init = None
        if cfg.shared_init_steps > 0:
            init_cfg = dataclasses.replace(train_config, max_steps=cfg.shared_init_steps, num_epochs=max(train_config.num_epochs, 1000))
            if cfg.guide_weight > 0:
                init = base_dir / "init" / "final.pt"  # the unguided shared set's, finished with it
            else:
                log.info("shared initial alignment: %d steps -> %s", cfg.shared_init_steps, set_dir / "init")
                init = train_ctc_model(train_cuts, None, train_cmvn, None, units, cfg, init_cfg, set_dir / "init").final_path
        teachers: list[dict] = []
        guide: CtcEncoder | None = None
        for i in range(cfg.num_teachers):
            tcfg = dataclasses.replace(train_config, seed=train_config.seed + i)
            start = time.time()
            if cfg.guide_weight > 0 and i == 0:
                # The guide is the unguided set's teacher 0, shared by link (not retrained).
                _link_dir(set_dir / "teacher0", base_dir / "teacher0")
                guide = load_ctc_model(base_dir / "teacher0")
                state = load_checkpoint(base_dir / "teacher0" / "final.pt")["train_state"]
                teachers.append({"seed": tcfg.seed, "steps": int(state["step"]), "best_dev_ter": state.get("best_metric"), "guide": True})
                continue
            loss: LossFn = ctc_hard_loss if guide is None else GuidedCtcLoss(guide, cfg.guide_weight)
            result = train_ctc_model(train_cuts, dev_cuts, train_cmvn, dev_cmvn, units, cfg, tcfg, set_dir / f"teacher{i}", loss,
                                     init_checkpoint=init)
            load_checkpoint(result.final_path)  # a truncated final.pt stops here, before the record is written
            log.info("CTC teacher %d: %s, best dev TER %s (%.0f s)", i, result.state.stop_reason, result.state.best_metric, time.time() - start)
            teachers.append({"seed": tcfg.seed, "steps": result.state.step, "best_dev_ter": result.state.best_metric, "guide": False})
        write_text_atomic(summary_path, json.dumps({"num_tokens": units.num_tokens, "teachers": teachers}, indent=1) + "\n")
        own = [set_dir / f"teacher{i}" / "final.pt" for i in range(cfg.num_teachers) if not (cfg.guide_weight > 0 and i == 0)]
        guard.finish([summary_path, *own])
    summary = json.loads(summary_path.read_text())
    rows = [f"| teacher{i}{' (guide)' if t['guide'] else ''} | {t['seed']} | {t['steps']} | {_pct(t['best_dev_ter'])} |"
            for i, t in enumerate(summary["teachers"])]
    init_note = (f"all started from one checkpoint trained {cfg.shared_init_steps} steps (shared initial alignment)"
                 if cfg.shared_init_steps else "independent initialisations")
    if cfg.guide_weight > 0:
        init_note += (f"; teachers 1+ trained with guided CTC (weight {cfg.guide_weight:g}) towards teacher0's spikes "
                      "(Kurata & Audhkhasi 2019)")
    body = (f"{cfg.num_teachers} CTC {cfg.model_size} encoders over {summary['num_tokens']} {cfg.units} tokens (blank included), "
            f"subsampling x{cfg.subsampling}, {init_note}.\n\n"
            "| Teacher | Seed | Steps | Best dev greedy token error rate |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    _write_results(results_md, f"## CTC teachers ({cfg.units}, {_set_name(cfg.shared_init_steps, cfg.guide_weight)})", body, command)
    return summary["teachers"]


def _link_dir(link: Path, target: Path) -> None:
    """Make ``link`` a relative symbolic link to the folder ``target`` (kept if it already is;
    under DDP every rank may try, and one of them wins)."""
    if not (link.exists() or link.is_symlink()):
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)
        except FileExistsError:
            pass
    if not (link.is_symlink() and link.resolve() == target.resolve()):
        raise DataError(f"{link} exists and is not a link to {target}; remove it and rerun")


def _set_name(shared_init_steps: int, guide_weight: float = 0.0) -> str:
    name = "independent" if shared_init_steps == 0 else f"shared init {shared_init_steps} steps"
    return name + (f", guided {guide_weight:g}" if guide_weight > 0 else "")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def teacher_set_record(layout: RecipeLayout, cfg: CtcConfig) -> StageRecord:
    """Return the record of ``cfg``'s finished teacher set; DataError naming the command if it is
    unfinished or holds fewer teachers than ``cfg.num_teachers``."""
    set_dir = teachers_of(layout, cfg)
    rec = require_record(set_dir, "asr-kd ctc-train-teachers with the same ctc config")
    trained = int(rec.config["ctc"]["num_teachers"])
    if trained < cfg.num_teachers:
        raise DataError(f"{set_dir} holds {trained} CTC teachers, {cfg.num_teachers} asked for; rerun asr-kd ctc-train-teachers with ctc.num_teachers={cfg.num_teachers}")
    return rec


def load_ctc_teachers(layout: RecipeLayout, cfg: CtcConfig, device: str | torch.device = "cpu") -> list[CtcEncoder]:
    """Return the ``cfg.num_teachers`` teachers of ``cfg``'s finished set, in eval mode."""
    teacher_set_record(layout, cfg)
    set_dir = teachers_of(layout, cfg)
    return [load_ctc_model(set_dir / f"teacher{i}", device) for i in range(cfg.num_teachers)]


def trained_teacher_sets(layout: RecipeLayout, cfg: CtcConfig) -> list[CtcConfig]:
    """Return ``cfg`` adapted to each finished teacher set under ``layout`` with two or more
    teachers (``shared_init_steps``, ``guide_weight`` and ``num_teachers`` from its record), in
    name order."""
    sets = []
    for set_dir in sorted(p for p in layout.ctc_root.glob("teachers*") if p.is_dir()):
        parsed, rec = parse_ctc_teacher_set_name(set_dir.name), read_record(set_dir)
        if parsed is None or rec is None or int(rec.config["ctc"]["num_teachers"]) < 2:
            continue
        sets.append(dataclasses.replace(cfg, shared_init_steps=parsed[0], guide_weight=parsed[1], num_teachers=int(rec.config["ctc"]["num_teachers"])))
    return sets


def spike_report(
    layout: RecipeLayout, cfg: CtcConfig, part: str | None = None, results_md: Path | None = None, command: str = "",
) -> dict[str, dict[str, float]]:
    """Measure the spike misalignment between the teachers of every trained teacher set (the
    independent one, each ``teachers_shared<N>`` and each guided set) on ``part`` (default dev); write
    ``<root>/spike_report.json`` and return ``{set name: summary}`` (see
    :meth:`asr_kd.ctc.kd.SpikeStats.summary`). Sets with fewer than two teachers are skipped."""
    part = part or layout.dev_part
    cuts, cmvn = CutSet.from_cuts(layout.open_cuts(layout.fbank_cuts(part))), layout.open_cmvn(part)
    sets = trained_teacher_sets(layout, cfg)
    if not sets:
        raise DataError(f"no set of two or more trained CTC teachers under {layout.ctc_root}; run asr-kd ctc-train-teachers first")
    out = layout.ctc_root / "spikes"
    guard = StageGuard("CTC stage 5 (spike report)", out, {"part": part, "units": cfg.units},
                       {s.name: require_record(s, "asr-kd ctc-train-teachers").fingerprint for s in (teachers_of(layout, c) for c in sets)}, command)
    if guard.needs_work():
        report: dict[str, dict[str, float]] = {}
        example: dict[str, list[np.ndarray]] = {}  # the first utterance's posteriors, for the plot
        for set_cfg in sets:
            models = load_ctc_teachers(layout, set_cfg)
            per_model = [[lp for _, lp in ctc_log_probs([m], cuts, cmvn)] for m in models]
            name = _set_name(set_cfg.shared_init_steps, set_cfg.guide_weight)
            report[name] = spike_misalignment(per_model)
            example[name] = [lps[0] for lps in per_model]
        write_text_atomic(out / "spike_report.json", json.dumps(report, indent=1) + "\n")
        first = next(iter(cuts))
        title = f"CTC teachers' spikes on {first.id} ({part}, {cfg.units} units)"
        plot_spike_timings(example, out / "spike_timings.png", title, 10 * cfg.subsampling)
        guard.finish([out / "spike_report.json", out / "spike_timings.png"])
    report = json.loads((out / "spike_report.json").read_text())
    plot = out / "spike_timings.png"
    plot_name = f"ctc_spike_timings_{cfg.units}.png"
    if results_md is not None:
        with atomic_path(Path(results_md).parent / plot_name) as tmp:
            shutil.copyfile(plot, tmp)
    rows = [f"| {name} | {int(s['num_models'])} | {s['mean_spike_offset_frames']:.2f} | {100 * s['spikes_matched']:.1f}% | "
            f"{100 * s['argmax_disagreement']:.1f}% | {100 * s['blank_frame_share']:.1f}% |" for name, s in report.items()]
    body = (f"Between every pair of teachers on {part} ({len(cuts)} utterances), output frames of {10 * cfg.subsampling} ms: "
            "spikes are the first frame of each run of a non-blank argmax token; spikes of the two models are matched by a "
            "minimum-edit-distance alignment of their token sequences.\n\n"
            "| Teacher set | Teachers | Mean abs offset of matched spikes (frames) | Spikes matched | Argmax disagreement | Blank frames |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            f"![The teachers' non-blank probability on one {part} utterance, per teacher set]({plot_name})\n")
    _write_results(results_md, f"## CTC spike misalignment ({cfg.units})", body, command)
    return report


# --------------------------------------------------------------------------------------------
# Stored soft targets (top-k storage of the hybrid path, at the CTC output frame rate)
# --------------------------------------------------------------------------------------------


def make_ctc_soft_targets(layout: RecipeLayout, cfg: CtcConfig, max_duration: float = 200.0) -> Path:
    """Store the teachers' fused CTC posteriors at ``cfg.temperature`` as top-``cfg.top_k`` soft
    targets (:mod:`asr_kd.kd.soft_targets`) on the training cuts, at the output frame rate
    (``subsampling`` x 10 ms); return the cut manifest (skipped when it exists; the folder name
    records the teacher set, fusion, T and k). ``stats.json`` beside it: bytes per frame stored
    vs dense and the mean KL(stored || full), as in the hybrid path. The folder's record holds
    the settings and the teacher set's fingerprint; a mismatch redoes it."""
    out_path = ctc_soft_cuts(layout, cfg)
    settings = {"temperature": cfg.temperature, "top_k": cfg.top_k, "fusion": cfg.fusion, "num_teachers": cfg.num_teachers,
                "teacher_set": teachers_of(layout, cfg).name, "train_part": layout.train_part}
    guard = StageGuard("CTC soft targets", out_path.parent, settings, {"teachers": teacher_set_record(layout, cfg).fingerprint})
    if not guard.needs_work():
        return out_path
    teachers = load_ctc_teachers(layout, cfg)
    cuts = CutSet.from_cuts(layout.open_cuts(layout.fbank_cuts(layout.train_part)))
    shift = 0.01 * cfg.subsampling
    k = min(cfg.top_k, teachers[0].num_tokens)
    stats = SoftTargetStats()

    def targets() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        fused = ctc_log_probs(teachers, cuts, layout.open_cmvn(layout.train_part), cfg.temperature, cfg.fusion, max_duration)
        for cut, lp in tqdm(fused, total=len(cuts), desc="CTC soft targets", unit="cut", leave=False):
            probs = _fit_frames(np.exp(lp), seconds_to_frames(cut.duration, shift))
            ids, p = topk_compress(probs, k)
            stats.update(probs, ids, p)
            yield cut.id, ids, p

    # Storage checks frames against the cut's duration at ``shift`` (features are at 10 ms).
    stored = store_soft_targets(CutSet.from_cuts(c.drop_features() for c in cuts), targets(), ctc_soft_dir(layout, cfg) / "storage",
                                k, cfg.temperature, shift)
    by_id = {c.id: c for c in stored}
    out = [c.with_custom(SOFT_IDS, by_id[c.id].custom[SOFT_IDS]).with_custom(SOFT_PROBS, by_id[c.id].custom[SOFT_PROBS])
           .with_custom(SOFT_TEMPERATURE, cfg.temperature) for c in cuts if c.id in by_id]
    write_text_atomic(out_path.with_name("stats.json"), json.dumps({**stats.summary(), "top_k": k, "temperature": cfg.temperature,
                                                                    "cuts": len(out)}, indent=1) + "\n")
    with atomic_path(out_path) as tmp:
        CutSet.from_cuts(out).to_file(tmp)
    guard.finish([out_path, out_path.with_name("stats.json"), ctc_soft_dir(layout, cfg) / "storage" / "arrays.npa"])
    return out_path


def _fit_frames(probs: np.ndarray, frames: int) -> np.ndarray:
    """Return ``probs`` cut or padded (with blank-certain frames) to ``frames`` rows."""
    if probs.shape[0] >= frames:
        return probs[:frames]
    pad = np.zeros((frames - probs.shape[0], probs.shape[1]), dtype=probs.dtype)
    pad[:, 0] = 1.0
    return np.concatenate([probs, pad])


# --------------------------------------------------------------------------------------------
# Students
# --------------------------------------------------------------------------------------------


def make_pseudo_labels(
    layout: RecipeLayout, cfg: CtcConfig, units: CtcUnits, out_dir: Path, max_duration: float = 200.0,
) -> dict[str, list[tuple[list[int], float]]]:
    """Return (and save as ``pseudo_labels_<mode>.json`` in ``out_dir``) the ensemble's hypotheses
    for every training cut: greedy or n-best (``cfg.pseudo_labels``) from the fused posteriors at
    T = 1. Reuses the file when it exists."""
    path = out_dir / f"pseudo_labels_{cfg.pseudo_labels}.json"
    if path.is_file():
        return {k: [(list(t), float(w)) for t, w in v] for k, v in json.loads(path.read_text()).items()}
    teachers = load_ctc_teachers(layout, cfg)
    cuts = CutSet.from_cuts(layout.open_cuts(layout.fbank_cuts(layout.train_part)))
    fused = ctc_log_probs(teachers, cuts, layout.open_cmvn(layout.train_part), 1.0, cfg.fusion, max_duration)
    labels = {cut.id: pseudo_labels(lp, cfg.pseudo_labels, cfg.nbest, cfg.beam_size)
              for cut, lp in tqdm(fused, total=len(cuts), desc="pseudo-labels", unit="cut", leave=False)}
    refs = {c.id: units.encode(cut_text(c)) for c in cuts}
    ter = token_error_rate(refs, {k: v[0][0] for k, v in labels.items()})
    log.info("pseudo-labels (%s) of %d cuts: token error rate of the best hypothesis vs the transcripts %.2f%%", cfg.pseudo_labels, len(labels), 100 * ter)
    write_text_atomic(path, json.dumps(labels) + "\n")
    write_text_atomic(path.with_suffix(".stats.json"), json.dumps({"token_error_rate": ter, "cuts": len(labels)}) + "\n")
    return labels


def train_ctc_student(
    layout: RecipeLayout, kind: str, cfg: CtcConfig, train_config: TrainConfig, results_md: Path | None = None, command: str = "",
    name: str | None = None,
) -> dict:
    """Train the CTC student ``kind`` in ``<root>/students/<name>`` (``name`` defaults to ``kind``;
    give variants, e.g. another blank handling, their own name) with seed ``seed + 1000``:
    "baseline" (CTC on the transcripts), "frame" (frame-level KD, :class:`CtcFrameKdLoss`; online
    or from stored soft targets) or "sequence" (the ensemble's pseudo-labels,
    :class:`CtcSequenceKdLoss`). Skipped when its record matches. Returns its summary (steps,
    best dev TER, stop reason)."""
    if kind not in STUDENT_KINDS:
        raise ConfigError(f"CTC student kind must be one of {STUDENT_KINDS}, got {kind!r}")
    name = name or kind
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"CTC student name {name!r} must be a plain folder name")
    exp_dir = layout.ctc_student_dir(name)
    units = prepare_units(layout, cfg)
    scfg = dataclasses.replace(train_config, seed=train_config.seed + STUDENT_SEED_OFFSET)
    inputs = {"units": units_record_fingerprint(layout), "features": require_record(layout.features("fbank"), "stage 1 (features)").fingerprint}
    if kind != "baseline":
        inputs["teachers"] = teacher_set_record(layout, cfg).fingerprint
    guard = StageGuard(f"CTC stage 6 (student {name})", exp_dir, {"ctc": cfg, "train": scfg, "kind": kind, "train_part": layout.train_part,
                                                                 "dev_part": layout.dev_part}, inputs, command)
    summary_path = exp_dir / "summary.json"
    if guard.needs_work():
        train_cuts: CutSet = layout.open_cuts(layout.fbank_cuts(layout.train_part))
        loss: LossFn = ctc_hard_loss
        pseudo, soft = None, False
        if kind == "frame":
            if cfg.kd_source == "stored":
                train_cuts, soft = load_manifest_lazy(make_ctc_soft_targets(layout, cfg)), True
                loss = CtcFrameKdLoss(cfg)
            else:
                loss = CtcFrameKdLoss(cfg, TeacherEnsemble(load_ctc_teachers(layout, cfg), cfg.fusion))
        elif kind == "sequence":
            pseudo = make_pseudo_labels(layout, cfg, units, exp_dir)
            loss = CtcSequenceKdLoss(cfg)
        start = time.time()
        result = train_ctc_model(train_cuts, layout.open_cuts(layout.fbank_cuts(layout.dev_part)), layout.open_cmvn(layout.train_part),
                                 layout.open_cmvn(layout.dev_part), units, cfg, scfg, exp_dir, loss, pseudo, soft)
        log.info("CTC student %s: %s, best dev TER %s (%.0f s)", name, result.state.stop_reason, result.state.best_metric, time.time() - start)
        load_checkpoint(result.final_path)  # a truncated final.pt stops here, before the record is written
        write_text_atomic(summary_path, json.dumps({"steps": result.state.step, "best_dev_ter": result.state.best_metric,
                                                    "stop_reason": result.state.stop_reason}, indent=1) + "\n")
        guard.finish([summary_path, result.final_path])
    summary = json.loads(summary_path.read_text())
    how = {"baseline": "CTC on the transcripts",
           "frame": (f"frame-level KD ({cfg.kd_source}): {cfg.kd_weight:g} x T^2 KL at T={cfg.temperature:g}, blank {cfg.blank_handling}"
                     f"{f' (weight {cfg.blank_weight:g})' if cfg.blank_handling == 'downweight' else ''} + {cfg.ctc_weight:g} x CTC"),
           "sequence": f"sequence-level KD: {cfg.kd_weight:g} x CTC on the ensemble's {cfg.pseudo_labels} hypotheses + {cfg.ctc_weight:g} x CTC"}[kind]
    body = f"CTC {cfg.model_size}, {cfg.units} units; {how}; {summary['steps']} steps; best dev greedy TER {_pct(summary['best_dev_ter'])}.\n"
    _write_results(results_md, f"## CTC student: {name} ({cfg.units})", body, command)
    return summary


# --------------------------------------------------------------------------------------------
# Decoding and scoring
# --------------------------------------------------------------------------------------------


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
            systems[f"ensemble of {other.num_teachers} ({_set_name(other.shared_init_steps, other.guide_weight)})"] = load_ctc_teachers(layout, other)
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
    rows = [f"| {name} | {part} | " + " | ".join(_pct(s[c]) for c in cols) + " |" for name, by_part in scores.items() for part, s in by_part.items()]
    body = (f"CTC {cfg.model_size} encoders, {units.num_tokens} {cfg.units} tokens{f', on {corpus}' if corpus else ''}; "
            f"teachers: {_set_name(cfg.shared_init_steps, cfg.guide_weight)}; each student's settings are in its own section. TER = token error rate "
            "(prefix beam search without LM); HLG WER = kaldi-decoder over H o L o G with the recipe's n-gram LM.\n\n" + header + "\n".join(rows) + "\n")
    _write_results(results_md, f"## CTC results ({cfg.units})", body, command)
    return scores
