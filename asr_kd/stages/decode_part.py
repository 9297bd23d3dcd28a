"""Decode any part, a user's own test set, with any trained hybrid system, without touching the
recipe's stages or Table 1 (``asr-kd decode-part``).

The part is read from a LibriSpeech-layout folder (``<corpus>/<part>/<speaker>/<chapter>/``); its
manifests and features (the recipe's stage-1 feature config, its own per-speaker CMVN) go to
``<exp>/decode_parts/<part>/data``, and every system to ``<exp>/decode_parts/<part>/<system>/``
(``hyp.txt``, ``ref.txt``, ``wer_details`` with per-utterance and per-speaker WER). Systems: the
GMMs of stage 3 (``tri``, ``mono``), the students of stage 6 (``baseline``, ``distilled``), the
stage-4 ensemble (``ensemble``) and its members (``teacher<i>``), and the CTC path's systems
through the CTC HLG, with the decoding settings (and fusion) the CTC decoding stage used: its
students (``ctc-<name>`` for ``<exp>/ctc/<units>/students/<name>``, e.g. ``ctc-frame``), the
independently trained teachers (``ctc-teacher<i>``) and their ensemble (``ctc-ensemble``). The folder's
``provenance.json`` records the part's files and the records of every system decoded, so a
retrained model redoes the decoding and a rerun with nothing changed is skipped.

With a :class:`~asr_kd.config.RescoreConfig` (``--rescore-arpa``) the HCLG systems decode
into lattices rescored with that larger LM (asr_kd/decode/rescore.py): ``hyp.txt`` is then the
rescored answer, ``hyp_first_pass.txt`` the lattice's first-pass best path, and the scores carry
both WERs and the paired-bootstrap interval of their difference.

:func:`align_part` (``asr-kd align``) prepares a part the same way and aligns it as stage 3 aligned
the recipe's parts (the triphone GMM, or its first-pass DNN where the teachers were trained on
realigned labels) into ``<exp>/align_parts/<part>/``: cuts carrying senone alignments, ready to train on.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from asr_kd.config import SENONES_FIELD, DecodeConfig, FeatureConfig, GmmConfig, config_from_dict, load_config
from asr_kd.data.features import CmvnStats, cmvn_path, compute_features_for_parts, cuts_path
from asr_kd.data.librispeech import prepare_manifests
from asr_kd.decode.hclg import load_hclg
from asr_kd.decode.priors import load_priors
from asr_kd.decode.rescore import LatticeRescorer, RescoreConfig, check_rescoring_arpa, make_rescorer
from asr_kd.errors import ConfigError, DataError
from asr_kd.gmm.align import senone_alignments
from asr_kd.gmm.train import GmmSystem, GraphInputs, align_utterances
from asr_kd.kd.ensemble import ensemble_log_posteriors
from asr_kd.lang.const_lm import META_NAME as CONST_META, build_const_lm
from asr_kd.lang.lang_dir import Lang
from asr_kd.metrics.frame_accuracy import corpus_frame_accuracy
from asr_kd.metrics.paired import wer_difference
from asr_kd.metrics.wer import WerResult, compute_wer, write_transcripts, write_wer_report
from asr_kd.stages.common import alignment_inputs, gmm_record, load_teachers, model_checkpoint, read_senones, student_record, teachers_record
from asr_kd.stages.ctc_s7_decode import system_decoding
from asr_kd.data.alignments import store_alignments
from asr_kd.stages.layout import GMM_SYSTEMS, STUDENT_SYSTEMS, RecipeLayout
from asr_kd.stages.provenance import StageGuard, file_sha256, listing_fingerprint, require_record
from asr_kd.stages.s3_gmm import load_part, write_tids
from asr_kd.train.frame_classifier import load_frame_classifier
from asr_kd.utils import atomic_path, read_json, write_json_atomic

log = logging.getLogger(__name__)
CTC_PREFIX = "ctc-"  # ctc-<student folder name>: a CTC student, decoded through the CTC HLG


def _system_inputs(layout: RecipeLayout, systems: Sequence[str]) -> dict[str, str]:
    """Return the records' fingerprints of what ``systems`` are made of; ConfigError for an
    unknown system name."""
    inputs = {}
    if any(not name.startswith(CTC_PREFIX) for name in systems):
        inputs.update(alignment_inputs(layout))
    for name in systems:
        if name in GMM_SYSTEMS:
            continue
        if name.startswith(CTC_PREFIX):
            inner = name[len(CTC_PREFIX):]
            if inner == "ensemble" or (inner.startswith("teacher") and inner[7:].isdigit()):
                inputs["ctc_teachers"] = require_record(layout.ctc_teacher_set(0), f"the {layout.ctc_units} CTC teachers (asr-kd ctc-train-teachers)").fingerprint
            else:
                inputs[f"ctc_student_{inner}"] = require_record(
                    layout.ctc_student_dir(inner), f"the {layout.ctc_units} CTC student {inner!r} (asr-kd ctc-train-student)").fingerprint
            inputs["ctc_decode"] = require_record(layout.ctc_decode, f"the {layout.ctc_units} CTC decoding stage (asr-kd ctc-decode)").fingerprint
            continue
        if name in STUDENT_SYSTEMS:
            inputs[f"student_{STUDENT_SYSTEMS[name]}"] = student_record(layout, layout.student_dir(STUDENT_SYSTEMS[name]), f"stage 6 ({STUDENT_SYSTEMS[name]} student)").fingerprint
        elif name == "ensemble" or (name.startswith("teacher") and name[7:].isdigit()):
            inputs["teachers"] = teachers_record(layout).fingerprint
        else:
            raise ConfigError(f"unknown system {name!r}; choose from tri, mono, baseline, distilled, ensemble, teacher<i>, ctc-<CTC student>, ctc-teacher<i>, ctc-ensemble")
    return inputs


def tuned_scale(layout: RecipeLayout, name: str) -> float | None:
    """Return the acoustic scale the recipe tuned on dev for system ``name`` (stage 3 for the
    GMMs, stage 7 for the networks), or None when it was not tuned or has not run."""
    if name in GMM_SYSTEMS:
        path, key = layout.gmm_summary, "wers"
    else:
        path, key = layout.decode / "table1.json", ""
    if not path.is_file():
        return None
    data = read_json(path)
    assert isinstance(data, dict)
    entries = (data.get(key, {}) if key else data).get(name, {})
    penalised = next((e for e in entries.values() if isinstance(e, dict) and e.get("insertion_penalty")), None)
    if penalised is not None:  # tuned or fixed: either way the recipe's numbers include it
        raise ConfigError(f"{name} was decoded with a word insertion penalty ({penalised['insertion_penalty']:g}, decode.insertion_penalties), "
                          "which decode-part and the model directories (stage 9) do not apply yet; rerun stages 3 and 7 with "
                          "decode.insertion_penalties=[] to decode it here as the recipe did")
    return next((float(e["acoustic_scale"]) for e in entries.values() if isinstance(e, dict) and e.get("sweep")), None)


def per_speaker_wer(result: WerResult, speakers: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """Return ``{speaker: {"wer", "errors", "ref_words", "utterances"}}`` from the per-utterance
    details of ``result`` (``speakers`` maps utterance ids to speakers)."""
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for utt in result.utterances:
        s = sums[speakers.get(utt.utt_id, "?")]
        s[0] += utt.errors
        s[1] += len(utt.ref)
        s[2] += 1
    return {spk: {"wer": e / max(n, 1), "errors": e, "ref_words": n, "utterances": u} for spk, (e, n, u) in sorted(sums.items())}


def decode_part(
    layout: RecipeLayout, corpus_dir: Path | str, part: str, systems: Sequence[str], decode_config: DecodeConfig,
    num_jobs: int = 2, command: str = "", align: bool = False, tune_scale: bool = True, rescore: RescoreConfig | None = None,
) -> dict[str, dict]:
    """Decode ``part`` of ``corpus_dir`` with each of ``systems``; return ``{system: {"wer",
    "substitutions", "deletions", "insertions", "ref_words", "utterances", "failed",
    "per_speaker"}}`` (also ``scores.json``). With ``align``, the part is first aligned with the
    stage-3 triphone system (``data/tids_<part>.txt``) and the networks also get
    ``"frame_accuracy"`` and ``"aligned_utterances"``. With ``tune_scale`` each system decodes at
    the acoustic scale the recipe tuned for it on dev (stages 3 and 7), where there is one, else at
    ``decode_config.acoustic_scale``; ``"acoustic_scale"`` says which (a CTC system also at the
    blank penalty CTC stage 7 chose for it, ``"blank_penalty"`` where not 0). With ``rescore`` the HCLG
    systems' lattices are rescored with its LM and each also gets ``"first_pass"`` (its scores)
    and ``"rescored_minus_first_pass"`` (WER difference, paired-bootstrap interval). Skipped when
    the folder's record matches."""
    if not systems:
        raise ConfigError("name at least one system to decode (--systems tri distilled ...)")
    if decode_config.insertion_penalties:
        raise ConfigError(f"decode-part does not apply a word insertion penalty (decode.insertion_penalties {list(decode_config.insertion_penalties)}); "
                          "set decode.insertion_penalties=[]")
    if decode_config.ctc_blank_penalties:
        raise ConfigError(f"decode-part searches no blank penalty (decode.ctc_blank_penalties {list(decode_config.ctc_blank_penalties)}); "
                          "set decode.ctc_blank_penalties=[]")
    out = layout.exp_dir / "decode_parts" / part
    inputs = {"corpus_files": listing_fingerprint(corpus_dir, [part]), **_system_inputs(layout, systems),
              "lang": require_record(layout.lang, "stage 2 (lang)").fingerprint}
    if rescore is not None:
        if any(name.startswith(CTC_PREFIX) for name in systems):
            raise ConfigError("lattice rescoring applies to the HCLG systems (tri, mono, students, teachers); decode the ctc-* systems without --rescore-arpa")
        source = check_rescoring_arpa(rescore)
        # A const LM folder is vouched for by its const_lm.json (the fingerprints it was built from).
        inputs["rescore_arpa"] = file_sha256(source / CONST_META if source.is_dir() else source)
    feature_config = load_config(FeatureConfig, layout.feature_config)
    scales = {name: tuned_scale(layout, name) for name in systems if not name.startswith(CTC_PREFIX)} if tune_scale else {}
    guard = StageGuard(f"decode-part {part}", out, {"part": part, "systems": list(systems), "decode": decode_config, "tuned_scales": scales,
                                                    "features": feature_config, "align": align,
                                                    **({"rescore": rescore} if rescore is not None else {})}, inputs, command)
    scores_path = out / "scores.json"
    if guard.needs_work():
        data = out / "data"
        prepare_part(corpus_dir, part, data, feature_config, num_jobs)
        lang = Lang.load(layout.lang)
        senones = _align(layout, data, part, lang, num_jobs) if align else None
        if rescore is not None and rescore.method == "const" and not Path(rescore.arpa).is_dir():
            # Built once for every system of the part (a tglarge-size LM takes minutes), not per system.
            build_const_lm(rescore.arpa, layout.lang / "words.txt", out / "const_lm")
            rescore = dataclasses.replace(rescore, arpa=str(out / "const_lm"))
        scores = {}
        for name in systems:
            # Each system at the scale the recipe chose for it on dev (tables and this part agree);
            # a CTC student with the settings of the CTC decoding stage.
            scale = scales.get(name)
            if name.startswith(CTC_PREFIX) and tune_scale:
                config = ctc_decode_config(layout)
                row = ctc_table_name(layout, name[len(CTC_PREFIX):])
                chosen = system_decoding(layout, row)
                if chosen is not None:  # the scale and blank penalty the CTC decoding stage chose for it on dev
                    config = dataclasses.replace(config, ctc_acoustic_scale=chosen.acoustic_scale, ctc_blank_penalty=chosen.blank_penalty,
                                                 ctc_blank_penalties=())
                elif config.ctc_acoustic_scales or config.ctc_blank_penalties:
                    raise DataError(f"{layout.ctc_decode / 'scores.json'} has no scale for {row!r}, which {name} names; rerun CTC stage 7 "
                                    "(asr-kd ctc-decode) after training it")
                how = "as the CTC decoding stage"
            else:
                config = decode_config if scale is None else dataclasses.replace(decode_config, acoustic_scale=scale)
                how = "tuned on dev by the recipe" if scale is not None else "as configured"
            used = config.ctc_acoustic_scale if name.startswith(CTC_PREFIX) else config.acoustic_scale
            blank = {"blank_penalty": config.ctc_blank_penalty} if name.startswith(CTC_PREFIX) and config.ctc_blank_penalty else {}
            log.info("%s: acoustic scale %g%s (%s)", name, used, f", blank penalty {config.ctc_blank_penalty:g}" if blank else "", how)
            scores[name] = {**_decode_system(layout, data, part, name, lang, out / name, config, senones, rescore), "acoustic_scale": used,
                            **blank}
        write_json_atomic(scores_path, scores)
        guard.finish([scores_path])
    scores = read_json(scores_path)
    assert isinstance(scores, dict)
    return scores


