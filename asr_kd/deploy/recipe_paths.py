"""Where today's recipe (recipes/librispeech/run.sh) keeps what a model directory needs.

:func:`recipe_model_paths` is the ONLY place in :mod:`asr_kd.deploy` that knows the recipe's
folder layout, and it asks :class:`asr_kd.stages.layout.RecipeLayout`; everything else takes
explicit paths.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

from asr_kd.config import DEFAULT_TRAIN_PART, FeatureConfig, load_config
from asr_kd.data.features import cmvn_path
from asr_kd.deploy.model_dir import assemble_ctc_model_dir, assemble_gmm_model_dir, assemble_hybrid_model_dir
from asr_kd.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SYSTEM_HELP = ("distilled, hard, compressed (the hybrid students), distilled-uttcmvn, hard-uttcmvn, ... (those trained on "
               "per-utterance CMVN, stage 9), teacher<i>, mono or tri (the GMM-HMMs of stage 3), "
               "or ctc-<student> (ctc-baseline, ctc-frame, ctc-sequence, ...)")
UTTCMVN_SUFFIX = "-uttcmvn"


def recipe_model_paths(exp: Path | str, data: Path | str, system: str, train_part: str = DEFAULT_TRAIN_PART, units: str = "phone") -> dict[str, Path]:
    """Return the paths a model directory of ``system`` is assembled from, in the recipe's
    folders ``exp`` and ``data`` (through :class:`RecipeLayout`): ``features`` (the FeatureConfig
    YAML stage 1 saved) and the keyword arguments of :func:`assemble_hybrid_model_dir` or
    :func:`assemble_ctc_model_dir` (or, for a GMM, :func:`assemble_gmm_model_dir`)."""
    from asr_kd.stages.common import gmm_record, model_checkpoint, read_senones, with_recorded_alignments
    from asr_kd.stages.layout import GMM_SYSTEMS, STUDENT_KINDS, RecipeLayout

    layout = RecipeLayout(Path(data), Path(exp), train_part=train_part, ctc_units=units)
    # The networks' priors and labels are those stage 4's teachers were trained on (GMM or DNN realignment).
    layout = with_recorded_alignments(layout)
    common = {"features": layout.feature_config, "train_cmvn": layout.cmvn(train_part)}
    if system in GMM_SYSTEMS:
        record = gmm_record(layout)
        gmm = record.config["gmm"]
        return {"features": common["features"], "train_cmvn": cmvn_path(layout.data_dir / "mfcc", train_part),
                "gmm_model": layout.gmm_model(system), "graph_dir": layout.gmm_graph(system), "lang_dir": layout.lang,
                "delta_order": gmm["delta_order"], "delta_window": gmm["delta_window"], "utterance_cmvn": gmm["utterance_cmvn"],
                "decoding": gmm_decoding(layout, record, system)}
    kind = system.removesuffix(UTTCMVN_SUFFIX)
    if kind in STUDENT_KINDS or re.fullmatch(r"teacher\d+", system):
        # A student on per-utterance CMVN (stage 9) starts from the acoustic scale stage 7 tuned for its kind
        # (stage 9 then chooses its own on dev: make_model_dir_from_recipe's tune_on).
        run = layout.student_dir(kind, per_utterance_cmvn=kind != system) if kind in STUDENT_KINDS else layout.teacher_dir(int(system[7:]))
        if kind != system and not any((run / name).is_file() for name in ("best.pt", "final.pt")):
            raise DataError(f"{run} holds no trained student; recipe stage 9 trains it (run.sh --stage 9 --deploy-uttcmvn {kind}, "
                            f"or asr-kd train-student --kind {kind} --utterance-cmvn)")
        senones = read_senones(layout)
        return {**common, "checkpoint": model_checkpoint(run), "log_priors": layout.log_priors, "graph_dir": senones.graph,
                "gmm_model": senones.model, "lang_dir": layout.lang, "decoding": recipe_decoding(layout, kind)}
    if system.startswith("ctc-"):
        return {**common, "checkpoint": model_checkpoint(layout.ctc_student_dir(system[4:])), "units_dir": layout.ctc_units_dir,
                "hlg": layout.ctc_graph / "HLG.fst", "words": layout.lang / "words.txt", "decoding": ctc_decoding(layout, system[4:])}
    raise ConfigError(f"unknown system {system!r}; use {SYSTEM_HELP}")


def _recorded_decoding(layout, decode: dict, table_name: str) -> dict:
    """Return the search fields of a stage's recorded DecodeConfig ``decode``, with the acoustic
    scale the recipe tuned on dev for ``table_name`` where it tuned one."""
    from asr_kd.stages.decode_part import tuned_scale

    return _search_fields(decode, ("lattice_beam", "decoder"), "acoustic_scale", tuned_scale(layout, table_name))


def _search_fields(decode: dict, extra: tuple[str, ...], scale_key: str, scale: float | None) -> dict:
    """The beam, max-active, min-active, ``extra`` and ``scale_key`` fields of a recorded
    DecodeConfig ``decode``, with ``scale`` (tuned on dev) replacing ``scale_key`` where given."""
    out = {k: decode[k] for k in ("beam", "max_active", "min_active", *extra, scale_key) if k in decode}
    if scale is not None:
        out[scale_key] = scale
    return out


def gmm_decoding(layout, record, system: str) -> dict:
    """Return the DecodeConfig fields stage 3 decoded the GMM ``system`` with: its beam, max-active
    and the acoustic scale it tuned on dev."""
    return _recorded_decoding(layout, record.config["decode"], system)


def recipe_decoding(layout, system: str) -> dict:
    """Return the DecodeConfig fields stage 7 decoded ``system`` with: its beam and max-active and,
    for a student, the acoustic scale tuned on dev (``{}`` before stage 7 has run)."""
    from asr_kd.stages.layout import STUDENT_SYSTEMS
    from asr_kd.stages.provenance import read_record

    record = read_record(layout.decode)
    if record is None:
        return {}
    names = {kind: name for name, kind in STUDENT_SYSTEMS.items()}  # a student's folder name -> its table name
    return _recorded_decoding(layout, record.config["decode"], names.get(system, system))


def ctc_decoding(layout, student: str) -> dict:
    """Return the DecodeConfig fields CTC stage 7 decoded the CTC student folder ``student`` with:
    its beam and max-active and, as ``ctc_acoustic_scale`` and ``ctc_blank_penalty`` (where not 0),
    the HLG scale and blank penalty it chose on dev. ``{}`` (the defaults), with a warning, before
    that stage has run and when the student or the HLG was remade after it: its scale was tuned for
    other weights or another graph. ConfigError when the stage decoded it with a word insertion
    penalty, which a model directory does not apply."""
    from asr_kd.stages.ctc_s7_decode import system_decoding
    from asr_kd.stages.decode_part import ctc_table_name
    from asr_kd.stages.provenance import read_record

    record = read_record(layout.ctc_decode)
    if record is None:
        log.warning("CTC stage 7 has not run in %s: the model directory of the CTC student %s decodes at the default beam "
                    "and HLG scale 1 (run CTC stage 7 first to tune them on dev)", layout.ctc_root, student)
        return {}
    student_record, graph_record = read_record(layout.ctc_student_dir(student)), read_record(layout.ctc_graph)
    if (student_record is None or record.inputs.get(f"student {student}") != student_record.fingerprint
            or graph_record is None or record.inputs.get("graph") != graph_record.fingerprint):
        log.warning("CTC stage 7 (%s) did not decode the CTC student %s with its HLG as they are now; its model directory "
                    "decodes at the default beam and HLG scale 1 (rerun CTC stage 7 to tune them)", layout.ctc_decode, student)
        return {}
    chosen = system_decoding(layout, ctc_table_name(layout, student))
    fields = _search_fields(record.config["decode"], (), "ctc_acoustic_scale", None if chosen is None else chosen.acoustic_scale)
    # Its chosen blank penalty, else (a system the stage did not score) the one it applied to all, as decode-part does.
    blank = chosen.blank_penalty if chosen is not None else float(record.config["decode"].get("ctc_blank_penalty", 0.0))
    if blank:
        fields["ctc_blank_penalty"] = blank
    return fields


def make_model_dir_from_recipe(
    exp: Path | str, data: Path | str, system: str, out_dir: Path | str, train_part: str = DEFAULT_TRAIN_PART, units: str = "phone",
    normalization: str | None = None, tune_on: Path | str | None = None, scales: Sequence[float] | None = None,
) -> Path:
    """Assemble the model directory of the recipe's ``system`` at ``out_dir``; return it.
    ``normalization`` (default: global, or per utterance for a network trained so):
    :func:`asr_kd.deploy.model_dir.network_normalization`. With ``tune_on`` (a lhotse cut
    manifest of a dev part, never a test part) a hybrid network's acoustic scale is chosen again
    for this directory on it, from ``scales`` (default: the grid stage 7 searched)."""
    grid = _tuning_grid(exp, data, system, train_part, tune_on, scales) if tune_on is not None else ()
    out = _assemble(exp, data, system, out_dir, train_part, units, normalization)
    if grid:
        tune_model_dir_scale(out, tune_on, grid)
    elif tune_on is not None:
        log.info("%s: stage 7 decoded at one acoustic scale (decode.acoustic_scales is empty); keeping it", out)
    return out


def tune_model_dir_scale(model_dir: Path, dev_manifest: Path | str, scales: Sequence[float]) -> None:
    """Tune the hybrid ``model_dir``'s acoustic scale on ``dev_manifest`` and record it (and the
    sweep) in its ``model.json``; the sweep is logged."""
    from asr_kd.deploy.model_dir import load_spec, record_tuned_scale
    from asr_kd.deploy.report import load_test_audio, part_name
    from asr_kd.deploy.speed import tune_acoustic_scale

    spec = load_spec(model_dir)
    audio, refs = load_test_audio(dev_manifest, spec.features.sampling_rate)
    sweep = tune_acoustic_scale(model_dir, audio, refs, scales, part_name(dev_manifest))
    record_tuned_scale(model_dir, sweep)


def _tuning_grid(exp: Path | str, data: Path | str, system: str, train_part: str, tune_on: Path | str,
                 scales: Sequence[float] | None) -> tuple[float, ...]:
    """Check a ``--tune-scale-on`` request before anything is built: a hybrid network's system, a
    manifest that is not one of the recipe's test parts, and a grid (``scales``, or the acoustic
    scales stage 7 searched on dev: empty when it decoded at one fixed scale). ConfigError
    naming the fix otherwise."""
    from asr_kd.decode.tuning import check_scales
    from asr_kd.deploy.report import part_name
    from asr_kd.stages.layout import GMM_SYSTEMS, RecipeLayout
    from asr_kd.stages.provenance import read_record

    if system in GMM_SYSTEMS or system.startswith("ctc-"):
        raise ConfigError(f"--tune-scale-on: {system} is not a hybrid network; only a hybrid network's acoustic scale is tuned here "
                          "(a GMM's and a CTC model's come from the recipe's tables)")
    layout = RecipeLayout(Path(data), Path(exp), train_part=train_part)
    if part_name(tune_on) in layout.test_parts:
        raise ConfigError(f"--tune-scale-on {tune_on}: that is a test part; tune on the dev part ({layout.dev_part}), never on test")
    if scales:
        return check_scales(scales)
    record = read_record(layout.decode)
    if record is None:
        raise ConfigError(f"--tune-scale-on: stage 7 has not run under {exp}, so there is no acoustic-scale grid to search; pass --scales")
    return check_scales(record.config["decode"]["acoustic_scales"]) if record.config["decode"].get("acoustic_scales") else ()


def _assemble(exp: Path | str, data: Path | str, system: str, out_dir: Path | str, train_part: str, units: str,
              normalization: str | None) -> Path:
    paths = recipe_model_paths(exp, data, system, train_part, units)
    feature_yaml = paths.pop("features")
    if not feature_yaml.is_file():
        raise DataError(f"{feature_yaml} does not exist; run recipe stage 1 (features), which records the feature config there")
    features = load_config(FeatureConfig, feature_yaml)
    desc = f"{system} from {Path(exp).resolve()}"
    if "units_dir" in paths:
        return assemble_ctc_model_dir(out_dir, features=features, normalization=normalization, description=desc, **paths)
    if "gmm_model" in paths and "checkpoint" not in paths:
        return assemble_gmm_model_dir(out_dir, features=features, normalization=normalization or "global", description=desc, **paths)
    return assemble_hybrid_model_dir(out_dir, features=features, normalization=normalization, description=desc, **paths)
