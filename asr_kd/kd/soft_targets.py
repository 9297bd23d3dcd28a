"""Soft targets (stage 5): the ensemble's posteriors at temperature T, top-k compressed, on cuts.

A dense posterior over a few thousand senones costs kilobytes per 10 ms frame; the ensemble's
posteriors are peaky, so nearly all of their mass sits in a handful of senones. Each frame is
stored as its ``k`` most probable senone ids (int32) and their probabilities (float16),
renormalised to sum to 1: ``6 k`` bytes instead of ``4 C``. That is the default format;
:mod:`asr_kd.kd.target_formats` has the compact ones (``kd.storage``).

Storage goes through lhotse's array manifests: both arrays of every cut are appended, as their
exact ``.npy`` bytes, to one archive per storage directory, ``<dir>/arrays.npa``
(:mod:`asr_kd.data.array_archive`, lhotse storage type ``npy_archive``; the same storage as the
alignments of ``asr_kd.data.alignments``: lossless, one file instead of two per cut, no extra
dependency, and safe with forked DataLoader workers because reads use ``os.pread`` on
descriptors opened per process). Each cut gets two ``TemporalArray`` custom fields, ``soft_ids``
and ``soft_probs`` (plus ``soft_temperature``, the T the targets were made at). Because the
targets travel with the cut, a student may shuffle, sub-sample or bucket the cuts freely.
Manifests written earlier with lhotse's ``NumpyFilesWriter`` (one ``.npy`` file per array) still
load.

Statistics: :func:`bytes_per_frame` and :func:`kl_stored_vs_full` (how much the compression
changes the targets); ``bench/soft_targets.py`` reports both for several ``k``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from lhotse import CutSet
from lhotse.cut import Cut
from tqdm import tqdm

# Importing the archive module registers its lhotse storage type, so every reader of stored soft
# targets (they all go through this module) can load manifests that name ``npy_archive``.
from asr_kd.data.array_archive import atomic_archive_dir
# Reading stored targets belongs to the data layer (batches collate them); re-exported here.
from asr_kd.data.stored_targets import (  # noqa: F401
    SOFT_IDS, SOFT_PROBS, SOFT_TEMPERATURE, collate_soft_targets, has_soft_targets, load_soft_targets,
)
from asr_kd.errors import ConfigError, DataError
from asr_kd.kd.ensemble import TeacherEnsemble
from asr_kd.kd.target_formats import encode_topk

log = logging.getLogger(__name__)

ID_DTYPE = np.dtype(np.int32)
PROB_DTYPE = np.dtype(np.float16)

ArrayLike = np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------
# Top-k compression
# --------------------------------------------------------------------------------------------


def topk_compress(probs: ArrayLike, k: int, renormalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``k`` most probable classes of each frame of ``probs`` (frames x classes).

    Returns ``(ids, p)``: ``ids`` int32 (frames x k) in decreasing order of probability and ``p``
    float16 (frames x k), the kept probabilities divided by their sum (so each row sums to 1
    within float16 precision), or as they are with ``renormalise=False`` (``kd.tail=bucket``).
    """
    p = _as_tensor(probs)
    if p.dim() != 2:
        raise ValueError(f"posteriors must be (frames x classes), got shape {tuple(p.shape)}")
    num_classes = p.shape[1]
    if not 1 <= k <= num_classes:
        raise ConfigError(f"top-k size {k} must be in 1..{num_classes} (the number of classes); set kd.top_k accordingly")
    if p.shape[0] == 0:
        return np.zeros((0, k), ID_DTYPE), np.zeros((0, k), PROB_DTYPE)
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        raise ValueError("posteriors must be finite and non-negative")
    if p.dtype not in (torch.float32, torch.float64):
        p = p.float()
    values, ids = torch.topk(p, k, dim=1)
    mass = values.sum(dim=1, keepdim=True)
    if bool((mass <= 0).any()):
        raise ValueError("a frame's posteriors are all zero; expected probabilities")
    kept = values / mass if renormalise else values
    return ids.to(torch.int32).cpu().numpy(), kept.to(torch.float16).cpu().numpy()


