"""CTC stage 6: the students, baseline (CTC on the transcripts), frame-level KD (online, or from
the teachers' stored top-k soft targets, made here on first use) and sequence-level KD (the
ensemble's pseudo-labels). Folders: :mod:`asr_kd.stages.ctc_common`."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
from lhotse import CutSet, load_manifest_lazy
from lhotse.array import seconds_to_frames
from tqdm import tqdm

from asr_kd.config import CtcConfig, TrainConfig
from asr_kd.ctc.kd import CtcFrameKdLoss, CtcSequenceKdLoss, ctc_hard_loss, pseudo_labels
from asr_kd.ctc.training import ctc_log_probs, token_error_rate, train_ctc_model
from asr_kd.ctc.units import CtcUnits
from asr_kd.data.ctc_data import cut_text
from asr_kd.errors import ConfigError
from asr_kd.kd.ensemble import TeacherEnsemble
from asr_kd.launch import Launcher, check_launch, launch_jobs
from asr_kd.kd.soft_targets import SOFT_IDS, SOFT_PROBS, SOFT_TEMPERATURE, SoftTargetStats, store_soft_targets, topk_compress
from asr_kd.stages.common import STUDENT_SEED_OFFSET, fmt_pct, trained_checkpoints, write_results
from asr_kd.stages.ctc_common import (
    STUDENT_KINDS, ctc_soft_cuts, ctc_soft_dir, ctc_student_folder, features_fingerprint, load_ctc_teachers, phone_init_checkpoint,
    phone_init_inputs, prepare_units, seed_groups, teacher_set_record, teachers_of, units_record_fingerprint,
)
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageGuard, require_record
from asr_kd.train.checkpoint import load_checkpoint
from asr_kd.train.loop import LossFn
from asr_kd.utils import atomic_path, folder_lock, not_rank_0, write_text_atomic

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Stored soft targets (top-k storage of the hybrid path, at the CTC output frame rate)
# --------------------------------------------------------------------------------------------


def make_ctc_soft_targets(layout: RecipeLayout, cfg: CtcConfig, max_duration: float = 200.0, command: str = "") -> Path:
    """Store the teachers' fused CTC posteriors at ``cfg.temperature`` as top-``cfg.top_k`` soft
    targets (:mod:`asr_kd.kd.soft_targets`) on the training cuts, at the output frame rate
    (``subsampling`` x 10 ms); return the cut manifest (skipped when it exists; the folder name
    records the teacher set, fusion, T and k). ``stats.json`` beside it: bytes per frame stored
    vs dense and the mean KL(stored || full), as in the hybrid path. The folder's record holds
    the settings and the fingerprints of the teacher set and of stage 1's features; a mismatch
    redoes it."""
    # Students trained side by side (CTC stage 6, --nj) may all ask for them: one makes them while the
    # others wait on a lock, then find them finished. Under torchrun, rank 0 makes them and the other
    # ranks wait for its record outside the lock (inside, they would keep rank 0 out).
    if not_rank_0():
        return _make_ctc_soft_targets(layout, cfg, max_duration, command)
    with folder_lock(ctc_soft_dir(layout, cfg).parent):
        return _make_ctc_soft_targets(layout, cfg, max_duration, command)


def _make_ctc_soft_targets(layout: RecipeLayout, cfg: CtcConfig, max_duration: float, command: str) -> Path:
    out_path = ctc_soft_cuts(layout, cfg)
    settings = {"temperature": cfg.temperature, "top_k": cfg.top_k, "fusion": cfg.fusion, "num_teachers": cfg.num_teachers,
                "teacher_set": teachers_of(layout, cfg).name, "train_part": layout.train_part}
    guard = StageGuard("CTC soft targets", out_path.parent, settings, {"teachers": teacher_set_record(layout, cfg).fingerprint,
                                                                       "features": features_fingerprint(layout)}, command)
    if not guard.needs_work_on_rank_0():
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
    layout: RecipeLayout, cfg: CtcConfig, units: CtcUnits, max_duration: float = 200.0, command: str = "",
) -> dict[str, list[tuple[list[int], float]]]:
    """Return the ensemble's hypotheses for every training cut: greedy or n-best
    (``cfg.pseudo_labels``) from the fused posteriors at T = 1, saved as ``labels.json`` (and
    ``stats.json``: their token error rate against the transcripts) in :func:`ctc_pseudo_dir`,
    made once for all the sequence students (every seed) of a teacher set. The folder's record
    holds the settings and the fingerprints of the teacher set, the units and stage 1's features;
    a mismatch redoes it."""
    # Seeds trained side by side (CTC stage 6, --nj) all ask for them: one makes them while the
    # others wait on the lock, then find them finished (under torchrun: rank 0, as for soft targets).
    if not_rank_0():
        return _make_pseudo_labels(layout, cfg, units, max_duration, command)
    with folder_lock(ctc_pseudo_dir(layout, cfg).parent):
        return _make_pseudo_labels(layout, cfg, units, max_duration, command)


def ctc_pseudo_dir(layout: RecipeLayout, cfg: CtcConfig) -> Path:
    """The pseudo-labels of ``cfg``'s teacher set, fusion and hypothesis settings."""
    return layout.ctc_pseudo_dir(teachers_of(layout, cfg).name, cfg.fusion, cfg.num_teachers, cfg.pseudo_labels, cfg.nbest, cfg.beam_size)


