"""Stage 7: hybrid decoding and scoring of the baseline, the ensemble and the distilled student.

For each system, the log-posteriors of every cut of a part (the ensemble: the teachers' fused
posteriors at T = 1) are

- compared frame by frame with the stage-3 senone alignments (frame accuracy), and
- turned into scaled likelihoods (minus the log senone priors, times the acoustic scale) and
  decoded with HCLG (:func:`asr_kd.decode.hybrid.decode_posteriors_batch`, ``num_jobs``
  processes), then scored against the cuts' transcripts (jiwer WER with S/D/I).

Writes ``<exp>/decode/<system>_<part>/`` (``hyp.txt``, ``wer_details`` + ``.json``,
``scores.json``), ``<exp>/decode/table1.json`` and the Table 1 analogue in RESULTS.md, rendered from
``table1.json`` (also when the stage is skipped because its ``provenance.json`` matches).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from lhotse import CutSet

from asr_kd.config import DecodeConfig
from asr_kd.data.alignments import has_alignment, load_alignment
from asr_kd.decode.hclg import load_hclg
from asr_kd.decode.hybrid import decode_posteriors_batch
from asr_kd.decode.penalty import PenalisedGraphs
from asr_kd.decode.priors import load_priors
from asr_kd.decode.tuning import ScaleSweep, describe_decoding, tune_decoding
from asr_kd.errors import ConfigError, DataError
from asr_kd.kd.ensemble import ensemble_log_posteriors
from asr_kd.lang.symbols import SymbolTable
from asr_kd.metrics.frame_accuracy import corpus_frame_accuracy
from asr_kd.metrics.paired import bootstrap_difference, bootstrap_gain_share
from asr_kd.metrics.wer import WerResult, compute_wer, write_transcripts, write_wer_report
from asr_kd.report.results_md import write_section
from asr_kd.report.tables import SystemScore, format_comparisons, format_table1
from asr_kd.gmm.train import GmmSystem  # the transition model of the senones
from asr_kd.train.frame_classifier import load_frame_classifier
from asr_kd.stages.common import alignment_inputs, describe_alignments, environment_lines, load_teachers, model_checkpoint, read_senones, student_record, teachers_record
from asr_kd.stages.layout import STUDENT_SYSTEMS, RecipeLayout
from asr_kd.stages.provenance import StageGuard, require_record
from asr_kd.utils import read_json, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PartScore:
    """A system's scores on one part: frame accuracy and, when decoded, the WER with S/D/I at the
    acoustic scale used (on the dev part with tuning: the best of the sweep, which ``sweep``
    records)."""

    system: str
    part: str
    frame_accuracy: float
    frames: int
    wer: float | None = None
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_words: int = 0
    failed: int = 0
    decode_seconds: float = 0.0
    audio_seconds: float = 0.0
    utterances: int = 0  # decoded (every cut of the part with features, aligned or not)
    aligned_utterances: int = 0  # with a stage-3 alignment: the frame accuracy's utterances
    acoustic_scale: float | None = None
    sweep: dict | None = None  # ScaleSweep.to_dict() of the dev part's tuning
    insertion_penalty: float = 0.0  # the word insertion penalty decoded with (decode.insertion_penalties)


def per_utterance_path(layout: RecipeLayout | None, system: str, part: str, root: Path | None = None) -> Path:
    """``{utt_id: [word errors, reference words, correct frames, aligned frames]}`` of one system
    on one part (under ``root``, default ``<exp>/decode``; ``layout`` may be None when ``root`` is
    given): what the paired bootstrap resamples."""
    if root is None:
        assert layout is not None, "per_utterance_path needs a layout or a root"
        root = layout.decode
    return root / f"{system}_{part}" / "per_utt.json"


# A part's log-posteriors are held in memory up to this size (dev-clean of mini: about 100 MB);
# beyond it they are computed again for each decoding pass, one chunk of this size at a time
# (LibriSpeech's dev-clean at 4,200 senones would need about 32 GB held).
MAX_POSTERIOR_MB = 4096.0


def _posterior_chunks(
    models: Sequence[torch.nn.Module], cuts: CutSet, cmvn, fusion: str, max_duration: float, max_bytes: float,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{cut id: log-posteriors}`` of the cuts in order, in chunks of at most about
    ``max_bytes`` (at least one cut each)."""
    chunk: dict[str, np.ndarray] = {}
    size = 0
    for cut, log_probs in ensemble_log_posteriors(models, cuts, cmvn, 1.0, fusion, max_duration):
        x = log_probs.numpy()
        if chunk and size + x.nbytes > max_bytes:
            yield chunk
            chunk, size = {}, 0
        chunk[cut.id] = x
        size += x.nbytes
    if chunk:
        yield chunk


