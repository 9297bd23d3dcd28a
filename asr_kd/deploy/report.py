"""What deployment costs and whether int8 may ship: the quantisation gate and the cost table.

:func:`measure_system` runs one system (one model directory, or several fused as an ensemble) on
a test set with one intra-op thread and returns a :class:`CostRow`: parameters, multiply-adds
per second of audio, acoustic and search real-time factors per core, peak memory, size on disk
and WER. :func:`cost_table` and :func:`quantisation_gate` turn rows into data and Markdown;
``asr-kd deploy-report`` writes them as a RESULTS.md section.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch

from asr_kd.config import INT8_MAX_RELATIVE, DecodeConfig
from asr_kd.deploy.acoustic import ONNX_FILES, TorchAcoustic, ensemble_acoustic
from asr_kd.data.features import CmvnStats
from asr_kd.deploy.model_dir import GMM_FILE, MODEL_PT, ModelSpec, load_network, load_spec, normalize_features, pooled_cmvn
from asr_kd.deploy.recipe_paths import UTTCMVN_SUFFIX
from asr_kd.deploy.transcribe import Transcriber
from asr_kd.errors import AsrKdError, ConfigError
from asr_kd.metrics.wer import WerResult, compute_wer

if TYPE_CHECKING:
    from asr_kd.deploy.speed import SearchSetting



@dataclasses.dataclass(frozen=True)
class CostRow:
    """One system's deployment cost, measured in one run, and its test WER."""

    system: str
    runtime: str
    params: int
    macs_per_second: float
    acoustic_rtf: float
    search_rtf: float
    peak_memory_mb: float
    size_mb: float
    wer: float
    errors: int
    ref_words: int
    failed: int


@dataclasses.dataclass(frozen=True)
class GateResult:
    """The quantisation gate's verdict: int8's WER against fp32's."""

    fp32_wer: float
    int8_wer: float
    relative: float
    max_relative: float
    passed: bool
    system: str = ""

    def markdown(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"Quantisation gate{f' ({self.system})' if self.system else ''}: {verdict}: int8 WER {100 * self.int8_wer:.2f}% vs fp32 {100 * self.fp32_wer:.2f}% "
                f"({100 * self.relative:+.1f}% relative; the gate allows at most +{100 * self.max_relative:.1f}%).")


def quantisation_gate(fp32: WerResult, int8: WerResult, max_relative: float = INT8_MAX_RELATIVE, system: str = "") -> GateResult:
    """Return the gate of ``int8`` against ``fp32`` (same references): it passes when int8's WER
    is at most ``max_relative`` above fp32's, relative. With an fp32 WER of 0 one word error
    stands in for the denominator, so a single new error on a tiny test set is measurable.
    ``system`` names the gated system in the Markdown line."""
    if max_relative < 0:
        raise ConfigError(f"the quantisation gate's max_relative must be >= 0, got {max_relative}")
    base = max(fp32.errors, 1)
    relative = (int8.errors - fp32.errors) / base
    return GateResult(fp32.wer, int8.wer, relative, max_relative, relative <= max_relative, system)


