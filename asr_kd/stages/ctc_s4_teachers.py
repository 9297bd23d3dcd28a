"""CTC stage 4: a teacher set of ``ctc.num_teachers`` CTC encoders, independent, sharing their
first steps (``shared_init_steps``) or guided towards the unguided set's teacher 0
(``guide_weight``). Folders: :mod:`asr_kd.stages.ctc_common`."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from asr_kd.config import CtcConfig, TrainConfig
from asr_kd.ctc.kd import GuidedCtcLoss, ctc_hard_loss
from asr_kd.ctc.training import load_ctc_model, train_ctc_model
from asr_kd.errors import DataError
from asr_kd.launch import Launcher, check_launch, describe_launch, launch_jobs
from asr_kd.stages.common import fmt_pct, trained_checkpoints, write_results
from asr_kd.stages.ctc_common import describe_teacher_set, features_fingerprint, phone_init_inputs, prepare_units, teachers_of, units_record_fingerprint
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageGuard, require_record
from asr_kd.train.checkpoint import load_checkpoint
from asr_kd.train.loop import LossFn
from asr_kd.utils import write_text_atomic

log = logging.getLogger(__name__)


def teacher_set_settings(cfg: CtcConfig, train_config: TrainConfig, layout: RecipeLayout) -> dict:
    """The settings that make a CTC teacher set what it is (its stage-4 config)."""
    model = {k: getattr(cfg, k) for k in ("units", "bpe_vocab_size", "model_size", "subsampling", "dropout", "num_teachers",
                                          "shared_init_steps", "guide_weight")}
    if cfg.phone_init_steps:  # named only when set, so the records of sets made before it still match
        model["phone_init_steps"] = cfg.phone_init_steps
    return {"ctc": model, "train": train_config, "train_part": layout.train_part, "dev_part": layout.dev_part}


def _train_ctc_teacher(layout: RecipeLayout, cfg: CtcConfig, train_config: TrainConfig, i: int, init: Path | None, guide_dir: Path | None,
                       encoder_only: bool = False) -> dict:
    """Train (or resume) teacher ``i`` of ``teachers_of(layout, cfg)`` with seed ``train_config.seed + i``,
    from the checkpoint ``init`` if given (its encoder only with ``encoder_only``: the phone start)
    and guided by the teacher in ``guide_dir`` if given; return its summary entry. A job of
    :func:`train_ctc_teachers`."""
    units = prepare_units(layout, cfg)
    tcfg = dataclasses.replace(train_config, seed=train_config.seed + i)
    loss: LossFn = ctc_hard_loss if guide_dir is None else GuidedCtcLoss(load_ctc_model(guide_dir), cfg.guide_weight)
    start = time.time()
    result = train_ctc_model(layout.open_cuts(layout.fbank_cuts(layout.train_part)), layout.open_cuts(layout.fbank_cuts(layout.dev_part)),
                             layout.open_cmvn(layout.train_part), layout.open_cmvn(layout.dev_part), units, cfg, tcfg,
                             teachers_of(layout, cfg) / f"teacher{i}", loss, init_checkpoint=init, encoder_only=encoder_only)
    load_checkpoint(result.final_path)  # a truncated final.pt stops here, before the record is written
    log.info("CTC teacher %d: %s, best dev TER %s (%.0f s)", i, result.state.stop_reason, result.state.best_metric, time.time() - start)
    return {"seed": tcfg.seed, "steps": result.state.step, "best_dev_ter": result.state.best_metric, "guide": False}


def _first_steps(train_config: TrainConfig, steps: int) -> TrainConfig:
    """``train_config`` stopped after ``steps`` steps (its epochs never stop it first): a shared
    set's first steps, or the phone start of the BPE models."""
    return dataclasses.replace(train_config, max_steps=steps, num_epochs=max(train_config.num_epochs, 1000))