def score_system(
    name: str, models: Sequence[torch.nn.Module], layout: RecipeLayout, part: str, scales: Sequence[float],
    decode_config: DecodeConfig, fusion: str = "arithmetic", max_duration: float = 20.0, max_cuts: int | None = None,
    root: Path | None = None, max_posterior_mb: float = MAX_POSTERIOR_MB, penalties: Sequence[float] = (0.0,),
) -> PartScore:
    """Return the :class:`PartScore` of the (fused, if several) ``models`` on ``part`` (its
    first ``max_cuts`` cuts, if given): frame accuracy against the senone alignments and, when
    ``scales`` is not empty, HCLG decoding and WER: at the one scale given, or at each of several
    (a tuning sweep, normally on dev) keeping the one with the fewest errors; likewise the word
    insertion ``penalties`` (one, or a grid searched with the scales). The hypotheses, the
    per-utterance WER details and counts go to ``<exp>/decode/<name>_<part>/`` (or ``root/...``).

    The part's log-posteriors are held for the decoding passes while they fit ``max_posterior_mb``;
    a larger part is decoded in chunks of that size, its posteriors computed again for each pass
    (the network is cheap beside the search), with the same results."""
    senones = read_senones(layout)
    # Every cut of the part is decoded (decoding needs no alignment), so that every system of a
    # table, the GMM's too, is scored on the same utterances; frame accuracy is over the cuts that
    # stage 3 could align, and the table says how many.
    cuts = layout.open_cuts(layout.fbank_cuts(part))
    if max_cuts is not None:
        cuts = CutSet.from_cuts(itertools.islice(cuts, max_cuts))
    aligned = {c.id: c for c in layout.open_cuts(layout.ali_cuts(part)) if has_alignment(c)}
    cmvn = layout.open_cmvn(part)
    out_dir = (root or layout.decode) / f"{name}_{part}"
    max_bytes = max_posterior_mb * 2**20
    # Every cut's best senone per frame (for frame accuracy); the whole posteriors while they fit.
    predictions: dict[str, np.ndarray] = {}
    held: dict[str, np.ndarray] | None = {}
    held_bytes = 0
    references: dict[str, np.ndarray] = {}
    texts: dict[str, str] = {}
    audio = 0.0
    for cut, log_probs in ensemble_log_posteriors(models, cuts, cmvn, 1.0, fusion, max_duration):
        x = log_probs.numpy()
        predictions[cut.id] = x.argmax(axis=-1)
        if held is not None:
            held_bytes += x.nbytes
            if held_bytes > max_bytes:
                held = None  # too large to hold: each decoding pass streams it in chunks
            else:
                held[cut.id] = x
        if cut.id in aligned:
            references[cut.id] = load_alignment(aligned[cut.id])
        texts[cut.id] = " ".join(s.text or "" for s in cut.supervisions).strip()
        audio += cut.duration
    if not predictions:
        raise DataError(f"{layout.fbank_cuts(part)} holds no cut; rerun stage 1 for {part}")
    if held is None:
        log.info("%s on %s: posteriors beyond %g MB; decoding in chunks, computing them again for each pass", name, part, max_posterior_mb)
    acc = corpus_frame_accuracy(predictions, references)
    score = PartScore(name, part, acc.accuracy, acc.counted, audio_seconds=round(audio, 2), utterances=len(predictions),
                      aligned_utterances=len(references))
    per_utt: dict[str, list[int]] = {u: [0, 0, *acc.per_utterance.get(u, (0, 0))] for u in predictions}
    if scales:
        trans_model = GmmSystem.load(senones.model).tm
        priors = load_priors(layout.log_priors, trans_model.num_pdfs)
        words = SymbolTable.from_file(senones.graph / "words.txt")
        graphs = PenalisedGraphs(load_hclg(senones.graph, decode_config.graph_scales), words.ids())
        decoded: dict[tuple[float, float], tuple[dict[str, str], int]] = {}
        start = time.time()

        def decode_at(scale: float, penalty: float) -> WerResult:
            config = dataclasses.replace(decode_config, acoustic_scale=scale)
            chunks = [held] if held is not None else _posterior_chunks(models, cuts, cmvn, fusion, max_duration, max_bytes)
            hyps: dict[str, str] = {}
            failed = 0
            for chunk in chunks:
                batch = decode_posteriors_batch(graphs.at(penalty), trans_model, chunk, priors, config)
                hyps.update(batch.texts(words))
                failed += len(batch.failed)
            decoded[scale, penalty] = (hyps, failed)
            return compute_wer(texts, hyps)

        sweep, scale, penalty, results = tune_decoding(part, scales, penalties, decode_at, decode_config.acoustic_scale)
        wer = results[scale, penalty]
        seconds = time.time() - start
        hyps, failed = decoded[scale, penalty]
        write_transcripts(out_dir / "hyp.txt", hyps)
        write_transcripts(out_dir / "ref.txt", texts)
        write_wer_report(wer, out_dir / "wer_details")
        for u in wer.utterances:
            per_utt[u.utt_id][:2] = [u.errors, len(u.ref)]
        score = dataclasses.replace(score, wer=wer.wer, substitutions=wer.substitutions, deletions=wer.deletions,
                                    insertions=wer.insertions, ref_words=wer.ref_words, failed=failed,
                                    decode_seconds=round(seconds, 2), acoustic_scale=scale, sweep=sweep.to_dict() if sweep else None,
                                    insertion_penalty=penalty)
        log.info("%s on %s: frame accuracy %.4f, %s at acoustic scale %g%s (%.0f s decoding)", name, part, score.frame_accuracy, wer.summary(),
                 scale, f", word insertion penalty {penalty:g}" if penalty else "", seconds)
    else:
        log.info("%s on %s: frame accuracy %.4f", name, part, score.frame_accuracy)
    write_json_atomic(per_utterance_path(layout, name, part, root), per_utt)
    write_text_atomic(out_dir / "scores.json", json.dumps(dataclasses.asdict(score), indent=1) + "\n")
    return score


