"""Search pruning for deployment, chosen on dev, and the end-to-end real-time factor.

The recipe's tables decode every system with one beam and max-active (stage 7's DecodeConfig), wide
enough that the comparison between systems is not a comparison of search errors. A deployed model
is decoded alone, and there the search dominates the cost: on mini the distilled int8 network
takes about 0.0004 of real time per core and the HCLG search at the tables' beam 11 / max-active
2000 about 0.02-0.03. Kaldi users narrow the beam and max-active for deployment and check what it
costs in accuracy; this module does that the way the recipe tunes the acoustic scale: on the dev
part, never on test.

:func:`choose_setting` picks, from a grid of (beam, max-active) settings decoded on dev, the
narrowest (smallest max-active, then smallest beam) that is shown to be no worse than the tables'
setting by more than ``tolerance`` (relative): its dev word errors are within the tolerance, and
so is the upper end of the 95% paired bootstrap interval of its dev WER difference (a
non-inferiority test). The point estimate alone let through a setting 1.7% worse on dev that cost
a significant +1.56 WER points on test (mini, 2026-12-01); the interval asks dev for evidence, not
for a lucky draw. Which narrower setting is chosen depends on word errors only, not on timing
noise. Whether to narrow at all depends on time: :func:`measure_speed` narrows only when the
tables' setting misses the end-to-end target on dev (on mini the CTC student's HLG search costs
about 0.0016 of real time at every setting of the grid, and beam 9 / max-active 500 gave it +0.66
[+0.00, +1.60] test WER points for no speed); a dev timing close to the target can go either way
from one run to the next. The dev grid is decoded either way, so the section shows what narrowing
would cost. It then measures the test part end to end (features + acoustic model + search, CPU time
of one thread per second of audio) at both the tables' setting and the chosen one, with the WER
difference's paired bootstrap interval.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, NamedTuple, Sequence

import numpy as np

from asr_kd.config import DecodeConfig
from asr_kd.errors import AsrKdError, ConfigError
from asr_kd.metrics.wer import WerResult, compute_wer
from asr_kd.report.tables import format_interval, significance

if TYPE_CHECKING:  # torch, scipy and the runtimes load when something is measured, not for `asr-kd --help`
    from asr_kd.decode.tuning import ScaleSweep
    from asr_kd.deploy.transcribe import Transcriber
    from asr_kd.metrics.paired import BootstrapInterval

log = logging.getLogger(__name__)

# Issue 15's target for the distilled int8 student on mini: features + network + search.
END_TO_END_TARGET = 0.02
DEFAULT_TOLERANCE = 0.02
# Tried narrowest-last; the tables' own setting (mini: beam 11, max-active 2000) is always added.
DEFAULT_GRID = "11:1500,10:1500,10:1000,9:1000,9:500,8:500,8:300"


class SearchSetting(NamedTuple):
    """A graph search's pruning: the beam and the most active states per frame."""

    beam: float
    max_active: int

    def __str__(self) -> str:
        return f"beam {self.beam:g}, max-active {self.max_active}"


def parse_search_grid(text: str) -> tuple[SearchSetting, ...]:
    """Parse ``"BEAM:MAX_ACTIVE,..."`` (e.g. ``"10:1000,9:500"``); ConfigError naming the form."""
    settings = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        beam, sep, active = item.partition(":")
        try:
            if not sep:
                raise ValueError
            setting = SearchSetting(float(beam), int(active))
        except ValueError:
            raise ConfigError(f"search grid item {item!r}: expected BEAM:MAX_ACTIVE, e.g. 10:1000") from None
        if setting.beam <= 0 or setting.max_active < 2:
            raise ConfigError(f"search grid item {item!r}: the beam must be > 0 and max-active >= 2")
        settings.append(setting)
    if not settings:
        raise ConfigError(f"search grid {text!r} holds no BEAM:MAX_ACTIVE setting")
    return tuple(settings)


def with_setting(config: DecodeConfig, setting: SearchSetting) -> DecodeConfig:
    """Return ``config`` searching with ``setting`` (min-active lowered below max-active where needed,
    as Kaldi's decoders require ``min_active < max_active``); ConfigError for a max-active below 2."""
    if setting.max_active < 2:  # min-active must stay >= 1 below it
        raise ConfigError(f"max-active must be >= 2 (Kaldi's min-active, at least 1, stays below it), got {setting.max_active}")
    return dataclasses.replace(config, beam=setting.beam, max_active=setting.max_active,
                               min_active=min(config.min_active, setting.max_active - 1))


