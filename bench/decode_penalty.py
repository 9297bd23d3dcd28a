"""A word insertion penalty tuned on dev beside the acoustic scale, against the scale alone, on a
finished recipe run: each system's dev search both ways, then the test parts at each choice, with
paired bootstrap intervals of the WER difference (issue 13: Kaldi's score.sh tunes the LM weight
and a word insertion penalty on dev).

Stages 3 and 7 search the acoustic scale on dev (recipes/librispeech/conf/decode.yaml); with
``decode.insertion_penalties`` they also search a penalty on every word of the graph
(asr_kd/decode/penalty.py). This decodes the same models both ways in one run, with the recipe's
beam, max-active and scale grid, so the difference is the penalty's alone. A student's other
seeds are decoded at its first seed's choice, as stage 7 does, and its per-utterance errors are
averaged over the seeds before the bootstrap.

    python bench/decode_penalty.py --data recipes/librispeech/data --exp recipes/librispeech/exp \
        [--penalties -2 -1 -0.5 0 0.5 1] [--systems tri baseline ensemble distilled] [--seeds 3]

With ``--ctc`` the systems are the CTC path's (CTC stage 7 searches ``decode.insertion_penalties``
on HLG the same way): ``ensemble`` (the ensemble of the decoded teacher set), ``teacher<i>``, and
the students by their stage-6 names (``baseline``, ``frame``, ``sequence``...), decoded with CTC
stage 7's recorded beam, max-active and HLG scale grid:

    python bench/decode_penalty.py --ctc --data recipes/librispeech/data --exp recipes/librispeech/exp \
        --systems baseline frame ensemble [--units phone]

``--silence`` (the hybrid networks) searches a silence penalty instead: taken off the
log-likelihood (log posterior minus log prior) of every senone of the silence phones on every
frame, before the acoustic scale; the hybrid analogue of the CTC blank penalty below.

``--blank`` searches a blank penalty instead (taken off the blank's log-probability on every frame).
The decoding that matches the stage's table must reproduce it (else the bench stops): the scale
alone for a stage that decoded without a penalty, or, for one that searched a blank penalty itself
(``conf/decode_ctc.yaml`` does), the scale and blank penalty, with ``--penalties`` its grid. Without
``--blank``, word penalties are searched at each system's blank penalty as the stage chose it.

Needs stages 3 and 7 of a recipe run (``make demo``; with ``--ctc``, CTC stage 7); without one
it says so and exits 0. Writes nothing under ``--exp``; its numbers go to ``--json`` and the
section of ``--results``.
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

from asr_kd.config import CtcConfig, DecodeConfig, GmmConfig, config_from_dict
from asr_kd.ctc.training import ctc_log_probs, greedy_token_errors, hlg_hypotheses, load_ctc_model
from asr_kd.ctc.units import CtcUnits
from asr_kd.data.ctc_data import cut_text
from asr_kd.decode.gmm_decode import decode_gmm_batch
from asr_kd.decode.hclg import load_hclg
from asr_kd.decode.hlg import load_hlg
from asr_kd.decode.hybrid import decode_posteriors_batch, tid_to_pdf
from asr_kd.decode.penalty import PenalisedGraphs
from asr_kd.decode.priors import load_priors
from asr_kd.decode.tuning import check_penalties, tune_decoding
from asr_kd.gmm.train import GmmSystem
from asr_kd.kd.ensemble import ensemble_log_posteriors
from asr_kd.lang.lang_dir import Lang
from asr_kd.metrics.paired import bootstrap_difference
from asr_kd.metrics.wer import WerResult, compute_wer
from asr_kd.report.tables import format_interval
from asr_kd.stages.common import load_teachers, model_checkpoint, read_senones
from asr_kd.stages.ctc_common import (ctc_student_folder, describe_teacher_set, load_ctc_teachers, prepare_units, teachers_of,
                                      trained_teacher_sets)
from asr_kd.stages.ctc_s7_decode import system_decoding
from asr_kd.stages.decode_part import ctc_table_name
from asr_kd.stages.layout import STUDENT_SYSTEMS, RecipeLayout
from asr_kd.stages.provenance import StageRecord, code_version, environment, environment_text, read_record
from asr_kd.stages.s3_gmm import load_part
from asr_kd.train.frame_classifier import load_frame_classifier
from asr_kd.utils import read_json

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402
from decode_beams import finished_run  # noqa: E402

HEADING = "## Word insertion penalty tuned on dev beside the acoustic scale (bench/decode_penalty.py)"
CTC_HEADING = "## Word insertion penalty on HLG tuned on dev beside the scale: the CTC systems (bench/decode_penalty.py --ctc)"
BLANK_HEADING = "## Blank penalty on HLG tuned on dev beside the scale: the CTC systems (bench/decode_penalty.py --ctc --blank)"
SILENCE_HEADING = "## Silence penalty tuned on dev beside the acoustic scale: the hybrid networks (bench/decode_penalty.py --silence)"
MORE = "test-ood-more"
GMM_NAMES = ("mono", "tri")

Decode = Callable[[float, float], dict[str, str]]


def silence_tids(trans_model, silence_phone_ids: list[int]) -> np.ndarray:
    """Return a bool vector over transition-ids 1..N (index tid - 1): True for a silence phone's."""
    phones = [trans_model.transition_id_to_phone(t) for t in range(1, trans_model.num_transition_ids + 1)]
    return np.isin(phones, silence_phone_ids)


