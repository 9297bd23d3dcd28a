"""What the CTC stages (``--model-type ctc``, stages 4-7) share: where a teacher set and its
stored soft targets live, the CTC units, finished teacher sets and their records.

Everything of the CTC path is written under ``<exp>/ctc/<units>/``:

```
units/                 tokens.txt, units.json (and bpe.model)                  (this module)
phone_init/            (BPE, ctc.phone_init_steps = N) a phone CTC model of N steps whose encoder
                       every BPE model of the path starts from; its phone units in ../../phone/units
                                                                               (this module)
teachers/teacher<i>/   independent teachers (seeds seed+i), or, with ctc.shared_init_steps = N,
teachers_shared<N>/    init/ (one run of N steps) and teacher<i>/ started from it; with
teachers[_shared<N>]_guided<w>/   ctc.guide_weight = w, teacher0 links to the unguided set's
                       teacher0 (the guide) and teacher1... are trained with guided CTC
                                                                               (ctc_s4_teachers)
spikes/                the spike misalignment report and plot                  (ctc_s5_spikes)
soft_targets/<set>_<fusion>_T<T>_k<k>/   the ensemble's top-k CTC posteriors on the training cuts
pseudo_labels/<set>_<fusion>_<greedy|nbest<n>_beam<b>>/   the ensemble's hypotheses on the training
                       cuts (labels.json, stats.json), shared by every seed of the sequence students
students/<name>[_seed<k>]/  baseline (CTC on the transcripts), frame (frame-level KD), sequence (pseudo-labels),
                       or a named variant of one of them (e.g. frame_exclude); _seed<k>: its seed k > 0
                                                                               (ctc_s6_students)
graph/HLG.fst          the CTC decoding graph of the units
decode/                scores.json, comparisons.json, <system>_<part>/per_utt.json  (ctc_s7_decode)
```

Input: stages 0-2 (``<data>/fbank/cuts_<part>.jsonl.gz`` and ``cmvn_<part>.npz``, ``<data>/lang``
with ``G.fst``). Each of those folders (every teacher set, soft-target set, pseudo-label set and student, the units,
the graph, the spike report and the decoding) keeps its own ``provenance.json`` and is skipped
only while it matches (:mod:`asr_kd.stages.provenance`); an interrupted run of the same settings
resumes. With ``results_md``, each stage function (re)writes its own section of RESULTS.md from
its recorded outputs. Training and running one model is library code (:mod:`asr_kd.ctc.training`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Iterable, Sequence

import torch

from asr_kd.config import CtcConfig
from asr_kd.ctc.model import CtcEncoder
from asr_kd.ctc.training import load_ctc_model
from asr_kd.ctc.units import CtcUnits, load_units, make_units
from asr_kd.data.ctc_data import cut_text
from asr_kd.errors import ConfigError, DataError
from asr_kd.lang.lang_dir import Lang
from asr_kd.stages.layout import RecipeLayout, parse_ctc_teacher_set_name
from asr_kd.stages.provenance import StageGuard, StageRecord, read_record, require_current, require_record, stale_inputs

log = logging.getLogger(__name__)

STUDENT_KINDS = ("baseline", "frame", "sequence")
_SEED_SUFFIX = re.compile(r"^(?P<base>.+)_seed(?P<k>[1-9][0-9]*)$")


def teachers_of(layout: RecipeLayout, cfg: CtcConfig) -> Path:
    """The folder of ``cfg``'s CTC teacher set."""
    return layout.ctc_teacher_set(cfg.shared_init_steps, cfg.guide_weight)


def ctc_soft_dir(layout: RecipeLayout, cfg: CtcConfig) -> Path:
    """Stored CTC soft targets of ``cfg``'s teacher set, fusion, temperature and top-k."""
    return layout.ctc_soft_dir(teachers_of(layout, cfg).name, cfg.fusion, cfg.num_teachers, cfg.temperature, cfg.top_k)


def ctc_soft_cuts(layout: RecipeLayout, cfg: CtcConfig) -> Path:
    return layout.soft_cuts(ctc_soft_dir(layout, cfg))


def features_fingerprint(layout: RecipeLayout) -> str:
    """Stage 1's fingerprint: the cuts and features every CTC model and teacher output is made from."""
    return require_record(layout.features("fbank"), "stage 1 (features)").fingerprint