def student_system_name(kind: str, seed_index: int = 0) -> str:
    """Return the Table 1 name of a stage-6 student: ``baseline`` / ``distilled`` / ``compressed``
    for the first seed, ``baseline_seed<k>`` / ... for the others."""
    base = next(name for name, k in STUDENT_SYSTEMS.items() if k == kind)
    return base if seed_index == 0 else f"{base}_seed{seed_index}"


def compressed_label(layout: RecipeLayout, n: int) -> str:
    """Return the Table 1 label of the compressed student: its multiply-adds per frame as a share
    of one teacher's (both networks as trained; the label is empty of a share when either is
    missing)."""
    from asr_kd.deploy.report import macs_per_frame

    try:
        teacher = load_frame_classifier(model_checkpoint(layout.teacher_dir(0)))
        student = load_frame_classifier(model_checkpoint(layout.student_dir("compressed")))
    except DataError:
        return "Compressed distilled model"
    share = macs_per_frame(student, student.cfg.feature_dim) / macs_per_frame(teacher, teacher.cfg.feature_dim)
    return f"Compressed distilled model ({100 * share:.1f}% of a teacher's multiply-adds)"


def describe_training(layout: RecipeLayout, kinds: Sequence[str]) -> str:
    """Return one sentence on how long each network of Table 1 trained, from the stage records:
    the teachers' epochs and each student kind's (its first seed's record)."""
    def epochs(record) -> str:
        return str(record.config["train"]["num_epochs"])

    parts = [f"teachers {epochs(require_record(layout.teachers, 'stage 4 (asr-kd train-teachers)'))}"]
    by_kind = {k: epochs(require_record(layout.student_dir(k, 0), f"stage 6 ({k} student)")) for k in kinds}
    names = {"hard": "baseline", "distilled": "distilled", "compressed": "compressed"}
    parts += [f"{names[k]} {n}" for k, n in by_kind.items()]
    return "Training epochs (num_epochs of each network's TrainConfig, from the stage 4 and stage 6 records): " + ", ".join(parts) + "."


