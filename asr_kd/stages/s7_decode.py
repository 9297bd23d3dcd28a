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
from typing import Sequence

import numpy as np
import torch
from lhotse import CutSet

from asr_kd.config import DecodeConfig
from asr_kd.data.alignments import has_alignment, load_alignment
from asr_kd.decode.hclg import load_hclg
from asr_kd.decode.hybrid import decode_posteriors_batch
from asr_kd.decode.priors import load_priors
from asr_kd.errors import ConfigError, DataError
from asr_kd.kd.ensemble import ensemble_log_posteriors
from asr_kd.lang.symbols import SymbolTable
from asr_kd.metrics.frame_accuracy import corpus_frame_accuracy
from asr_kd.metrics.wer import compute_wer, write_transcripts, write_wer_report
from asr_kd.report.results_md import write_section
from asr_kd.report.tables import SystemScore, format_table1
from asr_kd.train.frame_classifier import load_frame_classifier
from asr_kd.stages.common import gmm_record, load_teachers, model_checkpoint, read_senones
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageGuard, require_record
from asr_kd.utils import read_json, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PartScore:
    """A system's scores on one part: frame accuracy and, when decoded, the WER with S/D/I."""

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


def score_system(
    name: str, models: Sequence[torch.nn.Module], layout: RecipeLayout, part: str, decode: bool,
    decode_config: DecodeConfig, fusion: str = "arithmetic", max_duration: float = 20.0, max_cuts: int | None = None,
) -> PartScore:
    """Return the :class:`PartScore` of the (fused, if several) ``models`` on ``part`` (its
    first ``max_cuts`` cuts, if given): frame accuracy against the senone alignments and, if
    ``decode``, HCLG decoding and WER; the hypotheses and the per-utterance WER details go to
    ``<exp>/decode/<name>_<part>/``."""
    senones = read_senones(layout)
    # Every cut of the part is decoded (decoding needs no alignment), so that every system of a
    # table, the GMM's too, is scored on the same utterances; frame accuracy is over the cuts that
    # stage 3 could align, and the table says how many.
    cuts = layout.open_cuts(layout.fbank_cuts(part))
    if max_cuts is not None:
        cuts = CutSet.from_cuts(itertools.islice(cuts, max_cuts))
    aligned = {c.id: c for c in layout.open_cuts(layout.ali_cuts(part)) if has_alignment(c)}
    cmvn = layout.open_cmvn(part)
    out_dir = layout.decode / f"{name}_{part}"
    posteriors: dict[str, np.ndarray] = {}
    references: dict[str, np.ndarray] = {}
    texts: dict[str, str] = {}
    audio = 0.0
    for cut, log_probs in ensemble_log_posteriors(models, cuts, cmvn, 1.0, fusion, max_duration):
        posteriors[cut.id] = log_probs.numpy()
        if cut.id in aligned:
            references[cut.id] = load_alignment(aligned[cut.id])
        texts[cut.id] = " ".join(s.text or "" for s in cut.supervisions).strip()
        audio += cut.duration
    if not posteriors:
        raise DataError(f"{layout.fbank_cuts(part)} holds no cut; rerun stage 1 for {part}")
    acc = corpus_frame_accuracy(posteriors, references)
    score = PartScore(name, part, acc.accuracy, acc.counted, audio_seconds=round(audio, 2), utterances=len(posteriors),
                      aligned_utterances=len(references))
    if decode:
        hclg = load_hclg(senones.graph)
        from asr_kd.gmm.train import GmmSystem  # the transition model of the senones

        trans_model = GmmSystem.load(senones.model).tm
        priors = load_priors(layout.log_priors, trans_model.num_pdfs)
        words = SymbolTable.from_file(senones.graph / "words.txt")
        start = time.time()
        batch = decode_posteriors_batch(hclg, trans_model, posteriors, priors, decode_config)
        seconds = time.time() - start
        hyps = batch.texts(words)
        wer = compute_wer(texts, hyps)
        write_transcripts(out_dir / "hyp.txt", hyps)
        write_transcripts(out_dir / "ref.txt", texts)
        write_wer_report(wer, out_dir / "wer_details")
        score = dataclasses.replace(score, wer=wer.wer, substitutions=wer.substitutions, deletions=wer.deletions,
                                    insertions=wer.insertions, ref_words=wer.ref_words, failed=len(batch.failed),
                                    decode_seconds=round(seconds, 2))
        log.info("%s on %s: frame accuracy %.4f, %s (%.0f s decoding)", name, part, score.frame_accuracy, wer.summary(), seconds)
    else:
        log.info("%s on %s: frame accuracy %.4f", name, part, score.frame_accuracy)
    write_text_atomic(out_dir / "scores.json", json.dumps(dataclasses.asdict(score), indent=1) + "\n")
    return score


