"""Synthesis speed of the synthetic corpus: each synthesiser family, the speaker perturbations, and
the time to build whole corpora.

Speed is x real time per core: seconds of audio per second of CPU time (this process and its
children: espeak-ng renders in forked children, Festival in ``text2wave`` processes), so that a
busy machine changes it less than wall-clock time would. Corpus builds report both wall-clock
and CPU time with the given number of workers. Engines that are not installed are listed as such.
Appends (or replaces) its section of bench/RESULTS.md.

    python bench/synth_speed.py [--sentences 12] [--presets tiny,mini] [--num-jobs 2]
    python bench/synth_speed.py --presets small --title 'Corpus build of the small preset'  # its own section
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from asr_kd.config import SynthConfig
from asr_kd.data import augment, voices
from asr_kd.data.synth import PARTS, synthesize_corpus
from asr_kd.data.synth_text import generate_candidates
from asr_kd.resource_usage import detached_cpu_seconds  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

SAMPLE_RATE = voices.SAMPLE_RATE
# One talker per family, at its normal rate.
TALKERS = {
    "espeak": voices.Talker("espeak", "en-us+m3"),
    "festival": voices.Talker("festival", "kal_diphone", pitch=30),
    "kokoro": voices.Talker("kokoro", "jf_alpha:0.5+jm_kumo:0.5"),
}


def cpu_seconds() -> float:
    """CPU time (user + system) of this process, its waited-for children and the corpus builder's
    forkserver workers (not this process's children: asr_kd.resource_usage notes them) so far."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + detached_cpu_seconds()


def measure(work: Callable[[], float]) -> tuple[float, float, float]:
    """Run ``work`` (which returns seconds of audio made); return (audio s, CPU s, wall s)."""
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    audio = work()
    return audio, cpu_seconds() - cpu0, time.perf_counter() - wall0


def engine_speed(engine: str, sentences: list[str]) -> tuple[float, float, float]:
    """Synthesise ``sentences`` with ``engine``'s talker (after one warm-up sentence that loads
    the engine); return (audio s, CPU s, wall s)."""
    talker = TALKERS[engine]
    voices.speak_16k(talker, sentences[0], seed=0)
    return measure(lambda: sum(len(voices.speak_16k(talker, s, seed=i)) for i, s in enumerate(sentences)) / SAMPLE_RATE)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark; return ``{engine or preset: x real time per core or build seconds}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=12, help="sentences per engine")
    parser.add_argument("--presets", default="tiny,mini", help="corpora to build and time (comma-separated; empty: none)")
    parser.add_argument("--num-jobs", type=int, default=2, help="workers for the corpus builds")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--title", default="Synthesis speed",
                        help="the section's title (another one keeps the default section, e.g. for a larger preset built alone)")
    args = parser.parse_args(argv)
    sentences = generate_candidates(args.sentences, seed=0, min_words=8, max_words=16)
    installed = voices.installed_engines()
    out: dict[str, float] = {}
    command = " ".join(["python", "bench/synth_speed.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        f"## {args.title} (bench/synth_speed.py)",
        "",
        f"`{command}` on {platform.processor() or platform.machine()}; {len(sentences)} sentences of 8-16 words per engine, "
        "x real time per core = seconds of audio per CPU second (process and children).",
        "",
        "| engine | audio (s) | CPU (s) | x real time per core |",
        "|---|---|---|---|",
    ]
    for engine in voices.ENGINES:
        if engine not in installed:
            lines.append(f"| {engine} | not installed | | |")
            continue
        audio, cpu, _ = engine_speed(engine, sentences)
        out[engine] = audio / cpu
        lines.append(f"| {engine} | {audio:.1f} | {cpu:.2f} | {audio / cpu:.1f} |")
    # The perturbations on 60 s of espeak-ng speech.
    speech = np.concatenate([voices.speak_16k(TALKERS["espeak"], s, seed=0) for s in sentences[:6]])
    seconds = len(speech) / SAMPLE_RATE
    lines += ["", "| perturbation | x real time per core |", "|---|---|"]
    for name, fn in (
        ("VTLP (alpha 1.1)", lambda: augment.vtlp(speech, 1.1, SAMPLE_RATE)),
        ("speed 1.1", lambda: augment.speed_perturb(speech, 1.1)),
        ("telephone band", lambda: augment.telephone_band(speech, SAMPLE_RATE)),
    ):
        _, cpu, _ = measure(lambda fn=fn: (fn(), seconds)[1])
        out[name] = seconds / max(cpu, 1e-6)
        lines.append(f"| {name} | {out[name]:.0f} |")

    presets = [p for p in args.presets.split(",") if p]
    if presets:
        lines += ["", f"Corpus builds, {args.num_jobs} workers, engines {', '.join(installed)} installed:", "",
                  "| preset | utterances | hours | wall (s) | CPU (s) | engines (train / test-ood) |", "|---|---|---|---|---|---|"]
    for preset in presets:
        with tempfile.TemporaryDirectory() as tmp:
            holder: dict[str, object] = {}

            def build(preset: str = preset, tmp: str = tmp) -> float:
                summary = synthesize_corpus(Path(tmp) / "c", SynthConfig(preset=preset, num_jobs=args.num_jobs))
                holder["summary"] = summary
                return sum(summary.part(p).hours for p in PARTS) * 3600

            audio, cpu, wall = measure(build)
            summary = holder["summary"]
            utts = sum(summary.part(p).utterances for p in PARTS)  # type: ignore[attr-defined]
            out[preset] = wall
            lines.append(f"| {preset} | {utts} | {audio / 3600:.2f} | {wall:.0f} | {cpu:.0f} | "
                         f"{', '.join(summary.engines)} / {summary.ood_engine} |")  # type: ignore[attr-defined]
    lines.append("")
    text = "\n".join(lines)
    print(text)
    write_section(args.results, f"## {args.title}", text)
    return out


if __name__ == "__main__":
    main()
