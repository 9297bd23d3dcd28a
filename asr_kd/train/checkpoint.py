"""Checkpoints: written atomically, named by step, the last K kept, read back for resuming.

A checkpoint is one ``torch.save`` dict: ``model`` (state dict of the unwrapped model),
``optimizer``, ``train_state`` (:class:`TrainState` as a dict), ``rng`` (generator states),
``config`` (the TrainConfig as a dict) and ``extra`` (what the caller needs to rebuild the model,
e.g. its config and number of classes). It holds tensors and plain Python values only, and is
read with ``torch.load(weights_only=True)``: a checkpoint someone else made cannot run code when
it is loaded (a full unpickler would call whatever the file names).
"""

from __future__ import annotations

import logging
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from asr_kd.errors import DataError
from asr_kd.utils import atomic_path

log = logging.getLogger(__name__)

_STEP_RE = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_dir(exp_dir: Path | str) -> Path:
    """The folder of periodic checkpoints of an experiment."""
    return Path(exp_dir) / "checkpoints"


def step_checkpoint_path(exp_dir: Path | str, step: int) -> Path:
    """Path of the periodic checkpoint taken after ``step`` optimizer steps."""
    return checkpoint_dir(exp_dir) / f"step-{step:09d}.pt"


def save_checkpoint(path: Path | str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (a crash leaves the old file or none, never half
    a file); return ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def list_checkpoints(exp_dir: Path | str) -> list[Path]:
    """Return the periodic checkpoints of ``exp_dir``, oldest (lowest step) first."""
    d = checkpoint_dir(exp_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: Path | str) -> int:
    """Return the step a periodic checkpoint's name carries (``step-1200.pt`` -> 1200)."""
    m = _STEP_RE.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not a periodic checkpoint (step-<N>.pt)")
    return int(m.group(1))


def latest_checkpoint(exp_dir: Path | str) -> Path | None:
    """Return the periodic checkpoint with the highest step, or None."""
    found = list_checkpoints(exp_dir)
    return found[-1] if found else None


def prune_checkpoints(exp_dir: Path | str, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest periodic checkpoints; return the deleted paths."""
    found = list_checkpoints(exp_dir)
    doomed = found[: max(len(found) - keep, 0)]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def copy_checkpoint(src: Path | str, dst: Path | str) -> None:
    """Copy a checkpoint atomically (``best.pt``, ``final.pt``)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a missing or unreadable file raises
    :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist; train first or pass an existing .pt file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # The restricted unpickler refuses any global (a class or function to call) by name.
        if "GLOBAL" in str(err):
            raise DataError(
                f"checkpoint {path} names Python objects other than tensors and plain values, so it was not loaded "
                "(loading it could run code); use a checkpoint written by asr-kd"
            ) from None
        raise DataError(f"checkpoint {path} cannot be read (UnpicklingError); delete it and resume from an older one") from None
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise DataError(f"checkpoint {path} cannot be read ({type(err).__name__}); delete it and resume from an older one") from None