@dataclasses.dataclass(frozen=True)
class SearchPoint:
    """One setting decoded on a part: its word errors (an utterance the search failed on counts
    as all deletions; ``failed`` says how many), and its search CPU time per audio second."""

    setting: SearchSetting
    errors: int
    ref_words: int
    search_rtf: float
    failed: int = 0
    # Per-utterance word errors for the paired test against the reference (None: point estimate only).
    details: WerResult | None = dataclasses.field(default=None, compare=False, repr=False)
    # WER minus the reference's on the same part, with its paired bootstrap interval (set by choose_setting).
    versus_reference: BootstrapInterval | None = dataclasses.field(default=None, compare=False)

    @property
    def wer(self) -> float:
        return self.errors / max(self.ref_words, 1)


def compare_to_reference(points: Sequence[SearchPoint], reference: SearchSetting) -> list[SearchPoint]:
    """Return ``points`` with ``versus_reference`` set (WER difference to the ``reference`` point
    and its paired bootstrap interval) where both carry per-utterance details and it is not set yet."""
    from asr_kd.metrics.paired import wer_difference

    ref = _reference_point(points, reference)
    if ref.details is None:
        return list(points)
    return [dataclasses.replace(p, versus_reference=wer_difference(ref.details, p.details))
            if p.details is not None and p.versus_reference is None else p for p in points]


def _reference_point(points: Sequence[SearchPoint], reference: SearchSetting) -> SearchPoint:
    ref = next((p for p in points if p.setting == reference), None)
    if ref is None:
        raise ConfigError(f"the search grid must include the reference setting ({reference})")
    return ref


def choose_setting(points: Sequence[SearchPoint], reference: SearchSetting, tolerance: float = DEFAULT_TOLERANCE) -> SearchPoint:
    """Return the narrowest point (smallest max-active, then smallest beam) that is no worse than
    the ``reference`` point by more than ``tolerance`` (relative): its word errors are at most that
    far above the reference's, and where the points carry per-utterance details (see
    :func:`compare_to_reference`) so is the upper end of its WER difference's 95% paired bootstrap
    interval. The reference itself qualifies, so there is always an answer. With no reference
    error, one error stands in for the denominator (as the quantisation gate does)."""
    if tolerance < 0:
        raise ConfigError(f"the search tolerance must be >= 0, got {tolerance}")
    ref = _reference_point(points, reference)
    allowed = ref.errors + tolerance * max(ref.errors, 1)
    margin = tolerance * max(ref.errors, 1) / max(ref.ref_words, 1)  # the same allowance as a WER difference

    def qualifies(p: SearchPoint) -> bool:
        if p.setting == reference:
            return True
        within = p.errors <= allowed
        if p.versus_reference is not None:
            within = within and p.versus_reference.high <= margin
        return within

    return min((p for p in compare_to_reference(points, reference) if qualifies(p)),
               key=lambda p: (p.setting.max_active, p.setting.beam))


def tolerance_for_points(points: float, grid: Sequence[SearchPoint], reference: SearchSetting) -> float:
    """Return the relative tolerance with which :func:`choose_setting` allows ``points`` WER
    points (absolute) over the ``reference`` setting's point of ``grid``: for a tolerance stated in
    points rather than in percent of the reference's word errors (the same allowance then holds at
    any WER). The reference is looked up in the grid, as :func:`choose_setting` does, so the two
    cannot disagree on which point the allowance is measured from."""
    if points < 0:
        raise ConfigError(f"a tolerance in WER points must be >= 0, got {points}")
    ref = _reference_point(grid, reference)
    return points / 100.0 * max(ref.ref_words, 1) / max(ref.errors, 1)


class _Prepared(NamedTuple):
    log_probs: dict[str, np.ndarray]
    features_s: float
    acoustic_s: float
    audio_s: float


def _prepare(tr: Transcriber, audio: Mapping[str, np.ndarray]) -> _Prepared:
    """Features and acoustic model over ``audio``, one utterance per call; CPU seconds of each."""
    start = time.process_time()
    feats = {u: tr.features(x) for u, x in audio.items()}
    features_s = time.process_time() - start
    start = time.process_time()
    log_probs = {u: tr.acoustic([f])[0] for u, f in feats.items()}
    acoustic_s = time.process_time() - start
    return _Prepared(log_probs, features_s, acoustic_s, sum(len(x) for x in audio.values()) / tr.sampling_rate)


class _Searched(NamedTuple):
    wer: WerResult
    rtf: float
    failed: int


def _search(tr: Transcriber, prepared: _Prepared, refs: Mapping[str, str], config: DecodeConfig) -> _Searched:
    """Decode the prepared log-probabilities with ``config``; return the WER details, the search
    CPU seconds per audio second and the number of utterances whose search failed (each counts as
    all deletions, and is logged)."""
    from asr_kd.deploy.search import Searcher

    searcher = Searcher(tr.model_dir, tr.spec, tr.search.method, config)
    hyps: dict[str, str] = {}
    failed: list[str] = []
    start = time.process_time()
    for utt_id, lp in prepared.log_probs.items():
        try:
            hyps[utt_id] = searcher(lp, utt_id).text
        except AsrKdError as err:
            failed.append(utt_id)
            log.warning("%s: %s (scored as all deletions)", utt_id, err)
    rtf = (time.process_time() - start) / prepared.audio_s
    if failed:
        log.warning("%s, max-active %d: the search failed on %d utterance(s)", f"beam {config.beam:g}", config.max_active, len(failed))
    return _Searched(compute_wer(refs, hyps), rtf, len(failed))