def prepare_part(corpus_dir: Path | str, part: str, data: Path, feature_config: FeatureConfig, num_jobs: int) -> None:
    """Manifests and features (the recipe's feature config, the part's own CMVN) of ``part``."""
    reports = prepare_manifests(corpus_dir, data / "manifests", [part], num_jobs=num_jobs)
    if reports[part].utterances == 0:
        raise DataError(f"{Path(corpus_dir) / part} holds no utterance with audio and a transcript; check the folder")
    compute_features_for_parts(data / "manifests", data, [part], feature_config)


def align_part(layout: RecipeLayout, corpus_dir: Path | str, part: str, num_jobs: int = 2, command: str = "") -> dict[str, int]:
    """Align ``part`` of ``corpus_dir`` with the stage-3 triphone GMM (``asr-kd align``): its
    manifests and features go to ``<exp>/align_parts/<part>/data``, its senone alignments on its
    cuts to ``<exp>/align_parts/<part>/cuts_<part>.jsonl.gz`` (field ``senones``, as stage 3's
    ``exp/gmm/ali``: ready to train on) and its transition ids to ``tids_<part>.txt``. Returns
    ``{"cuts", "aligned", "frames"}``; skipped when the folder's record matches."""
    out = layout.exp_dir / "align_parts" / part
    feature_config = load_config(FeatureConfig, layout.feature_config)
    inputs = {"corpus_files": listing_fingerprint(corpus_dir, [part]), **alignment_inputs(layout),
              "lang": require_record(layout.lang, "stage 2 (lang)").fingerprint}
    guard = StageGuard(f"align {part}", out, {"part": part, "features": feature_config}, inputs, command)
    cuts_file, summary_path = out / f"cuts_{part}.jsonl.gz", out / "summary.json"
    if guard.needs_work():
        data = out / "data"
        prepare_part(corpus_dir, part, data, feature_config, num_jobs)
        senones = _align(layout, data, part, Lang.load(layout.lang), num_jobs)
        if not senones:
            raise DataError(f"part {part}: no utterance could be aligned with {layout.gmm_model('tri')}; check its transcripts")
        cuts = layout.open_cuts(cuts_path(data / "fbank", part))
        stored = store_alignments(cuts, senones, out / f"storage_{part}", name=SENONES_FIELD)
        with atomic_path(cuts_file) as tmp:
            stored.to_file(tmp)
        shutil.copyfile(data / f"tids_{part}.txt", out / f"tids_{part}.txt")
        summary = {"cuts": sum(1 for _ in cuts), "aligned": len(senones), "frames": int(sum(len(a) for a in senones.values()))}
        write_json_atomic(summary_path, summary)
        guard.finish([summary_path, cuts_file, out / f"tids_{part}.txt", out / f"storage_{part}" / "arrays.npa"])
    summary = read_json(summary_path)
    assert isinstance(summary, dict)
    return summary