def _make_pseudo_labels(layout: RecipeLayout, cfg: CtcConfig, units: CtcUnits, max_duration: float, command: str) -> dict[str, list[tuple[list[int], float]]]:
    folder = ctc_pseudo_dir(layout, cfg)
    path = folder / "labels.json"
    nbest = cfg.pseudo_labels != "greedy"  # greedy hypotheses do not depend on the n-best settings
    settings = {"mode": cfg.pseudo_labels, "nbest": cfg.nbest if nbest else None, "beam_size": cfg.beam_size if nbest else None,
                "fusion": cfg.fusion, "num_teachers": cfg.num_teachers, "teacher_set": teachers_of(layout, cfg).name,
                "train_part": layout.train_part}
    guard = StageGuard("CTC pseudo-labels", folder, settings, {"teachers": teacher_set_record(layout, cfg).fingerprint,
                                                              "units": units_record_fingerprint(layout), "features": features_fingerprint(layout)}, command)
    if guard.needs_work_on_rank_0():
        teachers = load_ctc_teachers(layout, cfg)
        cuts = CutSet.from_cuts(layout.open_cuts(layout.fbank_cuts(layout.train_part)))
        fused = ctc_log_probs(teachers, cuts, layout.open_cmvn(layout.train_part), 1.0, cfg.fusion, max_duration)
        labels = {cut.id: pseudo_labels(lp, cfg.pseudo_labels, cfg.nbest, cfg.beam_size)
                  for cut, lp in tqdm(fused, total=len(cuts), desc="pseudo-labels", unit="cut", leave=False)}
        refs = {c.id: units.encode(cut_text(c)) for c in cuts}
        ter = token_error_rate(refs, {k: v[0][0] for k, v in labels.items()})
        log.info("pseudo-labels (%s) of %d cuts: token error rate of the best hypothesis vs the transcripts %.2f%%",
                 cfg.pseudo_labels, len(labels), 100 * ter)
        write_text_atomic(path, json.dumps(labels) + "\n")
        write_text_atomic(folder / "stats.json", json.dumps({"token_error_rate": ter, "cuts": len(labels)}) + "\n")
        guard.finish([path, folder / "stats.json"])
    return {k: [(list(t), float(w)) for t, w in v] for k, v in json.loads(path.read_text()).items()}


def _check_student(kind: str, name: str | None) -> str:
    """Return the student's folder name (``name``, default ``kind``); ConfigError for an unknown
    kind or a name that is not a plain folder name."""
    if kind not in STUDENT_KINDS:
        raise ConfigError(f"CTC student kind must be one of {STUDENT_KINDS}, got {kind!r}")
    name = name or kind
    if not name or "/" in name or name.startswith(".") or re.search(r"_seed[0-9]+$", name):
        raise ConfigError(f"CTC student name {name!r} must be a plain folder name not ending in _seed<k> (give --seed-index instead)")
    return name