def evaluate_systems(
    layout: RecipeLayout, decode_config: DecodeConfig, fusion: str = "arithmetic", num_teachers: int | None = None,
    decode_parts: Sequence[str] | None = None, score_teachers: bool = True, max_duration: float = 20.0,
    results_md: Path | None = None, command: str = "", corpus: str = "", decode_teachers: bool = False, num_seeds: int = 1,
    compressed: bool = False, max_posterior_mb: float = MAX_POSTERIOR_MB,
) -> dict[str, dict[str, PartScore]]:
    """Score the hard baseline, the N-teacher ensemble (fused posteriors) and the distilled
    student (each student over ``num_seeds`` seeds of stage 6; with ``compressed`` also stage 6's
    compressed distilled student, a smaller network, as a row of its own) on the dev and test parts: frame
    accuracy everywhere, WER on ``decode_parts`` (default: the test parts). With
    ``decode_config.acoustic_scales``, each system's acoustic scale is tuned on the dev part and
    the test parts are decoded with it. With ``score_teachers`` each teacher's frame accuracy is
    scored too, and with ``decode_teachers`` each teacher is also decoded. Paired bootstrap
    intervals of the differences go to ``<exp>/decode/comparisons.json``. Writes
    ``<exp>/decode/table1.json`` and the Table 1 section of ``results_md``; returns ``{system:
    {part: PartScore}}``. Skipped (the table re-rendered from the JSON) when the stage's record
    matches its settings and the records of stages 3, 4 and 6. ``max_posterior_mb`` bounds the
    posteriors held per part (:func:`score_system`); it changes memory, never results."""
    if not max_posterior_mb > 0:  # refused before any work: 0 or less is no size to hold posteriors up to
        raise ConfigError(f"--max-posterior-mb must be > 0, got {max_posterior_mb}")
    decode_parts = layout.test_parts if decode_parts is None else list(decode_parts)
    unknown = [p for p in decode_parts if p not in (layout.dev_part, *layout.test_parts)]
    if unknown:
        raise ConfigError(f"--decode-parts {' '.join(unknown)}: stage 7 decodes the dev part ({layout.dev_part}) and the test parts "
                          f"({', '.join(layout.test_parts)}) only; decode another part with asr-kd decode-part")
    if num_seeds < 1:
        raise ConfigError(f"--num-seeds must be >= 1, got {num_seeds}")
    teachers_rec = teachers_record(layout)
    n = int(teachers_rec.config["num_teachers"]) if num_teachers is None else num_teachers
    kinds = ("hard", "distilled", "compressed") if compressed else ("hard", "distilled")
    students = [(student_system_name(k, i), k, i) for k in kinds for i in range(num_seeds)]
    inputs = {**alignment_inputs(layout), "teachers": teachers_rec.fingerprint,
              **{f"student_{name}": student_record(layout, layout.student_dir(k, i), f"stage 6 ({k} student, seed {i})").fingerprint
                 for name, k, i in students}}
    config = {"decode": decode_config, "fusion": fusion, "num_teachers": n, "decode_parts": decode_parts, "score_teachers": score_teachers,
              "decode_teachers": decode_teachers, "dev_part": layout.dev_part, "test_parts": layout.test_parts, "num_seeds": num_seeds,
              "compressed": compressed}
    guard = StageGuard("stage 7 (decoding, Table 1)", layout.decode, config, inputs, command)
    table = layout.decode / "table1.json"
    comparisons_path = layout.decode / "comparisons.json"
    groups = {"baseline": [student_system_name("hard", i) for i in range(num_seeds)], "ensemble": ["ensemble"],
              **{k: [student_system_name(k, i) for i in range(num_seeds)] for k in kinds if k != "hard"}}
    if guard.needs_work():
        teachers = load_teachers(layout, n)
        systems: list[tuple[str, list[torch.nn.Module]]] = [("ensemble", list(teachers))]
        systems += [(name, [load_frame_classifier(model_checkpoint(layout.student_dir(k, i)))]) for name, k, i in students]
        if score_teachers:
            systems += [(f"teacher{i}", [t]) for i, t in enumerate(teachers)]
        tune = bool(decode_config.acoustic_scales or decode_config.insertion_penalties)
        # The other seeds of a student decode with the scale tuned for its first seed: one dev
        # search per kind of model, not per seed (each search is several decodings of dev).
        first_seed = {name: student_system_name(k, 0) for name, k, i in students if i > 0}
        chosen: dict[str, tuple[float, float]] = {}
        computed: dict[str, dict[str, PartScore]] = {}
        for name, models in systems:
            decoded = decode_teachers or not name.startswith("teacher")
            computed[name] = {}
            for part in (layout.dev_part, *layout.test_parts):
                tuning_here = tune and part == layout.dev_part and name not in first_seed
                penalties: tuple[float, ...] = (0.0,)
                if not decoded or (part not in decode_parts and not tuning_here):
                    scales: tuple[float, ...] = ()
                elif tuning_here:
                    scales = decode_config.acoustic_scales or (decode_config.acoustic_scale,)
                    penalties = decode_config.insertion_penalties or (0.0,)
                else:
                    scale, penalty = chosen.get(first_seed.get(name, name), (decode_config.acoustic_scale, 0.0))
                    scales, penalties = (scale,), (penalty,)
                score = score_system(name, models, layout, part, scales, decode_config, fusion, max_duration,
                                     max_posterior_mb=max_posterior_mb, penalties=penalties)
                if tuning_here and score.acoustic_scale is not None:
                    chosen[name] = (score.acoustic_scale, score.insertion_penalty)
                computed[name][part] = score
        write_json_atomic(table, {k: {p: dataclasses.asdict(s) for p, s in v.items()} for k, v in computed.items()})
        write_json_atomic(comparisons_path, compare_groups(layout, groups, computed))
        guard.finish([table, comparisons_path])
    stored = read_json(table)
    assert isinstance(stored, dict)
    scores = {k: {p: PartScore(**s) for p, s in v.items()} for k, v in stored.items()}
    if results_md is not None:
        comparisons = read_json(comparisons_path)
        assert isinstance(comparisons, dict)
        rows = {g: _group_row(g, [scores[m] for m in members], layout) for g, members in groups.items()}
        extra = []
        if compressed:
            extra.append(dataclasses.replace(rows["compressed"], name=compressed_label(layout, n)))
        if score_teachers:
            accs = [scores[f"teacher{i}"][layout.test_part].frame_accuracy for i in range(n)]
            dev_accs = [scores[f"teacher{i}"][layout.dev_part].frame_accuracy for i in range(n)]
            extra.append(SystemScore(f"Single teacher (mean of {n}, min {100 * min(accs):.1f}%, max {100 * max(accs):.1f}%)",
                                     float(np.mean(accs)), dev_frame_accuracy=float(np.mean(dev_accs))))
            if decode_teachers:
                extra += [_group_row(f"teacher{i}", [scores[f"teacher{i}"]], layout) for i in range(n)]
        text = format_table1(rows["baseline"], rows["ensemble"], rows["distilled"], n, extra, corpus=corpus, command=command,
                             ood_part=layout.ood_part, share_interval=comparisons["parts"][layout.test_part].get("gain_share"))
        text += format_comparisons(comparisons, layout.test_part, layout.ood_part, num_seeds)
        test = scores["baseline"][layout.test_part]
        text += (f"\nEvery system is decoded on all {test.utterances} {layout.test_part} utterances ({test.ref_words} words); frame "
                 f"accuracy is over the {test.aligned_utterances} of them that stage 3 aligned ({test.frames} frames).\n")
        text += "\n" + describe_training(layout, kinds) + "\n"
        text += "\n" + describe_decoding(decode_config, layout.dev_part) + f" Frame accuracy is against {describe_alignments(layout)}. " \
            "Per-utterance details: `exp/decode/<system>_<part>/wer_details`.\n"
        text += environment_lines([layout.decode])
        write_section(results_md, "## Table 1 analogue", text)
    return scores


