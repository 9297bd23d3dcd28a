"""Mutable training state, kept apart from the hyperparameters (:class:`asr_kd.config.TrainConfig`).

Everything a resumed run needs to continue exactly where an interrupted one stopped, other than
the model and optimizer weights: counters, the best dev metric, early-stopping patience, and the
random number generators' states.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import torch


@dataclasses.dataclass
class TrainState:
    """Counters and model-selection state of one training run.

    ``batch_in_epoch`` counts the batches of the current epoch that already took an optimizer
    step: the sampler is rebuilt from (seed, epoch) on resume and skips that many.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int = -1
    epochs_without_improvement: int = 0
    finished: bool = False
    stop_reason: str = ""
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # dev metrics per epoch

    def to_dict(self) -> dict[str, Any]:
        """Return a plain dict (for checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        """Rebuild a state written by :meth:`to_dict`."""
        return cls(**data)

    def improved(self, value: float, mode: str) -> bool:
        """Return whether ``value`` beats the best metric so far (``mode`` ``max`` or ``min``)."""
        if self.best_metric is None or value != value:  # NaN never improves, but a first value counts
            return self.best_metric is None and value == value
        return value > self.best_metric if mode == "max" else value < self.best_metric


def rng_state() -> dict[str, Any]:
    """Return the states of Python's, NumPy's and torch's (CPU and CUDA) generators as tensors and
    plain values only, so that a checkpoint holding them loads with ``torch.load(weights_only=True)``."""
    version, mt_words, gauss_next = random.getstate()
    bit_generator, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt_words, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": bit_generator,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states saved by :func:`rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["bit_generator"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