def expand_topk(ids: ArrayLike, probs: ArrayLike, num_classes: int) -> np.ndarray:
    """Return the dense float32 (frames x ``num_classes``) distribution that is ``probs`` at
    ``ids`` and zero elsewhere."""
    ids_np, probs_np = np.asarray(_numpy(ids)), np.asarray(_numpy(probs))
    if ids_np.shape != probs_np.shape or ids_np.ndim != 2:
        raise ValueError(f"ids {ids_np.shape} and probs {probs_np.shape} must both be (frames x k)")
    if ids_np.size and (ids_np.min() < 0 or ids_np.max() >= num_classes):
        raise ValueError(f"class ids must be in 0..{num_classes - 1}, got {ids_np.min()}..{ids_np.max()}")
    dense = np.zeros((ids_np.shape[0], num_classes), dtype=np.float32)
    np.put_along_axis(dense, ids_np.astype(np.int64), probs_np.astype(np.float32), axis=1)
    return dense


def ensemble_soft_targets(
    cuts: Iterable[Cut],
    ensemble: TeacherEnsemble,
    inputs: Callable[[Cut], torch.Tensor],
    temperature: float,
    k: int,
    stats: SoftTargetStats | None = None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(cut_id, ids, probs)``, the top-k compressed posteriors of ``ensemble`` at
    ``temperature`` for each cut, ready for :func:`store_soft_targets` (stage 5).

    ``inputs(cut)`` returns the teachers' input for one cut (e.g. its normalised, spliced
    features); the teachers must map it to logits ``[frames, C]`` (or ``[1, frames, C]``).
    If ``stats`` is given, it accumulates how much the compression changed the targets.
    """
    for cut in cuts:
        log_probs = ensemble(inputs(cut), temperature=temperature)
        if log_probs.dim() == 3 and log_probs.shape[0] == 1:
            log_probs = log_probs[0]
        full = log_probs.exp()
        ids, probs = topk_compress(full, k)
        if stats is not None:
            stats.update(full, ids, probs, log_probs)
        yield cut.id, ids, probs


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def bytes_per_frame(k: int, dtypes: Sequence[np.dtype | str | type] = (ID_DTYPE, PROB_DTYPE)) -> int:
    """Return the payload bytes of one frame holding ``k`` values of each of ``dtypes``: 6 k for
    the stored targets (int32 ids + float16 probabilities); ``bytes_per_frame(C, ["float32"])``
    is a dense float32 posterior over ``C`` classes."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return k * sum(np.dtype(d).itemsize for d in dtypes)


def kl_stored_vs_full(full_probs: ArrayLike, ids: ArrayLike, probs: ArrayLike, full_log_probs: ArrayLike | None = None) -> np.ndarray:
    """Return, per frame, ``KL(stored || full)`` in nats (float64, shape (frames,)).

    This direction is the finite one: the stored distribution is zero outside its top k, so
    ``KL(full || stored)`` is infinite whenever the full distribution has any mass there. With
    exact top-k renormalisation it equals ``-log(mass of the full distribution kept)``; the
    float16 rounding of the stored values is included (they are renormalised in float64 first,
    so the result is >= 0). It is 0 for ``k = C`` up to float16 rounding, and shrinks as ``k``
    grows.

    ``full_log_probs`` (the same frames as log-probabilities, e.g. the ensemble's log-posteriors)
    is used for ``log(full)`` where given. A codebook (``kd.storage=rvq``) can store mass on a
    class that a confident ensemble gives a probability below float32's smallest value; from
    ``full_probs`` alone that term is ``log(0)`` and the mean infinite, from the log-probabilities
    it is the finite cost of that mass.
    """
    ids_np, stored = _kept_inputs(full_probs, ids, probs, full_log_probs)
    if full_log_probs is None:
        with np.errstate(divide="ignore"):
            log_full_at_ids = np.log(_at_ids(full_probs, ids_np))
    else:
        log_full_at_ids = _at_ids(full_log_probs, ids_np)
    return _kept_kl(stored / stored.sum(axis=1, keepdims=True), log_full_at_ids)