def tune_acoustic_scale(model_dir: Path | str, dev_audio: Mapping[str, np.ndarray], dev_refs: Mapping[str, str], scales: Sequence[float],
                        part: str = "dev") -> ScaleSweep:
    """Search ``scales`` for the acoustic scale with the fewest word errors when the hybrid
    ``model_dir`` decodes ``dev_audio`` (its own features, normalisation, network in PyTorch and
    search setting), with the search stage 7 tunes every system with
    (:func:`asr_kd.decode.tuning.sweep_scales`), started at the directory's own scale, which also
    wins ties. The features and the network run once; only the search is repeated (an utterance
    whose search fails counts as all deletions, and is logged)."""
    from asr_kd.decode.tuning import sweep_scales
    from asr_kd.deploy.transcribe import Transcriber

    tr = Transcriber(model_dir, "torch")
    base = tr.search.config
    prepared = _prepare(tr, dev_audio)
    sweep, _ = sweep_scales(part, scales, lambda s: _search(tr, prepared, dev_refs, dataclasses.replace(base, acoustic_scale=s)).wer,
                            default=base.acoustic_scale)
    return sweep


@dataclasses.dataclass(frozen=True)
class SpeedResult:
    """Dev search points, the chosen setting, and the test part measured end to end at the tables'
    setting and at the chosen one (CPU seconds per audio second, one thread)."""

    reference: SearchSetting
    dev_points: list[SearchPoint]
    chosen: SearchPoint
    features_rtf: float
    acoustic_rtf: float
    test_reference: WerResult
    test_chosen: WerResult
    search_rtf_reference: float
    search_rtf_chosen: float
    # Test utterances the search failed on (scored as all deletions) at each setting.
    failed_reference: int = 0
    failed_chosen: int = 0
    # Dev end to end at the tables' setting, and whether that met the target (then nothing was narrowed).
    dev_end_to_end_reference: float | None = None
    reference_meets_target: bool = False

    @property
    def end_to_end_rtf(self) -> float:
        return self.features_rtf + self.acoustic_rtf + self.search_rtf_chosen

    @property
    def end_to_end_rtf_reference(self) -> float:
        return self.features_rtf + self.acoustic_rtf + self.search_rtf_reference


def measure_speed(
    model_dir: Path | str, backend: str, dev_audio: Mapping[str, np.ndarray], dev_refs: Mapping[str, str],
    test_audio: Mapping[str, np.ndarray], test_refs: Mapping[str, str], grid: Sequence[SearchSetting],
    tolerance: float = DEFAULT_TOLERANCE, target: float = END_TO_END_TARGET,
) -> SpeedResult:
    """Decode dev at the model directory's own setting (the tables') and at each of ``grid``;
    keep the tables' setting when its dev end-to-end RTF is at most ``target`` (0: never), else
    choose with :func:`choose_setting`; measure test end to end at both settings, on one thread
    (torch and onnxruntime)."""
    import torch

    from asr_kd.deploy.transcribe import Transcriber

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tr = Transcriber(model_dir, backend, num_threads=1)
        base = tr.search.config
        reference = SearchSetting(base.beam, base.max_active)
        settings = list(dict.fromkeys([reference, *grid]))
        dev = _prepare(tr, dev_audio)
        points = []
        for s in settings:
            wer, rtf, failed = _search(tr, dev, dev_refs, with_setting(base, s))
            points.append(SearchPoint(s, wer.errors, wer.ref_words, rtf, failed, details=wer))
        points = compare_to_reference(points, reference)
        at_tables = _reference_point(points, reference)
        dev_reference = (dev.features_s + dev.acoustic_s) / dev.audio_s + at_tables.search_rtf
        fast_enough = target > 0 and dev_reference <= target
        chosen = at_tables if fast_enough else choose_setting(points, reference, tolerance)
        test = _prepare(tr, test_audio)
        at_reference = _search(tr, test, test_refs, base)
        # Nothing narrower passed on dev: the chosen setting is the tables', already measured.
        at_chosen = at_reference if chosen.setting == reference else _search(tr, test, test_refs, with_setting(base, chosen.setting))
    finally:
        torch.set_num_threads(before)
    return SpeedResult(reference, points, chosen, test.features_s / test.audio_s, test.acoustic_s / test.audio_s,
                       at_reference.wer, at_chosen.wer, at_reference.rtf, at_chosen.rtf, at_reference.failed, at_chosen.failed,
                       dev_end_to_end_reference=dev_reference, reference_meets_target=fast_enough)