def prepare_units(layout: RecipeLayout, cfg: CtcConfig, command: str = "") -> CtcUnits:
    """Return the CTC units of ``cfg.units`` (made once per lang and setting, saved with their
    record in ``<root>/units``, which quotes ``command``: the stage that made them)."""
    if cfg.units != layout.ctc_units:
        raise ConfigError(f"ctc.units={cfg.units} but the layout is for {layout.ctc_units} units; pass the same units to both")
    lang_rec = require_record(layout.lang, "stage 2 (lang)")
    settings = {"units": cfg.units, "bpe_vocab_size": cfg.bpe_vocab_size if cfg.units == "bpe" else None, "train_part": layout.train_part}
    inputs = {"lang": lang_rec.fingerprint}
    if cfg.units == "bpe":
        inputs["features"] = features_fingerprint(layout)
    guard = StageGuard("CTC units", layout.ctc_units_dir, settings, inputs, command)
    if guard.needs_work_on_rank_0():  # under torchrun the other ranks wait for rank 0's units
        texts: Iterable[str] = ()
        if cfg.units == "bpe":  # read only if the BPE model must be trained
            texts = (cut_text(c) for c in layout.open_cuts(layout.fbank_cuts(layout.train_part)))
        make_units(cfg.units, Lang.load(layout.lang), layout.ctc_units_dir, texts, cfg.bpe_vocab_size)
        guard.finish(guard.all_files())
    return load_units(layout.ctc_units_dir, Lang.load(layout.lang))


def phone_init_inputs(layout: RecipeLayout, cfg: CtcConfig) -> dict[str, str]:
    """The record inputs a BPE model of ``cfg`` adds for its phone start: the finished phone
    model's fingerprint (none without ``phone_init_steps``); DataError when it is missing, was
    trained for another number of steps, or on features or phone units redone since."""
    if cfg.phone_init_steps == 0:
        return {}
    current = {"features": features_fingerprint(layout)}
    phone_units = read_record(dataclasses.replace(layout, ctc_units="phone").ctc_units_dir)
    if phone_units is not None:
        current["units"] = phone_units.fingerprint
    rec = require_current(layout.ctc_phone_init, f"the phone start of the BPE models (asr-kd ctc-train-teachers with ctc.phone_init_steps={cfg.phone_init_steps})",
                          current)
    if rec.config["ctc"]["phone_init_steps"] != cfg.phone_init_steps:
        raise DataError(f"{layout.ctc_phone_init} was trained {rec.config['ctc']['phone_init_steps']} steps, ctc.phone_init_steps={cfg.phone_init_steps} "
                        "asked for; rerun asr-kd ctc-train-teachers with this ctc config first")
    return {"phone_init": rec.fingerprint}


def phone_init_checkpoint(layout: RecipeLayout, cfg: CtcConfig) -> Path | None:
    """The checkpoint whose encoder ``cfg``'s BPE models start from, or None."""
    return layout.ctc_phone_init / "final.pt" if cfg.phone_init_steps > 0 else None


def units_record_fingerprint(layout: RecipeLayout) -> str:
    return require_record(layout.ctc_units_dir, "the CTC teachers (asr-kd ctc-train-teachers)").fingerprint


def model_inputs_now(layout: RecipeLayout) -> dict[str, str]:
    """Today's fingerprints of what every CTC model under ``layout`` is built on: stage 1's
    features, the units and the phone start of the BPE models, each where its record exists (a
    data folder of a bench's extra test part has no stage-1 record). A model whose record names
    another fingerprint for one of them was made before that input was redone:
    :func:`asr_kd.stages.provenance.require_current` refuses it."""
    current: dict[str, str] = {}
    for key, folder in (("features", layout.features("fbank")), ("units", layout.ctc_units_dir), ("phone_init", layout.ctc_phone_init)):
        rec = read_record(folder)
        if rec is not None:
            current[key] = rec.fingerprint
    return current


def describe_teacher_set(shared_init_steps: int, guide_weight: float = 0.0) -> str:
    """Return how a teacher set was trained, in words: "independent" or "shared init N steps",
    then ", guided w" for a guided set."""
    name = "independent" if shared_init_steps == 0 else f"shared init {shared_init_steps} steps"
    return name + (f", guided {guide_weight:g}" if guide_weight > 0 else "")