def per_utterance_counts(layout: RecipeLayout | None, members: Sequence[str], part: str, root: Path | None = None) -> dict[str, np.ndarray]:
    """Return the per-utterance counts of a group of systems (seeds of one student) on ``part``,
    averaged over the members: ``{"ids", "errors", "ref_words", "correct", "frames"}`` arrays in the
    order of the sorted utterance ids (``root``/``layout``: as :func:`per_utterance_path`). Members
    that cover different utterances, or whose aligned frames or (where decoded) reference words
    differ, are refused (a one-line error naming the file), never averaged by position. Where a
    member was scored for frame accuracy only, ``ref_words`` is all zeros: the group has no WER."""
    tables = []
    for m in members:
        path = per_utterance_path(layout, m, part, root)
        if not path.is_file():
            raise DataError(f"{path}: missing, so {m} cannot be compared utterance by utterance on {part}; rerun the stage "
                            "that decodes it (stage 7, or stage 10 for its students)")
        data = read_json(path)
        if not isinstance(data, dict) or not data:
            raise DataError(f"{path}: no per-utterance counts; rerun stage 7")
        if tables and sorted(data) != sorted(tables[0][1]):
            raise DataError(f"{path}: its utterances differ from {tables[0][0]}'s, so the seeds cannot be averaged "
                            "utterance by utterance; rerun stage 7")
        tables.append((path, data))
    ids = sorted(tables[0][1])
    counts = np.array([[t[u] for u in ids] for _, t in tables], dtype=np.float64)  # members x utts x 4
    # The aligned frames and the reference words are the part's own, the same for every member.
    decoded = [c[:, 1].sum() > 0 for c in counts]  # no reference words: scored for frame accuracy only
    first_decoded = decoded.index(True) if any(decoded) else 0
    for (path, _), c, dec in zip(tables, counts, decoded):
        if not np.array_equal(c[:, 3], counts[0, :, 3]):
            raise DataError(f"{path}: its aligned-frame counts differ from {tables[0][0]}'s, so the seeds cannot be averaged "
                            "utterance by utterance; they were scored on other alignments (rerun stage 7)")
        if dec and not np.array_equal(c[:, 1], counts[first_decoded, :, 1]):
            raise DataError(f"{path}: its reference-word counts differ from {tables[first_decoded][0]}'s, so the seeds cannot be "
                            "averaged utterance by utterance; they were scored against other transcripts (rerun stage 7)")
    mean = counts.mean(axis=0)
    # A member scored for frame accuracy only (stage 7 decodes the dev part for the first seed alone)
    # has no word errors to average: the group has no WER there (zero reference words), never one
    # pulled down by that member's zeros.
    words = counts[0, :, 1] if all(decoded) else np.zeros(len(ids))
    return {"ids": np.array(ids), "errors": mean[:, 0], "ref_words": words, "correct": mean[:, 2], "frames": counts[0, :, 3]}