def silence_pdfs(trans_model, is_sil: np.ndarray) -> np.ndarray:
    """Return a 0/1 float32 vector over the pdfs (senones): 1 for a pdf that only the silence
    transition-ids ``is_sil`` (:func:`silence_tids`) reach. SystemExit in one line where the tree
    shares a pdf between a silence and a non-silence phone (a silence penalty would then move
    speech too)."""
    tid2pdf = tid_to_pdf(trans_model)
    sil, speech = set(tid2pdf[is_sil].tolist()), set(tid2pdf[~is_sil].tolist())
    if sil & speech:
        raise SystemExit(f"decode_penalty: {len(sil & speech)} senone(s) are shared by silence and non-silence phones in this tree "
                         f"(e.g. pdf {min(sil & speech)}); a silence penalty would move speech too")
    mask = np.zeros(trans_model.num_pdfs, dtype=np.float32)
    mask[sorted(sil)] = 1.0
    return mask


def part_decoder(layout: RecipeLayout, lang: Lang, name: str, seed: int, part: str, config: DecodeConfig,
                 graphs: dict[str, PenalisedGraphs], silence: dict | None = None) -> tuple[dict[str, str], Decode]:
    """Return ``(refs, decode)`` of system ``name`` (a student: its seed ``seed``) on ``part``:
    ``decode(scale, penalty)`` returns its hypotheses at that acoustic scale and word penalty.
    With ``silence`` (a dict; network systems only) the penalty is a silence penalty, taken off
    the log-likelihood of every silence senone before the scale, on the graph without a word
    penalty, and each decoding leaves the share of frames its best paths spend in the silence
    phones in ``silence[name, seed, part, scale, penalty]``."""
    senones = read_senones(layout)
    if name in GMM_NAMES:
        gmm_cfg = config_from_dict(GmmConfig, read_record(layout.gmm).config["gmm"])
        data = load_part(layout.data_dir, part, lang, gmm_cfg)
        system = GmmSystem.load(layout.gmm_model(name))
        key = f"gmm_{name}"
        if key not in graphs:
            graphs[key] = PenalisedGraphs(load_hclg(layout.gmm_graph(name)), lang.words.ids())
        feats = {u.id: u.feats for u in data.utterances}
        return dict(data.refs), lambda s, p: decode_gmm_batch(graphs[key].at(p), system.am, system.tm, feats,
                                                              dataclasses.replace(config, acoustic_scale=s)).texts(lang.words)
    if name == "ensemble":
        models = load_teachers(layout)
    else:
        models = [load_frame_classifier(model_checkpoint(layout.student_dir(STUDENT_SYSTEMS[name], seed)))]
    posteriors, refs = {}, {}
    for cut, log_probs in ensemble_log_posteriors(models, layout.open_cuts(layout.fbank_cuts(part)), layout.open_cmvn(part), 1.0):
        posteriors[cut.id] = log_probs.numpy()
        refs[cut.id] = " ".join(s.text or "" for s in cut.supervisions).strip()
    trans_model = GmmSystem.load(senones.model).tm
    priors = load_priors(layout.log_priors, trans_model.num_pdfs)
    if "hybrid" not in graphs:
        graphs["hybrid"] = PenalisedGraphs(load_hclg(senones.graph), lang.words.ids())
    if silence is not None:
        tid_is_silence = silence_tids(trans_model, lang.silence_phone_ids)
        mask = silence_pdfs(trans_model, tid_is_silence)

        def decode_silence(s: float, p: float) -> dict[str, str]:
            # scale * (log posterior - (log prior + p on silence)) = scale * (log-likelihood - p on silence)
            batch = decode_posteriors_batch(graphs["hybrid"].at(0.0), trans_model, posteriors, priors + p * mask,
                                            dataclasses.replace(config, acoustic_scale=s))
            tids = np.concatenate([np.asarray(d.alignment, dtype=np.int64) for d in batch.decoded.values()] or [np.zeros(0, np.int64)])
            silence[name, seed, part, s, p] = float(tid_is_silence[tids - 1].mean()) if tids.size else 0.0
            return batch.texts(lang.words)

        return refs, decode_silence
    return refs, lambda s, p: decode_posteriors_batch(graphs["hybrid"].at(p), trans_model, posteriors, priors,
                                                      dataclasses.replace(config, acoustic_scale=s)).texts(lang.words)