def _gmm_config(layout: RecipeLayout) -> GmmConfig:
    """The GmmConfig stage 3 ran with, from its record."""
    return config_from_dict(GmmConfig, gmm_record(layout).config["gmm"])


def _align(layout: RecipeLayout, data: Path, part: str, lang: Lang, num_jobs: int) -> dict[str, np.ndarray]:
    """Align the part as stage 3 aligned the recipe's parts: with the triphone system (Viterbi,
    Kaldi's align_si), or with ``alignments="dnn"`` through the same training graphs with stage 3's
    first-pass DNN; write ``data/tids_<part>.txt`` and return the senone alignment of every
    aligned utterance."""
    if layout.alignments == "dnn":  # the labels the networks were trained on
        from asr_kd.stages.s3_realign import Realigner, load_aligner

        realigner = Realigner(dataclasses.replace(layout, alignments="gmm"), [load_aligner(layout)])
        cuts = list(layout.open_cuts(cuts_path(data / "fbank", part)))
        tids, failed = realigner.align(cuts, CmvnStats.load(cmvn_path(data / "fbank", part)), f"realign {part}")
        tm, aligner = realigner.tm, layout.realign / "aligner"
    else:
        config = _gmm_config(layout)
        system = GmmSystem.load(layout.gmm_model("tri"))
        part_data = load_part(data, part, lang, config)
        tids, failed = align_utterances(system, GraphInputs.from_lang(lang), part_data.utterances, config, num_jobs, desc=f"align {part}")
        tm, aligner = system.tm, layout.gmm_model("tri")
    write_tids(data / f"tids_{part}.txt", tids)
    log.info("%s: %d utterances aligned with %s, %d failed", part, len(tids), aligner, failed)
    return senone_alignments(tm, tids)