def _train_shared_init(layout: RecipeLayout, cfg: CtcConfig, init_config: TrainConfig, out_dir: Path, encoder_init: Path | None = None) -> Path:
    """Train (or resume) the shared initial run of a teacher set, or the phone start of the BPE
    models, in ``out_dir`` (no dev scoring; from the encoder of ``encoder_init`` if given); return
    its final checkpoint. A job of :func:`train_ctc_teachers`."""
    result = train_ctc_model(layout.open_cuts(layout.fbank_cuts(layout.train_part)), None, layout.open_cmvn(layout.train_part), None,
                             prepare_units(layout, cfg), cfg, init_config, out_dir, init_checkpoint=encoder_init,
                             encoder_only=encoder_init is not None)
    load_checkpoint(result.final_path)  # a truncated final.pt stops here, before a teacher starts from it
    return result.final_path


def train_ctc_teachers(
    layout: RecipeLayout, cfg: CtcConfig, train_config: TrainConfig, results_md: Path | None = None, command: str = "",
    jobs: int = 1, num_threads: int = 1, launcher: Launcher | None = None,
) -> list[dict]:
    """Train ``cfg.num_teachers`` CTC teachers (seeds ``seed + i``) in ``teachers_of(layout, cfg)``,
    each a job of ``launcher`` (default: local processes, ``jobs`` at a time, of ``num_threads``
    torch threads), or skip them when the set's record matches.

    With ``shared_init_steps`` > 0, one run of that many steps (seed ``seed``) is trained first in
    the set's ``init/`` and every teacher starts from its weights. With ``guide_weight`` > 0,
    teacher 0 is the finished unguided set's teacher 0 (linked here; train that set first) and
    guides the others (:class:`GuidedCtcLoss`). With ``phone_init_steps`` > 0 (BPE units), a phone
    CTC model of that many steps is trained first (:func:`train_phone_init`) and every model of the
    set, the shared initial run included, starts from its encoder. Returns the teachers' summaries
    in order."""
    units = prepare_units(layout, cfg, command)
    base_dir, set_dir = layout.ctc_teacher_set(cfg.shared_init_steps), teachers_of(layout, cfg)
    if cfg.phone_init_steps:
        check_launch(launcher, jobs, cfg.num_teachers)  # under torchrun: refused before the phone start trains
    phone_start = train_phone_init(layout, cfg, train_config, command, jobs, num_threads, launcher)
    inputs = {"units": units_record_fingerprint(layout), "features": features_fingerprint(layout), **phone_init_inputs(layout, cfg)}
    if cfg.guide_weight > 0:
        inputs["guide_set"] = require_record(base_dir, f"the unguided teacher set {base_dir.name} (asr-kd ctc-train-teachers without guide_weight)").fingerprint
    guard = StageGuard(f"CTC stage 4 ({set_dir.name})", set_dir, teacher_set_settings(cfg, train_config, layout), inputs, command)
    summary_path = set_dir / "summary.json"
    if guard.needs_work():
        guided = cfg.guide_weight > 0
        # The teachers' round is the largest: under torchrun it is refused before a shared init trains.
        own = list(range(1 if guided else 0, cfg.num_teachers))
        check_launch(launcher, jobs, len(own))
        init, encoder_only = phone_start, phone_start is not None
        if cfg.shared_init_steps > 0:
            init_cfg = _first_steps(train_config, cfg.shared_init_steps)
            if guided:
                init = base_dir / "init" / "final.pt"  # the unguided shared set's, finished with it
            else:
                log.info("shared initial alignment: %d steps -> %s", cfg.shared_init_steps, set_dir / "init")
                # A job too, so that under --cmd slurm no training runs where run.sh runs.
                init = launch_jobs(_train_shared_init, [(layout, cfg, init_cfg, set_dir / "init", phone_start)], launcher, jobs, num_threads,
                                   layout.exp_dir / "log", f"ctc_{layout.ctc_units}_stage4_{set_dir.name}_init")[0]
            encoder_only = False  # the shared run's whole model (itself started from the phone encoder if any)
        teachers: list[dict] = []
        if guided:
            # The guide is the unguided set's teacher 0, shared by link (not retrained).
            _link_dir(set_dir / "teacher0", base_dir / "teacher0")
            state = load_checkpoint(base_dir / "teacher0" / "final.pt")["train_state"]
            teachers.append({"seed": train_config.seed, "steps": int(state["step"]), "best_dev_ter": state.get("best_metric"), "guide": True})
        # The other teachers (``own``) depend on nothing but the init and the guide: one job each.
        start = time.time()
        teachers += launch_jobs(_train_ctc_teacher, [(layout, cfg, train_config, i, init, base_dir / "teacher0" if guided else None, encoder_only)
                                                     for i in own],
                                launcher, jobs, num_threads, layout.exp_dir / "log", f"ctc_{layout.ctc_units}_stage4_{set_dir.name}")
        log.info("%d CTC teacher%s trained in %.0f s %s", len(own), "" if len(own) == 1 else "s", time.time() - start,
                 describe_launch(launcher, jobs, len(own)))
        if guard.is_main:  # under torchrun the other ranks read rank 0's summary (the record hashes it)
            write_text_atomic(summary_path, json.dumps({"num_tokens": units.num_tokens, "teachers": teachers}, indent=1) + "\n")
        guard.finish([summary_path, *(c for i in own for c in trained_checkpoints(set_dir / f"teacher{i}"))])
    summary = json.loads(summary_path.read_text())
    rows = [f"| teacher{i}{' (guide)' if t['guide'] else ''} | {t['seed']} | {t['steps']} | {fmt_pct(t['best_dev_ter'])} |"
            for i, t in enumerate(summary["teachers"])]
    init_note = (f"all started from one checkpoint trained {cfg.shared_init_steps} steps (shared initial alignment)"
                 if cfg.shared_init_steps else "independent initialisations")
    if cfg.phone_init_steps:
        whose = "the shared checkpoint's encoder" if cfg.shared_init_steps else "every encoder"
        init_note += f"; {whose} started from one phone CTC model trained {cfg.phone_init_steps} steps, its output layer new (ctc.phone_init_steps)"
    if cfg.guide_weight > 0:
        init_note += (f"; teachers 1+ trained with guided CTC (weight {cfg.guide_weight:g}) towards teacher0's spikes "
                      "(Kurata & Audhkhasi 2019)")
    body = (f"{cfg.num_teachers} CTC {cfg.model_size} encoders over {summary['num_tokens']} {cfg.units} tokens (blank included), "
            f"subsampling x{cfg.subsampling}, {init_note}.\n\n"
            "| Teacher | Seed | Steps | Best dev greedy token error rate |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    write_results(results_md, f"## CTC teachers ({cfg.units}, {describe_teacher_set(cfg.shared_init_steps, cfg.guide_weight)})", body, command, [set_dir])
    return summary["teachers"]


def train_phone_init(layout: RecipeLayout, cfg: CtcConfig, train_config: TrainConfig, command: str = "", jobs: int = 1, num_threads: int = 1,
                     launcher: Launcher | None = None) -> Path | None:
    """With ``cfg.phone_init_steps`` > 0 (BPE units), train (or skip, when its record matches) one
    phone CTC model of ``cfg``'s encoder for that many steps of ``train_config`` (its seed, no dev
    scoring) in ``layout.ctc_phone_init``, a job of ``launcher``, and return its final checkpoint,
    whose encoder every BPE model starts from; its phone units are the phone path's. None without
    ``phone_init_steps``."""
    if cfg.phone_init_steps == 0:
        return None
    # The phone path's layout and the same encoder over phone units (no phone start of its own).
    p_layout, pcfg = dataclasses.replace(layout, ctc_units="phone"), dataclasses.replace(cfg, units="phone", phone_init_steps=0)
    prepare_units(p_layout, pcfg, command)
    out, init_cfg = layout.ctc_phone_init, _first_steps(train_config, cfg.phone_init_steps)
    settings = {"ctc": {k: getattr(cfg, k) for k in ("model_size", "subsampling", "dropout", "phone_init_steps")},
                "train": init_cfg, "train_part": layout.train_part}
    guard = StageGuard("CTC phone start of the BPE models", out, settings,
                       {"units": units_record_fingerprint(p_layout), "features": features_fingerprint(layout)}, command)
    if guard.needs_work():
        log.info("phone start of the BPE models: %d steps -> %s", cfg.phone_init_steps, out)
        final = launch_jobs(_train_shared_init, [(p_layout, pcfg, init_cfg, out)], launcher, jobs, num_threads,
                            layout.exp_dir / "log", f"ctc_{layout.ctc_units}_stage4_phone_init")[0]
        guard.finish([final])
    return out / "final.pt"


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