def _kept_inputs(full_probs: ArrayLike, ids: ArrayLike, probs: ArrayLike, full_log_probs: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64, stored float64)`` of the KL measures, the shapes of all four checked; the full
    distributions are not copied (:func:`_at_ids` reads them at the ids only)."""
    ids_np = np.asarray(_numpy(ids)).astype(np.int64)
    stored = np.asarray(_numpy(probs), dtype=np.float64)
    full_shape = tuple(np.shape(full_probs))
    if len(full_shape) != 2 or ids_np.shape != stored.shape or ids_np.shape[0] != full_shape[0]:
        raise ValueError(f"expected full (frames x C), ids and probs (frames x k); got {full_shape}, {ids_np.shape}, {stored.shape}")
    if full_log_probs is not None and tuple(np.shape(full_log_probs)) != full_shape:
        raise ValueError(f"full_log_probs {tuple(np.shape(full_log_probs))} must have the shape of full_probs {full_shape}")
    return ids_np, stored


def _at_ids(x: ArrayLike, ids: np.ndarray) -> np.ndarray:
    """``x`` (frames x C) at ``ids`` (frames x k, int64), as float64. The values are picked where
    ``x`` is (a GPU tensor stays there and only frames x k values come back: stage 5's statistics
    on 4,200 senones would otherwise copy and widen every posterior) and widened after the pick,
    which gives the same numbers as widening first."""
    if isinstance(x, torch.Tensor):
        return x.detach().gather(1, torch.from_numpy(ids).to(x.device)).cpu().numpy().astype(np.float64)
    return np.take_along_axis(np.asarray(x), ids, axis=1).astype(np.float64)


def _kept_kl(stored: np.ndarray, log_full_at_ids: np.ndarray) -> np.ndarray:
    """Per frame, ``sum_j stored_j * (log stored_j - log full_j)`` over the kept ids."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(stored > 0, stored * (np.log(stored) - log_full_at_ids), 0.0).sum(axis=1)