def teacher_set_record(layout: RecipeLayout, cfg: CtcConfig) -> StageRecord:
    """Return the record of ``cfg``'s finished teacher set; DataError naming the command if it is
    unfinished, holds fewer teachers than ``cfg.num_teachers``, or was trained on features, units
    or a phone start redone since (:func:`model_inputs_now`)."""
    set_dir = teachers_of(layout, cfg)
    rec = require_current(set_dir, "asr-kd ctc-train-teachers with the same ctc config", model_inputs_now(layout))
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
    name order. A set trained on features, units or a phone start redone since is left out with a
    warning (retrain it, or delete it)."""
    sets, current = [], model_inputs_now(layout)
    for set_dir in sorted(p for p in layout.ctc_root.glob("teachers*") if p.is_dir()):
        parsed, rec = parse_ctc_teacher_set_name(set_dir.name), read_record(set_dir)
        if parsed is None or rec is None or int(rec.config["ctc"]["num_teachers"]) < 2:
            continue
        stale = stale_inputs(rec, current)
        if stale:
            log.warning("CTC teacher set %s left out: made from an earlier run of its input %s (that stage was redone since); "
                        "retrain it with asr-kd ctc-train-teachers, or delete it", set_dir, ", ".join(map(repr, stale)))
            continue
        sets.append(dataclasses.replace(cfg, shared_init_steps=parsed[0], guide_weight=parsed[1], num_teachers=int(rec.config["ctc"]["num_teachers"])))
    return sets


def ctc_student_record(layout: RecipeLayout, name: str, stage_hint: str) -> StageRecord:
    """Return the record of the finished CTC student in folder ``name``; DataError naming
    ``stage_hint`` when it is unfinished or was trained on features, units, a phone start or (a
    distilled student) a teacher set redone since."""
    folder = layout.ctc_student_dir(name)
    rec, current = require_record(folder, stage_hint), model_inputs_now(layout)
    if "teachers" in rec.inputs:
        c = rec.config["ctc"]
        teachers = read_record(layout.ctc_teacher_set(int(c["shared_init_steps"]), float(c["guide_weight"])))
        if teachers is not None:
            current["teachers"] = teachers.fingerprint
    return require_current(folder, stage_hint, current)


def ctc_student_folder(name: str, seed_index: int = 0) -> str:
    """The folder name of student ``name``'s seed ``seed_index`` under ``<root>/students``: the name
    itself for the first seed, ``<name>_seed<k>`` for the others (CTC stage 7 reads them as one row)."""
    return name if seed_index == 0 else f"{name}_seed{seed_index}"


def trained_students(layout: RecipeLayout) -> list[str]:
    """The folder names of the finished CTC students (those with a record), in name order."""
    return sorted(d.name for d in (layout.ctc_root / "students").glob("*") if read_record(d) is not None)


def student_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Group student folder names by seed: ``{"baseline": ["baseline", "baseline_seed1"], ...}``,
    the baseline, frame and sequence students first, each group's seeds in order. A ``_seed<k>``
    folder without its first seed's folder is a group of its own (it cannot be averaged with
    anything)."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        m = _SEED_SUFFIX.match(name)
        base, k = (m["base"], int(m["k"])) if m and m["base"] in names else (name, 0)
        groups.setdefault(base, []).append((k, name))
    order = sorted(groups, key=lambda b: (b not in STUDENT_KINDS, STUDENT_KINDS.index(b) if b in STUDENT_KINDS else 0, b))
    return {b: [n for _, n in sorted(groups[b])] for b in order}


def seed_groups(layout: RecipeLayout) -> tuple[dict[str, list[str]], list[str]]:
    """The finished CTC students grouped by seed (:func:`student_groups`), keeping in each group
    only the seeds whose record (settings and inputs) equals the first seed's apart from the
    training seed, and the folders left out for differing (e.g. a ``_seed2`` kept from a run with
    other settings after ``--num-seeds`` went down): they are never averaged into a row."""
    groups, left_out = {}, []
    for base, members in student_groups(trained_students(layout)).items():
        first = _seedless(read_record(layout.ctc_student_dir(members[0])))
        keep = [m for m in members if _seedless(read_record(layout.ctc_student_dir(m))) == first]
        left_out += [m for m in members if m not in keep]
        groups[base] = keep
    return groups, left_out


def _seedless(record: StageRecord | None) -> tuple:
    """A student's record as a comparable value without its training seed."""
    assert record is not None
    config = json.loads(json.dumps(record.config))
    config.get("train", {}).pop("seed", None)
    return json.dumps(config, sort_keys=True), json.dumps(record.inputs, sort_keys=True)