def finished_ctc_run(data: Path, exp: Path, units: str, script: str) -> tuple[RecipeLayout, StageRecord] | None:
    """Return the layout of the CTC run in ``data``/``exp`` and its CTC stage 7 record, or None
    (said in one line, so that ``make bench`` on a fresh clone skips ``script``) before that stage."""
    layout = RecipeLayout(data, exp, ctc_units=units)
    record = read_record(layout.ctc_decode)
    if record is None:
        print(f"{script}: no CTC stage 7 ({units} units) under {exp}; run it first "
              "(./run.sh --model-type ctc --stage 4 --stop-stage 7). Skipped.")
        return None
    return layout, record


def ctc_models(layout: RecipeLayout, cfg: CtcConfig, name: str, seed: int) -> list:
    """The model(s) of the CTC system ``name``: ``ensemble`` and ``teacher<i>`` of ``cfg``'s teacher
    set, a trained teacher set's folder name (``teachers_guided1``) for its ensemble and ``<set
    folder>/teacher<i>`` for one of its teachers, or a stage-6 student (its seed ``seed``)."""
    sets = {teachers_of(layout, c).name: c for c in trained_teacher_sets(layout, cfg)}
    sets[teachers_of(layout, cfg).name] = cfg  # the decoded set: its first cfg.num_teachers teachers, as CTC stage 7 fused them
    set_name, _, member = name.partition("/")
    if name == "ensemble" or name.startswith("teacher") and name[7:].isdigit():
        set_name, member = teachers_of(layout, cfg).name, "" if name == "ensemble" else name
    if set_name in sets:
        teachers = load_ctc_teachers(layout, sets[set_name])
        if not member:
            return teachers
        if not (member.startswith("teacher") and member[7:].isdigit() and int(member[7:]) < len(teachers)):
            raise SystemExit(f"{set_name} has no {member!r} (teacher0 ... teacher{len(teachers) - 1})")
        return [teachers[int(member[7:])]]
    folder = layout.ctc_student_dir(ctc_student_folder(name, seed))
    if read_record(folder) is None:
        raise SystemExit(f"no finished CTC student or teacher set {name!r} (seed index {seed}) under {layout.ctc_root}")
    return [load_ctc_model(folder)]


def ctc_row(layout: RecipeLayout, cfg: CtcConfig, name: str, seed: int = 0) -> str | None:
    """The CTC table's row of system ``name`` (see :func:`ctc_models`), its seed ``seed``; None for
    a teacher of another set (the table has none)."""
    if "/" in name:
        return None
    if name.startswith("teachers"):
        if name == teachers_of(layout, cfg).name:
            return ctc_table_name(layout, "ensemble")
        return next((f"ensemble of {c.num_teachers} ({describe_teacher_set(c.shared_init_steps, c.guide_weight)})"
                     for c in trained_teacher_sets(layout, cfg) if teachers_of(layout, c).name == name), None)
    return ctc_table_name(layout, ctc_student_folder(name, seed) if has_seeds(name, True) else name)