def ctc_table_name(layout: RecipeLayout, inner: str) -> str:
    """The CTC table's row of decode-part's ``ctc-<inner>`` system: ``ensemble`` (the independent
    set's first ``ctc.num_teachers`` teachers, as CTC stage 7 fused them), ``teacher<i>``, or a
    student folder."""
    if inner == "ensemble":  # the ensemble of the teachers the CTC decoding stage used
        record = require_record(layout.ctc_decode, f"the {layout.ctc_units} CTC decoding stage (asr-kd ctc-decode)")
        return f"ensemble of {record.config['ctc']['num_teachers']}"
    return inner if inner.startswith("teacher") and inner[7:].isdigit() else f"student: {inner}"


def _ctc_teacher_dirs(layout: RecipeLayout) -> list[Path]:
    """The independent CTC teacher set's teacher folders, in index order."""
    return sorted((d for d in layout.ctc_teacher_set(0).glob("teacher*") if d.name[7:].isdigit()), key=lambda d: int(d.name[7:]))


def ctc_decode_config(layout: RecipeLayout) -> DecodeConfig:
    """The DecodeConfig the CTC decoding stage used (its record), so a part decodes as its table did."""
    record = require_record(layout.ctc_decode, f"the {layout.ctc_units} CTC decoding stage (asr-kd ctc-decode)")
    return config_from_dict(DecodeConfig, record.config["decode"])


