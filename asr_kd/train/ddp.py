"""Distributed data parallel set-up under ``torchrun`` (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, logs and TensorBoard (rank 0)."""
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """Return the device for ``name`` (``auto``, ``cpu``, ``cuda``); ``cuda`` uses ``local_rank``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            from asr_kd.errors import ConfigError

            raise ConfigError("train.device=cuda but no CUDA device is visible; use --set device=cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment)
    and return this process's :class:`DistInfo`; a plain run returns rank 0 of 1.

    The backend follows the device: NCCL for CUDA, gloo for CPU. Calling it again (the next
    model of an ensemble) reuses the group: it is created once per process and left at exit.
    Destroying and re-creating the default group inside one torchrun job can hang (the new
    group's rendezvous keys collide with the old ones in torchrun's store), so nothing else
    destroys it.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world_size <= 1:
        return DistInfo(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave_group)
    info = DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)
    log.info("DDP: rank %d of %d on %s", info.rank, info.world_size, device)
    return info


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if info.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Return the element-wise sum of ``values`` over all ranks (``values`` itself when alone)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Return rank 0's ``flag`` on every rank (so all ranks stop together)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=info.device if info.device.type == "cuda" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


def _leave_group() -> None:
    """Leave the process group at exit (registered by :func:`init_distributed`)."""
    if dist.is_initialized():
        dist.destroy_process_group()
