"""GMM-HMM speed: alignment throughput and HCLG decoding real-time factor per core, monophone
and triphone side by side.

Uses the stage-3 outputs of a recipe run (``--data``/``--exp``, e.g. the 'mini' demo); without
them, builds the 'tiny' synthetic corpus with recipes/librispeech/run.sh (stages 0-2) and runs
stage 3 on it with the test sizes, in a temporary folder. Both systems then align and decode the
same evaluation parts in this process on one core; times are CPU time of the process (the
aligner and decoder are single-threaded, and wall time would also count other load on a shared
machine). Alignment throughput = feature frames aligned per CPU second; RTF = decoding CPU time /
audio time (10 ms frames), lower is faster. Writes its section of bench/RESULTS.md.

    python bench/gmm_speed.py [--data recipes/librispeech/data --exp recipes/librispeech/exp]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from asr_kd.config import DecodeConfig, GmmConfig, load_config
from asr_kd.decode.gmm_decode import decode_gmm_batch
from asr_kd.decode.hclg import load_hclg
from asr_kd.gmm.stage import SYSTEMS, PartData, Stage3Paths, load_part, run_gmm_stage
from asr_kd.gmm.train import GmmSystem, GraphInputs, align_utterances
from asr_kd.lang.lang_dir import Lang
from asr_kd.metrics.wer import compute_wer

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FRAME_SHIFT = 0.01
HEADING = "## GMM-HMM alignment and decoding speed"


def build_tiny(root: Path) -> tuple[Path, Path]:
    """Run stages 0-2 of the recipe on the 'tiny' corpus and stage 3 with the test sizes under
    ``root``; return ``(data, exp)``."""
    data, exp = root / "data", root / "exp"
    cmd = ["bash", str(ROOT / "recipes/librispeech/run.sh"), "--preset", "tiny", "--data", str(data), "--exp", str(exp), "--stop-stage", "2"]
    subprocess.run(cmd, check=True, capture_output=True)
    config = load_config(GmmConfig, ROOT / "recipes/librispeech/conf/gmm_tiny.yaml")  # the sizes run.sh uses for --preset tiny
    run_gmm_stage(data, data / "lang", exp, config, "train-clean-100", ["train-clean-100", "dev-clean", "test-clean"], num_jobs=2)
    return data, exp


def measure(system: GmmSystem, inputs: GraphInputs, lang: Lang, graph_dir: Path, parts: list[PartData], config: GmmConfig, decode_config: DecodeConfig) -> dict[str, float]:
    """Return alignment frames per CPU second, decoding RTF and WER of one system on ``parts``."""
    utts = [u for p in parts for u in p.utterances]
    frames = sum(u.feats.shape[0] for u in utts)
    start = time.process_time()
    alignments, failed = align_utterances(system, inputs, utts, config)
    align_cpu = time.process_time() - start
    hclg = load_hclg(graph_dir)
    start = time.process_time()
    batch = decode_gmm_batch(hclg, system.am, system.tm, {u.id: u.feats for u in utts}, decode_config)
    decode_cpu = time.process_time() - start
    refs = {k: v for p in parts for k, v in p.refs.items()}
    return {
        "frames": frames,
        "align_fps": frames / align_cpu,
        "align_failed": failed,
        "rtf": decode_cpu / (frames * FRAME_SHIFT),
        "wer": compute_wer(refs, batch.texts(lang.words)).wer,
        "decode_failed": len(batch.failed),
        "graph_states": hclg.num_states,
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark; return ``{system: measurements}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="recipe data folder (with lang/, mfcc/); default: build 'tiny'")
    parser.add_argument("--exp", type=Path, default=None, help="recipe experiment folder holding gmm/ (stage 3)")
    parser.add_argument("--parts", nargs="+", default=["dev-clean", "test-clean"], help="parts to align and decode")
    parser.add_argument("--beam", type=float, default=DecodeConfig().beam)
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args(argv)
    if (args.data is None) != (args.exp is None):
        parser.error("give both --data and --exp, or neither (then the 'tiny' corpus is built)")

    with tempfile.TemporaryDirectory() as tmp:
        data, exp = (args.data, args.exp) if args.data else build_tiny(Path(tmp))
        corpus = f"{data}" if args.data else "the synthetic 'tiny' corpus (built in a temporary folder)"
        paths = Stage3Paths.of(exp)
        config = load_config(GmmConfig, paths.root / "gmm.yaml")  # the sizes the systems were trained with
        lang = Lang.load(data / "lang")
        inputs = GraphInputs.from_lang(lang)
        parts = [load_part(data, p, lang, config) for p in args.parts]
        decode_config = DecodeConfig(beam=args.beam, acoustic_scale=config.acoustic_scale, num_jobs=1)
        results = {}
        for name in SYSTEMS:
            system = GmmSystem.load(paths.model(name))
            results[name] = measure(system, inputs, lang, paths.graph(name), parts, config, decode_config) | {
                "pdfs": system.num_pdfs, "gaussians": system.am.num_gauss,
            }

    frames = results["mono"]["frames"]
    command = " ".join(["python", "bench/gmm_speed.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        HEADING + " (bench/gmm_speed.py)",
        "",
        f"`{command}` on {platform.processor() or platform.machine()}, one core, {corpus}: parts "
        f"{', '.join(args.parts)} ({frames} frames, {frames * FRAME_SHIFT:.0f} s). Features MFCC + CMN + deltas (39 dims). "
        f"Alignment: Viterbi with the training graph of the transcript (beam {config.beam:g}, retry {config.retry_beam:g}); "
        f"decoding: HCLG with the stage-2 LM, {decode_config.decoder} decoder, beam {decode_config.beam:g}, "
        f"max_active {decode_config.max_active}, acoustic scale {decode_config.acoustic_scale:g}. CPU time of the process.",
        "",
        "| system | senones | Gaussians | HCLG states | align frames/s per core | align x real time | not aligned | decode RTF per core | WER % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['pdfs']} | {r['gaussians']} | {r['graph_states']} | {r['align_fps']:.0f} | "
            f"{r['align_fps'] * FRAME_SHIFT:.0f} | {r['align_failed']} | {r['rtf']:.4f} | {100 * r['wer']:.2f} |"
        )
    lines.append("")
    text = "\n".join(lines)
    print(text)
    write_section(args.results, HEADING, text)
    return results


if __name__ == "__main__":
    main()