def macs_per_frame(model: torch.nn.Module, feature_dim: int, frames: int = 200) -> float:
    """Return the network's multiply-adds per input frame, counted by torch's FLOP counter on a
    ``frames``-frame input (matrix products and convolutions; 1 MAC = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, lengths = torch.zeros(1, frames, feature_dim), torch.tensor([frames])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, lengths)
    return counter.get_total_flops() / 2 / frames


def _proc_kb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return float("nan")


def reset_peak_memory() -> float:
    """Reset the process's resident-memory high-water mark (Linux) and return the current
    resident size in MB; NaN where /proc is unavailable."""
    import ctypes
    import gc

    gc.collect()
    try:  # hand freed heap pages back to the OS so that they do not hide the next system's peak
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_kb("VmRSS") / 1024
    except OSError:
        return float("nan")


def peak_memory_since(base_mb: float) -> float:
    """Return the resident-memory peak above ``base_mb`` since :func:`reset_peak_memory` (MB)."""
    try:
        return _proc_kb("VmHWM") / 1024 - base_mb
    except OSError:
        return float("nan")


def _file_mb(paths: Sequence[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def measure_system(
    name: str, model_dirs: Sequence[Path | str], backend: str, audio: Mapping[str, np.ndarray], refs: Mapping[str, str],
    decode_config: DecodeConfig | None = None, method: str | None = None, repeats: int = 3,
) -> tuple[CostRow, WerResult]:
    """Transcribe ``audio`` (``{utt_id: samples at the model's rate}``) with ``model_dirs`` (one
    model, or several fused as an ensemble; ``backend`` torch, onnx or onnx-int8) on one thread
    and return its :class:`CostRow` and WER details against ``refs``. The first model directory
    provides features, priors and graph. The acoustic time is the best of ``repeats`` passes
    over the test set, one utterance per call; the search runs once."""
    if not model_dirs:
        raise ConfigError(f"system {name}: no model directory given")
    if len(model_dirs) > 1 and backend != "torch":
        raise ConfigError(f"system {name}: an ensemble runs with the torch backend only")
    is_gmm = load_spec(model_dirs[0]).kind == "gmm"
    if is_gmm and (len(model_dirs) > 1 or backend != "torch"):
        raise ConfigError(f"system {name}: a GMM-HMM model directory runs alone, with the torch (numpy) backend")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = reset_peak_memory()
        # An ensemble is checked (same senones, features and normalisation) as transcription checks it.
        acoustic = ensemble_acoustic(model_dirs) if len(model_dirs) > 1 else None
        if is_gmm:
            nets = []
        elif acoustic is not None:
            nets = [m.model for m in acoustic.members]
        else:
            nets = [load_network(model_dirs[0])]
        tr = Transcriber(model_dirs[0], backend, method, decode_config, num_threads=1, acoustic=acoustic)
        feats = {u: tr.features(x) for u, x in audio.items()}
        # CPU time of this process (one thread), best of ``repeats`` passes: wall time would also
        # count waiting for other processes on a shared machine.
        acoustic_s = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            log_probs = {u: tr.acoustic([f])[0] for u, f in feats.items()}
            acoustic_s = min(acoustic_s, time.process_time() - start)
        hyps: dict[str, str] = {}
        failed = 0
        start = time.process_time()
        for utt_id, lp in log_probs.items():
            try:
                hyps[utt_id] = tr.search(lp, utt_id).text
            except AsrKdError:
                failed += 1
        search_s = time.process_time() - start
        peak = peak_memory_since(base)
    finally:
        torch.set_num_threads(before)
    seconds = sum(len(s) for s in audio.values()) / tr.sampling_rate
    dim = tr.spec.features.num_mel_bins
    frames_per_second = 1.0 / tr.spec.features.frame_shift
    if is_gmm:
        # Each Gaussian of each frame: a dot product with the means/variances and one with the
        # variances (2 x dim multiply-adds); its parameters are the two vectors and a constant.
        gauss, gdim = int(tr.acoustic.scorer.sizes.sum()), tr.acoustic.scorer.dim
        params, macs = gauss * (2 * gdim + 1), gauss * 2 * gdim * frames_per_second
        files = [Path(model_dirs[0]) / GMM_FILE]
    else:
        params = sum(sum(p.numel() for p in n.parameters()) for n in nets)
        macs = sum(macs_per_frame(n, dim) for n in nets) * frames_per_second
        files = [Path(d) / (MODEL_PT if backend == "torch" else ONNX_FILES[backend]) for d in model_dirs]
    wer = compute_wer(refs, hyps)
    row = CostRow(name, backend, params, macs, acoustic_s / seconds, search_s / seconds, peak, _file_mb(files), wer.wer, wer.errors,
                  wer.ref_words, failed)
    return row, wer


COMPRESSION_TARGET = 0.25  # issue 15: a compressed student at most a quarter of one teacher's multiply-adds


def compression_line(rows: Sequence[CostRow], student: str = "compressed", teacher: str = "teacher0", baseline: str = "baseline",
                     label: str = "Compressed student",
                     interval: str = "Table 1 gives the paired interval over seeds") -> str:
    """Return the sentence on the compressed student (its torch row against one teacher's and the
    full-size hard baseline's torch rows): its share of a teacher's multiply-adds against the
    target and its test WER beside the baseline's; ``""`` when a row is missing. ``label`` starts
    the sentence and ``interval`` says where the WER difference's interval is."""
    torch_rows = {r.system: r for r in rows if r.runtime == "torch"}
    if not all(k in torch_rows for k in (student, teacher, baseline)):
        return ""
    s, t, b = torch_rows[student], torch_rows[teacher], torch_rows[baseline]
    share = s.macs_per_second / t.macs_per_second
    verdict = "no worse than" if s.errors <= b.errors else "worse than"
    return (f"{label}: {100 * share:.1f}% of one teacher's multiply-adds (target: at most {100 * COMPRESSION_TARGET:.0f}%"
            f"{'' if share <= COMPRESSION_TARGET else ', MISSED'}); test WER {100 * s.wer:.2f}% ({s.errors} errors), {verdict} the "
            f"full-size hard-target {baseline}'s {100 * b.wer:.2f}% ({b.errors}) on these utterances ({interval}).")


def ensemble_line(rows: Sequence[CostRow], num_models: int, student: str = "distilled", ensemble: str = "ensemble",
                  hard_baseline: str = "baseline") -> str:
    """Return the sentence on issue 15's target for the student against the ensemble of
    ``num_models`` (torch rows): an acoustic RTF at least ``num_models - 0.5`` times lower, and
    test word errors no more than halfway between the hard-target baseline's and the ensemble's
    (never more than the baseline's: an ensemble no better than the baseline sets no easier
    target); ``""`` when a row is missing."""
    torch_rows = {r.system: r for r in rows if r.runtime == "torch"}
    if not all(k in torch_rows for k in (student, ensemble, hard_baseline)):
        return ""
    s, e, b = torch_rows[student], torch_rows[ensemble], torch_rows[hard_baseline]
    speedup = e.acoustic_rtf / max(s.acoustic_rtf, 1e-12)
    target = num_models - 0.5
    halfway = min((b.errors + e.errors) / 2, b.errors)
    where = (f"{halfway:g} errors, halfway between the {hard_baseline}'s {b.errors} and the {ensemble}'s {e.errors}"
             if e.errors < b.errors else
             f"the {hard_baseline}'s {b.errors} errors (the {ensemble}'s {e.errors} are no better, and halfway would be easier)")
    return (f"Student against the {num_models}-model ensemble (torch rows): acoustic RTF {speedup:.2f}x lower (target: at least "
            f"{target:g}x{'' if speedup >= target else ', MISSED'}); test WER {100 * s.wer:.2f}% ({s.errors} errors) against "
            f"{where}: {'met' if s.errors <= halfway else 'MISSED'} on these {s.ref_words} words, through the model directories "
            "(Table 1 gives intervals over seeds with per-speaker CMVN).")


def cost_table(rows: Sequence[CostRow], baseline: str | None = None) -> str:
    """Return the Markdown cost table of ``rows``; with ``baseline`` (a system name), a column of
    each row's acoustic speed-up over that system's first row."""
    base = next((r for r in rows if r.system == baseline), None)
    head = ("| System | Runtime | Params | MMACs / s audio | Acoustic RTF / core | Search RTF / core | Peak memory (MB) | "
            "Size (MB) | Test WER |" + (f" Acoustic speed-up vs {baseline} |" if base else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [r.system, r.runtime, f"{r.params:,}", f"{r.macs_per_second / 1e6:.2f}", f"{r.acoustic_rtf:.4f}", f"{r.search_rtf:.4f}",
                 f"{r.peak_memory_mb:.0f}", f"{r.size_mb:.2f}", f"{100 * r.wer:.2f}% ({r.errors}/{r.ref_words})"]
        if base:
            cells.append(f"{base.acoustic_rtf / max(r.acoustic_rtf, 1e-12):.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class SystemSpec:
    """A system to measure: a name, its model directories (several: an ensemble) and a runtime."""

    name: str
    model_dirs: tuple[Path, ...]
    backend: str = "torch"

    @classmethod
    def parse(cls, text: str) -> "SystemSpec":
        """Parse ``NAME=DIR[,DIR...][@BACKEND]``; ConfigError naming the expected form."""
        name, sep, rest = text.partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"--system {text!r}: expected NAME=MODEL_DIR[,MODEL_DIR...][@torch|onnx|onnx-int8]")
        dirs, _, backend = rest.partition("@")
        return cls(name, tuple(Path(d) for d in dirs.split(",") if d), backend or "torch")


def load_test_audio(manifest: Path | str, sampling_rate: int, max_cuts: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Return ``({cut id: samples}, {cut id: transcript})`` of a lhotse cut manifest's first
    ``max_cuts`` cuts; a cut whose audio cannot be read raises its DataError, and so does a
    missing or empty manifest (:func:`asr_kd.deploy.transcribe.manifest_items`)."""
    from lhotse import load_manifest_lazy

    from asr_kd.deploy.transcribe import manifest_items

    audio: dict[str, np.ndarray] = {}
    for utt_id, _, samples in manifest_items(manifest, sampling_rate):  # first: it names a missing or empty manifest
        if isinstance(samples, Exception):
            raise samples
        audio[utt_id] = samples
        if max_cuts is not None and len(audio) >= max_cuts:
            break
    refs = {c.id: " ".join(s.text or "" for s in c.supervisions).strip() for c in load_manifest_lazy(manifest)}
    return audio, {k: refs[k] for k in audio}


def deploy_report(
    systems: Sequence[SystemSpec], test_manifest: Path | str, gate_system: str | Sequence[str] | None = None,
    max_relative: float = INT8_MAX_RELATIVE,
    baseline: str | None = None, decode_config: DecodeConfig | None = None, max_cuts: int | None = None,
    results_md: Path | str | None = None, command: str = "", speaker_cmvn: Path | str | None = None,
    plot: Path | str | None = None, speed_system: SystemSpec | Sequence[SystemSpec] | None = None, dev_manifest: Path | str | None = None,
    search_grid: Sequence["SearchSetting"] = (), search_tolerance: float | None = None, rtf_target: float | None = None,
    plot_link: str | None = None,
) -> tuple[list[CostRow], list[GateResult], str]:
    """Measure every system on the test manifest in one run and return ``(rows, gates, markdown)``;
    each gate (one per name in ``gate_system``, a name or several) compares that system's onnx and
    onnx-int8 rows (both must be among ``systems``).
    With ``speaker_cmvn`` (the test part's per-speaker statistics), each single-model torch system
    is also scored with per-speaker, global and per-utterance normalisation (test_manifest must
    then carry stored features). With ``results_md``, writes the markdown as its
    ``## Deployment`` section; with ``plot``, a PNG of WER against acoustic cost, linked from it
    when it lies beside ``results_md`` (or as ``plot_link``, where the caller puts a copy). With ``speed_system`` (one model directory and a runtime,
    or several) and ``dev_manifest``, each one's search pruning for deployment is chosen on dev
    from ``search_grid`` (only when the tables' setting misses ``rtf_target`` end to end on dev;
    default 0.02, the project's end-to-end target on mini; 0: always) and the test part is measured end to end
    (:mod:`asr_kd.deploy.speed`), one paragraph per system."""
    from asr_kd.report.results_md import write_section

    gate_systems = [gate_system] if isinstance(gate_system, str) else list(gate_system or ())
    measured = {(s.name, s.backend) for s in systems}
    for name in gate_systems:  # refused before the systems are measured, not after
        missing = [b for b in ("onnx", "onnx-int8") if (name, b) not in measured]
        if missing:
            raise ConfigError(f"the quantisation gate needs --system {name}=DIR@{missing[0]}; add it")
    speed_systems = [speed_system] if isinstance(speed_system, SystemSpec) else list(speed_system or ())
    if rtf_target is not None and not rtf_target >= 0:  # NaN too
        raise ConfigError(f"the end-to-end RTF target must be >= 0 (0: narrow the search as far as dev allows), got {rtf_target}")
    for s in speed_systems:
        _check_speed_request(s, dev_manifest, search_tolerance)
    rate = load_spec(systems[0].model_dirs[0]).features.sampling_rate
    audio, refs = load_test_audio(test_manifest, rate, max_cuts)
    rows, wers = [], {}
    for s in systems:
        row, wer = measure_system(s.name, s.model_dirs, s.backend, audio, refs, decode_config)
        rows.append(row)
        wers[(s.name, s.backend)] = wer
    gates = [quantisation_gate(wers[(g, "onnx")], wers[(g, "onnx-int8")], max_relative, g if len(gate_systems) > 1 else "")
             for g in gate_systems]
    seconds = sum(len(a) for a in audio.values()) / rate
    text = ("## Deployment: cost table and quantisation gate\n\n" + (f"Produced by `{command}`.\n\n" if command else "")
            + f"{len(audio)} utterances ({seconds:.1f} s) of `{Path(test_manifest).name}`, one thread (torch and onnxruntime), "
            "one utterance per call, RTF = CPU time / audio time (acoustic: best of 3 passes), features excluded; MACs counted by torch's FLOP counter; peak memory = resident-set high-water mark "
            "above the process before loading the system; size = model.pt or the ONNX file(s).\n\n" + cost_table(rows, baseline))
    for gate in gates:
        text += "\n" + gate.markdown() + "\n"
    ensemble = next((s for s in systems if s.name == baseline and len(s.model_dirs) > 1), None)
    for line in (ensemble_line(rows, len(ensemble.model_dirs), ensemble=ensemble.name) if ensemble else "",
                 compression_line(rows),
                 compression_line(rows, "compressed" + UTTCMVN_SUFFIX, baseline="baseline" + UTTCMVN_SUFFIX,
                                  label="Deployable compressed student (trained on per-utterance CMVN)",
                                  interval="the lines under the normalisation table give its paired interval" if speaker_cmvn
                                  else "one seed, no interval here")):
        if line:
            text += "\n" + line + "\n"
    dev_parts: dict[int, tuple[dict[str, np.ndarray], dict[str, str]]] = {}  # the dev audio, read once per sampling rate
    for s in speed_systems:
        rate_s = load_spec(s.model_dirs[0]).features.sampling_rate
        if rate_s not in dev_parts:
            dev_parts[rate_s] = load_test_audio(dev_manifest, rate_s, max_cuts)
        text += "\n" + _speed_section(s, dev_parts[rate_s], dev_manifest, audio, refs, search_grid, search_tolerance, test_manifest,
                                       rtf_target)
    if plot is not None:
        plot = plot_wer_vs_cost(rows, plot, "test WER against acoustic cost")
        if plot_link is None and results_md is not None and Path(plot).resolve().parent == Path(results_md).resolve().parent:
            plot_link = Path(plot).name
        if plot_link is not None:
            text += f"\n![WER against acoustic cost]({plot_link})\n"
    if speaker_cmvn is not None:
        norm = {s.name: normalisation_wers(s.model_dirs[0], test_manifest, speaker_cmvn, decode_config, max_cuts)
                for s in systems if len(s.model_dirs) == 1 and s.backend == "torch" and load_spec(s.model_dirs[0]).kind != "gmm"}
        text += ("\nWhat normalisation costs: a model directory cannot know a new file's speaker, so it normalises with "
                 "global statistics (pooled over the training speakers) or per utterance; the recipe's own scores use the "
                 "test speakers' statistics. Same stored features, same network and search:\n\n" + normalisation_table(norm)
                 + uttcmvn_comparisons(norm, {s.name: scale_note(load_spec(s.model_dirs[0])) for s in systems
                                              if s.name in norm and s.name.endswith(UTTCMVN_SUFFIX)}))
    from asr_kd.stages.provenance import code_version, environment, environment_text

    env = environment()
    env.pop("torch_threads", None)  # the section says how many threads each measurement used
    text += "\n" + environment_text(env, code_version()) + "\n"  # speeds depend on the CPU, WERs on the code
    if results_md is not None:
        write_section(results_md, "## Deployment", text)
    return rows, gates, text


def _speed_section(system: SystemSpec, dev: tuple[Mapping[str, np.ndarray], Mapping[str, str]], dev_manifest: Path | str,
                   test_audio: Mapping[str, np.ndarray], test_refs: Mapping[str, str], grid: Sequence["SearchSetting"],
                   tolerance: float | None, test_manifest: Path | str, target: float | None = None) -> str:
    """Choose the deployment search on ``dev`` (audio and transcripts, read from ``dev_manifest``)
    and measure ``system`` end to end on the test audio; return the Markdown of
    :func:`asr_kd.deploy.speed.speed_markdown`. The request was checked by :func:`deploy_report`."""
    from asr_kd.deploy.speed import DEFAULT_GRID, DEFAULT_TOLERANCE, END_TO_END_TARGET, measure_speed, parse_search_grid, speed_markdown

    target = END_TO_END_TARGET if target is None else target
    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    dev_audio, dev_refs = dev
    result = measure_speed(system.model_dirs[0], system.backend, dev_audio, dev_refs, test_audio, test_refs,
                           grid or parse_search_grid(DEFAULT_GRID), tolerance, target)
    return speed_markdown(result, f"{system.name} ({system.backend})", part_name(dev_manifest), part_name(test_manifest), tolerance,
                          target)


def _check_speed_request(system: SystemSpec, dev_manifest: Path | str | None, tolerance: float | None) -> None:
    """ConfigError, in one line, for a speed measurement that cannot run (checked before anything is measured)."""
    if len(system.model_dirs) != 1:
        raise ConfigError(f"the speed measurement needs one model directory, got {len(system.model_dirs)} for {system.name}")
    if dev_manifest is None:
        raise ConfigError("the deployment search is chosen on dev: pass the dev part's cuts (--dev-manifest)")
    if tolerance is not None and tolerance < 0:
        raise ConfigError(f"the search tolerance must be >= 0, got {tolerance}")
    if not Path(dev_manifest).is_file():
        raise ConfigError(f"--dev-manifest {dev_manifest} does not exist; pass the dev part's cuts (data/fbank/cuts_<dev part>.jsonl.gz)")


def part_name(manifest: Path | str) -> str:
    """``cuts_dev-clean.jsonl.gz`` -> ``dev-clean``; other names as they are."""
    name = Path(manifest).name
    for suffix in (".jsonl.gz", ".jsonl"):
        name = name.removesuffix(suffix)
    return name.removeprefix("cuts_")


def normalisation_wers(
    model_dir: Path | str, test_cuts: Path | str, speaker_cmvn: Path | str, decode_config: DecodeConfig | None = None,
    max_cuts: int | None = None,
) -> dict[str, WerResult]:
    """Return the test WER of ``model_dir``'s network with each input normalisation: per speaker
    (``speaker_cmvn``, the test part's own statistics, as the recipe scores), the model
    directory's global statistics, and per utterance. Features are the cuts' stored fbank, so
    only the normalisation differs between the three."""
    import itertools

    from lhotse import load_manifest_lazy

    from asr_kd.data.features import cmvn_key
    from asr_kd.deploy.model_dir import load_cmvn
    from asr_kd.deploy.search import Searcher

    spec = load_spec(model_dir)
    speaker = CmvnStats.load(speaker_cmvn)
    pooled = load_cmvn(model_dir, spec) or pooled_cmvn(speaker)
    acoustic = TorchAcoustic(load_network(model_dir))
    search = Searcher(model_dir, spec, None, decode_config)
    cuts = list(itertools.islice(load_manifest_lazy(test_cuts), max_cuts))
    refs = {c.id: " ".join(s.text or "" for s in c.supervisions).strip() for c in cuts}
    modes = {
        "per speaker": lambda c, f: speaker.normalize(f, cmvn_key(c, "speaker")),
        "global": lambda c, f: pooled.normalize(f, "global"),
        "per utterance": lambda c, f: normalize_features(f, "utterance", None),
    }
    out: dict[str, WerResult] = {}
    for mode, norm in modes.items():
        hyps = {}
        for c in cuts:
            (lp,) = acoustic([norm(c, c.load_features().astype(np.float32))])
            try:
                hyps[c.id] = search(lp, c.id).text
            except AsrKdError:
                pass
        out[mode] = compute_wer(refs, hyps)
    return out


def normalisation_table(results: Mapping[str, Mapping[str, WerResult]]) -> str:
    """Return the Markdown table of :func:`normalisation_wers` results per system."""
    lines = ["| System | WER, per-speaker CMVN | WER, global CMVN | WER, per-utterance |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * r[m].wer:.2f}% ({r[m].errors}/{r[m].ref_words})"
                                                for m in ("per speaker", "global", "per utterance")) + " |")
    return "\n".join(lines) + "\n"


def scale_note(spec: ModelSpec) -> str:
    """Where a hybrid model directory's acoustic scale came from, for the report's lines."""
    if not spec.scale_sweep:
        scale = spec.decoding.get("acoustic_scale")
        return f"acoustic scale {scale:g}, the recipe tables' for its kind" if scale is not None else "the default acoustic scale"
    from asr_kd.decode.tuning import ScaleSweep

    sweep = ScaleSweep.from_dict(spec.scale_sweep)
    cells = ", ".join(f"{s:g}: {e}" for s, e in zip(sweep.scales, sweep.errors))
    edge = "; at the grid's edge" if sweep.at_grid_edge else ""
    return f"acoustic scale {sweep.best:g}, tuned on {sweep.part} for it (word errors {cells}{edge})"


def uttcmvn_comparisons(results: Mapping[str, Mapping[str, WerResult]], scales: Mapping[str, str] | None = None) -> str:
    """Markdown lines on the students trained on per-utterance CMVN (systems named
    ``<name>-uttcmvn``, recipe stage 9): each one's per-utterance WER (what its model directory
    does) against ``<name>``'s global WER (what that one's model directory does) and against
    ``<name>``'s per-speaker WER (the recipe's score, which no deployment can reproduce), and the
    distilled and compressed ones against the hard-target one, all with 95% paired bootstrap intervals;
    ``scales``: per system, where its acoustic scale came from (:func:`scale_note`). ``""``
    when there is no such system."""
    from asr_kd.metrics.paired import wer_difference
    from asr_kd.report.tables import format_interval, significance

    def diff(a: WerResult, b: WerResult, reference: str) -> str:
        iv = wer_difference(a, b).to_dict()
        return f"{format_interval(iv)} points ({significance(iv, better_if_negative=True, reference=reference)})"

    lines = []
    for name, r in results.items():
        base = name.removesuffix(UTTCMVN_SUFFIX)
        if base == name or base not in results:
            continue
        own, other = r["per utterance"], results[base]
        note = f" ({scales[name]})" if scales and name in scales else ""
        lines.append(f"- {name}, trained on per-utterance CMVN: {100 * own.wer:.2f}% per utterance{note}; minus {base}'s global-CMVN WER "
                     f"(its model directory's) {diff(other['global'], own, base + ' with global CMVN')}; minus {base}'s per-speaker "
                     f"WER (the recipe's score) {diff(other['per speaker'], own, base + ' with per-speaker CMVN')}.")
    hard = "baseline" + UTTCMVN_SUFFIX
    for label, kd in (("Distillation", "distilled" + UTTCMVN_SUFFIX), ("Compression (a quarter of a teacher's compute or less)", "compressed" + UTTCMVN_SUFFIX)):
        if hard in results and kd in results:
            lines.append(f"- {label} on per-utterance CMVN: {kd} minus {hard} "
                         f"{diff(results[hard]['per utterance'], results[kd]['per utterance'], hard)}.")
    if not lines:
        return ""
    return ("\nStudents trained on features normalised per utterance (stage 9, seed 0; the distilled and compressed ones from the same "
            "stored soft targets, which the ensemble made on per-speaker features), so that their model directories feed them what they "
            "were trained on; each decodes at its model directory's acoustic scale (in brackets, where it came from: stage 9 chooses it "
            "on dev for each with `asr-kd make-model-dir --tune-scale-on`, while the per-speaker students' directories keep the "
            "scales stage 7 chose with per-speaker CMVN); differences in WER points with 95% paired bootstrap intervals over "
            "utterances:\n\n" + "\n".join(lines) + "\n")


def plot_wer_vs_cost(rows: Sequence[CostRow], path: Path | str, title: str = "") -> Path:
    """Plot each row's test WER against its acoustic real-time factor per core (log scale),
    one labelled point per system and runtime; write a PNG (Agg backend) to ``path`` and return
    it. The paper's claim reads off it: the student sits at the ensemble's height, 1/N to its
    left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asr_kd.report.tables import plain_log_ticks, save_figure

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for r in rows:
        x = max(r.acoustic_rtf, 1e-6)  # a log axis has no zero
        ax.scatter([x], [100 * r.wer], s=25)
        ax.annotate(f"{r.system} ({r.runtime})", (x, 100 * r.wer), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    ax.set_xlabel("acoustic model real-time factor per core (CPU time / audio time)")
    ax.set_ylabel("test WER (%)")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
