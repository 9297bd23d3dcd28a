"""Stage 5's teacher inference over the training set, data-parallel under ``torchrun``.

The ensemble's forward passes are the cost of stage 5; storing the targets is cheap. So every rank
scores a share of the cuts and rank 0, alone, turns the posteriors into stored targets with
stage 5's own code, in manifest order: the archive is written once, by one process, whatever its
format. :class:`ShardedPosteriors` (rank 0) has the signature of
:func:`asr_kd.kd.ensemble.ensemble_log_posteriors` and yields what it yields; the other ranks run
:func:`serve_posteriors`.

The shares are whole batches: the batches a single process would make (the same sampler on the
same cuts), batch ``b`` scored by rank ``b mod world_size``. Each batch is thus run exactly as in a
single process (same cuts, same padding), and on the same device and thread count the merged
posteriors equal the single-process ones bit for bit. Rank ``r`` sends the log-posteriors of its
batches' cuts in order (a shape, then float32 values, point to point over gloo); rank 0 receives
them where they fall in the manifest. A blocking send waits for rank 0's receive, so a rank runs at
most one batch ahead of rank 0, and all ranks score at once.

Rank 0 first broadcasts whether there is work (the stage may be up to date) and how many cuts, so
that the other ranks either score their share or leave; :meth:`ShardedPosteriors.release` sends
"no work" when the stage asked for no posteriors.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator, Sequence

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


class ShardedPosteriors:
    """Rank 0's side: call it as :func:`ensemble_log_posteriors` (``device`` aside: the ranks
    score on ``info.device``). Alone (not under torchrun), it is that function."""

    def __init__(self, info: DistInfo) -> None:
        self.info = info
        self.group = _transfer_group(info)
        self.started = False

    def __call__(self, models: Sequence[torch.nn.Module], cuts: CutSet, cmvn: CmvnStats | None, temperature: float = 1.0,
                 fusion: str = "arithmetic", max_duration: float = 20.0, on_device: bool = False) -> Iterator[tuple[Cut, torch.Tensor]]:
        """Yield ``(cut, log_probs)`` for every cut of ``cuts`` in manifest order, rank ``r``'s
        batches scored by rank ``r`` (``on_device``: rank 0's own on its device, the others' on the CPU)."""
        if not self.info.distributed:
            yield from ensemble_log_posteriors(models, cuts, cmvn, temperature, fusion, max_duration, self.info.device, on_device)
            return
        if self.started:
            raise RuntimeError("ShardedPosteriors: one call per torchrun job (the other ranks serve one request)")
        self.started = True
        batches = _batches(cuts, max_duration)
        _header([_GO, sum(len(b) for b in batches)], self.group)
        world = self.info.world_size
        log.info("stage 5: %d batches of cuts over %d ranks (batch b on rank b mod %d)", len(batches), world, world)
        for b, batch in enumerate(batches):
            owner = b % world
            if owner == 0:
                yield from ensemble_log_posteriors(models, batch, cmvn, temperature, fusion, max_duration, self.info.device, on_device)
                continue
            for cut in batch:
                shape = torch.zeros(2, dtype=torch.int64)
                dist.recv(shape, src=owner, group=self.group)
                log_probs = torch.empty(int(shape[0]), int(shape[1]), dtype=torch.float32)
                dist.recv(log_probs, src=owner, group=self.group)
                yield cut, log_probs

    def release(self) -> None:
        """Tell the other ranks that no posteriors are wanted, if none were asked for (the stage
        was up to date, or failed before scoring); nothing otherwise."""
        if self.info.distributed and not self.started:
            self.started = True
            _header([_STOP, 0], self.group)


def serve_posteriors(load: Callable[[], tuple[Sequence[torch.nn.Module], CutSet, CmvnStats | None]], temperature: float, fusion: str,
                     max_duration: float, info: DistInfo) -> int:
    """On rank ``r > 0``: wait for rank 0; when it asks for posteriors, ``load()`` the teachers,
    cuts and CMVN (the same as rank 0's), score batches ``r, r + world, ...`` and send them to rank
    0. Returns the number of cuts scored (0 when rank 0 wanted none). DataError when this rank's
    cuts are not rank 0's."""
    group = _transfer_group(info)
    go, num_cuts = _header([0, 0], group)
    if go != _GO:
        return 0
    models, cuts, cmvn = load()
    batches = _batches(cuts, max_duration)
    mine = sum(len(b) for b in batches)
    if mine != num_cuts:
        raise DataError(f"stage 5 under torchrun: rank {info.rank} reads {mine} training cuts, rank 0 {num_cuts}; "
                        "every rank must see the same data and exp folders")
    scored = 0
    for batch in batches[info.rank::info.world_size]:
        for _cut, log_probs in ensemble_log_posteriors(models, batch, cmvn, temperature, fusion, max_duration, info.device):
            log_probs = log_probs.to(torch.float32).cpu().contiguous()
            dist.send(torch.tensor(log_probs.shape, dtype=torch.int64), dst=0, group=group)
            dist.send(log_probs, dst=0, group=group)
            scored += 1
    log.info("stage 5: rank %d scored %d of %d cuts for rank 0", info.rank, scored, num_cuts)
    return scored
