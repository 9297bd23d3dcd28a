"""CTC stage 5: the spike misalignment between the teachers of every trained teacher set, and a
plot of their spikes on one utterance. Folders: :mod:`asr_kd.stages.ctc_common`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from lhotse import CutSet

from asr_kd.config import CtcConfig
from asr_kd.ctc.kd import spike_misalignment
from asr_kd.ctc.training import ctc_log_probs
from asr_kd.errors import DataError
from asr_kd.report.tables import plot_spike_timings
from asr_kd.stages.common import write_results
from asr_kd.stages.ctc_common import describe_teacher_set, load_ctc_teachers, teachers_of, trained_teacher_sets
from asr_kd.stages.layout import RecipeLayout
from asr_kd.stages.provenance import StageGuard, require_record
from asr_kd.utils import atomic_path, write_text_atomic


def spike_report(
    layout: RecipeLayout, cfg: CtcConfig, part: str | None = None, results_md: Path | None = None, command: str = "",
) -> dict[str, dict[str, float]]:
    """Measure the spike misalignment between the teachers of every trained teacher set (the
    independent one, each ``teachers_shared<N>`` and each guided set) on ``part`` (default dev); write
    ``<root>/spike_report.json`` and return ``{set name: summary}`` (see
    :meth:`asr_kd.ctc.kd.SpikeStats.summary`). Sets with fewer than two teachers are skipped."""
    part = part or layout.dev_part
    cuts, cmvn = CutSet.from_cuts(layout.open_cuts(layout.fbank_cuts(part))), layout.open_cmvn(part)
    sets = trained_teacher_sets(layout, cfg)
    if not sets:
        raise DataError(f"no set of two or more trained CTC teachers under {layout.ctc_root}; run asr-kd ctc-train-teachers first")
    out = layout.ctc_root / "spikes"
    guard = StageGuard("CTC stage 5 (spike report)", out, {"part": part, "units": cfg.units},
                       {s.name: require_record(s, "asr-kd ctc-train-teachers").fingerprint for s in (teachers_of(layout, c) for c in sets)}, command)
    if guard.needs_work():
        report: dict[str, dict[str, float]] = {}
        example: dict[str, list[np.ndarray]] = {}  # the first utterance's posteriors, for the plot
        for set_cfg in sets:
            models = load_ctc_teachers(layout, set_cfg)
            per_model = [[lp for _, lp in ctc_log_probs([m], cuts, cmvn)] for m in models]
            name = describe_teacher_set(set_cfg.shared_init_steps, set_cfg.guide_weight)
            report[name] = spike_misalignment(per_model)
            example[name] = [lps[0] for lps in per_model]
        write_text_atomic(out / "spike_report.json", json.dumps(report, indent=1) + "\n")
        first = next(iter(cuts))
        title = f"CTC teachers' spikes on {first.id} ({part}, {cfg.units} units)"
        plot_spike_timings(example, out / "spike_timings.png", title, 10 * cfg.subsampling)
        guard.finish([out / "spike_report.json", out / "spike_timings.png"])
    report = json.loads((out / "spike_report.json").read_text())
    plot = out / "spike_timings.png"
    plot_name = f"ctc_spike_timings_{cfg.units}.png"
    if results_md is not None:
        with atomic_path(Path(results_md).parent / plot_name) as tmp:
            shutil.copyfile(plot, tmp)
    rows = [f"| {name} | {int(s['num_models'])} | {s['mean_spike_offset_frames']:.2f} | {100 * s['spikes_matched']:.1f}% | "
            f"{100 * s['argmax_disagreement']:.1f}% | {100 * s['blank_frame_share']:.1f}% |" for name, s in report.items()]
    body = (f"Between every pair of teachers on {part} ({len(cuts)} utterances), output frames of {10 * cfg.subsampling} ms: "
            "spikes are the first frame of each run of a non-blank argmax token; spikes of the two models are matched by a "
            "minimum-edit-distance alignment of their token sequences.\n\n"
            "| Teacher set | Teachers | Mean abs offset of matched spikes (frames) | Spikes matched | Argmax disagreement | Blank frames |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            f"![The teachers' non-blank probability on one {part} utterance, per teacher set]({plot_name})\n")
    write_results(results_md, f"## CTC spike misalignment ({cfg.units})", body, command, [out])
    return report