def ctc_part_decoder(layout: RecipeLayout, cfg: CtcConfig, units: CtcUnits, name: str, seed: int, part: str, config: DecodeConfig,
                     graphs: dict[str, PenalisedGraphs], greedy: dict | None = None, blank: bool = False) -> tuple[dict[str, str], Decode]:
    """Return ``(refs, decode)`` of the CTC system ``name`` (see :func:`ctc_models`; a student: its
    seed ``seed``) on ``part``, as CTC stage 7 decodes it: ``decode(scale, penalty)`` returns its
    HLG hypotheses at that scale on the log-probabilities and word penalty (with ``blank``: that
    blank penalty, taken off the blank's log-probability on every frame, and no word penalty). With ``greedy``, its greedy
    token errors (no LM, as CTC stage 7 counts them) are also kept there under ``(data_dir, name,
    seed, part)``."""
    models = ctc_models(layout, cfg, name, seed)
    cuts = layout.open_cuts(layout.fbank_cuts(part))
    refs = {c.id: cut_text(c) for c in cuts}
    log_probs = {c.id: lp for c, lp in ctc_log_probs(models, cuts, layout.open_cmvn(part), 1.0, cfg.fusion)}
    if greedy is not None:
        greedy[layout.data_dir, name, seed, part] = greedy_token_errors(log_probs, refs, units)
    if "hlg" not in graphs:
        graphs["hlg"] = PenalisedGraphs(load_hlg(layout.ctc_graph / "HLG.fst"), units.lang.words.ids())
    if blank:
        return refs, lambda scale, penalty: hlg_hypotheses(log_probs, units, graphs["hlg"].at(0.0), config, scale, blank_penalty=penalty)
    return refs, lambda scale, penalty: hlg_hypotheses(log_probs, units, graphs["hlg"].at(penalty), config, scale)


def has_seeds(name: str, ctc: bool) -> bool:
    """Whether ``name`` is a student trained once per seed (CTC: every system but the teachers and
    the teacher sets' ensembles)."""
    if ctc:
        return name != "ensemble" and not name.startswith("teacher")
    return name in STUDENT_SYSTEMS


def seed_errors(decoder: Callable[[str, int, str], tuple[dict[str, str], Decode]], name: str, seeds: int, part: str, scales: list[float],
                ctc: bool = False, by_type: dict | None = None) -> tuple[list[str], list[int], list[list[np.ndarray]]]:
    """Decode system ``name`` on ``part`` with ``decoder(name, seed, part)`` (:func:`part_decoder`
    or :func:`ctc_part_decoder` bound to a run) at each of ``scales``, no penalty: a student once
    per seed (its first ``seeds``), another system once. Return the sorted utterance ids, their
    reference word counts and, per scale, each seed's per-utterance errors. With ``by_type``, the
    substitutions, deletions and insertions of each decoding go there under ``(seed, scale)``."""
    per_scale: list[list[np.ndarray]] = [[] for _ in scales]
    ids: list[str] = []
    refs: dict[str, str] = {}
    for seed in range(seeds) if has_seeds(name, ctc) else range(1):
        refs, decode = decoder(name, seed, part)
        if ids and sorted(refs) != ids:
            raise SystemExit(f"{name} seed {seed} was scored on other utterances of {part} than its seed 0")
        ids = sorted(refs)
        for i, scale in enumerate(scales):
            result = compute_wer(refs, decode(scale, 0.0))
            per_scale[i].append(per_utterance_errors(result, ids))
            if by_type is not None:
                by_type[seed, scale] = (result.substitutions, result.deletions, result.insertions)
    return ids, [len(refs[u].split()) for u in ids], per_scale