def train_ctc_student(
    layout: RecipeLayout, kind: str, cfg: CtcConfig, train_config: TrainConfig, results_md: Path | None = None, command: str = "",
    name: str | None = None, seed_index: int = 0,
) -> dict:
    """Train the CTC student ``kind`` in ``<root>/students/<name>`` (``name`` defaults to ``kind``;
    give variants, e.g. another blank handling, their own name; seed ``seed_index`` > 0 in
    ``<name>_seed<k>``) with seed ``seed + 1000 + seed_index``: "baseline" (CTC on the
    transcripts), "frame" (frame-level KD, :class:`CtcFrameKdLoss`; online or from stored soft
    targets) or "sequence" (the ensemble's pseudo-labels, :class:`CtcSequenceKdLoss`). With
    ``ctc.phone_init_steps`` (BPE) it starts from the encoder of stage 4's phone model, as the
    teachers do. Skipped when its record matches. Returns its summary (steps, best dev TER, stop
    reason, seed)."""
    name = _check_student(kind, name)
    if seed_index < 0:
        raise ConfigError(f"seed index must be >= 0, got {seed_index}")
    exp_dir = layout.ctc_student_dir(ctc_student_folder(name, seed_index))
    units = prepare_units(layout, cfg, command)
    scfg = dataclasses.replace(train_config, seed=train_config.seed + STUDENT_SEED_OFFSET + seed_index)
    inputs = {"units": units_record_fingerprint(layout), "features": features_fingerprint(layout), **phone_init_inputs(layout, cfg)}
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
                train_cuts, soft = load_manifest_lazy(make_ctc_soft_targets(layout, cfg, command=command)), True
                loss = CtcFrameKdLoss(cfg)
            else:
                loss = CtcFrameKdLoss(cfg, TeacherEnsemble(load_ctc_teachers(layout, cfg), cfg.fusion))
        elif kind == "sequence":
            pseudo = make_pseudo_labels(layout, cfg, units, command=command)
            loss = CtcSequenceKdLoss(cfg)
        start = time.time()
        result = train_ctc_model(train_cuts, layout.open_cuts(layout.fbank_cuts(layout.dev_part)), layout.open_cmvn(layout.train_part),
                                 layout.open_cmvn(layout.dev_part), units, cfg, scfg, exp_dir, loss, pseudo, soft,
                                 init_checkpoint=phone_init_checkpoint(layout, cfg), encoder_only=True)
        log.info("CTC student %s: %s, best dev TER %s (%.0f s)", exp_dir.name, result.state.stop_reason, result.state.best_metric, time.time() - start)
        load_checkpoint(result.final_path)  # a truncated final.pt stops here, before the record is written
        if guard.is_main:  # under torchrun the other ranks read rank 0's summary (the record hashes it)
            write_text_atomic(summary_path, json.dumps({"steps": result.state.step, "best_dev_ter": result.state.best_metric,
                                                        "stop_reason": result.state.stop_reason, "seed": scfg.seed}, indent=1) + "\n")
        guard.finish([summary_path, *trained_checkpoints(result.final_path.parent)])
    summary = json.loads(summary_path.read_text())
    summary.setdefault("seed", scfg.seed)  # a student trained before seeds were recorded (its seed is the record's)
    write_student_section(layout, kind, name, cfg, results_md, command, exp_dir)
    return summary