def _decode_system(layout: RecipeLayout, data: Path, part: str, name: str, lang: Lang, out_dir: Path, decode_config: DecodeConfig,
                   senones_ali: Mapping[str, np.ndarray] | None = None, rescore: RescoreConfig | None = None) -> dict:
    from asr_kd.decode.gmm_decode import decode_gmm_batch
    from asr_kd.decode.hybrid import decode_posteriors_batch

    if name.startswith(CTC_PREFIX):
        from asr_kd.ctc.training import ctc_log_probs, load_ctc_model
        from asr_kd.decode.ctc import decode_ctc_batch
        from asr_kd.decode.hlg import load_hlg

        inner = name[len(CTC_PREFIX):]
        if inner == "ensemble":
            num = int(require_record(layout.ctc_decode, "the CTC decoding stage").config["ctc"]["num_teachers"])
            models = [load_ctc_model(d) for d in _ctc_teacher_dirs(layout)[:num]]
        elif inner.startswith("teacher") and inner[7:].isdigit():
            models = [load_ctc_model(layout.ctc_teacher_set(0) / inner)]
        else:
            models = [load_ctc_model(layout.ctc_student_dir(inner))]
        fusion = str(require_record(layout.ctc_decode, "the CTC decoding stage").config["ctc"]["fusion"])
        cuts = layout.open_cuts(cuts_path(data / "fbank", part))
        log_probs, refs, speakers = {}, {}, {}
        for cut, lp in ctc_log_probs(models, cuts, CmvnStats.load(cmvn_path(data / "fbank", part)), 1.0, fusion):
            log_probs[cut.id] = lp
            refs[cut.id] = " ".join(s.text or "" for s in cut.supervisions).strip()
            speakers[cut.id] = cut.supervisions[0].speaker
        batch = decode_ctc_batch(load_hlg(layout.ctc_graph / "HLG.fst"), log_probs, decode_config)
        hyps = {k: " ".join(lang.words.name(w) for w in d.word_ids) for k, d in batch.decoded.items()}
        return _score(name, part, refs, hyps, speakers, out_dir, len(batch.failed))
    senones = read_senones(layout)
    if name in GMM_SYSTEMS:
        part_data = load_part(data, part, lang, _gmm_config(layout))
        system = GmmSystem.load(layout.gmm_model(name))
        hclg = load_hclg(layout.gmm_graph(name), decode_config.graph_scales)
        batch = decode_gmm_batch(hclg, system.am, system.tm, {u.id: u.feats for u in part_data.utterances}, decode_config,
                                 _rescorer(hclg, lang, decode_config, rescore, out_dir))
        refs = part_data.refs
        speakers = {c.id: c.supervisions[0].speaker for c in part_data.fbank_cuts}
    else:
        if name in STUDENT_SYSTEMS:
            models = [load_frame_classifier(model_checkpoint(layout.student_dir(STUDENT_SYSTEMS[name])))]
        elif name == "ensemble":
            models = load_teachers(layout)
        else:
            models = [load_teachers(layout)[int(name[7:])]]
        cuts = layout.open_cuts(cuts_path(data / "fbank", part))
        cmvn = CmvnStats.load(cmvn_path(data / "fbank", part))
        posteriors: dict[str, np.ndarray] = {}
        refs, speakers = {}, {}
        for cut, log_probs in ensemble_log_posteriors(models, cuts, cmvn, 1.0):
            posteriors[cut.id] = log_probs.numpy()
            refs[cut.id] = " ".join(s.text or "" for s in cut.supervisions).strip()
            speakers[cut.id] = cut.supervisions[0].speaker
        trans_model = GmmSystem.load(senones.model).tm
        hclg = load_hclg(senones.graph, decode_config.graph_scales)
        batch = decode_posteriors_batch(hclg, trans_model, posteriors, load_priors(layout.log_priors, trans_model.num_pdfs), decode_config,
                                        _rescorer(hclg, lang, decode_config, rescore, out_dir))
    extra: dict = {}
    if rescore is not None:
        extra = _first_pass_scores(refs, batch.first_pass_texts(lang.words), batch.texts(lang.words), out_dir)
    if senones_ali is not None and name not in GMM_SYSTEMS:
        acc = corpus_frame_accuracy(posteriors, senones_ali)
        extra = {**extra, "frame_accuracy": acc.accuracy, "aligned_utterances": len(senones_ali), "frames": acc.counted}
    return {**_score(name, part, refs, batch.texts(lang.words), speakers, out_dir, len(batch.failed)), **extra}