def per_utterance_errors(result: WerResult, ids: list[str]) -> np.ndarray:
    errors = {u.utt_id: u.errors for u in result.utterances}
    return np.array([errors[u] for u in ids], dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("recipes/librispeech/data"), help="the recipe's data folder")
    p.add_argument("--exp", type=Path, default=Path("recipes/librispeech/exp"), help="the recipe's experiment folder (stages 3 and 7 done)")
    p.add_argument("--penalties", type=float, nargs="+", default=[-2.0, -1.0, -0.5, 0.0, 0.5, 1.0],
                   help="the word insertion penalties searched (graph cost per word; negative: a bonus)")
    p.add_argument("--systems", nargs="+", default=None,
                   help="systems (mono, tri, baseline, ensemble, distilled, compressed; default tri baseline ensemble distilled, with --silence "
                        "the networks alone); "
                        "with --ctc: ensemble, teacher<i> and the CTC students (default baseline frame ensemble)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of each student (stage 6's; default 3)")
    p.add_argument("--ctc", action="store_true", help="the CTC path's systems on HLG (CTC stage 7 done), not the hybrid ones")
    p.add_argument("--units", default="phone", help="with --ctc: the CTC units of the run (phone or bpe; default phone)")
    p.add_argument("--blank", action="store_true",
                   help="with --ctc: the penalties are blank penalties (subtracted from the blank's log-probability on every frame before the "
                        "HLG search, as icefall's and sherpa's blank penalty), not word insertion penalties")
    p.add_argument("--silence", action="store_true",
                   help="the hybrid networks: the penalties are silence penalties (taken off the log-likelihood of every senone of the "
                        "silence phones on every frame, before the acoustic scale; positive: silence costlier), not word insertion penalties")
    p.add_argument("--more", type=Path, default=None, help="also decode the test-ood-more part that bench/ood_more.py --work made in this folder")
    p.add_argument("--pair", nargs=2, action="append", default=None, metavar=("B", "A"),
                   help="also report B minus A on each test part, both ways (repeatable; both among --systems)")
    p.add_argument("--json", type=Path, default=None, help="write every number here too")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    args = p.parse_args(argv)
    if args.systems is None:
        args.systems = (["baseline", "frame", "ensemble"] if args.ctc else ["baseline", "ensemble", "distilled"] if args.silence
                        else ["tri", "baseline", "ensemble", "distilled"])
    penalties = check_penalties(args.penalties)
    if 0.0 not in penalties:
        p.error("--penalties must include 0 (the comparison is against no penalty)")
    if args.blank and not args.ctc:
        p.error("--blank needs --ctc (the hybrid systems' search has no blank)")
    if args.silence and args.ctc:
        p.error("--silence is for the hybrid networks; the CTC systems' analogue is --blank")
    if args.silence and set(args.systems) & set(GMM_NAMES):
        p.error(f"--silence decodes the networks (their log posteriors minus log priors); leave out {', '.join(sorted(set(args.systems) & set(GMM_NAMES)))}")
    args.pair = [tuple(x) for x in args.pair or []]
    for b, a in args.pair:
        if a not in args.systems or b not in args.systems or a == b:
            p.error(f"--pair {b} {a}: two different systems of --systems")
    if args.more and not (args.more / "data" / "made.json").is_file():
        p.error(f"--more {args.more}: no part made by bench/ood_more.py there (run it with --work {args.more} first)")
    graphs: dict[str, PenalisedGraphs] = {}
    shares: dict = {}  # --silence: the share of frames in the silence phones of each decoding (part_decoder)
    if args.ctc:
        found_ctc = finished_ctc_run(args.data, args.exp, args.units, "decode_penalty")
        if found_ctc is None:
            return 0
        layout, record = found_ctc
        cfg = config_from_dict(CtcConfig, record.config["ctc"])
        units = prepare_units(layout, cfg)
        config = dataclasses.replace(config_from_dict(DecodeConfig, record.config["decode"]), insertion_penalties=(), ctc_blank_penalties=(),
                                     ctc_blank_penalty=0.0)
        scales, default = config.ctc_acoustic_scales or (config.ctc_acoustic_scale,), config.ctc_acoustic_scale
        # The part CTC stage 7 tuned on (its record), the others its test parts.
        layout = dataclasses.replace(layout, dev_part=record.config.get("tuned_on") or layout.dev_part)
        test_parts = [q for q in record.config["parts"] if q != layout.dev_part]

        scores = read_json(layout.ctc_decode / "scores.json")
        searched = config_from_dict(DecodeConfig, record.config["decode"])
        checked_way, held_blank = table_way(searched, scores, args.blank, penalties)

        def decoder(name: str, seed: int, part: str) -> tuple[dict[str, str], Decode]:
            at = dataclasses.replace(config, ctc_blank_penalty=blank_of(name)) if held_blank else config
            return ctc_part_decoder(where.get(part, layout), cfg, units, name, seed, part, at, graphs, blank=args.blank)

        def recorded(name: str, seed: int, part: str, key: str) -> float | None:
            """What CTC stage 7 recorded for the system's seed on the part (None where it did not score it)."""
            entry = scores.get(ctc_row(layout, cfg, name, seed) or "", {}).get(part)
            return None if entry is None else float(entry.get(key, 0.0))  # a penalty is recorded where not 0

        def blank_of(name: str) -> float:
            """The blank penalty the stage chose for the system on dev (0 where it searched none), as
            decode-part reads it; for a system it did not score, the one it applied to every system."""
            chosen = system_decoding(layout, ctc_row(layout, cfg, name, 0) or "")
            return searched.ctc_blank_penalty if chosen is None else chosen.blank_penalty
    else:
        run = finished_run(args.data, args.exp, "decode_penalty")
        if run is None:
            return 0
        layout, lang = run
        stage7 = read_record(layout.decode).config
        # The parts stage 7 scored: its test part and, where the corpus has one, the out-of-domain part.
        test_parts = stage7.get("test_parts") or [layout.test_part]
        config = dataclasses.replace(config_from_dict(DecodeConfig, stage7["decode"]), num_jobs=2, insertion_penalties=())
        scales, default = config.acoustic_scales or (config.acoustic_scale,), config.acoustic_scale

        def decoder(name: str, seed: int, part: str) -> tuple[dict[str, str], Decode]:
            return part_decoder(where.get(part, layout), lang, name, seed, part, config, graphs, silence=shares if args.silence else None)

        def recorded(name: str, seed: int, part: str, key: str) -> float | None:
            return None

        def blank_of(name: str) -> float:
            return 0.0
        checked_way, held_blank = "scale", False
    layout = dataclasses.replace(layout, test_part=test_parts[0], ood_part=test_parts[1] if len(test_parts) > 1 else "")
    parts = [layout.dev_part, *layout.test_parts]
    where = {}  # the parts whose features are not the run's own
    if args.more:
        where[MORE] = dataclasses.replace(layout, data_dir=args.more / "data")
        parts.append(MORE)
    out: dict = {"penalties": list(penalties), "scales": list(scales), "beam": config.beam, "max_active": config.max_active,
                 "ctc": args.ctc, "systems": {}}
    start = time.time()
    for name in args.systems:
        seeds = range(args.seeds) if has_seeds(name, args.ctc) else range(1)
        entry: dict = {"choices": {}, "parts": {}}
        for way, grid in (("scale", (0.0,)), ("scale+penalty", penalties)):
            refs, decode = decoder(name, 0, layout.dev_part)
            sweep, scale, penalty, results = tune_decoding(layout.dev_part, scales, grid, lambda s, q: compute_wer(refs, decode(s, q)),
                                                           default)
            dev = results[scale, penalty]
            stage = (recorded(name, 0, layout.dev_part, "acoustic_scale"), recorded(name, 0, layout.dev_part, "blank_penalty"))
            blank = penalty if args.blank and way == "scale+penalty" else blank_of(name)
            if way == checked_way and stage[0] is not None and stage != (scale, blank):
                raise SystemExit(f"decode_penalty: {name} chose scale {scale:g} (penalty {penalty:g}) on {layout.dev_part} here, CTC stage 7 "
                                 f"chose {stage[0]:g} (blank penalty {stage[1]:g}); the bench does not decode as the stage did")
            entry["choices"][way] = {"scale": scale, "penalty": penalty, **({"blank_penalty": blank_of(name)} if held_blank else {}),
                                     "dev_errors": dev.errors, "dev_ref_words": dev.ref_words,
                                     "dev_wer": dev.wer, "sweep": sweep.to_dict() if sweep else None}
            print(f"{name} ({way}): dev {dev.summary()} at scale {scale:g}, penalty {penalty:g}", flush=True)
        for part in parts[1:]:
            counts: dict[str, list[np.ndarray]] = {"scale": [], "scale+penalty": []}
            summary: dict[str, dict] = {}
            ids: list[str] = []
            for seed in seeds:
                refs, decode = decoder(name, seed, part)
                ids = sorted(refs)
                for way, choice in entry["choices"].items():
                    result = compute_wer(refs, decode(choice["scale"], choice["penalty"]))
                    table_wer = recorded(name, seed, part, "hlg_wer")
                    if way == checked_way and table_wer is not None and abs(result.wer - table_wer) > 1e-9:
                        raise SystemExit(f"decode_penalty: {name} seed {seed} on {part} decodes to {100 * result.wer:.2f}% here, the CTC table "
                                         f"says {100 * table_wer:.2f}%; the bench does not decode as CTC stage 7 did")
                    counts[way].append(per_utterance_errors(result, ids))
                    s = summary.setdefault(way, {"wer": [], "substitutions": 0, "deletions": 0, "insertions": 0})
                    s["wer"].append(result.wer)
                    if seed == 0:
                        s.update(substitutions=result.substitutions, deletions=result.deletions, insertions=result.insertions,
                                 ref_words=result.ref_words)
                        if args.silence:
                            s["silence_frames"] = shares[name, 0, part, choice["scale"], choice["penalty"]]
            words = np.array([len(refs[u].split()) for u in ids], dtype=np.float64)
            iv = bootstrap_difference(np.mean(counts["scale"], axis=0), np.mean(counts["scale+penalty"], axis=0), words)
            entry["parts"][part] = {**summary, "difference": iv.to_dict(), "words": words.tolist(),
                                    "errors": {way: np.mean(c, axis=0).tolist() for way, c in counts.items()}}
            print(f"{name} {part}: scale {100 * np.mean(summary['scale']['wer']):.2f}%, scale+penalty "
                  f"{100 * np.mean(summary['scale+penalty']['wer']):.2f}%, difference {100 * iv.value:+.2f} [{100 * iv.low:+.2f}, {100 * iv.high:+.2f}]",
                  flush=True)
        entry["seeds"] = len(seeds)
        out["systems"][name] = entry
    out["pairs"] = {}
    for b, a in args.pair:
        for part in parts[1:]:
            ea, eb = out["systems"][a]["parts"][part], out["systems"][b]["parts"][part]
            for way in ("scale", "scale+penalty"):
                iv = bootstrap_difference(np.asarray(ea["errors"][way]), np.asarray(eb["errors"][way]), np.asarray(ea["words"]))
                out["pairs"][f"{b} - {a} | {part} | {way}"] = iv.to_dict()
    out["seconds"] = round(time.time() - start, 1)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    write_section(args.results, heading(args), format_section(out, args, layout, parts))
    return 0


