"""Stage 3, second half (``run.sh --alignments dnn``): Kaldi's DNN realignment. A first-pass DNN
is trained on the triphone GMM's senone alignments, then every part is aligned again through
stage 3's training graphs with that DNN's posteriors divided by stage 3's priors (scaled
likelihoods, stage 3's beams and graph scales). Stages 4-10 then train and score on the new
labels and priors (``RecipeLayout(alignments="dnn")``).

Why: on the synthetic corpus the GMM's labels are made at 60% WER and the DNNs trained on them
reach about 32% dev frame accuracy whatever their size; a DNN trained on labels realigned by the
teacher ensemble decoded test-clean 2.5 WER points better (bench/RESULTS.md, "DNN realignment").
A single first-pass DNN, trained before the teachers, keeps the paper's comparison fair: the
baseline, the ensemble and the students all learn from the same labels, and none of them from the
ensemble they are compared with.

Reads ``<exp>/gmm`` (stage 3: model, training graphs' inputs, alignments, priors, record);
writes ``<exp>/realign/aligner/`` (the first-pass DNN), ``<exp>/realign/ali/`` (the layout of
``<exp>/gmm/ali``: per part the cuts with the new senones and the transition ids, the priors
counted on the new training alignments, ``senones.json``), ``summary.json`` and the record.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm import tqdm

from asr_kd.config import SENONES_FIELD, DecodeConfig, DnnConfig, GmmConfig, TrainConfig, config_from_dict
from asr_kd.data.alignments import load_alignment, store_alignments
from asr_kd.data.features import CmvnStats
from asr_kd.decode.hybrid import tid_to_pdf
from asr_kd.decode.priors import load_priors, priors_from_alignments, save_priors
from asr_kd.errors import DataError
from asr_kd.gmm.align import AlignOptions, GraphCompiler, senone_alignments, viterbi_align_loglikes
from asr_kd.gmm.train import GmmSystem, GraphInputs
from asr_kd.kd.ensemble import ensemble_log_posteriors
from asr_kd.lang.lang_dir import Lang
from asr_kd.stages.common import describe_dnn, fmt_pct, gmm_record, model_checkpoint, read_senones, write_results
from asr_kd.stages.layout import PRIORS_FILE, RecipeLayout
from asr_kd.stages.provenance import StageGuard
from asr_kd.stages.s3_gmm import RESULTS_HEADING as GMM_HEADING, write_tids
from asr_kd.train.frame_classifier import load_frame_classifier, train_frame_classifier
from asr_kd.utils import read_json, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)
HEADING = "## DNN realignment (stage 3)"
# The aligner's seed: apart from the teachers' (seed + i) and the students' (seed + 1000 + k).
ALIGNER_SEED_OFFSET = 500


class Realigner:
    """Stage 3's training graphs, transition model and priors, ready to align cuts with any
    networks' posteriors (divided by the priors: scaled likelihoods, stage 3's beams)."""

    def __init__(self, gmm_layout: RecipeLayout, models: Sequence[torch.nn.Module], max_duration: float = 20.0) -> None:
        record = gmm_record(gmm_layout)
        gmm_cfg = config_from_dict(GmmConfig, record.config["gmm"], "stage 3 record")
        self.decode_config = config_from_dict(DecodeConfig, record.config["decode"], "stage 3 record")
        system = GmmSystem.load(read_senones(gmm_layout).model)
        self.tm = system.tm
        self.lang = Lang.load(gmm_layout.lang)
        inputs = GraphInputs.from_lang(self.lang)
        self.compiler = GraphCompiler(self.tm, system.ctx_dep, inputs.lexicon_fst, inputs.disambig_phones)
        self.opts = AlignOptions(gmm_cfg.beam, gmm_cfg.retry_beam, gmm_cfg.graph_scales)
        self.priors = load_priors(gmm_layout.log_priors, self.tm.num_pdfs)
        self.tid2pdf = tid_to_pdf(self.tm)
        self.models = list(models)
        self.max_duration = max_duration

    def align(self, cuts: Sequence, cmvn: CmvnStats, desc: str) -> tuple[dict[str, list[int]], int]:
        """Return ``(transition ids per aligned cut, number of cuts that failed)``."""
        tids: dict[str, list[int]] = {}
        failed = 0
        posteriors = ensemble_log_posteriors(self.models, cuts, cmvn, 1.0, "arithmetic", self.max_duration)
        for cut, log_probs in tqdm(posteriors, total=len(cuts), desc=desc, unit="cut", leave=False):
            words = " ".join(s.text or "" for s in cut.supervisions).split()
            try:
                graph = self.compiler.compile(self.lang.word_ids(words))
            except RuntimeError:  # stage 3 could not compile it either; counted
                failed += 1
                continue
            ali, _ = viterbi_align_loglikes(graph, self.tm, log_probs.numpy() - self.priors, self.tid2pdf, self.opts, cut.id)
            if ali is None:
                failed += 1
            else:
                tids[cut.id] = ali
        return tids, failed


def realign_parts(gmm_layout: RecipeLayout, models: Sequence[torch.nn.Module], out_ali: Path, parts: Iterable[str],
                  max_duration: float = 20.0) -> list[dict]:
    """Align every cut of ``parts`` again through stage 3's training graphs with the fused
    posteriors of ``models`` (:class:`Realigner`); write ``out_ali`` in the layout of
    ``<exp>/gmm/ali`` (cuts with the senone field, transition ids, ``senones.json``; the priors
    counted on the first part's new alignments, so pass the training part first). Returns per part
    ``{"part", "cuts", "aligned", "gmm_aligned", "failed", "frames", "changed", "cpu_s"}``:
    ``changed`` counts the frames (of cuts both aligners aligned) whose senone differs from the GMM's."""
    realigner = Realigner(gmm_layout, models, max_duration)
    out_ali.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_ali / "senones.json", gmm_layout.senones_json.read_text())
    stats = []
    for index, part in enumerate(parts):
        start = time.process_time()
        cuts = list(gmm_layout.open_cuts(gmm_layout.fbank_cuts(part)))
        gmm_labels = {c.id: load_alignment(c) for c in gmm_layout.open_cuts(gmm_layout.ali_cuts(part))}
        tids, failed = realigner.align(cuts, gmm_layout.open_cmvn(part), f"realign {part}")
        if not tids:
            raise DataError(f"DNN realignment: no cut of {part} could be aligned; check stage 3's alignments of {part} "
                            f"({gmm_layout.ali_cuts(part)}) and the aligner in {out_ali.parent / 'aligner'}")
        labels = senone_alignments(realigner.tm, tids)
        stored = store_alignments(cuts, labels, out_ali / f"storage_{part}", name=SENONES_FIELD)
        stored.to_file(out_ali / f"cuts_{part}.jsonl.gz")
        write_tids(out_ali / f"tids_{part}.txt", tids)
        if index == 0:
            cfg = realigner.decode_config
            save_priors(out_ali / PRIORS_FILE, priors_from_alignments(labels.values(), realigner.tm.num_pdfs, cfg.prior_smoothing, cfg.prior_floor))
        both = [u for u in labels if u in gmm_labels]
        frames = sum(len(labels[u]) for u in both)
        changed = sum(int((labels[u] != gmm_labels[u]).sum()) for u in both)
        stats.append({"part": part, "cuts": len(cuts), "aligned": len(labels), "gmm_aligned": len(gmm_labels), "failed": failed,
                      "frames": frames, "changed": changed, "cpu_s": round(time.process_time() - start, 1)})
        log.info("%s: %d of %d cuts realigned (%d failed), %.1f%% of frames changed senone", part, len(labels), len(cuts), failed,
                 100 * changed / max(frames, 1))
    return stats


