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

With a grid of word insertion penalties as well (``decode.insertion_penalties``; Kaldi's score.sh
sweeps ``--word_ins_penalty`` beside the LM weight), the scale search runs at each penalty the
penalty search reaches, searched the same way (from the penalty nearest 0, its neighbours, then
onwards while the best errors fall): :func:`sweep_scales_and_penalties`. CTC stage 7 can search a
blank penalty on HLG the same way instead (``decode.ctc_blank_penalties``; ``penalty_name``
:data:`BLANK_PENALTY`).
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

WORD_PENALTY, BLANK_PENALTY = "word insertion penalty", "blank penalty"
PENALTY_OPTIONS = {WORD_PENALTY: "decode.insertion_penalties", BLANK_PENALTY: "decode.ctc_blank_penalties"}


@dataclasses.dataclass(frozen=True)
class ScaleSweep:
    """The dev WER of every candidate acoustic scale, and the one chosen."""

    part: str
    scales: tuple[float, ...]
    errors: tuple[int, ...]
    ref_words: int
    best: float
    # The word insertion penalty every decoding of this sweep used (asr_kd/decode/penalty.py), and,
    # when penalties were searched too, the fewest errors reached at each penalty tried.
    penalty: float = 0.0
    penalty_errors: tuple[tuple[float, int], ...] = ()
    # What the penalty is: a word insertion penalty, or (CTC on HLG) a blank penalty.
    penalty_name: str = WORD_PENALTY

    @property
    def wers(self) -> tuple[float, ...]:
        """Return the dev WER (a fraction) of each scale of :attr:`scales`."""
        return tuple(e / self.ref_words if self.ref_words else math.nan for e in self.errors)

    @property
    def at_grid_edge(self) -> bool:
        """True when the best scale is the first or last one decoded: :func:`sweep_scales` only
        stops there at the end of the grid, so the best scale may lie beyond the grid."""
        return len(self.scales) > 1 and self.best in (self.scales[0], self.scales[-1])

    @property
    def penalty_at_grid_edge(self) -> bool:
        """True when penalties were searched and the chosen one is the first or last tried (the
        penalty search, like the scale search, only stops there at the end of its grid)."""
        return len(self.penalty_errors) > 1 and self.penalty in (self.penalty_errors[0][0], self.penalty_errors[-1][0])

    @property
    def edges(self) -> tuple[str, ...]:
        """The grids whose edge the choice lies at: ``"acoustic scale"``, the penalty's
        (:attr:`penalty_name`), both or none (where the best may lie beyond what was searched)."""
        return (("acoustic scale",) if self.at_grid_edge else ()) + ((self.penalty_name,) if self.penalty_at_grid_edge else ())

    def describe(self) -> str:
        """Return a one-line account, e.g. ``dev-clean WER 31.2% at 0.0625 ... best 0.1``."""
        cells = ", ".join(f"{s:g}: {100 * w:.1f}%" for s, w in zip(self.scales, self.wers))
        edge = " (at the edge of decode.acoustic_scales: the best may lie beyond it; widen the grid)" if self.at_grid_edge else ""
        text = f"acoustic scale on {self.part} ({cells}): best {self.best:g}{edge}"
        if self.penalty_errors:
            tried = ", ".join(f"{p:g}: {100 * e / self.ref_words:.1f}%" if self.ref_words else f"{p:g}" for p, e in self.penalty_errors)
            edge = (f" (at the edge of {PENALTY_OPTIONS[self.penalty_name]}: the best may lie beyond it; widen the grid)"
                    if self.penalty_at_grid_edge else "")
            text += f"; {self.penalty_name} (each at its best scale: {tried}): best {self.penalty:g}{edge}"
        elif self.penalty:
            text += f" at {self.penalty_name} {self.penalty:g}"
        return text

    def to_dict(self) -> dict:
        """Return the sweep as JSON-serialisable data (read back by :meth:`from_dict`); the
        penalty keys only when a penalty was used, so sweeps without one read as they always did."""
        data: dict = {"part": self.part, "scales": list(self.scales), "errors": list(self.errors), "ref_words": self.ref_words, "best": self.best}
        if self.penalty or self.penalty_errors:
            data["penalty"] = self.penalty
            data["penalty_errors"] = [[p, e] for p, e in self.penalty_errors]
        if self.penalty_name != WORD_PENALTY:
            data["penalty_name"] = self.penalty_name
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> ScaleSweep:
        """Return the sweep stored by :meth:`to_dict`."""
        return cls(str(data["part"]), tuple(float(s) for s in data["scales"]), tuple(int(e) for e in data["errors"]),
                   int(data["ref_words"]), float(data["best"]), float(data.get("penalty", 0.0)),
                   tuple((float(p), int(e)) for p, e in data.get("penalty_errors", ())), str(data.get("penalty_name", WORD_PENALTY)))


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


