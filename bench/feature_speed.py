"""Feature extraction speed: lhotse's Kaldi-compatible extractors vs kaldi-native-fbank.

Both backends run on the same utterances of the synthetic corpus, on one core each
(``torch.set_num_threads(1)``), interleaved round by round so that machine load affects both
alike. Reports x real time per core (seconds of audio per second of compute), the ratio of the
two, and which one is faster; appends a section to bench/RESULTS.md.

    python bench/feature_speed.py [--rounds 5] [--corpus-dir DIR]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asr_kd.config import FeatureConfig, SynthConfig

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402
from asr_kd.data.features import make_extractor

BACKENDS = ("lhotse", "kaldi-native-fbank")


def load_audio(corpus_dir: Path, max_files: int) -> list[np.ndarray]:
    """Return up to ``max_files`` utterances of ``corpus_dir`` as float32 arrays."""
    files = sorted(corpus_dir.rglob("*.flac"))[:max_files]
    if not files:
        sys.exit(f"no FLAC files under {corpus_dir}; pass --corpus-dir with a LibriSpeech-layout corpus")
    return [sf.read(f, dtype="float32")[0] for f in files]


def time_backend(kind: str, backend: str, audio: list[np.ndarray], cfg: FeatureConfig) -> float:
    """Seconds of audio processed per second of compute, for one pass over ``audio``."""
    extract = make_extractor(kind, cfg, backend)
    extract(audio[0])  # warm up
    start = time.perf_counter()
    for x in audio:
        extract(x)
    elapsed = time.perf_counter() - start
    return sum(len(x) for x in audio) / cfg.sampling_rate / elapsed


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark; return ``{kind: {backend: median x real time}}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-files", type=int, default=60)
    parser.add_argument("--corpus-dir", type=Path, default=None, help="default: synthesise the 'tiny' corpus")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = FeatureConfig()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus_dir
        if corpus is None:
            from asr_kd.data.synth import synthesize_corpus

            corpus = Path(tmp) / "corpus"
            synthesize_corpus(corpus, SynthConfig(preset="tiny", num_jobs=1))
        audio = load_audio(corpus, args.max_files)
    seconds = sum(len(x) for x in audio) / cfg.sampling_rate
    results: dict[str, dict[str, list[float]]] = {k: {b: [] for b in BACKENDS} for k in ("fbank", "mfcc")}
    for _ in range(args.rounds):
        for kind in results:
            for backend in BACKENDS:
                results[kind][backend].append(time_backend(kind, backend, audio, cfg))
    medians = {k: {b: statistics.median(v) for b, v in r.items()} for k, r in results.items()}
    lines = [
        "## Feature extraction speed (bench/feature_speed.py)",
        "",
        f"`{' '.join(['python', 'bench/feature_speed.py', *(argv if argv is not None else sys.argv[1:])])}` on "
        f"{platform.processor() or platform.machine()}, {len(audio)} utterances ({seconds:.0f} s of audio), "
        f"one core each, median of {args.rounds} interleaved rounds. x real time = seconds of audio per second of compute.",
        "",
        "| features | lhotse (x RT) | kaldi-native-fbank (x RT) | lhotse / knf |",
        "|---|---|---|---|",
    ]
    for kind, m in medians.items():
        lines.append(f"| {kind} | {m['lhotse']:.0f} | {m['kaldi-native-fbank']:.0f} | {m['lhotse'] / m['kaldi-native-fbank']:.2f} |")
    faster = {k: max(m, key=m.get) for k, m in medians.items()}
    lines += ["", f"Faster: {', '.join(f'{k}: {b}' for k, b in faster.items())}. "
              f"The default (`FeatureConfig.backend`) is `{FeatureConfig().backend}`.", ""]
    text = "\n".join(lines)
    print(text)
    write_section(args.results, "## Feature extraction speed", text)
    return medians


if __name__ == "__main__":
    main()