def kl_bucketed_vs_full(full_probs: ArrayLike, ids: ArrayLike, probs: ArrayLike, full_log_probs: ArrayLike | None = None) -> np.ndarray:
    """Return, per frame, ``KL(stored || full)`` in nats of targets kept with ``kd.tail=bucket``:
    both distributions over the stored ids plus one class for every other senone (the stored
    rest is ``1 - sum(probs)``, the full one the mass of the full distribution outside ``ids``).
    Exact top-k targets give 0 up to float16 rounding, whatever ``k``: what such targets lose is
    how the rest is spread, which this measure does not see (:func:`topk_mass` says how much).
    Computed where the full distributions are (a GPU tensor stays there), in float64."""
    ids_np, stored = _kept_inputs(full_probs, ids, probs, full_log_probs)
    log_full = _as_tensor(full_probs if full_log_probs is None else full_log_probs).double()
    if full_log_probs is None:
        log_full = log_full.log()
    index = torch.from_numpy(ids_np).to(log_full.device)
    outside = torch.ones(log_full.shape, dtype=torch.bool, device=log_full.device).scatter_(1, index, False)
    # The full rest in log space (a sum of what is left, not 1 minus the kept, which rounds to 0
    # for a confident ensemble while the stored rest keeps some rounding mass).
    log_full_rest = torch.logsumexp(log_full.masked_fill(~outside, -np.inf), dim=1).cpu().numpy()
    no_rest = ~outside.any(dim=1).cpu().numpy()  # every class kept: no rest to compare
    stored_rest = np.where(no_rest, 0.0, np.clip(1.0 - stored.sum(axis=1), 0.0, 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        rest = np.where(stored_rest > 0, stored_rest * (np.log(stored_rest) - log_full_rest), 0.0)
    return _kept_kl(stored, log_full.gather(1, index).cpu().numpy()) + rest


def topk_mass(full_probs: ArrayLike, ids: ArrayLike) -> np.ndarray:
    """Return, per frame, the share of the full distribution's mass at the stored ``ids``."""
    return _at_ids(full_probs, np.asarray(_numpy(ids)).astype(np.int64)).sum(axis=1)


@dataclasses.dataclass
class SoftTargetStats:
    """Running totals over stored frames: how much top-k compression changed the targets."""

    frames: int = 0
    k: int = 0
    num_classes: int = 0
    kl_sum: float = 0.0  # sum over frames of KL(stored || full), nats
    mass_sum: float = 0.0  # sum over frames of the full distribution's mass kept
    bucket: bool = False  # targets kept with kd.tail=bucket: also the KL with the rest as one class
    kl_bucket_sum: float = 0.0

    def update(self, full_probs: ArrayLike, ids: ArrayLike, probs: ArrayLike, full_log_probs: ArrayLike | None = None) -> None:
        """Add the frames of one cut: its full posteriors (and, where known, their logarithms;
        see :func:`kl_stored_vs_full`) and their stored top-k form."""
        self.frames += int(np.shape(ids)[0])
        self.k, self.num_classes = int(np.shape(ids)[1]), int(np.shape(full_probs)[1])
        self.kl_sum += float(kl_stored_vs_full(full_probs, ids, probs, full_log_probs).sum())  # rows renormalised
        if self.bucket:
            self.kl_bucket_sum += float(kl_bucketed_vs_full(full_probs, ids, probs, full_log_probs).sum())
        self.mass_sum += float(topk_mass(full_probs, ids).sum())

    def totals(self) -> np.ndarray:
        """The running totals as one float64 array (frames, k, classes, KL, mass, bucketed KL),
        what :meth:`add` takes: stage 5 under torchrun sends each cut's to rank 0."""
        return np.array([self.frames, self.k, self.num_classes, self.kl_sum, self.mass_sum, self.kl_bucket_sum], dtype=np.float64)

    def add(self, totals: np.ndarray) -> None:
        """Add another :class:`SoftTargetStats`'s :meth:`totals` (one cut's: the sums then equal
        those of :meth:`update` with that cut, bit for bit)."""
        frames, k, classes, kl, mass, kl_bucket = (float(v) for v in totals)
        self.frames += int(frames)
        self.k, self.num_classes = int(k), int(classes)
        self.kl_sum += kl
        self.mass_sum += mass
        self.kl_bucket_sum += kl_bucket

    def summary(self, stored_bytes_per_frame: int | None = None) -> dict[str, float]:
        """Return frames, stored (default: int32 + float16 top-k) and dense float32 bytes per
        frame, the mean KL(stored || full) of the rows renormalised, the mean mass kept, and for
        ``bucket`` targets ``mean_kl_bucketed_vs_full`` (:func:`kl_bucketed_vs_full`)."""
        n = max(self.frames, 1)
        out = {
            "frames": self.frames,
            "bytes_per_frame": bytes_per_frame(self.k) if stored_bytes_per_frame is None else stored_bytes_per_frame,
            "dense_float32_bytes_per_frame": bytes_per_frame(self.num_classes, ["float32"]),
            "mean_kl_stored_vs_full": self.kl_sum / n,
            "mean_mass_kept": self.mass_sum / n,
        }
        if self.bucket:
            out["mean_kl_bucketed_vs_full"] = self.kl_bucket_sum / n
        return out


# --------------------------------------------------------------------------------------------
# Storage on cuts
# --------------------------------------------------------------------------------------------


def store_soft_targets(
    cuts: CutSet,
    targets: Iterable[tuple[str, np.ndarray, np.ndarray]],
    storage_path: Path | str,
    k: int,
    temperature: float | None = None,
    frame_shift: float = 0.01,
    storage: str = "int32-fp16",
) -> CutSet:
    """Write the top-k soft targets ``(cut_id, ids, probs)`` in format ``storage``
    (``int32-fp16`` or ``uint16-uint8``, :mod:`asr_kd.kd.target_formats`) into one archive,
    ``storage_path/arrays.npa``, and attach them to the cuts (:func:`store_target_arrays`).

    ``ids`` and ``probs`` (frames x ``k``) come from :func:`topk_compress`. Returns the cuts that
    received targets, each with custom fields ``soft_ids`` and ``soft_probs``."""
    if k < 1:
        raise ConfigError(f"top-k size must be >= 1, got {k}; set kd.top_k accordingly")

    def arrays() -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        for cut_id, ids, probs in targets:
            ids, probs = _checked_shapes(cut_id, ids, probs, k)
            yield cut_id, encode_topk(ids, probs, storage)

    custom = {} if temperature is None else {SOFT_TEMPERATURE: float(temperature)}
    return store_target_arrays(cuts, arrays(), storage_path, custom=custom, frame_shift=frame_shift)


def store_target_arrays(
    cuts: CutSet,
    targets: Iterable[tuple[str, dict[str, np.ndarray]]],
    storage_path: Path | str,
    shared: dict[str, np.ndarray] | None = None,
    custom: dict[str, float | int | str] | None = None,
    frame_shift: float = 0.01,
) -> CutSet:
    """Write each cut's target arrays ``(cut_id, {field: array})`` (frames first) into one
    archive, ``storage_path/arrays.npa``, and attach them to the cuts as temporal custom fields;
    the ``shared`` arrays (e.g. a codebook) are stored once and attached to every cut, and the
    ``custom`` values (e.g. the temperature) are set on every cut.

    Every array's frames must match the cut's feature frames (or, for a cut without features,
    its duration at ``frame_shift``). The directory ``storage_path`` is written under a temporary
    name and renamed on success, replacing an older one (also one of per-cut ``.npy`` files); the
    manifests name the final path.

    Returns the cuts that received targets, in the order of ``cuts``. Targets for unknown cut ids
    are skipped, and cuts without targets are left out; both are counted and logged. A cut id seen
    twice, or frames that do not match the cut, raise :class:`DataError`.
    """
    storage_path = Path(storage_path)
    by_id = {cut.id: cut for cut in cuts}
    fields: dict[str, dict[str, Any]] = {}
    unknown = 0
    with atomic_archive_dir(storage_path) as writer:
        shared_fields = {name: writer.store_array(f"shared.{name}", value) for name, value in (shared or {}).items()}
        for cut_id, arrays in tqdm(targets, desc="storing soft targets", unit="cut", leave=False):
            cut = by_id.get(cut_id)
            if cut is None:
                unknown += 1
                log.warning("soft targets for cut %s skipped: no such cut in the CutSet", cut_id)
                continue
            if cut_id in fields:
                raise DataError(f"soft targets for cut {cut_id} were given twice; pass each cut's targets once")
            expected = _expected_frames(cut, frame_shift)
            shift = cut.features.frame_shift if cut.has_features else frame_shift
            fields[cut_id] = {}
            for name, value in arrays.items():
                if value.shape[0] != expected:
                    raise DataError(
                        f"soft targets for cut {cut_id} have {value.shape[0]} frames but the cut has {expected}; "
                        "compute the targets from these cuts' features"
                    )
                fields[cut_id][name] = writer.store_array(f"{cut_id}.{name}", value, frame_shift=shift, temporal_dim=0, start=cut.start)
    out = []
    for cut in cuts:
        arrays = fields.get(cut.id)
        if arrays is None:
            continue
        for name, manifest in {**arrays, **shared_fields, **(custom or {})}.items():
            cut = cut.with_custom(name, manifest)
        out.append(cut)
    missing = len(by_id) - len(fields)
    if unknown or missing:
        log.warning("soft targets: %d cut(s) without targets left out, %d target(s) for unknown cuts skipped", missing, unknown)
    log.info("soft targets for %d cut(s) written to %s", len(out), storage_path)
    return CutSet.from_cuts(out)


def _checked_shapes(cut_id: str, ids: ArrayLike, probs: ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(ids, probs)`` as numpy arrays after checking that they are integer ids and
    probabilities of one shape (frames x k)."""
    ids, probs = np.asarray(_numpy(ids)), np.asarray(_numpy(probs))
    if ids.ndim != 2 or ids.shape != probs.shape or ids.shape[1] != k:
        raise DataError(f"soft targets for cut {cut_id}: expected ids and probs of shape (frames x {k}), got {ids.shape} and {probs.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"soft targets for cut {cut_id}: ids must be integers, got {ids.dtype}")
    return ids, probs


def _expected_frames(cut: Cut, frame_shift: float) -> int:
    """Frames of the cut's features, or (without features) of its duration at ``frame_shift``."""
    if cut.has_features:
        return int(cut.num_frames)
    from lhotse.array import seconds_to_frames

    return seconds_to_frames(cut.duration, frame_shift)


def _as_tensor(x: ArrayLike) -> torch.Tensor:
    # A tensor stays on its device: top-k runs there (the GPU, for online teachers) before the copy.
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x.detach()


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