def _grid_search(size: int, start: int, key: Callable[[int], tuple]) -> int:
    """Return the index of the grid point with the smallest ``key(i)`` (errors first, then the tie
    rule) that the search reaches: ``start`` and its neighbours, then onwards from the best while it
    lies at an end of what was visited. ``key`` is called once per visited index."""
    keys: dict[int, tuple] = {}
    for i in (start, start - 1, start + 1):
        if 0 <= i < size:
            keys[i] = key(i)
    while True:
        done = sorted(keys)
        best = min(done, key=keys.__getitem__)
        step = -1 if best == done[0] else (1 if best == done[-1] else 0)
        if step == 0 or not 0 <= best + step < size:
            return best
        keys[best + step] = key(best + step)


def sweep_scales(part: str, scales: Sequence[float], decode: Callable[[float], WerResult], default: float = 0.1) -> tuple[ScaleSweep, dict[float, WerResult]]:
    """Search the grid ``scales`` for the scale with the fewest errors on ``part`` (``decode(scale)``
    decodes it and returns its scoring): the point nearest ``default`` and its neighbours first,
    then onwards from the best while it lies at the edge of what was decoded. Returns the sweep
    (the decoded scales only, and the chosen one) and each decoded scale's :class:`WerResult`."""
    grid = check_scales(scales)
    results: dict[float, WerResult] = {}

    def key(i: int) -> tuple:  # fewest errors; among equals choose_scale's rule: nearest the default
        results[grid[i]] = decode(grid[i])
        return (results[grid[i]].errors, abs(math.log(grid[i] / default)), grid[i])

    best = _grid_search(len(grid), min(range(len(grid)), key=lambda i: abs(math.log(grid[i] / default))), key)
    done_scales = tuple(s for s in grid if s in results)
    sweep = ScaleSweep(part, done_scales, tuple(results[s].errors for s in done_scales), results[done_scales[0]].ref_words,
                       grid[best])
    log.info("%s", sweep.describe())
    return sweep, results


def check_penalties(penalties: Sequence[float]) -> tuple[float, ...]:
    """Return ``penalties`` sorted and without repeats; ConfigError for a value that is not finite."""
    grid = tuple(sorted({float(p) for p in penalties}))
    if not all(math.isfinite(p) for p in grid):
        raise ConfigError(f"penalties (decode.insertion_penalties, decode.ctc_blank_penalties) must be finite numbers, got {list(penalties)}")
    return grid


