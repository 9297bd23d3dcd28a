"""Stage 5: the teacher ensemble's soft targets, its fused posteriors at temperature T for every
training frame, stored top-k on the training cuts.

Writes ``<exp>/soft_targets/teachers<N>_<fusion>_T<T>_k<k>/`` (the folder is named by the
settings, so targets made with other settings never stand in for these): ``cuts_<train>.jsonl.gz``,
``storage_<train>/``, ``stats.json`` and ``provenance.json``, which records T, k, the fusion, the
number of teachers and the fingerprints of stage 4's teachers and stage 3's cuts. Stages 6 and 8
read that record through :func:`find_soft_targets` and refuse targets that do not match their
own kd settings or today's teachers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from lhotse import CutSet
from tqdm import tqdm

from asr_kd.config import KdConfig, save_config
from asr_kd.errors import ConfigError, DataError
from asr_kd.data.stored_targets import SOFT_CODEBOOK, SOFT_CODES, SOFT_DECODE_K, SOFT_TAIL, SOFT_TEMPERATURE
from asr_kd.kd.ensemble import ensemble_log_posteriors, inference_device
from asr_kd.kd.sharded_targets import ShardedPosteriors, Work
from asr_kd.kd.soft_targets import SoftTargetStats, store_target_arrays, topk_compress
from asr_kd.kd.target_formats import ResidualQuantiser, decode_topk, encode_topk, fit_quantiser, sample_for_fitting, storage_bytes_per_frame
from asr_kd.stages.common import alignment_inputs, teachers_record, load_teachers, read_senones, recorded_num_teachers, write_results
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageGuard, StageRecord, config_dict, read_record
from asr_kd.utils import atomic_path, read_json, write_json_atomic

log = logging.getLogger(__name__)
HEADING = "## Soft targets (stage 5)"


BUCKET_WORDS = (" The kept probabilities are the ensemble's own and the rest of each frame's mass is one more target (kd.tail=bucket):"
                " the table's KL is of the kept senones renormalised, as without the rest; with the rest as one class,"
                " what the student is taught, it is {:.4f} nats.")


def soft_target_settings(kd: KdConfig, num_teachers: int, train_part: str) -> dict:
    """The settings that make soft targets what they are (the stage-5 config)."""
    settings = {"temperature": kd.temperature, "top_k": kd.top_k, "fusion": kd.fusion, "num_teachers": num_teachers,
                "train_part": train_part, "storage": kd.storage}
    if kd.storage == "rvq":
        settings["codebooks"] = kd.codebooks
    if kd.tail != "renormalise":  # named only when set: folders made before kd.tail keep their fingerprint
        settings["tail"] = kd.tail
    return settings


def soft_dir_of(layout: RecipeLayout, kd: KdConfig, num_teachers: int) -> Path:
    """Stage 5's folder for ``kd``'s settings and ``num_teachers`` teachers."""
    return layout.soft_dir(num_teachers, kd.fusion, kd.temperature, kd.top_k, kd.storage, kd.codebooks, kd.tail)


def storage_label(kd: KdConfig) -> str:
    """``kd.storage`` in a few words: ``rvq x8`` (8 codebooks), ``uint16-uint8``, ``int32-fp16``,
    then ``, rest as a target`` with ``kd.tail=bucket``."""
    label = f"rvq x{kd.codebooks}" if kd.storage == "rvq" else kd.storage
    return label + (", rest as a target" if kd.tail == "bucket" else "")


STORAGE_WORDS = {
    "int32-fp16": "int32 ids + float16 probabilities, renormalised",
    "uint16-uint8": "uint16 ids + uint8 log-probabilities in 1/16-nat steps, renormalised",
    "rvq": "residual VQ codes of the whole posterior, decoded to the top k",
}


def make_soft_targets(
    layout: RecipeLayout, kd: KdConfig, num_teachers: int | None = None, max_duration: float = 20.0,
    results_md: Path | None = None, command: str = "", posteriors_fn: Callable[..., Iterator] = ensemble_log_posteriors,
    device: str | torch.device | None = None, sharded: ShardedPosteriors | None = None,
) -> dict[str, float]:
    """Store the ensemble's posteriors at ``kd.temperature`` (``kd.fusion``) of the first
    ``num_teachers`` teachers (default: all of stage 4) as top-``kd.top_k`` soft targets in
    format ``kd.storage``; write ``stats.json`` and return it: frames, bytes per frame stored vs
    dense float32, the mean KL(stored || full) and mass kept of what a student reads back, and the
    settings. Skipped when the record matches. ``posteriors_fn``: the ensemble's inference over the
    training cuts, called as :func:`ensemble_log_posteriors` with ``on_device=True`` (posteriors
    may stay on the GPU); ``device``:
    where the ``rvq`` codebooks' sample is scored and fitted and where each cut's targets are
    computed from its posteriors (:func:`cut_target_arrays`; default
    :func:`asr_kd.kd.ensemble.inference_device`; ``posteriors_fn`` scores on its own).
    ``sharded`` (under torchrun, in place of ``posteriors_fn``): every rank scores its share of the
    cuts and does their per-cut work (:func:`stage5_work`), rank 0 stores."""
    n = recorded_num_teachers(layout) if num_teachers is None else num_teachers
    if n < 1:
        raise ConfigError(f"--num-teachers must be >= 1, got {n}")
    out = soft_dir_of(layout, kd, n)
    teachers_rec = teachers_record(layout)
    guard = StageGuard("stage 5 (soft targets)", out, soft_target_settings(kd, n, layout.train_part),
                       {"teachers": teachers_rec.fingerprint, **alignment_inputs(layout)}, command)
    stats_path = out / "stats.json"
    if guard.needs_work():
        teachers = load_teachers(layout, n)
        cuts = CutSet.from_cuts(layout.open_cuts(layout.ali_cuts(layout.train_part)))
        cmvn = layout.open_cmvn(layout.train_part)
        bucket = kd.tail == "bucket"
        stats = SoftTargetStats(bucket=bucket)
        start = time.time()
        work_device = inference_device(device)
        quantiser = (_fit_quantiser(teachers, cuts, cmvn, kd, max_duration, read_senones(layout).num_senones, work_device)
                     if kd.storage == "rvq" else None)

        custom: dict = {SOFT_TEMPERATURE: float(kd.temperature), **({SOFT_TAIL: True} if bucket else {})}
        shared = {}
        if quantiser is not None:
            shared, custom[SOFT_DECODE_K] = {SOFT_CODEBOOK: quantiser.codebooks}, kd.top_k
        work = stage5_work(kd, shared, work_device)

        def targets() -> Iterator[tuple[str, dict[str, np.ndarray]]]:
            if sharded is not None:
                worked = sharded(teachers, cuts, cmvn, kd.temperature, kd.fusion, max_duration, work=work, shared=shared)
            else:  # on_device: the posteriors stay where they were scored, for the per-cut work there
                posteriors = posteriors_fn(teachers, cuts, cmvn, kd.temperature, kd.fusion, max_duration, on_device=True)
                worked = ((cut, work(log_probs)) for cut, log_probs in posteriors)
            for cut, arrays in tqdm(worked, total=len(cuts), desc="ensemble soft targets", unit="cut", leave=False):
                stats.add(arrays.pop(CUT_STATS))  # in manifest order, whichever rank worked: the single process's sums
                yield cut.id, arrays

        stored = store_target_arrays(cuts, targets(), out / f"storage_{layout.train_part}", shared=shared or None, custom=custom)
        with atomic_path(layout.soft_cuts(out)) as tmp:
            stored.to_file(tmp)
        summary = {**stats.summary(storage_bytes_per_frame(kd.storage, kd.top_k, kd.codebooks)), "num_teachers": n,
                   "temperature": kd.temperature, "top_k": kd.top_k, "fusion": kd.fusion, "storage": kd.storage,
                   "cuts": len(stored), "seconds": round(time.time() - start, 1)}
        if quantiser is not None:
            summary.update(codebooks=kd.codebooks, codebook_bytes=int(quantiser.codebooks.nbytes))
        if bucket:
            summary["tail"] = kd.tail
        save_config(kd, out / "kd.yaml")
        write_json_atomic(stats_path, summary)
        guard.finish([stats_path, layout.soft_cuts(out), out / f"storage_{layout.train_part}" / "arrays.npa"])
    summary = read_json(stats_path)
    assert isinstance(summary, dict)
    log.info("soft targets: %d frames, %d bytes/frame stored vs %d dense float32, mean KL(stored || full) %.4f nats, mass kept %.3f",
             summary["frames"], summary["bytes_per_frame"], summary["dense_float32_bytes_per_frame"],
             summary["mean_kl_stored_vs_full"], summary["mean_mass_kept"])
    storage = summary.get("storage", "int32-fp16")
    codes = f"{kd.codebooks} one-byte codes, " if storage == "rvq" else ""
    body = (f"Ensemble of {n} teachers ({kd.fusion} mean) at T = {kd.temperature:g}, top-{kd.top_k} per frame "
            f"({codes}{STORAGE_WORDS[storage]}; kd.storage={storage}), {summary['frames']} training frames in {summary['cuts']} cuts, "
            f"stored in `{out.name}`.{BUCKET_WORDS.format(summary['mean_kl_bucketed_vs_full']) if summary.get('tail') == 'bucket' else ''}\n\n"
            "| Bytes per frame stored | Dense float32 | Ratio | Mean mass kept | Mean KL(stored ‖ full), nats |\n|---|---|---|---|---|\n"
            f"| {summary['bytes_per_frame']} | {summary['dense_float32_bytes_per_frame']} | "
            f"{summary['dense_float32_bytes_per_frame'] / max(summary['bytes_per_frame'], 1):.0f}x | {summary['mean_mass_kept']:.4f} | "
            f"{summary['mean_kl_stored_vs_full']:.4f} |\n")
    write_results(results_md, HEADING, body, command, [out])
    return summary


def find_soft_targets(layout: RecipeLayout, kd: KdConfig, num_teachers: int | None, user: str) -> tuple[Path, StageRecord]:
    """Return ``(cuts manifest, record)`` of the stored soft targets that match ``kd`` (T, top-k,
    fusion) and ``num_teachers`` (default: stage 4's count), made from today's teachers.

    DataError in one line, for ``user`` (e.g. "stage 6"), when none match: naming the settings
    asked for, the soft targets that exist, and the stage to run."""
    n = recorded_num_teachers(layout) if num_teachers is None else num_teachers
    out = soft_dir_of(layout, kd, n)
    record = read_record(out)
    if record is None:
        existing = sorted(p.name for p in layout.soft_root.glob("*") if read_record(p) is not None)
        raise DataError(
            f"{user}: no soft targets with T={kd.temperature:g}, top-{kd.top_k}, storage {storage_label(kd)}, {kd.fusion} fusion of {n} teachers ({out} is unfinished; "
            f"finished: {', '.join(existing) or 'none'}); run stage 5 with the same kd config and --num-teachers first")
    teachers = teachers_record(layout)
    if record.inputs.get("teachers") != teachers.fingerprint:
        raise DataError(f"{user}: the soft targets in {out} were made from other teachers than those of {layout.teachers} "
                        "(stage 4 was redone since); rerun stage 5")
    if record.config != config_dict(soft_target_settings(kd, n, layout.train_part)):
        raise DataError(f"{user}: {out}/provenance.json records settings {record.config}, not those asked for; rerun stage 5")
    return layout.soft_cuts(out), record


CUT_STATS = "cut_stats"  # the key of a cut's statistic totals in what stage5_work returns


def stage5_work(kd: KdConfig, shared: Mapping[str, np.ndarray], device: str | torch.device | None = None) -> Work:
    """Stage 5's work on one cut: its log-posteriors -> the arrays :func:`cut_target_arrays`
    stores and, under :data:`CUT_STATS`, the cut's :meth:`SoftTargetStats.totals`; with the rvq
    ``shared[SOFT_CODEBOOK]`` (rank 0's fitted codebooks) it encodes with them, on ``device``.
    Rank 0 and, under torchrun, every other rank (:func:`asr_kd.kd.sharded_targets.serve_posteriors`)
    build it from the same arguments."""
    quantiser = ResidualQuantiser(shared[SOFT_CODEBOOK], inference_device(device)) if SOFT_CODEBOOK in shared else None
    bucket = kd.tail == "bucket"

    def work(log_probs: torch.Tensor) -> dict[str, np.ndarray]:
        stats = SoftTargetStats(bucket=bucket)
        arrays = cut_target_arrays(log_probs, kd, quantiser, stats, device)
        return {**arrays, CUT_STATS: stats.totals()}

    return work


def cut_target_arrays(log_probs: torch.Tensor, kd: KdConfig, quantiser: ResidualQuantiser | None, stats: SoftTargetStats,
                      device: str | torch.device | None = None) -> dict[str, np.ndarray]:
    """The arrays stage 5 stores for one cut from the ensemble's ``log_probs`` ``[frames, C]`` at
    ``kd.temperature`` (codes of ``quantiser`` for ``kd.storage`` rvq, else the top ``kd.top_k`` in
    ``kd.storage``); ``stats`` is updated with what a student will read back from them.

    ``device`` (default: where ``log_probs`` is): where the per-cut work runs. On a GPU the top-k,
    the codes, their decoding and the statistics' reads of the full posteriors all run there, and
    only the stored arrays and frames x k values come back (on the CPU they limited stage 5 to about
    20,000 frames a second with 4,200 senones, a third of the GPU's inference rate)."""
    bucket = kd.tail == "bucket"
    if device is not None:
        log_probs = log_probs.to(device)
    full = log_probs.exp()
    if quantiser is not None:
        arrays = quantiser.arrays(full)
        ids, probs = quantiser.decode(arrays[SOFT_CODES], kd.top_k, renormalise=not bucket)
    else:
        arrays = encode_topk(*topk_compress(full, kd.top_k, renormalise=not bucket), kd.storage)
        ids, probs = decode_topk(arrays, renormalise=not bucket)
    stats.update(full, ids, probs, log_probs)
    return arrays


def _fit_quantiser(teachers: list, cuts: CutSet, cmvn, kd: KdConfig, max_duration: float, num_classes: int,
                   device: str | torch.device = "cpu") -> ResidualQuantiser:
    """Fit the ``rvq`` codebooks on the ensemble's posteriors (over ``num_classes`` senones, scored
    on ``device``, where the fit runs and the quantiser encodes) of a seeded random sample of the training cuts
    (:func:`asr_kd.kd.target_formats.sample_for_fitting`)."""
    sample = sample_for_fitting(list(cuts), num_classes)
    log.info("fitting %d codebooks of 256 entries on %d sampled cuts", kd.codebooks, len(sample))
    posteriors = (lp.exp() for _, lp in ensemble_log_posteriors(teachers, sample, cmvn, kd.temperature, kd.fusion, max_duration, device,
                                                                           on_device=True))
    return fit_quantiser(posteriors, kd.codebooks, device=device)