def table_way(searched: DecodeConfig, scores: dict, blank: bool, penalties: tuple[float, ...]) -> tuple[str, bool]:
    """How this bench reproduces CTC stage 7's table, from the stage's decode config (``searched``)
    and ``scores.json``: the way whose choices must decode to the table (``"scale"``, or
    ``"scale+penalty"`` where ``--blank`` searches the very blank grid the stage searched), and
    whether each system's blank penalty is held at the stage's choice (word penalties searched
    on a stage that searched none, so the scale alone is again the stage's decoding). SystemExit
    in one line for a stage decoded with a penalty neither way reproduces."""
    checked_way = "scale+penalty" if blank and searched.ctc_blank_penalties and check_penalties(searched.ctc_blank_penalties) == penalties \
        and not any(searched.insertion_penalties) else "scale"
    held_blank = not blank and not any(searched.insertion_penalties)
    penalised = next((row for row, by_part in scores.items() for e in by_part.values()
                      if e.get("insertion_penalty") or (e.get("blank_penalty") and not held_blank)), None)
    if penalised is not None and checked_way == "scale":
        grid = check_penalties(searched.ctc_blank_penalties)
        raise SystemExit(f"decode_penalty: CTC stage 7 decoded {penalised} with a penalty; this bench compares penalties against none "
                         "from the stage's own choices: rerun CTC stage 7 with decode.insertion_penalties=[], "
                         "decode.ctc_blank_penalties=[] and decode.ctc_blank_penalty=0"
                         + (f", or pass --blank --penalties {' '.join(f'{q:g}' for q in grid)} (the grid it searched)" if grid else ""))
    return checked_way, held_blank