def speed_markdown(result: SpeedResult, system: str, dev_name: str, test_name: str, tolerance: float = DEFAULT_TOLERANCE,
                   target: float = END_TO_END_TARGET) -> str:
    """Return the Markdown paragraph, dev table and verdict of a :class:`SpeedResult` (``target``: the
    end-to-end RTF the verdict and the narrowing rule name; 0, as :func:`measure_speed` takes it:
    narrowed as far as dev allows, and judged against the default target)."""
    from asr_kd.metrics.paired import wer_difference

    r = result
    ref = _reference_point(r.dev_points, r.reference)
    margin = 100 * tolerance * max(ref.errors, 1) / max(ref.ref_words, 1)
    lines = [f"Search pruning for deployment, {system}: each setting decodes {dev_name} (never the test part); the chosen one is the "
             f"narrowest (smallest max-active, then beam) shown to be at most {100 * tolerance:g}% (relative) worse than the tables' "
             f"{r.reference}: its word errors, and the upper end of its WER difference's 95% paired bootstrap interval, within "
             f"{margin:.2f} points; " + (f"narrowed only when the tables' setting misses the end-to-end target ({target:g}) on {dev_name}. "
                                         if target > 0 else "narrowed as far as dev allows (no end-to-end target asked for). ") +
             "CPU time of one thread per second of audio.", "",
             f"| Beam | Max-active | {dev_name} WER | − tables, points (95% CI) | Search RTF / core |", "|---|---|---|---|---|"]
    for p in r.dev_points:
        mark = " (tables)" if p.setting == r.reference else (" (chosen)" if p.setting == r.chosen.setting else "")
        failed = f", {p.failed} failed" if p.failed else ""
        versus = format_interval(p.versus_reference.to_dict()) if p.versus_reference is not None and p.setting != r.reference else "–"
        lines.append(f"| {p.setting.beam:g}{mark} | {p.setting.max_active} | {100 * p.wer:.2f}% ({p.errors}/{p.ref_words}{failed}) | "
                     f"{versus} | {p.search_rtf:.4f} |")
    target = target if target > 0 else END_TO_END_TARGET  # the verdict's target
    met = "met" if r.end_to_end_rtf <= target else "NOT met"
    if r.chosen.setting == r.reference:  # fast enough already, or nothing narrower passed: one setting, no comparison to make
        on_dev = f" (end to end {r.dev_end_to_end_reference:.4f})" if r.dev_end_to_end_reference is not None else ""
        why = (f"The tables' {r.reference} already meets the target on {dev_name}{on_dev}, so it stays: a narrower search would "
               f"risk accuracy for speed not asked for (test timings may differ)"
               if r.reference_meets_target else f"No narrower setting passed on {dev_name}, so the tables' {r.reference} stays")
        lines += ["", f"{why}. On {test_name}: end-to-end RTF per "
                  f"core **{r.end_to_end_rtf:.4f}** = features {r.features_rtf:.4f} + acoustic model {r.acoustic_rtf:.4f} + search "
                  f"{r.search_rtf_chosen:.4f} (target at most {target:g}: {met}). Test WER {100 * r.test_chosen.wer:.2f}%. "
                  + (f"The search failed on {r.failed_chosen} test utterance(s) (scored as all deletions). " if r.failed_chosen else "")
                  + "`asr-kd transcribe` decodes with it (the model directory's own setting)."]
        return "\n".join(lines) + "\n"
    diff = wer_difference(r.test_reference, r.test_chosen)
    verdict = significance(diff.to_dict(), better_if_negative=True, reference="the tables' setting")
    lines += ["", f"On {test_name} at the chosen {r.chosen.setting}: end-to-end RTF per core **{r.end_to_end_rtf:.4f}** = features "
              f"{r.features_rtf:.4f} + acoustic model {r.acoustic_rtf:.4f} + search {r.search_rtf_chosen:.4f} (target at most {target:g}: "
              f"{met}); at the tables' {r.reference}: {r.end_to_end_rtf_reference:.4f} (search {r.search_rtf_reference:.4f}). "
              f"Test WER {100 * r.test_chosen.wer:.2f}% against {100 * r.test_reference.wer:.2f}%: "
              f"{format_interval(diff.to_dict())} points (95% paired bootstrap); significant? {verdict}. "
              + (f"The search failed on {r.failed_chosen} test utterance(s) at the chosen setting and {r.failed_reference} at the "
                 "tables' (scored as all deletions). " if r.failed_chosen or r.failed_reference else "") +
              f"`asr-kd transcribe --beam {r.chosen.setting.beam:g} --max-active {r.chosen.setting.max_active}` decodes with it."]
    return "\n".join(lines) + "\n"