def sweep_scales_and_penalties(part: str, scales: Sequence[float], penalties: Sequence[float], decode: Callable[[float, float], WerResult],
                               default: float = 0.1, penalty_name: str = WORD_PENALTY) -> tuple[ScaleSweep, dict[tuple[float, float], WerResult]]:
    """Search the penalties ``penalties`` (word insertion penalties, or with ``penalty_name``
    :data:`BLANK_PENALTY` blank penalties) the way :func:`sweep_scales` searches scales (from the penalty nearest 0, both neighbours, then onwards from the best while it lies
    at the edge of what was searched), each penalty with its own scale search over ``scales``
    (``decode(scale, penalty)`` decodes ``part``). The pair with the fewest errors wins; among
    equals, the penalty nearest 0. Returns the chosen penalty's :class:`ScaleSweep`, which records
    the best errors of every penalty tried, and the :class:`WerResult` of every decoded pair."""
    grid = check_penalties(penalties)
    if not grid:
        raise ConfigError(f"the {penalty_name} grid ({PENALTY_OPTIONS[penalty_name]}) is empty: use sweep_scales")
    sweeps: dict[float, ScaleSweep] = {}
    results: dict[tuple[float, float], WerResult] = {}

    def key(i: int) -> tuple:  # the fewest errors of this penalty's scale search; among equals, nearest 0
        p = grid[i]
        sweeps[p], found = sweep_scales(part, scales, lambda s: decode(s, p), default)
        results.update({(s, p): r for s, r in found.items()})
        return (min(sweeps[p].errors), abs(p), p)

    best = _grid_search(len(grid), min(range(len(grid)), key=lambda i: (abs(grid[i]), grid[i])), key)
    chosen = sweeps[grid[best]]
    tried = tuple((p, min(sweeps[p].errors)) for p in grid if p in sweeps)
    sweep = dataclasses.replace(chosen, penalty=grid[best], penalty_errors=tried, penalty_name=penalty_name)
    log.info("%s", sweep.describe())
    return sweep, results


def tune_decoding(part: str, scales: Sequence[float], penalties: Sequence[float], decode: Callable[[float, float], WerResult],
                  default: float = 0.1, penalty_name: str = WORD_PENALTY) -> tuple[ScaleSweep | None, float, float, dict[tuple[float, float], WerResult]]:
    """Decode ``part`` at the one pair of ``scales`` x ``penalties`` when each holds one value, or
    search them (:func:`sweep_scales` over the scales at the one penalty, or
    :func:`sweep_scales_and_penalties`). Returns the sweep (None without a search), the chosen
    scale and penalty, and the :class:`WerResult` of every decoded pair."""
    if not scales or not penalties:
        raise ValueError("tune_decoding needs at least one scale and one penalty")
    if len(penalties) > 1:
        sweep, results = sweep_scales_and_penalties(part, scales, penalties, decode, default, penalty_name)
        return sweep, sweep.best, sweep.penalty, results
    penalty = float(penalties[0])
    if len(scales) > 1:
        found_sweep, found = sweep_scales(part, scales, lambda s: decode(s, penalty), default)
        sweep = dataclasses.replace(found_sweep, penalty=penalty, penalty_name=penalty_name) if penalty else found_sweep
        return sweep, sweep.best, penalty, {(s, penalty): r for s, r in found.items()}
    scale = float(scales[0])
    return None, scale, penalty, {(scale, penalty): decode(scale, penalty)}


def describe_decoding(decode_config: DecodeConfig, dev_part: str, networks: bool = True) -> str:
    """Return the sentences a table prints about how its systems were decoded (``networks``: and
    how network posteriors become acoustic scores)."""
    seeds = "; a student's other seeds use its first seed's scale, and the dev WER shown is the first seed's" if networks else ""
    how = (f"acoustic scale chosen per system on {dev_part} by searching {{{', '.join(f'{s:g}' for s in decode_config.acoustic_scales)}}} "
           f"(the fewest word errors; the test parts are never used to choose it{seeds})" if decode_config.acoustic_scales
           else f"acoustic scale {decode_config.acoustic_scale:g} (not tuned)")
    if decode_config.insertion_penalties:
        how += (f"; with it a word insertion penalty (a cost on every word of the graph, Kaldi's word_ins_penalty) searched from "
                f"{{{', '.join(f'{p:g}' for p in check_penalties(decode_config.insertion_penalties))}}} the same way")
    return (f"Decoding: HCLG with the stage-2 LM, beam {decode_config.beam:g}, max-active {decode_config.max_active}, "
            f"{decode_config.decoder} decoder, the same for every system of the table; {how}."
            + (" Networks: log posteriors minus log senone priors (stage 3 train alignments) times the acoustic scale." if networks else ""))