def heading(args: argparse.Namespace) -> str:
    return BLANK_HEADING if args.blank else CTC_HEADING if args.ctc else SILENCE_HEADING if args.silence else HEADING


def held_blank_sentence(out: dict) -> str:
    """Where CTC stage 7 chose blank penalties and word penalties are searched here: the sentence
    saying each system's was held at the stage's choice (and which)."""
    held = {name: e["choices"]["scale"]["blank_penalty"] for name, e in out["systems"].items() if e["choices"]["scale"].get("blank_penalty")}
    if not held:
        return ""
    return (" Both ways, each system's blank penalty is held at the one CTC stage 7 chose for it on dev ("
            + ", ".join(f"{name} {b:g}" for name, b in held.items()) + ").")


def format_section(out: dict, args: argparse.Namespace, layout: RecipeLayout, parts: list[str]) -> str:
    test_parts = parts[1:]
    ctc = f" --ctc --units {args.units}" + (" --blank" if args.blank else "") if args.ctc else " --silence" if args.silence else ""
    cmd = (f"python bench/decode_penalty.py{ctc} --data {args.data} --exp {args.exp} --penalties {' '.join(f'{p:g}' for p in out['penalties'])} "
           f"--systems {' '.join(args.systems)} --seeds {args.seeds}" + (f" --more {args.more}" if args.more else "")
           + "".join(f" --pair {b} {a}" for b, a in args.pair))
    kind = ("blank penalty (subtracted from the blank's log-probability on every frame before the search; positive: tokens cheaper)"
            if args.blank else "silence penalty (taken off the log-likelihood of every silence senone on every frame before the scale; "
            "positive: silence costlier)" if args.silence else "word insertion penalty")
    what = ("CTC stage 7's decoding over HLG" + f" ({args.units} units; the scales on the log-probabilities" if args.ctc
            else "The recipe's decoding (the acoustic scales")
    lines = [heading(args), "", f"`{cmd}`" + (f" (every number: `{args.json}`)" if args.json else "") + ".", "",
             f"{what} {{{', '.join(f'{s:g}' for s in out['scales'])}}} searched on {layout.dev_part}, beam {out['beam']:g}, max-active "
             f"{out['max_active']}); \"scale\": that search alone, as the recipe "
             f"decodes; \"+ penalty\": the same search at each {kind} of {{{', '.join(f'{p:g}' for p in out['penalties'])}}} "
             "that the penalty search reaches (asr_kd/decode/tuning.py), the pair with the fewest dev errors. The test parts are decoded "
             "once at each choice; never used to choose." + held_blank_sentence(out), ""]
    head = ["system", "seeds", f"{layout.dev_part}: scale", "+ penalty"]
    for part in test_parts:
        head += [f"{part}: scale", "+ penalty", "difference, points [95% CI]"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in out["systems"].items():
        a, b = e["choices"]["scale"], e["choices"]["scale+penalty"]
        row = [name, str(e["seeds"]), f"{100 * a['dev_wer']:.2f}% ({a['scale']:g})",
               f"{100 * b['dev_wer']:.2f}% ({b['scale']:g}, {b['penalty']:g})"]
        for part in test_parts:
            p = e["parts"][part]
            iv = p["difference"]
            verdict = "significant" if iv["excludes_zero"] else "within noise"

            def cell(s: dict) -> str:
                sil = f", silence {100 * s['silence_frames']:.1f}% of frames" if "silence_frames" in s else ""
                return f"{100 * np.mean(s['wer']):.2f}% (S {s['substitutions']}, D {s['deletions']}, I {s['insertions']}{sil})"

            row += [cell(p["scale"]), cell(p["scale+penalty"]), f"{100 * iv['value']:+.2f} [{100 * iv['low']:+.2f}, {100 * iv['high']:+.2f}], {verdict}"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Dev cells: WER at the chosen acoustic scale (and penalty). Test cells: the mean WER over the seeds, and the first "
              "seed's substitutions, deletions and insertions" + (" and the share of its frames the best paths spend in the silence phones"
                                                       if args.silence else "") + ". Difference: penalty minus scale alone, paired bootstrap over the "
              "utterances (2000 resamples; Bisani & Ney 2004), each student's errors per utterance averaged over its seeds first; "
              f"it does not cover the seeds' training variance. Decoding took {out['seconds'] / 60:.0f} minutes "
              f"({'one process' if out.get('ctc') else '2 processes'})."
              + (" Without a penalty, every part CTC stage 7 scored decodes here to its table's WER for every seed, and each system's dev "
                 "choice of scale is the stage's (the bench stops otherwise)." if args.ctc else "")
              + (f" {MORE}: the part of `bench/ood_more.py --work {args.more}` (more of the unseen voices)." if args.more else ""), ""]
    if out["pairs"]:
        lines += ["B minus A, WER points with a 95% paired bootstrap interval over utterances (each student's errors averaged over its "
                  "seeds first), each system at its own choices:", "",
                  "| pair | part | scale alone | | + penalty | |", "|---|---|---|---|---|---|"]
        for b, a in args.pair:
            for part in test_parts:
                cells = []
                for way in ("scale", "scale+penalty"):
                    iv = out["pairs"][f"{b} - {a} | {part} | {way}"]
                    cells += [format_interval(iv), "significant" if iv["excludes_zero"] else "within noise"]
                lines.append(f"| {b} - {a} | {part} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [environment_text(environment(), code_version()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