def load_aligner(layout: RecipeLayout) -> torch.nn.Module:
    """Return stage 3's first-pass DNN (``<exp>/realign/aligner``); DataError if it has not run."""
    return load_frame_classifier(model_checkpoint(layout.realign / "aligner"))


def realign_with_dnn(layout: RecipeLayout, model_config: DnnConfig, train_config: TrainConfig, results_md: Path | None = None,
                     command: str = "", max_duration: float = 20.0) -> dict:
    """Train the first-pass DNN (seed ``train_config.seed + 500``) on stage 3's alignments and
    realign the training, dev and test parts with it into ``<exp>/realign`` (see the module
    docstring), or skip when the stage's record matches. Returns the summary
    (``{"aligner": {"seed", "steps", "best_dev_frame_accuracy", "stop_reason"}, "parts": [...]}``,
    the parts as :func:`realign_parts` returns them), also in ``summary.json``."""
    gmm_layout = dataclasses.replace(layout, alignments="gmm")
    dnn_layout = dataclasses.replace(layout, alignments="dnn")
    parts = [layout.train_part, layout.dev_part, *layout.test_parts]
    senones = read_senones(gmm_layout)
    cfg = dataclasses.replace(train_config, seed=train_config.seed + ALIGNER_SEED_OFFSET)
    out = dnn_layout.realign
    guard = StageGuard("stage 3 (DNN realignment)", out, {"dnn": model_config, "train": cfg, "parts": parts},
                       {"gmm": gmm_record(gmm_layout).fingerprint}, command)
    summary_path = out / "summary.json"
    if guard.needs_work():
        aligner_dir = out / "aligner"
        log.info("first-pass DNN (%s, seed %d) on stage 3's alignments -> %s", describe_dnn(model_config), cfg.seed, aligner_dir)
        result = train_frame_classifier(gmm_layout.ali_cuts(layout.train_part), gmm_layout.ali_cuts(layout.dev_part),
                                        layout.cmvn(layout.train_part), layout.cmvn(layout.dev_part), senones.num_senones,
                                        model_config, cfg, aligner_dir, resume=True)
        stats = realign_parts(gmm_layout, [load_aligner(dnn_layout)], dnn_layout.ali, parts, max_duration)
        summary = {"aligner": {"seed": cfg.seed, "steps": result.state.step, "best_dev_frame_accuracy": result.state.best_metric,
                               "stop_reason": result.state.stop_reason}, "parts": stats}
        write_json_atomic(summary_path, summary)
        guard.finish([summary_path, model_checkpoint(aligner_dir), dnn_layout.log_priors, *(dnn_layout.ali_cuts(p) for p in parts), *(dnn_layout.tids(p) for p in parts)])
    summary = read_json(summary_path)
    assert isinstance(summary, dict)
    write_results(results_md, HEADING, _section(summary, model_config), command, [out], after=GMM_HEADING)
    return summary


def _section(summary: dict, model_config: DnnConfig) -> str:
    a = summary["aligner"]
    rows = [f"| {s['part']} | {s['cuts']} | {s['gmm_aligned']} | {s['aligned']} | {s['failed']} | "
            f"{100 * s['changed'] / max(s['frames'], 1):.1f}% |" for s in summary["parts"]]
    return (f"A first-pass DNN ({describe_dnn(model_config)}, seed {a['seed']}, {a['steps']} steps, best dev frame accuracy "
            f"{fmt_pct(a['best_dev_frame_accuracy'])} against the GMM's labels) aligned every part again through the training "
            "graphs (its posteriors divided by stage 3's priors, stage 3's beams). Stages 4-10 train on these labels and priors; "
            "their frame accuracies are measured against them.\n\n"
            "| Part | Cuts | Aligned by the GMM | Aligned by the DNN | Failed | Frames whose senone changed |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
