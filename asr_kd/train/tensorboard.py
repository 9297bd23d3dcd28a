"""TensorBoard scalars that never stop a training run: a full disk, a quota or a read-only
folder under ``<exp>/tensorboard`` ends TensorBoard logging with one warning naming the folder,
and training goes on (its checkpoints, written through :mod:`asr_kd.train.checkpoint`, report
the same condition in one line when they cannot be written)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from asr_kd.utils import STORAGE_ERRNOS

log = logging.getLogger(__name__)


class TensorBoardLog:
    """``torch.utils.tensorboard.SummaryWriter`` for scalars under ``log_dir``; after a storage
    error it logs one warning and writes nothing more (:attr:`stopped` says why)."""

    def __init__(self, log_dir: Path | str, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import, only when training

        self.log_dir = Path(log_dir)
        self.stopped: str | None = None
        self._writer: Any = None
        self._guard(lambda: setattr(self, "_writer", SummaryWriter(str(self.log_dir), purge_step=purge_step)))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._guard(lambda: self._writer.add_scalar(tag, value, step))

    def flush(self) -> None:
        if self._writer is not None:
            self._guard(self._writer.flush)

    def close(self) -> None:
        if self._writer is not None:
            self._guard(self._writer.close)
            self._writer = None

    def _guard(self, write: Any) -> None:
        try:
            write()
        except OSError as err:
            if err.errno not in STORAGE_ERRNOS:
                raise
            self.stopped = f"{err.strerror or err} writing {self.log_dir}"
            log.warning("TensorBoard log %s: %s; TensorBoard logging stopped, training goes on", self.log_dir, err.strerror or err)
            writer, self._writer = self._writer, None
            if writer is not None:
                with contextlib.suppress(OSError):
                    writer.close()