def evaluate_systems(
    layout: RecipeLayout, decode_config: DecodeConfig, fusion: str = "arithmetic", num_teachers: int | None = None,
    decode_parts: Sequence[str] | None = None, score_teachers: bool = True, max_duration: float = 20.0,
    results_md: Path | None = None, command: str = "", corpus: str = "", decode_teachers: bool = False,
) -> dict[str, dict[str, PartScore]]:
    """Score the hard baseline, the N-teacher ensemble (fused posteriors) and the distilled
    student on the dev and test parts: frame accuracy everywhere, WER on ``decode_parts``
    (default: test). With ``score_teachers`` each teacher's frame accuracy is scored too, and
    with ``decode_teachers`` each teacher is also decoded (N more decodings). Writes
    ``<exp>/decode/table1.json`` and the Table 1 section of ``results_md``; returns
    ``{system: {part: PartScore}}``. Skipped (the table re-rendered from ``table1.json``) when
    the stage's record matches its settings and the records of stages 3, 4 and 6."""
    decode_parts = layout.test_parts if decode_parts is None else list(decode_parts)
    unknown = [p for p in decode_parts if p not in (layout.dev_part, *layout.test_parts)]
    if unknown:
        raise ConfigError(f"--decode-parts {' '.join(unknown)}: stage 7 decodes the dev part ({layout.dev_part}) and the test parts "
                          f"({', '.join(layout.test_parts)}) only; decode another part with asr-kd decode-part")
    teachers_rec = require_record(layout.teachers, "stage 4 (asr-kd train-teachers)")
    n = int(teachers_rec.config["num_teachers"]) if num_teachers is None else num_teachers
    inputs = {"gmm": gmm_record(layout).fingerprint, "teachers": teachers_rec.fingerprint,
              **{f"student_{k}": require_record(layout.student_dir(k), f"stage 6 ({k} student)").fingerprint for k in ("hard", "distilled")}}
    config = {"decode": decode_config, "fusion": fusion, "num_teachers": n, "decode_parts": decode_parts, "score_teachers": score_teachers,
              "decode_teachers": decode_teachers, "dev_part": layout.dev_part, "test_parts": layout.test_parts}
    guard = StageGuard("stage 7 (decoding, Table 1)", layout.decode, config, inputs, command)
    table = layout.decode / "table1.json"
    if guard.needs_work():
        teachers = load_teachers(layout, n)
        systems: list[tuple[str, list[torch.nn.Module]]] = [
            ("baseline", [load_frame_classifier(model_checkpoint(layout.student_dir("hard")))]),
            ("ensemble", list(teachers)),
            ("distilled", [load_frame_classifier(model_checkpoint(layout.student_dir("distilled")))]),
        ]
        if score_teachers:
            systems += [(f"teacher{i}", [t]) for i, t in enumerate(teachers)]
        computed: dict[str, dict[str, PartScore]] = {}
        for name, models in systems:
            computed[name] = {}
            for part in (layout.dev_part, *layout.test_parts):
                decode = part in decode_parts and (decode_teachers or not name.startswith("teacher"))
                computed[name][part] = score_system(name, models, layout, part, decode, decode_config, fusion, max_duration)
        write_json_atomic(table, {k: {p: dataclasses.asdict(s) for p, s in v.items()} for k, v in computed.items()})
        guard.finish([table])
    stored = read_json(table)
    assert isinstance(stored, dict)
    scores = {k: {p: PartScore(**s) for p, s in v.items()} for k, v in stored.items()}
    if results_md is not None:
        rows = {name: _row(name, scores[name], layout) for name in scores}
        extra = []
        if score_teachers:
            accs = [scores[f"teacher{i}"][layout.test_part].frame_accuracy for i in range(n)]
            dev_accs = [scores[f"teacher{i}"][layout.dev_part].frame_accuracy for i in range(n)]
            extra.append(SystemScore(f"Single teacher (mean of {n}, min {100 * min(accs):.1f}%, max {100 * max(accs):.1f}%)",
                                     float(np.mean(accs)), dev_frame_accuracy=float(np.mean(dev_accs))))
            if decode_teachers:
                extra += [_row(f"teacher{i}", scores[f"teacher{i}"], layout) for i in range(n)]
        text = format_table1(rows["baseline"], rows["ensemble"], rows["distilled"], n, extra, corpus=corpus, command=command,
                             ood_part=layout.ood_part)
        test = scores["baseline"][layout.test_part]
        text += (f"\nEvery system is decoded on all {test.utterances} {layout.test_part} utterances ({test.ref_words} words); frame "
                 f"accuracy is over the {test.aligned_utterances} of them that stage 3 aligned ({test.frames} frames).\n")
        text += (f"\nHybrid decoding: log posteriors minus log senone priors (stage 3 train alignments) times acoustic scale "
                 f"{decode_config.acoustic_scale:g}, HCLG beam {decode_config.beam:g}, {decode_config.decoder} decoder; "
                 "frame accuracy against the stage-3 senone alignments. Per-utterance details: `exp/decode/<system>_<part>/wer_details`.\n")
        write_section(results_md, "## Table 1 analogue", text)
    return scores


def _row(name: str, by_part: dict[str, PartScore], layout: RecipeLayout) -> SystemScore:
    test, dev = by_part[layout.test_part], by_part[layout.dev_part]
    ood = by_part.get(layout.ood_part) if layout.ood_part else None
    return SystemScore(name, test.frame_accuracy, test.wer, test.substitutions, test.deletions, test.insertions,
                       test.ref_words, dev.frame_accuracy, ood.wer if ood else None, ood.ref_words if ood else 0)
