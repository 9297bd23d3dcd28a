"""Decoding tuned on dev, applied to test: Kaldi's scoring practice (local/score.sh sweeps the
language-model weight on a development set and reports the test set at the best one).

With one decoding graph, the acoustic scale ``a`` and the LM weight ``1 / a`` are the same dial:
the best path minimises ``graph cost + a * acoustic cost``. Kaldi decodes lattices once and
rescores them at each weight; our fast decoder keeps only the best path, and the lattice decoder
that can return lattices (``LatticeSimpleDecoder``, no max-active) was measured 30 times slower
on mini, so each candidate scale is one decoding of the dev part. To keep that affordable the grid
is searched, not swept: from the grid point nearest the default, both neighbours, then onwards in
the better direction while the dev errors fall (WER against the scale is close to unimodal). The
scale with the fewest dev word errors is the system's, and the test parts are decoded once with
it. Every system of a table (GMMs and networks) gets the same grid, beam and max-active.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable, Mapping, Sequence

from asr_kd.config import DecodeConfig
from asr_kd.errors import ConfigError
from asr_kd.metrics.wer import WerResult

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ScaleSweep:
    """The dev WER of every candidate acoustic scale, and the one chosen."""

    part: str
    scales: tuple[float, ...]
    errors: tuple[int, ...]
    ref_words: int
    best: float

    @property
    def wers(self) -> tuple[float, ...]:
        """Return the dev WER (a fraction) of each scale of :attr:`scales`."""
        return tuple(e / self.ref_words if self.ref_words else math.nan for e in self.errors)

    @property
    def at_grid_edge(self) -> bool:
        """True when the best scale is the first or last one decoded: :func:`sweep_scales` only
        stops there at the end of the grid, so the best scale may lie beyond the grid."""
        return len(self.scales) > 1 and self.best in (self.scales[0], self.scales[-1])

    def describe(self) -> str:
        """Return a one-line account, e.g. ``dev-clean WER 31.2% at 0.0625 ... best 0.1``."""
        cells = ", ".join(f"{s:g}: {100 * w:.1f}%" for s, w in zip(self.scales, self.wers))
        edge = " (at the edge of decode.acoustic_scales: the best may lie beyond it; widen the grid)" if self.at_grid_edge else ""
        return f"acoustic scale on {self.part} ({cells}): best {self.best:g}{edge}"

    def to_dict(self) -> dict:
        """Return the sweep as JSON-serialisable data (read back by :meth:`from_dict`)."""
        return {"part": self.part, "scales": list(self.scales), "errors": list(self.errors), "ref_words": self.ref_words, "best": self.best}

    @classmethod
    def from_dict(cls, data: Mapping) -> ScaleSweep:
        """Return the sweep stored by :meth:`to_dict`."""
        return cls(str(data["part"]), tuple(float(s) for s in data["scales"]), tuple(int(e) for e in data["errors"]),
                   int(data["ref_words"]), float(data["best"]))


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """Return ``scales`` sorted and without repeats; ConfigError for an empty grid or a scale <= 0."""
    grid = tuple(sorted({float(s) for s in scales}))
    if not grid or grid[0] <= 0:
        raise ConfigError(f"decode.acoustic_scales must be a non-empty list of scales > 0, got {list(scales)}")
    return grid


def choose_scale(scales: Sequence[float], errors: Sequence[int], default: float) -> float:
    """Return the scale with the fewest errors; among equals, the one nearest ``default`` on a log
    scale (a tie on a small dev set says nothing, so the conventional value is kept)."""
    if len(scales) != len(errors) or not scales:
        raise ValueError(f"choose_scale needs one error count per scale, got {len(scales)} scales and {len(errors)} counts")
    fewest = min(errors)
    tied = [s for s, e in zip(scales, errors) if e == fewest]
    return min(tied, key=lambda s: (abs(math.log(s / default)), s))


def sweep_scales(part: str, scales: Sequence[float], decode: Callable[[float], WerResult], default: float = 0.1) -> tuple[ScaleSweep, dict[float, WerResult]]:
    """Search the grid ``scales`` for the scale with the fewest errors on ``part`` (``decode(scale)``
    decodes it and returns its scoring): the point nearest ``default`` and its neighbours first,
    then onwards from the best while it lies at the edge of what was decoded. Returns the sweep
    (the decoded scales only, and the chosen one) and each decoded scale's :class:`WerResult`."""
    grid = check_scales(scales)
    results: dict[float, WerResult] = {}

    def errors_at(i: int) -> int:
        if grid[i] not in results:
            results[grid[i]] = decode(grid[i])
        return results[grid[i]].errors

    start = min(range(len(grid)), key=lambda i: abs(math.log(grid[i] / default)))
    for i in (start, start - 1, start + 1):
        if 0 <= i < len(grid):
            errors_at(i)
    while True:
        done = sorted(i for i in range(len(grid)) if grid[i] in results)
        best = grid.index(choose_scale([grid[i] for i in done], [results[grid[i]].errors for i in done], default))
        step = -1 if best == done[0] else (1 if best == done[-1] else 0)
        if step == 0 or not 0 <= best + step < len(grid):
            break
        errors_at(best + step)
    done_scales = tuple(s for s in grid if s in results)
    sweep = ScaleSweep(part, done_scales, tuple(results[s].errors for s in done_scales), results[done_scales[0]].ref_words,
                       grid[best])
    log.info("%s", sweep.describe())
    return sweep, results


def describe_decoding(decode_config: DecodeConfig, dev_part: str, networks: bool = True) -> str:
    """Return the sentences a table prints about how its systems were decoded (``networks``: and
    how network posteriors become acoustic scores)."""
    seeds = "; a student's other seeds use its first seed's scale, and the dev WER shown is the first seed's" if networks else ""
    how = (f"acoustic scale chosen per system on {dev_part} by searching {{{', '.join(f'{s:g}' for s in decode_config.acoustic_scales)}}} "
           f"(the fewest word errors; the test parts are never used to choose it{seeds})" if decode_config.acoustic_scales
           else f"acoustic scale {decode_config.acoustic_scale:g} (not tuned)")
    return (f"Decoding: HCLG with the stage-2 LM, beam {decode_config.beam:g}, max-active {decode_config.max_active}, "
            f"{decode_config.decoder} decoder, the same for every system of the table; {how}."
            + (" Networks: log posteriors minus log senone priors (stage 3 train alignments) times the acoustic scale." if networks else ""))
