"""Stage 5's teacher inference over the training set, data-parallel under ``torchrun``.

The ensemble's forward passes are the cost of stage 5, and on a GPU so is the per-cut work that
turns a cut's posteriors into its stored arrays (top-k, rvq codes, the statistics), when one
process does it for all ranks. So every rank scores a share of the cuts *and* does that work on
its own device, and rank 0, alone, writes the archive in manifest order: the archive is written
once, by one process, whatever its format. :class:`ShardedPosteriors` (rank 0) has the signature
of :func:`asr_kd.kd.ensemble.ensemble_log_posteriors` plus the per-cut ``work`` and the arrays
``shared`` with the other ranks (stage 5's rvq codebooks, which rank 0 fits first, alone); the
other ranks run :func:`serve_posteriors`.

The shares are whole batches: the batches a single process would make (the same sampler on the
same cuts), batch ``b`` scored by rank ``b mod world_size``. Each batch is thus run exactly as in a
single process (same cuts, same padding), and on the same device and thread count the merged
results equal the single-process ones bit for bit. Rank ``r`` sends each cut of its batches in
order, as one ``.npz`` of plain arrays (what ``work`` made of its log-posteriors; loaded with
``allow_pickle=False``), point to point over gloo; rank 0 receives them where they fall in
the manifest. A blocking send waits for rank 0's receive, so a rank runs at most one batch ahead of
rank 0, and all ranks score at once.

Rank 0 first broadcasts whether there is work (the stage may be up to date) and how many cuts,
then its shared arrays and its settings (stage 5's kd config, as text): a rank started with other
settings stops with a DataError rather than store targets made otherwise.
:meth:`ShardedPosteriors.release` sends "no work" when the stage asked for no posteriors.
"""

from __future__ import annotations

import io
import logging
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from lhotse import CutSet
from lhotse.cut import Cut

from asr_kd.data.features import CmvnStats
from asr_kd.data.frames import make_sampler
from asr_kd.errors import DataError
from asr_kd.kd.ensemble import ensemble_log_posteriors
from asr_kd.train.ddp import DistInfo

log = logging.getLogger(__name__)

_STOP, _GO = 0, 1

Arrays = dict[str, np.ndarray]
Work = Callable[[torch.Tensor], Arrays]  # a cut's log-posteriors -> the arrays rank 0 receives
_SETTINGS = "__settings__"  # rank 0's settings, broadcast with the shared arrays


def _transfer_group(info: DistInfo) -> object | None:
    """Return the process group for the transfers: gloo, which sends CPU tensors (a new gloo group
    when the default one is NCCL). Every rank must call it at the same point."""
    if not info.distributed:
        return None
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def _batches(cuts: CutSet, max_duration: float) -> list[CutSet]:
    """The batches of a single process (:func:`ensemble_log_posteriors`'s sampler), in order."""
    return [CutSet.from_cuts(list(b)) for b in make_sampler(cuts, max_duration, shuffle=False, seed=0, bucketing=False)]


def _header(values: Sequence[int], group: object | None) -> list[int]:
    """Broadcast rank 0's ``values`` (two integers) and return them on every rank."""
    t = torch.tensor(list(values), dtype=torch.int64)
    dist.broadcast(t, src=0, group=group)
    return [int(v) for v in t.tolist()]


def _pack(arrays: Mapping[str, np.ndarray]) -> torch.Tensor:
    """``arrays`` as the bytes of one ``.npz`` (plain dtypes only), in a uint8 tensor."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def _unpack(packed: torch.Tensor) -> Arrays:
    with np.load(io.BytesIO(packed.numpy().tobytes()), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _send_arrays(arrays: Mapping[str, np.ndarray], group: object | None) -> None:
    packed = _pack(arrays)
    dist.send(torch.tensor([packed.numel()], dtype=torch.int64), dst=0, group=group)
    dist.send(packed, dst=0, group=group)


def _recv_arrays(src: int, group: object | None) -> Arrays:
    size = torch.zeros(1, dtype=torch.int64)
    dist.recv(size, src=src, group=group)
    packed = torch.empty(int(size), dtype=torch.uint8)
    dist.recv(packed, src=src, group=group)
    return _unpack(packed)


def _broadcast_arrays(arrays: Mapping[str, np.ndarray] | None, group: object | None) -> Arrays:
    """Broadcast rank 0's ``arrays`` (None on the other ranks) and return them on every rank."""
    packed = _pack(arrays) if arrays is not None else None
    size = torch.tensor([0 if packed is None else packed.numel()], dtype=torch.int64)
    dist.broadcast(size, src=0, group=group)
    if packed is None:
        packed = torch.empty(int(size), dtype=torch.uint8)
    dist.broadcast(packed, src=0, group=group)
    return _unpack(packed)