def compare_groups(layout: RecipeLayout, groups: Mapping[str, Sequence[str]], scores: Mapping[str, Mapping[str, PartScore]]) -> dict:
    """Return, per test part, the paired bootstrap intervals (over utterances, Bisani & Ney 2004)
    of every group's difference from the baseline (the ensemble's, the distilled model's, the
    compressed model's when it is a group) in WER and frame accuracy, and of the share of the ensemble's frame-accuracy gain the distilled model keeps.
    Students' per-utterance counts are averaged over their seeds first. (The seeds' means and
    deviations are the table's own, computed from ``table1.json``.)"""
    out: dict = {"groups": {g: list(m) for g, m in groups.items()}, "parts": {}}
    for part in layout.test_parts:
        part_out: dict = {"differences": {}}
        decoded = {g: all(scores[m][part].wer is not None for m in members) for g, members in groups.items()}
        counts = {g: per_utterance_counts(layout, members, part) for g, members in groups.items()}
        base = counts["baseline"]
        for g in (g for g in groups if g != "baseline"):
            diff: dict = {}
            if decoded[g] and decoded["baseline"] and base["ref_words"].sum() > 0:
                diff["wer"] = bootstrap_difference(base["errors"], counts[g]["errors"], base["ref_words"]).to_dict()
            if base["frames"].sum() > 0:
                diff["frame_accuracy"] = bootstrap_difference(base["correct"], counts[g]["correct"], base["frames"]).to_dict()
            part_out["differences"][f"{g}-baseline"] = diff
        if base["frames"].sum() > 0:
            part_out["gain_share"] = bootstrap_gain_share(base["correct"], counts["ensemble"]["correct"], counts["distilled"]["correct"],
                                                          base["frames"]).to_dict()
        out["parts"][part] = part_out
    return out