def write_student_section(layout: RecipeLayout, kind: str, name: str, cfg: CtcConfig, results_md: Path | None, command: str,
                          first: Path | None = None) -> None:
    """(Re)write the RESULTS.md section of the CTC student ``name`` (of ``kind``): what it is and
    a line for each of its seeds trained so far with its first seed's settings (``first``: the
    folder to list when the seed groups do not name it yet)."""
    if results_md is None:
        return
    how = {"baseline": "CTC on the transcripts",
           "frame": (f"frame-level KD ({cfg.kd_source}): {cfg.kd_weight:g} x T^2 KL at T={cfg.temperature:g}, blank {cfg.blank_handling}"
                     f"{f' (weight {cfg.blank_weight:g})' if cfg.blank_handling == 'downweight' else ''} + {cfg.ctc_weight:g} x CTC"),
           "sequence": f"sequence-level KD: {cfg.kd_weight:g} x CTC on the ensemble's {cfg.pseudo_labels} hypotheses + {cfg.ctc_weight:g} x CTC"}[kind]
    # One section per student: a line for each of its seeds trained so far with the same settings.
    folders = seed_groups(layout)[0].get(name) or [(first or layout.ctc_student_dir(name)).name]
    seeds = []
    for d in (layout.ctc_student_dir(f) for f in folders):
        info = json.loads((d / "summary.json").read_text())
        seed = info.get("seed", require_record(d, "asr-kd ctc-train-student").config["train"]["seed"])
        seeds.append((d, f"seed {seed}: {info['steps']} steps, best dev greedy TER {fmt_pct(info['best_dev_ter'])}"))
    start = f", started from the encoder of a phone CTC model trained {cfg.phone_init_steps} steps" if cfg.phone_init_steps else ""
    body = f"CTC {cfg.model_size}, {cfg.units} units{start}; {how}. " + "; ".join(line for _, line in seeds) + ".\n"
    write_results(results_md, f"## CTC student: {name} ({cfg.units})", body, command, [d for d, _ in seeds])


def train_ctc_students(
    layout: RecipeLayout, cfg: CtcConfig, train_config: TrainConfig, kinds: Sequence[str] = STUDENT_KINDS, num_seeds: int = 1,
    extra_frame: Mapping[str, CtcConfig] | None = None, results_md: Path | None = None, command: str = "", jobs: int = 1,
    num_threads: int = 1, launcher: Launcher | None = None,
) -> dict[str, list[dict]]:
    """Train ``num_seeds`` seeds of every student of ``kinds`` (:func:`train_ctc_student`) and of a
    frame-level student ``name`` per entry of ``extra_frame`` (``{name: CtcConfig}``, e.g. the
    teachers of another set), each a job of ``launcher`` (default: local processes, ``jobs`` at a
    time). Seed 0 of every student runs first: it makes what the other seeds of its kind reuse
    (the stored soft targets of ``kd_source: stored``, the pseudo-labels), so no two seeds make
    them at once even where the file system cannot lock (seed 0 of an extra frame student of the
    same teacher set relies on the lock). Then (re)writes each student's RESULTS.md section (when a
    job failed: of the students whose first seed finished in this call). Returns ``{name:
    [summary of seed 0, seed 1, ...]}``."""
    if num_seeds < 1:
        raise ConfigError(f"--num-seeds must be >= 1, got {num_seeds}")
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"CTC student kinds repeat: {list(kinds)}")
    extra = dict(extra_frame or {})
    for name in extra:
        if _check_student("frame", name) in STUDENT_KINDS:
            raise ConfigError(f"an extra frame-level student cannot be named {name!r}, the folder of the {name} students")
    runs = [[(kind, kind, cfg, 0) for kind in kinds] + [("frame", name, c, 0) for name, c in extra.items()],
            [(kind, kind, cfg, k) for k in range(1, num_seeds) for kind in kinds]
            + [("frame", name, c, k) for k in range(1, num_seeds) for name, c in extra.items()]]
    check_launch(launcher, jobs, max(len(batch) for batch in runs))  # under torchrun: before seed 0 of any student trains
    out: dict[str, list[dict]] = {}
    try:
        for wave, batch in enumerate(runs):
            if not batch:
                continue
            summaries = launch_jobs(train_ctc_student, [(layout, kind, c, train_config, None, command, name, k) for kind, name, c, k in batch],
                                    launcher, jobs, num_threads, layout.exp_dir / "log", f"ctc_{layout.ctc_units}_stage6_students_{wave}")
            for (_, name, _, _), summary in zip(batch, summaries):
                out.setdefault(name, []).append(summary)
    except BaseException:
        # A job failed: the sections of the students whose first seed finished in this call (so with
        # these settings) are still written; the others keep what they said. The job's error goes on.
        for kind, name, c, _ in runs[0]:
            if name in out:
                try:
                    write_student_section(layout, kind, name, c, results_md, command)
                except Exception as err:  # never hide the job's error behind this one
                    log.error("could not write the RESULTS.md section of CTC student %s: %s", name, err)
        raise
    for kind, name, c, _ in runs[0]:
        write_student_section(layout, kind, name, c, results_md, command)
    return out