class ShardedPosteriors:
    """Rank 0's side: call it as :func:`ensemble_log_posteriors` with a per-cut ``work`` (``device``
    aside: the ranks score on ``info.device``). Alone (not under torchrun), it is that function
    followed by ``work``. ``settings``: a text every other rank's :func:`serve_posteriors` must have
    been given too (stage 5: its kd config)."""

    def __init__(self, info: DistInfo, settings: str = "") -> None:
        self.info = info
        self.settings = settings
        self.group = _transfer_group(info)
        self.started = False

    def __call__(self, models: Sequence[torch.nn.Module], cuts: CutSet, cmvn: CmvnStats | None, temperature: float = 1.0,
                 fusion: str = "arithmetic", max_duration: float = 20.0, *, work: Work,
                 shared: Mapping[str, np.ndarray] | None = None) -> Iterator[tuple[Cut, Arrays]]:
        """Yield ``(cut, work(log_probs))`` for every cut of ``cuts`` in manifest order, rank
        ``r``'s batches scored and worked by rank ``r`` on its device; the other ranks build their
        ``work`` from ``shared`` (:func:`serve_posteriors`)."""
        if not self.info.distributed:
            for cut, log_probs in ensemble_log_posteriors(models, cuts, cmvn, temperature, fusion, max_duration, self.info.device,
                                                          on_device=True):
                yield cut, work(log_probs)
            return
        if self.started:
            raise RuntimeError("ShardedPosteriors: one call per torchrun job (the other ranks serve one request)")
        batches = _batches(cuts, max_duration)  # before the header: if this fails, release() still stops the other ranks
        _header([_GO, sum(len(b) for b in batches)], self.group)
        self.started = True
        _broadcast_arrays({**(shared or {}), _SETTINGS: np.frombuffer(self.settings.encode(), dtype=np.uint8)}, self.group)
        world = self.info.world_size
        log.info("stage 5: %d batches of cuts over %d ranks (batch b on rank b mod %d), each working on its own cuts",
                 len(batches), world, world)
        for b, batch in enumerate(batches):
            owner = b % world
            if owner == 0:
                for cut, log_probs in ensemble_log_posteriors(models, batch, cmvn, temperature, fusion, max_duration, self.info.device,
                                                              on_device=True):
                    yield cut, work(log_probs)
                continue
            for cut in batch:
                yield cut, _recv_arrays(owner, self.group)

    def release(self) -> None:
        """Tell the other ranks that no posteriors are wanted, if none were asked for (the stage
        was up to date, or failed before scoring); nothing otherwise."""
        if self.info.distributed and not self.started:
            self.started = True
            _header([_STOP, 0], self.group)


def serve_posteriors(load: Callable[[], tuple[Sequence[torch.nn.Module], CutSet, CmvnStats | None]], temperature: float, fusion: str,
                     max_duration: float, info: DistInfo, make_work: Callable[[Arrays], Work], settings: str = "") -> int:
    """On rank ``r > 0``: wait for rank 0; when it asks for posteriors, ``load()`` the teachers,
    cuts and CMVN (the same as rank 0's), score batches ``r, r + world, ...`` and send rank 0 what
    ``make_work(rank 0's shared arrays)`` makes of each cut's. Returns the number of cuts scored (0
    when rank 0 wanted none). DataError when this rank's ``settings`` or cuts are not rank 0's."""
    group = _transfer_group(info)
    go, num_cuts = _header([0, 0], group)
    if go != _GO:
        return 0
    shared = _broadcast_arrays(None, group)
    theirs = shared.pop(_SETTINGS).tobytes().decode()
    if theirs != settings:
        raise DataError(f"stage 5 under torchrun: rank {info.rank} was started with settings {settings!r}, rank 0 with {theirs!r}; "
                        "every rank must run the same command")
    work = make_work(shared)
    models, cuts, cmvn = load()
    batches = _batches(cuts, max_duration)
    mine = sum(len(b) for b in batches)
    if mine != num_cuts:
        raise DataError(f"stage 5 under torchrun: rank {info.rank} reads {mine} training cuts, rank 0 {num_cuts}; "
                        "every rank must see the same data and exp folders")
    scored = 0
    for batch in batches[info.rank::info.world_size]:
        for _cut, log_probs in ensemble_log_posteriors(models, batch, cmvn, temperature, fusion, max_duration, info.device, on_device=True):
            _send_arrays(work(log_probs), group)
            scored += 1
    log.info("stage 5: rank %d scored %d of %d cuts for rank 0", info.rank, scored, num_cuts)
    return scored