def seed_mean(values: Sequence[float | None]) -> float | None:
    """The mean of a number over a student's seeds; None when any seed has none (not decoded)."""
    return None if not values or any(v is None for v in values) else float(np.mean([v for v in values if v is not None]))


def seed_std(values: Sequence[float | None]) -> float:
    """The standard deviation (ddof 1) of a number over a student's seeds; 0 for one seed or a missing value."""
    return float(np.std([v for v in values if v is not None], ddof=1)) if len(values) > 1 and all(v is not None for v in values) else 0.0


def _group_row(name: str, members: Sequence[Mapping[str, PartScore]], layout: RecipeLayout) -> SystemScore:
    """One Table 1 row: a system, or the mean over the seeds of a student."""
    test = [m[layout.test_part] for m in members]
    dev = [m[layout.dev_part] for m in members]
    ood = [m[layout.ood_part] for m in members] if layout.ood_part else []
    first = test[0]
    mean, std = seed_mean, seed_std
    return SystemScore(name, float(np.mean([t.frame_accuracy for t in test])), mean([t.wer for t in test]), first.substitutions, first.deletions,
                       first.insertions, first.ref_words, mean([d.frame_accuracy for d in dev]), mean([o.wer for o in ood]) if ood else None,
                       ood[0].ref_words if ood else 0, seeds=len(members), frame_accuracy_std=std([t.frame_accuracy for t in test]),
                       wer_std=std([t.wer for t in test]), dev_wer=mean([d.wer for d in dev if d.wer is not None]),
                       acoustic_scales=tuple(dict.fromkeys(t.acoustic_scale for t in test if t.acoustic_scale is not None)),
                       insertion_penalty=first.insertion_penalty,
                       grid_edges=ScaleSweep.from_dict(dev[0].sweep).edges if dev[0].sweep else ())