def _rescorer(hclg, lang: Lang, decode_config: DecodeConfig, rescore: RescoreConfig | None, out_dir: Path) -> LatticeRescorer | None:
    """The lattice rescorer of ``rescore`` over ``hclg`` (None without rescoring)."""
    if rescore is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    return make_rescorer(hclg, lang, decode_config, rescore, out_dir)


def _first_pass_scores(refs: Mapping[str, str], first: Mapping[str, str], rescored: Mapping[str, str], out_dir: Path) -> dict:
    """Write ``hyp_first_pass.txt``; return the first pass's scores and the rescored minus
    first-pass WER with its paired-bootstrap interval."""
    write_transcripts(out_dir / "hyp_first_pass.txt", first)
    a = compute_wer(refs, first)
    diff = wer_difference(a, compute_wer(refs, rescored))
    log.info("rescoring: first pass %s; rescored minus first pass %+.2f%% [%+.2f, %+.2f]", a.summary(), 100 * diff.value, 100 * diff.low, 100 * diff.high)
    return {"first_pass": {"wer": a.wer, "errors": a.errors, "ref_words": a.ref_words}, "rescored_minus_first_pass": diff.to_dict()}


def _score(name: str, part: str, refs: Mapping[str, str], hyps: Mapping[str, str], speakers: Mapping[str, str], out_dir: Path,
           failed: int) -> dict:
    """Score and write one system's hypotheses (hyp.txt, ref.txt, wer_details, per_speaker.json);
    return its scores."""
    result = compute_wer(refs, hyps)
    write_transcripts(out_dir / "ref.txt", refs)
    write_wer_report(result, out_dir / "wer_details")
    write_transcripts(out_dir / "hyp.txt", hyps)
    by_speaker = per_speaker_wer(result, speakers)
    write_json_atomic(out_dir / "per_speaker.json", by_speaker)
    log.info("%s on %s: %s", name, part, result.summary())
    return {"wer": result.wer, "substitutions": result.substitutions, "deletions": result.deletions, "insertions": result.insertions,
            "ref_words": result.ref_words, "utterances": len(refs), "failed": failed, "per_speaker": by_speaker}
